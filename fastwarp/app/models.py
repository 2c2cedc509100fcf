"""The registration network: VoxelMorph's UNet (``VxmDense``) with its warp and, in the
diffeomorphic mode, its scaling-and-squaring integration on fastwarp's kernels."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..nn import SpatialTransformer, VecInt

__all__ = ["RegUNet", "default_features"]


def default_features() -> tuple[tuple[int, ...], tuple[int, ...]]:
    """VoxelMorph's published encoder and decoder features (``default_unet_features``)."""
    return (16, 32, 32, 32), (32, 32, 32, 32, 32, 16, 16)


def _conv(ndim: int, cin: int, cout: int) -> nn.Module:
    return (nn.Conv2d if ndim == 2 else nn.Conv3d)(cin, cout, 3, padding=1)


class _ConvBlock(nn.Sequential):
    """3×3(×3) convolution, stride 1, then LeakyReLU(0.2): VoxelMorph's ``ConvBlock``."""

    def __init__(self, ndim: int, cin: int, cout: int):
        super().__init__(_conv(ndim, cin, cout), nn.LeakyReLU(0.2))


class _UNet(nn.Module):
    """VoxelMorph's ``Unet`` with one convolution per level: max-pool down, nearest up, skip
    connections by concatenation, then the extra full-resolution decoder convolutions."""

    def __init__(self, ndim: int, in_channels: int, enc: Sequence[int], dec: Sequence[int]):
        super().__init__()
        if len(dec) < len(enc):
            raise ValueError(f"dec_features needs at least as many entries as enc_features ({len(enc)}), got {len(dec)}")
        self.levels = len(enc)
        self.encoder = nn.ModuleList()
        prev, skips = in_channels, []
        for nf in enc:
            self.encoder.append(_ConvBlock(ndim, prev, nf))
            skips.append(nf)
            prev = nf
        self.decoder = nn.ModuleList()
        for level, nf in enumerate(dec[: len(enc)]):
            self.decoder.append(_ConvBlock(ndim, prev, nf))
            prev = nf + skips[len(enc) - 1 - level]
        self.remaining = nn.ModuleList()
        for nf in dec[len(enc):]:
            self.remaining.append(_ConvBlock(ndim, prev, nf))
            prev = nf
        self.out_channels = prev
        self.pool = nn.MaxPool2d(2) if ndim == 2 else nn.MaxPool3d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        history = []
        for conv in self.encoder:
            x = conv(x)
            history.append(x)
            x = self.pool(x)
        for conv in self.decoder:
            x = conv(x)
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = torch.cat([x, history.pop()], dim=1)
        for conv in self.remaining:
            x = conv(x)
        return x


def _resize_field(field: torch.Tensor, factor: float) -> torch.Tensor:
    """Resample a voxel-unit field by ``factor`` and rescale its vectors to the new voxel size
    (VoxelMorph's ``ResizeTransform``)."""
    mode = "bilinear" if field.dim() == 4 else "trilinear"
    if factor < 1:
        return factor * F.interpolate(field, scale_factor=factor, mode=mode, align_corners=True)
    return F.interpolate(factor * field, scale_factor=factor, mode=mode, align_corners=True)


