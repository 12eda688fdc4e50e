"""The audit excerpt of a bundle and its proof against the signed checkpoints (storage/chainproof.py):
a verifier binds each exported entry to a checkpoint through the links, and names what breaks."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import apsw
import pytest

from storage.audit import AuditLog, entry_hash
from storage.catalog import Catalog
from storage.chainproof import AUDIT_FILE, PROOF_FILE, AuditExcerpt, NoCheckpoint, gather, verify_proof
from storage.keys import KeyStore

EVERY = 5


@pytest.fixture
def keys(tmp_path: Path) -> KeyStore:
    return KeyStore.create(tmp_path / "keys")


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[Catalog]:
    with Catalog(tmp_path / "catalog.db") as cat:
        yield cat


def fill(catalog: Catalog, keys: KeyStore, count: int = 23) -> AuditLog:
    """Entries about rec-0 .. rec-4 in turn, a checkpoint every EVERY entries, one at the end."""
    audit = AuditLog(catalog, sign=keys.sign, checkpoint_every=EVERY)
    for i in range(count):
        audit.append("someone", "auditor", "recording.view", f"rec-{i % 5}", "ok", detail={"n": i})
    audit.checkpoint()
    return audit


def excerpt_of(catalog: Catalog, objects: list[str]) -> AuditExcerpt:
    with catalog.reader() as reader:
        reader.conn.execute("BEGIN")
        try:
            return gather(reader.conn, objects)
        finally:
            reader.conn.execute("COMMIT")


def check(excerpt: AuditExcerpt, keys: KeyStore, proof: bytes | None = None) -> tuple[int, list[tuple[str, str]]]:
    lines = b"".join(excerpt.audit_lines())
    return verify_proof(lines, proof if proof is not None else excerpt.proof_json(keys.public_key_pem()),
                        keys.signing_public_key())


def test_entries_are_bound_to_checkpoints_through_the_links(catalog: Catalog, keys: KeyStore) -> None:
    fill(catalog, keys)
    excerpt = excerpt_of(catalog, ["rec-1", "rec-3/note"])
    assert [e.object for e in excerpt.entries] == ["rec-1"] * 5      # objects below rec-3/note: none
    assert [e.seq for e in excerpt.entries] == [2, 7, 12, 17, 22]
    assert [c.seq for c in excerpt.checkpoints] == [5, 10, 15, 20, 23]
    # links: only the entries between each exported one and its checkpoint
    assert [e.seq for e in excerpt.links] == [3, 4, 5, 8, 9, 10, 13, 14, 15, 18, 19, 20, 23]
    proven, problems = check(excerpt, keys)
    assert problems == [] and proven == 5


def test_a_missing_or_altered_link_and_a_foreign_key_are_named(catalog: Catalog, keys: KeyStore,
                                                               tmp_path: Path) -> None:
    fill(catalog, keys)
    excerpt = excerpt_of(catalog, ["rec-1"])
    proof = json.loads(excerpt.proof_json(keys.public_key_pem()))
    dropped = dict(proof, links=[link for link in proof["links"] if link["seq"] != 9])
    _, problems = check(excerpt, keys, json.dumps(dropped).encode())
    assert (AUDIT_FILE, "entry 7: entry 9, needed to reach checkpoint 10, is missing") in problems
    altered = json.loads(json.dumps(proof))
    altered["links"][0]["reason"] = "edited"
    _, problems = check(excerpt, keys, json.dumps(altered).encode())
    assert (PROOF_FILE, "link 1 (entry 3): its fields do not match its hash (altered)") in problems
    other = KeyStore.create(tmp_path / "other-keys")
    _, problems = verify_proof(b"".join(excerpt.audit_lines()), excerpt.proof_json(keys.public_key_pem()),
                               other.signing_public_key())
    assert sum("signature does not verify" in what for _, what in problems) == 5


def test_an_altered_exported_entry_is_named_by_line(catalog: Catalog, keys: KeyStore) -> None:
    fill(catalog, keys)
    excerpt = excerpt_of(catalog, ["rec-2"])
    lines = b"".join(excerpt.audit_lines()).replace(b'"outcome":"ok"', b'"outcome":"no"', 1)
    _, problems = verify_proof(lines, excerpt.proof_json(keys.public_key_pem()), keys.signing_public_key())
    assert (AUDIT_FILE, "line 1 (entry 3): its fields do not match its hash (altered)") in problems


def test_a_rewritten_chain_does_not_reach_the_signed_checkpoint(catalog: Catalog, keys: KeyStore) -> None:
    """Someone with write access to the database edits entry 7 and recomputes every hash after
    it: the excerpt is self-consistent but no longer what checkpoint 10 signed."""
    fill(catalog, keys)
    conn = apsw.Connection(catalog.path)
    conn.execute("DROP TRIGGER audit_no_update")
    rows = conn.execute("SELECT seq, ts, actor, role, action, object, outcome, reason, detail, prev_hash "
                        "FROM audit WHERE seq >= 7 ORDER BY seq").fetchall()
    names = ("seq", "ts", "actor", "role", "action", "object", "outcome", "reason", "detail", "prev_hash")
    prev = None
    for row in rows:
        fields = dict(zip(names, row, strict=True))
        if fields["seq"] == 7:
            fields["outcome"] = "denied"
        if prev is not None:
            fields["prev_hash"] = prev
        prev = entry_hash(fields)
        conn.execute("UPDATE audit SET outcome = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                     (fields["outcome"], fields["prev_hash"], prev, fields["seq"]))
    conn.close()
    _, problems = check(excerpt_of(catalog, ["rec-1"]), keys)
    assert (AUDIT_FILE, "entry 7: the chain reaches checkpoint 10 with a hash it did not sign") in problems


def test_no_checkpoint_no_proof(catalog: Catalog) -> None:
    AuditLog(catalog).append("a", "admin", "x", "rec-0", "ok")
    with pytest.raises(NoCheckpoint):
        excerpt_of(catalog, ["rec-0"])
