"""``fastwarp bench``: fastwarp against every available baseline, on the same inputs.

Cases (float32, batch 1; sizes from :mod:`fastwarp.app.bench.cases`):

- ``warp-{3d,2d}-fwd`` / ``-fwdbwd`` / ``-fwdbwd-both`` / ``-fwd-nearest``: the warp alone, a
  training step's warp (the displacement requires grad, the image does not), the warp with the
  gradients to both (scaling and squaring, an optimized moving image), and a label map's warp
  (nearest neighbour); the backward takes a fixed random ``grad_out``. Against ``grid_sample`` on a precomputed grid, VoxelMorph's transformer in
  plain PyTorch, and the installed voxelmorph's and MONAI's.
- ``vecint-3d``: scaling and squaring of a velocity field (7 steps) with its backward, at
  VoxelMorph's half resolution: ``fastwarp.nn.VecInt`` against VoxelMorph's ``VecInt`` in plain
  PyTorch, the installed voxelmorph's and MONAI's ``DVF2DDF``.
- ``ncc-3d-w<window>-fwd`` / ``-fwdbwd``: the windowed NCC loss, and with its gradient to the
  moving image. Against VoxelMorph's conv NCC in plain PyTorch, neurite's, MONAI's, and (CUDA)
  fused_lncc's and FireANTs'.
- ``mi-3d-<kernel>-b<bins>-fwdbwd``: the global mutual information loss with its gradient to the
  moving image, with the cubic B-spline and the Gaussian Parzen kernels. Against MONAI's
  ``GlobalMutualInformationLoss`` with the same kernel and bins (and neurite's, which has none in
  PyTorch).
- ``train-3d``: one training step of :class:`fastwarp.app.models.RegUNet` (forward, backward, Adam)
  on fastwarp's warp and NCC against the same network on VoxelMorph's
  (:mod:`fastwarp.app.bench.train_step`).

Timing: warm-up calls first; then on a GPU CUDA events around each call, the calls rotating
through enough input sets to exceed twice the L2 cache; on a CPU ``time.perf_counter`` around
each call with ``torch.set_num_threads(threads)``; the median is reported. The ratio is a
baseline's median over fastwarp's ("fastwarp is N× faster"). GB/s is the bytes any
implementation must move over the median, and on a GPU its fraction of a device-to-device copy's
bandwidth measured in the same run. Peak extra memory is that of one call beyond what was in use
before it (:func:`fastwarp.app.bench.measure.peak_extra_memory`). A baseline whose package is not
installed is listed as such.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence

import torch

import fastwarp

from . import cases as C
from .baselines import MI_IMPLS, NCC_IMPLS, VECINT_IMPLS, WARP_IMPLS, BaselineNotApplicable, BaselineUnavailable
from .measure import copy_bandwidth, describe, ncc_bytes_moved, peak_extra_memory, time_calls, warp_bytes_moved
from .train_step import TRAIN_VARIANTS, TrainStep

__all__ = ["main", "build_parser", "run", "format_markdown"]

CASE_GROUPS = ("warp", "vecint", "ncc", "mi", "train")
PROG = "fastwarp bench"
_MIB = 1 << 20


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    def sizes(table, key=lambda device: device):
        return "; ".join(f"{size}: " + ", ".join(f"{'x'.join(map(str, table[size][key(d)]))} ({d})"
                                                 for d in ("cpu", "cuda")) for size in C.SIZES)

    ncc = {size: {d: C.NCC_CASES[size]["3d"].shapes[d][2:] for d in ("cpu", "cuda")} for size in C.SIZES}
    mi = {size: {d: C.MI_SHAPES[size][d][2:] for d in ("cpu", "cuda")} for size in C.SIZES}
    epilog = (f"cases (batch 1): warp forward, forward+backward with the gradient to the displacement, and "
              f"to both [3-D {sizes(C.WARP_SHAPES, lambda d: (3, d))}; 2-D {sizes(C.WARP_SHAPES, lambda d: (2, d))}]; "
              f"scaling and squaring, {C.VECINT_STEPS} steps, forward+backward [{sizes(C.VECINT_SHAPES)}]; "
              f"NCC loss (3-D), window "
              f"{C.NCC_CASES['full']['3d'].window} (tiny: {C.NCC_CASES['tiny']['3d'].window}), forward, and "
              f"forward+backward (gradient to the moving image) [{sizes(ncc)}]; mutual information, "
              f"{C.MI_BINS} bins, {' and '.join(C.MI_KERNELS)} kernels, forward+backward "
              f"[{sizes(mi)}]; one training step of "
              f"RegUNet(3) on fastwarp's ops and on VoxelMorph's [{sizes(C.TRAIN_SHAPES)}].")
    p = argparse.ArgumentParser(
        prog=prog,
        description="Time fastwarp's warp, NCC loss and a registration training step against every "
                    "installed baseline (grid_sample, VoxelMorph, MONAI, neurite, ...) on the same inputs.",
        epilog=epilog)
    p.add_argument("--size", choices=C.SIZES, default="full",
                   help="problem sizes: full (default; the published figures) or tiny (a smoke run)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda", "cuda-model"), default="auto",
                   help="auto (default): cuda when a GPU is visible and fastwarp has CUDA kernels, else cpu; "
                        "cuda-model: the CUDA kernels' cost on an H100/H200, modeled from exact counts of the "
                        "emulated launch, no GPU needed (the counting build, FASTWARP_CUDA_EMU=count; "
                        "fastwarp.app.bench.gpu_model)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--cases", default=",".join(CASE_GROUPS),
                   help=f"comma-separated subset of {','.join(CASE_GROUPS)} (default all)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed calls per implementation (default: enough for ~1 s on CPU / 0.5 s on CUDA, "
                        "at least 5 / 10)")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON here")
    p.add_argument("--markdown", metavar="PATH", help="write the results as a Markdown table here")
    return p


# --------------------------------------------------------------------------- one implementation


def _row(case: str, impl: str, **fields) -> dict:
    row = dict(case=case, impl=impl, status="ok", reason=None, version=None, median_ms=None, min_ms=None,
               calls=None, warmup=None, ratio=None, bytes_moved=None, gbps=None, copy_fraction=None,
               peak_extra_bytes=None, peak_method=None, steps_per_s=None)
    row.update(fields)
    return row


def _unavailable_row(case: str, impl: str, error: Exception) -> dict:
    if isinstance(error, BaselineNotApplicable):
        return _row(case, impl, status="not applicable", reason=error.reason)
    if isinstance(error, BaselineUnavailable) and not error.installed:
        return _row(case, impl, status="not installed", reason=error.reason)
    if isinstance(error, BaselineUnavailable):
        return _row(case, impl, status="unavailable", reason=error.reason)
    return _row(case, impl, status="error", reason=f"{type(error).__name__}: {error}")


def _measure(case: str, impl: str, version: str, call: Callable[[], object], device: torch.device,
             repeats: int | None, moved: int | None) -> dict:
    """Times ``call`` (:func:`~fastwarp.app.bench.measure.time_calls`), then measures the peak extra
    memory of one more call (after the timing, so that giving freed memory back to the system
    for the measurement does not slow the timed calls down)."""
    timing = time_calls(call, device, repeats)
    memory = peak_extra_memory(call, device, profile=False)
    row = _row(case, impl, version=version, median_ms=timing.median_s * 1e3, min_ms=timing.min_s * 1e3,
               calls=timing.calls, warmup=timing.warmup, peak_extra_bytes=memory.get("peak_extra_bytes"),
               peak_method=memory.get("peak_method"))
    if moved is not None:
        row.update(bytes_moved=moved, gbps=moved / timing.median_s / 1e9)
    return row


def _run_impls(case: str, shape: Sequence[int], names: Sequence[str],
               build: Callable[[str], tuple[str, Callable[[], object], int | None]],
               device: torch.device, repeats: int | None, report: Callable[[dict], None]) -> list[dict]:
    """Builds and measures each implementation in turn (fastwarp first): ``build(name)`` returns
    ``(version, call, bytes_moved)`` or raises; a baseline that cannot be built or run becomes a
    row saying why, fastwarp's own failure propagates."""
    rows = []
    for name in names:
        call = None
        try:
            version, call, moved = build(name)
            row = _measure(case, name, version, call, device, repeats, moved)
        except Exception as e:  # noqa: BLE001  (a peer's failure must not end the run)
            if name == "fastwarp":
                raise
            row = _unavailable_row(case, name, e)
        finally:
            del call  # this implementation's inputs and state, before the next one's
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        row["shape"] = list(shape)
        rows.append(row)
        report(row)
    return rows


