"""fastwarp.ncc against float64 plain-PyTorch references, on CPU (and CUDA
when present), at odd sizes and windows."""

import pytest
import torch

import fastwarp
from fastwarp import _emu
from fastwarp.losses import MSE, NCC
from reference import ncc_reference


def pair(shape, gen, dtype=torch.float64):
    a = torch.rand(shape, generator=gen, dtype=torch.float64)
    b = 0.6 * a + 0.4 * torch.rand(shape, generator=gen, dtype=torch.float64)  # correlated
    return a.to(dtype), b.to(dtype)


CASES = [
    ((2, 3, 9, 11), (5, 3)),  # 2-D, anisotropic
    ((1, 2, 7, 9, 8), (3, 5, 9)),  # 3-D, anisotropic, window as large as an axis
    ((2, 1, 13, 6, 5), (9, 9, 9)),  # window larger than the image along two axes
    ((1, 1, 17, 19, 23), (7, 7, 7)),  # sizes not a multiple of any tile
    ((1, 1, 6, 20, 30), (3, 17, 11)),  # beyond the GPU's streaming kernel (x > 9, y > 15): its fallback
]


@pytest.mark.sanitize
@pytest.mark.parametrize("shape, window", CASES)
def test_values_match_reference(shape, window, device, gen):
    a, b = pair(shape, gen)
    expected = ncc_reference(a, b, window)
    got = fastwarp.ncc(a.to(device), b.to(device), window, reduction="none")
    torch.testing.assert_close(got.cpu(), expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fastwarp.ncc(a.to(device), b.to(device), window).cpu(), expected.mean())
    batch = fastwarp.ncc(a.to(device), b.to(device), window, reduction="batch")
    assert batch.shape == shape[:2]
    torch.testing.assert_close(batch.cpu(), expected.flatten(2).mean(2))


