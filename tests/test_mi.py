"""fastwarp.mi: the Parzen joint histogram and the mutual information against the float64
definition (tests/reference.py), its gradients, invariances, and its errors; on the CPU, the
GPU and the emulated CUDA launch (the ``device`` fixture)."""

import pytest
import torch

import fastwarp
from fastwarp.losses import MI
from fastwarp.mi import joint_histogram
from reference import mi_reference

KERNELS = ["bspline", "gaussian"]


def pair(shape, gen, dtype=torch.float64):
    """Two images with a non-linear, non-monotonic relation (different "contrasts") plus noise."""
    a = torch.rand(shape, generator=gen, dtype=torch.float64) * 200 - 40
    b = torch.cos(a / 30) * 100 + 5 * torch.rand(shape, generator=gen, dtype=torch.float64)
    return a.to(dtype), b.to(dtype)


@pytest.mark.sanitize
def test_histogram_counts_every_voxel_once(device, gen):
    a, b = pair((2, 3, 7, 9), gen)
    a, b = a.to(device), b.to(device)
    for kernel in KERNELS:
        h = joint_histogram(a, b, 12, kernel).cpu()
        assert h.shape == (2, 3, 12, 12) and h.dtype == torch.float64
        torch.testing.assert_close(h.sum((-2, -1)), torch.full((2, 3), 63.0, dtype=torch.float64))
        assert (h >= 0).all()


@pytest.mark.parametrize("kernel", KERNELS)
# (1, 1, 17, 19, 23): several GPU blocks per volume (Note [MI on the GPU])
@pytest.mark.parametrize("shape", [(2, 1, 13, 17), (1, 2, 7, 11, 9), (2, 1, 5, 6, 13), (1, 1, 17, 19, 23)])
@pytest.mark.parametrize("masked", [False, True])
def test_values_match_reference(kernel, shape, masked, device, gen):
    a, b = pair(shape, gen)
    mask = torch.rand(shape, generator=gen) < 0.7 if masked else None
    on = [t.to(device) if t is not None else None for t in (a, b, mask)]
    # sigmas whose supports hold up to 8 bins (0.66) or 9 (0.67): Note [Fixed-width Parzen loops];
    # 120 bins: a histogram too large for the GPU's shared memory (Note [MI on the GPU])
    for bins, sigma in ((8, 0.5), (32, 0.5), (17, 1.3), (21, 0.66), (21, 0.67), (40, 2.5), (120, 0.5)):
        for normalized in (False, True):
            got = fastwarp.mi(on[0], on[1], bins, kernel, sigma=sigma, mask=on[2], normalized=normalized,
                              reduction="none")
            want = mi_reference(a, b, bins, kernel, sigma, mask=mask, normalized=normalized)
            torch.testing.assert_close(got.cpu(), want, rtol=1e-9, atol=1e-12)
    assert fastwarp.mi(on[0], on[1], 16, kernel, mask=on[2]).shape == ()


@pytest.mark.sanitize
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("shape", [(2, 1, 11, 14), (1, 2, 6, 9, 7)])
def test_gradients_match_autograd_through_reference(kernel, shape, device, gen):
    a, b = pair(shape, gen)
    mask = torch.rand(shape, generator=gen) < 0.8
    ra, rb = (-50.0, 170.0), (-110.0, 110.0)  # given ranges: the reference's autograd sees them as constants too
    for normalized in (False, True):
        xa, xb = a.clone().to(device).requires_grad_(), b.clone().to(device).requires_grad_()
        ya, yb = a.clone().requires_grad_(), b.clone().requires_grad_()
        w = torch.rand(shape[:2], generator=gen, dtype=torch.float64)
        got = fastwarp.mi(xa, xb, 16, kernel, range_a=ra, range_b=rb, mask=mask.to(device), normalized=normalized,
                          reduction="none")
        want = mi_reference(ya, yb, 16, kernel, range_a=ra, range_b=rb, mask=mask, normalized=normalized)
        (got * w.to(device)).sum().backward()
        (want * w).sum().backward()
        ga, gb = xa.grad.cpu(), xb.grad.cpu()
        torch.testing.assert_close(ga, ya.grad, rtol=1e-7, atol=1e-9 * ya.grad.abs().max())
        torch.testing.assert_close(gb, yb.grad, rtol=1e-7, atol=1e-9 * yb.grad.abs().max())
        assert (ga[~mask] == 0).all() and (gb[~mask] == 0).all()


