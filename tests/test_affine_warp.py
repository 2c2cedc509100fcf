"""fastwarp.warp's affine form, ``warp(image, disp, affine=A, out_shape=...)``: the image
sampled at A (p + disp(p)) on an output grid of any shape, no grid in memory
(csrc/common/sampling.h, Note [Affine sampling]). Against a float64 gather reference, against
affine_grid + grid_sample, against the plain warp, gradcheck of all three gradients, errors."""

import math

import pytest
import torch
import torch.nn.functional as F
from reference import affine_reference, smooth_field

import fastwarp
from fastwarp.app.bench.affine_warp import to_theta

PADDINGS = ["zeros", "border", "reflection"]


def random_affine(nd, batch, gen, dtype=torch.float64, in_shape=None, out_shape=None):
    """A rotation, anisotropic scale and shear about the centres of the grids, plus a shift:
    (batch, nd, nd + 1), mapping the output grid roughly onto the image with some points outside."""
    mats = []
    for _ in range(batch):
        lin = torch.eye(nd, dtype=dtype) + 0.15 * torch.randn(nd, nd, generator=gen, dtype=dtype)
        if nd == 2:
            t = 0.3 * torch.randn((), generator=gen, dtype=dtype)
            rot = torch.stack([torch.stack([t.cos(), -t.sin()]), torch.stack([t.sin(), t.cos()])])
            lin = rot @ lin
        c_in = (torch.tensor(in_shape, dtype=dtype) - 1) / 2
        c_out = (torch.tensor(out_shape, dtype=dtype) - 1) / 2
        shift = c_in - lin @ c_out + 0.7 * torch.randn(nd, generator=gen, dtype=dtype)
        mats.append(torch.cat([lin, shift[:, None]], 1))
    return torch.stack(mats)


CASES = [
    # (image shape, out shape, affine batch, disp batch or None)
    ((2, 3, 9, 11), (7, 13), 2, 1),
    ((2, 1, 9, 11), (10, 6), 1, None),
    ((2, 2, 7, 9, 6), (5, 8, 7), 1, 2),
    ((1, 2, 6, 7, 9), (6, 5, 8), 1, None),
    ((3, 1, 5, 6, 7), (4, 7, 5), 3, 3),
]


