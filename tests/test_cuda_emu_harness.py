"""The emulated CUDA launch itself (csrc/emu/cuda_emu.h): its primitives against CUDA's
definitions, its launch limits, and proof that it has teeth. Each kernel of
csrc/emu/harness_kernels.cu carries a planted bug beside a correct twin; every bug must be
caught: by a wrong value, by the emulator, by ThreadSanitizer or by AddressSanitizer (the
last two in child processes running the sanitizer builds, FASTWARP_CUDA_EMU=thread,address).
"""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from fastwarp import _emu

pytestmark = [
    pytest.mark.cuda_emu,
    pytest.mark.skipif(not _emu.available(), reason="emulated-CUDA test build absent (FASTWARP_CUDA_EMU=1)"),
]

N = 1000  # four blocks of 256 threads, the last one partial


def harness():
    _emu.load()
    return torch.ops.fastwarp_harness


@pytest.fixture
def x(gen):
    return torch.rand(N, generator=gen)


def test_primitives_match_cuda_definitions():
    grid_x, grid_y, block_y = 2, 3, 4
    r = harness().primitives(torch.empty(1), grid_x, grid_y, block_y)
    threads = 32 * block_y
    assert r.shape == (grid_x * grid_y * threads, 14)
    rec = r.view(grid_y, grid_x, block_y, 32, 14)
    lane = torch.arange(32.0)
    for by in range(grid_y):
        for bx in range(grid_x):
            for ty in range(block_y):
                f = rec[by, bx, ty]
                torch.testing.assert_close(f[:, 0], lane)  # threadIdx.x
                assert (f[:, 1] == ty).all() and (f[:, 2] == bx).all() and (f[:, 3] == by).all()
                torch.testing.assert_close(f[:, 4], (lane.long() ^ 1).float())  # shfl_xor 1
                torch.testing.assert_close(f[:, 5], torch.where(lane >= 3, lane - 3, lane))  # shfl_up 3
                in_segment = lane % 16
                torch.testing.assert_close(f[:, 6], torch.where(in_segment + 3 < 16, lane + 3, lane))  # down 3, width 16
                assert (f[:, 7] == 5).all()  # shfl from lane 5
                assert (f[:, 8] == 11).all()  # popc(ballot(lane % 3 == 0))
                assert (f[:, 9] == 1).all() and (f[:, 10] == 0).all()  # any(lane == 31), all(lane < 31)
                assert (f[:, 11] == threads // 2).all()  # syncthreads_count(t even)
                assert (f[:, 12] == 1).all() and (f[:, 13] == 1).all()  # and(t < 1000), or(t == 7)


def test_correct_kernels(x):
    h = harness()
    blocks = x.view(-1)[: 3 * 256].view(3, 256)
    torch.testing.assert_close(h.run("tile_reverse", x)[: 3 * 256].view(3, 256), blocks.flip(1))
    torch.testing.assert_close(h.run("shift_sum", x), x + torch.cat([x[1:], x.new_zeros(1)]))
    torch.testing.assert_close(h.run("histogram", x), torch.histc(x, 16, 0, 1))
    torch.testing.assert_close(h.run("dynamic_tile", x), 2 * x)
    for name in ("sum_atomic", "warp_sum"):
        torch.testing.assert_close(h.run(name, x), x.double().sum().float().view(1), rtol=1e-5, atol=1e-4)


def test_planted_bugs_that_values_reveal(x):
    """Without a barrier, the emulator's schedule (each thread runs until it waits) makes the
    early threads read tile entries that later threads have not written yet; the wrong bin
    moves every count."""
    h = harness()
    assert not torch.equal(h.run("tile_reverse_nosync", x), h.run("tile_reverse", x))
    assert not torch.equal(h.run("histogram_wrong_bin", x), h.run("histogram", x))


def test_planted_bug_that_the_emulator_reports(x):
    with pytest.raises(RuntimeError, match="returned from the kernel while other lanes of its warp waited"):
        harness().run("warp_sum_early_return", x)


def test_launch_limits(x):
    h = harness()
    h.launch_config(x, 1024, 0, 0)
    with pytest.raises(RuntimeError, match="more than 1024 threads per block"):
        h.launch_config(x, 1025, 0, 0)
    with pytest.raises(RuntimeError, match="48 KiB without cudaFuncSetAttribute"):
        h.launch_config(x, 32, 64 * 1024, 0)
    h.launch_config(x, 32, 64 * 1024, 100 * 1024)  # after the opt-in
    with pytest.raises(RuntimeError, match="above 227 KiB"):
        h.launch_config(x, 32, 0, 228 * 1024)


# --------------------------------------------------------------------------- sanitizers

CHILD = textwrap.dedent(
    """
    import sys, torch
    from fastwarp import _emu
    _emu.load()
    x = torch.rand(1000, generator=torch.Generator().manual_seed(3))
    y = torch.ops.fastwarp_harness.run(sys.argv[1], x)
    print("finished", float(y.sum()))
    """
)

# kernel -> (sanitizer, function the report must name); None: the correct twin, no report
CASES = {
    "thread": {
        "tile_reverse": None,
        "tile_reverse_nosync": "tile_reverse_kernel<false>",
        "sum_atomic": None,
        "sum_racy": "sum_kernel<false>",
        "histogram": None,
        "warp_sum": None,
    },
    "address": {
        "shift_sum": None,
        "shift_sum_oob": "shift_sum_kernel<false>",
        "histogram": None,
        "histogram_wrong_bin": "histogram_kernel<true>",
        "dynamic_tile": None,
        "dynamic_tile_overrun": "dynamic_tile_kernel<true>",
    },
}
REPORT = {"thread": "WARNING: ThreadSanitizer: data race", "address": "ERROR: AddressSanitizer"}


@pytest.mark.slow
@pytest.mark.parametrize("variant, kernel", [(v, k) for v, cases in CASES.items() for k in cases])
def test_sanitizer_catches_planted_bug(variant, kernel):
    if os.environ.get(_emu.VARIANT_ENV):
        pytest.skip("already inside a sanitizer run")
    if not _emu.built(variant):
        pytest.skip(f"fastwarp.{_emu.MODULES[variant]} not built (FASTWARP_CUDA_EMU=1,{variant})")
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, kernel], env=_emu.sanitizer_env(variant), capture_output=True, text=True, timeout=300
    )
    culprit = CASES[variant][kernel]
    if culprit is None:
        assert proc.returncode == 0 and REPORT[variant] not in proc.stderr, proc.stderr[-3000:]
        assert "finished" in proc.stdout
    else:
        assert proc.returncode != 0, f"{variant} sanitizer missed the bug in {kernel}\n{proc.stdout}"
        assert REPORT[variant] in proc.stderr, proc.stderr[-3000:]
        assert culprit in proc.stderr, proc.stderr[-3000:]
