"""PyTorch's own grid_sample tests, ported to run ``fastwarp.grid_sample`` as a drop-in.

Every test here runs with ``torch.nn.functional.grid_sample`` replaced by
``fastwarp.grid_sample`` (the autouse fixture ``drop_in``, through ``monkeypatch``), the way a
user would patch it, and calls the function through that patched name where PyTorch's tests
call ``F.grid_sample``: ``mode="bicubic"``, which fastwarp hands to torch, goes through the
same path. The reference is always torch's original function, saved when this module is
imported, run in float64 on the same values in the same run: where PyTorch's tests compare
against hard-coded expected tensors, these compare against that reference instead.

The tests come from PyTorch's ``test/test_nn.py`` (read at commit
74f2fa66feec00335f72813782f4802e80bff4cb), classes ``TestNN`` and ``TestNNDeviceType``.
They are written anew as pytest functions; the checks, inputs and tolerances are PyTorch's
where they matter. Random sizes of the originals are fixed here (odd where allowed), every
tensor comes from a seeded generator, and no test samples zeros only.

Ported, PyTorch's test -> the function here:

- ``TestNN.test_grid_sample_error_checking`` -> ``test_error_checking_valid_call`` (its
  first call must not raise, and here must also match torch) and ``test_error_checking``: a
  bad ``mode`` / ``padding_mode`` (ValueError naming the bad value), a 3-D input, a 5-D grid
  for a 4-D input, a grid of another batch size, a grid whose last dimension does not match,
  an input with an empty spatial dimension, bicubic on a 5-D input (RuntimeError: the test
  asserts what ``except RuntimeError`` catches, subclasses included, and not torch's
  wording). Its CUDA-only case (input and grid on different devices) runs here with the
  ``meta`` device as the other device.
  ``test_error_types_beyond_the_suite`` adds, not from PyTorch's file, the other misuse where
  torch raises RuntimeError (or its subclass NotImplementedError): input and grid of
  different floating dtypes, a complex input, an integer input with ``mode="bilinear"``.
- ``TestNN.test_grid_sample`` (2-D), in parts:
  "test known input on CPU" -> ``test_known_values_2d`` (all three modes, paddings,
  align_corners; the same 2x5 ramp image and the same kinds of grid points: far outside,
  exactly on +-1, a hair off zero, thirds, past the edge);
  "explicit check for gradient edge cases" -> ``test_gradient_edge_cases_2d`` (the expanded,
  stride-0 ramp image, points on +-1 and +-0.8; grid gradient with and without an input
  gradient, atol 1e-5);
  "do gradcheck" -> ``test_gradcheck_2d`` (randn grid, input with and without a gradient);
  its ``test``/``test_shape`` helper -> ``test_matches_torch_2d`` (same-size, larger,
  smaller and 1x1 inputs, an empty grid, no channels, an empty batch; a non-contiguous
  input; the grid in each of PyTorch's four memory layouts; output, input gradient and grid
  gradient against torch with PyTorch's CPU-vs-CUDA tolerances, atol 5e-5 on the grid
  gradient; and its "zero-dimensional input strides" check, an input expanded from one row,
  here with its gradients compared too, PyTorch's compares the output only).
- ``TestNN.test_grid_sample_3d`` -> ``test_gradcheck_3d`` (both inputs, then the grid
  alone; ``fast_mode=True``, its Jacobians being the largest here) and
  ``test_matches_torch_3d`` (the same seven shapes, input and grid non-contiguous, and the
  input expanded from one slice).
- ``TestNN.test_grid_sample_nearest_neighbor_rounding_mode_consistency`` ->
  ``test_nearest_rounding_consistency``: the same ramp of query points (steps of 0.1 over a
  10-wide axis, on the .0 and .5 ties) along x and y of a 2-D input and x, y and z of a 3-D
  input must pick exactly the same samples.
- ``TestNNDeviceType.test_grid_sample_nan_inf`` -> ``test_nan_inf``: NaN and inf grid
  points, nearest, every padding, float and double: a zero image samples exactly zeros (no
  NaN leaks); a random image samples finite values, zeros with ``padding_mode="zeros"``.
- ``TestNNDeviceType.test_grid_sample_large`` (CUDA-only there; its cases are not about
  CUDA) -> ``test_large_coordinates`` (gh-35202: coordinates of ~1e7 sample zeros and
  backpropagate), ``test_inf_grid_point`` (gh-24823: one inf point of an identity grid reads
  zero and gets no gradient, half/float/double) and ``test_huge_affine_grid`` (gh-24823: an
  affine grid scaled by -1e20 samples zeros; the image is random here, not zeros).
- ``TestNNDeviceType.test_grid_sample_large_index_2d`` / ``_3d`` ->
  ``test_strided_view_matches_contiguous``: sampling a view that takes every 128th column of
  a larger image equals sampling a contiguous copy, output and gradients, every mode, padding
  and align_corners, float and double; plus the 3-D test's all-corner grid. Scaled down: the
  originals allocate 8 to 17 GiB so that the view needs 64-bit indexing; that part is left
  out (too big for this suite).
- ``TestNNDeviceType.test_grid_sample_half_precision`` / ``_bfloat16_precision`` (CUDA-only
  there) -> ``test_low_precision_matches_double``: the same sizes, float16 and bfloat16,
  bilinear and nearest, 2-D and 3-D, against the float64 result rounded to the dtype with
  the dtype's default tolerances. Bicubic is left out here: fastwarp hands it to torch, whose
  CPU kernel computes in the low precision itself and fails this check (PyTorch runs it on
  CUDA only).
- ``TestNNDeviceType.test_affine_2d_rotate0`` / ``rotate90`` / ``rotate45`` /
  ``rotateRandom`` -> ``test_affine_rotation_2d``, and ``test_affine_3d_rotateRandom`` ->
  ``test_affine_rotation_3d``: ``affine_grid`` rotations (0, 90, 45, 180 degrees and a fixed
  odd angle; PyTorch's lists of input and output sizes; four axes in 3-D) sampled with
  ``padding_mode="border"``, ``align_corners=True`` in float32, against torch instead of
  scipy; the 90-degree case keeps its check that the output corners are the input's corners
  turned by a quarter.

Added at the brief's request, not in PyTorch's test_nn.py: ``test_gradgradcheck``,
``torch.autograd.gradcheck`` then ``gradgradcheck`` for both inputs, 2-D (bicubic too) and
3-D, every mode, padding and align_corners, float64, small odd sizes (input (2, 3, 5, 7),
grid (2, 4, 6, 2); input (2, 2, 3, 5, 3), grid (2, 3, 1, 3, 3)) with grid values in
[-1.2, 1.2], so that some points fall outside.

Left out, and why:

- comparisons with ``torch._grid_sampler_2d_cpu_fallback`` (test_grid_sample): they compare
  two of torch's own CPU kernels; fastwarp has no such fallback;
- the CPU-vs-CUDA comparisons and the cuDNN re-runs: CUDA-only; here the other side of each
  comparison is torch's CPU kernel in float64;
- the 64-bit indexing sizes of test_grid_sample_large_index_* (above);
- forward-mode AD (jvp): torch has none for grid_sampler (NotImplementedError), so there is
  no torch behaviour to port;
- the scipy comparisons and the affine_grid-vs-numpy grid checks of the affine rotation
  tests (they test affine_grid and scipy, which fastwarp does not replace);
- test_affine_grid, test_affine_grid_3d, test_affine_grid_error_checking,
  test_affine_grid_backward_cl_cf_consistency: affine_grid only, no grid_sample;
- autocast: test_nn.py has no grid_sample autocast test.

The self-check switch: with ``FASTWARP_PORTED_TESTS_USE_TORCH=1`` the fixture installs
torch's own grid_sample instead of fastwarp's (fastwarp is then not needed; run with
``--noconftest`` if it cannot be imported), and every test must pass: that shows the ported
tests state torch's behaviour. One exception, documented: float16/bfloat16 calls then run
torch's kernel on float32 copies and round the result back, which is what torch's CUDA
kernel (the one PyTorch runs its half/bfloat16 tests on) computes; torch's CPU kernel works
in the low precision and fails ``test_low_precision_matches_double`` (it picks neighbouring
pixels in nearest mode). fastwarp itself is always tested through the plain patch.

The gradcheck and gradgradcheck tests run torch on one thread (fixture ``one_thread``): tiny
tensors, and robust to a busy machine.

Run: ``python -m pytest tests/test_torch_grid_sample.py`` (fastwarp), and the self-check
``FASTWARP_PORTED_TESTS_USE_TORCH=1 python -m pytest tests/test_torch_grid_sample.py``
(about 30 s each on 2 CPU cores).

Devices: CPU only. ``DEVICES`` lists where the patched function runs; data and references
stay on the CPU, so adding "cuda" there would run the same checks on a GPU.
"""

