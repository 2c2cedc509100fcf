"""Every derivative of every op is right, or raises: second and third order, forward mode
(jvp), forward over reverse, and the functorch transforms (grad, jacrev, jacfwd, hessian,
vmap, vmap of grad), checked against finite differences (gradcheck / gradgradcheck) and
against torch's own grid_sample, which has derivatives of every order (but no jvp)."""

import itertools
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck

import fastwarp
from fastwarp import _emu
from reference import smooth_field, voxelmorph_warp

PADDINGS = ["zeros", "border", "reflection"]


def rand(shape, gen, lo=-1.0, hi=1.0):
    return torch.rand(shape, generator=gen, dtype=torch.float64) * (hi - lo) + lo


def emulated_subset(keep):
    """The emulated CUDA launch runs every kernel path, but each call costs milliseconds and
    gradgradcheck makes thousands: it runs the cases with ``keep`` true, the CPU all."""
    if _emu.active() and not keep:
        pytest.skip("covered on the CPU; the emulated launch runs a subset of the combinations")


def warp_inputs(nd, disp_batch, gen, device):
    shape = {2: (2, 2, 4, 5), 3: (2, 2, 3, 4, 3)}[nd]
    image = torch.randn(shape, generator=gen, dtype=torch.float64).to(device)
    disp = rand((disp_batch, nd, *shape[2:]), gen, -2.0, 2.0).to(device)  # reaches past the border
    return image, disp


def grid_inputs(nd, gen, device):
    shape = {2: (2, 2, 4, 5), 3: (2, 2, 3, 4, 3)}[nd]
    image = torch.randn(shape, generator=gen, dtype=torch.float64).to(device)
    grid = rand((2, *(3, 2, 4)[:nd], nd), gen, -1.2, 1.2).to(device)
    return image, grid


# Finite differences need the points off the kinks of the interpolation (voxel boundaries,
# the clamp and reflection bounds); random coordinates are, by far more than gradcheck's eps.

CHECKS = {"check_forward_ad": True, "check_backward_ad": True}
GRADGRAD_CHECKS = {"check_fwd_over_rev": True, "check_rev_over_rev": True}


@pytest.mark.parametrize("nd", [2, 3])
@pytest.mark.parametrize("mode", ["linear", "nearest"])
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("disp_batch", [1, 2])
def test_warp_derivatives(nd, mode, padding, disp_batch, device, gen):
    emulated_subset(disp_batch == 1 and (mode, padding) in (("linear", "zeros"), ("linear", "reflection"), ("nearest", "border")))
    image, disp = warp_inputs(nd, disp_batch, gen, device)
    image.requires_grad_()
    disp.requires_grad_()

    def fn(i, d):
        return fastwarp.warp(i, d, mode, padding)

    assert gradcheck(fn, (image, disp), **CHECKS)
    assert gradgradcheck(fn, (image, disp), **GRADGRAD_CHECKS)


@pytest.mark.parametrize("nd", [2, 3])
@pytest.mark.parametrize("padding", PADDINGS)
def test_training_path_derivatives(nd, padding, device, gen):
    emulated_subset(padding == "border")
    """The image needs no gradient: the forward returns its Jacobian, from which the first
    derivative is taken; the Jacobian is itself differentiable, so the second is right too."""
    image, disp = warp_inputs(nd, 1, gen, device)
    disp.requires_grad_()

    def fn(d):
        return fastwarp.warp(image, d, "linear", padding)

    assert gradcheck(fn, (disp,), **CHECKS)
    assert gradgradcheck(fn, (disp,), **GRADGRAD_CHECKS)


@pytest.mark.parametrize("nd", [2, 3])
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("align_corners", [True, False])
def test_grid_sample_derivatives(nd, mode, padding, align_corners, device, gen):
    emulated_subset(mode == "bilinear" and (padding, align_corners) in (("zeros", False), ("reflection", True)))
    image, grid = grid_inputs(nd, gen, device)
    image.requires_grad_()
    grid.requires_grad_()

    def fn(i, g):
        return fastwarp.grid_sample(i, g, mode, padding, align_corners)

    assert gradcheck(fn, (image, grid), **CHECKS)
    assert gradgradcheck(fn, (image, grid), **GRADGRAD_CHECKS)


