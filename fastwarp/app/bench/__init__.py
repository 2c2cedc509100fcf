"""fastwarp's benchmarks as a library and a command (``fastwarp bench``).

- :mod:`~fastwarp.app.bench.baselines`: the ways registration code warps and computes the NCC
  loss today (grid_sample, VoxelMorph's transformer and conv NCC written out in plain PyTorch,
  and the installed peers: voxelmorph, MONAI, neurite, fused_lncc, FireANTs), one registry each.
- :mod:`~fastwarp.app.bench.cases`: every case's sizes by preset (``full``, ``tiny``), inputs and
  timed call.
- :mod:`~fastwarp.app.bench.measure`: input rotation, peak extra memory, bytes moved, timing.
- :mod:`~fastwarp.app.bench.train_step`: the training step of ``fastwarp train`` on fastwarp's
  ops or on VoxelMorph's.
- :mod:`~fastwarp.app.bench.runner`: the command (``main(argv) -> int``).
- :mod:`~fastwarp.app.bench.registration`: registration of the embedded pair (2 mm, 1 mm) by
  fastwarp against ANTs SyN and SimpleITK's demons: Dice, folding, seconds
  (``python -m fastwarp.app.bench.registration``).

The pytest-benchmark suite in ``benchmarks/`` is a thin layer over the same cases. The peers are
optional: each is imported only when its baseline is built, and a missing one raises
:class:`BaselineUnavailable` (an ``ImportError``); one that does not apply to the device, the
dimensionality or the window raises :class:`BaselineNotApplicable`.
"""

from .baselines import BaselineNotApplicable, BaselineUnavailable

__all__ = ["BaselineUnavailable", "BaselineNotApplicable"]
