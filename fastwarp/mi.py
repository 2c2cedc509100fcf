"""Functional API of the global mutual information, from a Parzen-window joint histogram."""

from __future__ import annotations

import math

import torch

from ._errors import ArgumentError, ArgumentTypeError
from ._inputs import check_image_pair
from ._ops import PARZEN_KERNEL

__all__ = ["mi", "joint_histogram"]

REDUCTIONS = ("mean", "none", "batch")


def _check_inputs(a, b):
    check_image_pair(a, b)
    if a.dtype != b.dtype:  # (under autocast) the wider dtype, as autocast does for two
        dtype = torch.promote_types(a.dtype, b.dtype)
        a, b = a.to(dtype), b.to(dtype)
    return a, b


def _mask(mask, a):
    """The mask as a bool tensor of a's shape (a view where it broadcasts), or None."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise ArgumentTypeError(f"mask must be a torch.Tensor or None, got {type(mask).__name__}")
    if mask.device != a.device:
        raise ArgumentError(f"mask is on {mask.device} but the images are on {a.device}")
    shape = tuple(a.shape)
    m = mask if mask.dim() == a.dim() else mask.reshape(1, 1, *mask.shape)
    if m.dim() != a.dim() or any(s not in (1, t) for s, t in zip(m.shape, shape)):
        raise ArgumentError(
            f"mask must have the images' shape {shape}, or broadcast to it from (N or 1, C or 1, *spatial) "
            f"or the spatial shape {shape[2:]}, got {tuple(mask.shape)}"
        )
    m = (m if m.dtype == torch.bool else m != 0).expand(shape)
    if m.numel() and not torch.compiler.is_compiling() and not bool(m.flatten(2).any(2).all()):
        raise ArgumentError("mask selects no voxel of some (batch, channel) image: the MI of nothing is undefined")
    return m


def _range(x, mask, given, name, dtype):
    """(N, C, 2): [lo, hi] per (batch, channel) image, of the masked voxels by default."""
    n, c = x.shape[:2]
    if given is None:
        if x.numel() == 0:
            return x.new_zeros((n, c, 2), dtype=dtype)
        flat = x.detach().flatten(2)
        if mask is None:
            lo, hi = torch.aminmax(flat, dim=2)
        else:
            m = mask.flatten(2)
            lo = flat.masked_fill(~m, math.inf).amin(2)
            hi = flat.masked_fill(~m, -math.inf).amax(2)
        return torch.stack((lo, hi), -1).to(dtype)
    if isinstance(given, torch.Tensor):
        r = given.detach().to(device=x.device, dtype=dtype)
        try:
            return r.expand(n, c, 2)
        except RuntimeError:
            raise ArgumentError(f"{name} must be (lo, hi) or a tensor that broadcasts to (N, C, 2), got {tuple(given.shape)}") from None
    try:
        lo, hi = (float(v) for v in given)
    except (TypeError, ValueError):
        raise ArgumentError(f"{name} must be None, (lo, hi) or a tensor (N, C, 2), got {given!r}") from None
    if not lo < hi:
        raise ArgumentError(f"{name} must have lo < hi, got {given!r}")
    return torch.tensor([lo, hi], dtype=dtype, device=x.device).expand(n, c, 2)


def joint_histogram(
    a: torch.Tensor,
    b: torch.Tensor,
    bins: int = 32,
    kernel: str = "bspline",
    *,
    sigma: float = 0.5,
    range_a=None,
    range_b=None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The Parzen joint histogram of :func:`mi`, ``(N, C, bins, bins)``: entry ``[i, j]`` is
    the sum over the (masked) voxels of ``w_i(a) w_j(b)``, so each image sums to its voxel
    count; rows are ``a``'s bins. float64 for float64 inputs, float32 otherwise.
    Differentiable in ``a`` and ``b``."""
    a, b = _check_inputs(a, b)
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2 or bins > 1024:
        raise ArgumentError(f"bins must be an int in [2, 1024], got {bins!r}")
    if kernel not in PARZEN_KERNEL:
        raise ArgumentError(f"kernel must be one of {', '.join(map(repr, PARZEN_KERNEL))}, got {kernel!r}")
    if kernel == "bspline" and bins < 4:
        raise ArgumentError(f"the B-spline kernel needs bins >= 4 (its support is 4 bins), got {bins}")
    if kernel == "gaussian" and not 0 < sigma <= 2.5:
        raise ArgumentError(f"sigma must be in (0, 2.5] bins, got {sigma!r}")
    m = _mask(mask, a)
    dtype = torch.float64 if a.dtype == torch.float64 else torch.float32
    ranges = torch.stack((_range(a, m, range_a, "range_a", dtype), _range(b, m, range_b, "range_b", dtype)), 2)
    return torch.ops.fastwarp.mi_histogram(a, b, m, ranges, bins, PARZEN_KERNEL[kernel], float(sigma))