from __future__ import annotations

import itertools
import math
import os

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck

# torch's own function, saved before any patch: the reference of every test.
_TORCH_GRID_SAMPLE = torch.nn.functional.grid_sample

USE_TORCH = os.environ.get("FASTWARP_PORTED_TESTS_USE_TORCH", "") == "1"

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _torch_as_on_cuda(input, grid, mode="bilinear", padding_mode="zeros", align_corners=None):
    """Self-check mode only: torch's grid_sample, with float16/bfloat16 computed in float32
    (as torch's CUDA kernel does) and rounded back."""
    if input.dtype in _LOW_PRECISION and grid.dtype == input.dtype:
        out = _TORCH_GRID_SAMPLE(input.float(), grid.float(), mode, padding_mode, align_corners)
        return out.to(input.dtype)
    return _TORCH_GRID_SAMPLE(input, grid, mode, padding_mode, align_corners)


if USE_TORCH:
    _UNDER_TEST = _torch_as_on_cuda
else:
    import fastwarp

    _UNDER_TEST = fastwarp.grid_sample

DEVICES = ["cpu"]
MODES_2D = ("bilinear", "nearest", "bicubic")
MODES_3D = ("bilinear", "nearest")
PADDINGS = ("zeros", "border", "reflection")
ALIGN = (True, False)