def _third_order(grid_sample, image, grid, weights):
    """Derivatives up to the third of a scalar built from grid_sample, each order contracted
    with fixed random weights so that every term of the derivative tensors matters."""
    w_out, w_image, w_grid, w_image2, w_grid2 = weights
    x = image.clone().requires_grad_()
    g = grid.clone().requires_grad_()
    f = (grid_sample(x, g) * w_out).sum()
    gx, gg = torch.autograd.grad(f, (x, g), create_graph=True)
    f2 = (gx * w_image).sum() + (gg * w_grid).sum()
    gx2, gg2 = torch.autograd.grad(f2, (x, g), create_graph=True)
    f3 = (gx2 * w_image2).sum() + (gg2 * w_grid2).sum()
    gx3, gg3 = torch.autograd.grad(f3, (x, g), allow_unused=True, materialize_grads=True)
    return gx, gg, gx2, gg2, gx3, gg3


@pytest.mark.parametrize("nd", [2, 3])
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("align_corners", [True, False])
def test_derivatives_up_to_third_order_match_torch(nd, padding, align_corners, device, gen):
    emulated_subset((padding, align_corners) in (("border", False), ("reflection", True)))
    image, grid = grid_inputs(nd, gen, "cpu")
    out_shape = (*image.shape[:2], *grid.shape[1:-1])
    weights = [torch.randn(s, generator=gen, dtype=torch.float64) for s in (out_shape, image.shape, grid.shape)]
    weights += [torch.randn(s, generator=gen, dtype=torch.float64) for s in (image.shape, grid.shape)]
    expected = _third_order(
        lambda x, g: F.grid_sample(x, g, "bilinear", padding, align_corners), image, grid, weights
    )
    got = _third_order(
        lambda x, g: fastwarp.grid_sample(x, g, "bilinear", padding, align_corners),
        image.to(device),
        grid.to(device),
        [w.to(device) for w in weights],
    )
    for order, (a, b) in enumerate(zip(got, expected)):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-10, atol=1e-10, msg=lambda m, o=order: f"term {o}: {m}")
    assert got[3].abs().max() > 0 and got[5].abs().max() > 0  # the mixed terms are really there


def test_derivative_ops_agree_with_the_first_order_kernels(device, gen):
    """sample_derivative at order 0 is the forward, at e_k the forward Jacobian's column k;
    splat_derivative at order 0 is the backward's image gradient."""
    image, disp = warp_inputs(3, 1, gen, device)
    out, jac = torch.ops.fastwarp.warp(image, disp, 0, 1, True)
    torch.testing.assert_close(torch.ops.fastwarp.sample_derivative(image, disp, 0, 0, 1, True, [0, 0, 0]), out)
    for k in range(3):
        order = [int(j == k) for j in range(3)]
        torch.testing.assert_close(
            torch.ops.fastwarp.sample_derivative(image, disp, 0, 0, 1, True, order), jac[:, :, k]
        )
    grad = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(device)
    gi, _ = torch.ops.fastwarp.warp_backward(grad, None, list(image.shape), disp, 0, 1, [True, False])
    torch.testing.assert_close(torch.ops.fastwarp.splat_derivative(grad, list(image.shape), disp, 0, 0, 1, True, [0, 0, 0]), gi)
    # vanishing orders launch nothing and are zeros
    assert not torch.ops.fastwarp.sample_derivative(image, disp, 0, 0, 1, True, [2, 0, 0]).any()
    assert not torch.ops.fastwarp.splat_derivative(grad, list(image.shape), disp, 0, 1, 1, True, [0, 1, 0]).any()


