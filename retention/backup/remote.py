"""What a backup target can do, the same for every kind (S3, SFTP, mounted path).

Keys are relative to the target's prefix / directory and use ``/``. Every upload is atomic
(S3 creates an object only when the PUT or the multipart upload completes; SFTP and the
mounted path write a hidden temporary file and rename it), so a killed run never leaves a
half object under a real key. Whether a vault file is intact is checked with its key before
it is sent (integrity.py); here the bytes sent are hashed (S3 has the server check them) and
a file whose size changes while it is read is not committed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from retention.backup.plan import Throttle

CHUNK = 256 * 1024


class RemoteError(Exception):
    """The target cannot be reached or refused an operation; the message names both."""


class IntegrityError(RemoteError):
    """Bytes do not match their expected size or SHA-256 (a damaged file or object)."""


class HostKeyMismatch(RemoteError):
    """The SFTP server presented another host key than the pinned one."""


class ObjectMissing(RemoteError):
    """The key does not exist on the target."""


@dataclass(frozen=True, slots=True)
class RemoteOptions:
    """How to talk to targets (from the [backup] settings)."""

    timeout_s: float = 30.0
    part_size: int = 8 << 20                      # S3 multipart part size
    clock: Callable[[], float] | None = None      # Object Lock retain-until dates (None: time.time)


class Remote(Protocol):
    """One opened target."""

    where: str
    object_lock: str          # how uploads are protected, for the operator ("none", "COMPLIANCE 30 days", ...)

    def list(self, folder: str) -> Iterator[tuple[str, int]]:
        """Every object under ``folder`` (recursively) as (key, size), in ascending byte order
        of the key (S3's listing order); unfinished temporaries excluded."""
        ...

    def put_file(self, key: str, path: Path, size: int, throttle: Throttle) -> str:
        """Copy a local file of ``size`` bytes to ``key`` atomically; returns the SHA-256 of what was sent."""
        ...

    def put_bytes(self, key: str, data: bytes) -> None:
        ...

    def get_file(self, key: str, out: BinaryIO, throttle: Throttle) -> tuple[int, str]:
        """Stream ``key`` into ``out``; returns (bytes, SHA-256). ObjectMissing if absent."""
        ...

    def get_bytes(self, key: str, limit: int) -> bytes:
        ...

    def delete(self, key: str) -> None:
        ...

    def close(self) -> None:
        ...


class LocalSource:
    """A local file read in chunks for an upload: its size is checked when opened and after the
    last chunk (by :meth:`finish`, before the upload commits); its SHA-256 computed on the way."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size
        self.read = 0
        self._hash = hashlib.sha256()
        try:
            self._file: BinaryIO = open(path, "rb")   # noqa: SIM115 - closed by close()
        except OSError as err:
            raise IntegrityError(f"{path}: cannot read the local file ({err.strerror})") from None
        actual = Path(path).stat().st_size
        if actual != size:
            self._file.close()
            raise IntegrityError(f"{path}: the local file has {actual} bytes, the catalog says {size}")

    def chunks(self, chunk: int = CHUNK) -> Iterator[bytes]:
        while True:
            data = self._file.read(chunk)
            if not data:
                return
            self._hash.update(data)
            self.read += len(data)
            yield data

    def finish(self) -> str:
        """The SHA-256 of everything read; IntegrityError when the file changed size meanwhile."""
        if self.read != self.size:
            raise IntegrityError(f"{self.path}: {self.read} bytes read, expected {self.size} (changed while copied)")
        return self._hash.hexdigest()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> LocalSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class HashingSink:
    """Writes downloaded chunks to ``out`` and hashes them."""

    def __init__(self, out: BinaryIO, throttle: Throttle) -> None:
        self.out = out
        self.throttle = throttle
        self.size = 0
        self._hash = hashlib.sha256()

    def write(self, data: bytes) -> None:
        self.out.write(data)
        self._hash.update(data)
        self.size += len(data)
        self.throttle.consume(len(data))

    def result(self) -> tuple[int, str]:
        return self.size, self._hash.hexdigest()


def sort_name(name: str, is_dir: bool) -> str:
    """Sort key of a directory entry so that a depth-first walk yields full paths in byte
    order: a directory sorts as its name followed by '/' (its children's paths)."""
    return f"{name}/" if is_dir else name


def join_key(prefix: str, key: str) -> str:
    prefix = prefix.strip("/")
    return f"{prefix}/{key}" if prefix else key
