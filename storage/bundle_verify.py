"""Verifying an export bundle on its own: no configuration, no catalog, no appliance.

Checks, each failure naming the file (storage/bundle.py has the layout):

1. the zip container is in the canonical form (storage/bundle_zip.py) and every member's data
   matches its CRC-32: any byte changed anywhere in the file is caught here or below;
2. the Ed25519 signature ``tagmanifest-sha512.txt.sig`` over ``tagmanifest-sha512.txt``, with
   the key given (``--pubkey``: the appliance's published key) or else the bundle's own
   ``signing-key.pem`` (which then only shows the bundle is intact, not who made it);
3. the tag manifest: it lists bagit.txt, bag-info.txt, manifest-sha512.txt and signing-key.pem
   with their SHA-512, and nothing outside data/ is left uncovered;
4. the manifest: every payload file is listed, every listed file exists, every SHA-512 matches;
5. bagit.txt, bag-info.txt (Payload-Oxum, Recording-Count, the export fields), the layout of
   data/ (a metadata file for each WAV, about that recording);
6. the audit excerpt against the signed checkpoints (storage/chainproof.py).

A directory (an unpacked bag) can be checked the same way, without step 1.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

from Crypto.PublicKey import ECC  # nosec B413  # pycryptodome (maintained, pinned in pyproject.toml), not the abandoned PyCrypto it shares the Crypto namespace with

from storage import bagtext
from storage.bundle_zip import Member, read_container
from storage.chainproof import AUDIT_FILE, PROOF_FILE, verify_proof
from storage.keys import verify_signature

CHUNK = 1 << 20
MAX_TEXT = 512 << 20           # tag files, audit.jsonl, chain-proof.json are read whole
SIGNATURE_BYTES = 64
REQUIRED = (bagtext.BAGIT, bagtext.BAG_INFO, bagtext.MANIFEST, bagtext.TAGMANIFEST, bagtext.SIGNATURE,
            bagtext.PUBLIC_KEY)
TAG_FILES = (bagtext.BAGIT, bagtext.BAG_INFO, bagtext.MANIFEST, bagtext.PUBLIC_KEY)
REQUIRED_INFO = ("Payload-Oxum", "Export-Requester", "Export-Approver", "Export-Reason", "Export-Created",
                 "Appliance-Id", "Recording-Count", "Signing-Key-SHA256")
PAYLOAD_LAYOUT = re.compile(r"data/(recordings/[^/]+\.wav|metadata/[^/]+\.json|audit\.jsonl|chain-proof\.json)")


@dataclass(frozen=True, slots=True)
class Problem:
    subject: str     # the file (or zip structure) at fault
    what: str

    def __str__(self) -> str:
        return f"{self.subject}: {self.what}"


@dataclass
class BundleReport:
    problems: list[Problem] = field(default_factory=list)
    recordings: int = 0
    audit_entries: int = 0
    key_source: str = ""
    key_fingerprint: str = ""
    info: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, subject: str, what: str) -> None:
        self.problems.append(Problem(subject, what))


class KeyFileError(ValueError):
    """The key given to check the signature with is not an Ed25519 public key."""


def load_public_key(pem: bytes) -> ECC.EccKey:
    try:
        key = ECC.import_key(pem)
    except (ValueError, IndexError, TypeError):
        raise KeyFileError("not a PEM public key") from None
    if key.curve != "Ed25519":
        raise KeyFileError(f"an {key.curve} key, not Ed25519")
    return key.public_key()


def _fingerprint(key: ECC.EccKey) -> str:
    return hashlib.sha256(key.export_key(format="DER")).hexdigest()


class _Members(Protocol):
    def names(self) -> list[str]: ...
    def size(self, name: str) -> int: ...
    def chunks(self, name: str) -> Iterator[bytes]: ...


class _ZipMembers:
    def __init__(self, f: BinaryIO, members: list[Member]) -> None:
        self._f = f
        self._by_name = {m.name: m for m in members}

    def names(self) -> list[str]:
        return list(self._by_name)

    def size(self, name: str) -> int:
        return self._by_name[name].size

    def member(self, name: str) -> Member:
        return self._by_name[name]

    def chunks(self, name: str) -> Iterator[bytes]:
        member = self._by_name[name]
        self._f.seek(member.data_offset)
        left = member.size
        while left:
            chunk = self._f.read(min(CHUNK, left))
            if not chunk:
                raise EOFError(f"data ends {left} bytes early (the file is truncated)")
            left -= len(chunk)
            yield chunk


class _DirMembers:
    def __init__(self, root: Path, report: BundleReport) -> None:
        self._root = root
        self._names: list[str] = []
        for path in sorted(root.rglob("*")):
            name = path.relative_to(root).as_posix()
            if path.is_symlink():
                report.add(name, "is a symbolic link (not part of a bag)")
            elif path.is_file():
                self._names.append(name)

    def names(self) -> list[str]:
        return list(self._names)

    def size(self, name: str) -> int:
        return (self._root / name).stat().st_size

    def chunks(self, name: str) -> Iterator[bytes]:
        with open(self._root / name, "rb") as f:
            while chunk := f.read(CHUNK):
                yield chunk


def _read(members: _Members, name: str, report: BundleReport) -> bytes | None:
    if name not in members.names():
        return None
    if members.size(name) > MAX_TEXT:
        report.add(name, f"larger than {MAX_TEXT} bytes, too large to check")
        return None
    try:
        return b"".join(members.chunks(name))
    except (EOFError, OSError):
        return None   # already reported by the hashing pass


def _digests(members: _Members, report: BundleReport) -> dict[str, str]:
    """SHA-512 of every member (and, in a zip, its CRC-32 against the directory)."""
    digests: dict[str, str] = {}
    for name in members.names():
        sha, crc = hashlib.sha512(), 0
        try:
            for chunk in members.chunks(name):
                sha.update(chunk)
                crc = zlib.crc32(chunk, crc)
        except (EOFError, OSError) as err:
            report.add(name, f"unreadable: {err}")
            continue
        if isinstance(members, _ZipMembers) and crc != members.member(name).crc32:
            report.add(name, "CRC-32 differs from the zip directory (the zip file was damaged)")
        digests[name] = sha.hexdigest()
    return digests


def _signing_key(members: _Members, given: bytes | None, report: BundleReport) -> ECC.EccKey | None:
    embedded_pem = _read(members, bagtext.PUBLIC_KEY, report)
    embedded: ECC.EccKey | None = None
    if embedded_pem is not None:
        try:
            embedded = load_public_key(embedded_pem)
        except KeyFileError as err:
            report.add(bagtext.PUBLIC_KEY, str(err))
    if given is None:
        report.key_source = f"the bundle's own {bagtext.PUBLIC_KEY} (compare its fingerprint with the appliance's)"
        key = embedded
    else:
        key = load_public_key(given)
        report.key_source = "the key given with --pubkey"
        if embedded is not None and _fingerprint(embedded) != _fingerprint(key):
            report.add(bagtext.PUBLIC_KEY, "is not the key given with --pubkey: the bundle was signed by another key")
    if key is not None:
        report.key_fingerprint = _fingerprint(key)
    return key


def _check_signature(members: _Members, key: ECC.EccKey | None, report: BundleReport) -> None:
    tag_manifest = _read(members, bagtext.TAGMANIFEST, report)
    signature = _read(members, bagtext.SIGNATURE, report)
    if tag_manifest is None or signature is None or key is None:
        return
    if len(signature) != SIGNATURE_BYTES:
        report.add(bagtext.SIGNATURE, f"is {len(signature)} bytes, an Ed25519 signature is {SIGNATURE_BYTES}")
        return
    raw = key.export_key(format="raw")
    if not verify_signature(raw, tag_manifest, signature):
        report.add(bagtext.TAGMANIFEST, f"the signature {bagtext.SIGNATURE} does not verify with {report.key_source}: "
                                        f"the tag manifest or its signature was altered, or another key signed it")


def _check_listing(listing_name: str, listed: dict[str, str], present: dict[str, str], report: BundleReport) -> None:
    for path, digest in listed.items():
        if path not in present:
            report.add(path, f"listed in {listing_name} but missing from the bundle (deleted or renamed)")
        elif present[path] != digest:
            report.add(path, f"SHA-512 differs from {listing_name} (the file was altered or swapped)")


def _check_manifests(members: _Members, digests: dict[str, str], report: BundleReport) -> None:
    payload = {n: d for n, d in digests.items() if n.startswith(bagtext.PAYLOAD_DIR)}
    tags_present = {n: d for n, d in digests.items() if n not in payload}
    tag_data = _read(members, bagtext.TAGMANIFEST, report)
    if tag_data is not None:
        tag_listed, problems = bagtext.parse_manifest(tag_data)
        for problem in problems:
            report.add(bagtext.TAGMANIFEST, problem)
        for path in tag_listed:
            if path.startswith(bagtext.PAYLOAD_DIR):
                report.add(bagtext.TAGMANIFEST, f"lists the payload file {path}")
        _check_listing(bagtext.TAGMANIFEST, {p: d for p, d in tag_listed.items()
                                             if not p.startswith(bagtext.PAYLOAD_DIR)}, tags_present, report)
        for name in tags_present:
            if name not in tag_listed and name not in (bagtext.TAGMANIFEST, bagtext.SIGNATURE):
                report.add(name, f"not covered by {bagtext.TAGMANIFEST} (a file was added or renamed)")
        for name in TAG_FILES:
            if name in tags_present and name not in tag_listed:
                report.add(bagtext.TAGMANIFEST, f"does not list {name}")
    manifest_data = _read(members, bagtext.MANIFEST, report)
    if manifest_data is not None:
        listed, problems = bagtext.parse_manifest(manifest_data)
        for problem in problems:
            report.add(bagtext.MANIFEST, problem)
        for path in listed:
            if not path.startswith(bagtext.PAYLOAD_DIR):
                report.add(bagtext.MANIFEST, f"lists {path}, which is not under data/")
        _check_listing(bagtext.MANIFEST, listed, payload, report)
        for name in payload:
            if name not in listed:
                report.add(name, f"not listed in {bagtext.MANIFEST} (a file was added or renamed)")


def _check_bag_info(members: _Members, report: BundleReport) -> None:
    bagit = _read(members, bagtext.BAGIT, report)
    if bagit is not None and bagit != bagtext.BAGIT_TEXT:
        report.add(bagtext.BAGIT, "is not 'BagIt-Version: 1.0' with UTF-8 tag files")
    data = _read(members, bagtext.BAG_INFO, report)
    if data is None:
        return
    info, problems = bagtext.parse_bag_info(data)
    report.info = info
    for problem in problems:
        report.add(bagtext.BAG_INFO, problem)
    for label in REQUIRED_INFO:
        if label not in info:
            report.add(bagtext.BAG_INFO, f"{label} is missing")
    payload = [n for n in members.names() if n.startswith(bagtext.PAYLOAD_DIR)]
    oxum = f"{sum(members.size(n) for n in payload)}.{len(payload)}"
    if "Payload-Oxum" in info and info["Payload-Oxum"] != oxum:
        report.add(bagtext.BAG_INFO, f"Payload-Oxum {info['Payload-Oxum']} but the payload is {oxum} "
                                     f"(octets.files: files were added, deleted or changed size)")
    wavs = [n for n in payload if n.startswith(bagtext.RECORDINGS_DIR)]
    if "Recording-Count" in info and info["Recording-Count"] != str(len(wavs)):
        report.add(bagtext.BAG_INFO, f"Recording-Count {info['Recording-Count']} but the bundle holds "
                                     f"{len(wavs)} recordings")
    if report.key_fingerprint and info.get("Signing-Key-SHA256", report.key_fingerprint) != report.key_fingerprint:
        report.add(bagtext.BAG_INFO, "Signing-Key-SHA256 is not the fingerprint of the signing key")


def _check_layout(members: _Members, report: BundleReport) -> None:
    names = set(members.names())
    for name in sorted(names):
        if name.startswith(bagtext.PAYLOAD_DIR) and not PAYLOAD_LAYOUT.fullmatch(name):
            report.add(name, "is not part of the bundle layout (data/recordings/*.wav, data/metadata/*.json, "
                             "data/audit.jsonl, data/chain-proof.json)")
    for required in (*REQUIRED, AUDIT_FILE, PROOF_FILE):
        if required not in names:
            report.add(required, "missing from the bundle")
    wavs = {n[len(bagtext.RECORDINGS_DIR):-4] for n in names
            if n.startswith(bagtext.RECORDINGS_DIR) and n.endswith(".wav")}
    metas = {n[len(bagtext.METADATA_DIR):-5] for n in names
             if n.startswith(bagtext.METADATA_DIR) and n.endswith(".json")}
    report.recordings = len(wavs)
    for rid in sorted(wavs - metas):
        report.add(f"{bagtext.RECORDINGS_DIR}{rid}.wav", f"has no metadata file {bagtext.METADATA_DIR}{rid}.json")
    for rid in sorted(metas - wavs):
        report.add(f"{bagtext.METADATA_DIR}{rid}.json", f"has no recording {bagtext.RECORDINGS_DIR}{rid}.wav")
    for rid in sorted(wavs & metas):
        _check_recording_pair(members, rid, report)


def _check_recording_pair(members: _Members, rid: str, report: BundleReport) -> None:
    wav, meta = f"{bagtext.RECORDINGS_DIR}{rid}.wav", f"{bagtext.METADATA_DIR}{rid}.json"
    head = b""
    try:
        for chunk in members.chunks(wav):
            head = chunk[:12]
            break
    except (EOFError, OSError):
        return
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        report.add(wav, "is not a WAV file")
    data = _read(members, meta, report)
    if data is None:
        return
    try:
        about = json.loads(data).get("recording_id")
    except (ValueError, AttributeError):
        report.add(meta, "is not a JSON object")
        return
    if about != rid:
        report.add(meta, f"is about recording {about!r}, not {rid}")


def _check_audit(members: _Members, key: ECC.EccKey | None, report: BundleReport) -> None:
    audit_data = _read(members, AUDIT_FILE, report)
    proof_data = _read(members, PROOF_FILE, report)
    if audit_data is None or proof_data is None or key is None:
        return
    proven, problems = verify_proof(audit_data, proof_data, key.export_key(format="raw"))
    report.audit_entries = proven
    for subject, what in problems:
        report.add(subject, what)
    try:
        proof_key = load_public_key(json.loads(proof_data)["public_key_pem"].encode())
    except (ValueError, KeyError, TypeError, AttributeError):
        report.add(PROOF_FILE, "public_key_pem is missing or not an Ed25519 key")
        return
    if _fingerprint(proof_key) != _fingerprint(key):
        report.add(PROOF_FILE, "public_key_pem is not the bundle's signing key")


def _verify_members(members: _Members, public_key_pem: bytes | None, report: BundleReport) -> BundleReport:
    digests = _digests(members, report)
    key = _signing_key(members, public_key_pem, report)
    _check_signature(members, key, report)
    _check_manifests(members, digests, report)
    _check_layout(members, report)
    _check_bag_info(members, report)
    _check_audit(members, key, report)
    return report


def verify_bundle_file(f: BinaryIO, public_key_pem: bytes | None = None) -> BundleReport:
    """Verify a bundle from an open binary file (seekable). KeyFileError: bad ``public_key_pem``."""
    if public_key_pem is not None:
        load_public_key(public_key_pem)
    report = BundleReport()
    members, problems = read_container(f)
    for problem in problems:
        report.add(problem.subject, problem.what)
    return _verify_members(_ZipMembers(f, members), public_key_pem, report)


def verify_bundle(path: str | os.PathLike[str], public_key_pem: bytes | None = None) -> BundleReport:
    """Verify a bundle zip, or an unpacked bag when ``path`` is a directory."""
    target = Path(path)
    if target.is_dir():
        if public_key_pem is not None:
            load_public_key(public_key_pem)
        report = BundleReport()
        return _verify_members(_DirMembers(target, report), public_key_pem, report)
    with open(target, "rb") as f:
        return verify_bundle_file(f, public_key_pem)
