"""Fanout over worker processes: who gets which packet, who records which call.

The live daemon can run N worker processes (capture.workers).  Three rules make them record
every call exactly once:

1. Media is spread by the kernel.  Every worker has an AF_PACKET socket per interface in one
   PACKET_FANOUT group whose classic BPF demux program (`fanout_program`) returns, for UDP
   (IPv4 with any header length, IPv6, one VLAN tag left in the frame), a hash of
   source port + destination port modulo N (`landing_worker`), 0 for anything else.  Both
   directions of an RTP flow have the same port sum, so with symmetric RTP (RFC 4961) both
   legs of a call land on one worker: the one of (caller's media port + callee's media port).
   The sum is hashed because RTP ports are even: a plain sum modulo 2 would always be 0.
2. Signalling is replicated by the kernel.  Each worker has a second, ordinary socket per
   interface that receives every frame that is not RTP-like (`media_class_filter`): SIP (UDP,
   TCP, fragments), ZRTP, tunnels (GRE/ERSPAN, VXLAN) and stray non-media UDP.  The media
   socket gets exactly the complement.  So every worker sees every SIP message, in the same
   order, and runs the full dialog tracker and expectation table.  (Forwarding SIP between
   workers would lose it whenever the worker it hashed to is down or behind.)
3. One owner per call.  `FanoutRouter` fixes the owner from signalling alone, so every worker
   computes the same one: the landing worker of its first audio ports (caller's, callee's), fixed
   at the SIP message that made both known; a call answered (2xx ACK) or ended without both
   falls back to CRC-32(Call-ID) mod N.  Only the owner records the call (vault file, catalog
   row, not-recorded row).  Media that lands on another worker (asymmetric RTP, a re-INVITE
   to new ports, tunnelled media) is forwarded to the owner; media of a call whose owner is
   not fixed yet (a packet racing its SDP answer) is held back and fed again later.

`TimeOrderedPool` merges what a worker receives (its media socket, its signalling socket,
frames forwarded by other workers) back into capture-time order, so an SDP takes effect at its
place among the media packets as it does when one socket sees everything.

Pure code: frames and calls in, programs, decisions and bytes out; sockets live in
capture.afpacket and recorderd.
"""

from __future__ import annotations

import struct
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from capture.bpf import DEFAULT_SNAPLEN, Instruction
from capture.dialogs import CALLEE, CALLER, Call
from capture.pcapio import LINKTYPE_ETHERNET, FrameBatch, merge_batches
from capture.sip import SipMessage

# linux/bpf_common.h and linux/filter.h
BPF_LD, BPF_LDX, BPF_ST, BPF_ALU, BPF_JMP, BPF_RET = 0x00, 0x01, 0x02, 0x04, 0x05, 0x06
BPF_W, BPF_H, BPF_B = 0x00, 0x08, 0x10
BPF_ABS, BPF_IND, BPF_MEM, BPF_MSH = 0x20, 0x40, 0x60, 0xA0
BPF_ADD, BPF_MUL, BPF_AND, BPF_RSH, BPF_MOD = 0x00, 0x20, 0x50, 0x70, 0x90
BPF_JA, BPF_JEQ, BPF_JSET = 0x00, 0x10, 0x40
BPF_K, BPF_X, BPF_A = 0x00, 0x08, 0x10
SKF_AD_OFF = -0x1000
SKF_AD_PROTOCOL = 0
SKF_AD_PKTTYPE = 4
PACKET_OUTGOING = 4

ETH_P_IP, ETH_P_IPV6, ETH_P_8021Q, ETH_P_8021AD = 0x0800, 0x86DD, 0x8100, 0x88A8
IPPROTO_UDP = 17
ETH_HEADER, VLAN_TAG = 14, 4
IP_FRAGMENT_MASK = 0x3FFF          # IPv4 MF flag + fragment offset (RFC 791)
RTP_VERSION_MASK, RTP_VERSION_2 = 0xC0, 0x80   # RFC 3550 §5.1: V=2 in the first two bits
MAX_WORKERS = 64
# Knuth's multiplicative hash (2^32 / golden ratio): RTP ports are even (RFC 3550 §11) and often
# handed out in steps of 2 or 4, so the plain port sum modulo an even worker count would leave
# half the workers idle; its high bits spread any such sequence.
PORT_HASH_MULTIPLIER = 0x9E3779B1
PORT_HASH_SHIFT = 16

