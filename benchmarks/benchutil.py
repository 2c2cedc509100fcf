"""pytest-side helpers of the benchmark modules (imported as a sibling module: pytest puts this
folder on sys.path for them). The cases, the baselines and the measurement helpers themselves live
in :mod:`fastwarp.app.bench` (one copy, shared with ``python -m fastwarp.bench``)."""

import pytest
import torch

from fastwarp.app.bench import BaselineNotApplicable, BaselineUnavailable
from fastwarp.app.bench.measure import peak_extra_memory


def build_or_skip(factory, *args, **kwargs):
    """``factory(*args, **kwargs)``, a baseline that is not installed or does not apply here
    (:class:`~fastwarp.app.bench.BaselineUnavailable`,
    :class:`~fastwarp.app.bench.BaselineNotApplicable`) turned into a skip."""
    try:
        return factory(*args, **kwargs)
    except (BaselineUnavailable, BaselineNotApplicable) as e:
        pytest.skip(str(e))


def time_call(benchmark, call, device, memory=False):
    """Times ``call()`` (a case's timed call, :mod:`fastwarp.app.bench.cases`), synchronised on
    CUDA, after one untimed call (lazy initialisation, allocator and kernel warm-up). With
    ``memory``, the peak extra memory of one more call goes to ``extra_info`` first
    (:func:`~fastwarp.app.bench.measure.peak_extra_memory`) and is returned."""

    def step():
        call()
        if device.type == "cuda":
            torch.cuda.synchronize()

    step()
    peak = peak_extra_memory(call, device) if memory else {}
    benchmark.extra_info.update(peak)
    benchmark(step)
    return peak


def record_bandwidth(benchmark, nbytes):
    benchmark.extra_info["bytes_moved"] = nbytes
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["GB/s"] = round(nbytes / benchmark.stats.stats.median / 1e9, 2)