@pytest.mark.sanitize
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_histograms_too_large_for_shared_memory(kernel, dtype, device, gen):
    """150 bins: a float32 histogram of 88 KiB, which the GPU keeps in global memory (Note [MI
    on the GPU]), for the forward and for the backward's staged gradient; several blocks."""
    a, b = pair((1, 1, 17, 19, 23), gen)
    x = a.detach().to(device, dtype).clone().requires_grad_()
    got = fastwarp.mi(x, b.to(device, dtype), 150, kernel, range_a=(-41, 161), range_b=(-106, 106))
    want = mi_reference(a, b, 150, kernel, range_a=(-41, 161), range_b=(-106, 106))
    torch.testing.assert_close(got.cpu().double(), want[0, 0], rtol=1e-5 if dtype == torch.float32 else 1e-10, atol=0)
    got.backward()
    y = a.detach().clone().requires_grad_()
    mi_reference(y, b, 150, kernel, range_a=(-41, 161), range_b=(-106, 106)).sum().backward()
    tol = (1e-4 if dtype == torch.float32 else 1e-9) * y.grad.abs().max()
    torch.testing.assert_close(x.grad.cpu().double(), y.grad, rtol=0, atol=tol)


@pytest.mark.parametrize("kernel", KERNELS)
def test_gradcheck(kernel, device, gen):
    a, b = pair((2, 1, 5, 4, 3), gen)
    a, b = a.to(device).requires_grad_(), b.to(device).requires_grad_()
    for reduction in ("mean", "batch"):
        assert torch.autograd.gradcheck(
            lambda x, y: fastwarp.mi(x, y, 7, kernel, range_a=(-45, 165), range_b=(-105, 105), reduction=reduction),
            (a, b),
        )
    assert torch.autograd.gradcheck(
        lambda x: fastwarp.mi(x, b, 6, kernel, range_a=(-45, 165), range_b=(-105, 105), normalized=True), (a,)
    )


def test_default_range_is_a_constant(gen):
    """With the min and max taken from the data, the gradient is the one for those ranges given."""
    a, b = pair((1, 1, 9, 10), gen)
    x, y = a.clone().requires_grad_(), a.clone().requires_grad_()
    fastwarp.mi(x, b).backward()
    fastwarp.mi(y, b, range_a=(a.min().item(), a.max().item())).backward()
    torch.testing.assert_close(x.grad, y.grad, rtol=0, atol=0)


@pytest.mark.parametrize("kernel", KERNELS)
def test_float32_against_float64(kernel, device, gen):
    a, b = pair((2, 1, 21, 18, 17), gen)
    want = mi_reference(a, b, 32, kernel)
    got = fastwarp.mi(a.float().to(device), b.float().to(device), 32, kernel, reduction="none")
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.cpu().double(), want, rtol=1e-5, atol=1e-6)
    # and the gradient against float64's
    x, y = a.clone().requires_grad_(), a.float().to(device).requires_grad_()
    fastwarp.mi(x, b, 32, kernel, range_a=(-41, 161), range_b=(-106, 106)).backward()
    fastwarp.mi(y, b.float().to(device), 32, kernel, range_a=(-41, 161), range_b=(-106, 106)).backward()
    torch.testing.assert_close(y.grad.cpu().double(), x.grad, rtol=0, atol=1e-4 * x.grad.abs().max())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_accumulates_in_float32(dtype, device, gen):
    a, b = pair((1, 2, 15, 16, 9), gen, dtype)
    x = a.clone().to(device).requires_grad_()
    got = fastwarp.mi(x, b.to(device), 24, reduction="none")
    assert got.dtype == torch.float32
    # the same values in float64: only the float32 arithmetic differs
    want = mi_reference(a.double(), b.double(), 24)
    torch.testing.assert_close(got.cpu().double(), want, rtol=1e-5, atol=1e-6)
    got.sum().backward()
    assert x.grad.dtype == dtype and torch.isfinite(x.grad).all() and x.grad.abs().max() > 0


