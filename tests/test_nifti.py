"""fastwarp.app.data.nifti: reading and writing NIfTI files, errors that name the file."""

import os
import stat

import nibabel as nib
import numpy as np
import pytest
import torch

from fastwarp.app import data as fwdata
from synthetic import affine_of, no_temp_files, rng, write

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
    assert raw.labels.dtype == np.int16  # as stored
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

    def broken_gzip(raw, level=1):  # .nii.gz is compressed by fastwarp (Note [Gzip members]), then written
        raise OSError(28, "No space left on device")

    import fastwarp.app.data.nifti as nifti_module

    monkeypatch.setattr(nib, "save", broken_save)
    monkeypatch.setattr(nifti_module, "gzip_members", broken_gzip)
    with pytest.raises(OSError, match="No space"):
        fwdata.save_nifti(target, np.ones((3, 4, 5), np.float32), np.eye(4))
    assert not target.exists()
    with pytest.raises(OSError, match="No space"):
        fwdata.save_nifti(tmp_path / "plain.nii", np.ones((3, 4, 5), np.float32), np.eye(4))
    assert not (tmp_path / "plain.nii").exists()
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


def test_non_finite_voxels_read_as_background_with_one_warning(tmp_path):
    image = np.random.default_rng(3).random((6, 7, 5)).astype(np.float32) + 1
    image[0, :, :] = np.nan
    image[1, 2, 3] = np.inf
    path = fwdata.save_nifti(tmp_path / "nan.nii.gz", image, np.eye(4))
    with pytest.warns(UserWarning, match=r"nan.nii.gz: 36 non-finite voxels .* read as 0") as record:
        vol = fwdata.load_volume(path, normalize=False)
    assert len(record) == 1 and np.isfinite(vol.image).all()
    assert (vol.image[0] == 0).all() and vol.image[1, 2, 3] == 0 and vol.image[2, 2, 2] == image[2, 2, 2]


def test_gzip_members_are_read_by_every_reader_and_in_parallel_by_fastwarp(tmp_path):
    """Note [Gzip members]: fastwarp's .nii.gz files are several gzip members with their sizes;
    Python's gzip (nibabel) reads them as one stream, fastwarp member by member; a file another
    tool wrote (one member) reads as before; a corrupt member is an error naming the file."""
    import gzip

    from fastwarp.app.data.nifti import _MEMBER_BYTES, _read_any, gunzip, gzip_members

    raw = np.random.default_rng(0).standard_normal(3 * _MEMBER_BYTES // 8 + 1234).tobytes()
    for level in (0, 1):
        packed = gzip_members(raw, level)
        assert gzip.decompress(packed) == raw and gunzip(packed) == raw
    assert gunzip(gzip.compress(raw, 1)) == raw
    image = np.random.default_rng(1).random((40, 30, 20)).astype(np.float32)
    path = fwdata.save_nifti(tmp_path / "a.nii.gz", image, np.eye(4))
    assert np.array_equal(np.asarray(nib.load(path).dataobj), image)  # nibabel's own reader
    assert np.array_equal(_read_any(path, "image")[0], image)
    nib.save(nib.Nifti1Image(image, np.eye(4)), str(tmp_path / "b.nii.gz"))  # one member
    assert np.array_equal(_read_any(tmp_path / "b.nii.gz", "image")[0], image)
    data = bytearray(open(path, "rb").read())
    data[40] ^= 0xFF  # inside the first member's stored or deflated body
    (tmp_path / "bad.nii.gz").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="bad.nii.gz is not a readable NIfTI file"):
        _read_any(tmp_path / "bad.nii.gz", "image")


def _gz_of(img, level):
    from fastwarp.app.data.nifti import gzip_members

    return gzip_members(img.to_bytes(), level)