def test_opcheck_derivative_ops(device, gen):
    for grid in (False, True):
        image, coords = grid_inputs(2, gen, device) if grid else warp_inputs(2, 1, gen, device)
        out_shape = (*image.shape[:2], *(coords.shape[1:-1] if grid else coords.shape[2:]))
        values = torch.randn(out_shape, generator=gen, dtype=torch.float64).to(device)
        for order, padding, align in itertools.product(([0, 0], [1, 0], [1, 1], [0, 2]), (0, 2), (True, False)):
            torch.library.opcheck(
                torch.ops.fastwarp.sample_derivative.default,
                (image.requires_grad_(), coords.requires_grad_(), int(grid), 0, padding, align, order),
            )
            torch.library.opcheck(
                torch.ops.fastwarp.splat_derivative.default,
                (values.requires_grad_(), list(image.shape), coords, int(grid), 0, padding, align, order),
            )


# ------------------------------------------------------------------------- functorch


def test_functorch_transforms_of_warp(device, gen):
    image, disp = warp_inputs(2, 2, gen, device)
    fixed = torch.randn(image.shape, generator=gen, dtype=torch.float64).to(device)

    def loss(d, i=image):
        return (fastwarp.warp(i, d) - fixed).square().sum()

    d = disp.clone().requires_grad_()
    (expected,) = torch.autograd.grad(loss(d), d)
    torch.testing.assert_close(torch.func.grad(loss)(disp), expected)
    # Jacobians, reverse and forward, of the warp against each other and against autograd
    small_d = disp[:1, :, :3, :3].contiguous()
    small_i = image[:1, :1, :3, :3].contiguous()

    def warped(d):
        return fastwarp.warp(small_i, d)

    jac_rev = torch.func.jacrev(warped)(small_d)
    jac_fwd = torch.func.jacfwd(warped)(small_d)
    jac_ref = torch.autograd.functional.jacobian(warped, small_d)
    torch.testing.assert_close(jac_rev, jac_ref)
    torch.testing.assert_close(jac_fwd, jac_ref)
    # the Hessian (forward over reverse) against reverse over reverse, and against the same
    # loss on torch's grid_sample (VoxelMorph's path), whose double backward is torch's own

    def small_loss(d):
        return (fastwarp.warp(small_i, d) - fixed[:1, :1, :3, :3]).square().sum()

    def torch_loss(d):
        return (voxelmorph_warp(small_i, d) - fixed[:1, :1, :3, :3]).square().sum()

    hess = torch.func.hessian(small_loss)(small_d)
    torch.testing.assert_close(hess, torch.autograd.functional.hessian(small_loss, small_d))
    if device.type == "cpu":
        torch.testing.assert_close(hess, torch.autograd.functional.hessian(torch_loss, small_d))
    # forward over forward: torch runs a custom jvp with forward gradients off, which would
    # make the outer tangent zero; fastwarp raises instead
    with pytest.raises(RuntimeError, match="nested in forward-mode AD"):
        torch.func.jacfwd(torch.func.jacfwd(small_loss))(small_d)
    # vmap, and vmap of grad, against a loop
    disps = torch.stack([disp, disp.flip(-1), 0.5 * disp])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no slow-path warning: the ops have batching rules
        batched = torch.func.vmap(torch.func.grad(loss))(disps)
        warped_b = torch.func.vmap(lambda d: fastwarp.warp(image, d))(disps)
    torch.testing.assert_close(batched, torch.stack([torch.func.grad(loss)(x) for x in disps]))
    torch.testing.assert_close(warped_b, torch.stack([fastwarp.warp(image, x) for x in disps]))


