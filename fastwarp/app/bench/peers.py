"""The registration peers, as the benchmark runs them: ANTs SyN (antspyx) and SimpleITK's
diffeomorphic demons, each returning its field in fastwarp's convention
(:func:`~fastwarp.app.transforms.itk_to_voxel_displacement`) with its own warped image, so that
:func:`warp_check` can prove the conversion on every run. Optional (``pip install antspyx
SimpleITK``): a missing one raises :class:`~fastwarp.app.bench.baselines.BaselineUnavailable`."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ...warp import warp
from ..transforms import itk_geometry, itk_to_voxel_displacement
from .baselines import _import

__all__ = ["PeerResult", "ants_syn", "sitk_demons", "warp_check", "ANTS_SCHEDULES", "DEMONS_SCHEDULES"]

ANTS_SCHEDULES = {"default": (40, 20, 0), "long": (100, 70, 50, 20)}
DEMONS_SCHEDULES = {"default": (20, 20, 20), "long": (50, 50, 50)}


@dataclass
class PeerResult:
    """A peer's registration: ``disp`` (:func:`itk_to_voxel_displacement`), the peer's own warped
    image (linear) and label map (nearest neighbour), both on the fixed grid, and the wall time of
    the registration call."""

    disp: torch.Tensor
    warped: np.ndarray
    warped_labels: np.ndarray | None
    seconds: float
    settings: dict = field(default_factory=dict)


@contextlib.contextmanager
def _itk_threads(threads: int | None):
    """ITK's thread count for antspyx (ANTs reads ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` at each
    registration) and SimpleITK (its global default)."""
    if threads is None:
        yield
        return
    key = "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"
    old = os.environ.get(key)
    os.environ[key] = str(threads)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def ants_syn(moving, fixed, moving_labels=None, schedule: str | Sequence[int] = "default", seed: int = 0,
             affine: np.ndarray | None = None, transform: str = "SyNOnly", threads: int | None = 2) -> PeerResult:
    """ANTs SyN through antspyx: ``ants.registration(fixed, moving, type_of_transform=transform,
    reg_iterations=...)`` with antspyx's other defaults (Mattes mutual information, 32 bins;
    ``SyN[0.2, 3, 0]``; shrink factors 2^(n-1)..1, smoothing sigmas n-1..0 voxels).

    ``schedule``: "default" (40, 20, 0: antspyx's, no iterations at full resolution), "long"
    (100, 70, 50, 20) or the iterations themselves. ``transform``: "SyNOnly" by default, the
    deformable stage alone from the identity, like fastwarp's methods: both images are already on
    one MNI grid. (On the 2 mm pair "SyN", which first estimates an affine by Mattes MI from a
    centre-of-mass start, gave a mean Dice within 0.002 of "SyNOnly", and no faster:
    benchmarks/RESULTS.md.) Deterministic for a given ``seed`` and thread count (``--random-seed``; ITK's
    threads from ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS``). ``affine``: the grid's voxel -> world
    map (the identity: voxels of 1 mm), so that the images carry their real geometry and the
    physical-space parameters mean what they mean for a user's NIfTI files."""
    ants = _import("ants-syn", "ants")
    iterations = tuple(ANTS_SCHEDULES[schedule] if isinstance(schedule, str) else schedule)
    affine = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    origin, spacing, direction = itk_geometry(affine)

    def image(a):
        return ants.from_numpy(np.ascontiguousarray(a, dtype=np.float32), origin=tuple(origin),
                               spacing=tuple(spacing), direction=direction)

    f, m = image(fixed), image(moving)
    previous_seed = ants.config._random_seed
    with tempfile.TemporaryDirectory(prefix="fastwarp-ants-") as tmp, _itk_threads(threads):
        # ants.config._random_seed is what antspyx passes as --random-seed (set_ants_deterministic
        # would also force one thread)
        ants.config._random_seed = seed
        try:
            t0 = time.perf_counter()
            reg = ants.registration(f, m, type_of_transform=transform, reg_iterations=iterations,
                                    outprefix=os.path.join(tmp, "reg_"))
            seconds = time.perf_counter() - t0
        finally:
            ants.config._random_seed = previous_seed
        # the whole map (a SyN warp, and with "SyN" an affine) as one displacement field on the fixed grid
        composed = ants.apply_transforms(f, m, reg["fwdtransforms"], compose=os.path.join(tmp, "composed_"))
        u = ants.image_read(composed).numpy()  # (X, Y, Z, 3), LPS mm
        labels = None
        if moving_labels is not None:
            labels = ants.apply_transforms(f, image(moving_labels), reg["fwdtransforms"],
                                           interpolator="nearestNeighbor").numpy()
            labels = np.rint(labels).astype(np.int64)
        warped = reg["warpedmovout"].numpy()
    return PeerResult(itk_to_voxel_displacement(u, affine), warped, labels, seconds,
                      dict(transform=transform, reg_iterations=list(iterations), syn_metric="mattes[32]",
                           syn="SyN[0.2,3,0]", seed=seed, threads=threads, version=ants.__version__))


def sitk_demons(moving, fixed, moving_labels=None, schedule: str | Sequence[int] = "default",
                affine: np.ndarray | None = None, shrink: Sequence[int] = (4, 2, 1),
                standard_deviation: float = 2.0, histogram_matching: bool = True,
                threads: int | None = 2) -> PeerResult:
    """SimpleITK's ``DiffeomorphicDemonsRegistrationFilter`` as SimpleITK's own multi-resolution
    demons example runs it (SimpleITK-Notebooks, ``66_Registration_Demons``): levels shrunk by 4
    and 2 (images smoothed by a Gaussian of 2 x the shrink factor in mm, then resampled) and full
    resolution, the field of one level resampled to start the next; the displacement field
    smoothed with a Gaussian of ``standard_deviation`` mm after each iteration. ``schedule``:
    iterations per level, "default" 20 each (the example's), "long" 50 each, or the numbers.
    First the moving intensities are matched to the fixed ones
    (``HistogramMatchingImageFilter``, 1024 levels, 7 match points, threshold at the mean), as
    ITK's demons examples do."""
    sitk = _import("demons", "SimpleITK")
    iterations = tuple(DEMONS_SCHEDULES[schedule] if isinstance(schedule, str) else schedule)
    if len(iterations) != len(shrink):
        raise ValueError(f"sitk_demons: one iteration count per level {tuple(shrink)}, got {iterations}")
    affine = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    origin, spacing, direction = itk_geometry(affine)

    def image(a, pixel):
        img = sitk.Cast(sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(a).transpose(2, 1, 0))), pixel)
        img.SetOrigin(tuple(origin))
        img.SetSpacing(tuple(spacing))
        img.SetDirection(tuple(direction.flatten()))
        return img

    def reduce(img, factor):
        if factor == 1:
            return img
        smoothed = sitk.SmoothingRecursiveGaussian(img, 2.0 * factor)
        size = [int(s / factor + 0.5) for s in img.GetSize()]
        sp = [(s - 1) * p / (n - 1) for s, p, n in zip(img.GetSize(), img.GetSpacing(), size)]
        return sitk.Resample(smoothed, size, sitk.Transform(), sitk.sitkLinear, img.GetOrigin(), sp,
                             img.GetDirection(), 0.0, img.GetPixelID())

    f, m = image(fixed, sitk.sitkFloat32), image(moving, sitk.sitkFloat32)
    previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    if threads is not None:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    try:
        t0 = time.perf_counter()
        matched = m
        if histogram_matching:
            hm = sitk.HistogramMatchingImageFilter()
            hm.SetNumberOfHistogramLevels(1024)
            hm.SetNumberOfMatchPoints(7)
            hm.ThresholdAtMeanIntensityOn()
            matched = hm.Execute(m, f)
        demons = sitk.DiffeomorphicDemonsRegistrationFilter()
        demons.SetSmoothDisplacementField(True)
        demons.SetStandardDeviations(standard_deviation)
        disp = None
        for factor, iters in zip(shrink, iterations):
            fl, ml = reduce(f, factor), reduce(matched, factor)
            if disp is None:
                disp = sitk.Image(fl.GetSize(), sitk.sitkVectorFloat64)
                disp.CopyInformation(fl)
            else:
                disp = sitk.Resample(disp, fl)
            demons.SetNumberOfIterations(int(iters))
            disp = demons.Execute(fl, ml, disp)
        seconds = time.perf_counter() - t0
        u = sitk.GetArrayFromImage(disp).transpose(2, 1, 0, 3)  # (X, Y, Z, 3), LPS mm
        transform = sitk.DisplacementFieldTransform(sitk.Image(disp))  # (it takes the image over)
        warped = sitk.GetArrayFromImage(sitk.Resample(m, f, transform, sitk.sitkLinear, 0.0)).transpose(2, 1, 0)
        labels = None
        if moving_labels is not None:
            lab = sitk.Resample(image(moving_labels, sitk.sitkInt32), f, transform, sitk.sitkNearestNeighbor, 0)
            labels = sitk.GetArrayFromImage(lab).transpose(2, 1, 0).astype(np.int64)
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous)
    return PeerResult(itk_to_voxel_displacement(u, affine), np.ascontiguousarray(warped), labels, seconds,
                      dict(filter="DiffeomorphicDemonsRegistrationFilter", shrink=list(shrink),
                           iterations=list(iterations), standard_deviation_mm=standard_deviation,
                           histogram_matching=histogram_matching, threads=threads,
                           version=sitk.Version.VersionString()))


def warp_check(moving: np.ndarray, peer: PeerResult) -> float:
    """The largest difference between the moving image warped by :func:`fastwarp.warp` through the
    peer's converted field and the peer's own warped image (both trilinear), over the fixed voxels
    whose sample point lies inside the moving grid's voxel centres, ``[0, N-1]`` on every axis.
    (Within half a voxel outside them ITK repeats the edge voxel and fastwarp's zero padding fades
    to 0; further out both give 0.)"""
    mine = warp(torch.from_numpy(np.ascontiguousarray(moving, dtype=np.float32))[None, None], peer.disp)[0, 0]
    theirs = torch.from_numpy(np.asarray(peer.warped, dtype=np.float32))
    spatial = peer.disp.shape[2:]
    points = peer.disp[0] + torch.stack(torch.meshgrid([torch.arange(n, dtype=torch.float32) for n in spatial],
                                                       indexing="ij"))
    inside = torch.ones(spatial, dtype=torch.bool)
    for k, n in enumerate(spatial):
        inside &= (points[k] >= 0) & (points[k] <= n - 1)
    return float((mine - theirs).abs()[inside].max()) if inside.any() else 0.0
