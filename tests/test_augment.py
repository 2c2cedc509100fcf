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
