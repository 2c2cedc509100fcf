"""Drop-in ``nn`` modules on fastwarp's kernels."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .integrate import integrate_velocity
from .warp import warp

__all__ = ["Warp", "SpatialTransformer", "VecInt", "compose"]


class Warp(torch.nn.Module):
    """Module form of :func:`fastwarp.warp`: ``Warp(mode, padding_mode)(image, disp)``."""

    def __init__(self, mode: str = "linear", padding_mode: str = "zeros"):
        super().__init__()
        self.mode = mode
        self.padding_mode = padding_mode

    def forward(self, image: torch.Tensor, disp: torch.Tensor) -> torch.Tensor:
        """``image`` ``(N, C, *spatial)`` resampled at ``p + disp(p)``, ``disp`` ``(N or 1, ndim,
        *spatial)`` in voxels: :func:`fastwarp.warp` with this module's mode and padding."""
        return warp(image, disp, self.mode, self.padding_mode)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, padding_mode={self.padding_mode!r}"


class SpatialTransformer(torch.nn.Module):
    """VoxelMorph's ``SpatialTransformer``, same constructor and call, on fastwarp's kernels.

    ``SpatialTransformer(size, mode="bilinear")(src, flow)`` warps ``src`` (N, C, *size) by the
    voxel-unit displacement ``flow`` (N or 1, ndim, *size) with zero padding, exactly as
    ``voxelmorph.torch.layers.SpatialTransformer`` does, without building or storing the
    sampling grid. ``size=None`` accepts any spatial size.
    """

    def __init__(self, size: Sequence[int] | None, mode: str = "bilinear"):
        super().__init__()
        if mode not in ("bilinear", "nearest"):
            raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")
        self.size = None if size is None else tuple(int(s) for s in size)
        if self.size is not None and len(self.size) not in (2, 3):
            raise ValueError(f"size must have 2 or 3 entries, got {self.size}")
        self.mode = mode

    def forward(self, src: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        """``src`` ``(N, C, *size)`` warped by ``flow`` ``(N or 1, ndim, *size)``, a displacement
        in voxels, zero padding: VoxelMorph's ``SpatialTransformer(size, mode)(src, flow)``."""
        if self.size is not None and isinstance(flow, torch.Tensor) and tuple(flow.shape[2:]) != self.size:
            raise ValueError(f"flow spatial shape {tuple(flow.shape[2:])} must be the transformer size {self.size}")
        return warp(src, flow, "linear" if self.mode == "bilinear" else "nearest", "zeros")

    def extra_repr(self) -> str:
        return f"size={self.size}, mode={self.mode!r}"


def compose(disp_a: torch.Tensor, disp_b: torch.Tensor, padding_mode: str = "zeros") -> torch.Tensor:
    """The displacement of "b then a": moving a point by ``disp_b`` and then by ``disp_a``,
    ``x -> x + b(x) + a(x + b(x))``, i.e. ``disp_b + warp(disp_a, disp_b)``.

    Both fields are ``(N, ndim, *spatial)`` in voxel units (``disp_b`` may have batch 1), so
    ``warp(warp(img, disp_a), disp_b) ≈ warp(img, compose(disp_a, disp_b))``.
    """
    return disp_b + warp(disp_a, disp_b, "linear", padding_mode)


class VecInt(torch.nn.Module):
    """VoxelMorph's ``VecInt``: integrates a stationary velocity field by scaling and squaring,
    ``v / 2**nsteps`` composed with itself ``nsteps`` times, each step a warp of the field by
    itself: :func:`fastwarp.integrate_velocity`, one op with its own backward.
    ``VecInt(inshape, nsteps=7)(vec)`` returns the displacement of the diffeomorphism
    ``exp(vec)``, in voxel units (``inshape=None`` accepts any size)."""

    def __init__(self, inshape: Sequence[int] | None, nsteps: int = 7):
        super().__init__()
        if nsteps < 0:
            raise ValueError(f"nsteps must be >= 0, got {nsteps}")
        self.inshape = None if inshape is None else tuple(int(s) for s in inshape)
        self.nsteps = nsteps
        self.scale = 1.0 / (2**nsteps)

    def forward(self, vec: torch.Tensor) -> torch.Tensor:
        """The displacement of ``exp(vec)`` (voxels), ``vec`` ``(N, ndim, *inshape)`` a velocity
        in voxels: :func:`fastwarp.integrate_velocity` with ``nsteps``."""
        if self.inshape is not None and isinstance(vec, torch.Tensor) and tuple(vec.shape[2:]) != self.inshape:
            raise ValueError(f"vec spatial shape {tuple(vec.shape[2:])} must be the integrator's inshape {self.inshape}")
        return integrate_velocity(vec, self.nsteps)

    def extra_repr(self) -> str:
        return f"inshape={self.inshape}, nsteps={self.nsteps}"
