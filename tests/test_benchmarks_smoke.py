"""The pytest-benchmark suite runs: benchmarks/ at tiny sizes and untimed, in a subprocess (it has
its own conftest and options), every CPU case of fastwarp and of the plain-PyTorch baselines
(and, where installed, of the peers) run rather than skipped. Whether the baselines compute what
fastwarp does is tests/test_bench_baselines.py's."""

import importlib.util
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_benchmarks_run_tiny():
    cmd = [sys.executable, "-m", "pytest", "benchmarks/", "--benchmark-disable", "--fw-size=tiny"]
    cmd += ["-q", "-p", "no:cacheprovider", "-rA"]  # -rA lists every passed test by id
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output

    def ran(test):
        assert f"PASSED benchmarks/{test}" in output, (test, output)

    warp = ["fastwarp", "grid_sample", "voxelmorph"]
    peers = (("voxelmorph-pkg", "voxelmorph"), ("monai", "monai"))
    warp += [impl for impl, module in peers if importlib.util.find_spec(module)]
    ncc = ["fastwarp", "voxelmorph-classic"] + [name for name in ("neurite", "monai") if importlib.util.find_spec(name)]
    for nd in ("2d", "3d"):
        for impl in warp:
            for mode in ("fwd", "fwdbwd", "fwd-nearest"):
                ran(f"bench_warp.py::test_warp[cpu-{nd}-{impl}-{mode}]")
        for impl in ncc:
            for mode in ("fwd", "fwdbwd"):
                ran(f"bench_ncc.py::test_ncc[cpu-{nd}-{mode}-{impl}]")
    for impl in ncc:
        ran(f"bench_ncc.py::test_ncc[cpu-2d-fwdbwd-both-{impl}]")
    for impl in ("fastwarp", "voxelmorph"):
        ran(f"bench_train.py::test_train[cpu-{impl}]")
