"""Data for registration, one module per concept:

- :mod:`~fastwarp.app.data.nifti`: NIfTI files in and out (:func:`load_volume`,
  :func:`save_nifti`), a loaded subject as a :class:`Volume`.
- :mod:`~fastwarp.app.data.subjects`: where the subjects are (:func:`find_volumes` for a folder
  or a list file, :func:`embedded` for the brains shipped with fastwarp, :func:`embedded_1mm`
  for their 1 mm versions when made, :func:`embedded_pairs` for the two as registration problems).
- :mod:`~fastwarp.app.data.preprocess`: to the network's grid (:func:`downsample`,
  :func:`pad_to_multiple`, :func:`to_model_grid`).
- :mod:`~fastwarp.app.data.augment`: random smooth deformations and intensity changes.
- :mod:`~fastwarp.app.data.pairs`: training pairs (:class:`PairDataset`) and validation pairs.
- :mod:`~fastwarp.app.data.contrast`: another contrast of a brain (:func:`t2_like`), for the
  multi-modal benchmark.
"""

from .augment import random_deformation
from .contrast import t2_like
from .nifti import Volume, load_volume, normalize_intensity, save_nifti
from .pairs import PairDataset, validation_pairs
from .preprocess import downsample, pad_to_multiple, to_model_grid
from .subjects import EMBEDDED_DIR, RegistrationPair, VolumeSpec, embedded, embedded_1mm, embedded_pairs, find_volumes

__all__ = [
    "Volume", "VolumeSpec", "load_volume", "save_nifti", "find_volumes", "embedded", "embedded_1mm", "EMBEDDED_DIR",
    "RegistrationPair", "embedded_pairs",
    "normalize_intensity", "pad_to_multiple", "downsample", "to_model_grid", "random_deformation",
    "PairDataset", "validation_pairs", "t2_like",
]
