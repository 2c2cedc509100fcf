"""``python -m fastwarp.bench``: time fastwarp against every installed baseline (see
:mod:`fastwarp.bench.runner`, or ``python -m fastwarp.bench -h``)."""

import sys

from .runner import main

if __name__ == "__main__":
    sys.exit(main())
