"""``fastwarp check`` (also ``python -m fastwarp.check``): the public path of
:mod:`fastwarp.app.check`."""

from .app.check import main

__all__ = ["main"]

if __name__ == "__main__":
    main()
