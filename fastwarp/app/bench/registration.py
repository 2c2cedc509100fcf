"""``python -m fastwarp.app.bench.registration``: whole registrations of the embedded pair, fastwarp
against ANTs SyN and SimpleITK's diffeomorphic demons, in one run.

For each resolution (the embedded pair at 2 mm, 80x96x96; its 1 mm versions, 160x192x176, made by
``scripts/make_data.py --voxel-mm 1``), each direction (Colin27 -> MNI152 and back) and each
method, one registration of the intensity-normalized images
(:func:`~fastwarp.app.data.normalize_intensity`), reported as tissue Dice per label (1 CSF,
2 grey matter, 3 white matter) and their mean, the folding (% of voxels with det J <= 0 of the
displacement on the fixed grid, :func:`~fastwarp.app.metrics.jacobian_determinant`) and the wall
time of the registration call, every method with the same number of CPU threads.

Methods (:data:`METHODS`):

- ``identity``: no registration (the Dice before).
- ``network``, ``network+refine``, ``refine`` and their ``-diffeo`` twins: fastwarp's
  :func:`~fastwarp.app.register.register_pair` with the network (``--model``), the network then
  the instance refinement, or the refinement alone (:class:`~fastwarp.app.refine.RefineConfig`,
  its defaults; ``diffeomorphic=True`` for the twins, whose network is one trained with
  ``--diffeomorphic``).
- ``ants-syn``, ``ants-syn-long``: :func:`ants_syn`, antspyx's ``ants.registration`` with
  ``type_of_transform="SyNOnly"`` (see there why not "SyN") and antspyx's default SyN schedule
  (``reg_iterations=(40, 20, 0)``), or the long one (100, 70, 50, 20).
- ``demons``, ``demons-long``: :func:`sitk_demons`, SimpleITK's
  ``DiffeomorphicDemonsRegistrationFilter`` in SimpleITK's multi-resolution recipe (20
  iterations per level, or 50).

The peers' fields are converted to fastwarp's convention (:func:`itk_to_voxel_displacement`) and
every run checks the conversion: the moving image warped by :func:`fastwarp.warp` through the
converted field must equal the peer's own warped image (``warp check``, the largest difference).
The peers are optional (``pip install antspyx SimpleITK``); one that is not installed is listed
as such.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

import fastwarp

from ...warp import warp
from ..metrics import dice, jacobian_determinant
from .baselines import BaselineUnavailable, _dist_version, _import

__all__ = [
    "Pair", "PeerResult", "Method", "METHODS", "DIRECTIONS", "itk_geometry", "itk_to_voxel_displacement",
    "ants_syn", "sitk_demons", "load_pairs", "cached_model", "run", "format_table", "format_markdown",
    "evaluate_goals", "build_parser", "main",
]

PROG = "python -m fastwarp.app.bench.registration"
DIRECTIONS = {"colin27-to-mni152": ("colin27", "mni152"), "mni152-to-colin27": ("mni152", "colin27")}
LABELS = {1: "CSF", 2: "GM", 3: "WM"}
ANTS_SCHEDULES = {"default": (40, 20, 0), "long": (100, 70, 50, 20)}
DEMONS_SCHEDULES = {"default": (20, 20, 20), "long": (50, 50, 50)}
QUICK = {"ants": (4, 2, 0), "demons": (3, 2, 1)}  # --quick: a smoke run's iterations
MODEL_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "fastwarp")
_LPS = np.diag([-1.0, -1.0, 1.0])  # NIfTI world (RAS) -> ITK physical space (LPS), and back


# --------------------------------------------------------------------------- the pair


@dataclass
class Pair:
    """One registration problem: ``moving`` onto ``fixed``, both ``(X, Y, Z)`` float32 in [0, 1]
    on one voxel grid whose voxel -> world (RAS, mm) map is ``affine``, with integer tissue labels."""

    direction: str  # e.g. "colin27-to-mni152"
    resolution: float  # mm
    moving: np.ndarray
    fixed: np.ndarray
    moving_labels: np.ndarray
    fixed_labels: np.ndarray
    affine: np.ndarray


def load_pairs(resolutions: Sequence[float] = (2,), directions: Sequence[str] = tuple(DIRECTIONS)) -> list[Pair]:
    """The embedded pair at each resolution (2: shipped; 1: :func:`~fastwarp.app.data.subjects.embedded_1mm`,
    a FileNotFoundError saying how to make it when missing), in each direction."""
    from ..data import embedded, load_volume
    from ..data.subjects import embedded_1mm

    pairs = []
    for res in resolutions:
        specs = embedded() if float(res) == 2 else embedded_1mm()
        vols = {name: load_volume(spec.image, spec.labels) for name, spec in zip(("mni152", "colin27"), specs)}
        for direction in directions:
            mv, fx = (vols[n] for n in DIRECTIONS[direction])
            if not np.allclose(mv.affine, fx.affine):
                raise ValueError(f"{direction}: the two volumes are not on one grid")
            pairs.append(Pair(direction, float(res), mv.image, fx.image, mv.labels, fx.labels, fx.affine))
    return pairs


# --------------------------------------------------------------------------- ITK conventions


def itk_geometry(affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ITK's ``(origin, spacing, direction)`` of a grid whose NIfTI voxel -> world map is ``affine``.

    ITK's physical space is LPS (x to the left, y to the back) where NIfTI's world is RAS, so a
    physical point is ``diag(-1, -1, 1) @`` the world point; ITK index ``(i, j, k)`` is the numpy
    array index ``[i, j, k]`` as antspyx holds it (SimpleITK's arrays are ``[k, j, i]``). Then
    physical = origin + direction @ diag(spacing) @ index."""
    M = _LPS @ np.asarray(affine, dtype=np.float64)[:3, :3]
    spacing = np.linalg.norm(M, axis=0)
    return _LPS @ np.asarray(affine, dtype=np.float64)[:3, 3], spacing, M / spacing


