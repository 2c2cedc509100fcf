"""Synthetic data for the application's tests: random arrays and affines, NIfTI files."""

import os

import nibabel as nib
import numpy as np


def rng(seed=1234):
    return np.random.default_rng(seed)


def affine_of(seed=0):
    """A non-trivial affine: rotation, anisotropic voxels, an offset."""
    r = rng(seed)
    q, _ = np.linalg.qr(r.normal(size=(3, 3)))
    aff = np.eye(4)
    aff[:3, :3] = q @ np.diag([1.5, 2.0, 0.75])
    aff[:3, 3] = r.normal(size=3) * 20
    return aff


def write(path, array, affine=None, dtype=None):
    arr = np.asarray(array)
    img = nib.Nifti1Image(arr if dtype is None else arr.astype(dtype), np.eye(4) if affine is None else affine)
    nib.save(img, str(path))
    return str(path)


def no_temp_files(folder):
    return not [p for p in os.listdir(folder) if p.startswith(".fastwarp-")]
