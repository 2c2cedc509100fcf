"""One training step of the registration network, on fastwarp's ops or on VoxelMorph's.

The step is ``fastwarp train``'s own, :func:`fastwarp.app.training.train_step` (forward, the loss
``similarity(warped, fixed) + lam * Grad("l2")(disp)``, ``zero_grad``, ``backward``, Adam
``step``), on the loss that :meth:`fastwarp.app.training.Objective.from_config` builds for
``fastwarp train``'s defaults. Both variants use :class:`fastwarp.app.models.RegUNet` ``(3)`` with
VoxelMorph's default features, built from the same seed (the same weights), on the same data:

- ``fastwarp``: the model as it is (its ``transformer`` is :class:`fastwarp.nn.SpatialTransformer`
  on fastwarp's warp kernels) and :class:`fastwarp.losses.NCC` ``(window)``.
- ``voxelmorph``: VoxelMorph's ops on the same network: the model's ``transformer`` swapped for
  :class:`~fastwarp.app.bench.baselines.VoxelMorphTransformer` (same call, ``(src, flow)``: an
  identity grid plus the flow, normalized, ``grid_sample``) and the similarity for VoxelMorph's
  classic conv NCC (:func:`~fastwarp.app.bench.baselines.voxelmorph_classic_ncc`).

The smoothness term (:class:`fastwarp.losses.Grad` ``("l2")``, plain PyTorch) is the same in both.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

import fastwarp

from ..config import TrainConfig
from ..models import RegUNet
from ..training import Objective, train_step
from .baselines import VoxelMorphTransformer, voxelmorph_classic_ncc
from .cases import TRAIN_WINDOW

__all__ = ["TRAIN_VARIANTS", "TrainStep"]

TRAIN_VARIANTS = ("fastwarp", "voxelmorph")

_DESCRIPTIONS = {
    "fastwarp": "RegUNet(3) with fastwarp's SpatialTransformer + fastwarp.losses.NCC + Grad('l2'), Adam",
    "voxelmorph": "RegUNet(3) with VoxelMorph's grid_sample SpatialTransformer + VoxelMorph's conv NCC "
                  "+ Grad('l2'), Adam",
}


class TrainStep:
    """A callable training step: ``TrainStep(variant, spatial, device)(moving, fixed)`` runs one
    step and returns the loss (detached, not synchronised).

    Args:
        variant: ``"fastwarp"`` or ``"voxelmorph"`` (see the module docstring).
        spatial: the volume size (multiples of 16).
        device: where the model and the optimizer state live.
        seed: the model's initialisation (the same seed gives both variants the same weights;
            the global random state is left as it was).
        window: the NCC window (9, VoxelMorph's default).
        lam: the smoothness weight (default ``fastwarp train``'s: 1 for NCC, VoxelMorph's).
        lr: Adam's learning rate (default ``fastwarp train``'s, 1e-4).
    """

    def __init__(self, variant: str, spatial: Sequence[int], device: torch.device | str, seed: int = 0,
                 window: int = TRAIN_WINDOW, lam: float | None = None, lr: float = TrainConfig.lr):
        if variant not in TRAIN_VARIANTS:
            raise ValueError(f"variant must be one of {TRAIN_VARIANTS}, got {variant!r}")
        self.variant = variant
        self.spatial = tuple(int(s) for s in spatial)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = RegUNet(3)
        self.objective = Objective.from_config(TrainConfig(window=window, lam=lam), model)
        if variant == "voxelmorph":
            # RegUNet calls self.transformer(moving, disp): VoxelMorph's transformer takes the
            # same (src, flow) and needs the size for its identity grid.
            model.transformer = VoxelMorphTransformer(self.spatial)
            self.objective = dataclasses.replace(self.objective,
                                                 similarity=lambda a, b: voxelmorph_classic_ncc(a, b, window))
            self.version = torch.__version__
        else:
            self.version = fastwarp.__version__
        self.model = model.to(device).train()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr)
        self.description = _DESCRIPTIONS[variant]

    @property
    def parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def __call__(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        return train_step(self.model, self.optimizer, self.objective, moving, fixed)[0]