def itk_to_voxel_displacement(field: np.ndarray, affine: np.ndarray) -> torch.Tensor:
    """An ITK displacement field on the fixed grid, ``(X, Y, Z, 3)`` (array axes = ITK index axes),
    vectors in physical LPS mm as ITK's transforms use them (fixed point ``x`` maps to the moving
    point ``x + u(x)``), as fastwarp's ``(1, 3, X, Y, Z)`` displacement in voxels (channel ``k``
    along array axis ``k``): ``inverse(direction @ diag(spacing)) @ u``. The moving image shares
    the fixed grid, so moving index = fixed index + that."""
    origin, spacing, direction = itk_geometry(affine)
    to_voxel = np.linalg.inv(direction @ np.diag(spacing))
    u = np.einsum("ij,...j->...i", to_voxel, np.asarray(field, dtype=np.float64))
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(u, -1, 0)[None], dtype=np.float32))


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


# --------------------------------------------------------------------------- methods


@dataclass(frozen=True)
class Method:
    name: str
    kind: str  # "identity", "fastwarp", "ants", "demons"
    description: str
    network: bool = False
    refine: bool = False
    diffeomorphic: bool = False
    schedule: str = "default"


METHODS = {m.name: m for m in [
    Method("identity", "identity", "no registration"),
    Method("network", "fastwarp", "fastwarp: the network's prediction", network=True),
    Method("network+refine", "fastwarp", "fastwarp: the network, then the refinement", network=True, refine=True),
    Method("refine", "fastwarp", "fastwarp: the refinement from the identity", refine=True),
    Method("network-diffeo", "fastwarp", "fastwarp --diffeomorphic: the diffeomorphic network", network=True,
           diffeomorphic=True),
    Method("network+refine-diffeo", "fastwarp", "fastwarp --diffeomorphic: the diffeomorphic network, then the "
           "diffeomorphic refinement", network=True, refine=True, diffeomorphic=True),
    Method("refine-diffeo", "fastwarp", "fastwarp --diffeomorphic: the diffeomorphic refinement from the identity",
           refine=True, diffeomorphic=True),
    Method("ants-syn", "ants", "ANTs SyNOnly, antspyx's default schedule 40x20x0"),
    Method("ants-syn-long", "ants", "ANTs SyNOnly, long schedule 100x70x50x20", schedule="long"),
    Method("demons", "demons", "SimpleITK diffeomorphic demons, 20 iterations at 1/4, 1/2, 1"),
    Method("demons-long", "demons", "SimpleITK diffeomorphic demons, 50 iterations at 1/4, 1/2, 1", schedule="long"),
]}


