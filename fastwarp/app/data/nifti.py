"""NIfTI files in and out, through nibabel (imported when a file is read or written):
:func:`load_volume` reads an image (and its label map) as a :class:`Volume`, intensities scaled
to [0, 1]; :func:`save_nifti` writes an array with a given affine and header, atomically. Errors
name the file."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from ..files import replacing

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


def _read_any(path: str | os.PathLike, what: str, voxels: bool = True):
    """The voxels of a NIfTI file of any shape (scaled as stored) and the image; one-line errors
    naming the file for a missing, unreadable or non-NIfTI file. A ``.nii.gz`` is inflated in
    memory, its members in parallel when fastwarp wrote it (Note [Gzip members]); a field
    fastwarp stored is copied out of the file instead (Note [Reading a stored field]).
    ``voxels=False``: the header alone (None for the voxels), nothing inflated beyond it."""
    import nibabel as nib

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what}: no such file: {path}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{what}: expected a NIfTI file, got a directory: {path}")
    try:
        img = _load_nii_gz(path) if path.endswith(".nii.gz") and voxels else None
        img = img if img is not None else nib.load(path)
    except Exception as e:  # nibabel raises ImageFileError, OSError, EOFError, ... for junk
        raise ValueError(f"{what}: {path} is not a readable NIfTI file ({type(e).__name__}: {e})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise ValueError(f"{what}: {path} is a {type(img).__name__}, not a NIfTI file")
    if not voxels:
        return None, img
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as e:
        raise ValueError(f"{what}: could not read the voxels of {path} ({type(e).__name__}: {e})") from None
    return data, img


# Note [Gzip members]
# ~~~~~~~~~~~~~~~~~~~
# A gzip file may hold several members one after another; every reader (zlib's gzread, which
# ITK and so ANTs use; Python's gzip, which nibabel uses) inflates them as one stream. fastwarp
# writes its .nii.gz files as members of 8 MB of NIfTI each, compressed in parallel, each with
# its own size in an extra field of its header ("FW", as bgzip records its blocks'), so that
# fastwarp reads them back in parallel too; another tool's file is inflated as one stream.
# Displacement fields (float vectors) are stored, not compressed: deflate takes them to about
# 0.9 of their size at ~30 MB/s (a 1 mm field: 2.2 s to write, 0.4 s to inflate, for ANTs as for
# fastwarp), stored 0.2 s and 0.1 s. Images and label maps compress well and are deflated at
# level 1, nibabel's default.

_MEMBER_BYTES = 8 << 20
_GZIP_MAGIC = b"\x1f\x8b\x08\x04"  # gzip, deflate, FEXTRA


def _pool_map(fn, items):
    if len(items) < 2:
        return [fn(x) for x in items]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max(1, min(len(items), torch.get_num_threads()))) as pool:  # zlib drops the GIL
        return list(pool.map(fn, items))


def _gzip_member(chunk, level: int) -> bytes:
    import struct
    import zlib

    c = zlib.compressobj(level, zlib.DEFLATED, -15)
    body = c.compress(chunk) + c.flush()
    total = 20 + len(body) + 8
    header = _GZIP_MAGIC + b"\0\0\0\0\0\xff" + struct.pack("<H2sHI", 8, b"FW", 4, total)
    return header + body + struct.pack("<II", zlib.crc32(chunk) & 0xFFFFFFFF, len(chunk) & 0xFFFFFFFF)


def gzip_members(raw: bytes, level: int = 1) -> bytes:
    """``raw`` as a gzip file of members of 8 MB each, compressed in parallel at ``level`` (0:
    stored), each recording its size (Note [Gzip members])."""
    view = memoryview(raw)
    chunks = [view[i:i + _MEMBER_BYTES] for i in range(0, len(raw), _MEMBER_BYTES)] or [view]
    return b"".join(_pool_map(lambda c: _gzip_member(c, level), chunks))


def _member_spans(buf, size: int) -> list[tuple[int, int]] | None:
    """Where the bodies of a file of fastwarp's gzip members lie in ``buf`` (its first ``size``
    bytes): ``(start, end)`` each, the CRC and ISIZE at ``end``; None when it is not such a
    file (another tool's gzip, a cut file), which is then read as one stream (Note [Gzip
    members])."""
    import struct

    spans, pos = [], 0
    while pos < size:
        if pos + 20 > size or buf[pos:pos + 4] != _GZIP_MAGIC or buf[pos + 10:pos + 16] != b"\x08\x00FW\x04\x00":
            return None
        total = struct.unpack_from("<I", buf, pos + 16)[0]
        if total < 28 or pos + total > size:
            return None
        spans.append((pos + 20, pos + total - 8))
        pos += total
    return spans


def gunzip(raw: bytes) -> bytes:
    """Inflate a gzip file: fastwarp's members in parallel (Note [Gzip members]), anything else
    as one stream."""
    import gzip
    import struct
    import zlib

    spans = _member_spans(raw, len(raw))
    if spans is None:
        return gzip.decompress(raw)
    view = memoryview(raw)

    def inflate(span):
        start, end = span
        data = zlib.decompress(view[start:end], -15)
        crc, size = struct.unpack_from("<II", raw, end)
        if zlib.crc32(data) & 0xFFFFFFFF != crc or len(data) & 0xFFFFFFFF != size:
            raise ValueError("gzip member fails its CRC check (a corrupt file)")
        return data

    return b"".join(_pool_map(inflate, spans))


def _stored_members(path: str) -> np.ndarray | None:
    """The bytes a fastwarp ``.nii.gz`` of stored members holds (a displacement field's, Note
    [Gzip members]) copied once, from a memory map of the file into a fresh array, members in
    parallel, each checked against its CRC; None for any other file (deflated members, another
    tool's gzip), which is inflated instead (Note [Reading a stored field])."""
    import mmap
    import struct
    import zlib

    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size < 28:
            return None
        try:
            mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError):  # a file system that does not map files: read it the other way
            return None
    src = np.frombuffer(mm, np.uint8)
    try:
        spans = _member_spans(mm, size)
        if spans is None:
            return None
        members, at = [], 0  # (blocks [(offset in the file, length)], offset out, CRC, ISIZE)
        for q, end in spans:
            blocks, final = [], False
            while not final:  # each stored block: a byte (BFINAL, BTYPE 00), LEN, NLEN, LEN bytes
                if q + 5 > end or mm[q] & 6:
                    return None  # a compressed block: inflate the file
                final = bool(mm[q] & 1)
                n, n_not = struct.unpack_from("<HH", mm, q + 1)
                if n ^ n_not != 0xFFFF or q + 5 + n > end:
                    return None
                blocks.append((q + 5, n))
                q += 5 + n
            if q != end:
                return None
            crc, isize = struct.unpack_from("<II", mm, end)
            members.append((blocks, at, crc, isize))
            at += sum(n for _, n in blocks)
        out = np.empty(at, np.uint8)

        def copy(member):
            blocks, start, crc, isize = member
            o, c = start, 0
            for s, n in blocks:
                out[o:o + n] = src[s:s + n]
                c = zlib.crc32(out[o:o + n], c)  # the block just copied, still in the cache
                o += n
            if c != crc or (o - start) & 0xFFFFFFFF != isize:
                raise ValueError("gzip member fails its CRC check (a corrupt file)")

        _pool_map(copy, members)
        return out
    finally:
        del src
        mm.close()


