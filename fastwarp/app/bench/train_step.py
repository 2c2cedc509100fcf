"""One training step of the registration network, on fastwarp's ops or on VoxelMorph's.

A step is what ``fastwarp train`` does per batch: ``warped, disp = model(moving, fixed)``, the
loss ``NCC(warped, fixed) + lam * Grad("l2")(disp)``, ``zero_grad``, ``backward``, Adam ``step``.
Both variants use :class:`fastwarp.models.RegUNet` ``(3)`` with VoxelMorph's default features,
built from the same seed (the same weights), on the same data:

- ``fastwarp``: the model as it is (its ``transformer`` is :class:`fastwarp.nn.SpatialTransformer`
  on fastwarp's warp kernels) and :class:`fastwarp.losses.NCC` ``(window)``.
- ``voxelmorph``: VoxelMorph's ops on the same network: the model's ``transformer`` swapped for
  :class:`~fastwarp.app.bench.baselines.VoxelMorphTransformer` (same call, ``(src, flow)``: an
  identity grid plus the flow, normalized, ``grid_sample``) and the similarity for VoxelMorph's
  classic conv NCC (:func:`~fastwarp.app.bench.baselines.voxelmorph_classic_ncc`).

The smoothness term (:class:`fastwarp.losses.Grad` ``("l2")``, plain PyTorch) is the same in both.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

import fastwarp
from fastwarp.losses import NCC, Grad
from fastwarp.app.models import RegUNet

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
        lam: the smoothness weight (1 for NCC, VoxelMorph's and ``fastwarp train``'s default).
        lr: Adam's learning rate (``fastwarp train``'s default, 1e-4).
    """

    def __init__(
        self,
        variant: str,
        spatial: Sequence[int],
        device: torch.device | str,
        seed: int = 0,
        window: int = TRAIN_WINDOW,
        lam: float = 1.0,
        lr: float = 1e-4,
    ):
        if variant not in TRAIN_VARIANTS:
            raise ValueError(f"variant must be one of {TRAIN_VARIANTS}, got {variant!r}")
        device = torch.device(device)
        self.variant = variant
        self.spatial = tuple(int(s) for s in spatial)
        self.device = device
        self.window = window
        self.lam = float(lam)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = RegUNet(3)
        if variant == "voxelmorph":
            # RegUNet calls self.transformer(moving, disp): VoxelMorph's transformer takes the
            # same (src, flow) and needs the size for its identity grid.
            model.transformer = VoxelMorphTransformer(self.spatial)
            self.similarity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = (
                lambda a, b: voxelmorph_classic_ncc(a, b, window))
            self.version = torch.__version__
        else:
            self.similarity = NCC(window)
            self.version = fastwarp.__version__
        self.model = model.to(device).train()
        self.smoothness = Grad("l2")
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr)
        self.description = _DESCRIPTIONS[variant]

    @property
    def parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def __call__(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        warped, disp = self.model(moving, fixed)
        loss = self.similarity(warped, fixed) + self.lam * self.smoothness(disp)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()
