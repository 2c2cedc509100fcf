"""Options and fixtures of the fastwarp benchmarks (pytest-benchmark).

    pytest benchmarks/ --benchmark-group-by=group            # full sizes, 2 CPU threads
    pytest benchmarks/ --fw-size=tiny --benchmark-disable    # tiny shapes: a quick smoke run

``--fw-size`` defaults to ``$FASTWARP_BENCH_SIZE`` (else ``full``) and ``--fw-threads`` to
``$FASTWARP_BENCH_THREADS`` (else 2).
"""

import os

import pytest
import torch

import fastwarp

SIZES = ("full", "tiny")


def pytest_addoption(parser):
    group = parser.getgroup("fastwarp benchmarks")
    group.addoption(
        "--fw-size",
        choices=SIZES,
        default=os.environ.get("FASTWARP_BENCH_SIZE", "full"),
        help="problem sizes: 'full' (default) or 'tiny' (smoke run); env FASTWARP_BENCH_SIZE",
    )
    group.addoption(
        "--fw-threads",
        type=int,
        default=int(os.environ.get("FASTWARP_BENCH_THREADS", "2")),
        help="torch CPU threads during the benchmarks (default 2); env FASTWARP_BENCH_THREADS",
    )


@pytest.fixture(scope="session")
def fw_size(request):
    """The size preset, 'full' or 'tiny'."""
    size = request.config.getoption("--fw-size")
    if size not in SIZES:  # the environment default bypasses argparse's choices
        raise pytest.UsageError(f"--fw-size / FASTWARP_BENCH_SIZE must be one of {SIZES}, got {size!r}")
    return size


@pytest.fixture(scope="session")
def cpu_threads(request):
    """Pins torch's intra-op CPU threads for the session and yields their number."""
    threads = request.config.getoption("--fw-threads")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    yield threads
    torch.set_num_threads(previous)


_HAS_CUDA = torch.cuda.is_available() and fastwarp.has_cuda_kernels()


@pytest.fixture(
    params=[
        "cpu",
        pytest.param(
            "cuda", marks=pytest.mark.skipif(not _HAS_CUDA, reason="no CUDA GPU or fastwarp built without CUDA")
        ),
    ]
)
def device(request):
    return torch.device(request.param)


@pytest.fixture
def cuda_device():
    """For the GPU-only cases (the copy-bandwidth reference)."""
    if not _HAS_CUDA:
        pytest.skip("no CUDA GPU or fastwarp built without CUDA")
    return torch.device("cuda")
