"""From a batch of frames to transport payloads, vectorised where the frames are plain.

The common shape on a mirror port (Ethernet, optional VLAN tags, IPv4 unfragmented, UDP) is
decoded for the whole batch with numpy; every other frame (IPv6, fragments, tunnels, TCP,
anything odd) goes through the general per-frame decoder (capture.netdecode), and its
payload is appended to an auxiliary buffer so that the result is one set of arrays again.

Each datagram gets a kind: RTP-like (version 2, not RTCP) goes to the vectorised media path;
payloads that may be SIP (start with an upper-case letter) or ZRTP, and TCP segments, go to
the per-message Python path; the rest is dropped.
"""

from __future__ import annotations

import socket
import struct
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from capture.errors import ParseError
from capture.expectations import AddressBook, endpoint_key
from capture.netdecode import PacketDecoder, Segment
from capture.pcapio import (
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
    FrameBatch,
)

KIND_DROP, KIND_RTP, KIND_MESSAGE, KIND_TCP = 0, 1, 2, 3
VXLAN_PORT = 4789
ETHERTYPE_IPV4 = 0x0800
VLAN_TAGS = (0x8100, 0x88A8, 0x9100)
ZRTP_FIRST_BYTE = 0x10


@dataclass(slots=True)
class PacketArrays:
    """Every frame of a batch as one transport payload (or a drop)."""

    raw: bytes
    buf: np.ndarray            # uint8 view of raw
    ts: np.ndarray             # float64
    kind: np.ndarray           # uint8 KIND_*
    src_key: np.ndarray        # int64 endpoint keys (address key << 16 | port)
    dst_key: np.ndarray
    payload_offset: np.ndarray  # int64 into raw
    payload_length: np.ndarray
    segments: dict[int, Segment] = field(default_factory=dict)  # slow-path frames, by index

    def __len__(self) -> int:
        return len(self.ts)

    def payload(self, i: int) -> bytes:
        start = int(self.payload_offset[i])
        return self.raw[start:start + int(self.payload_length[i])]

    def endpoints(self, i: int) -> tuple[tuple[str, int], tuple[str, int]]:
        """(src ip, port), (dst ip, port) of packet i as text, for the per-message path."""
        seg = self.segments.get(i)
        if seg is not None:
            return (seg.src, seg.sport), (seg.dst, seg.dport)
        return _endpoint_text(int(self.src_key[i])), _endpoint_text(int(self.dst_key[i]))


def _endpoint_text(key: int) -> tuple[str, int]:
    return socket.inet_ntoa(struct.pack("!I", key >> 16)), key & 0xFFFF


def _be16(buf: np.ndarray, at: np.ndarray) -> np.ndarray:
    return (buf[at].astype(np.int64) << 8) | buf[at + 1]


def _be32(buf: np.ndarray, at: np.ndarray) -> np.ndarray:
    return (_be16(buf, at) << 16) | _be16(buf, at + 2)


