"""fastwarp.app.demo: the main job end to end, shortened (a 2-D network trained for a few steps),
on the embedded brains: the network alone, then refined for the held-out pair."""

import os

from fastwarp.app.demo import demo


def test_demo_shows_network_and_refinement(tmp_path, capsys):
    ev = demo(output=str(tmp_path / "demo"), device="cpu", ndim=2, epochs=1, steps=3, quiet=True)
    out = capsys.readouterr().out
    assert "the network alone:" in out and "refined for this pair" in out
    refined = ev["refined"]
    # a 3-step network barely moves; the refinement registers the pair, without folding
    assert refined["mean_dice_after"] > ev["mean_dice_after"] + 0.05
    assert refined["mean_dice_after"] > refined["mean_dice_before"] + 0.1
    assert refined["folding_fraction"] <= 1e-4
    assert refined["seconds"] > 0 and "refine" in refined["stages"] and "network" in refined["stages"]
    for path in ev["outputs"] + refined["outputs"]:
        assert os.path.exists(path), path
