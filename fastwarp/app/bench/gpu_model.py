"""``fastwarp bench --device cuda-model``: what fastwarp's CUDA kernels cost on an H100 or an
H200, modeled from exact counts of the emulated launch, without a GPU.

Each case runs the public op under the counting build of the emulated launch (a child
process with ``FASTWARP_CUDA_EMU_VARIANT=count``; Note [Counting the emulated launch] in
``csrc/emu/count.h``), one row per kernel launch; ptxas's registers, stack, spills and
static shared memory (:mod:`~fastwarp.app.bench.kernel_resources`) give the occupancy; the
model below turns them into a time, beside the time the kernel's minimal traffic takes at
the copy bandwidth (the floor).

Note [GPU cost model]
~~~~~~~~~~~~~~~~~~~~~
A kernel is bound by the slowest of three pipes, then slowed by too little memory in flight:

    t_pipes   = max(DRAM bytes / B_dram,  L2 bytes / B_l2,  (shared wavefronts + shuffles) / (SMs * f))
    L2 bytes  = (global load sectors that miss the block's L1 + store sectors + 2 atomic sectors) * 32
    in flight = resident warps per SM * B_req * min(R_seg, 4)        (bytes per SM)
    needed    = B_dram * L / SMs                                     (Little's law)
    modeled   = t_pipes / min(1, in flight / needed) * ceil(waves) / waves

  * DRAM bytes: the distinct 32-byte sectors the launch reads plus those it writes (first
    touch: the working sets here are far above the 50 MB L2). L2 bytes: the sectors of the
    global requests (coalescing: a warp reading 32 scattered floats moves 32 sectors) that the
    L1 does not serve, atomics twice. The L1: the counting build runs each block's loads
    through simulated L1s of 8-128 KiB (Note [Counting the emulated launch]); the model takes
    the largest that fits the block's share of the SM's (none below 8 KiB): (256 KiB - the shared-memory carveout)
    / resident blocks, the carveout being the smallest of sm_90's (0, 8, 16, 32, 64, 100, 132,
    164, 196, 228 KiB) that holds the resident blocks' shared memory. Blocks sharing an SM
    share its L1 in hardware, which the per-block simulation misses; the report also gives
    the time with no L1 at all (`modeled_seconds_*_no_l1`), the model's upper end. Shared
    wavefronts: bank conflicts counted, broadcasts merged. Shuffles:
    warp-wide 32-bit shuffle instructions, one per cycle per SM like a wavefront.
  * B_req: the mean sectors per global load request, times 32 bytes. R_seg: the global load
    requests a warp issues between two barriers (or in its life, without barriers): how many
    loads a warp can have in flight at once, at most 4 (we assume the compiler hoists that
    many independent loads; the first GPU run checks this).
  * Occupancy (resident warps per SM) from ptxas's registers (allocated per warp in units of
    256, in one of the SM's 4 register-file sub-partitions), static plus dynamic shared memory (plus 1 KiB reserved per block) and the thread
    count, against sm_90's 65,536 registers, 228 KiB of shared memory, 2,048 threads and 32
    blocks per SM. Without ptxas's report, the latency term is left out (occupancy null).
  * waves: blocks / (SMs * blocks per SM); a last partial wave costs a whole one.
  * Constants: B_dram is a device-to-device copy's bandwidth measured on these machines
    (H100 ≈ 3.0 TB/s, H200 ≈ 4.3 TB/s); B_l2 = 5.5 TB/s; f = 1.755 GHz (the clock under
    sustained load); L = 450 ns (DRAM latency); 132 SMs.
  * The floor: the bytes the op must move (each input read once, each output written once)
    over B_dram.
What it leaves out: instruction issue (the NCC's float64 arithmetic runs at 1/2 the float32
rate on Hopper), L1 hits, atomics' serialization on one address, and the sort of the
deterministic backward (torch's, not ours). scripts/gpu_check.sh prints the model beside
each measured time, so that the first run on a GPU checks it.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import NamedTuple

from . import kernel_resources

FLOAT_BYTES = 4


class Device(NamedTuple):
    name: str
    dram_bytes_per_s: float
    l2_bytes_per_s: float = 5.5e12
    sms: int = 132
    clock_hz: float = 1.755e9
    latency_s: float = 450e-9


DEVICES = (Device("h100", 3.0e12), Device("h200", 4.3e12))

# sm_90's per-SM limits.
REGISTERS_PER_SM = 65536
SUB_PARTITIONS = 4
SHARED_PER_SM = 228 * 1024
SHARED_RESERVED_PER_BLOCK = 1024
THREADS_PER_SM = 2048
BLOCKS_PER_SM = 32
MAX_LOADS_IN_FLIGHT = 4
L1_SHARED_PER_SM = 256 * 1024  # the unified L1 / shared memory
SHARED_CARVEOUTS_KIB = (0, 8, 16, 32, 64, 100, 132, 164, 196, 228)
L1_SIMULATED = ((8, "l1_miss_sectors_8k"), (16, "l1_miss_sectors_16k"), (32, "l1_miss_sectors_32k"), (64, "l1_miss_sectors_64k"),
                (128, "l1_miss_sectors_128k"))  # KiB per block, the counting build's keys

# The issue's names of the kernels (a prefix of the emulated kernel's name -> name).
KERNEL_NAMES = {
    "warp_fwd_kernel": "warp_forward",
    "warp_bwd_kernel": "warp_backward",
    "det_keys_kernel": "warp_backward_deterministic_keys",
    "det_reduce_kernel": "warp_backward_deterministic_reduce",
    "affine_fwd_kernel": "affine_warp_forward",
    "affine_bwd_kernel": "affine_warp_backward",
    "affine_det_keys_kernel": "affine_warp_backward_deterministic_keys",
    "ncc_forward_kernel": "ncc_forward",
    "ncc_backward_kernel": "ncc_backward",
    "ncc_coefficients_kernel": "ncc_backward_coefficients",
    "ncc_gradient_kernel": "ncc_backward_gradient",
    "elementwise_kernel": "ncc_elementwise",
    "mi_histogram_kernel": "mi_histogram",
    "mi_gradient_kernel": "mi_gradient",
}


class Case(NamedTuple):
    name: str
    op: str  # warp-fwd, warp-fwdbwd, warp-fwdbwd-both, warp-bwd-deterministic, ncc-fwdbwd, mi-fwdbwd
    shape: tuple[int, ...]  # the image's (N, C, *spatial)
    window: int = 9
    # count every s-th run of r consecutive blocks (Note [Counting the emulated launch]):
    # the warp's runs span several planes, so that the z halo of its corners counts once
    block_stride: int = 1
    block_run: int = 32


def cases(size: str) -> list[Case]:
    """The cases at ``size``: "full", the issue's shapes (sampled blocks), or "tiny"."""
    if size == "tiny":
        shape, big = (1, 1, 12, 14, 40), (2, 2, 10, 12, 36)
        warp, ncc, warp_big, ncc_big = (1, 32), (1, 32), (1, 32), (1, 32)
    else:
        shape, big = (1, 1, 160, 192, 224), (2, 16, 128, 128, 128)
        # (stride, run): a quarter of the warp's blocks in runs of ~12 planes (160x192x224) and
        # ~32 planes (128^3); the NCC's few long blocks (its grid is sized to the SMs), 1 in 16
        warp, ncc, warp_big, ncc_big = (4, 2048), (16, 32), (16, 2048), (16, 32)
    out = []
    for label, s, (ws, wr), (ns, nr) in (("", shape, warp, ncc), ("-big", big, warp_big, ncc_big)):
        spatial = "x".join(map(str, s))
        out += [
            Case(f"warp-3d-fwd{label} {spatial}", "warp-fwd", s, block_stride=ws, block_run=wr),
            Case(f"warp-3d-fwdbwd{label} {spatial}", "warp-fwdbwd", s, block_stride=ws, block_run=wr),
            Case(f"warp-3d-fwdbwd-both{label} {spatial}", "warp-fwdbwd-both", s, block_stride=ws, block_run=wr),
            Case(f"warp-3d-bwd-deterministic{label} {spatial}", "warp-bwd-deterministic", s, block_stride=ws,
                 block_run=wr),
            Case(f"ncc-3d-w9-fwdbwd{label} {spatial}", "ncc-fwdbwd", s, block_stride=ns, block_run=nr),
            # (the MI's grid is sized to the SMs too, each block striding over its volume)
            Case(f"mi-3d-bspline-b32-fwdbwd{label} {spatial}", "mi-fwdbwd", s, block_stride=ns, block_run=nr),
        ]
    return out