# --------------------------------------------------------------------------- cases


def _warp_case(nd: int, mode: str, size: str, device: torch.device, repeats, report) -> dict:
    spatial = C.WARP_SHAPES[size][nd, device.type]
    name = f"warp-{nd}d-{mode}"
    inputs = C.warp_inputs(spatial, device, mode)
    moved = warp_bytes_moved(inputs[0][0], inputs[0][1], mode)

    def build(impl_name):
        impl = WARP_IMPLS[impl_name](spatial, device, C.DTYPE)
        return impl.version, C.warp_call(impl, inputs, mode), moved

    rows = _run_impls(name, [1, 1, *spatial], list(WARP_IMPLS), build, device, repeats, report)
    what = {"fwd": "", "fwdbwd": "; disp requires grad, image not; backward with a fixed grad_out",
            "fwdbwd-both": "; image and disp require grad; backward with a fixed grad_out",
            "fwd-nearest": "; nearest neighbour, a 4-label map (float32)"}[mode]
    return dict(case=name, kind=f"warp-{mode}", shape=[1, 1, *spatial], window=None, input_sets=len(inputs),
                description="fastwarp.warp(image, disp) and the baselines' warps" + what, rows=rows)


def _vecint_case(size: str, device: torch.device, repeats, report) -> dict:
    spatial = C.VECINT_SHAPES[size][device.type]
    name = "vecint-3d"
    inputs = C.vecint_inputs(spatial, device)

    def build(impl_name):
        impl = VECINT_IMPLS[impl_name](spatial, device, C.DTYPE, C.VECINT_STEPS)
        return impl.version, C.vecint_call(impl.integrate, inputs), None

    rows = _run_impls(name, [1, 3, *spatial], list(VECINT_IMPLS), build, device, repeats, report)
    return dict(case=name, kind="vecint-fwdbwd", shape=[1, 3, *spatial], window=None, input_sets=len(inputs),
                description=f"scaling and squaring of a velocity field, {C.VECINT_STEPS} steps (VoxelMorph's "
                            "VecInt), forward and the gradient to the velocity", rows=rows)


