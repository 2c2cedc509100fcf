"""Apply saved transforms to images (``fastwarp apply``): any image or label map, on any grid,
through a chain of transforms as ``antsApplyTransforms`` takes it: fastwarp's own outputs or
ANTs'/ITK's files (Note [ITK displacement fields] in :mod:`fastwarp.app.transforms`).

Every point of the reference grid is mapped through the chain (in float64) to the moving
image's world, then to its voxels, and the image is sampled there by fastwarp's kernels: linear,
nearest, or ``label`` (each label's indicator interpolated linearly, the largest wins: as ANTs'
``GenericLabel``, smoother than nearest at the edges). Points outside the moving image read 0.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from .transforms import AffineTransform, FieldTransform, grid_points, load_transform, transform_points

__all__ = ["INTERPOLATIONS", "apply_transforms", "apply_files"]

INTERPOLATIONS = ("linear", "nearest", "label")


def _coords(image_shape, image_affine, reference_shape, reference_affine, transforms, device) -> torch.Tensor:
    """The moving voxel that each reference voxel reads, ``(1, nd, *reference_shape)`` float32."""
    nd = len(reference_shape)
    points = grid_points(reference_shape, reference_affine, device)
    points = transform_points(transforms, points, grid=(reference_shape, reference_affine))
    inv = np.linalg.inv(AffineTransform(image_affine if np.shape(image_affine) != (4, 4) or nd == 3
                                        else np.asarray(image_affine)[np.ix_([0, 1, 3], [0, 1, 3])],
                                        "the image's affine").matrix)
    inv = torch.as_tensor(inv, dtype=torch.float64, device=device)
    index = torch.einsum("ij,j...->i...", inv[:nd, :nd], points) + inv[:nd, nd].view(nd, *([1] * nd))
    return index[None].float().contiguous()


def apply_transforms(image, image_affine, reference_shape: Sequence[int], reference_affine,
                     transforms: Sequence, interpolation: str = "linear", device="cpu") -> torch.Tensor:
    """``image`` (``(*spatial)``, a tensor or array on the grid ``image_affine``: NIfTI voxel ->
    RAS mm) resampled onto the reference grid (``reference_shape``, ``reference_affine``)
    through ``transforms``: :class:`~fastwarp.app.transforms.AffineTransform` /
    :class:`~fastwarp.app.transforms.FieldTransform` objects or what
    :func:`~fastwarp.app.transforms.load_transform` takes (a path, ``"[path,1]"``), listed as
    ``antsApplyTransforms`` lists them (the first one maps the reference's points first; an
    empty list: the grids' own alignment).

    ``interpolation``: ``"linear"`` (the result is float32), ``"nearest"`` or ``"label"`` (the
    result keeps ``image``'s dtype: integer label maps stay integer). Returns
    ``(*reference_shape)`` on ``device``."""
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {interpolation!r}")
    from .affine import resample

    device = torch.device(device)
    image = torch.as_tensor(np.asarray(image) if not isinstance(image, torch.Tensor) else image)
    nd = len(reference_shape)
    if image.dim() != nd:
        raise ValueError(f"image is {image.dim()}-D ({tuple(image.shape)}), but the reference grid is {nd}-D")
    chain = [t if isinstance(t, (AffineTransform, FieldTransform)) else load_transform(t) for t in transforms]
    for t in chain:
        if t.nd != nd:
            raise ValueError(f"{t.source} is a {t.nd}-D transform, but the images are {nd}-D")
    coords = _coords(tuple(image.shape), image_affine, tuple(reference_shape), reference_affine, chain, device)
    image = image.to(device)
    if interpolation == "nearest":
        return resample(image, coords, "nearest")
    if interpolation == "linear":
        return resample(image.float(), coords, "linear")
    return _label_resample(image, coords)


def _label_resample(labels: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Each label's indicator sampled linearly, the label of the largest weight at each point
    (0 where none weighs anything: outside the image)."""
    from .affine import resample

    best = torch.zeros(coords.shape[2:], dtype=torch.float32, device=coords.device)
    out = torch.zeros(coords.shape[2:], dtype=labels.dtype, device=coords.device)
    for value in torch.unique(labels).tolist():
        w = resample((labels == value).float(), coords, "linear")
        take = w > best
        best = torch.where(take, w, best)
        out = torch.where(take, torch.as_tensor(value, dtype=labels.dtype, device=coords.device), out)
    return out


def apply_files(inputs: Sequence[str], reference: str, transforms: Sequence[str], outputs: Sequence[str],
                interpolation: str = "linear", device="cpu") -> list[str]:
    """``fastwarp apply``: each input image resampled onto ``reference``'s grid through
    ``transforms`` (as :func:`apply_transforms`), written to the matching output (on the
    reference's grid, with its affine). Everything is read and checked before anything is
    written; each file is written whole or not at all. Returns the paths written."""
    from .data import save_nifti
    from .data.nifti import _read

    if len(inputs) != len(outputs) or not inputs:
        raise ValueError(f"give one output per input: {len(inputs)} input(s), {len(outputs)} output(s)")
    for out in outputs:
        if not out.endswith((".nii", ".nii.gz")):
            raise ValueError(f"output {out} must end in .nii or .nii.gz")
        if os.path.isdir(out):
            raise ValueError(f"output {out} is a directory; give a file name")
    if len(set(map(os.path.abspath, outputs))) != len(outputs):
        raise ValueError("two inputs have one output name")
    ref_data, ref_img = _read(reference, "reference")
    nd = ref_data.ndim
    ref_affine = np.asarray(ref_img.affine, dtype=np.float64)
    chain = [load_transform(t) for t in transforms]
    for t in chain:
        if t.nd != nd:
            raise ValueError(f"transform {t.source} is {t.nd}-D, but the reference {reference} is {nd}-D")
        if isinstance(t, FieldTransform):
            _check_covers(t, ref_data.shape, ref_affine, reference)
    images = []
    for path in inputs:
        data, img = _read(path, "input")
        if data.ndim != nd:
            raise ValueError(f"input {path} is {data.ndim}-D, but the reference {reference} is {nd}-D")
        images.append((np.asarray(data), np.asarray(img.affine, dtype=np.float64), img.header))
    written = []
    for (data, affine, header), out in zip(images, outputs):
        integer = np.issubdtype(data.dtype, np.integer) or data.dtype == np.bool_
        mode = interpolation
        if not integer and mode == "label":
            raise ValueError(f"--interpolation label needs an integer label map, but {inputs[len(written)]} holds "
                             f"{data.dtype}")
        array = data if (integer and mode != "linear") else data.astype(np.float32)
        result = apply_transforms(torch.from_numpy(np.ascontiguousarray(array)), affine, ref_data.shape, ref_affine,
                                  chain, mode, device).cpu().numpy()
        dtype = array.dtype if mode != "linear" else np.float32
        hdr = ref_img.header.copy()
        written.append(save_nifti(out, result.astype(dtype), ref_affine, hdr, dtype))
    return written


def _check_covers(field: FieldTransform, shape, affine, reference: str) -> None:
    """A field whose grid lies wholly away from the reference's is a mistake (the wrong file):
    it would displace nothing."""
    nd = field.nd
    corners = np.array(np.meshgrid(*[[0, s - 1] for s in shape], indexing="ij")).reshape(nd, -1)
    A = affine if nd == 3 else affine[np.ix_([0, 1, 3], [0, 1, 3])]
    world = A[:nd, :nd] @ corners + A[:nd, nd:]
    index = np.linalg.inv(field.affine)[:nd, :nd] @ world + np.linalg.inv(field.affine)[:nd, nd:]
    lo, hi = index.min(axis=1), index.max(axis=1)
    if np.any(hi < -0.5) or np.any(lo > np.asarray(field.shape) - 0.5):
        raise ValueError(f"the displacement field {field.source} (grid {field.shape}) does not overlap the reference "
                         f"{reference}'s grid in the world: the wrong file for this reference?")
