"""A Hessian-vector product of a registration loss through the warp, ``mean((warp(image, u) -
fixed)^2)``, by double backward: fastwarp against VoxelMorph's warp on torch's grid_sample (whose
second derivatives are torch's own), with each one's first-order step for scale, on the same
inputs in one run; and their agreement.

    python benchmarks/second_order.py [--size 96 112 128] [--threads 2] [--repeats 5]
"""

import argparse
import statistics
import sys
import time

import torch

import fastwarp
from fastwarp.app.bench.baselines import VoxelMorphTransformer
from fastwarp.app.bench.cases import smooth_disp


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, nargs=3, default=[96, 112, 128])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    spatial = tuple(args.size)
    image = torch.rand(1, 1, *spatial, generator=g)
    fixed = torch.rand(1, 1, *spatial, generator=g)
    disp = smooth_disp(spatial, 0)
    v = torch.randn(disp.shape, generator=g)
    voxelmorph = VoxelMorphTransformer(spatial)
    warps = {"fastwarp": lambda i, d: fastwarp.warp(i, d), "grid_sample (VoxelMorph's warp)": voxelmorph}

    def first(warp):
        d = disp.clone().requires_grad_()
        return torch.autograd.grad((warp(image, d) - fixed).square().mean(), d)[0]

    def hvp(warp):
        d = disp.clone().requires_grad_()
        (gd,) = torch.autograd.grad((warp(image, d) - fixed).square().mean(), d, create_graph=True)
        return torch.autograd.grad((gd * v).sum(), d)[0]

    def median_ms(f):
        f()
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            f()
            times.append(time.perf_counter() - t0)
        return statistics.median(times) * 1e3

    a, b = (hvp(w) for w in warps.values())
    print(f"{'x'.join(map(str, spatial))}, float32, {args.threads} thread(s), median of {args.repeats}; "
          f"HVPs agree to {float((a - b).abs().max() / b.abs().max()):.2e} of their largest entry")
    for name, w in warps.items():
        print(f"  {name:32s} first-order step {median_ms(lambda: first(w)):8.1f} ms   "
              f"Hessian-vector product {median_ms(lambda: hvp(w)):8.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
