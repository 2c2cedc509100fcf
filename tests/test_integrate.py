"""fastwarp.integrate_velocity (scaling and squaring as one op with its own backward) against
the same integration written as autograd warps, VoxelMorph's VecInt on fastwarp.warp."""

import pytest
import torch

import fastwarp
from conftest import deterministic_algorithms
from fastwarp import _emu
from reference import smooth_field, voxelmorph_warp

SHAPES = {2: (2, 2, 13, 11), 3: (2, 3, 9, 8, 7)}


def autograd_vecint(v, steps):
    """The integration as ``steps`` autograd warps: fastwarp.nn.VecInt before it became one op."""
    u = v * 2.0**-steps
    for _ in range(steps):
        u = u + fastwarp.warp(u, u)
    return u


@pytest.mark.parametrize("nd", [2, 3])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_autograd_warps(nd, dtype, device, gen):
    # magnitude 4: fields that leave the grid at the borders (zeros padding matters)
    vec = smooth_field(SHAPES[nd], 4.0, gen, dtype).to(device)
    grad_out = smooth_field(SHAPES[nd], 1.0, gen, dtype).to(device)
    v_ref, v_op = vec.clone().requires_grad_(), vec.clone().requires_grad_()
    expected = autograd_vecint(v_ref, 7)
    got = fastwarp.integrate_velocity(v_op, 7)
    torch.testing.assert_close(got, expected)
    assert got.shape == vec.shape and got.dtype == dtype and got.is_contiguous()
    expected.backward(grad_out)
    got.backward(grad_out)
    torch.testing.assert_close(v_op.grad, v_ref.grad)
    assert v_op.grad.abs().max() > 0.1 * grad_out.abs().max()
    # one autograd node, not a graph of warps
    assert type(got.grad_fn).__name__ == "_ScalingAndSquaringBackward"
    with torch.no_grad():  # the no-grad path keeps nothing and gives the same field
        torch.testing.assert_close(fastwarp.integrate_velocity(vec, 7), expected.detach())


@pytest.mark.parametrize("nd", [2, 3])
def test_is_voxelmorph_vecint(nd, gen):
    vec = smooth_field(SHAPES[nd], 3.0, gen)
    expected = vec / 2**5
    for _ in range(5):
        expected = expected + voxelmorph_warp(expected, expected)
    torch.testing.assert_close(fastwarp.integrate_velocity(vec, 5), expected)
    torch.testing.assert_close(fastwarp.nn.VecInt(SHAPES[nd][2:], 5)(vec), expected)


@pytest.mark.parametrize("nd", [2, 3])
def test_gradcheck(nd, device, gen):
    shape = {2: (1, 2, 5, 4), 3: (1, 3, 4, 3, 5)}[nd]
    # non-integer positions: interpolation is not differentiable where a point crosses a voxel
    vec = (smooth_field(shape, 1.5, gen) + 0.0137).to(device).requires_grad_()
    assert torch.autograd.gradcheck(lambda v: fastwarp.integrate_velocity(v, 3), (vec,))


def test_zero_steps_and_strided_inputs(gen):
    vec = smooth_field((1, 2, 6, 5), 2.0, gen).requires_grad_()
    out = fastwarp.integrate_velocity(vec, 0)
    torch.testing.assert_close(out, vec.detach())
    assert out.data_ptr() != vec.data_ptr()
    grad = torch.randn(out.shape, generator=gen, dtype=out.dtype)
    out.backward(grad)
    torch.testing.assert_close(vec.grad, grad)
    # a non-contiguous field, and the expanded gradient of a sum
    base = smooth_field((2, 7, 3, 6, 5), 2.0, gen)
    v_op = base.movedim(1, 2).requires_grad_()  # (2, 3, 7, 6, 5), not contiguous
    v_ref = v_op.detach().contiguous().requires_grad_()
    fastwarp.integrate_velocity(v_op, 4).sum().backward()
    autograd_vecint(v_ref, 4).sum().backward()
    torch.testing.assert_close(v_op.grad, v_ref.grad)


def test_retain_graph_and_determinism(device, gen):
    vec = smooth_field((1, 3, 7, 6, 5), 3.0, gen).float().to(device).requires_grad_()
    grad = smooth_field((1, 3, 7, 6, 5), 1.0, gen).float().to(device)
    with deterministic_algorithms():
        out = fastwarp.integrate_velocity(vec, 6)
        out.backward(grad, retain_graph=True)
        first = vec.grad.clone()
        out.backward(grad)  # the kept fields are still there
        torch.testing.assert_close(vec.grad, 2 * first)
        vec.grad = None
        fastwarp.integrate_velocity(vec, 6).backward(grad)
        assert torch.equal(vec.grad, first)


@pytest.mark.parametrize("nd", [2, 3])
def test_second_derivatives_and_forward_mode(nd, device, gen):
    """Double backward (the sweep recomputed on v's graph), forward over reverse, and jvp
    (the steps' tangent) against finite differences."""
    shape = {2: (1, 2, 5, 4), 3: (1, 3, 4, 3, 3)}[nd]
    vec = (smooth_field(shape, 1.5, gen) + 0.0137).to(device).requires_grad_()
    assert torch.autograd.gradcheck(lambda v: fastwarp.integrate_velocity(v, 2), (vec,), check_forward_ad=True)
    assert torch.autograd.gradgradcheck(
        lambda v: fastwarp.integrate_velocity(v, 2), (vec,), check_fwd_over_rev=True
    )


def test_bad_inputs():
    v = torch.zeros(1, 2, 4, 5)
    with pytest.raises(TypeError, match="v must be a torch.Tensor"):
        fastwarp.integrate_velocity(v.numpy())
    with pytest.raises(ValueError, match=r"\(N, 2, H, W\) or \(N, 3, D, H, W\)"):
        fastwarp.integrate_velocity(torch.zeros(2, 4, 5))
    with pytest.raises(ValueError, match="must have 2 components"):
        fastwarp.integrate_velocity(torch.zeros(1, 3, 4, 5))
    with pytest.raises(ValueError, match="must have 3 components"):
        fastwarp.integrate_velocity(torch.zeros(1, 2, 4, 5, 6))
    with pytest.raises(TypeError, match="floating-point"):
        fastwarp.integrate_velocity(torch.zeros(1, 2, 4, 5, dtype=torch.int32))
    with pytest.raises(ValueError, match="steps must be >= 0"):
        fastwarp.integrate_velocity(v, -1)
    with pytest.raises(TypeError, match="steps must be an int"):
        fastwarp.integrate_velocity(v, 7.0)
    with pytest.raises(ValueError, match="nsteps"):
        fastwarp.nn.VecInt(None, -1)


@pytest.mark.slow
def test_compile_fullgraph(gen):
    """torch.compile traces through the autograd.Function into the warp ops and their fakes."""
    if _emu.active():
        pytest.skip("torch.compile does not trace under the emulation's dispatch mode")
    torch._dynamo.reset()
    vec = smooth_field((1, 3, 6, 7, 5), 3.0, gen, torch.float32)
    compiled = torch.compile(lambda v: fastwarp.integrate_velocity(v, 4).square().mean(), fullgraph=True)
    v_eager, v_comp = vec.clone().requires_grad_(), vec.clone().requires_grad_()
    eager = fastwarp.integrate_velocity(v_eager, 4).square().mean()
    comp = compiled(v_comp)
    eager.backward()
    comp.backward()
    torch.testing.assert_close(comp, eager)
    torch.testing.assert_close(v_comp.grad, v_eager.grad)
