"""World transforms between tools: fastwarp's conventions and ITK's (which ANTs, SimpleITK and
3D Slicer use), and the files that carry them.

Note [World conventions]
~~~~~~~~~~~~~~~~~~~~~~~~
- A grid's affine maps voxel indices (the array's axes, in order) to world millimetres, as a
  NIfTI affine does: RAS+ (x to the right, y to the front, z up). ITK's physical space is LPS
  (x to the left, y to the back): a physical point is ``diag(-1, -1, 1)`` times the world
  point (:func:`ras_to_lps`).
- An affine *transform* (``matrix``) maps a point of the fixed image's world to the
  corresponding point of the moving image's world: the "fixed -> moving" point map that
  resampling needs, as ITK's and ANTs' transforms are (Note [Affine conventions] in
  :mod:`fastwarp.app.affine`).
- A displacement field in fastwarp is in voxels of the fixed grid, channel ``k`` along array
  axis ``k`` (:func:`fastwarp.warp`); ITK's are vectors in physical LPS millimetres
  (:func:`itk_to_voxel_displacement`).
"""

from __future__ import annotations

import os
import re

import numpy as np
import torch

__all__ = ["as_affine", "ras_to_lps", "itk_geometry", "itk_to_voxel_displacement", "save_matrix", "load_matrix"]

_LPS = np.diag([-1.0, -1.0, 1.0])  # NIfTI world (RAS) -> ITK physical space (LPS), and back


def as_affine(name: str, affine, ndim: int) -> np.ndarray:
    """``affine`` as a float64 ``(ndim + 1)`` square homogeneous matrix (None: the identity)."""
    if affine is None:
        return np.eye(ndim + 1)
    if isinstance(affine, torch.Tensor):
        affine = affine.detach().cpu().numpy()
    a = np.asarray(affine, dtype=np.float64)
    if ndim == 2 and a.shape == (4, 4):
        if np.any(a[2, :2] != 0):  # the slice's voxels (i, j, 0) must all lie at one world z
            raise ValueError(f"{name}: the 4x4 affine of a 2-D image must map it to a plane of constant z, got\n{a}")
        a = a[np.ix_([0, 1, 3], [0, 1, 3])]
    n = ndim + 1
    if a.shape != (n, n):
        extra = " (or the 4x4 NIfTI affine of a 2-D file)" if ndim == 2 else ""
        raise ValueError(f"{name} must be a {n}x{n} matrix for a {ndim}-D image{extra}, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must hold finite numbers, got\n{a}")
    if not np.allclose(a[ndim], np.eye(n)[ndim]):
        raise ValueError(f"{name} must be homogeneous (last row {[0] * ndim + [1]}), got last row {a[ndim].tolist()}")
    if abs(np.linalg.det(a[:ndim, :ndim])) < 1e-12:
        raise ValueError(f"{name} is singular (determinant {np.linalg.det(a[:ndim, :ndim]):g})")
    return a


# --------------------------------------------------------------------------- ITK's geometry and fields


