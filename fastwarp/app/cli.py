"""The `fastwarp` command (also `python -m fastwarp`).

    fastwarp demo       train on the embedded brains, register the held-out pair, show it
    fastwarp train      train a registration network (see `fastwarp train -h`)
    fastwarp register   register a pair of NIfTI images: affine, a trained network, a refinement for the pair
    fastwarp apply      apply saved transforms (fastwarp's or ANTs'/ITK's) to images or label maps
    fastwarp template   build an unbiased template of a set of subjects (see `fastwarp template -h`)
    fastwarp check      what this build has, and a quick check and timing of the kernels
    fastwarp bench      time fastwarp against the installed baselines (table, JSON, Markdown)

Errors in the input (a missing file, a wrong shape, ...) print one line naming the file or
argument; FASTWARP_DEBUG=1 shows the traceback instead.
"""

# Each command parses its arguments into a typed configuration and calls one function
# (fastwarp.app.demo.demo, .training.train, .register.register_files, .check.check,
# .bench.runner.main); the option defaults are the configurations' (fastwarp.app.config).

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence

import numpy as np

from .config import RegisterConfig, TrainConfig
from .similarity import SIMILARITIES

__all__ = ["main", "train_main", "register_main", "train_parser", "register_parser", "train_config", "register_config"]

_USER_ERRORS = (FileNotFoundError, IsADirectoryError, ValueError, TypeError)


def _defaults(config: type) -> dict:
    return {f.name: f.default for f in dataclasses.fields(config) if f.default is not dataclasses.MISSING}


# --------------------------------------------------------------------------- train


def train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fastwarp train", description="Train the registration network (unsupervised) "
                                "with its warp and similarity on fastwarp's kernels.")
    d = p.add_argument_group("data")
    d.add_argument("--data", help="folder of NIfTI volumes or a list file ('image [labels]' per line); "
                                  "default: the brains embedded in fastwarp")
    d.add_argument("--val", help="held-out subjects (folder or list file) registered to the atlas or the first "
                                 "training subject for validation; default: the embedded pair, or the last subject of --data")
    d.add_argument("--atlas", help="a NIfTI atlas: train atlas-to-subject (fixed = atlas)")
    d.add_argument("--pairing", choices=["subject", "atlas", "self"],
                   help="training pairs: two subjects, atlas and subject, or a subject and a deformed copy of itself "
                        "(default: atlas with --atlas, else subject; self for the embedded data, so that the "
                        "real inter-subject pair stays held out)")
    d.add_argument("--ndim", type=int, choices=[2, 3], help="3 for volumes, 2 for axial slices (default 3)")
    d.add_argument("--downsample", type=int, help="train at 1/N resolution (block averaging; default 1)")
    d.add_argument("--no-augment", dest="augment", action="store_false",
                   help="no random smooth deformations and intensity changes of the training pairs")
    d.add_argument("--max-disp", type=float, help="scale of the random deformations, in voxels (default 4)")
    d.add_argument("--workers", type=int, help="DataLoader workers (default: 8 with CUDA, at most the CPU count less one; 1 on the CPU)")

    m = p.add_argument_group("model")
    m.add_argument("--enc", type=int, nargs="+", help="encoder features (default 16 32 32 32)")
    m.add_argument("--dec", type=int, nargs="+", help="decoder features (default 32 32 32 32 32 16 16)")
    m.add_argument("--diffeomorphic", action="store_true", help="integrate a stationary velocity field (scaling and squaring)")
    m.add_argument("--int-steps", type=int, help="scaling-and-squaring steps (default 7)")
    m.add_argument("--int-downsize", type=int, help="velocity field at 1/N resolution (default 2)")

    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int)
    t.add_argument("--steps", type=int, help="optimizer steps per epoch (default 50)")
    t.add_argument("--batch-size", type=int, help="global batch size (default 1)")
    t.add_argument("--lr", type=float)
    t.add_argument("--similarity", choices=SIMILARITIES,
                   help="ncc (default), mse, or mi (mutual information, for pairs of different contrasts)")
    t.add_argument("--window", type=int, help="NCC window (odd, default 9)")
    t.add_argument("--lambda", dest="lam", type=float,
                   help="smoothness weight (default 1 for ncc and mi, 0.01 for mse, VoxelMorph's)")
    t.add_argument("--seed", type=int)
    t.add_argument("--device", help="auto (cuda when present), cpu, cuda, cuda:N")
    t.add_argument("--bf16", action="store_true", help="bf16 autocast for the network (warp and loss stay fp32)")
    t.add_argument("--output", "-o", help="output folder (default ./fastwarp-run)")
    t.add_argument("--resume", help="checkpoint to resume from (model, optimizer, epoch, config)")
    t.add_argument("--figure", action=argparse.BooleanOptionalAction,
                   help="write figure.png of the validation pair at the end (default on)")
    t.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(**_defaults(TrainConfig))
    return p


