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
- ``voxelmorph-classic``: VoxelMorph's classic NCC loss written out in plain PyTorch (below):
  dense ``conv{2,3}d`` with a ``ones(1, 1, *win)`` filter on I, J, I², J², IJ.
- ``fused_lncc`` (CUDA, 3-D, window in 3..9, gradient to ``pred`` only): PyPI ``fused-lncc``'s
  ``fused_lncc_loss(pred, target, kernel_size)``, which returns ``1 - mean(cc)``.
- ``fireants`` (CUDA, 3-D): FireANTs' ``FusedLocalNormalizedCrossCorrelationLoss`` (its fused
  ``fireants_fused_ops`` kernels around cuDNN box convolutions), exact gradient
  (``use_ants_gradient=False``), ``-mean(cc)``.

Baselines whose package is not importable (or not applicable: the fused ones off CUDA, in 2-D,
or asked for both gradients) are skipped.  All implementations compute one scalar loss.

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
  volume.  On CUDA it is ``torch.cuda.max_memory_allocated()`` minus ``memory_allocated()``
  before the call (after ``reset_peak_memory_stats``): tensor memory, cuDNN workspaces included
  (they come from the same allocator), not the caching allocator's reserve.  On CPU torch keeps
  no allocator statistics, and the kernels of fastwarp (and oneDNN) take scratch from malloc,
  outside torch's allocator, so two figures are recorded and ``peak_extra_bytes`` is the first
  where it can be measured, else the second:

  - ``peak_rss_bytes``: the process's resident-memory high-water mark during the call minus
    its resident memory before, after ``malloc_trim(0)`` (freed heap pages go back to the OS,
    so the call must fault in whatever it touches) and a reset of ``VmHWM`` through
    ``/proc/self/clear_refs`` (Linux with glibc only).  Everything the call touches, whoever
    allocates it; memory allocated but never touched does not count.
  - ``peak_tensor_bytes``: the call runs once under ``torch.profiler.profile(profile_memory=True)``
    and the peak is the high-water mark of the running sum of its allocations and frees in time
    order: tensors allocated through torch's CPU allocator (intermediates, autograd's saved
    tensors, outputs) only.
- ``bytes_moved``: the floor of memory traffic: the forward reads both inputs; the backward
  reads them again and writes the gradient (two in ``fwdbwd-both``).  With the achieved ``GB/s``
  (``bytes_moved`` over the median time) when timed.
