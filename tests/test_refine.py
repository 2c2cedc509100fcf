"""fastwarp.app.refine: the instance optimization of one pair, and register_pair around it."""

import pytest
import torch

from fastwarp import warp
from fastwarp.app.fields import smooth_noise
from fastwarp.app.metrics import dice, folding_fraction
from fastwarp.app.refine import RefineConfig, _smoothness, refine, refine_defaults
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
    # MI's 32-bin histogram of this small phantom (13k voxels, 1.7k at the coarse level) is
    # noisy: it takes more smoothing than the default measured on the brains
    smooth = 10.0 if similarity == "mi" else None
    u = refine(moving, fixed, config=RefineConfig(similarity=similarity, smooth=smooth, **FAST))
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


@pytest.mark.parametrize("shape", [(1, 3, 5, 6, 7), (1, 2, 9, 4), (1, 3, 1, 5, 4)])
def test_smoothness_is_grad_l2(shape):
    u = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    axes = [a for a in range(2, u.dim()) if u.shape[a] > 1]
    expected = sum(u.diff(dim=a).square().mean() for a in axes) / (u.dim() - 2)
    if len(axes) == u.dim() - 2:
        torch.testing.assert_close(expected, Grad("l2")(u))
    torch.testing.assert_close(_smoothness(u), expected)
    assert torch.autograd.gradcheck(_smoothness, (u,))


@pytest.mark.parametrize("kwargs, match", [
    (dict(levels=()), "levels must be positive"),
    (dict(levels=(2, 1), iterations=(1, 2, 3)), "iterations: one value or one per level"),
    (dict(window=4), "window must be positive odd"),
    (dict(similarity="cc"), "similarity must be one of 'ncc', 'mse', 'mi'"),
    (dict(patience=0), "patience >= 1"),
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
