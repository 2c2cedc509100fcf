"""fastwarp's benchmarks: the public path of :mod:`fastwarp.app.bench` (``python -m fastwarp.bench``
runs the command, :mod:`fastwarp.bench.runner` is its parser and entry point)."""

from ..app.bench import BaselineNotApplicable, BaselineUnavailable

__all__ = ["BaselineUnavailable", "BaselineNotApplicable"]
