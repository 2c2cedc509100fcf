"""Sizes chosen for the CUDA launch geometry, on every device (cpu, cuda, and cuda_emu: the
CUDA kernels on the emulated launch): many blocks of 256 threads with a partial last block,
a field shared by the batch, the deterministic image gradient with hundreds of
contributions to one voxel, label maps, and the NCC's per-line and per-element launches.
Everything against float64 references."""

import pytest
import torch
import torch.nn.functional as F

import fastwarp
from fastwarp import _emu
from conftest import deterministic_algorithms
from reference import ncc_reference, smooth_field, voxelmorph_warp, warp_reference

THREADS = 256  # threads per block of the warp and NCC kernels (csrc/cuda/*.cu, kThreads)
PADDINGS = ["zeros", "border", "reflection"]
# (N, C, *spatial): N * points is several blocks, and not a multiple of THREADS
SHAPES = {2: (3, 2, 33, 37), 3: (2, 2, 9, 10, 13)}

pytestmark = pytest.mark.sanitize


def _launch_shape(points):
    assert points > 4 * THREADS and points % THREADS != 0, "not a multi-block, partial-block size"


def rand(shape, gen, lo=-1.0, hi=1.0):
    return torch.rand(shape, generator=gen, dtype=torch.float64) * (hi - lo) + lo


