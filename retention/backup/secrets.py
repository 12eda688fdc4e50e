"""Reading a target's secret from its reference, when a run starts (never stored in the catalog).

A ``file:`` secret gets the key directory's checks (storage.keys.check_entry): a regular
file, not a symlink, owned by the running uid, mode 0600 or stricter. A ``credential:``
secret is read from ``$CREDENTIALS_DIRECTORY`` (systemd LoadCredential=, which already makes
it private to the service).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from retention.backup.targets import SecretRef
from storage.keys import KeyDirError, check_entry, read_private


class SecretError(Exception):
    """A secret reference cannot be read; the message says which and why."""


def secret_path(ref: SecretRef, environ: Mapping[str, str]) -> Path | None:
    """The file holding the secret (None for env:)."""
    if ref.scheme == "file":
        return Path(ref.name)
    if ref.scheme == "credential":
        directory = environ.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise SecretError(f"{ref}: $CREDENTIALS_DIRECTORY is not set (not started by systemd "
                              f"with LoadCredential={ref.name}:...)")
        return Path(directory) / ref.name
    return None


def read_secret(ref_text: str, setting: str, environ: Mapping[str, str] | None = None) -> bytes:
    """The secret's bytes (a trailing newline removed)."""
    environ = os.environ if environ is None else environ
    ref = SecretRef.parse(ref_text, setting)
    path = secret_path(ref, environ)
    if path is None:
        value = environ.get(ref.name)
        if not value:
            raise SecretError(f"{setting}: {ref}: the environment variable is not set")
        return value.encode()
    try:
        if ref.scheme == "file":
            check_entry(path, is_dir=False)
        data = read_private(path)
    except KeyDirError as err:
        raise SecretError(f"{setting}: {ref}: {err}") from None
    data = data.removesuffix(b"\n")
    if not data:
        raise SecretError(f"{setting}: {ref}: {path} is empty")
    return data
