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

from ..warp import grid_sample, warp
from .transforms import AffineTransform, FieldTransform, load_transform, ras_to_lps

__all__ = ["INTERPOLATIONS", "apply_transforms", "apply_files"]

INTERPOLATIONS = ("linear", "nearest", "label")


def _grid_affines(reference_affine, image_affine, nd):
    """The two grids' affines as float64 homogeneous ``nd + 1`` matrices (a 2-D image's 4x4 NIfTI
    affine reduced to its in-plane rows and columns 0, 1, 3)."""
    out = []
    for a in (reference_affine, image_affine):
        a = np.asarray(a, dtype=np.float64)
        out.append(a[np.ix_([0, 1, 3], [0, 1, 3])] if nd == 2 and a.shape != (3, 3) else a)
    return out


def _sampling_grid(image_shape, image_affine, reference_shape, reference_affine, transforms, device) -> torch.Tensor:
    """The ``grid_sample`` grid (``align_corners=True``, ``(1, *reference_shape, nd)``, float32)
    that reads, at each reference voxel, the image at the chain's point (Note [Applying a chain])."""
    nd = len(reference_shape)
    Ar, Am = _grid_affines(reference_affine, image_affine, nd)
    M = Ar.copy()  # reference voxel -> the current point, affine part (homogeneous)
    L = np.eye(nd)  # the current point's dense part is L @ D(p)
    D = None  # (nd, *S): a displacement read at the reference voxels, or materialized points
    for i, t in enumerate(transforms):
        if isinstance(t, AffineTransform):
            M, L = t.matrix @ M, t.matrix[:nd, :nd] @ L
        elif D is None and i == 0 and t.on_grid(reference_shape, Ar):
            D = t.displacement.to(device)  # a field on the reference grid, first: read, not interpolated
        else:  # a field anywhere else: the points themselves, through it
            points = _dense(M, L, D, reference_shape, device, torch.float64)
            D, M, L = t(points.movedim(-1, 0)), np.zeros((nd + 1, nd + 1)), np.eye(nd)
            M[nd, nd] = 1.0
    # the image's voxels, normalized for grid_sample (voxel 0 -> -1, size - 1 -> +1), x first
    sizes = np.asarray(image_shape, dtype=np.float64)
    N = np.eye(nd + 1)
    N[:nd, :nd] = np.diag(2.0 / np.maximum(sizes - 1, 1))
    N[:nd, nd] = -1.0
    R = (N @ np.linalg.inv(Am))[list(range(nd - 1, -1, -1)) + [nd]]
    return _dense(R @ M, R[:nd, :nd] @ L, D, reference_shape, device, torch.float32)[None]


def _dense(M: np.ndarray, L: np.ndarray, D, shape, device, dtype) -> torch.Tensor:
    """``M_lin p + M_t + L @ D(p)`` at every voxel ``p`` of ``shape``, channels last ``(*shape, nd)``:
    one matrix product for the dense part, the affine part added as separable broadcasts."""
    nd = len(shape)
    n = int(np.prod(shape))
    if D is None:
        out = torch.zeros(*shape, nd, dtype=dtype, device=device)
    else:
        flat = D.reshape(nd, n).to(dtype)
        out = torch.mm(flat.t(), torch.as_tensor(L.T, dtype=dtype, device=device)).view(*shape, nd)
    axes = [torch.arange(s, dtype=torch.float64, device=device) for s in shape]
    Mt = torch.as_tensor(M, dtype=torch.float64, device=device)
    parts = []  # axis k's contribution, (shape_k, nd), broadcast along the others
    for k in range(nd):
        part = axes[k][:, None] * Mt[:nd, k][None]
        if k == 0:
            part = part + Mt[:nd, nd][None]
        parts.append(part.view(*([1] * k), shape[k], *([1] * (nd - 1 - k)), nd))
    head = parts[0]
    for part in parts[1:-1]:
        head = head + part  # (S0, S1, 1, nd) in 3-D: small
    out += head.to(dtype)
    out += parts[-1].to(dtype)
    return out