# A held-back packet (owner not fixed yet) is fed again with every batch for at most this long
# (capture time); normally the SDP answer it raced arrives within milliseconds.
HOLD_LIMIT_S = 2.0


# -- a small assembler for classic BPF: jumps by label ------------------------------------------

@dataclass(frozen=True, slots=True)
class _Label:
    name: str


@dataclass(frozen=True, slots=True)
class _Op:
    code: int
    k: int = 0
    jt: str | None = None     # label names; None = the next instruction
    jf: str | None = None


_Item = _Label | _Op


def _assemble(items: list[_Item]) -> list[Instruction]:
    """Resolve labels into the relative forward jumps classic BPF has (0..255 instructions;
    an unconditional BPF_JA takes its distance in k)."""
    at: dict[str, int] = {}
    pc = 0
    for item in items:
        if isinstance(item, _Label):
            at[item.name] = pc
        else:
            pc += 1
    program: list[Instruction] = []
    for item in items:
        if isinstance(item, _Label):
            continue
        pc = len(program)

        def distance(label: str | None, pc: int = pc) -> int:
            if label is None:
                return 0
            step = at[label] - pc - 1
            if step < 0:
                raise ValueError(f"BPF jump to {label} goes backwards")
            return step

        if item.code & 0x07 == BPF_JMP and item.code & 0xF0 == BPF_JA:
            program.append((item.code, 0, 0, distance(item.jt)))
            continue
        jt, jf = distance(item.jt), distance(item.jf)
        if jt > 0xFF or jf > 0xFF:
            raise ValueError("BPF conditional jump longer than 255 instructions")
        program.append((item.code, jt, jf, item.k & 0xFFFFFFFF))
    return program


def _ld(size: int, offset: int) -> _Op:
    return _Op(BPF_LD | size | BPF_ABS, offset)


def _ancillary(size: int, field: int) -> _Op:
    return _Op(BPF_LD | size | BPF_ABS, SKF_AD_OFF + field)


def _jeq(value: int, yes: str | None, no: str | None = None) -> _Op:
    return _Op(BPF_JMP | BPF_JEQ | BPF_K, value, yes, no)


def _ja(label: str) -> _Op:
    return _Op(BPF_JMP | BPF_JA | BPF_K, 0, label)


def _ret(value: int) -> _Op:
    return _Op(BPF_RET | BPF_K, value)


def _ip_dispatch(ethertype_at: int, network_at: int, tag: str, fail: str) -> list[_Item]:
    """Jump to the IPv4/IPv6 block for the EtherType at `ethertype_at` (one in-frame VLAN tag
    followed), the network header starting at `network_at`.  Needs blocks named
    "v4@<offset>" and "v6@<offset>" for network_at and network_at + 4."""
    inner = network_at + VLAN_TAG
    return [
        _ld(BPF_H, ethertype_at),
        _jeq(ETH_P_IP, f"v4@{network_at}"),
        _jeq(ETH_P_IPV6, f"v6@{network_at}"),
        _jeq(ETH_P_8021Q, f"vlan{tag}"),
        _jeq(ETH_P_8021AD, f"vlan{tag}", fail),
        _Label(f"vlan{tag}"),
        _ld(BPF_H, ethertype_at + VLAN_TAG),
        _jeq(ETH_P_IP, f"v4@{inner}"),
        _jeq(ETH_P_IPV6, f"v6@{inner}", fail),
    ]


