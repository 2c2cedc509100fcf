"""fastwarp keeps torch's contracts where it stands in for torch: empty tensors, exception
types, the bicubic fallback under a patched torch.nn.functional.grid_sample, autocast, and
tensor subclasses. PyTorch's own grid_sample tests run against fastwarp in
tests/test_torch_grid_sample.py."""

import itertools
import warnings

import pytest
import torch
import torch.nn.functional as F

import fastwarp
from conftest import HAS_CUDA

TORCH_GRID_SAMPLE = F.grid_sample


@pytest.fixture
def patched(monkeypatch):
    """fastwarp.grid_sample patched in as torch's, the quickest way users adopt it."""
    monkeypatch.setattr(F, "grid_sample", fastwarp.grid_sample)


# ------------------------------------------------------------------------- empty tensors

EMPTY_GRID_CASES = [  # (input shape, grid shape): a batch, channel or output size of 0
    ((0, 2, 5, 6), (0, 3, 4, 2)),
    ((2, 0, 5, 6), (2, 3, 4, 2)),
    ((2, 3, 5, 6), (2, 0, 4, 2)),
    ((2, 3, 5, 6), (2, 3, 0, 2)),
    ((0, 2, 5, 6, 4), (0, 3, 4, 2, 3)),
    ((2, 0, 5, 6, 4), (2, 3, 4, 2, 3)),
    ((2, 1, 5, 6, 4), (2, 3, 0, 2, 3)),
]


@pytest.mark.parametrize("input_shape, grid_shape", EMPTY_GRID_CASES)
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_empty_grid_sample_is_torchs(input_shape, grid_shape, mode, device, gen):
    x = torch.rand(input_shape, generator=gen, dtype=torch.float64)
    g = torch.rand(grid_shape, generator=gen, dtype=torch.float64) * 2 - 1
    xt, gt = x.clone().requires_grad_(), g.clone().requires_grad_()
    expected = TORCH_GRID_SAMPLE(xt, gt, mode, align_corners=False)
    expected.sum().backward()
    xf, gf = x.to(device).requires_grad_(), g.to(device).requires_grad_()
    got = fastwarp.grid_sample(xf, gf, mode, align_corners=False)
    assert got.shape == expected.shape and got.dtype == expected.dtype
    got.sum().backward()
    assert xf.grad.shape == xt.grad.shape and gf.grad.shape == gt.grad.shape
    torch.testing.assert_close(xf.grad.cpu(), xt.grad)
    torch.testing.assert_close(gf.grad.cpu(), gt.grad)


def test_empty_input_spatial_is_refused_as_torch_refuses():
    x, g = torch.rand(1, 2, 0, 6), torch.rand(1, 3, 4, 2)
    with pytest.raises(RuntimeError, match="non-empty spatial"):
        TORCH_GRID_SAMPLE(x, g, align_corners=False)
    with pytest.raises(RuntimeError, match="non-empty spatial"):
        fastwarp.grid_sample(x, g, align_corners=False)
    with pytest.raises(RuntimeError, match="non-empty spatial"):  # also at the op level
        torch.ops.fastwarp.grid_sample(x, g, 0, 0, False)


