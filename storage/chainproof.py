"""The audit excerpt of an export bundle and the proof that it is part of the signed chain.

What the bundle carries (files under ``data/``):

* ``audit.jsonl``: the entries about the exported recordings (and about the export itself), one
  canonical JSON object per line with every hashed field (``detail`` is the JSON *text* exactly
  as hashed, see storage/audit.py) and the entry's ``hash``;
* ``chain-proof.json``: the signed checkpoints that cover those entries, the public key that
  signed them, and the *links*: the other entries between each exported entry and its
  checkpoint.

Why links: a checkpoint signs the hash of entry ``c``; that hash covers entry ``c``'s
``prev_hash``, which is the hash of entry ``c-1``, and so on. An entry ``s < c`` is therefore
bound to the signature only through every entry in between, and those are needed whole (an
entry's hash is over all its fields; there is no redacted form). So the proof discloses the
entries that sit between an exported entry and the next checkpoint: at most
``audit.checkpoint_every - 1`` per checkpoint (the builder signs a fresh checkpoint before it
reads, so the last stretch is short). Auditors may read the whole audit log on the console;
docs/architecture.md says so for the bundle.

Verification (:func:`verify_proof`) recomputes every entry's hash, checks every checkpoint's
Ed25519 signature over ``recorderd-audit-checkpoint|<seq>|<hash>``, and walks from each
exported entry to the first checkpoint at or after it: each next entry must be present and its
``prev_hash`` must be the hash before it, and the checkpoint must sign the hash reached.
"""

from __future__ import annotations

import base64
import bisect
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import apsw

from storage.audit import (
    CHECKPOINT_LABEL,
    HASHED_FIELDS,
    AuditEntry,
    canonical_json,
    checkpoint_message,
    entry_hash,
)
from storage.keys import verify_signature

PROOF_FORMAT = "recorderd-chain-proof"
PROOF_VERSION = 1
AUDIT_FILE = "data/audit.jsonl"
PROOF_FILE = "data/chain-proof.json"
ENTRY_FIELDS = (*HASHED_FIELDS, "hash")
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "seq": (int,), "ts": (int, float), "actor": (str,), "role": (str,), "action": (str,), "object": (str,),
    "outcome": (str,), "reason": (str,), "detail": (str,), "prev_hash": (str,), "hash": (str,)}


@dataclass(frozen=True, slots=True)
class Checkpoint:
    seq: int
    hash: str
    ts: float
    signature: bytes

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "hash": self.hash, "ts": self.ts,
                "signature": base64.b64encode(self.signature).decode()}


@dataclass(frozen=True, slots=True)
class AuditExcerpt:
    entries: list[AuditEntry]       # about the exported recordings / the export: audit.jsonl
    links: list[AuditEntry]         # the others needed to reach a checkpoint
    checkpoints: list[Checkpoint]

    def audit_lines(self) -> Iterable[bytes]:
        for entry in self.entries:
            yield entry_line(entry)

    def proof_json(self, public_key_pem: str) -> bytes:
        proof = {
            "format": PROOF_FORMAT,
            "version": PROOF_VERSION,
            "entry_hash": ("SHA-256 (hex) of the canonical JSON (keys sorted, no spaces, UTF-8) of the fields "
                           + ", ".join(HASHED_FIELDS) + "; detail is the JSON text as stored; the first entry's "
                           "prev_hash is 64 zeros"),
            "checkpoint_signature": (f"Ed25519 (RFC 8032) over the UTF-8 bytes "
                                     f"'{CHECKPOINT_LABEL}|<seq>|<hash>'"),
            "public_key_pem": public_key_pem,
            "checkpoints": [c.to_dict() for c in self.checkpoints],
            "links": [_entry_dict(e) for e in self.links],
        }
        return (json.dumps(proof, indent=1, ensure_ascii=False) + "\n").encode()


def _entry_dict(entry: AuditEntry) -> dict[str, Any]:
    return {name: getattr(entry, name) for name in ENTRY_FIELDS}


def entry_line(entry: AuditEntry) -> bytes:
    return (canonical_json(_entry_dict(entry)) + "\n").encode()


