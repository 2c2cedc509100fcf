"""Data for registration: NIfTI volumes through nibabel, pairs for training, and the
embedded brains that the demo runs on.

- :func:`load_volume` / :func:`save_nifti` read and write NIfTI files, keeping the affine and
  header; errors name the file.
- :func:`find_volumes` lists a folder of NIfTI files or a list file (``image [labels]`` per
  line) as :class:`VolumeSpec` entries; :func:`embedded` gives the brains shipped with the
  package (``fastwarp/data/embedded/``, made by ``scripts/make_data.py``).
- :class:`PairDataset` yields (moving, fixed[, labels]) training pairs: subject-to-subject,
  atlas-to-subject, or a subject against itself, each side under a random smooth
  diffeomorphic deformation and intensity change, reproducible from (seed, epoch, index).
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..fields import smooth_noise

__all__ = [
    "Volume", "VolumeSpec", "load_volume", "save_nifti", "find_volumes", "embedded", "EMBEDDED_DIR",
    "normalize_intensity", "pad_to_multiple", "downsample", "random_deformation", "PairDataset",
]

# Shipped in the fastwarp.data package (its package data), beside the public path.
EMBEDDED_DIR = pathlib.Path(__file__).resolve().parents[2] / "data" / "embedded"
_NIFTI_SUFFIXES = (".nii", ".nii.gz")
_LABEL_MARKERS = ("_seg", "_labels", "_label", "_aseg")


def _nib():
    try:
        import nibabel
    except ImportError as e:  # pragma: no cover - nibabel is a dependency of the package
        raise ImportError("reading NIfTI files needs nibabel: pip install nibabel") from e
    return nibabel


@dataclass
class VolumeSpec:
    """Paths of one subject: an image and, optionally, its label map."""

    image: str
    labels: str | None = None

    @property
    def name(self) -> str:
        base = os.path.basename(self.image)
        for suffix in _NIFTI_SUFFIXES[::-1]:
            if base.endswith(suffix):
                return base[: -len(suffix)]
        return base


@dataclass
class Volume:
    """A loaded subject: ``image`` float32 in [0, 1], ``labels`` integer or None, both with the
    same spatial shape; ``affine`` and ``header`` of the image file (for writing results)."""

    image: np.ndarray
    affine: np.ndarray
    labels: np.ndarray | None = None
    header: object | None = None
    name: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.image.shape)


def _load_array(path: str | os.PathLike, what: str):
    nib = _nib()
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
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    elif len(shape) == 3 and shape[2] == 1:
        shape = shape[:2]
    if len(shape) not in (2, 3):
        raise ValueError(f"{what}: {path} has shape {img.shape}; expected a single 2-D or 3-D volume "
                         f"(split 4-D series into one file per volume)")
    try:
        data = np.asanyarray(img.dataobj).reshape(shape)
    except Exception as e:
        raise ValueError(f"{what}: could not read the voxels of {path} ({type(e).__name__}: {e})") from None
    return data, img


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
    """Load a NIfTI image (and its label map) as a :class:`Volume`.

    Raises FileNotFoundError / ValueError naming the file for a missing file, a file that
    is not NIfTI, a 4-D series, labels that are not integers, or labels whose shape differs
    from the image's."""
    data, img = _load_array(image, "image")
    lab = None
    if labels is not None:
        lab, limg = _load_array(labels, "labels")
        if lab.shape != data.shape:
            raise ValueError(f"labels: {labels} has shape {lab.shape}, but the image {image} has {data.shape}")
        if not np.issubdtype(lab.dtype, np.integer):
            lab = np.asarray(lab)
            if not np.all(np.isfinite(lab)) or not np.array_equal(lab, np.round(lab)):
                raise ValueError(f"labels: {labels} must hold integer labels, got non-integer values of dtype {lab.dtype}")
        lab = np.asarray(lab).astype(np.int64)
    arr = normalize_intensity(data) if normalize else np.asarray(data, dtype=np.float32)
    spec = VolumeSpec(os.fspath(image), None if labels is None else os.fspath(labels))
    return Volume(arr, np.asarray(img.affine, dtype=np.float64), lab, img.header, spec.name)


