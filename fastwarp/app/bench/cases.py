"""Problem sizes of the benchmark cases, by preset: ``full`` (the published figures) and ``tiny``
(a smoke run). One copy, shared by ``benchmarks/bench_*.py`` and ``python -m fastwarp.bench``."""

from __future__ import annotations

from typing import NamedTuple

import torch

DTYPE = torch.float32

SIZES = ("full", "tiny")

# Warp: spatial size by preset, then (dimensionality, device type). Batch 1, one channel.
WARP_SHAPES = {
    "full": {
        (2, "cpu"): (512, 512),
        (2, "cuda"): (512, 512),
        (3, "cpu"): (96, 112, 128),
        (3, "cuda"): (160, 192, 224),
    },
    "tiny": {
        (2, "cpu"): (16, 16),
        (2, "cuda"): (16, 16),
        (3, "cpu"): (8, 9, 10),
        (3, "cuda"): (8, 9, 10),
    },
}

# Size of the buffer the CUDA copy-bandwidth reference copies (it moves twice this: a read and
# a write).
COPY_BYTES = {"full": 512 << 20, "tiny": 1 << 20}


class NccCase(NamedTuple):
    nd: int
    shapes: dict  # device type -> (N, C, *spatial); a device type absent here skips the case
    window: int


NCC_CASES = {
    "full": {
        "2d": NccCase(2, {"cpu": (1, 1, 512, 512), "cuda": (1, 1, 512, 512)}, 9),
        "3d": NccCase(3, {"cpu": (1, 1, 96, 112, 128), "cuda": (1, 1, 160, 192, 224)}, 9),
        "3d-fused-lncc": NccCase(3, {"cuda": (2, 16, 128, 128, 128)}, 7),
    },
    "tiny": {
        "2d": NccCase(2, {"cpu": (1, 1, 16, 16), "cuda": (1, 1, 16, 16)}, 3),
        "3d": NccCase(3, {"cpu": (1, 1, 8, 9, 10), "cuda": (1, 1, 8, 9, 10)}, 3),
        "3d-fused-lncc": NccCase(3, {"cuda": (2, 3, 8, 9, 10)}, 3),
    },
}

NCC_MODES = ("fwd", "fwdbwd", "fwdbwd-both")
# (case, device type) pairs that skip fwdbwd-both: VoxelMorph's dense 9³ conv backward with
# respect to both inputs takes 8-15 s a call on a CPU, and the 2-D case already shows the cost.
NCC_NO_BOTH = {("3d", "cpu")}

# Training step of RegUNet(3), batch 1: spatial size by preset and device type. The GPU size is
# VoxelMorph's usual one; on a CPU a reduced one (VoxelMorph's conv NCC backward alone takes
# seconds there at the warp's 96x112x128). Multiples of 16 (RegUNet's four poolings).
TRAIN_SHAPES = {
    "full": {"cpu": (64, 64, 64), "cuda": (160, 192, 224)},
    "tiny": {"cpu": (16, 16, 16), "cuda": (16, 16, 16)},
}
TRAIN_WINDOW = 9
