"""The ``fastwarp bench`` command's parser and entry point: the public path of
:mod:`fastwarp.app.bench.runner`."""

from ..app.bench.runner import build_parser, main

__all__ = ["build_parser", "main"]
