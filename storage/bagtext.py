"""The text files of a BagIt bag (RFC 8493), as export bundles write and read them.

* ``bagit.txt`` (§2.1.1): version 1.0, tag files in UTF-8.
* manifests (§2.1.3, §2.2.1): one ``<sha512 hex>  <path>`` line per file, sorted by path; two
  spaces as ``sha512sum`` writes them, so ``sha512sum -c manifest-sha512.txt`` works too. Paths
  are plain ASCII here (the bundle's names are restricted), so no percent-encoding is needed.
* ``bag-info.txt`` (§2.2.2): ``Label: value`` lines; a value with line breaks continues on
  lines that start with whitespace (folding, as bagit.py reads it).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

BAGIT = "bagit.txt"
BAG_INFO = "bag-info.txt"
MANIFEST = "manifest-sha512.txt"
TAGMANIFEST = "tagmanifest-sha512.txt"
SIGNATURE = "tagmanifest-sha512.txt.sig"
PUBLIC_KEY = "signing-key.pem"
PAYLOAD_DIR = "data/"
RECORDINGS_DIR = "data/recordings/"
METADATA_DIR = "data/metadata/"
BAGIT_TEXT = b"BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n"
SHA512_HEX = re.compile(r"[0-9a-f]{128}")
MANIFEST_LINE = re.compile(r"([0-9A-Fa-f]+)[ \t]+\*?(\S.*)")
LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")


def manifest_text(digests: dict[str, str]) -> bytes:
    """``<hex>  <path>`` lines, sorted by path."""
    return "".join(f"{digests[path]}  {path}\n" for path in sorted(digests)).encode()


def parse_manifest(data: bytes) -> tuple[dict[str, str], list[str]]:
    """(path -> lowercase hex digest, problems): each bad line and each path listed twice is named."""
    digests: dict[str, str] = {}
    problems: list[str] = []
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return {}, ["not UTF-8 text"]
    lines = text.split("\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            if line or number != len(lines):
                problems.append(f"line {number}: blank")
            continue
        match = MANIFEST_LINE.fullmatch(line)
        if match is None or not SHA512_HEX.fullmatch(match[1].lower()):
            problems.append(f"line {number}: not '<sha512 hex>  <path>'")
            continue
        path = match[2]
        if path in digests:
            problems.append(f"line {number}: {path} listed twice")
        digests[path] = match[1].lower()
    return digests, problems


def _fold(value: str) -> str:
    """One line, or several with the continuation lines indented (blank lines dropped)."""
    lines = [line.strip() for line in value.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    return "\n  ".join(line for line in lines if line) or "-"


def bag_info_text(fields: Iterable[tuple[str, str]]) -> bytes:
    out = []
    for label, value in fields:
        if not LABEL.fullmatch(label):
            raise ValueError(f"bag-info label {label!r} is not a plain word")
        out.append(f"{label}: {_fold(value)}\n")
    return "".join(out).encode()


def parse_bag_info(data: bytes) -> tuple[dict[str, str], list[str]]:
    """(label -> value with folded lines joined by spaces, problems)."""
    fields: dict[str, str] = {}
    problems: list[str] = []
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return {}, ["not UTF-8 text"]
    label: str | None = None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if line[0] in " \t" and label is not None:
            fields[label] += " " + line.strip()
            continue
        name, colon, value = line.partition(":")
        if not colon or not LABEL.fullmatch(name.strip()):
            problems.append(f"line {number}: not 'Label: value'")
            label = None
            continue
        label = name.strip()
        fields[label] = value.strip()
    return fields, problems


def human_size(octets: int) -> str:
    """Bag-Size (§2.2.2): a rough size for people, e.g. '1.4 MB'."""
    size = float(octets)
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")