def itk_geometry(affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ITK's ``(origin, spacing, direction)`` of a grid whose NIfTI voxel -> world map is ``affine``.

    ITK's physical space is LPS (x to the left, y to the back) where NIfTI's world is RAS, so a
    physical point is ``diag(-1, -1, 1) @`` the world point; ITK index ``(i, j, k)`` is the numpy
    array index ``[i, j, k]`` as antspyx holds it (SimpleITK's arrays are ``[k, j, i]``). Then
    physical = origin + direction @ diag(spacing) @ index."""
    M = _LPS @ np.asarray(affine, dtype=np.float64)[:3, :3]
    spacing = np.linalg.norm(M, axis=0)
    return _LPS @ np.asarray(affine, dtype=np.float64)[:3, 3], spacing, M / spacing


def itk_to_voxel_displacement(field: np.ndarray, affine: np.ndarray) -> torch.Tensor:
    """An ITK displacement field on the fixed grid, ``(X, Y, Z, 3)`` (array axes = ITK index axes),
    vectors in physical LPS mm as ITK's transforms use them (fixed point ``x`` maps to the moving
    point ``x + u(x)``), as fastwarp's ``(1, 3, X, Y, Z)`` displacement in voxels (channel ``k``
    along array axis ``k``): ``inverse(direction @ diag(spacing)) @ u``. The moving image shares
    the fixed grid, so moving index = fixed index + that."""
    origin, spacing, direction = itk_geometry(affine)
    to_voxel = np.linalg.inv(direction @ np.diag(spacing))
    u = np.einsum("ij,...j->...i", to_voxel, np.asarray(field, dtype=np.float64))
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(u, -1, 0)[None], dtype=np.float32))


# --------------------------------------------------------------------------- affine matrix files


_ITK_HEADER = "#Insight Transform File V1.0"


def ras_to_lps(nd: int) -> np.ndarray:
    """ITK's world is LPS: the RAS x and y axes negated; homogeneous, ``nd + 1`` square (its
    own inverse)."""
    flip = np.ones(nd + 1)
    flip[:2] = -1
    return np.diag(flip)


def save_matrix(path: str | os.PathLike, matrix: np.ndarray) -> str:
    """Write a world fixed -> moving point map (4x4, or 3x3 in 2-D; RAS mm as NIfTI) to ``path``.

    - ``*.txt``: an ITK transform file (``#Insight Transform File V1.0``,
      ``AffineTransform_double_3_3`` or ``_2_2``), which ITK, ANTs (``antsApplyTransforms``) and
      3D Slicer read: the same map in ITK's LPS world (x and y negated), with a zero centre.
    - any other name (e.g. ``*.mat``, ``*.affine``): the plain matrix, ``np.savetxt`` style, one
      row a line, under a ``#`` line that states the convention.

    Returns ``path``."""
    path = os.fspath(path)
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape not in ((3, 3), (4, 4)):
        raise ValueError(f"matrix must be 4x4 (3-D) or 3x3 (2-D), got shape {m.shape}")
    nd = m.shape[0] - 1
    m = as_affine("matrix", m, nd)
    if path.endswith(".txt"):
        flip = ras_to_lps(nd)
        lps = flip @ m @ flip
        values = " ".join(repr(float(v)) for v in [*lps[:nd, :nd].ravel(), *lps[:nd, nd]])
        text = (f"{_ITK_HEADER}\n#Transform 0\nTransform: AffineTransform_double_{nd}_{nd}\n"
                f"Parameters: {values}\nFixedParameters: {' '.join(['0'] * nd)}\n")
    else:
        rows = "\n".join(" ".join(f"{v:.17g}" for v in row) for row in m)
        text = (f"# fastwarp affine: world (RAS mm, NIfTI) fixed -> moving point map, {nd + 1}x{nd + 1}\n"
                f"{rows}\n")
    with open(path, "w") as fh:
        fh.write(text)
    return path


def load_matrix(path: str | os.PathLike) -> np.ndarray:
    """Read what :func:`save_matrix` writes, either format (an ITK file by its first line):
    the world fixed -> moving point map in RAS mm, float64, 4x4 (3x3 in 2-D). An ITK file's
    centre (``FixedParameters``) is folded into the translation."""
    path = os.fspath(path)
    with open(path) as fh:
        text = fh.read()
    if text.startswith(_ITK_HEADER):
        fields = {}
        for line in text.splitlines():
            if ":" in line and not line.startswith("#"):
                key, value = line.split(":", 1)
                fields.setdefault(key.strip(), value.strip())
        kind = fields.get("Transform", "")
        match = re.fullmatch(r"(?:AffineTransform|MatrixOffsetTransformBase)_(?:double|float)_([23])_\1", kind)
        if match is None:
            raise ValueError(f"{path}: expected an ITK AffineTransform_double_3_3 (or _2_2), got {kind!r}")
        nd = int(match.group(1))
        try:
            values = [float(v) for v in fields.get("Parameters", "").split()]
            centre = np.array([float(v) for v in fields.get("FixedParameters", "").split()] or [0.0] * nd)
        except ValueError:
            raise ValueError(f"{path}: the ITK transform's parameters are not numbers") from None
        if len(values) != nd * nd + nd or centre.shape != (nd,):
            raise ValueError(f"{path}: an {kind} needs {nd * nd + nd} Parameters and {nd} FixedParameters")
        lin, trans = np.array(values[: nd * nd]).reshape(nd, nd), np.array(values[nd * nd:])
        lps = np.eye(nd + 1)
        lps[:nd, :nd] = lin
        lps[:nd, nd] = trans + centre - lin @ centre  # ITK: y = L (x - c) + t + c
        flip = ras_to_lps(nd)
        return flip @ lps @ flip
    try:
        m = np.loadtxt(path, comments="#", dtype=np.float64, ndmin=2)
    except ValueError as e:
        raise ValueError(f"{path}: not a matrix written by save_matrix ({e})") from None
    if m.shape not in ((3, 3), (4, 4)):
        raise ValueError(f"{path}: expected a 4x4 (or 3x3) matrix, got shape {m.shape}")
    return as_affine(f"the matrix in {path}", m, m.shape[0] - 1)
