"""``fastwarp demo``: train the registration network on the brains embedded in the package (each
against deformed copies of itself), then register the held-out real pair Colin27 -> MNI152 with
the network alone and with the network's prediction refined for the pair (diffeomorphic), and
print NCC, Dice, folding and time before and after, and where the outputs went."""

from __future__ import annotations

import os
import time

from .config import RegisterConfig, TrainConfig
from .data import embedded
from .register import format_metrics, register_files
from .runtime import resolve_device
from .training import train

__all__ = ["demo"]


def demo(output: str = "fastwarp-demo", device: str = "auto", ndim: int | None = None, epochs: int | None = None,
         steps: int | None = None, downsample: int = 1, diffeomorphic: bool = False, seed: int = 0,
         quiet: bool = False) -> dict:
    """Run the demo; returns the held-out pair's metrics (``"improved"``: NCC up, Dice not down).

    ``ndim`` defaults to a 2-D model on axial slices on the CPU (it trains to a visible result
    in minutes on 2 cores; the volumes are registered slice by slice) and a 3-D model on a GPU;
    ``epochs`` and ``steps`` to 12 x 250 (2-D) or 30 x 100 (3-D)."""
    device = str(resolve_device(device))
    ndim = ndim if ndim is not None else (3 if device.startswith("cuda") else 2)
    epochs = epochs if epochs is not None else (30 if ndim == 3 else 12)
    steps = steps if steps is not None else (100 if ndim == 3 else 250)
    out = os.path.abspath(output)
    t0 = time.perf_counter()
    log = train(TrainConfig(output=out, device=device, epochs=epochs, steps=steps, downsample=downsample, ndim=ndim,
                            seed=seed, lr=1e-3, max_disp=3.0, diffeomorphic=diffeomorphic, quiet=quiet))
    t_train = time.perf_counter() - t0

    mni, colin = embedded()

    def register(name, **options):
        return register_files(RegisterConfig(
            colin.image, mni.image, model=log["checkpoint"], device=device,
            output=os.path.join(out, f"{name}.nii.gz"), flow=os.path.join(out, f"{name}_flow.nii.gz"),
            labels=colin.labels, fixed_labels=mni.labels, figure=os.path.join(out, f"{name}.png"),
            json=os.path.join(out, f"{name}.json"), quiet=True, **options))

    ev = register("colin27_to_mni152")
    refined = register("colin27_to_mni152_refined", refine=0, diffeomorphic=True)
    print()
    how = "a 2-D model on axial slices, registering the volumes slice by slice" if ndim == 2 else "a 3-D model"
    print(f"fastwarp demo: trained {how}, {epochs} epochs x {steps} steps in {t_train / 60:.1f} min on {device}; "
          f"registered the held-out pair Colin27 -> MNI152 (3-D, 2 mm, never a training pair):")
    print("the network alone:")
    print(format_metrics(ev))
    print("the network, then refined for this pair (fastwarp register --refine --diffeomorphic):")
    print(format_metrics(refined))
    better = ev["ncc_after"] > ev["ncc_before"] and ev.get("mean_dice_after", 1) >= ev.get("mean_dice_before", 0)
    print(f"  {'improved' if better else 'NOT improved'}: NCC {ev['ncc_before']:.4f} -> {ev['ncc_after']:.4f}"
          + (f", mean Dice {ev['mean_dice_before']:.4f} -> {ev['mean_dice_after']:.4f}" if "mean_dice_after" in ev else "")
          + (f" -> {refined['mean_dice_after']:.4f} refined" if "mean_dice_after" in refined else ""))
    print(f"outputs in {out}:")
    for path in [log["checkpoint"], log.get("figure"), os.path.join(out, "log.json")] + ev["outputs"] + refined["outputs"]:
        if path:
            print(f"  {path}")
    ev["refined"] = refined
    ev["improved"] = better
    return ev
