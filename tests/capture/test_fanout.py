"""Fanout over worker processes (capture/fanout.py): the kernel programs, call ownership, and
two engines splitting a capture the way the kernel splits live traffic.

The classic BPF programs are run by a small interpreter here (the instructions the programs
use, with the kernel's semantics: a load past the end of the packet returns 0) on crafted
frames, and once on the real kernel (a fanout group on lo, test at the end).
"""

from __future__ import annotations

import os
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from capture.afpacket import NEW_FANOUT_GROUP, LiveCapture, RingSettings
from capture.bpf import DEFAULT_FILTER, compile_filter
from capture.dialogs import Call, DialogTracker
from capture.engine import CaptureEngine, EngineSettings
from capture.fanout import (
    FanoutRouter,
    TimeOrderedPool,
    accept_everything,
    call_id_worker,
    decode_frames,
    encode_frames,
    fanout_program,
    landing_worker,
    media_class_filter,
    take_frames,
)
from capture.pcapio import LINKTYPE_ETHERNET, LINKTYPE_RAW, FrameBatch, merge_batches, read_batches
from capture.sip import parse_sip
from tests.gen.callgen import CallPlan, Reinvite, write_capture
from tests.gen.netframes import FrameBuilder, LinkPath
from tests.gen.sipmsg import Dialog, SdpOffer

Instruction = tuple[int, int, int, int]
SKF_AD_OFF = -0x1000
PACKET_HOST, PACKET_OUTGOING = 0, 4
ETHERTYPES = {0x0800, 0x86DD, 0x8100, 0x88A8}


# -- a classic BPF interpreter (linux/filter.h semantics, the subset the programs use) ---------

def run_bpf(program: list[Instruction], packet: bytes, *, protocol: int = 0, pkttype: int = PACKET_HOST) -> int:
    a = x = 0
    memory = [0] * 16
    pc = 0
    for _ in range(10_000):
        code, jt, jf, k = program[pc]
        pc += 1
        cls, size, mode = code & 0x07, code & 0x18, code & 0xE0
        if cls in (0x00, 0x01):                                  # BPF_LD, BPF_LDX
            if cls == 0x01 and mode == 0xA0:                     # ldxb 4*([k]&0xf)
                if k >= len(packet):
                    return 0
                x = 4 * (packet[k] & 0x0F)
                continue
            if mode in (0x20, 0x40):                             # absolute, indirect
                offset = (k - (1 << 32) if k >= 1 << 31 else k) + (x if mode == 0x40 else 0)
                if offset < 0:
                    value = {0: protocol, 4: pkttype}[offset - SKF_AD_OFF]
                else:
                    width = {0x00: 4, 0x08: 2, 0x10: 1}[size]
                    if offset + width > len(packet):
                        return 0
                    value = int.from_bytes(packet[offset:offset + width], "big")
            elif mode == 0x60:
                value = memory[k]
            else:
                value = k
            if cls == 0x00:
                a = value
            else:
                x = value
        elif cls == 0x02:
            memory[k] = a
        elif cls == 0x04:                                        # BPF_ALU
            operand = x if code & 0x08 else k
            op = code & 0xF0
            if op == 0x90 and operand == 0:
                return 0
            a = {0x00: a + operand, 0x20: a * operand, 0x50: a & operand, 0x70: a >> operand,
                 0x90: a % max(operand, 1)}[op] & 0xFFFFFFFF
        elif cls == 0x05:                                        # BPF_JMP
            op = code & 0xF0
            if op == 0x00:
                pc += k
                continue
            taken = {0x10: a == k, 0x20: a > k, 0x30: a >= k, 0x40: bool(a & k)}[op]
            pc += jt if taken else jf
        elif cls == 0x06:                                        # BPF_RET
            return a if code & 0x18 == 0x10 else k
        else:
            raise AssertionError(f"instruction {code:#x} not interpreted")
    raise AssertionError("BPF program did not end")


# -- crafted frames ------------------------------------------------------------------------------

RTP = struct.pack("!BBHII", 0x80, 0, 1, 160, 0x1234) + bytes(160)
SIP = b"INVITE sip:2002@10.0.0.2 SIP/2.0\r\nCall-ID: x\r\n\r\n"


def udp_frame(src: str, dst: str, sport: int, dport: int, payload: bytes, vlan: int | None = None) -> bytes:
    return FrameBuilder().udp(LinkPath(src, dst, vlan), sport, dport, payload)


