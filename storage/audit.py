"""The audit log: append-only, hash chained, with signed checkpoints.

Entry format
------------
Table ``audit`` (storage/migrations.py): ``seq, ts, actor, role, action, object, outcome,
reason, detail, prev_hash, hash``. ``detail`` is stored as canonical JSON text. ``hash`` is the
SHA-256 (hex) of the canonical JSON (keys sorted, no spaces, UTF-8, RFC 8259 numbers as Python
writes them) of the object holding every other field, ``prev_hash`` included::

    {"action":…,"actor":…,"detail":"<canonical JSON text>","object":…,"outcome":…,
     "prev_hash":…,"reason":…,"role":…,"seq":…,"ts":…}

The first entry's ``prev_hash`` is 64 zeros. An edited field breaks that entry's hash; a deleted
or moved entry breaks the ``seq`` sequence or the next entry's ``prev_hash``.

Someone who can write the database file could drop the guard triggers and recompute the whole
chain, so every ``checkpoint_every`` entries or ``checkpoint_seconds`` seconds (whichever comes
first) a checkpoint row ``(seq, hash, ts, signature)`` is written, the signature (Ed25519, with
a key kept in the root-only key directory, never in the database) being over the bytes
``recorderd-audit-checkpoint|<seq>|<hash>``. A rewritten chain no longer matches the signed
hashes. Entries after the last checkpoint are protected by the chain only.

``verify_chain`` walks everything in one read transaction and names the first broken entry.
SQLite triggers refuse UPDATE and DELETE on both tables.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, cast

import apsw

from storage.catalog import Catalog, CatalogReader, CatalogWriter, to_epoch

GENESIS = "0" * 64
HASHED_FIELDS = ("seq", "ts", "actor", "role", "action", "object", "outcome", "reason", "detail", "prev_hash")
CHECKPOINT_LABEL = "recorderd-audit-checkpoint"
Signer = Callable[[bytes], bytes]
SignatureCheck = Callable[[bytes, bytes], bool]
Target = Catalog | CatalogWriter | apsw.Connection
Source = CatalogReader | Catalog | apsw.Connection


@dataclass(slots=True, frozen=True)
class AuditEntry:
    seq: int
    ts: float
    actor: str
    role: str
    action: str
    object: str
    outcome: str
    reason: str
    detail: str  # canonical JSON text
    prev_hash: str
    hash: str

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["detail"] = json.loads(self.detail)
        return out


@dataclass(slots=True, frozen=True)
class ChainReport:
    """``ok``; how many entries were checked; the first bad entry's seq and what is wrong."""

    ok: bool
    entries: int
    first_bad_seq: int | None
    problem: str
    checkpoints: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def canonical_json(value: Any) -> str:
    """JSON with sorted keys, no spaces, non-ASCII as UTF-8: one text per value."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def entry_hash(fields: dict[str, Any]) -> str:
    """SHA-256 (hex) over the canonical JSON of every field but the hash itself."""
    return hashlib.sha256(canonical_json({k: fields[k] for k in HASHED_FIELDS}).encode()).hexdigest()


def checkpoint_message(seq: int, chain_hash: str) -> bytes:
    """The bytes a checkpoint signature covers."""
    return f"{CHECKPOINT_LABEL}|{seq}|{chain_hash}".encode()


# ---------------------------------------------------------------------------------------------
# writing


def _writer_call(target: Target) -> Callable[[Callable[[apsw.Connection], Any]], Any]:
    """How to run a write job on ``target``: the catalog's writer thread, or a transaction on a
    connection of the caller's own."""
    if isinstance(target, Catalog):
        return target.writer.call
    if isinstance(target, CatalogWriter):
        return target.call

    def on_connection(job: Callable[[apsw.Connection], Any]) -> Any:
        with target:  # a SAVEPOINT: nests inside a transaction the caller may have open
            return job(target)

    return on_connection


def _last_entry(conn: apsw.Connection) -> tuple[int, str]:
    found: list[Any] = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchall()
    return (int(found[0][0]), str(found[0][1])) if found else (0, GENESIS)


