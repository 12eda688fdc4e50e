"""Must show 3: bad bytes never stop the pipeline.

- All PROTOS c07-sip cases, wrapped into a capture over UDP and over TCP, interleaved with
  well-formed calls: replay finishes, the good calls are still recorded, every PROTOS INVITE
  that parses is accounted for, memory stays bounded.
- Truncated and randomly corrupted frames at every layer, and truncated or corrupted capture
  files: replay never raises, and what is intact still comes out.
"""

from __future__ import annotations

import json
import random
import re
import resource
import struct
from pathlib import Path

import pytest

from recorderd.cli import main
from tests.gen.callgen import CallPlan, write_capture
from tests.gen.netframes import (
    TCP_ACK,
    TCP_PSH,
    FrameBuilder,
    LinkPath,
    pcap_record,
    write_pcap_header,
)

PROTOS = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "protos-sip" / "cases"
UDP_MAX_PAYLOAD = 65000
TCP_SEGMENT = 1400
START = 1_700_000_000.0


def protos_messages(path: Path, index: int) -> list[bytes]:
    """The two messages of one case with the placeholders filled in (README of the suite)."""
    data = path.read_bytes()
    messages, pos = [], 0
    while pos < len(data):
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        messages.append(data[space + 1: space + 1 + length])
        pos = space + 1 + length
    filled = []
    for i, template in enumerate(messages):
        text = template
        for key, value in ((b"<To>", b"2002@192.0.2.2"), (b"<From>", b"1001@192.0.2.1"),
                           (b"<From-Address>", b"192.0.2.1"), (b"<From-IP>", b"192.0.2.1"),
                           (b"<Local-Port>", b"5060"), (b"<Branch-ID>", str(index).encode()),
                           (b"<Call-ID>", f"protos-{index}".encode()), (b"<CSeq>", str(i + 1).encode()),
                           (b"<Teardown-Method>", b"CANCEL")):
            text = text.replace(key, value)
        head, sep, body = text.partition(b"\r\n\r\n") if b"\r\n\r\n" in text else text.partition(b"\n\n")
        text = head.replace(b"<Content-Length>", str(len(body)).encode()) + sep + body
        filled.append(text)
    return filled


def good_calls(directory: Path, count: int, start: float, spacing: float) -> tuple[list[tuple[float, bytes]], list[str]]:
    plans = [CallPlan(call_id=f"good-{i}@192.0.2.50", start_ts=start + i * spacing, duration_s=2.0,
                      caller_ip="192.0.2.50", callee_ip="192.0.2.60",
                      caller_port=30000 + 2 * i, callee_port=32000 + 2 * i) for i in range(count)]
    path = directory / "good.pcap"
    write_capture(str(path), plans, seed=7)
    return read_records(path), [p.call_id for p in plans]


def read_records(path: Path) -> list[tuple[float, bytes]]:
    data = path.read_bytes()
    out, pos = [], 24
    while pos + 16 <= len(data):
        sec, usec, incl, _ = struct.unpack_from("<IIII", data, pos)
        out.append((sec + usec / 1e6, data[pos + 16: pos + 16 + incl]))
        pos += 16 + incl
    return out


def write_records(path: Path, records: list[tuple[float, bytes]]) -> None:
    with open(path, "wb") as out:
        write_pcap_header(out)
        for ts, frame in sorted(records, key=lambda r: r[0]):
            out.write(pcap_record(ts, frame))


def protos_frames(transport: str) -> list[tuple[float, bytes]]:
    fb = FrameBuilder()
    to_uas = LinkPath("192.0.2.1", "192.0.2.2")
    cases = sorted(PROTOS.iterdir())
    frames: list[tuple[float, bytes]] = []
    seq = 1000
    ts = START
    for index, case in enumerate(cases):
        for message in protos_messages(case, index):
            ts += 0.001
            if transport == "udp":
                frames.append((ts, fb.udp(to_uas, 5060, 5060, message[:UDP_MAX_PAYLOAD])))
                continue
            for at in range(0, len(message), TCP_SEGMENT):
                chunk = message[at:at + TCP_SEGMENT]
                frames.append((ts, fb.tcp(to_uas, 40000, 5060, seq, 1, TCP_ACK | TCP_PSH, chunk)))
                seq += len(chunk)
                ts += 0.0001
    return frames