def with_ip_options(frame: bytes) -> bytes:
    """The same IPv4 frame with a 4-byte options field (IHL 6)."""
    ip = bytearray(frame[14:34])
    ip[0] = 0x46
    struct.pack_into("!H", ip, 2, struct.unpack_from("!H", ip, 2)[0] + 4)
    return frame[:14] + bytes(ip) + b"\x01\x01\x01\x00" + frame[34:]


def as_fragment(frame: bytes) -> bytes:
    ip = bytearray(frame[14:34])
    struct.pack_into("!H", ip, 6, 0x2000)      # MF set
    return frame[:14] + bytes(ip) + frame[34:]


def incoming(frame: bytes) -> tuple[bytes, int]:
    """What the fanout program sees of a received frame: from the network header on, the
    EtherType in skb->protocol (for an in-frame VLAN tag: the TPID, data from the TCI)."""
    return frame[14:], struct.unpack_from("!H", frame, 12)[0]


# -- the demux program -----------------------------------------------------------------------------

@pytest.mark.parametrize("workers", [2, 3, 5])
@pytest.mark.parametrize("shape", ["ipv4", "ipv4-options", "ipv6", "inner-vlan", "ipv6-inner-vlan"])
def test_the_demux_program_picks_the_landing_worker_of_the_port_sum(workers: int, shape: str) -> None:
    program = fanout_program(workers)
    for sport, dport in [(40000, 50000), (40000, 50001), (5060, 5062), (65535, 65535), (1, 2)]:
        src, dst = ("2001:db8::1", "2001:db8::2") if "ipv6" in shape else ("10.0.0.1", "10.0.0.2")
        frame = udp_frame(src, dst, sport, dport, RTP, vlan=7 if "vlan" in shape else None)
        if shape == "ipv4-options":
            frame = with_ip_options(frame)
        data, protocol = incoming(frame)
        expected = ((((sport + dport) * 0x9E3779B1) & 0xFFFFFFFF) >> 16) % workers
        assert run_bpf(program, data, protocol=protocol) == landing_worker(sport, dport, workers) == expected
        # both directions of a flow land on the same worker
        back, _ = incoming(udp_frame(dst, src, dport, sport, RTP, vlan=7 if "vlan" in shape else None))
        assert run_bpf(program, back, protocol=protocol) == run_bpf(program, data, protocol=protocol)
        # outgoing packets reach the program from their Ethernet header
        assert run_bpf(program, frame, pkttype=PACKET_OUTGOING) == expected


@pytest.mark.parametrize("workers", [2, 4])
@pytest.mark.parametrize("step", [2, 4])
def test_even_rtp_ports_handed_out_in_steps_spread_over_every_worker(workers: int, step: int) -> None:
    """RTP ports are even and PBXs hand them out in steps: the landing workers of 200 calls
    between a phone range and one gateway port must use every worker, none with more than
    twice its share."""
    landed = Counter(landing_worker(20000 + step * i, 30000, workers) for i in range(200))
    assert set(landed) == set(range(workers)) and max(landed.values()) <= 2 * 200 / workers, landed


def test_the_demux_program_sends_what_is_not_plain_udp_to_worker_0() -> None:
    program = fanout_program(4)
    udp = udp_frame("10.0.0.1", "10.0.0.2", 40001, 50002, RTP)
    assert run_bpf(program, *incoming(udp)[:1], protocol=0x0800) == landing_worker(40001, 50002, 4)
    tcp = FrameBuilder().tcp(LinkPath("10.0.0.1", "10.0.0.2"), 40001, 50002, 1, 1, 0x18, SIP)
    assert run_bpf(program, tcp[14:], protocol=0x0800) == 0
    assert run_bpf(program, as_fragment(udp)[14:], protocol=0x0800) == 0
    assert run_bpf(program, udp[14:], protocol=0x0806) == 0           # ARP
    assert run_bpf(program, udp[14:30], protocol=0x0800) == 0         # cut short: the load fails
    raw = fanout_program(4, LINKTYPE_RAW)                              # tun: no link header either way
    assert run_bpf(raw, udp[14:], protocol=0x0800, pkttype=PACKET_OUTGOING) == landing_worker(40001, 50002, 4)


def test_fanout_program_refuses_a_worker_count_it_cannot_serve() -> None:
    with pytest.raises(ValueError, match="2..64 workers"):
        fanout_program(1)


# -- media and signalling filters ------------------------------------------------------------------

def classify(program: list[Instruction], frame: bytes) -> bool:
    return run_bpf(program, frame) > 0


