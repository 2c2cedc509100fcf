"""fastwarp.app.data.subjects: finding subjects in a folder or a list file, the embedded brains."""

import os

import numpy as np
import pytest

from fastwarp.app import data as fwdata
from synthetic import rng, write

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


def test_embedded_brains():
    specs = fwdata.embedded()
    assert [s.name for s in specs] == ["mni152_t1", "colin27_t1"]
    for s in specs:
        assert os.path.isfile(s.image) and os.path.isfile(s.labels)
        assert os.path.dirname(s.image) == str(fwdata.EMBEDDED_DIR)
    vols = [fwdata.load_volume(s.image, s.labels) for s in specs]
    for v in vols:
        assert v.shape == (80, 96, 96)
        assert v.labels.shape == v.shape and v.labels.dtype == np.uint8  # as the files store them
        assert set(np.unique(v.labels)) == {0, 1, 2, 3}
        assert v.image.min() == 0.0 and v.image.max() == 1.0
        # brain, not noise: the tissue classes are mostly where the image is bright
        assert v.image[v.labels == 3].mean() > v.image[v.labels == 0].mean() + 0.3
    np.testing.assert_array_equal(vols[0].affine, vols[1].affine)
    assert np.allclose(np.abs(np.diag(vols[0].affine)[:3]), 2.0)  # the 2 mm MNI grid
    assert not np.array_equal(vols[0].image, vols[1].image)