@pytest.mark.sanitize
@pytest.mark.parametrize("shape, window", CASES[:3] + CASES[4:])
def test_gradients_match_autograd_through_reference(shape, window, device, gen):
    a, b = pair(shape, gen)
    g = torch.randn(shape, generator=gen, dtype=torch.float64)
    ra, rb = a.clone().requires_grad_(), b.clone().requires_grad_()
    ncc_reference(ra, rb, window).backward(g)
    fa, fb = a.to(device).requires_grad_(), b.to(device).requires_grad_()
    fastwarp.ncc(fa, fb, window, reduction="none").backward(g.to(device))
    torch.testing.assert_close(fa.grad.cpu(), ra.grad, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(fb.grad.cpu(), rb.grad, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("nd, window", [(2, 3), (3, (3, 1, 5))])
def test_gradcheck(nd, window, device, gen):
    a, b = pair((2, 2, 5, 6, 4)[: 2 + nd], gen)
    a, b = a.to(device).requires_grad_(), b.to(device).requires_grad_()
    # under the emulated launch a kernel launch costs ~0.05 s: gradcheck's fast mode checks
    # random projections of the Jacobian (a few launches) instead of all its columns
    fast = _emu.active()
    assert torch.autograd.gradcheck(lambda x, y: fastwarp.ncc(x, y, window, reduction="none"), (a, b), fast_mode=fast)
    # either input may be constant
    assert torch.autograd.gradcheck(lambda x: fastwarp.ncc(x, b.detach(), window), (a,), fast_mode=fast)
    assert torch.autograd.gradcheck(lambda y: fastwarp.ncc(a.detach(), y, window, reduction="batch"), (b,),
                                    fast_mode=fast)


@pytest.mark.sanitize
def test_large_intensity_offset(device, gen):
    """Images offset by +1000 (float32): the window sums are accumulated in float64, so the
    result matches the float64 reference of the same float32 values, where the naive
    float32 conv formula is far off."""
    a, b = pair((1, 1, 20, 21, 19), gen, torch.float32)
    a, b = a + 1000, b + 1000
    truth = ncc_reference(a.double(), b.double(), (9, 9, 9))
    got = fastwarp.ncc(a.to(device), b.to(device), 9, reduction="none").cpu()
    naive = ncc_reference(a, b, (9, 9, 9))
    err = (got.double() - truth).abs().max()
    naive_err = (naive.double() - truth).abs().max()
    assert err < 1e-5, err
    assert naive_err > 100 * err  # the cancellation is real, and avoided


@pytest.mark.sanitize
def test_constant_images_are_finite(device, gen):
    a = torch.full((1, 1, 6, 7, 5), 3.0, dtype=torch.float64, device=device, requires_grad=True)
    b, _ = pair((1, 1, 6, 7, 5), gen)
    b = b.to(device).requires_grad_()
    cc = fastwarp.ncc(a, b, 3, reduction="none")
    cc.sum().backward()
    assert torch.isfinite(cc).all() and torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()
    # zero variance inside (the zero padding makes border windows non-constant): cross is
    # zero too, so cc is zero there, and eps keeps the division finite
    assert cc[..., 1:-1, 1:-1, 1:-1].abs().max() < 1e-6


@pytest.mark.sanitize
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision(dtype, device, gen):
    a, b = pair((2, 1, 11, 12, 9), gen)
    a, b = a.to(dtype), b.to(dtype)
    truth = ncc_reference(a.double(), b.double(), (5, 5, 5))
    got = fastwarp.ncc(a.to(device), b.to(device), 5, reduction="none")
    assert got.dtype == dtype
    naive = ncc_reference(a, b, (5, 5, 5)) if dtype == torch.float32 else truth.to(dtype)
    err = (got.cpu().double() - truth).abs().max()
    naive_err = (naive.double() - truth).abs().max()
    # at most the rounding of the result, and never worse than twice the naive error
    assert err <= max(2 * naive_err, torch.finfo(dtype).eps), (err, naive_err)
    fa = a.to(device).detach().requires_grad_()
    fastwarp.ncc(fa, b.to(device), 5).backward()
    ra = a.detach().double().requires_grad_()
    ncc_reference(ra, b.double(), (5, 5, 5)).mean().backward()
    rel = (fa.grad.cpu().double() - ra.grad).abs().max() / ra.grad.abs().max()
    assert rel < 2 * torch.finfo(dtype).eps * 4, rel


@pytest.mark.sanitize
def test_non_contiguous_inputs(device, gen):
    a, b = pair((2, 3, 8, 9, 7), gen)
    at, bt = a.transpose(2, 4).to(device), b.permute(0, 1, 4, 3, 2).to(device)
    assert not at.is_contiguous()
    expected = ncc_reference(at.cpu().contiguous(), bt.cpu().contiguous(), (3, 5, 3))
    torch.testing.assert_close(fastwarp.ncc(at, bt, (3, 5, 3), reduction="none").cpu(), expected)


@pytest.mark.parametrize(
    "a, b, kwargs, exc, match",
    [
        (torch.rand(1, 1, 5, 6), torch.rand(1, 1, 5, 7), {}, ValueError, "b must have the shape of a"),
        (torch.rand(5, 6), torch.rand(5, 6), {}, ValueError, r"a must be \(N, C, H, W\)"),
        (torch.rand(1, 1, 5, 6), torch.rand(1, 1, 5, 6).double(), {}, TypeError, "share a dtype"),
        (torch.rand(1, 1, 5, 6), torch.ones(1, 1, 5, 6, dtype=torch.long), {}, TypeError, "floating point"),
        (torch.rand(1, 1, 5, 6), torch.empty(1, 1, 5, 6, device="meta"), {}, ValueError, "b is on meta but a is on cpu"),
        (torch.rand(1, 1, 5, 6), torch.rand(1, 1, 5, 6), {"window": 4}, ValueError, "odd"),
        (torch.rand(1, 1, 5, 6), torch.rand(1, 1, 5, 6), {"window": 0}, ValueError, "odd"),
        (torch.rand(1, 1, 5, 6), torch.rand(1, 1, 5, 6), {"window": -3}, ValueError, "odd"),
        (torch.rand(1, 1, 5, 6), torch.rand(1, 1, 5, 6), {"window": (3, 3, 3)}, ValueError, "2 odd ints"),
        (torch.rand(1, 1, 5, 6), torch.rand(1, 1, 5, 6), {"reduction": "sum"}, ValueError, "reduction"),
    ],
)
def test_bad_input(a, b, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        fastwarp.ncc(a, b, **kwargs)


def test_opcheck(device, gen):
    a, b = pair((2, 2, 6, 7, 5), gen)
    a, b = a.to(device).requires_grad_(), b.to(device).requires_grad_()
    for reduction in (0, 1, 2):  # none, mean, batch
        torch.library.opcheck(torch.ops.fastwarp.ncc.default, (a, b, [3, 5, 3], 1e-5, reduction))
    torch.library.opcheck(torch.ops.fastwarp.ncc.default, (a.detach(), b, [9, 9, 9], 1e-3))
    shapes = {0: a.shape, 1: (), 2: a.shape[:2]}
    for reduction, shape in shapes.items():
        g = torch.rand(shape, generator=gen, dtype=torch.float64).to(device)
        for mask in ([True, True], [True, False], [False, True]):
            args = (g, a.detach(), b.detach(), [3, 3, 3], 1e-5, reduction, mask)
            torch.library.opcheck(torch.ops.fastwarp.ncc_backward.default, args)


@pytest.mark.slow
def test_compile_fullgraph(device, gen):
    if _emu.active():
        pytest.skip("torch.compile does not trace under the emulation's dispatch mode; the fake kernels are shared")
    torch._dynamo.reset()
    a, b = pair((1, 1, 9, 8, 7), gen, torch.float32)
    a, b = a.to(device), b.to(device)
    loss = NCC(window=5)
    compiled = torch.compile(lambda x, y: loss(x, y) + MSE()(x, y), fullgraph=True)
    xe, xc = a.clone().requires_grad_(), a.clone().requires_grad_()
    e, c = loss(xe, b) + MSE()(xe, b), compiled(xc, b)
    e.backward()
    c.backward()
    torch.testing.assert_close(c, e)
    torch.testing.assert_close(xc.grad, xe.grad)


# ------------------------------------------------------------------ CT-like data
#
# One reference value per GPU tile (Note [Shifted window sums]) is far from half the tile's
# voxels when the tile mixes air and tissue, or when a ramp runs along a chunk: the float32
# GPU NCC was wrong there by up to 1e7 in cc, and its gradient in flat air by 3 times the
# largest gradient. These cases hold float32 inputs to the float64 CPU op on the same values
# (cc within 1e-4, gradients within 1e-3 of their largest), with tiles whose first voxel is
# tissue and, in 2-D and 3-D, more than one tile along x and along y.


def ct_like(shape, gen, noise=20.0):
    """Air clipped to -1024 beside tissue at 40 +- noise HU: the first voxel of every row is
    tissue (so is a tile's reference), the rest of the row air beyond a third of it."""
    x = torch.full(shape, -1024.0, dtype=torch.float64)
    cut = max(1, shape[-1] // 3)
    x[..., :cut] = 40 + noise * torch.randn((*shape[:-1], cut), generator=gen, dtype=torch.float64)
    return x


def step_like(shape, gen, sigma):
    """A +-1000 step along the last axis with noise sigma."""
    x = torch.where(torch.arange(shape[-1]) < shape[-1] // 2, -1000.0, 1000.0).to(torch.float64).expand(shape)
    return x + sigma * torch.randn(shape, generator=gen, dtype=torch.float64)


CT_CASES = [
    ("ct", (1, 1, 12, 300), 9),            # 2-D, window 9, three x-tiles of 120, two y-tiles of 8
    ("ct", (1, 1, 10, 11, 70), 3),         # 3-D, window 3
    ("ct", (1, 1, 12, 10, 40), 9),         # 3-D, window 9, two y-tiles
    ("ct", (1, 1, 5, 9, 250), 5),          # 3-D, window 5, three x-tiles of 120
    ("step1", (1, 1, 9, 10, 40), 3),       # +-1000 step, noise 1
    ("step5", (1, 1, 9, 10, 40), 3),       # +-1000 step, noise 5
]


@pytest.mark.parametrize("kind, shape, window", CT_CASES)
def test_large_values_far_from_the_tiles_reference(kind, shape, window, device, gen):
    a = ct_like(shape, gen) if kind == "ct" else step_like(shape, gen, {"step1": 1.0, "step5": 5.0}[kind])
    b = a + 5 * torch.randn(shape, generator=gen, dtype=torch.float64)
    a32, b32 = a.float(), b.float()
    ra, rb = a32.double().requires_grad_(), b32.double().requires_grad_()  # the same values in float64
    expected = fastwarp.ncc(ra, rb, window, reduction="none")  # the CPU op, in float64
    g = torch.randn(shape, generator=gen, dtype=torch.float64)
    expected.backward(g)
    fa, fb = a32.to(device).requires_grad_(), b32.to(device).requires_grad_()
    got = fastwarp.ncc(fa, fb, window, reduction="none")
    got.backward(g.float().to(device))
    assert (got.detach().cpu().double() - expected.detach()).abs().max() < 1e-4
    mean = fastwarp.ncc(a32.to(device), b32.to(device), window)
    assert abs(float(mean) - float(expected.mean())) < 1e-4
    for got_grad, ref_grad in ((fa.grad, ra.grad), (fb.grad, rb.grad)):
        assert (got_grad.cpu().double() - ref_grad).abs().max() < 1e-3 * ref_grad.abs().max()


def test_one_long_chunk_per_volume(device, gen, monkeypatch):
    """A batch that fills the GPU gets one chunk per volume, its running sums carried over the
    whole depth (restarted from the window's planes every 64): a +1000 ramp of 2 per plane over
    200 planes, against the float64 CPU op. Under the emulated launch a multiprocessor count
    of 1 gives four volumes the one-chunk grid an H200 gives large ones."""
    monkeypatch.setenv("FASTWARP_EMU_SM_COUNT", "1")
    shape = (4, 1, 200, 6, 20)
    ramp = 1000 + 2.0 * torch.arange(shape[2], dtype=torch.float64).view(1, 1, -1, 1, 1)
    a = (ramp + 3 * torch.randn(shape, generator=gen, dtype=torch.float64)).float()
    b = (ramp + 3 * torch.randn(shape, generator=gen, dtype=torch.float64)).float()
    expected = fastwarp.ncc(a.double(), b.double(), 3, reduction="none")
    got = fastwarp.ncc(a.to(device), b.to(device), 3, reduction="none").cpu().double()
    assert (got - expected).abs().max() < 1e-4
    ra = a.double().requires_grad_()
    fastwarp.ncc(ra, b.double(), 3).backward()
    fa = a.to(device).requires_grad_()
    fastwarp.ncc(fa, b.to(device), 3).backward()
    assert (fa.grad.cpu().double() - ra.grad).abs().max() < 1e-3 * ra.grad.abs().max()