def crafted_frames() -> dict[str, tuple[bytes, bool]]:
    """name -> (frame, is media)."""
    builder = FrameBuilder()
    rtcp = struct.pack("!BBHI", 0x81, 200, 6, 0x1234) + bytes(20)
    return {
        "rtp": (udp_frame("10.0.0.1", "10.0.0.2", 40000, 50000, RTP), True),
        "rtcp": (udp_frame("10.0.0.1", "10.0.0.2", 40001, 50001, rtcp), True),
        "rtp ip options": (with_ip_options(udp_frame("10.0.0.1", "10.0.0.2", 40000, 50000, RTP)), True),
        "rtp ipv6": (udp_frame("2001:db8::1", "2001:db8::2", 40000, 50000, RTP), True),
        "rtp inner vlan": (udp_frame("10.0.0.1", "10.0.0.2", 40000, 50000, RTP, vlan=12), True),
        "sip udp": (udp_frame("10.0.0.1", "10.0.0.2", 5060, 5060, SIP), False),
        "sip ipv6": (udp_frame("2001:db8::1", "2001:db8::2", 5060, 5060, SIP), False),
        "sip inner vlan": (udp_frame("10.0.0.1", "10.0.0.2", 5060, 5060, SIP, vlan=12), False),
        "sip tcp": (builder.tcp(LinkPath("10.0.0.1", "10.0.0.2"), 5060, 5060, 1, 1, 0x18, SIP), False),
        "fragment": (as_fragment(udp_frame("10.0.0.1", "10.0.0.2", 5060, 5060, SIP + bytes(100))), False),
        "zrtp": (udp_frame("10.0.0.1", "10.0.0.2", 40000, 50000, b"\x10\x00\x00\x01ZRTP" + bytes(20)), False),
        "vxlan": (udp_frame("10.0.0.1", "10.0.0.2", 4789, 4789, b"\x08" + bytes(7) + RTP), False),
    }


@pytest.mark.parametrize("user_filter", [None, DEFAULT_FILTER, "udp or tcp port 5060"])
def test_media_and_signalling_filters_split_exactly(user_filter: str | None) -> None:
    program = accept_everything() if user_filter is None else compile_filter(user_filter)
    media = media_class_filter(program, media=True)
    signalling = media_class_filter(program, media=False)
    for name, (frame, is_media) in crafted_frames().items():
        wanted = classify(program, frame)
        assert wanted or user_filter == "udp or tcp port 5060", name     # the default keeps all of them
        assert classify(media, frame) == (wanted and is_media), name
        assert classify(signalling, frame) == (wanted and not is_media), name


def test_what_the_capture_filter_refuses_reaches_neither_socket() -> None:
    program = compile_filter("udp and host 10.9.9.9")
    for name, (frame, _) in crafted_frames().items():
        for media in (True, False):
            assert not classify(media_class_filter(program, media=media), frame), name


def test_raw_ip_links_are_classified_from_the_ip_header() -> None:
    for name, (frame, is_media) in crafted_frames().items():
        if struct.unpack_from("!H", frame, 12)[0] in (0x0800, 0x86DD):
            assert classify(media_class_filter(accept_everything(), media=True, linktype=LINKTYPE_RAW),
                            frame[14:]) == is_media, name


# -- ownership ---------------------------------------------------------------------------------------

class Signalling:
    """A call's SIP through a DialogTracker and a router, message by message."""

    def __init__(self, worker: int, workers: int, call_id: str = "owner-test@10.0.0.1") -> None:
        self.tracker = DialogTracker()
        self.router = FanoutRouter(worker, workers, send=lambda *_: None)
        self.dialog = Dialog.create(call_id, ("1001", "10.0.0.1", 5060), ("2002", "10.0.0.2", 5060), "UDP",
                                    np.random.default_rng(1))
        self.ts = 1000.0

    def apply(self, message: Any) -> Call | None:
        self.ts += 0.01
        parsed = parse_sip(message.data)
        call = self.tracker.on_message(parsed, self.ts, ("10.0.0.1", 5060), ("10.0.0.2", 5060))
        if call is not None:
            self.router.on_signalling(call, parsed)
        return call

    def call(self) -> Call:
        return next(iter(self.tracker.calls.values()))


