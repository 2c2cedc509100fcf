"""scripts/gpu_check.sh, the one-command GPU check, kept from rotting on machines without a GPU:
its --dry-run (syntax, tools, wheel list, build options, the exact CLI arguments, pytest
collections, the real command lines at tiny CPU sizes, the reports), its time budget, and the
summary writer (scripts/gpu_summary.py) on canned runs."""

import importlib.util
import json
import os
import subprocess
import sys
import tarfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(REPO, "scripts")
CHECK = os.path.join(SCRIPTS, "gpu_check.sh")


def _summary_module():
    spec = importlib.util.spec_from_file_location("gpu_summary", os.path.join(SCRIPTS, "gpu_summary.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(args, tmp_path, timeout=300):
    env = dict(os.environ, PYTHON=sys.executable, GPU_CHECK_WORK=str(tmp_path / "work"))
    return subprocess.run(["bash", CHECK, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def _report_files(report):
    return sorted(os.path.relpath(os.path.join(d, f), report) for d, _, fs in os.walk(report) for f in fs)


# --------------------------------------------------------------------------- the summary writer


def test_summary_selftest(capsys):
    assert _summary_module().selftest() == 0, capsys.readouterr().out


def test_summary_goal_verdicts(tmp_path):
    """A goal is met, missed, or not measured (baseline absent or failed), and the memory half
    of a goal counts."""
    gs = _summary_module()
    work, report = str(tmp_path / "work"), str(tmp_path / "report")
    gs.write_example(work, report)
    with open(os.path.join(report, "bench.json")) as f:
        bench = json.load(f)
    train = next(c for c in bench["cases"] if c["kind"] == "train")
    train["rows"][0]["peak_extra_bytes"] = 900  # fastwarp 0.9x VoxelMorph's memory: over 0.7x
    ncc = next(c for c in bench["cases"] if c["kind"] == "ncc-fwdbwd")
    for row in ncc["rows"]:
        if row["impl"] in ("neurite", "monai"):
            row.update(status="error", reason="RuntimeError: boom", median_ms=None)
    with open(os.path.join(report, "bench.json"), "w") as f:
        json.dump(bench, f)
    os.remove(os.path.join(report, "bench_fused.json"))
    text, data = gs.write_summary(work, report)
    verdicts = {g["goal"]: g["met"] for g in data["goals"]}
    assert verdicts["train step >= 1.5x VoxelMorph, <= 0.7x mem"] == "NO"
    assert verdicts["NCC w9 fwd+bwd >= 10x neurite/MONAI"] == "not measured"
    assert verdicts["NCC 2x16x128^3 w7 >= 2x fused_lncc, <= 0.5x mem"] == "not measured"
    assert verdicts["warp fwd >= 2x grid_sample"] == "yes"
    assert "neurite: not measured (error)" in text
    assert "not measured (no bench_fused.json)" in text
    with open(os.path.join(report, "summary.json")) as f:
        assert json.load(f)["result"] == "fail"


def test_summary_gpu_run_where_nothing_passed_fails(tmp_path):
    """On the GPU, a test step whose tests were all skipped (no GPU seen) fails the run."""
    gs = _summary_module()
    work, report = str(tmp_path / "work"), str(tmp_path / "report")
    gs.write_example(work, report)
    with open(os.path.join(work, "junit", "tests.xml"), "w") as f:
        f.write('<testsuites><testsuite name="pytest" errors="0" failures="0" skipped="177" tests="177">'
                "</testsuite></testsuites>")
    with open(os.path.join(work, "steps.tsv")) as f:
        rows = f.read().replace("tests\tFAILED\t1", "tests\tok\t0")
    with open(os.path.join(work, "steps.tsv"), "w") as f:
        f.write(rows)
    text, data = gs.write_summary(work, report)
    assert "tests: nothing passed" in data["failed_steps"], data["failed_steps"]
    assert "tests -m cuda: 0 passed, 0 failed, 0 errors, 177 skipped" in text


def test_summary_of_nothing(tmp_path):
    """Run where everything failed early: no inputs at all still make a summary, and an
    empty run fails (it proves nothing)."""
    text, data = _summary_module().write_summary(str(tmp_path / "w"), str(tmp_path / "r"))
    assert "benchmarks: no bench.json" in text and not data["steps"]
    assert data["result"] == "fail" and "no step ran" in text


# --------------------------------------------------------------------------- the wheel list


def test_wheel_list():
    proc = subprocess.run(["bash", os.path.join(SCRIPTS, "gpu_wheels.sh"), "--check"], cwd=REPO,
                          env=dict(os.environ, PYTHON=sys.executable), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "packages to carry" in proc.stdout


# --------------------------------------------------------------------------- the script


def test_usage_errors(tmp_path):
    assert _run([], tmp_path).returncode == 2
    assert _run(["--bogus", str(tmp_path / "r")], tmp_path).returncode == 2
    assert _run(["--budget", "soon", str(tmp_path / "r")], tmp_path).returncode == 2


def test_out_of_budget_is_recorded(tmp_path):
    """With no time left every step is recorded as skipped, the run fails, and the reports are
    still written."""
    report = tmp_path / "report"
    proc = _run(["--dry-run", "--budget", "3", str(report)], tmp_path, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "result: FAIL" in proc.stdout
    with open(report / "summary.json") as f:
        data = json.load(f)
    assert data["steps"] and all(s["status"] == "SKIPPED" for s in data["steps"] if s["name"] != "outputs")
    assert {"summary.txt", "summary.json", "logs.tar.gz"} <= set(_report_files(report))


@pytest.mark.slow
def test_dry_run(tmp_path):
    """The dry run passes here and leaves what the real run leaves in REPORT_DIR."""
    report = tmp_path / "report"
    proc = _run(["--dry-run", str(report)], tmp_path)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    files = _report_files(report)
    assert {"summary.txt", "summary.json", "logs.tar.gz", "bench.json", "bench.md"} <= set(files), files
    # the device tool brings back at most 8 files, at most 2 folders down: keep REPORT_DIR flat
    assert len(files) <= 8 and all(os.sep not in f for f in files), files
    with open(report / "summary.json") as f:
        data = json.load(f)
    assert data["result"] == "pass", data["failed_steps"]
    steps = {s["name"]: s for s in data["steps"]}
    for name in ("syntax", "tools", "wheels", "build", "import", "argv", "collect_tests", "collect_tests_large",
                 "collect_bench_fused", "bench", "train_fp32", "register", "summary", "outputs"):
        assert steps[name]["status"] == "ok", (name, steps.get(name))
    assert steps["collect_sanitize"]["status"] in ("ok", "EMPTY")
    for name in ("collect_tests", "collect_tests_large", "collect_bench_fused"):
        assert "tests collected" in steps[name]["note"], steps[name]
    with tarfile.open(report / "logs.tar.gz") as t:
        names = t.getnames()
    assert "./steps.tsv" in names and "./logs/collect_tests.log" in names and "./register/metrics.json" in names
    # the summary is the last thing printed
    assert proc.stdout.rstrip().endswith((report / "summary.txt").read_text().rstrip())
