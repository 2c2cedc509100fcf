"""The counting build of the emulated launch (Note [Counting the emulated launch],
csrc/emu/count.h) against kernels whose counts are known by hand, and the GPU cost model
built on it (Note [GPU cost model], fastwarp/app/bench/gpu_model.py).

The counts run in a child process: the counting build is a variant of the emulated build
(FASTWARP_CUDA_EMU_VARIANT=count), and a process loads one. Built with
FASTWARP_CUDA_EMU=count (needs clang); skipped without it.
"""

import json
import math
import os
import subprocess
import sys

import pytest

from fastwarp import _emu
from fastwarp.app.bench import gpu_model, kernel_resources

needs_count = pytest.mark.skipif(not _emu.built("count"), reason="fastwarp._C_emu_count not built (FASTWARP_CUDA_EMU=count)")

# 1024 floats: 4 blocks of 256 threads, 32 warps.
N = 1024
WARPS = N // 32

CHILD = r"""
import json, sys
import torch
from fastwarp import _emu
import fastwarp

_emu.load()
out = {}
g = torch.Generator().manual_seed(0)
x = torch.rand(%(n)d, generator=g)
for name in ("tile_reverse", "copy_stride2", "bank_conflict", "broadcast", "histogram", "neighbour_sum", "sweep_twice"):
    with _emu.counting() as launches:
        y = torch.ops.fastwarp_harness.run(name, x)
    out[name] = launches
    if name == "tile_reverse":  # counting changes nothing the kernel computes
        out["tile_reverse_right"] = bool(torch.equal(y.view(-1, 256).flip(1), x.view(-1, 256)))
big = torch.rand(256 * 128, generator=g)
with _emu.counting(block_stride=2) as launches:
    torch.ops.fastwarp_harness.run("tile_reverse", big)
out["sampled"] = launches
with _emu.counting() as launches:
    torch.ops.fastwarp_harness.run("sweep_twice", torch.rand(16384, generator=g))
out["sweep_twice_big"] = launches
image = torch.rand(1, 1, 8, 16, 32, generator=g)
disp = torch.zeros(1, 3, 8, 16, 32)
with _emu.EmulatedCuda(), _emu.counting() as launches:
    fastwarp.warp(image, disp)
out["warp_identity"] = launches
a, b = torch.rand(2, 1, 1, 12, 14, 40, generator=g)
with _emu.EmulatedCuda(), _emu.counting() as launches:
    fastwarp.ncc(a, b, window=9)
out["ncc"] = launches
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def counts():
    env = dict(os.environ, FASTWARP_CUDA_EMU_VARIANT="count", OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-c", CHILD % {"n": N}], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.splitlines()[-1])


def only(launches):
    assert len(launches) == 1, launches
    return launches[0]


@needs_count
def test_coalesced_and_conflict_free(counts):
    c = only(counts["tile_reverse"])
    assert c["kernel"] == "tile_reverse_kernel<true>"
    assert (c["blocks"], c["blocks_run"], c["threads_run"], c["barriers"]) == (4, 4, N, 4)
    # one request per warp, 32 lanes x 4 bytes = 4 sectors
    assert (c["global_load_requests"], c["global_load_sectors"], c["global_load_bytes"]) == (WARPS, 4 * WARPS, 4 * N)
    assert (c["global_store_requests"], c["global_store_sectors"]) == (WARPS, 4 * WARPS)
    assert (c["shared_load_requests"], c["shared_load_wavefronts"]) == (WARPS, WARPS)
    assert (c["shared_store_requests"], c["shared_store_wavefronts"]) == (WARPS, WARPS)
    assert (c["dram_read_sectors"], c["dram_write_sectors"]) == (N * 4 // 32, N * 4 // 32)
    assert c["global_atomic_ops"] == c["shared_atomic_ops"] == 0
    assert counts["tile_reverse_right"]


@needs_count
def test_stride2_load_takes_twice_the_sectors(counts):
    c = only(counts["copy_stride2"])
    assert c["global_load_sectors"] == 8 * WARPS and c["global_load_requests"] == WARPS
    assert c["global_store_sectors"] == 4 * WARPS
    assert c["dram_read_sectors"] == N * 4 // 32  # every sector of the input, once


@needs_count
def test_bank_conflict_and_broadcast(counts):
    c = only(counts["bank_conflict"])
    assert (c["shared_store_requests"], c["shared_store_wavefronts"]) == (WARPS, 32 * WARPS)
    assert (c["shared_load_requests"], c["shared_load_wavefronts"]) == (WARPS, 32 * WARPS)
    c = only(counts["broadcast"])
    assert (c["shared_load_requests"], c["shared_load_wavefronts"]) == (WARPS, WARPS)


@needs_count
def test_atomic_histogram(counts):
    c = only(counts["histogram"])
    # every thread adds to a shared bin; each block's first 16 threads add their bin to global memory
    assert (c["shared_atomic_ops"], c["shared_atomic_requests"]) == (N, WARPS)
    assert (c["global_atomic_ops"], c["global_atomic_requests"], c["global_atomic_sectors"]) == (4 * 16, 4, 4 * 2)


L1_SIZES = ("8k", "16k", "32k", "64k", "128k")


@needs_count
def test_l1_serves_a_neighbour_warps_sectors(counts):
    c = only(counts["neighbour_sum"])
    # each warp reads its 4 sectors and its neighbour's 4: the pair's second warp hits both
    assert c["global_load_sectors"] == 8 * WARPS
    for size in L1_SIZES:
        assert c[f"l1_miss_sectors_{size}"] == 4 * WARPS == c["dram_read_sectors"]


@needs_count
def test_l1_holds_what_fits_and_loses_what_does_not(counts):
    c = only(counts["sweep_twice"])  # 4 KiB swept twice: every L1 holds it
    assert c["global_load_sectors"] == 2 * N * 4 // 32
    for size in L1_SIZES:
        assert c[f"l1_miss_sectors_{size}"] == N * 4 // 32
    c = only(counts["sweep_twice_big"])  # 64 KiB (513 lines unless 128-byte aligned)
    sectors = 16384 * 4 // 32
    assert c["l1_miss_sectors_8k"] == c["l1_miss_sectors_16k"] == c["l1_miss_sectors_32k"] == 2 * sectors  # a
    # cyclic sweep past LRU's reach
    assert c["l1_miss_sectors_128k"] == sectors
    assert sectors <= c["l1_miss_sectors_64k"] <= 2 * sectors


@needs_count
def test_block_sampling(counts):
    c = only(counts["sampled"])
    assert c["blocks"] == 128
    assert c["blocks_run"] == 64  # runs of 32 blocks, every second one
    assert c["global_load_requests"] == 64 * 8


@needs_count
def test_identity_warp_moves_the_floor(counts):
    c = only(counts["warp_identity"])
    assert c["kernel"].startswith("warp_fwd_kernel<float, float, int, 3")
    voxels = 8 * 16 * 32
    assert c["dram_read_sectors"] * 32 == voxels * 4 + 3 * voxels * 4  # image and displacement, once
    assert c["dram_write_sectors"] * 32 == voxels * 4
    assert c["global_store_sectors"] == 4 * c["global_store_requests"]  # coalesced


@needs_count
def test_ncc_reads_each_input_once_from_dram(counts):
    (c,) = [launch for launch in counts["ncc"] if launch["kernel"].startswith("ncc_forward_kernel")]
    assert c["dram_read_sectors"] * 32 == 2 * 12 * 14 * 40 * 4
    assert c["shared_load_wavefronts"] > 0 and c["barriers"] > 0
    # the block's sum of its cc: each warp shuffles a double down 5 times (2 words each), then
    # warp 0 the warps' totals; the march itself shuffles nothing
    warps = c["block"][0] // 32
    assert c["shuffles"] == c["blocks_run"] * (warps + 1) * 5 * 2


@needs_count
def test_cuda_model_report(tmp_path):
    from fastwarp.app.bench.runner import main

    out = tmp_path / "model.json"
    assert main(["--device", "cuda-model", "--size", "tiny", "--json", str(out), "--markdown", str(tmp_path / "m.md")]) == 0
    rows = json.loads(out.read_text())["cases"]
    keys = {"case", "kernel", "floor_bytes", "counted_bytes", "shared_wavefronts_per_voxel", "occupancy", "registers",
            "spill_bytes", "modeled_seconds_h100", "floor_seconds_h100", "modeled_over_floor_h100"}
    assert rows and all(keys <= set(r) for r in rows)
    kernels = {r["kernel"] for r in rows}
    assert {"warp_forward", "warp_backward", "ncc_forward", "ncc_backward", "mi_histogram", "mi_gradient"} <= kernels
    mi = [r for r in rows if r["kernel"] in ("mi_histogram", "mi_gradient")]
    assert all(r["floor_bytes"] > 0 and r["counted_over_floor"] >= 0.99 for r in mi), mi
    for r in rows:
        assert r["modeled_seconds_h100"] > 0 and r["modeled_seconds_h200"] > 0
    assert "| case | kernel |" in (tmp_path / "m.md").read_text()


# --------------------------------------------------------------------------- the model, by hand

PTXAS = """\
ptxas info    : Compiling entry function '_ZN8fastwarp12_GLOBAL__N_115warp_fwd_kernelIffiLi3EEEvNS_12SampleParamsIXT2_EEEPKT_PKT0_PS5_' for 'sm_90'
ptxas info    : Function properties for _ZN8fastwarp12_GLOBAL__N_115warp_fwd_kernelIffiLi3EEEvNS_12SampleParamsIXT2_EEEPKT_PKT0_PS5_
    96 bytes stack frame, 24 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 80 registers, used 1 barriers, 64 bytes smem, 560 bytes cmem[0]
