"""Training (fastwarp.app.training), end to end on tiny synthetic NIfTI subjects: the loss goes
down and the log, checkpoint and figure are written; resume continues exactly; DDP on gloo
matches one process; bad input is an error naming it."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from fastwarp.app.models import RegUNet
from fastwarp.app.checkpoints import CheckpointError, load_checkpoint
from synthetic import COMMON, run_train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# tiny convolutions: one thread is faster than two fighting over a busy machine, and runs
# compared bit for bit need the same thread count anyway
pytestmark = pytest.mark.usefixtures("one_thread")


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
        single: [sys.executable, "-m", "fastwarp", "train", *args, "-o", str(single)],
        ddp: [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
              "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
              "-m", "fastwarp", "train", *args, "-o", str(ddp)],
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
