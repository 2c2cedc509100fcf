"""The package's shape (scripts/import_graph.py): the op layer imports nothing of the
application, ``import fastwarp`` loads none of it (nor nibabel, tqdm, matplotlib), and no module
only forwards another's names (one import path per name)."""

import pathlib
import subprocess
import sys

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "import_graph.py"


def test_two_layers_and_one_path_per_name():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_drawing_shows_both_layers():
    out = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120, check=True).stdout
    op_layer, application = out.split("application:")
    assert "fastwarp.warp -> _errors, _ops" in op_layer and "fastwarp.app" not in op_layer.replace("app.cli", "")
    assert "fastwarp.app.register ->" in application
