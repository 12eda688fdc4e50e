"""capture.pcapio: pcap/pcapng streaming reader (real corpus files and hand-built files)."""

from __future__ import annotations

import random
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from capture.errors import ParseError
from capture.pcapio import (
    LINKTYPE_ETHERNET,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
    CaptureReader,
    FrameBatch,
    read_batches,
    write_pcap,
)

CORPUS = Path("/work/shared/corpus/pcap")
SMALL_CHUNKS = [1, 7, 16, 17, 61, 1000]


def _records(n: int, seed: int = 1) -> list[tuple[float, bytes]]:
    rng = random.Random(seed)
    out = []
    ts = 1_700_000_000.0
    for _ in range(n):
        ts += rng.random() / 10
        out.append((round(ts, 6), rng.randbytes(rng.randint(0, 300))))
    return out


def _read_all(path: Path, chunk_bytes: int = 4 << 20) -> tuple[CaptureReader, list[FrameBatch]]:
    reader = CaptureReader(path, chunk_bytes)
    return reader, list(reader.batches())


def _frames(batches: list[FrameBatch]) -> list[tuple[int, float, bytes]]:
    return [(b.linktype, ts, bytes(frame)) for b in batches for ts, frame in b.iter_frames()]


def _assert_same_records(batches: list[FrameBatch], records: list[tuple[float, bytes]], tol: float = 1e-6) -> None:
    frames = _frames(batches)
    assert [f[2] for f in frames] == [r[1] for r in records]
    assert np.allclose([f[1] for f in frames], [r[0] for r in records], atol=tol, rtol=0)


# -- pcap -----------------------------------------------------------------------------------


def test_write_then_read_roundtrip(tmp_path: Path) -> None:
    records = _records(500)
    path = tmp_path / "a.pcap"
    assert write_pcap(path, LINKTYPE_ETHERNET, records) == 500
    reader, batches = _read_all(path)
    assert {b.linktype for b in batches} == {LINKTYPE_ETHERNET}
    _assert_same_records(batches, records)
    assert reader.packets == 500
    assert reader.bytes_read == reader.size == path.stat().st_size
    assert not reader.errors


def _pcap_variant(records: list[tuple[float, bytes]], order: str, nanos: bool, linktype: int = 1) -> bytes:
    """A pcap file in the given byte order and resolution, built independently of write_pcap."""
    magic = 0xA1B23C4D if nanos else 0xA1B2C3D4
    out = [struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 65535, linktype)]
    for ts, frame in records:
        seconds = int(ts)
        frac = round((ts - seconds) * (1e9 if nanos else 1e6))
        out.append(struct.pack(order + "IIII", seconds, frac, len(frame), len(frame)) + frame)
    return b"".join(out)


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("nanos", [False, True])
def test_all_four_magics(tmp_path: Path, order: str, nanos: bool) -> None:
    records = [(1_600_000_000.123456789, b"\x01" * 60), (1_600_000_001.000000500, b"\x02" * 70)]
    path = tmp_path / "v.pcap"
    path.write_bytes(_pcap_variant(records, order, nanos, LINKTYPE_RAW))
    _, batches = _read_all(path)
    assert batches[0].linktype == LINKTYPE_RAW
    # float64 keeps ~0.2 us at epoch scale; the nanosecond part must not be misread as us.
    _assert_same_records(batches, records)
    if nanos:
        assert abs(batches[0].ts[1] - 1_600_000_001.0000005) < 3e-7


def test_linktype_fcs_bits_are_masked(tmp_path: Path) -> None:
    path = tmp_path / "fcs.pcap"
    data = bytearray(_pcap_variant([(1.0, b"x" * 20)], "<", False))
    struct.pack_into("<I", data, 20, 0x1000_0000 | LINKTYPE_ETHERNET)  # "FCS present" flag
    path.write_bytes(bytes(data))
    _, batches = _read_all(path)
    assert batches[0].linktype == LINKTYPE_ETHERNET


@pytest.mark.parametrize("chunk", SMALL_CHUNKS)
def test_records_straddling_chunks(tmp_path: Path, chunk: int) -> None:
    records = _records(120, seed=chunk)
    path = tmp_path / "s.pcap"
    write_pcap(path, LINKTYPE_ETHERNET, records)
    reader, batches = _read_all(path, chunk)
    _assert_same_records(batches, records)
    assert reader.packets == len(records) and not reader.errors
    for batch in batches:  # frames are views into the batch's own buffer, not copies
        assert len(batch) > 0
        assert batch.frame(0).obj is batch.buf
        assert batch.offsets.dtype == np.int64 and batch.lengths.dtype == np.int64
        assert batch.ts.dtype == np.float64


