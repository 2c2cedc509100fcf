"""Outputs written whole or not at all: :func:`replacing` gives a temporary name beside the
output, renamed over it when the writing succeeds and removed when it fails, so that a reader
(or a resumed cohort run) never sees a partial file. Every file fastwarp writes goes through it."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator

__all__ = ["replacing", "TEMPORARY_PREFIX"]

TEMPORARY_PREFIX = ".fastwarp-"


def _umask() -> int:
    """The process's umask: read from /proc where it says it; else set and restored (which
    briefly races with other threads' new files, as any umask query without /proc does)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def replacing(path: str | os.PathLike) -> Iterator[str]:
    """``with replacing(path) as tmp:`` write ``tmp``; on leaving the block it is renamed to
    ``path`` (atomically, on one file system), or removed when the block raises (a
    KeyboardInterrupt included). The name is unique in ``path``'s folder (which is made if
    missing), hidden, ends as ``path`` does (writers that go by the suffix, ``.nii.gz``,
    ``.png``, see it), and the file gets a new file's permissions (the umask's), not
    mkstemp's 0600."""
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    suffix = ".nii.gz" if name.endswith(".nii.gz") else os.path.splitext(name)[1]
    fd, tmp = tempfile.mkstemp(suffix=suffix, dir=folder, prefix=TEMPORARY_PREFIX)
    try:
        os.close(fd)
        with contextlib.suppress(OSError):  # a file system without modes keeps its own
            os.chmod(tmp, 0o666 & ~_umask())
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