def train_config(argv: Sequence[str] | None = None) -> TrainConfig:
    return TrainConfig(**vars(train_parser().parse_args(argv)))


def train_main(argv: Sequence[str] | None = None) -> int:
    """``fastwarp train`` (also ``python -m fastwarp train``, which ``torchrun -m fastwarp train`` runs)."""
    import torch.distributed as dist

    from .training import train

    config = train_config(argv)
    try:
        train(config)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


# --------------------------------------------------------------------------- register


def register_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fastwarp register",
        description="Register a moving image to a fixed one: a trained network's prediction (--model), an affine "
                    "(--affine) and/or an optimization for this pair (--refine), in the order affine, network, "
                    "refinement. The images may lie on different voxel grids (their NIfTI affines are used).")
    p.add_argument("moving", nargs="?", help="moving image (NIfTI)")
    p.add_argument("fixed", nargs="?", help="fixed image (NIfTI); the outputs are on its grid")
    cohort = p.add_argument_group(
        "a cohort", "many subjects in one run (fastwarp/app/cohort.py): -o is then the output folder, one output set "
                    "per subject named by its moving image (NAME.nii.gz, NAME_warp.nii.gz, NAME_affine.txt, "
                    "NAME_labels.nii.gz, NAME.json) and metrics.csv; subjects already done are skipped; the exit "
                    "status is the number that failed")
    cohort.add_argument("--list", metavar="FILE",
                        help="one subject per line: 'moving [fixed] [labels]' (paths relative to FILE; a fixed of '-' "
                             "or none: --fixed)")
    cohort.add_argument("--moving-dir", metavar="DIR", help="every image of DIR (label maps by name: *_seg, *_labels)")
    cohort.add_argument("--fixed", dest="atlas", metavar="IMAGE", help="the fixed image of every subject that names none")
    p.add_argument("--model", "-m", help="checkpoint written by `fastwarp train`: its prediction (the start of --refine)")
    p.add_argument("--affine", action="store_true",
                   help="first estimate a 12-parameter affine (multi-resolution); written as a 4x4 world matrix")
    p.add_argument("--matrix", help="where the affine goes (default <output stem>_affine.txt: an ITK transform file, "
                                    "which ANTs and ITK read; another suffix writes the plain 4x4 RAS matrix)")
    p.add_argument("--refine", nargs="?", type=int, const=0, metavar="STEPS",
                   help="optimize the field for this pair, coarse to fine (STEPS per level; default: the measured "
                        "schedule), from the network's prediction or from the identity")
    p.add_argument("--diffeomorphic", action="store_true",
                   help="with --refine: a stationary velocity field, integrated by scaling and squaring: the "
                        "continuous map is invertible; the discrete Jacobian may still fold a handful of voxels "
                        "(measured: at most a few in 10^5)")
    p.add_argument("--smooth", type=float, metavar="W",
                   help="with --refine: the smoothness weight (default: 1 with NCC, 0.01 with MSE, 3 with MI; a tenth "
                        "of that with --diffeomorphic). More gives a smoother, more invertible map for less overlap: "
                        "--diffeomorphic --smooth 1 halves the inverse's residual on the embedded pair for 0.02-0.04 "
                        "less Dice")
    p.add_argument("--bending", type=float, metavar="W",
                   help="with --refine: a weight on the second differences of the field (of the velocity with "
                        "--diffeomorphic; default 0). It keeps the map smooth between voxels, where a written field "
                        "is interpolated: on the embedded pair at 2 mm --diffeomorphic --smooth 0.3 --bending 1 brings "
                        "the inverse's residual to 0.03 voxel mean and < 0.5 at most inside the brain (0.11 / 2 at "
                        "the defaults) for 0.03-0.05 less Dice")
    p.add_argument("--similarity", choices=SIMILARITIES,
                   help="of --affine and --refine: ncc (default), mse, or mi (mutual information: images of "
                        "different contrasts, e.g. T1 to T2)")
    p.add_argument("--output", "-o", required=True, help="warped moving image (.nii or .nii.gz)")
    p.add_argument("--transform", "-t", metavar="PREFIX",
                   help="the transform files' prefix (default: the output's stem): PREFIX_warp.nii.gz, the deformable "
                        "part as an ITK displacement field (LPS mm), and PREFIX_affine.txt with --affine (unless "
                        "--matrix says otherwise). antsApplyTransforms -r FIXED -i MOVING -t PREFIX_warp.nii.gz -t "
                        "PREFIX_affine.txt (and `fastwarp apply`) reproduce the warped image")
    p.add_argument("--inverse", action="store_true",
                   help="also write the inverse: PREFIX_inverse_warp.nii.gz (diffeomorphic: the velocity integrated "
                        "backwards; else a fixed-point inversion, its residual reported) and PREFIX_inverse_affine.txt; "
                        "the fixed image onto the moving grid: -r MOVING -t [PREFIX_affine.txt,1] -t "
                        "PREFIX_inverse_warp.nii.gz")
    p.add_argument("--flow", help="also write the deformable field (X, Y, Z, 3) in voxels of the fixed grid "
                                  "(VoxelMorph's convention)")
    p.add_argument("--labels", help="label map of the moving image: warped (nearest) and used for Dice")
    p.add_argument("--fixed-labels", help="label map of the fixed image, for Dice")
    p.add_argument("--labels-output", help="warped label map (default: <output stem>_labels.nii.gz when --labels)")
    p.add_argument("--figure", help="write the registration figure (PNG/PDF/SVG)")
    p.add_argument("--json", help="write the metrics as JSON")
    p.add_argument("--device", help="auto (cuda when present), cpu, cuda")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(**_defaults(RegisterConfig))
    return p


