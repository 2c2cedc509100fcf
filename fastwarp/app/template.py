"""An unbiased group-wise template (issue 23), in the manner of ANTs' template construction:

    fastwarp template --list subjects.txt -o DIR [--iterations K] [--initial IMAGE] [--affine]
                      [--diffeomorphic] [--similarity ncc|mse|mi] [--refine STEPS]

The template starts as the plain mean of the subjects (intensities normalized; subjects on
other grids resampled onto the first one's, or onto ``--initial``'s grid, by their NIfTI
affines), or as ``--initial``. Each iteration

1. registers every subject to the current template (``--affine`` first, then fastwarp's
   refinement: :func:`~fastwarp.app.register.register_pair`);
2. averages the warped subjects: T';
3. moves T' by the inverse of the mean deformation, so that the template sits at the centre of
   the subjects and not nearer any one of them (Note [Unbiased template update]).

Under ``torchrun`` the subjects are split over the ranks and the averages are all-reduces of
exact integer sums (Note [Split-independent averages]): the template is the same, bit for bit,
however the subjects are split. Written to ``DIR``: ``template_KK.nii.gz`` after each iteration
(``template_00``: the start), ``template.nii.gz`` (the last), ``template_iterations.png`` (the
mid-slices over the iterations), ``template.json`` (per iteration: the seconds, the mean
deformation's size, the subjects' NCC with the template), and the last iteration's transforms
per subject, ``NAME_warp.nii.gz`` (and ``NAME_affine.txt`` with ``--affine``), ITK/ANTs files
that map the template's grid onto the subject (``fastwarp apply -r template.nii.gz -i NAME ...
-t NAME_warp.nii.gz [-t NAME_affine.txt]``).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .files import replacing

__all__ = ["TemplateConfig", "build_template", "template_files", "exact_sum"]


# Note [Unbiased template update]
# ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
# Registering subject i to the template T gives u_i with S_i(p + u_i(p)) ~ T(p). Were the
# subjects one brain B moved by a_i, S_i(x) = B(x + a_i), and T = B(x + c), then u_i = c - a_i:
# the mean deformation u_bar = c - a_bar is how far T sits from the subjects' centre B(x + a_bar).
# So the next template is T'(p - u_bar(p)), T' the mean of the warped subjects: exact for
# shifts, to first order for deformations (p - u_bar(p) is the first-order inverse of
# p + u_bar(p)), as ANTs' template construction applies the negated, scaled average warp
# (its --gradient-step; ours is `step`, 1 by default: the subjects' deformations are averaged
# over the whole set, and the step is not a descent's). With --affine the mean of the affine
# matrices A_bar (fixed -> moving world maps) moves it too: T''(A_bar^-1 x).
#
# Note [Split-independent averages]
# ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
# A floating-point sum depends on its order, so a template averaged over subjects split over
# ranks in other ways would differ in its last bits. Each value is rounded to a fixed point of
# 2^-24 (below float32's resolution for the normalized intensities and voxel displacements
# here: 6e-8) and the integers are summed in int64: exact, so the same in any order, on any
# number of ranks (an all-reduce of int64 on gloo and NCCL alike).

_FIXED = float(2 ** 24)


def exact_sum(t: torch.Tensor, procs=None) -> torch.Tensor:
    """``t`` (this rank's sum of values, already fixed-point int64) summed over the ranks."""
    if procs is not None and procs.world > 1:
        import torch.distributed as dist

        t = t.clone()
        dist.all_reduce(t)
    return t


def _fixed(x: torch.Tensor) -> torch.Tensor:
    return torch.round(x.double() * _FIXED).to(torch.int64)


@dataclass(frozen=True)
class TemplateConfig:
    """How :func:`build_template` iterates; ``refine_steps``: the refinement's steps per level
    (None: ``fastwarp register --refine``'s measured defaults)."""

    iterations: int = 4
    refine_steps: int | None = 30
    diffeomorphic: bool = False
    affine: bool = False
    similarity: str = "ncc"
    smooth: float | None = None
    bending: float | None = None
    step: float = 1.0

    def __post_init__(self):
        if self.iterations < 1:
            raise ValueError(f"--iterations must be >= 1, got {self.iterations}")
        if self.refine_steps is not None and self.refine_steps < 1:
            raise ValueError(f"--refine takes a number of steps per level >= 1, got {self.refine_steps}")
        if not 0 < self.step <= 1:
            raise ValueError(f"step must be in (0, 1], got {self.step}")
        for option, weight in (("smooth", self.smooth), ("bending", self.bending)):
            if weight is not None and not (math.isfinite(weight) and weight >= 0):
                raise ValueError(f"--{option} takes a finite weight >= 0, got {weight}")


def _ncc(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()).clamp_min(1e-30))


