"""``python -m fastwarp.register``: ``fastwarp register``. The public path of the registration of
a pair of files with a trained network: :func:`register_files` takes a :class:`RegisterConfig`
(:mod:`fastwarp.app.register`, :mod:`fastwarp.app.config`)."""

import sys

from .app.cli import register_main as main
from .app.cli import register_parser as build_parser
from .app.config import RegisterConfig
from .app.register import format_metrics, predict_displacement, register_files

__all__ = ["register_files", "predict_displacement", "format_metrics", "RegisterConfig", "build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
