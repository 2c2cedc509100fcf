#!/usr/bin/env python3
"""The one-screen summary of a ``scripts/gpu_check.sh`` run, from its logs and reports.

    python3 scripts/gpu_summary.py --work WORK --report REPORT_DIR [--print]
    python3 scripts/gpu_summary.py --selftest        # on a canned example; exit 0 if it reads right

Reads, in WORK (each may be missing: the summary says so instead of failing):

- ``steps.tsv``: one line per step, ``name<TAB>status<TAB>rc<TAB>seconds<TAB>timeout<TAB>note``,
  written by gpu_check.sh (status ok, FAILED, TIMEOUT, SKIPPED or EMPTY); ``meta.txt``,
  ``key=value`` lines (GPU, versions, commit, budget, mode).
- ``junit/<step>.xml`` (pytest's ``--junitxml``), else the closing ``N passed, ...`` line of
  ``logs/<step>.log``: the test counts and the failed tests.
- ``logs/{memcheck,racecheck,synccheck}.log``: compute-sanitizer's ERROR / RACECHECK SUMMARY
  lines and the kernels it named.
- ``train_fp32/log.json``, ``train_bf16/log.json`` (``fastwarp train``), ``register/metrics.json``
  (``fastwarp register --json``).

and in REPORT_DIR ``bench.json`` (``fastwarp bench --json``) and ``bench_fused.json``
(pytest-benchmark's JSON of ``benchmarks/bench_ncc.py``'s fused_lncc case), whose ratios it
sets against the goals in :data:`GOALS`. Writes ``summary.txt`` (what ``--print`` prints) and
``summary.json`` into REPORT_DIR. Standard library only: it must run where the build failed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import xml.etree.ElementTree as ET

# The goals the GPU figures are held to. "speed": the baseline's median over fastwarp's at
# least this; "memory": fastwarp's peak extra memory over the baseline's at most this. The
# first five are benchmarks/RESULTS.md's (measured by `fastwarp bench`, kinds of its cases);
# the fused_lncc one is the NCC issue's GPU goal, measured by benchmarks/bench_ncc.py's
# 2x16x128^3 window-7 case (pytest-benchmark group GROUP below).
FUSED_GROUP = "ncc-3d-2x16x128x128x128-cuda-w7-{mode}"
GOALS = [
    dict(label="warp fwd >= 2x grid_sample", source="bench", kind="warp-fwd", vs=["grid_sample"], speed=2.0),
    dict(label="warp fwd >= 3x VoxelMorph", source="bench", kind="warp-fwd", vs=["voxelmorph", "voxelmorph-pkg"],
         speed=3.0),
    dict(label="warp fwd+bwd >= 3x VoxelMorph", source="bench", kind="warp-fwdbwd",
         vs=["voxelmorph", "voxelmorph-pkg"], speed=3.0),
    dict(label="NCC w9 fwd+bwd >= 10x neurite/MONAI", source="bench", kind="ncc-fwdbwd", vs=["neurite", "monai"],
         speed=10.0),
    dict(label="train step >= 1.5x VoxelMorph, <= 0.7x mem", source="bench", kind="train", vs=["voxelmorph"],
         speed=1.5, memory=0.7),
    dict(label="NCC 2x16x128^3 w7 >= 2x fused_lncc, <= 0.5x mem", source="fused", mode="fwdbwd",
         vs=["fused_lncc"], speed=2.0, memory=0.5),
]
# Shown beside the goals, not judged: the fused baselines wherever they ran.
INFO_VS = ["fused_lncc", "fireants"]

STEP_ORDER = ["env", "syntax", "tools", "wheels", "sdist", "build", "import", "argv", "collect_tests",
              "collect_tests_large", "collect_sanitize", "collect_bench_fused", "tests", "memcheck", "racecheck",
              "synccheck", "tests_large", "bench", "bench_fused", "train_fp32", "train_bf16", "register", "summary",
              "outputs"]
FAILING = {"FAILED", "TIMEOUT", "SKIPPED"}
SANITIZERS = ["memcheck", "racecheck", "synccheck"]
WIDTH = 100


# --------------------------------------------------------------------------- readers


def _read(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _json(path):
    text = _read(path)
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def read_steps(work):
    steps = []
    for line in (_read(os.path.join(work, "steps.tsv")) or "").splitlines():
        parts = line.rstrip("\n").split("\t")
        if len(parts) < 4 or parts[0] == "name":
            continue
        parts += [""] * (6 - len(parts))
        name, status, rc, seconds, timeout, note = parts[:6]
        steps.append(dict(name=name, status=status, rc=rc, seconds=_float(seconds), timeout=timeout, note=note))
    return steps


def read_meta(work):
    meta = {}
    for line in (_read(os.path.join(work, "meta.txt")) or "").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            meta[key.strip()] = value.strip()
    return meta


def _float(s):
    try:
        return float(s)
    except (TypeError, ValueError):
        return None


_COUNT = re.compile(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed|warnings?)")


def pytest_result(work, step):
    """Counts and failed test ids from the junit XML, else from the log's closing line."""
    xml = os.path.join(work, "junit", f"{step}.xml")
    res = None
    if os.path.exists(xml):
        try:
            root = ET.parse(xml).getroot()
            suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
            res = dict(tests=0, failed=0, errors=0, skipped=0, failures=[])
            for s in suites:
                res["tests"] += int(s.get("tests", 0))
                res["failed"] += int(s.get("failures", 0))
                res["errors"] += int(s.get("errors", 0))
                res["skipped"] += int(s.get("skipped", 0))
            for case in root.iter("testcase"):
                if case.find("failure") is not None or case.find("error") is not None:
                    res["failures"].append(f"{case.get('classname', '').split('.')[-1]}::{case.get('name', '')}")
            res["passed"] = res["tests"] - res["failed"] - res["errors"] - res["skipped"]
            res["source"] = "junit"
        except (ET.ParseError, ValueError):
            res = None
    if res is None:
        log = _read(os.path.join(work, "logs", f"{step}.log")) or ""
        closing = [ln for ln in log.splitlines() if re.search(r"\d+ (passed|failed|error|skipped|deselected)", ln)
                   or "no tests ran" in ln]
        if not closing:
            return None
        counts = {}
        for n, what in _COUNT.findall(closing[-1]):
            counts[what.rstrip("s") if what.startswith(("error", "warning")) else what] = int(n)
        res = dict(passed=counts.get("passed", 0), failed=counts.get("failed", 0), errors=counts.get("error", 0),
                   skipped=counts.get("skipped", 0), failures=[], source="log")
        res["tests"] = res["passed"] + res["failed"] + res["errors"] + res["skipped"]
        res["failures"] = [ln.split()[1] for ln in log.splitlines() if ln.startswith(("FAILED ", "ERROR "))
                           and len(ln.split()) > 1]
    return res