_COHORT_ARGS = ("list", "moving_dir", "atlas")


def register_config(argv: Sequence[str] | None = None) -> RegisterConfig:
    args = vars(register_parser().parse_args(argv))
    given = [f"--{k.replace('_', '-')}" for k in _COHORT_ARGS if args.pop(k) is not None]
    if given:
        raise ValueError(f"{', '.join(given)} make a cohort run: use register_main or fastwarp.app.cohort")
    if args["moving"] is None or args["fixed"] is None:
        raise ValueError("give the moving and the fixed image (or --list / --moving-dir for a cohort)")
    return RegisterConfig(**args)


def _register_cohort_main(args: dict) -> int:
    from .cohort import PER_SUBJECT_OPTIONS, format_summary, read_pair_list, register_cohort, subjects_from_dir

    if args["list"] is not None and args["moving_dir"] is not None:
        raise ValueError("give --list or --moving-dir, not both")
    if args["moving"] is not None:
        raise ValueError("with --list or --moving-dir the subjects come from there: give no moving/fixed images")
    given = [f"--{k.replace('_', '-')}" for k in PER_SUBJECT_OPTIONS if k not in ("moving", "fixed", "output")
             and args.get(k) is not None]
    if given:
        raise ValueError(f"{', '.join(given)}: with --list or --moving-dir every subject's files are named in the "
                         "output folder (-o DIR)")
    subjects = (read_pair_list(args["list"], args["atlas"]) if args["list"] is not None
                else subjects_from_dir(args["moving_dir"], args["atlas"]))
    out_dir = args["output"]
    options = {k: v for k, v in args.items() if k not in PER_SUBJECT_OPTIONS + _COHORT_ARGS}
    result = register_cohort(subjects, out_dir, options, progress=not args["quiet"])
    if result["rank"] == 0:
        world = f" on {result['world']} processes" if result["world"] > 1 else ""
        print(f"fastwarp register: {len(subjects)} subjects -> {out_dir}{world}")
        print(format_summary(result))
        print(f"wrote {result['csv']}")
    return min(result["failed"], 100)


