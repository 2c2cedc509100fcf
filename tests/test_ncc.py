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
@pytest.mark.parametrize("shape, window", CASES[:3])
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
    assert torch.autograd.gradcheck(lambda x, y: fastwarp.ncc(x, y, window, reduction="none"), (a, b))
    # either input may be constant
    assert torch.autograd.gradcheck(lambda x: fastwarp.ncc(x, b.detach(), window), (a,))
    assert torch.autograd.gradcheck(lambda y: fastwarp.ncc(a.detach(), y, window, reduction="batch"), (b,))


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
