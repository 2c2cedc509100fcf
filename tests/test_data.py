"""fastwarp.data: NIfTI reading and writing, finding subjects, the embedded brains,
padding and downsampling, training pairs and random deformations."""

import os
import stat

import nibabel as nib
import numpy as np
import pytest
import torch

from fastwarp import data as fwdata
from fastwarp.metrics import folding_fraction


def rng(seed=1234):
    return np.random.default_rng(seed)


def affine_of(seed=0):
    """A non-trivial affine: rotation, anisotropic voxels, an offset."""
    r = rng(seed)
    q, _ = np.linalg.qr(r.normal(size=(3, 3)))
    aff = np.eye(4)
    aff[:3, :3] = q @ np.diag([1.5, 2.0, 0.75])
    aff[:3, 3] = r.normal(size=3) * 20
    return aff


def write(path, array, affine=None, dtype=None):
    arr = np.asarray(array)
    img = nib.Nifti1Image(arr if dtype is None else arr.astype(dtype), np.eye(4) if affine is None else affine)
    nib.save(img, str(path))
    return str(path)


def no_temp_files(folder):
    return not [p for p in os.listdir(folder) if p.startswith(".fastwarp-")]


# ------------------------------------------------------------------------- load / save


@pytest.mark.parametrize("shape", [(7, 9, 5), (11, 6)])
def test_save_load_round_trip(tmp_path, shape):
    r = rng()
    image = (r.random(shape) * 300 + 20).astype(np.float32)
    labels = r.integers(0, 5, shape).astype(np.int16)
    aff = affine_of(1)
    ip = fwdata.save_nifti(tmp_path / "sub.nii.gz", image, aff)
    lp = fwdata.save_nifti(tmp_path / "sub_seg.nii", labels, aff, dtype=np.int16)
    assert ip == str(tmp_path / "sub.nii.gz") and os.path.exists(lp)

    raw = fwdata.load_volume(ip, lp, normalize=False)
    assert raw.shape == shape and raw.image.dtype == np.float32
    np.testing.assert_array_equal(raw.image, image)
    np.testing.assert_allclose(raw.affine, aff, rtol=0, atol=1e-5)  # the header holds float32
    assert raw.labels.dtype == np.int64
    np.testing.assert_array_equal(raw.labels, labels)
    assert raw.name == "sub"
    assert nib.load(lp).get_data_dtype() == np.int16

    vol = fwdata.load_volume(ip)
    assert vol.labels is None
    assert vol.image.dtype == np.float32 and vol.image.shape == shape
    assert vol.image.min() == 0.0 and vol.image.max() == 1.0
    # a monotone rescaling of the raw intensities (clipped at the 99.5th percentile)
    order = np.argsort(image, axis=None)
    assert np.all(np.diff(vol.image.ravel()[order]) >= 0)
    np.testing.assert_array_equal(np.argmin(vol.image), np.argmin(image))


def test_save_from_tensor_and_vector_field(tmp_path, gen):
    field = torch.randn(6, 5, 4, 3, generator=gen)
    p = fwdata.save_nifti(tmp_path / "flow.nii.gz", field, np.eye(4), dtype=np.float32)
    img = nib.load(p)
    assert img.shape == (6, 5, 4, 3)
    assert img.header.get_intent()[0] == "vector"
    np.testing.assert_array_equal(np.asarray(img.dataobj), field.numpy())


def test_save_keeps_header(tmp_path):
    src = nib.Nifti1Image(rng().random((5, 6, 7)).astype(np.float32), affine_of(2))
    src.header.set_xyzt_units("mm", "sec")
    src.header["descrip"] = b"fastwarp test"
    p = fwdata.save_nifti(tmp_path / "out.nii", np.ones((5, 6, 7), np.float32), src.affine, src.header)
    hdr = nib.load(p).header
    assert hdr.get_xyzt_units() == ("mm", "sec")
    assert hdr["descrip"].tobytes().rstrip(b"\0") == b"fastwarp test"


def test_float_labels_with_integer_values_are_accepted(tmp_path):
    lab = rng().integers(0, 4, (5, 6, 7)).astype(np.float32)
    ip = write(tmp_path / "a.nii.gz", rng().random((5, 6, 7)), dtype=np.float32)
    lp = write(tmp_path / "a_seg.nii.gz", lab)
    vol = fwdata.load_volume(ip, lp)
    assert vol.labels.dtype == np.int64
    np.testing.assert_array_equal(vol.labels, lab.astype(np.int64))


