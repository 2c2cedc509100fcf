"""Affine registration of two images that may lie on different grids: :func:`affine_register`
finds the 12-parameter (6 in 2-D) world transform that aligns ``moving`` to ``fixed``;
:func:`resample` brings a moving image or label map onto the fixed grid through the voxel
coordinates it returns. The matrix is written and read by :mod:`fastwarp.app.transforms`
(plain text, or an ITK transform file).

Note [Affine conventions]
~~~~~~~~~~~~~~~~~~~~~~~~~
- A grid's affine maps voxel indices (the array's axes, in order) to world millimetres, as a
  NIfTI affine does (RAS+); None means the identity (the voxel is the unit of the world).
- The registration's ``matrix`` ``A`` maps a point of the *fixed* image's world to the
  corresponding point of the *moving* image's world: the "fixed -> moving" point map that
  resampling needs, as ITK / ANTs transforms are. A fixed voxel ``p`` samples the moving image
  at the moving voxel coordinates ``q = V_m⁻¹ · A · V_f · p`` (:func:`affine_coords`).
- 3-D matrices are 4x4; 2-D ones are 3x3 (homogeneous, in-plane). A 2-D image may also come
  with the 4x4 affine of a 2-D NIfTI file: its in-plane part (rows and columns 0, 1 and 3) is
  used, so long as the image lies in a plane of constant world z.
- Sampling is bi-/trilinear (fastwarp's ``grid_sample``, ``align_corners=True``: the unit of
  the coordinates is the voxel, voxel ``i`` at index ``i``); points outside the moving image
  read 0, the background of intensity-normalized, skull-stripped scans.

Method: the parameters are ``A x = (I + B) (x - c_f) + c_m + L t`` with ``B`` (ndim x ndim)
and ``t`` (ndim) starting at zero, so that the start maps the fixed world centre of mass
``c_f`` onto the moving one ``c_m`` (the offset between raw scans, whose grids differ, is found
before any step); the linear part turns about ``c_f``, and ``t`` is in units of ``L``, half the
fixed field of view, so that one unit of any parameter moves the edge of the image by about
``L``: the 12 numbers are equally conditioned for Adam. Coarse to fine, each level averages the
fixed image over blocks of its factor and the moving one over blocks of about the same size in
millimetres, and takes Adam steps on the similarity of the fixed image and the moving one
sampled through ``A`` (fastwarp's fused affine warp, ``warp(moving, None, affine=...)``: no
sampling grid in memory, differentiable in ``A``); a level stops early when the loss has not improved by ``tol`` (relative) over
``patience`` steps.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..warp import grid_sample, warp
from .fields import voxel_grid
from .optimize import Adam, Steps
from .pyramid import reduce, reduced_affine
from .similarity import SIMILARITIES, mi_ranges, similarity_loss
from .transforms import as_affine

__all__ = ["AffineConfig", "AffineResult", "affine_register", "affine_coords", "resample"]

# The smallest a level's reduced fixed image may be along any axis; coarser levels but the last are skipped.
_MIN_LEVEL_SIZE = 8


@dataclass(frozen=True)
class AffineConfig:
    """How :func:`affine_register` optimizes.

    ``levels`` are reduction factors, coarse to fine (a level before the last whose reduced fixed
    image would be smaller than 8 voxels along an axis is skipped). ``iterations`` are the most Adam steps of a
    level, one for all levels or one per level. ``lr`` is Adam's step in the normalized
    parameters (module docstring): 0.01 moves the edge of the image by about 1% of half its
    field of view. A level of factor ``f`` steps by ``lr * f / f0``, ``f0`` the first level's
    factor, as its voxels are that much finer. A level stops early when its loss has not
    improved by ``tol`` (relative) over ``patience`` steps.

    ``similarity``: ``"ncc"`` is the windowed NCC of :func:`fastwarp.ncc` over ``window``
    voxels of each level's grid (so the window covers more millimetres at the coarse levels,
    where the search starts). Local rather than global: it ignores slow intensity changes
    (bias fields) and contrast differences between the scans, as ANTs' CC metric does, and it
    registers two different brains more consistently (below). ``"mse"`` is the mean squared
    difference, for images of one modality and one intensity scale. ``"mi"`` is the global
    mutual information of :func:`fastwarp.mi` (``mi_bins`` bins, 32 as ANTs' Mattes metric;
    cubic B-spline Parzen windows; 16 and 24 bins did as well on the embedded pair), for images of different contrasts (T1 to T2, MR to CT). Windowed NCC is blind to
    contrast, so faint smooth structure counts as much as anatomy: the background should be
    exactly 0 (skull-stripped or masked scans, as the embedded brains are).

    The defaults were measured on the embedded brains (80x96x96 at 2 mm; one CPU thread). The
    MNI152 template moved by 6 random affines (up to 10°, ±10 % scale, ±3 % shear, ±8 mm) comes
    back to within 0.05 voxel on average over the brain (0.11 at worst), in 0.9 s. Colin27
    moved by 4 larger ones (15°, ±12 %, ±4 %, ±15 mm) and registered to MNI152 lands within
    0.14 voxel on average (0.40 at worst) of Colin27's own registration composed with the
    move, in 1.0 s. Against that: levels (4, 2) with twice the steps, 0.3 s but 0.27 (0.73);
    10 steps at full resolution, 0.20 (0.58) in 0.7 s; 40, 0.12 (0.31) in 1.7 s; windows 3
    and 9, 0.21 and 0.25; global NCC 0.32 (1.33); MSE 0.31 (1.56); lr 0.005, 0.22. Most of the
    time is the full-resolution level: for 1 mm scans ``levels=(8, 4, 2)`` is as accurate as
    the default and eight times faster (1.5 s against 13 s at 160x192x176).
    """

    levels: tuple[int, ...] = (4, 2, 1)
    iterations: tuple[int, ...] | int = (100, 50, 20)
    similarity: str = "ncc"
    window: int = 5
    mi_bins: int = 32
    lr: float = 0.01
    tol: float = 1e-4
    patience: int = 10

    def __post_init__(self):
        levels = self.levels if isinstance(self.levels, Sequence) else (self.levels,)
        if not levels or any(isinstance(f, bool) or not isinstance(f, int) or f < 1 for f in levels):
            raise ValueError(f"affine levels must be positive integers (reduction factors), got {self.levels!r}")
        object.__setattr__(self, "levels", tuple(levels))
        iters = self.iterations
        iters = tuple(iters) if isinstance(iters, Sequence) else (iters,) * len(levels)
        if len(iters) != len(levels) or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in iters):
            raise ValueError(f"affine iterations must be one integer >= 0 or one per level ({len(levels)}), "
                             f"got {self.iterations!r}")
        object.__setattr__(self, "iterations", iters)
        if self.similarity not in SIMILARITIES:
            raise ValueError(f"affine similarity must be one of {', '.join(map(repr, SIMILARITIES))}, "
                             f"got {self.similarity!r}")
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1 or self.window % 2 == 0:
            raise ValueError(f"affine window must be a positive odd integer, got {self.window!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"affine lr must be positive, got {self.lr!r}")
        if isinstance(self.mi_bins, bool) or not isinstance(self.mi_bins, int) or not 4 <= self.mi_bins <= 1024:
            raise ValueError(f"affine mi_bins must be an integer in [4, 1024], got {self.mi_bins!r}")
        patience_ok = not isinstance(self.patience, bool) and isinstance(self.patience, int) and self.patience >= 1
        if not self.tol >= 0 or not patience_ok:
            raise ValueError(f"affine tol must be >= 0 and patience a positive integer, got {self.tol!r}, "
                             f"{self.patience!r}")


@dataclass
class AffineResult:
    """What :func:`affine_register` found (Note [Affine conventions] in the module docstring).

    - ``matrix``: float64, 4x4 (3x3 in 2-D), world mm: fixed -> moving point map.
    - ``coords``: ``(1, ndim, *fixed_spatial)`` float32, the moving image's voxel coordinates
      sampled at each fixed voxel; :func:`resample` takes them.
    - ``disp``: ``coords`` less each fixed voxel's index: the voxel displacement that
      :func:`fastwarp.warp` takes, meaningful when the two images have one shape.
    - ``warped``: the moving image resampled onto the fixed grid, ``(*fixed_spatial)``.
    - ``loss``: the similarity loss at the end, on the finest level (``-NCC`` or MSE).
    - ``steps``: ``(factor, Adam steps taken)`` for each level used, coarse to fine.
    """

    matrix: np.ndarray
    disp: torch.Tensor
    coords: torch.Tensor
    warped: torch.Tensor
    loss: float
    steps: tuple[tuple[int, int], ...] = ()


# --------------------------------------------------------------------------- input checks


def _as_image(name: str, t) -> torch.Tensor:
    """``t`` as ``(1, 1, *spatial)``, from ``(*spatial)`` or ``(1, 1, *spatial)``, 2-D or 3-D."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() in (4, 5) and t.shape[:2] == (1, 1):
        t = t[0, 0]
    if t.dim() not in (2, 3):
        raise ValueError(f"{name} must be a 2-D or 3-D image, (*spatial) or (1, 1, *spatial), got a tensor of "
                         f"shape {tuple(t.shape)} (split a 4-D series into its volumes)")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point image, got {t.dtype}")
    if any(s < 2 for s in t.shape):
        raise ValueError(f"{name} must have at least 2 voxels along every axis, got shape {tuple(t.shape)}")
    return t[None, None]