def test_frame_and_iter_frames_agree(tmp_path: Path) -> None:
    path = tmp_path / "f.pcap"
    write_pcap(path, LINKTYPE_ETHERNET, _records(50))
    (batch,) = list(read_batches(path))
    assert [bytes(batch.frame(i)) for i in range(len(batch))] == [bytes(f) for _, f in batch.iter_frames()]


@pytest.mark.parametrize("cut", [1, 8, 15, 16, 17, 40])
def test_record_cut_by_end_of_file(tmp_path: Path, cut: int) -> None:
    records = _records(10)
    path = tmp_path / "t.pcap"
    write_pcap(path, LINKTYPE_ETHERNET, records)
    last_len = 16 + len(records[-1][1])
    full = path.read_bytes()
    path.write_bytes(full[: len(full) - last_len + min(cut, last_len - 1)])
    for chunk in (4 << 20, 13):
        reader, batches = _read_all(path, chunk)
        _assert_same_records(batches, records[:-1])
        assert reader.errors == {"pcap.truncated_record": 1}


def test_truncated_file_header(tmp_path: Path) -> None:
    path = tmp_path / "h.pcap"
    path.write_bytes(_pcap_variant([], "<", False)[:10])
    reader, batches = _read_all(path)
    assert batches == [] and reader.errors == {"pcap.truncated_header": 1}


@pytest.mark.parametrize("chunk", [4 << 20, 100])
def test_absurd_record_length_stops_file(tmp_path: Path, chunk: int) -> None:
    records = _records(5)
    data = bytearray(_pcap_variant(records, "<", False))
    bad = bytearray(struct.pack("<IIII", 1, 0, 0x7FFF_FFF0, 0x7FFF_FFF0) + b"junk" * 10)
    path = tmp_path / "bad.pcap"
    path.write_bytes(bytes(data + bad + data[24:]))  # valid records follow, but we must stop
    reader, batches = _read_all(path, chunk)
    _assert_same_records(batches, records)
    assert reader.errors == {"pcap.bad_record_length": 1}


def test_oversized_record_inside_chunk_is_rejected(tmp_path: Path) -> None:
    """A length above the limit that still fits in the chunk is caught too."""
    records = _records(3)
    big = (2.0, b"\0" * 300_000)  # > 256 KiB and > the 65535 snaplen
    path = tmp_path / "big.pcap"
    path.write_bytes(_pcap_variant([*records, big, *records], "<", False))
    reader, batches = _read_all(path)
    _assert_same_records(batches, records)
    assert reader.errors == {"pcap.bad_record_length": 1}


def test_not_a_capture(tmp_path: Path) -> None:
    path = tmp_path / "x.pcap"
    path.write_bytes(b"GIF89a" + bytes(100))
    with pytest.raises(ParseError) as info:
        CaptureReader(path)
    assert info.value.reason == "capture.unknown_format"
    path.write_bytes(b"")
    with pytest.raises(ParseError) as info:
        CaptureReader(path)
    assert info.value.reason == "capture.truncated_header"


# -- pcapng ---------------------------------------------------------------------------------


def _block(order: str, btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    total = 12 + len(body)
    return struct.pack(order + "II", btype, total) + body + struct.pack(order + "I", total)


def _shb(order: str) -> bytes:
    return _block(order, 0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1))