def _udp_ipv4(base: int, fail: str) -> list[_Item]:
    """UDP in an unfragmented IPv4 packet at `base`; leaves X = the IPv4 header length."""
    return [
        _Label(f"v4@{base}"),
        _ld(BPF_B, base + 9),
        _jeq(IPPROTO_UDP, None, fail),
        _ld(BPF_H, base + 6),
        _Op(BPF_JMP | BPF_JSET | BPF_K, IP_FRAGMENT_MASK, fail, None),
        _Op(BPF_LDX | BPF_B | BPF_MSH, base),          # X = 4 * (IHL)
    ]


def _port_sum_mod(workers: int, sport_at: tuple[int, int], dport_at: tuple[int, int]) -> list[_Item]:
    """A = landing_worker(source port, destination port); each port at (mode, offset)."""
    return [
        _Op(BPF_LD | BPF_H | sport_at[0], sport_at[1]),
        _Op(BPF_ST, 0),                                 # M[0] = source port
        _Op(BPF_LD | BPF_H | dport_at[0], dport_at[1]),
        _Op(BPF_LDX | BPF_W | BPF_MEM, 0),
        _Op(BPF_ALU | BPF_ADD | BPF_X),                 # the sum: the same both ways
        _Op(BPF_ALU | BPF_MUL | BPF_K, PORT_HASH_MULTIPLIER),   # 32-bit, wraps like the kernel's
        _Op(BPF_ALU | BPF_RSH | BPF_K, PORT_HASH_SHIFT),
        _Op(BPF_ALU | BPF_MOD | BPF_K, workers),
        _Op(BPF_RET | BPF_A),
    ]


def _port_sum_blocks(workers: int, bases: list[int]) -> list[_Item]:
    items: list[_Item] = []
    for base in bases:
        items += _udp_ipv4(base, "other")
        items += _port_sum_mod(workers, (BPF_IND, base), (BPF_IND, base + 2))
        items += [_Label(f"v6@{base}"), _ld(BPF_B, base + 6), _jeq(IPPROTO_UDP, None, "other")]
        items += _port_sum_mod(workers, (BPF_ABS, base + 40), (BPF_ABS, base + 42))
    return items


def fanout_program(workers: int, linktype: int = LINKTYPE_ETHERNET) -> list[Instruction]:
    """The PACKET_FANOUT_CBPF demux program: which member (worker) gets a packet.

    UDP over IPv4 (any header length, not a fragment) or IPv6 (UDP as the first next header):
    `landing_worker(source port, destination port, workers)`; everything else: 0.  The kernel runs it
    with the packet starting at the network header for received packets (skb->protocol says
    which) and at the link-layer header for outgoing ones, so both layouts are handled; a
    VLAN tag still in the frame (the inner one of QinQ: the outer is stripped before packet
    sockets see it) is skipped."""
    if not 2 <= workers <= MAX_WORKERS:
        raise ValueError(f"fanout needs 2..{MAX_WORKERS} workers, not {workers}")
    items: list[_Item] = []
    if linktype == LINKTYPE_ETHERNET:
        items += [_ancillary(BPF_B, SKF_AD_PKTTYPE), _jeq(PACKET_OUTGOING, "outgoing", "incoming")]
    items += [_Label("incoming"), _ancillary(BPF_H, SKF_AD_PROTOCOL),
              _jeq(ETH_P_IP, "v4@0"), _jeq(ETH_P_IPV6, "v6@0"),
              _jeq(ETH_P_8021Q, "vlan_in"), _jeq(ETH_P_8021AD, "vlan_in", "other"),
              _Label("vlan_in"), _ld(BPF_H, 2), _jeq(ETH_P_IP, f"v4@{VLAN_TAG}"),
              _jeq(ETH_P_IPV6, f"v6@{VLAN_TAG}", "other")]
    bases = [0, VLAN_TAG]
    if linktype == LINKTYPE_ETHERNET:
        items += [_Label("outgoing")] + _ip_dispatch(12, ETH_HEADER, "_out", "other")
        bases += [ETH_HEADER, ETH_HEADER + VLAN_TAG]
    items += _port_sum_blocks(workers, bases)
    items += [_Label("other"), _ret(0)]
    return _assemble(items)


