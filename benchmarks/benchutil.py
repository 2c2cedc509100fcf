"""Helpers shared by the benchmark modules (imported as a sibling module: pytest puts this
folder on sys.path for them)."""

import math

import torch


def input_sets(device, set_bytes):
    """How many input sets the timed calls rotate through: 3, and on a GPU enough to fill twice
    its L2 cache, so that no call finds its inputs there (as in a training step)."""
    if device.type != "cuda":
        return 3
    l2 = torch.cuda.get_device_properties(device).L2_cache_size
    return max(3, math.ceil(2 * l2 / set_bytes))


def describe(device):
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def record_bandwidth(benchmark, nbytes):
    benchmark.extra_info["bytes_moved"] = nbytes
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["GB/s"] = round(nbytes / benchmark.stats.stats.median / 1e9, 2)


def run_info(device, threads, inputs):
    """The extra_info every benchmark case records about its run."""
    import fastwarp

    return dict(
        device=describe(device),
        threads=threads,
        torch=torch.__version__,
        fastwarp=fastwarp.__version__,
        input_sets=len(inputs),
    )
