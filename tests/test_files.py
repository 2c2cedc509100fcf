"""fastwarp.app.files: outputs written whole or not at all."""

import os
import stat

import pytest

from fastwarp.app.files import TEMPORARY_PREFIX, remove_stale, replacing


def test_replacing_renames_on_success_and_keeps_the_suffix(tmp_path):
    target = tmp_path / "new" / "out.nii.gz"  # the folder is made
    with replacing(target) as tmp:
        assert os.path.dirname(tmp) == str(target.parent) and os.path.basename(tmp).startswith(TEMPORARY_PREFIX)
        assert tmp.endswith(".nii.gz") and not target.exists()
        with open(tmp, "w") as fh:
            fh.write("one")
    assert target.read_text() == "one" and os.listdir(target.parent) == ["out.nii.gz"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o666 & ~umask  # a new file's, not mkstemp's 0600
    with replacing(target) as tmp:  # over an existing file
        with open(tmp, "w") as fh:
            fh.write("two")
    assert target.read_text() == "two"


@pytest.mark.parametrize("error", [ValueError, KeyboardInterrupt])
def test_replacing_leaves_the_old_file_and_no_temporary_on_failure(tmp_path, error):
    target = tmp_path / "metrics.csv"
    target.write_text("old")
    with pytest.raises(error):
        with replacing(target) as tmp:
            with open(tmp, "w") as fh:
                fh.write("half")
            raise error("killed halfway")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["metrics.csv"]
    with pytest.raises(RuntimeError):  # a writer that never made the file: nothing to remove, the error kept
        with replacing(tmp_path / "x.json") as tmp:
            os.unlink(tmp)
            raise RuntimeError("no file")
    assert os.listdir(tmp_path) == ["metrics.csv"]


def test_remove_stale_takes_a_killed_writers_temporaries_of_that_output_only(tmp_path):
    target = tmp_path / "sub1_warp.nii.gz"
    with replacing(target) as tmp:  # the name a writer of target uses
        live = os.path.basename(tmp)
    assert live.startswith(TEMPORARY_PREFIX + "sub1_warp.nii.gz~") and live.endswith(".nii.gz")
    left = [f"{TEMPORARY_PREFIX}sub1_warp.nii.gz~0123abcd.nii.gz", f"{TEMPORARY_PREFIX}sub1_warp.nii.gz~ffffffff.nii.gz"]
    kept = [f"{TEMPORARY_PREFIX}sub10_warp.nii.gz~0123abcd.nii.gz",  # another output's
            f"{TEMPORARY_PREFIX}sub1_warp.nii.gz~0123abcd.json",  # not this output's suffix
            f"{TEMPORARY_PREFIX}sub1_warp.nii.gz~0123ABCDE.nii.gz",  # not replacing's token
            "sub1_warp.nii.gz"]
    for name in left + kept:
        (tmp_path / name).write_text("x")
    assert remove_stale(target) == 2 and sorted(os.listdir(tmp_path)) == sorted(kept)
    assert remove_stale(target) == 0 and remove_stale(tmp_path / "none" / "x.csv") == 0


def test_remove_stale_with_tildes_in_the_names_and_many_outputs(tmp_path):
    # an output's own "~" (even before 8 hex digits) is not taken for the token's; one listing
    # serves every output of the folder
    outputs = [tmp_path / "a~0123abcd.nii.gz", tmp_path / "a~b.json"] + [tmp_path / f"s{i}.csv" for i in range(50)]
    left = [f"{TEMPORARY_PREFIX}a~0123abcd.nii.gz~89abcdef.nii.gz", f"{TEMPORARY_PREFIX}a~b.json~00000000.json"]
    left += [f"{TEMPORARY_PREFIX}s{i}.csv~{i:08x}.csv" for i in range(0, 50, 7)]
    kept = [f"{TEMPORARY_PREFIX}a~0123abcd.nii.gz", f"{TEMPORARY_PREFIX}a~89abcdef.nii.gz",  # not outputs'
            f"{TEMPORARY_PREFIX}a~b.json~0000000.json", f"{TEMPORARY_PREFIX}s50.csv~00000000.csv"]
    for name in left + kept:
        (tmp_path / name).write_text("x")
    assert remove_stale(*outputs) == len(left) and sorted(os.listdir(tmp_path)) == sorted(kept)


def test_long_output_names_keep_their_own_temporaries(tmp_path):
    """Two outputs whose long names share their first 200 bytes: each writer's temporary is its
    own (a live writer of the one is never taken for the other's stale temporary), and names of
    multi-byte characters stay under the 255-byte limit."""
    stem = "sub-" + "x" * 190
    one, two = tmp_path / f"{stem}_run-01_T1w_warp.nii.gz", tmp_path / f"{stem}_run-02_T1w_warp.nii.gz"
    with replacing(two) as live:
        assert remove_stale(one) == 0 and os.path.exists(live)
        with open(live, "w") as fh:
            fh.write("two")
    assert two.read_text() == "two"
    wide = tmp_path / ("脑" * 80 + ".nii.gz")  # 247 bytes
    with replacing(wide) as tmp:
        assert len(os.fsencode(os.path.basename(tmp))) <= 255
        with open(tmp, "w") as fh:
            fh.write("w")
    assert wide.read_text() == "w"
    for target in (one, wide):  # what a writer killed before its rename leaves: its temporary
        with replacing(target) as tmp:
            os.link(tmp, tmp + ".kept")
        os.rename(tmp + ".kept", tmp)
    assert remove_stale(one, wide, tmp_path / "none" / "x") == 2
    assert sorted(os.listdir(tmp_path)) == sorted(p.name for p in (one, two, wide))
