"""The audit log (storage/audit.py): hash chain, signed checkpoints, tamper detection.

The tampering tests act as an attacker with the database file would: open it with their own
connection, drop the guard triggers, then edit, delete, swap or forge rows.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import apsw
import pytest
from Crypto.PublicKey import ECC
from Crypto.Signature import eddsa

from storage.audit import (
    GENESIS,
    HASHED_FIELDS,
    AuditLog,
    checkpoint_message,
    entries,
    entry_hash,
    verify_chain,
)
from storage.catalog import Catalog

T0 = 1_714_557_600.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def ed25519() -> tuple[Callable[[bytes], bytes], Callable[[bytes, bytes], bool]]:
    key = ECC.generate(curve="Ed25519")

    def sign(message: bytes) -> bytes:
        return eddsa.new(key, "rfc8032").sign(message)

    def check(message: bytes, signature: bytes) -> bool:
        try:
            eddsa.new(key.public_key(), "rfc8032").verify(message, signature)
        except ValueError:
            return False
        return True

    return sign, check


SIGN, CHECK = ed25519()


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[Catalog]:
    with Catalog(tmp_path / "catalog.db") as cat:
        yield cat


def fill(catalog: Catalog, count: int, every: int = 5) -> AuditLog:
    log = AuditLog(catalog, sign=SIGN, checkpoint_every=every, checkpoint_seconds=3600, clock=Clock())
    for i in range(1, count + 1):
        log.append(f"user{i % 3}", "auditor", "view" if i % 2 else "search", f"rec-{i}", "ok",
                   detail={"i": i, "note": "ünïcode"})
    return log


def attacker(catalog: Catalog) -> apsw.Connection:
    """A connection of the attacker's own, with the append-only triggers dropped."""
    conn = apsw.Connection(catalog.path)
    for (name,) in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'trigger' AND tbl_name LIKE 'audit%'"
                                ).fetchall():
        conn.execute(f'DROP TRIGGER "{name}"')
    return conn


def report(catalog: Catalog, **kwargs: Any) -> Any:
    with catalog.reader() as reader:
        return verify_chain(reader, CHECK, **kwargs)


def row_values(conn: apsw.Connection, seq: int) -> dict[str, Any]:
    cols = (*HASHED_FIELDS, "hash")
    return dict(zip(cols, conn.execute(f"SELECT {', '.join(cols)} FROM audit WHERE seq = ?", (seq,)).fetchall()[0],
                    strict=True))


# -- writing ---------------------------------------------------------------------------------


def test_entries_form_a_hash_chain(catalog: Catalog) -> None:
    fill(catalog, 3)
    with catalog.reader() as reader:
        found = entries(reader)
    assert [e.seq for e in found] == [1, 2, 3]
    assert found[0].prev_hash == GENESIS
    for before, entry in zip(found, found[1:], strict=False):
        assert entry.prev_hash == before.hash
    for entry in found:
        fields = entry.to_dict()
        fields["detail"] = entry.detail
        assert entry_hash(fields) == entry.hash
    assert found[0].to_dict()["detail"] == {"i": 1, "note": "ünïcode"}
    assert found[0].detail == '{"i":1,"note":"ünïcode"}'  # canonical: sorted keys, no spaces


def test_checkpoints_every_n_entries_and_every_m_seconds(catalog: Catalog) -> None:
    clock = Clock()
    log = AuditLog(catalog, sign=SIGN, checkpoint_every=4, checkpoint_seconds=60, clock=clock)
    for _ in range(9):
        log.append("a", "admin", "x", "o", "ok")
    clock.now += 100  # quiet for longer than checkpoint_seconds
    log.append("a", "admin", "x", "o", "ok")
    rows = catalog.writer.call(lambda c: c.execute("SELECT seq, hash, signature FROM audit_checkpoints").fetchall())
    assert [r[0] for r in rows] == [4, 8, 10]
    with catalog.reader() as reader:
        hashes = {e.seq: e.hash for e in entries(reader)}
    for seq, chain_hash, signature in rows:
        assert chain_hash == hashes[seq]
        assert CHECK(checkpoint_message(seq, chain_hash), signature)
    assert checkpoint_message(4, "ab") == b"recorderd-audit-checkpoint|4|ab"
    assert log.checkpoint() is False  # the last entry is already signed
    log.append("a", "admin", "x", "o", "ok")
    assert log.checkpoint() is True
    assert report(catalog).checkpoints == 4


