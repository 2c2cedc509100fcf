"""The benchmark cases: their problem sizes by preset (``full``, the published figures; ``tiny``, a
smoke run), their inputs, and the timed call of one implementation on them. One copy, shared by
``python -m fastwarp.bench`` (:mod:`~fastwarp.app.bench.runner`) and the pytest-benchmark suite in
``benchmarks/``.

Every case rotates through several input sets (:func:`~fastwarp.app.bench.measure.input_sets`),
drawn from fixed seeds, so every implementation sees the same inputs; a ``*_call`` function
returns the timed call, which runs one implementation on the next set (unsynchronised) and
returns its outputs (so that a memory measurement counts them).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from itertools import cycle
from typing import NamedTuple

import torch

from ..fields import smooth_noise
from .baselines import BaselineNotApplicable
from .measure import input_sets

DTYPE = torch.float32

SIZES = ("full", "tiny")

# Warp: spatial size by preset, then (dimensionality, device type). Batch 1, one channel.
WARP_SHAPES = {
    "full": {
        (2, "cpu"): (512, 512),
        (2, "cuda"): (512, 512),
        (3, "cpu"): (96, 112, 128),
        (3, "cuda"): (160, 192, 224),
    },
    "tiny": {
        (2, "cpu"): (16, 16),
        (2, "cuda"): (16, 16),
        (3, "cpu"): (8, 9, 10),
        (3, "cuda"): (8, 9, 10),
    },
}

# What a warp case times: the warp alone; with the gradient to the displacement (a training
# step's warp, the image needs none); with the gradients to both (scaling and squaring, where a
# field warps itself, and any optimization of the moving image); a label map's warp (nearest
# neighbour, forward: what registration does to segmentations).
WARP_MODES = ("fwd", "fwdbwd", "fwdbwd-both", "fwd-nearest")

# Scaling and squaring (VecInt, 7 steps), forward+backward: the velocity's spatial size, where
# VoxelMorph integrates it (int_downsize=2: half the warp's 3-D size).
VECINT_SHAPES = {
    "full": {"cpu": (48, 56, 64), "cuda": (80, 96, 112)},
    "tiny": {"cpu": (8, 9, 10), "cuda": (8, 9, 10)},
}
VECINT_STEPS = 7

# Size of the buffer the CUDA copy-bandwidth reference copies (it moves twice this: a read and
# a write).
COPY_BYTES = {"full": 512 << 20, "tiny": 1 << 20}


class NccCase(NamedTuple):
    nd: int
    shapes: dict  # device type -> (N, C, *spatial); a device type absent here skips the case
    window: int


NCC_CASES = {
    "full": {
        "2d": NccCase(2, {"cpu": (1, 1, 512, 512), "cuda": (1, 1, 512, 512)}, 9),
        "3d": NccCase(3, {"cpu": (1, 1, 96, 112, 128), "cuda": (1, 1, 160, 192, 224)}, 9),
        "3d-fused-lncc": NccCase(3, {"cuda": (2, 16, 128, 128, 128)}, 7),
    },
    "tiny": {
        "2d": NccCase(2, {"cpu": (1, 1, 16, 16), "cuda": (1, 1, 16, 16)}, 3),
        "3d": NccCase(3, {"cpu": (1, 1, 8, 9, 10), "cuda": (1, 1, 8, 9, 10)}, 3),
        "3d-fused-lncc": NccCase(3, {"cuda": (2, 3, 8, 9, 10)}, 3),
    },
}

NCC_MODES = ("fwd", "fwdbwd", "fwdbwd-both")
# (case, device type) pairs that skip fwdbwd-both: VoxelMorph's dense 9³ conv backward with
# respect to both inputs takes 8-15 s a call on a CPU, and the 2-D case already shows the cost.
NCC_NO_BOTH = {("3d", "cpu")}

# Mutual information (3-D), forward+backward with the gradient to the moving image: shape by
# preset and device type, bins, and the Parzen kernels timed (each against the peers' same one).
MI_SHAPES = {
    "full": {"cpu": (1, 1, 96, 112, 128), "cuda": (1, 1, 160, 192, 224)},
    "tiny": {"cpu": (1, 1, 8, 9, 10), "cuda": (1, 1, 8, 9, 10)},
}
MI_BINS = 32
MI_KERNELS = ("bspline", "gaussian")

# Training step of RegUNet(3), batch 1: spatial size by preset and device type. The GPU size is
# VoxelMorph's usual one; on a CPU a reduced one (VoxelMorph's conv NCC backward alone takes
# seconds there at the warp's 96x112x128). Multiples of 16 (RegUNet's four poolings).
TRAIN_SHAPES = {
    "full": {"cpu": (64, 64, 64), "cuda": (160, 192, 224)},
    "tiny": {"cpu": (16, 16, 16), "cuda": (16, 16, 16)},
}
TRAIN_WINDOW = 9


# --------------------------------------------------------------------------- inputs


def smooth_disp(spatial, seed, batch=1, amplitude=4.0, dtype=DTYPE):
    """A smooth displacement field like a registration network's output: normal noise at 1/16
    of the resolution (float64, from ``seed``), upsampled to ``spatial``, times ``amplitude``
    voxels."""
    g = torch.Generator().manual_seed(seed)
    coarse = [max(2, s // 16) for s in spatial]
    return (smooth_noise((batch, len(spatial), *spatial), coarse, g, torch.float64) * amplitude).to(dtype)


def make_pair(shape, generator, dtype=DTYPE):
    """A correlated pair, like a moving image and the fixed one: a = U(0,1), b = 0.6a + 0.4 U(0,1)."""
    a = torch.rand(shape, generator=generator, dtype=torch.float64)
    b = 0.6 * a + 0.4 * torch.rand(shape, generator=generator, dtype=torch.float64)
    return a.to(dtype), b.to(dtype)


# --------------------------------------------------------------------------- warp


def warp_inputs(spatial: Sequence[int], device: torch.device, mode: str) -> list[tuple]:
    """``(image, disp, grad_out)`` sets: a U(0,1) image ``(1, 1, *spatial)`` (for ``fwd-nearest``
    a label map of 4 labels, float32 as grid_sample needs), the smooth field :func:`smooth_disp`
    seeded by the set's index, and a random ``grad_out`` for the backward (``mode``: one of
    :data:`WARP_MODES`)."""
    backward = mode not in ("fwd", "fwd-nearest")
    set_bytes = math.prod(spatial) * DTYPE.itemsize * (len(spatial) + (2 if backward else 1))
    g = torch.Generator().manual_seed(0)
    inputs = []
    for seed in range(input_sets(device, set_bytes)):
        if mode == "fwd-nearest":
            image = torch.randint(0, 4, (1, 1, *spatial), generator=g).to(device, DTYPE)
        else:
            image = torch.rand(1, 1, *spatial, generator=g, dtype=DTYPE).to(device)
        disp = smooth_disp(spatial, seed).to(device)
        grad_out = torch.randn(image.shape, generator=g, dtype=DTYPE).to(device)
        inputs.append((image.requires_grad_(mode == "fwdbwd-both"), disp, grad_out))
    return inputs


def warp_call(impl, inputs: Sequence[tuple], mode: str) -> Callable[[], object]:
    """The timed warp of ``impl`` (a :class:`~fastwarp.app.bench.baselines.WarpImpl`): its
    ``apply`` and, after ``mode``, the gradient to the displacement (``fwdbwd``) or to both the
    image and the displacement (``fwdbwd-both``) for the set's ``grad_out``; for ``fwd-nearest``
    its ``nearest`` (:class:`~fastwarp.app.bench.baselines.BaselineNotApplicable` when it has
    none). ``impl.prepare`` runs here, untimed."""
    if mode not in WARP_MODES:
        raise ValueError(f"warp mode must be one of {WARP_MODES}, got {mode!r}")
    backward = mode not in ("fwd", "fwd-nearest")
    apply = impl.apply
    if mode == "fwd-nearest":
        if impl.nearest is None:
            raise BaselineNotApplicable("no nearest-neighbour warp")
        apply = impl.nearest
    sets = cycle([(image, impl.prepare(disp).detach().requires_grad_(backward), grad_out)
                  for image, disp, grad_out in inputs])

    def call():
        image, prepared, grad_out = next(sets)
        out = apply(image, prepared)
        if mode == "fwdbwd-both":
            return out, torch.autograd.grad(out, (image, prepared), grad_out)
        if backward:
            return out, torch.autograd.grad(out, prepared, grad_out)
        return out

    return call


# --------------------------------------------------------------------------- scaling and squaring


def vecint_inputs(spatial: Sequence[int], device: torch.device) -> list[tuple]:
    """``(velocity, grad_out)`` sets: a smooth velocity :func:`smooth_disp` ``(1, 3, *spatial)``
    of a few voxels, seeded by the set's index, and a random ``grad_out``."""
    set_bytes = 2 * math.prod(spatial) * len(spatial) * DTYPE.itemsize
    g = torch.Generator().manual_seed(0)
    inputs = []
    for seed in range(input_sets(device, set_bytes)):
        vel = smooth_disp(spatial, seed, amplitude=3.0).to(device)
        grad_out = torch.randn(vel.shape, generator=g, dtype=DTYPE).to(device)
        inputs.append((vel.requires_grad_(True), grad_out))
    return inputs


