"""Offsite shredding: per-expiry-month KEKs, so that a purge also makes older copies unreadable.

Destroying a recording's wrapped data key in the live catalog does not reach a backup taken
earlier: that backup's catalog snapshot still holds the wrapped key, and the KEK that opens it
(or its escrow) still exists. What does reach every copy is destroying the *KEK*. So:

* **Buckets.** Each retention run rewraps the data key of every recording it keeps under the KEK
  of its bucket: the calendar month (UTC) in which it expires (``2031-07``), or ``keep`` for
  recordings under legal hold or matched by no rule. Bucket KEKs are registered in
  ``retention_keks``; every KEK that ever wrapped a recording is noted in
  ``retention_key_history``.
* **Shredding.** After a purge, every bucket KEK that ever wrapped a purged recording is
  destroyed (its file deleted from the key directory, the directory fsynced). If it still wraps
  live keys (recordings of the same month not due yet, held ones), those are first rewrapped
  under a fresh KEK of the same bucket. A backup taken before the purge can then no longer
  unwrap the purged recording's key: the KEK is gone everywhere the key directory is, and
  the fresh KEK was never in that backup's key material.

What this cannot reach, by design: KEKs retention did not create (the intake KEK new
recordings are wrapped under, and KEKs retired by ``recorderd keys rotate``) are never
destroyed here, because a running recorder may still wrap new keys under the KEK it loaded at
start. A backup taken between a recording's arrival and its first retention run (at most a
day with the daily timer; schedule backups after retention) holds its key under the intake
KEK. An escrow exported before a bucket KEK was created does not contain it: export a fresh
escrow after a run that reports new KEKs (and destroy older escrows: they hold destroyed KEKs).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import apsw

from capture.fsutil import fsync_dir, write_atomic
from retention.plan import Decision
from retention.store import Actor
from storage.audit import AuditLog
from storage.catalog import Catalog
from storage.keys import KEK_BYTES, KeyDirError, KeyStore, UnwrapError, new_kek_id

KEEP = "keep"
REWRAP_BATCH = 200


def bucket_of(decision: Decision, held: bool) -> str | None:
    """The KEK bucket of a recording retention keeps; None for one it purges (or does not own).

    A held recording goes to ``keep`` even before it is due: sharing its expiry month's KEK
    would tie that KEK's destruction to the hold."""
    if decision.action in ("purge", "purged", "active"):
        return None
    if held or decision.action == "no_rule":
        return KEEP
    if decision.action == "keep":
        assert decision.expires_at is not None
        return datetime.fromtimestamp(decision.expires_at, UTC).strftime("%Y-%m")
    return KEEP   # held


@dataclass(slots=True)
class KeyringReport:
    moved: int = 0
    created: list[str] = field(default_factory=list)     # new KEK ids (export a fresh escrow)
    destroyed: list[str] = field(default_factory=list)
    unreadable: dict[str, str] = field(default_factory=dict)   # recording id -> why its key was left alone

    def to_dict(self) -> dict[str, Any]:
        return {"rewrapped": self.moved, "keks_created": len(self.created), "keks_destroyed": len(self.destroyed),
                "unreadable_keys": self.unreadable}


