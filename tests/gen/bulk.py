"""Fast bulk G.711 capture for the replay benchmark (~1.2 M packets in a few seconds).

RTP frames are built with numpy: one 230-byte record template per stream (pcap record header,
Ethernet, IPv4, UDP, RTP, 160-byte payload); per-packet fields (timestamps, IP id and header
checksum, marker, sequence number, RTP timestamp, payload from a pre-encoded 100 ms tone loop)
are written column-wise. Each call also has its full SIP dialog (INVITE, 100, 180, 200, ACK,
BYE, 200), built by the same code as the scenario generator and merged in time order.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

import numpy as np

from tests.gen.media import PTIME_S, TS_PER_PACKET, codec_spec, tone_payloads
from tests.gen.netframes import (
    ETHERTYPE_IPV4,
    IPPROTO_UDP,
    PCAP_RECORD_HEADER,
    FrameBuilder,
    LinkPath,
    ethernet_header,
    pcap_record,
    write_pcap_header,
)
from tests.gen.sipmsg import Dialog, SdpOffer

_PAYLOAD = 160                               # G.711, 20 ms
_LOOP_PACKETS = 5                            # 100 ms loop: 44 cycles of 440 Hz, 100 of 1000 Hz
_ETH, _IP, _UDP, _RTP = 14, 20, 8, 12
_FRAME = _ETH + _IP + _UDP + _RTP + _PAYLOAD
_REC = PCAP_RECORD_HEADER.size + _FRAME
_IP_OFF = PCAP_RECORD_HEADER.size + _ETH
_RTP_OFF = _IP_OFF + _IP + _UDP
_CHUNK_PACKETS = 1 << 16
_BASE_TS_US = 1_700_000_000 * 1_000_000
_RING_S = 0.5
_TONES = (440.0, 1000.0)                     # caller, callee
_LEG_START_S = (0.02, 0.01)                  # after the 200 OK: callee first, caller after its ACK


@dataclass(slots=True)
class BulkTruth:
    """What the bulk capture contains."""

    path: str
    call_ids: list[str]
    seconds: float
    concurrency: int
    packets_per_stream: int
    frames: int = 0
    rtp_packets: int = 0
    sip_messages: int = 0
    ssrcs: list[int] = field(default_factory=list)       # two per call: caller leg, callee leg
    codecs: list[str] = field(default_factory=list)      # per call


@dataclass(slots=True)
class _Streams:
    """Per-stream constants, index = 2 * call + leg."""

    start_us: np.ndarray
    seq0: np.ndarray
    ts0: np.ndarray
    ssrc: np.ndarray
    payload_type: np.ndarray
    loop: np.ndarray            # row of the payload bank where this stream's loop starts
    templates: np.ndarray       # (streams, _REC) uint8
    ip_sum: np.ndarray          # one's-complement partial sum of the IPv4 header without id/checksum


def _addresses(slot: int) -> tuple[str, int, str, int]:
    """Caller phone (one IP per concurrent slot) and the trunk gateway (one IP, a port per slot)."""
    caller_ip = str(ipaddress.IPv4Address("10.1.0.0") + 1 + slot)
    return caller_ip, 20000 + 2 * (slot % 20000), "10.2.0.1", 30000 + 2 * (slot % 15000)


def _payload_bank() -> tuple[np.ndarray, dict[tuple[str, int], int]]:
    rows: list[bytes] = []
    index: dict[tuple[str, int], int] = {}
    for codec in ("pcmu", "pcma"):
        for leg, freq in enumerate(_TONES):
            index[(codec, leg)] = len(rows)
            rows += tone_payloads(codec, freq, 0, _LOOP_PACKETS)
    return np.frombuffer(b"".join(rows), dtype=np.uint8).reshape(-1, _PAYLOAD), index


def _template(src: tuple[str, int], dst: tuple[str, int], ssrc: int) -> bytes:
    ip_header = bytes([0x45, 0]) + (_FRAME - _ETH).to_bytes(2, "big") + b"\x00\x00\x40\x00" \
        + bytes([64, IPPROTO_UDP]) + b"\x00\x00" \
        + ipaddress.IPv4Address(src[0]).packed + ipaddress.IPv4Address(dst[0]).packed
    udp_header = src[1].to_bytes(2, "big") + dst[1].to_bytes(2, "big") \
        + (_UDP + _RTP + _PAYLOAD).to_bytes(2, "big") + b"\x00\x00"   # RFC 768: zero = no checksum
    rtp_header = b"\x80\x00" + b"\x00" * 6 + ssrc.to_bytes(4, "big")
    frame = ethernet_header(LinkPath(src[0], dst[0]), ETHERTYPE_IPV4) + ip_header + udp_header + rtp_header
    return PCAP_RECORD_HEADER.pack(0, 0, _FRAME, _FRAME) + frame + bytes(_PAYLOAD)


def _plan_streams(n_calls: int, seconds: float, concurrency: int, bank_index: dict[tuple[str, int], int],
                  rng: np.random.Generator) -> tuple[_Streams, np.ndarray, list[str]]:
    setup_us = np.round(rng.uniform(0, 1.0, n_calls) * 1e6).astype(np.int64)
    rounds = np.arange(n_calls) // concurrency
    start_us = _BASE_TS_US + rounds * int((seconds + 3.0) * 1e6) + setup_us
    codecs = ["pcmu" if i % 2 == 0 else "pcma" for i in range(n_calls)]
    n = 2 * n_calls
    streams = _Streams(
        start_us=np.repeat(start_us, 2) + int(_RING_S * 1e6)
        + np.tile(np.array(_LEG_START_S) * 1e6, n_calls).astype(np.int64),
        seq0=rng.integers(0, 1 << 16, n), ts0=rng.integers(0, 1 << 32, n, dtype=np.int64),
        ssrc=rng.integers(1, 1 << 32, n, dtype=np.int64),
        payload_type=np.array([codec_spec(codecs[s // 2]).payload_type for s in range(n)], dtype=np.uint8),
        loop=np.array([bank_index[(codecs[s // 2], s % 2)] for s in range(n)]),
        templates=np.zeros((n, _REC), dtype=np.uint8), ip_sum=np.zeros(n, dtype=np.int64))
    for s in range(n):
        caller_ip, caller_port, callee_ip, callee_port = _addresses((s // 2) % concurrency)
        ends = ((caller_ip, caller_port), (callee_ip, callee_port))
        src, dst = (ends[0], ends[1]) if s % 2 == 0 else (ends[1], ends[0])
        streams.templates[s] = np.frombuffer(_template(src, dst, int(streams.ssrc[s])), dtype=np.uint8)
        words = streams.templates[s, _IP_OFF:_IP_OFF + _IP].copy().view(">u2").astype(np.int64)
        streams.ip_sum[s] = int(words.sum())
    return streams, start_us, codecs


def _sip_records(n_calls: int, seconds: float, concurrency: int, start_us: np.ndarray, codecs: list[str],
                 seed: int) -> tuple[list[tuple[int, bytes]], list[str]]:
    """Every call's dialog as (µs timestamp, pcap record), sorted by time."""
    fb = FrameBuilder()
    records: list[tuple[int, bytes]] = []
    call_ids = []
    for i in range(n_calls):
        rng = np.random.default_rng([seed, i])
        caller_ip, caller_port, callee_ip, callee_port = _addresses(i % concurrency)
        call_id = f"bulk-{i:05d}-{int(rng.integers(1 << 40)):010x}@{caller_ip}"
        call_ids.append(call_id)
        dialog = Dialog.create(call_id, (f"1{i % concurrency:05d}", caller_ip, 5060),
                               (f"2{i:05d}", callee_ip, 5060), "UDP", rng)
        invite = dialog.request("INVITE", "caller", SdpOffer(caller_port, [codecs[i]]), in_dialog=False)
        ok = dialog.response(invite, 200, SdpOffer(callee_port, [codecs[i]]))
        bye = dialog.request("BYE", "caller")
        t0, answer = int(start_us[i]), int(start_us[i]) + int(_RING_S * 1e6)
        end = answer + int(seconds * 1e6) + 10_000
        timed = [(t0, invite), (t0 + 5_000, dialog.response(invite, 100)),
                 (t0 + 30_000, dialog.response(invite, 180)), (answer, ok),
                 (answer + 5_000, dialog.ack(invite, ok)), (end, bye), (end + 5_000, dialog.response(bye, 200))]
        for us, msg in timed:
            src, dst = (caller_ip, callee_ip) if msg.sender == "caller" else (callee_ip, caller_ip)
            records.append((us, pcap_record(us / 1e6, fb.udp(LinkPath(src, dst), 5060, 5060, msg.data))))
    records.sort(key=lambda r: r[0])
    return records, call_ids