"""


def test_ptxas_report_parse():
    (k,) = kernel_resources.parse(PTXAS)
    assert k["kernel"].startswith("warp_fwd_kernel<float, float, int, 3>")
    assert (k["registers"], k["stack_bytes"], k["spill_store_bytes"], k["spill_load_bytes"]) == (80, 96, 24, 12)
    assert (k["static_shared_bytes"], k["barriers"]) == (64, 1)


def test_occupancy_by_hand():
    launch = {"block": [256, 1, 1], "shared_bytes": 0}
    # 80 registers: 2,560 per warp, 6 warps in each of the 4 sub-partitions of 16,384: 3 blocks
    occ = gpu_model.occupancy({"registers": 80, "static_shared_bytes": 0}, launch)
    assert (occ["blocks_per_sm"], occ["limited_by"], occ["occupancy"]) == (3, "registers", 24 / 64)
    # 48 registers: 1,536 per warp, 10 per sub-partition (not 65,536 / 1,536 = 42 per SM): 5 blocks of 8 warps
    occ = gpu_model.occupancy({"registers": 48, "static_shared_bytes": 0}, launch)
    assert occ["warps_per_sm"] == 40 and occ["blocks_per_sm"] == 5
    # blocks of 64 threads at 48 registers: 40 warps, 20 blocks (42 warps would give 21)
    occ = gpu_model.occupancy({"registers": 48, "static_shared_bytes": 0}, dict(launch, block=[64, 1, 1]))
    assert occ["blocks_per_sm"] == 20
    # 92 KiB of dynamic shared memory: 2 blocks in 228 KiB (1 KiB reserved each)
    occ = gpu_model.occupancy({"registers": 32, "static_shared_bytes": 64}, dict(launch, shared_bytes=92 * 1024))
    assert (occ["blocks_per_sm"], occ["limited_by"]) == (2, "shared memory")


def test_l1_share_by_hand():
    launch = {"block": [256, 1, 1], "shared_bytes": 0, "global_load_sectors": 1000, "global_store_sectors": 10,
              "global_atomic_sectors": 1, "l1_miss_sectors_8k": 450, "l1_miss_sectors_16k": 400, "l1_miss_sectors_32k": 300,
              "l1_miss_sectors_64k": 200, "l1_miss_sectors_128k": 100}
    # 3 blocks, 3 KiB of shared memory reserved: the 8 KiB carveout, 248 KiB of L1, 82 KiB each
    occ = gpu_model.occupancy({"registers": 80, "static_shared_bytes": 0}, launch)
    assert occ["l1_bytes_per_block"] == 248 * 1024 // 3
    assert gpu_model.l1_key(occ, launch) == "l1_miss_sectors_64k"
    assert gpu_model.l2_sectors(launch, "l1_miss_sectors_64k") == 200 + 10 + 2
    assert gpu_model.l2_sectors(launch, None) == 1000 + 10 + 2
    # 2 blocks of 92 KiB + 64 B + 1 KiB: the 196 KiB carveout, 30 KiB each: the 16 KiB L1
    occ = gpu_model.occupancy({"registers": 32, "static_shared_bytes": 64}, dict(launch, shared_bytes=92 * 1024))
    assert occ["l1_bytes_per_block"] == 30 * 1024 and gpu_model.l1_key(occ, launch) == "l1_miss_sectors_16k"
    # counts without L1 figures: every load sector from the L2
    plain = {k: v for k, v in launch.items() if not k.startswith("l1_")}
    assert gpu_model.l1_key(occ, plain) is None
    # 32 blocks of 64 threads: 224 KiB of L1 after the 32 KiB carveout, 7 KiB each: no L1 fits
    occ = gpu_model.occupancy({"registers": 32, "static_shared_bytes": 0}, dict(launch, block=[64, 1, 1]))
    assert occ["blocks_per_sm"] == 32 and gpu_model.l1_key(occ, launch) is None


def test_model_of_a_copy_is_its_floor():
    """A coalesced copy of 4 floats per thread at full occupancy (4 loads in flight per warp)
    is DRAM-bound: the model gives the floor."""
    blocks, threads = 132 * 8 * 100, 256
    n = 4 * blocks * threads
    sectors = n * 4 // 32
    requests = n // 32  # 4 per warp, 4 sectors each
    launch = dict(blocks=blocks, blocks_run=blocks, block=[threads, 1, 1], barriers=0, threads_run=blocks * threads,
                  global_load_requests=requests, global_load_sectors=sectors, global_store_requests=requests,
                  global_store_sectors=sectors, global_atomic_sectors=0, shared_load_wavefronts=0,
                  shared_store_wavefronts=0, shared_atomic_requests=0, dram_read_sectors=sectors,
                  dram_write_sectors=sectors)
    occ = gpu_model.occupancy({"registers": 32, "static_shared_bytes": 0}, dict(launch, shared_bytes=0))
    assert math.isclose(occ["occupancy"], 1.0)
    for device in gpu_model.DEVICES:
        m = gpu_model.model(gpu_model._scaled(launch), occ, device)
        assert m["bound"] == "dram"
        assert m["seconds"] == pytest.approx(2 * n * 4 / device.dram_bytes_per_s)
    # one float per thread: 8 KiB in flight per SM, below the H100's bandwidth-latency product
    one = dict(launch, global_load_requests=requests * 4 // 4, global_load_sectors=sectors)
    one.update(blocks=4 * blocks, threads_run=4 * blocks * threads)
    m = gpu_model.model(gpu_model._scaled(one), occ, gpu_model.DEVICES[0])
    assert m["seconds"] > 1.2 * 2 * n * 4 / gpu_model.DEVICES[0].dram_bytes_per_s


@pytest.mark.skipif(not os.path.exists(kernel_resources.DEFAULT_OUT), reason="no ptxas report (python -m fastwarp.app.bench.kernel_resources)")
@pytest.mark.parametrize("kernel", [
    "warp_fwd_kernel<float, float, int, 3>",
    "warp_bwd_kernel<float, int, 3>",
    "det_keys_kernel<float, int, 3>",
    "det_reduce_kernel<float, int, 3>",
    "affine_fwd_kernel<float, float, int, 3>",  # Note [Affine sampling]
    "affine_bwd_kernel<float, int, 3>",
    "affine_det_keys_kernel<float, int, 3>",
    "ncc_gradient_kernel<float, 1>",
    "ncc_gradient_kernel<float, 3>",
    # the MI's B-spline and its Gaussian at the default sigma (0.5: 8 taps), float
    "mi_histogram_kernel<float, float, (fastwarp::ParzenKernel)0, 4>",
    "mi_gradient_kernel<float, float, (fastwarp::ParzenKernel)0, 4>",
    "mi_histogram_kernel<float, float, (fastwarp::ParzenKernel)1, 8>",
    "mi_gradient_kernel<float, float, (fastwarp::ParzenKernel)1, 8>",
])
def test_hot_kernels_have_no_spills_or_stack(kernel):
    k = kernel_resources.load()[kernel]
    assert (k["stack_bytes"], k["spill_store_bytes"], k["spill_load_bytes"]) == (0, 0, 0), k


@pytest.mark.skipif(not os.path.exists(kernel_resources.DEFAULT_OUT), reason="no ptxas report (python -m fastwarp.app.bench.kernel_resources)")
@pytest.mark.parametrize("kernel", ["ncc_forward_kernel<float>", "ncc_coefficients_kernel<float, 1>"])
def test_ncc_moment_kernels_spill_little(kernel):
    """The NCC's kernels over the five moments hold 20 double sums per thread and are capped
    at 128 registers (512 threads, one block per SM): ptxas spills a few of its temporaries
    there (benchmarks/RESULTS.md). Held to at most 64 bytes each way, so that growth shows."""
    k = kernel_resources.load()[kernel]
    assert k["registers"] <= 128 and k["stack_bytes"] <= 64, k
    assert k["spill_store_bytes"] <= 64 and k["spill_load_bytes"] <= 64, k


@pytest.mark.skipif(not os.path.exists(kernel_resources.DEFAULT_OUT), reason="no ptxas report (python -m fastwarp.app.bench.kernel_resources)")
def test_ncc_march_kernels_hold_one_block_per_sm():
    """ncc_cuda.cu's kMarchRegisters tells the emulated occupancy that the march kernels fit
    one block of 512 threads per multiprocessor, by registers: ptxas must agree."""
    report = kernel_resources.load(kernel_resources.DEFAULT_OUT)
    march = {k: v for k, v in report.items() if k.startswith(("ncc_forward_kernel", "ncc_coefficients_kernel",
                                                                  "ncc_gradient_kernel"))}
    assert march, sorted(report)[:20]
    for name, res in march.items():
        occ = gpu_model.occupancy(res, {"block": [512, 1, 1], "shared_bytes": 0})
        assert occ["blocks_per_sm"] == 1 and occ["limited_by"] == "registers", (name, res["registers"])
