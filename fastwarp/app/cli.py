"""The `fastwarp` command (also `python -m fastwarp`).

    fastwarp demo       train on the embedded brains, register the held-out pair, show it
    fastwarp train      train a registration network (see `fastwarp train -h`)
    fastwarp register   register a pair of NIfTI images with a trained network
    fastwarp check      what this build has, and a quick check and timing of the kernels
    fastwarp bench      time fastwarp against the installed baselines (table, JSON, Markdown)

Errors in the input (a missing file, a wrong shape, ...) print one line naming the file or
argument; FASTWARP_DEBUG=1 shows the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

import torch

__all__ = ["main", "demo"]

_USER_ERRORS = (FileNotFoundError, IsADirectoryError, ValueError, TypeError)


def _demo_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fastwarp demo",
        description="Train on the embedded brains (each against deformed copies of itself), then register the "
                    "held-out real inter-subject pair (Colin27 -> MNI152) and report NCC, Dice and folding before "
                    "and after, with a figure.")
    p.add_argument("--output", "-o", default="fastwarp-demo", help="output folder (default ./fastwarp-demo)")
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda")
    p.add_argument("--ndim", type=int, choices=[2, 3], default=None,
                   help="2: a 2-D model on axial slices, registering the volumes slice by slice (default on the "
                        "CPU: it trains to a visible result in minutes on 2 cores); 3: a 3-D model (default on a GPU)")
    p.add_argument("--epochs", type=int, default=None, help="default 12 (2-D) or 30 (3-D)")
    p.add_argument("--steps", type=int, default=None, help="steps per epoch (default 250 (2-D) or 100 (3-D))")
    p.add_argument("--downsample", type=int, default=1, help="train at 1/N resolution (default 1: 2 mm)")
    p.add_argument("--diffeomorphic", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    return p


def demo(argv: Sequence[str] | None = None) -> dict:
    from . import data as fwdata
    from .register import build_parser as register_parser, format_metrics, register_files
    from .training import build_parser as train_parser, train

    a = _demo_parser().parse_args(argv)
    device = a.device if a.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.startswith("cuda")
    ndim = a.ndim if a.ndim is not None else (3 if gpu else 2)
    epochs = a.epochs if a.epochs is not None else (30 if ndim == 3 else 12)
    steps = a.steps if a.steps is not None else (100 if ndim == 3 else 250)
    out = os.path.abspath(a.output)
    targs = ["--output", out, "--device", device, "--epochs", str(epochs), "--steps", str(steps),
             "--downsample", str(a.downsample), "--ndim", str(ndim), "--seed", str(a.seed), "--lr", "1e-3",
             "--max-disp", "3"]
    if a.diffeomorphic:
        targs.append("--diffeomorphic")
    if a.quiet:
        targs.append("--quiet")
    t0 = time.perf_counter()
    log = train(train_parser().parse_args(targs))
    t_train = time.perf_counter() - t0

    mni, colin = fwdata.embedded()
    ckpt = os.path.join(out, "checkpoint.pt")
    rargs = register_parser().parse_args([
        colin.image, mni.image, "--model", ckpt, "--device", device,
        "--output", os.path.join(out, "colin27_to_mni152.nii.gz"),
        "--flow", os.path.join(out, "colin27_to_mni152_flow.nii.gz"),
        "--labels", colin.labels, "--fixed-labels", mni.labels,
        "--figure", os.path.join(out, "colin27_to_mni152.png"),
        "--json", os.path.join(out, "colin27_to_mni152.json"),
    ])
    ev = register_files(rargs)
    print()
    how = "a 2-D model on axial slices, registering the volumes slice by slice" if ndim == 2 else "a 3-D model"
    print(f"fastwarp demo: trained {how}, {epochs} epochs x {steps} steps in {t_train / 60:.1f} min on {device}; "
          f"registered the held-out pair Colin27 -> MNI152 (3-D, 2 mm, never a training pair):")
    print(format_metrics(ev))
    better = ev["ncc_after"] > ev["ncc_before"] and ev.get("mean_dice_after", 1) >= ev.get("mean_dice_before", 0)
    print(f"  {'improved' if better else 'NOT improved'}: NCC {ev['ncc_before']:.4f} -> {ev['ncc_after']:.4f}"
          + (f", mean Dice {ev['mean_dice_before']:.4f} -> {ev['mean_dice_after']:.4f}" if "mean_dice_after" in ev else ""))
    print(f"outputs in {out}:")
    for path in [ckpt, log.get("figure"), os.path.join(out, "log.json")] + ev["outputs"]:
        if path:
            print(f"  {path}")
    ev["improved"] = better
    return ev


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        from .bench.runner import main as bench_main

        return bench_main(argv[1:], prog="fastwarp bench")
    commands = {"demo", "train", "register", "check"}
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        print(__doc__.strip())
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nfastwarp: error: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    try:
        if cmd == "demo":
            demo(rest)
        elif cmd == "train":
            from .training import main as train_main

            return train_main(rest)
        elif cmd == "register":
            from .register import main as register_main

            return register_main(rest)
        else:
            from .check import main as check_main

            check_main(rest)
    except _USER_ERRORS as e:
        if os.environ.get("FASTWARP_DEBUG"):
            raise
        print(f"fastwarp {cmd}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