@pytest.fixture(autouse=True)
def drop_in(monkeypatch):
    """torch.nn.functional.grid_sample is fastwarp's for the test, torch's again after."""
    monkeypatch.setattr(torch.nn.functional, "grid_sample", _UNDER_TEST)
    yield


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


@pytest.fixture
def one_thread():
    """torch on one CPU thread for the test, restored after. For the gradchecks: thousands
    of tiny ops, whose OpenMP regions stall when another process holds a core (torch's 3-D
    gradgradcheck ran 5x slower on 2 threads beside one busy process)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- helpers


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _randn(shape, gen, dtype=torch.float64):
    return torch.randn(shape, generator=gen, dtype=dtype)


def _uniform(shape, gen, low, high, dtype=torch.float64):
    return torch.rand(shape, generator=gen, dtype=dtype) * (high - low) + low


def _leaf(t, device, requires_grad=False):
    """``t``'s values on ``device`` as a leaf (its strides kept on the CPU)."""
    return t.detach().to(device).requires_grad_(requires_grad)


def _reference(input, grid, grad_out=None, input_grad=True, **kwargs):
    """torch's grid_sample in float64 on CPU copies of ``input`` and ``grid``: the output
    and, given ``grad_out``, the input gradient (None unless ``input_grad``) and the grid
    gradient."""
    x = input.detach().cpu().double().requires_grad_(input_grad)
    g = grid.detach().cpu().double().requires_grad_()
    out = _TORCH_GRID_SAMPLE(x, g, **kwargs)
    if grad_out is None:
        return out.detach()
    out.backward(grad_out.detach().cpu().double())
    return out.detach(), x.grad, g.grad


def _close(actual, expected, **tolerance):
    assert actual is not None, "no tensor where torch gives one"
    torch.testing.assert_close(actual.detach().cpu(), expected, **tolerance)


def _grid_with_layout(shape, order, gen):
    """A random grid of ``shape`` whose memory is contiguous in the dimension order
    ``order``: ``result.permute(order)`` is contiguous."""
    stored = _randn([shape[d] for d in order], gen)
    back = [order.index(d) for d in range(len(shape))]
    grid = stored.permute(back)
    assert grid.shape == torch.Size(shape) and grid.permute(order).is_contiguous()
    return grid


# ---------------------------------------------------------------- errors (TestNN)


def _error_cases():
    gen = _gen(11)
    image = _randn((1, 1, 2, 2), gen, torch.float32)
    grid = _uniform((1, 1, 1, 2), gen, -1, 1, torch.float32)
    return {
        "mode_garbage": (
            ValueError,
            "garbage",
            lambda: F.grid_sample(image, grid, mode="garbage", align_corners=False),
        ),
        "padding_garbage": (
            ValueError,
            "garbage",
            lambda: F.grid_sample(image, grid, padding_mode="garbage", align_corners=False),
        ),
        "input_3d": (RuntimeError, None, lambda: F.grid_sample(image[0], grid, align_corners=False)),
        "grid_5d_for_4d_input": (
            RuntimeError,
            None,
            lambda: F.grid_sample(image, _uniform((1, 1, 1, 1, 3), gen, -1, 1, torch.float32), align_corners=False),
        ),
        "batch_mismatch": (
            RuntimeError,
            None,
            lambda: F.grid_sample(image, _uniform((2, 1, 1, 2), gen, -1, 1, torch.float32), align_corners=False),
        ),
        "grid_last_dim_3_for_4d_input": (
            RuntimeError,
            None,
            lambda: F.grid_sample(image, _uniform((1, 1, 1, 3), gen, -1, 1, torch.float32), align_corners=False),
        ),
        "input_empty_spatial": (
            RuntimeError,
            None,
            lambda: F.grid_sample(_randn((1, 1, 0, 2), gen, torch.float32), grid, align_corners=False),
        ),
        "bicubic_5d": (
            RuntimeError,
            None,
            lambda: F.grid_sample(
                _randn((1, 1, 2, 2, 2), gen, torch.float32),
                _uniform((1, 1, 1, 1, 3), gen, -1, 1, torch.float32),
                mode="bicubic",
                align_corners=False,
            ),
        ),
        # PyTorch's case puts the input on CUDA and the grid on the CPU; meta stands in here.
        "input_on_other_device": (
            RuntimeError,
            None,
            lambda: F.grid_sample(image.to("meta"), grid, align_corners=False),
        ),
    }


@pytest.mark.parametrize("case", list(_error_cases()))
def test_error_checking(case):
    expected, words, call = _error_cases()[case]
    with pytest.raises(expected, match=words):
        call()


