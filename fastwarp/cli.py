"""The ``fastwarp`` command's entry point (``fastwarp.cli:main``): the public path of
:mod:`fastwarp.app.cli`."""

from .app.cli import main

__all__ = ["main"]