def floor_bytes(case: Case, kernel: str, jacobian: bool = False) -> int | None:
    """The bytes ``kernel`` must move in ``case``: each input read once, each output written
    once; ``jacobian``: the forward writes the Jacobian (a training step's, one channel)."""
    n, c, *spatial = case.shape
    image = n * c * math.prod(spatial) * FLOAT_BYTES
    field = n * len(spatial) * math.prod(spatial) * FLOAT_BYTES
    return {
        # image, displacement -> output; a training step's forward also writes the Jacobian
        # (the displacement's gradient is then an elementwise product, torch's)
        "warp_forward": image + field + image + (c * field if jacobian else 0),
        # grad_out, image, displacement -> grad of the displacement (and, with "both", of the image)
        "warp_backward": 2 * image + 2 * field + (image if case.op == "warp-fwdbwd-both" else 0),
        "warp_backward_deterministic_keys": field,  # displacement -> keys (its output is scratch)
        "warp_backward_deterministic_reduce": image + field + image,  # grad_out, displacement -> grad image
        "ncc_forward": 2 * image,
        "ncc_backward": 3 * image,  # a, b -> grad a (the scalar's gradient aside)
        # the backward's two passes share its floor: the first reads a and b (its coefficient
        # maps are scratch), the second writes grad a (its reads of the maps, a and b are not
        # in the op's floor); the case's "ncc_backward" row adds the two
        "ncc_backward_coefficients": 2 * image,
        "ncc_backward_gradient": image,
        "mi_histogram": 2 * image,  # a, b -> the histogram (bins^2 per image: nothing beside them)
        "mi_gradient": 3 * image,  # a, b -> grad a
    }.get(kernel)


