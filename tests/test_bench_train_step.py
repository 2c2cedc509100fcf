"""The benchmarked training step (fastwarp.app.bench.train_step): fastwarp's variant and
VoxelMorph's compute the same loss on the first step (same weights, same data, the same formula:
their warps and NCCs agree in float64 to ~1e-10, see test_bench_baselines.py)."""

import math

import pytest
import torch

from conftest import CUDA
from fastwarp.app.bench.cases import TRAIN_SHAPES, train_inputs
from fastwarp.app.bench.train_step import TRAIN_VARIANTS, TrainStep


@pytest.mark.parametrize("device", ["cpu", CUDA], indirect=True)
def test_first_step_loss(device):
    """The tolerance is ``rtol=1e-5`` on CPU: the step runs in float32, and the two NCCs sum each
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
