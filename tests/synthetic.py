"""Synthetic data for the application's tests: random arrays and affines, NIfTI files, subjects
(a smooth textured blob under a random deformation each, with label maps), tiny training runs."""

import os

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

import fastwarp
from fastwarp.app import data as fwdata
from fastwarp.app.cli import train_config
from fastwarp.app.training import train

TINY = ["--enc", "4", "8", "--dec", "8", "8", "4"]
# fastwarp train's options for a tiny network, on the CPU, quietly
COMMON = ["--device", "cpu", "--workers", "0", "--quiet", *TINY, "--window", "5"]


def run_train(*args):
    """``fastwarp train`` with ``COMMON`` and ``args``: its log."""
    return train(train_config([*COMMON, *map(str, args)]))


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


def scaled_affine(scale, offset):
    aff = np.diag([*scale, 1.0])
    aff[:3, 3] = offset
    return aff


def blob_subjects(folder, names, shape, seed, affine, max_disp=2.0):
    """A smooth textured blob under a different random smooth deformation per subject, with a
    label map (0 background, 1-3 by intensity). Images are written in arbitrary units."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, 1, 4, 4, 4, generator=g, dtype=torch.float64)
    texture = F.interpolate(coarse, size=shape, mode="trilinear", align_corners=True)
    x = torch.meshgrid([torch.linspace(-1, 1, s, dtype=torch.float64) for s in shape], indexing="ij")
    r2 = sum(c ** 2 for c in x)
    img = (torch.exp(-2.5 * r2) * (1.5 + 0.5 * texture)).clamp_min(0).float()
    paths = {}
    for name in names:
        disp = fwdata.random_deformation(shape, g, max_disp=max_disp, spacing=6.0)
        im = fastwarp.warp(img, disp)[0, 0]
        lab = torch.bucketize(im, torch.tensor([0.2, 0.6, 1.0])).to(torch.int16)
        p = fwdata.save_nifti(os.path.join(folder, f"{name}.nii.gz"), im * 100 + 5, affine)
        lp = fwdata.save_nifti(os.path.join(folder, f"{name}_seg.nii.gz"), lab, affine, dtype=np.int16)
        paths[name] = (p, lp)
    return paths