class AuditLog:
    """Appends entries (and checkpoints when due) through the catalog's writer.

    ``target`` is the :class:`Catalog`, its :class:`CatalogWriter`, or an apsw connection
    (tests, tools). Without ``sign`` no checkpoints are written (the chain alone then guards
    only against edits by someone who cannot recompute hashes).
    """

    def __init__(self, target: Target, sign: Signer | None = None, checkpoint_every: int = 100,
                 checkpoint_seconds: float = 300.0, clock: Callable[[], float] = time.time) -> None:
        if checkpoint_every < 1 or checkpoint_seconds <= 0:
            raise ValueError("checkpoint_every must be >= 1 and checkpoint_seconds > 0")
        self._call = _writer_call(target)
        self.sign = sign
        self.checkpoint_every = checkpoint_every
        self.checkpoint_seconds = checkpoint_seconds
        self.clock = clock

    def append(self, actor: str, role: str, action: str, object: str, outcome: str,  # noqa: A002
               reason: str = "", detail: Any = None) -> AuditEntry:
        """Add one entry (and a checkpoint when one is due) in one transaction."""
        now = self.clock()
        detail_json = canonical_json(detail)

        def job(conn: apsw.Connection) -> AuditEntry:
            last_seq, prev = _last_entry(conn)
            fields: dict[str, Any] = {"seq": last_seq + 1, "ts": now, "actor": actor, "role": role,
                                      "action": action, "object": object, "outcome": outcome,
                                      "reason": reason, "detail": detail_json, "prev_hash": prev}
            entry = AuditEntry(**fields, hash=entry_hash(fields))
            conn.execute(f"INSERT INTO audit ({', '.join(HASHED_FIELDS)}, hash) "  # nosec B608  # column names from the HASHED_FIELDS constant and ? placeholders; every value is a ? parameter
                         f"VALUES ({', '.join('?' * (len(HASHED_FIELDS) + 1))})",
                         (*(fields[k] for k in HASHED_FIELDS), entry.hash))
            if self._checkpoint_due(conn, entry.seq, now):
                self._write_checkpoint(conn, entry.seq, entry.hash, now)
            return entry

        return self._call(job)

    def checkpoint(self) -> bool:
        """Sign the latest entry now (before an export, at shutdown); False if nothing to sign."""
        if self.sign is None:
            return False

        def job(conn: apsw.Connection) -> bool:
            seq, chain_hash = _last_entry(conn)
            signed = conn.execute("SELECT max(seq) FROM audit_checkpoints").fetchall()[0][0]
            if seq == 0 or signed == seq:
                return False
            self._write_checkpoint(conn, seq, chain_hash, self.clock())
            return True

        return self._call(job)

    def _checkpoint_due(self, conn: apsw.Connection, seq: int, now: float) -> bool:
        if self.sign is None:
            return False
        last: list[Any] = conn.execute("SELECT seq, ts FROM audit_checkpoints ORDER BY seq DESC LIMIT 1").fetchall()
        last_seq: int = last[0][0] if last else 0
        since: float | None = last[0][1] if last else None
        if seq - last_seq >= self.checkpoint_every:
            return True
        if since is None:  # never signed yet: count from the first entry
            first: list[Any] = conn.execute("SELECT ts FROM audit WHERE seq = ?", (last_seq + 1,)).fetchall()
            since = float(first[0][0])
        return now - since >= self.checkpoint_seconds

    def _write_checkpoint(self, conn: apsw.Connection, seq: int, chain_hash: str, now: float) -> None:
        assert self.sign is not None
        conn.execute("INSERT INTO audit_checkpoints (seq, hash, ts, signature) VALUES (?, ?, ?, ?)",
                     (seq, chain_hash, now, self.sign(checkpoint_message(seq, chain_hash))))


# ---------------------------------------------------------------------------------------------
# reading and verifying


def _connection(source: Source) -> tuple[apsw.Connection, Callable[[], None]]:
    """A read connection for ``source`` and how to release it."""
    if isinstance(source, CatalogReader):
        return source.conn, lambda: None
    if isinstance(source, Catalog):
        reader = source.reader()
        return reader.conn, reader.close
    return source, lambda: None


def _hashed_fields(row: tuple[Any, ...]) -> dict[str, Any]:
    return dict(zip(HASHED_FIELDS, row[: len(HASHED_FIELDS)], strict=True))