def test_invariances(gen):
    a, b = pair((1, 1, 24, 26, 22), gen)
    base = fastwarp.mi(a, b, 32)
    # a positive affine remap of either image moves no voxel between bins
    torch.testing.assert_close(fastwarp.mi(3 * a + 7, b, 32), base, rtol=1e-10, atol=0)
    torch.testing.assert_close(fastwarp.mi(a, 0.5 * b - 100, 32), base, rtol=1e-10, atol=0)
    # MI is symmetric
    torch.testing.assert_close(fastwarp.mi(b, a, 32), base, rtol=1e-10, atol=0)
    # a monotonic, non-linear remap changes MI only by the binning's error
    remapped = fastwarp.mi(torch.sign(a) * a.abs() ** 1.3, b, 32)
    assert abs(remapped - base) < 0.05 * base
    # while an unrelated image shares almost no information
    noise = torch.rand(a.shape, generator=gen, dtype=torch.float64)
    assert fastwarp.mi(noise, b, 32) < 0.1 * base


@pytest.mark.parametrize("kernel", KERNELS)
def test_constant_image(kernel, device, gen):
    a, b = pair((2, 1, 9, 8, 7), gen)
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        x = torch.full(a.shape, 3.5, dtype=dtype, device=device, requires_grad=True)
        y = b.detach().to(device, dtype).requires_grad_()
        v = fastwarp.mi(x, y, 16, kernel)
        assert abs(v.item()) < tol
        v.backward()
        assert (x.grad == 0).all()
        assert torch.isfinite(y.grad).all() and y.grad.abs().max() < tol


@pytest.mark.sanitize
def test_non_finite_input_gives_nan_not_a_crash(device, gen):
    a, b = pair((2, 1, 9, 8, 7), gen)
    a, b = a.to(device), b.to(device)
    for bad in (float("nan"), float("inf"), -float("inf")):
        x = a.clone()
        x[1, 0, 4, 4, 4] = bad
        x.requires_grad_()
        v = fastwarp.mi(x, b, 16, reduction="none")
        assert torch.isfinite(v[0]).all() and torch.isnan(v[1]).all()
        v.sum().backward()
        assert torch.isfinite(x.grad[0]).all() and torch.isnan(x.grad[1]).all()
        # the same with a given (finite) range: the bad voxel still poisons its pair only
        v = fastwarp.mi(x.detach(), b, 16, range_a=(-40, 160), reduction="none")
        assert torch.isfinite(v[0]).all() and torch.isnan(v[1]).all()


def test_mask_selects_the_voxels(device, gen):
    a, b = pair((1, 1, 12, 13, 11), gen)
    a, b = a.to(device), b.to(device)
    mask = torch.zeros(a.shape[2:], dtype=torch.bool, device=device)
    mask[2:9, 3:11, 1:8] = True
    got = fastwarp.mi(a, b, 16, mask=mask)
    want = fastwarp.mi(a[..., 2:9, 3:11, 1:8].contiguous(), b[..., 2:9, 3:11, 1:8].contiguous(), 16)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    # the voxels outside the mask do not matter, however wild
    wild = a.clone()
    wild[~mask.expand(a.shape)] = 1e6
    torch.testing.assert_close(fastwarp.mi(wild, b, 16, mask=mask), got, rtol=1e-12, atol=0)
    # uint8 and (N, 1, *spatial) masks are the same
    torch.testing.assert_close(fastwarp.mi(a, b, 16, mask=mask[None, None].to(torch.uint8)), got, rtol=0, atol=0)


def test_non_contiguous_and_empty(device, gen):
    a, b = pair((2, 3, 8, 9, 10), gen)
    at, bt = a.to(device).transpose(2, 4), b.to(device).transpose(2, 4)
    torch.testing.assert_close(
        fastwarp.mi(at, bt, 16, reduction="none"),
        fastwarp.mi(at.contiguous(), bt.contiguous(), 16, reduction="none"),
        rtol=0,
        atol=0,
    )
    e = torch.empty(0, 1, 4, 5, device=device)
    assert fastwarp.mi(e, e, 8, reduction="none").shape == (0, 1)
    assert torch.isnan(fastwarp.mi(e, e, 8))
    e = torch.empty(2, 1, 0, 5, device=device)
    assert torch.isnan(fastwarp.mi(e, e, 8, reduction="none")).all()


