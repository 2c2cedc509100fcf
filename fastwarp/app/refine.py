"""Instance optimization of one pair (``fastwarp register --refine``): the displacement (or, with
``diffeomorphic``, a stationary velocity field) that aligns ``moving`` to ``fixed``, found by
Adam on fastwarp's warp and NCC, coarse to fine.

At each level both images are reduced by the level's factor (block averaging, the application's
one pyramid: :mod:`fastwarp.app.pyramid`), the field lives on that reduced grid, and the loss is
``-NCC(warp(moving, u), fixed) + smooth * |∇u|²`` (or the MSE in place of the NCC; plus
``bending`` times the squared second differences, when given). The field found at one level,
brought up to the next, is where the next starts; the first starts from the identity or from
``init`` (a network's prediction). A level stops early when the loss has not improved by ``tol``
(relative) over ``patience`` steps.

Diffeomorphic: the parameter is a velocity ``v`` and ``u = exp(v)`` by scaling and squaring
(:func:`fastwarp.integrate_velocity`), so the map is invertible whatever the step. The velocity
lives on the level's grid reduced by ``int_downsize`` (VoxelMorph's choice: the integration costs
an eighth in 3-D), its exponential brought up to the level's grid for the loss; the result is the
exponential of the velocity brought up to full resolution (folding only where the discrete
Jacobian of that smooth map dips below zero: at most a few voxels in 10^5 in our measurements).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import math

import numpy as np
import torch

from ..integrate import integrate_velocity
from ..warp import warp
from .affine import resample
from .fields import voxel_grid
from .optimize import Adam, Steps
from .pyramid import reduce, reduced_size, rescale_field
from .similarity import SIMILARITIES, mi_ranges, similarity_loss

__all__ = ["RefineConfig", "refine_defaults", "refine"]


@dataclass(frozen=True)
class RefineConfig:
    """How :func:`refine` optimizes; the defaults are the measured ones of the README's table.

    ``levels`` are reduction factors, coarse to fine; ``iterations``, ``window`` and ``lr`` are
    one per level (a single value serves every level). ``smooth`` weighs the mean squared
    forward difference of the field (VoxelMorph's l2 ``Grad``), in voxels of the level's grid;
    ``bending`` the mean squared second difference, the same way (Note [Bending for a tight
    inverse]).

    ``mi_bins``: the bins of the MI (``similarity="mi"``; cubic B-spline Parzen windows). 16,
    half of ANTs' Mattes default that the affine keeps: on the embedded pair with a T2-like
    moving image (both directions, diffeomorphic, after the MI affine) 16 bins gave mean Dice
    0.722 / 0.736 against 0.709 / 0.723 at 32; from the same affine start 12, 16, 20, 24, 32
    and 48 bins gave 0.710 / 0.713, 0.709 / 0.716, 0.705 / 0.713, 0.702 / 0.707, 0.696 / 0.705
    and 0.690 / 0.701 (benchmarks/RESULTS.md). Images whose intensities vary continuously
    rather than by tissue class may want more (the tests' smooth phantom: 32).
    """

    levels: tuple[int, ...] = (4, 2, 1)
    iterations: tuple[int, ...] | int | None = None  # None: 100 per level, 50 at the last (30 with MI)
    similarity: str = "ncc"  # "ncc", "mse" or "mi"
    window: tuple[int, ...] | int | None = None  # None: 9 at full resolution, 7 at 1/2, 5 coarser
    smooth: float | None = None  # None: 1 with NCC, 0.01 with MSE (VoxelMorph's weights), 3 with MI; a tenth, diffeomorphic
    bending: float = 0.0  # the weight of the mean squared second difference (none by default)
    mi_bins: int = 16  # the MI's bins (similarity "mi")
    diffeomorphic: bool = False
    steps: int = 7  # scaling and squaring steps (diffeomorphic)
    int_downsize: int = 2  # the velocity's grid: the level's reduced by this (diffeomorphic)
    lr: tuple[float, ...] | float = 0.1
    tol: float = 1e-4
    patience: int = 20

    def __post_init__(self):
        levels = tuple(int(f) for f in self.levels)
        if not levels or any(f < 1 for f in levels):
            raise ValueError(f"refine levels must be positive integers (reduction factors), got {self.levels}")
        object.__setattr__(self, "levels", levels)
        if self.iterations is None:
            # (MI: 30 at full resolution, measured on the embedded T2-like pair, both directions,
            # diffeomorphic after the affine: mean Dice within 0.001 of 50 steps, 2 s sooner)
            last = 30 if self.similarity == "mi" else 50
            object.__setattr__(self, "iterations", (100,) * (len(levels) - 1) + (last,))
        if self.window is None:
            object.__setattr__(self, "window", tuple({1: 9, 2: 7}.get(f, 5) for f in levels))
        for name in ("iterations", "window", "lr"):
            value = getattr(self, name)
            per = tuple(value) if isinstance(value, Sequence) else (value,) * len(levels)
            if len(per) != len(levels):
                raise ValueError(f"refine {name}: one value or one per level ({len(levels)}), got {value}")
            object.__setattr__(self, name, per)
        if any(int(i) < 0 for i in self.iterations):
            raise ValueError(f"refine iterations must be >= 0, got {self.iterations}")
        if any(int(w) < 1 or int(w) % 2 == 0 for w in self.window):
            raise ValueError(f"refine window must be positive odd integers, got {self.window}")
        if self.similarity not in SIMILARITIES:
            raise ValueError(f"refine similarity must be one of {', '.join(map(repr, SIMILARITIES))}, "
                             f"got {self.similarity!r}")
        if isinstance(self.mi_bins, bool) or not isinstance(self.mi_bins, int) or not 4 <= self.mi_bins <= 1024:
            raise ValueError(f"refine mi_bins must be an integer in [4, 1024], got {self.mi_bins!r}")
        if self.smooth is None:
            # (measured on the embedded pair, both directions: the velocity needs less smoothing
            # than a displacement for the same regularity; at a tenth, 0.0001-0.004 % folded
            # voxels and +0.06 to +0.09 mean Dice over ANTs SyN's long schedule)
            # (MI, measured on the embedded pair with a T2-like moving image, both directions,
            # diffeomorphic, 32 bins: 3, i.e. 0.3, against 1 and 10: Dice 0.719 / 0.737, no folded voxel;
            # at 1, 0.712 / 0.728 and 0.01 % folded; benchmarks/RESULTS.md)
            weight = {"mse": 0.01, "mi": 3.0}.get(self.similarity, 1.0)
            object.__setattr__(self, "smooth", weight * (0.1 if self.diffeomorphic else 1.0))
        weights_ok = all(isinstance(w, (int, float)) and math.isfinite(w) and w >= 0 for w in (self.smooth, self.bending))
        if not weights_ok or self.steps < 0 or self.tol < 0 or self.patience < 1:
            raise ValueError("refine smooth, bending, steps and tol must be >= 0 and patience >= 1")


def refine_defaults(voxel_mm: float = 2.0, **options) -> RefineConfig:
    """The measured defaults for images of ``voxel_mm`` voxels (the smallest spacing), with
    ``options`` (any :class:`RefineConfig` field) on top; an option given as None keeps the default.

    At 2 mm and coarser, :class:`RefineConfig`'s own. Finer (1 mm, measured on the embedded pair
    at 1 mm, both directions, 2 CPU threads): 25 steps at full resolution instead of 50 (each costs
    8x a 2 mm step; Dice moved by 0.003) and, diffeomorphic, three times the smoothness weight
    (the finer grid's discrete Jacobian folded in 0.02 % of the voxels one way; 0.002 % at three
    times, for 0.01-0.02 less Dice): 14.4 s against 24 s, +0.05 and +0.08 mean Dice over ANTs SyN's
    long schedule, which took 151 s."""
    options = {k: v for k, v in options.items() if v is not None}
    if voxel_mm <= 1.5:
        base = RefineConfig(similarity=options.get("similarity", "ncc"),
                            diffeomorphic=options.get("diffeomorphic", False))
        options = {"iterations": (100, 100, 25), "smooth": base.smooth * (3.0 if base.diffeomorphic else 1.0),
                   **options}
    return RefineConfig(**options)


class _SquaredDifferences(torch.autograd.Function):
    """The mean over the axes of the mean squared ``order``-th forward difference of a field:
    order 1 is VoxelMorph's l2 ``Grad`` penalty (the diffusion), order 2 the bending. Two passes
    instead of autograd's dozen: the gradient of this quadratic form, ``D^T D u`` (Neumann at the
    borders: the differences scattered back with their stencil), is formed directly, and its
    value is half the gradient's inner product with the field."""

    _STENCILS = {1: (-1.0, 1.0), 2: (1.0, -2.0, 1.0)}

    @staticmethod
    def forward(ctx, u, order):
        nd = u.dim() - 2
        grad = torch.zeros_like(u)
        for axis in range(2, u.dim()):
            n = u.shape[axis]
            if n <= order:
                continue
            d = u.diff(n=order, dim=axis).mul_(2.0 / (nd * (u.numel() // n) * (n - order)))
            for k, c in enumerate(_SquaredDifferences._STENCILS[order]):
                grad.narrow(axis, k, n - order).add_(d, alpha=c)
        ctx.save_for_backward(grad)
        return 0.5 * torch.dot(u.reshape(-1), grad.reshape(-1))

    @staticmethod
    def backward(ctx, grad_out):
        (grad,) = ctx.saved_tensors
        return grad_out * grad, None


def _smoothness(u: torch.Tensor) -> torch.Tensor:
    return _SquaredDifferences.apply(u, 1)


def _bending(u: torch.Tensor) -> torch.Tensor:
    return _SquaredDifferences.apply(u, 2)


def _penalty(u: torch.Tensor, config: RefineConfig) -> torch.Tensor:
    """The regularization of ``config`` on the field being optimized."""
    loss = config.smooth * _smoothness(u)
    return loss + config.bending * _bending(u) if config.bending else loss


def refine(
    moving: torch.Tensor,
    fixed: torch.Tensor,
    init: torch.Tensor | None = None,
    config: RefineConfig = RefineConfig(),
    progress: bool = False,
    voxel_matrix=None,
    return_velocity: bool = False,
):
    """The displacement ``(1, ndim, *spatial)`` in voxels of the fixed grid that aligns
    ``moving`` to ``fixed`` (``warp(moving, u)`` ≈ ``fixed``), optimized as ``config`` says from
    ``init`` (a displacement of the same layout, e.g. a network's; None: the identity).

    ``moving`` and ``fixed``: ``(1, 1, *spatial)`` (or ``(*spatial)``), floating point, 2-D or
    3-D, intensities normalized alike; one shape unless ``voxel_matrix`` is given. Nothing in it
    is random: a run repeats exactly on the CPU.

    ``voxel_matrix``: an affine part to compose with, ``(ndim + 1)`` square, homogeneous, fixed
    voxel -> moving voxel (an affine registration's, as :class:`~fastwarp.app.register.PairResult`
    holds it). The moving image then stays on its own grid, of any shape, and each step samples
    it once at ``V · (p + u(p))`` (Note [Composed sampling]); the result is ``u`` of that map.

    ``return_velocity``: return ``(u, v)``, with ``v`` the full-resolution velocity whose
    exponential ``u`` is (``config.diffeomorphic``; else None): ``exp(-v)`` is the inverse map
    (:func:`fastwarp.app.inverse.inverse_of_velocity`)."""
    moving, fixed = _as_image("moving", moving), _as_image("fixed", fixed)
    if moving.dim() != fixed.dim() or (voxel_matrix is None and moving.shape != fixed.shape):
        raise ValueError(f"refine: moving {tuple(moving.shape[2:])} and fixed {tuple(fixed.shape[2:])} must have one shape"
                         + ("" if moving.dim() != fixed.dim() else " (or give voxel_matrix)"))
    nd = moving.dim() - 2
    spatial = tuple(fixed.shape[2:])
    V = None if voxel_matrix is None else _check_voxel_matrix(voxel_matrix, nd)
    if init is not None and (init.dim() != nd + 2 or init.shape[:2] != (1, nd) or tuple(init.shape[2:]) != spatial):
        raise ValueError(f"refine: init must be a displacement (1, {nd}, {', '.join(map(str, spatial))}), "
                         f"got {tuple(init.shape)}")
    moving, fixed = moving.float(), fixed.float()
    integrate = (lambda v: integrate_velocity(v, config.steps)) if config.diffeomorphic else None
    counter = Steps(sum(int(i) for i in config.iterations), "refine", config.tol, config.patience, progress)
    ranges = mi_ranges(moving, fixed) if config.similarity == "mi" else None

    # The field being optimized (a velocity, diffeomorphic) and the factor of its grid: every grid
    # is a reduction of the full one (Note [Pyramid grids]), fields move between them by ratios.
    param, param_factor = (None, 1) if init is None else (init.detach().float(), 1)
    inner = config.int_downsize if integrate is not None else 1
    for factor, iters, window, lr in zip(config.levels, config.iterations, config.window, config.lr):
        f = reduce(fixed, factor)
        sample = _level_sampler(moving, tuple(f.shape[2:]), factor, V)
        # A velocity lives on a grid reduced by int_downsize (VoxelMorph's): integrating it there
        # costs 1/2**ndim of the level's, and exp(v) is smooth on the scale of that grid anyway.
        grid = reduced_size(spatial, factor * inner)
        if param is None:
            start = torch.zeros(1, nd, *grid, device=moving.device)
        else:
            start = rescale_field(param.detach(), param_factor / (factor * inner), grid)
        param, param_factor = start.clone().requires_grad_(True), factor * inner
        opt = Adam(param, float(lr))
        counter.level(factor)
        for _ in range(int(iters)):
            param.grad = None
            disp = rescale_field(integrate(param), inner, f.shape[2:]) if integrate is not None else param
            moved = sample(disp)
            sim = similarity_loss(config.similarity, moved, f, int(window), ranges, config.mi_bins)
            loss = sim + _penalty(param, config)
            loss.backward()
            opt.step()
            if counter.step(float(loss.detach())):
                break
    counter.close()
    with torch.no_grad():
        full = rescale_field(param.detach(), param_factor, spatial)
        disp = (integrate(full) if integrate is not None else full).contiguous()
    if return_velocity:
        return disp, (full.contiguous() if integrate is not None else None)
    return disp


# Note [Bending for a tight inverse]
# ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
# A map and its inverse are written as fields on grids, and every tool reads them by trilinear
# interpolation. Even exp(-v), exact where it is sampled, then misses at the points between: the
# residual |phi^-1(phi(x)) - x| measures how far the maps bend between voxels, their second
# differences, not the inversion (Newton on the grid, 9 or 12 squaring steps, or integrating on a
# 2x or 3x finer grid leave it at 0.10-0.14 voxel; benchmarks/RESULTS.md). On the embedded pair
# at 2 mm, diffeomorphic, the error is spread over the brain (voxels with Jacobians in [0.5, 2]:
# 0.10 mean, two thirds of the total), not in a few compressed spots. Every way to lower it lowers
# Dice: a heavier diffusion, a Gaussian on the velocity inside the loop (sigma 2 voxels: 0.045
# mean for 0.035 Dice), or on the result, or bending energy only at the finest level. A bending
# weight on the velocity's second differences brings it under 0.05 voxel mean and 0.5 at most in both
# directions at the least Dice of these: `fastwarp register --affine --refine --diffeomorphic
# --smooth 0.3 --bending 1`, 0.032 / 0.031 mean and 0.33 / 0.40 at most, for 0.029 / 0.050 less
# Dice (`--smooth 2` alone still leaves 0.61 at most one way; with the bending, the default
# diffusion of 0.1 let the discrete Jacobian fold 0.04 % of the voxels one way, 0.3 none). So the
# defaults stay tuned for Dice, their maps invertible (diffeomorphic) and their inverse within
# 0.11 voxel mean, and `bending` is the knob for users who need their written inverse tighter.

# Note [Composed sampling]
# ~~~~~~~~~~~~~~~~~~~~~~~~
# After an affine registration the moving image could be resampled onto the fixed grid once and
# the field optimized on that copy, but every step would then read an image interpolated twice:
# smoothed, its noise and partial volumes mixed, which MI's joint histogram sees (on the embedded
# T2-like pair, 0.009 mean Dice less in both directions than the composition below). So the
# moving image stays on its own grid and each step samples it once at V (p + u(p)), the affine
# part V (fixed voxel -> moving voxel) composed with the field, as the final result is sampled
# (PairResult.coords) and as ANTs composes its transforms.
#
# At a level of factor f the fixed grid is reduced by f and the moving one by g, about f times
# the fixed voxel over the moving voxel (the affine's levels choose so too); with S_f the map
# from a reduced voxel to its full-grid position, q -> f q + (f - 1) / 2 (Note [Pyramid grids]),
# the level's matrix is V_f = S_g^-1 V S_f, and the level's voxel q + u reads the reduced moving
# image at V_f (q + u) = V_f q + L_f u (L_f the linear part). Where the two reduced grids have one
# shape this is the warp at the displacement V_f q - q + L_f u, else a resampling at V_f (q + u).


def _check_voxel_matrix(voxel_matrix, nd: int) -> np.ndarray:
    V = np.asarray(voxel_matrix, dtype=np.float64)
    if V.shape != (nd + 1, nd + 1) or not np.isfinite(V).all() or not np.allclose(V[nd], np.eye(nd + 1)[nd]):
        raise ValueError(f"refine: voxel_matrix must be a finite homogeneous ({nd + 1}, {nd + 1}) matrix, "
                         f"got {np.array2string(V, precision=3) if V.size <= 16 else V.shape}")
    return V


def _to_full(factor: int, nd: int) -> np.ndarray:
    """S_f: a voxel of the grid reduced by ``factor`` -> its position on the full grid."""
    S = np.eye(nd + 1)
    S[:nd, :nd] *= factor
    S[:nd, nd] = (factor - 1) / 2.0
    return S


def _level_sampler(moving: torch.Tensor, shape: tuple[int, ...], factor: int, V: np.ndarray | None):
    """``sample(disp)``: the moving image read at each voxel of the fixed grid reduced by
    ``factor`` (``shape``) displaced by ``disp`` (Note [Composed sampling])."""
    if V is None:
        m = reduce(moving, factor)
        return lambda disp: warp(m, disp)
    nd = moving.dim() - 2
    ratio = float(np.mean(np.linalg.norm(V[:nd, :nd], axis=0)))  # moving voxels per fixed voxel
    g = max(1, round(factor * ratio))
    m = reduce(moving, g)
    Vf = np.linalg.inv(_to_full(g, nd)) @ V @ _to_full(factor, nd)
    dev = moving.device
    lin = torch.as_tensor(Vf[:nd, :nd], dtype=torch.float32, device=dev)
    q = voxel_grid(shape, dev, torch.float64)[None]
    base = (torch.einsum("ij,nj...->ni...", torch.as_tensor(Vf[:nd, :nd], device=dev), q)
            + torch.as_tensor(Vf[:nd, nd], device=dev).view(1, nd, *([1] * nd)))

    def linear(disp):  # L_f u (disp has batch 1): one matrix product, a pass each way
        return (lin @ disp.reshape(nd, -1)).view(disp.shape)

    if tuple(m.shape[2:]) == shape:
        offset = (base - q).float()
        return lambda disp: warp(m, offset + linear(disp))
    base = base.float()
    return lambda disp: resample(m, base + linear(disp))


def _as_image(name: str, t) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        t = torch.as_tensor(t)
    if t.dim() in (2, 3):
        t = t[None, None]
    if t.dim() not in (4, 5) or t.shape[:2] != (1, 1):
        raise ValueError(f"refine: {name} must be (*spatial) or (1, 1, *spatial) in 2-D or 3-D, got {tuple(t.shape)}")
    if not t.is_floating_point():
        raise TypeError(f"refine: {name} must be floating point, got {t.dtype}")
    return t
