"""fastwarp.warp against the ways registration code warps today, one pytest-benchmark group per
case (``warp-{2d,3d}-<size>-{cpu,cuda}-{fwd,fwdbwd}``):

- ``fastwarp``: ``fastwarp.warp(image, disp)``.
- ``grid_sample``: ``torch.nn.functional.grid_sample(image, grid, align_corners=True)`` on a
  normalized grid built once, untimed, from the same displacement: the floor of any
  grid_sample-based warp.
- ``voxelmorph``: VoxelMorph's ``SpatialTransformer`` written out in plain PyTorch (below), which
  builds the grid from the displacement on every call.
- ``voxelmorph-pkg``: the installed ``voxelmorph`` package's own ``SpatialTransformer``.
- ``monai``: ``monai.networks.blocks.Warp``.

The last two are skipped when their package is not importable. ``fwdbwd`` is a training step's
warp: the displacement requires grad, the image does not, and the backward pass takes a fixed
random ``grad_out`` (the gradient of ``out.sum()`` would be an expanded stride-0 tensor, which
no real loss produces). ``test_agreement`` checks, in float64, that every baseline computes what
fastwarp does, values and displacement gradient, so each group compares like with like.

Every case records in ``extra_info`` its implementation, shape, device, threads and versions,
the bytes any implementation must move, and (when timed) the achieved GB/s; on CUDA the
``copy`` case measures the device's copy bandwidth in the same run for reference.
"""

import itertools
import math
import os
import warnings
from collections.abc import Callable
from typing import NamedTuple

import pytest
import torch
import torch.nn.functional as F

import fastwarp
from benchutil import describe, input_sets, record_bandwidth, run_info

DTYPE = torch.float32