def save_nifti(path: str | os.PathLike, array, affine: np.ndarray, header=None, dtype=None) -> str:
    """Write ``array`` (a numpy array or tensor, spatial axes only, or with a trailing vector
    axis for a displacement field) as NIfTI with the given affine and header.

    The file is written to a temporary name and renamed, so a failure never leaves a
    partial file behind."""
    nib = _nib()
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
    if dtype is not None:
        array = array.astype(dtype)
    path = os.fspath(path)
    if not path.endswith(_NIFTI_SUFFIXES):
        raise ValueError(f"output file {path} must end in .nii or .nii.gz")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    hdr = header.copy() if header is not None else None
    img = nib.Nifti1Image(array, affine, hdr)
    img.set_data_dtype(array.dtype)
    if array.ndim == 4:  # a vector field: NIfTI intent "vector"
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


def _strip_suffix(name: str) -> str:
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def find_volumes(source: str | os.PathLike) -> list[VolumeSpec]:
    """The subjects in a folder of NIfTI files, or in a list file.

    A folder: every ``*.nii`` / ``*.nii.gz``; a file named like an image plus ``_seg``,
    ``_labels``, ``_label`` or ``_aseg`` (``sub1_seg.nii.gz`` for ``sub1.nii.gz``) is that
    image's label map. A list file: one subject per line, ``image [labels]``, paths relative
    to the list file; blank lines and ``#`` comments are skipped."""
    source = pathlib.Path(source)
    if not source.exists():
        raise FileNotFoundError(f"data: no such file or folder: {source}")
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.name.endswith(_NIFTI_SUFFIXES) and not p.name.startswith("."))
        stems = {_strip_suffix(p.name): p for p in files}
        specs = []
        for stem, p in stems.items():
            if any(stem.endswith(m) for m in _LABEL_MARKERS):
                continue
            lab = next((stems[stem + m] for m in _LABEL_MARKERS if stem + m in stems), None)
            specs.append(VolumeSpec(str(p), None if lab is None else str(lab)))
        if not specs:
            raise ValueError(f"data: no NIfTI images (*.nii, *.nii.gz) in the folder {source}")
        return specs
    specs = []
    for lineno, line in enumerate(source.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) > 2:
            raise ValueError(f"data: {source}:{lineno}: expected 'image [labels]', got {line!r}")
        paths = [str(p if pathlib.Path(p).is_absolute() else source.parent / p) for p in parts]
        specs.append(VolumeSpec(paths[0], paths[1] if len(paths) > 1 else None))
    if not specs:
        raise ValueError(f"data: the list file {source} names no images")
    return specs


