"""Playback over HTTP with Range (RFC 9110 §14): every answer byte-exact against the WAV that
`recorderd export-audio` writes, 206 with Content-Range for a range, 416 for a bad one, If-Range,
HEAD — and the range parser on its own."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.webadmin.recordings_helpers import SmallAppliance, grant_for, logged_in, small_appliance
from webadmin.httprange import MAX_RANGES, ByteRange, RangeNotSatisfiable, if_range_allows, parse_range

SEGMENT = 64 * 1024    # the vault's plaintext segment for offline imports: ranges must cross them


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmallAppliance]:
    with small_appliance(tmp_path_factory.mktemp("ranges"), [("+493055501", "7001", 10.0)]) as made:
        yield made


@pytest.fixture(scope="module")
def reference(box: SmallAppliance, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    data = box.export_audio(box.recording_ids[0], tmp_path_factory.mktemp("export") / "ref.wav")
    assert len(data) > 4 * SEGMENT   # 10 s of 8 kHz stereo: five segments
    return data


@pytest.fixture(scope="module")
def player(box: SmallAppliance) -> tuple[Any, str]:
    client, _ = logged_in(box.app(), box.ctx, "auditor")
    rid = box.recording_ids[0]
    return client, f"/recordings/{rid}/audio?grant={grant_for(client, rid)}"


@pytest.mark.parametrize("header", [
    "bytes=0-99", "bytes=0-0", "bytes=44-", "bytes=-1000", "bytes=40-47",
    f"bytes={SEGMENT - 10}-{SEGMENT + 60}", f"bytes={3 * SEGMENT + 44 - 1}-{4 * SEGMENT + 44}",
    "bytes=100000-99999999", "bytes=-99999999", "bytes=0-10,5-20", "bytes=300-400,100-299",
])
def test_ranges_are_byte_exact(player: tuple[Any, str], reference: bytes, header: str) -> None:
    client, url = player
    expected = parse_range(header, len(reference))
    assert expected is not None
    reply = client.get(url, headers={"Range": header})
    assert reply.status_code == 206
    assert reply.headers["Content-Range"] == f"bytes {expected.first}-{expected.last}/{len(reference)}"
    assert int(reply.headers["Content-Length"]) == expected.length
    assert reply.get_data() == reference[expected.first:expected.last + 1]
    assert reply.headers["Accept-Ranges"] == "bytes" and reply.headers["Content-Type"] == "audio/wav"


def test_whole_file_without_range(player: tuple[Any, str], reference: bytes) -> None:
    client, url = player
    reply = client.get(url)
    assert reply.status_code == 200 and reply.get_data() == reference
    assert int(reply.headers["Content-Length"]) == len(reference) and reply.headers["Accept-Ranges"] == "bytes"
    # ranges that do not make one piece: the whole file (RFC 9110 lets a server ignore Range)
    spread = client.get(url, headers={"Range": "bytes=0-1,1000-1001"})
    assert spread.status_code == 200 and spread.get_data() == reference
    assert client.get(url, headers={"Range": "items=0-5"}).status_code == 200   # unknown unit: ignored


@pytest.mark.parametrize("header", ["bytes=999999999-", "bytes=-0", "bytes=5-2", "bytes=abc", "bytes=",
                                    "bytes=" + ",".join(["0-1"] * (MAX_RANGES + 1))])
def test_bad_ranges_get_416(player: tuple[Any, str], reference: bytes, header: str) -> None:
    client, url = player
    reply = client.get(url, headers={"Range": header})
    assert reply.status_code == 416
    assert reply.headers["Content-Range"] == f"bytes */{len(reference)}"


def test_if_range_and_head(box: SmallAppliance, player: tuple[Any, str], reference: bytes) -> None:
    client, url = player
    etag = client.get(url, headers={"Range": "bytes=0-0"}).headers["ETag"]
    row = box.ctx.catalog.get(box.recording_ids[0]).recording
    assert etag == f'"{row.vault_sha256}"'
    same = client.get(url, headers={"Range": "bytes=10-19", "If-Range": etag})
    assert same.status_code == 206 and same.get_data() == reference[10:20]
    changed = client.get(url, headers={"Range": "bytes=10-19", "If-Range": '"something-else"'})
    assert changed.status_code == 200 and changed.get_data() == reference
    head = client.head(url, headers={"Range": "bytes=100-199"})
    assert head.status_code == 206 and head.headers["Content-Length"] == "100" and head.get_data() == b""


def test_seeking_decrypts_only_what_it_needs(box: SmallAppliance, player: tuple[Any, str],
                                             reference: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    """A range deep in the file opens the segments it touches, not those before it."""
    from storage import vault

    opened: list[int] = []
    original = vault.VaultReader._decrypt_segments

    def counting(self: Any, first: int, count: int) -> bytearray:
        opened.extend(range(first, first + count))
        return original(self, first, count)

    monkeypatch.setattr(vault.VaultReader, "_decrypt_segments", counting)
    client, url = player
    start = 3 * SEGMENT + 1000
    reply = client.get(url, headers={"Range": f"bytes={start}-{start + 99}"})
    assert reply.get_data() == reference[start:start + 100]
    assert set(opened) == {3}   # (start - 44) // SEGMENT: the WAV header is not in the vault


# -- the parser ------------------------------------------------------------------------------


@pytest.mark.parametrize(("header", "size", "expected"), [
    (None, 100, None), ("", 100, None), ("bytes=0-9", 100, (0, 9)), ("bytes=90-200", 100, (90, 99)),
    ("bytes=90-", 100, (90, 99)), ("bytes=-10", 100, (90, 99)), ("bytes=-500", 100, (0, 99)),
    ("BYTES = 5-5", 100, (5, 5)), ("bytes=0-4, 5-9", 100, (0, 9)), ("bytes=20-29,0-25", 100, (0, 29)),
    ("bytes=0-1,3-4", 100, None), ("bytes=0-1,500-600", 100, (0, 1)), ("pages=1-2", 100, None),
])
def test_parse_range(header: str | None, size: int, expected: tuple[int, int] | None) -> None:
    got = parse_range(header, size)
    assert (None if got is None else (got.first, got.last)) == expected


@pytest.mark.parametrize(("header", "size"), [("bytes=100-", 100), ("bytes=-0", 100), ("bytes=9-3", 100),
                                              ("bytes=x-1", 100), ("bytes=-", 100), ("bytes=0-", 0)])
def test_parse_range_unsatisfiable(header: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiable) as caught:
        parse_range(header, size)
    assert caught.value.content_range == f"bytes */{size}"


def test_byte_range_headers_and_if_range() -> None:
    assert ByteRange(5, 9, 100).content_range == "bytes 5-9/100" and ByteRange(5, 9, 100).length == 5
    assert if_range_allows(None, '"a"') and if_range_allows('"a"', '"a"')
    assert not if_range_allows('W/"a"', '"a"') and not if_range_allows('"b"', '"a"')
    assert not if_range_allows("Sat, 29 Oct 1994 19:43:31 GMT", '"a"')
