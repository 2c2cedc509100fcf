"""From a loaded volume to the grid a network takes: block-average downsampling (the affine kept
consistent) and zero padding to the model's multiple, with the slices that crop it back."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..pyramid import reduce, reduced_affine
from .nifti import Volume

__all__ = ["pad_to_multiple", "downsample", "to_model_grid"]


def pad_to_multiple(x: np.ndarray, multiple: int, ndim: int | None = None,
                    axes: Sequence[int] | None = None) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Zero-pad the last ``ndim`` axes (all by default), or the given ``axes``, symmetrically
    up to multiples of ``multiple``. Returns the padded array and the slices that crop it back."""
    if axes is None:
        ndim = x.ndim if ndim is None else ndim
        axes = range(x.ndim - ndim, x.ndim)
    axes = {a % x.ndim for a in axes}
    pads, crop = [], []
    for k, s in enumerate(x.shape):
        total = (-s) % multiple if k in axes else 0
        pads.append((total // 2, total - total // 2))
        crop.append(slice(total // 2, total // 2 + s))
    return np.pad(x, pads), tuple(crop)


def downsample(vol: Volume, factor: int) -> Volume:
    """``vol`` at ``1/factor`` resolution on the application's pyramid grid
    (:mod:`fastwarp.app.pyramid`): images by block averaging, labels by taking the voxel
    nearest each block's centre, the affine to match."""
    if factor == 1:
        return vol
    ndim = vol.image.ndim
    image = reduce(torch.from_numpy(np.ascontiguousarray(vol.image))[None, None], factor)[0, 0].numpy()
    sl = tuple(slice(factor // 2, None, factor) for _ in range(ndim))
    labels = None if vol.labels is None else np.ascontiguousarray(vol.labels[sl])
    if labels is not None and labels.shape != image.shape:
        labels = np.pad(labels, [(0, a - b) for a, b in zip(image.shape, labels.shape)])
    return Volume(image, reduced_affine(vol.affine, factor, ndim), labels, None, vol.name)


def to_model_grid(vol: Volume, multiple: int, factor: int = 1,
                  axes: Sequence[int] | None = None) -> tuple[Volume, tuple[slice, ...]]:
    """``vol`` as a network takes it: at ``1/factor`` resolution (:func:`downsample`) and
    zero-padded to multiples of ``multiple`` along ``axes`` (all by default; the first two for a
    2-D model on axial slices), its labels alike. Returns the volume and the slices that crop
    the padding back off."""
    vol = downsample(vol, factor)
    image, crop = pad_to_multiple(vol.image, multiple, axes=axes)
    labels = None
    if vol.labels is not None:
        labels = np.zeros(image.shape, dtype=vol.labels.dtype)
        labels[crop] = vol.labels
    return Volume(image, vol.affine, labels, vol.header, vol.name), crop