@pytest.mark.parametrize("shape,out_shape,affine_batch,disp_batch", CASES)
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("mode", ["linear", "nearest"])
def test_matches_float64_reference(device, gen, shape, out_shape, affine_batch, disp_batch, padding, mode):
    nd = len(shape) - 2
    image = torch.randn(*shape, generator=gen, dtype=torch.float64)
    affine = random_affine(nd, affine_batch, gen, in_shape=shape[2:], out_shape=out_shape)
    disp = None if disp_batch is None else smooth_field((disp_batch, nd, *out_shape), 1.5, gen)
    want = affine_reference(image, disp, affine, out_shape, mode, padding)
    got = fastwarp.warp(image.to(device), None if disp is None else disp.to(device), mode, padding,
                        affine=affine.to(device), out_shape=None if disp is not None else out_shape)
    assert got.shape == (*shape[:2], *out_shape)
    torch.testing.assert_close(got.cpu(), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("nd", [2, 3])
def test_float32_matches_affine_grid_and_grid_sample(device, gen, nd):
    """The no-field form is affine_grid + grid_sample(align_corners=True) with theta
    converted: normalized (x, y[, z]) <-> voxel index per grid, axes reversed."""
    in_shape, out_shape = ((13, 10), (9, 12)) if nd == 2 else ((9, 11, 8), (7, 10, 9))
    image = torch.rand(2, 2, *in_shape, generator=gen)
    affine = random_affine(nd, 2, gen, dtype=torch.float64, in_shape=in_shape, out_shape=out_shape)
    theta = to_theta(affine, in_shape, out_shape)  # affine_grid's theta for the same map (the benchmark's)
    grid = F.affine_grid(theta.float(), [2, 2, *out_shape], align_corners=True)
    want = F.grid_sample(image, grid, align_corners=True)
    got = fastwarp.warp(image.to(device), None, affine=affine.float().to(device), out_shape=out_shape)
    torch.testing.assert_close(got.cpu(), want, rtol=0, atol=2e-5)


def test_identity_affine_is_the_warp(device, gen):
    image = torch.randn(2, 2, 7, 8, 9, generator=gen)
    disp = smooth_field((2, 3, 7, 8, 9), 2.0, gen, torch.float32)
    eye = torch.eye(3, 4)
    got = fastwarp.warp(image.to(device), disp.to(device), "linear", "border", affine=eye.to(device))
    torch.testing.assert_close(got.cpu(), fastwarp.warp(image, disp, "linear", "border"), rtol=0, atol=1e-6)
    square = torch.eye(4)  # a homogeneous matrix is accepted too
    torch.testing.assert_close(fastwarp.warp(image, disp, affine=square), fastwarp.warp(image, disp))


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("nd", [2, 3])
def test_gradcheck_image_disp_affine(device, gen, padding, nd):
    shape, out_shape = ((2, 2, 5, 6), (4, 5)) if nd == 2 else ((2, 1, 4, 5, 4), (3, 4, 4))
    image = torch.randn(*shape, generator=gen, dtype=torch.float64, requires_grad=True)
    affine = random_affine(nd, 1, gen, in_shape=shape[2:], out_shape=out_shape).requires_grad_()
    disp = smooth_field((2, nd, *out_shape), 1.0, gen).requires_grad_()

    def f(image, disp, affine):
        return fastwarp.warp(image.to(device), disp.to(device), "linear", padding, affine=affine.to(device)).cpu()

    assert torch.autograd.gradcheck(f, (image, disp, affine))


def test_gradients_without_field_and_batched_affine(device, gen):
    image = torch.randn(3, 2, 6, 5, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    affine = random_affine(3, 3, gen, in_shape=(6, 5, 7), out_shape=(4, 6, 5)).requires_grad_()

    def f(image, affine):
        return fastwarp.warp(image.to(device), None, affine=affine.to(device), out_shape=(4, 6, 5)).cpu()

    assert torch.autograd.gradcheck(f, (image, affine))


@pytest.mark.sanitize  # scripts/emu_sanitize.sh: the affine kernels under ASan / TSan
def test_gradients_match_the_reference_in_float32(device, gen):
    """Each gradient alone (the backward computes only what is asked), against autograd
    through the gather reference."""
    image = torch.rand(2, 3, 11, 9, 10, generator=gen)
    disp = smooth_field((1, 3, 8, 9, 7), 1.5, gen, torch.float32)
    affine = random_affine(3, 2, gen, dtype=torch.float32, in_shape=(11, 9, 10), out_shape=(8, 9, 7))
    w = torch.randn(2, 3, 8, 9, 7, generator=gen)
    for wanted in range(3):
        leaves = [t.clone().requires_grad_(i == wanted) for i, t in enumerate((image, disp, affine))]
        (fastwarp.warp(*[t.to(device) for t in leaves[:2]], affine=leaves[2].to(device)).cpu() * w).sum().backward()
        ref = [t.detach().double().requires_grad_(i == wanted) for i, t in enumerate((image, disp, affine))]
        (affine_reference(ref[0], ref[1], ref[2], (8, 9, 7)) * w.double()).sum().backward()
        scale = ref[wanted].grad.abs().max()
        torch.testing.assert_close(leaves[wanted].grad.double(), ref[wanted].grad, rtol=0, atol=1e-4 * scale)


def test_label_map_keeps_dtype(device, gen):
    labels = torch.randint(0, 40, (2, 1, 9, 8, 7), generator=gen, dtype=torch.int16)
    affine = random_affine(3, 1, gen, in_shape=(9, 8, 7), out_shape=(6, 7, 8))
    got = fastwarp.warp(labels.to(device), None, "nearest", affine=affine.float().to(device), out_shape=(6, 7, 8))
    assert got.dtype == torch.int16
    want = affine_reference(labels, None, affine.float(), (6, 7, 8), "nearest")
    assert torch.equal(got.cpu(), want)


@pytest.mark.sanitize  # scripts/emu_sanitize.sh: the affine kernels under ASan / TSan
def test_deterministic_image_gradient(device, gen):
    from conftest import deterministic_algorithms

    image = torch.rand(1, 2, 8, 9, 7, generator=gen, requires_grad=True)
    affine = random_affine(3, 1, gen, dtype=torch.float32, in_shape=(8, 9, 7), out_shape=(9, 9, 9))
    w = torch.randn(1, 2, 9, 9, 9, generator=gen)
    grads = []
    for deterministic in (False, True, True):
        image.grad = None
        if deterministic:
            with deterministic_algorithms():
                (fastwarp.warp(image.to(device), None, affine=affine.to(device), out_shape=(9, 9, 9)).cpu() * w).sum().backward()
        else:
            (fastwarp.warp(image.to(device), None, affine=affine.to(device), out_shape=(9, 9, 9)).cpu() * w).sum().backward()
        grads.append(image.grad.clone())
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=1e-5)
    assert torch.equal(grads[1], grads[2])


def test_half_precision_error_bounded(gen):
    image = torch.rand(1, 1, 12, 11, 10, generator=gen)
    affine = random_affine(3, 1, gen, in_shape=(12, 11, 10), out_shape=(12, 11, 10))
    want = affine_reference(image.double(), None, affine, (12, 11, 10))
    naive = affine_reference(image.half(), None, affine.half(), (12, 11, 10))  # the same in half
    got = fastwarp.warp(image.half(), None, affine=affine.half())
    assert (got.double() - want).abs().max() <= 2 * (naive.double() - want).abs().max() + 1e-3


@pytest.mark.sanitize  # scripts/emu_sanitize.sh: the affine kernels under ASan / TSan
def test_non_finite_and_far_points_read_zero(device, gen):
    image = torch.rand(1, 1, 6, 7, 5, generator=gen)
    affine = random_affine(3, 1, gen, dtype=torch.float32, in_shape=(6, 7, 5), out_shape=(6, 7, 5))
    disp = smooth_field((1, 3, 6, 7, 5), 1.0, gen, torch.float32)
    disp[0, 0, 1, 2, 3] = float("nan")
    disp[0, 1, 2, 2, 2] = float("inf")
    disp[0, 2, 3, 3, 3] = 1e30
    for padding in PADDINGS:
        out = fastwarp.warp(image.to(device), disp.to(device), "linear", padding, affine=affine.to(device)).cpu()
        assert out[0, 0, 1, 2, 3] == 0 and torch.isfinite(out).all()
    bad = affine.clone()
    bad[0, 0, 0] = float("nan")
    out = fastwarp.warp(image.to(device), None, affine=bad.to(device)).cpu()
    assert (out == 0).all()


def test_empty_outputs(device, gen):
    image = torch.rand(2, 1, 5, 6, generator=gen)
    affine = torch.eye(2, 3)
    assert fastwarp.warp(image.to(device), None, affine=affine.to(device), out_shape=(0, 4)).shape == (2, 1, 0, 4)
    empty = fastwarp.warp(image[:0].to(device), None, affine=affine.to(device), out_shape=(3, 4))
    assert empty.shape == (0, 1, 3, 4)
    x = image[:0].clone().requires_grad_()
    a = affine.clone().requires_grad_()
    fastwarp.warp(x, None, affine=a, out_shape=(3, 4)).sum().backward()
    assert a.grad is not None and (a.grad == 0).all()


def test_non_contiguous_inputs(device, gen):
    image = torch.randn(1, 2, 9, 8, 10, generator=gen).transpose(2, 4)
    disp = smooth_field((1, 3, 7, 6, 8), 1.0, gen, torch.float32).transpose(3, 4).contiguous().transpose(3, 4)
    affine = random_affine(3, 1, gen, dtype=torch.float32, in_shape=image.shape[2:], out_shape=(7, 6, 8))
    affine_nc = torch.cat([affine, affine], 2)[:, :, ::2]  # strided
    affine_nc.copy_(affine)
    got = fastwarp.warp(image.to(device), disp.to(device), affine=affine_nc.to(device))
    want = fastwarp.warp(image.contiguous(), disp.contiguous(), affine=affine)
    torch.testing.assert_close(got.cpu(), want)


def test_second_order_and_forward_mode_raise(gen):
    image = torch.rand(1, 1, 5, 6, generator=gen, dtype=torch.float64)
    affine = torch.eye(2, 3, dtype=torch.float64).requires_grad_()
    out = fastwarp.warp(image, None, affine=affine)
    (g,) = torch.autograd.grad(out.square().sum(), affine, create_graph=True)
    with pytest.raises(RuntimeError, match="no second derivative"):
        g.sum().backward()
    with pytest.raises(RuntimeError, match="no forward mode"):
        torch.func.jvp(lambda a: fastwarp.warp(image, None, affine=a), (affine.detach(),), (torch.ones(2, 3, dtype=torch.float64),))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(affine=torch.eye(3, 4)), "affine must be"),
        (dict(affine=torch.eye(2, 3, dtype=torch.int64)), "floating-point"),
        (dict(affine=torch.eye(2, 3).expand(3, 2, 3)), "affine batch"),
        (dict(affine=torch.eye(2, 3), out_shape=(4,)), "out_shape must be 2"),
        (dict(affine=torch.eye(2, 3), out_shape=(4, -1)), "out_shape must be 2"),
        (dict(out_shape=(4, 4)), "out_shape is for the affine form"),
        (dict(affine=torch.eye(2, 3), disp=torch.zeros(1, 2, 4, 4), out_shape=(5, 4)), "must be disp's spatial shape"),
        (dict(affine=torch.eye(2, 3), disp=torch.zeros(3, 2, 4, 4)), "disp batch"),
    ],
)
def test_bad_arguments(kwargs, match):
    image = torch.rand(2, 1, 5, 6)
    disp = kwargs.pop("disp", None)
    with pytest.raises(RuntimeError, match=match):
        fastwarp.warp(image, disp, **kwargs)


