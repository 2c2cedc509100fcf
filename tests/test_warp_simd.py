"""The vectorized CPU warp (csrc/cpu/sample_simd*.h) against the scalar per-point code, bit
for bit, at every SIMD level this CPU has (Note [Vectorized CPU sampling]): forward, both
gradients and the training path's forward Jacobian, 2-D and 3-D, warp and grid_sample,
partial vectors, strided images, hostile coordinates; nearest sampling of float32 and
integer images."""

import pytest
import torch

import fastwarp

SIMD_LEVEL = torch.ops.fastwarp._cpu_simd_level
SUPPORTED = SIMD_LEVEL(-1)  # the level chosen for this CPU (0: scalar only)
HOSTILE = [float("nan"), float("inf"), -float("inf"), 1e30, -3.5, 7.9, -1.0, 0.0]


@pytest.fixture
def simd_levels():
    if SUPPORTED == 0:
        pytest.skip("no AVX2 on this CPU: only the scalar path exists")
    yield [level for level in (1, 2) if level <= SUPPORTED]
    SIMD_LEVEL(SUPPORTED)


def at_level(level, fn):
    SIMD_LEVEL(level)
    assert SIMD_LEVEL(-1) == level
    try:
        return fn()
    finally:
        SIMD_LEVEL(SUPPORTED)


def hostile(t, gen):
    flat = t.view(-1)
    idx = torch.randperm(flat.numel(), generator=gen)[: max(1, flat.numel() // 50)]
    flat[idx] = torch.tensor(HOSTILE)[torch.arange(idx.numel()) % len(HOSTILE)]
    return t


def passes(sample, image, coords, grad):
    """Forward, both gradients, and the displacement-only (forward Jacobian) path."""
    im, c = image.clone().requires_grad_(), coords.clone().requires_grad_()
    out = sample(im, c)
    out.backward(grad)
    c2 = coords.clone().requires_grad_()
    out2 = sample(image, c2)
    out2.backward(grad)
    return out.detach(), im.grad, c.grad, out2.detach(), c2.grad


def assert_bitwise(ref, got):
    for a, b in zip(ref, got):
        assert torch.equal(a.nan_to_num(12345.0), b.nan_to_num(12345.0))


@pytest.mark.parametrize("shape", [(2, 3, 37, 41), (1, 2, 5, 1), (2, 2, 9, 10, 21), (1, 1, 3, 4, 17)])
@pytest.mark.parametrize("padding", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("shared_field", [False, True])
@pytest.mark.parametrize("mode", ["linear", "nearest"])
def test_warp_simd_matches_scalar(shape, padding, shared_field, mode, simd_levels, gen):
    nd = len(shape) - 2
    image = torch.randn(shape, generator=gen)
    disp = hostile(torch.randn((1 if shared_field else shape[0], nd, *shape[2:]), generator=gen) * 3, gen)
    grad = torch.randn(shape, generator=gen)

    def sample(im, d):
        return fastwarp.warp(im, d, mode=mode, padding_mode=padding)

    ref = at_level(0, lambda: passes(sample, image, disp, grad))
    for level in simd_levels:
        assert_bitwise(ref, at_level(level, lambda: passes(sample, image, disp, grad)))


@pytest.mark.parametrize("nd", [2, 3])
@pytest.mark.parametrize("padding", ["zeros", "border"])
@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_grid_sample_simd_matches_scalar(nd, padding, align_corners, mode, simd_levels, gen):
    image = torch.randn((2, 2, 11, 13, 7)[: 2 + nd], generator=gen)
    grid = hostile(torch.rand((2, 9, 19, 6)[: 1 + nd] + (nd,), generator=gen) * 2.4 - 1.2, gen)
    grad = torch.randn((*image.shape[:2], *grid.shape[1:-1]), generator=gen)

    def sample(im, g):
        return fastwarp.grid_sample(im, g, mode=mode, padding_mode=padding, align_corners=align_corners)

    ref = at_level(0, lambda: passes(sample, image, grid, grad))
    for level in simd_levels:
        assert_bitwise(ref, at_level(level, lambda: passes(sample, image, grid, grad)))


def test_strided_inputs_and_expanded_gradient(simd_levels, gen):
    """A channels-last image (its last axis is not contiguous: no pair loads), a transposed
    field, and the expanded gradient of .sum()."""
    image = torch.randn(2, 3, 23, 29, generator=gen).contiguous(memory_format=torch.channels_last)
    disp = torch.randn(2, 29, 23, 2, generator=gen).permute(0, 3, 2, 1) * 2

    def run():
        im, d = image.clone().requires_grad_(), disp.clone().requires_grad_()
        out = fastwarp.warp(im, d)
        out.sum().backward()
        return out.detach(), im.grad, d.grad

    ref = at_level(0, run)
    for level in simd_levels:
        assert_bitwise(ref, at_level(level, run))


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.bool])
@pytest.mark.parametrize("shape", [(2, 1, 13, 17, 9), (1, 2, 5, 1), (2, 3, 37, 41)])
@pytest.mark.parametrize("padding", ["zeros", "border"])
def test_nearest_and_labels_identical_at_every_level(dtype, shape, padding, simd_levels, gen):
    """The nearest lanes copy the voxel's bits (a gather for 32-bit elements, lane by lane
    for the others); half-integer displacements check that they round half to even."""
    labels = torch.randint(0, 200, shape, generator=gen).to(dtype)
    disp = torch.randn(shape[0], len(shape) - 2, *shape[2:], generator=gen) * 3
    disp.view(-1)[::3] = torch.randint(-8, 9, disp.view(-1)[::3].shape, generator=gen) / 2.0
    disp = hostile(disp, gen)

    def run():
        return fastwarp.warp(labels, disp, mode="nearest", padding_mode=padding)

    ref = at_level(0, run)
    for level in simd_levels:
        assert torch.equal(at_level(level, run), ref)


def test_level_is_capped_by_the_cpu():
    previous = SIMD_LEVEL(99)
    try:
        assert SIMD_LEVEL(-1) == SUPPORTED
    finally:
        SIMD_LEVEL(previous)
