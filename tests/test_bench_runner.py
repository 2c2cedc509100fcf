"""``python -m fastwarp.bench``: the command runs every case at tiny sizes on the CPU and writes
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
    assert meta["command"] == "python -m fastwarp.bench " + " ".join(argv)

    cases = {case["kind"]: case for case in result["cases"]}
    plain = {
        "warp-fwd": ["fastwarp", "grid_sample", "voxelmorph"],
        "warp-fwdbwd": ["fastwarp", "grid_sample", "voxelmorph"],
        "ncc-fwd": ["fastwarp", "voxelmorph-classic"],
        "ncc-fwdbwd": ["fastwarp", "voxelmorph-classic"],
        "train": ["fastwarp", "voxelmorph"],
    }
    assert set(cases) == set(plain)
    installed = {
        "warp-fwd": [("voxelmorph-pkg", "voxelmorph"), ("monai", "monai")],
        "ncc-fwd": [("neurite", "neurite"), ("monai", "monai")],
    }
    installed["warp-fwdbwd"], installed["ncc-fwdbwd"] = installed["warp-fwd"], installed["ncc-fwd"]
    for kind, case in cases.items():
        rows = {row["impl"]: row for row in case["rows"]}
        expected = plain[kind] + [impl for impl, mod in installed.get(kind, []) if importlib.util.find_spec(mod)]
        for impl in expected:
            row = rows[impl]
            assert row["status"] == "ok", row
            assert row["median_ms"] > 0 and row["ratio"] > 0 and row["calls"] == 2, row
            assert row["peak_extra_bytes"] is not None, row
        assert rows["fastwarp"]["ratio"] == 1.0
        for row in case["rows"]:
            assert row["status"] in ("ok", "not installed", "not applicable", "unavailable"), row
        if kind.startswith(("warp", "ncc")):
            assert all(rows[impl]["gbps"] > 0 for impl in expected)
    for name in ("fused_lncc", "fireants"):  # CUDA-only peers, listed rather than run
        assert {row["impl"]: row for row in cases["ncc-fwd"]["rows"]}[name]["status"] == "not applicable"

    train = {row["impl"]: row for row in cases["train"]["rows"]}
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
        "import sys, fastwarp, fastwarp.bench, fastwarp.app.bench.runner, fastwarp.app.bench.train_step\n"
        f"print([m for m in sys.modules if m.split('.')[0] in {PEERS!r}])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout
