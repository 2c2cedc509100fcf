"""Registration of one pair of NIfTI images with a trained network (``fastwarp register``).

:func:`register_files` writes the warped image (and the displacement field, the warped label
map, the figure, the metrics) on the fixed image's grid, with its affine and header, and returns
NCC / MSE / Dice before and after and the folding fraction (:func:`format_metrics` prints them).
A 2-D model registers 3-D volumes slice by slice (axial slices, the last axis).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..warp import warp
from .checkpoints import CheckpointError, load_checkpoint, model_from_checkpoint
from .config import RegisterConfig
from .data import Volume, load_volume, normalize_intensity, save_nifti, to_model_grid
from .files import replacing
from .metrics import compare
from .models import RegUNet
from .refine import RefineConfig, refine_defaults
from .refine import refine as refine_field
from .runtime import resolve_device

__all__ = ["register_pair", "PairResult", "register_files", "predict_displacement", "format_metrics"]


#: Slices of a volume in one forward of a 2-D model: a batch, not one forward per slice. On 2
#: CPU cores the demo model's 96 slices (80 x 96) take 0.72 s in batches of 8 or 16 against 1.14 s
#: one by one; batches of 32 or all 96 at once are slower again (0.8-1.3 s: the activations
#: leave the caches).
SLICES_PER_BATCH = 16


def predict_displacement(model: RegUNet, moving: np.ndarray, fixed: np.ndarray, device: torch.device,
                         downsample: int = 1) -> torch.Tensor:
    """The model's displacement (1, ndim, *spatial) for two normalized images of one shape,
    at their full resolution: the images are reduced by ``downsample`` (as in training) and
    padded to the model's multiple; the field is cropped and brought back to full size.

    A 2-D model registers a 3-D volume slice by slice (axial slices, the last axis, batched by
    :data:`SLICES_PER_BATCH`): the result is a 3-D field with no through-plane component."""
    if model.ndim == 2 and moving.ndim == 3:
        parts = [_predict_batch(model, np.moveaxis(moving[:, :, k:k + SLICES_PER_BATCH], 2, 0),
                                np.moveaxis(fixed[:, :, k:k + SLICES_PER_BATCH], 2, 0), device, downsample)
                 for k in range(0, moving.shape[2], SLICES_PER_BATCH)]
        inplane = torch.cat(parts).permute(1, 2, 3, 0)[None]  # (Z, 2, X, Y) -> (1, 2, X, Y, Z)
        return torch.cat([inplane, torch.zeros_like(inplane[:, :1])], dim=1).contiguous()
    return _predict_batch(model, moving[None], fixed[None], device, downsample)


def _predict_batch(model: RegUNet, moving: np.ndarray, fixed: np.ndarray, device: torch.device,
                   downsample: int) -> torch.Tensor:
    """``predict_displacement`` of B pairs of one shape, ``(B, *spatial)`` each, in one forward:
    ``(B, ndim, *spatial)``."""
    def on_model_grid(images):
        grids = [to_model_grid(Volume(np.asarray(image), np.eye(4)), model.multiple, downsample) for image in images]
        batch = np.stack([np.ascontiguousarray(vol.image) for vol, _ in grids])
        return torch.from_numpy(batch)[:, None].to(device), grids[0][1]

    (m, crop), (f, _) = on_model_grid(moving), on_model_grid(fixed)
    model.eval()
    with torch.no_grad():
        _, disp = model(m, f)
    disp = disp[(slice(None), slice(None)) + crop].float()
    if downsample > 1:
        mode = "bilinear" if disp.dim() == 4 else "trilinear"
        size = tuple(s * downsample for s in disp.shape[2:])
        disp = downsample * F.interpolate(disp, size=size, mode=mode, align_corners=False)
        disp = disp[(slice(None), slice(None)) + tuple(slice(0, s) for s in moving.shape[1:])]
    return disp.contiguous()


@dataclass
class PairResult:
    """One registered pair (:func:`register_pair`). The moving image is sampled, at each fixed
    voxel ``p``, at the moving voxel ``V · (p + disp(p))``: ``voxel_matrix`` ``V`` (homogeneous,
    fixed voxel -> moving voxel) is the affine part, the identity when both images share a grid
    and no affine was estimated; ``disp`` the deformable part on the fixed grid."""

    disp: torch.Tensor  # (1, ndim, *fixed spatial), voxels of the fixed grid
    warped: torch.Tensor  # the moving image registered onto the fixed grid, (*fixed spatial)
    metrics: dict  # as fastwarp.app.metrics.evaluate reports them
    seconds: float  # the registration (affine, network, refinement), not the I/O or the metrics
    affine: np.ndarray | None = None  # with affine: world fixed -> moving point map (4x4, mm)
    voxel_matrix: np.ndarray | None = None  # None: the identity (same grid, no affine)
    stages: dict[str, float] = field(default_factory=dict)  # seconds per stage
    velocity: torch.Tensor | None = None  # diffeomorphic: disp = exp(velocity) (full resolution, voxels)
    steps: int = 7  # the scaling-and-squaring steps of that exponential

    def inverse(self) -> tuple[torch.Tensor, dict]:
        """The inverse of the deformable part, ``(1, ndim, *fixed spatial)`` in voxels of the fixed
        grid (``p + w(p)`` undoes ``p + disp(p)``), and how inverse it is: ``exp(-velocity)`` for a
        diffeomorphic registration, else the fixed-point inversion
        (:func:`~fastwarp.app.inverse.invert_displacement`). The dict holds ``method``, the
        residual ``|disp(p) + w(p + disp(p))|`` (phi^-1(phi(p)) - p; ``residual_mean``,
        ``residual_max``) over the voxels whose image lies in the grid, and the other way round,
        ``|w(p) + disp(p + w(p))|`` (``forward_residual_mean``, ``forward_residual_max``), in voxels."""
        from .inverse import inverse_consistency, inverse_of_velocity, invert_displacement

        if self.velocity is not None:
            with torch.no_grad():
                w = inverse_of_velocity(self.velocity.float(), self.steps)
            info = {"method": "velocity"}
        else:
            w, fp = invert_displacement(self.disp)
            info = {"method": "fixed point", "iterations": fp["iterations"]}
        ic, fwd = inverse_consistency(self.disp.float(), w), inverse_consistency(w, self.disp.float())
        info.update(residual_mean=ic["mean"], residual_max=ic["max"], forward_residual_mean=fwd["mean"],
                    forward_residual_max=fwd["max"])
        return w, info

    def coords(self) -> torch.Tensor:
        """The moving voxel sampled at each fixed voxel, ``(1, ndim, *fixed spatial)``."""
        nd = self.disp.shape[1]
        base = _voxel_grid(self.disp.shape[2:], self.disp.device) + self.disp
        if self.voxel_matrix is None:
            return base
        V = torch.as_tensor(self.voxel_matrix, dtype=base.dtype, device=base.device)
        return torch.einsum("ij,nj...->ni...", V[:nd, :nd], base) + V[:nd, nd].view(1, nd, *([1] * nd))

    def apply(self, image, mode: str = "linear") -> torch.Tensor:
        """Any image on the moving grid (``(*spatial)``, e.g. the raw intensities or an integer
        label map with ``mode="nearest"``) resampled through the registration: ``(*fixed spatial)``."""
        image = torch.as_tensor(image)
        if self.voxel_matrix is None:
            return warp(image[None, None], self.disp.to(image.device), mode=mode)[0, 0]
        from .affine import resample

        return resample(image, self.coords(), mode=mode)


def _voxel_grid(spatial, device) -> torch.Tensor:
    from .fields import voxel_grid

    return voxel_grid(spatial, device, torch.float32)[None]


def _voxel_matrix(moving_affine, fixed_affine, world: np.ndarray | None, nd: int) -> np.ndarray:
    """Fixed voxel -> moving voxel, homogeneous ``(nd+1, nd+1)``, through the NIfTI affines (voxel
    -> world, mm) and the world map ``world`` (fixed -> moving point; None: the identity)."""
    Am = np.eye(4) if moving_affine is None else np.asarray(moving_affine, dtype=np.float64)
    Af = np.eye(4) if fixed_affine is None else np.asarray(fixed_affine, dtype=np.float64)
    W = np.eye(4) if world is None else np.asarray(world, dtype=np.float64)
    V = np.linalg.inv(Am) @ W @ Af
    if nd == 2:
        V = V[np.ix_([0, 1, 3], [0, 1, 3])]
    return V


def register_pair(
    moving,
    fixed,
    *,
    model: RegUNet | None = None,
    downsample: int = 1,
    refine: RefineConfig | None = None,
    affine=None,
    moving_affine: np.ndarray | None = None,
    fixed_affine: np.ndarray | None = None,
    moving_labels=None,
    fixed_labels=None,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> PairResult:
    """Register ``moving`` to ``fixed``: optionally an affine first (``affine``, an
    :class:`~fastwarp.app.affine.AffineConfig`), then the network's prediction (``model``), then
    the instance optimization (``refine``, a :class:`~fastwarp.app.refine.RefineConfig`) starting
    from it (or from the identity). Any of the three may be left out, not all.

    ``moving``, ``fixed``: ``(*spatial)`` intensities normalized alike (e.g.
    :func:`~fastwarp.app.data.normalize_intensity`), tensors or arrays. Their grids may differ
    when ``moving_affine`` and ``fixed_affine`` (NIfTI voxel -> world, mm) say how they lie in the
    world; the moving image is then first resampled onto the fixed grid. ``moving_labels`` /
    ``fixed_labels``: integer label maps on those grids, for Dice."""
    if model is None and refine is None and affine is None:
        raise ValueError("register_pair: nothing to do; give a model, refine or affine")
    device = torch.device(device)
    moving, fixed = _as_image(moving), _as_image(fixed)
    nd = fixed.dim()
    if nd not in (2, 3) or moving.dim() != nd:
        raise ValueError(f"register_pair: moving {tuple(moving.shape)} and fixed {tuple(fixed.shape)} must both be 2-D or 3-D images")
    same_grid = moving.shape == fixed.shape and (
        moving_affine is None or fixed_affine is None or np.allclose(moving_affine, fixed_affine, atol=1e-6))
    stages = {}
    t0 = time.perf_counter()
    world = None
    if affine is not None:
        from .affine import affine_register

        world = np.asarray(affine_register(moving, fixed, moving_affine, fixed_affine, affine, progress=progress).matrix,
                           dtype=np.float64)
        stages["affine"] = time.perf_counter() - t0
    V = None if (same_grid and world is None) else _voxel_matrix(moving_affine, fixed_affine, world, nd)
    zero = torch.zeros(1, nd, *fixed.shape, device=device)
    start = PairResult(zero, fixed, {}, 0.0, world, V)  # the affine part alone
    aligned = start.apply(moving.to(device)) if V is not None else moving.to(device)
    disp, velocity = _deformable(aligned, fixed, model, downsample, refine, device, progress, stages,
                                 moving=moving.to(device), voxel_matrix=V)
    result = PairResult(disp, fixed, {}, time.perf_counter() - t0, world, V, stages, velocity,
                        refine.steps if refine is not None else 7)
    result.warped = result.apply(moving.to(device))
    before = PairResult(zero, fixed, {}, 0.0, None, None if same_grid else _voxel_matrix(moving_affine, fixed_affine, None, nd))
    result.metrics = _pair_metrics(moving, fixed, aligned, result, before, start, moving_labels, fixed_labels)
    return result


def _as_image(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float32) if not isinstance(x, torch.Tensor) else x).float()


def _deformable(aligned, fixed, model, downsample, refine, device, progress, stages, moving=None,
                voxel_matrix=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The deformable part on the fixed grid: the network's prediction (from ``aligned``, the
    moving image resampled onto the fixed grid), then the refinement from it (or from the
    identity), which samples ``moving`` on its own grid through ``voxel_matrix`` when there is
    one (one interpolation per step: Note [Composed sampling]); each stage's seconds into
    ``stages``, timed to its end on a GPU. Returns the displacement and, diffeomorphic, the
    velocity whose exponential it is (else None)."""
    disp = torch.zeros(1, fixed.dim(), *fixed.shape, device=device)
    velocity = None
    if model is not None:
        t = time.perf_counter()
        disp = predict_displacement(model, aligned.cpu().numpy(), fixed.numpy(), device, downsample).to(device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        stages["network"] = time.perf_counter() - t
    if refine is not None:
        t = time.perf_counter()
        composed = voxel_matrix is not None and moving is not None
        disp, velocity = refine_field(moving[None, None] if composed else aligned, fixed.to(device),
                                      None if model is None else disp, refine, progress,
                                      voxel_matrix=voxel_matrix if composed else None, return_velocity=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # (the kernels run asynchronously: time them done)
        stages["refine"] = time.perf_counter() - t
    return disp, velocity


def _pair_metrics(moving, fixed, aligned, result, before, start, moving_labels, fixed_labels) -> dict:
    """:func:`~fastwarp.app.metrics.compare` of before (the grids' own alignment) and after, and
    with an affine, of the affine part alone (``ncc_affine``, ``mean_dice_affine``)."""
    lab = {}
    if moving_labels is not None and fixed_labels is not None:
        ml = torch.as_tensor(np.asarray(moving_labels) if not isinstance(moving_labels, torch.Tensor) else moving_labels)
        lab = dict(labels_before=before.apply(ml, "nearest")[None, None].cpu(),
                   labels_after=result.apply(ml, "nearest")[None, None].cpu(),
                   fixed_labels=torch.as_tensor(np.asarray(fixed_labels))[None, None])
    unregistered = before.apply(moving)[None, None].cpu()
    metrics = compare(unregistered, result.warped[None, None].cpu(), fixed[None, None], result.disp.cpu(), **lab)
    if result.affine is not None:
        zero = torch.zeros_like(result.disp).cpu()
        aff = compare(unregistered, aligned[None, None].cpu(), fixed[None, None], zero,
                      **({} if not lab else dict(lab, labels_after=start.apply(ml, "nearest")[None, None].cpu())))
        metrics["ncc_affine"] = aff["ncc_after"]
        if "mean_dice_after" in aff:
            metrics["mean_dice_affine"] = aff["mean_dice_after"]
    return metrics


def refine_config(config: RegisterConfig, voxel_mm: float = 2.0) -> RefineConfig:
    """The refinement that ``fastwarp register --refine [STEPS]`` runs on images of ``voxel_mm``
    voxels: the measured defaults (:func:`~fastwarp.app.refine.refine_defaults`), or STEPS at
    every level."""
    return refine_defaults(voxel_mm, similarity=config.similarity, diffeomorphic=config.diffeomorphic,
                           iterations=config.refine or None, smooth=config.smooth, bending=config.bending)


def register_files(config: RegisterConfig, cache: dict | None = None) -> dict:
    """Register as ``config`` says; returns the metrics, ``"outputs"`` the files written. Every
    file is read once, and everything is read and checked (the output paths included) before
    any work is done or anything is written. ``cache`` (a dict kept between calls: the cohort
    of :mod:`fastwarp.app.cohort`) keeps the loaded model and fixed images for the next call."""
    _check_output_paths(config)
    device = resolve_device(config.device)
    model, downsample, moving, fixed = _load_inputs(config, device, {} if cache is None else cache)
    nd = fixed.image.ndim
    voxel = float(np.min(np.linalg.norm(np.asarray(fixed.affine, dtype=np.float64)[:nd, :nd], axis=0)))
    voxel = voxel if voxel > 0 else 2.0
    result = register_pair(
        normalize_intensity(moving.image), normalize_intensity(fixed.image), model=model, downsample=downsample,
        refine=None if config.refine is None else refine_config(config, voxel), affine=_affine_config(config, voxel),
        moving_affine=moving.affine, fixed_affine=fixed.affine, moving_labels=moving.labels,
        fixed_labels=fixed.labels, device=device, progress=not config.quiet)
    metrics = result.metrics
    metrics["seconds"] = result.seconds
    metrics["stages"] = result.stages
    metrics["outputs"] = _write_outputs(config, result, moving, fixed, device, metrics)
    if result.affine is not None:
        metrics["affine"] = result.affine.tolist()
    if config.json:
        metrics["outputs"].append(config.json)
        with replacing(config.json) as tmp, open(tmp, "w") as fh:
            json.dump(metrics, fh, indent=1)
    return metrics


def _check_output_paths(config: RegisterConfig) -> None:
    """Every output is a file path whose folder exists and is writable, or can be made: checked
    before the work, so that a bad path does not fail it at the end."""
    for option, path in config.outputs.items():
        if os.path.isdir(path):
            raise ValueError(f"--{option}: {path} is a directory; give a file name")
        folder = os.path.dirname(os.path.abspath(path))
        existing = folder
        while not os.path.exists(existing):
            existing = os.path.dirname(existing)
        if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
            raise ValueError(f"--{option}: cannot write {path} ({existing} is not a writable folder)")


def _load_inputs(config: RegisterConfig, device, cache: dict):
    """The network (with its training resolution's downsampling) and the two volumes, as stored,
    checked against each other; the network and the fixed volume from ``cache`` when it has
    them (read only), and into it."""
    model, downsample = None, 1
    if config.model is not None:
        key = ("model", config.model, str(device))
        if key not in cache:
            ckpt = load_checkpoint(config.model)
            cache[key] = (model_from_checkpoint(ckpt).to(device), int(ckpt.get("args", {}).get("downsample", 1) or 1))
        model, downsample = cache[key]
    moving = load_volume(config.moving, config.labels, normalize=False)  # intensities as stored
    key = ("fixed", config.fixed, config.fixed_labels)
    if key not in cache:
        cache[key] = load_volume(config.fixed, config.fixed_labels, normalize=False)
    fixed = cache[key]
    nd = fixed.image.ndim
    if moving.image.ndim != nd:
        raise ValueError(f"moving {config.moving} is {moving.image.ndim}-D but fixed {config.fixed} is {nd}-D")
    if model is not None:
        if nd < model.ndim:  # a 2-D model registers volumes slice by slice; a 3-D one needs volumes
            raise CheckpointError(f"--model: {config.model} is a {model.ndim}-D model, but {config.fixed} is a "
                                  f"{nd}-D image")
        multiple = model.multiple * downsample
        if any(s < multiple // 2 for s in fixed.shape[:model.ndim]):
            raise ValueError(f"fixed {config.fixed} of shape {fixed.shape} is too small for this model "
                             f"(each side >= {multiple // 2})")
    if not config.affine and not _overlap(moving, fixed):
        raise ValueError(f"moving {config.moving} and fixed {config.fixed} do not overlap in the world (their NIfTI "
                         "affines place them apart): give --affine, which starts from their centres of mass")
    return model, downsample, moving, fixed


def _affine_config(config: RegisterConfig, voxel_mm: float):
    return affine_defaults(voxel_mm, config.similarity) if config.affine else None


def affine_defaults(voxel_mm: float, similarity: str = "ncc"):
    """The affine registration that ``--affine`` runs on images of ``voxel_mm`` voxels."""
    from .affine import AffineConfig

    # The affine's finest level is ~2 mm whatever the voxels (finer costs time and gains
    # nothing measurable: 1 mm images at (4, 2, 1) took 12.8 s, at (8, 4, 2) 1.5 s and agreed
    # better with the 2 mm result).
    base = max(1, round(2.0 / voxel_mm))
    return AffineConfig(levels=(4 * base, 2 * base, base), similarity=similarity)


def _write_outputs(config: RegisterConfig, result: PairResult, moving: Volume, fixed: Volume, device,
                   metrics: dict) -> list[str]:
    """The warped image (in the moving image's units), the field, the warped labels (in their
    own dtype), the transforms (ITK/ANTs files; with ``config.inverse`` their inverses, the
    inversion's residual into ``metrics``) and the figure, on the fixed grid; the paths written."""
    nd = fixed.image.ndim
    warped = result.apply(torch.from_numpy(moving.image).to(device)).cpu()
    outputs = [save_nifti(config.output, warped, fixed.affine, fixed.header, np.float32)]
    disp = result.disp.cpu()
    if config.flow:
        flow = disp[0].movedim(0, -1)  # (X, Y, Z, ndim): NIfTI keeps the vector last
        outputs.append(save_nifti(config.flow, flow, fixed.affine, None, np.float32))
    if moving.labels is not None:
        dtype = moving.labels.dtype
        warped_labels = result.apply(torch.from_numpy(moving.labels), mode="nearest").cpu().numpy().astype(dtype)
        outputs.append(save_nifti(config.warped_labels, warped_labels, fixed.affine, None, dtype))
    from .transforms import save_displacement_field, save_matrix

    if result.affine is not None:
        outputs.append(save_matrix(config.matrix_output, result.affine))
        if config.inverse_matrix_output:
            outputs.append(save_matrix(config.inverse_matrix_output, np.linalg.inv(result.affine)))
    if config.warp_output:
        outputs.append(save_displacement_field(config.warp_output, disp, fixed.affine))
        if config.inverse_warp_output:
            inv, info = result.inverse()
            metrics["inverse"] = info
            outputs.append(save_displacement_field(config.inverse_warp_output, inv.cpu(), fixed.affine))
    if config.figure:
        from .figures import registration_figure

        before = PairResult(torch.zeros_like(disp), result.warped, {}, 0.0, None,
                            None if result.voxel_matrix is None else _voxel_matrix(moving.affine, fixed.affine, None, nd))
        moving_image = before.apply(torch.from_numpy(normalize_intensity(moving.image))).cpu().numpy()
        stages = " + ".join(result.stages) or "registration"
        outputs.append(registration_figure(normalize_intensity(fixed.image), moving_image,
                                           result.warped.cpu().numpy(), disp, config.figure,
                                           title=f"{os.path.basename(config.moving)} -> "
                                                 f"{os.path.basename(config.fixed)} ({stages})"))
    return outputs


def _overlap(moving: Volume, fixed: Volume) -> bool:
    """Whether the two images' world bounding boxes (voxel centres) intersect."""
    def box(vol):
        shape = vol.image.shape
        corners = np.array(np.meshgrid(*[[0, s - 1] for s in shape], indexing="ij")).reshape(len(shape), -1)
        A = np.asarray(vol.affine, dtype=np.float64)
        if len(shape) == 2:
            A = A[np.ix_([0, 1, 3], [0, 1, 3])]
        world = A[:-1, :-1] @ corners + A[:-1, -1:]
        return world.min(axis=1), world.max(axis=1)

    (lo_m, hi_m), (lo_f, hi_f) = box(moving), box(fixed)
    return bool(np.all(lo_m <= hi_f + 1e-6) and np.all(lo_f <= hi_m + 1e-6))


def format_metrics(ev: dict) -> str:
    """The report of :func:`register_files`' metrics. NCC is the mean windowed NCC (window 9)
    over every voxel of the fixed grid, background included: a window of flat background scores
    0, so even an image against itself scores below 1 (the embedded MNI152, about half)."""
    lines = [f"  NCC   {ev['ncc_before']:.4f} -> {ev['ncc_after']:.4f}   (window 9, every voxel; flat background scores 0)",
             f"  MSE   {ev['mse_before']:.5f} -> {ev['mse_after']:.5f}"]
    if "mean_dice_before" in ev:
        per = ", ".join(f"{k}: {ev['dice_before'][k]:.3f} -> {ev['dice_after'].get(k, float('nan')):.3f}" for k in ev["dice_before"])
        lines.append(f"  Dice  {ev['mean_dice_before']:.4f} -> {ev['mean_dice_after']:.4f}   (per label {per})")
        if "mean_dice_affine" in ev:
            lines.append(f"        {ev['mean_dice_affine']:.4f} after the affine alone")
    lines.append(f"  folding (det J <= 0): {100 * ev['folding_fraction']:.4f}% of voxels; "
                 f"det J in [{ev['jacobian_min']:.3f}, {ev['jacobian_max']:.3f}]")
    if "inverse" in ev:
        inv = ev["inverse"]
        lines.append(f"  inverse ({inv['method']}): |phi^-1(phi(x)) - x| mean {inv['residual_mean']:.4f}, "
                     f"max {inv['residual_max']:.3f}; |phi(phi^-1(x)) - x| mean {inv['forward_residual_mean']:.4f}, "
                     f"max {inv['forward_residual_max']:.3f} voxels")
    if "seconds" in ev:
        stages = ", ".join(f"{k} {v:.2f} s" for k, v in ev.get("stages", {}).items())
        lines.append(f"  registration took {ev['seconds']:.2f} s" + (f" ({stages})" if stages else ""))
    return "\n".join(lines)