def build_template(images: Sequence, affines: Sequence, config: TemplateConfig = TemplateConfig(),
                   initial=None, initial_affine=None, device="cpu", progress: bool = False, names=None,
                   on_iteration=None) -> dict:
    """The template of ``images`` (``(*spatial)`` arrays or tensors, intensities as stored) on
    the grids ``affines`` (NIfTI voxel -> RAS mm), as the module docstring says. The template's
    grid is ``initial``'s (given with ``initial_affine``) or the first image's.

    Returns ``{"template", "affine", "history", "results", "iterations"}``: the template
    ``(*spatial)`` float32 (normalized intensities), its grid, the template after each iteration
    (``history[0]`` the start), this rank's last :class:`~fastwarp.app.register.PairResult` per
    subject index, and per iteration ``{"seconds", "mean_deformation", "ncc"}``.
    ``on_iteration(k, template)`` is called after each (rank 0 writes the files there)."""
    import fastwarp

    from .apply import apply_transforms
    from .data.nifti import normalize_intensity
    from .refine import refine_defaults
    from .register import register_pair
    from .runtime import start_processes

    device = torch.device(device)
    procs = start_processes(device.type)
    n = len(images)
    if n == 0 or n != len(affines):
        raise ValueError(f"build_template: {n} images and {len(affines)} affines; give one affine per image, at least one")
    grid_affine = np.asarray(initial_affine if initial is not None else affines[0], dtype=np.float64)
    shape = tuple(np.asarray(initial if initial is not None else images[0]).shape)
    nd = len(shape)
    subjects = [torch.as_tensor(normalize_intensity(np.asarray(im, dtype=np.float32))) for im in images]
    mine = list(range(procs.rank, n, procs.world))

    def on_grid(i):  # subject i on the template's grid, through the grids' own alignment
        if subjects[i].shape == shape and np.allclose(affines[i], grid_affine, atol=1e-6):
            return subjects[i].to(device)
        return apply_transforms(subjects[i], affines[i], shape, grid_affine, [], "linear", device)

    if initial is not None:
        template = torch.as_tensor(normalize_intensity(np.asarray(initial, dtype=np.float32))).to(device)
    else:
        total = torch.zeros(shape, dtype=torch.int64, device=device)
        for i in mine:
            total += _fixed(on_grid(i))
        template = (exact_sum(total, procs).double() / (_FIXED * n)).float()
    history = [template.cpu()]
    if on_iteration is not None:
        on_iteration(0, template.cpu())
    voxel = float(np.min(np.linalg.norm(grid_affine[:nd, :nd], axis=0))) or 2.0
    refine = refine_defaults(voxel, similarity=config.similarity, diffeomorphic=config.diffeomorphic,
                             iterations=config.refine_steps, smooth=config.smooth, bending=config.bending)
    affine_cfg = None
    if config.affine:
        from .register import affine_defaults

        affine_cfg = affine_defaults(voxel, config.similarity)
    log, results = [], {}
    for k in range(1, config.iterations + 1):
        start = time.perf_counter()
        warped_sum = torch.zeros(shape, dtype=torch.int64, device=device)
        field_sum = torch.zeros((nd, *shape), dtype=torch.int64, device=device)
        matrix_sum = torch.zeros((nd + 1, nd + 1), dtype=torch.int64)
        nccs = torch.zeros(n, dtype=torch.float64)
        for i in mine:
            r = register_pair(subjects[i], template, refine=refine, affine=affine_cfg, moving_affine=affines[i],
                              fixed_affine=grid_affine, device=device, progress=progress and procs.main)
            results[i] = r
            warped_sum += _fixed(r.warped.to(device))
            field_sum += _fixed(r.disp[0].to(device))
            if r.affine is not None:
                matrix_sum += torch.round(torch.as_tensor(r.affine) * _FIXED).to(torch.int64)
            nccs[i] = _ncc(r.warped, template)
        mean_warped = (exact_sum(warped_sum, procs).double() / (_FIXED * n)).float()
        mean_field = (exact_sum(field_sum, procs).double() / (_FIXED * n)).float()
        nccs = exact_sum(_fixed(nccs), procs).double() / _FIXED
        # Note [Unbiased template update]
        template = fastwarp.warp(mean_warped[None, None], -config.step * mean_field[None], padding_mode="border")[0, 0]
        if config.affine:
            mean_matrix = exact_sum(matrix_sum, procs).double().numpy() / (_FIXED * n)
            vox = np.linalg.inv(grid_affine) @ np.linalg.inv(mean_matrix) @ grid_affine  # template voxel -> voxel
            A = torch.as_tensor(vox[:nd], dtype=torch.float32, device=device)
            template = fastwarp.warp(template[None, None], None, padding_mode="border", affine=A)[0, 0]
        history.append(template.cpu())
        log.append(dict(iteration=k, seconds=time.perf_counter() - start,
                        mean_deformation=float(mean_field.norm(dim=0).mean()),
                        max_deformation=float(mean_field.norm(dim=0).max()), ncc=nccs.tolist()))
        if on_iteration is not None:
            on_iteration(k, template.cpu())
    return dict(template=template.cpu(), affine=grid_affine, history=history, results=results, iterations=log,
                procs=procs)


