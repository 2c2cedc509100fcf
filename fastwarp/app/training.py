"""`fastwarp train` / `python -m fastwarp.train`: unsupervised training of the registration
network (:class:`fastwarp.models.RegUNet`) with its warp and similarity on fastwarp's kernels.

Without ``--data`` it trains on the brains embedded in the package. Under ``torchrun`` the
same script runs DistributedDataParallel (NCCL on GPUs, gloo on the CPU); ``--batch-size``
is the global batch, split evenly over the processes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from . import data as fwdata
from ..losses import MSE, NCC, Grad
from .metrics import evaluate
from .models import RegUNet

__all__ = ["build_parser", "main", "train", "load_checkpoint", "CheckpointError"]


class CheckpointError(ValueError):
    pass


# --------------------------------------------------------------------------- arguments

def add_train_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
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
    d.add_argument("--ndim", type=int, choices=[2, 3], default=3, help="3 for volumes, 2 for axial slices (default 3)")
    d.add_argument("--downsample", type=int, default=1, help="train at 1/N resolution (block averaging; default 1)")
    d.add_argument("--no-augment", dest="augment", action="store_false",
                   help="no random smooth deformations and intensity changes of the training pairs")
    d.add_argument("--max-disp", type=float, default=4.0, help="scale of the random deformations, in voxels (default 4)")
    d.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: 8 with CUDA, at most the CPU count less one; 1 on the CPU)")

    m = p.add_argument_group("model")
    m.add_argument("--enc", type=int, nargs="+", default=None, help="encoder features (default 16 32 32 32)")
    m.add_argument("--dec", type=int, nargs="+", default=None, help="decoder features (default 32 32 32 32 32 16 16)")
    m.add_argument("--diffeomorphic", action="store_true", help="integrate a stationary velocity field (scaling and squaring)")
    m.add_argument("--int-steps", type=int, default=7, help="scaling-and-squaring steps (default 7)")
    m.add_argument("--int-downsize", type=int, default=2, help="velocity field at 1/N resolution (default 2)")

    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=20)
    t.add_argument("--steps", type=int, default=50, help="optimizer steps per epoch (default 50)")
    t.add_argument("--batch-size", type=int, default=1, help="global batch size (default 1)")
    t.add_argument("--lr", type=float, default=1e-4)
    t.add_argument("--similarity", choices=["ncc", "mse"], default="ncc")
    t.add_argument("--window", type=int, default=9, help="NCC window (odd, default 9)")
    t.add_argument("--lambda", dest="lam", type=float, default=None,
                   help="smoothness weight (default 1 for ncc, 0.01 for mse, VoxelMorph's)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda, cuda:N")
    t.add_argument("--bf16", action="store_true", help="bf16 autocast for the network (warp and loss stay fp32)")
    t.add_argument("--output", "-o", default="fastwarp-run", help="output folder (default ./fastwarp-run)")
    t.add_argument("--resume", help="checkpoint to resume from (model, optimizer, epoch, config)")
    t.add_argument("--figure", action=argparse.BooleanOptionalAction, default=True,
                   help="write figure.png of the validation pair at the end (default on)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fastwarp train", description=__doc__.strip().splitlines()[0])
    return add_train_arguments(p)


# --------------------------------------------------------------------------- setup

@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device_arg: str) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    use_cuda = device_arg != "cpu" and torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return _Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def _device(arg: str, dd: _Dist) -> torch.device:
    if arg == "auto":
        arg = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(arg)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA GPU is available")
        import fastwarp

        if not fastwarp.has_cuda_kernels():
            raise ValueError("--device cuda: this fastwarp build has no CUDA kernels (reinstall with a CUDA toolkit)")
        if dev.index is None:
            dev = torch.device("cuda", dd.local_rank if dd.world > 1 else torch.cuda.current_device())
        torch.cuda.set_device(dev)
    return dev


def _load_specs(args) -> tuple[list, list, object | None, bool]:
    """(training specs, validation specs, atlas spec, embedded?)"""
    if args.data is None:
        specs = fwdata.embedded()
        atlas = fwdata.VolumeSpec(args.atlas) if args.atlas else specs[0]
        val = fwdata.find_volumes(args.val) if args.val else specs[1:]
        return specs, val, atlas, True
    specs = fwdata.find_volumes(args.data)
    atlas = fwdata.VolumeSpec(args.atlas) if args.atlas else None
    if args.val:
        val = fwdata.find_volumes(args.val)
    elif len(specs) >= (2 if atlas is not None else 3):
        specs, val = specs[:-1], specs[-1:]
    else:
        val = []
    return specs, val, atlas, False


def _prepare(vol: fwdata.Volume, args, multiple: int) -> fwdata.Volume:
    if args.ndim == 3 and vol.image.ndim != 3:
        raise ValueError(f"--ndim 3 needs 3-D volumes, but {vol.name} is {vol.image.ndim}-D (use --ndim 2)")
    in_plane = args.ndim == 2 and vol.image.ndim == 3  # axial slices: pad the in-plane axes only
    return fwdata.to_model_grid(vol, multiple, args.downsample, axes=(0, 1) if in_plane else None)[0]


def _registered(model, moving, fixed, device, bf16):
    model.eval()
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        warped, disp = model(moving.to(device), fixed.to(device))
    return warped.float().cpu(), disp.float().cpu()


def _validate(model, pairs, device, args) -> list[dict]:
    out = []
    for name, m, f, ml, fl in pairs:
        warped, disp = _registered(model, m, f, device, args.bf16)
        ev = evaluate(m, f, disp, ml, fl, window=args.window)
        ev["pair"] = name
        out.append(ev)
    model.train()
    return out


def _summary(ev: dict) -> str:
    s = f"NCC {ev['ncc_before']:.4f} -> {ev['ncc_after']:.4f}"
    if "mean_dice_before" in ev:
        s += f", Dice {ev['mean_dice_before']:.4f} -> {ev['mean_dice_after']:.4f}"
    return s + f", folding {100 * ev['folding_fraction']:.3f}%"


# --------------------------------------------------------------------------- checkpoints

def save_checkpoint(path: str, model, optimizer, epoch: int, step: int, args) -> None:
    ckpt = {
        "format": "fastwarp-regunet-1",
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "config": model.config,
        "args": {k: v for k, v in vars(args).items() if not callable(v)},
        "epoch": epoch,
        "step": step,
    }
    tmp = path + ".tmp"
    torch.save(ckpt, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """Load a checkpoint written by ``fastwarp train``; errors name the file."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint: no such file: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CheckpointError(f"checkpoint: {path} is not a fastwarp checkpoint ({type(e).__name__}: {first})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != "fastwarp-regunet-1" or "model" not in ckpt:
        raise CheckpointError(f"checkpoint: {path} is not a fastwarp checkpoint (written by `fastwarp train`)")
    return ckpt


