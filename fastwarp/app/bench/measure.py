"""Measurement helpers shared by ``benchmarks/bench_*.py`` and ``fastwarp bench``.

- :func:`input_sets`: how many input sets the timed calls rotate through (on a GPU, enough to
  fill twice its L2 cache, so that no call finds its inputs there, as in a training step).
- :func:`warp_bytes_moved`, :func:`ncc_bytes_moved`: the floor of memory traffic of a case, the
  bytes any implementation must move; over the median time, the achieved GB/s.
- :func:`peak_extra_memory`: the peak memory one call takes beyond what was in use before it,
  outputs (the gradients) included. On CUDA it is ``torch.cuda.max_memory_allocated()`` minus
  ``memory_allocated()`` before the call (after ``reset_peak_memory_stats``): tensor memory,
  cuDNN workspaces included (they come from the same allocator), not the caching allocator's
  reserve. On CPU torch keeps no allocator statistics, and the kernels of fastwarp (and oneDNN)
  take scratch from malloc, outside torch's allocator, so two figures are recorded and
  ``peak_extra_bytes`` is the first where it can be measured, else the second:

  - ``peak_rss_bytes``: the process's resident-memory high-water mark during the call minus
    its resident memory before, after ``malloc_trim(0)`` (freed heap pages go back to the OS,
    so the call must fault in whatever it touches) and a reset of ``VmHWM`` through
    ``/proc/self/clear_refs`` (Linux with glibc only). Everything the call touches, whoever
    allocates it; memory allocated but never touched does not count.
  - ``peak_tensor_bytes``: the call runs once under ``torch.profiler.profile(profile_memory=True)``
    and the peak is the high-water mark of the running sum of its allocations and frees in time
    order: tensors allocated through torch's CPU allocator (intermediates, autograd's saved
    tensors, outputs) only.
- :func:`time_calls`: warm-up, then the median of timed calls: CUDA events on a GPU,
  ``time.perf_counter`` on a CPU. :func:`copy_bandwidth`: a device-to-device copy's GB/s.
- :func:`describe`, :func:`run_info`: what every result records about its run.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import statistics
import time
from collections.abc import Callable
from typing import NamedTuple

import torch

__all__ = [
    "input_sets",
    "describe",
    "run_info",
    "nbytes",
    "warp_bytes_moved",
    "ncc_bytes_moved",
    "peak_extra_memory",
    "Timing",
    "time_calls",
    "copy_bandwidth",
]


def input_sets(device, set_bytes):
    """How many input sets the timed calls rotate through: 3, and on a GPU enough to fill twice
    its L2 cache, so that no call finds its inputs there (as in a training step)."""
    if device.type != "cuda":
        return 3
    l2 = torch.cuda.get_device_properties(device).L2_cache_size
    return max(3, math.ceil(2 * l2 / set_bytes))


def describe(device):
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def run_info(device, threads, inputs):
    """The extra_info every benchmark case records about its run."""
    import fastwarp

    return dict(
        device=describe(device),
        threads=threads,
        torch=torch.__version__,
        fastwarp=fastwarp.__version__,
        input_sets=len(inputs),
    )


# --------------------------------------------------------------------------- bytes moved


def nbytes(t):
    return t.numel() * t.element_size()


def warp_bytes_moved(image, disp, mode):
    """The bytes any warp must move: the forward pass reads the field and the image and writes
    the output; the field-gradient pass (``mode`` ``fwdbwd``) then reads grad_out, the field and
    the image and writes the field's gradient; ``fwdbwd-both`` also writes the image's
    (``fwd-nearest``: the forward)."""
    forward = nbytes(disp) + 2 * nbytes(image)
    backward = 2 * nbytes(image) + 2 * nbytes(disp)
    return forward + {"fwd": 0, "fwd-nearest": 0, "fwdbwd": backward, "fwdbwd-both": backward + nbytes(image)}[mode]


def ncc_bytes_moved(a, mode):
    """The floor of an NCC loss's memory traffic: the forward reads both inputs; the backward
    reads them again and writes the gradient(s) (``mode``: fwd, fwdbwd, fwdbwd-both)."""
    volume = nbytes(a)
    return {"fwd": 2 * volume, "fwdbwd": 5 * volume, "fwdbwd-both": 6 * volume}[mode]


# --------------------------------------------------------------------------- peak memory


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
    for _, n in mem:
        current += n
        peak = max(peak, current)
    return peak


def _proc_status_bytes(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024  # reported in kB
    raise KeyError(key)


def _cpu_peak_rss(call):
    """Resident-memory high-water mark of ``call()`` over the resident memory before it, and
    what the call returned; ``(None, None)`` (without calling) where it cannot be measured (not
    Linux with glibc)."""
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


def _cpu_peak_tensors(call):
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = call()
    del out
    return _cpu_peak_from_profile(prof)


def peak_extra_memory(call, device, profile=True):
    """Peak memory that ``call()`` takes beyond what was in use before it; what it returns is
    kept alive to the end, so outputs count. A dict for ``extra_info`` (see the module
    docstring): ``peak_extra_bytes`` and ``peak_method``, on CPU also ``peak_rss_bytes`` and
    ``peak_tensor_bytes``.

    On CPU the call runs twice, once under the profiler and once for the resident memory;
    ``profile=False`` leaves the profiler's run out (``peak_tensor_bytes`` None) unless the
    resident memory cannot be measured."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        out = call()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - before
        del out
        return dict(peak_extra_bytes=peak, peak_method="cuda max_memory_allocated - memory_allocated before")
    tensor_peak = _cpu_peak_tensors(call) if profile else None
    rss_peak, out = _cpu_peak_rss(call)
    del out
    if rss_peak is None and tensor_peak is None:
        tensor_peak = _cpu_peak_tensors(call)
    if rss_peak is not None:
        peak, method = rss_peak, "cpu resident-memory high-water (malloc_trim + clear_refs VmHWM)"
    else:
        peak, method = tensor_peak, "cpu profiler(profile_memory) tensor-allocation high-water"
    return dict(peak_extra_bytes=peak, peak_method=method, peak_rss_bytes=rss_peak, peak_tensor_bytes=tensor_peak)


