"""``fastwarp register`` (fastwarp.app.register) on tiny synthetic NIfTI data and models trained
by the tests: it writes what it says on the fixed grid, a 2-D model registers volumes slice by
slice, and bad input is one line and exit code 2 with nothing written."""

import json
import os

import nibabel as nib
import numpy as np
import pytest
import torch

import fastwarp
from fastwarp.app import cli

pytestmark = pytest.mark.usefixtures("one_thread")


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
    # the warped image is the raw moving image under that field: the moving image is read at
    # the moving voxel V (p + disp(p)), V = moving voxel <- world <- fixed voxel (the two
    # images lie on different grids; their NIfTI affines place them in one world)
    disp = torch.from_numpy(np.asarray(field.dataobj, dtype=np.float32)).movedim(-1, 0)[None]
    assert disp.abs().max() > 0
    V = torch.from_numpy(np.linalg.inv(nib.load(mov).affine) @ fixed_img.affine).float()
    p = torch.stack(torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in (15, 18, 13)], indexing="ij"))
    coords = torch.einsum("ij,jxyz->ixyz", V[:3, :3], p + disp[0]) + V[:3, 3].view(3, 1, 1, 1)
    size = torch.tensor([14.0, 17.0, 12.0]).view(3, 1, 1, 1)
    grid = (2 * coords / size - 1).movedim(0, -1).flip(-1)[None]
    expected = torch.nn.functional.grid_sample(torch.from_numpy(moving_raw)[None, None], grid, align_corners=True)
    np.testing.assert_allclose(np.asarray(warped.dataobj), expected[0, 0].numpy(), rtol=1e-5, atol=1e-3)
    assert np.abs(np.asarray(warped.dataobj)).max() > 50
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
    warp_file = tmp_path / "res" / "warped_warp.nii.gz"  # the ITK field, by default beside the output
    assert sorted(metrics["outputs"]) == sorted([str(out), str(flow), str(lab_out), str(warp_file), str(js)])
    itk = np.asarray(nib.load(warp_file).dataobj)
    assert itk.shape == (15, 18, 13, 1, 3)
    world = np.einsum("ij,xyzj->xyzi", fixed_img.affine[:3, :3], disp[0].movedim(0, -1).numpy())
    np.testing.assert_allclose(itk[:, :, :, 0], world * [-1, -1, 1], rtol=1e-5, atol=1e-5)  # LPS mm
    assert not [p for p in os.listdir(tmp_path / "res") if p.startswith(".fastwarp-")]


def _bad_register_cases(synth, model2d, model3d, tmp):
    """name -> (argv for `fastwarp register` without --output, strings the message must name)."""
    (mov, mov_lab), (fix, _) = synth["paths"]["moving"], synth["paths"]["fixed"]
    good = dict(moving=mov, fixed=fix, model=model3d, extra=[])

    text = tmp / "notnifti.nii.gz"
    text.write_text("definitely not an image\n")
    series = str(tmp / "series.nii.gz")
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((15, 18, 13, 2)).astype(np.float32), np.eye(4)), series)
    far = str(tmp / "far.nii.gz")
    shifted = np.eye(4)
    shifted[:3, 3] = 500.0  # 500 mm away: no world overlap with the fixed image
    nib.save(nib.Nifti1Image(np.random.default_rng(1).random((15, 18, 12)).astype(np.float32), shifted), far)
    small_labels = str(tmp / "small_seg.nii.gz")
    nib.save(nib.Nifti1Image(np.ones((5, 6, 7), np.int16), np.eye(4)), small_labels)
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
        "no overlap": (dict(good, fixed=far), ["far.nii.gz", "overlap", "--affine"]),
        "labels shape mismatch": (dict(good, extra=["--labels", small_labels]), ["small_seg.nii.gz", "(5, 6, 7)"]),
        "float labels": (dict(good, extra=["--labels", float_labels]), ["float_seg.nii.gz", "integer"]),
        "3-D model, 2-D images": (dict(good, moving=flat, fixed=flat), ["--model", model3d, "3-D model", "flat.nii.gz"]),
        "not a checkpoint": (dict(good, model=str(junk)), ["random.pt", "checkpoint"]),
        "missing checkpoint": (dict(good, model=str(tmp / "nope.pt")), ["nope.pt"]),
    }
    return cases