def _refine_config(method: Method, quick: bool, voxel_mm: float):
    from ..refine import RefineConfig, refine_defaults

    if quick:
        return RefineConfig(levels=(2, 1), iterations=(3, 2), diffeomorphic=method.diffeomorphic)
    return refine_defaults(voxel_mm, diffeomorphic=method.diffeomorphic)  # what fastwarp register runs


def _checkpoint_complete(path: str) -> bool:
    if not os.path.isfile(path):
        return False
    from ..checkpoints import load_checkpoint

    try:
        ckpt = load_checkpoint(path)
    except Exception:  # noqa: BLE001  (a partial or foreign file: not complete)
        return False
    return int(ckpt.get("epoch", 0)) >= int(ckpt.get("args", {}).get("epochs", 1 << 30))


def cached_model(diffeomorphic: bool = False, cache: str = MODEL_CACHE, train: bool = True,
                 out=None) -> str | None:
    """A checkpoint for the network methods: ``<cache>/bench-model[-diffeomorphic]/checkpoint.pt``,
    trained once when missing with the demo's settings (:func:`fastwarp.app.demo.demo` on the CPU:
    a 2-D network on the embedded 2 mm brains' axial slices, 12 x 250 steps, some minutes on 2
    cores; its output goes to ``demo.log`` there). None when missing and ``train`` is False."""
    folder = os.path.join(cache, "bench-model" + ("-diffeomorphic" if diffeomorphic else ""))
    path = os.path.join(folder, "checkpoint.pt")
    if _checkpoint_complete(path):
        return path
    if not train:
        return None
    from ..demo import demo

    out = sys.stdout if out is None else out
    print(f"training the {'diffeomorphic ' if diffeomorphic else ''}network once with the demo's settings into "
          f"{folder} (log: {folder}/demo.log) ...", file=out, flush=True)
    os.makedirs(folder, exist_ok=True)
    t0 = time.perf_counter()
    with open(os.path.join(folder, "demo.log"), "w") as log, contextlib.redirect_stdout(log):
        demo(output=folder, device="cpu", diffeomorphic=diffeomorphic, quiet=True)
    print(f"  trained in {(time.perf_counter() - t0) / 60:.1f} min", file=out, flush=True)
    return path


# --------------------------------------------------------------------------- one run


def _row(pair: Pair, method: Method, **fields) -> dict:
    row = dict(method=method.name, kind=method.kind, direction=pair.direction, resolution=pair.resolution,
               shape=list(pair.fixed.shape), status="ok", reason=None, dice=None, mean_dice=None,
               folding_percent=None, jacobian_min=None, seconds=None, seconds_runs=None, warp_check=None, settings=None)
    row.update(fields)
    return row


def _scores(warped_labels, fixed_labels, disp: torch.Tensor) -> dict:
    d = dice(torch.as_tensor(np.asarray(warped_labels)), torch.as_tensor(np.asarray(fixed_labels)), list(LABELS))
    det = jacobian_determinant(disp.double())
    return dict(dice={int(k): v for k, v in d.items()}, mean_dice=sum(d.values()) / len(d) if d else float("nan"),
                folding_percent=100.0 * float((det <= 0).double().mean()), jacobian_min=float(det.min()))


def _run_repeated(pair: Pair, method: Method, models: dict, settings: dict) -> dict:
    """:func:`_run_one` ``settings["repeats"]`` times: the first run's row, ``seconds`` the median of
    the runs' (``seconds_runs`` all of them); a run whose Dice or folding differs is an error."""
    row = _run_one(pair, method, models, settings)
    runs = [row["seconds"]]
    for _ in range(settings["repeats"] - 1):
        if row["status"] != "ok" or method.kind == "identity":
            break
        again = _run_one(pair, method, models, settings)
        if (again["dice"], again["folding_percent"]) != (row["dice"], row["folding_percent"]):
            raise RuntimeError(f"{method.name} {pair.direction}: a repeated run gave other results "
                               f"({again['mean_dice']} vs {row['mean_dice']})")
        runs.append(again["seconds"])
    if len(runs) > 1:
        row.update(seconds=float(np.median(runs)), seconds_runs=runs)
    return row


