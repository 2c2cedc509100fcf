"""Unsupervised training of the registration network: :func:`train` runs the epoch loop that a
:class:`~fastwarp.app.config.TrainConfig` describes; :func:`train_step` is one optimizer step,
the step that ``fastwarp bench`` times (:mod:`fastwarp.app.bench.train_step`).

Without ``config.data`` it trains on the brains embedded in the package. Under ``torchrun`` the
same code runs DistributedDataParallel; ``config.batch_size`` is the global batch, split evenly
over the processes. After every epoch the main process registers the held-out subjects and
writes ``checkpoint.pt`` and ``log.json`` to ``config.output``; at the end, ``figure.png`` of the
first validation pair.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from ..losses import MI, MSE, NCC, Grad
from . import data
from .checkpoints import CheckpointError, load_checkpoint, model_from_checkpoint, save_checkpoint
from .config import TrainConfig
from .files import replacing
from .metrics import evaluate
from .models import RegUNet
from .runtime import Processes, resolve_device, start_processes
from .similarity import MI_BINS

__all__ = ["train", "train_step", "Objective"]


# --------------------------------------------------------------------------- the step


@dataclass(frozen=True)
class Objective:
    """The training loss: ``similarity(warped, fixed) + lam * smoothness(disp)``."""

    similarity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    smoothness: Callable[[torch.Tensor], torch.Tensor]
    lam: float

    @classmethod
    def from_config(cls, config: TrainConfig, model: RegUNet) -> Objective:
        """The run's loss: NCC(window), MSE or MI, plus VoxelMorph's ``Grad("l2")`` of the
        displacement (scaled by the integration's downsizing in the diffeomorphic mode),
        weighted by ``config.smoothness_weight``."""
        similarity = {"ncc": lambda: NCC(config.window), "mse": MSE, "mi": lambda: MI(MI_BINS)}[config.similarity]()
        smoothness = Grad("l2", loss_mult=float(model.int_downsize) if model.diffeomorphic else None)
        return cls(similarity, smoothness, config.smoothness_weight)


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, objective: Objective,
               moving: torch.Tensor, fixed: torch.Tensor, bf16: bool = False) -> torch.Tensor:
    """One optimizer step on a batch: the network's forward (under bf16 autocast when ``bf16``;
    the warp stays float32), the loss, backward, ``optimizer.step()``. Returns ``(loss,
    similarity, smoothness)``, detached, without synchronising."""
    with torch.autocast(moving.device.type, dtype=torch.bfloat16, enabled=bf16):
        warped, disp = model(moving, fixed)
    similarity = objective.similarity(warped, fixed)
    smoothness = objective.smoothness(disp)
    loss = similarity + objective.lam * smoothness
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return torch.stack([loss.detach(), similarity.detach(), smoothness.detach()])


# --------------------------------------------------------------------------- the loop


def train(config: TrainConfig) -> dict:
    """Train as ``config`` says; returns the run's log (what ``log.json`` holds)."""
    processes = start_processes(config.device)
    device = resolve_device(config.device, processes)
    if config.batch_size % processes.world:
        raise ValueError(f"--batch-size {config.batch_size} must be a multiple of the number of processes "
                         f"({processes.world})")
    torch.manual_seed(config.seed)
    np.random.seed(config.seed % (2**32))
    resume = load_checkpoint(config.resume) if config.resume else None
    model = _model(config, resume).to(device)
    subjects = _Subjects.load(config, model.multiple)
    loader = _loader(subjects, config, processes, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    objective = Objective.from_config(config, model)
    log = {"args": dataclasses.asdict(config), "lambda": objective.lam, "pairing": subjects.pairing,
           "world_size": processes.world, "device": str(device), "model": model.config, "epochs": []}
    os.makedirs(config.output, exist_ok=True)
    log_path, ckpt_path = os.path.join(config.output, "log.json"), os.path.join(config.output, "checkpoint.pt")
    start_epoch, step = _resume(resume, optimizer, log, log_path) if resume is not None else (0, 0)
    net = model
    if processes.world > 1:
        device_ids = [device.index] if device.type == "cuda" else None
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    if processes.main:
        _announce(subjects, config, model, device, processes)

    model.train()
    for epoch in range(start_epoch, config.epochs):
        t0 = time.perf_counter()
        totals = _epoch(net, loader, optimizer, objective, epoch, config, processes, device)
        step += len(loader)
        if processes.main:
            entry = {"epoch": epoch + 1, "step": step, "loss": totals[0], "similarity": totals[1],
                     "smoothness": totals[2], "time_s": time.perf_counter() - t0}
            if subjects.validation:
                entry["val"] = _validate(model, subjects.validation, device, config)
            log["epochs"].append(entry)
            save_checkpoint(ckpt_path, model, optimizer, epoch + 1, step, config)
            _write_json(log_path, log)
            _report_epoch(entry, config)
    if processes.main:
        if config.figure and subjects.validation:
            log["figure"] = _figure(model, subjects.validation[0], device, config)
        log["checkpoint"] = ckpt_path
        _write_json(log_path, log)
        print(f"fastwarp train: wrote {ckpt_path}, {log_path}" + (f", {log['figure']}" if "figure" in log else ""),
              flush=True)
    if processes.world > 1:
        dist.barrier()
    return log


def _epoch(net, loader, optimizer, objective: Objective, epoch: int, config: TrainConfig, processes: Processes,
           device: torch.device) -> list[float]:
    """One pass over the training pairs; the mean (loss, similarity, smoothness) over the batches
    and the processes."""
    loader.sampler.set_epoch(epoch)
    loader.dataset.set_epoch(epoch)
    totals = torch.zeros(3, dtype=torch.float64, device=device)
    bar = _progress(loader, epoch, config, processes)
    for i, batch in enumerate(bar):
        moving, fixed = (t.to(device, non_blocking=True) for t in batch[:2])
        totals += train_step(net, optimizer, objective, moving, fixed, config.bf16).double()
        if hasattr(bar, "set_postfix") and (i % 10 == 9 or i == len(loader) - 1):
            bar.set_postfix(loss=f"{float(totals[0]) / (i + 1):.4f}")  # one host sync per 10 steps
    if processes.world > 1:
        dist.all_reduce(totals)
        totals /= processes.world
    return (totals / max(1, len(loader))).tolist()


# --------------------------------------------------------------------------- setup


def _model(config: TrainConfig, resume: dict | None) -> RegUNet:
    if resume is None:
        return RegUNet(config.ndim, config.enc, config.dec, config.diffeomorphic, config.int_steps, config.int_downsize)
    if resume["config"]["ndim"] != config.ndim:
        raise CheckpointError(f"--resume: {config.resume} is a {resume['config']['ndim']}-D model, "
                              f"but this run is --ndim {config.ndim}")
    return model_from_checkpoint(resume)


@dataclass
class _Subjects:
    """The run's subjects on the network's grid: the training volumes, the atlas, how they pair,
    and the validation pairs (the held-out subjects against the atlas or the first subject)."""

    volumes: list[data.Volume]
    atlas: data.Volume | None
    pairing: str
    validation: list[tuple]
    source: str

    @classmethod
    def load(cls, config: TrainConfig, multiple: int) -> _Subjects:
        embedded = config.data is None
        if embedded:
            specs = data.embedded()
            atlas_spec = data.VolumeSpec(config.atlas) if config.atlas else specs[0]
            held_out = data.find_volumes(config.val) if config.val else specs[1:]
        else:
            specs = data.find_volumes(config.data)
            atlas_spec = data.VolumeSpec(config.atlas) if config.atlas else None
            if config.val:
                held_out = data.find_volumes(config.val)
            elif len(specs) >= (2 if atlas_spec is not None else 3):
                specs, held_out = specs[:-1], specs[-1:]
            else:
                held_out = []
        pairing = config.pairing or ("atlas" if config.atlas else ("self" if embedded else "subject"))
        if embedded and not config.val and pairing != "self":
            # the real inter-subject pair (Colin27 -> MNI152) is held out: each brain trains
            # against deformed copies of itself only
            raise ValueError("with the embedded data the real inter-subject pair is held out for validation: "
                             "use --pairing self (the default), or give --val")

        @functools.cache  # (each file read once: the embedded atlas and held-out brain also train)
        def load(spec):
            return _on_model_grid(spec, config, multiple)

        volumes = [load(s) for s in specs]
        atlas = load(atlas_spec) if atlas_spec is not None else None
        fixed = atlas if atlas is not None else volumes[0]
        held_out = [load(s) for s in held_out]
        for v in volumes + held_out:
            if v.shape != fixed.shape:
                raise ValueError(f"{v.name}: shape {v.shape} differs from {fixed.name}'s {fixed.shape}; "
                                 "registration needs the volumes on one grid (resample them first)")
        validation = data.validation_pairs(held_out, fixed, config.ndim)
        return cls(volumes, atlas, pairing, validation, "the embedded brains" if embedded else config.data)


def _on_model_grid(spec: data.VolumeSpec, config: TrainConfig, multiple: int) -> data.Volume:
    vol = data.load_volume(spec.image, spec.labels)
    if config.ndim == 3 and vol.image.ndim != 3:
        raise ValueError(f"--ndim 3 needs 3-D volumes, but {vol.name} is {vol.image.ndim}-D (use --ndim 2)")
    in_plane = config.ndim == 2 and vol.image.ndim == 3  # axial slices: pad the in-plane axes only
    return data.to_model_grid(vol, multiple, config.downsample, axes=(0, 1) if in_plane else None)[0]


def _loader(subjects: _Subjects, config: TrainConfig, processes: Processes, device: torch.device):
    dataset = data.PairDataset(subjects.volumes, subjects.pairing, subjects.atlas,
                               length=config.steps * config.batch_size, ndim=config.ndim, augment=config.augment,
                               max_disp=config.max_disp, seed=config.seed)
    sampler = torch.utils.data.DistributedSampler(dataset, processes.world, processes.rank, shuffle=True,
                                                  seed=config.seed, drop_last=True)
    # Augmenting a 160x192x224 pair takes ~3 s on one core: a GPU step needs several workers.
    workers = config.workers if config.workers is not None else (
        max(1, min(8, (os.cpu_count() or 2) - 1)) if device.type == "cuda" else 1)
    workers = max(0, min(workers, os.cpu_count() or 1))
    return torch.utils.data.DataLoader(
        dataset, batch_size=config.batch_size // processes.world, sampler=sampler, num_workers=workers,
        pin_memory=device.type == "cuda", drop_last=True, persistent_workers=False,
        worker_init_fn=_worker_init if workers else None,
    )


def _worker_init(_):
    torch.set_num_threads(1)


def _resume(resume: dict, optimizer, log: dict, log_path: str) -> tuple[int, int]:
    """The optimizer's state and the epochs logged so far from a checkpoint; its (epoch, step)."""
    optimizer.load_state_dict(resume["optimizer"])
    epoch, step = int(resume["epoch"]), int(resume["step"])
    if os.path.exists(log_path):
        with open(log_path) as fh:
            log["epochs"] = [e for e in json.load(fh).get("epochs", []) if e["epoch"] <= epoch]
    return epoch, step


# --------------------------------------------------------------------------- validation and reports


def _registered(model, moving, fixed, device, bf16):
    model.eval()
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        warped, disp = model(moving.to(device), fixed.to(device))
    return warped.float().cpu(), disp.float().cpu()


def _validate(model, pairs, device, config: TrainConfig) -> list[dict]:
    out = []
    for name, m, f, ml, fl in pairs:
        _, disp = _registered(model, m, f, device, config.bf16)
        ev = evaluate(m, f, disp, ml, fl, window=config.window)
        ev["pair"] = name
        out.append(ev)
    model.train()
    return out


def _figure(model, pair, device, config: TrainConfig) -> str:
    from .figures import registration_figure

    name, m, f, _, _ = pair
    warped, disp = _registered(model, m, f, device, config.bf16)
    return registration_figure(f[0, 0], m[0, 0], warped[0, 0], disp, os.path.join(config.output, "figure.png"),
                               title=f"validation pair {name}")


def _summary(ev: dict) -> str:
    s = f"NCC {ev['ncc_before']:.4f} -> {ev['ncc_after']:.4f}"
    if "mean_dice_before" in ev:
        s += f", Dice {ev['mean_dice_before']:.4f} -> {ev['mean_dice_after']:.4f}"
    return s + f", folding {100 * ev['folding_fraction']:.3f}%"


def _announce(subjects: _Subjects, config: TrainConfig, model, device, processes: Processes) -> None:
    shape = subjects.volumes[0].shape
    print(f"fastwarp train: {len(subjects.volumes)} subject(s) from {subjects.source}, {subjects.pairing} pairs, "
          f"{config.ndim}-D {tuple(shape if config.ndim == 3 else shape[:2])}, "
          f"device {device}" + (f" x{processes.world} processes" if processes.world > 1 else ""), flush=True)
    if subjects.validation:
        for ev in _validate(model, subjects.validation, device, config):
            print(f"  before training: {ev['pair']}: {_summary(ev)}", flush=True)


def _progress(loader, epoch: int, config: TrainConfig, processes: Processes):
    if config.quiet or not processes.main:
        return loader
    import tqdm

    return tqdm.tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False, dynamic_ncols=True,
                     disable=None)  # disable=None: no bar when stderr is not a terminal


def _report_epoch(entry: dict, config: TrainConfig) -> None:
    msg = f"epoch {entry['epoch']}/{config.epochs}: loss {entry['loss']:.4f} ({entry['time_s']:.1f} s)"
    if "val" in entry:
        msg += "; val " + "; ".join(_summary(e) for e in entry["val"])
    if config.quiet or not sys.stderr.isatty():
        print(msg, flush=True)
    else:
        import tqdm

        tqdm.tqdm.write(msg)


def _write_json(path: str, obj) -> None:
    with replacing(path) as tmp, open(tmp, "w") as fh:
        json.dump(obj, fh, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