"""

import ctypes
import ctypes.util
import importlib.metadata
import itertools
import math
import os
from collections.abc import Callable
from typing import NamedTuple

import pytest
import torch
import torch.nn.functional as F

import fastwarp
from benchutil import input_sets, record_bandwidth, run_info
from fastwarp.losses import NCC

DTYPE = torch.float32


class Case(NamedTuple):
    nd: int
    shapes: dict  # device type -> (N, C, *spatial); a device type absent here skips the case
    window: int


CASES = {
    "full": {
        "2d": Case(2, {"cpu": (1, 1, 512, 512), "cuda": (1, 1, 512, 512)}, 9),
        "3d": Case(3, {"cpu": (1, 1, 96, 112, 128), "cuda": (1, 1, 160, 192, 224)}, 9),
        "3d-fused-lncc": Case(3, {"cuda": (2, 16, 128, 128, 128)}, 7),
    },
    "tiny": {
        "2d": Case(2, {"cpu": (1, 1, 16, 16), "cuda": (1, 1, 16, 16)}, 3),
        "3d": Case(3, {"cpu": (1, 1, 8, 9, 10), "cuda": (1, 1, 8, 9, 10)}, 3),
        "3d-fused-lncc": Case(3, {"cuda": (2, 3, 8, 9, 10)}, 3),
    },
}

MODES = ("fwd", "fwdbwd", "fwdbwd-both")
# (case, device type) pairs that skip fwdbwd-both (see the module docstring)
NO_BOTH = {("3d", "cpu")}


# --------------------------------------------------------------------------- implementations


def voxelmorph_classic_ncc(I, J, win):
    """VoxelMorph's classic local NCC loss (``voxelmorph/torch/losses.py``, ``NCC.loss``), in plain
    PyTorch: a ``ones(1, 1, *win)`` sum filter, ``conv{2,3}d`` with padding ``win // 2`` on I, J,
    I², J², IJ, then the mean-based cross and variances, ``cc = cross² / (I_var·J_var + 1e-5)``,
    loss ``-mean(cc)``.  The original takes one channel; batch and channels are folded into the
    batch here (per-channel NCC, identical for C = 1)."""
    nd = I.dim() - 2
    n_, c_ = I.shape[:2]
    if c_ != 1:
        I = I.reshape(n_ * c_, 1, *I.shape[2:])
        J = J.reshape(n_ * c_, 1, *J.shape[2:])
    win = [win] * nd if isinstance(win, int) else list(win)
    sum_filt = torch.ones([1, 1, *win], device=I.device, dtype=I.dtype)
    pad_no = math.floor(win[0] / 2)
    stride, padding = (1,) * nd, (pad_no,) * nd
    conv_fn = getattr(F, f"conv{nd}d")

    I2, J2, IJ = I * I, J * J, I * J
    I_sum = conv_fn(I, sum_filt, stride=stride, padding=padding)
    J_sum = conv_fn(J, sum_filt, stride=stride, padding=padding)
    I2_sum = conv_fn(I2, sum_filt, stride=stride, padding=padding)
    J2_sum = conv_fn(J2, sum_filt, stride=stride, padding=padding)
    IJ_sum = conv_fn(IJ, sum_filt, stride=stride, padding=padding)

    win_size = math.prod(win)
    u_I = I_sum / win_size
    u_J = J_sum / win_size
    cross = IJ_sum - u_J * I_sum - u_I * J_sum + u_I * u_J * win_size
    I_var = I2_sum - 2 * u_I * I_sum + u_I * u_I * win_size
    J_var = J2_sum - 2 * u_J * J_sum + u_J * u_J * win_size
    cc = cross * cross / (I_var * J_var + 1e-5)
    return -torch.mean(cc)


class Impl(NamedTuple):
    """One way to compute the NCC loss: ``loss(a, b)`` is a scalar tensor (``a`` the moving image,
    ``b`` the fixed one); ``grad_both`` whether it can differentiate with respect to both."""

    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    version: str
    grad_both: bool = True


def _dist_version(*names):
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return "unknown"


def _fastwarp(nd, window, device, dtype):
    return Impl(NCC(window), fastwarp.__version__)


def _neurite(nd, window, device, dtype):
    os.environ.setdefault("NEURITE_BACKEND", "pytorch")  # neurite < 0.3 picks its backend at import
    pytest.importorskip("neurite")
    nef = pytest.importorskip("neurite.nn.functional")

    def loss(a, b):
        return -nef.ncc(a, b, window_size=window).reshape(())

    return Impl(loss, _dist_version("neurite"))


def _monai(nd, window, device, dtype, **options):
    monai = pytest.importorskip("monai")
    from monai.losses import LocalNormalizedCrossCorrelationLoss

    module = LocalNormalizedCrossCorrelationLoss(
        spatial_dims=nd, kernel_size=window, kernel_type="rectangular", **options
    ).to(device)
    return Impl(module, monai.__version__)


def _voxelmorph_classic(nd, window, device, dtype):
    def loss(a, b):
        return voxelmorph_classic_ncc(a, b, window)

    return Impl(loss, torch.__version__)


def _fused_lncc(nd, window, device, dtype):
    if device.type != "cuda":
        pytest.skip("fused_lncc is CUDA only")
    if nd != 3:
        pytest.skip("fused_lncc is 3-D only")
    if window not in (3, 5, 7, 9):
        pytest.skip("fused_lncc supports windows 3, 5, 7, 9 only")
    try:  # without its prebuilt extension, the import JIT-compiles the kernel (and may fail)
        from fused_lncc import fused_lncc_loss
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"fused_lncc not importable: {type(e).__name__}: {e}")

    def loss(a, b):  # 1 - mean(cc); the gradient flows to `pred` (a) only
        return fused_lncc_loss(a, b, kernel_size=window)

    return Impl(loss, _dist_version("fused-lncc", "fused_lncc"), grad_both=False)


def _fireants(nd, window, device, dtype):
    if device.type != "cuda":
        pytest.skip("FireANTs' fused NCC is CUDA only")
    if nd != 3:
        pytest.skip("FireANTs' fused NCC is 3-D only")
    try:
        from fireants.losses.fusedcc import FusedLocalNormalizedCrossCorrelationLoss
    except Exception as e:  # noqa: BLE001  (fireants_fused_ops missing or built for another torch)
        pytest.skip(f"FireANTs fused NCC not importable: {type(e).__name__}: {e}")
    options = dict(spatial_dims=3, kernel_size=window, reduction="mean", smooth_nr=0.0, smooth_dr=1e-5)
    version = _dist_version("fireants", "FireANTs")
    try:  # the exact gradient (newer versions default to ANTs' approximation), separable box sums
        module = FusedLocalNormalizedCrossCorrelationLoss(**options, use_ants_gradient=False, use_separable=True)
    except TypeError:  # a version without these options: its defaults
        module = FusedLocalNormalizedCrossCorrelationLoss(**options)
        version += " (default gradient options)"
    return Impl(module.to(device), version)


IMPLS = {
    "fastwarp": _fastwarp,
    "neurite": _neurite,
    "monai": _monai,
    "voxelmorph-classic": _voxelmorph_classic,
    "fused_lncc": _fused_lncc,
    "fireants": _fireants,
}


# --------------------------------------------------------------------------- helpers


def _nbytes(t):
    return t.numel() * t.element_size()


def _bytes_moved(a, mode):
    """The floor of memory traffic: the forward reads both inputs; the backward reads them again
    and writes the gradient(s)."""
    volume = _nbytes(a)
    return {"fwd": 2 * volume, "fwdbwd": 5 * volume, "fwdbwd-both": 6 * volume}[mode]





def _cpu_peak_from_profile(prof):
    """High-water mark of the running sum of the profiled CPU allocations and frees, in time
    order (None where this torch's profiler does not expose them)."""
    try:
        events = prof.profiler.kineto_results.events()
    except AttributeError:
        return None
    mem = sorted(
        (e.start_ns(), e.nbytes())
        for e in events
        if e.name() == "[memory]" and str(e.device_type()).endswith("CPU")
    )
    current = peak = 0
    for _, nbytes in mem:
        current += nbytes
        peak = max(peak, current)
    return peak


def _proc_status_bytes(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024  # reported in kB
    raise KeyError(key)


def _cpu_peak_rss(call):
    """Resident-memory high-water mark of ``call()`` over the resident memory before it, or None
    where it cannot be measured (not Linux with glibc)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)  # give freed heap pages back, so the call faults in what it touches
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current VmRSS
        before = _proc_status_bytes("VmRSS")
    except (OSError, AttributeError, KeyError):
        return None, None
    out = call()
    peak = _proc_status_bytes("VmHWM") - before
    return peak, out


def peak_extra_memory(call, device):
    """Peak memory that ``call()`` takes beyond what was in use before it; what it returns is
    kept alive to the end, so outputs count.  A dict for ``extra_info`` (see the module
    docstring)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        out = call()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - before
        del out
        return dict(peak_extra_bytes=peak, peak_method="cuda max_memory_allocated - memory_allocated before")
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = call()
    del out
    tensor_peak = _cpu_peak_from_profile(prof)
    rss_peak, out = _cpu_peak_rss(call)
    del out
    if rss_peak is not None:
        peak, method = rss_peak, "cpu resident-memory high-water (malloc_trim + clear_refs VmHWM)"
    else:
        peak, method = tensor_peak, "cpu profiler(profile_memory) tensor-allocation high-water"
    return dict(peak_extra_bytes=peak, peak_method=method, peak_rss_bytes=rss_peak, peak_tensor_bytes=tensor_peak)


def make_pair(shape, generator, dtype=DTYPE):
    """A correlated pair, like a moving image and the fixed one: a = U(0,1), b = 0.6a + 0.4 U(0,1)."""
    a = torch.rand(shape, generator=generator, dtype=torch.float64)
    b = 0.6 * a + 0.4 * torch.rand(shape, generator=generator, dtype=torch.float64)
    return a.to(dtype), b.to(dtype)


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
    impl = IMPLS[impl_name](nd, window, device, DTYPE)
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
    volume = _nbytes(inputs[0][0])
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
    record_bandwidth(benchmark, _bytes_moved(inputs[0][0], mode))


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
        timed = _monai(nd, window, device, torch.float64).loss(a, b)
        assert torch.isfinite(timed)
        torch.testing.assert_close(timed, -fastwarp.ncc(a, b, window), rtol=1e-3, atol=0)
        impl = _monai(nd, window, device, torch.float64, smooth_nr=0.0, smooth_dr=1e-30)
        eps = 0.0
    else:
        impl = IMPLS[impl_name](nd, window, device, torch.float64)
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
    impl = IMPLS[impl_name](3, window, cuda_device, torch.float32)
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
