"""fastwarp.app.refine: the instance optimization of one pair, and register_pair around it."""

import numpy as np
import pytest
import torch

from fastwarp import warp
from fastwarp.app.affine import resample
from fastwarp.app.fields import smooth_noise, voxel_grid
from fastwarp.app.inverse import inverse_consistency, inverse_of_velocity
from fastwarp.app.metrics import dice, folding_fraction
from fastwarp.app.refine import RefineConfig, _bending, _smoothness, refine, refine_defaults
from fastwarp.app.register import register_pair
from fastwarp.losses import Grad

FAST = dict(levels=(2, 1), iterations=(60, 40))


def phantom(shape, seed, max_disp):
    """A smooth random image with three tissue labels (thresholds of it), and the same warped by
    a smooth random deformation of about ``max_disp`` voxels: (moving, fixed, moving labels,
    fixed labels)."""
    g = torch.Generator().manual_seed(seed)
    nd = len(shape)
    base = smooth_noise((1, 1, *shape), [max(2, s // 6) for s in shape], g)
    fixed = (base - base.min()) / (base.max() - base.min())
    labels = torch.bucketize(fixed, torch.tensor([0.3, 0.5, 0.7])).to(torch.int32)
    disp = smooth_noise((1, nd, *shape), [max(2, s // 8) for s in shape], g) * max_disp
    moving = warp(fixed, disp, padding_mode="border")
    moving_labels = warp(labels, disp, mode="nearest", padding_mode="border")
    return moving, fixed, moving_labels, labels


def mean_dice(a, b):
    d = dice(a, b)
    return sum(d.values()) / len(d)


@pytest.mark.parametrize("nd", [2, 3])
@pytest.mark.parametrize("similarity", ["ncc", "mse", "mi"])
def test_refinement_aligns_a_synthetic_pair(nd, similarity):
    shape = (48, 44) if nd == 2 else (24, 26, 22)
    moving, fixed, ml, fl = phantom(shape, seed=nd, max_disp=2.0)
    # This phantom's intensities are continuous, not a few tissue classes as in the brains, and
    # MI needs the finer histogram there (32 bins: 0.916 Dice in 3-D against 0.872 at the
    # brains' 16); of so few voxels (13k, 1.7k at the coarse level) that histogram is noisy and
    # takes more smoothing than the default measured on the brains
    mi = dict(smooth=10.0, mi_bins=32) if similarity == "mi" else {}
    u = refine(moving, fixed, config=RefineConfig(similarity=similarity, **mi, **FAST))
    assert u.shape == (1, nd, *shape) and u.dtype == torch.float32
    before, after = mean_dice(ml, fl), mean_dice(warp(ml, u, mode="nearest"), fl)
    assert after > before + 0.1, (before, after)
    assert (warp(moving, u) - fixed).square().mean() < 0.5 * (moving - fixed).square().mean()


def test_diffeomorphic_refinement_does_not_fold_a_large_deformation():
    moving, fixed, ml, fl = phantom((40, 36, 32), seed=5, max_disp=6.0)
    plain = refine(moving, fixed, config=RefineConfig(smooth=0.2, **FAST))
    diffeo = refine(moving, fixed, config=RefineConfig(smooth=0.2, diffeomorphic=True, **FAST))
    assert folding_fraction(plain) > 0.01  # large enough to fold a displacement, under this weak smoothness
    assert folding_fraction(diffeo) == 0
    assert mean_dice(warp(ml, diffeo, mode="nearest"), fl) > mean_dice(ml, fl) + 0.1


def test_refinement_is_deterministic_and_starts_from_init():
    moving, fixed, _, _ = phantom((20, 22, 18), seed=1, max_disp=2.0)
    config = RefineConfig(levels=(2, 1), iterations=(10, 5))
    torch.testing.assert_close(refine(moving, fixed, config=config), refine(moving, fixed, config=config), rtol=0, atol=0)
    init = smooth_noise((1, 3, 20, 22, 18), (3, 3, 3), torch.Generator().manual_seed(2))
    none = RefineConfig(levels=(1,), iterations=0)
    torch.testing.assert_close(refine(moving, fixed, init, none), init, rtol=0, atol=0)
    # a coarser last level: the field comes back at full size (init resized down and up)
    coarse = refine(moving, fixed, init, RefineConfig(levels=(2,), iterations=0))
    assert coarse.shape == init.shape and (coarse - init).abs().mean() < 0.1 * init.abs().mean()


def test_identity_voxel_matrix_is_the_plain_refinement():
    moving, fixed, _, _ = phantom((20, 22, 18), seed=1, max_disp=2.0)
    for diffeomorphic in (False, True):
        config = RefineConfig(levels=(2, 1), iterations=(6, 4), diffeomorphic=diffeomorphic)
        torch.testing.assert_close(refine(moving, fixed, config=config, voxel_matrix=np.eye(4)),
                                   refine(moving, fixed, config=config), rtol=0, atol=0)


def _other_grid(image, V, shape, mode="linear"):
    """``image`` (on the fixed grid) put on a moving grid of ``shape`` whose voxel V p is the
    fixed voxel p: each moving voxel x reads the image at V^-1 x."""
    nd = len(shape)
    inv = torch.as_tensor(np.linalg.inv(V), dtype=torch.float32)
    x = voxel_grid(shape, None, torch.float32)[None]
    coords = torch.einsum("ij,nj...->ni...", inv[:nd, :nd], x) + inv[:nd, nd].view(1, nd, *([1] * nd))
    return resample(image, coords, mode=mode, padding_mode="border")


@pytest.mark.parametrize("nd, other_shape", [(3, False), (3, True), (2, False), (2, True)])
def test_composed_refinement_registers_a_moving_image_on_another_grid(nd, other_shape):
    """With ``voxel_matrix`` V the moving image stays on its own grid (Note [Composed
    sampling]): a deformed phantom put on a rotated, shifted (and, ``other_shape``, finer and
    larger) grid registers as well as the same image on the fixed grid does, through V (p + u)."""
    shape = (40, 38) if nd == 2 else (22, 24, 20)
    moving, fixed, ml, fl = phantom(shape, seed=7 + nd, max_disp=2.0)
    a = np.deg2rad(4.0)
    V = np.eye(nd + 1)
    V[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    if other_shape:  # a finer grid (1.3 moving voxels per fixed voxel), larger and shifted
        V[:nd, :nd] *= 1.3
        V[:nd, nd] = 2.5
        mshape = tuple(int(1.3 * s) + 5 for s in shape)
    else:
        V[:nd, nd] = 0.7
        mshape = shape
    m_other = _other_grid(moving, V, mshape)
    ml_other = _other_grid(ml, V, mshape, mode="nearest")
    config = RefineConfig(**FAST)
    u = refine(m_other, fixed, config=config, voxel_matrix=V)
    assert u.shape == (1, nd, *shape)
    Vt = torch.as_tensor(V, dtype=torch.float32)

    def through(field):  # the moving labels read at V (p + field(p))
        p = voxel_grid(shape, None, torch.float32)[None] + field
        coords = torch.einsum("ij,nj...->ni...", Vt[:nd, :nd], p) + Vt[:nd, nd].view(1, nd, *([1] * nd))
        return resample(ml_other, coords, mode="nearest")

    before, after = mean_dice(through(torch.zeros_like(u)), fl), mean_dice(through(u), fl)
    same_before = mean_dice(ml, fl)
    same_after = mean_dice(warp(ml, refine(moving, fixed, config=config), mode="nearest"), fl)
    assert after > before + 0.05 and after - before > same_after - same_before - 0.03, (before, after, same_before, same_after)


def test_voxel_matrix_is_checked():
    moving, fixed, _, _ = phantom((12, 10, 9), seed=1, max_disp=1.0)
    with pytest.raises(ValueError, match=r"voxel_matrix must be a finite homogeneous \(4, 4\) matrix"):
        refine(moving, fixed, config=RefineConfig(levels=(1,), iterations=1), voxel_matrix=np.eye(3))
    with pytest.raises(ValueError, match="must have one shape \\(or give voxel_matrix\\)"):
        refine(moving[..., :8], fixed, config=RefineConfig(levels=(1,), iterations=1))


@pytest.mark.parametrize("shape", [(1, 3, 5, 6, 7), (1, 2, 9, 4), (1, 3, 1, 5, 4)])
def test_smoothness_is_grad_l2(shape):
    u = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    axes = [a for a in range(2, u.dim()) if u.shape[a] > 1]
    expected = sum(u.diff(dim=a).square().mean() for a in axes) / (u.dim() - 2)
    if len(axes) == u.dim() - 2:
        torch.testing.assert_close(expected, Grad("l2")(u))
    torch.testing.assert_close(_smoothness(u), expected)
    assert torch.autograd.gradcheck(_smoothness, (u,))


@pytest.mark.parametrize("shape", [(1, 3, 5, 6, 7), (1, 2, 9, 4), (1, 3, 1, 5, 4), (1, 3, 2, 5, 4)])
def test_bending_is_the_mean_squared_second_difference(shape):
    u = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    axes = [a for a in range(2, u.dim()) if u.shape[a] > 2]
    expected = sum(u.diff(n=2, dim=a).square().mean() for a in axes) / (u.dim() - 2)
    torch.testing.assert_close(_bending(u), expected)
    assert torch.autograd.gradcheck(_bending, (u,))
    # zero on any affine field: it leaves a field's linear part to the smoothness weight
    lin = (torch.arange(5.0)[:, None, None] * 0.3 + torch.arange(6.0)[None, :, None] * -1.2).expand(5, 6, 7)
    assert float(_bending(torch.stack([lin, 2 * lin, lin + 1])[None])) < 1e-12


def test_bending_weight_makes_the_field_bend_less():
    moving, fixed, ml, fl = phantom((24, 26, 22), seed=4, max_disp=2.5)
    plain, v = refine(moving, fixed, config=RefineConfig(diffeomorphic=True, **FAST), return_velocity=True)
    bent, vb = refine(moving, fixed, config=RefineConfig(diffeomorphic=True, bending=1.0, **FAST), return_velocity=True)
    assert float(_bending(bent.double())) < 0.5 * float(_bending(plain.double()))
    # what it is for: a written inverse nearer the map's (Note [Bending for a tight inverse])
    loose = inverse_consistency(plain, inverse_of_velocity(v))["mean"]
    assert inverse_consistency(bent, inverse_of_velocity(vb))["mean"] < 0.8 * loose
    assert mean_dice(warp(ml, bent, mode="nearest"), fl) > mean_dice(ml, fl) + 0.1  # and still registers


@pytest.mark.parametrize("kwargs, match", [
    (dict(levels=()), "levels must be positive"),
    (dict(bending=-1.0), "bending, steps and tol must be >= 0"),
    (dict(smooth=float("nan")), "bending, steps and tol must be >= 0"),
    (dict(bending=float("inf")), "bending, steps and tol must be >= 0"),
    (dict(levels=(2, 1), iterations=(1, 2, 3)), "iterations: one value or one per level"),
    (dict(window=4), "window must be positive odd"),
    (dict(similarity="cc"), "similarity must be one of 'ncc', 'mse', 'mi'"),
    (dict(patience=0), "patience >= 1"),
    (dict(mi_bins=3), r"mi_bins must be an integer in \[4, 1024\], got 3"),
    (dict(mi_bins=16.0), "mi_bins must be an integer"),
])
def test_refine_config_refuses_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RefineConfig(**kwargs)


def test_refine_refuses_bad_inputs():
    a = torch.rand(1, 1, 8, 9, 10)
    with pytest.raises(ValueError, match="must have one shape"):
        refine(a, torch.rand(1, 1, 8, 9, 11))
    with pytest.raises(ValueError, match="moving must be"):
        refine(torch.rand(2, 1, 8, 9, 10), a)
    with pytest.raises(TypeError, match="fixed must be floating point"):
        refine(a, torch.ones(1, 1, 8, 9, 10, dtype=torch.int32))
    with pytest.raises(ValueError, match="init must be a displacement"):
        refine(a, a, torch.zeros(1, 2, 8, 9, 10))


def test_register_pair_refines_and_reports():
    moving, fixed, ml, fl = phantom((24, 26, 22), seed=3, max_disp=2.0)
    result = register_pair(moving[0, 0], fixed[0, 0], refine=RefineConfig(**FAST), moving_labels=ml[0, 0],
                           fixed_labels=fl[0, 0])
    m = result.metrics
    assert m["mean_dice_after"] > m["mean_dice_before"] + 0.1 and m["ncc_after"] > m["ncc_before"]
    assert result.voxel_matrix is None and set(result.stages) == {"refine"} and result.seconds > 0
    torch.testing.assert_close(result.warped, warp(moving, result.disp)[0, 0])
    with pytest.raises(ValueError, match="nothing to do"):
        register_pair(moving[0, 0], fixed[0, 0])


def test_refine_defaults_by_voxel_size():
    assert refine_defaults(2.0) == RefineConfig()
    assert refine_defaults(2.0, diffeomorphic=True) == RefineConfig(diffeomorphic=True)
    fine = refine_defaults(1.0, diffeomorphic=True)
    assert fine.iterations == (100, 100, 25) and fine.smooth == pytest.approx(3 * RefineConfig(diffeomorphic=True).smooth)
    assert refine_defaults(1.0).smooth == RefineConfig().smooth
    assert refine_defaults(1.0, iterations=7, smooth=0.5).iterations == (7, 7, 7)
    assert refine_defaults(1.0, smooth=0.5).smooth == 0.5
    assert refine_defaults(1.0, smooth=None, bending=None, iterations=None) == refine_defaults(1.0)  # None: the default