def replay(capture: Path, out: Path) -> tuple[dict, dict[str, dict], list[dict]]:
    code = main(["replay", str(capture), "--out", str(out)])
    assert code == 0
    recs = {}
    for path in out.glob("*.json"):
        if path.name != "not-recorded.json":
            meta = json.loads(path.read_text())
            recs[meta["call_id"]] = meta
    missing = json.loads((out / "not-recorded.json").read_text())
    return {}, recs, missing


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_protos_suite_with_good_calls_interleaved(tmp_path: Path, transport: str) -> None:
    assert len(list(PROTOS.iterdir())) == 4527
    bad = protos_frames(transport)
    span = bad[-1][0] - START
    good, good_ids = good_calls(tmp_path, 10, START + 1.0, span / 10)
    capture = tmp_path / f"protos-{transport}.pcap"
    write_records(capture, bad + good)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    _, recs, missing = replay(capture, tmp_path / "out")
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    for call_id in good_ids:
        assert call_id in recs, f"good call {call_id} lost among the PROTOS cases ({transport})"
        assert recs[call_id]["completeness"]["both_legs"]
    protos_rows = [row for row in missing if row["call_id"].startswith("protos-")]
    # most cases are valid enough to open a dialog: each must be accounted for, none recorded
    assert len(protos_rows) > 3000
    assert all(row["reason"] == "no_media" for row in protos_rows)
    assert grown_mib < 400, f"memory grew by {grown_mib:.0f} MiB"


def mutate(frame: bytes, rng: random.Random) -> bytes:
    choice = rng.randrange(4)
    if choice == 0:
        return frame[: rng.randrange(len(frame) + 1)]
    data = bytearray(frame)
    if choice == 1:
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data)
    if choice == 2:  # a header field set to an extreme value at a random layer boundary
        at = rng.choice([12, 14, 16, 18, 20, 23, 24, 34, 36, 38, 42, 43, 44, 46])
        if at < len(data):
            data[at] = rng.choice([0, 0xFF, 0x80, 0x7F])
        return bytes(data)
    return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))


def test_corrupted_frames_never_stop_replay(tmp_path: Path) -> None:
    rng = random.Random(1234)
    good, good_ids = good_calls(tmp_path, 6, START, 3.0)
    corrupted = [(ts + 0.0001, mutate(frame, rng)) for ts, frame in good if rng.random() < 0.3]
    capture = tmp_path / "corrupted.pcap"
    write_records(capture, good + corrupted)
    _, recs, _ = replay(capture, tmp_path / "out")
    assert set(good_ids) <= set(recs)


@pytest.mark.parametrize("seed", range(6))
def test_corrupted_and_truncated_files_never_raise(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    good, _ = good_calls(tmp_path, 2, START, 3.0)
    source = tmp_path / "source.pcap"
    write_records(source, good)
    data = bytearray(source.read_bytes())
    if seed % 2:
        data = data[: rng.randrange(24, len(data))]
    for _ in range(rng.randint(1, 20)):
        data[rng.randrange(len(data))] = rng.randrange(256)
    broken = tmp_path / "broken.pcap"
    broken.write_bytes(bytes(data))
    _, recs, missing = replay(broken, tmp_path / "out")
    assert isinstance(missing, list)


def test_garbage_file_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    garbage = tmp_path / "notes.txt"
    garbage.write_text("this is not a capture\n" * 10)
    code = main(["replay", str(garbage), "--out", str(tmp_path / "out")])
    assert code == 1
    said = capsys.readouterr().err
    assert "notes.txt" in said and re.search(r"pcap|format|magic", said, re.I)
