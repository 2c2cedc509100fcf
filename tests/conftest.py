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

HAS_CUDA = torch.cuda.is_available() and fastwarp.has_cuda_kernels()

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU"))]


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


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