def _ncc_case(backward: bool, size: str, device: torch.device, repeats, report) -> dict:
    case = C.NCC_CASES[size]["3d"]
    shape, window = case.shapes[device.type], case.window
    mode = "fwdbwd" if backward else "fwd"
    name = f"ncc-3d-w{window}-{mode}"
    inputs = C.ncc_inputs(shape, device, mode)
    moved = ncc_bytes_moved(inputs[0][0], mode)

    def build(impl_name):
        impl = NCC_IMPLS[impl_name](case.nd, window, device, C.DTYPE)
        return impl.version, C.ncc_call(impl, inputs, mode), moved

    rows = _run_impls(name, shape, list(NCC_IMPLS), build, device, repeats, report)
    return dict(case=name, kind=f"ncc-{mode}", shape=list(shape), window=window, input_sets=len(inputs),
                description="NCC loss -mean(cc)" + (", gradient to the moving image" if backward else ""),
                rows=rows)


def _mi_case(kernel: str, size: str, device: torch.device, repeats, report) -> dict:
    shape, bins, mode = C.MI_SHAPES[size][device.type], C.MI_BINS, "fwdbwd"
    name = f"mi-3d-{kernel}-b{bins}-{mode}"
    inputs = C.ncc_inputs(shape, device, mode)
    moved = ncc_bytes_moved(inputs[0][0], mode)  # as the NCC's: both read twice, one gradient written

    def build(impl_name):
        impl = MI_IMPLS[impl_name](kernel, bins, device, C.DTYPE)
        return impl.version, C.ncc_call(impl, inputs, mode), moved

    rows = _run_impls(name, shape, list(MI_IMPLS), build, device, repeats, report)
    return dict(case=name, kind=f"mi-{mode}", shape=list(shape), window=None, input_sets=len(inputs),
                description=f"MI loss -mi, {bins} bins, {kernel} Parzen kernel, gradient to the moving image",
                rows=rows)