def _entropy(p, dims):
    # p log p with 0 log 0 = 0, and a zero gradient there (p = 0 is a bin no voxel reaches)
    return -(p * torch.log(torch.where(p > 0, p, torch.ones_like(p)))).sum(dims)


def mi(
    a: torch.Tensor,
    b: torch.Tensor,
    bins: int = 32,
    kernel: str = "bspline",
    *,
    sigma: float = 0.5,
    range_a=None,
    range_b=None,
    mask: torch.Tensor | None = None,
    normalized: bool = False,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Global mutual information of two images, per (batch, channel), from a Parzen joint
    histogram.

    With ``p`` the joint distribution of the two images' intensities over ``bins`` x ``bins``
    bins (the histogram of :func:`joint_histogram` over its sum), ``p_a``, ``p_b`` its
    marginals and ``H`` the entropy ``-Σ p log p`` (natural log, ``0 log 0 = 0``)::

        mi  = H(p_a) + H(p_b) - H(p) = Σ p log(p / (p_a p_b))
        nmi = (H(p_a) + H(p_b)) / H(p)          (Studholme; normalized=True)

    Each voxel spreads a weight of 1 over the bins near its intensity:

    - ``kernel="bspline"`` (Mattes): a cubic B-spline on both images. An image's range
      ``[lo, hi]`` maps to bin positions ``[1, bins - 2]`` (bin ``k`` centred at ``k``), so
      each voxel touches 4 bins and no weight falls outside. ITK and MONAI pad by 2 bins, and
      MONAI's ``"b-spline"`` uses a box kernel for its target, so their values differ a little.
    - ``kernel="gaussian"``: MONAI's ``GlobalMutualInformationLoss("gaussian")``. ``[lo, hi]``
      maps to ``[0, 1]``, bin centres at ``k / (bins - 1)``, weights ``exp(-(u - k)² / (2σ²))``
      with ``σ = sigma`` bins (MONAI's ``sigma_ratio``), normalized per voxel; bins farther
      than ``6σ`` are left out (weights below ``1.5e-8``). With ``range=(0, 1)`` this is
      MONAI's definition, except for its smoothing constants (``1e-7`` inside the log).

    Values outside ``[lo, hi]`` are clamped to it. The ranges are constants: no gradient flows
    through them (as in ITK's Mattes metric).

    Args:
        a, b: ``(N, C, H, W)`` or ``(N, C, D, H, W)``, same shape, device and floating dtype
            (under ``torch.autocast``, two dtypes are promoted to the wider one). Half and
            bfloat16 accumulate in float32.
        bins: number of bins per image (>= 4 for the B-spline, >= 2 for the Gaussian).
        kernel: ``"bspline"`` or ``"gaussian"``.
        sigma: the Gaussian's width in bins, in ``(0, 2.5]``.
        range_a, range_b: ``None`` (each image's min and max per (batch, channel), over the
            mask when there is one), ``(lo, hi)``, or a tensor broadcastable to ``(N, C, 2)``.
        mask: voxels to use: bool (or nonzero = in) of the images' shape, or broadcastable to it
            from ``(N or 1, C or 1, *spatial)`` or ``spatial``. Each image must keep a voxel.
        normalized: return the normalized MI, in ``[1, 2]``, instead.
        reduction: ``"mean"`` (a scalar, the mean over (N, C)), or ``"batch"`` / ``"none"``
            (both ``(N, C)``: the MI is one number per image pair).

    The result is float64 for float64 inputs and float32 otherwise. Gradients flow to both images (analytic, by the kernels); nothing is kept for them but the
    inputs, the mask and the small histogram. Forward-mode AD and second derivatives raise a
    ``RuntimeError``. Memory beyond the inputs is ``O(bins² N C)``, never ``O(voxels x bins)``.
    A NaN or Inf in either image (within the mask) makes that pair's MI and gradient NaN.
    Empty images give NaN, as :func:`torch.mean` of nothing does.
    """
    if reduction not in REDUCTIONS:
        raise ArgumentError(f"reduction must be one of {', '.join(map(repr, REDUCTIONS))}, got {reduction!r}")
    h = joint_histogram(a, b, bins, kernel, sigma=sigma, range_a=range_a, range_b=range_b, mask=mask)
    p = h / h.sum((-2, -1), keepdim=True)
    h_a, h_b, h_ab = _entropy(p.sum(-1), -1), _entropy(p.sum(-2), -1), _entropy(p, (-2, -1))
    out = (h_a + h_b) / h_ab if normalized else h_a + h_b - h_ab
    return out.mean() if reduction == "mean" else out
