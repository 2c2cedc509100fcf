"""NIfTI volumes, subjects, training pairs: the public path of :mod:`fastwarp.app.data`.

This package also ships the brains the demo runs on, in ``embedded/`` (made by
``scripts/make_data.py``; sources and licences in its README).
"""

from ..app.data import *  # noqa: F403  (the same API)
from ..app.data import __all__  # noqa: F401