def _network_offsets(batch: FrameBatch, buf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Offset of the IP header and a mask of frames that announce IPv4, per link type."""
    off, length = batch.offsets, batch.lengths
    n = len(off)
    if batch.linktype == LINKTYPE_ETHERNET:
        enough = length >= 34
        at = np.where(enough, off, 0)
        ethertype = _be16(buf, at + 12)
        l3 = off + 14
        for _ in range(2):  # 802.1Q / 802.1ad / QinQ (RFC 7042 §2.3)
            tagged = enough & np.isin(ethertype, VLAN_TAGS) & (length >= l3 - off + 24)
            if not tagged.any():
                break
            ethertype = np.where(tagged, _be16(buf, np.where(tagged, l3 + 2, 0)), ethertype)
            l3 = np.where(tagged, l3 + 4, l3)
        return l3, enough & (ethertype == ETHERTYPE_IPV4)
    if batch.linktype == LINKTYPE_LINUX_SLL:
        enough = length >= 36
        return off + 16, enough & (_be16(buf, np.where(enough, off + 14, 0)) == ETHERTYPE_IPV4)
    if batch.linktype == LINKTYPE_LINUX_SLL2:
        enough = length >= 40
        return off + 20, enough & (_be16(buf, np.where(enough, off, 0)) == ETHERTYPE_IPV4)
    if batch.linktype == LINKTYPE_NULL:
        enough = length >= 24
        family = buf[np.where(enough, off, 0)].astype(np.int64) | buf[np.where(enough, off + 3, 0)]
        return off + 4, enough & (family == socket.AF_INET)
    if batch.linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, 12, 14):
        return off, length >= 20
    return off, np.zeros(n, bool)


def _classify_payloads(buf: np.ndarray, offset: np.ndarray, length: np.ndarray) -> np.ndarray:
    """KIND_RTP / KIND_MESSAGE / KIND_DROP from the first two payload bytes."""
    has2 = length >= 2
    first = np.where(has2, buf[np.where(has2, offset, 0)], 0)
    second = np.where(has2, buf[np.where(has2, offset + 1, 0)], 0)
    rtp = (length >= 12) & ((first >> 6) == 2) & ~((second >= 192) & (second <= 223))
    message = has2 & (((first >= 0x41) & (first <= 0x5A)) | (first == ZRTP_FIRST_BYTE))
    return np.where(rtp, KIND_RTP, np.where(message, KIND_MESSAGE, KIND_DROP)).astype(np.uint8)


def decode_batch(batch: FrameBatch, decoder: PacketDecoder, addresses: AddressBook,
                 errors: Counter[str]) -> PacketArrays:
    """Decode every frame of the batch: fast path for plain IPv4/UDP, the decoder for the rest."""
    raw = batch.buf
    buf = np.frombuffer(raw, np.uint8)
    off, length = batch.offsets.astype(np.int64), batch.lengths.astype(np.int64)
    end = off + length
    l3, ipv4 = _network_offsets(batch, buf)
    ipv4 &= (l3 + 20 <= end)
    at = np.where(ipv4, l3, 0)
    vihl = buf[at]
    ihl = (vihl & 0x0F).astype(np.int64) * 4
    fast = ipv4 & ((vihl >> 4) == 4) & (ihl >= 20) & (buf[at + 9] == 17)
    fast &= (_be16(buf, at + 6) & 0x3FFF) == 0          # neither MF nor a fragment offset
    l4 = l3 + ihl
    fast &= l4 + 8 <= end
    at4 = np.where(fast, l4, 0)
    sport, dport, udp_len = _be16(buf, at4), _be16(buf, at4 + 2), _be16(buf, at4 + 4)
    fast &= (udp_len >= 8) & (l4 + udp_len <= end) & (dport != VXLAN_PORT) & (sport != VXLAN_PORT)
    src_ip, dst_ip = _be32(buf, np.where(fast, l3 + 12, 0)), _be32(buf, np.where(fast, l3 + 16, 0))
    payload_offset = np.where(fast, l4 + 8, 0)
    payload_length = np.where(fast, udp_len - 8, 0)
    kind = np.where(fast, _classify_payloads(buf, payload_offset, payload_length), KIND_DROP).astype(np.uint8)
    src_key = (src_ip << 16) | sport
    dst_key = (dst_ip << 16) | dport
    arrays = PacketArrays(raw, buf, batch.ts, kind, src_key, dst_key, payload_offset, payload_length)
    slow = np.flatnonzero(~fast)
    if len(slow):
        _decode_slow_frames(batch, slow, arrays, decoder, addresses, errors)
    return arrays


def _decode_slow_frames(batch: FrameBatch, slow: np.ndarray, arrays: PacketArrays, decoder: PacketDecoder,
                        addresses: AddressBook, errors: Counter[str]) -> None:
    """Per-frame decoding of what the fast path left; payloads move to an auxiliary buffer."""
    aux = bytearray()
    base = len(arrays.raw)
    placed: list[int] = []
    for i in slow.tolist():
        try:
            seg = decoder.decode(batch.linktype, float(batch.ts[i]), batch.frame(i))
        except ParseError as err:
            errors[err.reason] += 1
            continue
        if seg is None:
            continue
        arrays.segments[i] = seg
        arrays.src_key[i] = endpoint_key(addresses.key(seg.src), seg.sport)
        arrays.dst_key[i] = endpoint_key(addresses.key(seg.dst), seg.dport)
        arrays.payload_offset[i] = base + len(aux)
        arrays.payload_length[i] = len(seg.payload)
        aux += seg.payload
        placed.append(i)
        if seg.proto == 6:
            arrays.kind[i] = KIND_TCP
    if not aux:
        return
    arrays.raw = bytes(arrays.raw) + bytes(aux)
    arrays.buf = np.frombuffer(arrays.raw, np.uint8)
    udp = [i for i in placed if arrays.kind[i] != KIND_TCP]
    if udp:
        idx = np.array(udp, np.int64)
        arrays.kind[idx] = _classify_payloads(arrays.buf, arrays.payload_offset[idx], arrays.payload_length[idx])