# --------------------------------------------------------------------------- counting (child)


def _run_case(case: Case) -> list[dict]:
    """Runs ``case`` under the counting build (in this process, which must have selected it)."""
    import torch

    import fastwarp
    from fastwarp import _emu

    from .cases import make_pair, smooth_disp

    g = torch.Generator().manual_seed(0)
    n, c, *spatial = case.shape
    with _emu.EmulatedCuda():
        if case.op.startswith("warp"):
            image = torch.rand(case.shape, generator=g)
            disp = smooth_disp(spatial, seed=1, batch=n)
            image.requires_grad_(case.op in ("warp-fwdbwd-both", "warp-bwd-deterministic"))
            disp.requires_grad_(case.op in ("warp-fwdbwd", "warp-fwdbwd-both"))
            deterministic = case.op == "warp-bwd-deterministic"
            previous = torch.are_deterministic_algorithms_enabled()
            torch.use_deterministic_algorithms(deterministic)
            try:
                with _emu.counting(case.block_stride, case.block_run) as launches:
                    out = fastwarp.warp(image, disp)
                    if case.op != "warp-fwd":
                        out.backward(torch.rand(out.shape, generator=g))
            finally:
                torch.use_deterministic_algorithms(previous)
        elif case.op.startswith("mi"):
            a, b = make_pair(case.shape, g)
            a.requires_grad_(True)
            with _emu.counting(case.block_stride, case.block_run) as launches:
                (-fastwarp.mi(a, b, 32)).backward()
        else:
            a, b = make_pair(case.shape, g)
            a.requires_grad_(True)
            with _emu.counting(case.block_stride, case.block_run) as launches:
                fastwarp.ncc(a, b, window=case.window).backward()
    return launches


def count(selected: Sequence[Case]) -> dict[str, list[dict]]:
    """Counts each case in a child process running the counting build: case name -> launches."""
    env = dict(os.environ, FASTWARP_CUDA_EMU_VARIANT="count", OMP_NUM_THREADS="1")
    spec = json.dumps([c._asdict() for c in selected])
    run = subprocess.run([sys.executable, "-m", "fastwarp.app.bench.gpu_model", "--count-child", spec],
                         capture_output=True, text=True, env=env)
    if run.returncode != 0:
        raise RuntimeError(f"the counting run failed:\n{run.stderr[-4000:]}")
    return json.loads(run.stdout.splitlines()[-1])


# --------------------------------------------------------------------------- the model


