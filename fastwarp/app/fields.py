"""Dense fields in plain PyTorch (no fastwarp kernel): smooth random fields, and the normalized
sampling grid through which ``grid_sample`` follows a voxel-unit displacement.

One copy of each formula, for the augmentation (:mod:`fastwarp.app.data.augment`), the
benchmarks' baselines and inputs (:mod:`fastwarp.app.bench`), ``fastwarp check``, and the tests'
float64 references (``tests/reference.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["smooth_noise", "voxel_grid", "normalized_grid", "voxelmorph_grid"]


def smooth_noise(
    shape: Sequence[int],
    coarse: Sequence[int],
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """A smooth random field ``shape = (N, C, *spatial)`` of unit scale: standard normal noise
    on the grid ``(N, C, *coarse)``, drawn on the CPU from ``generator``, upsampled bi- or
    trilinearly (``align_corners=True``) to ``spatial`` on ``device``."""
    n, c, *spatial = shape
    noise = torch.randn(n, c, *coarse, generator=generator, dtype=dtype)
    mode = "bilinear" if len(spatial) == 2 else "trilinear"
    return F.interpolate(noise.to(device), size=tuple(spatial), mode=mode, align_corners=True)


def voxel_grid(
    spatial: Sequence[int], device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """The identity map ``(ndim, *spatial)``: channel ``k`` holds each voxel's index along axis ``k``."""
    axes = [torch.arange(s, device=device, dtype=dtype) for s in spatial]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))


def normalized_grid(positions: torch.Tensor) -> torch.Tensor:
    """The ``grid_sample(..., align_corners=True)`` grid that samples at ``positions``, voxel
    coordinates ``(N, ndim, *spatial)`` with channel ``k`` along spatial axis ``k``: each axis
    mapped to [-1, 1] (voxel 0 to -1, voxel ``size - 1`` to +1) as VoxelMorph writes it,
    ``2 * (p / (size - 1) - 0.5)``, then moved last and reversed, x (the last axis) first.
    Returns ``(N, *spatial, ndim)``, contiguous."""
    spatial = positions.shape[2:]
    axes = [2 * (positions[:, k] / (s - 1) - 0.5) for k, s in enumerate(spatial)]
    return torch.stack(axes, dim=-1).flip(-1)


def voxelmorph_grid(disp: torch.Tensor) -> torch.Tensor:
    """VoxelMorph's sampling grid for the voxel-unit displacement ``disp`` ``(N, ndim, *spatial)``
    (its ``SpatialTransformer``): the identity plus ``disp``, normalized (:func:`normalized_grid`)."""
    return normalized_grid(voxel_grid(disp.shape[2:], disp.device, disp.dtype) + disp)
