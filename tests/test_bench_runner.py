"""``fastwarp bench``: the command runs every case at tiny sizes on the CPU and writes
its JSON and Markdown; the peers stay unimported until a baseline needs them; a baseline that is
not installed is listed as such. No timing assertions (the machine is shared)."""

import importlib.util
import json
import subprocess
import sys

import pytest

from fastwarp.app.bench import BaselineUnavailable, baselines, runner

PEERS = ("monai", "neurite", "voxelmorph", "fused_lncc", "fireants")


def test_bench_command_tiny(tmp_path):
    js, md = tmp_path / "bench.json", tmp_path / "bench.md"
    argv = ["--size", "tiny", "--device", "cpu", "--repeats", "2", "--json", str(js), "--markdown", str(md)]
    assert runner.main(argv) == 0

    result = json.loads(js.read_text())
    meta = result["meta"]
    assert meta["device_type"] == "cpu" and meta["threads"] == 2 and meta["size"] == "tiny"
    assert meta["torch"] and meta["fastwarp"] and meta["date"]
    assert meta["command"] == "fastwarp bench " + " ".join(argv)

    cases = {case["case"]: case for case in result["cases"]}
    warp = ["fastwarp", "grid_sample", "voxelmorph"]
    plain = {f"warp-{nd}d-{mode}": warp for nd in (2, 3) for mode in ("fwd", "fwdbwd", "fwdbwd-both", "fwd-nearest")}
    plain.update({"vecint-3d": ["fastwarp", "voxelmorph"], "ncc-3d-w3-fwd": ["fastwarp", "voxelmorph-classic"],
                  "ncc-3d-w3-fwdbwd": ["fastwarp", "voxelmorph-classic"], "train-3d": ["fastwarp", "voxelmorph"],
                  "mi-3d-bspline-b32-fwdbwd": ["fastwarp"], "mi-3d-gaussian-b32-fwdbwd": ["fastwarp"]})
    assert set(cases) == set(plain)
    installed = {name: [("voxelmorph-pkg", "voxelmorph"), ("monai", "monai")] for name in plain
                 if name.startswith(("warp", "vecint"))}
    installed.update({name: [("neurite", "neurite"), ("monai", "monai")] for name in plain if name.startswith("ncc")})
    installed.update({name: [("monai", "monai")] for name in plain if name.startswith("mi")})
    for name, case in cases.items():
        rows = {row["impl"]: row for row in case["rows"]}
        expected = plain[name] + [impl for impl, mod in installed.get(name, []) if importlib.util.find_spec(mod)]
        for impl in expected:
            row = rows[impl]
            assert row["status"] == "ok", row
            assert row["median_ms"] > 0 and row["ratio"] > 0 and row["calls"] == 2, row
            assert row["peak_extra_bytes"] is not None, row
        assert rows["fastwarp"]["ratio"] == 1.0
        for row in case["rows"]:
            assert row["status"] in ("ok", "not installed", "not applicable", "unavailable"), row
        if name.startswith(("warp", "ncc")):
            assert all(rows[impl]["gbps"] > 0 for impl in expected)
    for name in ("fused_lncc", "fireants"):  # CUDA-only peers, listed rather than run
        assert {row["impl"]: row for row in cases["ncc-3d-w3-fwd"]["rows"]}[name]["status"] == "not applicable"
    assert {row["impl"]: row for row in cases["mi-3d-bspline-b32-fwdbwd"]["rows"]}["fireants"]["status"] == \
        "not applicable"

    train = {row["impl"]: row for row in cases["train-3d"]["rows"]}
    assert all(train[v]["steps_per_s"] > 0 for v in ("fastwarp", "voxelmorph"))
    # same weights, data and loss formula: see tests/test_bench_train_step.py
    assert train["voxelmorph"]["first_step_loss"] == pytest.approx(train["fastwarp"]["first_step_loss"], rel=1e-5)

    text = md.read_text()
    header = "| case | implementation | median (ms) | time / fastwarp | GB/s | % of copy | peak extra (MiB) | steps/s |"
    assert header in text
    assert "| train-3d 16x16x16 | **fastwarp** |" in text


def test_missing_baseline_is_listed(monkeypatch, tmp_path, capsys):
    def missing(spatial, device, dtype):
        baselines._import("not-a-peer", "fastwarp_no_such_peer_package")

    monkeypatch.setitem(baselines.WARP_IMPLS, "not-a-peer", missing)
    js = tmp_path / "bench.json"
    argv = ["--size", "tiny", "--device", "cpu", "--repeats", "1", "--cases", "warp", "--json", str(js)]
    assert runner.main(argv) == 0
    for case in json.loads(js.read_text())["cases"]:
        row = {row["impl"]: row for row in case["rows"]}["not-a-peer"]
        assert row["status"] == "not installed" and row["median_ms"] is None
    assert "not-a-peer" in capsys.readouterr().out

    with pytest.raises(BaselineUnavailable) as info:
        missing((8, 9, 10), None, None)
    assert isinstance(info.value, ImportError) and not info.value.installed


def test_bad_arguments(capsys):
    with pytest.raises(SystemExit):
        runner.main(["--cases", "warp,nope"])
    assert "--cases" in capsys.readouterr().err


def test_peers_are_imported_lazily():
    """Importing fastwarp, its bench package and the command's modules imports no peer."""
    code = (
        "import sys, fastwarp, fastwarp.app.bench, fastwarp.app.bench.runner, fastwarp.app.bench.train_step\n"
        f"print([m for m in sys.modules if m.split('.')[0] in {PEERS!r}])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout
