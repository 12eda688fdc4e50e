"""Crash-safe file helpers: a file is either absent or whole, never half-written.

The recipe (DESIGN.md, "Storage"): write a temporary file in the target's own directory,
fsync it, rename it over the target (rename(2) is atomic within one filesystem), then fsync
the directory so that the rename itself survives a power cut.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

StrPath = str | os.PathLike[str]


def fsync_dir(path: StrPath) -> None:
    """Make the directory entries of `path` (a directory) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, *parts: bytes | bytearray | memoryview) -> None:
    """Write every byte of `parts`, in order, with os.writev (a regular file may take a short write)."""
    views = [memoryview(part).cast("B") for part in parts if len(part)]
    while views:
        written = os.writev(fd, views)
        while views and written >= len(views[0]):
            written -= len(views.pop(0))
        if views and written:
            views[0] = views[0][written:]


def replace_atomic(tmp: StrPath, final: StrPath) -> None:
    """Rename the (already fsynced) `tmp` over `final`, then fsync the directory of `final`."""
    os.replace(tmp, final)
    fsync_dir(Path(final).parent)


def write_atomic(path: StrPath, data: bytes, mode: int = 0o600) -> None:
    """Replace `path` by `data` crash-safely; the file gets permission bits `mode`.

    The temporary file lives in the same directory (a rename across filesystems is not
    atomic) and is removed if anything fails before the rename.
    """
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, mode)
        write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    os.close(fd)
    try:
        replace_atomic(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def create_exclusive(path: StrPath, mode: int = 0o600) -> int:
    """Open a new file for writing (refuse if it exists) and return its descriptor."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
