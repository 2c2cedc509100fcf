"""The registration benchmark (fastwarp/app/bench/registration.py, peers.py): the peers' fields
converted to fastwarp's convention (checked against each peer's own warped image, on a grid with
unequal spacings and ITK's LPS flips), the driver's table and JSON on tiny runs, and the 1 mm
data's grid and finder. The peers (antspyx, SimpleITK) are skipped when not installed."""

import importlib.util
import json
import pathlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fastwarp
from fastwarp.app.bench import peers as P
from fastwarp.app.bench import registration as R
from fastwarp.app.data import RegistrationPair, normalize_intensity
from fastwarp.app.data.contrast import t2_like
from fastwarp.app.data.subjects import embedded_1mm, embedded_pairs

REPO = pathlib.Path(__file__).resolve().parents[1]
HAS_ANTS = importlib.util.find_spec("ants") is not None
HAS_SITK = importlib.util.find_spec("SimpleITK") is not None
needs_ants = pytest.mark.skipif(not HAS_ANTS, reason="antspyx not installed (pip install antspyx)")
needs_sitk = pytest.mark.skipif(not HAS_SITK, reason="SimpleITK not installed (pip install SimpleITK)")

# Voxel -> world (RAS, mm) with unequal spacings, the first axis running right to left and an
# offset: a wrong sign, axis order or spacing in the conversion shows.
AFFINE = np.array([[-2.0, 0.0, 0.0, 30.0],
                   [0.0, 1.5, 0.0, -20.0],
                   [0.0, 0.0, 1.25, 5.0],
                   [0.0, 0.0, 0.0, 1.0]])
SHAPE = (20, 24, 18)


def synthetic_pair(shape=SHAPE, seed=0, amplitude=2.0) -> RegistrationPair:
    """A textured blob and the same blob under a smooth deformation of about ``amplitude`` voxels,
    normalized to [0, 1], with labels 1-3 by intensity."""
    g = torch.Generator().manual_seed(seed)
    x = torch.meshgrid([torch.linspace(-1, 1, s) for s in shape], indexing="ij")
    texture = F.interpolate(torch.randn(1, 1, 4, 4, 4, generator=g), size=shape, mode="trilinear", align_corners=True)
    fixed = (torch.exp(-3.0 * sum(c ** 2 for c in x)) * (1.5 + 0.5 * texture)).clamp_min(0)
    disp = amplitude * F.interpolate(torch.randn(1, 3, 3, 3, 3, generator=g), size=shape, mode="trilinear",
                                     align_corners=True)
    moving = fastwarp.warp(fixed, disp)
    fixed, moving = (normalize_intensity(t[0, 0].numpy()) for t in (fixed, moving))

    def labels(a):
        return np.digitize(a, [0.15, 0.45, 0.75]).astype(np.int64)

    return RegistrationPair("moving-to-fixed", 1.5, moving, fixed, labels(moving), labels(fixed), AFFINE)


def _check_peer(pair: RegistrationPair, peer: P.PeerResult):
    """The peer's converted field through fastwarp.warp reproduces the peer's warped image, and a
    field converted without the LPS flip would not (the check is not vacuous)."""
    assert peer.disp.shape == (1, 3, *pair.fixed.shape)
    assert float(peer.disp.abs().max()) > 0.3, "the registration barely moved: the check would prove little"
    assert P.warp_check(pair.moving, peer) < 1e-4
    wrong = P.PeerResult(peer.disp * torch.tensor([-1.0, -1.0, 1.0]).view(1, 3, 1, 1, 1), peer.warped, None, 0.0)
    assert P.warp_check(pair.moving, wrong) > 1e-2
    # the peer's nearest-neighbour labels and fastwarp's through the converted field (ties at exactly
    # half a voxel may round either way)
    mine = fastwarp.warp(torch.from_numpy(pair.moving_labels)[None, None], peer.disp, mode="nearest")[0, 0].numpy()
    assert (mine == peer.warped_labels).mean() > 0.99
    assert peer.seconds > 0


@needs_ants
def test_ants_field_conversion():
    pair = synthetic_pair()
    peer = P.ants_syn(pair.moving, pair.fixed, pair.moving_labels, schedule=(20, 10), affine=pair.affine, threads=1)
    _check_peer(pair, peer)
    assert peer.settings["transform"] == "SyNOnly" and peer.settings["reg_iterations"] == [20, 10]
    again = P.ants_syn(pair.moving, pair.fixed, None, schedule=(20, 10), affine=pair.affine, threads=1)
    torch.testing.assert_close(again.disp, peer.disp, rtol=0, atol=0)  # deterministic