def _media_test(linktype: int) -> list[_Item]:
    """Jumps to "media" for an RTP-like datagram (UDP, not a fragment, first payload byte with
    RTP version 2: RTP, SRTP, RTCP), to "signalling" otherwise.  Socket-filter layout: the
    frame from its link-layer header (Ethernet) or from the IP header (raw IP links)."""
    items: list[_Item] = []
    if linktype == LINKTYPE_ETHERNET:
        items += _ip_dispatch(12, ETH_HEADER, "_class", "signalling")
        bases = [ETH_HEADER, ETH_HEADER + VLAN_TAG]
    else:
        items += [_ld(BPF_B, 0), _Op(BPF_ALU | BPF_AND | BPF_K, 0xF0),
                  _jeq(0x40, "v4@0"), _jeq(0x60, "v6@0", "signalling")]
        bases = [0]
    for base in bases:
        items += _udp_ipv4(base, "signalling")
        items += [_Op(BPF_LD | BPF_B | BPF_IND, base + 8), _Op(BPF_ALU | BPF_AND | BPF_K, RTP_VERSION_MASK),
                  _jeq(RTP_VERSION_2, "media", "signalling")]
        items += [_Label(f"v6@{base}"), _ld(BPF_B, base + 6), _jeq(IPPROTO_UDP, None, "signalling"),
                  _ld(BPF_B, base + 48), _Op(BPF_ALU | BPF_AND | BPF_K, RTP_VERSION_MASK),
                  _jeq(RTP_VERSION_2, "media", "signalling")]
    return items


def media_class_filter(program: list[Instruction], *, media: bool,
                       linktype: int = LINKTYPE_ETHERNET) -> list[Instruction]:
    """A socket filter: what `program` (a capture filter, e.g. from capture.bpf) accepts, and
    of that only the RTP-like datagrams (`media=True`, the fanout sockets) or only the rest
    (`media=False`, the signalling sockets every worker has).  The two are exact complements.

    Every accepting `ret #k` of `program` becomes a jump to the classification appended after
    it, which returns the largest k (the snapshot length) or 0."""
    snaplen = max((k for code, _, _, k in program if code == BPF_RET | BPF_K and k), default=0)
    if any(code == BPF_RET | BPF_A for code, _, _, _ in program):
        raise ValueError("a capture filter that returns the accumulator cannot be combined with fanout")
    if not snaplen:
        return list(program)    # accepts nothing
    head: list[Instruction] = []
    for pc, (code, jt, jf, k) in enumerate(program):
        if code == BPF_RET | BPF_K and k:
            code, jt, jf, k = BPF_JMP | BPF_JA | BPF_K, 0, 0, len(program) - pc - 1
        head.append((code, jt, jf, k))
    tail = _media_test(linktype) + [_Label("media"), _ret(snaplen if media else 0),
                                    _Label("signalling"), _ret(0 if media else snaplen)]
    return head + _assemble(tail)


def accept_everything() -> list[Instruction]:
    return [(BPF_RET | BPF_K, 0, 0, DEFAULT_SNAPLEN)]


# -- who records a call ------------------------------------------------------------------------

def landing_worker(source_port: int, destination_port: int, workers: int) -> int:
    """The worker the kernel hands a UDP datagram to (what `fanout_program` computes): the
    port sum (the same in both directions), hashed, modulo the workers."""
    mixed = ((source_port + destination_port) * PORT_HASH_MULTIPLIER) & 0xFFFFFFFF
    return (mixed >> PORT_HASH_SHIFT) % workers


def call_id_worker(call_id: str, workers: int) -> int:
    """The owner of a call whose media ports are not both known: CRC-32 of the Call-ID."""
    return zlib.crc32(call_id.encode("utf-8", "surrogateescape")) % workers


def media_owner(call: Call, workers: int) -> int:
    """The worker that records `call` given what its signalling says now (see FanoutRouter for
    the moment this is fixed): the landing worker of its first audio ports when both sides
    advertised one, else by Call-ID."""
    caller, callee = call.first_audio.get(CALLER), call.first_audio.get(CALLEE)
    if caller is not None and callee is not None:
        return landing_worker(caller, callee, workers)
    return call_id_worker(call.call_id, workers)