def test_same_bits_on_any_number_of_threads(gen):
    a, b = pair((1, 1, 40, 41, 43), gen, torch.float32)  # more than one task of voxels
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = joint_histogram(a, b, 32)
        torch.set_num_threads(max(2, threads))
        many = joint_histogram(a, b, 32)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many)


def test_vmap_and_batch_agree(gen):
    a, b = pair((3, 2, 1, 7, 8), gen)
    ra, rb = (-45.0, 165.0), (-105.0, 105.0)

    def f(x, y):
        return fastwarp.mi(x, y, 10, range_a=ra, range_b=rb, reduction="none")

    got = torch.vmap(f)(a, b)
    want = torch.stack([f(x, y) for x, y in zip(a, b)])
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    ga = torch.vmap(torch.func.grad(lambda x, y: f(x, y).sum()))(a, b)
    gw = torch.stack([torch.func.grad(lambda x, y: f(x, y).sum())(x, y) for x, y in zip(a, b)])
    torch.testing.assert_close(ga, gw, rtol=1e-12, atol=1e-15)


def test_second_order_and_forward_mode_raise(gen):
    a, b = pair((1, 1, 5, 6, 7), gen)
    x = a.clone().requires_grad_()
    (g,) = torch.autograd.grad(fastwarp.mi(x, b, 8), x, create_graph=True)
    with pytest.raises(RuntimeError, match="no second derivative"):
        g.sum().backward()
    with pytest.raises(RuntimeError, match="forward-mode"):
        torch.func.jvp(lambda t: fastwarp.mi(t, b, 8), (a,), (torch.ones_like(a),))


def test_opcheck(device, gen):
    a, b = pair((2, 2, 6, 7, 5), gen)
    for dtype in (torch.float64, torch.float32):
        x, y = a.to(device, dtype).requires_grad_(), b.to(device, dtype)
        r = torch.tensor([[-45.0, 165.0], [-105.0, 105.0]], dtype=dtype).expand(2, 2, 2, 2).contiguous().to(device)
        mask = (torch.rand(a.shape, generator=gen) < 0.5).to(device)
        for m in (None, mask):
            for kernel, bins in ((0, 9), (1, 6)):
                torch.library.opcheck(torch.ops.fastwarp.mi_histogram.default, (x, y, m, r, bins, kernel, 0.7))
                g = torch.rand(2, 2, bins, bins, generator=gen, dtype=torch.float64).to(device, dtype)
                for want in ([True, True], [True, False], [False, True]):
                    args = (g, x.detach(), y, m, r, bins, kernel, 0.7, want)
                    torch.library.opcheck(torch.ops.fastwarp.mi_histogram_backward.default, args)


@pytest.mark.slow
def test_compile_fullgraph(gen):
    torch._dynamo.reset()
    a, b = pair((1, 1, 9, 8, 7), gen, torch.float32)
    loss = MI(bins=12)
    compiled = torch.compile(loss, fullgraph=True)
    xe, xc = a.clone().requires_grad_(), a.clone().requires_grad_()
    e, c = loss(xe, b), compiled(xc, b)
    e.backward()
    c.backward()
    torch.testing.assert_close(c, e)
    torch.testing.assert_close(xc.grad, xe.grad)


def test_loss_module(gen):
    a, b = pair((2, 1, 9, 10), gen, torch.float32)
    loss = MI(bins=16, kernel="gaussian", normalized=True)
    assert "kernel='gaussian'" in repr(loss)
    torch.testing.assert_close(loss(a, b), -fastwarp.mi(a, b, 16, "gaussian", normalized=True))
    mask = torch.rand(a.shape[2:], generator=gen) < 0.5
    torch.testing.assert_close(loss(a, b, mask), -fastwarp.mi(a, b, 16, "gaussian", normalized=True, mask=mask))


E = torch.rand(1, 1, 6, 7)


