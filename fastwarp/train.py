"""``python -m fastwarp.train`` (and ``torchrun -m fastwarp.train``): ``fastwarp train``. The public
path of the training API: :func:`train` takes a :class:`TrainConfig`
(:mod:`fastwarp.app.training`, :mod:`fastwarp.app.config`, :mod:`fastwarp.app.checkpoints`)."""

import sys

from .app.checkpoints import CheckpointError, load_checkpoint
from .app.cli import train_main as main
from .app.cli import train_parser as build_parser
from .app.config import TrainConfig
from .app.training import train, train_step

__all__ = ["train", "train_step", "TrainConfig", "build_parser", "main", "load_checkpoint", "CheckpointError"]

if __name__ == "__main__":
    sys.exit(main())
