"""fastwarp.app.metrics: Dice on hand-computed label maps, the Jacobian determinant against
analytic fields, the folding fraction, and evaluate()."""

import math

import pytest
import torch
import torch.nn.functional as F

from fastwarp.app.metrics import dice, evaluate, folding_fraction, jacobian_determinant, similarity
from reference import smooth_field

# ------------------------------------------------------------------------- dice

A = torch.tensor([[0, 1, 1, 2],
                  [2, 2, 0, 3]])
B = torch.tensor([[1, 1, 0, 2],
                  [2, 0, 0, 0]])


def test_dice_hand_computed():
    # 1: A {(0,1),(0,2)}, B {(0,0),(0,1)}, both {(0,1)}       -> 2*1/(2+2) = 0.5
    # 2: A {(0,3),(1,0),(1,1)}, B {(0,3),(1,0)}, both 2       -> 2*2/(3+2) = 0.8
    # 3: A {(1,3)}, B none (absent from B)                    -> 0
    # 0 is background and left out
    got = dice(A, B)
    assert got == pytest.approx({1: 0.5, 2: 0.8, 3: 0.0}, abs=1e-12)
    assert all(type(k) is int for k in got)
    assert dice(B, A) == pytest.approx(got, abs=1e-12)  # symmetric


def test_dice_explicit_labels():
    # a label absent from both maps is left out (undefined); background only when asked
    assert dice(A, B, labels=[2, 7]) == pytest.approx({2: 0.8})
    # 0: A {(0,0),(1,2)}, B {(0,2),(1,1),(1,2),(1,3)}, both {(1,2)} -> 2/6
    assert dice(A, B, labels=[0]) == pytest.approx({0: 1 / 3})


def test_dice_identical_and_disjoint(gen):
    lab = torch.randint(0, 5, (7, 9, 5), generator=gen)
    assert dice(lab, lab) == {k: 1.0 for k in range(1, 5)}
    one = torch.zeros(3, 5, dtype=torch.int64)
    two = torch.zeros(3, 5, dtype=torch.int64)
    one[0, :2], two[2, 3:] = 4, 4
    assert dice(one, two) == {4: 0.0}
    assert dice(torch.zeros_like(one), torch.zeros_like(two)) == {}


def test_dice_integer_dtypes(gen):
    a = torch.randint(0, 4, (2, 1, 6, 7, 5), generator=gen)
    b = torch.randint(0, 4, (2, 1, 6, 7, 5), generator=gen)
    expected = dice(a, b)
    assert set(expected) == {1, 2, 3}
    for dtype in (torch.uint8, torch.int16, torch.int32):
        assert dice(a.to(dtype), b.to(dtype)) == pytest.approx(expected)
    # by hand for label 2
    ina, inb = a == 2, b == 2
    assert expected[2] == pytest.approx(2 * (ina & inb).sum().item() / (ina.sum() + inb.sum()).item())


def test_dice_errors():
    with pytest.raises(TypeError, match="integer"):
        dice(A.float(), B)
    with pytest.raises(TypeError, match="b must be an integer"):
        dice(A, B.double())
    with pytest.raises(ValueError, match=r"same shape.*\(2, 4\).*\(2, 3\)"):
        dice(A, B[:, :3])
    with pytest.raises(TypeError):
        dice(A.numpy(), B.numpy())


# ------------------------------------------------------------------------- jacobian determinant


def _grid(spatial):
    return torch.meshgrid([torch.arange(s, dtype=torch.float64) for s in spatial], indexing="ij")


def _sine_field(spatial, amp, freq, phase):
    """u_i(x) = sum_j amp[i][j] sin(freq[j] x_j + phase[i][j]) and its exact derivatives, and
    the derivatives central differences see exactly (freq -> sin(freq))."""
    nd = len(spatial)
    x = _grid(spatial)
    u = torch.stack([sum(amp[i][j] * torch.sin(freq[j] * x[j] + phase[i][j]) for j in range(nd)) for i in range(nd)])

    def jac(eff):
        J = torch.empty(*spatial, nd, nd, dtype=torch.float64)
        for i in range(nd):
            for j in range(nd):
                J[..., i, j] = (i == j) + amp[i][j] * eff(freq[j]) * torch.cos(freq[j] * x[j] + phase[i][j])
        return torch.linalg.det(J)

    return u[None], jac(lambda b: b), jac(math.sin)