def _option(order: str, code: int, value: bytes) -> bytes:
    return struct.pack(order + "HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def _idb(order: str, linktype: int, snaplen: int = 0, tsresol: int | None = None, tsoffset: int | None = None) -> bytes:
    options = _option(order, 2, b"eth0")  # if_name, to be skipped
    if tsresol is not None:
        options += _option(order, 9, bytes([tsresol]))
    if tsoffset is not None:
        options += _option(order, 14, struct.pack(order + "q", tsoffset))
    options += _option(order, 0, b"")
    return _block(order, 1, struct.pack(order + "HHI", linktype, 0, snaplen) + options)


def _epb(order: str, iface: int, ticks: int, data: bytes) -> bytes:
    header = struct.pack(order + "IIIII", iface, ticks >> 32, ticks & 0xFFFFFFFF, len(data), len(data))
    return _block(order, 6, header + data + b"\0" * (-len(data) % 4) + _option(order, 1, b"comment"))


def _spb(order: str, orig_len: int, data: bytes) -> bytes:
    return _block(order, 3, struct.pack(order + "I", orig_len) + data)


def _pb(order: str, iface: int, ticks: int, data: bytes) -> bytes:
    header = struct.pack(order + "HHIIII", iface, 0, ticks >> 32, ticks & 0xFFFFFFFF, len(data), len(data))
    return _block(order, 2, header + data)


def _other_blocks(order: str) -> bytes:
    """NRB, ISB, DSB and a custom block: all to be skipped."""
    nrb = _block(order, 4, struct.pack(order + "HH", 1, 8) + bytes([10, 0, 0, 1]) + b"abc\0" + struct.pack(order + "HH", 0, 0))
    isb = _block(order, 5, struct.pack(order + "III", 0, 0, 0))
    dsb = _block(order, 0x0A, struct.pack(order + "II", 0x544C534B, 4) + b"keys")
    custom = _block(order, 0x00000BAD, struct.pack(order + "I", 32473) + b"private!")
    return nrb + isb + dsb + custom


@pytest.mark.parametrize("order", ["<", ">"])
def test_pcapng_resolutions_offsets_and_skipped_blocks(tmp_path: Path, order: str) -> None:
    data = (
        _shb(order)
        + _idb(order, LINKTYPE_ETHERNET)  # if 0: default microseconds
        + _idb(order, LINKTYPE_ETHERNET, tsresol=9)  # if 1: nanoseconds
        + _idb(order, LINKTYPE_ETHERNET, tsresol=0x80 | 20, tsoffset=1000)  # if 2: 2**-20 s, +1000 s
        + _other_blocks(order)
        + _epb(order, 0, 1_500_000_000_250_000, b"A" * 61)
        + _epb(order, 1, 1_500_000_001_000_000_001, b"B" * 3)
        + _other_blocks(order)
        + _epb(order, 2, (1_500_000_000 << 20) | (1 << 19), b"C" * 64)
    )
    path = tmp_path / "r.pcapng"
    path.write_bytes(data)
    for chunk in [4 << 20, *SMALL_CHUNKS]:
        reader, batches = _read_all(path, chunk)
        frames = _frames(batches)
        assert [f[2] for f in frames] == [b"A" * 61, b"B" * 3, b"C" * 64]
        assert np.allclose([f[1] for f in frames], [1_500_000_000.25, 1_500_000_001.000000001, 1_500_001_000.5], atol=1e-6, rtol=0)
        assert not reader.errors and reader.packets == 3


def test_pcapng_linktype_change_splits_batches(tmp_path: Path) -> None:
    data = (
        _shb("<")
        + _idb("<", LINKTYPE_ETHERNET)
        + _idb("<", LINKTYPE_LINUX_SLL)
        + _epb("<", 0, 1, b"e1")
        + _epb("<", 0, 2, b"e2")
        + _epb("<", 1, 3, b"s1")
        + _epb("<", 0, 4, b"e3")
    )
    path = tmp_path / "l.pcapng"
    path.write_bytes(data)
    _, batches = _read_all(path)
    assert [(b.linktype, len(b)) for b in batches] == [(1, 2), (LINKTYPE_LINUX_SLL, 1), (1, 1)]
    assert [f[2] for f in _frames(batches)] == [b"e1", b"e2", b"s1", b"e3"]


def test_pcapng_several_sections_with_both_byte_orders(tmp_path: Path) -> None:
    """Interface ids restart in each section; the byte order may change between sections."""
    data = (
        _shb("<")
        + _idb("<", LINKTYPE_ETHERNET, tsresol=3)  # milliseconds
        + _epb("<", 0, 1_000_000_000_500, b"first")
        + _shb(">")
        + _idb(">", LINKTYPE_NULL)  # this section's interface 0
        + _epb(">", 0, 2_000_000_000_000_000, b"second")
    )
    path = tmp_path / "m.pcapng"
    path.write_bytes(data)
    for chunk in [4 << 20, 5, 33]:
        reader, batches = _read_all(path, chunk)
        assert [(lt, data) for lt, _, data in _frames(batches)] == [(LINKTYPE_ETHERNET, b"first"), (LINKTYPE_NULL, b"second")]
        assert np.allclose(np.concatenate([b.ts for b in batches]), [1_000_000_000.5, 2_000_000_000.0])
        assert not reader.errors


def test_pcapng_simple_and_obsolete_packet_blocks(tmp_path: Path) -> None:
    data = (
        _shb("<")
        + _idb("<", LINKTYPE_ETHERNET, snaplen=8)
        + _pb("<", 0, 7_000_000, b"obsolete")
        + _spb("<", 100, b"0123456789AB")  # original 100 bytes, 12 captured, snaplen 8
        + _spb("<", 3, b"xyz\0")  # padding is not data
    )
    path = tmp_path / "p.pcapng"
    path.write_bytes(data)
    reader, batches = _read_all(path)
    frames = _frames(batches)
    assert [f[2] for f in frames] == [b"obsolete", b"01234567", b"xyz"]
    # SPBs have no timestamp: they inherit the previous packet's.
    assert [f[1] for f in frames] == [7.0, 7.0, 7.0]
    assert not reader.errors


def test_pcapng_damage(tmp_path: Path) -> None:
    good = _shb("<") + _idb("<", LINKTYPE_ETHERNET) + _epb("<", 0, 1, b"ok")
    path = tmp_path / "d.pcapng"

    path.write_bytes(good + _epb("<", 5, 2, b"no such interface") + _epb("<", 0, 3, b"ok2"))
    reader, batches = _read_all(path)
    assert [f[2] for f in _frames(batches)] == [b"ok", b"ok2"]
    assert reader.errors == {"pcapng.bad_interface": 1}

    path.write_bytes(good + _epb("<", 0, 2, b"cut at the end")[:-9])
    for chunk in (4 << 20, 7):
        reader, batches = _read_all(path, chunk)
        assert [f[2] for f in _frames(batches)] == [b"ok"]
        assert reader.errors == {"pcapng.truncated_block": 1}

    bad_len = bytearray(_epb("<", 0, 2, b"x"))
    struct.pack_into("<I", bad_len, 4, 0x7FFF_FFF0)
    path.write_bytes(good + bytes(bad_len) + _epb("<", 0, 3, b"never"))
    reader, batches = _read_all(path)
    assert [f[2] for f in _frames(batches)] == [b"ok"]
    assert reader.errors == {"pcapng.bad_block": 1}

    caplen_lie = bytearray(_epb("<", 0, 2, b"abcd"))
    struct.pack_into("<I", caplen_lie, 20, 5000)  # captured length beyond the block
    path.write_bytes(good + bytes(caplen_lie) + _epb("<", 0, 3, b"after"))
    reader, batches = _read_all(path)
    assert [f[2] for f in _frames(batches)] == [b"ok", b"after"]
    assert reader.errors == {"pcapng.bad_record_length": 1}


# -- real captures ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "b2bua_asterisk_reinvite.pcapng",
        "hold_refer_erspan_sip_only.pcapng",
        "h263_video_dlt_null.pcap",
        "ipv6_sll_frag_prack_sip_only.pcap",
        "sip_over_tcp_pcma_cn.pcap",
    ],
)
def test_corpus_matches_tshark(name: str) -> None:
    path = CORPUS / name
    out = subprocess.run(
        ["tshark", "-r", str(path), "-T", "fields", "-e", "frame.time_epoch", "-e", "frame.cap_len"],
        capture_output=True, text=True, check=True,
    ).stdout
    rows = [line.split("\t") for line in out.splitlines() if line]
    expected_ts = np.array([float(r[0]) for r in rows])
    expected_len = np.array([int(r[1]) for r in rows])
    for chunk in (4 << 20, 997):
        reader, batches = _read_all(path, chunk)
        ts = np.concatenate([b.ts for b in batches])
        lengths = np.concatenate([b.lengths for b in batches])
        assert len(ts) == len(expected_ts) == reader.packets
        assert np.allclose(ts, expected_ts, atol=1e-6, rtol=0)
        assert (lengths == expected_len).all()
        assert not reader.errors


