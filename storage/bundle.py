"""Building an export bundle: a signed BagIt bag (RFC 8493) in a canonical zip.

Layout (the bag is the zip's root; members in this order)::

    bagit.txt
    data/recordings/<id>.wav        decrypted from the vault, streamed (never whole in memory)
    data/metadata/<id>.json         the recording contract's fields + catalog state, tags, notes,
                                    QA scores and consent records (when those tables exist)
    data/audit.jsonl                every audit entry about these recordings and this export
    data/chain-proof.json           the signed checkpoints covering them (storage/chainproof.py)
    manifest-sha512.txt             payload checksums
    bag-info.txt                    requester, approver, reason, time, appliance id, count, ...
    signing-key.pem                 the appliance's Ed25519 public key (SubjectPublicKeyInfo PEM)
    tagmanifest-sha512.txt          checksums of the four tag files above
    tagmanifest-sha512.txt.sig      raw 64-byte Ed25519 signature (RFC 8032) of the tag manifest

The signature covers the tag manifest, which covers the manifest and bag-info, which cover
everything else: ``openssl pkeyutl -verify -rawin`` with the appliance's published key checks
the whole bag once ``bagit.py --validate`` has checked the checksums (docs/verify-bundle.md).
The embedded key is a convenience: it proves nothing unless it matches the key the auditor
obtained from the appliance's operator (``recorderd keys public``).

Reading a recording for a bundle is itself audited (``export.read``, one entry per recording)
*before* the audit excerpt is taken, and a fresh checkpoint is signed, so the bundle's own
audit excerpt shows that it was made, by whom and why.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import apsw
from Crypto.PublicKey import ECC  # nosec B413  # pycryptodome (maintained, pinned in pyproject.toml), not the abandoned PyCrypto it shares the Crypto namespace with

from capture.fsutil import fsync_dir
from capture.recording import iso_utc
from storage import bagtext
from storage.audit import AuditLog
from storage.bundle_zip import BundleZipWriter
from storage.catalog import Catalog, CatalogReader
from storage.chainproof import AUDIT_FILE, PROOF_FILE, AuditExcerpt, NoCheckpoint, gather, verify_proof
from storage.keys import KeyDirError, KeyStore, UnwrapError
from storage.recordingsink import resolve_path
from storage.vault import VaultError, VaultReader

WAV_CHUNK = 1 << 20
READ_ACTION = "export.read"


class BundleError(Exception):
    """The bundle cannot be built; the message names the recording or the part at fault."""


@dataclass(frozen=True, slots=True)
class BundleRequest:
    bundle_id: str                  # External-Identifier, e.g. "export-7" or "cli-20260101T120000Z-1a2b"
    export_object: str              # the export's audit object ("export:7"); its entries go into the bag
    requester: str
    requester_role: str
    approver: str | None            # None: a command-line export by the appliance administrator
    reason: str
    query: str | None
    recording_ids: tuple[str, ...]
    appliance_id: str


@dataclass(frozen=True, slots=True)
class BuildProgress:
    audio_bytes_done: int
    audio_bytes_total: int
    recordings_done: int
    recordings_total: int


@dataclass(frozen=True, slots=True)
class BuiltBundle:
    path: Path
    size: int
    sha256: str
    recordings: int
    payload_bytes: int
    audit_entries: int
    checkpoints: int
    created_at: float


@dataclass(frozen=True, slots=True)
class _Source:
    recording_id: str
    path: Path
    data_key: bytes
    wav_size: int
    metadata: bytes


def public_key_fingerprint(pem: str) -> str:
    """SHA-256 (hex) of the key's DER SubjectPublicKeyInfo:
    ``openssl pkey -pubin -in signing-key.pem -outform DER | sha256sum``."""
    der = ECC.import_key(pem).export_key(format="DER")
    return hashlib.sha256(der).hexdigest()


# ---------------------------------------------------------------------------------------------
# what goes in: the recordings, their metadata


def _decode_json_columns(row: dict[str, Any]) -> dict[str, Any]:
    """Columns holding JSON documents (a rubric, points) become JSON; *_at and ts become ISO."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, str) and value[:1] in ("{", "["):
            with contextlib.suppress(ValueError):
                value = json.loads(value)
        if (key.endswith("_at") or key == "ts") and isinstance(value, int | float) and not isinstance(value, bool):
            value = iso_utc(float(value))
        out[key] = value
    return out


def optional_rows(conn: apsw.Connection, table: str, recording_id: str) -> list[dict[str, Any]] | None:
    """Rows of ``table`` about one recording, or None when there is no such table (tables of
    other areas, e.g. QA or consent, are read defensively: they may not exist yet)."""
    columns = [str(row[1]) for row in conn.execute(f'PRAGMA table_info("{table}")')]
    if "recording_id" not in columns:
        return None
    order = " ORDER BY id" if "id" in columns else ""
    quoted = ", ".join(f'"{c}"' for c in columns)
    return [_decode_json_columns(dict(zip(columns, row, strict=True))) for row in
            conn.execute(f'SELECT {quoted} FROM "{table}" WHERE recording_id = ?{order}', (recording_id,))]  # nosec B608  # table names are literals or from the catalog's own sqlite_master, columns from PRAGMA table_info; every value is a ? parameter


def _consent_tables(conn: apsw.Connection) -> list[str]:
    return [str(name) for (name,) in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'consent%' ORDER BY name")]


def recording_metadata(reader: CatalogReader, recording_id: str) -> dict[str, Any]:
    """data/metadata/<id>.json: the recording's JSON (the contract's fields) as recorded, plus
    what the catalog knows about it now."""
    detail = reader.get(recording_id)
    if detail is None:
        raise BundleError(f"recording {recording_id}: not in the catalog")
    row = detail.recording
    out: dict[str, Any] = dict(detail.metadata)
    out["recording_id"] = recording_id
    out["catalog"] = {"state": row.state, "partial_note": row.partial_note, "agent_id": row.agent_id,
                      "direction": row.direction, "vault_sha256": row.vault_sha256,
                      "created_at": iso_utc(row.created_at), "updated_at": iso_utc(row.updated_at)}
    out["tags"] = list(row.tags)
    out["notes"] = [note.to_dict() for note in detail.notes]
    scores = optional_rows(reader.conn, "qa_scores", recording_id)
    if scores is not None:
        out["qa_scores"] = scores
    consent = {table: rows for table in _consent_tables(reader.conn)
               if (rows := optional_rows(reader.conn, table, recording_id)) is not None}
    if consent:
        out["consent_records"] = consent
    return out


def _plan(reader: CatalogReader, keys: KeyStore, vault_dir: Path, recording_ids: tuple[str, ...]) -> list[_Source]:
    if not recording_ids:
        raise BundleError("no recordings to export")
    if len(set(recording_ids)) != len(recording_ids):
        raise BundleError("a recording is listed twice")
    sources = []
    for recording_id in recording_ids:
        detail = reader.get(recording_id)
        if detail is None:
            raise BundleError(f"recording {recording_id}: not in the catalog")
        row = detail.recording
        if row.state == "purged" or not row.has_key:
            raise BundleError(f"recording {recording_id}: purged (its key is destroyed), no audio to export")
        if row.state == "active" or not row.vault_path:
            raise BundleError(f"recording {recording_id}: still being recorded, no finished audio")
        wrapped = reader.get_key(recording_id)
        if wrapped is None:
            raise BundleError(f"recording {recording_id}: its data key is gone")
        path = resolve_path(vault_dir, row.vault_path)
        try:
            key = keys.unwrap(wrapped.kek_id, wrapped.wrapped_key, recording_id)
            with VaultReader(path, key, recording_id) as vault:
                wav_size = vault.wav_size()
        except (KeyDirError, UnwrapError, VaultError, OSError) as err:
            raise BundleError(f"recording {recording_id}: {err}") from err
        metadata = json.dumps(recording_metadata(reader, recording_id), indent=1, ensure_ascii=False,
                              sort_keys=True).encode() + b"\n"
        sources.append(_Source(recording_id, path, key, wav_size, metadata))
    return sources


# ---------------------------------------------------------------------------------------------
# writing


class _Hashed:
    """Digests of what went into the bag, by path."""

    def __init__(self) -> None:
        self.sha512: dict[str, str] = {}
        self.payload_bytes = 0

    def chunks(self, path: str, source: Iterator[bytes], on_chunk: Callable[[int], None] | None = None
               ) -> Iterator[bytes]:
        digest = hashlib.sha512()
        for chunk in source:
            digest.update(chunk)
            if on_chunk is not None:
                on_chunk(len(chunk))
            yield chunk
        self.sha512[path] = digest.hexdigest()

    def add(self, writer: BundleZipWriter, path: str, data: bytes) -> None:
        writer.add(path, self.chunks(path, iter([data])), len(data))


def _wav_chunks(source: _Source) -> Iterator[bytes]:
    try:
        with VaultReader(source.path, source.data_key, source.recording_id) as vault:
            size = vault.wav_size()
            if size != source.wav_size:
                raise BundleError(f"recording {source.recording_id}: the vault file changed while exporting")
            for offset in range(0, size, WAV_CHUNK):
                yield vault.read_wav(offset, min(WAV_CHUNK, size - offset))
    except (VaultError, OSError) as err:
        raise BundleError(f"recording {source.recording_id}: {err}") from err


def _bag_info(request: BundleRequest, created: float, payload_bytes: int, payload_files: int,
              fingerprint: str) -> bytes:
    approver = request.approver or "none: a command-line export by the appliance administrator"
    fields = [
        ("Bagging-Date", datetime.fromtimestamp(created, UTC).strftime("%Y-%m-%d")),
        ("External-Identifier", request.bundle_id),
        ("External-Description", "recorderd export bundle: call recordings (data/recordings), their metadata "
                                 "(data/metadata), the audit entries about them (data/audit.jsonl) and the signed "
                                 "audit checkpoints covering those (data/chain-proof.json). tagmanifest-sha512.txt "
                                 "is signed with Ed25519: tagmanifest-sha512.txt.sig."),
        ("Bag-Size", bagtext.human_size(payload_bytes)),
        ("Payload-Oxum", f"{payload_bytes}.{payload_files}"),
        ("Export-Requester", f"{request.requester} ({request.requester_role})"),
        ("Export-Approver", approver),
        ("Export-Reason", request.reason),
    ]
    if request.query:
        fields.append(("Export-Query", request.query))
    fields += [
        ("Export-Created", iso_utc(created) or ""),
        ("Appliance-Id", request.appliance_id),
        ("Recording-Count", str(len(request.recording_ids))),
        ("Signing-Key-SHA256", fingerprint),
    ]
    return bagtext.bag_info_text(fields)


def _excerpt(reader: CatalogReader, audit: AuditLog, keys: KeyStore, request: BundleRequest) -> AuditExcerpt:
    audit.checkpoint()   # sign up to now, so every entry read below is covered
    conn = reader.conn
    conn.execute("BEGIN")
    try:
        excerpt = gather(conn, [*request.recording_ids, request.export_object])
    except NoCheckpoint as err:
        raise BundleError(f"audit log: {err}") from err
    finally:
        conn.execute("COMMIT")
    lines = b"".join(excerpt.audit_lines())
    _, problems = verify_proof(lines, excerpt.proof_json(keys.public_key_pem()), keys.signing_public_key())
    if problems:   # the catalog's audit chain does not hold: refuse to certify it
        raise BundleError("the audit log does not verify, refusing to export an excerpt of it: "
                          + "; ".join(f"{subject}: {what}" for subject, what in problems[:3]))
    return excerpt


def _write(out: BinaryIO, request: BundleRequest, sources: list[_Source], excerpt: AuditExcerpt, keys: KeyStore,
           created: float, progress: Callable[[BuildProgress], None] | None) -> tuple[int, int]:
    """The whole bag into ``out``; returns (payload bytes, zip size)."""
    writer = BundleZipWriter(out, datetime.fromtimestamp(created, UTC))
    hashed = _Hashed()
    writer.add_bytes(bagtext.BAGIT, bagtext.BAGIT_TEXT)
    total = sum(s.wav_size for s in sources)
    done = [0, 0]

    def report(count: int) -> None:
        done[0] += count
        if progress is not None:
            progress(BuildProgress(done[0], total, done[1], len(sources)))

    for source in sources:
        wav = f"{bagtext.RECORDINGS_DIR}{source.recording_id}.wav"
        writer.add(wav, hashed.chunks(wav, _wav_chunks(source), report), source.wav_size)
        hashed.add(writer, f"{bagtext.METADATA_DIR}{source.recording_id}.json", source.metadata)
        done[1] += 1
        report(0)
    hashed.add(writer, AUDIT_FILE, b"".join(excerpt.audit_lines()))
    pem = keys.public_key_pem()
    hashed.add(writer, PROOF_FILE, excerpt.proof_json(pem))
    payload_bytes = sum(m.size for m in writer.members if m.name.startswith(bagtext.PAYLOAD_DIR))
    payload_files = sum(1 for m in writer.members if m.name.startswith(bagtext.PAYLOAD_DIR))
    tags = _Hashed()
    tags.add(writer, bagtext.MANIFEST, bagtext.manifest_text(hashed.sha512))
    tags.add(writer, bagtext.BAG_INFO, _bag_info(request, created, payload_bytes, payload_files,
                                                  public_key_fingerprint(pem)))
    tags.add(writer, bagtext.PUBLIC_KEY, pem.encode())
    tags.sha512[bagtext.BAGIT] = hashlib.sha512(bagtext.BAGIT_TEXT).hexdigest()
    tag_manifest = bagtext.manifest_text(tags.sha512)
    writer.add_bytes(bagtext.TAGMANIFEST, tag_manifest)
    writer.add_bytes(bagtext.SIGNATURE, keys.sign(tag_manifest))
    return payload_bytes, writer.close()


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(WAV_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def build_bundle(request: BundleRequest, *, catalog: Catalog, keys: KeyStore, audit: AuditLog, vault_dir: Path,
                 out_path: Path, actor: str, role: str, progress: Callable[[BuildProgress], None] | None = None,
                 clock: Callable[[], float] = time.time) -> BuiltBundle:
    """Build the bundle at ``out_path`` (crash-safe: a hidden .part file, fsync, rename).

    Each recording read is audited as ``actor`` (``export.read``) before the audit excerpt is
    taken. BundleError names what stopped the build; nothing is left at ``out_path`` then.
    """
    created = clock()
    reader = catalog.reader()
    try:
        sources = _plan(reader, keys, vault_dir, request.recording_ids)
        for source in sources:
            audit.append(actor, role, READ_ACTION, source.recording_id, "ok", reason=request.reason,
                         detail={"export": request.export_object})
        excerpt = _excerpt(reader, audit, keys, request)
    finally:
        reader.close()
    part = out_path.with_name(f".{out_path.name}.part")
    fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "w+b") as out:
            payload_bytes, size = _write(out, request, sources, excerpt, keys, created, progress)
            out.flush()
            os.fsync(out.fileno())
        os.replace(part, out_path)
        fsync_dir(out_path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
        raise
    return BuiltBundle(out_path, size, _sha256_of(out_path), len(sources), payload_bytes, len(excerpt.entries),
                       len(excerpt.checkpoints), created)