# Spatial sizes by preset (--fw-size), dimensionality and device type.
SHAPES = {
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

# Size of the buffer the CUDA copy case copies (it moves twice this: a read and a write).
COPY_BYTES = {"full": 512 << 20, "tiny": 1 << 20}


# --------------------------------------------------------------------------- inputs


def smooth_disp(spatial, seed, batch=1, amplitude=4.0, dtype=DTYPE):
    """A smooth displacement field like a registration network's output: normal noise at 1/16
    of the resolution, upsampled (bi/trilinearly) to ``spatial``, times ``amplitude`` voxels."""
    g = torch.Generator().manual_seed(seed)
    coarse = [max(2, s // 16) for s in spatial]
    noise = torch.randn(batch, len(spatial), *coarse, generator=g, dtype=torch.float64)
    mode = "bilinear" if len(spatial) == 2 else "trilinear"
    disp = F.interpolate(noise, size=tuple(spatial), mode=mode, align_corners=True) * amplitude
    return disp.to(dtype)


def normalized_grid(disp):
    """The ``grid_sample(..., align_corners=True)`` grid that samples where the voxel-unit
    ``disp`` points: ``(N, *spatial, ndim)``, x (the last spatial axis) first, contiguous."""
    spatial = disp.shape[2:]
    axes = [torch.arange(s, device=disp.device, dtype=disp.dtype) for s in spatial]
    identity = torch.stack(torch.meshgrid(*axes, indexing="ij"))
    scale = torch.tensor([2.0 / (s - 1) for s in spatial], device=disp.device, dtype=disp.dtype)
    grid = (identity + disp) * scale.view(-1, *[1] * len(spatial)) - 1
    return grid.movedim(1, -1).flip(-1).contiguous()


# --------------------------------------------------------------------------- implementations


class VoxelMorphTransformer(torch.nn.Module):
    """``voxelmorph.torch.layers.SpatialTransformer`` (VoxelMorph 0.2), as it is written there:
    an identity grid buffer built once; per call ``grid + flow``, each channel normalized to
    [-1, 1], moved channels-last, reversed to x-first, and ``grid_sample(align_corners=True)``."""

    def __init__(self, size, mode="bilinear"):
        super().__init__()
        self.mode = mode
        vectors = [torch.arange(0, s) for s in size]
        grid = torch.stack(torch.meshgrid(vectors, indexing="ij")).unsqueeze(0).float()
        self.register_buffer("grid", grid)

    def forward(self, src, flow):
        new_locs = self.grid + flow
        shape = flow.shape[2:]
        for i in range(len(shape)):
            new_locs[:, i, ...] = 2 * (new_locs[:, i, ...] / (shape[i] - 1) - 0.5)
        if len(shape) == 2:
            new_locs = new_locs.permute(0, 2, 3, 1)[..., [1, 0]]
        else:
            new_locs = new_locs.permute(0, 2, 3, 4, 1)[..., [2, 1, 0]]
        return F.grid_sample(src, new_locs, align_corners=True, mode=self.mode)


class Impl(NamedTuple):
    """One way to warp. ``prepare`` turns the voxel-unit displacement into what ``apply`` takes
    (untimed, differentiable); ``apply(image, prepared)`` is the timed warp."""

    prepare: Callable[[torch.Tensor], torch.Tensor]
    apply: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    version: str


def _as_is(disp):
    return disp


def _fastwarp(spatial, device, dtype):
    return Impl(_as_is, fastwarp.warp, fastwarp.__version__)


def _grid_sample(spatial, device, dtype):
    def apply(image, grid):
        return F.grid_sample(image, grid, align_corners=True)

    return Impl(normalized_grid, apply, torch.__version__)


def _voxelmorph(spatial, device, dtype):
    return Impl(_as_is, VoxelMorphTransformer(spatial).to(device, dtype), torch.__version__)


def _voxelmorph_pkg(spatial, device, dtype):
    # VoxelMorph 0.2 (and its neurite) pick their backend from these variables at import;
    # 0.3 and later are PyTorch-only and ignore them.
    os.environ.setdefault("VXM_BACKEND", "pytorch")
    os.environ.setdefault("NEURITE_BACKEND", "pytorch")
    vxm = pytest.importorskip("voxelmorph")
    if hasattr(vxm, "torch"):  # 0.2: SpatialTransformer(size), identity grid as a float buffer
        transformer = vxm.torch.layers.SpatialTransformer(spatial).to(device, dtype)
    else:  # 0.3+: size-free, builds and caches its identity grid on the first call
        transformer = vxm.nn.modules.SpatialTransformer()
    return Impl(_as_is, transformer, vxm.__version__)


def _monai(spatial, device, dtype):
    # MONAI's ddf has fastwarp's convention: voxel units, channel k displaces spatial axis k
    # (Warp reverses the channels to grid_sample's x-first order itself); test_agreement checks it.
    # Its ddf batch must equal the image batch.
    monai = pytest.importorskip("monai")
    from monai.networks.blocks import Warp

    with warnings.catch_warnings():
        # Without MONAI's compiled extension (pip wheels have none) Warp says that it uses
        # torch's grid_sample, which is the path we mean to measure.
        warnings.filterwarnings("ignore", message=".*Using PyTorch native grid_sample")
        warp = Warp(mode="bilinear", padding_mode="zeros")
    return Impl(_as_is, warp, monai.__version__)


IMPLS = {
    "fastwarp": _fastwarp,
    "grid_sample": _grid_sample,
    "voxelmorph": _voxelmorph,
    "voxelmorph-pkg": _voxelmorph_pkg,
    "monai": _monai,
}
BASELINES = [name for name in IMPLS if name != "fastwarp"]


# --------------------------------------------------------------------------- helpers


def _nbytes(t):
    return t.numel() * t.element_size()


def _bytes_moved(image, disp, backward):
    """The bytes any implementation must move: the forward pass reads the field and the image
    and writes the output; the field-gradient pass then reads grad_out, the field and the image
    and writes the field's gradient."""
    forward = _nbytes(disp) + 2 * _nbytes(image)
    return forward + (2 * _nbytes(image) + 2 * _nbytes(disp) if backward else 0)





@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwdbwd"])
@pytest.mark.parametrize("impl_name", list(IMPLS))
@pytest.mark.parametrize("nd", [2, 3], ids=["2d", "3d"])
def test_warp(benchmark, device, cpu_threads, fw_size, nd, impl_name, backward):
    spatial = SHAPES[fw_size][nd, device.type]
    impl = IMPLS[impl_name](spatial, device, DTYPE)

    # an input set: the image, the field (nd channels) and, for the backward pass, grad_out
    set_bytes = math.prod(spatial) * DTYPE.itemsize * (nd + (2 if backward else 1))
    g = torch.Generator().manual_seed(0)
    inputs = []
    for seed in range(input_sets(device, set_bytes)):
        image = torch.rand(1, 1, *spatial, generator=g, dtype=DTYPE).to(device)
        disp = smooth_disp(spatial, seed).to(device)
        prepared = impl.prepare(disp).detach().requires_grad_(backward)
        grad_out = torch.randn(image.shape, generator=g, dtype=DTYPE).to(device)
        inputs.append((image, prepared, grad_out))
    nbytes = _bytes_moved(image, disp, backward)
    sets = itertools.cycle(inputs)
    on_cuda = device.type == "cuda"

    def step():
        image, prepared, grad_out = next(sets)
        out = impl.apply(image, prepared)
        if backward:
            torch.autograd.grad(out, prepared, grad_out)
        if on_cuda:
            torch.cuda.synchronize()

    step()  # untimed: lazily built grids, allocator and kernel warm-up
    benchmark.group = f"warp-{nd}d-{'x'.join(map(str, spatial))}-{device.type}-{'fwdbwd' if backward else 'fwd'}"
    benchmark.extra_info.update(
        impl=impl_name,
        impl_version=impl.version,
        shape=list(image.shape),
        dtype=str(DTYPE),
        **run_info(device, cpu_threads, inputs),
    )
    benchmark(step)
    record_bandwidth(benchmark, nbytes)


def test_copy(benchmark, cuda_device, fw_size):
    """The device's copy bandwidth, to read the warps' GB/s against."""
    src = torch.rand(COPY_BYTES[fw_size] // 4, device=cuda_device)
    dst = torch.empty_like(src)

    def step():
        dst.copy_(src)
        torch.cuda.synchronize()

    step()
    benchmark.group = f"copy-cuda-{COPY_BYTES[fw_size] >> 20}MiB"
    benchmark.extra_info.update(impl="copy", device=describe(cuda_device), torch=torch.__version__)
    benchmark(step)
    record_bandwidth(benchmark, 2 * _nbytes(src))


@pytest.mark.parametrize("impl_name", BASELINES)
@pytest.mark.parametrize("nd", [2, 3], ids=["2d", "3d"])
def test_agreement(device, nd, impl_name):
    """Each baseline computes what fastwarp.warp does: output and displacement gradient, in
    float64 at tiny sizes (batch 2, 2 channels, fields reaching past the borders)."""
    spatial = SHAPES["tiny"][nd, device.type]
    impl = IMPLS[impl_name](spatial, device, torch.float64)
    g = torch.Generator().manual_seed(1)
    image = torch.rand(2, 2, *spatial, generator=g, dtype=torch.float64).to(device)
    disp = smooth_disp(spatial, seed=2, batch=2, dtype=torch.float64).to(device).requires_grad_()
    grad_out = torch.randn(image.shape, generator=g, dtype=torch.float64).to(device)

    expected = fastwarp.warp(image, disp)
    (expected_grad,) = torch.autograd.grad(expected, disp, grad_out)
    out = impl.apply(image, impl.prepare(disp))
    (grad,) = torch.autograd.grad(out, disp, grad_out)

    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-9, atol=1e-9)