@needs_sitk
def test_demons_field_conversion():
    pair = synthetic_pair()
    peer = P.sitk_demons(pair.moving, pair.fixed, pair.moving_labels, schedule=(10, 10), shrink=(2, 1),
                         affine=pair.affine, threads=1)
    _check_peer(pair, peer)
    assert peer.settings["iterations"] == [10, 10]
    with pytest.raises(ValueError, match="one iteration count per level"):
        P.sitk_demons(pair.moving, pair.fixed, schedule=(10,), shrink=(2, 1))


def test_driver_tiny_run_table_json_markdown():
    pair = synthetic_pair(shape=(16, 16, 16))
    methods = ["identity", "refine", "network", "ants-syn", "demons"]
    lines = []

    class Out:
        def write(self, s):
            lines.append(s)

        def flush(self):
            pass

    result = R.run([pair], methods, threads=1, model=None, quick=True, repeats=2, command="test", out=Out())
    rows = {r["method"]: r for r in result["rows"]}
    assert list(rows) == methods
    assert rows["identity"]["seconds"] == 0.0 and rows["identity"]["folding_percent"] == 0.0
    assert rows["network"]["status"] == "skipped" and "fastwarp demo" in rows["network"]["reason"]
    for name in ("identity", "refine"):
        r = rows[name]
        assert r["status"] == "ok" and set(r["dice"]) <= {1, 2, 3} and 0 <= r["mean_dice"] <= 1
        assert r["mean_dice"] == pytest.approx(sum(r["dice"].values()) / len(r["dice"]))
    assert rows["refine"]["seconds"] > 0 and rows["refine"]["settings"]["refine"]["iterations"] == [3, 2]
    runs = rows["refine"]["seconds_runs"]  # repeats=2: the median of two runs, which agreed
    assert len(runs) == 2 and rows["refine"]["seconds"] == pytest.approx(sum(runs) / 2)
    assert rows["identity"]["seconds_runs"] is None
    for name, installed in (("ants-syn", HAS_ANTS), ("demons", HAS_SITK)):
        r = rows[name]
        if installed:
            assert r["status"] == "ok" and r["warp_check"] < 1e-4 and r["settings"]["threads"] == 1
        else:
            assert r["status"] == "not installed"
    printed = "".join(lines)
    assert "mean Dice" in printed and "refine" in printed and "skipped" in printed
    text = json.dumps(result)  # serializable
    assert json.loads(text)["meta"]["quick"] is True
    md = R.format_markdown(result)
    assert "| **refine** | moving-to-fixed | 1.5 |" in md and "warp check" in md


def test_main_quick_on_the_embedded_pair(tmp_path, capsys):
    js, md = tmp_path / "r.json", tmp_path / "r.md"
    methods = "identity,ants-syn,demons"
    assert R.main(["--quick", "--methods", methods, "--directions", "colin27-to-mni152",
                   "--json", str(js), "--markdown", str(md)]) == 0
    out = capsys.readouterr().out
    result = json.loads(js.read_text())
    assert [r["method"] for r in result["rows"]] == methods.split(",")
    assert all(r["shape"] == [80, 96, 96] and r["resolution"] == 2.0 for r in result["rows"])
    identity = result["rows"][0]
    assert identity["mean_dice"] == pytest.approx(0.5542, abs=1e-4)  # the embedded README's figures
    assert "colin27-to-mni152" in out and md.read_text().startswith("#### `python -m fastwarp.app.bench.registration")


def test_main_rejects_bad_methods(capsys):
    with pytest.raises(SystemExit):
        R.main(["--methods", "refine,nope"])
    assert "--methods" in capsys.readouterr().err


def test_embedded_1mm_finder(tmp_path, monkeypatch):
    assert embedded_1mm(tmp_path, missing_ok=True) is None
    with pytest.raises(FileNotFoundError, match="make_data.py --fetch --voxel-mm 1"):
        embedded_1mm(tmp_path)
    for name in ("mni152", "colin27"):
        for kind in ("t1", "labels"):
            (tmp_path / f"{name}_{kind}.nii.gz").write_bytes(b"")
    monkeypatch.setenv("FASTWARP_DATA_1MM", str(tmp_path))
    specs = embedded_1mm()
    assert [pathlib.Path(s.image).name for s in specs] == ["mni152_t1.nii.gz", "colin27_t1.nii.gz"]
    assert all(pathlib.Path(s.labels).parent == tmp_path for s in specs)


