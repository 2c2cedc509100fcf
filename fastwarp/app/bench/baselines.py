"""The baselines fastwarp is measured against: one copy, used by ``benchmarks/bench_*.py`` and by
``fastwarp bench``.

Warp (:data:`WARP_IMPLS`, each ``factory(spatial, device, dtype) -> WarpImpl``):

- ``fastwarp``: ``fastwarp.warp(image, disp)``.
- ``grid_sample``: ``torch.nn.functional.grid_sample(image, grid, align_corners=True)`` on
  VoxelMorph's normalized grid (:func:`~fastwarp.app.fields.voxelmorph_grid`) built once,
  untimed, from the same displacement: the floor of any grid_sample-based warp.
- ``voxelmorph``: VoxelMorph's ``SpatialTransformer`` written out in plain PyTorch
  (:class:`VoxelMorphTransformer`), which builds the grid from the displacement on every call.
- ``voxelmorph-pkg``: the installed ``voxelmorph`` package's own ``SpatialTransformer``.
- ``monai``: ``monai.networks.blocks.Warp``.

Scaling and squaring (:data:`VECINT_IMPLS`, each ``factory(spatial, device, dtype, nsteps) ->
VecIntImpl``): ``fastwarp`` (``fastwarp.nn.VecInt``), ``voxelmorph`` (its ``VecInt`` in plain
PyTorch, :class:`VoxelMorphVecInt`), ``voxelmorph-pkg`` (the installed package's), ``monai``
(``monai.networks.blocks.DVF2DDF``).

NCC loss (:data:`NCC_IMPLS`, each ``factory(nd, window, device, dtype) -> NccImpl``):

- ``fastwarp``: ``fastwarp.losses.NCC(window)(a, b)``, i.e. ``-fastwarp.ncc(a, b, window)``.
- ``neurite``: ``-neurite.nn.functional.ncc(a, b, window_size=window)``.
- ``monai``: ``monai.losses.LocalNormalizedCrossCorrelationLoss(kernel_type="rectangular")``.
- ``voxelmorph-classic``: VoxelMorph's classic conv NCC loss in plain PyTorch
  (:func:`voxelmorph_classic_ncc`).
- ``fused_lncc`` (CUDA, 3-D, window 3..9, gradient to ``pred`` only): PyPI ``fused-lncc``.
- ``fireants`` (CUDA, 3-D): FireANTs' ``FusedLocalNormalizedCrossCorrelationLoss``.

Mutual information (:data:`MI_IMPLS`, each ``factory(kernel, bins, device, dtype) -> MiImpl``;
``kernel`` "bspline" or "gaussian"):

- ``fastwarp``: ``fastwarp.losses.MI(bins, kernel)(a, b)``, i.e. ``-fastwarp.mi(a, b, bins, kernel)``.
- ``monai``: ``monai.losses.GlobalMutualInformationLoss(kernel_type, num_bins=bins)`` ("gaussian",
  or "b-spline": a box kernel for its target image, so not quite fastwarp's definition).
- ``neurite``: not applicable: neurite's PyTorch backend (``neurite.nn.functional``) has no
  mutual information (its MI is TensorFlow's).
- ``fireants`` (CUDA): FireANTs' fused ``FusedGlobalMutualInformationLoss(kernel_type, num_bins=bins)``
  ("gaussian" or "b-spline"; its other defaults, which smooth the histograms after the fused
  pass, so its values differ from fastwarp's and MONAI's).

The peers are imported inside the factories only, never when this module is imported. A
factory whose package is not importable raises :class:`BaselineUnavailable` (an
``ImportError``); one that does not apply (the fused NCCs off CUDA, in 2-D, or at another
window) raises :class:`BaselineNotApplicable`. The pytest modules turn both into skips.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import math
import os
import warnings
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F

import fastwarp
from fastwarp.losses import MI, NCC

from ..fields import normalized_grid, voxel_grid, voxelmorph_grid

__all__ = [
    "BaselineUnavailable",
    "BaselineNotApplicable",
    "VoxelMorphTransformer",
    "voxelmorph_classic_ncc",
    "WarpImpl",
    "NccImpl",
    "WARP_IMPLS",
    "WARP_BASELINES",
    "NCC_IMPLS",
    "NCC_BASELINES",
    "MiImpl",
    "MI_IMPLS",
    "VoxelMorphVecInt",
    "VecIntImpl",
    "VECINT_IMPLS",
]


class BaselineUnavailable(ImportError):
    """A baseline's package is not installed (``installed`` is False) or fails to import."""

    def __init__(self, name: str, reason: str, installed: bool = True):
        super().__init__(f"{name}: {reason}")
        self.baseline = name
        self.reason = reason
        self.installed = installed