def test_the_owner_is_fixed_by_the_first_offer_and_answer_ports() -> None:
    s = Signalling(0, 3)
    invite = s.dialog.request("INVITE", "caller", SdpOffer(40000, ["pcmu"]), in_dialog=False)
    call = s.apply(invite)
    assert call is not None and s.router.owner(call) is None        # only the offer: not fixed yet
    s.apply(s.dialog.response(invite, 183, SdpOffer(50002, ["pcmu"])))
    assert s.router.owner(call) == landing_worker(40000, 50002, 3)
    assert call.media_elsewhere == (s.router.owner(call) != 0)
    s.apply(s.dialog.response(invite, 200, SdpOffer(50002, ["pcmu"])))
    reinvite = s.dialog.request("INVITE", "caller", SdpOffer(41001, ["pcmu"]))
    s.apply(reinvite)
    s.apply(s.dialog.response(reinvite, 200, SdpOffer(51000, ["pcmu"])))
    assert s.router.owner(call) == landing_worker(40000, 50002, 3)     # moved media, same owner
    assert s.router.records(call) == (s.router.worker == landing_worker(40000, 50002, 3))


def test_a_late_offer_is_fixed_at_the_ack_that_carries_the_answer() -> None:
    s = Signalling(1, 2)
    invite = s.dialog.request("INVITE", "caller", None, in_dialog=False)
    call = s.apply(invite)
    ok = s.dialog.response(invite, 200, SdpOffer(50001, ["pcma"]))
    s.apply(ok)
    assert call is not None and s.router.owner(call) is None
    ack = s.dialog.request("ACK", "caller", SdpOffer(40002, ["pcma"]), cseq=1)
    s.apply(ack)
    assert s.router.owner(call) == landing_worker(40002, 50001, 2)


def test_a_call_answered_without_both_ports_falls_back_to_its_call_id() -> None:
    s = Signalling(0, 4, "no-answer-sdp@10.0.0.1")
    invite = s.dialog.request("INVITE", "caller", SdpOffer(40000, ["pcmu"]), in_dialog=False)
    call = s.apply(invite)
    ok = s.dialog.response(invite, 200, None)
    s.apply(ok)
    assert call is not None and s.router.owner(call) is None
    s.apply(s.dialog.ack(invite, ok))
    assert s.router.owner(call) == call_id_worker("no-answer-sdp@10.0.0.1", 4)


def test_a_call_without_media_is_listed_by_exactly_one_worker() -> None:
    owners = []
    for worker in range(3):
        s = Signalling(worker, 3, "cancelled@10.0.0.1")
        invite = s.dialog.request("INVITE", "caller", None, in_dialog=False)
        call = s.apply(invite)
        s.apply(s.dialog.cancel(invite))
        assert call is not None and call.ended
        owners.append(s.router.records(call))
    assert owners.count(True) == 1
    assert owners.index(True) == call_id_worker("cancelled@10.0.0.1", 3)


# -- frames between workers ----------------------------------------------------------------------------

def frames_of(*items: tuple[float, bytes]) -> FrameBatch:
    batches = []
    for ts, data in items:
        batches.append(FrameBatch(LINKTYPE_ETHERNET, data, np.array([0]), np.array([len(data)]), np.array([ts])))
    return merge_batches(batches)


def test_frames_survive_the_trip_between_workers_in_bounded_messages() -> None:
    batch = frames_of(*((100.0 + i / 50, bytes([i % 256]) * (60 + i)) for i in range(300)))
    messages = encode_frames(batch, 4096)
    assert len(messages) > 1 and all(len(m) <= 4096 for m in messages)
    back = merge_batches([decode_frames(m) for m in messages])
    assert back.ts.tolist() == batch.ts.tolist()
    assert [bytes(back.frame(i)) for i in range(len(back))] == [bytes(batch.frame(i)) for i in range(len(batch))]
    with pytest.raises(ValueError):
        decode_frames(b"RDXX" + bytes(20))


def test_the_pool_releases_in_capture_time_order_up_to_the_cutoff() -> None:
    pool = TimeOrderedPool()
    pool.add(frames_of((1.0, b"m1"), (1.2, b"m2"), (1.4, b"m3")), True)
    pool.add(frames_of((1.1, b"s1"), (1.3, b"s2")), False)
    (batch, flags), = pool.release(1.25)
    assert [bytes(batch.frame(i)) for i in range(len(batch))] == [b"m1", b"s1", b"m2"]
    assert flags.tolist() == [True, False, True]
    pool.add(frames_of((1.35, b"p1")), False)
    (batch, flags), = pool.release(2.0)
    assert [bytes(batch.frame(i)) for i in range(len(batch))] == [b"s2", b"p1", b"m3"]
    assert pool.release(3.0) == [] and pool.frames == 0


