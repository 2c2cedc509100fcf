"""Functional API of the windowed (local) normalized cross-correlation."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._errors import ArgumentError
from ._inputs import check_image_pair
from ._ops import NCC_REDUCTION

__all__ = ["ncc"]

REDUCTIONS = ("mean", "none", "batch")


def _window(window, nd):
    sizes = (window,) * nd if isinstance(window, int) and not isinstance(window, bool) else window
    if not isinstance(sizes, Sequence) or len(sizes) != nd:
        raise ArgumentError(f"window must be an odd int or {nd} odd ints (one per spatial axis), got {window!r}")
    for w in sizes:
        if isinstance(w, bool) or not isinstance(w, int) or w <= 0 or w % 2 == 0:
            raise ArgumentError(f"window sizes must be odd positive ints, got {window!r}")
    return [int(w) for w in sizes]


def ncc(
    a: torch.Tensor,
    b: torch.Tensor,
    window: int | Sequence[int] = 9,
    eps: float = 1e-5,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Local (windowed) normalized cross-correlation of two images.

    At each voxel, with sums over the window centred on it (zero padding at the borders, so
    the window size n is the same everywhere)::

        cross = ΣIJ − ΣI·ΣJ/n,  var_I = ΣI² − (ΣI)²/n,  var_J = ΣJ² − (ΣJ)²/n
        cc    = cross² / (var_I·var_J + eps)

    VoxelMorph's and neurite's local NCC. Per channel: a channel of ``a`` is compared with
    the same channel of ``b``.

    Args:
        a, b: ``(N, C, H, W)`` or ``(N, C, D, H, W)``, same shape, dtype and device.
            Floating point; large intensities (e.g. CT in HU) do not cancel away (the CPU
            accumulates in float64; the GPU sums values shifted by a local reference).
            Under ``torch.autocast`` two dtypes are promoted to the wider one. Empty inputs
            give an empty map, and ``"mean"`` / ``"batch"`` of no voxels are NaN, as
            :func:`torch.mean` of nothing is.
        window: odd int, or one odd int per spatial axis.
        eps: added to the variance product.
        reduction: ``"mean"`` (a scalar, over everything), ``"none"`` (the cc map,
            ``(N, C, *spatial)``) or ``"batch"`` (one value per (N, C)).

    Gradients flow to both inputs (either may be constant), computed by the kernels from the
    inputs alone: nothing is kept for the backward but the inputs. Forward-mode AD (``jvp``)
    works for ``"mean"`` and ``"batch"``; second derivatives, and ``jvp`` of the map, raise a
    ``RuntimeError`` (fastwarp/_ops.py). On the CPU the kernels
    stream each volume slice by slice (a window's depth of planes in double); on the GPU
    they work in shared-memory tiles, summing in float64 values shifted by a reference so
    that large intensities (CT's air beside tissue) do not cancel, reduce "mean" and "batch" as they go
    without writing the cc map, and need no scratch beyond one value per thread block.
    """
    check_image_pair(a, b)
    if reduction not in REDUCTIONS:
        raise ArgumentError(f"reduction must be one of {', '.join(map(repr, REDUCTIONS))}, got {reduction!r}")
    sizes = _window(window, a.dim() - 2)
    return torch.ops.fastwarp.ncc(a, b, sizes, float(eps), NCC_REDUCTION[reduction])