def embedded() -> list[VolumeSpec]:
    """The real brains shipped with fastwarp (see ``fastwarp/data/embedded/README.md``):
    the MNI152 2009 template and the Colin27 brain, on one 2 mm MNI grid, each with a
    tissue label map (1 CSF, 2 grey matter, 3 white matter). The first is the atlas."""
    specs = []
    for name in ("mni152", "colin27"):
        image, labels = EMBEDDED_DIR / f"{name}_t1.nii.gz", EMBEDDED_DIR / f"{name}_labels.nii.gz"
        if not image.exists():
            raise FileNotFoundError(f"the embedded data file {image} is missing: reinstall fastwarp")
        specs.append(VolumeSpec(str(image), str(labels) if labels.exists() else None))
    return specs


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
    """``vol`` at ``1/factor`` resolution: images by block averaging, labels by taking every
    ``factor``-th voxel, the affine scaled to match."""
    if factor == 1:
        return vol
    ndim = vol.image.ndim
    img = torch.from_numpy(np.ascontiguousarray(vol.image))[None, None]
    pool = F.avg_pool2d if ndim == 2 else F.avg_pool3d
    image = pool(img, factor, ceil_mode=True, count_include_pad=False)[0, 0].numpy()
    sl = tuple(slice(factor // 2, None, factor) for _ in range(ndim))
    labels = None if vol.labels is None else np.ascontiguousarray(vol.labels[sl])
    if labels is not None and labels.shape != image.shape:
        labels = np.pad(labels, [(0, a - b) for a, b in zip(image.shape, labels.shape)])
    affine = vol.affine.copy()
    affine[:3, :ndim] = vol.affine[:3, :ndim] * factor
    # voxel (0, 0, 0) of the new grid is the centre of the first block
    shift = np.zeros(3)
    shift[:ndim] = (factor - 1) / 2.0
    affine[:3, 3] = vol.affine[:3, 3] + vol.affine[:3, :3] @ shift
    return Volume(image, affine, labels, None, vol.name, dict(vol.meta))


def _smooth_noise(shape: Sequence[int], spacing: float, channels: int, g: torch.Generator) -> torch.Tensor:
    """A smooth random field (1, channels, *shape) of unit scale, one node every ``spacing`` voxels."""
    return smooth_noise((1, channels, *shape), [max(2, int(round(s / spacing)) + 1) for s in shape], g)


def random_deformation(shape: Sequence[int], g: torch.Generator, max_disp: float = 4.0, spacing: float = 6.0,
                       nsteps: int = 5) -> torch.Tensor:
    """A random smooth diffeomorphic displacement (1, ndim, *shape) in voxels: a smooth random
    velocity (nodes ``spacing`` voxels apart, s.d. ``max_disp / 2``) integrated by scaling and
    squaring on fastwarp's warp, at half resolution for fields of 32 voxels or more a side
    (the field is smooth at that scale, and the data workers then keep up with a GPU)."""
    from ...nn import VecInt

    shape = tuple(int(s) for s in shape)
    half = min(shape) >= 32
    work = tuple((s + 1) // 2 for s in shape) if half else shape
    vel = _smooth_noise(work, spacing / (2 if half else 1), len(shape), g) * (max_disp / (4.0 if half else 2.0))
    with torch.no_grad():
        disp = VecInt(None, nsteps)(vel)
        if half:
            mode = "bilinear" if len(shape) == 2 else "trilinear"
            disp = 2.0 * F.interpolate(disp, size=shape, mode=mode, align_corners=False)
    return disp


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (1, 1, *spatial) with s.d. ``sigma`` voxels."""
    if sigma <= 0.05:
        return x
    r = max(1, int(3 * sigma + 0.5))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=x.dtype) / sigma) ** 2)
    k = k / k.sum()
    ndim = x.dim() - 2
    conv = F.conv2d if ndim == 2 else F.conv3d
    for axis in range(ndim):
        shape = [1, 1] + [1] * ndim
        shape[2 + axis] = 2 * r + 1
        pad = [0] * ndim
        pad[axis] = r
        x = conv(x, k.reshape(shape), padding=tuple(pad))
    return x


def _augment_intensity(x: torch.Tensor, g: torch.Generator, strength: float = 1.0) -> torch.Tensor:
    """Blur (s.d. up to one voxel, half the time), gamma, a smooth multiplicative bias field,
    contrast/brightness and a little noise, on an image in [0, 1]; clipped to [0, 1]. The
    blur teaches a model trained on one brain that a sharp scan and a blurry template (the
    MNI152 average) can show the same anatomy."""
    rnd = lambda: float(torch.randn((), generator=g))  # noqa: E731
    if float(torch.rand((), generator=g)) < 0.5:
        x = _blur(x, float(torch.rand((), generator=g)) * strength)
    x = x.clamp_min(0) ** float(np.exp(0.25 * strength * rnd()))
    bias = torch.exp(0.1 * strength * _smooth_noise(x.shape[2:], 24.0, 1, g))
    x = x * bias * (1.0 + 0.1 * strength * rnd()) + 0.02 * strength * rnd()
    x = x + 0.01 * strength * torch.randn(x.shape, generator=g)
    return x.clamp(0.0, 1.0)


class PairDataset(torch.utils.data.Dataset):
    """Training pairs built from a list of :class:`Volume` on one grid.

    Args:
        volumes: the training subjects (same spatial shape, a multiple of the model's).
        pairing: ``"subject"`` (moving and fixed two different subjects), ``"atlas"`` (fixed
            is ``atlas``, moving a subject), or ``"self"`` (a subject against itself: with
            augmentation, a pair of two random deformations of one brain).
        atlas: the fixed volume for ``pairing="atlas"``.
        length: pairs per epoch.
        ndim: 3 for volumes; 2 for axial slices (last axis) of 3-D volumes, drawn from the
            slices that hold brain, or for 2-D images.
        augment: random smooth deformation (``max_disp`` voxels) and intensity change of each
            side, drawn afresh for every (seed, epoch, index).
        seed: the pairs are a function of (seed, epoch, index) only, so any worker layout,
            resume or DDP split draws the same pairs.

    Items are ``(moving, fixed)`` (1, *spatial) float32, plus ``(moving_labels,
    fixed_labels)`` int64 when ``with_labels`` and every volume has labels.
    """

    def __init__(self, volumes: Sequence[Volume], pairing: str = "subject", atlas: Volume | None = None,
                 length: int = 100, ndim: int = 3, augment: bool = True, max_disp: float = 4.0,
                 seed: int = 0, with_labels: bool = False):
        if pairing not in ("subject", "atlas", "self"):
            raise ValueError(f"pairing must be 'subject', 'atlas' or 'self', got {pairing!r}")
        if not volumes:
            raise ValueError("PairDataset needs at least one volume")
        if pairing == "atlas" and atlas is None:
            raise ValueError("pairing='atlas' needs an atlas volume")
        if pairing == "subject" and len(volumes) < 2:
            raise ValueError(f"pairing='subject' needs at least 2 subjects, got {len(volumes)} "
                             "(use pairing='self' to register a subject to deformed copies of itself)")
        shapes = {v.shape for v in volumes} | ({atlas.shape} if atlas is not None else set())
        if len(shapes) != 1:
            raise ValueError(f"all volumes must share one shape (resample or pad them), got {sorted(shapes)}")
        self.volumes, self.atlas, self.pairing = list(volumes), atlas, pairing
        self.length, self.ndim, self.augment, self.max_disp = int(length), int(ndim), bool(augment), float(max_disp)
        self.seed, self.epoch = int(seed), 0
        self.with_labels = with_labels and all(v.labels is not None for v in self.volumes + ([atlas] if atlas else []))
        vol_ndim = self.volumes[0].image.ndim
        if self.ndim not in (2, 3) or self.ndim > vol_ndim:
            raise ValueError(f"ndim={ndim} does not fit {vol_ndim}-D volumes")
        self._slices = None
        if self.ndim == 2 and vol_ndim == 3:
            # axial slices holding at least half the brain area of the fullest slice, in every volume
            area = np.min([(v.image > 0.05).sum(axis=(0, 1)) for v in self.volumes], axis=0)
            self._slices = np.flatnonzero(area >= 0.5 * area.max())

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def _generator(self, index: int) -> torch.Generator:
        key = hashlib.blake2b(f"{self.seed}/{self.epoch}/{index}".encode(), digest_size=8).digest()
        return torch.Generator().manual_seed(int.from_bytes(key, "little") & ((1 << 63) - 1))

    def _side(self, vol: Volume, sl, g: torch.Generator):
        img = torch.from_numpy(np.ascontiguousarray(vol.image[sl]))[None, None]
        lab = None
        if self.with_labels:
            lab = torch.from_numpy(np.ascontiguousarray(vol.labels[sl]))[None, None]
        if self.augment:
            from ...warp import warp

            disp = random_deformation(img.shape[2:], g, self.max_disp)
            img = _augment_intensity(warp(img, disp), g)
            if lab is not None:
                lab = warp(lab, disp, mode="nearest")
        return img[0], (None if lab is None else lab[0])

    def __getitem__(self, index: int):
        if not 0 <= index < self.length:
            raise IndexError(index)
        g = self._generator(index)
        n = len(self.volumes)
        if self.pairing == "atlas":
            moving, fixed = self.volumes[int(torch.randint(n, (), generator=g))], self.atlas
        elif self.pairing == "self":
            moving = fixed = self.volumes[int(torch.randint(n, (), generator=g))]
        else:
            i = int(torch.randint(n, (), generator=g))
            j = (i + 1 + int(torch.randint(n - 1, (), generator=g))) % n
            moving, fixed = self.volumes[i], self.volumes[j]
        sl = (slice(None),) * self.volumes[0].image.ndim
        if self._slices is not None:
            sl = (slice(None), slice(None), int(self._slices[int(torch.randint(len(self._slices), (), generator=g))]))
        m, ml = self._side(moving, sl, g)
        f, fl = self._side(fixed, sl, g)
        if self.with_labels:
            return m, f, ml, fl
        return m, f