HeldFrames = tuple[FrameBatch, np.ndarray]


class FanoutRouter:
    """The engine's fanout hook (capture.engine.MediaRouter) for worker `worker` of `workers`.

    The owner of a call is fixed by signalling alone, at the first SIP message after which
    - both sides have advertised an audio port (their first ones decide), or
    - the call was answered and acknowledged (the 2xx ACK) without that, or it ended:
      then by Call-ID.
    Every worker applies the same SIP messages in the same order, so all fix the same owner
    at the same message, and it never changes (a re-INVITE moves the media, not the owner).

    `send(worker, frames)` carries media to its owner; `end(call)` tells the other workers
    that a call this worker owns timed out (they keep calls they do not record open without
    a media timeout of their own, since they may not see its packets)."""

    def __init__(self, worker: int, workers: int, send: Callable[[int, FrameBatch], None],
                 end: Callable[[Call], None] | None = None) -> None:
        if not 0 <= worker < workers:
            raise ValueError(f"worker {worker} is not in 0..{workers - 1}")
        self.worker = worker
        self.workers = workers
        self._send = send
        self._end = end
        self.owners: dict[str, int] = {}
        self.held: list[HeldFrames] = []
        self.counters: Counter[str] = Counter()

    def on_signalling(self, call: Call, message: SipMessage) -> None:
        """After the tracker applied `message` to `call`: fix the owner when it is due."""
        if call.key in self.owners:
            return
        both = CALLER in call.first_audio and CALLEE in call.first_audio
        acked = message.is_request and message.method == "ACK" and call.answered_at is not None
        if both or acked or call.ended:
            self._fix(call, media_owner(call, self.workers))

    def _fix(self, call: Call, owner: int) -> None:
        self.owners[call.key] = owner
        call.media_elsewhere = owner != self.worker

    def owner(self, call: Call) -> int | None:
        """The worker that records `call`; None while that is not fixed yet."""
        return self.owners.get(call.key)

    def records(self, call: Call) -> bool:
        """At the end of `call`: True when this worker records it (its recording or its
        not-recorded row).  Forgets the call; tells the others when it timed out here."""
        owner = self.owners.pop(call.key, None)
        if owner is None:
            owner = media_owner(call, self.workers)
        mine = owner == self.worker
        if mine and self._end is not None and call.end_reason in ("media_timeout", "setup_timeout"):
            self._end(call)
        return mine

    def forward(self, worker: int, frames: FrameBatch) -> None:
        self.counters["forwarded_packets"] += len(frames)
        self._send(worker, frames)

    def hold(self, frames: FrameBatch, forwardable: np.ndarray) -> None:
        """Keep media whose call has no owner yet, to be fed again with the next batch."""
        self.held.append((frames, forwardable))

    def take_held(self, now: float) -> list[HeldFrames]:
        """The held frames, less those older than HOLD_LIMIT_S at capture time `now` (counted)."""
        taken, self.held = self.held, []
        kept = []
        for frames, forwardable in taken:
            fresh = frames.ts >= now - HOLD_LIMIT_S
            self.counters["held_packets_dropped"] += int(len(fresh) - np.count_nonzero(fresh))
            if fresh.all():
                kept.append((frames, forwardable))
            elif fresh.any():
                rows = np.flatnonzero(fresh)
                kept.append((take_frames(frames, rows), forwardable[rows]))
        return kept


# -- frames between workers and back into capture-time order ---------------------------------

def take_frames(batch: FrameBatch, rows: np.ndarray) -> FrameBatch:
    """Frames `rows` of `batch`, copied into a compact buffer of their own (one numpy gather)."""
    rows = np.asarray(rows, np.int64)
    lengths = batch.lengths[rows].astype(np.int64)
    starts = batch.offsets[rows].astype(np.int64)
    offsets = np.zeros(len(rows), np.int64)
    if len(rows) > 1:
        np.cumsum(lengths[:-1], out=offsets[1:])
    gather = np.repeat(starts - offsets, lengths) + np.arange(int(lengths.sum()), dtype=np.int64)
    data = np.frombuffer(batch.buf, np.uint8)[gather].tobytes()
    return FrameBatch(batch.linktype, data, offsets, lengths, batch.ts[rows].astype(np.float64))