def _run_one(pair: Pair, method: Method, models: dict, settings: dict) -> dict:
    quick = settings["quick"]
    if method.kind == "identity":
        zero = torch.zeros(1, 3, *pair.fixed.shape)
        return _row(pair, method, seconds=0.0, **_scores(pair.moving_labels, pair.fixed_labels, zero))
    if method.kind == "ants":
        schedule = QUICK["ants"] if quick else method.schedule
        peer = ants_syn(pair.moving, pair.fixed, pair.moving_labels, schedule, settings["seed"], pair.affine,
                        settings["ants_transform"], settings["threads"])
    elif method.kind == "demons":
        schedule = QUICK["demons"] if quick else method.schedule
        peer = sitk_demons(pair.moving, pair.fixed, pair.moving_labels, schedule, pair.affine,
                           threads=settings["threads"])
    else:
        return _run_fastwarp(pair, method, models, settings)
    return _row(pair, method, seconds=peer.seconds, warp_check=warp_check(pair.moving, peer), settings=peer.settings,
                **_scores(peer.warped_labels, pair.fixed_labels, peer.disp))


def _run_fastwarp(pair: Pair, method: Method, models: dict, settings: dict) -> dict:
    from ..register import register_pair

    model, downsample, used = None, 1, {}
    if method.network:
        entry = models.get(method.diffeomorphic)
        if entry is None or isinstance(entry, str):
            return _row(pair, method, status="skipped", reason=entry or "no model")
        model, ckpt_path, ckpt_downsample, trained_mm = entry
        # a network sees the resolution it was trained at: downsample the finer data to it
        downsample = max(1, round(ckpt_downsample * trained_mm / pair.resolution))
        used.update(model=ckpt_path, downsample=downsample)
    refine = _refine_config(method, settings["quick"], pair.resolution) if method.refine else None
    if refine is not None:
        used["refine"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(refine).items()}
    res = register_pair(pair.moving, pair.fixed, model=model, downsample=downsample, refine=refine,
                        moving_labels=pair.moving_labels, fixed_labels=pair.fixed_labels, device="cpu")
    used["stages"] = dict(res.stages)
    d = {int(k): v for k, v in res.metrics["dice_after"].items()}
    det = jacobian_determinant(res.disp.double().cpu())
    return _row(pair, method, seconds=res.seconds, settings=used, dice=d, mean_dice=res.metrics["mean_dice_after"],
                folding_percent=100.0 * res.metrics["folding_fraction"], jacobian_min=float(det.min()))


def _load_models(methods: Sequence[Method], model: str | None, model_diffeo: str | None, train: bool,
                 out) -> dict:
    """{diffeomorphic: (model, path, downsample, trained_mm) or the reason there is none}."""
    from ..checkpoints import load_checkpoint, model_from_checkpoint

    models = {}
    for diffeo in sorted({m.diffeomorphic for m in methods if m.network}):
        given = model_diffeo if diffeo else model
        if given == "none":
            models[diffeo] = f"no model (--model{'-diffeo' if diffeo else ''} none)"
            continue
        path = cached_model(diffeo, train=train, out=out) if given in (None, "auto") else given
        if path is None:
            models[diffeo] = ("no cached model and --no-train: pass --model" + ("-diffeo" if diffeo else "")
                              + " CKPT")
            continue
        ckpt = load_checkpoint(path)
        net = model_from_checkpoint(ckpt)
        if bool(ckpt.get("config", {}).get("diffeomorphic", diffeo)) != diffeo:
            print(f"{PROG}: warning: {path} is {'not ' if diffeo else ''}a diffeomorphic network", file=out)
        args = ckpt.get("args", {})
        trained_mm = 2.0  # the embedded pair's (fastwarp train's default data, the demo's)
        if args.get("data"):
            print(f"{PROG}: note: {path} was trained on {args['data']}; taken to be 2 mm data", file=out)
        models[diffeo] = (net, path, int(args.get("downsample", 1) or 1), trained_mm)
    return models


def _warm_up(methods: Sequence[Method]) -> None:
    """One tiny registration on fastwarp's ops, untimed: the first call of a process loads kernels
    and allocator pools that no later registration pays for again."""
    if any(m.kind == "fastwarp" for m in methods):
        from ..refine import RefineConfig, refine

        g = torch.Generator().manual_seed(0)
        a, b = torch.rand(1, 1, 16, 16, 16, generator=g), torch.rand(1, 1, 16, 16, 16, generator=g)
        refine(a, b, None, RefineConfig(levels=(1,), iterations=2))
        refine(a, b, None, RefineConfig(levels=(1,), iterations=2, diffeomorphic=True))