@dataclass
class Keyring:
    catalog: Catalog
    audit: AuditLog
    keys: KeyStore
    actor: Actor
    clock: Callable[[], float] = time.time
    report: KeyringReport = field(default_factory=KeyringReport)

    # -- registry ----------------------------------------------------------------------------------

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        reader = self.catalog.reader()
        try:
            return reader.conn.execute(sql, params).fetchall()
        finally:
            reader.close()

    def buckets(self) -> dict[str, str]:
        """Live bucket KEKs: kek id -> bucket."""
        return {str(k): str(b) for k, b in self._query(
            "SELECT kek_id, bucket FROM retention_keks WHERE destroyed_at IS NULL")}

    def _current_kek(self, bucket: str, buckets: dict[str, str]) -> str:
        """The newest live KEK of ``bucket`` (made when there is none)."""
        found = sorted(k for k, b in buckets.items() if b == bucket)
        if found:
            return found[-1]
        kek_id = self._create_kek(bucket)
        buckets[kek_id] = bucket
        return kek_id

    def _create_kek(self, bucket: str) -> str:
        kek_id = new_kek_id()
        while (self.keys.directory / f"kek-{kek_id}.key").exists():
            kek_id = new_kek_id()
        write_atomic(self.keys.directory / f"kek-{kek_id}.key", secrets.token_bytes(KEK_BYTES), mode=0o600)
        self.keys = KeyStore(self.keys.directory)   # reload: the new KEK is usable from here on
        now = self.clock()

        def job(conn: apsw.Connection) -> None:
            conn.execute("INSERT INTO retention_keks (kek_id, bucket, created_at) VALUES (?, ?, ?)",
                         (kek_id, bucket, now))
            self.audit.append(self.actor.name, self.actor.role, "kek_create", f"kek:{kek_id}", "ok",
                              detail={"bucket": bucket})

        self.catalog.writer.call(job)
        self.report.created.append(kek_id)
        return kek_id

    # -- rebucketing -------------------------------------------------------------------------------

    def rebucket(self, keyed: Iterable[tuple[str, str | None, bytes | None, Decision, bool]]) -> None:
        """Move every kept recording's data key under its bucket's KEK.

        ``keyed``: (recording id, current KEK id, wrapped key, decision, held) per recording.
        """
        buckets = self.buckets()
        batch: list[tuple[str, str, bytes, str]] = []   # rid, new kek, blob, old kek
        for recording_id, kek_id, wrapped, decision, held in keyed:
            bucket = bucket_of(decision, held)
            if bucket is None or kek_id is None or wrapped is None or buckets.get(kek_id) == bucket:
                continue
            try:
                data_key = self.keys.unwrap(kek_id, wrapped, recording_id)
            except (KeyDirError, UnwrapError) as err:   # one bad key must not stop the purge
                self.report.unreadable[recording_id] = str(err)
                continue
            target = self._current_kek(bucket, buckets)
            _, blob = self.keys.wrap(data_key, recording_id, target)
            batch.append((recording_id, target, blob, kek_id))
            if len(batch) >= REWRAP_BATCH:
                self._store(batch)
                batch = []
        if batch:
            self._store(batch)

    def _store(self, batch: list[tuple[str, str, bytes, str]]) -> None:
        """Rewrapped keys and their history in one transaction; a key changed meanwhile (purged,
        rewrapped by a rotation) is left alone."""
        def job(conn: apsw.Connection) -> int:
            moved = 0
            for recording_id, new_kek, blob, old_kek in batch:
                conn.execute("UPDATE recordings SET kek_id = ?, wrapped_key = ? WHERE recording_id = ? "
                             "AND kek_id = ? AND wrapped_key IS NOT NULL", (new_kek, blob, recording_id, old_kek))
                if conn.changes():
                    moved += 1
                    conn.executemany("INSERT OR IGNORE INTO retention_key_history (recording_id, kek_id) "
                                     "VALUES (?, ?)", [(recording_id, old_kek), (recording_id, new_kek)])
            return moved

        self.report.moved += self.catalog.writer.call(job)

    # -- shredding ---------------------------------------------------------------------------------

    @staticmethod
    def note_history(conn: apsw.Connection, recording_id: str) -> None:
        """Inside the purge transaction, before the key is destroyed: remember its KEK."""
        conn.execute("INSERT OR IGNORE INTO retention_key_history (recording_id, kek_id) "
                     "SELECT recording_id, kek_id FROM recordings WHERE recording_id = ? AND kek_id IS NOT NULL",
                     (recording_id,))

    def shred(self) -> None:
        """Destroy every live bucket KEK that ever wrapped a purged recording, rewrapping the live
        keys it still wraps under a fresh KEK of its bucket first. Looks at every purged
        recording, so a run a crash interrupted is finished by the next one."""
        self._finish_destroyed()
        buckets = self.buckets()
        doomed = [str(r[0]) for r in self._query(
            "SELECT k.kek_id FROM retention_keks k WHERE k.destroyed_at IS NULL AND EXISTS ("
            "SELECT 1 FROM retention_key_history h JOIN recordings r ON r.recording_id = h.recording_id "
            "WHERE h.kek_id = k.kek_id AND r.state = 'purged') ORDER BY k.kek_id")]
        for kek_id in doomed:
            if kek_id == self.keys.active_kek_id:
                continue   # never the intake KEK (see the module docstring)
            if self._rewrap_survivors(kek_id, buckets[kek_id], buckets):
                self._destroy(kek_id, buckets.pop(kek_id))

    def _rewrap_survivors(self, kek_id: str, bucket: str, buckets: dict[str, str]) -> bool:
        """Move the live keys ``kek_id`` wraps to a fresh KEK of the bucket; True when none is left."""
        survivors = list(self.catalog.iter_wrapped_keys(kek_id, batch=REWRAP_BATCH))
        if survivors:
            fresh = self._create_kek(bucket)   # the old one is about to go: not _current_kek
            buckets[fresh] = bucket
            for start in range(0, len(survivors), REWRAP_BATCH):
                batch = []
                for wrapped in survivors[start:start + REWRAP_BATCH]:
                    data_key = self.keys.unwrap(kek_id, wrapped.wrapped_key, wrapped.recording_id)
                    blob = self.keys.wrap(data_key, wrapped.recording_id, fresh)[1]
                    batch.append((wrapped.recording_id, fresh, blob, kek_id))
                self._store(batch)
        # a key that came back under it meanwhile (a concurrent rotation?) keeps it until the next run
        return next(self.catalog.iter_wrapped_keys(kek_id, batch=1), None) is None

    def _finish_destroyed(self) -> None:
        """KEK files a crash left behind after their destruction was recorded."""
        for (kek_id,) in self._query("SELECT kek_id FROM retention_keks WHERE destroyed_at IS NOT NULL"):
            path = self.keys.directory / f"kek-{kek_id}.key"
            if path.exists():
                path.unlink()
                fsync_dir(self.keys.directory)
                self.keys = KeyStore(self.keys.directory)

    def _destroy(self, kek_id: str, bucket: str) -> None:
        """Recorded first, then the file goes: a crash between leaves a file _finish_destroyed removes."""
        now = self.clock()

        def job(conn: apsw.Connection) -> None:
            conn.execute("UPDATE retention_keks SET destroyed_at = ? WHERE kek_id = ?", (now, kek_id))
            self.audit.append(self.actor.name, self.actor.role, "kek_destroy", f"kek:{kek_id}", "ok",
                              reason="every copy of the purged recordings it wrapped becomes unreadable",
                              detail={"bucket": bucket})

        self.catalog.writer.call(job)
        path: Path = self.keys.directory / f"kek-{kek_id}.key"
        path.unlink(missing_ok=True)
        fsync_dir(self.keys.directory)
        self.keys = KeyStore(self.keys.directory)
        self.report.destroyed.append(kek_id)