def test_error_checking_valid_call():
    """The call PyTorch's error test makes first must not raise, and must match torch."""
    gen = _gen(12)
    image = _randn((1, 1, 2, 2), gen, torch.float32)
    grid = _uniform((1, 1, 1, 2), gen, -1, 1, torch.float32)
    out = F.grid_sample(image, grid, align_corners=False)
    _close(out, _reference(image, grid, align_corners=False).float())


def _more_error_cases():
    gen = _gen(13)
    image = _randn((1, 1, 3, 5), gen, torch.float32)
    grid = _uniform((1, 1, 3, 2), gen, -1, 1, torch.float32)
    return {
        "dtype_mismatch": lambda: F.grid_sample(image, grid.double(), align_corners=False),
        "complex_input": lambda: F.grid_sample(image.to(torch.complex64), grid, align_corners=False),
        "integer_input_bilinear": lambda: F.grid_sample((image * 10).long(), grid, align_corners=False),
    }


@pytest.mark.parametrize("case", list(_more_error_cases()))
def test_error_types_beyond_the_suite(case):
    """Not in PyTorch's file: misuse where torch raises RuntimeError (or its subclass
    NotImplementedError); a drop-in raises what ``except RuntimeError`` catches."""
    with pytest.raises(RuntimeError):
        _more_error_cases()[case]()


# ------------------------------------------------------- 2-D (TestNN.test_grid_sample)


