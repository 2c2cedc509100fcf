"""``python -m fastwarp.register``: ``fastwarp register``. The public path of the registration of
a pair: :func:`register_pair` takes tensors (and optionally a network, an affine and a
refinement) and returns the field, the warped image and the metrics; :func:`register_files`
does it for NIfTI files as a :class:`RegisterConfig` says (:mod:`fastwarp.app.register`,
:mod:`fastwarp.app.refine`, :mod:`fastwarp.app.affine`, :mod:`fastwarp.app.config`)."""

import sys

from .app.cli import register_main as main
from .app.cli import register_parser as build_parser
from .app.config import RegisterConfig
from .app.affine import AffineConfig
from .app.refine import RefineConfig
from .app.register import PairResult, format_metrics, predict_displacement, register_files, register_pair

__all__ = ["register_pair", "PairResult", "RefineConfig", "AffineConfig", "register_files", "predict_displacement",
           "format_metrics", "RegisterConfig", "build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
