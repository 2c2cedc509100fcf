"""fastwarp.app.data.pairs: training pairs, reproducible, of the right subjects and slices."""

import numpy as np
import pytest
import torch

from fastwarp.app import data as fwdata
from synthetic import rng

def _subjects(n=3, shape=(16, 16, 12), labels=True):
    """Subjects told apart by their intensity: subject k lies in [0.3k + 0.1, 0.3k + 0.15]."""
    r = rng(7)
    vols = []
    for k in range(n):
        img = (0.3 * k + 0.1 + 0.05 * r.random(shape)).astype(np.float32)
        lab = r.integers(0, 4, shape).astype(np.int64) if labels else None
        vols.append(fwdata.Volume(img, np.eye(4), lab, None, f"s{k}"))
    return vols


def _who(x):
    return int(round((float(x.mean()) - 0.125) / 0.3))


def test_pairs_are_deterministic():
    ds = fwdata.PairDataset(_subjects(), "subject", length=8, seed=3)
    a, b = ds[5], ds[5]
    assert len(a) == 2 and a[0].shape == (1, 16, 16, 12) and a[0].dtype == torch.float32
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    again = fwdata.PairDataset(_subjects(), "subject", length=8, seed=3)[5]
    assert torch.equal(a[0], again[0]) and torch.equal(a[1], again[1])
    assert not torch.equal(ds[4][0], a[0])
    ds.set_epoch(1)
    c = ds[5]
    assert not torch.equal(a[0], c[0]) and not torch.equal(a[1], c[1])
    ds.set_epoch(0)
    assert torch.equal(ds[5][0], a[0])
    other_seed = fwdata.PairDataset(_subjects(), "subject", length=8, seed=4)[5]
    assert not torch.equal(a[0], other_seed[0])
    # augmentation changes the images, within [0, 1]
    assert all(0 <= float(t.min()) and float(t.max()) <= 1 for t in a)


def test_subject_pairing_never_pairs_a_subject_with_itself():
    vols = _subjects()
    ds = fwdata.PairDataset(vols, "subject", length=60, augment=False, seed=0)
    seen = set()
    for i in range(len(ds)):
        m, f = ds[i]
        who_m, who_f = _who(m), _who(f)
        assert who_m != who_f
        np.testing.assert_array_equal(m[0].numpy(), vols[who_m].image)  # no augmentation: the volume itself
        np.testing.assert_array_equal(f[0].numpy(), vols[who_f].image)
        seen.add((who_m, who_f))
    assert seen == {(i, j) for i in range(3) for j in range(3) if i != j}


def test_atlas_and_self_pairing():
    vols = _subjects()
    atlas = fwdata.Volume(np.full((16, 16, 12), 0.95, np.float32), np.eye(4), None, None, "atlas")
    ds = fwdata.PairDataset(vols, "atlas", atlas, length=30, augment=False)
    moving = set()
    for i in range(len(ds)):
        m, f = ds[i]
        np.testing.assert_array_equal(f[0].numpy(), atlas.image)
        moving.add(_who(m))
    assert moving == {0, 1, 2}
    ds = fwdata.PairDataset(vols, "self", length=10, augment=False)
    for i in range(len(ds)):
        m, f = ds[i]
        assert torch.equal(m, f)
    # with augmentation, "self" is two different deformations of one subject
    m, f = fwdata.PairDataset(vols, "self", length=2, augment=True)[1]
    assert not torch.equal(m, f) and _who(m) == _who(f)


def test_2d_slices():
    vols = _subjects()
    ds = fwdata.PairDataset(vols, "subject", length=12, ndim=2, augment=False, with_labels=True)
    for i in range(len(ds)):
        m, f, ml, fl = ds[i]
        assert m.shape == f.shape == ml.shape == fl.shape == (1, 16, 16)
        k = next(k for k in range(12) if np.array_equal(m[0].numpy(), vols[_who(m)].image[:, :, k]))
        # both sides are the same axial slice of two subjects, with their labels
        np.testing.assert_array_equal(f[0].numpy(), vols[_who(f)].image[:, :, k])
        np.testing.assert_array_equal(ml[0].numpy(), vols[_who(m)].labels[:, :, k])
    # 2-D images stay 2-D
    flat = [fwdata.Volume(v.image[:, :, 0], np.eye(4), None, None, v.name) for v in vols]
    m, f = fwdata.PairDataset(flat, "subject", length=2, ndim=2)[0]
    assert m.shape == (1, 16, 16)


def test_with_labels():
    vols = _subjects()
    ds = fwdata.PairDataset(vols, "subject", length=4, with_labels=True, seed=1)
    m, f, ml, fl = ds[2]
    assert ml.dtype == fl.dtype == torch.int64
    assert ml.shape == m.shape == (1, 16, 16, 12)
    assert set(torch.unique(ml).tolist()) <= {0, 1, 2, 3}
    # without labels on every volume, items are pairs
    vols[1].labels = None
    assert len(fwdata.PairDataset(vols, "subject", length=4, with_labels=True)[0]) == 2


def test_pair_dataset_errors():
    vols = _subjects()
    with pytest.raises(ValueError, match="pairing must be"):
        fwdata.PairDataset(vols, "random")
    with pytest.raises(ValueError, match="at least one volume"):
        fwdata.PairDataset([], "self")
    with pytest.raises(ValueError, match="needs an atlas"):
        fwdata.PairDataset(vols, "atlas")
    with pytest.raises(ValueError, match="at least 2 subjects"):
        fwdata.PairDataset(vols[:1], "subject")
    odd = fwdata.Volume(np.zeros((16, 16, 10), np.float32) + 0.2, np.eye(4))
    with pytest.raises(ValueError, match="one shape"):
        fwdata.PairDataset(vols + [odd], "subject")
    with pytest.raises(ValueError, match="one shape"):
        fwdata.PairDataset(vols, "atlas", odd)
    flat = [fwdata.Volume(v.image[:, :, 0], np.eye(4)) for v in vols]
    with pytest.raises(ValueError, match="ndim=3 does not fit 2-D"):
        fwdata.PairDataset(flat, "subject", ndim=3)
    ds = fwdata.PairDataset(vols, "subject", length=3)
    with pytest.raises(IndexError):
        ds[3]
