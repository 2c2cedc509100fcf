"""The CUDA kernels at the sizes they are used at, and past 2**31 elements, against float64
references computed independently on the same device (scripts/gpu_check.sh runs these with
``python -m pytest -m cuda``).

Every check is a function of (device, shape) and runs twice: at a real size on a GPU (the
``cuda`` params, skipped without one, or when the GPU lacks the free memory the case needs),
and at a tiny size on the CPU, so that the checks and their references are exercised by every
test run, GPU or not.

- warp (3-D, trilinear; float32 and bfloat16; zeros / reflection / border) and grid_sample
  (align_corners both ways), values and both gradients, and the training path's forward
  Jacobian, at (2, 1, 160, 192, 224), against ``grid_sample`` in float64 on upcast inputs
  (``reference.voxelmorph_warp``). The derivative of linear interpolation jumps where a source
  coordinate crosses an integer, and float32 and float64 can put a coordinate within rounding
  of one on different sides: the coordinate gradients are compared away from such points.
- the deterministic image gradient (sort-based path) at the same size, run to run bitwise.
- ncc at (2, 1, 160, 192, 224) window 9 (float32, bfloat16) and (2, 16, 128, 128, 128) window 7
  (fused_lncc's benchmark case), values and both gradients, against the box-filter formula
  in float64 with the box sums taken by cumulative sums (a dense 9**3 float64 convolution would
  not fit).
- past 2**31 elements (the kernels' 64-bit index path): a uint8 label volume of 2.3e9 voxels
  warped (nearest) by a full float32 displacement field, checked on strided subsamples and the
  far corner against source indices computed on the CPU in the kernel's float32 arithmetic;
  grid_sample of the same volume at points spread over it; a float32 warp of 320 channels
  (2.2e9 elements) whose channels are scaled copies of one volume, values and both gradients
  against the float64 reference of that one volume.
"""

import gc
import math

import pytest
import torch
import torch.nn.functional as F

import fastwarp
from conftest import deterministic_algorithms
from fastwarp.app.fields import smooth_noise
from reference import conv_box_sum, ncc_reference, voxelmorph_warp

HAS_CUDA = torch.cuda.is_available() and fastwarp.has_cuda_kernels()
GIB = 1 << 30
F64 = torch.float64