def _strip_args(name):
    """A demangled function name without its final argument list: ``f<T>(A, B)`` -> ``f<T>``."""
    if not name.endswith(")"):
        return name
    depth = 0
    for i in range(len(name) - 1, -1, -1):
        depth += {")": 1, "(": -1}.get(name[i], 0)
        if depth == 0:
            return name[:i].rstrip()
    return name


def sanitizer_result(work, tool):
    log = _read(os.path.join(work, "logs", f"{tool}.log"))
    if log is None:
        return None
    res = dict(errors=None, hazards=None, kernels=[], problem=None, tests=None)
    for m in re.finditer(r"ERROR SUMMARY: (\d+) errors?", log):
        res["errors"] = int(m.group(1))
    for m in re.finditer(r"RACECHECK SUMMARY: (\d+) hazards? displayed \((\d+) errors?, (\d+) warnings?\)", log):
        res["hazards"] = int(m.group(1))
        res["errors"] = int(m.group(2)) if res["errors"] is None else max(res["errors"], int(m.group(2)))
    seen = []
    for m in re.finditer(r"^=+\s+at (?:0x[0-9a-f]+ in )?(.+?)(?:\+0x[0-9a-f]+)?(?: in \S+)?$", log, re.M):
        name = _strip_args(m.group(1).strip())[:90]
        if name and name not in seen:
            seen.append(name)
    res["kernels"] = seen[:3]
    problems = [ln.strip("= ").strip() for ln in log.splitlines()
                if re.match(r"^=+ (Error|Device not supported|Target application returned)", ln)]
    res["problem"] = problems[0][:90] if problems else None
    closing = [ln for ln in log.splitlines() if re.search(r"\d+ passed|\d+ failed|no tests ran", ln)]
    res["tests"] = closing[-1].strip("= ").strip()[:60] if closing else None
    return res


# --------------------------------------------------------------------------- goals


def _rows(bench, kind):
    for case in (bench or {}).get("cases", []):
        if case.get("kind") == kind:
            return case, {row["impl"]: row for row in case.get("rows", [])}
    return None, {}