# Note [Reading a stored field]
# ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
# A displacement field is most of what `fastwarp apply` reads (a 1 mm field: 65 MB). Inflated
# as one stream and handed to nibabel, its bytes were copied four times (inflate, join, nibabel's
# BytesIO, the array read from it): 0.3 s on 2 cores, more than the sampling. fastwarp's own
# fields are stored members (Note [Gzip members]): their bytes sit in the file between block
# headers, so they are copied once from a memory map into the array nibabel's header describes,
# each block checksummed right after its copy (while in the cache), members in parallel. The
# array is the file's own order, so the voxels come out Fortran-ordered as nibabel's do, and
# `load_displacement_field` keeps them so (Note [A field in file order]). The map is read only
# while it is copied; a file truncated in place by another program during those milliseconds
# would fault (SIGBUS), as with any mapped read; fastwarp itself replaces files by renaming.


def _image_from_buffer(data: np.ndarray, kind):
    """A nibabel image over ``data`` (the file's bytes, uint8) without copying its voxels; None
    when its header needs what only nibabel's reader does (scaled voxels, a truncated file)."""
    import io

    head = kind.header_class.from_fileobj(io.BytesIO(data[:kind.header_class.sizeof_hdr].tobytes()))
    offset = int(head.get_data_offset())
    if offset > kind.header_class.sizeof_hdr:  # extensions: read the header again with them
        head = kind.header_class.from_fileobj(io.BytesIO(data[:offset].tobytes()))
    slope, inter = head.get_slope_inter()
    shape, dtype = head.get_data_shape(), head.get_data_dtype()
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if (slope not in (None, 1.0)) or (inter not in (None, 0.0)) or offset + nbytes > data.size or dtype.hasobject:
        return None
    voxels = data[offset:offset + nbytes].view(dtype).reshape(shape[::-1]).T  # file order: Fortran
    return kind(voxels, head.get_best_affine(), head)