def test_stored_members_are_copied_once_and_checked(tmp_path):
    """Note [Reading a stored field]: a field fastwarp wrote (stored gzip members) is copied from
    the file, not inflated, into the array nibabel would read (Fortran order, the header's affine
    and intent); every member is checked against its CRC; a deflated file, another tool's or a
    truncated one goes to the inflating reader, which reads it or says it is not NIfTI."""
    import gzip

    from fastwarp.app.data.nifti import _MEMBER_BYTES, _read_any, _stored_members

    r = rng()
    field = r.standard_normal((101, 90, 79, 1, 3)).astype(np.float32)  # 8.6 MB: two members
    assert field.nbytes > _MEMBER_BYTES
    path = fwdata.save_nifti(tmp_path / "w.nii.gz", field, affine_of(2))
    raw = open(path, "rb").read()
    stored = _stored_members(path)
    assert stored is not None and stored.tobytes() == gzip.decompress(raw)
    data, img = _read_any(path, "transform")
    want = nib.load(path)
    assert data.flags.f_contiguous and data.dtype == np.float32
    np.testing.assert_array_equal(data, field)
    np.testing.assert_array_equal(img.affine, want.affine)
    assert img.header.get_intent()[0] == "vector" and img.header["sform_code"] == want.header["sform_code"]
    # another tool's gzip (one deflated stream) and fastwarp's deflated members are inflated
    (tmp_path / "one.nii.gz").write_bytes(gzip.compress(gzip.decompress(raw), 1))
    (tmp_path / "deflated.nii.gz").write_bytes(_gz_of(nib.Nifti1Image(field, affine_of(2)), 1))
    for name in ("one.nii.gz", "deflated.nii.gz"):
        assert _stored_members(str(tmp_path / name)) is None
        np.testing.assert_array_equal(_read_any(tmp_path / name, "transform")[0], field)
    # a flipped byte deep in the second member's payload fails its CRC; a cut file is not NIfTI
    bad = bytearray(raw)
    bad[len(raw) - 1000] ^= 0x01
    (tmp_path / "bad.nii.gz").write_bytes(bytes(bad))
    with pytest.raises(ValueError, match="bad.nii.gz is not a readable NIfTI file.*CRC"):
        _read_any(tmp_path / "bad.nii.gz", "transform")
    (tmp_path / "cut.nii.gz").write_bytes(raw[: len(raw) - 5000])
    assert _stored_members(str(tmp_path / "cut.nii.gz")) is None
    with pytest.raises(ValueError, match="cut.nii.gz is not a readable NIfTI file"):
        _read_any(tmp_path / "cut.nii.gz", "transform")


def test_stored_members_with_extensions_and_scaling(tmp_path):
    """A stored file whose header has extensions (the voxels further in) reads in place; one
    whose voxels are scaled (scl_slope, scl_inter) is read by nibabel, scaled as stored."""
    from fastwarp.app.data.nifti import _read_any, _stored_members

    field = rng().standard_normal((9, 8, 7, 1, 3)).astype(np.float32)
    img = nib.Nifti1Image(field, affine_of(1))
    img.header.extensions.append(nib.nifti1.Nifti1Extension("comment", b"x" * 1000))
    (tmp_path / "ext.nii.gz").write_bytes(_gz_of(img, 0))
    stored = _stored_members(str(tmp_path / "ext.nii.gz"))
    assert stored is not None and stored[108:112].view("<f4")[0] > 352  # vox_offset: past the extension
    data, back = _read_any(tmp_path / "ext.nii.gz", "transform")
    assert len(back.header.extensions) == 1 and back.header.extensions[0].get_content() == b"x" * 1000
    np.testing.assert_array_equal(data, field)
    ints = (field * 100).astype(np.int16)
    scaled = nib.Nifti1Image(ints, affine_of(1))
    scaled.header.set_slope_inter(0.5, 2.0)
    (tmp_path / "scaled.nii.gz").write_bytes(_gz_of(scaled, 0))
    data, _ = _read_any(tmp_path / "scaled.nii.gz", "image")
    np.testing.assert_allclose(data, ints * 0.5 + 2.0)


def test_a_file_system_that_cannot_map_files_reads_by_inflating(tmp_path, monkeypatch):
    """Where mmap fails (some network and FUSE mounts), a stored field is read as any gzip."""
    import mmap

    from fastwarp.app.data.nifti import _read_any, _stored_members

    field = rng().standard_normal((6, 5, 4, 1, 3)).astype(np.float32)
    path = fwdata.save_nifti(tmp_path / "w.nii.gz", field, affine_of(1))

    def refuse(*args, **kwargs):
        raise OSError(19, "No such device")

    monkeypatch.setattr(mmap, "mmap", refuse)
    assert _stored_members(path) is None
    np.testing.assert_array_equal(_read_any(path, "transform")[0], field)