def test_missing_file(tmp_path):
    path = str(tmp_path / "nope.nii.gz")
    with pytest.raises(FileNotFoundError, match=r"no such file: .*nope\.nii\.gz"):
        fwdata.load_volume(path)
    ip = write(tmp_path / "a.nii.gz", rng().random((4, 5, 6)), dtype=np.float32)
    with pytest.raises(FileNotFoundError, match=r"labels: no such file: .*nope\.nii\.gz"):
        fwdata.load_volume(ip, path)


def test_not_a_nifti(tmp_path):
    bad = tmp_path / "x.nii.gz"
    bad.write_text("this is not an image\n")
    with pytest.raises(ValueError, match=r"x\.nii\.gz is not a readable NIfTI"):
        fwdata.load_volume(bad)
    with pytest.raises(IsADirectoryError, match="directory"):
        fwdata.load_volume(tmp_path)


def test_4d_volume(tmp_path):
    p = write(tmp_path / "series.nii.gz", rng().random((4, 5, 6, 2)), dtype=np.float32)
    with pytest.raises(ValueError, match=r"series\.nii\.gz has shape \(4, 5, 6, 2\).*4-D"):
        fwdata.load_volume(p)
    # a single frame with a trailing axis of 1 is a 3-D volume
    one = write(tmp_path / "one.nii.gz", rng().random((4, 5, 6, 1)), dtype=np.float32)
    assert fwdata.load_volume(one).shape == (4, 5, 6)


def test_labels_of_another_shape(tmp_path):
    ip = write(tmp_path / "a.nii.gz", rng().random((4, 5, 6)), dtype=np.float32)
    lp = write(tmp_path / "a_seg.nii.gz", rng().integers(0, 3, (4, 5, 7)), dtype=np.int16)
    with pytest.raises(ValueError, match=r"labels: .*a_seg\.nii\.gz has shape \(4, 5, 7\)"):
        fwdata.load_volume(ip, lp)


def test_non_integer_labels(tmp_path):
    ip = write(tmp_path / "a.nii.gz", rng().random((4, 5, 6)), dtype=np.float32)
    lab = rng().integers(0, 3, (4, 5, 6)).astype(np.float32)
    lab[1, 2, 3] = 0.5
    lp = write(tmp_path / "a_seg.nii.gz", lab)
    with pytest.raises(ValueError, match=r"labels: .*a_seg\.nii\.gz must hold integer labels"):
        fwdata.load_volume(ip, lp)
    lab[1, 2, 3] = np.nan
    lp = write(tmp_path / "b_seg.nii.gz", lab)
    with pytest.raises(ValueError, match=r"b_seg\.nii\.gz must hold integer labels"):
        fwdata.load_volume(ip, lp)


def test_save_bad_suffix_writes_nothing(tmp_path):
    with pytest.raises(ValueError, match=r"out\.img must end in \.nii or \.nii\.gz"):
        fwdata.save_nifti(tmp_path / "out.img", np.ones((3, 4, 5), np.float32), np.eye(4))
    assert os.listdir(tmp_path) == []


