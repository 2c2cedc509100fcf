"""fastwarp.ncc (the windowed NCC loss) against the ways registration code computes it today, one
pytest-benchmark group per case (``ncc-{2d,3d}-<size>-{cpu,cuda}-w<window>-<mode>``):

- ``fastwarp``: ``fastwarp.losses.NCC(window)(a, b)``, i.e. ``-fastwarp.ncc(a, b, window)``.
- ``neurite``: ``-neurite.nn.functional.ncc(a, b, window_size=window)``: five moments packed
  along the channels, box-summed by separable ``avg_pool`` passes, then a range assertion on every
  coefficient (a host sync) and per-(B, C) spatial means, then their mean.
- ``monai``: ``monai.losses.LocalNormalizedCrossCorrelationLoss(spatial_dims=nd,
  kernel_size=window, kernel_type="rectangular")``: five separable conv passes.  Its formula
  differs slightly, ``(cross² + smooth_nr) / (max(var_I, smooth_dr) · max(var_J, smooth_dr))``
  (same sums), so with its defaults it is timed only; ``test_agreement`` checks that with
  ``smooth_nr=0`` and a negligible ``smooth_dr`` its loss and gradient are ours with ``eps=0``.
- ``voxelmorph-classic``: VoxelMorph's classic NCC loss written out in plain PyTorch:
  dense ``conv{2,3}d`` with a ``ones(1, 1, *win)`` filter on I, J, I², J², IJ.
- ``fused_lncc`` (CUDA, 3-D, window in 3..9, gradient to ``pred`` only): PyPI ``fused-lncc``'s
  ``fused_lncc_loss(pred, target, kernel_size)``, which returns ``1 - mean(cc)``.
- ``fireants`` (CUDA, 3-D): FireANTs' ``FusedLocalNormalizedCrossCorrelationLoss`` (its fused
  ``fireants_fused_ops`` kernels around cuDNN box convolutions), exact gradient
  (``use_ants_gradient=False``), ``-mean(cc)``.

The implementations, inputs, cases and measurement helpers live in ``fastwarp.bench`` (one copy,
shared with ``python -m fastwarp.bench``). Baselines whose package is not importable (or not
applicable: the fused ones off CUDA, in 2-D, or asked for both gradients) are skipped.  All
implementations compute one scalar loss.

Modes: ``fwd`` is the loss alone (no input requires grad); ``fwdbwd`` is a training step's loss,
``a`` (the moving, warped image) requires grad, ``b`` (the fixed image) is constant, and the
backward pass returns ``d loss / d a``; ``fwdbwd-both`` returns the gradients to both inputs
(template building, symmetric registration).  ``fwdbwd-both`` runs on CUDA and for the 2-D
case on CPU; the 3-D CPU one is left out (voxelmorph-classic's dense 9³ conv backward takes
8-15 s a call there, and the 2-D case already shows the cost on CPU).

Cases (``--fw-size=full``): 2-D ``1x1x512x512`` window 9; 3-D window 9, ``1x1x96x112x128`` on
CPU and ``1x1x160x192x224`` on CUDA; and, on CUDA only, fused_lncc's headline shape
``2x16x128x128x128`` window 7.  ``--fw-size=tiny`` shrinks them all (window 3) for a smoke run.

Every case records in ``extra_info`` its implementation, shape, window, mode, device, threads and
versions, and:

- ``peak_extra_bytes``: the peak memory one call (the loss, and its backward in the fwdbwd
  modes) takes beyond what was in use before it, outputs (the gradients) included, measured
  once outside the timed loop, and ``peak_extra_volumes``, the same in units of one input
  volume. On CUDA: ``max_memory_allocated`` over ``memory_allocated`` before the call. On CPU
  two figures, ``peak_rss_bytes`` (the resident-memory high-water mark) and
  ``peak_tensor_bytes`` (torch's profiler), ``peak_extra_bytes`` the first where it can be
  measured; ``fastwarp.bench.measure.peak_extra_memory`` says how each is taken.
- ``bytes_moved``: the floor of memory traffic: the forward reads both inputs; the backward
  reads them again and writes the gradient (two in ``fwdbwd-both``).  With the achieved ``GB/s``
  (``bytes_moved`` over the median time) when timed.
"""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

import fastwarp
from benchutil import build_or_skip, record_bandwidth
from fastwarp.app.bench.baselines import NCC_IMPLS as IMPLS
from fastwarp.app.bench.baselines import make_pair
from fastwarp.app.bench.cases import DTYPE
from fastwarp.app.bench.cases import NCC_CASES as CASES
from fastwarp.app.bench.cases import NCC_MODES as MODES
from fastwarp.app.bench.cases import NCC_NO_BOTH as NO_BOTH
from fastwarp.app.bench.measure import input_sets, nbytes, ncc_bytes_moved, peak_extra_memory, run_info

# --------------------------------------------------------------------------- benchmarks


