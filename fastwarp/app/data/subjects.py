"""Where the subjects are: :func:`find_volumes` lists a folder of NIfTI files or a list file as
:class:`VolumeSpec` entries (an image and its label map); :func:`embedded` gives the brains
shipped with fastwarp, :func:`embedded_1mm` their 1 mm versions when they have been made, and
:func:`embedded_pairs` the two as registration problems (the registration benchmark's)."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .nifti import NIFTI_SUFFIXES, load_volume, nifti_stem

__all__ = ["VolumeSpec", "find_volumes", "embedded", "embedded_1mm", "data_1mm_dir", "EMBEDDED_DIR",
           "RegistrationPair", "EMBEDDED_DIRECTIONS", "embedded_pairs"]

# Shipped beside this module as package data (made by scripts/make_data.py).
EMBEDDED_DIR = pathlib.Path(__file__).resolve().parent / "embedded"
_LABEL_MARKERS = ("_seg", "_labels", "_label", "_aseg")


@dataclass(frozen=True)
class VolumeSpec:
    """Paths of one subject: an image and, optionally, its label map."""

    image: str
    labels: str | None = None

    @property
    def name(self) -> str:
        return nifti_stem(os.path.basename(self.image))


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
        files = sorted(p for p in source.iterdir() if p.name.endswith(NIFTI_SUFFIXES) and not p.name.startswith("."))
        stems = {nifti_stem(p.name): p for p in files}
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


def _pair(folder: pathlib.Path) -> list[tuple[pathlib.Path, pathlib.Path]]:
    return [(folder / f"{name}_t1.nii.gz", folder / f"{name}_labels.nii.gz") for name in ("mni152", "colin27")]


def embedded() -> list[VolumeSpec]:
    """The real brains shipped with fastwarp (see ``fastwarp/app/data/embedded/README.md``):
    the MNI152 2009 template and the Colin27 brain, on one 2 mm MNI grid, each with a
    tissue label map (1 CSF, 2 grey matter, 3 white matter). The first is the atlas."""
    specs = []
    for image, labels in _pair(EMBEDDED_DIR):
        if not image.exists():
            raise FileNotFoundError(f"the embedded data file {image} is missing: reinstall fastwarp")
        specs.append(VolumeSpec(str(image), str(labels) if labels.exists() else None))
    return specs


def data_1mm_dir() -> pathlib.Path:
    """Where :func:`embedded_1mm` looks: ``$FASTWARP_DATA_1MM``, else ``~/.cache/fastwarp/data-1mm``
    (``scripts/make_data.py --voxel-mm 1`` writes there by default)."""
    return pathlib.Path(os.environ.get("FASTWARP_DATA_1MM") or pathlib.Path.home() / ".cache" / "fastwarp" / "data-1mm")


def embedded_1mm(folder: str | os.PathLike | None = None, missing_ok: bool = False) -> list[VolumeSpec] | None:
    """The embedded pair at 1 mm (160x192x176; [mni152, colin27], each with its tissue labels),
    made from the same sources in the same way by ``scripts/make_data.py --voxel-mm 1``. They are
    not shipped (about 4 MB): they are looked for in ``folder``, default :func:`data_1mm_dir`.
    When they are missing: None if ``missing_ok``, else a FileNotFoundError saying how to make them."""
    folder = pathlib.Path(folder) if folder is not None else data_1mm_dir()
    pairs = _pair(folder)
    missing = [str(p) for pair in pairs for p in pair if not p.exists()]
    if missing:
        if missing_ok:
            return None
        raise FileNotFoundError(
            f"the 1 mm data are not in {folder} (missing {', '.join(os.path.basename(m) for m in missing)}): make "
            "them once with `python scripts/make_data.py --fetch --voxel-mm 1` from a fastwarp checkout (it "
            "downloads the two source archives with pip and apt-get; add --out DIR and set FASTWARP_DATA_1MM=DIR "
            "for another folder)")
    return [VolumeSpec(str(image), str(labels)) for image, labels in pairs]


# The embedded pair as registration problems, in both directions.
EMBEDDED_DIRECTIONS = {"colin27-to-mni152": ("colin27", "mni152"), "mni152-to-colin27": ("mni152", "colin27")}


@dataclass
class RegistrationPair:
    """One registration problem: ``moving`` onto ``fixed``, both ``(X, Y, Z)`` float32 in [0, 1]
    on one voxel grid whose voxel -> world (RAS, mm) map is ``affine``, with integer tissue labels."""

    direction: str  # e.g. "colin27-to-mni152"
    resolution: float  # mm
    moving: np.ndarray
    fixed: np.ndarray
    moving_labels: np.ndarray
    fixed_labels: np.ndarray
    affine: np.ndarray


def embedded_pairs(resolutions: Sequence[float] = (2,),
                   directions: Sequence[str] = tuple(EMBEDDED_DIRECTIONS)) -> list[RegistrationPair]:
    """The embedded pair at each resolution (2: shipped, :func:`embedded`; 1: :func:`embedded_1mm`,
    a FileNotFoundError saying how to make it when missing), in each direction of
    :data:`EMBEDDED_DIRECTIONS`."""
    pairs = []
    for res in resolutions:
        specs = embedded() if float(res) == 2 else embedded_1mm()
        vols = {name: load_volume(spec.image, spec.labels) for name, spec in zip(("mni152", "colin27"), specs)}
        for direction in directions:
            mv, fx = (vols[n] for n in EMBEDDED_DIRECTIONS[direction])
            if not np.allclose(mv.affine, fx.affine):
                raise ValueError(f"{direction}: the two volumes are not on one grid")
            pairs.append(RegistrationPair(direction, float(res), mv.image, fx.image, mv.labels, fx.labels, fx.affine))
    return pairs