def test_opcheck(gen):
    image = torch.randn(2, 2, 5, 6, 4, generator=gen, requires_grad=True)
    disp = smooth_field((1, 3, 4, 5, 3), 1.0, gen, torch.float32).requires_grad_()
    affine = random_affine(3, 2, gen, dtype=torch.float32, in_shape=(5, 6, 4), out_shape=(4, 5, 3)).requires_grad_()
    torch.library.opcheck(torch.ops.fastwarp.affine_warp.default, (image, disp, affine, [4, 5, 3], 0, 1),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))
    torch.library.opcheck(torch.ops.fastwarp.affine_warp.default, (image, None, affine, [4, 5, 3], 0, 0),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


def test_compiles_without_graph_breaks(gen, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    image = torch.randn(1, 1, 6, 7, 5, generator=gen)
    affine = random_affine(3, 1, gen, dtype=torch.float32, in_shape=(6, 7, 5), out_shape=(5, 5, 5)).requires_grad_()

    def loss(a):
        return fastwarp.warp(image, None, affine=a, out_shape=(5, 5, 5)).square().mean()

    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
    (g,) = torch.autograd.grad(compiled(affine), affine)
    (want,) = torch.autograd.grad(loss(affine), affine)
    torch.testing.assert_close(g, want)
    assert math.isfinite(float(g.abs().sum()))


@pytest.mark.parametrize("padding", ["zeros", "border"])
@pytest.mark.parametrize("mode", ["linear", "nearest"])
@pytest.mark.parametrize("with_field", [False, True])
def test_cpu_vector_lanes_match_the_scalar_code(gen, padding, mode, with_field):
    """The AVX2 / AVX-512 lanes (csrc/cpu/sample_simd_kernels.h, affine_source_lanes) against
    the scalar per-point code, forward and both backward outputs, at every level this CPU has;
    widths that are not a multiple of the lanes."""
    image = torch.rand(2, 2, 9, 10, 13, generator=gen)
    affine = random_affine(3, 2, gen, dtype=torch.float32, in_shape=(9, 10, 13), out_shape=(7, 8, 19))
    disp = smooth_field((1, 3, 7, 8, 19), 1.5, gen, torch.float32) if with_field else None
    w = torch.randn(2, 2, 7, 8, 19, generator=gen)
    supported = torch.ops.fastwarp._cpu_simd_level(-1)
    torch.ops.fastwarp._cpu_simd_level(2)
    top = torch.ops.fastwarp._cpu_simd_level(-1)
    results = []
    try:
        for level in range(top + 1):
            torch.ops.fastwarp._cpu_simd_level(level)
            leaves = [t.clone().requires_grad_(mode == "linear") if t is not None else None for t in (image, disp, affine)]
            out = fastwarp.warp(leaves[0], leaves[1], mode, padding, affine=leaves[2], out_shape=(7, 8, 19))
            grads = []
            if mode == "linear":
                (out * w).sum().backward()
                grads = [t.grad for t in leaves if t is not None]
            results.append((out.detach(), grads))
    finally:
        torch.ops.fastwarp._cpu_simd_level(supported)
    if top == 0:
        pytest.skip("this CPU has no AVX2")
    for out, grads in results[1:]:
        torch.testing.assert_close(out, results[0][0], rtol=0, atol=1e-6)
        for g, g0 in zip(grads, results[0][1]):
            torch.testing.assert_close(g, g0, rtol=1e-5, atol=1e-5 * float(g0.abs().max()))


def test_benchmark_runs_and_agrees_tiny():
    """python -m fastwarp.app.bench.affine_warp at a tiny size: every case runs and both
    implementations compute the same image."""
    from fastwarp.app.bench import affine_warp as bench

    result = bench.run(shape=(9, 10, 11), repeats=1)
    assert {(r["field"], r["case"]) for r in result["rows"]} == {
        (f, c) for f in (False, True) for c in ("fwd", "fwdbwd", "fwdbwd-all")}
    for r in result["rows"]:
        assert r["max_abs_diff"] < 1e-4 and r["fastwarp_s"] > 0 and r["baseline_s"] > 0
    assert "| A (p + u(p)) | fwdbwd-all |" in bench.markdown(result)
