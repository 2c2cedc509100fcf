"""Outputs written whole or not at all: :func:`replacing` gives a temporary name beside the
output, renamed over it when the writing succeeds and removed when it fails, so that a reader
(or a resumed cohort run) never sees a partial file. Every file fastwarp writes goes through it.
A killed process removes nothing: :func:`remove_stale` clears what it left, by name, where a
resumed run writes the same output again."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
from collections.abc import Iterator

__all__ = ["replacing", "remove_stale", "TEMPORARY_PREFIX"]

TEMPORARY_PREFIX = ".fastwarp-"
_HEX8 = re.compile("[0-9a-f]{8}")


def _temporary(path: str) -> tuple[str, str, str]:
    """``(folder, prefix, suffix)`` of ``path``'s temporaries, ``folder/prefix + 8 hex digits +
    suffix``. The prefix names the output: whole when it fits (200 bytes), else its first 80
    bytes and a hash of the whole name, so that two outputs never share temporaries (the
    name stays under the file systems' 255 bytes). The suffix is the output's (``.nii.gz``
    whole)."""
    folder, name = os.path.split(os.path.abspath(path))
    suffix = ".nii.gz" if name.endswith(".nii.gz") else os.path.splitext(name)[1]
    suffix = suffix if len(os.fsencode(suffix)) <= 16 else ""
    raw = os.fsencode(name)
    if len(raw) > 200:
        name = os.fsdecode(raw[:80]) + "-" + hashlib.sha1(raw).hexdigest()[:16]
    return folder, f"{TEMPORARY_PREFIX}{name}~", suffix


@contextlib.contextmanager
def replacing(path: str | os.PathLike) -> Iterator[str]:
    """``with replacing(path) as tmp:`` write ``tmp``; on leaving the block it is renamed to
    ``path`` (atomically, on one file system), or removed when the block raises (a
    KeyboardInterrupt included). The name is unique in ``path``'s folder (which is made if
    missing), hidden, names ``path`` (:func:`remove_stale` finds it by that), ends as ``path``
    does (writers that go by the suffix, ``.nii.gz``, ``.png``, see it), and the file gets a
    new file's permissions (the umask's), not mkstemp's 0600."""
    path = os.fspath(path)
    folder, prefix, suffix = _temporary(path)
    os.makedirs(folder, exist_ok=True)
    while True:
        tmp = os.path.join(folder, prefix + secrets.token_hex(4) + suffix)
        try:  # a new file's permissions: 0666 less the umask, as open() gives
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            continue
    try:
        os.close(fd)
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def remove_stale(*paths: str | os.PathLike) -> int:
    """Remove the temporaries of ``paths`` that a killed writer left (:func:`replacing`'s, by
    name), listing each folder once; returns how many. Only where nothing else is writing those
    paths now: a resumed cohort run, on the process that owns the subjects."""
    wanted: dict[str, set[tuple[str, str]]] = {}
    for path in paths:
        folder, prefix, suffix = _temporary(os.fspath(path))
        wanted.setdefault(folder, set()).add((prefix, suffix))
    removed = 0
    for folder, keys in wanted.items():
        try:
            names = [n for n in os.listdir(folder) if n.startswith(TEMPORARY_PREFIX)]
        except FileNotFoundError:
            continue
        for name in names:
            # prefix (ends in "~") + 8 hex digits + suffix: try each "~" as the prefix's end,
            # a set lookup each, so a folder costs its names, not names x outputs
            end = name.find("~")
            while end >= 0:
                if _HEX8.fullmatch(name, end + 1, end + 9) and (name[:end + 1], name[end + 9:]) in keys:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(folder, name))
                        removed += 1
                    break
                end = name.find("~", end + 1)
    return removed
