"""fastwarp.warp against the ways registration code warps today (the baselines of
:mod:`fastwarp.app.bench.baselines`: grid_sample on a precomputed grid, VoxelMorph's transformer,
and the installed voxelmorph's and MONAI's), one pytest-benchmark group per case
(``warp-{2d,3d}-<size>-{cpu,cuda}-{fwd,fwdbwd,fwdbwd-both,fwd-nearest}``), and scaling and squaring
(``vecint-3d-<size>-{cpu,cuda}``) against VoxelMorph's and MONAI's.

The sizes, inputs and timed calls are ``fastwarp bench``'s
(:mod:`fastwarp.app.bench.cases`); tests/test_bench_baselines.py checks that every baseline
computes what fastwarp does. ``fwdbwd`` is a training step's warp: the displacement requires
grad, the image does not, and the backward takes a fixed random ``grad_out``; ``fwdbwd-both``
gives the gradients to both; ``fwd-nearest`` warps a label map with nearest-neighbour sampling. Every case records
in ``extra_info`` its implementation, shape, device, threads and versions, the bytes any
implementation must move and (when timed) the achieved GB/s; on CUDA the ``copy`` case measures
the device's copy bandwidth in the same run for reference.
"""

import pytest
import torch

from benchutil import build_or_skip, record_bandwidth, time_call
from fastwarp.app.bench.baselines import VECINT_IMPLS, WARP_IMPLS
from fastwarp.app.bench.cases import (COPY_BYTES, DTYPE, VECINT_SHAPES, VECINT_STEPS, WARP_MODES, WARP_SHAPES,
                                      vecint_call, vecint_inputs, warp_call, warp_inputs)
from fastwarp.app.bench.measure import describe, nbytes, run_info, warp_bytes_moved


@pytest.mark.parametrize("mode", WARP_MODES)
@pytest.mark.parametrize("impl_name", list(WARP_IMPLS))
@pytest.mark.parametrize("nd", [2, 3], ids=["2d", "3d"])
def test_warp(benchmark, device, cpu_threads, fw_size, nd, impl_name, mode):
    spatial = WARP_SHAPES[fw_size][nd, device.type]
    impl = build_or_skip(WARP_IMPLS[impl_name], spatial, device, DTYPE)
    inputs = warp_inputs(spatial, device, mode)
    benchmark.group = f"warp-{nd}d-{'x'.join(map(str, spatial))}-{device.type}-{mode}"
    benchmark.extra_info.update(impl=impl_name, impl_version=impl.version, shape=[1, 1, *spatial], dtype=str(DTYPE),
                                **run_info(device, cpu_threads, inputs))
    time_call(benchmark, warp_call(impl, inputs, mode), device)
    record_bandwidth(benchmark, warp_bytes_moved(inputs[0][0], inputs[0][1], mode))


@pytest.mark.parametrize("impl_name", list(VECINT_IMPLS))
def test_vecint(benchmark, device, cpu_threads, fw_size, impl_name):
    spatial = VECINT_SHAPES[fw_size][device.type]
    impl = build_or_skip(VECINT_IMPLS[impl_name], spatial, device, DTYPE, VECINT_STEPS)
    inputs = vecint_inputs(spatial, device)
    benchmark.group = f"vecint-3d-{'x'.join(map(str, spatial))}-{device.type}"
    benchmark.extra_info.update(impl=impl_name, impl_version=impl.version, shape=[1, 3, *spatial], dtype=str(DTYPE),
                                steps=VECINT_STEPS, **run_info(device, cpu_threads, inputs))
    time_call(benchmark, vecint_call(impl.integrate, inputs), device)


def test_copy(benchmark, cuda_device, fw_size):
    """The device's copy bandwidth, to read the warps' GB/s against."""
    src = torch.rand(COPY_BYTES[fw_size] // 4, device=cuda_device)
    dst = torch.empty_like(src)
    benchmark.group = f"copy-cuda-{COPY_BYTES[fw_size] >> 20}MiB"
    benchmark.extra_info.update(impl="copy", device=describe(cuda_device), torch=torch.__version__)
    time_call(benchmark, lambda: dst.copy_(src), cuda_device)
    record_bandwidth(benchmark, 2 * nbytes(src))