def model_from_checkpoint(ckpt: dict) -> RegUNet:
    model = RegUNet(**ckpt["config"])
    model.load_state_dict(ckpt["model"])
    return model


# --------------------------------------------------------------------------- training

def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


def train(args) -> dict:
    """Train with parsed arguments (see :func:`build_parser`); returns the run's log."""
    dd = _init_distributed(args.device)
    device = _device(args.device, dd)
    if args.batch_size % dd.world:
        raise ValueError(f"--batch-size {args.batch_size} must be a multiple of the number of processes ({dd.world})")
    if args.window < 1 or args.window % 2 == 0:
        raise ValueError(f"--window must be a positive odd integer, got {args.window}")
    if args.downsample < 1:
        raise ValueError(f"--downsample must be >= 1, got {args.downsample}")
    lam = args.lam if args.lam is not None else (1.0 if args.similarity == "ncc" else 0.01)
    _seed_all(args.seed)

    resume = load_checkpoint(args.resume) if args.resume else None
    if resume is not None:
        if resume["config"]["ndim"] != args.ndim:
            raise CheckpointError(f"--resume: {args.resume} is a {resume['config']['ndim']}-D model, "
                                  f"but this run is --ndim {args.ndim}")
        model = RegUNet(**resume["config"])
    else:
        model = RegUNet(args.ndim, args.enc, args.dec, args.diffeomorphic, args.int_steps, args.int_downsize)
    if resume is not None:
        model.load_state_dict(resume["model"])
    model.to(device)

    specs, val_specs, atlas_spec, is_embedded = _load_specs(args)
    pairing = args.pairing or ("atlas" if args.atlas else ("self" if is_embedded else "subject"))
    load = lambda s: _prepare(fwdata.load_volume(s.image, s.labels), args, model.multiple)  # noqa: E731
    if is_embedded and not args.val:
        # the real inter-subject pair (Colin27 -> MNI152) is held out: train each brain
        # against deformed copies of itself only
        if pairing != "self":
            raise ValueError("with the embedded data the real inter-subject pair is held out for validation: "
                             "use --pairing self (the default), or give --val")
    vols = [load(s) for s in specs]
    atlas = load(atlas_spec) if atlas_spec is not None else None
    val_fixed = atlas if atlas is not None else vols[0]
    val_vols = [load(s) for s in val_specs]
    for v in vols + val_vols:
        if v.shape != val_fixed.shape:
            raise ValueError(f"{v.name}: shape {v.shape} differs from {val_fixed.name}'s {val_fixed.shape}; "
                             "registration needs the volumes on one grid (resample them first)")
    dataset = fwdata.PairDataset(vols, pairing, atlas, length=args.steps * args.batch_size, ndim=args.ndim,
                                 augment=args.augment, max_disp=args.max_disp, seed=args.seed)
    sampler = torch.utils.data.DistributedSampler(dataset, dd.world, dd.rank, shuffle=True, seed=args.seed,
                                                  drop_last=True)
    # Augmenting a 160x192x224 pair takes ~3 s on one core: a GPU step needs several workers.
    workers = args.workers if args.workers is not None else (
        max(1, min(8, (os.cpu_count() or 2) - 1)) if device.type == "cuda" else 1)
    workers = max(0, min(workers, os.cpu_count() or 1))
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=args.batch_size // dd.world, sampler=sampler, num_workers=workers,
        pin_memory=device.type == "cuda", drop_last=True, persistent_workers=False,
        worker_init_fn=_worker_init if workers else None,
    )
    val_pairs = fwdata.validation_pairs(val_vols, val_fixed, args.ndim)

    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    start_epoch, step = 0, 0
    log = {"args": {k: v for k, v in vars(args).items()}, "lambda": lam, "pairing": pairing, "world_size": dd.world,
           "device": str(device), "model": model.config, "epochs": []}
    os.makedirs(args.output, exist_ok=True)
    log_path = os.path.join(args.output, "log.json")
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        start_epoch, step = int(resume["epoch"]), int(resume["step"])
        if os.path.exists(log_path):
            with open(log_path) as fh:
                log["epochs"] = [e for e in json.load(fh).get("epochs", []) if e["epoch"] <= start_epoch]
    net = model
    if dd.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    sim = NCC(args.window) if args.similarity == "ncc" else MSE()
    smooth = Grad("l2", loss_mult=float(model.int_downsize) if model.diffeomorphic else None)
    if dd.main:
        where = "the embedded brains" if is_embedded else args.data
        print(f"fastwarp train: {len(vols)} subject(s) from {where}, {pairing} pairs, "
              f"{args.ndim}-D {tuple(vols[0].shape if args.ndim == 3 else vols[0].shape[:2])}, "
              f"device {device}" + (f" x{dd.world} processes" if dd.world > 1 else ""), flush=True)
        if val_pairs:
            for ev in _validate(model, val_pairs, device, args):
                print(f"  before training: {ev['pair']}: {_summary(ev)}", flush=True)

    ckpt_path = os.path.join(args.output, "checkpoint.pt")
    model.train()
    for epoch in range(start_epoch, args.epochs):
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        t0 = time.perf_counter()
        totals = torch.zeros(3, dtype=torch.float64, device=device)
        bar = _progress(loader, epoch, args, dd)
        for i, batch in enumerate(bar):
            moving, fixed = (t.to(device, non_blocking=True) for t in batch[:2])
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
                warped, disp = net(moving, fixed)
            ls = sim(warped, fixed)
            lr_ = smooth(disp)
            loss = ls + lam * lr_
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            totals += torch.stack([loss.detach(), ls.detach(), lr_.detach()]).double()
            if hasattr(bar, "set_postfix") and (i % 10 == 9 or i == len(loader) - 1):
                bar.set_postfix(loss=f"{float(totals[0]) / (i + 1):.4f}")  # one host sync per 10 steps
        n = max(1, len(loader))
        if dd.world > 1:
            dist.all_reduce(totals)
            totals /= dd.world
        totals = (totals / n).tolist()
        entry = {"epoch": epoch + 1, "step": step, "loss": totals[0], "similarity": totals[1],
                 "smoothness": totals[2], "time_s": time.perf_counter() - t0}
        if dd.main:
            if val_pairs:
                entry["val"] = _validate(model, val_pairs, device, args)
            log["epochs"].append(entry)
            save_checkpoint(ckpt_path, model, optimizer, epoch + 1, step, args)
            _write_json(log_path, log)
            msg = f"epoch {epoch + 1}/{args.epochs}: loss {totals[0]:.4f} ({entry['time_s']:.1f} s)"
            if val_pairs:
                msg += "; val " + "; ".join(_summary(e) for e in entry["val"])
            if args.quiet or not sys.stderr.isatty():
                print(msg, flush=True)
            else:
                import tqdm

                tqdm.tqdm.write(msg)
    if dd.main:
        if args.figure and val_pairs:
            name, m, f, _, _ = val_pairs[0]
            warped, disp = _registered(model, m, f, device, args.bf16)
            from .figures import registration_figure

            log["figure"] = registration_figure(f[0, 0], m[0, 0], warped[0, 0], disp, os.path.join(args.output, "figure.png"),
                                                title=f"validation pair {name}")
        log["checkpoint"] = ckpt_path
        _write_json(log_path, log)
        print(f"fastwarp train: wrote {ckpt_path}, {log_path}" + (f", {log['figure']}" if "figure" in log else ""), flush=True)
    if dd.world > 1:
        dist.barrier()
    return log


def _worker_init(_):
    torch.set_num_threads(1)


def _progress(loader, epoch, args, dd):
    if args.quiet or not dd.main:
        return loader
    import tqdm

    return tqdm.tqdm(loader, desc=f"epoch {epoch + 1}/{args.epochs}", leave=False, dynamic_ncols=True,
                     disable=None)  # disable=None: no bar when stderr is not a terminal


def _write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        train(args)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
