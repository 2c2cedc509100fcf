"""``python -m fastwarp.bench``: see :mod:`fastwarp.app.bench.runner`."""

import sys

from ..app.bench.runner import main

sys.exit(main())