def register_main(argv: Sequence[str] | None = None) -> int:
    """``fastwarp register`` (also ``python -m fastwarp register``)."""
    from .register import format_metrics, register_files

    args = vars(register_parser().parse_args(argv))
    if args["list"] is not None or args["moving_dir"] is not None:
        return _register_cohort_main(args)
    config = register_config(argv)
    metrics = register_files(config)
    print(f"fastwarp register: {config.moving} -> {config.fixed}")
    print(format_metrics(metrics))
    print("wrote " + ", ".join(metrics["outputs"]))
    return 0


# --------------------------------------------------------------------------- demo, check


def _demo_parser() -> argparse.ArgumentParser:
    # (no defaults here: an option not given is left to demo()'s own)
    p = argparse.ArgumentParser(
        prog="fastwarp demo", argument_default=argparse.SUPPRESS,
        description="Train on the embedded brains (each against deformed copies of itself), then register the "
                    "held-out real inter-subject pair (Colin27 -> MNI152) and report NCC, Dice and folding before "
                    "and after, with a figure.")
    p.add_argument("--output", "-o", help="output folder (default ./fastwarp-demo)")
    p.add_argument("--device", help="auto (cuda when present; the default), cpu, cuda")
    p.add_argument("--ndim", type=int, choices=[2, 3],
                   help="2: a 2-D model on axial slices, registering the volumes slice by slice (default on the "
                        "CPU: it trains to a visible result in minutes on 2 cores); 3: a 3-D model (default on a GPU)")
    p.add_argument("--epochs", type=int, help="default 12 (2-D) or 30 (3-D)")
    p.add_argument("--steps", type=int, help="steps per epoch (default 250 (2-D) or 100 (3-D))")
    p.add_argument("--downsample", type=int, help="train at 1/N resolution (default 1: 2 mm)")
    p.add_argument("--diffeomorphic", action="store_true",
                   help="train the diffeomorphic network (a stationary velocity field) and refine diffeomorphically")
    p.add_argument("--seed", type=int, help="default 0")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    return p


def _demo_main(argv: Sequence[str]) -> int:
    from .demo import demo

    demo(**vars(_demo_parser().parse_args(argv)))
    return 0


def _check_parser() -> argparse.ArgumentParser:
    # (no defaults here: an option not given is left to check()'s own)
    p = argparse.ArgumentParser(prog="fastwarp check", argument_default=argparse.SUPPRESS,
                                description="What this build has, and a quick check and timing of the warp and NCC "
                                            "kernels against VoxelMorph's formulas.")
    p.add_argument("--device", help="default: cuda when a GPU is visible and fastwarp has CUDA kernels, else cpu")
    p.add_argument("--size", type=int, nargs=3, metavar=("D", "H", "W"), help="default 96 112 128")
    p.add_argument("--repeats", type=int, help="default 9")
    return p