def test_take_frames_copies_just_the_rows() -> None:
    batch = frames_of((1.0, b"aaa"), (2.0, b"bb"), (3.0, b"c"))
    part = take_frames(batch, np.array([2, 0]))
    assert part.buf == b"caaa" and part.ts.tolist() == [3.0, 1.0]


# -- two engines, split as the kernel splits -----------------------------------------------------------

class MemorySink:
    def __init__(self) -> None:
        self.recordings: dict[str, tuple[dict[str, Any], np.ndarray]] = {}
        self.not_recorded_rows: list[dict[str, Any]] = []

    def open(self, call: Call, rate: int, started_at: float) -> dict[str, Any]:
        return {"chunks": []}

    def write(self, handle: dict[str, Any], frames: np.ndarray) -> None:
        handle["chunks"].append(frames.copy())

    def change_rate(self, handle: dict[str, Any], new_rate: int) -> None:
        raise AssertionError("narrowband only here")

    def close(self, handle: dict[str, Any], metadata: dict[str, Any]) -> None:
        audio = np.concatenate(handle["chunks"]) if handle["chunks"] else np.zeros((0, 2), np.int16)
        self.recordings[metadata["call_id"]] = (metadata, audio)

    def discard(self, handle: dict[str, Any]) -> None:
        pass

    def not_recorded(self, metadata: dict[str, Any]) -> None:
        self.not_recorded_rows.append(metadata)


def outbox_sender(box: list[tuple[int, FrameBatch]]) -> Callable[[int, FrameBatch], None]:
    def send(target: int, frames: FrameBatch) -> None:
        box.append((target, frames))
    return send


def split_like_the_kernel(batch: FrameBatch, workers: int) -> list[tuple[FrameBatch, np.ndarray]]:
    """Each worker's frames with their forwardable flags, by running the socket filters and
    the demux program on every frame: media to the worker the program picks, the rest to all."""
    media_filter = media_class_filter(accept_everything(), media=True)
    demux = fanout_program(workers)
    media = np.array([classify(media_filter, bytes(batch.frame(i))) for i in range(len(batch))])
    landing = np.array([run_bpf(demux, *incoming(bytes(batch.frame(i)))[:1],
                                protocol=incoming(bytes(batch.frame(i)))[1]) for i in range(len(batch))])
    out = []
    for w in range(workers):
        rows = np.flatnonzero(~media | (landing == w))
        out.append((take_frames(batch, rows), media[rows]))
    return out


def test_two_engines_record_every_call_once_as_one_engine_does(tmp_path: Path) -> None:
    t0 = 1_700_000_000.0
    owner, moved = landing_worker(40020, 50020, 2), landing_worker(41000, 51001, 2)
    assert owner != moved and {landing_worker(40000, 50000, 2), landing_worker(40010, 50011, 2)} == {0, 1}
    plans = [
        CallPlan("first@a", t0, 3.0, caller_port=40000, callee_port=50000),
        CallPlan("second@a", t0 + 0.1, 3.0, caller_port=40010, callee_port=50011),
        CallPlan("moves@a", t0 + 0.2, 3.0, caller_port=40020, callee_port=50020,          # its media moves
                 reinvite=Reinvite(1.0, 41000, 51001, "pcma")),                            # to the other worker
        CallPlan("v6@a", t0 + 0.3, 3.0, caller_ip="2001:db8::1", callee_ip="2001:db8::2",
                 caller_port=42000, callee_port=52001),
        CallPlan("early@a", t0 + 0.4, 3.0, caller_port=43002, callee_port=53001, early_media_s=0.5),
        CallPlan("cancelled@a", t0 + 0.5, 1.0, caller_port=44000, callee_port=54001, ends_with="cancel"),
    ]
    truth = write_capture(str(tmp_path / "calls.pcap"), plans, seed=3)
    whole = merge_batches([b for b in read_batches(tmp_path / "calls.pcap") if len(b)])
    settings = EngineSettings()

    reference = MemorySink()
    single = CaptureEngine(reference, settings)
    single.feed(whole)
    single.finish()

    sinks = [MemorySink(), MemorySink()]
    outboxes: list[list[tuple[int, FrameBatch]]] = [[], []]
    routers = [FanoutRouter(w, 2, send=outbox_sender(outboxes[w])) for w in range(2)]
    engines = [CaptureEngine(sinks[w], settings, router=routers[w]) for w in range(2)]
    pools = [TimeOrderedPool(), TimeOrderedPool()]
    for w, (frames, flags) in enumerate(split_like_the_kernel(whole, 2)):
        pools[w].add(frames, flags)
    cutoff = float(whole.ts.min())
    while cutoff < float(whole.ts.max()) + 1.0:       # 0.2 s batches, forwarded media one batch late
        cutoff += 0.2
        for w, engine in enumerate(engines):
            for held, flags in routers[w].take_held(engine.now):
                pools[w].add(held, flags)
            for batch, flags in pools[w].release(cutoff):
                engine.feed(batch, flags)
        for w in range(2):
            for target, frames in outboxes[w]:
                pools[target].add(frames, False)
            outboxes[w].clear()
    for engine in engines:
        engine.finish()

    recorded = Counter(cid for sink in sinks for cid in sink.recordings)
    assert recorded == Counter(list(reference.recordings))             # every call once
    assert set(recorded) == {cid for cid, t in truth.calls.items() if t.recorded}
    assert all(sink.recordings for sink in sinks), "both workers record calls"
    listed = [row["call_id"] for sink in sinks for row in sink.not_recorded_rows]
    assert sorted(listed) == sorted(row["call_id"] for row in reference.not_recorded_rows) == ["cancelled@a"]
    forwarded = [engine.counters["rtp_forwarded"] for engine in engines]
    assert forwarded[moved] > 100 and forwarded[owner] == 0, forwarded   # the re-INVITEd call's media
    for sink in sinks:
        for cid, (meta, audio) in sink.recordings.items():
            ref_meta, ref_audio = reference.recordings[cid]
            assert meta["duration_s"] == ref_meta["duration_s"], cid
            assert abs(meta["duration_s"] - truth.calls[cid].duration_s) < 0.03, cid
            assert [leg["received"] for leg in meta["completeness"]["legs"]] == \
                [leg["received"] for leg in ref_meta["completeness"]["legs"]], cid
            assert np.array_equal(audio, ref_audio), cid


