"""The template on a known truth (issue 23), in one run:

    python -m fastwarp.app.bench.template --subjects 16 --iterations 4 --resolution 2 --json t.json

N subjects are the embedded Colin27 brain B (intensities normalized) under N random smooth
diffeomorphisms whose fields v_i have zero mean over the set (``--max-disp``: the velocity's
scale in voxels, :func:`~fastwarp.app.data.augment.random_deformation`), each with a random gamma
and gain: S_i = B(p + v_i(p)) (``--truth forward``, the default), or (``--truth inverse``) B
warped by the inverse of v_i (:func:`~fastwarp.app.inverse.invert_displacement`), so that
S_i(p + v_i(p)) = B(p): then the v_i are what registering S_i to B finds, the fields the
template's update averages, and their zero mean is the update's own criterion (forward fields
have the inverses' mean at B, zero only to first order). The template built from them
(:func:`~fastwarp.app.template.build_template`) should come back to the brain: its NCC
(Pearson's correlation over the grid) with the brain, against the plain mean's, and the wall
time. ``--resolution 1`` uses the 1 mm data when it is there
(``scripts/make_data.py --voxel-mm 1``).
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

__all__ = ["run", "main"]


def run(subjects=16, iterations=4, resolution=2, max_disp=6.0, refine_steps=30, seed=0, figure=None,
        smooth=None, truth="forward") -> dict:
    import fastwarp

    from ..data.augment import random_deformation
    from ..data.nifti import load_volume
    from ..data.subjects import embedded, embedded_1mm
    from ..inverse import invert_displacement
    from ..template import TemplateConfig, _ncc, build_template, template_figure

    if truth not in ("forward", "inverse"):
        raise ValueError(f"truth must be 'forward' or 'inverse', got {truth!r}")
    specs = embedded() if resolution == 2 else embedded_1mm()
    if specs is None:
        raise SystemExit("no 1 mm data: run scripts/make_data.py --fetch --voxel-mm 1")
    vol = load_volume(specs[1].image, None, normalize=True)
    brain = torch.from_numpy(vol.image)
    g = torch.Generator().manual_seed(seed)
    fields = torch.cat([random_deformation(brain.shape, g, max_disp=max_disp, spacing=8.0 / resolution)
                        for _ in range(subjects)])
    fields -= fields.mean(0, keepdim=True)
    size = fields.norm(dim=1)
    images, residual = [], 0.0
    for i in range(subjects):
        gamma = float(torch.empty(()).uniform_(0.8, 1.25, generator=g))
        gain = float(torch.empty(()).uniform_(0.8, 1.2, generator=g))
        field = fields[i:i + 1]
        if truth == "inverse":
            field, info = invert_displacement(field)
            residual = max(residual, info["residual_mean"])
        images.append((fastwarp.warp(brain[None, None], field)[0, 0].clamp_min(0) ** gamma * gain).numpy())
    del fields
    start = time.perf_counter()
    out = build_template(images, [vol.affine] * subjects, TemplateConfig(iterations=iterations, refine_steps=refine_steps,
                                                                                   smooth=smooth))
    seconds = time.perf_counter() - start
    if figure:
        template_figure(out["history"], figure)
    history = [_ncc(h, brain) for h in out["history"]]
    return dict(subjects=subjects, iterations=iterations, resolution_mm=resolution, shape=list(brain.shape),
                max_disp=max_disp, field_mean_voxels=float(size.mean()), field_max_voxels=float(size.max()),
                truth=truth, inverse_residual_mean_voxels=residual if truth == "inverse" else None,
                refine_steps=refine_steps, smooth=smooth, seconds=seconds, ncc_plain_mean=history[0], ncc_template=history[-1],
                ncc_per_iteration=history, per_iteration=[{k: v for k, v in it.items() if k != "ncc"}
                                                          for it in out["iterations"]],
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
    p.add_argument("--truth", choices=("forward", "inverse"), default="forward",
                   help="the subjects B(p + v_i(p)), or B under the inverse of v_i (the update's convention)")
    p.add_argument("--figure")
    p.add_argument("--json")
    args = p.parse_args(argv)
    result = run(args.subjects, args.iterations, args.resolution, args.max_disp, args.refine, figure=args.figure,
                 smooth=args.smooth, truth=args.truth)
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
