"""The application's one image pyramid: block averaging, the grid it makes, and fields moved
between such grids. Preprocessing (:func:`fastwarp.app.data.downsample`), the affine
registration's levels and the refinement's levels all reduce images here.

Note [Pyramid grids]
~~~~~~~~~~~~~~~~~~~~
A grid reduced by an integer ``factor`` f averages blocks of f voxels per axis; the last, partial
block averages the voxels it has. Its voxel ``i`` stands at the centre of block ``i``, at fine
voxel position ``f * i + (f - 1) / 2``, and the reduced grid's voxel -> world affine says so
(:func:`reduced_affine`). Between two grids of factors ``a`` and ``b`` (ratio ``r = a / b``) a
voxel ``i`` of the coarser lies at ``r * i + (r - 1) / 2`` of the finer, whatever ``r``: a field
moves between them by sampling it there, its voxel-unit vectors scaled by ``r``
(:func:`rescale_field`). (``F.interpolate`` with ``align_corners=False`` and a target *size*
places voxels by the ratio of the sizes instead, which differs from this when a size is not a
multiple of the factor.)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["reduce", "reduced_size", "reduced_affine", "rescale_field"]


def reduced_size(size: Sequence[int], factor: int) -> tuple[int, ...]:
    """The size of a grid of ``size`` voxels reduced by ``factor``: ``ceil(size / factor)``."""
    return tuple(-(-int(s) // int(factor)) for s in size)


def reduce(image: torch.Tensor, factor: int) -> torch.Tensor:
    """``image`` ``(N, C, *spatial)`` (2-D or 3-D) averaged over blocks of ``factor`` voxels per
    axis, the last partial block over the voxels it has (Note [Pyramid grids])."""
    if factor == 1:
        return image
    pool = F.avg_pool2d if image.dim() == 4 else F.avg_pool3d
    return pool(image, int(factor), ceil_mode=True, count_include_pad=False)


def reduced_affine(affine: np.ndarray, factor: int, ndim: int | None = None) -> np.ndarray:
    """The voxel -> world map of the grid reduced by ``factor`` from the grid of ``affine``
    (square homogeneous; a 4x4 NIfTI affine of a 2-D image with ``ndim=2``): voxel ``i`` at the
    centre of block ``i``."""
    affine = np.asarray(affine, dtype=np.float64)
    nd = affine.shape[0] - 1 if ndim is None else ndim
    out = affine.copy()
    if factor == 1:
        return out
    out[:, :nd] = affine[:, :nd] * factor
    out[:, -1] = affine[:, -1] + affine[:, :nd] @ np.full(nd, (factor - 1) / 2.0)
    out[-1] = affine[-1]
    return out


def rescale_field(disp: torch.Tensor, ratio: float, size: Sequence[int]) -> torch.Tensor:
    """A voxel-unit field ``(N, ndim, *spatial)`` on a grid ``ratio`` times finer (``ratio > 1``)
    or coarser, of ``size`` voxels (Note [Pyramid grids]): sampled linearly at each new voxel's
    position, the edge value beyond the old grid's voxel centres, each component scaled by
    ``ratio``."""
    size = tuple(int(s) for s in size)
    if ratio == 1 and tuple(disp.shape[2:]) == size:
        return disp
    if ratio > 1 and float(ratio).is_integer() and disp.dim() in (4, 5) and all(
            n_new <= n_old * int(ratio) for n_new, n_old in zip(size, disp.shape[2:])):
        # An integer upsampling (a diffeomorphic refinement's every step): interpolate's linear
        # modes place voxel i at (i + 0.5) / ratio - 0.5 of the old grid, clamped to its edge
        # voxels, as below, in one pass forward and one backward (below: index_select and its
        # scatter, per axis, 1.7x the time). The vectors are scaled before, on the smaller grid.
        mode = "bilinear" if disp.dim() == 4 else "trilinear"
        up = F.interpolate(disp * ratio, scale_factor=float(ratio), mode=mode, align_corners=False,
                           recompute_scale_factor=False)
        if tuple(up.shape[2:]) != size:  # (a narrow's backward zero-fills and copies: only where needed)
            up = up[(..., *(slice(0, n) for n in size))]
        return up
    out = disp
    for axis, n_new in enumerate(size):
        dim = axis + 2
        n_old = out.shape[dim]
        pos = ((torch.arange(n_new, dtype=torch.float64, device=disp.device) + 0.5) / ratio - 0.5).clamp(0, n_old - 1)
        i0 = pos.floor().long()
        i1 = (i0 + 1).clamp_max(n_old - 1)
        t = (pos - i0).to(disp.dtype).view(*([1] * dim), n_new, *([1] * (len(size) - axis - 1)))
        out = out.index_select(dim, i0) * (1 - t) + out.index_select(dim, i1) * t
    return out * ratio