class RegUNet(nn.Module):
    """Unsupervised deformable registration network, VoxelMorph's ``VxmDense``.

    ``RegUNet(ndim)(moving, fixed)`` stacks the two images (N, C, *spatial) as channels, runs
    the UNet, and returns ``(warped, disp)``: the moving image warped onto the fixed one and
    the displacement field (N, ndim, *spatial) in voxel units, ``warped(p) = moving(p + disp(p))``.

    Args:
        ndim: 2 or 3 spatial dimensions.
        enc_features, dec_features: UNet features per level; VoxelMorph's published defaults
            ``(16, 32, 32, 32)`` and ``(32, 32, 32, 32, 32, 16, 16)``. Spatial sizes must be
            multiples of ``2 ** len(enc_features)`` (16 by default).
        diffeomorphic: predict a stationary velocity field and integrate it by scaling and
            squaring (``int_steps`` warps of the field by itself on fastwarp's kernels), at
            ``1 / int_downsize`` resolution as VoxelMorph does.
        int_steps, int_downsize: VoxelMorph's defaults, 7 and 2.
        in_channels: channels of each image (the UNet sees ``2 * in_channels``).

    The flow head is initialised with weights N(0, 1e-5) and zero bias, so an untrained model
    is (almost exactly) the identity warp.
    """

    def __init__(
        self,
        ndim: int = 3,
        enc_features: Sequence[int] | None = None,
        dec_features: Sequence[int] | None = None,
        diffeomorphic: bool = False,
        int_steps: int = 7,
        int_downsize: int = 2,
        in_channels: int = 1,
    ):
        super().__init__()
        if ndim not in (2, 3):
            raise ValueError(f"ndim must be 2 or 3, got {ndim}")
        enc_default, dec_default = default_features()
        enc = tuple(int(f) for f in (enc_features if enc_features is not None else enc_default))
        dec = tuple(int(f) for f in (dec_features if dec_features is not None else dec_default))
        if int_steps < 0 or int_downsize < 1:
            raise ValueError(f"int_steps must be >= 0 and int_downsize >= 1, got {int_steps} and {int_downsize}")
        self.config = dict(
            ndim=ndim, enc_features=list(enc), dec_features=list(dec), diffeomorphic=bool(diffeomorphic),
            int_steps=int(int_steps), int_downsize=int(int_downsize), in_channels=int(in_channels),
        )
        self.ndim = ndim
        self.unet = _UNet(ndim, 2 * in_channels, enc, dec)
        self.flow = _conv(ndim, self.unet.out_channels, ndim)
        nn.init.normal_(self.flow.weight, mean=0.0, std=1e-5)
        nn.init.zeros_(self.flow.bias)
        self.diffeomorphic = bool(diffeomorphic) and int_steps > 0
        self.int_downsize = int(int_downsize) if self.diffeomorphic else 1
        self.integrate = VecInt(None, int_steps) if self.diffeomorphic else None
        self.transformer = SpatialTransformer(None)

    @property
    def multiple(self) -> int:
        """Spatial sizes must be multiples of this: 2 to the number of pooling levels (and of
        ``int_downsize`` in the diffeomorphic mode)."""
        return math.lcm(2**self.unet.levels, self.int_downsize)

    def _check(self, moving: torch.Tensor, fixed: torch.Tensor) -> None:
        for name, t in (("moving", moving), ("fixed", fixed)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
            if t.dim() != self.ndim + 2:
                raise ValueError(f"{name} must be (N, C, {'D, ' if self.ndim == 3 else ''}H, W) for this {self.ndim}-D model, "
                                 f"got shape {tuple(t.shape)}")
        if moving.shape != fixed.shape:
            raise ValueError(f"moving {tuple(moving.shape)} and fixed {tuple(fixed.shape)} must have the same shape")
        if 2 * moving.shape[1] != self.unet.encoder[0][0].in_channels:
            raise ValueError(f"moving and fixed must have {self.config['in_channels']} channel(s), got {moving.shape[1]}")
        m = self.multiple
        if any(s % m for s in moving.shape[2:]):
            raise ValueError(f"spatial size {tuple(moving.shape[2:])} must be a multiple of {m} in every axis "
                             f"(pad with fastwarp.app.data.pad_to_multiple)")

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check(moving, fixed)
        flow = self.flow(self.unet(torch.cat([moving, fixed], dim=1)))
        if self.diffeomorphic:
            if self.int_downsize > 1:
                flow = _resize_field(flow, 1.0 / self.int_downsize)
            flow = self.integrate(flow)
            if self.int_downsize > 1:
                flow = _resize_field(flow, float(self.int_downsize))
        # The warp runs in float32 even under autocast: displacements of tens of voxels
        # need more than bf16's 8 bits of mantissa.
        with torch.autocast(moving.device.type, enabled=False):
            disp = flow.float()
            warped = self.transformer(moving.float(), disp)
        return warped, disp