def test_merge_batches_keeps_every_frame_and_timestamp(tmp_path: Path) -> None:
    from capture.pcapio import merge_batches, read_batches, write_pcap

    frames = [(1000.0 + i / 100, bytes([i % 256]) * (60 + i)) for i in range(300)]
    path = tmp_path / "m.pcap"
    write_pcap(path, 1, frames)
    batches = list(read_batches(path, chunk_bytes=4096))
    assert len(batches) > 3
    merged = merge_batches(batches)
    assert len(merged) == len(frames)
    assert [bytes(merged.frame(i)) for i in range(len(merged))] == [f for _, f in frames]
    assert merged.ts.tolist() == pytest.approx([t for t, _ in frames])


def test_split_by_time_cuts_long_batches_and_shares_the_buffer() -> None:
    from capture.pcapio import FrameBatch, split_by_time

    ts = np.array([0.0, 1.0, 4.9, 5.1, 6.0, 5.5, 12.0, 30.0])   # 5.5 steps back: stays where it arrives
    batch = FrameBatch(1, bytes(80), np.arange(8, dtype=np.int64) * 10, np.full(8, 10, np.int64), ts)
    parts = split_by_time(batch, 5.0)
    assert [p.ts.tolist() for p in parts] == [[0.0, 1.0, 4.9], [5.1, 6.0, 5.5], [12.0], [30.0]]
    assert all(p.buf is batch.buf for p in parts)
    assert [p.offsets.tolist() for p in parts][1] == [30, 40, 50]
    short = FrameBatch(1, bytes(20), np.array([0, 10]), np.array([10, 10]), np.array([0.0, 4.0]))
    assert split_by_time(short, 5.0) == [short]
