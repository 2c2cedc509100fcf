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

__all__ = ["as_affine", "ras_to_lps", "itk_geometry", "itk_to_voxel_displacement", "save_matrix", "load_matrix",
           "AffineTransform", "FieldTransform", "load_transform", "save_displacement_field",
           "load_displacement_field", "voxel_to_world_displacement", "world_to_voxel_displacement",
           "transform_points", "grid_points"]


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
    M = _flip(3) @ np.asarray(affine, dtype=np.float64)[:3, :3]
    spacing = np.linalg.norm(M, axis=0)
    return _flip(3) @ np.asarray(affine, dtype=np.float64)[:3, 3], spacing, M / spacing


def itk_to_voxel_displacement(field: np.ndarray, affine: np.ndarray) -> torch.Tensor:
    """An ITK displacement field on the fixed grid, ``(X, Y, Z, 3)`` (array axes = ITK index axes),
    vectors in physical LPS mm as ITK's transforms use them (fixed point ``x`` maps to the moving
    point ``x + u(x)``), as fastwarp's ``(1, 3, X, Y, Z)`` displacement in voxels (channel ``k``
    along array axis ``k``): ``inverse(direction @ diag(spacing)) @ u``. The moving image shares
    the fixed grid, so moving index = fixed index + that."""
    field = np.asarray(field, dtype=np.float64)
    nd = field.shape[-1]
    flip = np.diag(ras_to_lps(nd))[:nd].reshape(nd, *([1] * nd))  # LPS -> RAS (its own inverse)
    return world_to_voxel_displacement(torch.from_numpy(np.moveaxis(field, -1, 0) * flip), affine)


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
    - ``*.mat``: the same ITK transform in ITK's MATLAB (v4, binary) format, as ANTs writes its
      ``*GenericAffine.mat`` (variables ``AffineTransform_double_3_3`` and ``fixed``).
    - any other name (e.g. ``*.affine``): the plain matrix, ``np.savetxt`` style, one row a
      line, under a ``#`` line that states the convention.

    Returns ``path``."""
    path = os.fspath(path)
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape not in ((3, 3), (4, 4)):
        raise ValueError(f"matrix must be 4x4 (3-D) or 3x3 (2-D), got shape {m.shape}")
    nd = m.shape[0] - 1
    m = as_affine("matrix", m, nd)
    if path.endswith(".mat"):
        flip = ras_to_lps(nd)
        lps = flip @ m @ flip
        data = _mat_variable(f"AffineTransform_double_{nd}_{nd}", [*lps[:nd, :nd].ravel(), *lps[:nd, nd]])
        data += _mat_variable("fixed", [0.0] * nd)
        _write_atomic(path, data)
        return path
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
    _write_atomic(path, text.encode())
    return path


def _write_atomic(path: str, data: bytes) -> None:
    """``data`` into ``path``, whole or not at all (:func:`~fastwarp.app.files.replacing`)."""
    from .files import replacing

    with replacing(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)


def _mat_variable(name: str, values) -> bytes:
    """One MATLAB v4 variable: a column of float64, little-endian (ITK's MatlabTransformIO)."""
    v = np.asarray(values, dtype="<f8").ravel()
    key = name.encode() + b"\0"
    return np.array([0, v.size, 1, 0, len(key)], dtype="<i4").tobytes() + key + v.tobytes()


def _read_mat(data: bytes, path: str) -> dict[str, np.ndarray]:
    """The variables of a MATLAB v4 file (ITK's and ANTs' ``*.mat`` transforms): name -> values
    (column-major, flattened). Little-endian, real, full matrices of float64 or float32."""
    out, pos = {}, 0
    while pos < len(data):
        if pos + 20 > len(data):
            raise ValueError(f"{path}: truncated MATLAB transform file")
        kind, rows, cols, imag, namelen = (int(x) for x in np.frombuffer(data, "<i4", 5, pos))
        if kind not in (0, 10) or imag != 0 or rows < 0 or cols < 0 or not 0 < namelen < 256:
            raise ValueError(f"{path}: not an ITK/ANTs MATLAB transform file (a little-endian v4 .mat of real "
                             f"float64 or float32 matrices)")
        pos += 20
        name = data[pos:pos + namelen].split(b"\0")[0].decode("ascii", "replace")
        pos += namelen
        dtype = "<f8" if kind == 0 else "<f4"
        size = rows * cols * np.dtype(dtype).itemsize
        if pos + size > len(data):
            raise ValueError(f"{path}: truncated MATLAB transform file")
        out[name] = np.frombuffer(data, dtype, rows * cols, pos).astype(np.float64)
        pos += size
    return out


def _itk_affine_to_ras(kind: str, values, centre, path: str) -> np.ndarray:
    """An ITK affine (``kind``: its class name; ``values``: Parameters; ``centre``:
    FixedParameters) as the RAS world fixed -> moving point map."""
    match = re.fullmatch(r"(?:AffineTransform|MatrixOffsetTransformBase)_(?:double|float)_([23])_\1", kind)
    if match is None:
        raise ValueError(f"{path}: expected an ITK AffineTransform_double_3_3 (or _2_2), got {kind!r}")
    nd = int(match.group(1))
    values = np.asarray(values, dtype=np.float64).ravel()
    centre = np.zeros(nd) if centre is None or len(centre) == 0 else np.asarray(centre, dtype=np.float64).ravel()
    if values.size != nd * nd + nd or centre.shape != (nd,):
        raise ValueError(f"{path}: an {kind} needs {nd * nd + nd} Parameters and {nd} FixedParameters")
    lin, trans = values[: nd * nd].reshape(nd, nd), values[nd * nd:]
    lps = np.eye(nd + 1)
    lps[:nd, :nd] = lin
    lps[:nd, nd] = trans + centre - lin @ centre  # ITK: y = L (x - c) + t + c
    flip = ras_to_lps(nd)
    return as_affine(f"the transform in {path}", flip @ lps @ flip, nd)


def load_matrix(path: str | os.PathLike) -> np.ndarray:
    """Read what :func:`save_matrix` writes, any of its formats (told apart by their content):
    the world fixed -> moving point map in RAS mm, float64, 4x4 (3x3 in 2-D). ITK's files
    (text, or ANTs' binary ``*GenericAffine.mat``) have their centre (``FixedParameters``)
    folded into the translation."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such transform file: {path}")
    with open(path, "rb") as fh:
        raw = fh.read()
    if raw[:4] in (b"\x00\x00\x00\x00", b"\x0a\x00\x00\x00"):  # a MATLAB v4 header: type 0 or 10
        variables = _read_mat(raw, path)
        kinds = [k for k in variables if k != "fixed"]
        if len(kinds) != 1:
            raise ValueError(f"{path}: expected one ITK affine and its 'fixed' centre, got variables {sorted(variables)}")
        return _itk_affine_to_ras(kinds[0], variables[kinds[0]], variables.get("fixed"), path)
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a transform file (neither ITK text, ITK/ANTs .mat nor a plain matrix)") from None
    if text.startswith(_ITK_HEADER):
        fields = {}
        for line in text.splitlines():
            if ":" in line and not line.startswith("#"):
                key, value = line.split(":", 1)
                fields.setdefault(key.strip(), value.strip())
        kind = fields.get("Transform", "")
        try:
            values = [float(v) for v in fields.get("Parameters", "").split()]
            centre = [float(v) for v in fields.get("FixedParameters", "").split()]
        except ValueError:
            raise ValueError(f"{path}: the ITK transform's parameters are not numbers") from None
        return _itk_affine_to_ras(kind, values, centre, path)
    try:
        m = np.loadtxt(path, comments="#", dtype=np.float64, ndmin=2)
    except ValueError as e:
        raise ValueError(f"{path}: not a matrix written by save_matrix ({e})") from None
    if m.shape not in ((3, 3), (4, 4)):
        raise ValueError(f"{path}: expected a 4x4 (or 3x3) matrix, got shape {m.shape}")
    return as_affine(f"the matrix in {path}", m, m.shape[0] - 1)


# --------------------------------------------------------------------------- displacement fields

# Note [ITK displacement fields]
# ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
# ITK (and so ANTs, antspyx, 3D Slicer) reads a displacement field from a NIfTI file of shape
# (X, Y, Z, 1, 3) (2-D: (X, Y, 1, 1, 2)), intent "vector": at the grid's voxel p, whose physical
# point is x, the vector u such that the transform maps x to x + u. The vectors are in ITK's
# physical space, LPS millimetres; the grid is the file's NIfTI affine (ITK turns it into
# origin, spacing and direction, LPS too). Between grid points ITK interpolates the vectors
# linearly, clamped to the grid within half a voxel of its edge; a point further outside is
# not displaced. ANTs' *Warp.nii.gz files are exactly this.
#
# fastwarp's own displacement (fastwarp.warp, PairResult.disp) is in voxels of the fixed grid,
# channel k along array axis k: the fixed voxel p reads the moving image at V (p + u(p)). With A
# the fixed grid's NIfTI affine (voxel -> RAS world) and W the world affine (fixed -> moving
# point, RAS), the moving world point is W A (p + u(p)) = W (x + A_lin u(p)): the deformable
# part in the world is x -> x + A_lin u(A^-1 x), and the ITK vector is diag(-1, -1, 1) A_lin u
# (voxel_to_world_displacement, save_displacement_field). The whole point map, fixed -> moving,
# is the field first and then the affine: y = W(phi(x)); antsApplyTransforms and
# ants.apply_transforms list that as [field, affine] (transform_points).

def _flip(nd: int) -> np.ndarray:
    """RAS <-> LPS on vectors: :func:`ras_to_lps`'s linear part, ``nd`` square."""
    return ras_to_lps(nd)[:nd, :nd]


def _nifti_affine(affine: np.ndarray) -> np.ndarray:
    """The 4x4 NIfTI affine of a grid's (nd + 1) square affine (a 2-D grid at z = 0)."""
    if affine.shape == (4, 4):
        return affine
    out = np.eye(4)
    out[np.ix_([0, 1, 3], [0, 1, 3])] = affine
    return out


def voxel_to_world_displacement(disp, affine) -> torch.Tensor:
    """fastwarp's displacement ``(1, nd, *S)`` in voxels of a grid (NIfTI ``affine``, voxel ->
    RAS mm) as world vectors ``(nd, *S)`` in RAS mm, float64: ``A_lin @ u``."""
    disp = torch.as_tensor(disp)
    nd = disp.shape[1]
    lin = torch.as_tensor(as_affine("affine", affine, nd)[:nd, :nd], dtype=torch.float64, device=disp.device)
    return torch.einsum("ij,j...->i...", lin, disp[0].double())


def world_to_voxel_displacement(world, affine) -> torch.Tensor:
    """The inverse of :func:`voxel_to_world_displacement`: ``(nd, *S)`` RAS mm -> ``(1, nd, *S)``
    voxels of the grid, float32."""
    world = torch.as_tensor(world)
    nd = world.shape[0]
    inv = np.linalg.inv(as_affine("affine", affine, nd)[:nd, :nd])
    inv = torch.as_tensor(inv, dtype=torch.float64, device=world.device)
    return torch.einsum("ij,j...->i...", inv, world.double())[None].float().contiguous()


def save_displacement_field(path: str | os.PathLike, disp, affine, header=None) -> str:
    """Write fastwarp's displacement ``disp`` (``(1, nd, *S)``, voxels of the grid whose NIfTI
    affine is ``affine``) as an ITK displacement field (Note [ITK displacement fields]), which
    ``antsApplyTransforms``, antspyx, ITK and 3D Slicer read: ``(X, Y, Z, 1, 3)`` float32,
    intent vector, LPS mm. Written to a temporary name and renamed. Returns ``path``."""
    from .data import save_nifti

    disp = torch.as_tensor(disp)
    if disp.dim() not in (4, 5) or disp.shape[0] != 1 or disp.shape[1] != disp.dim() - 2:
        raise ValueError(f"disp must be a displacement (1, ndim, *spatial), 2-D or 3-D, got shape {tuple(disp.shape)}")
    nd = disp.shape[1]
    A = as_affine("affine", affine, nd)
    spatial = tuple(disp.shape[2:])
    to_lps = torch.as_tensor(_flip(nd) @ A[:nd, :nd], dtype=torch.float32)  # voxels -> LPS mm
    vectors = to_lps @ disp.detach().cpu().float().reshape(nd, -1)  # (nd, N), one matrix product
    # NIfTI is column-major: the file holds the transposed array, (nd, 1, [1,] ..., X), in C order
    file_order = vectors.view(nd, *spatial).permute(0, *range(nd, 0, -1)).contiguous()
    data = file_order.numpy().reshape(nd, 1, *([1] * (3 - nd)), *spatial[::-1]).T  # (X, Y, Z, 1, nd), no copy
    return save_nifti(path, data, _nifti_affine(A), header, np.float32)


class FieldTransform:
    """A displacement-field transform: the world point ``x`` maps to ``x + d(x)``, ``d`` given on a
    grid (``affine``: voxel -> RAS mm) as RAS vectors ``displacement`` ``(nd, *S)``, and
    interpolated as ITK does (Note [ITK displacement fields])."""

    def __init__(self, displacement, affine, source: str = "field"):
        d = torch.as_tensor(displacement, dtype=torch.float32)
        if d.dim() not in (3, 4) or d.shape[0] != d.dim() - 1:
            raise ValueError(f"{source}: a displacement field must be (ndim, *spatial), 2-D or 3-D, got {tuple(d.shape)}")
        self.nd = d.shape[0]
        self._displacement = d.contiguous()
        self.file_order = None
        self.affine = as_affine(f"{source}: the grid's affine", affine, self.nd)
        self.source = source

    @classmethod
    def from_file_order(cls, lps: torch.Tensor, affine, source: str = "field") -> "FieldTransform":
        """A field from its ITK file's voxels as they lie there (Note [A field in file order]):
        ``lps`` ``(nd, *reversed(S))`` float32, C-contiguous, LPS mm, the vector's components in
        x, y, z order."""
        if lps.dim() not in (3, 4) or lps.shape[0] != lps.dim() - 1 or lps.dtype != torch.float32:
            raise ValueError(f"{source}: a field in file order must be float32 (ndim, *reversed(spatial)), 2-D or 3-D, "
                             f"got {lps.dtype} {tuple(lps.shape)}")
        self = cls.__new__(cls)
        self.nd = lps.shape[0]
        self.file_order = lps.contiguous()
        self._displacement = None
        self.affine = as_affine(f"{source}: the grid's affine", affine, self.nd)
        self.source = source
        return self

    @property
    def displacement(self) -> torch.Tensor:
        """The RAS vectors ``(nd, *S)`` float32, contiguous (made from the file's order once, when
        first asked for)."""
        if self._displacement is None:
            nd, lps = self.nd, self.file_order
            ras = torch.empty(nd, *lps.shape[:0:-1], dtype=torch.float32, device=lps.device)
            sign = torch.tensor(np.diag(_flip(nd)), dtype=torch.float32, device=lps.device)  # LPS -> RAS
            sign = sign.view(nd, *([1] * nd))
            torch.mul(lps.permute(0, *range(nd, 0, -1)), sign, out=ras)  # to (nd, X, Y, Z) in one pass
            self._displacement = ras
        return self._displacement

    @property
    def shape(self) -> tuple[int, ...]:
        if self._displacement is None:
            return tuple(self.file_order.shape[:0:-1])
        return tuple(self._displacement.shape[1:])

    def on_grid(self, shape, affine) -> bool:
        """Whether the field's grid is the grid ``shape`` / ``affine``."""
        return tuple(shape) == self.shape and np.allclose(as_affine("affine", affine, self.nd), self.affine,
                                                          rtol=0, atol=1e-5)

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        """The world points ``(nd, *P)`` (RAS mm, float64) mapped: ``x + d(x)``."""
        from .affine import resample

        nd = self.nd
        inv = torch.as_tensor(np.linalg.inv(self.affine), dtype=torch.float64, device=points.device)
        index = torch.einsum("ij,j...->i...", inv[:nd, :nd], points) + inv[:nd, nd].view(nd, *([1] * (points.dim() - 1)))
        size = torch.tensor(self.shape, dtype=torch.float64, device=points.device).view(nd, *([1] * (points.dim() - 1)))
        inside = ((index >= -0.5) & (index <= size - 0.5)).all(dim=0)
        field = self.displacement.to(points.device)[None]
        flat = index.reshape(nd, -1, *([1] * (nd - 1)))[None].float()  # any points as a (N, 1, ...) grid
        d = resample(field, flat, "linear", "border")[0].double().reshape(points.shape)
        return points + d * inside


class AffineTransform:
    """An affine transform: the world point ``x`` (RAS mm) maps to ``matrix @ x``."""

    def __init__(self, matrix, source: str = "affine"):
        m = np.asarray(matrix, dtype=np.float64)
        self.nd = m.shape[0] - 1
        self.matrix = as_affine(source, m, self.nd)
        self.source = source

    def inverse(self) -> "AffineTransform":
        return AffineTransform(np.linalg.inv(self.matrix), f"[{self.source},1]")

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        nd = self.nd
        m = torch.as_tensor(self.matrix, dtype=torch.float64, device=points.device)
        return torch.einsum("ij,j...->i...", m[:nd, :nd], points) + m[:nd, nd].view(nd, *([1] * (points.dim() - 1)))


def load_displacement_field(path: str | os.PathLike) -> FieldTransform:
    """Read an ITK displacement field (Note [ITK displacement fields]: fastwarp's
    ``*_warp.nii.gz``, ANTs' ``*Warp.nii.gz``) as a :class:`FieldTransform`."""
    from .data.nifti import _read_any

    path = os.fspath(path)
    data, img = _read_any(path, "transform")
    shape = data.shape
    if len(shape) == 5 and shape[3] == 1 and shape[4] == 3:
        nd = 3
    elif len(shape) == 5 and shape[2] == 1 and shape[3] == 1 and shape[4] == 2:
        nd = 2
    else:
        raise ValueError(f"{path}: a displacement field must be an ITK vector image, (X, Y, Z, 1, 3) or (X, Y, 1, 1, 2), "
                         f"got shape {shape}")
    # NIfTI stores the voxels column-major: the transposed array, (nd, ..., X), is C-contiguous
    vectors = np.asarray(data, dtype=np.float32).reshape(*shape[:nd], nd).T
    if isinstance(data, np.memmap) or not vectors.flags.writeable:  # a plain .nii's memory map: off the file
        vectors = vectors.copy()
    vectors = torch.from_numpy(np.ascontiguousarray(vectors))
    if not bool(torch.isfinite(vectors.sum())):  # a NaN or Inf anywhere makes the sum one (so would ~1e30 mm)
        raise ValueError(f"{path}: the displacement field holds NaN or Inf (or values beyond any grid)")
    return FieldTransform.from_file_order(vectors, np.asarray(img.affine, dtype=np.float64), path)


# Note [A field in file order]
# ~~~~~~~~~~~~~~~~~~~~~~~~~~~~
# An ITK field's file holds, column-major, (X, Y, Z, 1, 3): in memory that is (3, Z, Y, X), one
# LPS component after the other, x fastest. `load_displacement_field` keeps it so
# (FieldTransform.file_order) and makes the RAS (3, X, Y, Z) array only when something asks for
# `displacement`: that transpose is a pass through 65 MB at 1 mm that `fastwarp apply` does not
# need, because it samples in the file's axis order (Note [Sampling in the file's order] in
# fastwarp/app/apply.py).


_SPEC = re.compile(r"^\[\s*(.+?)\s*,\s*([01])\s*\]$")


def load_transform(spec) -> AffineTransform | FieldTransform:
    """One transform as ``antsApplyTransforms -t`` takes it: a path (an ITK affine ``.txt`` or
    ``.mat``, a plain matrix file, or a displacement-field NIfTI), or ``"[path,1]"`` (also the
    tuple ``(path, True)``) for the inverse of an affine."""
    if isinstance(spec, (tuple, list)):
        path, invert = spec
    else:
        spec = os.fspath(spec)
        match = _SPEC.match(spec.strip())
        path, invert = (match.group(1), match.group(2) == "1") if match else (spec, False)
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such transform file: {path}")
    if path.endswith((".nii", ".nii.gz")):
        if invert:
            raise ValueError(f"[{path},1]: a displacement field cannot be inverted on the fly (as in ANTs); "
                             "give its inverse field (fastwarp register --inverse writes one)")
        return load_displacement_field(path)
    t = AffineTransform(load_matrix(path), path)
    return t.inverse() if invert else t


def grid_points(shape, affine, device=None) -> torch.Tensor:
    """The world points (RAS mm) of a grid's voxels, ``(nd, *shape)`` float64."""
    nd = len(shape)
    A = torch.as_tensor(as_affine("affine", affine, nd), dtype=torch.float64, device=device)
    axes = torch.meshgrid(*[torch.arange(s, dtype=torch.float64, device=device) for s in shape], indexing="ij")
    index = torch.stack(axes)
    return torch.einsum("ij,j...->i...", A[:nd, :nd], index) + A[:nd, nd].view(nd, *([1] * nd))


def transform_points(transforms, points: torch.Tensor, grid=None) -> torch.Tensor:
    """The world points ``(nd, *P)`` mapped through a chain listed as ``antsApplyTransforms``
    lists it: the first transform is applied to the points first (the fixed -> moving map of a
    registration is ``[field, affine]``, y = affine(field(x)); Note [ITK displacement fields]).

    ``grid``: ``(shape, affine)`` of the points when they are a grid's voxels, so that a field
    on that very grid, applied first, is read without interpolation."""
    for i, t in enumerate(transforms):
        if t.nd != points.shape[0]:
            raise ValueError(f"{t.source} is a {t.nd}-D transform, but the points are {points.shape[0]}-D")
        if i == 0 and grid is not None and isinstance(t, FieldTransform) and t.on_grid(*grid):
            points = points + t.displacement.to(points.device).double()
        else:
            points = t(points)
    return points