def _train_case(size: str, device: torch.device, repeats, report) -> dict:
    spatial = C.TRAIN_SHAPES[size][device.type]
    name = "train-3d"
    inputs = C.train_inputs(spatial, device)
    first_losses: dict[str, float] = {}
    descriptions = {}

    def build(variant):
        step = TrainStep(variant, spatial, device)
        descriptions[variant] = step.description
        timed = C.train_call(step, inputs)

        def call():
            loss = timed()
            if variant not in first_losses:  # (one host sync, on the first call only)
                first_losses[variant] = float(loss)
            return loss

        return step.version, call, None

    rows = _run_impls(name, [1, 1, *spatial], list(TRAIN_VARIANTS), build, device, repeats, report)
    for row in rows:  # (steps/s: set by report, as the rows come)
        if row["impl"] in first_losses:
            row["first_step_loss"] = first_losses[row["impl"]]
        if row["impl"] in descriptions:
            row["step"] = descriptions[row["impl"]]
    return dict(case=name, kind="train", shape=[1, 1, *spatial], window=C.TRAIN_WINDOW, input_sets=len(inputs),
                description=f"one training step of RegUNet(3): forward, NCC({C.TRAIN_WINDOW}) + Grad('l2'), "
                            "backward, Adam",
                rows=rows)


# --------------------------------------------------------------------------- output


def _fmt(value, spec: str, empty: str = "") -> str:
    return empty if value is None else format(value, spec)


def _label(row: dict) -> str:
    shape = row.get("shape")
    return row["case"] if not shape else f"{row['case']} {'x'.join(map(str, shape[2:]))}"


def _cells(row: dict) -> list[str]:
    """case (with its spatial size), implementation, median, ratio, GB/s, % of copy, peak MiB,
    steps/s."""
    if row["status"] != "ok":
        why = row["status"] if row["status"] == "not installed" else f"{row['status']}: {row['reason']}"
        return [_label(row), row["impl"], why, "", "", "", "", ""]
    peak = row["peak_extra_bytes"]
    return [
        _label(row),
        row["impl"],
        _fmt(row["median_ms"], ".2f"),
        _fmt(row["ratio"], ".2f"),
        _fmt(row["gbps"], ".1f"),
        _fmt(None if row["copy_fraction"] is None else 100 * row["copy_fraction"], ".0f"),
        _fmt(None if peak is None else peak / _MIB, ".1f"),
        _fmt(row["steps_per_s"], ".2f"),
    ]


_HEADERS = ["case", "implementation", "median (ms)", "time / fastwarp", "GB/s", "% of copy",
            "peak extra (MiB)", "steps/s"]
_WIDTHS = [30, 18, 10, 6, 6, 6, 9, 8]
_CONSOLE_HEADERS = ["case", "implementation", "median ms", "x fw", "GB/s", "%copy", "peak MiB", "steps/s"]


def _console_line(cells: Sequence[str]) -> str:
    out = []
    for i, (cell, width) in enumerate(zip(cells, _WIDTHS)):
        if i == 2 and cells[3] == "" and cell and not cell[0].isdigit():  # a status: let it run on
            out.append(cell)
            break
        out.append(cell.ljust(width) if i < 2 else cell.rjust(width))
    return " ".join(out).rstrip()


