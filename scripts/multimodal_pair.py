#!/usr/bin/env python3
"""Write the embedded brains as NIfTI files for a registration across contrasts on the command
line: for each direction of the embedded pair, the moving brain as a T1 (as embedded) and as a
T2-like image (:func:`fastwarp.app.data.contrast.t2_like`, the registration benchmark's), the
fixed T1 brain, and both tissue label maps, all on the embedded 2 mm grid.

    python scripts/multimodal_pair.py OUT
    fastwarp register OUT/colin27-to-mni152_moving_t2.nii.gz OUT/colin27-to-mni152_fixed.nii.gz \\
        --affine --refine --diffeomorphic --similarity mi -o warped.nii.gz \\
        --labels OUT/colin27-to-mni152_moving_labels.nii.gz \\
        --fixed-labels OUT/colin27-to-mni152_fixed_labels.nii.gz --json metrics.json

(benchmarks/RESULTS.md, "The whole command across contrasts").
"""

from __future__ import annotations

import argparse
import pathlib

import nibabel as nib
import numpy as np

from fastwarp.app.data.contrast import t2_like
from fastwarp.app.data.subjects import EMBEDDED_DIRECTIONS, embedded_pairs


def write_pairs(out: pathlib.Path, seed: int = 0) -> list[pathlib.Path]:
    """Writes the files of every direction into ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for pair in embedded_pairs(directions=tuple(EMBEDDED_DIRECTIONS)):
        images = {
            "moving_t1": np.asarray(pair.moving, np.float32),
            "moving_t2": np.asarray(t2_like(pair.moving, seed), np.float32),
            "fixed": np.asarray(pair.fixed, np.float32),
            "moving_labels": np.asarray(pair.moving_labels).astype(np.int16),
            "fixed_labels": np.asarray(pair.fixed_labels).astype(np.int16),
        }
        for name, data in images.items():
            path = out / f"{pair.direction}_{name}.nii.gz"
            nib.save(nib.Nifti1Image(data, pair.affine), str(path))
            written.append(path)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=pathlib.Path, help="folder for the NIfTI files")
    parser.add_argument("--seed", type=int, default=0, help="of the T2-like image's bias field and noise")
    args = parser.parse_args(argv)
    for path in write_pairs(args.out, args.seed):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
