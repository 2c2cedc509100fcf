"""fastwarp.app.data.augment: random deformations, smooth and diffeomorphic."""

import torch

from fastwarp.app import data as fwdata
from fastwarp.app.metrics import folding_fraction

def test_random_deformation_is_smooth_and_diffeomorphic():
    g = torch.Generator().manual_seed(0)
    disp = fwdata.random_deformation((24, 24, 24), g)
    assert disp.shape == (1, 3, 24, 24, 24) and disp.dtype == torch.float32
    assert folding_fraction(disp) == 0.0
    assert 1.0 < float(disp.abs().max()) < 12.0  # it moves things, on the scale of max_disp = 4
    # smooth: neighbouring voxels move alike (white noise has ratios sqrt(2) and sqrt(3))
    for axis in (2, 3, 4):
        first, second = disp.diff(dim=axis).abs().mean(), disp.diff(dim=axis, n=2).abs().mean()
        assert first < 0.4 * disp.abs().mean()
        assert second < 0.6 * first
    again = fwdata.random_deformation((24, 24, 24), torch.Generator().manual_seed(0))
    assert torch.equal(disp, again)
    other = fwdata.random_deformation((24, 24, 24), torch.Generator().manual_seed(1))
    assert not torch.equal(disp, other)


def test_random_deformation_2d_scales_with_max_disp():
    small = fwdata.random_deformation((33, 31), torch.Generator().manual_seed(2), max_disp=1.0)
    big = fwdata.random_deformation((33, 31), torch.Generator().manual_seed(2), max_disp=4.0)
    assert small.shape == (1, 2, 33, 31)
    assert folding_fraction(big) == 0.0
    assert 2.0 < float(big.abs().max() / small.abs().max()) < 8.0


def test_random_deformation_integrates_its_random_velocity():
    # the velocity drawn alone, integrated, is the deformation drawn whole (on the half grid at
    # 32 voxels or more a side, on the full grid below), so velocities can be shifted before
    from fastwarp.app.data.augment import random_velocity

    for shape in ((34, 36, 32), (21, 19)):
        vel = random_velocity(shape, torch.Generator().manual_seed(4), 5.0, 6.0)
        half = min(shape) >= 32
        assert vel.shape[2:] == tuple((s + 1) // 2 if half else s for s in shape)
        whole = fwdata.random_deformation(shape, torch.Generator().manual_seed(4), 5.0, 6.0)
        assert torch.equal(fwdata.random_deformation(shape, None, velocity=vel), whole)
        assert not torch.equal(fwdata.random_deformation(shape, None, velocity=-vel), whole)


def test_random_affines_have_mean_identity_and_their_ranges():
    import numpy as np
    import pytest

    from fastwarp.app.data.augment import random_affines

    maps = random_affines(7, (21, 24, 19), torch.Generator().manual_seed(5), degrees=10.0, scale=0.1, shift=3.0)
    assert maps.shape == (7, 4, 4)
    np.testing.assert_allclose(maps.mean(0), np.eye(4), atol=1e-12)
    np.testing.assert_array_equal(maps[:, 3], np.tile([0.0, 0.0, 0.0, 1.0], (7, 1)))
    assert 0.02 < np.abs(maps[:, :3, :3] - np.eye(3)).max() < 0.35  # turned and scaled, within the ranges
    assert np.abs(maps[:, :3, 3]).max() > 0.5
    again = random_affines(7, (21, 24, 19), torch.Generator().manual_seed(5), degrees=10.0, scale=0.1, shift=3.0)
    np.testing.assert_array_equal(maps, again)
    np.testing.assert_array_equal(random_affines(3, (5, 6, 7), torch.Generator()), np.tile(np.eye(4), (3, 1, 1)))
    with pytest.raises(ValueError, match="3-D"):
        random_affines(2, (5, 6), torch.Generator())
