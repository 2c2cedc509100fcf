"""fastwarp.app.config: the command lines parse into the typed configurations, whose defaults are
the options' defaults, and bad values are refused before anything runs."""

import pytest

from fastwarp.app.cli import register_config, train_config
from fastwarp.app.config import RegisterConfig, TrainConfig


def test_train_options_are_the_config():
    assert train_config([]) == TrainConfig()
    config = train_config(["--enc", "4", "8", "--no-augment", "--lambda", "0.5", "--no-figure", "-o", "run"])
    assert config == TrainConfig(enc=[4, 8], augment=False, lam=0.5, figure=False, output="run")
    assert config.smoothness_weight == 0.5
    assert TrainConfig().smoothness_weight == 1.0 and TrainConfig(similarity="mse").smoothness_weight == 0.01


@pytest.mark.parametrize("field, value, match", [
    ("window", 4, "--window must be a positive odd"),
    ("window", 0, "--window must be a positive odd"),
    ("downsample", 0, "--downsample must be >= 1"),
    ("similarity", "l1", "--similarity must be one of"),
    ("pairing", "random", "--pairing must be one of"),
    ("ndim", 1, "--ndim must be one of"),
])
def test_train_config_refuses_bad_values(field, value, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**{field: value})


def test_register_config():
    config = register_config(["m.nii.gz", "f.nii", "-m", "run/checkpoint.pt", "-o", "out/w.nii", "--labels", "l.nii.gz"])
    assert config == RegisterConfig("m.nii.gz", "f.nii", "run/checkpoint.pt", "out/w.nii", labels="l.nii.gz")
    assert config.device == "auto" and config.flow is None
    assert config.warped_labels == "out/w_labels.nii"
    assert RegisterConfig("m", "f", "c", "w.nii.gz", labels="l", labels_output="x.nii").warped_labels == "x.nii"
    assert RegisterConfig("m", "f", "c", "w.nii.gz").warped_labels is None
    for option, kwargs in [("output", dict(output="w.png")), ("flow", dict(flow="f.npy")),
                           ("labels-output", dict(labels="l", labels_output="x.mgz"))]:
        with pytest.raises(ValueError, match=f"--{option}: .* must end in .nii or .nii.gz"):
            RegisterConfig(**{"moving": "m", "fixed": "f", "model": "c", "output": "w.nii", **kwargs})


def test_register_config_refine_and_affine():
    config = register_config(["m.nii.gz", "f.nii.gz", "-o", "out/w.nii.gz", "--refine", "--affine"])
    assert config.model is None and config.refine == 0 and config.affine and not config.diffeomorphic
    assert config.matrix_output == "out/w_affine.txt"
    config = register_config(["m.nii.gz", "f.nii.gz", "-o", "w.nii", "--refine", "30", "--diffeomorphic",
                              "--matrix", "a.mat"])
    assert config.refine == 30 and config.diffeomorphic and config.matrix_output is None  # (no --affine)
    assert register_config(["m", "f", "-o", "w.nii", "--affine", "--matrix", "a.mat"]).matrix_output == "a.mat"


@pytest.mark.parametrize("kwargs, match", [
    (dict(), "nothing to do: give --model, --refine or --affine"),
    (dict(model="c", output=""), "--output is required"),
    (dict(refine=-1), "--refine takes a number of steps per level >= 0"),
    (dict(model="c", diffeomorphic=True), "--diffeomorphic applies to --refine"),
    (dict(refine=0, similarity="cc"), "--similarity must be one of"),
])
def test_register_config_refuses_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RegisterConfig(**{"moving": "m", "fixed": "f", "output": "w.nii", **kwargs})


def test_register_smooth_and_transform_outputs():
    from fastwarp.app.register import refine_config

    c = register_config(["m.nii", "f.nii", "-o", "out/w.nii.gz", "--refine", "--diffeomorphic", "--smooth", "0.5"])
    assert refine_config(c).smooth == 0.5 and refine_config(c).diffeomorphic
    assert refine_config(register_config(["m", "f", "-o", "w.nii", "--refine", "--diffeomorphic"])).smooth == pytest.approx(0.1)
    with pytest.raises(ValueError, match="--smooth"):
        register_config(["m", "f", "-o", "w.nii", "--affine", "--smooth", "1"])
    with pytest.raises(ValueError, match="--smooth"):
        register_config(["m", "f", "-o", "w.nii", "--refine", "--smooth", "-1"])
    b = register_config(["m", "f", "-o", "w.nii", "--refine", "--diffeomorphic", "--smooth", "0.3", "--bending", "1"])
    assert refine_config(b).bending == 1.0 and refine_config(b).smooth == 0.3
    assert refine_config(register_config(["m", "f", "-o", "w.nii", "--refine"])).bending == 0
    with pytest.raises(ValueError, match="--bending takes a finite weight >= 0 for --refine, got 1.0 without --refine"):
        register_config(["m", "f", "-o", "w.nii", "--affine", "--bending", "1"])
    with pytest.raises(ValueError, match="--bending takes a finite weight >= 0"):
        register_config(["m", "f", "-o", "w.nii", "--refine", "--bending", "-0.5"])
    with pytest.raises(ValueError, match="--smooth takes a finite weight >= 0"):
        register_config(["m", "f", "-o", "w.nii", "--refine", "--smooth", "inf"])
    # the transform files: beside the output by default, under --transform's prefix otherwise
    assert c.warp_output == "out/w_warp.nii.gz" and c.inverse_warp_output is None and c.matrix_output is None
    t = register_config(["m", "f", "-o", "w.nii", "--affine", "--refine", "-t", "x/reg", "--inverse"])
    assert (t.warp_output, t.inverse_warp_output, t.matrix_output, t.inverse_matrix_output) == (
        "x/reg_warp.nii.gz", "x/reg_inverse_warp.nii.gz", "x/reg_affine.txt", "x/reg_inverse_affine.txt")
    assert register_config(["m", "f", "-o", "w.nii", "--affine"]).warp_output is None  # no deformable part
