"""SFTP target (paramiko) with a pinned host key.

The connection offers only the pinned key's algorithm (so the server must present a key of
that type) and compares the key's SHA-256 fingerprint with the pinned one *before*
authenticating: on a mismatch nothing is sent, not even the user name, and the run stops
with :class:`HostKeyMismatch` naming both fingerprints. Authentication is by private key
only (read from the target's secret reference).

Uploads go to a hidden ``.<name>.partial`` beside the final name and are renamed with the
``posix-rename@openssh.com`` extension (an atomic replace, unlike SFTP's plain RENAME, which
refuses an existing target).
"""

from __future__ import annotations

import contextlib
import io
import socket
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import paramiko

from retention.backup.plan import Throttle
from retention.backup.remote import (
    CHUNK,
    HashingSink,
    HostKeyMismatch,
    IntegrityError,
    LocalSource,
    ObjectMissing,
    RemoteError,
    RemoteOptions,
    sort_name,
)
from retention.backup.secrets import read_secret
from retention.backup.targets import SftpSettings, host_key_fingerprint

_KEY_CLASSES: tuple[type[paramiko.PKey], ...] = (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey)


def load_private_key(data: bytes, setting: str) -> paramiko.PKey:
    """A private key in OpenSSH or PEM format, of any type paramiko knows."""
    text = data.decode(errors="replace")
    for cls in _KEY_CLASSES:
        try:
            return cls.from_private_key(io.StringIO(text))
        except (paramiko.SSHException, ValueError, TypeError, IndexError):
            continue
    raise RemoteError(f"{setting}: not an unencrypted Ed25519, ECDSA or RSA private key")


def _algorithms(host_key_type: str) -> list[str]:
    # an RSA key (blob type ssh-rsa) is used with the SHA-2 signature algorithms (RFC 8332)
    if host_key_type.startswith("rsa-") or host_key_type == "ssh-rsa":
        return ["rsa-sha2-512", "rsa-sha2-256"]
    return [host_key_type]


def server_host_key(host: str, port: int, host_key_type: str, timeout_s: float) -> tuple[str, str]:
    """(key type, fingerprint) the server presents for ``host_key_type`` (to pin it)."""
    transport = _transport(host, port, host_key_type, timeout_s)
    try:
        key = transport.get_remote_server_key()
        return key.get_name(), host_key_fingerprint(key.asbytes())
    finally:
        transport.close()


def _transport(host: str, port: int, host_key_type: str, timeout_s: float) -> paramiko.Transport:
    try:
        sock = socket.create_connection((host, port), timeout=timeout_s)
    except OSError as err:
        raise RemoteError(f"sftp {host}:{port}: cannot connect ({err})") from None
    transport = paramiko.Transport(sock)
    transport.get_security_options().key_types = _algorithms(host_key_type)
    transport.banner_timeout = timeout_s
    transport.auth_timeout = timeout_s
    try:
        transport.start_client(timeout=timeout_s)
    except (paramiko.SSHException, OSError, EOFError) as err:
        transport.close()
        raise RemoteError(f"sftp {host}:{port}: SSH handshake failed ({err}); does the server have a "
                          f"{host_key_type} host key?") from None
    return transport


