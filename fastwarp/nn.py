"""Drop-in ``nn`` modules on fastwarp's kernels."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .warp import warp

__all__ = ["Warp", "SpatialTransformer"]


class Warp(torch.nn.Module):
    """Module form of :func:`fastwarp.warp`: ``Warp(mode, padding_mode)(image, disp)``."""

    def __init__(self, mode: str = "linear", padding_mode: str = "zeros"):
        super().__init__()
        self.mode = mode
        self.padding_mode = padding_mode

    def forward(self, image: torch.Tensor, disp: torch.Tensor) -> torch.Tensor:
        return warp(image, disp, self.mode, self.padding_mode)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, padding_mode={self.padding_mode!r}"


class SpatialTransformer(torch.nn.Module):
    """VoxelMorph's ``SpatialTransformer``, same constructor and call, on fastwarp's kernels.

    ``SpatialTransformer(size, mode="bilinear")(src, flow)`` warps ``src`` (N, C, *size) by the
    voxel-unit displacement ``flow`` (N or 1, ndim, *size) with zero padding, exactly as
    ``voxelmorph.torch.layers.SpatialTransformer`` does, without building or storing the
    sampling grid.
    """

    def __init__(self, size: Sequence[int], mode: str = "bilinear"):
        super().__init__()
        if mode not in ("bilinear", "nearest"):
            raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")
        self.size = tuple(int(s) for s in size)
        if len(self.size) not in (2, 3):
            raise ValueError(f"size must have 2 or 3 entries, got {self.size}")
        self.mode = mode

    def forward(self, src: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        if isinstance(flow, torch.Tensor) and tuple(flow.shape[2:]) != self.size:
            raise ValueError(f"flow spatial shape {tuple(flow.shape[2:])} must be the transformer size {self.size}")
        return warp(src, flow, "linear" if self.mode == "bilinear" else "nearest", "zeros")

    def extra_repr(self) -> str:
        return f"size={self.size}, mode={self.mode!r}"