def _fmt_ratio(x):
    return "?" if x is None else (f"{x:.2f}x" if x < 10 else f"{x:.1f}x")


def _judge(goal, fw, base, name):
    """(text, met) for fastwarp's row ``fw`` against baseline row ``base``: met is True, False,
    or None when not measured."""
    if base is None:
        return f"{name}: not measured", None
    if base.get("status") != "ok" or fw is None or fw.get("status") != "ok":
        why = base.get("status") if base.get("status") != "ok" else (fw or {}).get("status", "missing")
        return f"{name}: not measured ({why})", None
    speed = base.get("median") / fw.get("median") if base.get("median") and fw.get("median") else None
    text = f"{name} {_fmt_ratio(speed)}"
    met = speed is not None and speed >= goal["speed"]
    if goal.get("memory") is not None:
        mem = (fw["peak"] / base["peak"]) if fw.get("peak") and base.get("peak") else None
        text += f", mem {mem:.2f}x" if mem is not None else ", mem ?"
        met = met and mem is not None and mem <= goal["memory"]
    return text, met


def _bench_row(row):
    if row is None:
        return None
    return dict(status=row.get("status"), median=row.get("median_ms"), peak=row.get("peak_extra_bytes"))


def _fused_rows(fused, mode):
    group = FUSED_GROUP.format(mode=mode)
    rows = {}
    for b in (fused or {}).get("benchmarks", []):
        if b.get("group") == group:
            info = b.get("extra_info", {})
            rows[info.get("impl")] = dict(status="ok", median=b.get("stats", {}).get("median"),
                                          peak=info.get("peak_extra_bytes"))
    return rows


def goal_lines(bench, fused):
    """[(goal label, measured text, verdict)] and whether every measured goal was met."""
    out = []
    meta = (bench or {}).get("meta", {})
    judged = bool(bench) and meta.get("device_type") == "cuda" and meta.get("size") == "full"
    for goal in GOALS:
        if goal["source"] == "bench":
            case, rows = _rows(bench, goal["kind"])
            if not bench:
                out.append((goal["label"], "not measured (no bench.json)", "not measured"))
                continue
            if case is None:
                out.append((goal["label"], f"not measured (no {goal['kind']} case)", "not measured"))
                continue
            fw = _bench_row(rows.get("fastwarp"))
            parts = [_judge(goal, fw, _bench_row(rows.get(name)), name) for name in goal["vs"]]
        else:
            rows = _fused_rows(fused, goal["mode"])
            if not fused:
                out.append((goal["label"], "not measured (no bench_fused.json)", "not measured"))
                continue
            fw = rows.get("fastwarp")
            parts = [_judge(goal, fw, rows.get(name), name) for name in goal["vs"]]
        text = "; ".join(p[0] for p in parts)
        verdicts = [p[1] for p in parts if p[1] is not None]
        if not verdicts:
            verdict = "not measured"
        elif goal["source"] == "bench" and not judged:
            verdict = "n/a (" + ("size " + str(meta.get("size")) if meta.get("device_type") == "cuda" else "not GPU") + ")"
        elif all(verdicts):
            verdict = "yes" if len(verdicts) == len(parts) else "yes (part measured)"
        else:
            verdict = "NO"
        out.append((goal["label"], text, verdict))
    return out


