"""The benchmarks run: benchmarks/bench_warp.py at tiny sizes and untimed, in a subprocess (it has
its own conftest and options). Its ``test_agreement`` cases check, in float64, that the baselines
(grid_sample, the plain-PyTorch VoxelMorph transformer and, where installed, voxelmorph's and
MONAI's own) compute what fastwarp.warp does; here we make sure they ran rather than skipped."""

import importlib.util
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_benchmarks_run_tiny():
    cmd = [sys.executable, "-m", "pytest", "benchmarks/bench_warp.py", "--benchmark-disable", "--fw-size=tiny"]
    cmd += ["-q", "-p", "no:cacheprovider", "-rA"]  # -rA lists every passed test by id
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output

    passed = re.search(r"(\d+) passed", output)
    assert passed and int(passed.group(1)) > 0, output

    baselines = ["grid_sample", "voxelmorph"]
    if importlib.util.find_spec("monai") is not None:
        baselines.append("monai")
    for nd in ("2d", "3d"):
        for impl in baselines:
            assert f"PASSED benchmarks/bench_warp.py::test_agreement[cpu-{nd}-{impl}]" in output, output


@pytest.mark.slow
def test_ncc_benchmarks_run_tiny():
    """benchmarks/bench_ncc.py likewise: its ``test_agreement`` cases check, in float64, that the
    plain-PyTorch VoxelMorph NCC and neurite's compute fastwarp.ncc's loss and gradient, and that
    MONAI's agrees where its formula is ours; every CPU case must have run rather than skipped."""
    cmd = [sys.executable, "-m", "pytest", "benchmarks/bench_ncc.py", "--benchmark-disable", "--fw-size=tiny"]
    cmd += ["-q", "-p", "no:cacheprovider", "-rA"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output

    passed = re.search(r"(\d+) passed", output)
    assert passed and int(passed.group(1)) > 0, output

    baselines = ["voxelmorph-classic"]
    baselines += [name for name in ("neurite", "monai") if importlib.util.find_spec(name) is not None]
    for nd in ("2d", "3d"):
        for impl in baselines:
            for window in (3, 5):
                assert f"PASSED benchmarks/bench_ncc.py::test_agreement[cpu-{nd}-{impl}-{window}]" in output, output
        for mode in ("fwd", "fwdbwd"):
            for impl in ["fastwarp", *baselines]:
                assert f"PASSED benchmarks/bench_ncc.py::test_ncc[cpu-{nd}-{mode}-{impl}]" in output, output
    for impl in ["fastwarp", *baselines]:
        assert f"PASSED benchmarks/bench_ncc.py::test_ncc[cpu-2d-fwdbwd-both-{impl}]" in output, output


@pytest.mark.slow
def test_train_benchmarks_run_tiny():
    """benchmarks/bench_train.py likewise: one training step of RegUNet(3) on fastwarp's ops and on
    VoxelMorph's (same weights, same data) ran on the CPU, and ``test_first_step_loss`` checked
    that both compute the same loss on the first step (to ``rtol=1e-5``: float32, the two NCCs
    sum their windows in different orders; its docstring says why that tolerance)."""
    cmd = [sys.executable, "-m", "pytest", "benchmarks/bench_train.py", "--benchmark-disable", "--fw-size=tiny"]
    cmd += ["-q", "-p", "no:cacheprovider", "-rA"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output

    for impl in ("fastwarp", "voxelmorph"):
        assert f"PASSED benchmarks/bench_train.py::test_train[cpu-{impl}]" in output, output
    assert "PASSED benchmarks/bench_train.py::test_first_step_loss[cpu]" in output, output
