"""Live capture with AF_PACKET / TPACKET_V3, on real sockets.

Traffic stays on the loopback device or inside a network namespace each test creates and
removes (a veth pair whose two ends both live in the namespace).  Every loop is bounded in
count and time.  Needs root (CAP_NET_RAW, CAP_NET_ADMIN, `ip netns`).
"""

from __future__ import annotations

import ctypes
import json
import os
import socket
import struct
import subprocess
import threading
import time
import wave
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest

from capture.afpacket import (
    CaptureStats,
    LiveCapture,
    RingSettings,
    fanout_argument,
    interface_linktype,
    walk_block,
)
from capture.bpf import DEFAULT_FILTER, compile_filter
from capture.engine import CaptureEngine
from capture.pcapio import LINKTYPE_ETHERNET, FrameBatch, read_batches
from capture.wavsink import WavDirectorySink
from recorderd.replay import replay_files
from tests.gen.callgen import CallPlan, LegPlan, write_capture
from tests.support.audio import tone_energy

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
SMALL_RING = RingSettings(block_size=1 << 16, block_count=16, retire_timeout_ms=20)
ETH_HEADER = 14
IP_UDP_HEADERS = 28


# -- helpers ----------------------------------------------------------------------------------------

def free_udp_port() -> tuple[socket.socket, int]:
    """A UDP socket bound on 127.0.0.1 (it keeps the port ours and swallows what is sent there)."""
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    return sink, sink.getsockname()[1]


def rtp_like(index: int, size: int = 172) -> bytes:
    """A 12-byte RTP header (PT 0, seq = index) and a payload that names the packet."""
    header = struct.pack("!BBHII", 0x80, 0, index & 0xFFFF, index * 160, 0x5EED)
    return header + index.to_bytes(4, "big") + bytes(size - 16)


def collect(cap: LiveCapture, want: int, timeout_s: float = 3.0) -> list[FrameBatch]:
    """Batches from `cap` until `want` frames came or `timeout_s` passed, then a short grace
    period to catch anything extra."""
    batches: list[FrameBatch] = []
    seen = 0
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and seen < want:
        batch = cap.poll_once(0.05)
        if batch is not None and len(batch):
            batches.append(batch)
            seen += len(batch)
    grace = time.monotonic() + 0.1
    while time.monotonic() < grace:
        batch = cap.poll_once(0.02)
        if batch is not None and len(batch):
            batches.append(batch)
    return batches


def frames_of(batches: list[FrameBatch]) -> list[tuple[float, bytes]]:
    return [(ts, bytes(frame)) for batch in batches for ts, frame in batch.iter_frames()]


def udp_payload(frame: bytes) -> bytes:
    return frame[ETH_HEADER + IP_UDP_HEADERS:]


def packet_index(frame: bytes) -> int:
    return int.from_bytes(udp_payload(frame)[12:16], "big")


def run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=10)


_libc = ctypes.CDLL(None, use_errno=True)


def in_netns(name: str, make: Callable[[], T]) -> T:
    """`make()` run in a thread that has joined network namespace `name`: sockets it creates
    belong to that namespace for good, and the test process itself never leaves its own."""
    result: list[T] = []
    failure: list[BaseException] = []

    def body() -> None:
        try:
            fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns({name})")
            finally:
                os.close(fd)
            result.append(make())
        except BaseException as exc:  # handed to the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=body)
    thread.start()
    thread.join(10)
    if failure:
        raise failure[0]
    return result[0]


@dataclass(slots=True)
class VethNamespace:
    """A namespace holding both ends of a veth pair: `sender` (10.231.7.1/24) and `receiver`
    (no address; 10.231.7.2 is pinned to its MAC in the sender's neighbour table)."""

    name: str
    sender: str = "vgsend"
    receiver: str = "vgrecv"
    sender_ip: str = "10.231.7.1"
    receiver_ip: str = "10.231.7.2"

    def receiver_mac(self) -> str:
        out = subprocess.run(["ip", "-n", self.name, "-j", "link", "show", self.receiver],
                             check=True, capture_output=True, text=True, timeout=10).stdout
        return json.loads(out)[0]["address"]


@pytest.fixture
def veth_ns() -> Iterator[VethNamespace]:
    ns = VethNamespace(f"recg{os.getpid()}")
    run("ip", "netns", "add", ns.name)
    try:
        run("ip", "-n", ns.name, "link", "add", ns.sender, "type", "veth", "peer", "name", ns.receiver)
        for dev in (ns.sender, ns.receiver, "lo"):
            run("ip", "-n", ns.name, "link", "set", dev, "up")
        run("ip", "-n", ns.name, "addr", "add", f"{ns.sender_ip}/24", "dev", ns.sender)
        run("ip", "-n", ns.name, "neigh", "add", ns.receiver_ip, "lladdr", ns.receiver_mac(),
            "dev", ns.sender, "nud", "permanent")
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns.name], capture_output=True, timeout=10)
    assert not Path(f"/run/netns/{ns.name}").exists()


