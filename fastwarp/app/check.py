"""``fastwarp check``: what this build has, and a quick check of the kernels on this machine.

Warps a synthetic volume by a smooth random 3-D deformation with fastwarp and with
VoxelMorph's grid_sample path, and computes the windowed NCC loss (forward and backward)
with fastwarp and with VoxelMorph's conv formula; checks they agree and prints the timings.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

import fastwarp

from .bench.baselines import VoxelMorphTransformer, voxelmorph_classic_ncc
from .bench.cases import smooth_disp
from .bench.measure import time_calls

__all__ = ["check", "CheckFailed"]


class CheckFailed(RuntimeError):
    """fastwarp disagrees with the plain-PyTorch formulas: the build is broken."""


def _voxelmorph_way(image, disp):
    return VoxelMorphTransformer(disp.shape[2:]).to(disp.device, disp.dtype)(image, disp)


def _voxelmorph_ncc(a, b, win=9):
    return -voxelmorph_classic_ncc(a, b, win)


def _median_ms(fn, device, repeats):
    return time_calls(fn, device, repeats).median_s * 1e3


def check(device: str | None = None, size: Sequence[int] = (96, 112, 128), repeats: int = 9) -> None:
    """Print what this build has, then check and time the warp and the NCC loss on a ``size``
    volume on ``device`` (default: the GPU when there is one and fastwarp has CUDA kernels).
    Raises :class:`CheckFailed` where fastwarp disagrees with VoxelMorph's formulas."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() and fastwarp.has_cuda_kernels() else "cpu"
    device = torch.device(device)
    size = tuple(size)

    print(f"fastwarp {fastwarp.__version__} on torch {torch.__version__}")
    print(f"  CUDA kernels built: {fastwarp.has_cuda_kernels()}; GPU visible: {torch.cuda.is_available()}")
    print(f"  CPU threads: {torch.get_num_threads()}; running on: {device}")

    gen = torch.Generator().manual_seed(0)
    image = torch.rand(1, 1, *size, generator=gen).to(device)
    disp = smooth_disp(size, seed=0).to(device)

    ours = fastwarp.warp(image, disp)
    theirs = _voxelmorph_way(image, disp)
    err = (ours - theirs).abs().max().item()
    print(f"  warp of a {'x'.join(map(str, size))} volume: max |fastwarp - voxelmorph way| = {err:.2e}")
    if err > 1e-4:
        raise CheckFailed("fastwarp disagrees with the grid_sample reference: the build is broken")

    t_ours = _median_ms(lambda: fastwarp.warp(image, disp), device, repeats)
    t_theirs = _median_ms(lambda: _voxelmorph_way(image, disp), device, repeats)
    print(f"  forward, median of {repeats}: fastwarp {t_ours:.2f} ms, voxelmorph way {t_theirs:.2f} ms "
          f"({t_theirs / t_ours:.1f}x)")

    fixed = (0.7 * image + 0.3 * torch.rand(image.shape, generator=gen).to(device)).contiguous()
    moving = ours.detach().requires_grad_()
    ncc_ours, ncc_theirs = fastwarp.ncc(moving, fixed, 9), _voxelmorph_ncc(moving, fixed)
    err = abs(ncc_ours.item() - ncc_theirs.item())
    print(f"  windowed NCC (window 9): fastwarp {ncc_ours.item():.6f}, voxelmorph conv formula {ncc_theirs.item():.6f}")
    if err > 1e-4:
        raise CheckFailed("fastwarp.ncc disagrees with the conv reference: the build is broken")

    with torch.no_grad():  # the conv formula's backward takes seconds on a CPU: forward only
        t_ours = _median_ms(lambda: fastwarp.ncc(moving, fixed, 9), device, 3)
        t_theirs = _median_ms(lambda: _voxelmorph_ncc(moving, fixed), device, 3)
    print(f"  NCC forward, median of 3: fastwarp {t_ours:.1f} ms, voxelmorph conv formula "
          f"{t_theirs:.1f} ms ({t_theirs / t_ours:.1f}x)")
    t_step = _median_ms(lambda: fastwarp.ncc(moving, fixed, 9).backward(), device, 3)
    print(f"  NCC forward+backward with fastwarp: {t_step:.1f} ms")
    print("  full benchmarks: pytest benchmarks/ --benchmark-group-by=group")