_FRAMES_HEADER = struct.Struct("=4sII")     # magic, link type, frame count
_FRAMES_MAGIC = b"RDFR"


def encode_frames(batch: FrameBatch, max_bytes: int) -> list[bytes]:
    """`batch` as messages of at most `max_bytes` each (a frame larger than that alone):
    header, timestamps (float64), lengths (uint32), then the frames back to back."""
    messages: list[bytes] = []
    per_frame = 8 + 4
    start = 0
    lengths = batch.lengths.astype(np.int64)
    while start < len(batch):
        room = max_bytes - _FRAMES_HEADER.size
        end = start
        while end < len(batch) and (end == start or room >= per_frame + lengths[end]):
            room -= per_frame + int(lengths[end])
            end += 1
        part = take_frames(batch, np.arange(start, end))
        messages.append(_FRAMES_HEADER.pack(_FRAMES_MAGIC, batch.linktype, len(part))
                        + part.ts.astype("<f8").tobytes() + part.lengths.astype("<u4").tobytes() + part.buf)
        start = end
    return messages


def decode_frames(message: bytes) -> FrameBatch:
    """The FrameBatch of one `encode_frames` message; ValueError when it is not one."""
    if len(message) < _FRAMES_HEADER.size:
        raise ValueError("frames message shorter than its header")
    magic, linktype, count = _FRAMES_HEADER.unpack_from(message)
    if magic != _FRAMES_MAGIC:
        raise ValueError("not a frames message")
    at = _FRAMES_HEADER.size
    ts = np.frombuffer(message, "<f8", count, at).astype(np.float64)
    at += 8 * count
    lengths = np.frombuffer(message, "<u4", count, at).astype(np.int64)
    at += 4 * count
    offsets = np.zeros(count, np.int64)
    if count > 1:
        np.cumsum(lengths[:-1], out=offsets[1:])
    data = message[at:]
    if int(lengths.sum()) != len(data):
        raise ValueError("frames message truncated")
    return FrameBatch(linktype, data, offsets, lengths, ts)


class TimeOrderedPool:
    """Frames of several sources, released in capture-time order up to a cutoff.

    A worker reads its media socket and its signalling socket in separate threads, and gets
    frames forwarded by other workers: each source is in order, but their blocks interleave
    arbitrarily.  `release(cutoff)` returns every frame up to `cutoff` sorted by timestamp
    (stable: frames of one source keep their order), one batch per link type, each with its
    per-frame `forwardable` flags (False: another worker also has this frame, or it came
    from one); later frames wait, copied into a compact buffer."""

    def __init__(self) -> None:
        self._parts: dict[int, list[HeldFrames]] = {}
        self.frames = 0

    def add(self, batch: FrameBatch, forwardable: bool | np.ndarray) -> None:
        if not len(batch):
            return
        flags = np.full(len(batch), forwardable, bool) if isinstance(forwardable, bool) else forwardable
        self._parts.setdefault(batch.linktype, []).append((batch, flags))
        self.frames += len(batch)

    def release(self, cutoff: float) -> list[HeldFrames]:
        out: list[HeldFrames] = []
        for linktype, parts in list(self._parts.items()):
            merged = merge_batches([b for b, _ in parts])
            flags = np.concatenate([f for _, f in parts])
            ready = merged.ts <= cutoff
            rows = np.flatnonzero(ready)
            if len(rows):
                rows = rows[np.argsort(merged.ts[rows], kind="stable")]
                out.append((FrameBatch(linktype, merged.buf, merged.offsets[rows], merged.lengths[rows],
                                       merged.ts[rows]), flags[rows]))
            later = np.flatnonzero(~ready)
            if len(later):
                self._parts[linktype] = [(take_frames(merged, later), flags[later])]
            else:
                del self._parts[linktype]
            self.frames -= len(rows)
        return out
