"""Plain-PyTorch references for the tests, independent of fastwarp's kernels.

``warp_reference`` gathers the interpolation corners explicitly (no grid_sample), so it
checks the voxel-unit convention on its own; ``voxelmorph_warp`` is VoxelMorph's
SpatialTransformer (identity grid + flow, normalized, grid_sample with align_corners=True), the
path fastwarp.warp replaces; ``ncc_reference`` is the conv (box-filter) NCC; ``mi_reference``
the mutual information from dense (voxels x bins) Parzen weights. The grid and the
smooth random fields are the package's plain-PyTorch ones (fastwarp.app.fields), shared with
the benchmarks' baselines and the augmentation.
"""

import itertools
import math

import torch
import torch.nn.functional as F

from fastwarp.app.fields import smooth_noise, voxelmorph_grid


def _reflect(x, size):
    """Reflection about the corner voxel centres 0 and size - 1 (align_corners=True)."""
    if size == 1:
        return torch.zeros_like(x)
    span = size - 1
    x = (x % (2 * span)).abs()
    return torch.where(x > span, 2 * span - x, x)


def source_index(x, size, padding):
    if padding == "border":
        return x.clamp(0, size - 1)
    if padding == "reflection":
        return _reflect(x, size).clamp(0, size - 1)
    return x


def warp_reference(image, disp, mode="linear", padding="zeros"):
    """image (N, C, *S), disp (N or 1, nd, *S) in voxel units: channel k displaces axis k."""
    nd = image.dim() - 2
    disp = disp.expand(image.shape[0], *disp.shape[1:])
    pos = torch.meshgrid([torch.arange(s, dtype=disp.dtype) for s in image.shape[2:]], indexing="ij")
    return sample_at_reference(image, torch.stack([pos[k] + disp[:, k] for k in range(nd)], 1), mode, padding)


def affine_reference(image, disp, affine, out_shape, mode="linear", padding="zeros"):
    """image sampled at A (p + disp(p)) (disp may be None) on an output grid of out_shape:
    affine (N or 1, nd, nd + 1) in voxel indices, axis order (Note [Affine sampling])."""
    nd = image.dim() - 2
    n = image.shape[0]
    pos = torch.meshgrid([torch.arange(s, dtype=affine.dtype) for s in out_shape], indexing="ij")
    q = torch.stack(pos).unsqueeze(0).expand(n, nd, *out_shape)
    if disp is not None:
        q = q + disp.expand(n, *disp.shape[1:])
    a = affine.expand(n, nd, nd + 1)
    y = torch.einsum("nkj,nj...->nk...", a[:, :, :nd], q) + a[:, :, nd].reshape(n, nd, *([1] * nd))
    return sample_at_reference(image, y, mode, padding)


def sample_at_reference(image, source, mode="linear", padding="zeros"):
    """image (N, C, *S_in) sampled at source indices (N, nd, *S_out) (component k along axis k)."""
    nd = image.dim() - 2
    spatial = image.shape[2:]
    out_spatial = source.shape[2:]
    n, c = image.shape[:2]
    coords = [source_index(source[:, k], spatial[k], padding) for k in range(nd)]
    flat = image.reshape(n, c, -1)
    strides = [int(torch.tensor(spatial[k + 1 :]).prod()) for k in range(nd)]
    out = torch.zeros(n, c, *out_spatial, dtype=image.dtype)

    def gather(idx):  # idx: nd tensors (n, *S) of integer indices; zero outside
        inside = torch.ones_like(idx[0], dtype=torch.bool)
        flat_idx = torch.zeros_like(idx[0])
        for k in range(nd):
            inside &= (idx[k] >= 0) & (idx[k] < spatial[k])
            flat_idx = flat_idx + idx[k].clamp(0, spatial[k] - 1) * strides[k]
        vals = torch.gather(flat, 2, flat_idx.reshape(n, 1, -1).expand(n, c, -1)).reshape(n, c, *out_spatial)
        return vals * inside.unsqueeze(1)

    if mode == "nearest":
        idx = [torch.round(x).long() for x in coords]  # round half to even, like grid_sample
        return gather(idx)
    lo = [torch.floor(x) for x in coords]
    frac = [(x - f).to(image.dtype) for x, f in zip(coords, lo)]
    for bits in itertools.product((0, 1), repeat=nd):
        w = torch.ones_like(frac[0])
        for k, b in enumerate(bits):
            w = w * (frac[k] if b else 1 - frac[k])
        idx = [lo[k].long() + b for k, b in enumerate(bits)]
        out = out + w.unsqueeze(1) * gather(idx)
    return out