# Note [Applying a chain]
# ~~~~~~~~~~~~~~~~~~~~~~~
# A chain of affines and fields maps each reference voxel p to a point of the moving image's
# world; the image is read there. Affines compose as matrices, so the chain is carried as
# M p + L D(p): an affine part M (reference voxel -> world) and a dense part, L times a field D
# read at the reference voxels (a registration's warp, on the fixed grid, applied first: read
# without interpolation). Affines after it only change M and L; a field elsewhere in the chain
# (an inverse warp after an inverted affine) needs the points themselves and interpolates
# there, as ITK does. At the end the moving image's inverse affine and grid_sample's
# normalization join M and L, and the grid is written once, channels last, in float32: one
# matrix product for L D and two broadcast additions for M p, instead of a float64 world grid
# and its conversions (1 mm, 2 threads: the grid and the sampling 0.13 s, against 0.79 s before).


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
    ``(*reference_shape)`` on ``device``: a transposed (Fortran-ordered) view when it was
    sampled in the file's order (Note [Sampling in the file's order]); ``.contiguous()`` makes
    it C-ordered."""
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {interpolation!r}")
    device = torch.device(device)
    image = torch.as_tensor(np.asarray(image) if not isinstance(image, torch.Tensor) else image)
    nd = len(reference_shape)
    if image.dim() != nd:
        raise ValueError(f"image is {image.dim()}-D ({tuple(image.shape)}), but the reference grid is {nd}-D")
    chain = [t if isinstance(t, (AffineTransform, FieldTransform)) else load_transform(t) for t in transforms]
    for t in chain:
        if t.nd != nd:
            raise ValueError(f"{t.source} is a {t.nd}-D transform, but the images are {nd}-D")
    if any(s < 2 for s in image.shape):
        raise ValueError(f"image must have at least 2 voxels along every axis, got shape {tuple(image.shape)}")
    image = image.to(device)
    fused = _fused_form(image_affine, tuple(reference_shape), reference_affine, chain)
    if fused is not None:  # the fused affine warp (Note [Applying a chain]), no grid in memory
        A, u, axes = _fused_operands(*fused, image, tuple(reference_shape), device)
        out_shape = tuple(reference_shape[a] for a in axes)

        def sample(x, mode):
            return warp(x.permute(axes)[None, None], u, mode, affine=A, out_shape=out_shape)[0, 0].permute(axes)
    else:
        grid = _sampling_grid(tuple(image.shape), image_affine, tuple(reference_shape), reference_affine, chain, device)

        def sample(x, mode):
            return grid_sample(x[None, None], grid, "bilinear" if mode == "linear" else mode, "zeros",
                               align_corners=True)[0, 0]
    if interpolation == "nearest":
        return sample(image, "nearest")
    if interpolation == "linear":
        return sample(image.float(), "linear")
    return _label_resample(image, sample)


def _fused_form(image_affine, reference_shape, reference_affine, chain):
    """``(A, field, R)`` such that the chain reads the image at its voxel ``A (p + R d(p))`` for
    every reference voxel ``p`` (``A`` (nd, nd + 1) float64; ``d`` the field's RAS vectors, ``R``
    RAS mm -> reference voxels; ``field`` None: ``A p``), when the chain is affines only, or a
    field on the reference grid followed by affines (a registration's own output); else None
    (Note [Applying a chain])."""
    nd = len(reference_shape)
    Ar, Am = _grid_affines(reference_affine, image_affine, nd)
    field, rest = None, list(chain)
    if rest and isinstance(rest[0], FieldTransform):
        if not rest[0].on_grid(reference_shape, Ar):
            return None
        field, rest = rest[0], rest[1:]
    if not all(isinstance(t, AffineTransform) for t in rest):
        return None
    M = Ar
    for t in rest:
        M = t.matrix @ M
    # the world point Ar p + D(p) is Ar (p + Ar_lin^-1 D(p)): the field in reference voxels
    return (np.linalg.inv(Am) @ M)[:nd], field, np.linalg.inv(Ar[:nd, :nd])


def _fused_operands(A, field, R, image, reference_shape, device):
    """The fused warp's affine, displacement (reference voxels, ``(1, nd, *S)`` or None) and axis
    order: the arrays' own, or reversed when the field (or, without one, the image) lies in the
    file's order, Fortran's (Note [Sampling in the file's order])."""
    nd = len(reference_shape)
    if field is not None:
        flip = field.file_order is not None
    else:
        flip = nd > 1 and not image.is_contiguous() and image.permute(*range(nd - 1, -1, -1)).is_contiguous()
    P = np.eye(nd)[::-1] if flip else np.eye(nd)
    axes = tuple(range(nd - 1, -1, -1)) if flip else tuple(range(nd))
    A = np.concatenate([P @ A[:, :nd] @ P, P @ A[:, nd:]], axis=1)  # in the sampled axes' order
    A = torch.as_tensor(A, dtype=torch.float32, device=device)
    if field is None:
        return A, None, axes
    if flip:  # the file's LPS components, (nd, *reversed(S)): u'[k] = sum_j (P R F)[k, j] lps[j]
        src, T = field.file_order.to(device), P @ R @ ras_to_lps(nd)[:nd, :nd]
    else:
        src, T = field.displacement.to(device), R
    if np.count_nonzero(T) == nd and np.all(np.count_nonzero(T, axis=1) == 1):  # one source per component
        u = torch.empty_like(src)
        for k, j in enumerate(np.argmax(T != 0, axis=1)):
            torch.mul(src[j], float(T[k, j]), out=u[k])
    else:
        u = torch.einsum("ij,j...->i...", torch.as_tensor(T, dtype=torch.float32, device=device), src)
    return A, u[None], axes


# Note [Sampling in the file's order]
# ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
# NIfTI voxels are column-major: nibabel hands images over Fortran-ordered, and an ITK field's
# file is (3, Z, Y, X) in memory (Note [A field in file order]). The fused warp's map commutes
# with a permutation P of the axes: out(P q) = image(A (P q + u(P q))) is, on the arrays
# transposed, out'(q) = image'(P A P (q + P u(P q))). So `apply` samples in the reversed order,
# where both the image and the field are C-contiguous as read: the field's components go
# through P R F (F: LPS -> RAS) in the one pass that scales them to reference voxels, and nothing
# is transposed: neither the 65 MB field at 1 mm nor a Fortran-ordered image (a C-ordered one the
# kernel copies transposed, 21 MB at 1 mm: the cheaper of the two). The result is a transposed
# view of the warp's output, which nibabel writes as it lies.


def _label_resample(labels: torch.Tensor, sample) -> torch.Tensor:
    """Each label's indicator sampled linearly (``sample(x, "linear")``), the label of the largest
    weight at each point (0 where none weighs anything: outside the image)."""
    best = out = None
    for value in torch.unique(labels).tolist():
        w = sample((labels == value).float(), "linear")
        if best is None:
            best = torch.zeros_like(w)
            out = torch.zeros(w.shape, dtype=labels.dtype, device=w.device)
        take = w > best
        best = torch.where(take, w, best)
        out = torch.where(take, torch.as_tensor(value, dtype=labels.dtype, device=w.device), out)
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
    ref_data, ref_img = _read(reference, "reference", voxels=False)  # its grid: the header
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
        array = array.astype(array.dtype.newbyteorder("="), copy=False)  # a big-endian file's, for torch
        result = apply_transforms(torch.from_numpy(array), affine, ref_data.shape, ref_affine, chain, mode,
                                  device).cpu().numpy()  # nibabel's Fortran order kept (Note [Sampling in the file's order])
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
