"""A mounted path as target (NFS, SMB, a USB disk, ...), written crash-safely.

``require_mount`` (the default) refuses a directory that is not a mount point or below one
other than the root file system's: when the share is not mounted, the backup must fail
loudly rather than fill the appliance's own disk under an empty mount directory.
Files are written as a hidden temporary in the final directory, fsynced, renamed, and the
directory fsynced (capture/fsutil.py), so a kill or power cut leaves whole files only.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from capture.fsutil import replace_atomic, write_all
from retention.backup.plan import Throttle
from retention.backup.remote import (
    CHUNK,
    HashingSink,
    LocalSource,
    ObjectMissing,
    RemoteError,
    RemoteOptions,
    sort_name,
)
from retention.backup.targets import PathSettings


def mounted_below(directory: Path) -> Path | None:
    """The nearest mount point at or above ``directory`` other than ``/``, or None."""
    current = directory.resolve()
    while current != current.parent:
        if os.path.ismount(current):
            return current
        current = current.parent
    return None


class PathRemote:
    """An opened mounted-path target."""

    object_lock = "none (mounted path)"

    def __init__(self, name: str, settings: PathSettings, options: RemoteOptions) -> None:
        self.name = name
        self.settings = settings
        self.where = settings.describe()
        self.root = Path(settings.directory)
        if not self.root.is_dir():
            raise RemoteError(f"path target {name}: {self.root} is not a directory (is the share mounted?)")
        if settings.require_mount and mounted_below(self.root) is None:
            raise RemoteError(f"path target {name}: nothing is mounted at or above {self.root}; refusing to "
                              f"write to the appliance's own disk (mount the share, or add the target with "
                              f"--allow-unmounted)")
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise RemoteError(f"path target {name}: {self.root} is not writable by this user")

    def _path(self, key: str) -> Path:
        return self.root / key

    def list(self, folder: str) -> Iterator[tuple[str, int]]:
        yield from self._walk(self._path(folder))

    def _walk(self, directory: Path) -> Iterator[tuple[str, int]]:
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            return
        except OSError as err:
            raise RemoteError(f"path target {self.name}: cannot list {directory}: {err.strerror}") from None
        found = []
        for entry in entries:
            if entry.name.startswith("."):
                continue   # an unfinished write
            is_dir = entry.is_dir(follow_symlinks=False)
            if is_dir or entry.is_file(follow_symlinks=False):
                found.append((sort_name(entry.name, is_dir), entry))
        for _, entry in sorted(found, key=lambda pair: pair[0]):
            if entry.is_dir(follow_symlinks=False):
                yield from self._walk(Path(entry.path))
            else:
                with contextlib.suppress(FileNotFoundError):
                    yield Path(entry.path).relative_to(self.root).as_posix(), entry.stat().st_size

    def _write(self, key: str, fill: Callable[[int], object]) -> None:
        final = self._path(key)
        # a fixed temporary name: a run killed mid-file leaves it, and the next upload of that
        # file truncates and reuses it (one run per target at a time: runner.run_lock)
        temp = final.parent / f".{final.name}.partial"
        try:
            final.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as err:
            raise RemoteError(f"path target {self.name}: cannot write {final}: {err.strerror}") from None
        try:
            try:
                fill(fd)
                os.fsync(fd)
            finally:
                os.close(fd)
            replace_atomic(temp, final)
        except BaseException as err:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            if isinstance(err, OSError):
                raise RemoteError(f"path target {self.name}: cannot write {final}: {err.strerror}") from None
            raise

    def put_bytes(self, key: str, data: bytes) -> None:
        self._write(key, lambda fd: write_all(fd, data))

    def put_file(self, key: str, path: Path, size: int, throttle: Throttle) -> str:
        digest = ""

        def fill(fd: int) -> None:
            nonlocal digest
            with LocalSource(path, size) as source:
                for chunk in source.chunks(CHUNK):
                    write_all(fd, chunk)
                    throttle.consume(len(chunk))
                digest = source.finish()   # before the rename: a mismatch leaves nothing behind

        self._write(key, fill)
        return digest

    def get_file(self, key: str, out: BinaryIO, throttle: Throttle) -> tuple[int, str]:
        sink = HashingSink(out, throttle)
        try:
            with open(self._path(key), "rb") as handle:
                while chunk := handle.read(CHUNK):
                    sink.write(chunk)
        except FileNotFoundError:
            raise ObjectMissing(f"path target {self.name}: {key}: no such file") from None
        except OSError as err:
            raise RemoteError(f"path target {self.name}: cannot read {key}: {err.strerror}") from None
        return sink.result()

    def get_bytes(self, key: str, limit: int) -> bytes:
        try:
            with open(self._path(key), "rb") as handle:
                data = handle.read(limit + 1)
        except FileNotFoundError:
            raise ObjectMissing(f"path target {self.name}: {key}: no such file") from None
        except OSError as err:
            raise RemoteError(f"path target {self.name}: cannot read {key}: {err.strerror}") from None
        if len(data) > limit:
            raise RemoteError(f"path target {self.name}: {key} is larger than {limit} bytes")
        return data

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            raise ObjectMissing(f"path target {self.name}: {key}: no such file") from None
        except OSError as err:
            raise RemoteError(f"path target {self.name}: cannot delete {key}: {err.strerror}") from None

    def close(self) -> None:
        pass
