"""Registration losses: windowed NCC and mutual information on fastwarp's kernels, MSE, and
VoxelMorph's gradient smoothness penalty."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .mi import mi
from .ncc import ncc

__all__ = ["NCC", "MI", "MSE", "Grad"]


class NCC(torch.nn.Module):
    """Loss ``-mean(cc)`` of the windowed NCC (:func:`fastwarp.ncc`): ``NCC(window=9)(a, b)``."""

    def __init__(self, window: int | Sequence[int] = 9, eps: float = 1e-5):
        super().__init__()
        self.window = window
        self.eps = eps

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return -ncc(a, b, self.window, self.eps, "mean")

    def extra_repr(self) -> str:
        return f"window={self.window}, eps={self.eps}"


class MI(torch.nn.Module):
    """Loss ``-mean(mi)`` of the global mutual information (:func:`fastwarp.mi`), for images
    of different contrasts: ``MI(bins=32)(a, b)``, or ``MI(...)(a, b, mask=m)``. With
    ``normalized=True``, ``-mean(nmi)``. The keyword arguments are :func:`fastwarp.mi`'s."""

    def __init__(self, bins: int = 32, kernel: str = "bspline", sigma: float = 0.5, normalized: bool = False,
                 range_a=None, range_b=None):
        super().__init__()
        self.bins, self.kernel, self.sigma, self.normalized = bins, kernel, sigma, normalized
        self.range_a, self.range_b = range_a, range_b

    def forward(self, a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return -mi(a, b, self.bins, self.kernel, sigma=self.sigma, range_a=self.range_a, range_b=self.range_b,
                   mask=mask, normalized=self.normalized)

    def extra_repr(self) -> str:
        return f"bins={self.bins}, kernel={self.kernel!r}, sigma={self.sigma}, normalized={self.normalized}"


class MSE(torch.nn.Module):
    """Mean squared error ``mean((a - b)^2)``."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a - b).square().mean()


class Grad(torch.nn.Module):
    """VoxelMorph's smoothness penalty of a displacement field (N, ndim, *spatial): the mean
    of |forward differences| (``penalty="l1"``) or of their squares (``"l2"``) along each
    spatial axis, averaged over the axes, times ``loss_mult`` when given."""

    def __init__(self, penalty: str = "l1", loss_mult: float | None = None):
        super().__init__()
        if penalty not in ("l1", "l2"):
            raise ValueError(f"penalty must be 'l1' or 'l2', got {penalty!r}")
        self.penalty = penalty
        self.loss_mult = loss_mult

    def forward(self, disp: torch.Tensor) -> torch.Tensor:
        if disp.dim() < 3:
            raise ValueError(f"disp must be (N, ndim, *spatial), got shape {tuple(disp.shape)}")
        terms = []
        for axis in range(2, disp.dim()):
            d = disp.diff(dim=axis)
            terms.append((d.abs() if self.penalty == "l1" else d.square()).mean())
        loss = torch.stack(terms).mean()
        return loss * self.loss_mult if self.loss_mult is not None else loss

    def extra_repr(self) -> str:
        return f"penalty={self.penalty!r}, loss_mult={self.loss_mult}"