@pytest.mark.parametrize("impl_name", list(IMPLS))
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case_name", list(CASES["full"]))
def test_ncc(benchmark, device, cpu_threads, fw_size, case_name, mode, impl_name):
    case = CASES[fw_size][case_name]
    if device.type not in case.shapes:
        pytest.skip(f"case {case_name} runs on {', '.join(case.shapes)} only")
    if mode == "fwdbwd-both" and (case_name, device.type) in NO_BOTH:
        pytest.skip("fwdbwd-both is left out of the 3-D CPU case (voxelmorph-classic takes seconds a call)")
    shape, window, nd = case.shapes[device.type], case.window, case.nd
    impl = build_or_skip(IMPLS[impl_name], nd, window, device, DTYPE)
    if mode == "fwdbwd-both" and not impl.grad_both:
        pytest.skip(f"{impl_name} differentiates with respect to one input only")
    grad_a, grad_b = mode != "fwd", mode == "fwdbwd-both"

    set_bytes = 2 * math.prod(shape) * DTYPE.itemsize
    g = torch.Generator().manual_seed(0)
    inputs = []
    for _ in range(input_sets(device, set_bytes)):
        a, b = make_pair(shape, g)
        inputs.append((a.to(device).requires_grad_(grad_a), b.to(device).requires_grad_(grad_b)))
    sets = itertools.cycle(inputs)
    on_cuda = device.type == "cuda"

    def call(a, b):
        loss = impl.loss(a, b)
        if grad_b:
            return loss, torch.autograd.grad(loss, (a, b))
        if grad_a:
            return loss, torch.autograd.grad(loss, a)
        return loss, ()

    def step():
        call(*next(sets))
        if on_cuda:
            torch.cuda.synchronize()

    step()  # untimed: lazy initialisation, allocator and kernel warm-up
    memory = peak_extra_memory(lambda: call(*next(sets)), device)
    peak = memory["peak_extra_bytes"]

    size = "x".join(map(str, shape if shape[0] * shape[1] > 1 else shape[2:]))
    benchmark.group = f"ncc-{nd}d-{size}-{device.type}-w{window}-{mode}"
    volume = nbytes(inputs[0][0])
    benchmark.extra_info.update(
        impl=impl_name,
        impl_version=impl.version,
        shape=list(shape),
        window=window,
        mode=mode,
        grads={"fwd": "none", "fwdbwd": "a", "fwdbwd-both": "a,b"}[mode],
        dtype=str(DTYPE),
        **run_info(device, cpu_threads, inputs),
        **memory,
        peak_extra_volumes=None if peak is None else round(peak / volume, 2),
    )
    benchmark(step)
    record_bandwidth(benchmark, ncc_bytes_moved(inputs[0][0], mode))


# --------------------------------------------------------------------------- agreement

AGREEMENT_SHAPES = {2: (2, 2, 16, 16), 3: (2, 2, 8, 9, 10)}


@pytest.mark.parametrize("window", [3, 5])
@pytest.mark.parametrize("impl_name", ["voxelmorph-classic", "neurite", "monai"])
@pytest.mark.parametrize("nd", [2, 3], ids=["2d", "3d"])
def test_agreement(device, nd, impl_name, window):
    """In float64 at tiny sizes (batch 2, 2 channels): the plain-PyTorch VoxelMorph NCC and
    neurite's compute fastwarp's loss, value and gradient with respect to ``a``.  MONAI's timed
    configuration is computed (finite, and close); with ``smooth_nr=0`` and a negligible
    ``smooth_dr`` its formula is ours with ``eps=0``: loss and gradient are checked there."""
    g = torch.Generator().manual_seed(1)
    a, b = make_pair(AGREEMENT_SHAPES[nd], g, torch.float64)
    a, b = a.to(device).requires_grad_(), b.to(device)

    if impl_name == "monai":
        timed = build_or_skip(IMPLS["monai"], nd, window, device, torch.float64).loss(a, b)
        assert torch.isfinite(timed)
        torch.testing.assert_close(timed, -fastwarp.ncc(a, b, window), rtol=1e-3, atol=0)
        impl = build_or_skip(IMPLS["monai"], nd, window, device, torch.float64, smooth_nr=0.0, smooth_dr=1e-30)
        eps = 0.0
    else:
        impl = build_or_skip(IMPLS[impl_name], nd, window, device, torch.float64)
        eps = 1e-5

    expected = -fastwarp.ncc(a, b, window, eps=eps)
    (expected_grad,) = torch.autograd.grad(expected, a)
    got = impl.loss(a, b)
    (grad,) = torch.autograd.grad(got, a)
    assert got.shape == expected.shape == ()
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("impl_name", ["fused_lncc", "fireants"])
def test_agreement_fused(cuda_device, impl_name):
    """The CUDA fused baselines compute the same loss (float32, so loosely): fused_lncc's
    ``1 - mean(cc)`` and its gradient, FireANTs' ``-mean(cc)`` (value only: its gradient's
    scale differs between versions).  Their denominators regularise differently from ``+eps``,
    which only matters in near-constant windows (there are none here)."""
    window = 5
    impl = build_or_skip(IMPLS[impl_name], 3, window, cuda_device, torch.float32)
    g = torch.Generator().manual_seed(3)
    a, b = make_pair((2, 2, 12, 13, 14), g, torch.float32)
    a, b = a.to(cuda_device).requires_grad_(), b.to(cuda_device)

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