@pytest.mark.parametrize(
    "spatial, amp, freq, phase",
    [
        ((21, 17), [[1.5, -0.8], [1.2, 0.9]], [0.08, 0.06], [[0.1, 0.7], [1.3, -0.4]]),
        ((13, 11, 9), [[1.2, 0.5, -0.9], [-0.6, 1.1, 0.4], [0.8, -1.3, 0.7]], [0.07, 0.09, 0.05],
         [[0.2, 1.0, -0.5], [0.6, 0.3, 1.7], [-1.1, 0.4, 0.9]]),
    ],
)
def test_jacobian_determinant_of_analytic_field(spatial, amp, freq, phase):
    disp, det_exact, det_central = _sine_field(spatial, amp, freq, phase)
    got = jacobian_determinant(disp)
    assert got.shape == (1, *spatial) and got.dtype == torch.float64
    inner = (0,) + (slice(1, -1),) * len(spatial)
    # central differences of sines are exact with sin(b) for b: a tight check of the axes,
    # the channel order and the determinant formula
    torch.testing.assert_close(got[inner], det_central[inner[1:]], rtol=0, atol=1e-12)
    # and close to the analytic determinant (error ~ amp b^3 / 6)
    assert (got[inner] - det_exact[inner[1:]]).abs().max() < 1e-3
    # the field is far from the identity, so this is not trivially 1
    assert (det_exact - 1).abs().max() > 0.1


def test_jacobian_determinant_float32_and_batch(gen):
    disp = smooth_field((3, 3, 7, 6, 9), 1.5, gen)
    det64 = jacobian_determinant(disp)
    det32 = jacobian_determinant(disp.float())
    assert det32.dtype == torch.float32 and det32.shape == (3, 7, 6, 9)
    torch.testing.assert_close(det32, det64.float(), rtol=1e-5, atol=1e-5)
    for n in range(3):
        torch.testing.assert_close(jacobian_determinant(disp[n:n + 1])[0], det64[n])


@pytest.mark.parametrize("spatial", [(9, 7), (5, 8, 6)])
def test_jacobian_determinant_translation_and_scaling(spatial, gen):
    nd = len(spatial)
    # a translation: exactly 1 everywhere (borders included)
    shift = torch.randn(1, nd, *[1] * nd, generator=gen, dtype=torch.float64) * 3
    det = jacobian_determinant(shift.expand(1, nd, *spatial).clone())
    assert torch.equal(det, torch.ones_like(det))
    # u = s x: (1 + s)^ndim, exactly (differences of a linear field are exact, borders too)
    x = torch.stack(_grid(spatial))[None]
    for s in (0.25, -0.4, -1.5):
        torch.testing.assert_close(jacobian_determinant(s * x), torch.full((1, *spatial), (1 + s) ** nd, dtype=torch.float64),
                                   rtol=0, atol=1e-12)
    # anisotropic scaling: the product
    scales = torch.tensor([0.5, -0.3, 0.2][:nd], dtype=torch.float64).view(1, nd, *[1] * nd)
    expected = float(torch.prod(1 + scales))
    torch.testing.assert_close(jacobian_determinant(scales * x), torch.full((1, *spatial), expected, dtype=torch.float64),
                               rtol=0, atol=1e-12)


def test_jacobian_determinant_errors(gen):
    with pytest.raises(ValueError, match=r"\(N, 3, D, H, W\).*\(1, 3, 5, 6\)"):
        jacobian_determinant(torch.randn(1, 3, 5, 6, generator=gen))
    with pytest.raises(ValueError, match="disp must be"):
        jacobian_determinant(torch.randn(1, 2, 5, generator=gen))
    with pytest.raises(ValueError, match="disp must be"):
        jacobian_determinant([[1.0]])
    with pytest.raises(ValueError, match="at least 2 voxels"):
        jacobian_determinant(torch.randn(1, 3, 5, 1, 4, generator=gen))


# ------------------------------------------------------------------------- folding


def _fold(spatial, rows):
    """u_0 = -2 x_0 on the first ``rows`` indices of axis 1 (there det J = 1 - 2 = -1),
    zero elsewhere (det J = 1)."""
    nd = len(spatial)
    x = _grid(spatial)
    disp = torch.zeros(1, nd, *spatial, dtype=torch.float64)
    region = x[1] < rows
    disp[0, 0] = torch.where(region, -2 * x[0], torch.zeros_like(x[0]))
    return disp, region