def test_triggers_refuse_update_and_delete(catalog: Catalog) -> None:
    fill(catalog, 5)
    conn = apsw.Connection(catalog.path)
    for statement in ("UPDATE audit SET actor = 'x' WHERE seq = 1", "DELETE FROM audit WHERE seq = 5",
                      "UPDATE audit_checkpoints SET hash = 'x'", "DELETE FROM audit_checkpoints"):
        with pytest.raises(apsw.ConstraintError, match="append-only"):
            conn.execute(statement)
    assert report(catalog).ok


def test_appends_from_many_threads_keep_one_chain(catalog: Catalog) -> None:
    log = AuditLog(catalog, sign=SIGN, checkpoint_every=10)

    def worker(n: int) -> None:
        for i in range(25):
            log.append(f"t{n}", "admin", "x", f"{n}-{i}", "ok")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result = report(catalog, checkpoint_every=10)
    assert (result.ok, result.entries, result.checkpoints) == (True, 150, 15)


def test_audit_log_on_a_plain_connection(tmp_path: Path) -> None:
    Catalog(tmp_path / "c.db").close()
    conn = apsw.Connection(str(tmp_path / "c.db"))
    log = AuditLog(conn, sign=SIGN, checkpoint_every=2)
    for i in range(3):
        log.append("tool", "admin", "import", f"o{i}", "ok")
    assert verify_chain(conn, CHECK).ok
    assert [e.object for e in entries(conn, action="import", since=T0)] == ["o0", "o1", "o2"]


def test_entry_excerpts_by_object_actor_action_and_time(catalog: Catalog) -> None:
    fill(catalog, 10)
    with catalog.reader() as reader:
        assert [e.seq for e in entries(reader, object="rec-4")] == [4]
        assert [e.seq for e in entries(reader, actor="user1", action="view")] == [1, 7]
        assert [e.seq for e in entries(reader, since=T0 + 3, until=T0 + 5)] == [3, 4]
        assert [e.seq for e in entries(reader, since="2024-05-01T10:00:09Z")] == [9, 10]


# -- tampering --------------------------------------------------------------------------------


def test_an_intact_log_verifies(catalog: Catalog) -> None:
    fill(catalog, 12)
    result = report(catalog, checkpoint_every=5)
    assert (result.ok, result.entries, result.first_bad_seq, result.problem, result.checkpoints) == (
        True, 12, None, "", 2)


def test_an_edited_field_is_named(catalog: Catalog) -> None:
    fill(catalog, 12)
    attacker(catalog).execute("UPDATE audit SET outcome = 'refused' WHERE seq = 7")
    result = report(catalog)
    assert (result.ok, result.first_bad_seq, result.entries) == (False, 7, 6)
    assert result.problem == "entry 7 was edited: its fields no longer match its hash"


def test_an_edited_detail_is_named(catalog: Catalog) -> None:
    fill(catalog, 4)
    attacker(catalog).execute("""UPDATE audit SET detail = '{"i":2, "note":"ünïcode"}' WHERE seq = 2""")
    assert report(catalog).first_bad_seq == 2


def test_a_deleted_entry_is_named(catalog: Catalog) -> None:
    fill(catalog, 12)
    attacker(catalog).execute("DELETE FROM audit WHERE seq = 8")
    result = report(catalog)
    assert (result.ok, result.first_bad_seq) == (False, 8)
    assert result.problem == "entry 8 missing: the log jumps from entry 7 to 9 (deleted)"


def test_a_deleted_and_renumbered_entry_is_named(catalog: Catalog) -> None:
    fill(catalog, 12)
    conn = attacker(catalog)
    conn.execute("DELETE FROM audit WHERE seq = 8; UPDATE audit SET seq = seq - 1 WHERE seq > 8")
    result = report(catalog)
    assert (result.ok, result.first_bad_seq) == (False, 8)
    assert "entry 8 does not follow entry 7: its predecessor is gone" in result.problem


def test_swapped_entries_are_named(catalog: Catalog) -> None:
    fill(catalog, 12)
    conn = attacker(catalog)
    conn.execute("UPDATE audit SET seq = -1 WHERE seq = 3; UPDATE audit SET seq = 3 WHERE seq = 6; "
                 "UPDATE audit SET seq = 6 WHERE seq = -1")
    result = report(catalog)
    assert (result.ok, result.first_bad_seq) == (False, 3)
    assert result.problem == ("entry 3 is out of order: it was written after entry 5, not after entry 2 "
                              "(entries were reordered)")