BAD_CASES = ["missing moving", "moving not nifti", "4-D volume", "no overlap", "labels shape mismatch", "float labels",
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


@pytest.mark.parametrize("downsample", [1, 2])
def test_2d_model_slices_in_batches_as_one_by_one(model2d, monkeypatch, downsample):
    """The slices of a volume go through a 2-D model in batches: each slice's field is what
    the model gives that slice alone (batches of 5, 5 and 3 of 13 slices)."""
    import fastwarp.app.register as R
    from fastwarp.app.checkpoints import load_checkpoint, model_from_checkpoint

    model = model_from_checkpoint(load_checkpoint(model2d))
    rng = np.random.default_rng(7)
    moving, fixed = (rng.random((15, 18, 13)).astype(np.float32) for _ in range(2))
    monkeypatch.setattr(R, "SLICES_PER_BATCH", 5)
    field = R.predict_displacement(model, moving, fixed, torch.device("cpu"), downsample)
    assert field.shape == (1, 3, 15, 18, 13) and bool((field[0, 2] == 0).all())
    for k in range(13):
        alone = R._predict_batch(model, moving[None, :, :, k], fixed[None, :, :, k], torch.device("cpu"), downsample)
        torch.testing.assert_close(field[0, :2, :, :, k], alone[0], rtol=1e-5, atol=1e-6)
    assert float(field[0, :2].abs().max()) > 0


def test_register_refuses_a_file_that_is_not_a_checkpoint(synth, model2d, model3d, tmp_path, capsys):
    # torch's own hint (load with weights_only=False) is unsafe advice for a foreign file: not passed on
    spec, _ = _bad_register_cases(synth, model2d, model3d, tmp_path)["not a checkpoint"]
    out = tmp_path / "out" / "w.nii.gz"
    rc = cli.main(["register", spec["moving"], spec["fixed"], "--model", spec["model"], "--output", str(out),
                   "--device", "cpu"])
    first_line = capsys.readouterr().err.strip().splitlines()[0]
    assert rc == 2
    assert first_line.startswith("fastwarp register: error: checkpoint: ") and "random.pt" in first_line
    assert first_line.endswith("is not a fastwarp checkpoint") and "weights_only" not in first_line
    assert not out.parent.exists()


def test_register_bad_output_suffix(synth, model3d, tmp_path, capsys):
    (mov, _), (fix, _) = synth["paths"]["moving"], synth["paths"]["fixed"]
    rc = cli.main(["register", mov, fix, "--model", model3d, "--output", str(tmp_path / "w.png"), "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "--output" in err and "w.png" in err and "\n" not in err
    assert os.listdir(tmp_path) == []


def test_register_checks_every_output_path_before_the_work(synth, model3d, tmp_path, capsys, monkeypatch):
    """A bad --figure (format) or an output in a folder that cannot be written fails at once,
    naming the option, before any registration runs or anything is written."""
    import fastwarp.app.register as R

    (mov, _), (fix, _) = synth["paths"]["moving"], synth["paths"]["fixed"]
    ran = []
    monkeypatch.setattr(R, "register_pair", lambda *a, **k: ran.append(1))
    out = tmp_path / "out" / "w.nii.gz"
    rc = cli.main(["register", mov, fix, "--model", model3d, "--output", str(out), "--figure", str(tmp_path / "x.jpgx"),
                   "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "--figure" in err and "x.jpgx" in err and "\n" not in err
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where a folder should be\n")
    rc = cli.main(["register", mov, fix, "--model", model3d, "--output", str(out), "--json", str(blocked / "m.json"),
                   "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "--json" in err and "m.json" in err
    assert not ran and not out.parent.exists()


def test_register_keeps_the_label_dtype_and_reads_nan_as_background(synth, tmp_path, capsys):
    """A moving scan with a NaN background (as some tools write) registers to a warped image
    without NaN, with one warning; uint8 labels come out uint8."""
    (mov, mov_lab), (fix, fix_lab) = synth["paths"]["moving"], synth["paths"]["fixed"]
    img = nib.load(mov)
    data = np.asarray(img.dataobj, dtype=np.float32)
    data[data < np.percentile(data, 30)] = np.nan
    nan_moving = str(tmp_path / "nan_moving.nii.gz")
    nib.save(nib.Nifti1Image(data, img.affine), nan_moving)
    lab = nib.load(mov_lab)
    u8 = str(tmp_path / "moving_u8_seg.nii.gz")
    nib.save(nib.Nifti1Image(np.asarray(lab.dataobj).astype(np.uint8), lab.affine), u8)
    out = tmp_path / "w.nii.gz"
    with pytest.warns(UserWarning, match=r"nan_moving.nii.gz: \d+ non-finite voxels .* read as 0"):
        rc = cli.main(["register", nan_moving, fix, "--refine", "2", "--labels", u8, "--fixed-labels", fix_lab,
                       "--output", str(out), "--device", "cpu", "-q"])
    assert rc == 0
    warped = np.asarray(nib.load(out).dataobj)
    assert np.isfinite(warped).all() and warped.max() > 0
    warped_labels = nib.load(str(tmp_path / "w_labels.nii.gz"))
    assert warped_labels.get_data_dtype() == np.uint8


def test_register_affine_and_refine_without_a_model(synth, tmp_path, capsys):
    """Raw scans on two grids: --affine then --refine, no network; the affine comes out as an
    ITK transform file that load_matrix reads back."""
    from fastwarp.app.transforms import load_matrix

    (mov, mov_lab), (fix, fix_lab) = synth["paths"]["moving"], synth["paths"]["fixed"]
    out, js = tmp_path / "w.nii.gz", tmp_path / "m.json"
    rc = cli.main(["register", mov, fix, "--affine", "--refine", "20", "--output", str(out), "--labels", mov_lab,
                   "--fixed-labels", fix_lab, "--json", str(js), "--device", "cpu", "--quiet"])
    assert rc == 0
    stdout = capsys.readouterr().out
    assert "after the affine alone" in stdout and "registration took" in stdout
    matrix = tmp_path / "w_affine.txt"
    metrics = json.loads(js.read_text())
    assert str(matrix) in metrics["outputs"] and set(metrics["stages"]) == {"affine", "refine"}
    np.testing.assert_allclose(load_matrix(matrix), np.array(metrics["affine"]), atol=1e-9)
    assert metrics["mean_dice_after"] >= metrics["mean_dice_affine"] - 0.02
    assert nib.load(out).shape == nib.load(fix).shape