def info_lines(bench, fused):
    lines = []
    if bench:
        meta = bench.get("meta", {})
        frac = []
        for case in bench.get("cases", []):
            fw = {r["impl"]: r for r in case.get("rows", [])}.get("fastwarp")
            if fw and fw.get("copy_fraction") is not None:
                frac.append(f"{case['case']} {100 * fw['copy_fraction']:.0f}%")
            elif fw and fw.get("gbps") is not None and not case["kind"].startswith("train"):
                frac.append(f"{case['case']} {fw['gbps']:.2f} GB/s")
        if frac:
            copy = f" (copy {meta['copy_GBps']:.0f} GB/s)" if meta.get("copy_GBps") else ""
            lines.append("fastwarp of copy bandwidth" + copy + ": " + ", ".join(frac))
        fusedinfo = []
        for case in bench.get("cases", []):
            if not case["kind"].startswith("ncc"):
                continue
            rows = {r["impl"]: r for r in case.get("rows", [])}
            for name in INFO_VS:
                r = rows.get(name)
                if r is None:
                    continue
                if r.get("status") == "ok" and r.get("ratio") is not None:
                    fusedinfo.append(f"{case['case']} vs {name} {_fmt_ratio(r['ratio'])}")
                elif r.get("status") != "not applicable":
                    fusedinfo.append(f"{case['case']} vs {name}: {r.get('status')}")
        if fusedinfo:
            lines.append("bench 160x192x224: " + "; ".join(fusedinfo))
    if fused:
        for mode in ("fwd", "fwdbwd"):
            rows = _fused_rows(fused, mode)
            fw = rows.get("fastwarp")
            parts = []
            for name in ("fused_lncc", "fireants"):
                r = rows.get(name)
                if r and fw and r.get("median") and fw.get("median"):
                    mem = f", mem {fw['peak'] / r['peak']:.2f}x" if fw.get("peak") and r.get("peak") else ""
                    parts.append(f"{name} {_fmt_ratio(r['median'] / fw['median'])}{mem}")
            if fw:
                lines.append(f"2x16x128^3 w7 {mode}: fastwarp {1e3 * fw['median']:.2f} ms"
                             + (f" {fw['peak'] / 2**20:.0f} MiB" if fw.get("peak") else "")
                             + ("; vs " + "; ".join(parts) if parts else "; no fused baseline ran"))
    return lines


# The CUDA kernels' cost modeled without a GPU (fastwarp bench --device cuda-model --size full),
# kept in the repository, so that the first GPU run checks the model.
MODEL_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks",
                          "gpu_model_full.json")


def model_lines(bench, meta, model):
    """One line: each bench case's fastwarp median beside the sum of its kernels' modeled times
    on this GPU (H200 or H100), for the cases the model has at the same shape."""
    if not bench or not model or (bench.get("meta", {}).get("device_type") != "cuda"):
        return []
    device = "h200" if "H200" in str(meta.get("gpu", "")) else "h100"
    modeled = {}
    for row in model.get("cases", []):
        if row.get("aggregate"):  # a sum of the case's other rows (the NCC backward's two passes)
            continue
        modeled[row["case"]] = modeled.get(row["case"], 0.0) + row[f"modeled_seconds_{device}"]
    parts = []
    for case in bench.get("cases", []):
        fw = {r["impl"]: r for r in case.get("rows", [])}.get("fastwarp")
        shape = "x".join(map(str, case.get("shape") or []))
        key = f"{case['case']} {shape}"
        if fw and fw.get("median_ms") and key in modeled:
            parts.append(f"{case['case']} {1e3 * modeled[key]:.2f}/{fw['median_ms']:.2f} ms")
    if not parts:
        return []
    return [f"modeled/measured ({device.upper()}, kernels only; benchmarks/gpu_model_full.json): " + ", ".join(parts)]


# --------------------------------------------------------------------------- train / register


def train_result(work, step):
    log = _json(os.path.join(work, step, "log.json"))
    if not log or not log.get("epochs"):
        return None
    epochs = log["epochs"]
    last = epochs[-1]
    seconds = sum(e.get("time_s", 0) for e in epochs)
    res = dict(epochs=len(epochs), steps=last.get("step"), seconds=seconds, loss=last.get("loss"),
               steps_per_s=(last.get("step") or 0) / seconds if seconds else None)
    with_val = [e for e in epochs if e.get("val")]
    val = with_val[-1]["val"][0] if with_val else None
    if val:
        res["val"] = {k: val.get(k) for k in ("ncc_before", "ncc_after", "mean_dice_before", "mean_dice_after",
                                              "folding_fraction")}
    return res


def _metrics_text(m):
    s = f"NCC {m['ncc_before']:.4f}->{m['ncc_after']:.4f}"
    if m.get("mean_dice_before") is not None:
        s += f", Dice {m['mean_dice_before']:.4f}->{m['mean_dice_after']:.4f}"
    if m.get("folding_fraction") is not None:
        s += f", folding {100 * m['folding_fraction']:.4f}%"
    if m.get("stages"):
        s += "; " + ", ".join(f"{k} {v:.2f} s" for k, v in m["stages"].items())
    return s


# --------------------------------------------------------------------------- summary


