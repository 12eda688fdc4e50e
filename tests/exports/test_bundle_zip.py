"""The canonical container (storage/bundle_zip.py): ordinary ZIP readers extract it, ZIP64 is
used exactly when a value does not fit, and every single byte of the file is checked."""

from __future__ import annotations

import io
import subprocess
import zipfile
import zlib
from pathlib import Path

import pytest

from storage import bundle_zip
from tests.exports.bundles import rezip

CONTENTS = {"bagit.txt": b"BagIt-Version: 1.0\n", "data/recordings/a.wav": bytes(range(256)) * 4,
            "data/metadata/a.json": b"{}"}


def every_flip_is_caught(data: bytes) -> list[int]:
    """Offsets whose change nothing notices (container check + CRC-32 of the data)."""
    missed = []
    for at in range(len(data)):
        changed = bytearray(data)
        changed[at] ^= 0x5A
        members, problems = bundle_zip.read_container(io.BytesIO(bytes(changed)))
        crc_ok = all(zlib.crc32(bytes(changed[m.data_offset:m.end])) == m.crc32 for m in members)
        if not problems and crc_ok and len(members) == len(CONTENTS):
            missed.append(at)
    return missed


@pytest.mark.parametrize("zip64", [False, True])
def test_readers_extract_it_and_every_byte_is_checked(zip64: bool, monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    if zip64:   # small limits, so that the ZIP64 fields and end records are written and read
        monkeypatch.setattr(bundle_zip, "ZIP64_LIMIT", 100)
        monkeypatch.setattr(bundle_zip, "COUNT_LIMIT", 2)
    data = rezip(CONTENTS)
    assert (b"PK\x06\x06" in data) == zip64
    path = tmp_path / "b.zip"
    path.write_bytes(data)
    tested = subprocess.run(["unzip", "-t", str(path)], capture_output=True, text=True)
    assert tested.returncode == 0 and "No errors detected" in tested.stdout, tested.stdout + tested.stderr
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None
        assert {n: archive.read(n) for n in archive.namelist()} == CONTENTS
    members, problems = bundle_zip.read_container(io.BytesIO(data))
    assert problems == [] and [m.name for m in members] == list(CONTENTS)
    assert every_flip_is_caught(data) == []


def test_names_outside_the_canonical_form_are_refused() -> None:
    for name in ("../x", "/abs", "data//x", "dätä", "a\\b", ".hidden"):
        with pytest.raises(bundle_zip.ContainerError):
            rezip({name: b"x"})
