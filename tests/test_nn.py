"""fastwarp.nn (VoxelMorph's modules on fastwarp's kernels): SpatialTransformer, Warp, compose
and VecInt against VoxelMorph's grid_sample formulas in float64."""

import pytest
import torch

import fastwarp
from fastwarp.app.metrics import folding_fraction
from reference import smooth_field, voxelmorph_warp, warp_reference


def test_spatial_transformer_is_voxelmorph_compatible(gen):
    image = torch.randn(2, 1, 6, 7, 5, generator=gen, dtype=torch.float64)
    flow = smooth_field((2, 3, 6, 7, 5), 2.0, gen)
    st = fastwarp.nn.SpatialTransformer((6, 7, 5))
    torch.testing.assert_close(st(image, flow), voxelmorph_warp(image, flow))
    st_nn = fastwarp.nn.SpatialTransformer((6, 7, 5), mode="nearest")
    torch.testing.assert_close(st_nn(image, flow), voxelmorph_warp(image, flow, mode="nearest"))
    assert "size=(6, 7, 5)" in repr(st)
    with pytest.raises(ValueError, match="flow spatial shape"):
        st(image, flow[..., :4])
    with pytest.raises(ValueError, match="mode"):
        fastwarp.nn.SpatialTransformer((6, 7, 5), mode="bicubic")


def test_warp_module(gen):
    image = torch.randn(1, 2, 5, 6, generator=gen, dtype=torch.float64)
    disp = torch.rand((1, 2, 5, 6), generator=gen, dtype=torch.float64) * 6.0 - 3.0
    m = fastwarp.nn.Warp(padding_mode="border")
    torch.testing.assert_close(m(image, disp), warp_reference(image, disp, padding="border"))
    assert "border" in repr(m)


def test_compose_matches_reference(device, gen):
    a = smooth_field((2, 3, 7, 8, 6), 1.5, gen)
    b = smooth_field((2, 3, 7, 8, 6), 1.5, gen)
    expected = b + voxelmorph_warp(a, b)
    got = fastwarp.nn.compose(a.to(device), b.to(device))
    torch.testing.assert_close(got.cpu(), expected)
    # composing fields is composing warps, up to interpolation error (small for smooth fields,
    # away from the borders), and the order matters
    spatial = (16, 17, 15)
    a, b = smooth_field((1, 3, *spatial), 1.0, gen), smooth_field((1, 3, *spatial), 1.0, gen)
    image = smooth_field((1, 1, *spatial), 1.0, gen)
    inner = (slice(None), slice(None)) + (slice(4, -4),) * 3
    twice = fastwarp.warp(fastwarp.warp(image, a), b)[inner]
    once = fastwarp.warp(image, fastwarp.nn.compose(a, b))[inner]
    swapped = fastwarp.warp(image, fastwarp.nn.compose(b, a))[inner]
    assert (twice - once).abs().mean() < 0.1 * image[inner].abs().mean()
    assert (twice - once).abs().mean() < 0.5 * (twice - swapped).abs().mean()


@pytest.mark.parametrize("nd", [2, 3])
def test_vecint_matches_voxelmorph(nd, device, gen):
    shape = (2, nd, 9, 8, 7)[: 2 + nd]
    vec = smooth_field(shape, 3.0, gen)

    expected = vec / 2**7  # VoxelMorph's VecInt, with its grid_sample transformer
    for _ in range(7):
        expected = expected + voxelmorph_warp(expected, expected)
    integrate = fastwarp.nn.VecInt(shape[2:], nsteps=7)
    v = vec.to(device).requires_grad_()
    got = integrate(v)
    torch.testing.assert_close(got.detach().cpu(), expected)
    got.square().sum().backward()
    assert torch.isfinite(v.grad).all()
    assert "nsteps=7" in repr(integrate)
    with pytest.raises(ValueError, match="inshape"):
        integrate(vec[..., :-1])


def test_compose_2d_matches_reference(gen):
    # the 2-D case, odd sizes, batch-1 disp_b
    a = smooth_field((2, 2, 9, 7), 1.5, gen)
    b = smooth_field((1, 2, 9, 7), 1.5, gen)
    expected = b + voxelmorph_warp(a, b.expand(2, -1, -1, -1))
    got = fastwarp.nn.compose(a, b)
    assert got.shape == (2, 2, 9, 7)
    torch.testing.assert_close(got, expected)
    # "b then a": a point moved by b and then by a
    image = smooth_field((2, 2, 9, 7), 1.0, gen)[:, :1]  # (its channel count is its ndim)
    inner = (slice(None), slice(None), slice(3, -3), slice(3, -3))
    twice = fastwarp.warp(fastwarp.warp(image, a), b)[inner]
    once = fastwarp.warp(image, fastwarp.nn.compose(a, b))[inner]
    assert (twice - once).abs().mean() < 0.1 * image[inner].abs().mean()


@pytest.mark.parametrize("shape", [(1, 2, 33, 31), (1, 3, 17, 19, 15)])
def test_scaling_and_squaring_removes_folding(shape, gen):
    vel = smooth_field(shape, 3.0, gen)
    raw = folding_fraction(vel)  # the velocity used directly as a displacement
    integrated = folding_fraction(fastwarp.nn.VecInt(None, 7)(vel))
    assert raw > 0.05
    assert integrated < 1e-3
    assert integrated < raw
    # the float32 path (the model's) too
    assert folding_fraction(fastwarp.nn.VecInt(None, 7)(vel.float())) < 1e-3