def build_summary(work, report):
    steps = read_steps(work)
    meta = read_meta(work)
    by = {s["name"]: s for s in steps}
    bench = _json(os.path.join(report, "bench.json"))
    fused = _json(os.path.join(report, "bench_fused.json"))
    failed = [s["name"] for s in steps if s["status"] in FAILING]
    if not steps:  # a run in which nothing ran proves nothing: it fails
        failed.append("no step ran")
    partial = [s["name"] for s in steps if s["status"] in ("PARTIAL", "EMPTY")]
    tests = {step: pytest_result(work, step) for step in ("tests", "tests_large")}
    if meta.get("mode") == "gpu" and meta.get("device", "cuda") == "cuda":
        # on the GPU a test run that passed nothing (all skipped: no GPU seen?) is a failure
        for step, r in tests.items():
            if step in by and by[step]["status"] == "ok" and (r is None or r["passed"] == 0):
                failed.append(f"{step}: nothing passed")
    data = dict(meta=meta, steps=steps, failed_steps=failed, partial_steps=partial)
    L = []
    dry = meta.get("mode") == "dry-run"
    head = f"fastwarp gpu_check{' --dry-run' if dry else ''} {meta.get('date', '')}  commit {meta.get('commit', '?')}"
    L.append(head)
    L.append(f"{meta.get('gpu', 'no GPU')} | torch {meta.get('torch', '?')} | {meta.get('nvcc', 'nvcc ?')} | "
             f"python {meta.get('python', '?')}")
    total = _float(meta.get("elapsed"))
    verdict = "PASS" if not failed else f"FAIL ({', '.join(failed)})"
    if partial:
        verdict += f"; partial or empty: {', '.join(partial)}"
    L.append(f"result: {verdict}" + (f"   {total:.0f} s of a {meta.get('budget', '?')} s budget" if total else ""))
    data["result"] = "pass" if not failed else "fail"

    L.append("")
    L.append(f"{'step':<19} {'status':<8} {'time':>6}  note")
    names = [n for n in STEP_ORDER if n in by] + [s["name"] for s in steps if s["name"] not in STEP_ORDER]
    for name in names:
        s = by[name]
        t = f"{s['seconds']:.0f} s" if s["seconds"] is not None else ""
        L.append(f"{name:<19} {s['status']:<8} {t:>6}  {s['note']}"[:WIDTH + 20])

    for step, title in (("tests", "tests -m cuda"), ("tests_large", "large tests")):
        r = tests[step]
        if step not in by and r is None:
            continue
        if r is None:
            L.append(f"{title}: no result")
            continue
        line = f"{title}: {r['passed']} passed, {r['failed']} failed, {r['errors']} errors, {r['skipped']} skipped"
        if r["failures"]:
            line += "; failed: " + ", ".join(r["failures"][:4]) + (" ..." if len(r["failures"]) > 4 else "")
        L.append(line[:WIDTH * 2])
    data["tests"] = tests

    san = {}
    parts = []
    for tool in SANITIZERS:
        r = sanitizer_result(work, tool)
        san[tool] = r
        s = by.get(tool)
        if r is None and s is None:
            continue
        if s is not None and s["status"] == "EMPTY":
            parts.append(f"{tool}: no tests selected")
        elif s is not None and s["status"] == "SKIPPED":
            parts.append(f"{tool}: skipped")
        elif r is None or (r["errors"] is None and r["hazards"] is None):
            why = s["note"] if s is not None and s["note"] else (r or {}).get("problem") or "no summary line"
            parts.append(f"{tool}: {s['status'] if s else '?'} ({why})")
        else:
            text = f"{tool}: {r['errors']} errors"
            if r["hazards"] is not None:
                text += f" ({r['hazards']} hazards)"
            if r.get("tests"):
                text += f" [{r['tests']}]"
            parts.append(text)
    if parts:
        L.append("sanitizers over tests/test_launch_geometry.py -m 'cuda and sanitize':")
        L.extend("  " + p for p in parts)
        for tool in SANITIZERS:
            r = san.get(tool)
            if r and r["kernels"] and (r["errors"] or r["hazards"]):
                L.append(f"  {tool} named: " + "; ".join(r["kernels"]))
    data["sanitizers"] = san

    L.append("")
    goals = goal_lines(bench, fused)
    data["goals"] = [dict(goal=g, measured=m, met=v) for g, m, v in goals]
    if bench:
        bm = bench.get("meta", {})
        L.append(f"benchmarks ({bm.get('device', '?')}, size {bm.get('size', '?')}, float32, medians):")
    else:
        L.append("benchmarks: no bench.json")
    L.append(f"  {'goal':<47} {'met':<19} measured (baseline time / fastwarp)")
    for g, m, v in goals:
        L.append(f"  {g:<47} {v:<19} {m}"[:WIDTH + 40])
    for line in info_lines(bench, fused):
        L.append(("  " + line)[:WIDTH + 40])
    for line in model_lines(bench, meta, _json(MODEL_PATH)):
        L.append(("  " + line)[:WIDTH + 80])

    L.append("")
    data["train"] = {}
    for step, title in (("train_fp32", "train fp32"), ("train_bf16", "train bf16")):
        r = train_result(work, step)
        data["train"][step] = r
        s = by.get(step)
        if r is None:
            if s is not None:
                L.append(f"{title}: no log.json ({s['status']})")
            continue
        line = (f"{title}: {r['epochs']} epochs, {r['steps']} steps in {r['seconds']:.0f} s"
                + (f" ({r['steps_per_s']:.1f} steps/s)" if r.get("steps_per_s") else "")
                + f", loss {r['loss']:.4f}")
        if r.get("val"):
            line += "; val " + _metrics_text(r["val"])
        L.append(line)
    reg = _json(os.path.join(work, "register", "metrics.json"))
    data["register"] = reg
    s = by.get("register")
    if reg:
        t = f" in {s['seconds']:.1f} s" if s and s["seconds"] is not None else ""
        L.append(f"register Colin27->MNI152{t}: " + _metrics_text(reg))
    elif s is not None:
        L.append(f"register: no metrics ({s['status']})")

    L.append("")
    L.append(f"reports in {report}: summary.txt, summary.json, logs.tar.gz (every log), bench.json/.md, "
             "bench_fused.json")
    return "\n".join(L) + "\n", data


