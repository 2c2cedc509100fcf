"""Registration of one pair of NIfTI images with a trained network (``fastwarp register``).

:func:`register_files` writes the warped image (and the displacement field, the warped label
map, the figure, the metrics) on the fixed image's grid, with its affine and header, and returns
NCC / MSE / Dice before and after and the folding fraction (:func:`format_metrics` prints them).
A 2-D model registers 3-D volumes slice by slice (axial slices, the last axis).
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch
import torch.nn.functional as F

from ..warp import warp
from .checkpoints import CheckpointError, load_checkpoint, model_from_checkpoint
from .config import RegisterConfig
from .data import Volume, load_volume, normalize_intensity, save_nifti, to_model_grid
from .metrics import evaluate
from .models import RegUNet
from .runtime import resolve_device

__all__ = ["register_files", "predict_displacement", "format_metrics"]


def predict_displacement(model: RegUNet, moving: np.ndarray, fixed: np.ndarray, device: torch.device,
                         downsample: int = 1) -> torch.Tensor:
    """The model's displacement (1, ndim, *spatial) for two normalized images of one shape,
    at their full resolution: the images are reduced by ``downsample`` (as in training) and
    padded to the model's multiple; the field is cropped and brought back to full size.

    A 2-D model registers a 3-D volume slice by slice (axial slices, the last axis): the
    result is a 3-D field with no through-plane component."""
    if model.ndim == 2 and moving.ndim == 3:
        per_slice = [predict_displacement(model, moving[:, :, k], fixed[:, :, k], device, downsample)
                     for k in range(moving.shape[2])]
        inplane = torch.stack(per_slice, dim=-1)  # (1, 2, X, Y, Z)
        return torch.cat([inplane, torch.zeros_like(inplane[:, :1])], dim=1).contiguous()

    def on_model_grid(image):
        vol, crop = to_model_grid(Volume(image, np.eye(4)), model.multiple, downsample)
        return torch.from_numpy(np.ascontiguousarray(vol.image))[None, None].to(device), crop

    (m, crop), (f, _) = on_model_grid(moving), on_model_grid(fixed)
    model.eval()
    with torch.no_grad():
        _, disp = model(m, f)
    disp = disp[(slice(None), slice(None)) + crop].float()
    if downsample > 1:
        mode = "bilinear" if disp.dim() == 4 else "trilinear"
        size = tuple(s * downsample for s in disp.shape[2:])
        disp = downsample * F.interpolate(disp, size=size, mode=mode, align_corners=False)
        disp = disp[(slice(None), slice(None)) + tuple(slice(0, s) for s in moving.shape)]
    return disp.contiguous()


def register_files(config: RegisterConfig) -> dict:
    """Register as ``config`` says; returns the metrics, ``"outputs"`` the files written. Every
    file is read once, and everything is read and checked before anything is written."""
    device = resolve_device(config.device)
    ckpt = load_checkpoint(config.model)
    model = model_from_checkpoint(ckpt).to(device)
    downsample = int(ckpt.get("args", {}).get("downsample", 1) or 1)
    moving = load_volume(config.moving, config.labels, normalize=False)  # intensities as stored
    fixed = load_volume(config.fixed, config.fixed_labels, normalize=False)
    if moving.shape != fixed.shape:
        raise ValueError(f"moving {config.moving} has shape {moving.shape} but fixed {config.fixed} has {fixed.shape}: "
                         "resample them to one grid (an affine registration) first")
    if fixed.image.ndim < model.ndim:  # a 2-D model registers volumes slice by slice; a 3-D one needs volumes
        raise CheckpointError(f"--model: {config.model} is a {model.ndim}-D model, but {config.fixed} is a "
                              f"{fixed.image.ndim}-D image")
    multiple = model.multiple * downsample
    if any(s < multiple // 2 for s in fixed.shape[:model.ndim]):
        raise ValueError(f"fixed {config.fixed} of shape {fixed.shape} is too small for this model "
                         f"(each side >= {multiple // 2})")

    moving_image, fixed_image = normalize_intensity(moving.image), normalize_intensity(fixed.image)
    disp = predict_displacement(model, moving_image, fixed_image, device, downsample).cpu()
    moving_labels = None if moving.labels is None else torch.from_numpy(moving.labels)[None, None]
    fixed_labels = None if fixed.labels is None else torch.from_numpy(fixed.labels)[None, None]
    metrics = evaluate(torch.from_numpy(moving_image)[None, None], torch.from_numpy(fixed_image)[None, None], disp,
                       moving_labels, fixed_labels)

    warped = warp(torch.from_numpy(moving.image)[None, None], disp)[0, 0]  # in the moving image's units
    outputs = [save_nifti(config.output, warped, fixed.affine, fixed.header, np.float32)]
    if config.flow:
        flow = disp[0].movedim(0, -1)  # (X, Y, Z, ndim): NIfTI keeps the vector last
        outputs.append(save_nifti(config.flow, flow, fixed.affine, None, np.float32))
    if moving_labels is not None:
        warped_labels = warp(moving_labels, disp, mode="nearest")[0, 0].numpy().astype(np.int32)
        outputs.append(save_nifti(config.warped_labels, warped_labels, fixed.affine, None, np.int32))
    if config.figure:
        from .figures import registration_figure

        warped_image = warp(torch.from_numpy(moving_image)[None, None], disp)[0, 0]
        outputs.append(registration_figure(fixed_image, moving_image, warped_image, disp, config.figure,
                                           title=f"{os.path.basename(config.moving)} -> "
                                                 f"{os.path.basename(config.fixed)}"))
    metrics["outputs"] = outputs
    if config.json:
        outputs.append(config.json)
        tmp = config.json + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(metrics, fh, indent=1)
        os.replace(tmp, config.json)
    return metrics


def format_metrics(ev: dict) -> str:
    lines = [f"  NCC   {ev['ncc_before']:.4f} -> {ev['ncc_after']:.4f}",
             f"  MSE   {ev['mse_before']:.5f} -> {ev['mse_after']:.5f}"]
    if "mean_dice_before" in ev:
        per = ", ".join(f"{k}: {ev['dice_before'][k]:.3f} -> {ev['dice_after'].get(k, float('nan')):.3f}" for k in ev["dice_before"])
        lines.append(f"  Dice  {ev['mean_dice_before']:.4f} -> {ev['mean_dice_after']:.4f}   (per label {per})")
    lines.append(f"  folding (det J <= 0): {100 * ev['folding_fraction']:.4f}% of voxels; "
                 f"det J in [{ev['jacobian_min']:.3f}, {ev['jacobian_max']:.3f}]")
    return "\n".join(lines)