def test_neighbours_swapped(catalog: Catalog) -> None:
    fill(catalog, 6)
    conn = attacker(catalog)
    conn.execute("UPDATE audit SET seq = -1 WHERE seq = 4; UPDATE audit SET seq = 4 WHERE seq = 5; "
                 "UPDATE audit SET seq = 5 WHERE seq = -1")
    result = report(catalog)
    assert (result.first_bad_seq, result.problem) == (
        4, "entry 4 is out of order: it was written after entry 5, not after entry 3 (entries were reordered)")


def test_an_entry_rewritten_with_its_hash_recomputed_is_named(catalog: Catalog) -> None:
    fill(catalog, 12)
    conn = attacker(catalog)
    fields = row_values(conn, 9)
    fields["actor"] = "someone-else"
    conn.execute("UPDATE audit SET actor = ?, hash = ? WHERE seq = 9", (fields["actor"], entry_hash(fields)))
    result = report(catalog)
    assert (result.ok, result.first_bad_seq) == (False, 9)
    assert result.problem.startswith("entry 9 was rewritten (hash recomputed)")


def test_a_whole_rewritten_chain_is_caught_by_the_signed_checkpoint(catalog: Catalog) -> None:
    fill(catalog, 12)  # checkpoints at 5 and 10
    conn = attacker(catalog)
    prev = row_values(conn, 6)["prev_hash"]
    for seq in range(7, 13):  # edit 7, then recompute every hash after it: the chain itself is whole
        fields = row_values(conn, seq)
        if seq == 7:
            fields["outcome"] = "refused"
        fields["prev_hash"] = prev if seq > 7 else fields["prev_hash"]
        prev = entry_hash(fields)
        conn.execute("UPDATE audit SET outcome = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                     (fields["outcome"], fields["prev_hash"], prev, seq))
    assert verify_chain(conn, None).ok is False  # checkpoints are checked without signatures too
    result = report(catalog)
    assert (result.ok, result.first_bad_seq) == (False, 6)
    assert result.problem == ("checkpoint at entry 10 does not match the chain: entries 6-10 were "
                              "rewritten after they were signed")


def test_a_forged_checkpoint_is_named(catalog: Catalog) -> None:
    fill(catalog, 12)
    conn = attacker(catalog)
    forger, _ = ed25519()  # the attacker has a key, but not the appliance's
    fields = row_values(conn, 12)
    conn.execute("INSERT INTO audit_checkpoints (seq, hash, ts, signature) VALUES (?, ?, ?, ?)",
                 (12, fields["hash"], T0, forger(checkpoint_message(12, fields["hash"]))))
    result = report(catalog)
    assert (result.ok, result.first_bad_seq) == (False, 12)
    assert result.problem == "checkpoint at entry 12 has an invalid signature (forged or altered)"


def test_an_altered_checkpoint_signature_is_named(catalog: Catalog) -> None:
    fill(catalog, 12)
    attacker(catalog).execute("UPDATE audit_checkpoints SET signature = zeroblob(64) WHERE seq = 5")
    assert (report(catalog).first_bad_seq, report(catalog).problem) == (
        5, "checkpoint at entry 5 has an invalid signature (forged or altered)")


def test_a_deleted_checkpoint_is_named(catalog: Catalog) -> None:
    fill(catalog, 17)  # checkpoints at 5, 10, 15
    attacker(catalog).execute("DELETE FROM audit_checkpoints WHERE seq = 10")
    assert report(catalog).ok  # without the cadence the verifier cannot know
    result = report(catalog, checkpoint_every=5)
    assert (result.ok, result.first_bad_seq) == (False, 11)
    assert result.problem == "no checkpoint within 5 entries after entry 5 (a checkpoint was deleted)"


def test_a_cut_off_tail_under_a_checkpoint_is_named(catalog: Catalog) -> None:
    fill(catalog, 12)
    attacker(catalog).execute("DELETE FROM audit WHERE seq >= 9")
    result = report(catalog)
    assert (result.ok, result.first_bad_seq, result.entries) == (False, 9, 8)
    assert result.problem == "checkpoint at entry 10 signs entries that are gone: entries 9-10 were deleted"