def write_summary(work, report, echo=False):
    text, data = build_summary(work, report)
    os.makedirs(report, exist_ok=True)
    with open(os.path.join(report, "summary.txt"), "w") as f:
        f.write(text)
    with open(os.path.join(report, "summary.json"), "w") as f:
        json.dump(data, f, indent=1, default=str)
        f.write("\n")
    if echo:
        sys.stdout.write(text)
    return text, data


# --------------------------------------------------------------------------- self-test


def _bench_case(case, kind, shape, rows, window=None):
    return dict(case=case, kind=kind, shape=shape, window=window, rows=[
        dict(case=case, impl=impl, status=status, reason=None if status == "ok" else "canned", median_ms=ms,
             ratio=None, peak_extra_bytes=peak, copy_fraction=frac, gbps=None, steps_per_s=None)
        for impl, status, ms, peak, frac in rows])


def write_example(work, report):
    """A canned run: some steps failed, a sanitizer found errors, the benchmarks meet some goals
    and miss others, one baseline is not installed."""
    os.makedirs(os.path.join(work, "logs"), exist_ok=True)
    os.makedirs(os.path.join(work, "junit"), exist_ok=True)
    os.makedirs(report, exist_ok=True)
    with open(os.path.join(work, "steps.tsv"), "w") as f:
        f.write("name\tstatus\trc\tseconds\ttimeout\tnote\n")
        for row in [("build", "ok", 0, 83.2, 300, "sm_90, MAX_JOBS=16"), ("tests", "FAILED", 1, 61, 180, ""),
                    ("tests_large", "ok", 0, 30, 90, ""), ("memcheck", "FAILED", 1, 40, 75, ""),
                    ("racecheck", "ok", 0, 41, 75, ""), ("synccheck", "EMPTY", 5, 20, 75, "no tests selected"),
                    ("bench", "ok", 0, 70, 150, ""), ("train_fp32", "ok", 0, 60, 120, ""),
                    ("train_bf16", "TIMEOUT", 124, 120, 120, ""), ("register", "ok", 0, 6.5, 60, "")]:
            f.write("\t".join(map(str, row)) + "\n")
    with open(os.path.join(work, "meta.txt"), "w") as f:
        f.write("date=2026-12-01T00:00:00Z\ncommit=abc1234\ngpu=NVIDIA H200, 143771 MiB, driver 580\n"
                "torch=2.11.0+cu130\nnvcc=nvcc 13.0\npython=3.12.3\nbudget=510\nelapsed=500\nmode=gpu\n")
    with open(os.path.join(work, "junit", "tests.xml"), "w") as f:
        f.write('<?xml version="1.0"?><testsuites><testsuite name="pytest" errors="0" failures="1" skipped="2" '
                'tests="143"><testcase classname="tests.test_warp" name="test_a[cuda]"/>'
                '<testcase classname="tests.test_ncc" name="test_b[cuda]"><failure message="x"/></testcase>'
                '</testsuite></testsuites>')
    with open(os.path.join(work, "logs", "tests_large.log"), "w") as f:
        f.write("....\n=========== 12 passed, 2 skipped, 10 deselected in 30.1s ===========\n")
    with open(os.path.join(work, "logs", "memcheck.log"), "w") as f:
        f.write("========= COMPUTE-SANITIZER\n========= Invalid __global__ read of size 4 bytes\n"
                "=========     at void fastwarp::(anonymous namespace)::warp_fwd_kernel<float, float, long, 3>"
                "(fastwarp::SampleParams<3>)+0x1a0 in /repo/csrc/cuda/warp_cuda.cu:51\n"
                "2 passed in 30.00s\n========= ERROR SUMMARY: 3 errors\n")
    with open(os.path.join(work, "logs", "racecheck.log"), "w") as f:
        f.write("2 passed in 31.00s\n========= RACECHECK SUMMARY: 0 hazards displayed (0 errors, 0 warnings)\n")
    with open(os.path.join(work, "logs", "synccheck.log"), "w") as f:
        f.write("no tests ran in 3.00s\n")
    bench = dict(meta=dict(device="NVIDIA H200", device_type="cuda", size="full", copy_GBps=4300.0), cases=[
        _bench_case("warp-3d-fwd", "warp-fwd", [1, 1, 160, 192, 224], [
            ("fastwarp", "ok", 0.10, 10, 0.5), ("grid_sample", "ok", 0.25, 10, None),
            ("voxelmorph", "ok", 0.40, 10, None), ("voxelmorph-pkg", "not installed", None, None, None)]),
        _bench_case("warp-3d-fwdbwd", "warp-fwdbwd", [1, 1, 160, 192, 224], [
            ("fastwarp", "ok", 0.2, 10, 0.4), ("voxelmorph", "ok", 0.5, 10, None),
            ("voxelmorph-pkg", "ok", 0.7, 10, None)]),
        _bench_case("ncc-3d-w9-fwdbwd", "ncc-fwdbwd", [1, 1, 160, 192, 224], [
            ("fastwarp", "ok", 1.0, 10, 0.2), ("neurite", "ok", 12.0, 10, None), ("monai", "ok", 9.0, 10, None),
            ("fused_lncc", "ok", 1.5, 10, None), ("fireants", "not installed", None, None, None)], window=9),
        _bench_case("train-3d", "train", [1, 1, 160, 192, 224], [
            ("fastwarp", "ok", 50.0, 600, None), ("voxelmorph", "ok", 90.0, 1000, None)]),
    ])
    for case in bench["cases"]:
        base = case["rows"][0]["median_ms"]
        for row in case["rows"]:
            if row["median_ms"]:
                row["ratio"] = row["median_ms"] / base
    with open(os.path.join(report, "bench.json"), "w") as f:
        json.dump(bench, f)
    fused = dict(benchmarks=[
        dict(group=FUSED_GROUP.format(mode=mode), stats=dict(median=med), extra_info=dict(impl=impl, peak_extra_bytes=pk))
        for mode, impl, med, pk in [("fwdbwd", "fastwarp", 0.004, 100 << 20), ("fwdbwd", "fused_lncc", 0.010, 300 << 20),
                                    ("fwd", "fastwarp", 0.002, 50 << 20), ("fwd", "fused_lncc", 0.003, 100 << 20)]])
    with open(os.path.join(report, "bench_fused.json"), "w") as f:
        json.dump(fused, f)
    for step in ("train_fp32",):
        os.makedirs(os.path.join(work, step), exist_ok=True)
        with open(os.path.join(work, step, "log.json"), "w") as f:
            json.dump(dict(epochs=[dict(epoch=1, step=500, loss=-0.3, time_s=20.0,
                                        val=[dict(ncc_before=0.232, ncc_after=0.4, mean_dice_before=0.55,
                                                  mean_dice_after=0.66, folding_fraction=0.0003)]),
                                   dict(epoch=2, step=1000, loss=-0.35, time_s=20.0)]), f)
    os.makedirs(os.path.join(work, "register"), exist_ok=True)
    with open(os.path.join(work, "register", "metrics.json"), "w") as f:
        json.dump(dict(ncc_before=0.232, ncc_after=0.42, mean_dice_before=0.5542, mean_dice_after=0.6687,
                       folding_fraction=0.000315), f)


