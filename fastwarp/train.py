"""``python -m fastwarp.train`` and ``torchrun -m fastwarp.train``: ``fastwarp train``; the public
path of :mod:`fastwarp.app.training`."""

import sys

from .app.training import CheckpointError, build_parser, load_checkpoint, main, train

__all__ = ["train", "build_parser", "main", "load_checkpoint", "CheckpointError"]

if __name__ == "__main__":
    sys.exit(main())
