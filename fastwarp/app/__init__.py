"""The registration application, built on fastwarp's op layer (``warp``, ``ncc``, ``nn``,
``losses``), which needs only torch. nibabel, tqdm and matplotlib are imported here, where they
are used, so ``import fastwarp`` stays light.

- :mod:`~fastwarp.app.models`: the network, VoxelMorph's ``VxmDense`` (``RegUNet``).
- :mod:`~fastwarp.app.data`: NIfTI files, subjects, preprocessing, augmentation, training pairs.
- :mod:`~fastwarp.app.config`: the typed configurations of ``train`` and ``register``.
- :mod:`~fastwarp.app.training`: the training step and the epoch loop.
- :mod:`~fastwarp.app.checkpoints`: saving and loading the network.
- :mod:`~fastwarp.app.runtime`: the device and the DDP processes.
- :mod:`~fastwarp.app.affine`: 12-parameter affine registration, across voxel grids.
- :mod:`~fastwarp.app.refine`: instance optimization of one pair (displacement or velocity).
- :mod:`~fastwarp.app.register`: registration of a pair (affine, network, refinement), of tensors
  (``register_pair``) or of NIfTI files (``register_files``, ``fastwarp register``).
- :mod:`~fastwarp.app.metrics`, :mod:`~fastwarp.app.figures`: Dice, Jacobian, folding; the figure.
- :mod:`~fastwarp.app.fields`: smooth random fields and VoxelMorph's sampling grid, in plain PyTorch.
- :mod:`~fastwarp.app.cli`, :mod:`~fastwarp.app.demo`, :mod:`~fastwarp.app.check`: the ``fastwarp``
  command and its demo and check.
- :mod:`~fastwarp.app.bench`: fastwarp against the baselines (``fastwarp bench``).

Each name has one import path, the module that defines it (``fastwarp.app.models.RegUNet``,
``fastwarp.app.training.train``, ...); the command is ``fastwarp`` (``fastwarp.app.cli:main``),
also ``python -m fastwarp``.
"""
