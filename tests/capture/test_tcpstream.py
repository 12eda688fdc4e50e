"""capture.tcpstream: SIP framing over reassembled TCP byte streams (RFC 3261 §18.3)."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import pytest

from capture.netdecode import PacketDecoder, Segment
from capture.pcapio import read_batches
from capture.tcpstream import MAX_HEADER_BYTES, SipTcpReassembler, seq_delta

CORPUS = Path("/work/shared/corpus/pcap")
CLIENT = ("10.0.0.1", 40000)
SERVER = ("10.0.0.2", 5060)
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10


def sip_message(i: int, body_len: int = 0, compact: bool = False) -> bytes:
    """A request or response with a body that contains things framing must not trip on."""
    start = f"INVITE sip:user{i}@example.com SIP/2.0" if i % 2 == 0 else "SIP/2.0 200 OK"
    body_parts = [f"v=0\r\no=- {i} 1 IN IP4 10.0.0.1\r\n", "\r\n\r\n", "Content-Length: 9999\r\n", "SIP/2.0 180 Ringing\r\n"]
    body = "".join(body_parts).encode()
    body = (body * (body_len // len(body) + 1))[:body_len]
    name = "l" if compact else "Content-Length"
    headers = (
        f"{start}\r\nVia: SIP/2.0/TCP 10.0.0.1:40000;branch=z9hG4bK{i}\r\nFrom: <sip:a@x>;tag={i}\r\n"
        f"To: <sip:b@y>\r\nCall-ID: call-{i}@x\r\nCSeq: {i + 1} INVITE\r\n{name}: {len(body)}\r\n\r\n"
    )
    return headers.encode() + body


def make_messages(n: int, rng: random.Random) -> list[bytes]:
    return [sip_message(i, rng.choice([0, 0, 37, 300, 1500]), compact=rng.random() < 0.3) for i in range(n)]


def segments(stream: bytes, cuts: list[int], isn: int, ts0: float = 100.0, syn: bool = True,
             src: tuple[str, int] = CLIENT, dst: tuple[str, int] = SERVER) -> list[Segment]:
    """Cut `stream` at `cuts`; the n-th segment has ts ts0 + n/100 and seq isn + 1 + offset."""
    bounds = [0, *sorted(set(c for c in cuts if 0 < c < len(stream))), len(stream)]
    out = [Segment(ts0, 6, src[0], src[1], dst[0], dst[1], b"", isn, SYN)] if syn else []
    for n, (a, b) in enumerate(zip(bounds, bounds[1:], strict=False)):
        seq = (isn + 1 + a) % (1 << 32)
        out.append(Segment(ts0 + (n + 1) / 100, 6, src[0], src[1], dst[0], dst[1], stream[a:b], seq, PSH | ACK))
    return out


def feed_all(reassembler: SipTcpReassembler, segs: list[Segment]) -> list[tuple[float, bytes]]:
    out: list[tuple[float, bytes]] = []
    for seg in segs:
        out += reassembler.feed(seg)
    return out


def random_cuts(length: int, rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(1, length) for _ in range(n)]


# -- in-order streams -------------------------------------------------------------------------


def test_seq_delta_wraps() -> None:
    assert seq_delta(5, 3) == 2
    assert seq_delta(3, 5) == -2
    assert seq_delta(2, 0xFFFFFFFE) == 4
    assert seq_delta(0xFFFFFFFE, 2) == -4


def test_several_messages_in_one_segment() -> None:
    msgs = make_messages(5, random.Random(1))
    out = feed_all(SipTcpReassembler(), segments(b"".join(msgs), [], isn=1000))
    assert [m for _, m in out] == msgs
    assert {ts for ts, _ in out} == {100.01}


@pytest.mark.parametrize("seed", range(25))
def test_random_split_points(seed: int) -> None:
    rng = random.Random(seed)
    msgs = make_messages(12, rng)
    stream = b"".join(msgs)
    cuts = random_cuts(len(stream), rng, rng.randint(1, 80))
    segs = segments(stream, cuts, isn=rng.randrange(1 << 32))
    reassembler = SipTcpReassembler()
    out = feed_all(reassembler, segs)
    assert [m for _, m in out] == msgs
    assert not reassembler.errors
    # Each message carries the time of the segment holding its last byte.
    ends = [sum(map(len, msgs[: i + 1])) for i in range(len(msgs))]
    for (ts, _), end in zip(out, ends, strict=True):
        holder = next(s for s in segs[1:] if seq_delta(s.seq, segs[0].seq + 1) + len(s.payload) >= end)
        assert ts == holder.ts


def test_split_anywhere_inside_content_length_and_blank_line() -> None:
    msg = sip_message(0, 123)
    cl = msg.index(b"Content-Length")
    blank = msg.index(b"\r\n\r\n")
    for cut in [cl + 1, cl + 9, cl + 14, cl + 15, cl + 16, cl + 17, blank, blank + 1, blank + 2, blank + 3, blank + 4]:
        out = feed_all(SipTcpReassembler(), segments(msg + msg, [cut, len(msg) + cut], isn=7))
        assert [m for _, m in out] == [msg, msg], cut


def test_compact_content_length_form() -> None:
    msg = sip_message(1, 40, compact=True)
    assert b"\r\nl: 40\r\n" in msg
    out = feed_all(SipTcpReassembler(), segments(msg * 3, random_cuts(len(msg) * 3, random.Random(3), 10), isn=9))
    assert [m for _, m in out] == [msg] * 3


def test_sequence_number_wrap_inside_a_message() -> None:
    msgs = make_messages(4, random.Random(4))
    stream = b"".join(msgs)
    isn = (1 << 32) - 200  # the sequence space wraps in the middle of the first message
    out = feed_all(SipTcpReassembler(), segments(stream, list(range(50, len(stream), 90)), isn=isn))
    assert [m for _, m in out] == msgs


def test_crlf_keepalives_are_ignored() -> None:
    """RFC 5626 §3.5.1: CRLFCRLF pings and CRLF pongs between messages, even split."""
    a, b = sip_message(0, 10), sip_message(1)
    stream = b"\r\n\r\n" + a + b"\r\n\r\n" + b"\r\n" + b + b"\r\n"
    for cut in range(1, len(stream)):
        reassembler = SipTcpReassembler()
        out = feed_all(reassembler, segments(stream, [cut, 2, len(a) + 5], isn=1))
        assert [m for _, m in out] == [a, b]
        assert not reassembler.errors


# -- disorder ---------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(20))
def test_shuffled_duplicated_and_overlapping_segments(seed: int) -> None:
    rng = random.Random(100 + seed)
    msgs = make_messages(10, rng)
    stream = b"".join(msgs)
    isn = rng.randrange(1 << 32)
    segs = segments(stream, random_cuts(len(stream), rng, 60), isn=isn)
    data = segs[1:]
    # Retransmissions: exact duplicates and re-segmented overlapping copies.
    extra = rng.sample(data, 8)
    for _ in range(5):
        a = rng.randrange(len(stream) - 10)
        b = rng.randrange(a + 1, min(len(stream), a + 400))
        extra.append(Segment(0.0, 6, *CLIENT, *SERVER, stream[a:b], (isn + 1 + a) % (1 << 32), ACK))
    data += extra
    rng.shuffle(data)
    data = [Segment(100.0 + i / 100, 6, *CLIENT, *SERVER, s.payload, s.seq, s.flags) for i, s in enumerate(data)]
    reassembler = SipTcpReassembler()
    out = feed_all(reassembler, [segs[0], *data])
    assert [m for _, m in out] == msgs
    assert not reassembler.errors
    assert reassembler.stats["tcp.retransmission"] + reassembler.stats["tcp.overlap"] >= 8
    assert reassembler.buffered_bytes == 0


def test_two_directions_are_independent() -> None:
    rng = random.Random(5)
    up, down = make_messages(6, rng), make_messages(6, rng)
    s_up = segments(b"".join(up), random_cuts(6000, rng, 30), isn=1)
    s_down = segments(b"".join(down), random_cuts(6000, rng, 30), isn=2**31, src=SERVER, dst=CLIENT)
    mixed = [s for pair in zip(s_up, s_down, strict=False) for s in pair]
    mixed += s_up[len(s_down):] + s_down[len(s_up):]
    reassembler = SipTcpReassembler()
    got_up: list[bytes] = []
    got_down: list[bytes] = []
    for seg in mixed:
        for _, msg in reassembler.feed(seg):
            (got_up if seg.src == CLIENT[0] else got_down).append(msg)
    assert (got_up, got_down) == (up, down)


# -- mid-stream start and gaps ----------------------------------------------------------------


@pytest.mark.parametrize("seed", range(10))
def test_capture_starting_mid_stream(seed: int) -> None:
    rng = random.Random(200 + seed)
    msgs = make_messages(8, rng)
    stream = b"".join(msgs)
    start = rng.randrange(1, len(msgs[0]) + len(msgs[1]) - 1)  # somewhere in message 0 or 1
    segs = segments(stream, [start, *random_cuts(len(stream), rng, 40)], isn=rng.randrange(1 << 32), syn=False)
    first = next(i for i, s in enumerate(segs) if seq_delta(s.seq, segs[0].seq) >= start)
    reassembler = SipTcpReassembler()
    out = feed_all(reassembler, segs[first:])
    complete_from = 1 if start < len(msgs[0]) else 2
    assert [m for _, m in out] == msgs[complete_from:]
    assert not reassembler.errors


def test_resync_is_not_fooled_by_a_sipfrag_body() -> None:
    """A NOTIFY's message/sipfrag body is a status line; resync must skip it."""
    notify = (
        b"NOTIFY sip:a@x SIP/2.0\r\nCall-ID: n\r\nCSeq: 2 NOTIFY\r\nContent-Type: message/sipfrag\r\n"
        b"Content-Length: 16\r\n\r\nSIP/2.0 200 OK\r\n"
    )
    invite = sip_message(0, 50)
    stream = notify + invite
    start = notify.index(b"Content-Type")  # capture starts inside the NOTIFY's headers
    reassembler = SipTcpReassembler()
    out = feed_all(reassembler, segments(stream[start:], [20, 90], isn=5, syn=False))
    assert [m for _, m in out] == [invite]
    assert not reassembler.errors


