"""Restore the newest (or a named) complete run of a target into a catalog file and a vault.

The snapshot is downloaded first and checked against the manifest's SHA-256 and SQLite's
quick_check; then every vault file it refers to is downloaded into ``vault_dest`` and
authenticated with the restored keys against the snapshot (integrity.py: every segment's GCM
tag, the catalogued digest) before it is renamed into place. Paths come from the
snapshot and are validated (plan.check_vault_path) so that a forged catalog cannot write
outside the vault. Files already in place with the right hash are kept, so a restore that was
stopped can be run again. The catalog appears under its final name last, once the vault is
complete: a catalog file means a finished restore.

Keys are not part of a backup: the caller supplies the KEKs (escrow file or key directory,
installed first) and checks that every KEK id the snapshot's recordings need is among them.
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from capture.fsutil import fsync_dir, replace_atomic
from retention.backup.integrity import VaultChecker
from retention.backup.plan import (
    MANIFEST_DIR,
    LocalFile,
    Manifest,
    PlanError,
    Throttle,
    newest_manifest,
    parse_manifest,
)
from retention.backup.remote import IntegrityError, ObjectMissing, Remote, RemoteError
from retention.backup.snapshot import describe, file_sha256, inventory, quick_check
from storage.keys import KeyStore

MANIFEST_LIMIT = 16 << 20


class RestoreError(Exception):
    """The restore cannot go on (no complete run, a damaged snapshot); the message says why."""


@dataclass(slots=True)
class RestoreResult:
    manifest_key: str
    manifest: Manifest
    recordings: int = 0
    files: int = 0
    bytes: int = 0
    kept: int = 0
    kek_ids: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)    # recordings whose KEK is not available


def read_manifest(remote: Remote, key: str | None = None) -> tuple[str, Manifest]:
    """The named manifest, or the newest one on the target."""
    if key is None:
        key = newest_manifest(k for k, _ in remote.list(MANIFEST_DIR))
        if key is None:
            raise RestoreError(f"target {remote.where}: no complete backup run (no manifest under {MANIFEST_DIR}/)")
    try:
        return key, parse_manifest(remote.get_bytes(key, MANIFEST_LIMIT), key)
    except PlanError as err:
        raise RestoreError(str(err)) from None


def download_checked(remote: Remote, key: str, dest: Path, size: int | None, sha256: str | None,
                     throttle: Throttle, check: Callable[[Path], None] | None = None) -> None:
    """``key`` into ``dest`` (temporary file, fsync, ``check`` on it, rename): IntegrityError if
    its size or SHA-256 is not the expected one or ``check`` refuses it (nothing is kept then)."""
    dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, temp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            got_size, got_sha = remote.get_file(key, out, throttle)
            out.flush()
            os.fsync(out.fileno())
        if size is not None and got_size != size:
            raise IntegrityError(f"{key}: {got_size} bytes on the target, expected {size}")
        if sha256 is not None and got_sha != sha256:
            raise IntegrityError(f"{key}: SHA-256 {got_sha[:16]}... differs from the expected {sha256[:16]}... "
                                 f"(the object on the target is damaged)")
        if check is not None:
            check(Path(temp))
        replace_atomic(temp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


def _snapshot_there(path: Path, size: int, sha256: str) -> bool:
    try:
        return path.stat().st_size == size and file_sha256(path)[1] == sha256
    except FileNotFoundError:
        return False


def _vault_file_there(checker: VaultChecker, item: LocalFile, path: Path) -> bool:
    if not path.exists():
        return False
    try:
        checker.check(item, path)
    except IntegrityError:
        return False
    return True


def restore(remote: Remote, catalog_dest: Path, vault_dest: Path, keys: KeyStore, throttle: Throttle,
            manifest: str | None = None, report: Callable[[RestoreResult], None] | None = None) -> RestoreResult:
    key, found = read_manifest(remote, manifest)
    result = RestoreResult(key, found)
    catalog_dest.parent.mkdir(parents=True, exist_ok=True)
    staged = catalog_dest.with_name(f".{catalog_dest.name}.restoring")
    if not _snapshot_there(staged, found.snapshot_size, found.snapshot_sha256):
        try:
            download_checked(remote, found.snapshot, staged, found.snapshot_size, found.snapshot_sha256, throttle)
        except (IntegrityError, ObjectMissing) as err:
            raise RestoreError(f"catalog snapshot: {err}") from None
    check = quick_check(staged)
    if check != "ok":
        raise RestoreError(f"catalog snapshot {found.snapshot}: quick_check: {check}")
    info = describe(staged)
    result.recordings, result.kek_ids = info.recordings, info.kek_ids
    vault_dest.mkdir(parents=True, exist_ok=True, mode=0o700)
    problems: list[str] = []
    with VaultChecker(keys, staged) as checker:
        for item in inventory(staged, problems):
            target = vault_dest / item.path
            missing_kek = checker.missing_kek(item.recording_id)
            if missing_kek is not None:   # crypto-shredded since this backup, or not in the escrow
                result.skipped.append(f"{item.recording_id}: KEK {missing_kek} is not available")
                continue
            if _vault_file_there(checker, item, target):
                result.kept += 1
                continue
            try:
                download_checked(remote, item.key, target, item.size, None, throttle,
                                 check=functools.partial(checker.check, item))
            except (IntegrityError, ObjectMissing) as err:
                note = " (named missing by the backup run)" if item.key in found.missing else ""
                result.problems.append(f"{item.recording_id}: {err}{note}")
                continue
            except RemoteError as err:
                raise RestoreError(f"{item.key}: {err}") from None
            result.files += 1
            result.bytes += item.size
            if report is not None:
                report(result)
    result.problems.extend(problems)
    replace_atomic(staged, catalog_dest)
    fsync_dir(vault_dest)
    return result
