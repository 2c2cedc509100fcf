"""Training (fastwarp.train), `fastwarp register` and the `fastwarp` command, end to end on
tiny synthetic NIfTI data written by the tests: loss goes down, resume continues exactly,
DDP on gloo matches one process, registration writes what it says, bad input is one line
and exit code 2 with nothing written."""

import json
import os
import socket
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fastwarp
from fastwarp.app import cli
from fastwarp import data as fwdata
from fastwarp.models import RegUNet
from fastwarp.train import CheckpointError, load_checkpoint, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--enc", "4", "8", "--dec", "8", "8", "4"]
COMMON = ["--device", "cpu", "--workers", "0", "--quiet", *TINY, "--window", "5"]


# tiny convolutions: one thread is faster than two fighting over a busy machine, and runs
# compared bit for bit need the same thread count anyway
pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------- synthetic data


def _affine(scale, offset):
    aff = np.diag([*scale, 1.0])
    aff[:3, 3] = offset
    return aff


def _blob_subjects(folder, names, shape, seed, affine, max_disp=2.0):
    """A smooth textured blob under a different random smooth deformation per subject, with a
    label map (0 background, 1-3 by intensity). Images are written in arbitrary units."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, 1, 4, 4, 4, generator=g, dtype=torch.float64)
    texture = F.interpolate(coarse, size=shape, mode="trilinear", align_corners=True)
    x = torch.meshgrid([torch.linspace(-1, 1, s, dtype=torch.float64) for s in shape], indexing="ij")
    r2 = sum(c ** 2 for c in x)
    img = (torch.exp(-2.5 * r2) * (1.5 + 0.5 * texture)).clamp_min(0).float()
    paths = {}
    for name in names:
        disp = fwdata.random_deformation(shape, g, max_disp=max_disp, spacing=6.0)
        im = fastwarp.warp(img, disp)[0, 0]
        lab = torch.bucketize(im, torch.tensor([0.2, 0.6, 1.0])).to(torch.int16)
        p = fwdata.save_nifti(os.path.join(folder, f"{name}.nii.gz"), im * 100 + 5, affine)
        lp = fwdata.save_nifti(os.path.join(folder, f"{name}_seg.nii.gz"), lab, affine, dtype=np.int16)
        paths[name] = (p, lp)
    return paths


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    subjects = root / "subjects"
    subjects.mkdir()
    aff = _affine((2.0, 2.0, 2.0), (-10.0, 5.0, 3.0))
    paths = _blob_subjects(str(subjects), [f"sub{i}" for i in range(4)], (16, 16, 16), 0, aff)
    other = root / "other"
    other.mkdir()
    paths.update(_blob_subjects(str(other), ["atlas", "one", "two"], (16, 16, 16), 1, aff))
    # an odd-shaped pair on different grids for `fastwarp register`
    odd = root / "odd"
    odd.mkdir()
    paths.update(_blob_subjects(str(odd), ["moving"], (15, 18, 13), 2, _affine((1.5, 1.0, 2.0), (3.0, -7.0, 1.0))))
    paths.update(_blob_subjects(str(odd), ["fixed"], (15, 18, 13), 2, _affine((1.2, 1.1, 1.9), (-4.0, 2.0, 8.0))))
    return {"root": root, "subjects": str(subjects), "paths": paths}


def run_train(*args):
    return train(cli.train_config([*COMMON, *map(str, args)]))


@pytest.fixture(scope="module")
def model3d(synth, tmp_path_factory):
    out = tmp_path_factory.mktemp("model3d")
    run_train("--data", synth["subjects"], "--epochs", 1, "--steps", 2, "--lr", "3e-3", "--no-figure", "-o", out)
    return str(out / "checkpoint.pt")


@pytest.fixture(scope="module")
def model2d(synth, tmp_path_factory):
    out = tmp_path_factory.mktemp("model2d")
    run_train("--data", synth["subjects"], "--ndim", 2, "--epochs", 1, "--steps", 1, "--no-figure", "-o", out)
    return str(out / "checkpoint.pt")


# ------------------------------------------------------------------------- training


def test_training_lowers_the_loss(synth, tmp_path):
    """One fixed pair (a subject to an atlas, no augmentation), so every epoch sees the same
    data and the epoch loss must fall as the network learns it."""
    paths = synth["paths"]
    lst = tmp_path / "list.txt"
    lst.write_text(f"# train, then validation\n{paths['one'][0]} {paths['one'][1]}\n{paths['two'][0]}\n")
    out = tmp_path / "run"
    log = run_train("--data", lst, "--atlas", paths["atlas"][0], "--no-augment", "--epochs", 6, "--steps", 5,
                    "--lr", "3e-3", "--seed", 0, "-o", out)
    losses = [e["loss"] for e in log["epochs"]]
    assert len(losses) == 6 and all(np.isfinite(losses))
    assert losses[-1] < losses[0] - 0.01, losses
    assert min(losses[3:]) < min(losses[:3]), losses
    assert log["pairing"] == "atlas" and log["world_size"] == 1

    assert (out / "checkpoint.pt").is_file() and (out / "figure.png").stat().st_size > 1000
    saved = json.loads((out / "log.json").read_text())
    assert [e["epoch"] for e in saved["epochs"]] == [1, 2, 3, 4, 5, 6]
    assert [e["step"] for e in saved["epochs"]] == [5, 10, 15, 20, 25, 30]
    assert [e["loss"] for e in saved["epochs"]] == pytest.approx(losses, rel=1e-12)
    for e in saved["epochs"]:
        assert e["loss"] == pytest.approx(e["similarity"] + saved["lambda"] * e["smoothness"], rel=1e-6)
        (val,) = e["val"]
        assert val["pair"] == "two -> atlas"
        for key in ("ncc_before", "ncc_after", "mse_before", "mse_after", "folding_fraction"):
            assert np.isfinite(val[key]), key
        assert val["ncc_before"] == saved["epochs"][0]["val"][0]["ncc_before"]
    assert saved["model"]["enc_features"] == [4, 8] and saved["model"]["dec_features"] == [8, 8, 4]
    assert saved["checkpoint"] == str(out / "checkpoint.pt")

    ckpt = load_checkpoint(str(out / "checkpoint.pt"))
    assert ckpt["epoch"] == 6 and ckpt["step"] == 30 and ckpt["config"]["ndim"] == 3
    assert set(ckpt["model"]) == set(RegUNet(**ckpt["config"]).state_dict())


def _train_resume_args(synth, out, epochs):
    return ["--data", synth["subjects"], "--epochs", epochs, "--steps", 3, "--batch-size", 2, "--lr", "3e-3",
            "--seed", 5, "--no-figure", "-o", out]


def test_resume_continues_exactly(synth, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    log_a = run_train(*_train_resume_args(synth, a, 2))
    log_b1 = run_train(*_train_resume_args(synth, b, 1))
    assert load_checkpoint(str(b / "checkpoint.pt"))["epoch"] == 1
    log_b = run_train(*_train_resume_args(synth, b, 2), "--resume", b / "checkpoint.pt")

    assert log_b1["epochs"][0]["loss"] == log_a["epochs"][0]["loss"]
    # the resumed run keeps epoch 1 of the log and adds epoch 2
    assert [e["epoch"] for e in log_b["epochs"]] == [1, 2]
    assert [e["step"] for e in log_b["epochs"]] == [3, 6]
    assert log_b["epochs"][1]["loss"] == pytest.approx(log_a["epochs"][1]["loss"], rel=1e-7, abs=0)
    assert log_a["epochs"][1]["loss"] != log_a["epochs"][0]["loss"]
    # validation on the held-out 4th subject, with labels
    val = log_a["epochs"][-1]["val"][0]
    assert val["pair"] == "sub3 -> sub0" and "mean_dice_after" in val and "dice_before" in val

    ca, cb = load_checkpoint(str(a / "checkpoint.pt")), load_checkpoint(str(b / "checkpoint.pt"))
    assert ca["epoch"] == cb["epoch"] == 2 and ca["step"] == cb["step"] == 6
    for k in ca["model"]:
        torch.testing.assert_close(cb["model"][k], ca["model"][k], rtol=1e-6, atol=1e-7, msg=k)
    # and the run really trained: the parameters moved from epoch 1
    moved = load_checkpoint(str(a / "checkpoint.pt"))["model"]["flow.weight"]
    assert moved.abs().max() > 1e-3
    for sa, sb in zip(ca["optimizer"]["state"].values(), cb["optimizer"]["state"].values()):
        assert int(sa["step"]) == int(sb["step"]) == 6
        torch.testing.assert_close(sb["exp_avg_sq"], sa["exp_avg_sq"], rtol=1e-5, atol=1e-12)


def test_resume_with_another_dimensionality(synth, model2d, tmp_path):
    with pytest.raises(CheckpointError, match=r"2-D model.*--ndim 3"):
        run_train("--data", synth["subjects"], "--epochs", 2, "--steps", 1, "-o", tmp_path, "--resume", model2d)


def test_training_errors(synth, tmp_path):
    with pytest.raises(ValueError, match=r"--window must be a positive odd"):
        run_train("--data", synth["subjects"], "--window", 4, "-o", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"nowhere"):
        run_train("--data", tmp_path / "nowhere", "-o", tmp_path)


# ------------------------------------------------------------------------- DDP


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_gloo_matches_single_process(synth, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    args = ["--data", synth["subjects"], "--batch-size", "2", "--epochs", "1", "--steps", "2", "--seed", "3",
            "--lr", "3e-3", "--no-figure", *COMMON]
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    runs = {
        single: [sys.executable, "-m", "fastwarp.train", *args, "-o", str(single)],
        ddp: [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
              "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
              "-m", "fastwarp.train", *args, "-o", str(ddp)],
    }
    stdout = {}
    for out, cmd in runs.items():
        res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
        assert res.returncode == 0, res.stdout + res.stderr
        stdout[out] = res.stdout
    assert "x2 processes" in stdout[ddp] and "x2 processes" not in stdout[single]

    log_s = json.loads((single / "log.json").read_text())
    log_d = json.loads((ddp / "log.json").read_text())
    assert log_s["world_size"] == 1 and log_d["world_size"] == 2
    assert log_d["epochs"][0]["step"] == log_s["epochs"][0]["step"] == 2
    for key in ("loss", "similarity", "smoothness"):
        assert log_d["epochs"][0][key] == pytest.approx(log_s["epochs"][0][key], rel=1e-5)
    ms, md = load_checkpoint(str(single / "checkpoint.pt"))["model"], load_checkpoint(str(ddp / "checkpoint.pt"))["model"]
    assert set(ms) == set(md)  # DDP's "module." prefix is not saved
    for k in ms:
        torch.testing.assert_close(md[k], ms[k], rtol=0, atol=1e-6, msg=k)
    assert ms["flow.weight"].abs().max() > 1e-3  # two steps of lr 3e-3 moved it


# ------------------------------------------------------------------------- register


def test_register_end_to_end(synth, model3d, tmp_path, capsys):
    (mov, mov_lab), (fix, fix_lab) = synth["paths"]["moving"], synth["paths"]["fixed"]
    out, flow, js = tmp_path / "res" / "warped.nii.gz", tmp_path / "res" / "flow.nii.gz", tmp_path / "m.json"
    rc = cli.main(["register", mov, fix, "--model", model3d, "--output", str(out), "--flow", str(flow),
                   "--labels", mov_lab, "--fixed-labels", fix_lab, "--json", str(js), "--device", "cpu"])
    assert rc == 0
    stdout = capsys.readouterr().out
    assert "NCC" in stdout and "Dice" in stdout and str(out) in stdout

    fixed_img = nib.load(fix)
    moving_raw = np.asarray(nib.load(mov).dataobj, dtype=np.float32)
    warped = nib.load(out)
    assert warped.shape == fixed_img.shape == (15, 18, 13)
    np.testing.assert_allclose(warped.affine, fixed_img.affine, atol=1e-6)
    assert not np.allclose(warped.affine, nib.load(mov).affine)
    field = nib.load(flow)
    assert field.shape == (15, 18, 13, 3)
    np.testing.assert_allclose(field.affine, fixed_img.affine, atol=1e-6)
    # the warped image is the raw moving image under that field (in the fixed grid)
    disp = torch.from_numpy(np.asarray(field.dataobj, dtype=np.float32)).movedim(-1, 0)[None]
    assert disp.abs().max() > 0
    expected = fastwarp.warp(torch.from_numpy(moving_raw)[None, None], disp)[0, 0].numpy()
    np.testing.assert_allclose(np.asarray(warped.dataobj), expected, rtol=1e-5, atol=1e-4)
    assert moving_raw.max() > 50  # written in raw units, not normalised

    lab_out = tmp_path / "res" / "warped_labels.nii.gz"
    labels = nib.load(lab_out)
    assert np.issubdtype(labels.get_data_dtype(), np.integer)
    lab = np.asarray(labels.dataobj)
    assert lab.shape == (15, 18, 13)
    assert set(np.unique(lab)) <= set(np.unique(np.asarray(nib.load(mov_lab).dataobj)))

    metrics = json.loads(js.read_text())
    for key in ("ncc_before", "ncc_after", "mse_before", "mse_after", "dice_before", "dice_after",
                "mean_dice_before", "mean_dice_after", "folding_fraction", "jacobian_min", "jacobian_max"):
        assert key in metrics, key
    assert -1 <= metrics["ncc_before"] <= 1 and -1 <= metrics["ncc_after"] <= 1
    assert set(metrics["dice_before"]) == {"1", "2", "3"}
    assert sorted(metrics["outputs"]) == sorted([str(out), str(flow), str(lab_out), str(js)])
    assert not [p for p in os.listdir(tmp_path / "res") if p.startswith(".fastwarp-")]


# ------------------------------------------------------------------------- CLI errors


def _bad_register_cases(synth, model2d, model3d, tmp):
    """name -> (argv for `fastwarp register` without --output, strings the message must name)."""
    (mov, mov_lab), (fix, _) = synth["paths"]["moving"], synth["paths"]["fixed"]
    good = dict(moving=mov, fixed=fix, model=model3d, extra=[])

    text = tmp / "notnifti.nii.gz"
    text.write_text("definitely not an image\n")
    series = str(tmp / "series.nii.gz")
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((15, 18, 13, 2)).astype(np.float32), np.eye(4)), series)
    small = str(tmp / "small.nii.gz")
    nib.save(nib.Nifti1Image(np.random.default_rng(1).random((15, 18, 12)).astype(np.float32), np.eye(4)), small)
    floats = np.asarray(nib.load(mov_lab).dataobj).astype(np.float32)
    floats[3, 4, 5] = 0.5
    float_labels = str(tmp / "float_seg.nii.gz")
    nib.save(nib.Nifti1Image(floats, np.eye(4)), float_labels)
    flat = str(tmp / "flat.nii.gz")
    nib.save(nib.Nifti1Image(np.random.default_rng(3).random((16, 20)).astype(np.float32), np.eye(4)), flat)
    junk = tmp / "random.pt"
    junk.write_bytes(np.random.default_rng(2).bytes(4096))

    cases = {
        "missing moving": (dict(good, moving=str(tmp / "missing.nii.gz")), ["missing.nii.gz"]),
        "moving not nifti": (dict(good, moving=str(text)), ["notnifti.nii.gz", "NIfTI"]),
        "4-D volume": (dict(good, moving=series), ["series.nii.gz", "4-D"]),
        "shape mismatch": (dict(good, fixed=small), ["small.nii.gz", "(15, 18, 12)"]),
        "float labels": (dict(good, extra=["--labels", float_labels]), ["float_seg.nii.gz", "integer"]),
        "3-D model, 2-D images": (dict(good, moving=flat, fixed=flat), ["--model", model3d, "3-D model", "flat.nii.gz"]),
        "not a checkpoint": (dict(good, model=str(junk)), ["random.pt", "checkpoint"]),
        "missing checkpoint": (dict(good, model=str(tmp / "nope.pt")), ["nope.pt"]),
    }
    return cases


BAD_CASES = ["missing moving", "moving not nifti", "4-D volume", "shape mismatch", "float labels",
             "3-D model, 2-D images", "missing checkpoint", "not a checkpoint"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_register_bad_input(case, synth, model2d, model3d, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("FASTWARP_DEBUG", raising=False)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    spec, names = _bad_register_cases(synth, model2d, model3d, inputs)[case]
    outdir = tmp_path / "out"
    outputs = [outdir / "w.nii.gz", outdir / "flow.nii.gz", outdir / "m.json", outdir / "w_labels.nii.gz"]
    argv = ["register", spec["moving"], spec["fixed"], "--model", spec["model"], "--output", str(outputs[0]),
            "--flow", str(outputs[1]), "--json", str(outputs[2]), "--device", "cpu", *spec["extra"]]
    capsys.readouterr()
    rc = cli.main(argv)
    captured = capsys.readouterr()
    assert rc == 2
    err = captured.err.strip()
    assert "\n" not in err, err
    assert err.startswith("fastwarp register: error: "), err
    assert "Traceback" not in err
    for name in names:
        assert name in err, (name, err)
    for p in outputs:
        assert not p.exists(), p
    assert not outdir.exists() or not [p for p in os.listdir(outdir) if p.startswith(".fastwarp-")]


def test_register_2d_model_on_volumes_slice_by_slice(synth, model2d, tmp_path, capsys):
    """A 2-D model registers 3-D volumes axial slice by axial slice: a 3-D field without
    through-plane displacement."""
    (mov, _), (fix, _) = synth["paths"]["moving"], synth["paths"]["fixed"]
    out, flow = tmp_path / "w.nii.gz", tmp_path / "flow.nii.gz"
    rc = cli.main(["register", mov, fix, "--model", model2d, "--output", str(out), "--flow", str(flow),
                   "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    assert nib.load(out).shape == (15, 18, 13)
    field = np.asarray(nib.load(flow).dataobj)
    assert field.shape == (15, 18, 13, 3)
    assert np.all(field[..., 2] == 0) and np.abs(field[..., :2]).max() > 0


def test_register_refuses_a_file_that_is_not_a_checkpoint(synth, model2d, model3d, tmp_path, capsys):
    # the parts of the "not a checkpoint" case that hold (see the xfail above for the one line)
    spec, _ = _bad_register_cases(synth, model2d, model3d, tmp_path)["not a checkpoint"]
    out = tmp_path / "out" / "w.nii.gz"
    rc = cli.main(["register", spec["moving"], spec["fixed"], "--model", spec["model"], "--output", str(out),
                   "--device", "cpu"])
    first_line = capsys.readouterr().err.strip().splitlines()[0]
    assert rc == 2
    assert first_line.startswith("fastwarp register: error: checkpoint: ") and "random.pt" in first_line
    assert "is not a fastwarp checkpoint" in first_line
    assert not out.parent.exists()


def test_register_bad_output_suffix(synth, model3d, tmp_path, capsys):
    (mov, _), (fix, _) = synth["paths"]["moving"], synth["paths"]["fixed"]
    rc = cli.main(["register", mov, fix, "--model", model3d, "--output", str(tmp_path / "w.png"), "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "--output" in err and "w.png" in err and "\n" not in err
    assert os.listdir(tmp_path) == []


def test_debug_env_shows_the_traceback(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTWARP_DEBUG", "1")
    with pytest.raises(FileNotFoundError, match="missing"):
        cli.main(["train", "--data", str(tmp_path / "missing"), "-o", str(tmp_path / "o"), *COMMON])


def test_train_bad_input_through_cli(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("FASTWARP_DEBUG", raising=False)
    rc = cli.main(["train", "--data", str(tmp_path / "missing"), "-o", str(tmp_path / "o"), *COMMON])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("fastwarp train: error: ") and "missing" in err and "\n" not in err


# ------------------------------------------------------------------------- the command


def test_no_command_prints_usage(capsys):
    assert cli.main([]) == 2
    out = capsys.readouterr().out
    for cmd in ("fastwarp demo", "fastwarp train", "fastwarp register", "fastwarp check"):
        assert cmd in out
    assert cli.main(["--help"]) == 0
    assert "fastwarp register" in capsys.readouterr().out


def test_unknown_command(capsys):
    assert cli.main(["frobnicate", "--x"]) == 2
    captured = capsys.readouterr()
    assert "fastwarp register" in captured.out
    assert "unknown command 'frobnicate'" in captured.err


@pytest.mark.parametrize("cmd, option", [("demo", "--epochs"), ("train", "--resume"), ("register", "--fixed-labels")])
def test_subcommand_help(cmd, option, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([cmd, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert f"fastwarp {cmd}" in out and option in out


def test_register_missing_arguments(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["register", "a.nii.gz"])
    assert info.value.code == 2
    assert "required" in capsys.readouterr().err


def test_python_m_fastwarp(tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-m", "fastwarp", "demo", "--help"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "Colin27" in res.stdout and "--downsample" in res.stdout
