"""fastwarp.app.data.preprocess: padding to a multiple and back, block-average downsampling."""

import numpy as np
import pytest

from fastwarp.app import data as fwdata
from synthetic import affine_of, rng

@pytest.mark.parametrize("shape, multiple, ndim, padded", [
    ((5, 7, 9), 4, None, (8, 8, 12)),
    ((16, 13), 8, None, (16, 16)),
    ((2, 5, 7, 9), 16, 3, (2, 16, 16, 16)),
    ((3, 9, 10), 3, 2, (3, 9, 12)),
])
def test_pad_to_multiple_and_crop(shape, multiple, ndim, padded):
    x = rng().random(shape).astype(np.float32) + 0.5
    y, crop = fwdata.pad_to_multiple(x, multiple, ndim)
    assert y.shape == padded and y.dtype == x.dtype
    np.testing.assert_array_equal(y[crop], x)
    assert y.sum() == pytest.approx(x.sum(), rel=1e-6)  # the rest is zeros
    # symmetric: the two sides differ by at most one voxel
    for axis, sl in enumerate(crop):
        before, after = sl.start or 0, y.shape[axis] - (sl.stop if sl.stop is not None else y.shape[axis])
        assert abs(before - after) <= 1


def test_downsample_3d():
    r = rng()
    image = r.random((8, 10, 6)).astype(np.float32)
    labels = r.integers(0, 4, (8, 10, 6)).astype(np.int64)
    aff = affine_of(3)
    vol = fwdata.Volume(image, aff, labels, None, "v")
    small = fwdata.downsample(vol, 2)
    assert small.shape == (4, 5, 3) and small.labels.shape == (4, 5, 3)
    assert np.issubdtype(small.labels.dtype, np.integer)
    np.testing.assert_allclose(small.image, image.reshape(4, 2, 5, 2, 3, 2).mean(axis=(1, 3, 5)), rtol=1e-6)
    assert set(np.unique(small.labels)) <= set(np.unique(labels))
    np.testing.assert_array_equal(small.labels, labels[1::2, 1::2, 1::2])
    # new voxel (i, j, k) sits at the centre of old block (2i..2i+1, 2j..2j+1, 2k..2k+1)
    for ijk in [(0, 0, 0), (1, 2, 1), (3, 4, 2)]:
        block = [np.array([2 * i + a, 2 * j + b, 2 * k + c, 1.0])
                 for i, j, k in [ijk] for a in (0, 1) for b in (0, 1) for c in (0, 1)]
        centre = np.mean([aff @ p for p in block], axis=0)
        np.testing.assert_allclose(small.affine @ np.array([*ijk, 1.0]), centre, rtol=0, atol=1e-9)
    assert fwdata.downsample(vol, 1) is vol


def test_downsample_odd_and_2d():
    r = rng()
    vol = fwdata.Volume(r.random((9, 10, 7)).astype(np.float32), np.eye(4), r.integers(0, 3, (9, 10, 7)))
    small = fwdata.downsample(vol, 2)
    assert small.shape == (5, 5, 4) == small.labels.shape
    # the partial last block is the mean of what there is
    assert small.image[4, 0, 3] == pytest.approx(vol.image[8, 0:2, 6].mean(), rel=1e-6)
    vol2 = fwdata.Volume(r.random((12, 9)).astype(np.float32), np.diag([3.0, 2.0, 1.0, 1.0]))
    s2 = fwdata.downsample(vol2, 3)
    assert s2.shape == (4, 3)
    np.testing.assert_allclose(s2.affine @ [0, 0, 0, 1], vol2.affine @ [1, 1, 0, 1])  # block (0..2, 0..2) centre
    np.testing.assert_allclose(s2.affine[:3, :2], vol2.affine[:3, :2] * 3)