def voxelmorph_warp(image, flow, mode="bilinear", padding="zeros"):
    grid = voxelmorph_grid(flow).expand(image.shape[0], *([-1] * (flow.dim() - 1)))
    return F.grid_sample(image, grid, mode=mode, padding_mode=padding, align_corners=True)


def smooth_field(shape, magnitude, generator=None, dtype=torch.float64):
    """A smooth random displacement (N, nd, *S) in voxels: noise on a grid of a node every 4
    voxels, upsampled, times ``magnitude``."""
    return smooth_noise(shape, [max(2, s // 4) for s in shape[2:]], generator, dtype) * magnitude


def conv_box_sum(x, window):
    """Sums over each window, per channel, zero padding: a dense box-filter convolution."""
    conv = (F.conv2d, F.conv3d)[x.dim() - 4]
    c = x.shape[1]
    filt = torch.ones(c, 1, *window, dtype=x.dtype, device=x.device)
    return conv(x, filt, padding=[w // 2 for w in window], groups=c)


def ncc_reference(a, b, window, eps=1e-5, box_sum=conv_box_sum):
    """VoxelMorph's classic local NCC map, per channel, zero padding, from the window sums
    ``box_sum(x, window)`` of a, b, a², b², ab (by default a dense box convolution)."""
    n = math.prod(window)
    si, sj, sii, sjj, sij = (box_sum(x, window) for x in (a, b, a * a, b * b, a * b))
    cross = sij - si * sj / n
    var_a = sii - si * si / n
    var_b = sjj - sj * sj / n
    return cross * cross / (var_a * var_b + eps)


def parzen_weights_reference(x, lo, hi, bins, kernel, sigma):
    """(V,) intensities -> (V, bins) Parzen weights, dense, by the definition of
    fastwarp.mi's docstring (plain torch; differentiable in x, the range constant)."""
    k = torch.arange(bins, dtype=x.dtype)
    lo, hi = float(lo), float(hi)
    if kernel == "bspline":
        u = (1 + (x - lo) * (bins - 3) / (hi - lo)).clamp(1, bins - 2)
        d = (u[:, None] - k).abs()
        inner = (4 - 6 * d**2 + 3 * d**3) / 6
        outer = (2 - d).clamp_min(0) ** 3 / 6
        return torch.where(d < 1, inner, outer)
    u = ((x - lo) * (bins - 1) / (hi - lo)).clamp(0, bins - 1)
    d = u[:, None] - k
    g = torch.exp(-(d**2) / (2 * sigma**2)) * (d.abs() <= 6 * sigma)
    return g / g.sum(1, keepdim=True)


def mi_reference(a, b, bins=32, kernel="bspline", sigma=0.5, range_a=None, range_b=None, mask=None,
                 normalized=False):
    """fastwarp.mi's definition in float64 plain torch, per (n, c): (N, C)."""
    rows = []
    for n in range(a.shape[0]):
        row = []
        for c in range(a.shape[1]):
            x, y = a[n, c].reshape(-1).double(), b[n, c].reshape(-1).double()
            if mask is not None:
                keep = mask.expand(a.shape)[n, c].reshape(-1)
                x, y = x[keep], y[keep]
            ra = range_a if range_a is not None else (x.detach().min(), x.detach().max())
            rb = range_b if range_b is not None else (y.detach().min(), y.detach().max())
            wa = parzen_weights_reference(x, *ra, bins, kernel, sigma)
            wb = parzen_weights_reference(y, *rb, bins, kernel, sigma)
            p = wa.T @ wb
            p = p / p.sum()

            def entropy(q):
                return -(q * torch.log(torch.where(q > 0, q, 1.0))).sum()

            ha, hb, hab = entropy(p.sum(1)), entropy(p.sum(0)), entropy(p)
            row.append((ha + hb) / hab if normalized else ha + hb - hab)
        rows.append(torch.stack(row))
    return torch.stack(rows)
