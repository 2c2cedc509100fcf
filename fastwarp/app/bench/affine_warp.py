"""The fused affine warp against ``affine_grid`` + ``grid_sample`` (issue 22), one run:

    python -m fastwarp.app.bench.affine_warp --shape 160 192 224 --repeats 7 --json a.json --markdown a.md

For a 3-D float32 image resampled through an affine onto an output grid of the same shape
(``fastwarp.warp(image, None, affine=A)`` against ``F.grid_sample(image, F.affine_grid(theta))``
with ``theta`` the same map in normalized coordinates), and again with a displacement field
on the output grid (``A (p + u(p))`` against the grid ``affine_grid`` + the field, normalized):

- ``fwd``: the forward alone;
- ``fwdbwd``: forward and backward with the gradient to the affine only (affine registration);
- ``fwdbwd-all``: the gradients to the image, the field (when there is one) and the affine.

Times are medians of interleaved repeats (each repeat runs every implementation once), on the
CPU threads torch has (``--threads``); peak extra memory is measured per call by the
allocator's high-water mark where torch exposes it (CUDA), else by the sizes of the grid the
baseline builds (reported as ``grid_bytes``).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
import torch.nn.functional as F

import fastwarp

__all__ = ["run", "main", "to_theta"]


def to_theta(affine, in_shape, out_shape):
    """The voxel-index affine (B, nd, nd + 1) of ``fastwarp.warp(..., affine=)`` as
    ``affine_grid``'s theta (align_corners=True): normalized (x, y[, z]) of the output grid to
    normalized (x, y[, z]) of the image."""
    nd = len(in_shape)

    def to_norm(shape):
        m = torch.zeros(nd + 1, nd + 1, dtype=torch.float64)
        m[nd, nd] = 1
        for k, s in enumerate(shape):
            m[nd - 1 - k, k] = 2 / (s - 1)
            m[nd - 1 - k, nd] = -1
        return m

    b = affine.shape[0]
    square = torch.cat([affine.double(), torch.eye(nd + 1, dtype=torch.float64)[nd:].expand(b, 1, nd + 1)], 1)
    return (to_norm(in_shape) @ square @ torch.linalg.inv(to_norm(out_shape)))[:, :nd].to(affine.dtype)


def _inputs(shape, with_field, gen):
    nd = len(shape)
    image = torch.rand(1, 1, *shape, generator=gen)
    c, s = torch.cos(torch.tensor(0.1, dtype=torch.float64)), torch.sin(torch.tensor(0.1, dtype=torch.float64))
    lin = torch.eye(nd, dtype=torch.float64)  # a rotation in the first two axes, scaled
    lin[:2, :2] = torch.stack([torch.stack([1.05 * c, -s]), torch.stack([s, 0.95 * c])])
    centre = (torch.tensor(shape, dtype=torch.float64) - 1) / 2
    shift = centre - lin @ centre + 1.5
    affine = torch.cat([lin, shift[:, None]], 1).unsqueeze(0).float()
    field = None
    if with_field:
        from ..fields import smooth_noise

        field = smooth_noise((1, nd, *shape), [max(2, s // 16) for s in shape], gen, torch.float32) * 2.0
    grad_out = torch.randn(1, 1, *shape, generator=gen)
    return image, affine, field, grad_out


def _fastwarp(image, affine, field, grad_out, case):
    def call():
        a = affine.detach().requires_grad_(case != "fwd")
        x = image.detach().requires_grad_(case == "fwdbwd-all")
        u = None if field is None else field.detach().requires_grad_(case == "fwdbwd-all")
        out = fastwarp.warp(x, u, affine=a)
        if case != "fwd":
            out.backward(grad_out)
        return out

    return call


def _baseline(image, affine, field, grad_out, case):
    shape = image.shape[2:]
    nd = len(shape)
    # the displacement in normalized (x, y[, z]) units of the output grid, then mapped by theta's linear part
    scale = torch.tensor([2 / (s - 1) for s in reversed(shape)])

    def call():
        a = affine.detach().requires_grad_(case != "fwd")
        x = image.detach().requires_grad_(case == "fwdbwd-all")
        theta = to_theta(a, shape, shape)
        grid = F.affine_grid(theta, [1, 1, *shape], align_corners=True)
        if field is not None:
            u = field.detach().requires_grad_(case == "fwdbwd-all")
            un = u.flip(1).movedim(1, -1) * scale  # (1, *S, nd) normalized, reversed order
            grid = grid + torch.einsum("bij,b...j->b...i", theta[:, :, :nd], un)
        out = F.grid_sample(x, grid, align_corners=True)
        if case != "fwd":
            out.backward(grad_out)
        return out

    return call


def run(shape=(160, 192, 224), repeats=7, threads=None, cases=("fwd", "fwdbwd", "fwdbwd-all"), simd_level=None):
    """The table's rows; ``simd_level`` caps fastwarp's CPU lanes (0 scalar, 1 AVX2, 2 AVX-512)
    for the run, torch's own kernels unchanged."""
    if threads:
        torch.set_num_threads(threads)
    previous = torch.ops.fastwarp._cpu_simd_level(-1)
    if simd_level is not None:
        torch.ops.fastwarp._cpu_simd_level(simd_level)
    try:
        return _run(shape, repeats, cases)
    finally:
        torch.ops.fastwarp._cpu_simd_level(previous)


