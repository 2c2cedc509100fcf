"""The cohort's overhead (issue 23): ``fastwarp register --list`` over N subjects against the sum of
the per-subject registration times that ``register_pair`` measures (``seconds`` in each
subject's metrics), in one run:

    python -m fastwarp.app.bench.cohort --subjects 20 [--model CKPT] [--refine] [--affine] --json c.json

The subjects are the embedded Colin27 brain (2 mm) under N random smooth diffeomorphisms (about
4 voxels at most) with its labels, each with a random gamma and gain on its intensities,
registered to the embedded MNI152 template with its labels. The ratio is the wall time of the
whole cohort (reading, registering, writing every output, the CSV) over that sum: the goal is
at most 1.3.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import numpy as np
import torch

__all__ = ["make_subjects", "run", "main"]


def make_subjects(folder: str, n: int, seed: int = 0) -> tuple[str, str, str]:
    """N deformed copies of the embedded Colin27 brain in ``folder`` (``subjNN.nii.gz`` with
    ``subjNN_seg.nii.gz``) and their list file; returns (list file, atlas, atlas labels)."""
    import fastwarp

    from ..data.augment import random_deformation
    from ..data.nifti import load_volume, save_nifti
    from ..data.subjects import embedded

    atlas, colin = embedded()
    vol = load_volume(colin.image, colin.labels, normalize=True)
    image = torch.from_numpy(vol.image)[None, None]
    labels = torch.from_numpy(vol.labels.astype(np.int64))[None, None]
    g = torch.Generator().manual_seed(seed)
    lines = []
    for i in range(n):
        disp = random_deformation(vol.image.shape, g, max_disp=4.0, spacing=8.0)
        gamma = float(torch.empty(()).uniform_(0.8, 1.25, generator=g))
        gain = float(torch.empty(()).uniform_(0.8, 1.2, generator=g))
        warped = fastwarp.warp(image, disp)[0, 0].clamp_min(0) ** gamma * gain
        lab = fastwarp.warp(labels, disp, mode="nearest")[0, 0].to(torch.int16)
        name = os.path.join(folder, f"subj{i:02d}")
        save_nifti(name + ".nii.gz", warped, vol.affine, None, np.float32)
        save_nifti(name + "_seg.nii.gz", lab, vol.affine, None, np.int16)
        lines.append(f"subj{i:02d}.nii.gz - subj{i:02d}_seg.nii.gz")
    list_file = os.path.join(folder, "subjects.txt")
    with open(list_file, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    return list_file, atlas.image, atlas.labels


def run(subjects: int = 20, model: str | None = None, refine: bool = True, affine: bool = False,
        folder: str | None = None) -> dict:
    from ..cli import main as cli_main
    from ..cohort import read_pair_list

    with tempfile.TemporaryDirectory() as tmp:
        folder = folder or tmp
        os.makedirs(folder, exist_ok=True)
        os.makedirs(os.path.join(folder, "in"), exist_ok=True)
        list_file, atlas, atlas_labels = make_subjects(os.path.join(folder, "in"), subjects)
        out = os.path.join(folder, "out")
        argv = ["register", "--list", list_file, "--fixed", atlas, "--fixed-labels", atlas_labels, "-o", out,
                "--device", "cpu", "--quiet"]
        argv += (["--model", model] if model else []) + (["--refine"] if refine else []) + (["--affine"] if affine else [])
        start = time.perf_counter()
        rc = cli_main(argv)
        wall = time.perf_counter() - start
        names = [s.name for s in read_pair_list(list_file, atlas)]
        metrics = [json.load(open(os.path.join(out, n + ".json"))) for n in names]
    per_subject = [m["seconds"] for m in metrics]
    return dict(subjects=subjects, exit_status=rc, wall_seconds=wall, sum_register_pair_seconds=sum(per_subject),
                ratio=wall / sum(per_subject), mean_dice_after=float(np.mean([m["mean_dice_after"] for m in metrics])),
                mean_dice_before=float(np.mean([m["mean_dice_before"] for m in metrics])),
                stage_seconds_mean={k: float(np.mean([m["stages"].get(k, 0.0) for m in metrics]))
                                    for k in sorted({k for m in metrics for k in m["stages"]})},
                options=dict(model=bool(model), refine=refine, affine=affine), threads=torch.get_num_threads(),
                cpu=platform.processor() or platform.machine(), torch=torch.__version__, date=time.strftime("%Y-%m-%d"))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--subjects", type=int, default=20)
    p.add_argument("--model")
    p.add_argument("--no-refine", action="store_true")
    p.add_argument("--affine", action="store_true")
    p.add_argument("--json")
    args = p.parse_args(argv)
    result = run(args.subjects, args.model, not args.no_refine, args.affine)
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