def gpu(*values, gib, id):
    """A GPU case: marked ``cuda``, skipped without a GPU (and, in the test, without ``gib``
    GiB of free GPU memory)."""
    return pytest.param(
        "cuda", *values, gib,
        marks=[pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU")],
        id=f"cuda-{id}",
    )


def cpu(*values, id):
    return pytest.param("cpu", *values, 0, id=f"cpu-{id}")


@pytest.fixture(autouse=True)
def _release_memory():
    yield
    gc.collect()
    if HAS_CUDA:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def need(device, gib):
    if device == "cuda" and gib:
        free, _ = torch.cuda.mem_get_info()
        if free < gib * GIB:
            pytest.skip(f"needs {gib} GiB of free GPU memory, {free / GIB:.1f} GiB free")


# --------------------------------------------------------------------------- helpers


def smooth(shape, magnitude, gen, device, coarse=8):
    """A smooth random field (N, C, *spatial) in float64 on ``device``: normal noise at
    1/``coarse`` of the resolution (drawn on the CPU from ``gen``), upsampled trilinearly."""
    return smooth_noise(shape, [max(2, s // coarse) for s in shape[2:]], gen, F64, device) * magnitude


def image_like(shape, gen, device):
    """An image with structure at several scales: a smooth field plus a little noise."""
    return smooth(shape, 1.0, gen, device, coarse=6) + 0.05 * torch.rand(shape, generator=gen, dtype=F64).to(device)


def rel(got, ref, mask=None):
    """||got - ref|| / ||ref|| in float64, over ``mask`` (broadcast) when given."""
    diff, ref = got.detach().double() - ref.detach(), ref.detach()
    if mask is not None:
        diff, ref = diff * mask, ref * mask
    return float(diff.norm() / ref.norm())


def away_from_integers(coords, margin=1e-4):
    """True where every source coordinate (float64, voxel units) is more than ``margin`` from
    an integer: there the coordinate gradient of linear interpolation is continuous."""
    ok = None
    for x in coords:
        far = (x - x.round()).abs() > margin
        ok = far if ok is None else ok & far
    return ok


def warp_coords(disp64):
    """Source coordinates of a warp, (N, *spatial) per axis, float64."""
    spatial = disp64.shape[2:]
    pos = torch.meshgrid([torch.arange(s, dtype=F64, device=disp64.device) for s in spatial], indexing="ij")
    return [pos[k] + disp64[:, k] for k in range(len(spatial))]


def grid_coords(grid64, in_spatial, align_corners):
    """Source coordinates of grid_sample, (N, *out_spatial) per axis (D, H, W order), float64."""
    nd = len(in_spatial)
    coords = []
    for k, size in enumerate(in_spatial):
        v = grid64[..., nd - 1 - k]
        coords.append((v + 1) / 2 * (size - 1) if align_corners else ((v + 1) * size - 1) / 2)
    return coords


TOL = {  # relative L2 errors: values, gradients
    torch.float32: (1e-5, 1e-4),
    torch.bfloat16: (1e-2, 2e-2),
}


# --------------------------------------------------------------------------- warp


WARP_CASES = [
    (torch.float32, "zeros"),
    (torch.float32, "reflection"),
    (torch.bfloat16, "border"),
]
WARP_PARAMS = [cpu((2, 1, 9, 10, 11), dt, pad, id=f"{str(dt)[6:]}-{pad}") for dt, pad in WARP_CASES] + [
    gpu((2, 1, 160, 192, 224), dt, pad, gib=8, id=f"{str(dt)[6:]}-{pad}") for dt, pad in WARP_CASES
]


@pytest.mark.parametrize("device, shape, dtype, padding, gib", WARP_PARAMS)
def test_warp_real_size(device, shape, dtype, padding, gib):
    need(device, gib)
    g = torch.Generator().manual_seed(11)
    n, c, *spatial = shape
    image = image_like(shape, g, device).to(dtype)
    disp = smooth((n, 3, *spatial), 4.0, g, device).to(dtype)
    grad_out = torch.randn(shape, generator=g, dtype=F64).to(device).to(dtype)
    fwd_tol, grad_tol = TOL[dtype]

    # float64 reference on the same (rounded) inputs
    img64 = image.double().requires_grad_()
    disp64 = disp.double().requires_grad_()
    ref = voxelmorph_warp(img64, disp64, padding=padding)
    ref_gi, ref_gd = torch.autograd.grad(ref, (img64, disp64), grad_out.double())
    ref = ref.detach()
    smooth_points = away_from_integers(warp_coords(disp64.detach())).unsqueeze(1)

    im, d = image.clone().requires_grad_(), disp.clone().requires_grad_()
    out = fastwarp.warp(im, d, padding_mode=padding)
    assert out.dtype == dtype and out.shape == image.shape
    assert rel(out, ref) < fwd_tol, rel(out, ref)
    gi, gd = torch.autograd.grad(out, (im, d), grad_out)
    assert rel(gi, ref_gi) < grad_tol, rel(gi, ref_gi)
    assert rel(gd, ref_gd, smooth_points) < grad_tol, rel(gd, ref_gd, smooth_points)

    # the training path: only the displacement needs a gradient (forward Jacobian)
    d = disp.clone().requires_grad_()
    out = fastwarp.warp(image, d, padding_mode=padding)
    assert rel(out, ref) < fwd_tol
    (gd,) = torch.autograd.grad(out, d, grad_out)
    assert rel(gd, ref_gd, smooth_points) < grad_tol, rel(gd, ref_gd, smooth_points)


GRID_CASES = [
    (torch.float32, "zeros", False),
    (torch.float32, "border", True),
    (torch.bfloat16, "zeros", True),
]
GRID_PARAMS = [cpu((2, 1, 9, 10, 11), (7, 6, 8), dt, pad, ac, id=f"{str(dt)[6:]}-{pad}-{ac}")
               for dt, pad, ac in GRID_CASES] + [
    gpu((2, 1, 160, 192, 224), (96, 112, 128), dt, pad, ac, gib=8, id=f"{str(dt)[6:]}-{pad}-{ac}")
    for dt, pad, ac in GRID_CASES
]


@pytest.mark.parametrize("device, shape, out_spatial, dtype, padding, align_corners, gib", GRID_PARAMS)
def test_grid_sample_real_size(device, shape, out_spatial, dtype, padding, align_corners, gib):
    need(device, gib)
    g = torch.Generator().manual_seed(12)
    n = shape[0]
    x = image_like(shape, g, device).to(dtype)
    # a smooth grid over [-1.1, 1.1]: a little of it outside the image
    coarse = torch.rand(n, 3, 5, 6, 7, generator=g, dtype=F64) * 2.2 - 1.1
    grid = F.interpolate(coarse.to(device), size=out_spatial, mode="trilinear", align_corners=True)
    grid = grid.movedim(1, -1).contiguous().to(dtype)
    grad_out = torch.randn(n, shape[1], *out_spatial, generator=g, dtype=F64).to(device).to(dtype)
    fwd_tol, grad_tol = TOL[dtype]

    x64, grid64 = x.double().requires_grad_(), grid.double().requires_grad_()
    ref = F.grid_sample(x64, grid64, "bilinear", padding, align_corners)
    ref_gx, ref_gg = torch.autograd.grad(ref, (x64, grid64), grad_out.double())
    ref = ref.detach()
    smooth_points = away_from_integers(grid_coords(grid64.detach(), shape[2:], align_corners)).unsqueeze(-1)

    xx, gg = x.clone().requires_grad_(), grid.clone().requires_grad_()
    out = fastwarp.grid_sample(xx, gg, "bilinear", padding, align_corners)
    assert out.dtype == dtype and out.shape == ref.shape
    assert rel(out, ref) < fwd_tol, rel(out, ref)
    gx, ggrid = torch.autograd.grad(out, (xx, gg), grad_out)
    assert rel(gx, ref_gx) < grad_tol, rel(gx, ref_gx)
    assert rel(ggrid, ref_gg, smooth_points) < grad_tol, rel(ggrid, ref_gg, smooth_points)


@pytest.mark.parametrize("device, shape, gib", [
    cpu((2, 1, 9, 10, 11), id="small"),
    gpu((2, 1, 160, 192, 224), gib=8, id="2x160x192x224"),
])
def test_deterministic_image_gradient_real_size(device, shape, gib):
    need(device, gib)
    g = torch.Generator().manual_seed(13)
    n, c, *spatial = shape
    image = image_like(shape, g, device).float()
    disp = smooth((n, 3, *spatial), 4.0, g, device).float()
    grad_out = torch.randn(shape, generator=g).to(device)
    img64 = image.double().requires_grad_()
    voxelmorph_warp(img64, disp.double()).backward(grad_out.double())
    grads = []
    with deterministic_algorithms():
        for _ in range(2):
            im = image.clone().requires_grad_()
            (gi,) = torch.autograd.grad(fastwarp.warp(im, disp), im, grad_out)
            grads.append(gi)
    assert torch.equal(grads[0], grads[1])
    assert rel(grads[0], img64.grad) < 1e-5, rel(grads[0], img64.grad)


# --------------------------------------------------------------------------- ncc


def box_sum(x, window):
    """Zero-padded box sums of ``x`` (N, C, *spatial) over ``window``, one axis at a time by
    cumulative sums (exact enough in float64, and linear in the volume)."""
    for k, w in enumerate(window):
        dim = 2 + k
        size, h = x.shape[dim], w // 2
        pad = [0, 0] * (x.dim() - 1 - dim) + [h + 1, h]
        c = F.pad(x, pad).cumsum(dim)
        x = c.narrow(dim, w, size) - c.narrow(dim, 0, size)
    return x


def ncc_box_reference(a, b, window):
    """The local NCC map (VoxelMorph's formula, zero padding) with cumulative-sum box sums."""
    return ncc_reference(a, b, window, box_sum=box_sum)


def test_box_reference_matches_conv_formula():
    """The cumulative-sum reference is the classic dense-convolution formula."""
    g = torch.Generator().manual_seed(14)
    a = torch.rand(2, 3, 9, 8, 11, generator=g, dtype=F64)
    b = 0.6 * a + 0.4 * torch.rand(a.shape, generator=g, dtype=F64)
    window = (5, 3, 7)
    torch.testing.assert_close(box_sum(a, window), conv_box_sum(a, window), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ncc_box_reference(a, b, window), ncc_reference(a, b, window), rtol=1e-10, atol=1e-12)


NCC_PARAMS = [
    cpu((2, 1, 9, 10, 11), 5, torch.float32, id="float32-w5"),
    cpu((2, 3, 8, 9, 7), 3, torch.bfloat16, id="bfloat16-w3"),
    gpu((2, 1, 160, 192, 224), 9, torch.float32, gib=12, id="2x1x160x192x224-w9-float32"),
    gpu((2, 1, 160, 192, 224), 9, torch.bfloat16, gib=12, id="2x1x160x192x224-w9-bfloat16"),
    gpu((2, 16, 128, 128, 128), 7, torch.float32, gib=40, id="2x16x128x128x128-w7-float32"),
]


@pytest.mark.parametrize("device, shape, window, dtype, gib", NCC_PARAMS)
def test_ncc_real_size(device, shape, window, dtype, gib):
    need(device, gib)
    g = torch.Generator().manual_seed(15)
    a = image_like(shape, g, device)
    b = (0.6 * a + 0.4 * torch.rand(shape, generator=g, dtype=F64).to(device)).to(dtype)
    a = a.to(dtype)
    weights = torch.rand(shape, generator=g, dtype=F64).to(device).to(dtype)  # d loss / d cc
    win = (window,) * 3
    fwd_tol, grad_tol = TOL[dtype]

    a64, b64 = a.double().requires_grad_(), b.double().requires_grad_()
    ref = ncc_box_reference(a64, b64, win)
    ref_ga, ref_gb = torch.autograd.grad(ref, (a64, b64), weights.double())
    ref = ref.detach()
    del a64, b64

    fa, fb = a.clone().requires_grad_(), b.clone().requires_grad_()
    cc = fastwarp.ncc(fa, fb, window, reduction="none")
    assert cc.dtype == dtype and cc.shape == a.shape
    assert rel(cc, ref) < fwd_tol, rel(cc, ref)
    ga, gb = torch.autograd.grad(cc, (fa, fb), weights)
    assert rel(ga, ref_ga) < grad_tol, rel(ga, ref_ga)
    assert rel(gb, ref_gb) < grad_tol, rel(gb, ref_gb)
    # the loss as training uses it: mean, gradient to the moving image only
    fa = a.clone().requires_grad_()
    loss = fastwarp.losses.NCC(window)(fa, b)
    assert abs(float(loss.detach()) + float(ref.mean())) <= fwd_tol * abs(float(ref.mean()))
    (ga,) = torch.autograd.grad(loss, fa)
    a64 = a.double().requires_grad_()
    (ref_ga,) = torch.autograd.grad(-ncc_box_reference(a64, b.double(), win).mean(), a64)
    assert rel(ga, ref_ga) < grad_tol, rel(ga, ref_ga)


# --------------------------------------------------------------------------- past 2**31 elements


def label_volume(shape, device, seed):
    """uint8 labels in [1, 255], drawn in slabs of at most 2**27 voxels (so that the random
    generator itself never indexes past 2**31)."""
    _, _, d, h, w = shape
    labels = torch.empty(shape, dtype=torch.uint8, device=device)
    g = torch.Generator(device=device).manual_seed(seed)
    step = max(1, (1 << 27) // (h * w))
    for z in range(0, d, step):
        m = min(step, d - z)
        labels[0, 0, z:z + m] = torch.randint(1, 256, (m, h, w), generator=g, device=device, dtype=torch.uint8)
    return labels


def wave_displacement(spatial, device, seed, amplitude=3.0):
    """A smooth float32 displacement (1, 3, *spatial) that varies along every axis, written in
    place from 1-D profiles (no temporary of the field's size):
    u_k = f_k(z) + g_k(y) + h_k(x) + p_k(z) q_k(x)."""
    g = torch.Generator().manual_seed(seed)
    disp = torch.empty((1, 3, *spatial), dtype=torch.float32, device=device)

    def profile(n, amp):
        t = torch.arange(n, dtype=F64) / max(n - 1, 1)
        freq = 0.5 + 2.5 * torch.rand(2, generator=g, dtype=F64)
        phase = 2 * math.pi * torch.rand(2, generator=g, dtype=F64)
        p = amp * (torch.sin(2 * math.pi * freq[0] * t + phase[0]) + 0.5 * torch.sin(2 * math.pi * freq[1] * t + phase[1]))
        return p.float().to(device)

    d, h, w = spatial
    a = amplitude / 3
    for k in range(3):
        u = disp[0, k]
        u.copy_(profile(d, a)[:, None, None] + profile(h, a)[None, :, None])
        u.add_(profile(w, a)[None, None, :])
        u.addcmul_(profile(d, 1.0)[:, None, None], profile(w, a / 2)[None, None, :])
    return disp


def nearest_warp_reference(labels_cpu, disp_block, zs, ys, xs):
    """fastwarp.warp(labels, disp, 'nearest') at the points zs x ys x xs, on the CPU: the
    source index is round-half-even(float32(position) + disp) as in the kernel; zero outside."""
    d, h, w = labels_cpu.shape[2:]
    pos = torch.meshgrid(zs, ys, xs, indexing="ij")
    inside = torch.ones(pos[0].shape, dtype=torch.bool)
    idx = []
    for k, size in enumerate((d, h, w)):
        i = torch.round(pos[k].to(torch.float32) + disp_block[k]).to(torch.int64)
        inside &= (i >= 0) & (i < size)
        idx.append(i.clamp(0, size - 1))
    flat = (idx[0] * h + idx[1]) * w + idx[2]
    vals = labels_cpu.reshape(-1)[flat.reshape(-1)].reshape(flat.shape)
    return torch.where(inside, vals, torch.zeros((), dtype=vals.dtype))


@pytest.mark.parametrize("device, spatial, gib", [
    cpu((13, 17, 19), id="small"),
    gpu((1100, 1024, 2048), gib=40, id="2.3e9-voxels"),
])
def test_labels_past_int32(device, spatial, gib):
    """A uint8 label volume of more voxels than int32 can count (2.3e9 on the GPU), warped
    with mode='nearest' by a full float32 field (27 GiB) and sampled by grid_sample."""
    need(device, gib)
    d, h, w = spatial
    shape = (1, 1, d, h, w)
    labels = label_volume(shape, device, seed=16)
    disp = wave_displacement(spatial, device, seed=17)
    out = fastwarp.warp(labels, disp, mode="nearest")
    assert out.dtype == torch.uint8 and out.shape == labels.shape
    labels_cpu = labels.cpu()
    if device == "cuda":
        assert labels.numel() > 2**31 and disp.numel() > 2**31

    # strided subsamples spanning the volume, and a block at the far corner (flat offsets
    # past 2**31 in the image, the field and the output)
    blocks = [
        (slice(0, d, max(1, d // 29)), slice(0, h, max(1, h // 31)), slice(0, w, max(1, w // 37))),
        (slice(max(0, d - 3), d), slice(max(0, h - 40), h), slice(max(0, w - 50), w)),
        (slice(d // 2, d // 2 + 2), slice(0, h, 7), slice(0, w, 5)),
    ]
    checked = moved = 0
    for bz, by, bx in blocks:
        got = out[0, 0, bz, by, bx].cpu()
        zs, ys, xs = (torch.arange(n)[s] for n, s in zip(spatial, (bz, by, bx)))
        block = disp[0, :, bz, by, bx].cpu()
        expected = nearest_warp_reference(labels_cpu, block, zs, ys, xs)
        mismatches = int((got != expected).sum())
        assert mismatches == 0, f"{mismatches} of {got.numel()} subsampled voxels differ in block {bz, by, bx}"
        checked += got.numel()
        moved += int((block.abs() >= 0.5).any(0).sum())
    # the field moves most points: the check compares gathers, not a copy
    assert moved > checked // 2, (moved, checked)
    del out, disp

    # grid_sample (align_corners=False, nearest) of the whole volume at points spread over
    # it, half of them in its last planes; each point is a voxel centre jittered by < 0.3
    g = torch.Generator().manual_seed(18)
    m = 4096
    far = torch.rand(m, generator=g, dtype=F64) < 0.5
    iz = torch.where(far, d - 1 - torch.randint(0, min(4, d), (m,), generator=g),
                     torch.randint(0, d, (m,), generator=g))
    iy = torch.randint(0, h, (m,), generator=g)
    ix = torch.randint(0, w, (m,), generator=g)
    jitter = (torch.rand(3, m, generator=g, dtype=F64) - 0.5) * 0.6
    norm = [(2 * (i.double() + j) + 1) / size - 1 for i, j, size in zip((iz, iy, ix), jitter, (d, h, w))]
    grid = torch.stack([norm[2], norm[1], norm[0]], dim=-1).float().reshape(1, 16, 16, 16, 3).to(device)
    got = fastwarp.grid_sample(labels, grid, mode="nearest", align_corners=False)
    expected = labels_cpu.reshape(-1)[(iz * h + iy) * w + ix].reshape(1, 1, 16, 16, 16)
    assert torch.equal(got.cpu(), expected)


@pytest.mark.parametrize("device, shape, gib", [
    cpu((1, 5, 6, 7, 8), id="small"),
    gpu((1, 320, 160, 192, 224), gib=48, id="2.2e9-elements"),
])
def test_float_channels_past_int32(device, shape, gib):
    """A float32 warp of (1, 320, 160, 192, 224), 2.2e9 elements, forward and both gradients
    (the image gradient by atomics into 8.8 GB). Channel c is s_c times one volume and its
    output gradient t_c times one field, so every channel checks against the float64
    reference of that one volume: out_c = s_c ref, grad_image_c = t_c ref_gi, and
    grad_disp = (sum_c s_c t_c) ref_gd."""
    need(device, gib)
    g = torch.Generator().manual_seed(19)
    n, c, *spatial = shape
    base = image_like((1, 1, *spatial), g, device).float()
    disp = smooth((1, 3, *spatial), 4.0, g, device).float()
    g_base = torch.randn((1, 1, *spatial), generator=g).to(device)
    s = torch.linspace(0.5, 2.0, c, device=device)
    t = torch.linspace(0.25, 1.25, c, device=device)

    base64, disp64 = base.double().requires_grad_(), disp.double().requires_grad_()
    ref = voxelmorph_warp(base64, disp64)
    ref_gi, ref_gd = torch.autograd.grad(ref, (base64, disp64), g_base.double())
    ref = ref.detach()
    smooth_points = away_from_integers(warp_coords(disp64.detach())).unsqueeze(1)
    del base64, disp64

    image = (base * s.view(1, c, 1, 1, 1)).requires_grad_()
    d = disp.clone().requires_grad_()
    if device == "cuda":
        assert image.numel() > 2**31
    out = fastwarp.warp(image, d)
    channels = sorted({0, c // 2, c - 1})
    for ch in channels:
        assert rel(out[:, ch], float(s[ch]) * ref[:, 0]) < 1e-5, (ch, rel(out[:, ch], float(s[ch]) * ref[:, 0]))
    grad_out = g_base * t.view(1, c, 1, 1, 1)
    gi, gd = torch.autograd.grad(out, (image, d), grad_out)
    del out, grad_out, image
    for ch in channels:
        assert rel(gi[:, ch], float(t[ch]) * ref_gi[:, 0]) < 1e-5, (ch, rel(gi[:, ch], float(t[ch]) * ref_gi[:, 0]))
    scale = float((s.double() * t.double()).sum())
    assert rel(gd, scale * ref_gd, smooth_points) < 1e-4, rel(gd, scale * ref_gd, smooth_points)