def format_markdown(result: dict) -> str:
    meta = result["meta"]
    lines = [f"### `{meta['command']}`, {meta['date'][:10]}", ""]
    machine = meta["device"] if meta["device_type"] == "cuda" else f"{meta['cpu']} (cpu)"
    lines.append(f"- Machine: {machine}, {meta['threads']} torch CPU thread(s), {meta['cpu_count']} CPU(s) visible")
    commit = f" at commit {meta['git_commit']}" if meta.get("git_commit") else ""
    lines.append(f"- torch {meta['torch']}, fastwarp {meta['fastwarp']}{commit}, float32, batch 1")
    peers = ", ".join(f"{k} {v}" for k, v in sorted(meta["peers"].items()))
    if peers:
        lines.append(f"- Baselines' versions: {peers}")
    if meta.get("copy_GBps"):
        lines.append(f"- Device-to-device copy: {meta['copy_GBps']:.0f} GB/s ({meta['copy_bytes'] >> 20} MiB buffer)")
    if meta.get("loadavg_start") is not None:
        lines.append(f"- Load average at the start: {meta['loadavg_start']:.2f}")
    lines.append(f"- Timing: {meta['timing']}; peak extra memory: {meta['peak_method']}")
    lines.append("")
    lines.append("| " + " | ".join(_HEADERS) + " |")
    lines.append("|---|---|" + "---:|" * (len(_HEADERS) - 2))
    for case in result["cases"]:
        for row in case["rows"]:
            cells = _cells(row)
            if row["impl"] == "fastwarp":
                cells[1] = "**fastwarp**"
            cells = [" ".join(cell.replace("|", "\\|").split()) for cell in cells]
            lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("`time / fastwarp` > 1: fastwarp is that many times faster. GB/s: the bytes any implementation "
                 "must move over the median" + ("; % of copy: of the copy bandwidth above." if meta.get("copy_GBps")
                                                  else "."))
    return "\n".join(lines) + "\n"