def raw_sender(ns: VethNamespace) -> socket.socket:
    """An AF_PACKET socket that puts whole Ethernet frames on the sender end."""
    def make() -> socket.socket:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        sock.bind((ns.sender, 0))
        return sock
    return in_netns(ns.name, make)


# -- the frame walk, on a synthetic block ---------------------------------------------------------------

def synthetic_block(sizes: list[int], first: int = 48) -> bytes:
    """A block body: frames of the given total sizes linked by tp_next_offset (0 in the last)."""
    out = bytearray(first)
    for i, size in enumerate(sizes):
        header = struct.pack("=IIIIII", 0 if i == len(sizes) - 1 else size, i, 0, 0, 0, 0)
        out += header + bytes(size - len(header))
    return bytes(out)


def test_walk_block_follows_the_links_through_runs_and_size_changes() -> None:
    sizes = [304] * 40 + [96, 1520, 1520] + [304] * 30 + [160]
    data = synthetic_block(sizes)
    expected = list(48 + np.concatenate([[0], np.cumsum(sizes)[:-1]]))
    assert walk_block(data, 48, len(sizes)) == expected
    assert walk_block(data, 48, 10) == expected[:10]       # num_pkts bounds the walk


def test_walk_block_stops_at_a_link_that_leaves_the_block() -> None:
    data = bytearray(synthetic_block([304] * 5))
    struct.pack_into("=I", data, 48 + 2 * 304, 1 << 20)     # frame 2 points far outside
    assert walk_block(bytes(data), 48, 5) == [48, 48 + 304, 48 + 2 * 304]


def test_bad_settings_and_unknown_interfaces_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="block_size"):
        LiveCapture("lo", bpf=None, ring=RingSettings(block_size=1000))
    with pytest.raises(ValueError, match="nosuchif0"):
        LiveCapture("nosuchif0", bpf=None)
    with pytest.raises(ValueError, match="fanout mode"):
        fanout_argument(1, "roundrobin")
    assert fanout_argument(7, "hash") == 7 | 0x8000 << 16
    assert interface_linktype("lo") == LINKTYPE_ETHERNET


# -- loopback ------------------------------------------------------------------------------------------

def test_every_datagram_on_loopback_arrives_once_exactly_in_time() -> None:
    count = 2000
    sink, port = free_udp_port()
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sink, sender, LiveCapture("lo", bpf=compile_filter(f"udp dst port {port}")) as cap:
        before = time.time()
        for i in range(count):
            sender.sendto(rtp_like(i), ("127.0.0.1", port))
        after = time.time()
        batches = collect(cap, count)
        stats = cap.stats()
    frames = frames_of(batches)
    assert [udp_payload(f) for _, f in frames] == [rtp_like(i) for i in range(count)]
    assert all(b.linktype == LINKTYPE_ETHERNET for b in batches)
    ts = np.array([t for t, _ in frames])
    assert np.all(np.diff(ts) >= 0)
    assert before - 0.01 <= ts[0] and ts[-1] <= after + 0.01
    assert stats == CaptureStats(packets=count, drops=0, freeze_count=0)
    assert cap.frames == count and not cap.errors


def test_the_kernel_filter_keeps_other_ports_out() -> None:
    sink_a, port_a = free_udp_port()
    sink_b, port_b = free_udp_port()
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sink_a, sink_b, sender, LiveCapture("lo", bpf=compile_filter(f"udp dst port {port_a}"),
                                               ring=SMALL_RING) as cap:
        for i in range(200):
            sender.sendto(rtp_like(i), ("127.0.0.1", port_a if i % 2 else port_b))
        frames = frames_of(collect(cap, 100))
        stats = cap.stats()
    assert sorted(packet_index(f) for _, f in frames) == list(range(1, 200, 2))
    assert {struct.unpack_from("!H", f, ETH_HEADER + 22)[0] for _, f in frames} == {port_a}
    assert stats.packets == 100 and stats.drops == 0