class BaselineNotApplicable(Exception):
    """A baseline does not apply here: another device, dimensionality, window or gradient."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"{name}: {reason}")
        self.baseline = name
        self.reason = reason


def _missing(error: ImportError, module: str) -> bool:
    """Whether ``error`` says that ``module``'s top-level package is not installed, rather than
    that it is there and failed to import (a missing dependency or submodule, a broken build)."""
    return isinstance(error, ModuleNotFoundError) and error.name == module.partition(".")[0]


def _import(baseline: str, module: str):
    """``importlib.import_module(module)``, a failure turned into BaselineUnavailable (what
    ``pytest.importorskip`` skipped on): an ``ImportError``, or anything else a package raises
    at import (fused_lncc JIT-compiles its kernel then; FireANTs' fused ops may be built for
    another torch)."""
    try:
        return importlib.import_module(module)
    except Exception as e:  # noqa: BLE001
        missing = isinstance(e, ImportError) and _missing(e, module)
        reason = "not installed" if missing else f"could not import {module!r}: {type(e).__name__}: {e}"
        raise BaselineUnavailable(baseline, reason, installed=not missing) from e


def _dist_version(*names: str) -> str:
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return "unknown"


# --------------------------------------------------------------------------- warp


class VoxelMorphTransformer(torch.nn.Module):
    """``voxelmorph.torch.layers.SpatialTransformer`` (VoxelMorph 0.2), as it is written there:
    an identity grid buffer built once; per call ``grid + flow``, each channel normalized to
    [-1, 1], moved channels-last, reversed to x-first
    (:func:`~fastwarp.app.fields.normalized_grid`), and ``grid_sample(align_corners=True)``."""

    def __init__(self, size, mode="bilinear"):
        super().__init__()
        self.mode = mode
        self.register_buffer("grid", voxel_grid(size, dtype=torch.float32).unsqueeze(0))

    def forward(self, src, flow):
        return F.grid_sample(src, normalized_grid(self.grid + flow), align_corners=True, mode=self.mode)


class WarpImpl(NamedTuple):
    """One way to warp. ``prepare`` turns the voxel-unit displacement into what ``apply`` takes
    (untimed, differentiable); ``apply(image, prepared)`` is the timed warp, ``nearest`` the
    same with nearest-neighbour sampling (a label map's warp), where the implementation has it."""

    prepare: Callable[[torch.Tensor], torch.Tensor]
    apply: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    version: str
    nearest: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None


def _as_is(disp):
    return disp


def _warp_fastwarp(spatial, device, dtype):
    return WarpImpl(_as_is, fastwarp.warp, fastwarp.__version__, functools.partial(fastwarp.warp, mode="nearest"))


def _warp_grid_sample(spatial, device, dtype):
    def apply(image, grid):
        return F.grid_sample(image, grid, align_corners=True)

    def nearest(image, grid):
        return F.grid_sample(image, grid, mode="nearest", align_corners=True)

    return WarpImpl(voxelmorph_grid, apply, torch.__version__, nearest)


def _warp_voxelmorph(spatial, device, dtype):
    return WarpImpl(_as_is, VoxelMorphTransformer(spatial).to(device, dtype), torch.__version__,
                    VoxelMorphTransformer(spatial, mode="nearest").to(device, dtype))


def _warp_voxelmorph_pkg(spatial, device, dtype):
    # VoxelMorph 0.2 (and its neurite) pick their backend from these variables at import;
    # 0.3 and later are PyTorch-only and ignore them.
    os.environ.setdefault("VXM_BACKEND", "pytorch")
    os.environ.setdefault("NEURITE_BACKEND", "pytorch")
    vxm = _import("voxelmorph-pkg", "voxelmorph")
    if hasattr(vxm, "torch"):  # 0.2: SpatialTransformer(size), identity grid as a float buffer
        transformer = vxm.torch.layers.SpatialTransformer(spatial).to(device, dtype)
        nearest = vxm.torch.layers.SpatialTransformer(spatial, mode="nearest").to(device, dtype)
    else:  # 0.3+: size-free, builds and caches its identity grid on the first call
        transformer = vxm.nn.modules.SpatialTransformer()
        nearest = vxm.nn.modules.SpatialTransformer(interpolation_mode="nearest")
    return WarpImpl(_as_is, transformer, vxm.__version__, nearest)


def _warp_monai(spatial, device, dtype):
    # MONAI's ddf has fastwarp's convention: voxel units, channel k displaces spatial axis k
    # (Warp reverses the channels to grid_sample's x-first order itself); the agreement tests
    # check it. Its ddf batch must equal the image batch.
    monai = _import("monai", "monai")
    from monai.networks.blocks import Warp

    with warnings.catch_warnings():
        # Without MONAI's compiled extension (pip wheels have none) Warp says that it uses
        # torch's grid_sample, which is the path we mean to measure.
        warnings.filterwarnings("ignore", message=".*Using PyTorch native grid_sample")
        warp = Warp(mode="bilinear", padding_mode="zeros")
        nearest = Warp(mode="nearest", padding_mode="zeros")
    return WarpImpl(_as_is, warp, monai.__version__, nearest)


WARP_IMPLS = {
    "fastwarp": _warp_fastwarp,
    "grid_sample": _warp_grid_sample,
    "voxelmorph": _warp_voxelmorph,
    "voxelmorph-pkg": _warp_voxelmorph_pkg,
    "monai": _warp_monai,
}
WARP_BASELINES = [name for name in WARP_IMPLS if name != "fastwarp"]


# --------------------------------------------------------------------------- scaling and squaring


class VoxelMorphVecInt(torch.nn.Module):
    """``voxelmorph.torch.layers.VecInt`` (VoxelMorph 0.2), as written there: ``vec * 2**-nsteps``,
    then ``nsteps`` times ``vec = vec + SpatialTransformer(vec, vec)``."""

    def __init__(self, size, nsteps=7):
        super().__init__()
        self.scale = 1.0 / 2**nsteps
        self.nsteps = nsteps
        self.transformer = VoxelMorphTransformer(size)

    def forward(self, vec):
        vec = vec * self.scale
        for _ in range(self.nsteps):
            vec = vec + self.transformer(vec, vec)
        return vec


class VecIntImpl(NamedTuple):
    """One way to integrate a stationary velocity field by scaling and squaring: ``integrate``
    maps a voxel-unit velocity ``(1, 3, *spatial)`` to the displacement of its exponential."""

    integrate: Callable[[torch.Tensor], torch.Tensor]
    version: str


def _vecint_fastwarp(spatial, device, dtype, nsteps):
    return VecIntImpl(fastwarp.nn.VecInt(spatial, nsteps), fastwarp.__version__)


def _vecint_voxelmorph(spatial, device, dtype, nsteps):
    return VecIntImpl(VoxelMorphVecInt(spatial, nsteps).to(device, dtype), torch.__version__)


def _vecint_voxelmorph_pkg(spatial, device, dtype, nsteps):
    os.environ.setdefault("VXM_BACKEND", "pytorch")
    os.environ.setdefault("NEURITE_BACKEND", "pytorch")
    vxm = _import("voxelmorph-pkg", "voxelmorph")
    if hasattr(vxm, "torch"):  # 0.2: VecInt(inshape, nsteps)
        return VecIntImpl(vxm.torch.layers.VecInt(spatial, nsteps).to(device, dtype), vxm.__version__)
    # 0.3+: IntegrateVelocityField(steps=...), the same scaling and squaring
    return VecIntImpl(vxm.nn.modules.IntegrateVelocityField(steps=nsteps), vxm.__version__)


def _vecint_monai(spatial, device, dtype, nsteps):
    # MONAI's DVF2DDF: the same scaling and squaring (ddf + Warp(ddf, ddf), nsteps times), with
    # fastwarp's convention for the field (voxel units, channel k along spatial axis k).
    monai = _import("monai", "monai")
    from monai.networks.blocks import DVF2DDF

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Using PyTorch native grid_sample")
        integrate = DVF2DDF(num_steps=nsteps, mode="bilinear", padding_mode="zeros")
    return VecIntImpl(integrate, monai.__version__)


VECINT_IMPLS = {
    "fastwarp": _vecint_fastwarp,
    "voxelmorph": _vecint_voxelmorph,
    "voxelmorph-pkg": _vecint_voxelmorph_pkg,
    "monai": _vecint_monai,
}


# --------------------------------------------------------------------------- NCC


def voxelmorph_classic_ncc(I, J, win):
    """VoxelMorph's classic local NCC loss (``voxelmorph/torch/losses.py``, ``NCC.loss``), in plain
    PyTorch: a ``ones(1, 1, *win)`` sum filter, ``conv{2,3}d`` with padding ``win // 2`` on I, J,
    I², J², IJ, then the mean-based cross and variances, ``cc = cross² / (I_var·J_var + 1e-5)``,
    loss ``-mean(cc)``.  The original takes one channel; batch and channels are folded into the
    batch here (per-channel NCC, identical for C = 1)."""
    nd = I.dim() - 2
    n_, c_ = I.shape[:2]
    if c_ != 1:
        I = I.reshape(n_ * c_, 1, *I.shape[2:])
        J = J.reshape(n_ * c_, 1, *J.shape[2:])
    win = [win] * nd if isinstance(win, int) else list(win)
    sum_filt = torch.ones([1, 1, *win], device=I.device, dtype=I.dtype)
    pad_no = math.floor(win[0] / 2)
    stride, padding = (1,) * nd, (pad_no,) * nd
    conv_fn = getattr(F, f"conv{nd}d")

    I2, J2, IJ = I * I, J * J, I * J
    I_sum = conv_fn(I, sum_filt, stride=stride, padding=padding)
    J_sum = conv_fn(J, sum_filt, stride=stride, padding=padding)
    I2_sum = conv_fn(I2, sum_filt, stride=stride, padding=padding)
    J2_sum = conv_fn(J2, sum_filt, stride=stride, padding=padding)
    IJ_sum = conv_fn(IJ, sum_filt, stride=stride, padding=padding)

    win_size = math.prod(win)
    u_I = I_sum / win_size
    u_J = J_sum / win_size
    cross = IJ_sum - u_J * I_sum - u_I * J_sum + u_I * u_J * win_size
    I_var = I2_sum - 2 * u_I * I_sum + u_I * u_I * win_size
    J_var = J2_sum - 2 * u_J * J_sum + u_J * u_J * win_size
    cc = cross * cross / (I_var * J_var + 1e-5)
    return -torch.mean(cc)


class NccImpl(NamedTuple):
    """One way to compute the NCC loss: ``loss(a, b)`` is a scalar tensor (``a`` the moving image,
    ``b`` the fixed one); ``grad_both`` whether it can differentiate with respect to both."""

    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    version: str
    grad_both: bool = True


def _ncc_fastwarp(nd, window, device, dtype):
    return NccImpl(NCC(window), fastwarp.__version__)


def _ncc_neurite(nd, window, device, dtype):
    os.environ.setdefault("NEURITE_BACKEND", "pytorch")  # neurite < 0.3 picks its backend at import
    _import("neurite", "neurite")
    nef = _import("neurite", "neurite.nn.functional")

    def loss(a, b):
        return -nef.ncc(a, b, window_size=window).reshape(())

    return NccImpl(loss, _dist_version("neurite"))


def _ncc_monai(nd, window, device, dtype, **options):
    """``options`` go to MONAI's loss (``smooth_nr``, ``smooth_dr``: the agreement tests)."""
    monai = _import("monai", "monai")
    from monai.losses import LocalNormalizedCrossCorrelationLoss

    module = LocalNormalizedCrossCorrelationLoss(
        spatial_dims=nd, kernel_size=window, kernel_type="rectangular", **options
    ).to(device)
    return NccImpl(module, monai.__version__)


def _ncc_voxelmorph_classic(nd, window, device, dtype):
    def loss(a, b):
        return voxelmorph_classic_ncc(a, b, window)

    return NccImpl(loss, torch.__version__)


def _fused(name, nd, device):
    """The fused NCCs run on CUDA, in 3-D only."""
    if device.type != "cuda":
        raise BaselineNotApplicable(name, "CUDA only")
    if nd != 3:
        raise BaselineNotApplicable(name, "3-D only")


def _ncc_fused_lncc(nd, window, device, dtype):
    name = "fused_lncc"
    _fused(name, nd, device)
    if window not in (3, 5, 7, 9):
        raise BaselineNotApplicable(name, "windows 3, 5, 7, 9 only")
    fused_lncc_loss = _import(name, "fused_lncc").fused_lncc_loss

    def loss(a, b):  # 1 - mean(cc); the gradient flows to `pred` (a) only
        return fused_lncc_loss(a, b, kernel_size=window)

    return NccImpl(loss, _dist_version("fused-lncc", "fused_lncc"), grad_both=False)


def _ncc_fireants(nd, window, device, dtype):
    name = "fireants"
    _fused(name, nd, device)
    FusedLocalNormalizedCrossCorrelationLoss = _import(name, "fireants.losses.fusedcc").FusedLocalNormalizedCrossCorrelationLoss
    options = dict(spatial_dims=3, kernel_size=window, reduction="mean", smooth_nr=0.0, smooth_dr=1e-5)
    version = _dist_version("fireants", "FireANTs")
    try:  # the exact gradient (newer versions default to ANTs' approximation), separable box sums
        module = FusedLocalNormalizedCrossCorrelationLoss(**options, use_ants_gradient=False, use_separable=True)
    except TypeError:  # a version without these options: its defaults
        module = FusedLocalNormalizedCrossCorrelationLoss(**options)
        version += " (default gradient options)"
    return NccImpl(module.to(device), version)


NCC_IMPLS = {
    "fastwarp": _ncc_fastwarp,
    "neurite": _ncc_neurite,
    "monai": _ncc_monai,
    "voxelmorph-classic": _ncc_voxelmorph_classic,
    "fused_lncc": _ncc_fused_lncc,
    "fireants": _ncc_fireants,
}
NCC_BASELINES = [name for name in NCC_IMPLS if name != "fastwarp"]


class MiImpl(NamedTuple):
    """One way to compute the MI loss: ``loss(a, b)`` is a scalar tensor, ``-MI``."""

    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    version: str


def _mi_fastwarp(kernel, bins, device, dtype):
    return MiImpl(MI(bins, kernel), fastwarp.__version__)


def _mi_monai(kernel, bins, device, dtype):
    monai = _import("monai", "monai")
    from monai.losses import GlobalMutualInformationLoss

    kind = {"bspline": "b-spline", "gaussian": "gaussian"}[kernel]
    return MiImpl(GlobalMutualInformationLoss(kernel_type=kind, num_bins=bins).to(device), monai.__version__)


def _mi_neurite(kernel, bins, device, dtype):
    # (a neurite whose PyTorch backend gains an MI would be timed here; none has one yet)
    os.environ.setdefault("NEURITE_BACKEND", "pytorch")
    _import("neurite", "neurite.nn.functional")
    raise BaselineNotApplicable("neurite", "no mutual information in neurite's PyTorch backend")


def _mi_fireants(kernel, bins, device, dtype):
    name = "fireants"
    if device.type != "cuda":
        raise BaselineNotApplicable(name, "CUDA only")
    module = _import(name, "fireants.losses.fusedmi").FusedGlobalMutualInformationLoss
    kind = {"bspline": "b-spline", "gaussian": "gaussian"}[kernel]
    # its defaults otherwise: sigma_ratio 1, the histograms smoothed after the fused pass
    # ("approximate_reduction"), so its values are not fastwarp's or MONAI's; timed as it ships
    return MiImpl(module(kernel_type=kind, num_bins=bins).to(device), _dist_version("fireants", "FireANTs"))


MI_IMPLS = {
    "fastwarp": _mi_fastwarp,
    "monai": _mi_monai,
    "neurite": _mi_neurite,
    "fireants": _mi_fireants,
}