def run(pairs: Sequence[Pair], methods: Sequence[str] = tuple(METHODS), threads: int = 2, seed: int = 0,
        model: str | None = "auto", model_diffeo: str | None = "auto", train: bool = True, quick: bool = False,
        ants_transform: str = "SyNOnly", repeats: int = 1, command: str = PROG, out=None) -> dict:
    """Every method on every pair, in this process, printing each row as it comes (``repeats``
    times each: the seconds are the median, the results must be the same every time); returns
    ``{"meta": ..., "rows": [...], "goals": [...]}``. A peer that is not installed or fails becomes
    a row saying so; fastwarp's own failure propagates."""
    out = sys.stdout if out is None else out
    chosen = [METHODS[name] for name in methods]
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    from .runner import _cpu_model, _git_commit

    try:
        meta = dict(tool="fastwarp.app.bench.registration", command=command,
                    date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    cpu=_cpu_model(), cpu_count=os.cpu_count(), threads=threads, seed=seed, quick=quick,
                    repeats=repeats,
                    torch=torch.__version__, fastwarp=fastwarp.__version__, git_commit=_git_commit(),
                    python=platform.python_version(), ants_transform=ants_transform,
                    peers={"antspyx": _dist_version("antspyx"), "SimpleITK": _dist_version("SimpleITK", "simpleitk")},
                    loadavg_start=list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
                    methods={m.name: m.description for m in chosen})
        models = _load_models(chosen, model, model_diffeo, train, out)
        _warm_up(chosen)
        print(format_table([], header=True), file=out, flush=True)
        settings = dict(threads=threads, seed=seed, quick=quick, ants_transform=ants_transform, repeats=repeats)
        rows = []
        for pair in pairs:
            for method in chosen:
                try:
                    row = _run_repeated(pair, method, models, settings)
                except BaselineUnavailable as e:
                    row = _row(pair, method, status="not installed" if not e.installed else "unavailable",
                               reason=e.reason)
                except Exception as e:  # noqa: BLE001  (a peer's failure must not end the run)
                    if method.kind in ("fastwarp", "identity"):
                        raise
                    row = _row(pair, method, status="error", reason=f"{type(e).__name__}: {e}")
                rows.append(row)
                print(format_table([row], header=False), file=out, flush=True)
        meta["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
        return dict(meta=meta, rows=rows, goals=evaluate_goals(rows))
    finally:
        torch.set_num_threads(previous)


# --------------------------------------------------------------------------- goals and tables

# Issue 14's goals (2 CPU cores): (resolution mm, fastwarp method, reference, Dice margin over the
# reference's mean, folding % at most, seconds at most (a number) or a fraction of the reference's).
GOALS = [
    (2.0, "refine-diffeo", "ants-syn-long", 0.05, 0.01, 5.0),
    (2.0, "refine", "ants-syn-long", 0.05, None, 2.0),
    (1.0, "refine-diffeo", "ants-syn-long", 0.03, 0.01, ("fraction", 0.1)),
]


def evaluate_goals(rows: Sequence[dict]) -> list[dict]:
    """Each goal of :data:`GOALS` on each direction where both rows exist: met or not, per part."""
    found = {(r["resolution"], r["direction"], r["method"]): r for r in rows if r["status"] == "ok"}
    goals = []
    for res, mine, ref, margin, fold, limit in GOALS:
        for direction in DIRECTIONS:
            a, b = found.get((res, direction, mine)), found.get((res, direction, ref))
            if a is None or b is None:
                continue
            seconds = limit if not isinstance(limit, tuple) else limit[1] * b["seconds"]
            g = dict(resolution=res, direction=direction, method=mine, reference=ref,
                     dice=a["mean_dice"], reference_dice=b["mean_dice"], margin=a["mean_dice"] - b["mean_dice"],
                     margin_goal=margin, dice_met=a["mean_dice"] >= b["mean_dice"] + margin,
                     folding_percent=a["folding_percent"], folding_goal=fold,
                     folding_met=None if fold is None else a["folding_percent"] <= fold,
                     seconds=a["seconds"], seconds_goal=seconds, reference_seconds=b["seconds"],
                     seconds_met=a["seconds"] <= seconds)
            g["met"] = g["dice_met"] and g["seconds_met"] and g["folding_met"] is not False
            goals.append(g)
    return goals


_HEADERS = ["method", "direction", "mm", "Dice CSF", "Dice GM", "Dice WM", "mean Dice", "folding %", "seconds",
            "warp check"]
_WIDTHS = [22, 18, 3, 8, 8, 8, 9, 9, 8, 10]


def _cells(row: dict) -> list[str]:
    head = [row["method"], row["direction"], f"{row['resolution']:g}"]
    if row["status"] != "ok":
        return head + [row["status"] + ("" if row["status"] == "not installed" else f": {row['reason']}")]
    d = row["dice"] or {}
    return head + [f"{d[k]:.4f}" if k in d else "" for k in LABELS] + [
        f"{row['mean_dice']:.4f}", f"{row['folding_percent']:.4f}", f"{row['seconds']:.2f}",
        "" if row["warp_check"] is None else f"{row['warp_check']:.1e}"]


def format_table(rows: Sequence[dict], header: bool = True) -> str:
    """The console table (``header``: with its header line)."""
    lines = []
    if header:
        lines.append(" ".join(h.ljust(w) if i < 3 else h.rjust(w) for i, (h, w) in enumerate(zip(_HEADERS, _WIDTHS))))
    for row in rows:
        cells = _cells(row)
        if len(cells) == 4:  # a status
            lines.append(" ".join(c.ljust(w) for c, w in zip(cells[:3], _WIDTHS)) + " " + cells[3])
        else:
            lines.append(" ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, _WIDTHS))))
    return "\n".join(lines).rstrip()


def format_markdown(result: dict) -> str:
    meta = result["meta"]
    lines = [f"#### `{meta['command']}`, {meta['date'][:10]}", ""]
    commit = f" at commit {meta['git_commit']}" if meta.get("git_commit") else ""
    lines.append(f"- Machine: {meta['cpu']}, {meta['threads']} thread(s) for every method (torch, ITK), "
                 f"{meta['cpu_count']} CPU(s) visible")
    lines.append(f"- torch {meta['torch']}, fastwarp {meta['fastwarp']}{commit}; "
                 + ", ".join(f"{k} {v}" for k, v in meta["peers"].items()))
    if meta.get("loadavg_start") is not None:
        def loads(key):
            return ", ".join(f"{x:.2f}" for x in meta[key])

        lines.append(f"- Load average (1, 5, 15 min) at the start: {loads('loadavg_start')}"
                     + (f"; at the end: {loads('loadavg_end')}" if meta.get("loadavg_end") else ""))
    lines.append(f"- ANTs transform: {meta['ants_transform']}; seed {meta['seed']}"
                 + (f"; seconds: the median of {meta['repeats']} runs of each registration (same results each time)"
                    if meta.get("repeats", 1) > 1 else "")
                 + ("; **quick** (smoke-run iterations)" if meta.get("quick") else ""))
    lines.append("")
    lines.append("| " + " | ".join(_HEADERS) + " |")
    lines.append("|---|---|---:|" + "---:|" * (len(_HEADERS) - 3))
    for row in result["rows"]:
        cells = _cells(row)
        if row["kind"] == "fastwarp":
            cells[0] = f"**{cells[0]}**"
        if len(cells) == 4:
            cells += [""] * (len(_HEADERS) - 4)
        lines.append("| " + " | ".join(" ".join(c.replace("|", "\\|").split()) for c in cells) + " |")
    if result.get("goals"):
        lines += ["", "| goal | direction | Dice − reference | folding % | seconds | met |",
                  "|---|---|---:|---:|---:|---|"]
        for g in result["goals"]:
            fold = "" if g["folding_goal"] is None else f" (≤ {g['folding_goal']:g})"
            lines.append(
                f"| {g['resolution']:g} mm {g['method']} vs {g['reference']} + {g['margin_goal']:g} | {g['direction']} "
                f"| {g['margin']:+.4f} ({g['dice']:.4f} vs {g['reference_dice']:.4f}) "
                f"| {g['folding_percent']:.4f}{fold} | {g['seconds']:.2f} (≤ {g['seconds_goal']:.2f}) "
                f"| {'yes' if g['met'] else 'no'}: Dice {'yes' if g['dice_met'] else 'no'}, "
                f"time {'yes' if g['seconds_met'] else 'no'}"
                + ("" if g["folding_met"] is None else f", folding {'yes' if g['folding_met'] else 'no'}") + " |")
    lines.append("")
    lines.append("Folding: % of voxels of the fixed grid with det J ≤ 0. Seconds: the wall time of the registration "
                 "call. Warp check: the largest difference between fastwarp.warp through the peer's converted field "
                 "and the peer's own warped image (intensities in [0, 1]).")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- command


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Register the embedded pair (2 mm, and its 1 mm versions) with fastwarp's methods, ANTs SyN and "
                    "SimpleITK's diffeomorphic demons in one run: tissue Dice, folding, seconds.",
        epilog="methods: " + "; ".join(f"{m.name}: {m.description}" for m in METHODS.values()))
    p.add_argument("--resolution", nargs="+", type=float, choices=(2.0, 1.0), default=[2.0],
                   help="2 (the embedded pair) and/or 1 (its 1 mm versions: scripts/make_data.py --fetch --voxel-mm 1)")
    p.add_argument("--directions", default="both", choices=("both",) + tuple(DIRECTIONS))
    p.add_argument("--methods", default="all", help="comma-separated subset of the methods (default all)")
    p.add_argument("--model", default="auto",
                   help="checkpoint of the network methods; auto (default): the cached one, trained once with the "
                        "demo's settings when missing; none: skip them")
    p.add_argument("--model-diffeo", default="auto", help="the same for the -diffeo network (a --diffeomorphic one)")
    p.add_argument("--no-train", action="store_true", help="with auto models: skip, rather than train, a missing one")
    p.add_argument("--threads", type=int, default=2, help="CPU threads of every method (torch, ITK; default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ants-transform", default="SyNOnly", choices=("SyNOnly", "SyN"),
                   help="SyNOnly (default; the pair is already on one MNI grid) or SyN (an affine stage first)")
    p.add_argument("--repeats", type=int, default=1,
                   help="run each registration this many times and report the median seconds (default 1)")
    p.add_argument("--quick", action="store_true", help="a smoke run: every method with a few iterations")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON here")
    p.add_argument("--markdown", metavar="PATH", help="write the results as Markdown here")
    return p


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    methods = list(METHODS) if args.methods == "all" else [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if not methods or unknown:
        parser.error(f"--methods takes a comma-separated subset of {','.join(METHODS)}, got {args.methods!r}")
    if args.threads < 1 or args.repeats < 1:
        parser.error("--threads and --repeats must be at least 1")
    # before antspyx is imported (ANTs also reads it at each registration)
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(args.threads)
    directions = tuple(DIRECTIONS) if args.directions == "both" else (args.directions,)
    try:
        pairs = load_pairs(list(dict.fromkeys(args.resolution)), directions)
    except FileNotFoundError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    command = " ".join([prog, shlex.join(argv)]).strip()
    result = run(pairs, methods, args.threads, args.seed, args.model, args.model_diffeo, not args.no_train,
                 args.quick, args.ants_transform, args.repeats, command)
    for row in result["rows"]:
        if row["status"] == "error":
            print(f"{prog}: warning: {row['method']} {row['direction']} failed: {row['reason']}", file=sys.stderr)
        elif row["status"] == "skipped":
            print(f"{prog}: note: {row['method']} skipped: {row['reason']}", file=sys.stderr)
    if result["goals"]:
        print()
        for g in result["goals"]:
            print(f"goal {g['resolution']:g} mm {g['method']} >= {g['reference']} + {g['margin_goal']:g} "
                  f"({g['direction']}): Dice {g['margin']:+.4f}, folding {g['folding_percent']:.4f}%, "
                  f"{g['seconds']:.2f} s (<= {g['seconds_goal']:.2f}): {'met' if g['met'] else 'NOT met'}")
    for path, text in ((args.json, lambda: json.dumps(result, indent=1) + "\n"),
                       (args.markdown, lambda: format_markdown(result))):
        if path:
            with open(path, "w") as f:
                f.write(text())
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