# --------------------------------------------------------------------------- grids


def _voxel_size(affine: np.ndarray) -> float:
    """The geometric mean voxel size of a grid, in world units."""
    nd = affine.shape[0] - 1
    return abs(np.linalg.det(affine[:nd, :nd])) ** (1.0 / nd)


def _centre_of_mass(image: torch.Tensor, affine: np.ndarray) -> np.ndarray:
    """The world centre of mass of the positive intensities (the grid's centre if there are none)."""
    img = image[0, 0].detach().double().clamp_min(0)
    nd = img.dim()
    total = float(img.sum())
    if total > 0 and math.isfinite(total):
        p = [float((img.sum(dim=tuple(a for a in range(nd) if a != k)) *
                    torch.arange(img.shape[k], dtype=img.dtype, device=img.device)).sum()) / total for k in range(nd)]
    else:
        p = [(s - 1) / 2.0 for s in img.shape]
    return affine[:nd, :nd] @ np.asarray(p) + affine[:nd, nd]


def affine_coords(
    matrix: np.ndarray,
    fixed_shape: Sequence[int],
    moving_affine: np.ndarray | None = None,
    fixed_affine: np.ndarray | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The moving image's voxel coordinates ``V_m⁻¹ · matrix · V_f · p`` at every voxel ``p`` of
    the fixed grid of shape ``fixed_shape``: ``(1, ndim, *fixed_shape)`` float32, channel ``k``
    along the moving image's axis ``k``, for :func:`resample`. ``matrix`` is a world fixed ->
    moving point map (what :func:`affine_register` and :func:`~fastwarp.app.transforms.load_matrix` return)."""
    fixed_shape = tuple(int(s) for s in fixed_shape)
    nd = len(fixed_shape)
    if nd not in (2, 3):
        raise ValueError(f"fixed_shape must have 2 or 3 axes, got {fixed_shape}")
    world = as_affine("matrix", matrix, nd)
    to_moving = np.linalg.inv(as_affine("moving_affine", moving_affine, nd))
    vox = to_moving @ world @ as_affine("fixed_affine", fixed_affine, nd)
    lin = torch.as_tensor(vox[:nd, :nd], dtype=torch.float64, device=device)
    shift = torch.as_tensor(vox[:nd, nd], dtype=torch.float64, device=device)
    grid = voxel_grid(fixed_shape, device, torch.float64)  # (ndim, *fixed_shape)
    coords = torch.einsum("ij,j...->i...", lin, grid) + shift.view(nd, *([1] * nd))
    return coords.float()[None].contiguous()


def resample(image: torch.Tensor, coords: torch.Tensor, mode: str = "linear",
             padding_mode: str = "zeros") -> torch.Tensor:
    """Sample ``image`` at the voxel coordinates ``coords``: a moving image onto the fixed grid.

    Args:
        image: ``(*S_m)`` or ``(N, C, *S_m)``, 2-D or 3-D; floating point, or an integer label
            map with ``mode="nearest"`` (it keeps its dtype).
        coords: ``(1 or N, ndim, *S_f)``, the voxel coordinates in ``image`` to read at each
            point of the output grid, channel ``k`` along the image's axis ``k`` (e.g.
            :attr:`AffineResult.coords`, :func:`affine_coords`).
        mode: ``"linear"`` (bi-/trilinear) or ``"nearest"``.
        padding_mode: what points outside the image read, as in ``grid_sample``: ``"zeros"``,
            ``"border"`` or ``"reflection"``.

    Returns:
        ``(*S_f)`` for an ``(*S_m)`` image, else ``(N, C, *S_f)``. Differentiable in ``image``
        and ``coords`` (linear).
    """
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image must be a torch.Tensor, got {type(image).__name__}")
    if not isinstance(coords, torch.Tensor):
        raise TypeError(f"coords must be a torch.Tensor, got {type(coords).__name__}")
    if mode not in ("linear", "nearest"):
        raise ValueError(f"mode must be 'linear' or 'nearest', got {mode!r}")
    if mode == "linear" and not image.is_floating_point():
        raise TypeError(f"image has dtype {image.dtype}: integer and bool images (label maps) are resampled "
                        "with mode='nearest'")
    spatial_only = image.dim() in (2, 3)
    img = image[None, None] if spatial_only else image
    if img.dim() not in (4, 5):
        raise ValueError(f"image must be (*spatial) or (N, C, *spatial), 2-D or 3-D, got shape {tuple(image.shape)}")
    nd = img.dim() - 2
    if coords.dim() != nd + 2 or coords.shape[1] != nd or coords.shape[0] not in (1, img.shape[0]):
        raise ValueError(f"coords must be (1 or N, {nd}, *out_spatial) for a {nd}-D image of batch {img.shape[0]}, "
                         f"got shape {tuple(coords.shape)}")
    if not coords.is_floating_point():
        raise TypeError(f"coords must be floating point, got {coords.dtype}")
    if any(s < 2 for s in img.shape[2:]):
        raise ValueError(f"image must have at least 2 voxels along every axis, got shape {tuple(img.shape[2:])}")
    # align_corners=True: voxel 0 -> -1, voxel size-1 -> +1; grid_sample wants x (the last axis) first
    sizes = torch.tensor([s - 1 for s in img.shape[2:]], dtype=coords.dtype, device=coords.device)
    grid = (2 * coords / sizes.view(1, nd, *([1] * nd)) - 1).movedim(1, -1).flip(-1)
    grid = grid.expand(img.shape[0], *grid.shape[1:]).to(img.dtype if img.is_floating_point() else grid.dtype)
    out = grid_sample(img, grid.contiguous(), "bilinear" if mode == "linear" else "nearest", padding_mode,
                      align_corners=True)
    return out[0, 0] if spatial_only else out


# --------------------------------------------------------------------------- registration


class _Frame:
    """The normalized parameters ``(B, t)`` (module docstring) and the world matrix they make."""

    def __init__(self, fixed: torch.Tensor, moving: torch.Tensor, fixed_affine: np.ndarray, moving_affine: np.ndarray):
        nd = fixed.dim() - 2
        self.nd = nd
        as_t = functools.partial(torch.as_tensor, dtype=torch.float64, device=fixed.device)
        self.centre_fixed = as_t(_centre_of_mass(fixed, fixed_affine))
        self.centre_moving = as_t(_centre_of_mass(moving, moving_affine))
        extent = np.linalg.norm(fixed_affine[:nd, :nd], axis=0) * (np.asarray(fixed.shape[2:]) - 1)
        self.scale = float(np.mean(extent) / 2)
        self.bottom = as_t(np.eye(nd + 1)[nd:])

    def matrix(self, params: torch.Tensor) -> torch.Tensor:
        """The world matrix, ``(ndim + 1)`` square, float64, differentiable in ``params``."""
        nd = self.nd
        lin = torch.eye(nd, dtype=params.dtype, device=params.device) + params[: nd * nd].view(nd, nd)
        shift = self.centre_moving + self.scale * params[nd * nd:] - lin @ self.centre_fixed
        return torch.cat([torch.cat([lin, shift[:, None]], dim=1), self.bottom])


def affine_register(
    moving: torch.Tensor,
    fixed: torch.Tensor,
    moving_affine: np.ndarray | None = None,
    fixed_affine: np.ndarray | None = None,
    config: AffineConfig = AffineConfig(),
    progress: bool = False,
) -> AffineResult:
    """The affine transform that aligns ``moving`` to ``fixed`` (module docstring: method and
    Note [Affine conventions]).

    Args:
        moving, fixed: 2-D or 3-D floating-point images, ``(*spatial)`` or ``(1, 1, *spatial)``,
            on one device, intensities normalized alike by the caller (e.g.
            :func:`~fastwarp.app.data.normalize_intensity`); their shapes may differ.
        moving_affine, fixed_affine: their voxel -> world affines, 4x4 (NIfTI) or, in 2-D, 3x3;
            None: the identity (both on one grid, when both are None).
        config: levels, steps, similarity, step size (:class:`AffineConfig`).
        progress: a tqdm bar of the steps.

    Returns:
        An :class:`AffineResult`: the world matrix (fixed -> moving point map), the moving
        voxel coordinates of each fixed voxel, the moving image on the fixed grid, the loss.

    Nothing is drawn at random (every voxel of a level is used at every step, and torch's
    global generator is left alone): the result is the same from run to run on the CPU.
    """
    if not isinstance(config, AffineConfig):
        raise TypeError(f"config must be an AffineConfig, got {type(config).__name__}")
    moving, fixed = _as_pair(moving, fixed)
    nd = fixed.dim() - 2
    moving_affine = as_affine("moving_affine", moving_affine, nd)
    fixed_affine = as_affine("fixed_affine", fixed_affine, nd)
    frame = _Frame(fixed, moving, fixed_affine, moving_affine)
    plan = _plan(fixed.shape[2:], moving.shape[2:], _voxel_size(fixed_affine) / _voxel_size(moving_affine), config)
    params, final, steps = _optimize(frame, plan, fixed, moving, fixed_affine, moving_affine, config, progress)
    matrix = frame.matrix(params).detach().cpu().numpy()
    coords = affine_coords(matrix, fixed.shape[2:], moving_affine, fixed_affine, fixed.device)
    disp = (coords - voxel_grid(fixed.shape[2:], fixed.device, coords.dtype)[None]).contiguous()
    warped = resample(moving, coords)[0, 0]
    return AffineResult(matrix, disp, coords, warped, final, steps)


def _as_pair(moving, fixed) -> tuple[torch.Tensor, torch.Tensor]:
    """The two images as float32 ``(1, 1, *spatial)``, checked to be alike in dimension and device."""
    moving, fixed = _as_image("moving", moving), _as_image("fixed", fixed)
    if moving.dim() != fixed.dim():
        raise ValueError(f"moving is {moving.dim() - 2}-D (shape {tuple(moving.shape[2:])}) but fixed is "
                         f"{fixed.dim() - 2}-D (shape {tuple(fixed.shape[2:])}); both must be 2-D or both 3-D")
    if moving.device != fixed.device:
        raise ValueError(f"moving is on {moving.device} but fixed is on {fixed.device}; they must share a device")
    return moving.detach().float(), fixed.detach().float()


def _plan(fixed_shape, moving_shape, ratio: float, config: AffineConfig) -> list[tuple[int, int, int]]:
    """The levels to run: (factor of the fixed image, of the moving image, steps). ``ratio``: the
    fixed voxel size over the moving one, so that both are reduced to about the same voxel size."""
    plan = []
    for k, (factor, iters) in enumerate(zip(config.levels, config.iterations)):
        sizes = [math.ceil(s / factor) for s in fixed_shape]
        if k < len(config.levels) - 1 and min(sizes) < _MIN_LEVEL_SIZE:
            continue  # too coarse to tell anything
        moving_factor = max(1, round(factor * ratio))
        if min(sizes + [math.ceil(s / moving_factor) for s in moving_shape]) < 2:
            raise ValueError(f"config.levels: reduced by {factor}, the images of shapes {tuple(fixed_shape)} "
                             f"(fixed) and {tuple(moving_shape)} (moving) keep fewer than 2 voxels along an axis")
        plan.append((factor, moving_factor, iters))
    return plan


def _optimize(frame, plan, fixed, moving, fixed_affine, moving_affine, config: AffineConfig, progress: bool):
    """Adam on the parameters through the levels of ``plan``; returns them, the last level's
    final loss and the steps taken per level."""
    nd, device = fixed.dim() - 2, fixed.device
    params = torch.zeros(nd * nd + nd, dtype=torch.float64, device=device, requires_grad=True)
    counter = Steps(sum(i for *_, i in plan), "affine", config.tol, config.patience, progress)
    ranges = mi_ranges(moving, fixed) if config.similarity == "mi" else None

    def level_loss(moving_k, fixed_k, left, right):
        vox = (left @ frame.matrix(params) @ right)[:nd].float()  # fixed voxel -> moving voxel
        warped = warp(moving_k, None, affine=vox, out_shape=fixed_k.shape[2:])
        return similarity_loss(config.similarity, warped, fixed_k, config.window, ranges, config.mi_bins)

    first, steps = plan[0][0], []
    for factor, moving_factor, iters in plan:
        fixed_k, fixed_aff = reduce(fixed, factor), reduced_affine(fixed_affine, factor)
        moving_k, moving_aff = reduce(moving, moving_factor), reduced_affine(moving_affine, moving_factor)
        # the world matrix between the levels' voxel indices
        left = torch.as_tensor(np.linalg.inv(moving_aff), device=device)
        right = torch.as_tensor(fixed_aff, device=device)
        adam = Adam(params, config.lr * factor / first)
        counter.level(factor)
        for _ in range(iters):
            params.grad = None
            loss = level_loss(moving_k, fixed_k, left, right)
            loss.backward()
            adam.step()
            if counter.step(float(loss.detach())):
                break
        steps.append((factor, counter.taken))
    counter.close()
    with torch.no_grad():
        final = float(level_loss(moving_k, fixed_k, left, right))
    return params.detach(), final, tuple(steps)
