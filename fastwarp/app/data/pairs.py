"""Pairs to register: :class:`PairDataset` draws training pairs (subject-to-subject,
atlas-to-subject, or a subject against itself, each side randomly deformed and changed in
intensity, reproducibly from (seed, epoch, index)); :func:`validation_pairs` gives the held-out
ones. A 2-D model works on axial slices, chosen by one rule (:func:`brain_area`)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch

from . import augment as aug
from .nifti import Volume

__all__ = ["PairDataset", "validation_pairs", "brain_area"]


def brain_area(volumes: Sequence[Volume]) -> np.ndarray:
    """The rule by which a 2-D model's axial slices (the last axis) are chosen: each slice's
    brain area, the voxels above 0.05 in whichever of ``volumes`` has fewest there. Training
    draws from the slices with at least half the largest area (:class:`PairDataset`), validation
    registers the slice with the largest (:func:`validation_pairs`)."""
    return np.min([(v.image > 0.05).sum(axis=(0, 1)) for v in volumes], axis=0)


def validation_pairs(moving: Sequence[Volume], fixed: Volume, ndim: int) -> list[tuple]:
    """Each of ``moving`` against ``fixed``: ``(name, moving, fixed, moving_labels,
    fixed_labels)``, tensors (1, 1, *spatial) (labels None where absent); for a 2-D model on
    volumes, the axial slice of the largest brain area, which the name says (the figures of
    training's validation are then that slice's, not the volume's that ``fastwarp register``
    reports)."""
    pairs = []
    for mv in moving:
        sl = (slice(None),) * mv.image.ndim
        where = ""
        if ndim == 2 and mv.image.ndim == 3:
            z = int(np.argmax(brain_area([mv, fixed])))
            sl, where = (slice(None), slice(None), z), f", axial slice {z}"

        def tensor(a):
            return None if a is None else torch.from_numpy(np.ascontiguousarray(a[sl]))[None, None]

        pairs.append((f"{mv.name} -> {fixed.name}{where}", tensor(mv.image), tensor(fixed.image), tensor(mv.labels),
                      tensor(fixed.labels)))
    return pairs


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
            slices that hold brain (:func:`brain_area`), or for 2-D images.
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
        if self.ndim == 2 and vol_ndim == 3:  # the slices with at least half the largest brain area
            area = brain_area(self.volumes)
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
            img, lab = aug.augment(img, lab, g, self.max_disp)
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
