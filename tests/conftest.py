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
