"""`fastwarp register`: register a moving image to a fixed one with a trained model.

Writes the warped image (and the displacement field, the warped label map) as NIfTI files
on the fixed image's grid, with its affine and header, and prints NCC / MSE / Dice before
and after and the folding fraction. A 2-D model registers 3-D volumes slice by slice
(axial slices, the last axis).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import data as fwdata
from .metrics import evaluate
from .training import load_checkpoint, model_from_checkpoint, CheckpointError
from ..warp import warp

__all__ = ["build_parser", "main", "register_files", "predict_displacement"]


def add_register_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("moving", help="moving image (NIfTI)")
    p.add_argument("fixed", help="fixed image (NIfTI), on the same voxel grid as the moving one")
    p.add_argument("--model", "-m", required=True, help="checkpoint written by `fastwarp train`")
    p.add_argument("--output", "-o", required=True, help="warped moving image (.nii or .nii.gz)")
    p.add_argument("--flow", help="also write the displacement field (X, Y, Z, 3) in voxels of the fixed grid")
    p.add_argument("--labels", help="label map of the moving image: warped (nearest) and used for Dice")
    p.add_argument("--fixed-labels", help="label map of the fixed image, for Dice")
    p.add_argument("--labels-output", help="warped label map (default: <output stem>_labels.nii.gz when --labels)")
    p.add_argument("--figure", help="write the registration figure (PNG/PDF/SVG)")
    p.add_argument("--json", help="write the metrics as JSON")
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda")
    return p


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fastwarp register", description=__doc__.strip().splitlines()[0])
    return add_register_arguments(p)


def _labels_output(args) -> str | None:
    if not args.labels:
        return None
    if args.labels_output:
        return args.labels_output
    out = args.output
    for suffix in (".nii.gz", ".nii"):
        if out.endswith(suffix):
            return out[: -len(suffix)] + "_labels" + suffix
    return out + "_labels.nii.gz"


def predict_displacement(model, moving: np.ndarray, fixed: np.ndarray, device: torch.device, downsample: int = 1) -> torch.Tensor:
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
    vm = fwdata.Volume(moving, np.eye(4))
    vf = fwdata.Volume(fixed, np.eye(4))
    small_m, small_f = fwdata.downsample(vm, downsample).image, fwdata.downsample(vf, downsample).image
    pm, crop = fwdata.pad_to_multiple(small_m, model.multiple)
    pf, _ = fwdata.pad_to_multiple(small_f, model.multiple)
    to = lambda a: torch.from_numpy(np.ascontiguousarray(a))[None, None].to(device)  # noqa: E731
    model.eval()
    with torch.no_grad():
        _, disp = model(to(pm), to(pf))
    disp = disp[(slice(None), slice(None)) + crop].float()
    if downsample > 1:
        mode = "bilinear" if disp.dim() == 4 else "trilinear"
        size = tuple(s * downsample for s in disp.shape[2:])
        disp = downsample * F.interpolate(disp, size=size, mode=mode, align_corners=False)
        disp = disp[(slice(None), slice(None)) + tuple(slice(0, s) for s in moving.shape)]
    return disp.contiguous()


def register_files(args) -> dict:
    """Run ``fastwarp register`` with parsed arguments; returns the metrics."""
    # Everything is read and checked before anything is written.
    for name in ("output", "flow", "labels_output"):
        path = getattr(args, name, None) if name != "labels_output" else _labels_output(args)
        if path and not path.endswith((".nii", ".nii.gz")):
            raise ValueError(f"--{name.replace('_', '-')}: {path} must end in .nii or .nii.gz")
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    ckpt = load_checkpoint(args.model)
    model = model_from_checkpoint(ckpt).to(device)
    ndim = model.ndim
    downsample = int(ckpt.get("args", {}).get("downsample", 1) or 1)

    raw_m = fwdata.load_volume(args.moving, normalize=False)
    raw_f = fwdata.load_volume(args.fixed, normalize=False)
    f_img = raw_f
    if raw_m.shape != raw_f.shape:
        raise ValueError(f"moving {args.moving} has shape {raw_m.shape} but fixed {args.fixed} has {raw_f.shape}: "
                         "resample them to one grid (an affine registration) first")
    if raw_f.image.ndim < ndim:  # a 2-D model registers volumes slice by slice; a 3-D one needs volumes
        raise CheckpointError(f"--model: {args.model} is a {ndim}-D model, but {args.fixed} is a {raw_f.image.ndim}-D image")
    moving = fwdata.load_volume(args.moving, args.labels)
    fixed = fwdata.load_volume(args.fixed, args.fixed_labels)
    multiple = model.multiple * downsample
    if any(s < multiple // 2 for s in raw_f.shape[:ndim]):
        raise ValueError(f"fixed {args.fixed} of shape {raw_f.shape} is too small for this model (each side >= {multiple // 2})")

    disp = predict_displacement(model, moving.image, fixed.image, device, downsample).cpu()
    moving_raw = torch.from_numpy(raw_m.image)[None, None]
    warped = warp(moving_raw, disp)[0, 0]
    ml = None if moving.labels is None else torch.from_numpy(moving.labels)[None, None]
    fl = None if fixed.labels is None else torch.from_numpy(fixed.labels)[None, None]
    metrics = evaluate(torch.from_numpy(moving.image)[None, None], torch.from_numpy(fixed.image)[None, None], disp, ml, fl)

    fwdata.save_nifti(args.output, warped, f_img.affine, f_img.header, np.float32)
    outputs = [args.output]
    if args.flow:
        flow = disp[0].movedim(0, -1)  # (X, Y, Z, ndim): NIfTI keeps the vector last
        fwdata.save_nifti(args.flow, flow, f_img.affine, None, np.float32)
        outputs.append(args.flow)
    lab_out = _labels_output(args)
    if ml is not None:
        wl = warp(ml, disp, mode="nearest")[0, 0].numpy().astype(np.int32)
        fwdata.save_nifti(lab_out, wl, f_img.affine, None, np.int32)
        outputs.append(lab_out)
    if args.figure:
        from .figures import registration_figure

        mw = warp(torch.from_numpy(moving.image)[None, None], disp)
        registration_figure(fixed.image, moving.image, mw[0, 0], disp, args.figure,
                            title=f"{os.path.basename(args.moving)} -> {os.path.basename(args.fixed)}")
        outputs.append(args.figure)
    metrics["outputs"] = outputs
    if args.json:
        outputs.append(args.json)
        tmp = args.json + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(metrics, fh, indent=1)
        os.replace(tmp, args.json)
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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    ev = register_files(args)
    print(f"fastwarp register: {args.moving} -> {args.fixed}")
    print(format_metrics(ev))
    print("wrote " + ", ".join(ev["outputs"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