# ---------------------------------------------------------------------------------------------
# gathering (inside the caller's read transaction)


_SELECT = f"SELECT {', '.join(ENTRY_FIELDS)} FROM audit"  # nosec B608  # column names from the ENTRY_FIELDS constant


class NoCheckpoint(Exception):
    """The audit log has no signed checkpoint: nothing to prove the excerpt against."""


def gather(conn: apsw.Connection, objects: Iterable[str]) -> AuditExcerpt:
    """The entries about ``objects`` (an object itself, or ``<object>/...`` below it), up to the
    last signed checkpoint, with the links and checkpoints that prove them. Run it inside one
    read transaction (a snapshot) after signing a fresh checkpoint."""
    last: Any = conn.execute("SELECT max(seq) FROM audit_checkpoints").fetchall()[0][0]
    if last is None:
        raise NoCheckpoint("the audit log has no signed checkpoint yet")
    found: dict[int, AuditEntry] = {}
    for obj in dict.fromkeys(objects):
        for row in conn.execute(f"{_SELECT} WHERE (object = ? OR (object >= ? AND object < ?)) AND seq <= ?",
                                (obj, obj + "/", obj + "0", last)):
            entry = AuditEntry(*row)
            found[entry.seq] = entry
    signed = [int(seq) for (seq,) in conn.execute("SELECT seq FROM audit_checkpoints ORDER BY seq")]
    entries = [found[seq] for seq in sorted(found)]
    ranges = _link_ranges([e.seq for e in entries], signed)
    links: list[AuditEntry] = []
    for low, high in ranges:
        links += [AuditEntry(*row) for row in conn.execute(f"{_SELECT} WHERE seq BETWEEN ? AND ? ORDER BY seq",
                                                           (low, high)) if row[0] not in found]
    covering = sorted({signed[bisect.bisect_left(signed, e.seq)] for e in entries})
    checkpoints = [Checkpoint(int(seq), str(chain_hash), float(ts), bytes(sig)) for seq, chain_hash, ts, sig in
                   conn.execute("SELECT seq, hash, ts, signature FROM audit_checkpoints WHERE seq IN "
                                "(SELECT value FROM json_each(?)) ORDER BY seq", (json.dumps(covering),))]
    return AuditExcerpt(entries, links, checkpoints)


def _link_ranges(seqs: list[int], signed: list[int]) -> list[tuple[int, int]]:
    """Merged [low, high] seq ranges from each entry (exclusive) to its covering checkpoint."""
    ranges: list[tuple[int, int]] = []
    for seq in seqs:
        checkpoint = signed[bisect.bisect_left(signed, seq)]
        low, high = seq + 1, checkpoint
        if low > high:
            continue
        if ranges and low <= ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], max(ranges[-1][1], high))
        else:
            ranges.append((low, high))
    return ranges


# ---------------------------------------------------------------------------------------------
# verifying (pure: bytes in, problems out)


Problem = tuple[str, str]   # (file, what is wrong)


def _as_entry(value: Any) -> dict[str, Any] | str:
    """The entry's fields, or what is wrong with them."""
    if not isinstance(value, dict):
        return "not a JSON object"
    missing = [f for f in ENTRY_FIELDS if f not in value]
    if missing:
        return f"fields missing: {', '.join(missing)}"
    wrong = [f for f in ENTRY_FIELDS if not isinstance(value[f], _FIELD_TYPES[f]) or isinstance(value[f], bool)]
    if wrong:
        return f"fields of the wrong type: {', '.join(wrong)}"
    return value


def _check_entry(value: Any, where: str, subject: str, problems: list[Problem]) -> dict[str, Any] | None:
    entry = _as_entry(value)
    if isinstance(entry, str):
        problems.append((subject, f"{where}: {entry}"))
        return None
    if entry_hash(entry) != entry["hash"]:
        problems.append((subject, f"{where} (entry {entry['seq']}): its fields do not match its hash (altered)"))
        return None
    return entry


