"""Checkpoints of the registration network: written by ``fastwarp train`` after every epoch
(model, optimizer, the model's and the run's configuration, epoch and step), read back to resume
and by ``fastwarp register``."""

from __future__ import annotations

import dataclasses
import os

import torch

from .config import TrainConfig
from .files import replacing
from .models import RegUNet

__all__ = ["save_checkpoint", "load_checkpoint", "model_from_checkpoint", "CheckpointError"]

FORMAT = "fastwarp-regunet-1"


class CheckpointError(ValueError):
    """A file that is not a fastwarp checkpoint, or one that does not fit the run."""


def save_checkpoint(path: str, model: RegUNet, optimizer: torch.optim.Optimizer, epoch: int, step: int,
                    config: TrainConfig) -> None:
    """Write the checkpoint atomically (a temporary file, renamed)."""
    ckpt = {
        "format": FORMAT,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "config": model.config,
        "args": dataclasses.asdict(config),
        "epoch": epoch,
        "step": step,
    }
    with replacing(path) as tmp:
        torch.save(ckpt, tmp)


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """Load a checkpoint written by ``fastwarp train``; errors name the file."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint: no such file: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception:  # (torch's message would advise weights_only=False: unsafe for a foreign file)
        raise CheckpointError(f"checkpoint: {path} is not a fastwarp checkpoint") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or "model" not in ckpt:
        raise CheckpointError(f"checkpoint: {path} is not a fastwarp checkpoint (written by `fastwarp train`)")
    return ckpt


def model_from_checkpoint(ckpt: dict) -> RegUNet:
    """The network of a loaded checkpoint, with its weights."""
    model = RegUNet(**ckpt["config"])
    model.load_state_dict(ckpt["model"])
    return model