@pytest.mark.parametrize("align_corners", ALIGN)
@pytest.mark.parametrize("padding_mode", PADDINGS)
@pytest.mark.parametrize("mode", MODES_2D)
def test_known_values_2d(mode, padding_mode, align_corners, device):
    image = torch.arange(1.0, 11.0, dtype=torch.float64).view(1, 1, 2, 5)
    # (x, y) pairs: far outside, exact corners, a hair off zero, thirds, past the right edge.
    points = [
        [(-0.9, -4.1), (0.0, 0.2), (1.0, -1.0), (-0.333, 1e-6), (0.5, 1.0)],
        [(-1.0, -0.5), (0.0, 0.3333), (1.0, -1.0), (-0.2, 1e-6), (1.5, 0.5)],
    ]
    grid = torch.tensor(points, dtype=torch.float64).view(1, 2, 5, 2)
    out = F.grid_sample(
        _leaf(image, device), _leaf(grid, device), mode=mode, padding_mode=padding_mode, align_corners=align_corners
    )
    expected = _reference(image, grid, mode=mode, padding_mode=padding_mode, align_corners=align_corners)
    _close(out, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("input_requires_grad", [False, True])
@pytest.mark.parametrize("align_corners", ALIGN)
@pytest.mark.parametrize("padding_mode", PADDINGS)
@pytest.mark.parametrize("mode", MODES_2D)
def test_gradient_edge_cases_2d(mode, padding_mode, align_corners, input_requires_grad, device):
    # a ramp along x, expanded (stride 0) over y, as in PyTorch's test
    image = torch.arange(0.0, 5.0, dtype=torch.float64).expand(1, 1, 5, 5)
    points = [
        [(1.0, 1.0), (1.0, -1.0), (0.8, 0.8), (0.8, -0.8)],
        [(-1.0, -1.0), (-1.0, 1.0), (-0.8, -0.8), (-0.8, 0.8)],
    ]
    grid = torch.tensor(points, dtype=torch.float64).view(1, 2, 4, 2)
    kwargs = dict(mode=mode, padding_mode=padding_mode, align_corners=align_corners)
    x = image.to(device).requires_grad_(input_requires_grad)
    g = _leaf(grid, device, True)
    F.grid_sample(x, g, **kwargs).sum().backward()
    ones = torch.ones(1, 1, 2, 4)
    _, expected_x_grad, expected_grid_grad = _reference(image, grid, ones, input_requires_grad, **kwargs)
    _close(g.grad, expected_grid_grad, atol=1e-5, rtol=0)
    if input_requires_grad:
        _close(x.grad, expected_x_grad)


@pytest.mark.parametrize("input_requires_grad", [False, True])
@pytest.mark.parametrize("align_corners", ALIGN)
@pytest.mark.parametrize("padding_mode", PADDINGS)
@pytest.mark.parametrize("mode", MODES_2D)
def test_gradcheck_2d(mode, padding_mode, align_corners, input_requires_grad, device, one_thread):
    gen = _gen(21)
    N, C, H, W = 2, 3, 5, 7
    x = _leaf(_randn((N, C, H, W), gen), device, input_requires_grad)
    g = _leaf(_randn((N, H, W, 2), gen), device, True)

    def fn(inp, grd):
        return F.grid_sample(inp, grd, mode=mode, padding_mode=padding_mode, align_corners=align_corners)

    assert gradcheck(fn, (x, g))


# PyTorch's test_shape cases: (N, C, input spatial, output spatial)
SHAPES_2D = {
    "same_size": (3, 5, (5, 7), (5, 7)),
    "larger_output": (3, 3, (3, 5), (7, 9)),
    "smaller_output": (3, 3, (7, 9), (3, 5)),
    "one_pixel_input": (3, 5, (1, 1), (3, 5)),
    "empty_grid": (3, 3, (5, 7), (0, 5)),
    "empty_channels": (3, 0, (5, 7), (3, 5)),
    "empty_batch": (0, 3, (5, 7), (3, 5)),
}
# grid layouts of PyTorch's test: grid.permute(order) is contiguous
GRID_LAYOUTS_2D = [(0, 1, 2, 3), (0, 3, 1, 2), (3, 0, 1, 2), (0, 2, 1, 3)]


def _check_against_torch(input, grid, input_requires_grad, kwargs, device, gen):
    """Forward and backward of the patched grid_sample on ``device`` against torch."""
    x = _leaf(input, device, input_requires_grad)
    g = _leaf(grid, device, True)
    out = F.grid_sample(x, g, **kwargs)
    expected_shape = (input.shape[0], input.shape[1], *grid.shape[1:-1])
    assert tuple(out.shape) == expected_shape
    grad_out = _randn(expected_shape, gen)
    out.backward(grad_out.to(device))
    ref_out, ref_x_grad, ref_g_grad = _reference(input, grid, grad_out, input_requires_grad, **kwargs)
    _close(out, ref_out)
    if input_requires_grad:
        _close(x.grad, ref_x_grad)
    _close(g.grad, ref_g_grad, atol=5e-5, rtol=0)


def _every_case(shapes, modes):
    """The parameter grid of PyTorch's test_shape: shapes x input gradient x align_corners x
    padding x mode."""
    marks = [pytest.mark.parametrize("shape", list(shapes)),
             pytest.mark.parametrize("input_requires_grad", [False, True]),
             pytest.mark.parametrize("align_corners", ALIGN),
             pytest.mark.parametrize("padding_mode", PADDINGS),
             pytest.mark.parametrize("mode", modes)]

    def apply(test):
        for mark in marks:
            test = mark(test)
        return test

    return apply


@_every_case(SHAPES_2D, MODES_2D)
def test_matches_torch_2d(mode, padding_mode, align_corners, input_requires_grad, shape, device):
    gen = _gen(22)
    N, C, (IH, IW), (H, W) = SHAPES_2D[shape]
    kwargs = dict(mode=mode, padding_mode=padding_mode, align_corners=align_corners)
    for order in GRID_LAYOUTS_2D:
        # channels-major storage: the input is not contiguous
        input = _randn((C, N, IH, IW), gen).transpose(0, 1)
        grid = _grid_with_layout((N, H, W, 2), order, gen)
        _check_against_torch(input, grid, input_requires_grad, kwargs, device, gen)
        # an input with a zero stride: one row expanded over the height
        expanded = _randn((N, C, 1, IW), gen).expand(N, C, IH, IW)
        _check_against_torch(expanded, grid, input_requires_grad, kwargs, device, gen)


# ---------------------------------------------------- 3-D (TestNN.test_grid_sample_3d)


@pytest.mark.parametrize("align_corners", ALIGN)
@pytest.mark.parametrize("padding_mode", PADDINGS)
@pytest.mark.parametrize("mode", MODES_3D)
def test_gradcheck_3d(mode, padding_mode, align_corners, device, one_thread):
    gen = _gen(31)
    N, C, D, H, W = 2, 2, 3, 5, 3
    x = _leaf(_randn((N, C, D, H, W), gen), device, True)
    g = _leaf(_randn((N, D, H, W, 3), gen), device, True)
    kwargs = dict(mode=mode, padding_mode=padding_mode, align_corners=align_corners)
    # the largest Jacobians of the module: fast mode (random projections of them)
    assert gradcheck(lambda inp, grd: F.grid_sample(inp, grd, **kwargs), (x, g), fast_mode=True)
    x = x.detach()
    assert gradcheck(lambda grd: F.grid_sample(x, grd, **kwargs), (g,), fast_mode=True)


SHAPES_3D = {
    "same_size": (2, 3, (3, 5, 3), (3, 5, 3)),
    "larger_output": (2, 3, (3, 3, 5), (5, 5, 7)),
    "smaller_output": (3, 2, (5, 5, 7), (3, 3, 5)),
    "one_voxel_input": (3, 3, (1, 1, 1), (3, 5, 3)),
    "empty_grid": (3, 3, (3, 5, 3), (3, 0, 5)),
    "empty_channels": (3, 0, (3, 5, 3), (3, 3, 5)),
    "empty_batch": (0, 3, (3, 5, 3), (3, 3, 5)),
}


@_every_case(SHAPES_3D, MODES_3D)
def test_matches_torch_3d(mode, padding_mode, align_corners, input_requires_grad, shape, device):
    gen = _gen(32)
    N, C, (ID, IH, IW), (D, H, W) = SHAPES_3D[shape]
    kwargs = dict(mode=mode, padding_mode=padding_mode, align_corners=align_corners)
    input = _randn((C, N, ID, IH, IW), gen).transpose(0, 1)
    grid = _randn((D, N, H, W, 3), gen).transpose(0, 1)
    _check_against_torch(input, grid, input_requires_grad, kwargs, device, gen)
    # zero stride over depth, and a contiguous grid, as in PyTorch's test
    expanded = _randn((N, C, 1, IH, IW), gen).expand(N, C, ID, IH, IW)
    _check_against_torch(expanded, _randn((N, D, H, W, 3), gen), input_requires_grad, kwargs, device, gen)


# ------------------------------------------------------------ double backward (brief)

GRADGRAD_CASES = [(2, mode) for mode in MODES_2D] + [(3, mode) for mode in MODES_3D]


@pytest.mark.parametrize("align_corners", ALIGN)
@pytest.mark.parametrize("padding_mode", PADDINGS)
@pytest.mark.parametrize("nd, mode", GRADGRAD_CASES)
def test_gradgradcheck(nd, mode, padding_mode, align_corners, device, one_thread):
    gen = _gen(41)
    if nd == 2:
        input_shape, grid_shape = (2, 3, 5, 7), (2, 4, 6, 2)
    else:
        input_shape, grid_shape = (2, 2, 3, 5, 3), (2, 3, 1, 3, 3)
    x = _leaf(_randn(input_shape, gen), device, True)
    g = _leaf(_uniform(grid_shape, gen, -1.2, 1.2), device, True)

    def fn(inp, grd):
        return F.grid_sample(inp, grd, mode=mode, padding_mode=padding_mode, align_corners=align_corners)

    assert gradcheck(fn, (x, g))
    assert gradgradcheck(fn, (x, g))


# ----------------- TestNN.test_grid_sample_nearest_neighbor_rounding_mode_consistency


@pytest.mark.parametrize("align_corners", ALIGN)
@pytest.mark.parametrize("padding_mode", PADDINGS)
def test_nearest_rounding_consistency(padding_mode, align_corners, device):
    gen = _gen(51)
    size, other = 10, 9
    # query positions 0.0, 0.1, ..., 9.0 in pixels along the tested axis, then normalized
    pixels = torch.arange(0, size - 1 + 0.1, 0.1, dtype=torch.float32)
    if align_corners:
        q = 2 * pixels / (size - 1) - 1
    else:
        q = (2 * pixels + 1) / size - 1
    half = torch.full_like(q, 0.5)
    values = torch.rand(size, generator=gen, dtype=torch.float32)
    kwargs = dict(mode="nearest", padding_mode=padding_mode, align_corners=align_corners)

    def sample(image, coords):
        grid = torch.stack(coords, dim=-1)
        grid = grid.view(1, *([1] * (image.dim() - 3)), -1, image.dim() - 2)
        return F.grid_sample(input=image.to(device), grid=grid.to(device), **kwargs).reshape(-1).cpu()

    image_2d = values.repeat(1, 1, other, 1)  # varies along x (width) only
    image_3d = values.repeat(1, 1, other, other, 1)
    along_x_2d = sample(image_2d, [q, half])
    results = {
        "2-D y": sample(image_2d.transpose(2, 3), [half, q]),
        "3-D x": sample(image_3d, [q, half, half]),
        "3-D y": sample(image_3d.transpose(3, 4), [half, q, half]),
        "3-D z": sample(image_3d.transpose(2, 4), [half, half, q]),
    }
    for name, got in results.items():
        torch.testing.assert_close(got, along_x_2d, atol=0, rtol=0, msg=lambda m, name=name: f"{name}: {m}")


# --------------------------------------------- TestNNDeviceType.test_grid_sample_nan_inf


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nan_inf(dtype, device):
    gen = _gen(61)
    grid = torch.tensor([[[[math.nan, 0.0], [0.0, math.inf]]]], dtype=dtype)
    for padding_mode in PADDINGS:
        kwargs = dict(mode="nearest", padding_mode=padding_mode, align_corners=False)
        zeros = torch.zeros(1, 1, 3, 3, dtype=dtype)
        out = F.grid_sample(input=zeros.to(device), grid=grid.to(device), **kwargs).cpu()
        torch.testing.assert_close(out, torch.zeros(1, 1, 1, 2, dtype=dtype), atol=0, rtol=0)
        image = _randn((1, 1, 3, 3), gen, dtype)
        out = F.grid_sample(input=image.to(device), grid=grid.to(device), **kwargs).cpu()
        assert torch.isfinite(out).all(), f"{padding_mode}: {out}"
        if padding_mode == "zeros":
            torch.testing.assert_close(out, torch.zeros(1, 1, 1, 2, dtype=dtype), atol=0, rtol=0)


# ------------------------ TestNNDeviceType.test_grid_sample_large (CUDA-only upstream)


@pytest.mark.filterwarnings("ignore:Default grid_sample and affine_grid behavior")
def test_large_coordinates(device):
    """gh-35202: coordinates of order 1e7 sample nothing and backpropagate nothing."""
    gen = _gen(71)
    image = _leaf(torch.rand(1, 1, 480, 640, generator=gen), device, True)
    coords = torch.tensor([[-10059144.0, 67680944.0], [67680944.0, 67680944.0]]).view(1, 1, 2, 2)
    result = F.grid_sample(image, coords.to(device))
    torch.testing.assert_close(result.detach().cpu(), torch.zeros(1, 1, 1, 2), atol=0, rtol=0)
    result.backward(torch.ones_like(result))
    torch.testing.assert_close(image.grad.cpu(), torch.zeros(1, 1, 480, 640), atol=0, rtol=0)


@pytest.mark.filterwarnings("ignore:Default grid_sample and affine_grid behavior")
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_inf_grid_point(dtype, device):
    """gh-24823: one inf point of an identity grid reads zero and gets no gradient; every
    other point reads its own voxel."""
    image = _leaf(torch.arange(27, 0, -1, dtype=dtype).view(1, 1, 3, 3, 3), device, True)
    identity = torch.tensor([[[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]], dtype=dtype)
    grid = F.affine_grid(identity, (1, 1, 3, 3, 3))
    grid[:, 1, 1, 1, 0] = math.inf
    result = F.grid_sample(image, grid.to(device), padding_mode="zeros")
    expected = image.detach().cpu().clone()
    expected[0, 0, 1, 1, 1] = 0
    tolerance = dict(atol=0.005, rtol=0) if dtype == torch.float16 else {}
    _close(result, expected, **tolerance)
    result.backward(torch.ones_like(result))
    expected_grad = torch.ones(1, 1, 3, 3, 3, dtype=dtype)
    expected_grad[0, 0, 1, 1, 1] = 0
    _close(image.grad, expected_grad, atol=0.005, rtol=0)


@pytest.mark.filterwarnings("ignore:Default grid_sample and affine_grid behavior")
def test_huge_affine_grid(device):
    """gh-24823: an affine grid scaled by -1e20 puts every point far outside: zeros."""
    gen = _gen(72)
    theta = torch.tensor([[[-1.0e20, 0.0, 0.0], [0.0, -1.0e20, 0.0]]])
    image = _leaf(torch.rand(1, 1, 4, 4, generator=gen), device, True)
    grid = F.affine_grid(theta, image.size())
    result = F.grid_sample(image, grid.to(device))
    torch.testing.assert_close(result.detach().cpu(), torch.zeros(1, 1, 4, 4), atol=0, rtol=0)
    result.backward(torch.ones_like(result))
    torch.testing.assert_close(image.grad.cpu(), torch.zeros(1, 1, 4, 4), atol=0, rtol=0)


# ------------------------------- TestNNDeviceType.test_grid_sample_large_index_2d / _3d


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("nd", [2, 3])
def test_strided_view_matches_contiguous(nd, dtype, device):
    gen = _gen(81)
    if nd == 2:
        big = torch.zeros(1, 1, 33, 1024, dtype=dtype)
        coords = torch.rand(1, 4, 4, 2, generator=gen, dtype=dtype)
        modes = ("nearest", "bilinear", "bicubic")
    else:
        big = torch.zeros(1, 1, 3, 17, 1024, dtype=dtype)
        coords = torch.rand(1, 1, 4, 4, 3, generator=gen, dtype=dtype)
        modes = ("nearest", "bilinear")
    big = big.to(device)
    view = big[..., 127::128]  # every 128th column: a large last-dimension stride
    small = torch.rand(view.shape, generator=gen, dtype=dtype).to(device)
    view[...] = small
    view.requires_grad_(True)
    small.requires_grad_(True)
    coords = coords.to(device)
    if nd == 3:
        # PyTorch's corner access: every point on the far corner
        corner = torch.ones(1, 2, 2, 2, 3, dtype=dtype)
        out = F.grid_sample(view, corner.to(device), align_corners=False)
        _close(out, _reference(view, corner, align_corners=False).to(dtype))
    for mode, padding_mode, align_corners in itertools.product(modes, PADDINGS, ALIGN):
        kwargs = dict(mode=mode, padding_mode=padding_mode, align_corners=align_corners)
        a = F.grid_sample(small, coords, **kwargs)
        a.sum().backward()
        b = F.grid_sample(view, coords, **kwargs)
        b.sum().backward()
        torch.testing.assert_close(b, a, msg=lambda m, k=kwargs: f"{k}: {m}")
        torch.testing.assert_close(view.grad, small.grad, msg=lambda m, k=kwargs: f"{k}: {m}")
        small.grad = None
        view.grad = None


# ---------- TestNNDeviceType.test_grid_sample_half_precision / _bfloat16_precision


@pytest.mark.parametrize("align_corners", ALIGN)
@pytest.mark.parametrize("nd", [2, 3])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_matches_double(dtype, nd, align_corners, device):
    gen = _gen(91)
    if nd == 2:
        shape_in, shape_out = (32, 64, 16, 16), (32, 8, 8, 2)
    else:
        shape_in, shape_out = (32, 64, 16, 16, 16), (32, 8, 8, 8, 3)
    data = torch.randn(shape_in, generator=gen).to(dtype)
    grid = (torch.rand(shape_out, generator=gen) * 2.0 - 1.0).to(dtype)
    for mode in ("bilinear", "nearest"):
        kwargs = dict(mode=mode, padding_mode="zeros", align_corners=align_corners)
        out = F.grid_sample(data.to(device), grid.to(device), **kwargs)
        expected = _reference(data, grid, **kwargs).to(dtype)
        _close(out, expected, msg=lambda m, mode=mode: f"mode {mode}: {m}")


# ------------------------- TestNNDeviceType.test_affine_2d_rotate* / test_affine_3d_rotateRandom

ANGLES = {"0deg": 0.0, "180deg": math.pi, "90deg": math.pi / 2, "45deg": math.pi / 4, "odd": 2.0412}
INPUT_SIZES_2D = [(3, 5), (3, 3), (4, 4), (3, 4)]
OUTPUT_SIZES_2D = [(5, 3), (3, 5), (4, 3), (5, 5), (6, 6)]
SQUARE_SIZES_2D = [(2, 2), (3, 3), (4, 4), (6, 6)]
INPUT_SIZES_3D = [(2, 2, 2), (2, 3, 4), (3, 3, 3), (4, 4, 4), (3, 4, 5)]
OUTPUT_SIZES_3D = [(2, 2, 2), (3, 3, 3), (3, 4, 5), (4, 3, 2), (5, 5, 5), (6, 6, 6)]
AXES_3D = [(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (0.3, -0.5, 0.81)]


def _rotation_2d(angle):
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[[c, -s, 0.0], [s, c, 0.0]]], dtype=torch.float64).float()


def _rotation_3d(angle, axis):
    """Rotation by ``angle`` about ``axis`` (x, y, z of the grid), Rodrigues' formula."""
    k = torch.tensor(axis, dtype=torch.float64)
    k = k / k.norm()
    cross = torch.tensor([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]], dtype=torch.float64)
    r = math.cos(angle) * torch.eye(3, dtype=torch.float64) + math.sin(angle) * cross
    r = r + (1 - math.cos(angle)) * torch.outer(k, k)
    return torch.cat([r, torch.zeros(3, 1, dtype=torch.float64)], dim=1)[None].float()