def _fold(total: np.ndarray) -> np.ndarray:
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _put_be(rec: np.ndarray, offset: int, values: np.ndarray, width: int) -> None:
    rec[:, offset:offset + width] = values.astype(f">u{width}").view(np.uint8).reshape(-1, width)


def _put_le(rec: np.ndarray, offset: int, values: np.ndarray, width: int) -> None:
    rec[:, offset:offset + width] = values.astype(f"<u{width}").view(np.uint8).reshape(-1, width)


def _rtp_chunk(streams: _Streams, bank: np.ndarray, stream: np.ndarray, k: np.ndarray,
               us: np.ndarray) -> np.ndarray:
    """Complete pcap records (n, _REC) for packets k of the given streams at times ``us``."""
    rec = streams.templates[stream]
    _put_le(rec, 0, us // 1_000_000, 4)
    _put_le(rec, 4, us % 1_000_000, 4)
    ip_id = (streams.seq0[stream] + k) & 0xFFFF
    _put_be(rec, _IP_OFF + 4, ip_id, 2)
    _put_be(rec, _IP_OFF + 10, _fold(streams.ip_sum[stream] + ip_id), 2)
    rec[:, _RTP_OFF + 1] = streams.payload_type[stream] | np.where(k == 0, 0x80, 0).astype(np.uint8)
    _put_be(rec, _RTP_OFF + 2, (streams.seq0[stream] + k) & 0xFFFF, 2)
    _put_be(rec, _RTP_OFF + 4, (streams.ts0[stream] + k * TS_PER_PACKET) & 0xFFFFFFFF, 4)
    rec[:, _RTP_OFF + _RTP:] = bank[streams.loop[stream] + k % _LOOP_PACKETS]
    return rec


def write_bulk_g711(path: str, n_calls: int = 200, seconds: float = 60.0, concurrency: int = 200,
                    seed: int = 0) -> BulkTruth:
    """Write ``n_calls`` G.711 calls (PCMU and PCMA alternating) of ``seconds`` each.

    At most ``concurrency`` calls run at once: call i uses slot i % concurrency (its own caller
    IP and ports) and starts after the call that used the slot before it has ended, so ports are
    reused by later calls with a new Call-ID. Setups are spread over the first second of a round.
    """
    if n_calls < 1 or concurrency < 1:
        raise ValueError("n_calls and concurrency must be at least 1")
    rng = np.random.default_rng(seed)
    slots = max(1, round(seconds / PTIME_S) - 1)
    bank, bank_index = _payload_bank()
    streams, start_us, codecs = _plan_streams(n_calls, seconds, concurrency, bank_index, rng)
    sip, call_ids = _sip_records(n_calls, seconds, concurrency, start_us, codecs, seed)
    n_streams = 2 * n_calls
    stream_of = np.repeat(np.arange(n_streams, dtype=np.int64), slots)
    k_of = np.tile(np.arange(slots, dtype=np.int64), n_streams)
    us_of = streams.start_us[stream_of] + k_of * int(PTIME_S * 1e6)
    order = np.argsort(us_of, kind="stable")
    sip_us = np.array([r[0] for r in sip], dtype=np.int64)
    next_sip = 0
    with open(path, "wb") as out:
        write_pcap_header(out)
        for a in range(0, len(order), _CHUNK_PACKETS):
            sel = order[a:a + _CHUNK_PACKETS]
            us = us_of[sel]
            blob = _rtp_chunk(streams, bank, stream_of[sel], k_of[sel], us).tobytes()
            last = len(sip) if a + _CHUNK_PACKETS >= len(order) else int(np.searchsorted(sip_us, us[-1], "right"))
            positions = np.searchsorted(us, sip_us[next_sip:last], "right")
            done = 0
            for pos, (_, record) in zip(positions.tolist(), sip[next_sip:last], strict=True):
                out.write(blob[done * _REC:pos * _REC])
                out.write(record)
                done = pos
            out.write(blob[done * _REC:])
            next_sip = last
    truth = BulkTruth(str(path), call_ids, seconds, concurrency, slots, codecs=codecs)
    truth.rtp_packets = len(order)
    truth.sip_messages = len(sip)
    truth.frames = truth.rtp_packets + truth.sip_messages
    truth.ssrcs = [int(x) for x in streams.ssrc]
    return truth
