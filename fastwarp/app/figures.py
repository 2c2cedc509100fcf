"""The registration figure: fixed, moving, warped, |difference| before and after, the
deformation as a warped grid, and the Jacobian determinant with folds marked."""

from __future__ import annotations

import os

import numpy as np
import torch

from .metrics import jacobian_determinant

__all__ = ["registration_figure"]


def _plane(x: torch.Tensor | np.ndarray, index: int | None) -> np.ndarray:
    """A 2-D array from (H, W) or (D, H, W): the axial slice ``index`` (last axis) of a volume."""
    x = x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float32)
    x = np.squeeze(x)
    if x.ndim == 3:
        x = x[:, :, x.shape[2] // 2 if index is None else index]
    return x


def registration_figure(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    warped: torch.Tensor,
    disp: torch.Tensor,
    path: str | os.PathLike,
    title: str | None = None,
    slice_index: int | None = None,
    grid_step: int = 4,
) -> str:
    """Write the figure of one registered pair to ``path`` (PNG, PDF, ... by extension).

    Images are (H, W) / (D, H, W) (leading size-1 axes are dropped); ``disp`` is
    (1, ndim, *spatial) in voxel units. For volumes the axial slice ``slice_index`` (last
    axis, middle by default) is shown, and the grid is deformed by the in-plane components."""
    # The object API draws off-screen whatever backend pyplot would pick.
    from matplotlib.figure import Figure

    disp = disp.detach().float().cpu()
    if disp.dim() == disp.shape[1] + 1:
        disp = disp[None]
    ndim = disp.shape[1]
    spatial = tuple(disp.shape[2:])
    if ndim == 3 and slice_index is None:
        slice_index = spatial[2] // 2
    det = jacobian_determinant(disp)[0]
    f, m, w = (_plane(t, slice_index) for t in (fixed, moving, warped))
    jd = _plane(det, slice_index)
    u = disp[0, :2] if ndim == 2 else disp[0, :2, :, :, slice_index]
    u = u.numpy()

    fig = Figure(figsize=(14, 7.5), layout="constrained")
    axes = fig.subplots(2, 4)
    show = dict(cmap="gray", origin="lower", vmin=0.0, vmax=max(float(f.max()), float(m.max()), 1e-6))
    _images(fig, axes, f, m, w, show)
    _deformation(axes[0, 3], w, u, show, grid_step)
    _jacobian(fig, axes[1, 2], jd, float((det <= 0).float().mean()))
    mag = np.sqrt((disp[0] ** 2).sum(0).numpy())
    im = axes[1, 3].imshow(_plane(mag, slice_index).T, cmap="viridis", origin="lower")
    axes[1, 3].set_title("|u| (voxels)")
    fig.colorbar(im, ax=axes[1, 3], shrink=0.8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title)
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def _images(fig, axes, f, m, w, show) -> None:
    """The three images, and |difference| to the fixed one before and after."""
    # imshow(origin="lower") of x.T draws axis 0 left-to-right and axis 1 bottom-to-top:
    # the radiological convention for RAS volumes is not needed here, only consistency.
    for ax, (name, img) in zip(axes[0, :3], [("fixed", f), ("moving", m), ("warped (moving → fixed)", w)]):
        ax.imshow(img.T, **show)
        ax.set_title(name)
    d0, d1 = np.abs(m - f), np.abs(w - f)
    vmax = max(float(d0.max()), 1e-6)
    axes[1, 0].imshow(d0.T, cmap="magma", origin="lower", vmin=0, vmax=vmax)
    axes[1, 0].set_title(f"|moving − fixed|  (mean {d0.mean():.4f})")
    im = axes[1, 1].imshow(d1.T, cmap="magma", origin="lower", vmin=0, vmax=vmax)
    axes[1, 1].set_title(f"|warped − fixed|  (mean {d1.mean():.4f})")
    fig.colorbar(im, ax=axes[1, :2], shrink=0.8)


def _deformation(ax, w, u, show, grid_step: int) -> None:
    """Grid lines through p + u(p) (the in-plane components), over the warped image."""
    ax.imshow(w.T, **show)
    h, wd = u.shape[1:]
    gx, gy = np.meshgrid(np.arange(h), np.arange(wd), indexing="ij")
    px, py = gx + u[0], gy + u[1]
    for i in range(0, h, grid_step):
        ax.plot(px[i, :], py[i, :], color="tab:orange", linewidth=0.6)
    for j in range(0, wd, grid_step):
        ax.plot(px[:, j], py[:, j], color="tab:orange", linewidth=0.6)
    ax.set_xlim(-0.5, h - 0.5)
    ax.set_ylim(-0.5, wd - 0.5)
    ax.set_title("deformation (grid at p + u(p))")


def _jacobian(fig, ax, jd, folded: float) -> None:
    """The Jacobian determinant of the slice, folds (det <= 0) marked; ``folded``: the fraction
    of the whole field's voxels."""
    lim = max(1.0, float(np.abs(jd - 1).max()))
    im = ax.imshow(jd.T, cmap="RdBu_r", origin="lower", vmin=1 - lim, vmax=1 + lim)
    folds = np.argwhere(jd <= 0)
    if len(folds):
        ax.scatter(folds[:, 0], folds[:, 1], s=4, c="black", marker="x", label="det ≤ 0")
        ax.legend(loc="upper right", fontsize=8)
    ax.set_title(f"Jacobian determinant (folding {100 * folded:.3f}%)")
    fig.colorbar(im, ax=ax, shrink=0.8)
