"""``python -m fastwarp.register``: ``fastwarp register``; the public path of
:mod:`fastwarp.app.register`."""

import sys

from .app.register import build_parser, main, predict_displacement, register_files

__all__ = ["register_files", "predict_displacement", "build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
