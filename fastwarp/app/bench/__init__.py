"""fastwarp's benchmarks as a library and a command: ``python -m fastwarp.bench``.

- :mod:`fastwarp.bench.baselines`: the ways registration code warps and computes the NCC loss
  today (grid_sample, VoxelMorph's transformer and conv NCC written out in plain PyTorch, and
  the installed peers: voxelmorph, MONAI, neurite, fused_lncc, FireANTs), one registry each.
- :mod:`fastwarp.bench.cases`: the problem sizes of every case, by preset (``full``, ``tiny``).
- :mod:`fastwarp.bench.measure`: input rotation, peak extra memory, bytes moved, timing.
- :mod:`fastwarp.bench.train_step`: one training step of :class:`fastwarp.models.RegUNet` on
  fastwarp's ops or on VoxelMorph's.
- :mod:`fastwarp.bench.runner`: the command (``main(argv) -> int``).

The pytest-benchmark suite in ``benchmarks/`` imports the same modules. The peers are optional:
each is imported only when its baseline is built, and a missing one raises
:class:`BaselineUnavailable` (an ``ImportError``); one that does not apply to the device, the
dimensionality or the window raises :class:`BaselineNotApplicable`.
"""

from .baselines import BaselineNotApplicable, BaselineUnavailable

__all__ = ["BaselineUnavailable", "BaselineNotApplicable"]