def test_lost_segment_gap_is_skipped_after_timeout() -> None:
    msgs = [sip_message(i, 200) for i in range(6)]
    stream = b"".join(msgs)
    offsets = [sum(map(len, msgs[:i])) for i in range(7)]
    cuts = sorted({*range(100, len(stream), 150), *offsets})
    segs = segments(stream, cuts, isn=1000)
    lost_at = offsets[2] + 160  # inside message 2
    lost = next(s for s in segs[1:] if seq_delta(s.seq, 1001) <= lost_at < seq_delta(s.seq, 1001) + len(s.payload))
    reassembler = SipTcpReassembler(gap_timeout_s=5.0)
    got: list[bytes] = []
    for seg in segs:
        if seg is not lost:
            got += [m for _, m in reassembler.feed(seg)]
    assert got == msgs[:2]  # everything after the hole waits
    assert reassembler.buffered_bytes > 0
    late = Segment(segs[-1].ts + 6.0, 6, *CLIENT, *SERVER, b"", segs[-1].seq, ACK)
    got += [m for _, m in reassembler.feed(late)]
    assert got == msgs[:2] + msgs[3:]  # message 2 is lost, framing resynchronised after it
    assert reassembler.errors == {"tcp.gap": 1}
    assert reassembler.buffered_bytes == 0