def test_a_full_ring_counts_its_drops() -> None:
    sent = 3000
    sink, port = free_udp_port()
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tiny = RingSettings(block_size=1 << 16, block_count=2, retire_timeout_ms=10)
    with sink, sender, LiveCapture("lo", bpf=compile_filter(f"udp dst port {port}"), ring=tiny) as cap:
        for i in range(sent):                       # 3000 x ~300 bytes into a 128 KiB ring, unread
            sender.sendto(rtp_like(i), ("127.0.0.1", port))
        time.sleep(0.05)
        delivered = len(frames_of(collect(cap, sent, timeout_s=0.3)))
        stats = cap.stats()
    assert stats.packets == sent
    assert stats.drops > 0 and stats.freeze_count > 0
    assert delivered == stats.delivered == sent - stats.drops


def test_a_fanout_group_shares_the_flows_without_overlap() -> None:
    sink, port = free_udp_port()
    flows = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(32)]
    group = 0x4000 + os.getpid() % 0x3FFF
    bpf = compile_filter(f"udp dst port {port}")
    caps = [LiveCapture("lo", bpf=bpf, ring=SMALL_RING, fanout_group=group) for _ in range(2)]
    try:
        per_flow = 10
        for n in range(per_flow):
            for f, flow in enumerate(flows):
                flow.sendto(rtp_like(f * per_flow + n), ("127.0.0.1", port))
        total = len(flows) * per_flow
        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(lambda c: frames_of(collect(c, total, timeout_s=0.5)), caps))
    finally:
        for cap in caps:
            cap.close()
        for flow in flows:
            flow.close()
        sink.close()
    seen = [{packet_index(f) for _, f in frames} for frames in results]
    assert all(len(frames) == len(ids) for frames, ids in zip(results, seen, strict=True))
    assert seen[0] and seen[1] and not seen[0] & seen[1]
    assert seen[0] | seen[1] == set(range(total))
    flows_seen = [{i // per_flow for i in ids} for ids in seen]
    assert flows_seen[0].isdisjoint(flows_seen[1])   # hash fanout: a flow stays with one member


def test_batches_hands_back_control_when_idle_and_ends_when_closed_elsewhere() -> None:
    sink, port = free_udp_port()
    cap = LiveCapture("lo", bpf=compile_filter(f"udp dst port {port}"), ring=SMALL_RING)
    yielded: list[int] = []
    started = time.monotonic()
    with sink:
        for batch in cap.batches(timeout_s=0.02):
            yielded.append(len(batch))
            if len(yielded) == 3:
                threading.Thread(target=cap.close).start()
            assert len(yielded) < 50 and time.monotonic() - started < 3
    assert yielded[:3] == [0, 0, 0] and cap.closed
    assert cap.poll_once(0.01) is None and cap.stats() == CaptureStats(0, 0, 0)


# -- a veth pair in a namespace of our own -------------------------------------------------------------

def test_a_veth_end_in_a_namespace_sees_what_the_other_end_sends(veth_ns: VethNamespace) -> None:
    count = 300
    bpf = compile_filter("udp dst port 4000")
    cap = in_netns(veth_ns.name, lambda: LiveCapture(veth_ns.receiver, bpf=bpf, ring=SMALL_RING))
    sender = in_netns(veth_ns.name, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    with cap, sender:
        for i in range(count):
            sender.sendto(rtp_like(i), (veth_ns.receiver_ip, 4000))
        frames = frames_of(collect(cap, count))
        stats = cap.stats()
    assert [udp_payload(f) for _, f in frames] == [rtp_like(i) for i in range(count)]
    assert {socket.inet_ntoa(f[ETH_HEADER + 12 : ETH_HEADER + 16]) for _, f in frames} == {veth_ns.sender_ip}
    assert stats.packets == count and stats.drops == 0


def test_vlan_tags_stripped_by_the_kernel_are_put_back(veth_ns: VethNamespace) -> None:
    """802.1Q (TCI with priority bits) and 802.1ad-over-802.1Q (QinQ) frames read back byte for
    byte as they were sent, and the default filter keeps them."""
    plain = rtp_like(1)
    sent = []
    for i, tags in enumerate([[(0x8100, 0xA00C)], [(0x88A8, 0x0064), (0x8100, 0x0005)], []]):
        macs = bytes.fromhex("02aabbccdd01") + bytes.fromhex("02aabbccdd02")
        vlan = b"".join(struct.pack("!HH", tpid, tci) for tpid, tci in tags)
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + 8 + len(plain), i, 0, 64, 17, 0,
                         socket.inet_aton("10.9.0.1"), socket.inet_aton("10.9.0.2"))
        sent.append(macs + vlan + b"\x08\x00" + ip + struct.pack("!HHHH", 40000, 50000, 8 + len(plain), 0) + plain)
    cap = in_netns(veth_ns.name, lambda: LiveCapture(veth_ns.receiver, bpf=compile_filter(DEFAULT_FILTER),
                                                     ring=SMALL_RING))
    sender = raw_sender(veth_ns)
    with cap, sender:
        for frame in sent:
            sender.send(frame)
        got = [f for _, f in frames_of(collect(cap, len(sent)))]
    assert got == sent


# -- end to end: live capture into the engine equals offline replay ------------------------------------

T0 = 1_718_000_000.0
E2E_CALLS = [
    CallPlan("live-a@gen", T0, 1.2, ring_s=0.2),
    CallPlan("live-b@gen", T0 + 0.25, 1.2, ring_s=0.2, caller_ip="10.0.0.3", callee_ip="10.0.0.4",
             caller=LegPlan(440.0, loss_rate=0.05), callee=LegPlan(1000.0, codec="pcma"), vlan=12),
    CallPlan("live-c@gen", T0 + 0.4, 1.0, ring_s=0.2, caller_ip="10.0.0.5", callee_ip="10.0.0.6",
             transport="tcp", sip_port=5060),
]


def send_paced(sock: socket.socket, path: Path) -> int:
    """Put the capture's frames on the wire at their recorded pace (real time); returns the count."""
    sent = 0
    start = time.monotonic()
    first: float | None = None
    for batch in read_batches(path):
        for ts, frame in batch.iter_frames():
            first = ts if first is None else first
            delay = start + (ts - first) - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            sock.send(frame)
            sent += 1
    return sent


def recordings(out: Path) -> dict[str, tuple[dict[str, Any], np.ndarray]]:
    """call_id -> (metadata, int16 audio of shape (frames, 2))."""
    found = {}
    for meta_path in out.glob("*.json"):
        if meta_path.name == "not-recorded.json":
            continue
        meta = json.loads(meta_path.read_text())
        with wave.open(str(meta_path.with_suffix(".wav")), "rb") as w:
            audio = np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, w.getnchannels())
        found[meta["call_id"]] = (meta, audio)
    return found


def stream_counts(meta: dict[str, Any]) -> set[tuple[Any, ...]]:
    return {(s["ssrc"], s["channel"], s["src"], s["dst"], s["packets"], s["lost"], s["duplicates"],
             s["out_of_order"], tuple(s["codecs"])) for s in meta["streams"]}


def test_live_capture_through_the_engine_records_what_replay_records(tmp_path: Path,
                                                                      veth_ns: VethNamespace) -> None:
    pcap = tmp_path / "calls.pcap"
    truth = write_capture(str(pcap), E2E_CALLS, seed=3)
    offline_sink = WavDirectorySink(tmp_path / "replay")
    replay_files([pcap], offline_sink)
    offline_sink.finish()

    cap = in_netns(veth_ns.name, lambda: LiveCapture(veth_ns.receiver, bpf=compile_filter(DEFAULT_FILTER),
                                                     ring=SMALL_RING))
    sender = raw_sender(veth_ns)
    with cap, sender:
        with ThreadPoolExecutor(1) as pool:
            captured = pool.submit(collect, cap, truth.frames, 6.0)
            sent = send_paced(sender, pcap)
            batches = captured.result()
        stats = cap.stats()
    live_sink = WavDirectorySink(tmp_path / "live")
    engine = CaptureEngine(live_sink)
    for batch in batches:
        engine.feed(batch)
    engine.finish()
    live_sink.finish()

    assert sent == truth.frames == sum(len(b) for b in batches)
    assert stats.drops == 0
    live, offline = recordings(tmp_path / "live"), recordings(tmp_path / "replay")
    assert set(live) == set(offline) == {c.call_id for c in E2E_CALLS}
    for call_id, (meta, audio) in live.items():
        ref_meta, ref_audio = offline[call_id]
        for key in ("caller", "callee", "end_reason", "codecs", "sample_rate", "channels"):
            assert meta[key] == ref_meta[key], (call_id, key)
        assert stream_counts(meta) == stream_counts(ref_meta), call_id
        assert abs(meta["duration_s"] - ref_meta["duration_s"]) < 0.05, call_id
        assert abs(len(audio) - len(ref_audio)) < 0.05 * meta["sample_rate"], call_id
        for channel, hz in ((0, 440.0), (1, 1000.0)):   # each leg's tone on its own channel
            mine = tone_energy(audio[:, channel], meta["sample_rate"], hz)
            other = tone_energy(audio[:, channel], meta["sample_rate"], 1440.0 - hz)
            assert mine > 100 * other, (call_id, channel)
