"""``fastwarp register --list`` / ``--moving-dir`` (fastwarp.app.cohort): the list file's errors by
line, one output set per subject and metrics.csv, a failed subject reported while the run goes
on, resume after a killed run with the same outputs, and the cohort's results equal to one
``fastwarp register`` per pair."""

import csv
import os
import shutil

import nibabel as nib
import numpy as np
import pytest

from fastwarp.app import cli
from fastwarp.app.cohort import read_pair_list, subjects_from_dir
from fastwarp.app.files import TEMPORARY_PREFIX

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = ["--refine", "3", "--device", "cpu", "--quiet"]


def _rows(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def _list(tmp_path, lines, name="pairs.txt"):
    p = tmp_path / name
    p.write_text("\n".join(lines) + "\n")
    return str(p)


def test_list_errors_come_together_with_their_line_numbers(synth, tmp_path, capsys):
    (sub0, lab0), (atlas, _) = synth["paths"]["sub0"], synth["paths"]["atlas"]
    pairs = _list(tmp_path, [
        "# moving [fixed] [labels]",
        f"{sub0} {atlas} {lab0}",
        f"{sub0} {atlas} {lab0} extra",
        f"{tmp_path / 'nothere.nii.gz'} {atlas}",
        "",
        f"{sub0}",
        f"{sub0} - {tmp_path / 'nolabels.nii.gz'}",
    ])
    with pytest.raises(ValueError) as e:
        read_pair_list(pairs)
    message = str(e.value)
    assert f"{pairs}:3: expected 'moving [fixed] [labels]', got 4 fields" in message
    assert f"{pairs}:4: no such file: moving {tmp_path / 'nothere.nii.gz'}" in message
    assert f"{pairs}:6: no fixed image" in message and f"{pairs}:7: no fixed image" in message
    assert ":2:" not in message
    out = tmp_path / "out"
    rc = cli.main(["register", "--list", pairs, "-o", str(out)] + FAST)
    assert rc == 2 and ":3:" in capsys.readouterr().err and not out.exists()
    # with --fixed, lines 6 and 7 name their fixed image, and 7 its missing labels
    with pytest.raises(ValueError) as e:
        read_pair_list(pairs, fixed=atlas)
    assert "no fixed image" not in str(e.value) and f"{pairs}:7: no such file: labels" in str(e.value)
    assert f"{pairs}:6: subject 'sub0' again" in str(e.value)  # a second line of sub0
    # two subjects of one name would overwrite each other's outputs
    twice = _list(tmp_path, [f"{sub0} {atlas}", f"{sub0} {atlas}"], "twice.txt")
    with pytest.raises(ValueError, match=r"twice.txt:2: subject 'sub0' again"):
        read_pair_list(twice)


def test_cohort_registers_every_subject_and_resumes_where_it_stopped(synth, tmp_path, capsys):
    atlas, atlas_lab = synth["paths"]["atlas"]
    names = ["sub0", "sub1", "sub2"]
    lines = [f"{synth['paths'][n][0]} - {synth['paths'][n][1]}" for n in names]
    pairs = _list(tmp_path, lines)
    out = tmp_path / "out"
    argv = ["register", "--list", pairs, "--fixed", atlas, "--fixed-labels", atlas_lab, "-o", str(out), "--affine"] + FAST
    assert cli.main(argv) == 0
    assert "3 registered, 0 failed" in capsys.readouterr().out
    for n in names:
        for suffix in (".nii.gz", "_warp.nii.gz", "_affine.txt", "_labels.nii.gz", ".json"):
            assert (out / (n + suffix)).is_file(), n + suffix
    rows = _rows(out / "metrics.csv")
    assert [r["subject"] for r in rows] == names + ["summary"]
    assert all(r["status"] == "registered" and float(r["mean_dice_after"]) > 0 for r in rows[:3])
    assert rows[3]["status"] == "3 registered, 0 failed"
    assert float(rows[3]["seconds"]) == pytest.approx(sum(float(r["seconds"]) for r in rows[:3]), rel=1e-4)
    first = {n: np.asarray(nib.load(out / f"{n}.nii.gz").dataobj) for n in names}
    first_warp = np.asarray(nib.load(out / "sub1_warp.nii.gz").dataobj)

    # a run killed while on sub1: its metrics (written last) and a warped image are not there
    (out / "sub1.json").unlink()
    (out / "sub1.nii.gz").unlink()
    assert cli.main(argv) == 0
    rows = _rows(out / "metrics.csv")
    assert [r["status"] for r in rows[:3]] == ["done earlier", "registered", "done earlier"]
    for n in names:
        np.testing.assert_array_equal(np.asarray(nib.load(out / f"{n}.nii.gz").dataobj), first[n])
    np.testing.assert_array_equal(np.asarray(nib.load(out / "sub1_warp.nii.gz").dataobj), first_warp)
    assert not [p for p in os.listdir(out) if p.endswith(".tmp") or p.startswith(".fastwarp-")]


def _subprocess_env():
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=repo + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return repo, env


def test_a_killed_run_resumes_to_the_uninterrupted_outputs(synth, tmp_path):
    """A real kill: SIGKILL once the first subject is complete; the second run finishes with
    the uninterrupted run's outputs, bit for bit, and nothing else in the folder."""
    import subprocess
    import sys
    import time

    repo, env = _subprocess_env()
    atlas, atlas_lab = synth["paths"]["atlas"]
    lines = []  # eight subjects (the four, and copies under other names), so the kill lands mid-run
    for k in range(8):
        image, labels = synth["paths"][f"sub{k % 4}"]
        if k >= 4:
            image, labels = (shutil.copy(f, tmp_path / os.path.basename(f).replace("sub", "copy"))
                             for f in (image, labels))
        lines.append(f"{image} - {labels}")
    pairs = _list(tmp_path, lines)
    cmd = [sys.executable, "-m", "fastwarp", "register", "--list", pairs, "--fixed", atlas, "--fixed-labels",
           atlas_lab, "--affine"] + FAST
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    res = subprocess.run(cmd + ["-o", str(whole)], cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(cmd + ["-o", str(killed)], cwd=repo, env=env, stdout=log, stderr=log)
        deadline = time.monotonic() + 300
        while not (killed / "sub0.json").exists():
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "killed.log").read_text()
            time.sleep(0.002)
        proc.kill()
        proc.wait()
    assert not (killed / "metrics.csv").exists()  # killed before the end
    # a kill while writing leaves a temporary; its timing is not ours, so plant one as it would be
    (killed / f"{TEMPORARY_PREFIX}sub1_warp.nii.gz~0badf00d.nii.gz").write_bytes(b"half a field")
    (killed / f"{TEMPORARY_PREFIX}sub1_warp.nii.gz~notours.nii.gz").write_bytes(b"not replacing's: kept")
    res = subprocess.run(cmd + ["-o", str(killed)], cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    rows = _rows(killed / "metrics.csv")
    assert rows[0]["status"] == "done earlier" and rows[7]["status"] == "registered"
    (killed / f"{TEMPORARY_PREFIX}sub1_warp.nii.gz~notours.nii.gz").unlink()
    assert sorted(os.listdir(killed)) == sorted(os.listdir(whole))
    for name in os.listdir(whole):
        if name.endswith(".nii.gz"):
            a, b = nib.load(whole / name), nib.load(killed / name)
            np.testing.assert_array_equal(np.asarray(b.dataobj), np.asarray(a.dataobj), err_msg=name)
            np.testing.assert_array_equal(b.affine, a.affine)
        elif name.endswith(".txt"):
            assert (killed / name).read_text() == (whole / name).read_text(), name


def test_a_failed_subject_is_reported_and_the_run_goes_on(synth, tmp_path, capsys):
    atlas, _ = synth["paths"]["atlas"]
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(b"not a nifti file at all")
    flat = tmp_path / "flat.nii.gz"  # a 2-D image against a 3-D atlas
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((16, 16)).astype(np.float32), np.eye(4)), str(flat))
    pairs = _list(tmp_path, [f"{synth['paths']['sub0'][0]} {atlas}", f"{corrupt} {atlas}", f"{flat} {atlas}",
                             f"{synth['paths']['sub1'][0]} {atlas}"])
    out = tmp_path / "out"
    rc = cli.main(["register", "--list", pairs, "-o", str(out)] + FAST)
    captured = capsys.readouterr()
    assert rc == 2  # the number of subjects that failed
    assert "corrupt (line 2) failed" in captured.err and "flat (line 3) failed" in captured.err
    rows = _rows(out / "metrics.csv")
    assert [r["status"] for r in rows] == ["registered", "failed", "failed", "registered", "2 registered, 2 failed"]
    assert "2-D" in rows[2]["error"] and rows[1]["error"]
    assert not (out / "corrupt.nii.gz").exists() and (out / "sub1.nii.gz").is_file()