def test_gap_is_skipped_when_buffered_data_exceeds_max_buffer() -> None:
    msgs = [sip_message(i, 300) for i in range(20)]
    stream = b"".join(msgs)
    segs = segments(stream, list(range(200, len(stream), 200)), isn=1)
    reassembler = SipTcpReassembler(max_buffer=3000)
    got: list[bytes] = []
    for seg in segs:
        if seg is not segs[3]:  # lose stream bytes 400..600; no time passes
            got += [m for _, m in reassembler.feed(seg)]
        assert reassembler.buffered_bytes <= 3000 + 200
    assert reassembler.errors["tcp.gap"] == 1
    starts = [sum(map(len, msgs[:i])) for i in range(len(msgs))]
    assert starts[1] < 600 < starts[2]  # the hole cuts messages 0 and 1
    assert got == msgs[2:]


def test_segment_far_outside_the_window_restarts_the_stream() -> None:
    """A bogus (or hugely displaced) segment must not derail the flow for good."""
    msgs = [sip_message(i, 100) for i in range(8)]
    stream = b"".join(msgs)
    segs = segments(stream, list(range(100, len(stream), 100)), isn=1)
    bogus = Segment(segs[5].ts, 6, *CLIENT, *SERVER, b"garbage" * 10, 1 + 50_000_000, ACK)
    reassembler = SipTcpReassembler(max_buffer=10_000)
    out = feed_all(reassembler, [*segs[:5], bogus, *segs[5:]])
    starts = [sum(map(len, msgs[:i])) for i in range(len(msgs))]
    in_progress = max(i for i, start in enumerate(starts) if start < 400)  # cut by the detour
    assert [m for _, m in out] == msgs[:in_progress] + msgs[in_progress + 1 :]
    assert reassembler.errors == {"tcp.gap": 2}  # there and back


def test_missing_content_length_is_counted_and_resynced() -> None:
    good = sip_message(0, 30)
    bad = b"OPTIONS sip:x@y SIP/2.0\r\nCall-ID: nolen\r\nCSeq: 1 OPTIONS\r\n\r\n"
    later = sip_message(1, 30)
    reassembler = SipTcpReassembler()
    out = feed_all(reassembler, segments(good + bad + later, [5, 70, 140], isn=3))
    assert [m for _, m in out] == [good, later]
    assert reassembler.errors == {"sip_tcp.missing_content_length": 1}


# -- end of flow, limits ----------------------------------------------------------------------


