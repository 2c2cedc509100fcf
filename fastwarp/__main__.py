"""`python -m fastwarp`: the `fastwarp` command (demo, train, register, check)."""

import sys

from .app.cli import main

sys.exit(main())