def test_moving_dir_and_the_same_results_as_one_register_per_pair(synth, tmp_path):
    atlas, atlas_lab = synth["paths"]["atlas"]
    folder = tmp_path / "subjects"
    folder.mkdir()
    for n in ("sub2", "sub3"):
        for p in synth["paths"][n]:
            shutil.copy(p, folder)
    subjects = subjects_from_dir(folder, atlas)
    assert [(s.name, os.path.basename(s.labels)) for s in subjects] == [("sub2", "sub2_seg.nii.gz"),
                                                                       ("sub3", "sub3_seg.nii.gz")]
    out = tmp_path / "out"
    assert cli.main(["register", "--moving-dir", str(folder), "--fixed", atlas, "--fixed-labels", atlas_lab,
                     "-o", str(out)] + FAST) == 0
    single = tmp_path / "single.nii.gz"
    assert cli.main(["register", synth["paths"]["sub3"][0], atlas, "-o", str(single)] + FAST) == 0
    np.testing.assert_array_equal(np.asarray(nib.load(out / "sub3.nii.gz").dataobj),
                                  np.asarray(nib.load(single).dataobj))


@pytest.mark.parametrize("argv,message", [
    (["--list", "L", "--moving-dir", "D"], "not both"),
    (["--moving-dir", "D"], "needs --fixed"),
    (["--list", "L", "--flow", "f.nii.gz"], "--flow: with --list"),
    (["MOVING", "--list", "L"], "give no moving/fixed"),
])
def test_cohort_option_errors(tmp_path, capsys, argv, message):
    argv = [a.replace("L", str(tmp_path / "l.txt")).replace("D", str(tmp_path)) for a in argv]
    assert cli.main(["register"] + argv + ["-o", str(tmp_path / "o"), "--refine"]) == 2
    assert message in capsys.readouterr().err


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_gloo_splits_the_subjects_and_matches_one_process(synth, tmp_path):
    """torchrun --nproc_per_node 2 (gloo): the ranks take every other subject, rank 0 writes one
    metrics.csv with every row, and each subject's outputs are those of one process (one
    thread per process in both runs: the CPU kernels' sums follow the thread count)."""
    import subprocess
    import sys

    repo, env = _subprocess_env()
    atlas, atlas_lab = synth["paths"]["atlas"]
    names = ["sub0", "sub1", "sub2"]
    pairs = _list(tmp_path, [f"{synth['paths'][n][0]} - {synth['paths'][n][1]}" for n in names])
    args = ["register", "--list", pairs, "--fixed", atlas, "--fixed-labels", atlas_lab] + FAST
    single, multi = tmp_path / "single", tmp_path / "multi"
    runs = {single: [sys.executable, "-m", "fastwarp", *args, "-o", str(single)],
            multi: [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
                    "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
                    "-m", "fastwarp", *args, "-o", str(multi)]}
    out = {}
    for folder, cmd in runs.items():
        res = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stdout + res.stderr
        out[folder] = res.stdout
    assert "on 2 processes" in out[multi] and out[multi].count("wrote ") == 1
    rows = {f: _rows(f / "metrics.csv") for f in runs}
    assert [r["subject"] for r in rows[multi]] == names + ["summary"]
    assert [r["status"] for r in rows[multi]] == ["registered"] * 3 + ["3 registered, 0 failed"]
    for n in names:
        for suffix in (".nii.gz", "_warp.nii.gz", "_labels.nii.gz"):
            np.testing.assert_array_equal(np.asarray(nib.load(multi / (n + suffix)).dataobj),
                                          np.asarray(nib.load(single / (n + suffix)).dataobj), err_msg=n + suffix)
    for a, b in zip(rows[single][:3], rows[multi][:3]):
        assert a["mean_dice_after"] == b["mean_dice_after"] and a["ncc_after"] == b["ncc_after"]