class _ChainWalk:
    """State of one verification: the entries walked so far and the signed checkpoints."""

    def __init__(self, conn: apsw.Connection, verify_sig: SignatureCheck | None,
                 checkpoint_every: int | None) -> None:
        self.conn = conn
        self.verify_sig = verify_sig
        self.checkpoint_every = checkpoint_every
        self.checkpoints = {seq: (chain_hash, bytes(sig)) for seq, chain_hash, sig in conn.execute(
            "SELECT seq, hash, signature FROM audit_checkpoints ORDER BY seq")}
        self.count = 0
        self.last_good_checkpoint = 0

    def seq_with_hash(self, chain_hash: str) -> int | None:
        """Where an entry with this hash sits now (a scan, only after a problem was found)."""
        found: list[Any] = self.conn.execute("SELECT seq FROM audit WHERE hash = ? LIMIT 1", (chain_hash,)).fetchall()
        return int(found[0][0]) if found else None

    def link_problem(self, seq: int, fields: dict[str, Any], intact: bool) -> tuple[int, str]:
        """Entry ``seq`` does not point at the entry before it: say why, as precisely as we can."""
        origin = self.seq_with_hash(fields["prev_hash"])
        if origin is not None and origin != seq - 1:
            return seq, (f"entry {seq} is out of order: it was written after entry {origin}, "
                         f"not after entry {seq - 1} (entries were reordered)")
        if intact:
            return seq - 1, (f"entry {seq - 1} was rewritten (hash recomputed) or an entry after it was "
                             f"deleted: entry {seq} records a different hash for its predecessor")
        return seq, (f"entry {seq} does not follow entry {seq - 1}: its predecessor is gone "
                     f"(an entry was deleted and the rest renumbered)")

    def entry_problem(self, expected_seq: int, prev_hash: str, row: tuple[Any, ...]) -> tuple[int, str] | None:
        fields, stored = _hashed_fields(row), row[-1]
        seq = fields["seq"]
        if seq != expected_seq:
            missing = f"entry {expected_seq}" if seq == expected_seq + 1 else f"entries {expected_seq}-{seq - 1}"
            return expected_seq, f"{missing} missing: the log jumps from entry {expected_seq - 1} to {seq} (deleted)"
        intact = entry_hash(fields) == stored
        if fields["prev_hash"] != prev_hash:
            return self.link_problem(seq, fields, intact)
        if not intact:
            return seq, f"entry {seq} was edited: its fields no longer match its hash"
        return self.checkpoint_problem(seq, stored)

    def checkpoint_problem(self, seq: int, stored: str) -> tuple[int, str] | None:
        every = self.checkpoint_every
        if every is not None and self.checkpoints and seq - self.last_good_checkpoint > every \
                and seq <= max(self.checkpoints):
            return seq, (f"no checkpoint within {every} entries after entry {self.last_good_checkpoint} "
                         f"(a checkpoint was deleted)")
        if seq not in self.checkpoints:
            return None
        chain_hash, signature = self.checkpoints[seq]
        if chain_hash != stored:
            return self.last_good_checkpoint + 1, (
                f"checkpoint at entry {seq} does not match the chain: entries "
                f"{self.last_good_checkpoint + 1}-{seq} were rewritten after they were signed")
        if self.verify_sig is not None and not self.verify_sig(checkpoint_message(seq, chain_hash), signature):
            return seq, f"checkpoint at entry {seq} has an invalid signature (forged or altered)"
        self.last_good_checkpoint = seq
        return None

    def run(self) -> ChainReport:
        expected_seq, prev_hash = 1, GENESIS
        for row in self.conn.execute(f"SELECT {', '.join(HASHED_FIELDS)}, hash FROM audit ORDER BY seq"):  # nosec B608  # column names from the HASHED_FIELDS constant
            problem = self.entry_problem(expected_seq, prev_hash, row)
            if problem is not None:
                return ChainReport(False, self.count, problem[0], problem[1], len(self.checkpoints))
            prev_hash, expected_seq = row[-1], row[0] + 1
            self.count += 1
        beyond = [seq for seq in self.checkpoints if seq > self.count]
        if beyond:
            return ChainReport(False, self.count, self.count + 1,
                               f"checkpoint at entry {min(beyond)} signs entries that are gone: "
                               f"entries {self.count + 1}-{min(beyond)} were deleted", len(self.checkpoints))
        return ChainReport(True, self.count, None, "", len(self.checkpoints))


def verify_chain(reader: Source, verify_sig: SignatureCheck | None = None, *,
                 checkpoint_every: int | None = None) -> ChainReport:
    """Walk every entry and checkpoint in order (one snapshot); report the first problem.

    ``verify_sig(message, signature)`` checks checkpoint signatures (None: hashes only). With
    ``checkpoint_every`` (the writer's setting), a stretch of more entries than that without a
    checkpoint, before the last checkpoint, is reported as a deleted checkpoint.
    """
    conn, release = _connection(reader)
    own_transaction = conn.get_autocommit()  # else the caller's transaction is the snapshot
    try:
        if own_transaction:
            conn.execute("BEGIN")
        try:
            return _ChainWalk(conn, verify_sig, checkpoint_every).run()
        finally:
            if own_transaction:
                conn.execute("COMMIT")
    finally:
        release()


def entries(reader: Source, object: str | None = None,  # noqa: A002
            since: float | str | datetime | None = None, until: float | str | datetime | None = None,
            actor: str | None = None, action: str | None = None) -> list[AuditEntry]:
    """Entries matching every filter given (``since`` inclusive, ``until`` exclusive), in chain
    order: excerpts for export bundles and the console."""
    return list(iter_entries(reader, object=object, since=since, until=until, actor=actor, action=action))


def iter_entries(reader: Source, object: str | None = None,  # noqa: A002
                 since: float | str | datetime | None = None, until: float | str | datetime | None = None,
                 actor: str | None = None, action: str | None = None) -> Iterator[AuditEntry]:
    clauses, params = [], []
    for column, op, value in (("object", "=", object), ("ts", ">=", to_epoch(since)), ("ts", "<", to_epoch(until)),
                              ("actor", "=", actor), ("action", "=", action)):
        if value is not None:
            clauses.append(f"{column} {op} ?")
            params.append(value)
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    conn, release = _connection(reader)
    try:
        rows = conn.execute(f"SELECT {', '.join(HASHED_FIELDS)}, hash FROM audit{where} ORDER BY seq",  # nosec B608  # HASHED_FIELDS and fixed column/operator fragments; every value is a ? parameter
                            tuple(params)).fetchall()
    finally:
        release()
    for row in rows:
        yield AuditEntry(*cast(tuple[Any, ...], row))