@pytest.mark.parametrize("spatial", [(9, 11), (7, 10, 5)])
def test_folding_fraction_known_fold(spatial):
    disp, region = _fold(spatial, 4)
    det = jacobian_determinant(disp)[0]
    assert torch.equal(det[region], torch.full_like(det[region], -1.0))
    assert torch.equal(det[~region], torch.ones_like(det[~region]))
    assert folding_fraction(disp) == pytest.approx(4 / spatial[1])
    # the mask: inside the fold everything folds, outside nothing
    assert folding_fraction(disp, region) == 1.0
    assert folding_fraction(disp, ~region) == 0.0
    # (N, 1, *spatial) like an image, float, and an empty mask
    assert folding_fraction(disp, region[None, None].float()) == 1.0
    half = region.clone()
    half[: spatial[0] // 2] = False
    both = half | ~region
    assert folding_fraction(disp, both) == pytest.approx(half.sum().item() / both.sum().item())
    assert folding_fraction(disp, torch.zeros_like(region)) == 0.0


def test_folding_fraction_identity_and_smooth(gen):
    shift = torch.full((2, 3, 6, 5, 7), 1.25, dtype=torch.float64)
    assert folding_fraction(shift) == 0.0
    assert folding_fraction(smooth_field((2, 2, 19, 17), 0.5, gen)) == 0.0
    # a rough field folds
    assert folding_fraction(torch.randn(1, 2, 19, 17, generator=gen, dtype=torch.float64) * 3) > 0.05


# ------------------------------------------------------------------------- evaluate


def _shifted_pair(gen):
    """fixed = base[4:20]^3; moving(x) = fixed(x - t), t = (2, 0, -1), so disp = t registers
    them exactly: base is zero outside [6, 18)^3, so zero padding loses nothing."""
    base = F.avg_pool3d(smooth_field((1, 3, 24, 24, 24), 1.0, gen)[:, :1], 3, 1, 1)
    inside = torch.zeros_like(base, dtype=torch.bool)
    inside[..., 6:18, 6:18, 6:18] = True
    base = torch.where(inside, base + 0.05 * torch.rand(base.shape, generator=gen, dtype=base.dtype), 0)
    labels = (base > 0.05).long() + (base > 0.3).long() + 3 * (base < -0.3).long()
    t = (2, 0, -1)
    fix = (slice(None), slice(None), slice(4, 20), slice(4, 20), slice(4, 20))
    mov = (slice(None), slice(None)) + tuple(slice(4 - s, 20 - s) for s in t)
    disp = torch.tensor(t, dtype=torch.float32).view(1, 3, 1, 1, 1).expand(1, 3, 16, 16, 16).contiguous()
    return base[mov].float(), base[fix].float(), labels[mov], labels[fix], disp


def test_evaluate_keys_and_improvement(gen):
    moving, fixed, ml, fl, disp = _shifted_pair(gen)
    ev = evaluate(moving, fixed, disp, ml, fl, window=5)
    for key in ("ncc_before", "ncc_after", "mse_before", "mse_after", "dice_before", "dice_after",
                "mean_dice_before", "mean_dice_after", "folding_fraction", "jacobian_min", "jacobian_max"):
        assert key in ev, key
    assert set(ev["dice_before"]) == set(ev["dice_after"]) == {1, 2, 3}
    assert ev["ncc_after"] > ev["ncc_before"] + 0.05
    assert ev["mse_after"] == 0.0 < ev["mse_before"]
    assert ev["dice_after"] == {1: 1.0, 2: 1.0, 3: 1.0}
    assert ev["mean_dice_after"] == 1.0 > ev["mean_dice_before"]
    assert ev["folding_fraction"] == 0.0 and ev["jacobian_min"] == ev["jacobian_max"] == 1.0
    assert ev["mean_dice_before"] == pytest.approx(sum(ev["dice_before"].values()) / 3)
    assert ev["ncc_before"] == pytest.approx(similarity(moving, fixed, 5)["ncc"])


def test_evaluate_zero_displacement(gen):
    moving, fixed, ml, fl, disp = _shifted_pair(gen)
    ev = evaluate(moving, fixed, torch.zeros_like(disp), ml, fl)
    assert ev["ncc_before"] == ev["ncc_after"]
    assert ev["mse_before"] == ev["mse_after"] > 0
    assert ev["dice_before"] == ev["dice_after"]
    assert ev["mean_dice_before"] == ev["mean_dice_after"] < 1
    assert ev["folding_fraction"] == 0.0


def test_evaluate_without_labels(gen):
    moving, fixed, _, _, disp = _shifted_pair(gen)
    ev = evaluate(moving, fixed, disp)
    assert "dice_before" not in ev and "mean_dice_after" not in ev
    assert ev["ncc_after"] > ev["ncc_before"]