def vecint_call(integrate: Callable[[torch.Tensor], torch.Tensor], inputs: Sequence[tuple]) -> Callable[[], object]:
    """The timed integration ``integrate(velocity)`` and its gradient to the velocity."""
    sets = cycle(inputs)

    def call():
        vel, grad_out = next(sets)
        out = integrate(vel)
        return out, torch.autograd.grad(out, vel, grad_out)

    return call


# --------------------------------------------------------------------------- NCC

# The inputs that need a gradient in each NCC mode: (a, the moving image; b, the fixed one).
NCC_GRADS = {"fwd": (False, False), "fwdbwd": (True, False), "fwdbwd-both": (True, True)}


def ncc_inputs(shape: Sequence[int], device: torch.device, mode: str) -> list[tuple]:
    """``(a, b)`` pairs of shape ``shape`` (:func:`make_pair`), requiring the gradients of ``mode``."""
    grad_a, grad_b = NCC_GRADS[mode]
    g = torch.Generator().manual_seed(0)
    inputs = []
    for _ in range(input_sets(device, 2 * math.prod(shape) * DTYPE.itemsize)):
        a, b = make_pair(shape, g)
        inputs.append((a.to(device).requires_grad_(grad_a), b.to(device).requires_grad_(grad_b)))
    return inputs


