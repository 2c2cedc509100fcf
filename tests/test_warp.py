"""Values and gradients of fastwarp.warp / fastwarp.grid_sample against float64
references, on CPU (and CUDA when present), at odd sizes."""

import itertools

import pytest
import torch
import torch.nn.functional as F

import fastwarp
from conftest import deterministic_algorithms
from reference import smooth_field, voxelmorph_warp, warp_reference

PADDINGS = ["zeros", "border", "reflection"]
SHAPES = {2: (2, 3, 7, 9), 3: (2, 2, 5, 7, 6)}


def rand(shape, gen, lo=-1.0, hi=1.0, dtype=torch.float64):
    return torch.rand(shape, generator=gen, dtype=dtype) * (hi - lo) + lo


def make_grid(n, out_spatial, nd, gen):
    # reaches past [-1, 1] so that every padding mode matters
    return rand((n, *out_spatial, nd), gen, -1.25, 1.25)


def make_disp(shape, gen, magnitude=3.0):
    n, nd, *spatial = shape
    return rand(shape, gen, -magnitude, magnitude)


# ------------------------------------------------------------------------- grid_sample


@pytest.mark.parametrize("nd", [2, 3])
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("align_corners", [True, False])
def test_grid_sample_matches_torch(nd, mode, padding, align_corners, device, gen):
    x = torch.randn(SHAPES[nd], generator=gen, dtype=torch.float64)
    out_spatial = (4, 5, 3)[:nd]  # output size differs from the input's
    grid = make_grid(x.shape[0], out_spatial, nd, gen)
    expected = F.grid_sample(x, grid, mode, padding, align_corners)
    got = fastwarp.grid_sample(x.to(device), grid.to(device), mode, padding, align_corners)
    assert got.shape == expected.shape
    torch.testing.assert_close(got.cpu(), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.sanitize
@pytest.mark.parametrize("nd", [2, 3])
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("align_corners", [True, False])
def test_grid_sample_gradients_match_torch(nd, padding, align_corners, device, gen):
    x = torch.randn(SHAPES[nd], generator=gen, dtype=torch.float64)
    grid = make_grid(x.shape[0], (4, 5, 3)[:nd], nd, gen)
    grad_out = torch.randn((*x.shape[:2], *grid.shape[1:-1]), generator=gen, dtype=torch.float64)

    def grads(fn, dev):
        xi = x.to(dev).requires_grad_()
        gi = grid.to(dev).requires_grad_()
        fn(xi, gi, "bilinear", padding, align_corners).backward(grad_out.to(dev))
        return xi.grad.cpu(), gi.grad.cpu()

    ex, eg = grads(F.grid_sample, "cpu")
    gx, gg = grads(fastwarp.grid_sample, device)
    torch.testing.assert_close(gx, ex, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gg, eg, rtol=1e-10, atol=1e-10)


# PyTorch's own edge cases of grid_sample (test/test_nn.py, TestNN.test_grid_sample, "explicit
# check for gradient edge cases"): samples on, and a rounding error beside, the border voxel
# centres and edges of arange(5) rows, with its expected grid gradients.
EDGE_GRID = [[[1.0, 1.0], [1.0, -1.0], [0.8, 0.8], [0.8, -0.8]], [[-1.0, -1.0], [-1.0, 1.0], [-0.8, -0.8], [-0.8, 0.8]]]
_ZERO_GRAD = [[[0.0, 0.0]] * 4, [[0.0, 0.0]] * 4]
EDGE_GRID_GRADIENT = {
    ("bilinear", "zeros", True): [[[-8.0, -8.0], [-8.0, 0.0], [2.0, 0.0], [2.0, 0.0]], [[2.0, 0.0]] * 4],
    ("bilinear", "zeros", False): [[[-5.0, -5.0], [-5.0, 5.0], [-10.0, -10.0], [-10.0, 10.0]], [[0.0, 0.0]] * 4],
    ("bilinear", "border", True): [[[0.0, 0.0], [0.0, 0.0], [2.0, 0.0], [2.0, 0.0]], [[0.0, 0.0], [0.0, 0.0], [2.0, 0.0], [2.0, 0.0]]],
    ("bilinear", "border", False): _ZERO_GRAD,
    ("bilinear", "reflection", True): [[[0.0, 0.0], [0.0, 0.0], [2.0, 0.0], [2.0, 0.0]], [[0.0, 0.0], [0.0, 0.0], [2.0, 0.0], [2.0, 0.0]]],
    ("bilinear", "reflection", False): _ZERO_GRAD,
}


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize("input_requires_grad", [False, True])
def test_grid_sample_edge_cases_match_torch(mode, padding, align_corners, input_requires_grad, device):
    """PyTorch's ground truth at its tolerance, and torch's own gradients exactly: the source
    index is computed by ATen's operations in ATen's order, so a sample a rounding error
    outside the border is outside in both. The forward values agree to rounding (see
    test_grid_sample_known_values)."""
    image = torch.arange(0.0, 5, dtype=torch.float64).expand(1, 1, 5, 5)
    grid = torch.tensor(EDGE_GRID, dtype=torch.float64).view(1, 2, 4, 2)
    expected = torch.tensor(EDGE_GRID_GRADIENT.get((mode, padding, align_corners), _ZERO_GRAD), dtype=torch.float64)

    def run(fn, dev):
        x = image.to(dev).clone().requires_grad_(input_requires_grad)
        g = grid.to(dev).clone().requires_grad_()
        out = fn(x, g, mode, padding, align_corners)
        out.sum().backward()
        return out.detach().cpu(), g.grad.cpu(), x.grad.cpu() if input_requires_grad else None

    t_out, t_grid, t_input = run(F.grid_sample, "cpu")
    out, grad_grid, grad_input = run(fastwarp.grid_sample, device)
    torch.testing.assert_close(grad_grid, expected.view(1, 2, 4, 2), atol=1e-5, rtol=0)
    torch.testing.assert_close(out, t_out, atol=0, rtol=4 * torch.finfo(torch.float64).eps)
    torch.testing.assert_close(grad_grid, t_grid, atol=0, rtol=0)
    if input_requires_grad:
        torch.testing.assert_close(grad_input, t_input, atol=0, rtol=0)


def test_grid_sample_known_values():
    """PyTorch's hand-computed forward case: a 2 x 5 input of 1..10 at given grid points. The
    interpolation sums agree to rounding (torch's CPU kernel may fuse multiply-adds, by its
    build and the CPU, and sums the corners in its own order); which voxels are read, and
    with which weights, is ATen's to the last bit."""
    image = torch.arange(1.0, 11, dtype=torch.float64).view(1, 1, 2, 5)
    grid = torch.tensor([[[-0.9, -4.1], [0, 0.2000], [1, -1], [-0.333, 1e-6], [0.5, 1.0]],
                         [[-1.0, -0.5], [0, 0.3333], [1, -1], [-0.200, 1e-6], [1.5, 0.5]]], dtype=torch.float64).view(1, 2, 5, 2)
    for padding in PADDINGS:
        for align_corners in (True, False):
            for mode in ("bilinear", "nearest"):
                expected = F.grid_sample(image, grid, mode, padding, align_corners)
                got = fastwarp.grid_sample(image, grid, mode, padding, align_corners)
                torch.testing.assert_close(got, expected, atol=0, rtol=4 * torch.finfo(torch.float64).eps)


def test_grid_sample_defaults_and_bicubic(gen):
    x = torch.randn(1, 2, 6, 7, generator=gen)
    grid = make_grid(1, (5, 4), 2, gen).float()
    torch.testing.assert_close(fastwarp.grid_sample(x, grid), F.grid_sample(x, grid, align_corners=False))
    # bicubic is not one of ours: it is handed to torch unchanged
    torch.testing.assert_close(
        fastwarp.grid_sample(x, grid, mode="bicubic", align_corners=True),
        F.grid_sample(x, grid, mode="bicubic", align_corners=True),
    )


# ------------------------------------------------------------------------- warp


@pytest.mark.sanitize
@pytest.mark.parametrize("nd", [2, 3])
@pytest.mark.parametrize("mode", ["linear", "nearest"])
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("disp_batch", [1, 2])
def test_warp_matches_reference(nd, mode, padding, disp_batch, device, gen):
    image = torch.randn(SHAPES[nd], generator=gen, dtype=torch.float64)
    disp = make_disp((disp_batch, nd, *image.shape[2:]), gen)
    expected = warp_reference(image, disp, mode, padding)
    got = fastwarp.warp(image.to(device), disp.to(device), mode, padding)
    torch.testing.assert_close(got.cpu(), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("nd", [2, 3])
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("padding", PADDINGS)
def test_warp_matches_voxelmorph_path(nd, mode, padding, device, gen):
    image = torch.randn(SHAPES[nd], generator=gen, dtype=torch.float64)
    disp = smooth_field((2, nd, *image.shape[2:]), 2.5, gen)
    expected = voxelmorph_warp(image, disp, mode, padding)
    got = fastwarp.warp(image.to(device), disp.to(device), mode, padding)
    torch.testing.assert_close(got.cpu(), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("nd", [2, 3])
@pytest.mark.parametrize("padding", PADDINGS)
def test_warp_gradients_match_voxelmorph_path(nd, padding, device, gen):
    image = torch.randn(SHAPES[nd], generator=gen, dtype=torch.float64)
    disp = smooth_field((1, nd, *image.shape[2:]), 2.5, gen)  # one field for the batch
    grad_out = torch.randn(image.shape, generator=gen, dtype=torch.float64)

    def grads(fn, dev):
        im = image.to(dev).requires_grad_()
        d = disp.to(dev).requires_grad_()
        fn(im, d, "bilinear", padding).backward(grad_out.to(dev))
        return im.grad.cpu(), d.grad.cpu()

    ei, ed = grads(voxelmorph_warp, "cpu")
    gi, gd = grads(fastwarp.warp, device)
    torch.testing.assert_close(gi, ei, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gd, ed, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("nd", [2, 3])
@pytest.mark.parametrize("padding", PADDINGS)
def test_warp_gradcheck(nd, padding, device, gen):
    shape = {2: (2, 2, 4, 5), 3: (1, 2, 3, 4, 5)}[nd]
    image = torch.randn(shape, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    # non-integer positions everywhere: interpolation is not differentiable at integers
    disp = (make_disp((shape[0], nd, *shape[2:]), gen, 1.6) + 0.013).to(device).requires_grad_()
    assert torch.autograd.gradcheck(lambda i, d: fastwarp.warp(i, d, "linear", padding), (image, disp))


@pytest.mark.parametrize("nd", [2, 3])
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("align_corners", [True, False])
def test_grid_sample_gradcheck(nd, padding, align_corners, device, gen):
    shape = {2: (2, 2, 4, 5), 3: (1, 2, 3, 4, 5)}[nd]
    x = torch.randn(shape, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    grid = (make_grid(shape[0], (3, 2, 4)[:nd], nd, gen) + 0.0123).to(device).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, g: fastwarp.grid_sample(a, g, "bilinear", padding, align_corners), (x, grid)
    )


@pytest.mark.sanitize
@pytest.mark.parametrize("nd", [2, 3])
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("disp_batch", [1, 2])
def test_training_path_forward_jacobian(nd, padding, disp_batch, device, gen, monkeypatch):
    """Only the displacement needs a gradient (training): the forward also returns its
    Jacobian and the backward is a multiply-and-sum. It must equal the recomputing kernel."""
    image = torch.randn((2, 1, 6, 7, 5)[: 2 + nd], generator=gen, dtype=torch.float64).to(device)
    disp0 = smooth_field((disp_batch, nd, *image.shape[2:]), 2.5, gen).to(device)
    grid0 = make_grid(2, (4, 5, 3)[:nd], nd, gen).to(device)
    grad = torch.randn(image.shape, generator=gen, dtype=torch.float64).to(device)
    grad_g = torch.randn((2, 1, 4, 5, 3)[: 2 + nd], generator=gen, dtype=torch.float64).to(device)

    def grads(max_images):
        monkeypatch.setattr(fastwarp._ops, "JACOBIAN_MAX_IMAGES_PER_FIELD", max_images)
        d = disp0.clone().requires_grad_()
        g = grid0.clone().requires_grad_()
        (gd,) = torch.autograd.grad(fastwarp.warp(image, d, padding_mode=padding), d, grad)
        (gg,) = torch.autograd.grad(fastwarp.grid_sample(image, g, padding_mode=padding), g, grad_g)
        return gd, gg

    with_jac, without = grads(8), grads(0)
    torch.testing.assert_close(with_jac[0], without[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(with_jac[1], without[1], rtol=1e-12, atol=1e-12)
    # gradcheck's cost is two forwards per displacement element (the sanitizer runs repeat
    # this case): a corner of the field is enough for the derivative itself
    corner = (..., slice(0, 4), slice(0, 4), slice(0, 3))[: 1 + nd]
    img, d = image[corner].contiguous(), (disp0[corner] + 0.013).contiguous().requires_grad_()
    assert torch.autograd.gradcheck(lambda d: fastwarp.warp(img, d, "linear", padding), (d,))


def test_gradients_only_when_required(gen):
    image = torch.randn(1, 1, 5, 6, generator=gen, dtype=torch.float64)
    disp = make_disp((1, 2, 5, 6), gen)
    d = disp.clone().requires_grad_()
    out = fastwarp.warp(image, d)
    (gd,) = torch.autograd.grad(out, d, torch.ones_like(out))
    assert image.grad is None and gd.shape == disp.shape
    im = image.clone().requires_grad_()
    out = fastwarp.warp(im, disp)
    (gi,) = torch.autograd.grad(out, im, torch.ones_like(out))
    # the image gradient of a linear warp is the adjoint: <warp(x), y> == <x, warp^T(y)>
    y = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    (adj,) = torch.autograd.grad(fastwarp.warp(im, disp), im, y)
    torch.testing.assert_close((fastwarp.warp(image, disp) * y).sum(), (image * adj).sum())


def test_nearest_mode_coordinate_gradient_is_zero(gen):
    image = torch.randn(1, 1, 5, 6, generator=gen, dtype=torch.float64)
    disp = make_disp((1, 2, 5, 6), gen).requires_grad_()
    fastwarp.warp(image, disp, mode="nearest").sum().backward()
    assert torch.equal(disp.grad, torch.zeros_like(disp))


# ------------------------------------------------------------------------- dtypes and layout


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int32, torch.int64, torch.bool])
def test_nearest_label_maps_keep_dtype_and_values(dtype, device, gen):
    labels = torch.randint(0, 2 if dtype == torch.bool else 200, (2, 1, 6, 7, 5), generator=gen)
    if dtype == torch.int64:
        labels = labels + 2**40  # exact only if never routed through float
    labels = labels.to(dtype)
    disp = make_disp((2, 3, 6, 7, 5), gen).float()
    got = fastwarp.warp(labels.to(device), disp.to(device), mode="nearest")
    assert got.dtype == dtype
    expected = warp_reference(labels.long(), disp.double(), "nearest")
    assert torch.equal(got.cpu().long(), expected)


def test_integer_image_needs_nearest(gen):
    labels = torch.randint(0, 5, (1, 1, 4, 4), generator=gen)
    with pytest.raises(TypeError, match="image.*nearest"):
        fastwarp.warp(labels, torch.zeros(1, 2, 4, 4))


@pytest.mark.sanitize
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("nd", [2, 3])
def test_low_precision_error_within_twice_naive(dtype, nd, device, gen):
    """Error against the float64 truth at most ~2x that of a naive implementation computing
    in the same precision (fp32 arithmetic inside, as documented)."""
    image = torch.rand((2, 3, 17, 19, 15)[: 2 + nd], generator=gen, dtype=torch.float64) * 4
    disp = smooth_field((2, nd, *image.shape[2:]), 3.0, gen)
    truth = warp_reference(image, disp.to(dtype).double())
    ours = fastwarp.warp(image.to(dtype).to(device), disp.to(dtype).to(device)).cpu()
    assert ours.dtype == dtype
    naive = warp_reference(image.to(dtype), disp.to(dtype))
    err = (ours.double() - truth).abs().max()
    naive_err = (naive.double() - truth).abs().max()
    assert err <= 2 * naive_err + 1e-6, (err, naive_err)

    # gradients in the same precision: compared with float64 autograd, same bound shape
    d = disp.to(dtype).to(device).requires_grad_()
    im = image.to(dtype).to(device).requires_grad_()
    g = torch.rand(image.shape, generator=gen, dtype=torch.float64)
    fastwarp.warp(im, d).backward(g.to(dtype).to(device))
    d64 = disp.to(dtype).double().requires_grad_()
    im64 = image.to(dtype).double().requires_grad_()
    fastwarp.warp(im64, d64).backward(g.to(dtype).double())
    for got, exp in ((im.grad, im64.grad), (d.grad, d64.grad)):
        assert got.dtype == dtype
        rel = (got.cpu().double() - exp).abs().max() / exp.abs().max()
        assert rel < (1e-2 if dtype == torch.bfloat16 else 2e-3), rel


def test_mixed_dtypes_are_an_error_outside_autocast(gen):
    """As in grid_sample: a float32 image with a float64 (or float16) field is an error that
    names both arguments, not a silent promotion."""
    image = torch.randn(1, 1, 6, 7, generator=gen)
    disp = make_disp((1, 2, 6, 7), gen)
    with pytest.raises(RuntimeError):  # torch refuses too (its wording differs by device)
        F.grid_sample(image, disp.movedim(1, -1), align_corners=True)
    with pytest.raises(TypeError, match=r"image and disp must have the same dtype.*torch.float32.*torch.float64"):
        fastwarp.warp(image, disp)
    with pytest.raises(TypeError, match=r"input and grid must have the same dtype.*torch.float32.*torch.float16"):
        fastwarp.grid_sample(image, disp.half().movedim(1, -1))


AUTOCAST_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


@pytest.mark.parametrize("autocast_dtype", [torch.bfloat16, torch.float16])
def test_autocast_casts_like_grid_sample(autocast_dtype, gen):
    """Under CPU autocast, grid_sample's policy is "fp32": floating inputs other than float64
    run in float32. Every dtype pair gives grid_sample's output dtype, or its error, for
    both fastwarp.grid_sample and fastwarp.warp."""
    image = torch.randn(1, 1, 6, 7, generator=gen)
    grid = make_grid(1, (5, 4), 2, gen).float()
    disp = make_disp((1, 2, 6, 7), gen).float()
    for image_dtype, coord_dtype in itertools.product(AUTOCAST_DTYPES, AUTOCAST_DTYPES):
        x, g, d = image.to(image_dtype), grid.to(coord_dtype), disp.to(coord_dtype)
        with torch.autocast("cpu", dtype=autocast_dtype):
            try:
                expected = F.grid_sample(x, g, align_corners=False)
            except RuntimeError:
                expected = None
            if expected is None:
                with pytest.raises(RuntimeError, match="share a dtype"):
                    fastwarp.grid_sample(x, g, align_corners=False)
                with pytest.raises(RuntimeError, match="share a dtype"):
                    fastwarp.warp(x, d)
                continue
            got = fastwarp.grid_sample(x, g, align_corners=False)
            warped = fastwarp.warp(x, d)
        assert got.dtype == warped.dtype == expected.dtype, (image_dtype, coord_dtype)
        torch.testing.assert_close(got, expected)


def test_autocast(gen):
    image = torch.randn(1, 1, 8, 9, 7, generator=gen)
    conv = torch.nn.Conv3d(2, 3, 3, padding=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        disp = conv(torch.cat([image, image], 1))
        assert disp.dtype == torch.bfloat16
        out = fastwarp.warp(image, disp)
    assert out.dtype == torch.float32  # promoted like grid_sample
    out.square().mean().backward()
    assert conv.weight.grad is not None and torch.isfinite(conv.weight.grad).all()


@pytest.mark.sanitize
@pytest.mark.parametrize("nd", [2, 3])
def test_non_contiguous_inputs(nd, device, gen):
    shape = SHAPES[nd]
    image = torch.randn((shape[0], shape[1], *reversed(shape[2:])), generator=gen, dtype=torch.float64)
    image = image.transpose(2, -1)  # strided view
    disp = make_disp((shape[0], *reversed(shape[2:]), nd), gen).movedim(-1, 1).transpose(2, -1)
    assert not image.is_contiguous() and not disp.is_contiguous()
    expected = warp_reference(image.contiguous(), disp.contiguous())
    got = fastwarp.warp(image.to(device), disp.to(device))
    torch.testing.assert_close(got.cpu(), expected)

    # channels_last, an expanded (stride 0) gradient, a sliced grid
    cl = image.contiguous(memory_format=torch.channels_last if nd == 2 else torch.channels_last_3d)
    im = cl.to(device).detach().requires_grad_()
    d = disp.to(device).detach().requires_grad_()
    fastwarp.warp(im, d).sum().backward()  # sum's gradient is an expanded ones tensor
    ri = image.contiguous().requires_grad_()
    rd = disp.contiguous().requires_grad_()
    voxelmorph_warp(ri, rd).sum().backward()
    torch.testing.assert_close(im.grad.cpu(), ri.grad)
    torch.testing.assert_close(d.grad.cpu(), rd.grad)

    big_grid = make_grid(shape[0], (6, 8, 4)[:nd], nd, gen)
    grid = big_grid[:, ::2]
    torch.testing.assert_close(
        fastwarp.grid_sample(image.to(device), grid.to(device), align_corners=True).cpu(),
        F.grid_sample(image, grid, align_corners=True),
    )


@pytest.mark.sanitize
def test_image_gradient_deterministic(device, gen):
    image = torch.randn(2, 3, 9, 10, 11, generator=gen).to(device)
    disp = (smooth_field((2, 3, 9, 10, 11), 4.0, gen).float()).to(device)
    grad_out = torch.randn(image.shape, generator=gen).to(device)
    results = []
    with deterministic_algorithms():
        for _ in range(3):
            im = image.clone().requires_grad_()
            fastwarp.warp(im, disp).backward(grad_out)
            results.append(im.grad)
    assert all(torch.equal(results[0], r) for r in results[1:])
    # and it is the right gradient
    ref = image.double().cpu().requires_grad_()
    voxelmorph_warp(ref, disp.double().cpu()).backward(grad_out.double().cpu())
    torch.testing.assert_close(results[0].cpu().double(), ref.grad, rtol=1e-4, atol=1e-5)


def test_many_points_onto_the_same_voxels(device, gen):
    """The image gradient's scatter when every point of a large field lands on the same few
    voxels: on a GPU thousands of threads add to one address at once, and a lost update (a
    plain += where an atomic add belongs) changes the sum. Against float64 sums."""
    shape = (1, 2, 24, 25, 26)
    image = torch.randn(shape, generator=gen).to(device)
    pos = torch.stack(torch.meshgrid([torch.arange(s, dtype=torch.float32) for s in shape[2:]], indexing="ij"))
    target = torch.tensor([11.3, 12.6, 13.45]).view(3, 1, 1, 1)  # one point, between 8 voxels
    disp = (target - pos + 0.01 * torch.rand(pos.shape, generator=gen))[None].to(device)
    grad_out = torch.rand(shape, generator=gen).to(device)
    im = image.clone().requires_grad_()
    fastwarp.warp(im, disp).backward(grad_out)
    ref = image.double().cpu().requires_grad_()
    voxelmorph_warp(ref, disp.double().cpu()).backward(grad_out.double().cpu())
    assert ref.grad.abs().max() > 1000  # (the sum is large: ~16k contributions per corner)
    torch.testing.assert_close(im.grad.cpu().double(), ref.grad, rtol=1e-5, atol=1e-3)


@pytest.mark.sanitize
def test_offsets_beyond_int32(device):
    """A view whose elements lie more than 2**31 elements apart is indexed correctly (the
    kernels' 64-bit index path)."""
    try:
        storage = torch.empty(2**31 + 2**20, dtype=torch.uint8, device=device)
    except RuntimeError:  # pragma: no cover - machine without the address space
        pytest.skip("cannot reserve 2 GiB")
    stride = 2**31 // 3 + 7
    labels = storage.as_strided((1, 1, 2, 2), (0, 0, 2 * stride, stride))
    vals = torch.tensor([[3, 5], [7, 11]], dtype=torch.uint8)
    for i in range(2):
        for j in range(2):
            storage[2 * stride * i + stride * j] = vals[i, j]
    disp = torch.zeros(1, 2, 2, 2, device=device)
    disp[0, 0, 0, 0] = 1.0  # (0, 0) reads (1, 0), the element past 2**31
    got = fastwarp.warp(labels, disp, mode="nearest")
    assert got[0, 0].tolist() == [[7, 5], [7, 11]]
