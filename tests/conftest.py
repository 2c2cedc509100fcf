import contextlib
import os
import pathlib

import pytest
import torch

# torch.compile writes its caches under the build folder, not the system temp dir.
_BUILD = pathlib.Path(__file__).resolve().parents[1] / "build" / "test-cache"
_BUILD.mkdir(parents=True, exist_ok=True)
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(_BUILD / "inductor"))
os.environ.setdefault("TRITON_CACHE_DIR", str(_BUILD / "triton"))

import fastwarp  # noqa: E402
import synthetic  # noqa: E402
from fastwarp import _emu  # noqa: E402

HAS_CUDA = torch.cuda.is_available() and fastwarp.has_cuda_kernels()
HAS_CUDA_EMU = _emu.available()

# "cuda_emu": the CUDA kernels on the emulated launch (fastwarp/_emu.py), CPU tensors. Build
# with FASTWARP_CUDA_EMU=1; select with `python -m pytest -m cuda_emu`.
CUDA_EMU = pytest.param(
    "cuda_emu",
    marks=[
        pytest.mark.cuda_emu,
        pytest.mark.skipif(not HAS_CUDA_EMU, reason="emulated-CUDA test build absent (FASTWARP_CUDA_EMU=1)"),
    ],
)
# "cuda": a real GPU (scripts/gpu_check.sh runs `python -m pytest -m cuda`).
CUDA = pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU")])
DEVICES = ["cpu", CUDA, CUDA_EMU]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture(params=DEVICES)
def device(request):
    """The device a test runs fastwarp on. For "cuda_emu" the tensors stay on the CPU and
    every fastwarp op of the test runs the CUDA kernels on the emulated launch; the test must
    run at least one."""
    if request.param != "cuda_emu":
        yield torch.device(request.param)
        return
    with _emu.EmulatedCuda() as mode:
        yield torch.device("cpu")
    report = getattr(request.node, "report_call", None)
    if report is not None and report.passed:
        assert mode.calls, "the test ran no fastwarp op on the emulated CUDA kernels"


@contextlib.contextmanager
def deterministic_algorithms():
    """``torch.use_deterministic_algorithms(True)`` inside, restored afterwards."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


@pytest.fixture
def one_thread():
    """torch on one CPU thread for the test, restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def gen():
    """A fresh, seeded generator per test: inputs are random, never zeros, and reproducible."""
    g = torch.Generator().manual_seed(1234)
    return g


@pytest.fixture(scope="session")
def synth(tmp_path_factory):
    """Synthetic subjects with label maps: four on one grid (training), three more on it (an
    atlas, one to train, one to validate), and an odd-shaped pair on two other grids."""
    root = tmp_path_factory.mktemp("synth")
    subjects = root / "subjects"
    subjects.mkdir()
    aff = synthetic.scaled_affine((2.0, 2.0, 2.0), (-10.0, 5.0, 3.0))
    paths = synthetic.blob_subjects(str(subjects), [f"sub{i}" for i in range(4)], (16, 16, 16), 0, aff)
    other = root / "other"
    other.mkdir()
    paths.update(synthetic.blob_subjects(str(other), ["atlas", "one", "two"], (16, 16, 16), 1, aff))
    # an odd-shaped pair on different grids for `fastwarp register`
    odd = root / "odd"
    odd.mkdir()
    moving_grid = synthetic.scaled_affine((1.5, 1.0, 2.0), (3.0, -7.0, 1.0))
    fixed_grid = synthetic.scaled_affine((1.2, 1.1, 1.9), (-4.0, 2.0, 8.0))
    paths.update(synthetic.blob_subjects(str(odd), ["moving"], (15, 18, 13), 2, moving_grid))
    paths.update(synthetic.blob_subjects(str(odd), ["fixed"], (15, 18, 13), 2, fixed_grid))
    return {"root": root, "subjects": str(subjects), "paths": paths}


@pytest.fixture(scope="session")
def model3d(synth, tmp_path_factory):
    """A checkpoint of a tiny 3-D network trained for two steps on ``synth``'s subjects."""
    out = tmp_path_factory.mktemp("model3d")
    synthetic.run_train("--data", synth["subjects"], "--epochs", 1, "--steps", 2, "--lr", "3e-3", "--no-figure",
                        "-o", out)
    return str(out / "checkpoint.pt")


@pytest.fixture(scope="session")
def model2d(synth, tmp_path_factory):
    """A checkpoint of a tiny 2-D network trained for one step on ``synth``'s subjects."""
    out = tmp_path_factory.mktemp("model2d")
    synthetic.run_train("--data", synth["subjects"], "--ndim", 2, "--epochs", 1, "--steps", 1, "--no-figure", "-o", out)
    return str(out / "checkpoint.pt")
