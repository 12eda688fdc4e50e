"""The audit log: append-only, hash chained, with signed checkpoints.

Every entry carries the SHA-256 of its own fields and of the entry before it (prev_hash), so
an edited, deleted or reordered entry breaks the chain at that place. Because someone with
write access to the database could recompute the whole chain, a checkpoint — the hash of the
latest entry, signed with the appliance's Ed25519 key (kept in the root-only key directory,
never in the database) — is stored every `checkpoint_every` entries or `checkpoint_seconds`
seconds. The verifier walks the chain and the checkpoints and names the first bad entry.
SQLite triggers refuse UPDATE and DELETE on both tables (storage/migrations.py).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import apsw

from storage.catalog import Catalog, CatalogReader

GENESIS = "0" * 64
HASHED_FIELDS = ("seq", "ts", "actor", "role", "action", "object", "outcome", "reason", "detail", "prev_hash")
Signer = Callable[[bytes], bytes]
SignatureCheck = Callable[[bytes, bytes], bool]


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
    detail: str        # canonical JSON
    prev_hash: str
    hash: str

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["detail"] = json.loads(self.detail)
        return out


@dataclass(slots=True, frozen=True)
class ChainReport:
    ok: bool
    entries: int
    first_bad_seq: int | None
    problem: str
    checkpoints: int = 0


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def entry_hash(fields: dict[str, Any]) -> str:
    """SHA-256 over the canonical JSON of every field but the hash itself."""
    return hashlib.sha256(canonical_json({k: fields[k] for k in HASHED_FIELDS}).encode()).hexdigest()


def checkpoint_message(seq: int, chain_hash: str) -> bytes:
    return f"recorderd-audit-checkpoint|{seq}|{chain_hash}".encode()


class AuditLog:
    def __init__(self, catalog: Catalog, sign: Signer | None = None, checkpoint_every: int = 100,
                 checkpoint_seconds: float = 300.0, clock: Callable[[], float] = time.time) -> None:
        self.catalog = catalog
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
            last = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
            seq, prev = (last[0] + 1, last[1]) if last else (1, GENESIS)
            fields: dict[str, Any] = {"seq": seq, "ts": now, "actor": actor, "role": role, "action": action,
                                      "object": object, "outcome": outcome, "reason": reason,
                                      "detail": detail_json, "prev_hash": prev}
            entry = AuditEntry(**fields, hash=entry_hash(fields))
            conn.execute(f"INSERT INTO audit ({', '.join(HASHED_FIELDS)}, hash) VALUES ({', '.join('?' * 11)})",
                         (*(fields[k] for k in HASHED_FIELDS), entry.hash))
            if self._checkpoint_due(conn, seq, now):
                self._write_checkpoint(conn, entry, now)
            return entry

        return self.catalog.writer.call(job)

    def checkpoint(self) -> bool:
        """Sign the latest entry now (e.g. before an export or at shutdown); False if nothing to sign."""
        sign = self.sign
        if sign is None:
            return False

        def job(conn: apsw.Connection) -> bool:
            last = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
            done = (conn.execute("SELECT max(seq) FROM audit_checkpoints").fetchone() or (None,))[0]
            if not last or done == last[0]:
                return False
            conn.execute("INSERT INTO audit_checkpoints (seq, hash, ts, signature) VALUES (?, ?, ?, ?)",
                         (last[0], last[1], self.clock(), sign(checkpoint_message(last[0], last[1]))))
            return True

        return self.catalog.writer.call(job)

    def _checkpoint_due(self, conn: apsw.Connection, seq: int, now: float) -> bool:
        if self.sign is None:
            return False
        last = conn.execute("SELECT seq, ts FROM audit_checkpoints ORDER BY seq DESC LIMIT 1").fetchone()
        last_seq, last_ts = last if last else (0, None)
        if seq - last_seq >= self.checkpoint_every:
            return True
        return last_ts is not None and now - last_ts >= self.checkpoint_seconds

    def _write_checkpoint(self, conn: apsw.Connection, entry: AuditEntry, now: float) -> None:
        assert self.sign is not None
        conn.execute("INSERT INTO audit_checkpoints (seq, hash, ts, signature) VALUES (?, ?, ?, ?)",
                     (entry.seq, entry.hash, now, self.sign(checkpoint_message(entry.seq, entry.hash))))


def _rows(reader: CatalogReader, sql: str, params: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield from reader.conn.execute(sql, params)


def verify_chain(reader: CatalogReader, verify_sig: SignatureCheck | None) -> ChainReport:
    """Walk every entry in order; the first problem found is reported with its seq."""
    expected_seq, prev_hash, count = 1, GENESIS, 0
    hashes: dict[int, str] = {}
    for row in _rows(reader, f"SELECT {', '.join(HASHED_FIELDS)}, hash FROM audit ORDER BY seq"):
        fields = dict(zip(HASHED_FIELDS, row[:-1], strict=True))
        seq, stored = fields["seq"], row[-1]
        if seq != expected_seq:
            return ChainReport(False, count, expected_seq, f"entry {expected_seq} is missing (deleted)")
        if fields["prev_hash"] != prev_hash:
            return ChainReport(False, count, seq,
                               f"entry {seq} does not follow entry {seq - 1} (an entry was deleted, "
                               f"inserted or reordered)")
        if entry_hash(fields) != stored:
            return ChainReport(False, count, seq, f"entry {seq} was altered (its hash does not match its fields)")
        hashes[seq] = stored
        prev_hash, expected_seq, count = stored, seq + 1, count + 1
    checkpoints = 0
    for seq, chain_hash, _ts, signature in _rows(reader, "SELECT seq, hash, ts, signature FROM audit_checkpoints "
                                                         "ORDER BY seq"):
        checkpoints += 1
        if seq not in hashes:
            return ChainReport(False, count, seq, f"checkpoint {seq} covers entries that are gone "
                                                   f"(the log ends at {count}: entries were deleted)")
        if hashes[seq] != chain_hash:
            return ChainReport(False, count, seq, f"checkpoint {seq} does not match the chain "
                                                   f"(entries up to {seq} were rewritten)")
        if verify_sig is not None and not verify_sig(checkpoint_message(seq, chain_hash), bytes(signature)):
            return ChainReport(False, count, seq, f"checkpoint {seq} has an invalid signature (forged)")
    return ChainReport(True, count, None, "", checkpoints)


def entries(reader: CatalogReader, object: str | None = None, since: float | None = None,  # noqa: A002
            until: float | None = None, actor: str | None = None, action: str | None = None) -> list[AuditEntry]:
    """Entries matching every filter given, in chain order (for excerpts and the console)."""
    clauses, params = [], []
    for column, op, value in (("object", "=", object), ("ts", ">=", since), ("ts", "<", until),
                              ("actor", "=", actor), ("action", "=", action)):
        if value is not None:
            clauses.append(f"{column} {op} ?")
            params.append(value)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    sql = f"SELECT {', '.join(HASHED_FIELDS)}, hash FROM audit {where} ORDER BY seq"
    return [AuditEntry(*row) for row in _rows(reader, sql, tuple(params))]
