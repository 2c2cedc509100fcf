"""Where a job runs: the device (one rule for ``--device``), and the processes of a
DistributedDataParallel run under ``torchrun`` (NCCL on GPUs, gloo on the CPU)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .. import has_cuda_kernels

__all__ = ["Processes", "start_processes", "resolve_device"]


@dataclass(frozen=True)
class Processes:
    """This process's place in the run: one process unless started by ``torchrun``."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def start_processes(device: str) -> Processes:
    """Joins the process group that ``torchrun`` set up (``WORLD_SIZE`` > 1), if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Processes()
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Processes(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def resolve_device(name: str, processes: Processes = Processes()) -> torch.device:
    """The device ``--device name`` means: ``auto`` is ``cuda`` when a GPU is visible, else
    ``cpu``; ``cuda`` without an index is the process's GPU (its local rank under torchrun),
    made current. A CUDA device needs a GPU and a fastwarp built with CUDA kernels."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA GPU is available")
        if not has_cuda_kernels():
            raise ValueError("--device cuda: this fastwarp build has no CUDA kernels (reinstall with a CUDA toolkit)")
        if device.index is None:
            device = torch.device("cuda", processes.local_rank if processes.world > 1 else torch.cuda.current_device())
        torch.cuda.set_device(device)
    return device