@pytest.mark.skipif(embedded_1mm(missing_ok=True) is None,
                    reason="1 mm data not made (scripts/make_data.py --fetch --voxel-mm 1)")
def test_1mm_pair_when_present():
    pairs = embedded_pairs([1.0], ["mni152-to-colin27"])
    (pair,) = pairs
    assert pair.fixed.shape == (160, 192, 176) and pair.resolution == 1.0
    np.testing.assert_allclose(np.diag(pair.affine), [1, 1, 1, 1])
    assert set(np.unique(pair.fixed_labels)) == {0, 1, 2, 3}


def test_make_data_grid_at_2_and_1_mm():
    spec = importlib.util.spec_from_file_location("make_data", REPO / "scripts" / "make_data.py")
    make_data = importlib.util.module_from_spec(spec)
    pytest.importorskip("scipy")
    spec.loader.exec_module(make_data)
    # the two brain masks' world boxes (mni152, colin27), as make_data measures them
    boxes = [(np.array([-72.5, -107.5, -72.5]), np.array([72.5, 73.5, 82.5])),
             (np.array([-72.5, -106.5, -66.5]), np.array([71.5, 73.5, 84.5]))]
    shape, affine = make_data.common_grid(boxes, 2.0)
    assert shape == (80, 96, 96)
    np.testing.assert_allclose(affine[:3, 3], [-78.5, -111.5, -88.5])  # the shipped files' affine
    shape, affine = make_data.common_grid(boxes, 1.0)
    assert shape == (160, 192, 176)
    np.testing.assert_allclose(affine[:3, 3], [-80.0, -113.0, -82.0])
    assert np.all(affine[:3, 3] == np.round(affine[:3, 3]))  # voxel centres on the sources' integer mm


def test_multimodal_case_registers_a_t2_like_moving_image_with_mi(tmp_path):
    js = tmp_path / "r.json"
    assert R.main(["--quick", "--methods", "identity,refine", "--directions", "colin27-to-mni152",
                   "--contrast", "t2", "--similarity", "mi", "--json", str(js)]) == 0
    result = json.loads(js.read_text())
    assert result["meta"]["contrast"] == "t2" and result["meta"]["similarity"] == "mi"
    refine = result["rows"][1]
    assert refine["status"] == "ok" and refine["settings"]["refine"]["similarity"] == "mi"
    assert "moving images' contrast: t2" in R.format_markdown(result)


def test_t2_like_is_another_contrast_of_the_same_brain():
    from fastwarp.app.data import embedded_pairs, t2_like

    pair = embedded_pairs(directions=["colin27-to-mni152"])[0]
    t1, labels = pair.moving, pair.moving_labels
    t2 = t2_like(t1, seed=0)
    assert t2.dtype == np.float32 and t2.shape == t1.shape and t2.max() == 1.0
    np.testing.assert_array_equal(t2[t1 == 0], 0)  # the background stays 0
    np.testing.assert_array_equal(t2_like(t1, seed=0), t2)  # deterministic
    median = {k: float(np.median(t2[labels == k])) for k in (1, 2, 3)}  # CSF, GM, WM
    assert median[1] > median[2] > median[3]  # the tissue order of T1 reversed...
    rim = (t1 > 0) & (t1 < 0.15)
    assert float(np.median(t2[rim])) < median[2]  # ...but not a monotonic map: the dim rim stays dark


def test_multimodal_pair_script_writes_what_the_benchmark_registers(tmp_path):
    """scripts/multimodal_pair.py: the files that `fastwarp register` reads for the measured
    command, the same images as the benchmark's pair, on the embedded grid."""
    import nibabel as nib

    spec = importlib.util.spec_from_file_location("multimodal_pair", REPO / "scripts" / "multimodal_pair.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main([str(tmp_path)]) == 0
    (pair,) = embedded_pairs(directions=["mni152-to-colin27"])
    names = ("moving_t1", "moving_t2", "fixed", "moving_labels", "fixed_labels")
    files = {n: nib.load(str(tmp_path / f"mni152-to-colin27_{n}.nii.gz")) for n in names}
    assert len(list(tmp_path.iterdir())) == 2 * len(names)
    for img in files.values():
        np.testing.assert_allclose(img.affine, pair.affine)
    np.testing.assert_array_equal(np.asarray(files["moving_t1"].dataobj), pair.moving.astype(np.float32))
    np.testing.assert_array_equal(np.asarray(files["moving_t2"].dataobj), t2_like(pair.moving, 0))
    np.testing.assert_array_equal(np.asarray(files["fixed_labels"].dataobj), pair.fixed_labels)
