"""Inverse displacement fields, and how inverse two maps are.

A displacement ``u`` (voxels, ``(1, nd, *S)``, fastwarp's layout) is the map ``phi(p) = p + u(p)``;
its inverse is the displacement ``w`` with ``phi^-1(p) = p + w(p)``.

- A diffeomorphic registration's ``u = exp(v)`` (a stationary velocity, scaling and squaring)
  has the inverse ``exp(-v)``: the velocity integrated backwards (:func:`inverse_of_velocity`).
- Any other field is inverted by the fixed point ``w <- -u(p + w(p))`` (:func:`invert_displacement`),
  which converges where the map does not fold (a contraction where |grad u| < 1); the residual
  says how far it got.
"""

from __future__ import annotations

import torch

from ..integrate import integrate_velocity
from ..warp import warp

__all__ = ["inverse_of_velocity", "invert_displacement", "inverse_consistency"]


def inverse_of_velocity(velocity: torch.Tensor, steps: int = 7) -> torch.Tensor:
    """The displacement of ``exp(-v)``, the inverse of ``exp(v)`` (:func:`fastwarp.integrate_velocity`
    with the same ``steps``)."""
    return integrate_velocity(-velocity, steps)


def _compose(u: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``u(p + w(p))``, linear, clamped to the grid (a field continues flat past its edge)."""
    return warp(u, w.to(u.dtype), padding_mode="border")


@torch.no_grad()
def invert_displacement(u: torch.Tensor, iterations: int = 100, tol: float = 1e-3,
                        patience: int = 10) -> tuple[torch.Tensor, dict]:
    """The inverse displacement of ``u`` (``(1, nd, *S)``, voxels) by the fixed point
    ``w <- -u(p + w(p))`` from ``w = -u``: until the largest change is below ``tol`` voxels, the
    mean residual has not improved by 1 % in ``patience`` iterations (where the map folds the
    iteration oscillates there and never converges), or after ``iterations``. Returns the
    iterate of the smallest mean residual ``|w(p) + u(p + w(p))|`` (how far ``phi(phi^-1(p))``
    lies from ``p``) and ``{"iterations", "change", "residual_mean", "residual_max"}``: the last
    change and that iterate's residual, in voxels."""
    if u.dim() not in (4, 5) or u.shape[0] != 1 or u.shape[1] != u.dim() - 2:
        raise ValueError(f"u must be a displacement (1, ndim, *spatial), got shape {tuple(u.shape)}")
    u = u.float().contiguous()
    w = -u
    best, best_r, best_k, change, k = w, None, 0, float("inf"), 0
    for k in range(1, iterations + 1):
        new = -_compose(u, w)
        r = (w - new).norm(dim=1)  # w's own residual |w(p) + u(p + w(p))|
        if best_r is None or float(r.mean()) < float(best_r.mean()):
            if best_r is None or float(r.mean()) < 0.99 * float(best_r.mean()):
                best_k = k
            best, best_r = w, r
        change = float(r.max())
        w = new
        if change < tol or k - best_k >= patience:
            break
    return best, dict(iterations=k, change=change, residual_mean=float(best_r.mean()),
                      residual_max=float(best_r.max()))


@torch.no_grad()
def inverse_consistency(u: torch.Tensor, w: torch.Tensor, mask: torch.Tensor | None = None) -> dict:
    """How far ``phi^-1(phi(p))`` lies from ``p`` (``|u(p) + w(p + u(p))|``, voxels) over the voxels
    whose ``phi(p)`` lies inside the grid (and in ``mask``, a boolean ``(*S)``, when given):
    ``{"mean", "max", "voxels"}``."""
    nd = u.shape[1]
    r = (u + _compose(w.to(u.dtype), u)).norm(dim=1)[0]
    from .fields import voxel_grid

    target = voxel_grid(u.shape[2:], u.device, u.dtype) + u[0]
    size = torch.tensor(u.shape[2:], dtype=u.dtype, device=u.device).view(nd, *([1] * nd))
    keep = ((target >= 0) & (target <= size - 1)).all(dim=0)
    if mask is not None:
        keep &= torch.as_tensor(mask, device=u.device).bool()
    r = r[keep]
    if r.numel() == 0:
        return dict(mean=float("nan"), max=float("nan"), voxels=0)
    return dict(mean=float(r.mean()), max=float(r.max()), voxels=int(r.numel()))