def _run(shape, repeats, cases):
    gen = torch.Generator().manual_seed(0)
    rows = []
    for with_field in (False, True):
        image, affine, field, grad_out = _inputs(shape, with_field, gen)
        for case in cases:
            impls = {"fastwarp": _fastwarp(image, affine, field, grad_out, case),
                     "affine_grid+grid_sample": _baseline(image, affine, field, grad_out, case)}
            outs = {k: f().detach() for k, f in impls.items()}  # warm-up, and the agreement
            diff = float((outs["fastwarp"] - outs["affine_grid+grid_sample"]).abs().max())
            times = {k: [] for k in impls}
            for _ in range(repeats):
                for k, f in impls.items():
                    t0 = time.perf_counter()
                    f()
                    times[k].append(time.perf_counter() - t0)
            med = {k: statistics.median(v) for k, v in times.items()}
            rows.append(dict(
                field=with_field, case=case, shape=list(shape),
                fastwarp_s=med["fastwarp"], baseline_s=med["affine_grid+grid_sample"],
                speedup=med["affine_grid+grid_sample"] / med["fastwarp"], max_abs_diff=diff,
                grid_bytes=4 * len(shape) * image[0, 0].numel(),
            ))
    return dict(rows=rows, threads=torch.get_num_threads(), torch=torch.__version__, cpu=platform.processor() or platform.machine(),
                simd_level=torch.ops.fastwarp._cpu_simd_level(), repeats=repeats,
                date=time.strftime("%Y-%m-%d"))


def markdown(result):
    lines = [f"3-D float32, {result['threads']} threads, fastwarp's CPU SIMD level {result['simd_level']}, "
             f"median of {result['repeats']} interleaved repeats, "
             f"torch {result['torch']}, {result['date']}", "",
             "| form | case | fastwarp (s) | affine_grid + grid_sample (s) | speed-up | max abs diff | baseline's grid |",
             "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        form = "A (p + u(p))" if r["field"] else "A p"
        lines.append(f"| {form} | {r['case']} | {r['fastwarp_s']:.3f} | {r['baseline_s']:.3f} | "
                     f"{r['speedup']:.2f}x | {r['max_abs_diff']:.1e} | {r['grid_bytes'] / 2**20:.0f} MiB |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", type=int, nargs="+", default=[160, 192, 224])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--simd-level", type=int, default=None, help="cap fastwarp's CPU lanes: 0 scalar, 1 AVX2, 2 AVX-512")
    p.add_argument("--json")
    p.add_argument("--markdown")
    args = p.parse_args(argv)
    result = run(tuple(args.shape), args.repeats, args.threads, simd_level=args.simd_level)
    text = markdown(result)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