def test_functorch_transforms_of_grid_sample(device, gen):
    image, grid = grid_inputs(3, gen, device)

    def loss(x, g):
        return fastwarp.grid_sample(x, g, "bilinear", "border", False).square().sum()

    x, g = image.clone().requires_grad_(), grid.clone().requires_grad_()
    expected = torch.autograd.grad(loss(x, g), (x, g))
    got = torch.func.grad(loss, argnums=(0, 1))(image, grid)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)
    # jvp of the output against the Jacobian
    t_image = torch.randn(image.shape, generator=gen, dtype=torch.float64).to(device)
    t_grid = torch.randn(grid.shape, generator=gen, dtype=torch.float64).to(device)

    def out(x, g):
        return fastwarp.grid_sample(x, g, "bilinear", "border", False)

    _, tangent = torch.func.jvp(out, (image, grid), (t_image, t_grid))
    _, vjp_fn = torch.func.vjp(out, image, grid)
    probe = torch.randn(tangent.shape, generator=gen, dtype=torch.float64).to(device)
    vi, vg = vjp_fn(probe)
    # <probe, J t> == <J^T probe, t>
    torch.testing.assert_close((probe * tangent).sum(), (vi * t_image).sum() + (vg * t_grid).sum())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        batched = torch.func.vmap(out, in_dims=(None, 0))(image, torch.stack([grid, -grid]))
    torch.testing.assert_close(batched, torch.stack([out(image, grid), out(image, -grid)]))


def test_functorch_transforms_of_integrate_velocity(device, gen):
    vec = (smooth_field((1, 2, 5, 4), 1.5, gen) + 0.0137).to(device)

    def loss(v):
        return fastwarp.integrate_velocity(v, 3).square().sum()

    v = vec.clone().requires_grad_()
    (expected,) = torch.autograd.grad(loss(v), v)
    torch.testing.assert_close(torch.func.grad(loss)(vec), expected)
    t = torch.randn(vec.shape, generator=gen, dtype=torch.float64).to(device)
    _, tangent = torch.func.jvp(loss, (vec,), (t,))
    torch.testing.assert_close(tangent, (expected * t).sum())
    vecs = torch.stack([vec, 0.5 * vec])
    batched = torch.func.vmap(torch.func.grad(loss))(vecs)
    torch.testing.assert_close(batched, torch.stack([torch.func.grad(loss)(x) for x in vecs]))


# ------------------------------------------------------------------------- ncc


@pytest.mark.parametrize("reduction", ["mean", "batch"])
def test_ncc_forward_mode(reduction, device, gen):
    a = torch.rand(2, 1, 6, 5, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    b = (0.5 * a.detach() + 0.5 * torch.rand(a.shape, generator=gen, dtype=torch.float64).to(device)).requires_grad_()
    assert gradcheck(lambda x, y: fastwarp.ncc(x, y, 3, reduction=reduction), (a, b), **CHECKS)
    def loss(x, y=b.detach()):
        return fastwarp.ncc(x, y, 3, reduction=reduction).sum()

    (expected,) = torch.autograd.grad(loss(a), a)
    torch.testing.assert_close(torch.func.grad(loss)(a.detach()), expected)
    # vmap of grad, over both inputs, against a loop; the Jacobian of the reduced values
    xs = torch.stack([a.detach(), b.detach()])
    ys = torch.stack([b.detach(), a.detach()])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the ncc ops have batching rules
        batched = torch.func.vmap(torch.func.grad(loss))(xs, ys)
    torch.testing.assert_close(batched, torch.stack([torch.func.grad(loss)(x, y) for x, y in zip(xs, ys)]))
    jac = torch.func.jacrev(lambda x: fastwarp.ncc(x, b.detach(), 3, reduction=reduction))(a.detach())
    torch.testing.assert_close(jac, torch.autograd.functional.jacobian(lambda x: fastwarp.ncc(x, b.detach(), 3, reduction=reduction), a.detach()))


def test_ncc_refuses_what_it_cannot_differentiate(device, gen):
    a = torch.rand(1, 1, 6, 7, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    b = torch.rand(1, 1, 6, 7, generator=gen, dtype=torch.float64).to(device)
    (g,) = torch.autograd.grad(fastwarp.ncc(a, b, 3), a, create_graph=True)
    with pytest.raises(RuntimeError, match="fastwarp.ncc has no second derivative"):
        g.square().sum().backward()
    with pytest.raises(RuntimeError, match="no second derivative"):
        torch.func.hessian(lambda x: fastwarp.ncc(x, b, 3))(a.detach())
    with pytest.raises(RuntimeError, match="reduction='none'"):
        torch.func.jvp(lambda x: fastwarp.ncc(x, b, 3, reduction="none"), (a.detach(),), (torch.ones_like(a),))