def parse_audit_lines(data: bytes, problems: list[Problem]) -> list[dict[str, Any]]:
    """The entries of audit.jsonl, each hash checked; problems name the line."""
    entries: list[dict[str, Any]] = []
    for number, line in enumerate(data.splitlines(), 1):
        try:
            value = json.loads(line)
        except ValueError:
            problems.append((AUDIT_FILE, f"line {number}: not JSON"))
            continue
        entry = _check_entry(value, f"line {number}", AUDIT_FILE, problems)
        if entry is not None:
            entries.append(entry)
    return entries


def _load_proof(data: bytes, problems: list[Problem]) -> dict[str, Any] | None:
    try:
        proof = json.loads(data)
    except ValueError:
        problems.append((PROOF_FILE, "not JSON"))
        return None
    if not isinstance(proof, dict) or proof.get("format") != PROOF_FORMAT or proof.get("version") != PROOF_VERSION:
        problems.append((PROOF_FILE, f"not a {PROOF_FORMAT} version {PROOF_VERSION} document"))
        return None
    if not isinstance(proof.get("checkpoints"), list) or not isinstance(proof.get("links"), list):
        problems.append((PROOF_FILE, "checkpoints or links missing"))
        return None
    return proof


def _signed_checkpoints(proof: dict[str, Any], public_key: bytes, problems: list[Problem]) -> dict[int, str]:
    """seq -> hash of every checkpoint whose signature verifies."""
    good: dict[int, str] = {}
    for index, item in enumerate(proof["checkpoints"]):
        try:
            seq, chain_hash = int(item["seq"]), str(item["hash"])
            signature = base64.b64decode(item["signature"], validate=True)
        except (KeyError, TypeError, ValueError):
            problems.append((PROOF_FILE, f"checkpoint {index + 1}: malformed"))
            continue
        if not verify_signature(public_key, checkpoint_message(seq, chain_hash), signature):
            problems.append((PROOF_FILE, f"checkpoint at entry {seq}: the signature does not verify "
                                         f"with the appliance's signing key (forged or altered)"))
            continue
        good[seq] = chain_hash
    return good


def verify_proof(audit_data: bytes, proof_data: bytes, public_key: bytes) -> tuple[int, list[Problem]]:
    """(entries proven, problems): every exported entry is bound to a signed checkpoint."""
    problems: list[Problem] = []
    exported = parse_audit_lines(audit_data, problems)
    proof = _load_proof(proof_data, problems)
    if proof is None:
        return 0, problems
    known: dict[int, dict[str, Any]] = {e["seq"]: e for e in exported}
    if len(known) != len(exported):
        problems.append((AUDIT_FILE, "an entry appears twice"))
    for index, value in enumerate(proof["links"]):
        link = _check_entry(value, f"link {index + 1}", PROOF_FILE, problems)
        if link is not None:
            known.setdefault(link["seq"], link)
    signed = _signed_checkpoints(proof, public_key, problems)
    order = sorted(signed)
    proven: set[int] = set()
    for entry in exported:
        problem = _walk_to_checkpoint(entry["seq"], known, signed, order, proven)
        if problem:
            problems.append((AUDIT_FILE, problem))
    return len(proven & {e["seq"] for e in exported}), problems


def _walk_to_checkpoint(seq: int, known: dict[int, dict[str, Any]], signed: dict[int, str], order: list[int],
                        proven: set[int]) -> str:
    """'' when entry ``seq`` links to a signed checkpoint, else what breaks the link."""
    at = bisect.bisect_left(order, seq)
    if at == len(order):
        return f"entry {seq}: no signed checkpoint in the proof covers it"
    checkpoint = order[at]
    walked = [seq]
    current = seq
    while current < checkpoint and current not in proven:
        following = known.get(current + 1)
        if following is None:
            return f"entry {seq}: entry {current + 1}, needed to reach checkpoint {checkpoint}, is missing"
        if following["prev_hash"] != known[current]["hash"]:
            return (f"entry {seq}: entry {current + 1} does not follow entry {current} "
                    f"(its prev_hash differs: the chain was altered)")
        current += 1
        walked.append(current)
    if current not in proven and known[current]["hash"] != signed[checkpoint]:
        return f"entry {seq}: the chain reaches checkpoint {checkpoint} with a hash it did not sign"
    proven.update(walked)
    return ""