def _check_main(argv: Sequence[str]) -> int:
    from .check import CheckFailed, check

    try:
        check(**vars(_check_parser().parse_args(argv)))
    except CheckFailed as e:
        print(f"fastwarp check: {e}", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------- fastwarp

def _apply_parser() -> argparse.ArgumentParser:
    from .apply import INTERPOLATIONS

    p = argparse.ArgumentParser(
        prog="fastwarp apply",
        description="Resample images onto a reference grid through a chain of transforms, listed as "
                    "antsApplyTransforms lists them: the first maps the reference's points first, so a registration's "
                    "`-t PREFIX_warp.nii.gz -t PREFIX_affine.txt` warps its moving image onto its fixed one. Transforms: "
                    "ITK affine files (.txt, ANTs' .mat; `[FILE,1]` inverts one), plain matrix files, and ITK "
                    "displacement fields (.nii.gz: fastwarp's and ANTs' warps).")
    p.add_argument("-i", "--input", action="append", required=True, metavar="IMAGE",
                   help="an image or label map to resample (repeat for several, each with its own -o)")
    p.add_argument("-r", "--reference", required=True, help="the grid of the outputs (NIfTI)")
    p.add_argument("-t", "--transform", action="append", default=[], metavar="TRANSFORM",
                   help="a transform of the chain (repeat, in antsApplyTransforms' order); none: the grids' own alignment")
    p.add_argument("-o", "--output", action="append", required=True, metavar="OUT",
                   help="where each input goes (.nii or .nii.gz), in the inputs' order")
    p.add_argument("-n", "--interpolation", choices=INTERPOLATIONS, default="linear",
                   help="linear (default; float32 output), nearest, or label (each label interpolated, the largest "
                        "wins); nearest and label keep an integer label map's dtype")
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda")
    return p


def _apply_main(argv: Sequence[str]) -> int:
    from .apply import apply_files
    from .runtime import resolve_device

    args = _apply_parser().parse_args(argv)
    written = apply_files(args.input, args.reference, args.transform, args.output, args.interpolation,
                          resolve_device(args.device))
    print("wrote " + ", ".join(written))
    return 0


def _template_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fastwarp template",
        description="An unbiased group-wise template of the subjects, as ANTs' template construction builds it: "
                    "each iteration registers every subject to the template, averages them, and moves the average "
                    "by the inverse of the mean deformation (fastwarp/app/template.py). Under torchrun the subjects "
                    "are split over the ranks; the template is the same however they are split.")
    p.add_argument("--list", required=True, metavar="SUBJECTS",
                   help="a folder of NIfTI images, or a list file: one 'image [labels]' per line")
    p.add_argument("--output", "-o", required=True, metavar="DIR",
                   help="template.nii.gz, template_KK.nii.gz per iteration, template_iterations.png, template.json, "
                        "and each subject's NAME_warp.nii.gz (NAME_affine.txt) of the last iteration")
    p.add_argument("--iterations", type=int, default=4,
                   help="default 4; subjects that differ in head position and size gain up to the sixth, with --affine")
    p.add_argument("--initial", metavar="IMAGE", help="the starting template (default: the subjects' mean); its grid "
                                                      "is the template's")
    p.add_argument("--affine", action="store_true",
                   help="an affine before each deformable registration, and the mean affine map undone: for subjects "
                        "that differ in head position and size (on a known truth at 2 mm, 6 iterations: NCC with the "
                        "truth 0.976, the plain mean 0.893)")
    p.add_argument("--diffeomorphic", action="store_true", help="stationary velocity fields")
    p.add_argument("--similarity", choices=SIMILARITIES, default="ncc")
    p.add_argument("--refine", type=int, default=30, metavar="STEPS",
                   help="the refinement's steps per level (default 30; 0: fastwarp register's measured defaults)")
    p.add_argument("--smooth", type=float, metavar="W", help="the refinement's smoothness weight")
    p.add_argument("--bending", type=float, metavar="W", help="the refinement's bending weight (second differences)")
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", "-q", action="store_true")
    return p


def _template_main(argv: Sequence[str]) -> int:
    from .runtime import resolve_device, start_processes
    from .template import TemplateConfig, template_files

    args = _template_parser().parse_args(argv)
    config = TemplateConfig(iterations=args.iterations, refine_steps=args.refine or None, affine=args.affine,
                            diffeomorphic=args.diffeomorphic, similarity=args.similarity, smooth=args.smooth,
                            bending=args.bending)
    procs = start_processes(args.device)
    out = template_files(args.list, args.output, config, args.initial, resolve_device(args.device, procs),
                         progress=not args.quiet)
    if procs.main:
        last = out["iterations"][-1]
        print(f"fastwarp template: {len(out['subjects'])} subjects, {len(out['iterations'])} iterations, "
              f"{out['seconds']:.1f} s" + (f" on {out['processes']} processes" if out["processes"] > 1 else ""))
        print(f"  last iteration: mean deformation {last['mean_deformation']:.3f} voxels, subjects' NCC with the "
              f"template {np.mean(last['ncc']):.4f}")
        print("wrote " + os.path.join(args.output, "template.nii.gz") + f" (and {len(out['outputs']) - 1} more)")
    return 0


_COMMANDS = {"demo": _demo_main, "train": train_main, "register": register_main, "apply": _apply_main,
             "template": _template_main,
             "check": _check_main}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        from .bench.runner import main as bench_main

        return bench_main(argv[1:], prog="fastwarp bench")
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in _COMMANDS:
        print(__doc__.strip())
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nfastwarp: error: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    try:
        return _COMMANDS[cmd](rest)
    except _USER_ERRORS as e:
        if os.environ.get("FASTWARP_DEBUG"):
            raise
        print(f"fastwarp {cmd}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
