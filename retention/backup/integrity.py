"""Is this vault file (local, or a copy downloaded from a target) exactly the catalogued one?

The catalog's ``vault_sha256`` is not a hash of the whole file: it is SHA-256 over the header
and every segment's GCM tag (storage/vault.py explains why). So a file is checked the strong
way: every segment is authenticated with the recording's data key (AES-256-GCM, any changed
byte fails) and the digest of header and tags must be the catalogued one (a file swapped for
another, or an older generation, fails). The data key is unwrapped from the snapshot the file
belongs to, with the KEKs the caller holds (the appliance's, or those an operator restores
with); ``fallback`` may supply the live catalog's wrapped key when the snapshot's KEK has been
retired since.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from retention.backup.plan import LocalFile
from retention.backup.remote import IntegrityError
from retention.backup.snapshot import open_snapshot
from storage.catalog import WrappedKey
from storage.keys import KeyDirError, KeyStore, UnwrapError
from storage.vault import VaultError, VaultReader


class VaultChecker:
    """Checks files against one catalog snapshot; close() when done."""

    def __init__(self, keys: KeyStore, snapshot: Path,
                 fallback: Callable[[str], WrappedKey | None] | None = None) -> None:
        self.keys = keys
        self.fallback = fallback
        self._conn = open_snapshot(snapshot)

    def _wrapped(self, recording_id: str) -> WrappedKey | None:
        rows: list[Any] = self._conn.execute(
            "SELECT key_id, kek_id, wrapped_key FROM recordings WHERE recording_id = ?", (recording_id,)).fetchall()
        if not rows or rows[0][1] is None or rows[0][2] is None:
            return None
        key_id, kek_id, blob = rows[0]
        return WrappedKey(recording_id, key_id, str(kek_id), bytes(blob))

    def missing_kek(self, recording_id: str) -> str | None:
        """The id of the KEK this recording's key is wrapped under when the key store lacks it
        (destroyed to crypto-shred, or not in the escrow given), else None."""
        wrapped = self._wrapped(recording_id)
        if wrapped is None or wrapped.kek_id in self.keys.kek_ids():
            return None
        return wrapped.kek_id

    def _data_key(self, recording_id: str) -> bytes:
        wrapped = self._wrapped(recording_id)
        candidates = [wrapped] if wrapped else []
        if self.fallback is not None:
            live = self.fallback(recording_id)
            if live is not None:
                candidates.append(live)
        problem = "no wrapped data key in the catalog (purged?)"
        for candidate in candidates:
            try:
                return self.keys.unwrap(candidate.kek_id, candidate.wrapped_key, recording_id)
            except (KeyDirError, UnwrapError) as err:
                problem = str(err)
        raise IntegrityError(f"{recording_id}: cannot check the vault file: {problem}")

    def check(self, item: LocalFile, path: Path) -> None:
        """IntegrityError naming what is wrong with ``path`` as the file of ``item``."""
        key = self._data_key(item.recording_id)
        try:
            with VaultReader(path, key, item.recording_id) as reader:
                info = reader.verify()
        except VaultError as err:
            raise IntegrityError(f"{item.path}: does not authenticate: {err}") from None
        if info.size != item.size:
            raise IntegrityError(f"{item.path}: {info.size} bytes, the catalog says {item.size}")
        if item.sha256 is not None and info.digest != item.sha256:
            raise IntegrityError(f"{item.path}: authentic, but its digest differs from the catalog's "
                                 f"(another file of the same recording?)")

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> VaultChecker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