def test_save_failure_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "out.nii.gz"
    old = fwdata.save_nifti(tmp_path / "old.nii.gz", np.full((3, 4, 5), 7, np.float32), np.eye(4))

    def broken_save(img, filename):  # writes half a file, then the disk is full
        with open(filename, "wb") as fh:
            fh.write(b"\x1f\x8b partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(nib, "save", broken_save)
    with pytest.raises(OSError, match="No space"):
        fwdata.save_nifti(target, np.ones((3, 4, 5), np.float32), np.eye(4))
    assert not target.exists()
    # an existing file is not clobbered by a failed write
    with pytest.raises(OSError):
        fwdata.save_nifti(old, np.ones((3, 4, 5), np.float32), np.eye(4))
    monkeypatch.undo()
    assert no_temp_files(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["old.nii.gz"]
    assert np.all(np.asarray(nib.load(old).dataobj) == 7)


def test_save_creates_folders_and_overwrites(tmp_path):
    p = tmp_path / "a" / "b" / "out.nii.gz"
    fwdata.save_nifti(p, np.ones((3, 4, 5), np.float32), np.eye(4))
    fwdata.save_nifti(p, np.full((3, 4, 5), 2, np.float32), np.eye(4))
    assert np.all(np.asarray(nib.load(p).dataobj) == 2)
    assert no_temp_files(p.parent)


def test_save_nifti_respects_umask(tmp_path):
    p = fwdata.save_nifti(tmp_path / "out.nii.gz", np.ones((3, 4, 5), np.float32), np.eye(4))
    ref = write(tmp_path / "ref.nii.gz", np.ones((3, 4, 5), np.float32))
    assert stat.S_IMODE(os.stat(p).st_mode) == stat.S_IMODE(os.stat(ref).st_mode)


# ------------------------------------------------------------------------- find_volumes


def test_find_volumes_folder(tmp_path):
    img = rng().random((4, 5, 6)).astype(np.float32)
    for name in ("sub1.nii.gz", "sub1_seg.nii.gz", "sub2.nii", "sub2_labels.nii", "sub3.nii.gz", ".hidden.nii.gz"):
        write(tmp_path / name, img)
    (tmp_path / "README.txt").write_text("not an image")
    (tmp_path / "sub4.nii.gz.bak").write_text("not an image")
    specs = fwdata.find_volumes(tmp_path)
    assert [(os.path.basename(s.image), s.labels and os.path.basename(s.labels)) for s in specs] == [
        ("sub1.nii.gz", "sub1_seg.nii.gz"), ("sub2.nii", "sub2_labels.nii"), ("sub3.nii.gz", None)]
    assert [s.name for s in specs] == ["sub1", "sub2", "sub3"]
    assert all(os.path.isabs(s.image) or s.image.startswith(str(tmp_path)) for s in specs)


def test_find_volumes_list_file(tmp_path):
    (tmp_path / "imgs").mkdir()
    img = rng().random((4, 5, 6)).astype(np.float32)
    write(tmp_path / "imgs" / "a.nii.gz", img)
    write(tmp_path / "imgs" / "a_lab.nii.gz", rng().integers(0, 3, (4, 5, 6)), dtype=np.int16)
    elsewhere = tmp_path / "abs.nii.gz"
    write(elsewhere, img)
    lst = tmp_path / "lists" / "train.txt"
    lst.parent.mkdir()
    lst.write_text(f"# training subjects\n\n../imgs/a.nii.gz   ../imgs/a_lab.nii.gz  # with labels\n"
                   f"   {elsewhere}\n# the end\n")
    specs = fwdata.find_volumes(lst)
    assert len(specs) == 2
    assert os.path.samefile(specs[0].image, tmp_path / "imgs" / "a.nii.gz")
    assert os.path.samefile(specs[0].labels, tmp_path / "imgs" / "a_lab.nii.gz")
    assert specs[1].image == str(elsewhere) and specs[1].labels is None
    vol = fwdata.load_volume(specs[0].image, specs[0].labels)
    assert vol.shape == (4, 5, 6)


def test_find_volumes_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"no NIfTI images .* in the folder .*empty"):
        fwdata.find_volumes(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match=r"missing"):
        fwdata.find_volumes(tmp_path / "missing")
    comments = tmp_path / "comments.txt"
    comments.write_text("# nothing\n\n")
    with pytest.raises(ValueError, match=r"comments\.txt names no images"):
        fwdata.find_volumes(comments)
    three = tmp_path / "three.txt"
    three.write_text("a.nii.gz\na.nii.gz b.nii.gz c.nii.gz\n")
    with pytest.raises(ValueError, match=r"three\.txt:2: expected 'image \[labels\]'"):
        fwdata.find_volumes(three)


# ------------------------------------------------------------------------- embedded


def test_embedded_brains():
    specs = fwdata.embedded()
    assert [s.name for s in specs] == ["mni152_t1", "colin27_t1"]
    for s in specs:
        assert os.path.isfile(s.image) and os.path.isfile(s.labels)
        assert os.path.dirname(s.image) == str(fwdata.EMBEDDED_DIR)
    vols = [fwdata.load_volume(s.image, s.labels) for s in specs]
    for v in vols:
        assert v.shape == (80, 96, 96)
        assert v.labels.shape == v.shape and v.labels.dtype == np.int64
        assert set(np.unique(v.labels)) == {0, 1, 2, 3}
        assert v.image.min() == 0.0 and v.image.max() == 1.0
        # brain, not noise: the tissue classes are mostly where the image is bright
        assert v.image[v.labels == 3].mean() > v.image[v.labels == 0].mean() + 0.3
    np.testing.assert_array_equal(vols[0].affine, vols[1].affine)
    assert np.allclose(np.abs(np.diag(vols[0].affine)[:3]), 2.0)  # the 2 mm MNI grid
    assert not np.array_equal(vols[0].image, vols[1].image)


# ------------------------------------------------------------------------- pad / downsample


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


# ------------------------------------------------------------------------- PairDataset


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


# ------------------------------------------------------------------------- random deformation


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