EXPECTED = [
    "result: FAIL (tests, memcheck, train_bf16); partial or empty: synccheck",
    "tests -m cuda: 140 passed, 1 failed, 0 errors, 2 skipped; failed: test_ncc::test_b[cuda]",
    "large tests: 12 passed, 0 failed, 0 errors, 2 skipped",
    "  memcheck: 3 errors [2 passed in 30.00s]",
    "  racecheck: 0 errors (0 hazards) [2 passed in 31.00s]",
    "  synccheck: no tests selected",
    "memcheck named: void fastwarp::(anonymous namespace)::warp_fwd_kernel<float, float, long, 3>",
    "warp fwd >= 2x grid_sample",
    "grid_sample 2.50x",
    "voxelmorph 4.00x; voxelmorph-pkg: not measured (not installed)",
    "yes (part measured)",
    "neurite 12.0x; monai 9.00x",
    "voxelmorph 1.80x, mem 0.60x",
    "fused_lncc 2.50x, mem 0.33x",
    "ncc-3d-w9-fwdbwd vs fused_lncc 1.50x; ncc-3d-w9-fwdbwd vs fireants: not installed",
    "fastwarp of copy bandwidth (copy 4300 GB/s): warp-3d-fwd 50%",
    "train fp32: 2 epochs, 1000 steps in 40 s (25.0 steps/s), loss -0.3500; val NCC 0.2320->0.4000",
    "train bf16: no log.json (TIMEOUT)",
    "register Colin27->MNI152 in 6.5 s: NCC 0.2320->0.4200, Dice 0.5542->0.6687, folding 0.0315%",
]


