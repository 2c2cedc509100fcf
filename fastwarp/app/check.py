"""`fastwarp check`: what this build has, and a quick check of the kernels on this machine.

Warps a synthetic volume by a smooth random 3-D deformation with fastwarp and with
VoxelMorph's grid_sample path, and computes the windowed NCC loss (forward and backward)
with fastwarp and with VoxelMorph's conv formula; checks they agree and prints the timings.
"""

import argparse

import torch

import fastwarp
from fastwarp.app.bench.baselines import VoxelMorphTransformer, voxelmorph_classic_ncc
from fastwarp.app.bench.cases import smooth_disp
from fastwarp.app.bench.measure import time_calls


def _voxelmorph_way(image, disp):
    return VoxelMorphTransformer(disp.shape[2:]).to(disp.device, disp.dtype)(image, disp)


def _voxelmorph_ncc(a, b, win=9):
    return -voxelmorph_classic_ncc(a, b, win)


def _median_ms(fn, device, repeats):
    return time_calls(fn, device, repeats).median_s * 1e3


def main(argv=None):
    parser = argparse.ArgumentParser(prog="fastwarp check", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() and fastwarp.has_cuda_kernels() else "cpu")
    parser.add_argument("--size", type=int, nargs=3, default=(96, 112, 128), metavar=("D", "H", "W"))
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args(argv)
    device = torch.device(args.device)

    print(f"fastwarp {fastwarp.__version__} on torch {torch.__version__}")
    print(f"  CUDA kernels built: {fastwarp.has_cuda_kernels()}; GPU visible: {torch.cuda.is_available()}")
    print(f"  CPU threads: {torch.get_num_threads()}; running on: {device}")

    gen = torch.Generator().manual_seed(0)
    image = torch.rand(1, 1, *args.size, generator=gen).to(device)
    disp = smooth_disp(args.size, seed=0).to(device)

    ours = fastwarp.warp(image, disp)
    theirs = _voxelmorph_way(image, disp)
    err = (ours - theirs).abs().max().item()
    print(f"  warp of a {'x'.join(map(str, args.size))} volume: max |fastwarp - voxelmorph way| = {err:.2e}")
    if err > 1e-4:
        raise SystemExit("fastwarp disagrees with the grid_sample reference: the build is broken")

    t_ours = _median_ms(lambda: fastwarp.warp(image, disp), device, args.repeats)
    t_theirs = _median_ms(lambda: _voxelmorph_way(image, disp), device, args.repeats)
    print(f"  forward, median of {args.repeats}: fastwarp {t_ours:.2f} ms, voxelmorph way {t_theirs:.2f} ms "
          f"({t_theirs / t_ours:.1f}x)")

    fixed = (0.7 * image + 0.3 * torch.rand(image.shape, generator=gen).to(device)).contiguous()
    moving = ours.detach().requires_grad_()
    ncc_ours, ncc_theirs = fastwarp.ncc(moving, fixed, 9), _voxelmorph_ncc(moving, fixed)
    err = abs(ncc_ours.item() - ncc_theirs.item())
    print(f"  windowed NCC (window 9): fastwarp {ncc_ours.item():.6f}, voxelmorph conv formula {ncc_theirs.item():.6f}")
    if err > 1e-4:
        raise SystemExit("fastwarp.ncc disagrees with the conv reference: the build is broken")

    with torch.no_grad():  # the conv formula's backward takes seconds on a CPU: forward only
        t_ours = _median_ms(lambda: fastwarp.ncc(moving, fixed, 9), device, 3)
        t_theirs = _median_ms(lambda: _voxelmorph_ncc(moving, fixed), device, 3)
    print(f"  NCC forward, median of 3: fastwarp {t_ours:.1f} ms, voxelmorph conv formula "
          f"{t_theirs:.1f} ms ({t_theirs / t_ours:.1f}x)")
    t_step = _median_ms(lambda: fastwarp.ncc(moving, fixed, 9).backward(), device, 3)
    print(f"  NCC forward+backward with fastwarp: {t_step:.1f} ms")
    print("  full benchmarks: pytest benchmarks/ --benchmark-group-by=group")


if __name__ == "__main__":
    main()
