"""The ``fastwarp`` command (fastwarp.app.cli): usage, help, unknown commands, one-line errors
and FASTWARP_DEBUG, ``python -m fastwarp``."""

import os
import subprocess
import sys

import pytest

from fastwarp.app import cli
from synthetic import COMMON

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