# --------------------------------------------------------------------------- timing


class Timing(NamedTuple):
    median_s: float
    min_s: float
    calls: int  # timed calls
    warmup: int  # untimed calls before them
    first_s: float  # the first call (lazy initialisation included), synchronised
    method: str


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _wall(fn, device):
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - t0, out


def time_calls(
    fn: Callable[[], object],
    device: torch.device,
    repeats: int | None = None,
    *,
    max_warmup: int = 3,
    warmup_budget_s: float = 0.5,
    target_s: float | None = None,
    min_repeats: int | None = None,
    max_repeats: int = 500,
) -> Timing:
    """Times ``fn()`` (which rotates its own inputs). Warm-up calls first: two (one when the
    first takes over 2 s: lazy initialisation is then negligible), and a third while they take
    under ``warmup_budget_s``. Then ``repeats`` timed calls or, when ``repeats`` is None, as many
    as fill ``target_s`` (1 s on CPU, 0.5 s on CUDA) by the warm-up's estimate, at least
    ``min_repeats`` (5 on CPU, 10 on CUDA) and at most ``max_repeats``.

    On CUDA each timed call lies between two CUDA events on the current stream, recorded back
    to back with no host synchronisation in between, and the median of their elapsed times is
    returned; on CPU the median of ``time.perf_counter`` around each call."""
    on_cuda = device.type == "cuda"
    first, _ = _wall(fn, device)
    warmup, estimate = 1, first
    while warmup < max_warmup and ((warmup < 2 and first < 2.0) or estimate < warmup_budget_s):
        estimate, _ = _wall(fn, device)
        warmup += 1
    if repeats is None:
        target = target_s if target_s is not None else (0.5 if on_cuda else 1.0)
        lowest = min_repeats if min_repeats is not None else (10 if on_cuda else 5)
        repeats = min(max_repeats, max(lowest, math.ceil(target / max(estimate, 1e-9))))
    repeats = max(1, int(repeats))

    if on_cuda:
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)]
        torch.cuda.synchronize(device)
        for start, end in events:
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize(device)
        times = [start.elapsed_time(end) / 1e3 for start, end in events]
        method = "CUDA events around each call, median"
    else:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        method = "time.perf_counter around each call, median"
    return Timing(statistics.median(times), min(times), repeats, warmup, first, method)


def copy_bandwidth(device, nbytes_, repeats=None):
    """The device's copy bandwidth in bytes/s: ``dst.copy_(src)`` of ``nbytes_`` bytes, which
    moves twice that (a read and a write), timed by :func:`time_calls`."""
    src = torch.rand(max(1, nbytes_ // 4), device=device)
    dst = torch.empty_like(src)
    timing = time_calls(lambda: dst.copy_(src), device, repeats)
    return 2 * nbytes(src) / timing.median_s, timing