def _rotated_sample(image, theta, out_size, device):
    grid = F.affine_grid(theta, torch.Size(out_size), align_corners=True)
    kwargs = dict(padding_mode="border", align_corners=True)
    out = F.grid_sample(image.to(device), grid.to(device), **kwargs)
    return out, _reference(image, grid, **kwargs).float()


def _image_with_marked_corners(size, gen):
    image = torch.rand(1, 1, *size, generator=gen)
    for value, corner in enumerate(itertools.product((0, -1), repeat=len(size)), start=2):
        image[(0, 0, *corner)] = float(value)
    return image


@pytest.mark.parametrize("angle", list(ANGLES))
def test_affine_rotation_2d(angle, device):
    gen = _gen(101)
    theta = _rotation_2d(ANGLES[angle])
    for in_size, out_size in itertools.product(INPUT_SIZES_2D, OUTPUT_SIZES_2D):
        image = _image_with_marked_corners(in_size, gen)
        out, expected = _rotated_sample(image, theta, (1, 1, *out_size), device)
        _close(out, expected, msg=lambda m, i=in_size, o=out_size: f"{i} -> {o}: {m}")
    if angle == "90deg":
        # corners go round by a quarter turn, whatever the square sizes
        for in_size, out_size in itertools.product(SQUARE_SIZES_2D, SQUARE_SIZES_2D + [(5, 5)]):
            image = torch.rand(1, 1, *in_size, generator=gen)
            out = F.grid_sample(
                image.to(device),
                F.affine_grid(theta, torch.Size((1, 1, *out_size)), align_corners=True).to(device),
                padding_mode="border",
                align_corners=True,
            ).cpu()[0, 0]
            src = image[0, 0]
            turned = torch.stack([out[0, 0], out[0, -1], out[-1, -1], out[-1, 0]])
            corners = torch.stack([src[0, -1], src[-1, -1], src[-1, 0], src[0, 0]])
            torch.testing.assert_close(turned, corners)


@pytest.mark.parametrize("angle", list(ANGLES))
def test_affine_rotation_3d(angle, device):
    gen = _gen(102)
    for axis in AXES_3D:
        theta = _rotation_3d(ANGLES[angle], axis)
        for in_size, out_size in itertools.product(INPUT_SIZES_3D, OUTPUT_SIZES_3D):
            image = _image_with_marked_corners(in_size, gen)
            out, expected = _rotated_sample(image, theta, (1, 1, *out_size), device)
            _close(out, expected, msg=lambda m, a=axis, i=in_size, o=out_size: f"axis {a}, {i} -> {o}: {m}")