class SftpRemote:
    """An opened SFTP target: host key checked, authenticated, directory usable."""

    object_lock = "none (SFTP)"

    def __init__(self, name: str, settings: SftpSettings, options: RemoteOptions,
                 environ: dict[str, str] | None = None) -> None:
        self.name = name
        self.settings = settings
        self.where = settings.describe()
        self._dirs: set[str] = set()
        key = load_private_key(read_secret(settings.key, "key", environ), f"sftp target {name}: key")
        self.transport = _transport(settings.host, settings.port, settings.host_key_type, options.timeout_s)
        try:
            self._check_host_key()
            try:
                self.transport.auth_publickey(settings.user, key)
            except paramiko.AuthenticationException:
                raise RemoteError(f"sftp target {name} ({self.where}): the server refused key authentication "
                                  f"for user {settings.user}") from None
            except (paramiko.SSHException, OSError) as err:
                raise RemoteError(f"sftp target {name} ({self.where}): authentication failed ({err})") from None
            sftp = paramiko.SFTPClient.from_transport(self.transport)
            if sftp is None:
                raise RemoteError(f"sftp target {name}: the server opened no SFTP channel")
            self.sftp = sftp
            channel = sftp.get_channel()
            if channel is not None:
                channel.settimeout(options.timeout_s)
        except BaseException:
            self.transport.close()
            raise

    def _check_host_key(self) -> None:
        key = self.transport.get_remote_server_key()
        found = host_key_fingerprint(key.asbytes())
        if found != self.settings.host_key_sha256:
            raise HostKeyMismatch(
                f"sftp target {self.name}: host key mismatch for {self.settings.host}:{self.settings.port}: "
                f"the server presented {key.get_name()} {found}, the pinned key is "
                f"{self.settings.host_key_type} {self.settings.host_key_sha256}. Refusing to connect (this is "
                f"what a man-in-the-middle looks like). If the server's key was changed on purpose, check the "
                f"new fingerprint out of band and re-add the target with it.")

    def _path(self, key: str) -> str:
        return f"{self.settings.directory.rstrip('/')}/{key}" if key else self.settings.directory

    def _fail(self, what: str, key: str, err: BaseException) -> RemoteError:
        if isinstance(err, FileNotFoundError):
            return ObjectMissing(f"sftp target {self.name}: {key}: no such file")
        return RemoteError(f"sftp target {self.name} ({self.where}): cannot {what} {key}: {err}")

    def _makedirs(self, directory: str) -> None:
        if directory in self._dirs:
            return
        parts = directory.strip("/").split("/")
        current = ""
        for part in parts:
            current = f"{current}/{part}"
            if current in self._dirs:
                continue
            try:
                attrs = self.sftp.stat(current)
                if attrs.st_mode is not None and not stat.S_ISDIR(attrs.st_mode):
                    raise RemoteError(f"sftp target {self.name}: {current} exists and is not a directory")
            except FileNotFoundError:
                self.sftp.mkdir(current, mode=0o700)
            self._dirs.add(current)

    # -- the Remote protocol

    def list(self, folder: str) -> Iterator[tuple[str, int]]:
        base = len(self._path("").rstrip("/")) + 1
        try:
            yield from self._walk(self._path(folder), base)
        except (OSError, paramiko.SSHException) as err:
            raise self._fail("list", folder, err) from None

    def _walk(self, directory: str, base: int) -> Iterator[tuple[str, int]]:
        try:
            entries = self.sftp.listdir_attr(directory)
        except FileNotFoundError:
            return
        found = []
        for entry in entries:
            if entry.filename.startswith(".") or entry.st_mode is None:
                continue   # an unfinished upload (.<name>.partial)
            is_dir = stat.S_ISDIR(entry.st_mode)
            if is_dir or stat.S_ISREG(entry.st_mode):
                found.append((sort_name(entry.filename, is_dir), entry))
        for _, entry in sorted(found, key=lambda pair: pair[0]):
            path = f"{directory}/{entry.filename}"
            if stat.S_ISDIR(entry.st_mode or 0):
                yield from self._walk(path, base)
            else:
                yield path[base:], int(entry.st_size or 0)

    def _upload(self, key: str, write: Callable[[paramiko.SFTPFile], object]) -> None:
        final = self._path(key)
        directory, _, name = final.rpartition("/")
        temp = f"{directory}/.{name}.partial"
        try:
            self._makedirs(directory)
            with self.sftp.open(temp, "wb") as handle:
                handle.set_pipelined(True)
                write(handle)
            self.sftp.posix_rename(temp, final)
        except BaseException as err:
            with contextlib.suppress(OSError, paramiko.SSHException):
                self.sftp.remove(temp)
            if isinstance(err, RemoteError | KeyboardInterrupt | SystemExit):
                raise
            if isinstance(err, OSError | paramiko.SSHException | EOFError):
                raise self._fail("upload", key, err) from None
            raise

    def put_bytes(self, key: str, data: bytes) -> None:
        self._upload(key, lambda handle: handle.write(data))

    def put_file(self, key: str, path: Path, size: int, throttle: Throttle) -> str:
        digest = ""

        def write(handle: paramiko.SFTPFile) -> None:
            nonlocal digest
            with LocalSource(path, size) as source:
                for chunk in source.chunks():
                    handle.write(chunk)
                    throttle.consume(len(chunk))
                handle.flush()
                digest = source.finish()   # before the rename: a mismatch leaves nothing behind
            written = handle.stat().st_size
            if written != size:
                raise IntegrityError(f"sftp target {self.name}: {key}: the server holds {written} bytes, sent {size}")

        self._upload(key, write)
        return digest

    def get_file(self, key: str, out: BinaryIO, throttle: Throttle) -> tuple[int, str]:
        sink = HashingSink(out, throttle)
        try:
            with self.sftp.open(self._path(key), "rb") as handle:
                handle.prefetch()
                while chunk := handle.read(CHUNK):
                    sink.write(chunk)
        except (OSError, paramiko.SSHException) as err:
            raise self._fail("download", key, err) from None
        return sink.result()

    def get_bytes(self, key: str, limit: int) -> bytes:
        try:
            with self.sftp.open(self._path(key), "rb") as handle:
                data = handle.read(limit + 1)
        except (OSError, paramiko.SSHException) as err:
            raise self._fail("download", key, err) from None
        if len(data) > limit:
            raise RemoteError(f"sftp target {self.name}: {key} is larger than {limit} bytes")
        return bytes(data)

    def delete(self, key: str) -> None:
        try:
            self.sftp.remove(self._path(key))
        except (OSError, paramiko.SSHException) as err:
            raise self._fail("delete", key, err) from None

    def close(self) -> None:
        self.transport.close()
