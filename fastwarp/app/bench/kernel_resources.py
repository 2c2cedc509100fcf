"""What ptxas gives each CUDA kernel of fastwarp for sm_90: registers, stack, spills, static
shared memory, barriers. The occupancy of ``fastwarp bench --device cuda-model`` comes from
these (:mod:`fastwarp.app.bench.gpu_model`).

    python -m fastwarp.app.bench.kernel_resources [--arch sm_90] [--out build/kernel_resources.json]

Compiles csrc/cuda/*.cu with nvcc as setup.py does (same flags, -Xptxas -v, to no object
file) and parses ptxas's report; kernel names are demangled and shortened as the counting
build names them (fastwarp._emu._short_name). Needs nvcc and a CUDA build of torch, not a GPU.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import subprocess
import sys
import sysconfig

# the repository: the CUDA sources are compiled from a checkout (an editable install)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

_FUNCTION = re.compile(r"ptxas info\s*: Compiling entry function '(\S+)' for '(\w+)'")
_PROPERTIES = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")
_BARRIERS = re.compile(r"used (\d+) barriers")


def nvcc_command(source: str, arch: str) -> list[str]:
    os.environ.setdefault("CUDA_HOME", "/usr/local/cuda")  # read when cpp_extension loads
    from torch.utils.cpp_extension import CUDA_HOME, include_paths

    nvcc = os.path.join(CUDA_HOME or "/usr/local/cuda", "bin", "nvcc")
    includes = [f"-I{p}" for p in include_paths(device_type="cuda")] + [f"-I{sysconfig.get_paths()['include']}"]
    return [nvcc, "-c", source, "-o", os.devnull, f"-arch={arch}", "-O3", "--expt-relaxed-constexpr",
            "--extended-lambda", "-std=c++17", "-D_GLIBCXX_USE_CXX11_ABI=1", "-Xptxas", "-v",
            "-Xcompiler", "-fPIC", *includes]


def parse(report: str) -> list[dict]:
    """ptxas -v's lines -> one dict per entry function (kernel)."""
    from fastwarp._emu import _short_name

    kernels, current = [], None
    for line in report.splitlines():
        m = _FUNCTION.search(line)
        if m:
            current = {"symbol": m.group(1), "arch": m.group(2)}
            kernels.append(current)
            continue
        if current is None:
            continue
        if (m := _PROPERTIES.search(line)) is not None:
            current.update(stack_bytes=int(m.group(1)), spill_store_bytes=int(m.group(2)), spill_load_bytes=int(m.group(3)))
        if (m := _USED.search(line)) is not None:
            smem, barriers = _SMEM.search(line), _BARRIERS.search(line)
            current["registers"] = int(m.group(1))
            current["static_shared_bytes"] = int(smem.group(1)) if smem else 0
            current["barriers"] = int(barriers.group(1)) if barriers else 0
    symbols = [k["symbol"] for k in kernels]
    names = subprocess.run(["c++filt"], input="\n".join(symbols), capture_output=True, text=True, check=True).stdout.split("\n")
    for k, name in zip(kernels, names):
        k["kernel"] = _short_name(name)
    return kernels


DEFAULT_OUT = os.path.join(ROOT, "build", "kernel_resources.json")


def compile_report(arch: str = "sm_90") -> list[dict]:
    """Compiles csrc/cuda/*.cu for ``arch`` and returns ptxas's report, one dict per kernel
    (raises RuntimeError with nvcc's output when a compile fails)."""
    sources = sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))
    if not sources:
        raise RuntimeError(f"no CUDA sources under {ROOT}/csrc/cuda: run from a checkout of fastwarp")
    kernels = []
    for source in sources:
        run = subprocess.run(nvcc_command(source, arch), capture_output=True, text=True, cwd=ROOT)
        if run.returncode != 0:
            raise RuntimeError(f"nvcc failed on {source}:\n{run.stderr[-4000:]}")
        for k in parse(run.stderr + run.stdout):
            k["source"] = os.path.relpath(source, ROOT)
            kernels.append(k)
    return kernels


def load(path: str = DEFAULT_OUT) -> dict[str, dict] | None:
    """The saved report as kernel name -> resources, or None when there is none."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return {k["kernel"]: k for k in json.load(f)["kernels"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="sm_90")
    ap.add_argument("--out", default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    try:
        kernels = compile_report(args.arch)
    except RuntimeError as e:
        print(e, file=sys.stderr)
        return 1
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"arch": args.arch, "kernels": kernels}, f, indent=1)
    for k in kernels:
        print(f"{k['kernel'][:70]:70s} {k['registers']:4d} regs {k['stack_bytes']:4d} B stack "
              f"{k['spill_store_bytes']:3d}/{k['spill_load_bytes']:3d} B spill {k['static_shared_bytes']:5d} B smem")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
