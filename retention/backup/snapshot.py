"""Consistent catalog snapshots (SQLite online backup API) and reading inventories from them.

``snapshot_catalog`` copies the live catalog page by page with ``sqlite3_backup`` (through
apsw's ``Connection.backup``) in a single step: the copy is one read transaction of the
source, so it is exactly the catalog as of one commit, while the recorder keeps writing (WAL
readers do not block the writer). The copy is switched out of WAL mode so that it is one
self-contained file. It contains the wrapped data keys, never a KEK: the KEKs live only in
the key directory.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apsw

from retention.backup.plan import LocalFile, PlanError, check_vault_path
from storage.migrations import LATEST_VERSION, schema_version

HASH_CHUNK = 1 << 20
# the recordings whose vault files a backup carries: finished, with audio, not crypto-shredded
INVENTORY_SQL = ("SELECT recording_id, vault_path, vault_size, vault_sha256 FROM recordings "
                 "WHERE state IN ('complete', 'partial') AND vault_path IS NOT NULL "
                 "AND wrapped_key IS NOT NULL ORDER BY vault_path")


class SnapshotError(Exception):
    """A snapshot cannot be taken or is not a usable catalog; the message says why."""


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    path: Path
    size: int
    sha256: str
    schema_version: int
    kek_ids: list[str]
    recordings: int


def file_sha256(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def snapshot_catalog(catalog_path: Path, dest: Path, busy_timeout_ms: int = 30_000) -> SnapshotInfo:
    """Copy the catalog at ``catalog_path`` into the new file ``dest`` (made durable)."""
    if dest.exists():
        dest.unlink()
    try:
        source = apsw.Connection(str(catalog_path), flags=apsw.SQLITE_OPEN_READONLY)
    except apsw.Error as err:
        raise SnapshotError(f"cannot open catalog {catalog_path}: {err}") from None
    try:
        source.set_busy_timeout(busy_timeout_ms)
        target = apsw.Connection(str(dest))
        try:
            with target.backup("main", source, "main") as backup:
                while not backup.done:
                    backup.step(-1)   # every page in one step: one consistent read transaction
            target.execute("PRAGMA journal_mode = DELETE")
        finally:
            target.close()
    except apsw.Error as err:
        raise SnapshotError(f"cannot snapshot catalog {catalog_path}: {err}") from None
    finally:
        source.close()
    fd = os.open(dest, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return describe(dest)


def open_snapshot(path: Path) -> apsw.Connection:
    """A snapshot opened read-only, after checking it is a catalog this recorderd can read."""
    try:
        conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
        version = schema_version(conn)
    except apsw.Error as err:
        raise SnapshotError(f"{path}: not a readable SQLite catalog ({err})") from None
    if version == 0 or version > LATEST_VERSION:
        conn.close()
        raise SnapshotError(f"{path}: catalog schema version {version} (this recorderd reads 1..{LATEST_VERSION})")
    return conn


def describe(path: Path) -> SnapshotInfo:
    size, sha256 = file_sha256(path)
    conn = open_snapshot(path)
    try:
        rows: list[Any] = conn.execute(
            "SELECT DISTINCT kek_id FROM recordings WHERE wrapped_key IS NOT NULL AND kek_id IS NOT NULL "
            "ORDER BY kek_id").fetchall()
        count: Any = conn.execute("SELECT count(*) FROM recordings").fetchall()[0][0]
        return SnapshotInfo(path, size, sha256, schema_version(conn), [str(r[0]) for r in rows], int(count))
    finally:
        conn.close()


def quick_check(path: Path) -> str:
    """SQLite's quick_check of a snapshot: "ok" or the problems it found."""
    conn = open_snapshot(path)
    try:
        rows: list[Any] = conn.execute("PRAGMA quick_check").fetchall()
    finally:
        conn.close()
    found = [str(r[0]) for r in rows]
    return "ok" if found == ["ok"] else "; ".join(found[:5])


def inventory(path: Path, problems: list[str]) -> Iterator[LocalFile]:
    """The vault files a snapshot refers to, in ascending path order. A row whose path is not a
    vault path (only a damaged or forged catalog has one) is named in ``problems`` and skipped."""
    conn = open_snapshot(path)
    try:
        for recording_id, vault_path, size, sha256 in conn.execute(INVENTORY_SQL):
            try:
                yield LocalFile(str(recording_id), check_vault_path(str(vault_path)), int(size or 0),
                                str(sha256) if sha256 else None)
            except PlanError as err:
                problems.append(f"{recording_id}: {err}")
    finally:
        conn.close()