def _load_nii_gz(path: str):
    """A ``.nii.gz`` as a nibabel image with its voxels in memory: a fastwarp field's stored
    members copied once (Note [Reading a stored field]), anything else inflated
    (:func:`gunzip`); None when the bytes are not a NIfTI header (nibabel then reads the file and
    says what it is)."""
    import struct

    import nibabel as nib

    stored = _stored_members(path)
    if stored is not None:
        data = stored
        first = data[:4].tobytes()
    else:
        with open(path, "rb") as fh:
            data = gunzip(fh.read())
        first = data[:4]
    if len(first) < 4:
        return None
    size = {struct.unpack("<i", first)[0], struct.unpack(">i", first)[0]}
    kind = nib.Nifti1Image if 348 in size else nib.Nifti2Image if 540 in size else None
    if kind is None:
        return None
    if stored is not None:
        img = _image_from_buffer(stored, kind)
        return img if img is not None else kind.from_bytes(stored.tobytes())
    return kind.from_bytes(data)


def _read(path: str | os.PathLike, what: str, voxels: bool = True):
    """The voxels of one 2-D or 3-D NIfTI file (a trailing axis of 1 dropped) and the image;
    ``voxels=False``: a stand-in of the volume's shape that holds no memory (the grid alone,
    from the header; the voxels are neither read nor checked)."""
    data, img = _read_any(path, what, voxels)
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    elif len(shape) == 3 and shape[2] == 1:
        shape = shape[:2]
    if len(shape) not in (2, 3):
        raise ValueError(f"{what}: {os.fspath(path)} has shape {img.shape}; expected a single 2-D or 3-D volume "
                         f"(split 4-D series into one file per volume)")
    return (data.reshape(shape) if voxels else np.broadcast_to(np.uint8(0), shape)), img


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
        array = array.astype(dtype, copy=False)
    path = os.fspath(path)
    if not path.endswith(NIFTI_SUFFIXES):
        raise ValueError(f"output file {path} must end in .nii or .nii.gz")
    hdr = header.copy() if header is not None else None
    img = nib.Nifti1Image(array, affine, hdr)
    img.set_data_dtype(array.dtype)
    if array.ndim in (4, 5):  # a vector field (fastwarp's, or ITK's 5-D): NIfTI intent "vector"
        img.header.set_intent("vector")
    with replacing(path) as tmp:
        if path.endswith(".nii.gz"):  # in parallel members; a field stored (Note [Gzip members])
            with open(tmp, "wb") as fh:
                fh.write(gzip_members(img.to_bytes(), 0 if array.ndim in (4, 5) else 1))
        else:
            nib.save(img, tmp)
    return path
