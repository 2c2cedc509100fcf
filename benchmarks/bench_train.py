"""One training step of the registration network on fastwarp's ops against the same step on
VoxelMorph's ops, one pytest-benchmark group per size and device (``train-3d-<size>-{cpu,cuda}``).

A step is ``fastwarp train``'s: forward of ``fastwarp.models.RegUNet(3)`` (VoxelMorph's
``VxmDense`` with its default features), the loss ``NCC(window 9) + 1 * Grad("l2")``, backward,
Adam step (lr 1e-4), batch 1. Both implementations start from the same weights (the same seed)
and see the same data:

- ``fastwarp``: the model as it is (fastwarp's warp) and ``fastwarp.losses.NCC(9)``.
- ``voxelmorph``: VoxelMorph's ops on the same network: the model's ``transformer`` replaced by
  VoxelMorph's ``SpatialTransformer`` written out in plain PyTorch (identity grid + flow,
  normalized, ``grid_sample``) and the similarity by VoxelMorph's classic conv NCC.

The UNet (convolutions, pooling, upsampling) is the same in both, so the ratio is the
end-to-end gain in a training step, not the kernels' alone. The step is built by
``fastwarp.bench.train_step.TrainStep`` (shared with ``python -m fastwarp.bench``).

Sizes (``fastwarp.bench.cases.TRAIN_SHAPES``): ``160x192x224`` on CUDA; ``64x64x64`` on CPU
(VoxelMorph's conv NCC backward alone takes seconds there at larger sizes); ``--fw-size=tiny``
``16x16x16``.

Every case records in ``extra_info`` its implementation, shape, device, threads and versions,
the peak extra memory of one step (``fastwarp.bench.measure.peak_extra_memory``: on CUDA
``max_memory_allocated`` over the memory in use before it, on CPU the resident-memory high-water
mark) and, when timed, ``steps/s`` (one over the median). ``test_first_step_loss`` checks that
both compute the same loss on the first step.
"""

import itertools
import math

import pytest
import torch

from fastwarp.app.bench.cases import DTYPE, TRAIN_SHAPES, TRAIN_WINDOW
from fastwarp.app.bench.measure import input_sets, peak_extra_memory, run_info
from fastwarp.app.bench.train_step import TRAIN_VARIANTS, TrainStep, train_inputs, train_set_bytes


@pytest.mark.parametrize("impl_name", TRAIN_VARIANTS)
def test_train(benchmark, device, cpu_threads, fw_size, impl_name):
    spatial = TRAIN_SHAPES[fw_size][device.type]
    inputs = train_inputs(spatial, device, input_sets(device, train_set_bytes(spatial)))
    train_step = TrainStep(impl_name, spatial, device)
    sets = itertools.cycle(inputs)
    on_cuda = device.type == "cuda"

    def step():
        train_step(*next(sets))
        if on_cuda:
            torch.cuda.synchronize()

    step()  # untimed: Adam's state, lazy initialisation, allocator and kernel warm-up
    memory = peak_extra_memory(lambda: train_step(*next(sets)), device)

    benchmark.group = f"train-3d-{'x'.join(map(str, spatial))}-{device.type}"
    benchmark.extra_info.update(
        impl=impl_name,
        impl_version=train_step.version,
        step=train_step.description,
        shape=[1, 1, *spatial],
        window=TRAIN_WINDOW,
        parameters=train_step.parameters,
        dtype=str(DTYPE),
        **run_info(device, cpu_threads, inputs),
        **memory,
    )
    if on_cuda:
        benchmark.extra_info["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
    benchmark(step)
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["steps/s"] = round(1.0 / benchmark.stats.stats.median, 3)


def test_first_step_loss(device):
    """Both implementations compute the same loss on the first step (same weights, same data,
    the same formula: their warps and NCCs agree in float64 to ~1e-10, see bench_warp.py's and
    bench_ncc.py's test_agreement).

    The tolerance is ``rtol=1e-5`` on CPU: the step runs in float32, and the two NCCs sum each
    9³ window in a different order (fastwarp's running box sums against a dense convolution)
    and take the variances and the cross term as differences of such sums, so the loss keeps
    ~6-7 significant digits (measured: 1e-7 to 4e-7 relative at 16³-64³); a wrong window,
    weight or term moves it by orders of magnitude more. On CUDA the check runs with TF32 off
    (cuDNN's default for convolutions, which the timed cases keep, rounds the conv NCC's box sums
    to 10 bits) and at ``rtol=1e-4``, since cuDNN may pick FFT or Winograd algorithms for the
    9³ box filter, which round differently again.

    The gradients are not compared: the untrained model's displacement is ~1e-5 voxels, where
    linear interpolation's derivative jumps at the voxel centres and float32's rounding of the
    sample position decides which side each implementation sees (in float64 they agree)."""
    spatial = TRAIN_SHAPES["tiny"][device.type]
    (moving, fixed), = train_inputs(spatial, device, 1)
    losses = {}
    on_cuda = device.type == "cuda"
    tf32 = torch.backends.cudnn.allow_tf32
    if on_cuda:
        torch.backends.cudnn.allow_tf32 = False
    try:
        for name in TRAIN_VARIANTS:
            losses[name] = TrainStep(name, spatial, device)(moving, fixed).item()
    finally:
        if on_cuda:
            torch.backends.cudnn.allow_tf32 = tf32
    assert all(math.isfinite(v) for v in losses.values()), losses
    rtol = 1e-4 if on_cuda else 1e-5
    assert losses["voxelmorph"] == pytest.approx(losses["fastwarp"], rel=rtol), losses
