"""NIfTI files in and out, through nibabel (imported when a file is read or written):
:func:`load_volume` reads an image (and its label map) as a :class:`Volume`, intensities scaled
to [0, 1]; :func:`save_nifti` writes an array with a given affine and header, atomically. Errors
name the file."""

from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Volume", "load_volume", "save_nifti", "normalize_intensity", "NIFTI_SUFFIXES", "nifti_stem"]

NIFTI_SUFFIXES = (".nii", ".nii.gz")
# Label dtypes kept as stored (those the nearest-neighbour warp copies exactly).
_LABEL_DTYPES = tuple(np.dtype(t) for t in (np.uint8, np.int8, np.int16, np.int32, np.int64))


def nifti_stem(path: str) -> str:
    """``path`` without its NIfTI suffix (``sub1_seg.nii.gz`` -> ``sub1_seg``); unchanged without one."""
    for suffix in (".nii.gz", ".nii"):
        if path.endswith(suffix):
            return path[: -len(suffix)]
    return path


@dataclass
class Volume:
    """A loaded subject: ``image`` float32 (in [0, 1] when normalized), ``labels`` integer or None,
    both with the same spatial shape; ``affine`` and ``header`` of the image file (for writing
    results on its grid)."""

    image: np.ndarray
    affine: np.ndarray
    labels: np.ndarray | None = None
    header: object | None = None
    name: str = ""

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.image.shape)


def _read_any(path: str | os.PathLike, what: str):
    """The voxels of a NIfTI file of any shape (scaled as stored) and the image; one-line errors
    naming the file for a missing, unreadable or non-NIfTI file."""
    import nibabel as nib

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what}: no such file: {path}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{what}: expected a NIfTI file, got a directory: {path}")
    try:
        img = nib.load(path)
    except Exception as e:  # nibabel raises ImageFileError, OSError, EOFError, ... for junk
        raise ValueError(f"{what}: {path} is not a readable NIfTI file ({type(e).__name__}: {e})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise ValueError(f"{what}: {path} is a {type(img).__name__}, not a NIfTI file")
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as e:
        raise ValueError(f"{what}: could not read the voxels of {path} ({type(e).__name__}: {e})") from None
    return data, img


def _read(path: str | os.PathLike, what: str):
    """The voxels of one 2-D or 3-D NIfTI file (a trailing axis of 1 dropped) and the image."""
    data, img = _read_any(path, what)
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    elif len(shape) == 3 and shape[2] == 1:
        shape = shape[:2]
    if len(shape) not in (2, 3):
        raise ValueError(f"{what}: {os.fspath(path)} has shape {img.shape}; expected a single 2-D or 3-D volume "
                         f"(split 4-D series into one file per volume)")
    return data.reshape(shape), img


def normalize_intensity(x: np.ndarray, percentile: float = 99.5) -> np.ndarray:
    """Scale intensities to [0, 1]: the minimum to 0 and the given percentile of the
    non-minimum voxels to 1, clipped (robust to a few bright outliers)."""
    x = np.nan_to_num(np.asarray(x, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    lo = float(x.min()) if x.size else 0.0
    fg = x[x > lo]
    hi = float(np.percentile(fg, percentile)) if fg.size else lo
    if hi <= lo:
        return np.zeros_like(x)
    return np.clip((x - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def load_volume(image: str | os.PathLike, labels: str | os.PathLike | None = None, normalize: bool = True) -> Volume:
    """Load a NIfTI image (and its label map) as a :class:`Volume`, intensities scaled to [0, 1]
    (:func:`normalize_intensity`) unless ``normalize=False`` (then as stored, in float32).
    Non-finite voxels (the NaN background some tools write) are read as 0, the background,
    with one warning naming the file and their number. Label maps keep their integer dtype
    (uint8, int8, int16, int32 or int64; other integers and integral floats become int64).

    Raises FileNotFoundError / ValueError naming the file for a missing file, a file that
    is not NIfTI, a 4-D series, labels that are not integers, or labels whose shape differs
    from the image's."""
    data, img = _read(image, "image")
    data = np.asarray(data, dtype=np.float32)
    bad = ~np.isfinite(data)
    if bad.any():
        warnings.warn(f"{os.fspath(image)}: {int(bad.sum())} non-finite voxels (NaN or Inf, "
                      f"{100.0 * bad.mean():.1f} %) read as 0, the background", stacklevel=2)
        data = np.where(bad, np.float32(0), data)
    lab = None
    if labels is not None:
        lab, _ = _read(labels, "labels")
        if lab.shape != data.shape:
            raise ValueError(f"labels: {labels} has shape {lab.shape}, but the image {image} has {data.shape}")
        if not np.issubdtype(lab.dtype, np.integer):
            lab = np.asarray(lab)
            if not np.all(np.isfinite(lab)) or not np.array_equal(lab, np.round(lab)):
                raise ValueError(f"labels: {labels} must hold integer labels, got non-integer values of dtype {lab.dtype}")
        lab = np.asarray(lab)
        if lab.dtype not in _LABEL_DTYPES:
            lab = lab.astype(np.int64)
    arr = normalize_intensity(data) if normalize else data
    name = nifti_stem(os.path.basename(os.fspath(image)))
    return Volume(arr, np.asarray(img.affine, dtype=np.float64), lab, img.header, name)


def save_nifti(path: str | os.PathLike, array, affine: np.ndarray, header=None, dtype=None) -> str:
    """Write ``array`` (a numpy array or tensor, spatial axes only, or with a trailing vector
    axis for a displacement field) as NIfTI with the given affine and header.

    The file is written to a temporary name and renamed, so a failure never leaves a
    partial file behind."""
    import nibabel as nib

    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
    if dtype is not None:
        array = array.astype(dtype)
    path = os.fspath(path)
    if not path.endswith(NIFTI_SUFFIXES):
        raise ValueError(f"output file {path} must end in .nii or .nii.gz")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    hdr = header.copy() if header is not None else None
    img = nib.Nifti1Image(array, affine, hdr)
    img.set_data_dtype(array.dtype)
    if array.ndim in (4, 5):  # a vector field (fastwarp's, or ITK's 5-D): NIfTI intent "vector"
        img.header.set_intent("vector")
    suffix = ".nii.gz" if path.endswith(".gz") else ".nii"
    fd, tmp = tempfile.mkstemp(suffix=suffix, dir=folder, prefix=".fastwarp-")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a plain new file follows the umask
    try:
        nib.save(img, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