def ncc_call(impl, inputs: Sequence[tuple], mode: str) -> Callable[[], object]:
    """The timed loss of ``impl`` (a :class:`~fastwarp.app.bench.baselines.NccImpl`, or a
    :class:`~fastwarp.app.bench.baselines.MiImpl`: the MI cases take the same inputs) and,
    after ``mode``, its gradients."""
    grad_a, grad_b = NCC_GRADS[mode]
    sets = cycle(inputs)

    def call():
        a, b = next(sets)
        loss = impl.loss(a, b)
        if grad_b:
            return loss, torch.autograd.grad(loss, (a, b))
        if grad_a:
            return loss, torch.autograd.grad(loss, a)
        return loss

    return call


# --------------------------------------------------------------------------- training step


def train_inputs(spatial: Sequence[int], device: torch.device, sets: int | None = None) -> list[tuple]:
    """``(moving, fixed)`` pairs of shape ``(1, 1, *spatial)`` (:func:`make_pair`); ``sets`` of
    them, by default as many as :func:`input_sets` says."""
    if sets is None:
        sets = input_sets(device, 2 * math.prod(spatial) * DTYPE.itemsize)
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(sets):
        moving, fixed = make_pair((1, 1, *spatial), g)
        out.append((moving.to(device), fixed.to(device)))
    return out


def train_call(step, inputs: Sequence[tuple]) -> Callable[[], torch.Tensor]:
    """The timed training step: ``step`` (a :class:`~fastwarp.app.bench.train_step.TrainStep`) on
    the next ``(moving, fixed)`` pair; returns the loss."""
    sets = cycle(inputs)
    return lambda: step(*next(sets))
