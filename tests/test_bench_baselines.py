"""The benchmarks' baselines (fastwarp.app.bench.baselines) compute what fastwarp does: every
warp baseline fastwarp.warp's output and displacement gradient, every NCC baseline
fastwarp.ncc's loss and gradient, in float64 at tiny sizes, so that each benchmark group compares
like with like. The one place where fastwarp is checked against its peers (voxelmorph, neurite,
MONAI, fused_lncc, FireANTs); a peer that is not installed is skipped."""

import pytest
import torch
import torch.nn.functional as F

import fastwarp
from conftest import CUDA
from fastwarp.app.bench import BaselineNotApplicable, BaselineUnavailable
from fastwarp.app.bench.baselines import NCC_IMPLS, VECINT_IMPLS, WARP_BASELINES, WARP_IMPLS
from fastwarp.app.bench.cases import VECINT_SHAPES, WARP_SHAPES, make_pair, smooth_disp


def build_or_skip(factory, *args, **kwargs):
    try:
        return factory(*args, **kwargs)
    except (BaselineUnavailable, BaselineNotApplicable) as e:
        pytest.skip(str(e))


@pytest.mark.parametrize("impl_name", WARP_BASELINES)
@pytest.mark.parametrize("nd", [2, 3], ids=["2d", "3d"])
def test_warp_baselines(device, nd, impl_name):
    """Output and displacement gradient (batch 2, 2 channels, fields reaching past the borders)."""
    spatial = WARP_SHAPES["tiny"][nd, device.type]
    impl = build_or_skip(WARP_IMPLS[impl_name], spatial, device, torch.float64)
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


@pytest.mark.parametrize("impl_name", WARP_BASELINES)
@pytest.mark.parametrize("nd", [2, 3], ids=["2d", "3d"])
def test_warp_baselines_nearest(device, nd, impl_name):
    """A label map's warp (the ``fwd-nearest`` cases): each baseline's nearest-neighbour warp
    picks fastwarp's voxels (batch 2, 2 channels, fields reaching past the borders)."""
    spatial = WARP_SHAPES["tiny"][nd, device.type]
    impl = build_or_skip(WARP_IMPLS[impl_name], spatial, device, torch.float64)
    g = torch.Generator().manual_seed(5)
    labels = torch.randint(0, 7, (2, 2, *spatial), generator=g).to(device, torch.float64)
    disp = smooth_disp(spatial, seed=6, batch=2, dtype=torch.float64).to(device)
    assert impl.nearest is not None
    torch.testing.assert_close(impl.nearest(labels, impl.prepare(disp)), fastwarp.warp(labels, disp, mode="nearest"),
                               rtol=0, atol=0)


@pytest.mark.parametrize("impl_name", [name for name in VECINT_IMPLS if name != "fastwarp"])
def test_vecint_baselines(device, impl_name):
    """Scaling and squaring (7 steps) of a velocity reaching past the borders: the baselines'
    displacement and velocity gradient are fastwarp.nn.VecInt's."""
    spatial = VECINT_SHAPES["tiny"][device.type]
    impl = build_or_skip(VECINT_IMPLS[impl_name], spatial, device, torch.float64, 7)
    vel = smooth_disp(spatial, seed=3, amplitude=3.0, dtype=torch.float64).to(device).requires_grad_()
    grad_out = torch.randn(vel.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64).to(device)

    expected = fastwarp.nn.VecInt(spatial, 7)(vel)
    (expected_grad,) = torch.autograd.grad(expected, vel, grad_out)
    out = impl.integrate(vel)
    (grad,) = torch.autograd.grad(out, vel, grad_out)
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-8, atol=1e-8)


NCC_SHAPES = {2: (2, 2, 16, 16), 3: (2, 2, 8, 9, 10)}


