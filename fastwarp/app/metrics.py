"""Registration metrics: Dice overlap of label maps, the Jacobian determinant of the
deformation and its folding fraction, and image similarity before and after."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..ncc import ncc as _ncc
from ..warp import warp

__all__ = ["dice", "jacobian_determinant", "folding_fraction", "similarity", "evaluate", "compare"]


def dice(a: torch.Tensor, b: torch.Tensor, labels: Sequence[int] | None = None) -> dict[int, float]:
    """Dice overlap ``2|A∩B| / (|A|+|B|)`` per label of two integer label maps of one shape.

    ``labels`` defaults to the non-zero labels present in either map (0 is background). A
    label absent from both maps is left out (its Dice is undefined)."""
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        raise TypeError("dice: a and b must be torch.Tensors of integer labels")
    if a.shape != b.shape:
        raise ValueError(f"dice: label maps must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    for name, t in (("a", a), ("b", b)):
        if t.is_floating_point() or t.is_complex():
            raise TypeError(f"dice: {name} must be an integer label map, got {t.dtype}")
    if labels is None:
        labels = [int(v) for v in torch.unique(torch.cat([a.flatten(), b.flatten()])) if v != 0]
    out = {}
    for lab in labels:
        ina, inb = a == lab, b == lab
        total = int(ina.sum()) + int(inb.sum())
        if total:
            out[int(lab)] = 2.0 * int((ina & inb).sum()) / total
    return out


def jacobian_determinant(disp: torch.Tensor) -> torch.Tensor:
    """Determinant of the Jacobian of ``x -> x + disp(x)`` at every voxel.

    ``disp`` is (N, ndim, *spatial) in voxel units, channel ``i`` the displacement along
    spatial axis ``i``. Derivatives are central differences inside and one-sided at the
    borders (``torch.gradient``). Returns (N, *spatial); values ≤ 0 mark folding."""
    if not isinstance(disp, torch.Tensor) or disp.dim() not in (4, 5) or disp.shape[1] != disp.dim() - 2:
        shape = tuple(disp.shape) if isinstance(disp, torch.Tensor) else type(disp).__name__
        raise ValueError(f"disp must be (N, 2, H, W) or (N, 3, D, H, W), got {shape}")
    ndim = disp.dim() - 2
    if any(s < 2 for s in disp.shape[2:]):
        raise ValueError(f"disp needs at least 2 voxels along each spatial axis, got {tuple(disp.shape[2:])}")
    d = disp.double() if disp.dtype != torch.float64 else disp
    # grads[j][:, i] = d disp_i / d x_j
    grads = torch.gradient(d, dim=tuple(range(2, 2 + ndim)))
    J = [[grads[j][:, i] + (1.0 if i == j else 0.0) for j in range(ndim)] for i in range(ndim)]
    if ndim == 2:
        det = J[0][0] * J[1][1] - J[0][1] * J[1][0]
    else:
        det = (J[0][0] * (J[1][1] * J[2][2] - J[1][2] * J[2][1])
               - J[0][1] * (J[1][0] * J[2][2] - J[1][2] * J[2][0])
               + J[0][2] * (J[1][0] * J[2][1] - J[1][1] * J[2][0]))
    return det.to(disp.dtype) if disp.is_floating_point() else det


def folding_fraction(disp: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """Fraction of voxels (inside ``mask`` when given) where the Jacobian determinant is ≤ 0."""
    det = jacobian_determinant(disp)
    fold = det <= 0
    if mask is not None:
        mask = mask.bool()
        if mask.dim() == det.dim() + 1:  # (N, 1, *spatial) like an image
            mask = mask[:, 0]
        mask = mask.expand_as(det)
        return float(fold[mask].float().mean()) if mask.any() else 0.0
    return float(fold.float().mean())


def similarity(a: torch.Tensor, b: torch.Tensor, window: int | Sequence[int] = 9) -> dict[str, float]:
    """Mean windowed NCC (:func:`fastwarp.ncc`) and mean squared error of two images."""
    with torch.no_grad():
        return {"ncc": float(_ncc(a.float(), b.float(), window)), "mse": float((a.float() - b.float()).square().mean())}


def evaluate(
    moving: torch.Tensor,
    fixed: torch.Tensor,
    disp: torch.Tensor,
    moving_labels: torch.Tensor | None = None,
    fixed_labels: torch.Tensor | None = None,
    window: int | Sequence[int] = 9,
) -> dict:
    """Everything the CLI reports for one registered pair: NCC and MSE before and after, Dice
    per label and its mean before and after (labels warped with ``mode="nearest"``), and the
    folding fraction and Jacobian-determinant range of ``disp``."""
    with torch.no_grad():
        warped_labels = None
        if moving_labels is not None and fixed_labels is not None:
            warped_labels = warp(moving_labels, disp.float(), mode="nearest")
        return compare(moving, warp(moving.float(), disp.float()), fixed, disp, moving_labels, warped_labels,
                       fixed_labels, window)


def compare(
    before: torch.Tensor,
    after: torch.Tensor,
    fixed: torch.Tensor,
    disp: torch.Tensor,
    labels_before: torch.Tensor | None = None,
    labels_after: torch.Tensor | None = None,
    fixed_labels: torch.Tensor | None = None,
    window: int | Sequence[int] = 9,
) -> dict:
    """:func:`evaluate`'s report from images already resampled: the moving image (and labels)
    on the fixed grid ``before`` and ``after`` registration, and the deformable part ``disp``
    whose Jacobian is reported (an affine part, constant, is left out)."""
    with torch.no_grad():
        s0, s1 = similarity(before, fixed, window), similarity(after, fixed, window)
        det = jacobian_determinant(disp.float())
        out = {
            "ncc_before": s0["ncc"], "ncc_after": s1["ncc"],
            "mse_before": s0["mse"], "mse_after": s1["mse"],
            "folding_fraction": float((det <= 0).float().mean()),
            "jacobian_min": float(det.min()), "jacobian_max": float(det.max()),
        }
        if labels_before is not None and labels_after is not None and fixed_labels is not None:
            d0, d1 = dice(labels_before, fixed_labels), dice(labels_after, fixed_labels)
            out["dice_before"] = d0
            out["dice_after"] = d1
            out["mean_dice_before"] = sum(d0.values()) / len(d0) if d0 else float("nan")
            out["mean_dice_after"] = sum(d1.values()) / len(d1) if d1 else float("nan")
    return out
