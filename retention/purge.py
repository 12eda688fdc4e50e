"""Applying a purge plan: crypto-shred, delete the vault files, keep a tombstone, audit.

Per due recording, in this order (crash-safe, and a rerun finishes what a crash left):

1. One catalog transaction: the recording is read again and the decision re-made with the
   rules and holds as they are *now* (a rule edited or a hold placed since the plan was made
   wins); then the tombstone row (ids, Call-ID, keyed hashes of the parties, times, the rule),
   the wrapped data key destroyed (``wrapped_key`` NULL, state ``purged``: the audio can no
   longer be decrypted, whatever copies of the file exist), the personal data in the row
   scrubbed (numbers, URIs, agent, metadata, tags, notes, transcript, streams, DTMF) and the
   audit entry, all committed together.
2. The vault files (every generation, a left-over ``.part``) are deleted, then the directory
   is fsynced.
3. The tombstone's ``files_removed_at`` is set (and the row forgets its vault path).

A crash after 1 leaves a tombstone without ``files_removed_at``: the next run deletes the files
and completes it before doing anything else. Running twice purges nothing twice.

The parties are hashed with HMAC-SHA256 under a key derived from the appliance's signing key
(an Ed25519 signature, RFC 8032, is deterministic: the signature of a fixed label is a stable
secret that lives only in the key directory, never in the catalog or its backups). Phone
numbers are few enough to brute-force a plain hash; a keyed one can only be checked ("was a
call with this number purged?") by someone holding the key directory.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import apsw

from capture.fsutil import fsync_dir
from capture.recording import iso_utc
from retention.keyring import Keyring, KeyringReport
from retention.plan import PurgePlan, decide, plan
from retention.rules import RuleSet
from retention.store import (
    Actor,
    _rules_on,
    held_on,
    held_sets,
    iter_keyed_records,
    iter_records,
    load_rules,
    purged_count,
    record_on,
)
from storage.audit import AuditLog
from storage.catalog import Catalog
from storage.keys import KeyStore
from storage.recordingsink import resolve_path
from storage.recovery import vault_files_of

PARTY_HASH_LABEL = b"recorderd tombstone party hash v1"
_SEPARATORS = re.compile(r"[\s\-./()]")
BATCH = 50


def party_hash_key(keys: KeyStore) -> bytes:
    """The HMAC key for tombstone party hashes (see the module docstring)."""
    return hashlib.sha256(keys.sign(PARTY_HASH_LABEL)).digest()


def party_hash(key: bytes, number: str | None) -> str | None:
    """HMAC-SHA256 of a number without separators (so "+49 30 1234" and "+49301234" agree)."""
    if not number:
        return None
    return hmac.new(key, _SEPARATORS.sub("", number).encode(), hashlib.sha256).hexdigest()


@dataclass(slots=True)
class PurgeResult:
    plan: PurgePlan
    purged: list[str] = field(default_factory=list)
    files_removed: int = 0
    finished_earlier: list[str] = field(default_factory=list)   # tombstones a crashed run left
    skipped: dict[str, str] = field(default_factory=dict)        # id -> why it was not purged after all
    deferred: int = 0                                            # due, beyond this run's limit
    keys: KeyringReport = field(default_factory=KeyringReport)

    def to_dict(self) -> dict[str, Any]:
        return {"now": iso_utc(self.plan.now), "purged": len(self.purged), "ids": self.purged,
                "files_removed": self.files_removed, "finished_earlier": self.finished_earlier,
                "skipped": self.skipped, "deferred": self.deferred, "keys": self.keys.to_dict(),
                "plan": self.plan.to_dict(with_ids=False)}


@dataclass
class Purger:
    catalog: Catalog
    audit: AuditLog
    keys: KeyStore
    vault_dir: Path
    actor: Actor
    offsite_shred: bool = True
    clock: Callable[[], float] = time.time

    def make_plan(self, now: float) -> PurgePlan:
        """The dry run (``recorderd retention plan``, the console)."""
        reader = self.catalog.reader()
        try:
            result = plan(iter_records(reader), load_rules(reader), held_sets(self.catalog, reader), now)
            result.purged = purged_count(reader)
        finally:
            reader.close()
        return result

    def apply(self, now: float, *, limit: int | None = None) -> PurgeResult:
        """Purge what is due at ``now`` (oldest first, at most ``limit``); finish a crashed run first.

        With ``offsite_shred``, the kept recordings' keys are first moved under their expiry
        month's KEK, and afterwards the KEKs of what was purged are destroyed
        (retention/keyring.py)."""
        finished = self.finish_pending()
        keyring = Keyring(self.catalog, self.audit, self.keys, self.actor, self.clock) if self.offsite_shred else None
        reader = self.catalog.reader()
        try:
            holds = held_sets(self.catalog, reader)
            rules = load_rules(reader)
            the_plan = plan(iter_records(reader), rules, holds, now)
            the_plan.purged = purged_count(reader)
            search_held = {rid for hold in holds for rid in hold.recording_ids}
            if keyring is not None:
                keyring.rebucket((record.recording_id, kek_id, wrapped, decide(record, rules, search_held, now),
                                  record.recording_id in search_held)
                                 for record, kek_id, wrapped in iter_keyed_records(reader))
        finally:
            reader.close()
        result = PurgeResult(the_plan, finished_earlier=finished)
        ids = the_plan.ids
        if limit is not None and len(ids) > limit:
            result.deferred = len(ids) - limit
            ids = ids[:limit]
        key = party_hash_key(self.keys)
        for start in range(0, len(ids), BATCH):
            batch = ids[start:start + BATCH]

            def shred(conn: apsw.Connection, batch: list[str] = batch) -> list[tuple[str, str | None]]:
                return self._shred_batch(conn, batch, now, key, search_held, result)

            for recording_id, vault_path in self.catalog.writer.call(shred):
                result.files_removed += self._remove_files(recording_id, vault_path)
                self._mark_removed(recording_id)
                result.purged.append(recording_id)
        if keyring is not None:
            keyring.shred()
            result.keys = keyring.report
        if result.purged or finished:
            self.catalog.checkpoint()   # the destroyed keys leave the WAL too (secure_delete is on)
        self.audit.append(self.actor.name, self.actor.role, "retention_apply", "retention", "ok",
                          detail={"now": iso_utc(now), "purged": len(result.purged),
                                  "files_removed": result.files_removed, "finished_earlier": len(finished),
                                  "skipped": len(result.skipped), "deferred": result.deferred,
                                  "held": the_plan.held.count, **result.keys.to_dict()})
        return result

    # -- step 1: one transaction per batch ---------------------------------------------------------

    def _shred_batch(self, conn: apsw.Connection, batch: list[str], now: float, key: bytes,
                     search_held: set[str], result: PurgeResult) -> list[tuple[str, str | None]]:
        rules = RuleSet.of(s.rule for s in _rules_on(conn))
        shredded = []
        for recording_id in batch:
            record = record_on(conn, recording_id)
            if record is None:
                result.skipped[recording_id] = "gone from the catalog"
                continue
            held = {recording_id} if recording_id in search_held or held_on(conn, recording_id) else set()
            decision = decide(record, rules, held, now)
            if decision.action != "purge":
                result.skipped[recording_id] = f"no longer due ({decision.action})"
                continue
            assert decision.rule is not None and decision.expires_at is not None
            stored: Any = conn.execute("SELECT vault_path FROM recordings WHERE recording_id = ?",
                                       (recording_id,)).fetchall()[0][0]
            vault_path = None if stored is None else str(stored)
            stamp = self.clock()
            Keyring.note_history(conn, recording_id)
            conn.execute(
                "INSERT INTO retention_tombstones (recording_id, call_id, caller_hash, callee_hash, started_at, "
                "ended_at, duration_s, rule, period, expired_at, purged_at, purged_by) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (recording_id, record.call_id, party_hash(key, record.caller), party_hash(key, record.callee),
                 record.started_at, record.ended_at, record.duration_s, decision.rule,
                 str(rules.by_name[decision.rule].period), decision.expires_at, stamp, self.actor.name))
            conn.execute(
                "UPDATE recordings SET wrapped_key = NULL, key_id = NULL, state = 'purged', caller = NULL, "
                "callee = NULL, caller_uri = NULL, callee_uri = NULL, agent_id = NULL, partial_note = NULL, "
                "metadata = '{}', updated_at = ? WHERE recording_id = ?", (stamp, recording_id))
            for table in ("tags", "notes", "transcripts", "streams", "dtmf"):
                conn.execute(f"DELETE FROM {table} WHERE recording_id = ?", (recording_id,))  # nosec B608  # table names from the literal tuple above; every value is a ? parameter
            self.audit.append(self.actor.name, self.actor.role, "retention_purge", recording_id, "ok",
                              reason=f"rule {decision.rule} expired {iso_utc(decision.expires_at)}",
                              detail={"call_id": record.call_id, "rule": decision.rule,
                                      "expired_at": iso_utc(decision.expires_at)})
            shredded.append((recording_id, vault_path))
        return shredded

    # -- steps 2 and 3 ------------------------------------------------------------------------------

    def _remove_files(self, recording_id: str, vault_path: str | None) -> int:
        paths = set(vault_files_of(self.vault_dir, recording_id))
        if vault_path:
            paths.add(resolve_path(self.vault_dir, vault_path))
        removed = 0
        folders = set()
        for path in sorted(paths):
            try:
                path.unlink()
                removed += 1
                folders.add(path.parent)
            except FileNotFoundError:
                pass
        for folder in folders:   # the unlinks are durable before the tombstone says so
            fsync_dir(folder)
        return removed

    def _mark_removed(self, recording_id: str) -> None:
        stamp = self.clock()

        def job(conn: apsw.Connection) -> None:
            conn.execute("UPDATE retention_tombstones SET files_removed_at = ? WHERE recording_id = ? "
                         "AND files_removed_at IS NULL", (stamp, recording_id))
            conn.execute("UPDATE recordings SET vault_path = NULL, vault_size = NULL, vault_sha256 = NULL, "
                         "kek_id = NULL WHERE recording_id = ? AND state = 'purged'", (recording_id,))

        self.catalog.writer.call(job)

    def finish_pending(self) -> list[str]:
        """Tombstones whose files a crashed run did not delete yet: delete them now."""
        reader = self.catalog.reader()
        try:
            pending: list[Any] = reader.conn.execute(
                "SELECT t.recording_id, r.vault_path FROM retention_tombstones t "
                "LEFT JOIN recordings r ON r.recording_id = t.recording_id "
                "WHERE t.files_removed_at IS NULL ORDER BY t.purged_at").fetchall()
        finally:
            reader.close()
        for recording_id, vault_path in pending:
            self._remove_files(str(recording_id), None if vault_path is None else str(vault_path))
            self._mark_removed(str(recording_id))
            self.audit.append(self.actor.name, self.actor.role, "retention_purge_files", str(recording_id), "ok",
                              reason="vault files of an interrupted purge removed")
        return [str(p[0]) for p in pending]