@pytest.mark.parametrize(
    "a, b, kwargs, exc, match",
    [
        (E, E, {"bins": 1, "kernel": "gaussian"}, ValueError, "bins must be an int in"),
        (E, E, {"bins": 3}, ValueError, "needs bins >= 4"),
        (E, E, {"bins": 2.5}, ValueError, "bins must be an int"),
        (E, E, {"kernel": "parzen"}, ValueError, "kernel must be one of"),
        (E, E, {"kernel": "gaussian", "sigma": 0}, ValueError, "sigma must be in"),
        (E, E, {"mask": torch.ones(6, 8, dtype=torch.bool)}, ValueError, "mask must have the images' shape"),
        (E, E, {"mask": torch.zeros(6, 7, dtype=torch.bool)}, ValueError, "mask selects no voxel"),
        (E, E, {"range_a": (2, 1)}, ValueError, "range_a must have lo < hi"),
        (E, E, {"range_b": "x"}, ValueError, "range_b must be None"),
        (E, E, {"reduction": "sum"}, ValueError, "reduction must be one of"),
        (E, E.double(), {}, TypeError, "must share a dtype"),
        (E, E[0], {}, ValueError, "must have the shape of a"),
        (E[0], E[0], {}, ValueError, r"must be \(N, C, H, W\)"),
        (E.int(), E.int(), {}, TypeError, "floating point"),
    ],
)
def test_bad_input(a, b, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        fastwarp.mi(a, b, **kwargs)
    with pytest.raises(RuntimeError):  # code written for torch catches it too
        fastwarp.mi(a, b, **kwargs)


def test_op_level_checks(gen):
    a, b = pair((1, 1, 5, 6), gen)
    r = torch.tensor([0.0, 1.0, 0.0, 1.0], dtype=torch.float64).view(1, 1, 2, 2)
    with pytest.raises(RuntimeError, match="bins must be >= 4"):
        torch.ops.fastwarp.mi_histogram(a, b, None, r, 3, 0, 0.5)
    with pytest.raises(RuntimeError, match="range must be"):
        torch.ops.fastwarp.mi_histogram(a, b, None, r.float(), 8, 0, 0.5)
    with pytest.raises(RuntimeError, match="kernel code"):
        torch.ops.fastwarp.mi_histogram(a, b, None, r, 8, 2, 0.5)
    with pytest.raises(RuntimeError, match="mask must have the inputs' shape"):
        torch.ops.fastwarp.mi_histogram(a, b, torch.ones(5, 6, dtype=torch.bool), r, 8, 0, 0.5)


def test_agrees_with_monai_gaussian(gen):
    """MONAI's GlobalMutualInformationLoss("gaussian") is this definition for images in
    [0, 1] with range (0, 1), up to its smoothing constants (1e-7 inside the log) and the
    weights below 1.5e-8 that fastwarp leaves out."""
    monai_losses = pytest.importorskip("monai.losses")
    a = torch.rand(2, 1, 13, 14, 15, generator=gen, dtype=torch.float64)
    b = (torch.cos(a * 5) + 1) / 2 * 0.9 + 0.1 * torch.rand(a.shape, generator=gen, dtype=torch.float64)
    for bins, sigma in ((23, 0.5), (32, 0.5), (16, 1.0)):
        # MONAI's defaults: its smoothing constants move the value by < 1e-4 and the gradient by
        # ~1e-4 of its largest; without them the two agree to the weights fastwarp leaves out
        for smooth, value_tol, grad_tol in ((1e-7, 1e-4, 3e-4), (1e-12, 1e-7, 1e-5)):
            theirs_loss = monai_losses.GlobalMutualInformationLoss(
                "gaussian", num_bins=bins, sigma_ratio=sigma, reduction="none", smooth_nr=smooth, smooth_dr=smooth
            )
            xa, ya = a.clone().requires_grad_(), a.clone().requires_grad_()
            theirs = -theirs_loss(xa, b).reshape(2, 1)
            ours = fastwarp.mi(ya, b, bins, "gaussian", sigma=sigma, range_a=(0, 1), range_b=(0, 1), reduction="none")
            torch.testing.assert_close(ours, theirs, rtol=0, atol=value_tol)
            theirs.sum().backward()
            ours.sum().backward()
            torch.testing.assert_close(ya.grad, xa.grad, rtol=0, atol=grad_tol * xa.grad.abs().max())
