"""fastwarp.warp against the ways registration code warps today, one pytest-benchmark group per
case (``warp-{2d,3d}-<size>-{cpu,cuda}-{fwd,fwdbwd}``):

- ``fastwarp``: ``fastwarp.warp(image, disp)``.
- ``grid_sample``: ``torch.nn.functional.grid_sample(image, grid, align_corners=True)`` on a
  normalized grid built once, untimed, from the same displacement: the floor of any
  grid_sample-based warp.
- ``voxelmorph``: VoxelMorph's ``SpatialTransformer`` written out in plain PyTorch, which
  builds the grid from the displacement on every call.
- ``voxelmorph-pkg``: the installed ``voxelmorph`` package's own ``SpatialTransformer``.
- ``monai``: ``monai.networks.blocks.Warp``.

The implementations, inputs and sizes live in ``fastwarp.bench`` (one copy, shared with
``python -m fastwarp.bench``). The last two are skipped when their package is not importable.
``fwdbwd`` is a training step's warp: the displacement requires grad, the image does not, and
the backward pass takes a fixed random ``grad_out`` (the gradient of ``out.sum()`` would be an
expanded stride-0 tensor, which no real loss produces). ``test_agreement`` checks, in float64,
that every baseline computes what fastwarp does, values and displacement gradient, so each
group compares like with like.

Every case records in ``extra_info`` its implementation, shape, device, threads and versions,
the bytes any implementation must move, and (when timed) the achieved GB/s; on CUDA the
``copy`` case measures the device's copy bandwidth in the same run for reference.
"""

import itertools
import math

import pytest
import torch

import fastwarp
from benchutil import build_or_skip, record_bandwidth
from fastwarp.app.bench.baselines import WARP_BASELINES as BASELINES
from fastwarp.app.bench.baselines import WARP_IMPLS as IMPLS
from fastwarp.app.bench.baselines import smooth_disp
from fastwarp.app.bench.cases import COPY_BYTES, DTYPE
from fastwarp.app.bench.cases import WARP_SHAPES as SHAPES
from fastwarp.app.bench.measure import describe, input_sets, nbytes, run_info, warp_bytes_moved


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwdbwd"])
@pytest.mark.parametrize("impl_name", list(IMPLS))
@pytest.mark.parametrize("nd", [2, 3], ids=["2d", "3d"])
def test_warp(benchmark, device, cpu_threads, fw_size, nd, impl_name, backward):
    spatial = SHAPES[fw_size][nd, device.type]
    impl = build_or_skip(IMPLS[impl_name], spatial, device, DTYPE)

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
    moved = warp_bytes_moved(image, disp, backward)
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
    record_bandwidth(benchmark, moved)


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
    record_bandwidth(benchmark, 2 * nbytes(src))


@pytest.mark.parametrize("impl_name", BASELINES)
@pytest.mark.parametrize("nd", [2, 3], ids=["2d", "3d"])
def test_agreement(device, nd, impl_name):
    """Each baseline computes what fastwarp.warp does: output and displacement gradient, in
    float64 at tiny sizes (batch 2, 2 channels, fields reaching past the borders)."""
    spatial = SHAPES["tiny"][nd, device.type]
    impl = build_or_skip(IMPLS[impl_name], spatial, device, torch.float64)
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