def occupancy(resources: dict | None, launch: dict) -> dict | None:
    """Resident blocks and warps per SM for ``launch``, from ptxas's report, and what limits them."""
    if resources is None:
        return None
    threads = math.prod(launch["block"])
    warps = math.ceil(threads / 32)
    regs_per_warp = math.ceil(resources["registers"] * 32 / 256) * 256
    shared = resources["static_shared_bytes"] + launch["shared_bytes"] + SHARED_RESERVED_PER_BLOCK
    # the register file is 4 sub-partitions of 16,384; a warp's registers live in one
    warps_by_registers = SUB_PARTITIONS * (REGISTERS_PER_SM // SUB_PARTITIONS // regs_per_warp)
    limits = {
        "registers": warps_by_registers // warps,
        "shared memory": SHARED_PER_SM // shared,
        "threads": THREADS_PER_SM // threads,
        "blocks": BLOCKS_PER_SM,
    }
    blocks = min(limits.values())
    carveout = next((k * 1024 for k in SHARED_CARVEOUTS_KIB if k * 1024 >= blocks * shared), SHARED_PER_SM)
    return dict(blocks_per_sm=blocks, warps_per_sm=blocks * warps, occupancy=blocks * warps / (THREADS_PER_SM // 32),
                limited_by=min(limits, key=limits.get),
                l1_bytes_per_block=(L1_SHARED_PER_SM - carveout) // max(blocks, 1))


def l1_key(occ: dict | None, launch: dict) -> str | None:
    """The counting build's L1-miss key for the largest simulated L1 that fits the block's
    share; None (no L1 modeled) without an occupancy, without L1 counts, or when none fits."""
    if occ is None or L1_SIMULATED[0][1] not in launch:
        return None
    fitting = [key for kib, key in L1_SIMULATED if kib * 1024 <= occ["l1_bytes_per_block"]]
    return fitting[-1] if fitting else None


def l2_sectors(launch: dict, key: str | None) -> float:
    """The sectors the L2 serves: the loads that miss the L1 of ``key`` (all, without one),
    the stores, the atomics twice."""
    loads = launch[key] if key else launch["global_load_sectors"]
    return loads + launch["global_store_sectors"] + 2 * launch["global_atomic_sectors"]


def model(launch: dict, occ: dict | None, device: Device, l1: bool = True) -> dict:
    """Note [GPU cost model] for one launch whose counts cover every block (scaled already);
    ``l1=False``: every load sector from the L2 (the model's upper end)."""
    dram = (launch["dram_read_sectors"] + launch["dram_write_sectors"]) * 32
    l2 = l2_sectors(launch, l1_key(occ, launch) if l1 else None) * 32
    wavefronts = (launch["shared_load_wavefronts"] + launch["shared_store_wavefronts"] + launch["shared_atomic_requests"]
                  + launch.get("shuffles", 0))
    pipes = {"dram": dram / device.dram_bytes_per_s, "l2": l2 / device.l2_bytes_per_s,
             "shared": wavefronts / (device.sms * device.clock_hz)}
    bound = max(pipes, key=pipes.get)
    seconds = pipes[bound]
    if occ is not None and occ["blocks_per_sm"] > 0:
        requests = launch["global_load_requests"]
        warp_segments = max(1, launch["warps"] * (1 + launch["barriers_per_block"]))
        per_request = 32 * launch["global_load_sectors"] / requests if requests else 0
        loads_in_flight = min(MAX_LOADS_IN_FLIGHT, requests / warp_segments) if requests else 0
        in_flight = occ["warps_per_sm"] * per_request * loads_in_flight
        needed = device.dram_bytes_per_s * device.latency_s / device.sms
        if in_flight > 0:
            seconds /= min(1.0, in_flight / needed)
        waves = launch["blocks"] / (device.sms * occ["blocks_per_sm"])
        seconds *= math.ceil(waves) / waves
    return dict(seconds=seconds, bound=bound)


def _scaled(launch: dict) -> dict:
    """The counts of a sampled launch scaled to all its blocks."""
    scale = launch["blocks"] / launch["blocks_run"]
    out = dict(launch)
    for key, value in launch.items():
        if key.startswith(("global_", "shared_", "dram_", "l1_")) and key != "shared_bytes" or key in (
                "barriers", "threads_run", "shuffles"):
            out[key] = value * scale
    out["warps"] = launch["blocks"] * math.ceil(math.prod(launch["block"]) / 32)
    out["barriers_per_block"] = launch["barriers"] / launch["blocks_run"]
    return out


def kernel_name(emulated: str) -> str:
    base = emulated.split("<", 1)[0]
    return KERNEL_NAMES.get(base, base)


def rows(case: Case, launches: list[dict], resources: dict[str, dict] | None) -> list[dict]:
    out = []
    n, c, *spatial = case.shape
    voxels = n * c * math.prod(spatial)
    names = [kernel_name(raw["kernel"]) for raw in launches]
    # a training step's warp with no backward kernel: its forward wrote the Jacobian
    jacobian = case.op == "warp-fwdbwd" and "warp_backward" not in names
    for raw, name in zip(launches, names):
        launch = _scaled(raw)
        res = resources.get(raw["kernel"]) if resources else None
        occ = occupancy(res, raw)
        floor = floor_bytes(case, name, jacobian)
        counted = (launch["dram_read_sectors"] + launch["dram_write_sectors"]) * 32
        row = dict(
            case=case.name, kernel=name, kernel_symbol=raw["kernel"], grid=raw["grid"], block=raw["block"],
            dynamic_shared_bytes=raw["shared_bytes"], blocks=raw["blocks"], blocks_counted=raw["blocks_run"],
            floor_bytes=floor, counted_bytes=round(counted),
            counted_over_floor=counted / floor if floor else None,
            l2_bytes=round(l2_sectors(launch, l1_key(occ, launch)) * 32),
            l2_bytes_no_l1=round(l2_sectors(launch, None) * 32),
            l1_bytes_per_block=occ["l1_bytes_per_block"] if occ else None,
            l1_hit_rate=(1 - launch[l1_key(occ, launch)] / launch["global_load_sectors"]
                         if l1_key(occ, launch) and launch["global_load_sectors"] else None),
            sectors_per_load_request=(raw["global_load_sectors"] / raw["global_load_requests"]
                                      if raw["global_load_requests"] else None),
            shared_wavefronts_per_voxel=(launch["shared_load_wavefronts"] + launch["shared_store_wavefronts"]) / voxels,
            shuffles_per_voxel=launch.get("shuffles", 0) / voxels,
            global_atomics=round(launch["global_atomic_ops"]), barriers_per_block=launch["barriers_per_block"],
            registers=res["registers"] if res else None,
            spill_bytes=res["spill_store_bytes"] + res["spill_load_bytes"] if res else None,
            stack_bytes=res["stack_bytes"] if res else None,
            occupancy=occ["occupancy"] if occ else None, blocks_per_sm=occ["blocks_per_sm"] if occ else None,
            occupancy_limited_by=occ["limited_by"] if occ else None,
        )
        for device in DEVICES:
            m = model(launch, occ, device)
            row[f"modeled_seconds_{device.name}"] = m["seconds"]
            row[f"bound_{device.name}"] = m["bound"]
            row[f"floor_seconds_{device.name}"] = floor / device.dram_bytes_per_s if floor else None
            row[f"modeled_over_floor_{device.name}"] = (m["seconds"] * device.dram_bytes_per_s / floor) if floor else None
            row[f"modeled_seconds_{device.name}_no_l1"] = model(launch, occ, device, l1=False)["seconds"]
        out.append(row)
    passes = [r for r in out if r["kernel"] in ("ncc_backward_coefficients", "ncc_backward_gradient")]
    if len(passes) == 2:
        out.append(_backward_total(case, passes))
    return out


def _backward_total(case: Case, passes: list[dict]) -> dict:
    """The NCC backward's two passes as the op: bytes, wavefronts and times added, against the
    op's floor; the registers and spills of the larger, the occupancy of the lower."""
    def total(key):
        return sum(r[key] for r in passes)

    def worst(key, pick):
        values = [r[key] for r in passes if r[key] is not None]
        return pick(values) if values else None

    floor = floor_bytes(case, "ncc_backward")
    row = dict(case=case.name, kernel="ncc_backward", kernel_symbol="(both passes)", aggregate=True, floor_bytes=floor,
               counted_bytes=total("counted_bytes"), counted_over_floor=total("counted_bytes") / floor,
               l2_bytes=total("l2_bytes"), l2_bytes_no_l1=total("l2_bytes_no_l1"), l1_bytes_per_block=None,
               l1_hit_rate=None, sectors_per_load_request=None,
               shared_wavefronts_per_voxel=total("shared_wavefronts_per_voxel"),
               shuffles_per_voxel=total("shuffles_per_voxel"), registers=worst("registers", max),
               spill_bytes=worst("spill_bytes", max), stack_bytes=worst("stack_bytes", max),
               occupancy=worst("occupancy", min), blocks_per_sm=worst("blocks_per_sm", min),
               occupancy_limited_by=min(passes, key=lambda r: r["occupancy"] or 0)["occupancy_limited_by"])
    for device in DEVICES:
        seconds = total(f"modeled_seconds_{device.name}")
        row[f"modeled_seconds_{device.name}"] = seconds
        row[f"bound_{device.name}"] = "+".join(r[f"bound_{device.name}"] for r in passes)
        row[f"floor_seconds_{device.name}"] = floor / device.dram_bytes_per_s
        row[f"modeled_over_floor_{device.name}"] = seconds * device.dram_bytes_per_s / floor
        row[f"modeled_seconds_{device.name}_no_l1"] = total(f"modeled_seconds_{device.name}_no_l1")
    return row


def format_markdown(result: dict) -> str:
    def f(v, spec):
        return "–" if v is None else format(v, spec)

    lines = [f"fastwarp's CUDA kernels, modeled (Note [GPU cost model]) from counts of the emulated launch, "
             f"size {result['meta']['size']}; ptxas report: {result['meta']['resources']}.", "",
             "| case | kernel | floor MB | counted MB | L2 MB | L1 hits | sectors/req | shared wf/voxel | shuffles/voxel | "
             "regs | spill B | occupancy | H100 modeled µs | floor µs | × floor | bound | × floor, no L1 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["cases"]:
        no_l1 = r.get("modeled_seconds_h100_no_l1")
        lines.append(
            f"| {r['case']} | {r['kernel']} | {f(r['floor_bytes'] and r['floor_bytes'] / 1e6, '.1f')} | "
            f"{r['counted_bytes'] / 1e6:.1f} | {r['l2_bytes'] / 1e6:.1f} | {f(r.get('l1_hit_rate'), '.0%')} | "
            f"{f(r['sectors_per_load_request'], '.1f')} | "
            f"{r['shared_wavefronts_per_voxel']:.2f} | {r.get('shuffles_per_voxel', 0):.2f} | "
            f"{f(r['registers'], 'd')} | {f(r['spill_bytes'], 'd')} | "
            f"{f(r['occupancy'], '.0%')} ({r['occupancy_limited_by'] or '–'}) | {r['modeled_seconds_h100'] * 1e6:.0f} | "
            f"{f(r['floor_seconds_h100'] and r['floor_seconds_h100'] * 1e6, '.0f')} | "
            f"{f(r['modeled_over_floor_h100'], '.2f')} | {r['bound_h100']} | "
            f"{f(no_l1 and r['floor_seconds_h100'] and no_l1 / r['floor_seconds_h100'], '.2f')} |")
    return "\n".join(lines) + "\n"


def run(size: str, groups: Sequence[str] = ("warp", "ncc", "mi"), out=None,
        resources_path: str = kernel_resources.DEFAULT_OUT) -> dict:
    """Counts and models the cases of ``groups`` (warp, ncc, mi) at ``size``: ``{"meta", "cases"}``."""
    out = sys.stdout if out is None else out
    resources = kernel_resources.load(resources_path)
    selected = [c for c in cases(size) if c.op.split("-")[0] in groups]
    print(f"counting {len(selected)} cases under the emulated launch (size {size}); ptxas report: "
          f"{resources_path if resources else 'none (python -m fastwarp.app.bench.kernel_resources)'}",
          file=out, flush=True)
    counted = count(selected)
    result_rows = []
    for case in selected:
        for r in rows(case, counted[case.name], resources):
            result_rows.append(r)
            print(f"{r['case']:42s} {r['kernel']:36s} counted/floor {f_or(r['counted_over_floor'])} "
                  f"H100 {r['modeled_seconds_h100'] * 1e6:9.0f} µs  x floor {f_or(r['modeled_over_floor_h100'])} "
                  f"({r['bound_h100']})", file=out, flush=True)
    meta = dict(tool="fastwarp.bench", device="cuda-model", size=size,
                resources=resources_path if resources else None,
                devices={d.name: d._asdict() for d in DEVICES})
    return dict(meta=meta, cases=result_rows)


def f_or(v) -> str:
    return "   –" if v is None else f"{v:5.2f}"


def main(argv: Sequence[str] | None = None) -> int:
    """The counting child of :func:`count`: ``--count-child JSON`` (the cases) prints their launches."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 2 or argv[0] != "--count-child":
        print("usage: fastwarp bench --device cuda-model [--size tiny|full] [--json F] [--markdown F]", file=sys.stderr)
        return 2
    selected = [Case(**{k: tuple(v) if isinstance(v, list) else v for k, v in c.items()}) for c in json.loads(argv[1])]
    print(json.dumps({c.name: _run_case(c) for c in selected}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