def test_fin_ends_the_flow_and_rst_drops_it() -> None:
    msg = sip_message(0, 20)
    segs = segments(msg + msg[:30], [len(msg)], isn=50)
    fin_seq = (51 + len(msg) + 30) % (1 << 32)
    reassembler = SipTcpReassembler()
    out = feed_all(reassembler, [*segs, Segment(101.0, 6, *CLIENT, *SERVER, b"", fin_seq, FIN | ACK)])
    assert [m for _, m in out] == [msg]
    assert reassembler.errors == {"sip_tcp.incomplete_message": 1}  # the half message at FIN
    # Retransmitted data after FIN does not produce messages again.
    assert feed_all(reassembler, segs[1:]) == []
    # A new connection on the same 4-tuple starts afresh.
    assert [m for _, m in feed_all(reassembler, segments(msg, [], isn=9000))] == [msg]
    # RST: the flow is gone, half a message with it.
    reassembler.feed(segments(msg, [40], isn=7)[0])
    reassembler.feed(segments(msg, [40], isn=7)[1])
    reassembler.feed(Segment(102.0, 6, *CLIENT, *SERVER, b"", 48, RST))
    assert len(reassembler) == 0 and reassembler.buffered_bytes == 0


def test_idle_flows_expire() -> None:
    reassembler = SipTcpReassembler(idle_timeout_s=600.0)
    reassembler.feed(segments(sip_message(0, 10), [30], isn=1)[1])  # mid-stream, partial
    reassembler.feed(segments(sip_message(0), [], isn=1, src=("10.0.0.9", 1))[0])
    assert len(reassembler) == 2
    reassembler.expire(100.0 + 599.0)
    assert len(reassembler) == 2
    reassembler.expire(100.0 + 601.0)
    assert len(reassembler) == 0 and reassembler.buffered_bytes == 0


def test_non_sip_stream_is_skipped_quietly_with_bounded_memory() -> None:
    rng = random.Random(9)
    junk = rng.randbytes(3_000_000)  # binary, no header block end in sight
    http = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 50
    reassembler = SipTcpReassembler()
    for stream, isn in ((junk, 1), (http, 2)):
        segs = segments(stream, list(range(1400, len(stream), 1400)), isn=isn, src=("10.9.9.9", isn))
        for seg in segs:
            assert reassembler.feed(seg) == []
            assert reassembler.buffered_bytes <= MAX_HEADER_BYTES + 1400
    assert not reassembler.errors


def test_out_of_order_memory_is_bounded() -> None:
    reassembler = SipTcpReassembler(max_buffer=100_000)
    reassembler.feed(Segment(1.0, 6, *CLIENT, *SERVER, b"", 0, SYN))
    for i in range(1, 2000):  # segment 0 never comes: everything is out of order
        reassembler.feed(Segment(1.0, 6, *CLIENT, *SERVER, b"x" * 1000, 1 + i * 1000, ACK))
        assert reassembler.buffered_bytes <= 100_000 + 1000


# -- real capture -----------------------------------------------------------------------------


def _decoded_tcp(path: Path) -> list[Segment]:
    decoder = PacketDecoder()
    return [
        seg
        for batch in read_batches(path)
        for ts, frame in batch.iter_frames()
        if (seg := decoder.decode(batch.linktype, ts, frame)) is not None and seg.proto == 6
    ]


def test_sip_over_tcp_capture_matches_tshark() -> None:
    path = CORPUS / "sip_over_tcp_pcma_cn.pcap"
    out = subprocess.run(
        ["tshark", "-r", str(path), "-Y", "sip", "-T", "fields", "-e", "frame.time_epoch", "-e", "sip.CSeq", "-e", "sip.Call-ID"],
        capture_output=True, text=True, check=True,
    ).stdout
    expected = [line.split("\t") for line in out.splitlines()]
    reassembler = SipTcpReassembler()
    got = feed_all(reassembler, _decoded_tcp(path))
    assert len(got) == len(expected) == 7
    for (ts, msg), (t_ts, cseq, call_id) in zip(got, expected, strict=True):
        assert abs(ts - float(t_ts)) < 1e-6
        assert f"\r\nCSeq: {cseq}\r\n".encode() in msg
        assert f"\r\nCall-ID: {call_id}\r\n".encode() in msg
    assert not reassembler.errors

    # The same streams cut into random pieces and delivered out of order give the same messages.
    rng = random.Random(11)
    resegmented: list[Segment] = []
    for seg in _decoded_tcp(path):
        if not seg.payload:
            resegmented.append(seg)
            continue
        pieces = segments(seg.payload, random_cuts(len(seg.payload), rng, 6), isn=(seg.seq - 1) % (1 << 32),
                          ts0=seg.ts, syn=False, src=(seg.src, seg.sport), dst=(seg.dst, seg.dport))
        rng.shuffle(pieces)
        resegmented += [Segment(seg.ts, 6, p.src, p.sport, p.dst, p.dport, p.payload, p.seq, seg.flags) for p in pieces]
    again = feed_all(SipTcpReassembler(), resegmented)
    assert again == got