def _git_commit() -> str | None:
    here = os.path.dirname(os.path.abspath(fastwarp.__file__))
    try:
        out = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=5)
    return out.stdout.strip() + ("+dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# --------------------------------------------------------------------------- main


def run(args: argparse.Namespace, command: str, out=None) -> dict:
    """Runs the cases ``args`` asks for, printing the table to ``out`` (stdout) as the rows come,
    and returns ``{"meta": ..., "cases": [...]}``."""
    out = sys.stdout if out is None else out
    groups = [c.strip() for c in args.cases.split(",") if c.strip()]
    device = torch.device(args.device)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        meta = dict(
            tool="fastwarp.bench", command=command, argv=list(args.argv),
            date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            size=args.size, device=describe(device), device_type=device.type, cpu=_cpu_model(),
            cpu_count=os.cpu_count(), threads=args.threads, torch=torch.__version__, fastwarp=fastwarp.__version__,
            git_commit=_git_commit(), python=platform.python_version(), platform=platform.platform(),
            cuda=torch.version.cuda, repeats=args.repeats, cases=groups,
            loadavg_start=os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            timing=("warm-up, then CUDA events around each call, median" if device.type == "cuda"
                    else f"warm-up, then time.perf_counter around each call with {args.threads} thread(s), median"),
            peak_method=("cuda max_memory_allocated over memory_allocated before the call" if device.type == "cuda"
                         else "resident-memory high-water of one call over the resident memory before it"),
        )
        if device.type == "cuda":
            meta["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
        print(f"fastwarp {fastwarp.__version__}, torch {torch.__version__} on {meta['device']}"
              f" ({args.threads} CPU thread(s)), size {args.size}", file=out, flush=True)
        if device.type == "cuda":
            copy_bytes = C.COPY_BYTES[args.size]
            bandwidth, _ = copy_bandwidth(device, copy_bytes)
            meta.update(copy_GBps=bandwidth / 1e9, copy_bytes=copy_bytes)
            print(f"device-to-device copy: {bandwidth / 1e9:.0f} GB/s", file=out, flush=True)
        print(_console_line(_CONSOLE_HEADERS), file=out, flush=True)
        fastwarp_ms: dict[str, float] = {}

        def report(row):
            if row["impl"] == "fastwarp":
                fastwarp_ms[row["case"]] = row["median_ms"]
            base = fastwarp_ms.get(row["case"])
            if row["median_ms"] and base:
                row["ratio"] = row["median_ms"] / base
            if row["gbps"] is not None and meta.get("copy_GBps"):
                row["copy_fraction"] = row["gbps"] / meta["copy_GBps"]
            if row["case"].startswith("train") and row["median_ms"]:
                row["steps_per_s"] = 1e3 / row["median_ms"]
            print(_console_line(_cells(row)), file=out, flush=True)

        results = []
        for group in groups:
            if group == "warp":
                for nd in (3, 2):
                    for mode in C.WARP_MODES:
                        results.append(_warp_case(nd, mode, args.size, device, args.repeats, report))
            elif group == "vecint":
                results.append(_vecint_case(args.size, device, args.repeats, report))
            elif group == "ncc":
                results.append(_ncc_case(False, args.size, device, args.repeats, report))
                results.append(_ncc_case(True, args.size, device, args.repeats, report))
            elif group == "mi":
                for kernel in C.MI_KERNELS:
                    results.append(_mi_case(kernel, args.size, device, args.repeats, report))
            else:
                results.append(_train_case(args.size, device, args.repeats, report))
        meta["peers"] = {row["impl"]: row["version"] for case in results for row in case["rows"]
                         if row["status"] == "ok" and row["impl"] not in ("fastwarp", "grid_sample", "voxelmorph",
                                                                           "voxelmorph-classic")}
        return dict(meta=meta, cases=results)
    finally:
        torch.set_num_threads(previous_threads)


def _model_main(args: argparse.Namespace, prog: str) -> int:
    from fastwarp import _emu

    from . import gpu_model

    if not _emu.built("count"):
        print(f"{prog}: error: --device cuda-model needs the counting build: FASTWARP_CUDA_EMU=count pip install "
              "--no-build-isolation -e . (with clang)", file=sys.stderr)
        return 2
    groups = [g for g in args.cases.split(",") if g in ("warp", "ncc", "mi")]
    if not groups:
        print(f"{prog}: error: --device cuda-model models the warp, ncc and mi cases", file=sys.stderr)
        return 2
    result = gpu_model.run(args.size, groups)
    result["meta"].update(command=" ".join([prog, shlex.join(args.argv)]).strip(), git_commit=_git_commit(),
                          date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    _write(args, result, gpu_model.format_markdown)
    return 0


def _write(args: argparse.Namespace, result: dict, markdown: Callable[[dict], str]) -> None:
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
            f.write("\n")
        print(f"wrote {args.json}")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown(result))
        print(f"wrote {args.markdown}")


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    args.argv = argv
    groups = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = sorted(set(groups) - set(CASE_GROUPS))
    if not groups or unknown:
        parser.error(f"--cases takes a comma-separated subset of {','.join(CASE_GROUPS)}, got {args.cases!r}")
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.device == "cuda-model":
        return _model_main(args, prog)
    has_cuda = torch.cuda.is_available() and fastwarp.has_cuda_kernels()
    if args.device == "auto":
        args.device = "cuda" if has_cuda else "cpu"
    elif args.device == "cuda" and not has_cuda:
        print(f"{prog}: error: --device cuda needs a visible CUDA GPU and fastwarp built with CUDA kernels "
              f"(GPU visible: {torch.cuda.is_available()}, CUDA kernels: {fastwarp.has_cuda_kernels()})",
              file=sys.stderr)
        return 2
    command = " ".join([prog, shlex.join(argv)]).strip()
    result = run(args, command)
    errors = [row for case in result["cases"] for row in case["rows"] if row["status"] == "error"]
    for row in errors:
        print(f"{prog}: warning: {row['case']} {row['impl']} failed: {row['reason']}", file=sys.stderr)
    _write(args, result, format_markdown)
    return 0
