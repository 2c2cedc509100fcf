"""The similarities that registration optimizes, by name: windowed NCC, MSE and mutual
information, one definition for the affine, the refinement and training."""

from __future__ import annotations

import torch

from ..mi import mi
from ..ncc import ncc

__all__ = ["SIMILARITIES", "MI_BINS", "mi_ranges", "similarity_loss"]

SIMILARITIES = ("ncc", "mse", "mi")

# Bins of the MI (cubic B-spline Parzen windows, fastwarp.mi) where a caller gives none: ANTs'
# Mattes default. The refinement's default is its own (RefineConfig.mi_bins).
MI_BINS = 32


def mi_ranges(moving: torch.Tensor, fixed: torch.Tensor) -> tuple[tuple[float, float], tuple[float, float]]:
    """The intensity ranges of the MI while one pair is optimized: the moving image's, widened
    to hold 0 (what the warp's zero padding brings in), and the fixed image's. Fixed for the
    whole optimization, so every step measures the same histogram's axes."""
    lo, hi = float(moving.min()), float(moving.max())
    flo, fhi = float(fixed.min()), float(fixed.max())
    return (min(lo, 0.0), max(hi, 0.0, min(lo, 0.0) + 1e-6)), (flo, max(fhi, flo + 1e-6))


def similarity_loss(name: str, moved: torch.Tensor, fixed: torch.Tensor, window: int = 9,
                    ranges: tuple | None = None, bins: int = MI_BINS) -> torch.Tensor:
    """The loss to minimize: ``-ncc`` (window), the mean squared error, or ``-mi`` (``bins``
    bins, with ``ranges`` from :func:`mi_ranges`, or each image's own)."""
    if name == "ncc":
        return -ncc(moved, fixed, window)
    if name == "mi":
        ra, rb = ranges if ranges is not None else (None, None)
        return -mi(moved, fixed, bins, range_a=ra, range_b=rb)
    if name == "mse":
        return (moved - fixed).square().mean()
    raise ValueError(f"similarity must be one of {', '.join(map(repr, SIMILARITIES))}, got {name!r}")