@pytest.mark.parametrize(
    "image_shape, disp_shape",
    [((0, 2, 5, 6), (1, 2, 5, 6)), ((0, 2, 5, 6), (0, 2, 5, 6)), ((2, 0, 5, 6), (2, 2, 5, 6)),
     ((2, 1, 0, 6), (2, 2, 0, 6)), ((1, 1, 4, 0, 3), (1, 3, 4, 0, 3))],
)
def test_empty_warp(image_shape, disp_shape, device, gen):
    image = torch.rand(image_shape, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    disp = torch.rand(disp_shape, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    out = fastwarp.warp(image, disp)
    assert out.shape == (*image_shape[:2], *disp_shape[2:])
    out.sum().backward()
    assert image.grad.shape == image.shape and disp.grad.shape == disp.shape
    assert not disp.grad.any()  # nothing sampled: a zero gradient, not garbage
    # and the training path (the forward Jacobian), and the integration of an empty field
    d = disp.detach().requires_grad_()
    fastwarp.warp(image.detach(), d).sum().backward()
    assert d.grad.shape == d.shape and not d.grad.any()
    if disp_shape[0] > 0 and image_shape[1] > 0 or 0 in disp_shape[2:]:
        v = disp.detach().requires_grad_()
        u = fastwarp.integrate_velocity(v, 3)
        assert u.shape == v.shape
        u.sum().backward()
        assert v.grad.shape == v.shape


@pytest.mark.parametrize("shape", [(0, 1, 5, 6), (2, 0, 5, 6), (1, 2, 0, 6, 3)])
def test_empty_ncc_reduces_like_torch_mean(shape, device):
    a = torch.rand(shape, dtype=torch.float64, device=device).requires_grad_()
    b = torch.rand(shape, dtype=torch.float64, device=device)
    empty_map = torch.empty(shape, dtype=torch.float64)
    cc = fastwarp.ncc(a, b, 3, reduction="none")
    assert cc.shape == shape
    batch = fastwarp.ncc(a, b, 3, reduction="batch")
    torch.testing.assert_close(batch.cpu(), empty_map.flatten(2).mean(2), equal_nan=True)
    mean = fastwarp.ncc(a, b, 3)
    assert mean.shape == () and mean.isnan()  # torch.mean of nothing
    (batch.nan_to_num().sum() + cc.sum()).backward()
    assert a.grad.shape == shape


# ------------------------------------------------------------------------- exceptions

# Each mistake, with the exception torch raises for it and the one fastwarp raised before
# (its message names the argument): fastwarp's must be catchable as both.
ERROR_CASES = [
    ("grid dtype differs", lambda: (torch.rand(1, 1, 5, 6), torch.rand(1, 3, 4, 2, dtype=torch.float64)), {}, TypeError),
    ("integer input, bilinear", lambda: (torch.ones(1, 1, 5, 6, dtype=torch.long), torch.rand(1, 3, 4, 2)), {}, TypeError),
    ("complex input", lambda: (torch.rand(1, 1, 5, 6, dtype=torch.complex64), torch.rand(1, 3, 4, 2)), {}, TypeError),
    ("integer grid", lambda: (torch.rand(1, 1, 5, 6), torch.ones(1, 3, 4, 2, dtype=torch.long)), {}, TypeError),
    ("input and grid dims differ", lambda: (torch.rand(1, 1, 5, 6), torch.rand(1, 3, 4, 1, 2)), {}, ValueError),
    ("3-D input", lambda: (torch.rand(2, 5, 6), torch.rand(1, 3, 4, 2)), {}, ValueError),
    ("6-D input", lambda: (torch.rand(1, 1, 2, 3, 4, 5), torch.rand(1, 2, 3, 4, 5, 4)), {}, ValueError),
    ("batch differs", lambda: (torch.rand(2, 1, 5, 6), torch.rand(1, 3, 4, 2)), {}, ValueError),
    ("grid last dimension", lambda: (torch.rand(1, 1, 5, 6), torch.rand(1, 3, 4, 3)), {}, ValueError),
    ("empty input spatial", lambda: (torch.rand(1, 1, 0, 6), torch.rand(1, 3, 4, 2)), {}, ValueError),
    ("grid on another device", lambda: (torch.rand(1, 1, 5, 6), torch.rand(1, 3, 4, 2, device="meta")), {}, ValueError),
    ("bad mode", lambda: (torch.rand(1, 1, 5, 6), torch.rand(1, 3, 4, 2)), {"mode": "cubic"}, ValueError),
    ("bad padding", lambda: (torch.rand(1, 1, 5, 6), torch.rand(1, 3, 4, 2)), {"padding_mode": "wrap"}, ValueError),
    ("input not a tensor", lambda: ("x", torch.rand(1, 3, 4, 2)), {}, TypeError),
    ("grid not a tensor", lambda: (torch.rand(1, 1, 5, 6), "grid"), {}, TypeError),
    ("bicubic 3-D", lambda: (torch.rand(1, 1, 5, 6, 7), torch.rand(1, 2, 3, 4, 3)), {"mode": "bicubic"}, RuntimeError),
]


@pytest.mark.parametrize("name, make, kwargs, own_type", ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_errors_are_catchable_as_torchs(name, make, kwargs, own_type):
    args = make()
    with pytest.raises(Exception) as torch_error:
        TORCH_GRID_SAMPLE(*args, align_corners=False, **kwargs)
    with pytest.raises(Exception) as ours:
        fastwarp.grid_sample(*args, align_corners=False, **kwargs)
    assert isinstance(ours.value, type(torch_error.value)), (type(ours.value).__mro__, type(torch_error.value))
    assert isinstance(ours.value, own_type)
    assert isinstance(ours.value, RuntimeError) or type(torch_error.value) in (TypeError, ValueError)


def test_warp_ncc_and_integrate_errors_are_runtime_errors():
    """The other ops mirror no torch op, but catch the same way."""
    image, disp = torch.rand(1, 1, 5, 6), torch.rand(1, 2, 5, 6)
    bad_calls = [
        lambda: fastwarp.warp(image, disp[:, :1]),
        lambda: fastwarp.warp(image, disp.double()),
        lambda: fastwarp.warp(image.long(), disp),
        lambda: fastwarp.warp(image, disp, mode="cubic"),
        lambda: fastwarp.ncc(image, disp[:, :1, :4]),
        lambda: fastwarp.ncc(image, image, window=4),
        lambda: fastwarp.integrate_velocity(disp, -1),
        lambda: fastwarp.integrate_velocity(disp[:, :1]),
    ]
    for call in bad_calls:
        with pytest.raises(RuntimeError) as error:
            call()
        assert isinstance(error.value, (ValueError, TypeError)), error.value


# ------------------------------------------------------------------------- patched in


def test_patched_bicubic_runs_torchs_kernel(patched, gen):
    """Patched in as torch's grid_sample, bicubic goes to torch's own kernel, not back to
    fastwarp (which recursed forever), with values and gradients of torch."""
    x = torch.randn(2, 3, 6, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    g = (torch.rand(2, 4, 5, 2, generator=gen, dtype=torch.float64) * 2.4 - 1.2).requires_grad_()
    for padding, align in itertools.product(("zeros", "border", "reflection"), (True, False)):
        got = F.grid_sample(x, g, "bicubic", padding, align)
        expected = TORCH_GRID_SAMPLE(x, g, "bicubic", padding, align)
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert torch.autograd.gradgradcheck(lambda a, b: F.grid_sample(a, b, "bicubic", align_corners=False), (x, g))


def test_patched_align_corners_default_warns_as_torch(patched, gen):
    x = torch.randn(1, 1, 5, 6, generator=gen)
    g = torch.rand(1, 3, 4, 2, generator=gen) * 2 - 1
    with pytest.warns(UserWarning, match="align_corners=False"):
        got = F.grid_sample(x, g)
    torch.testing.assert_close(got, TORCH_GRID_SAMPLE(x, g, align_corners=False))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        F.grid_sample(x, g, align_corners=False)


class _Tagged(torch.Tensor):
    """A tensor subclass with __torch_function__, as MONAI's MetaTensor is."""

    seen = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        cls.seen.append(getattr(func, "__name__", str(func)))
        return super().__torch_function__(func, types, args, kwargs or {})


def test_tensor_subclasses_see_the_call(gen):
    x = torch.randn(1, 1, 5, 6, generator=gen).as_subclass(_Tagged)
    g = (torch.rand(1, 3, 4, 2, generator=gen) * 2 - 1).as_subclass(_Tagged)
    _Tagged.seen.clear()
    out = fastwarp.grid_sample(x, g, align_corners=True)
    assert isinstance(out, _Tagged) and "grid_sample" in _Tagged.seen
    torch.testing.assert_close(out.as_subclass(torch.Tensor), TORCH_GRID_SAMPLE(x.as_subclass(torch.Tensor), g.as_subclass(torch.Tensor), align_corners=True))


# ------------------------------------------------------------------------- autocast


def test_ncc_autocast_promotes(gen):
    a = torch.rand(1, 1, 7, 8, generator=gen)
    b = (0.5 * a + 0.5 * torch.rand(a.shape, generator=gen)).to(torch.bfloat16)
    with pytest.raises(TypeError, match="share a dtype"):
        fastwarp.ncc(a, b, 3)
    for dtype in (torch.bfloat16, torch.float16):
        with torch.autocast("cpu", dtype=dtype):
            got = fastwarp.ncc(a, b, 3)
            swapped = fastwarp.ncc(b, a, 3)
        assert got.dtype == swapped.dtype == torch.float32
        torch.testing.assert_close(got, fastwarp.ncc(a, b.float(), 3))


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU")
def test_cuda_autocast_promotes_like_grid_sample(gen):
    """On CUDA, grid_sample's autocast policy is "promote": the widest floating dtype."""
    image = torch.randn(1, 1, 6, 7, generator=gen).cuda()
    grid = (torch.rand(1, 5, 4, 2, generator=gen) * 2 - 1).cuda()
    disp = torch.randn(1, 2, 6, 7, generator=gen).cuda()
    for image_dtype, coord_dtype in itertools.product((torch.float16, torch.float32), repeat=2):
        with torch.autocast("cuda", dtype=torch.float16):
            expected = TORCH_GRID_SAMPLE(image.to(image_dtype), grid.to(coord_dtype), align_corners=False)
            got = fastwarp.grid_sample(image.to(image_dtype), grid.to(coord_dtype), align_corners=False)
            warped = fastwarp.warp(image.to(image_dtype), disp.to(coord_dtype))
        assert got.dtype == warped.dtype == expected.dtype
        torch.testing.assert_close(got.float(), expected.float(), rtol=2e-3, atol=2e-3)
