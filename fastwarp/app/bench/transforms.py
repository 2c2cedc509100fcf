"""The transforms' goals in one run (issue 22): fastwarp's transform files read by ANTs and ANTs'
read by fastwarp, inverse consistency, and ``fastwarp apply`` against ``ants.apply_transforms``.

    python -m fastwarp.app.bench.transforms --resolution 2 1 --json t.json --markdown t.md

For each resolution and direction of the embedded pair (intensities in [0, 1], tissue labels):

- ``fastwarp register --affine --refine --diffeomorphic --inverse``; then antspyx's
  ``ants.apply_transforms`` with its files ``[PREFIX_warp.nii.gz, PREFIX_affine.txt]`` against
  fastwarp's own warped image (largest difference over the voxels whose source point lies inside
  the moving image) and warped labels (nearest, identical voxels);
- ANTs SyN (``type_of_transform="SyN"``, antspyx's defaults) on the same pair; ``fastwarp``'s
  :func:`~fastwarp.app.apply.apply_transforms` with ANTs' files against ANTs' own warped image and
  labels;
- the inverse: ``|phi^-1(phi(x)) - x|`` in voxels inside the brain (fixed labels > 0), from the
  written files, diffeomorphic (the velocity integrated backwards; at the defaults, with
  ``--smooth 1``, and with ``--smooth 0.3 --bending 1``) and not (the fixed point);
- the time of applying the affine and the field to the moving image, fastwarp against antspyx,
  interleaved, median of ``--repeats``: in memory (the transforms read from their files by both,
  the field gzipped as written, and again uncompressed) and file to file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

import numpy as np
import torch

__all__ = ["run", "main"]


def _write(path, array, affine):
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.asarray(array), affine), path)
    return path


def _inside(ts, shape, affine, moving_shape):
    from ..transforms import grid_points, load_transform, transform_points

    pts = transform_points([load_transform(t) for t in ts], grid_points(shape, affine), grid=(shape, affine)).numpy()
    Ai = np.linalg.inv(affine)
    idx = np.einsum("ij,j...->i...", Ai[:3, :3], pts) + Ai[:3, 3].reshape(3, 1, 1, 1)
    return np.all((idx >= 0) & (idx <= np.array(moving_shape).reshape(3, 1, 1, 1) - 1), axis=0)


def _case(pair, tmp, repeats):
    import ants
    import nibabel as nib

    from ..apply import apply_files, apply_transforms
    from ..config import RegisterConfig
    from ..inverse import inverse_consistency
    from ..register import register_files
    from ..transforms import load_displacement_field, world_to_voxel_displacement

    A, shape = pair.affine, pair.fixed.shape
    fixed = _write(os.path.join(tmp, "fixed.nii.gz"), pair.fixed.astype(np.float32), A)
    moving = _write(os.path.join(tmp, "moving.nii.gz"), pair.moving.astype(np.float32), A)
    mlab = _write(os.path.join(tmp, "moving_labels.nii.gz"), pair.moving_labels.astype(np.int16), A)
    flab = _write(os.path.join(tmp, "fixed_labels.nii.gz"), pair.fixed_labels.astype(np.int16), A)
    row = dict(direction=pair.direction, resolution=pair.resolution, shape=list(shape))

    prefix = os.path.join(tmp, "fw")
    out = os.path.join(tmp, "fw_warped.nii.gz")
    t0 = time.perf_counter()
    metrics = register_files(RegisterConfig(moving, fixed, output=out, labels=mlab, fixed_labels=flab, affine=True,
                                            refine=0, diffeomorphic=True, inverse=True, transform=prefix,
                                            device="cpu", quiet=True))
    row["fastwarp_register_seconds"] = time.perf_counter() - t0
    row["fastwarp_dice"] = metrics["mean_dice_after"]
    ts = [prefix + "_warp.nii.gz", prefix + "_affine.txt"]
    f_img, m_img = ants.image_read(fixed), ants.image_read(moving)
    inside = _inside(ts, shape, A, pair.moving.shape)
    ours = np.asarray(nib.load(out).dataobj)
    theirs = ants.apply_transforms(f_img, m_img, ts, interpolator="linear").numpy()
    row["ants_reads_ours_max_abs"] = float(np.abs(ours - theirs)[inside].max())
    row["ants_reads_ours_inside"] = float(inside.mean())
    ours_lab = np.asarray(nib.load(os.path.join(tmp, "fw_warped_labels.nii.gz")).dataobj)
    theirs_lab = ants.apply_transforms(f_img, ants.image_read(mlab), ts, interpolator="nearestNeighbor").numpy()
    row["ants_reads_ours_labels_identical"] = float(np.mean(ours_lab == np.round(theirs_lab)))

    # the inverse, inside the brain, from the written files
    brain = torch.from_numpy(pair.fixed_labels > 0)
    u = world_to_voxel_displacement(load_displacement_field(ts[0]).displacement, A)
    w = world_to_voxel_displacement(load_displacement_field(prefix + "_inverse_warp.nii.gz").displacement, A)
    row["inverse_diffeomorphic"] = inverse_consistency(u, w, brain)
    row["inverse_diffeomorphic_forward"] = inverse_consistency(w, u, brain)
    for name, options in (("fixed_point", dict(diffeomorphic=False)), ("smooth1", dict(diffeomorphic=True, smooth=1.0)),
                          ("bending", dict(diffeomorphic=True, smooth=0.3, bending=1.0))):
        p2 = os.path.join(tmp, name)
        t0 = time.perf_counter()
        m2 = register_files(RegisterConfig(moving, fixed, output=p2 + ".nii.gz", labels=mlab, fixed_labels=flab,
                                           affine=True, refine=0, inverse=True, transform=p2, device="cpu",
                                           quiet=True, **options))
        row[f"{name}_seconds"] = time.perf_counter() - t0
        row[f"{name}_dice"] = m2["mean_dice_after"]
        u2 = world_to_voxel_displacement(load_displacement_field(p2 + "_warp.nii.gz").displacement, A)
        w2 = world_to_voxel_displacement(load_displacement_field(p2 + "_inverse_warp.nii.gz").displacement, A)
        row[f"inverse_{name}"] = inverse_consistency(u2, w2, brain)
        row[f"inverse_{name}_forward"] = inverse_consistency(w2, u2, brain)

    # ANTs SyN's own files, applied by fastwarp
    t0 = time.perf_counter()
    reg = ants.registration(f_img, m_img, type_of_transform="SyN", outprefix=os.path.join(tmp, "ants_"))
    row["ants_syn_seconds"] = time.perf_counter() - t0
    ats = reg["fwdtransforms"]
    inside = _inside(ats, shape, A, pair.moving.shape)
    ours = apply_transforms(pair.moving.astype(np.float32), A, shape, A, ats).numpy()
    theirs = ants.apply_transforms(f_img, m_img, ats, interpolator="linear").numpy()
    row["ours_reads_ants_max_abs"] = float(np.abs(ours - theirs)[inside].max())
    ours_lab = apply_transforms(pair.moving_labels.astype(np.int16), A, shape, A, ats, "nearest").numpy()
    theirs_lab = ants.apply_transforms(f_img, ants.image_read(mlab), ats, interpolator="nearestNeighbor").numpy()
    row["ours_reads_ants_labels_identical"] = float(np.mean(ours_lab == np.round(theirs_lab)))

    # speed: the affine and the field applied to the moving image
    image = pair.moving.astype(np.float32)
    plain = os.path.join(tmp, "fw_warp.nii")  # the same field uncompressed: reading it costs neither side much
    nib.save(nib.load(ts[0]), plain)
    ts_plain = [plain, ts[1]]

    def ants_files():
        res = ants.apply_transforms(ants.image_read(fixed), ants.image_read(moving), ts, interpolator="linear")
        ants.image_write(res, os.path.join(tmp, "ants_applied.nii.gz"))

    calls = {  # interleaved, in this order, each round
        "fastwarp_nii": lambda: apply_transforms(image, A, shape, A, ts_plain),
        "ants_nii": lambda: ants.apply_transforms(f_img, m_img, ts_plain, interpolator="linear"),
        "fastwarp": lambda: apply_transforms(image, A, shape, A, ts),
        "ants": lambda: ants.apply_transforms(f_img, m_img, ts, interpolator="linear"),
        "fastwarp_files": lambda: apply_files([moving], fixed, ts, [os.path.join(tmp, "applied.nii.gz")]),
        "ants_files": ants_files,
    }
    times = {key: [] for key in calls}
    for _ in range(repeats):
        for key, call in calls.items():
            t0 = time.perf_counter()
            call()
            times[key].append(time.perf_counter() - t0)
    for key, values in times.items():
        row[f"apply_seconds_{key}"] = statistics.median(values)
    row["apply_speedup"] = row["apply_seconds_ants"] / row["apply_seconds_fastwarp"]
    row["apply_speedup_files"] = row["apply_seconds_ants_files"] / row["apply_seconds_fastwarp_files"]
    row["apply_speedup_nii"] = row["apply_seconds_ants_nii"] / row["apply_seconds_fastwarp_nii"]
    return row


def run(resolutions=(2,), directions=None, threads: int = 2, repeats: int = 5) -> dict:
    from ..data.subjects import EMBEDDED_DIRECTIONS, embedded_pairs

    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(threads)
    torch.set_num_threads(threads)
    rows = []
    for res in resolutions:
        dirs = directions or (tuple(EMBEDDED_DIRECTIONS) if float(res) == 2 else ("colin27-to-mni152",))
        for pair in embedded_pairs((res,), dirs):
            with tempfile.TemporaryDirectory(prefix="fastwarp-transforms-") as tmp:
                rows.append(_case(pair, tmp, repeats))
                print(json.dumps(rows[-1]), flush=True)
    import ants

    meta = dict(cpu=platform.processor() or platform.machine(), threads=threads, repeats=repeats,
                torch=torch.__version__, antspyx=getattr(ants, "__version__", "?"))
    return dict(meta=meta, rows=rows)


def markdown(result: dict) -> str:
    inv = ["| pair | inverse | mean Dice | |phi^-1(phi(x)) - x|, brain: mean / max voxel | |phi(phi^-1(x)) - x|: "
           "mean / max |", "|---|---|---|---|---|"]
    for r in result["rows"]:
        for name, label, dice in (("diffeomorphic", "diffeomorphic, exp(-v)", "fastwarp_dice"),
                                  ("smooth1", "diffeomorphic --smooth 1, exp(-v)", "smooth1_dice"),
                                  ("bending", "diffeomorphic --smooth 0.3 --bending 1, exp(-v)", "bending_dice"),
                                  ("fixed_point", "not diffeomorphic, fixed point", "fixed_point_dice")):
            if f"inverse_{name}" not in r:  # (a file of an earlier run)
                continue
            a, b = r[f"inverse_{name}"], r[f"inverse_{name}_forward"]
            inv.append(f"| {r['direction']} {r['resolution']:g} mm | {label} | {r[dice]:.4f} | {a['mean']:.4f} / "
                       f"{a['max']:.3f} | {b['mean']:.4f} / {b['max']:.3f} |")
    lines = ["| pair | ANTs applies fastwarp's files: max abs diff (inside) | labels identical | fastwarp applies "
             "ANTs SyN's: max abs diff | labels identical | apply (.nii.gz field): fastwarp s | ants s | speed-up | file to file: "
             "fastwarp s | ants s | speed-up | apply (.nii field): fastwarp s | ants s | speed-up |", "|" + "---|" * 14]
    for r in result["rows"]:
        lines.append(
            f"| {r['direction']} {r['resolution']:g} mm | {r['ants_reads_ours_max_abs']:.2e} "
            f"({100 * r['ants_reads_ours_inside']:.0f} % of voxels) | {100 * r['ants_reads_ours_labels_identical']:.3f} % "
            f"| {r['ours_reads_ants_max_abs']:.2e} | {100 * r['ours_reads_ants_labels_identical']:.3f} % | "
            f"{r['apply_seconds_fastwarp']:.3f} | {r['apply_seconds_ants']:.3f} | {r['apply_speedup']:.1f}x | "
            f"{r['apply_seconds_fastwarp_files']:.3f} | {r['apply_seconds_ants_files']:.3f} | "
            f"{r['apply_speedup_files']:.1f}x | {r['apply_seconds_fastwarp_nii']:.3f} | {r['apply_seconds_ants_nii']:.3f} | "
            f"{r['apply_speedup_nii']:.1f}x |")
    lines += [""] + inv
    m = result["meta"]
    lines.append(f"\n{m['cpu']}, {m['threads']} threads (torch and ITK), median of {m['repeats']} interleaved runs; "
                 f"torch {m['torch']}, antspyx {m['antspyx']}.")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m fastwarp.app.bench.transforms", description=__doc__.splitlines()[0])
    p.add_argument("--resolution", type=float, nargs="+", default=[2.0], help="mm: 2 (shipped) and/or 1")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json")
    p.add_argument("--markdown")
    args = p.parse_args(argv)
    result = run(args.resolution, threads=args.threads, repeats=args.repeats)
    table = markdown(result)
    print(table)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
