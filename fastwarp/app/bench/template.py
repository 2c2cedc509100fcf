"""The template on a known truth (issue 23), in one run:

    python -m fastwarp.app.bench.template --subjects 16 --iterations 4 --resolution 2 --json t.json

N subjects are the embedded Colin27 brain B (intensities normalized) under N random smooth
diffeomorphisms whose fields v_i have zero mean over the set (``--max-disp``: the velocity's
scale in voxels, :func:`~fastwarp.app.data.augment.random_deformation`), each with a random gamma
and gain: S_i = B(p + v_i(p)) (``--truth forward``, the default), or (``--truth inverse``) B
warped by the inverse of v_i (:func:`~fastwarp.app.inverse.invert_displacement`), so that
S_i(p + v_i(p)) = B(p): then the v_i are what registering S_i to B finds, the fields the
template's update averages, and their zero mean is the update's own criterion (forward fields
have the inverses' mean at B, zero only to first order), or (``--truth velocity``) B under
exp(w_i), the velocities w_i of zero mean (the log-Euclidean centre is B; each map stays an
exponential, where subtracting a mean displacement can fold it).
``--nodes``: the velocity's node spacing in mm (8; 32 makes smooth large deformations at a large
``--max-disp``). ``--rotate/--scale/--shift`` compose each subject with a random affine map
too (head position and size, which a real cohort varies most; the maps of mean identity), for
templates built ``--affine``. The template built from them
(:func:`~fastwarp.app.template.build_template`) should come back to the brain: its NCC
(Pearson's correlation over the grid, and over the brain's foreground) with the brain, against
the plain mean's, and the wall time. ``--resolution 1`` uses the 1 mm data when it is there
(``scripts/make_data.py --voxel-mm 1``).
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

__all__ = ["run", "main"]


def run(subjects=16, iterations=4, resolution=2, max_disp=6.0, refine_steps=30, seed=0, figure=None,
        smooth=None, truth="forward", nodes_mm=8.0, diffeomorphic=False, rotate=0.0, scale=0.0, shift=0.0,
        affine=False) -> dict:
    import fastwarp

    from ..data.augment import random_affines, random_deformation, random_velocity
    from ..data.nifti import load_volume
    from ..data.subjects import embedded, embedded_1mm
    from ..inverse import invert_displacement
    from ..metrics import folding_fraction
    from ..template import TemplateConfig, _ncc, build_template, template_figure

    if truth not in ("forward", "inverse", "velocity"):
        raise ValueError(f"truth must be 'forward', 'inverse' or 'velocity', got {truth!r}")
    specs = embedded() if resolution == 2 else embedded_1mm()
    if specs is None:
        raise SystemExit("no 1 mm data: run scripts/make_data.py --fetch --voxel-mm 1")
    vol = load_volume(specs[1].image, None, normalize=True)
    brain = torch.from_numpy(vol.image)
    g = torch.Generator().manual_seed(seed)
    spacing = nodes_mm / resolution
    if truth == "velocity":  # the velocities of zero mean, each subject the exponential of one
        vels = torch.cat([random_velocity(brain.shape, g, max_disp, spacing) for _ in range(subjects)])
        vels -= vels.mean(0, keepdim=True)
        fields = torch.cat([random_deformation(brain.shape, None, velocity=vels[i:i + 1]) for i in range(subjects)])
        del vels
    else:
        fields = torch.cat([random_deformation(brain.shape, g, max_disp=max_disp, spacing=spacing)
                            for _ in range(subjects)])
        fields -= fields.mean(0, keepdim=True)
    size = fields.norm(dim=1)
    maps = random_affines(subjects, brain.shape, g, rotate, scale, shift) if rotate or scale or shift else None
    images, residual, folded = [], 0.0, 0.0
    for i in range(subjects):
        gamma = float(torch.empty(()).uniform_(0.8, 1.25, generator=g))
        gain = float(torch.empty(()).uniform_(0.8, 1.2, generator=g))
        field = fields[i:i + 1]
        folded = max(folded, folding_fraction(field))
        if truth == "inverse":
            field, info = invert_displacement(field)
            residual = max(residual, info["residual_mean"])
        # S_i(p) = B(M_i^-1 (p + v_i(p))): registering S_i to B finds M_i (then the deformation)
        A = None if maps is None else torch.as_tensor(np.linalg.inv(maps[i])[:3], dtype=torch.float32)
        images.append((fastwarp.warp(brain[None, None], field, affine=A)[0, 0].clamp_min(0) ** gamma * gain).numpy())
    del fields
    start = time.perf_counter()
    config = TemplateConfig(iterations=iterations, refine_steps=refine_steps, smooth=smooth, diffeomorphic=diffeomorphic,
                            affine=affine)
    out = build_template(images, [vol.affine] * subjects, config)
    seconds = time.perf_counter() - start
    if figure:
        template_figure(out["history"], figure)
    history = [_ncc(h, brain) for h in out["history"]]
    fg = brain > 0.05 * brain.max()  # Pearson's over the grid is mostly brain against background
    foreground = [_ncc(h[fg], brain[fg]) for h in out["history"]]
    return dict(subjects=subjects, iterations=iterations, resolution_mm=resolution, shape=list(brain.shape),
                max_disp=max_disp, nodes_mm=nodes_mm, diffeomorphic=diffeomorphic, affine=affine,
                rotate_degrees=rotate, scale=scale, shift_voxels=shift,
                truth_folded_fraction_max=folded, field_mean_voxels=float(size.mean()),
                field_max_voxels=float(size.max()),
                truth=truth, inverse_residual_mean_voxels=residual if truth == "inverse" else None,
                refine_steps=refine_steps, smooth=smooth, seconds=seconds, ncc_plain_mean=history[0],
                ncc_template=history[-1],
                ncc_per_iteration=history, ncc_foreground_plain_mean=foreground[0],
                ncc_foreground_template=foreground[-1], ncc_foreground_per_iteration=foreground,
                per_iteration=[{k: v for k, v in it.items() if k != "ncc"} for it in out["iterations"]],
                threads=torch.get_num_threads(), cpu=platform.processor() or platform.machine(),
                torch=torch.__version__, date=time.strftime("%Y-%m-%d"))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--subjects", type=int, default=16)
    p.add_argument("--iterations", type=int, default=4)
    p.add_argument("--resolution", type=int, choices=(1, 2), default=2)
    p.add_argument("--max-disp", type=float, default=6.0)
    p.add_argument("--refine", type=int, default=30)
    p.add_argument("--smooth", type=float, help="the refinement's smoothness weight (default: its measured one)")
    p.add_argument("--truth", choices=("forward", "inverse", "velocity"), default="forward",
                   help="the subjects B(p + v_i(p)), or B under the inverse of v_i (the update's convention), or "
                        "(velocity) B under exp(w_i), the velocities w_i of zero mean")
    p.add_argument("--nodes", type=float, default=8.0,
                   help="the random velocity's node spacing in mm (larger: smoother deformations)")
    p.add_argument("--diffeomorphic", action="store_true", help="the template's registrations diffeomorphic")
    p.add_argument("--rotate", type=float, default=0.0, help="each subject also turned by up to this many degrees "
                   "about each axis (uniform; with --scale and --shift an affine map, the maps of mean identity)")
    p.add_argument("--scale", type=float, default=0.0, help="and scaled by 1 +- this much per axis")
    p.add_argument("--shift", type=float, default=0.0, help="and shifted by up to this many voxels per axis")
    p.add_argument("--affine", action="store_true", help="the template's registrations start with an affine")
    p.add_argument("--figure")
    p.add_argument("--json")
    args = p.parse_args(argv)
    result = run(args.subjects, args.iterations, args.resolution, args.max_disp, args.refine, figure=args.figure,
                 smooth=args.smooth, truth=args.truth, nodes_mm=args.nodes, diffeomorphic=args.diffeomorphic,
                 rotate=args.rotate, scale=args.scale, shift=args.shift, affine=args.affine)
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