@pytest.mark.parametrize("nd", [2, 3])
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("shared_field", [False, True])
def test_warp_many_blocks(nd, padding, shared_field, device, gen):
    image = torch.randn(SHAPES[nd], generator=gen, dtype=torch.float64)
    n, points = image.shape[0], image[0, 0].numel()
    disp = smooth_field((1 if shared_field else n, nd, *image.shape[2:]), 3.0, gen) + rand(
        (1 if shared_field else n, nd, *image.shape[2:]), gen, -0.4, 0.4
    )
    _launch_shape(points * disp.shape[0])
    for mode in ("linear", "nearest"):
        got = fastwarp.warp(image.to(device), disp.to(device), mode, padding)
        torch.testing.assert_close(got.cpu(), warp_reference(image, disp, mode, padding), rtol=1e-12, atol=1e-12)

    grad_out = torch.randn(image.shape, generator=gen, dtype=torch.float64)

    def grads(fn, dev):
        im, d = image.to(dev).requires_grad_(), disp.to(dev).requires_grad_()
        fn(im, d, "bilinear", padding).backward(grad_out.to(dev))
        return im.grad.cpu(), d.grad.cpu()

    (ei, ed), (gi, gd) = grads(voxelmorph_warp, "cpu"), grads(fastwarp.warp, device)
    torch.testing.assert_close(gi, ei, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gd, ed, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("nd", [2, 3])
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("align_corners", [True, False])
def test_grid_sample_many_blocks(nd, padding, align_corners, device, gen):
    x = torch.randn(SHAPES[nd], generator=gen, dtype=torch.float64)
    out_spatial = (29, 41) if nd == 2 else (8, 13, 11)  # differs from the input's
    grid = rand((x.shape[0], *out_spatial, nd), gen, -1.2, 1.2)
    _launch_shape(x.shape[0] * grid[0, ..., 0].numel())
    grad_out = torch.randn((*x.shape[:2], *out_spatial), generator=gen, dtype=torch.float64)

    def run(fn, dev, mode):
        xi, gi = x.to(dev).requires_grad_(), grid.to(dev).requires_grad_()
        out = fn(xi, gi, mode, padding, align_corners)
        out.backward(grad_out.to(dev))
        return out.detach().cpu(), xi.grad.cpu(), gi.grad.cpu()

    for mode in ("bilinear", "nearest"):
        expected, got = run(F.grid_sample, "cpu", mode), run(fastwarp.grid_sample, device, mode)
        torch.testing.assert_close(got[0], expected[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got[1], expected[1], rtol=1e-10, atol=1e-10)
        if mode == "bilinear":
            torch.testing.assert_close(got[2], expected[2], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("key_bits", ["32", "64"])
@pytest.mark.parametrize("nd", [2, 3])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_deterministic_image_gradient_many_contributions(nd, dtype, key_bits, device, gen, monkeypatch):
    """A field that squeezes the whole image into a few voxels around its centre: each of
    those voxels receives hundreds of contributions, which the deterministic path (on CUDA:
    sort the keys, then one serial sum per voxel) must add up right, and the same way every
    run. On CUDA with 32-bit keys (the sizes here) and 64-bit ones (forced: they serve
    N * voxels >= 2^31)."""
    if key_bits == "64":
        if device.type == "cpu" and not _emu.active():
            pytest.skip("the CPU's deterministic path has no keys")
        monkeypatch.setenv("FASTWARP_DETERMINISTIC_KEYS", "64")
    shape = (2, 2, 23, 25) if nd == 2 else (2, 2, 11, 12, 10)
    spatial = shape[2:]
    image = torch.randn(shape, generator=gen, dtype=torch.float64)
    pos = torch.stack(torch.meshgrid([torch.arange(s, dtype=torch.float64) for s in spatial], indexing="ij"))
    centre = torch.tensor([(s - 1) / 2 for s in spatial], dtype=torch.float64).view(nd, *([1] * nd))
    disp = ((centre - pos) * 0.93).unsqueeze(0) + rand((2, nd, *spatial), gen, -0.3, 0.3)
    # how many (point, corner) pairs read the busiest voxel
    lower = (pos + disp).floor().long()
    flat = sum(lower[:, k] * int(torch.tensor(spatial[k + 1 :]).prod()) for k in range(nd))
    assert torch.bincount(flat.flatten()).max() >= 100

    grad_out = torch.randn(shape, generator=gen, dtype=torch.float64)
    ref = image.clone().requires_grad_()
    voxelmorph_warp(ref, disp).backward(grad_out)

    def image_grad():
        im = image.to(dtype).to(device).clone().requires_grad_()
        fastwarp.warp(im, disp.to(dtype).to(device)).backward(grad_out.to(dtype).to(device))
        return im.grad.cpu()

    with deterministic_algorithms():
        runs = [image_grad() for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    tol = 1e-10 if dtype == torch.float64 else 2e-4
    torch.testing.assert_close(runs[0].double(), ref.grad, rtol=tol, atol=tol)
    torch.testing.assert_close(image_grad().double(), ref.grad, rtol=tol, atol=tol)  # the default path


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64])
def test_labels_many_blocks(dtype, device, gen):
    labels = torch.randint(0, 250, SHAPES[3], generator=gen)
    if dtype == torch.int64:
        labels = labels + 2**40  # exact only if never routed through float
    disp = smooth_field((2, 3, *SHAPES[3][2:]), 3.0, gen).float()
    got = fastwarp.warp(labels.to(dtype).to(device), disp.to(device), mode="nearest")
    assert got.dtype == dtype
    assert torch.equal(got.cpu().long(), warp_reference(labels, disp.double(), "nearest"))


@pytest.mark.parametrize(
    "shape, window",
    [((3, 2, 67, 45), (9, 5)), ((2, 2, 21, 23, 19), (5, 7, 3))],
)
def test_ncc_many_blocks(shape, window, device, gen):
    a = torch.rand(shape, generator=gen, dtype=torch.float64)
    b = 0.6 * a + 0.4 * torch.rand(shape, generator=gen, dtype=torch.float64)
    _launch_shape(a.numel())
    g = torch.randn(shape, generator=gen, dtype=torch.float64)
    ra, rb = a.clone().requires_grad_(), b.clone().requires_grad_()
    expected = ncc_reference(ra, rb, window)
    expected.backward(g)
    fa, fb = a.to(device).requires_grad_(), b.to(device).requires_grad_()
    got = fastwarp.ncc(fa, fb, window, reduction="none")
    got.backward(g.to(device))
    torch.testing.assert_close(got.detach().cpu(), expected.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fa.grad.cpu(), ra.grad, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(fb.grad.cpu(), rb.grad, rtol=1e-9, atol=1e-11)
