"""pytest-side helpers of the benchmark modules (imported as a sibling module: pytest puts this
folder on sys.path for them). The baselines and the measurement helpers themselves live in
:mod:`fastwarp.bench` (one copy, shared with ``python -m fastwarp.bench``)."""

import pytest

from fastwarp.app.bench import BaselineNotApplicable, BaselineUnavailable


def build_or_skip(factory, *args, **kwargs):
    """``factory(*args, **kwargs)``, a baseline that is not installed or does not apply here
    (:class:`~fastwarp.bench.BaselineUnavailable`, :class:`~fastwarp.bench.BaselineNotApplicable`)
    turned into a skip."""
    try:
        return factory(*args, **kwargs)
    except (BaselineUnavailable, BaselineNotApplicable) as e:
        pytest.skip(str(e))


def record_bandwidth(benchmark, nbytes):
    benchmark.extra_info["bytes_moved"] = nbytes
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["GB/s"] = round(nbytes / benchmark.stats.stats.median / 1e9, 2)
