"""Issue 6, must show 2: every change to a bundle is rejected, and the report names the file.

One small bundle is built for real, then mutated in memory: 1,000 random single-byte changes
(600 in the members' contents, re-zipped in the canonical form so that only the content
differs; 400 in the raw zip bytes, half of them in the headers and directory), plus deleting,
adding, renaming a file and swapping two WAVs.
"""

from __future__ import annotations

import io
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from recorderd.appliance import Appliance, open_appliance
from recorderd.config import load
from storage import bagtext
from storage.bundle import BundleRequest, build_bundle
from storage.bundle_verify import BundleReport, verify_bundle_file
from storage.bundle_zip import DIRECTORY, END_RECORD, Member, read_container
from tests.exports.bundles import rezip
from tests.exports.conftest import recording_ids

CONTENT_FLIPS = 600
RAW_FLIPS = 400


@dataclass(frozen=True)
class Bundle:
    data: bytes
    members: list[Member]
    contents: dict[str, bytes]     # in zip order


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory, export_box: Path) -> Bundle:
    app: Appliance = open_appliance(load(export_box), recover=False, warnings=None)
    try:
        ids = tuple(recording_ids(app))
        out = tmp_path_factory.mktemp("mutation") / "bundle.zip"
        build_bundle(BundleRequest("test-1", "export:test-1", "alice", "auditor", "bob", "mutation test", None,
                                   ids, "test-box"),
                     catalog=app.catalog, keys=app.keys, audit=app.audit, vault_dir=app.vault_dir, out_path=out,
                     actor="tester", role="admin")
    finally:
        app.close()
    data = out.read_bytes()
    members, problems = read_container(io.BytesIO(data))
    assert problems == []
    contents = {m.name: data[m.data_offset:m.end] for m in members}
    return Bundle(data, members, contents)


def check(data: bytes) -> BundleReport:
    return verify_bundle_file(io.BytesIO(data))


def named(report: BundleReport, name: str) -> bool:
    return any(name in str(problem) for problem in report.problems)


def test_the_untouched_bundle_and_a_canonical_rezip_verify(bundle: Bundle) -> None:
    assert check(bundle.data).ok, check(bundle.data).problems
    report = check(rezip(bundle.contents))
    assert report.ok, report.problems
    assert report.recordings == 3 and report.audit_entries >= 3


def test_1000_single_byte_changes_are_all_rejected_naming_the_file(bundle: Bundle) -> None:
    rng = random.Random(6)
    names = list(bundle.contents)
    missed: list[str] = []
    for _ in range(CONTENT_FLIPS):
        name = rng.choice(names)
        changed = bytearray(bundle.contents[name])
        at = rng.randrange(len(changed))
        changed[at] ^= rng.randrange(1, 256)
        report = check(rezip({**bundle.contents, name: bytes(changed)}))
        if report.ok or not named(report, name):
            missed.append(f"content of {name} byte {at}: {report.problems}")
    owners = list(_byte_owners(bundle))
    structure = [(at, owner) for at, owner, in_data in owners if not in_data]
    for i in range(RAW_FLIPS):
        at, owner = structure[rng.randrange(len(structure))] if i % 2 else owners[rng.randrange(len(owners))][:2]
        changed = bytearray(bundle.data)
        changed[at] ^= rng.randrange(1, 256)
        report = check(bytes(changed))
        if report.ok or not named(report, owner):
            missed.append(f"raw byte {at} ({owner}): {report.problems}")
    assert not missed, f"{len(missed)} of 1000 changes not rejected with the file named:\n" + "\n".join(missed[:10])


def _byte_owners(bundle: Bundle) -> Iterator[tuple[int, str, bool]]:
    """(offset, whose bytes, is it member data) for every byte of the zip."""
    for member in bundle.members:
        for at in range(member.offset, member.end):
            yield at, member.name, at >= member.data_offset
    directory_start = bundle.members[-1].end
    at = directory_start
    for member in bundle.members:
        for _ in range(len(member.central_header())):
            yield at, member.name, False
            at += 1
    for offset in range(at, len(bundle.data)):
        yield offset, END_RECORD, False


def test_deleting_a_file_is_named(bundle: Bundle) -> None:
    for name in bundle.contents:
        report = check(rezip({n: d for n, d in bundle.contents.items() if n != name}))
        assert not report.ok and named(report, name), (name, report.problems)


def test_adding_a_file_is_named(bundle: Bundle) -> None:
    for added in ("data/recordings/extra.wav", "data/notes.txt", "extra-tag.txt", "data/metadata/x.json"):
        report = check(rezip({**bundle.contents, added: b"RIFF....WAVE planted"}))
        assert not report.ok and named(report, added), (added, report.problems)


def test_renaming_a_file_is_named(bundle: Bundle) -> None:
    for name in bundle.contents:
        renamed = {(f"{name[:-4]}-x{name[-4:]}" if n == name else n): d for n, d in bundle.contents.items()}
        report = check(rezip(renamed))
        assert not report.ok and named(report, name), (name, report.problems)


def test_swapping_two_wavs_is_named(bundle: Bundle) -> None:
    wavs = [n for n in bundle.contents if n.startswith(bagtext.RECORDINGS_DIR)]
    first, second = wavs[0], wavs[1]
    assert bundle.contents[first] != bundle.contents[second]   # calls of different lengths
    swapped = {**bundle.contents, first: bundle.contents[second], second: bundle.contents[first]}
    report = check(rezip(swapped))
    assert not report.ok and named(report, first) and named(report, second), report.problems
    # the same swap done by renaming the members in the zip
    renamed = {({first: second, second: first}.get(n, n)): d for n, d in bundle.contents.items()}
    report = check(rezip(renamed))
    assert not report.ok and named(report, first) and named(report, second), report.problems


def test_zip_level_damage_is_named(bundle: Bundle) -> None:
    wav = next(m for m in bundle.members if m.name.startswith(bagtext.RECORDINGS_DIR))
    crc = bytearray(bundle.data)
    crc[wav.offset + 14] ^= 0xFF        # the CRC-32 in the local header
    assert named(check(bytes(crc)), wav.name)
    assert named(check(bundle.data + b"\0"), END_RECORD)               # trailing bytes
    assert named(check(b"\0" + bundle.data), END_RECORD) or named(check(b"\0" + bundle.data), DIRECTORY)
    assert named(check(bundle.data[:-30]), END_RECORD)                  # truncated
