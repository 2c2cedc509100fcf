"""``python -m fastwarp.check``: ``fastwarp check``; the public path of :mod:`fastwarp.app.check`."""

import sys

from .app.check import CheckFailed, check

__all__ = ["check", "CheckFailed"]

if __name__ == "__main__":
    from .app.cli import main

    sys.exit(main(["check", *sys.argv[1:]]))