def selftest():
    tmp = tempfile.mkdtemp(prefix="gpu_summary_selftest.")
    try:
        work, report = os.path.join(tmp, "work"), os.path.join(tmp, "report")
        write_example(work, report)
        text, data = write_summary(work, report)
        missing = [e for e in EXPECTED if e not in text]
        verdicts = {g["goal"]: g["met"] for g in data["goals"]}
        checks = {
            "NCC w9 fwd+bwd >= 10x neurite/MONAI": "NO",
            "train step >= 1.5x VoxelMorph, <= 0.7x mem": "yes",
            "NCC 2x16x128^3 w7 >= 2x fused_lncc, <= 0.5x mem": "yes",
            "warp fwd >= 2x grid_sample": "yes",
        }
        wrong = {k: (verdicts.get(k), v) for k, v in checks.items() if verdicts.get(k) != v}
        # and on nothing at all: no inputs, no crash, every section says so, and it fails
        empty = os.path.join(tmp, "empty")
        text_empty, _ = write_summary(empty, empty)
        empty_ok = "benchmarks: no bench.json" in text_empty and "result: FAIL (no step ran)" in text_empty
        lines = text.splitlines()
        # the model beside the measured time, for a case the model has at the same shape
        bench = dict(meta=dict(device_type="cuda"), cases=[_bench_case(
            "warp-3d-fwd", "warp-fwd", [1, 1, 160, 192, 224], [("fastwarp", "ok", 0.2, 1, 0.5)])])
        model = dict(cases=[dict(case="warp-3d-fwd 1x1x160x192x224", modeled_seconds_h100=1e-4,
                                 modeled_seconds_h200=7e-5)])
        model_ok = model_lines(bench, {"gpu": "NVIDIA H200"}, model) == [
            "modeled/measured (H200, kernels only; benchmarks/gpu_model_full.json): warp-3d-fwd 0.07/0.20 ms"]
        if missing or wrong or not empty_ok or not model_ok or len(lines) > 60:
            sys.stdout.write(text)
            print(f"gpu_summary selftest FAILED: missing {missing}, wrong verdicts {wrong}, "
                  f"empty ok {empty_ok}, model line ok {model_ok}, {len(lines)} lines", file=sys.stderr)
            return 1
        print(f"gpu_summary selftest ok ({len(lines)} lines, {len(EXPECTED)} expected lines found)")
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", help="gpu_check.sh's work folder (steps.tsv, logs/, junit/, train_*/, register/)")
    p.add_argument("--report", help="REPORT_DIR: bench.json, bench_fused.json; summary.txt/.json are written here")
    p.add_argument("--print", action="store_true", help="print the summary")
    p.add_argument("--selftest", action="store_true", help="check the summary on a canned run")
    a = p.parse_args(argv)
    if a.selftest:
        return selftest()
    if not a.work or not a.report:
        p.error("--work and --report are required (or --selftest)")
    write_summary(a.work, a.report, echo=a.print)
    return 0


if __name__ == "__main__":
    sys.exit(main())
