"""One training step of the registration network on fastwarp's ops against the same step on
VoxelMorph's ops, one pytest-benchmark group per size and device (``train-3d-<size>-{cpu,cuda}``).

The step is :class:`fastwarp.app.bench.train_step.TrainStep`: ``fastwarp train``'s own step
(:func:`fastwarp.app.training.train_step`) on RegUNet(3) with the loss NCC(9) + Grad("l2"), Adam,
batch 1, the same weights and data for both variants; ``voxelmorph`` swaps in VoxelMorph's
grid_sample transformer and conv NCC. The UNet is the same in both, so the ratio is the end-to-end
gain in a training step, not the kernels' alone. Sizes and inputs are ``fastwarp bench``'s
(:mod:`fastwarp.app.bench.cases`); tests/test_bench_train_step.py checks that both variants compute
the same loss.

Every case records in ``extra_info`` its implementation, shape, device, threads and versions, the
peak extra memory of one step and, when timed, ``steps/s`` (one over the median).
"""

import pytest
import torch

from benchutil import time_call
from fastwarp.app.bench.cases import DTYPE, TRAIN_SHAPES, TRAIN_WINDOW, train_call, train_inputs
from fastwarp.app.bench.measure import run_info
from fastwarp.app.bench.train_step import TRAIN_VARIANTS, TrainStep


@pytest.mark.parametrize("impl_name", TRAIN_VARIANTS)
def test_train(benchmark, device, cpu_threads, fw_size, impl_name):
    spatial = TRAIN_SHAPES[fw_size][device.type]
    inputs = train_inputs(spatial, device)
    step = TrainStep(impl_name, spatial, device)
    benchmark.group = f"train-3d-{'x'.join(map(str, spatial))}-{device.type}"
    benchmark.extra_info.update(impl=impl_name, impl_version=step.version, step=step.description,
                                shape=[1, 1, *spatial], window=TRAIN_WINDOW, parameters=step.parameters,
                                dtype=str(DTYPE), **run_info(device, cpu_threads, inputs))
    if device.type == "cuda":
        benchmark.extra_info["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
    time_call(benchmark, train_call(step, inputs), device, memory=True)
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["steps/s"] = round(1.0 / benchmark.stats.stats.median, 3)