def template_figure(history: Sequence[torch.Tensor], path: str) -> str:
    """The template's mid-slices (one row per iteration, one column per axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nd = history[0].dim()
    cols = nd if nd == 3 else 1
    fig, axes = plt.subplots(len(history), cols, figsize=(2.2 * cols, 2.2 * len(history)), squeeze=False)
    for k, t in enumerate(history):
        t = t.numpy()
        views = [t[t.shape[0] // 2], t[:, t.shape[1] // 2], t[:, :, t.shape[2] // 2]] if nd == 3 else [t]
        for j, v in enumerate(views):
            ax = axes[k][j]
            ax.imshow(np.rot90(v), cmap="gray")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel("start" if k == 0 else f"iteration {k}")
    fig.tight_layout()
    try:
        with replacing(path) as tmp:
            fig.savefig(tmp, dpi=90, format=os.path.splitext(path)[1][1:] or "png")
    finally:
        plt.close(fig)
    return path


def template_files(subjects: str, out_dir: str, config: TemplateConfig = TemplateConfig(), initial: str | None = None,
                   device="cpu", progress: bool = True) -> dict:
    """``fastwarp template``: the subjects of a folder or list file (``image [labels]`` per line,
    :func:`~fastwarp.app.data.subjects.find_volumes`) to a template in ``out_dir``."""
    from .data.nifti import load_volume, nifti_stem, save_nifti
    from .data.subjects import find_volumes
    from .transforms import save_displacement_field, save_matrix

    specs = find_volumes(subjects)
    names = [nifti_stem(os.path.basename(s.image)) for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"{subjects}: two subjects share a name; their transforms would overwrite each other")
    vols = [load_volume(s.image, None, normalize=False) for s in specs]
    dims = {v.image.ndim for v in vols}
    if len(dims) != 1 or dims.pop() not in (2, 3):
        raise ValueError(f"{subjects}: the subjects must all be 2-D or all 3-D images")
    init = load_volume(initial, None, normalize=False) if initial else None
    from .runtime import start_processes

    procs = start_processes(torch.device(device).type)
    os.makedirs(out_dir, exist_ok=True)
    header = vols[0].header if init is None else init.header
    grid = np.asarray(init.affine if init is not None else vols[0].affine, dtype=np.float64)
    written = []

    def write(k, template):
        if procs.main:
            written.append(save_nifti(os.path.join(out_dir, f"template_{k:02d}.nii.gz"), template, grid, header,
                                      np.float32))

    start = time.perf_counter()
    out = build_template([v.image for v in vols], [v.affine for v in vols], config,
                         None if init is None else init.image, None if init is None else init.affine,
                         device, progress, names, on_iteration=write)
    procs = out["procs"]
    for i, r in out["results"].items():  # each rank writes its own subjects' transforms
        written.append(save_displacement_field(os.path.join(out_dir, f"{names[i]}_warp.nii.gz"), r.disp.cpu(), out["affine"]))
        if r.affine is not None:
            written.append(save_matrix(os.path.join(out_dir, f"{names[i]}_affine.txt"), r.affine))
    summary = dict(subjects=names, iterations=out["iterations"], seconds=time.perf_counter() - start,
                   processes=procs.world, config=dict(config.__dict__))
    if procs.main:
        written.append(save_nifti(os.path.join(out_dir, "template.nii.gz"), out["template"], out["affine"], header,
                                  np.float32))
        written.append(template_figure(out["history"], os.path.join(out_dir, "template_iterations.png")))
        path = os.path.join(out_dir, "template.json")
        with replacing(path) as tmp, open(tmp, "w") as fh:
            json.dump(summary, fh, indent=1)
        written.append(path)
    if procs.world > 1:
        import torch.distributed as dist

        dist.barrier()
    summary["outputs"] = written
    summary["template"] = out["template"]
    return summary