# -- the real kernel ------------------------------------------------------------------------------------

def test_the_kernel_spreads_media_by_port_sum_and_gives_signalling_to_every_worker() -> None:
    if os.geteuid() != 0:
        raise AssertionError("needs root (AF_PACKET): the test suite runs as root")
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    port = receiver.getsockname()[1]
    ring = RingSettings(block_size=1 << 16, block_count=8, retire_timeout_ms=20)
    program = compile_filter(f"udp and dst port {port}")
    media = [LiveCapture("lo", bpf=media_class_filter(program, media=True), ring=ring,
                         fanout_group=NEW_FANOUT_GROUP, fanout_mode="cbpf", fanout_program=fanout_program(2))]
    media.append(LiveCapture("lo", bpf=media_class_filter(program, media=True), ring=ring,
                             fanout_group=media[0].fanout_group, fanout_mode="cbpf"))
    signalling = [LiveCapture("lo", bpf=media_class_filter(program, media=False), ring=ring) for _ in range(2)]
    # worker 0 reads its ring through a descriptor handed over, as a worker process does
    readers = [LiveCapture.attach(os.dup(media[0].fileno()), "lo", linktype=media[0].linktype, ring=ring),
               media[1]]
    senders = []
    try:
        for _ in range(8):
            sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sender.bind(("127.0.0.1", 0))
            senders.append(sender)
            sender.sendto(RTP, ("127.0.0.1", port))
            sender.sendto(SIP, ("127.0.0.1", port))
        expected = [sorted(s.getsockname()[1] for s in senders if landing_worker(s.getsockname()[1], port, 2) == w)
                    for w in range(2)]
        got = [source_ports(r, len(expected[w])) for w, r in enumerate(readers)]
        assert [sorted(p for p, first in g) for g in got] == expected
        assert all(first == 0x80 for g in got for _, first in g)       # no SIP on the media sockets
        for capture in signalling:
            assert sorted(source_ports(capture, len(senders))) == sorted((s.getsockname()[1], SIP[0]) for s in senders)
    finally:
        for capture in readers[:1] + media + signalling:
            capture.close()
        for sock in senders + [receiver]:
            sock.close()


def source_ports(capture: LiveCapture, want: int, timeout_s: float = 3.0) -> list[tuple[int, int]]:
    """(UDP source port, first payload byte) of the frames read within `timeout_s`."""
    seen: list[tuple[int, int]] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and len(seen) < want:
        batch = capture.poll_once(0.05)
        if batch is None:
            continue
        for _, frame in batch.iter_frames():
            seen.append((int.from_bytes(frame[34:36], "big"), frame[42]))
    return seen