@pytest.mark.parametrize("window", [3, 5])
@pytest.mark.parametrize("impl_name", ["voxelmorph-classic", "neurite", "monai"])
@pytest.mark.parametrize("nd", [2, 3], ids=["2d", "3d"])
def test_ncc_baselines(device, nd, impl_name, window):
    """Batch 2, 2 channels: the plain-PyTorch VoxelMorph NCC and neurite's compute fastwarp's
    loss, value and gradient with respect to ``a``. MONAI's timed configuration is computed
    (finite, and close); with ``smooth_nr=0`` and a negligible ``smooth_dr`` its formula is ours
    with ``eps=0``: loss and gradient are checked there."""
    g = torch.Generator().manual_seed(1)
    a, b = make_pair(NCC_SHAPES[nd], g, torch.float64)
    a, b = a.to(device).requires_grad_(), b.to(device)

    if impl_name == "monai":
        timed = build_or_skip(NCC_IMPLS["monai"], nd, window, device, torch.float64).loss(a, b)
        assert torch.isfinite(timed)
        torch.testing.assert_close(timed, -fastwarp.ncc(a, b, window), rtol=1e-3, atol=0)
        impl = build_or_skip(NCC_IMPLS["monai"], nd, window, device, torch.float64, smooth_nr=0.0, smooth_dr=1e-30)
        eps = 0.0
    else:
        impl = build_or_skip(NCC_IMPLS[impl_name], nd, window, device, torch.float64)
        eps = 1e-5

    expected = -fastwarp.ncc(a, b, window, eps=eps)
    (expected_grad,) = torch.autograd.grad(expected, a)
    got = impl.loss(a, b)
    (grad,) = torch.autograd.grad(got, a)
    assert got.shape == expected.shape == ()
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-8, atol=1e-12)


def test_neurite_per_channel(gen):
    """neurite's NCC per (batch, channel) (``reduction=None``) is fastwarp's ``reduction="batch"``."""
    nf = pytest.importorskip("neurite.nn.functional")
    for shape, window in [((2, 3, 9, 11), (5, 3)), ((1, 2, 7, 9, 8), (3, 5, 9))]:
        a, b = make_pair(shape, gen, torch.float32)
        expected = nf.ncc(a, b, window_size=list(window), reduction=None)
        torch.testing.assert_close(fastwarp.ncc(a, b, window, reduction="batch"), expected.reshape(shape[:2]),
                                   rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device", [CUDA], indirect=True)
@pytest.mark.parametrize("impl_name", ["fused_lncc", "fireants"])
def test_fused_ncc_baselines(device, impl_name):
    """The CUDA fused baselines compute the same loss (float32, so loosely): fused_lncc's
    ``1 - mean(cc)`` and its gradient, FireANTs' ``-mean(cc)`` (value only: its gradient's
    scale differs between versions). Their denominators regularise differently from ``+eps``,
    which only matters in near-constant windows (there are none here)."""
    window = 5
    impl = build_or_skip(NCC_IMPLS[impl_name], 3, window, device, torch.float32)
    g = torch.Generator().manual_seed(3)
    a, b = make_pair((2, 2, 12, 13, 14), g, torch.float32)
    a, b = a.to(device).requires_grad_(), b.to(device)

    expected = -fastwarp.ncc(a, b, window)
    (expected_grad,) = torch.autograd.grad(expected, a)
    got = impl.loss(a, b)
    if impl_name == "fused_lncc":
        got = got - 1.0
    torch.testing.assert_close(got.reshape(()), expected, rtol=1e-4, atol=1e-6)
    if impl_name == "fused_lncc":
        (grad,) = torch.autograd.grad(got, a)
        cosine = F.cosine_similarity(grad.flatten().double(), expected_grad.flatten().double(), dim=0)
        assert cosine > 0.9999, cosine
        torch.testing.assert_close(grad, expected_grad, rtol=1e-2, atol=1e-3 * expected_grad.abs().max().item())


@pytest.mark.parametrize("device", [CUDA], indirect=True)
@pytest.mark.parametrize("kernel", ["bspline", "gaussian"])
def test_fireants_mi_baseline_runs(device, kernel):
    """FireANTs' fused MI (CUDA): its definition differs from fastwarp's (it smooths the
    histograms after its pass), so only what a timed baseline needs: a finite negative scalar
    (-MI of a pair that shares structure) and a finite gradient to the first image."""
    from fastwarp.app.bench.baselines import MI_IMPLS

    impl = build_or_skip(MI_IMPLS["fireants"], kernel, 32, device, torch.float32)
    g = torch.Generator().manual_seed(5)
    a, b = make_pair((1, 1, 20, 21, 22), g, torch.float32)
    a, b = a.to(device).requires_grad_(), b.to(device)
    loss = impl.loss(a, b)
    (grad,) = torch.autograd.grad(loss, a)
    assert loss.dim() == 0 and float(loss) < 0
    assert bool(torch.isfinite(grad).all()) and float(grad.abs().max()) > 0
