"""Link layer, IP and transport decoding: one captured frame -> one UDP/TCP `Segment`.

`PacketDecoder.decode` peels whatever wraps a datagram on a mirror/span port or a capture
host: Ethernet II with any number of 802.1Q/802.1ad tags, Linux cooked captures (SLL, SLL2),
BSD loopback (NULL/LOOP), raw IP; GRE (RFC 2784/2890) carrying IP, transparent Ethernet or
ERSPAN type I/II/III; VXLAN (RFC 7348); IP-in-IP.  IPv4 and IPv6 fragments are reassembled
(the decoder is stateful for that); IPv6 extension headers are walked.

Returns None for frames that carry no UDP/TCP (ARP, ICMP, LLC, ...) and for fragments still
waiting for the rest of their datagram; raises `ParseError` for malformed input.  Anomalies
that are not fatal for the frame (duplicate fragments, expired reassemblies, ...) are counted
in `PacketDecoder.errors`.  Checksums are deliberately not verified: captures taken on the
sending host carry unfilled checksums when the NIC offloads them.
"""

from __future__ import annotations

import collections
import ipaddress
import socket
import struct
from dataclasses import dataclass, field

from capture.errors import ParseError
from capture.pcapio import (
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
    LINKTYPE_RAW_BSD12,
    LINKTYPE_RAW_BSD14,
)

Buffer = bytes | bytearray | memoryview

PROTO_TCP = 6
PROTO_UDP = 17
_PROTO_IPIP = 4
_PROTO_IPV6 = 41
_PROTO_GRE = 47

ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD
_ETH_TEB = 0x6558  # transparent Ethernet bridging (GRE payload is an Ethernet frame)
_ETH_ERSPAN_1_2 = 0x88BE
_ETH_ERSPAN_3 = 0x22EB
_VLAN_TPIDS = frozenset({0x8100, 0x88A8, 0x9100})  # 802.1Q, 802.1ad, legacy QinQ
_ETH_MIN_ETHERTYPE = 0x0600  # below: an 802.3 length field (LLC/SNAP follows)

_VXLAN_PORT = 4789  # RFC 7348 §5
_VXLAN_FLAG_I = 0x08  # "VNI present" flag

# IPv6 extension headers with the generic (next header, length in 8-octet units - 1) layout
# (RFC 8200 §4.3-4.6 hop-by-hop, routing, destination options; RFC 6275 mobility; RFC 7401
# HIP; RFC 5533 shim6).
_IPV6_GENERIC_EXT = frozenset({0, 43, 60, 135, 139, 140})
_IPV6_FRAGMENT = 44
_IPV6_AH = 51  # RFC 4302: length in 4-octet units - 2
_IPV6_NO_NEXT = 59

# NULL/LOOP link types: the address family in the capturing host's byte order.
_AF_INET = 2
_AF_INET6 = frozenset({24, 28, 30})  # NetBSD/OpenBSD, FreeBSD, macOS

_MAX_ENCAPSULATION_DEPTH = 8
_MAX_DATAGRAM = 65535
# Memory charged per pending reassembly on top of its data (bounds the number of entries).
_REASSEMBLY_OVERHEAD = 256
_ADDRESS_CACHE_LIMIT = 1 << 16

_ETH_TYPE = struct.Struct("!H")
# EtherType, then IPv4 (version/IHL, total length, fragment field, protocol, addresses), then
# UDP ports and length: the fast path's single unpack, from offset 12 of an Ethernet frame.
_ETH_IPV4_UDP = struct.Struct("!HBxHxxHxBxx4s4sHHH")
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_IPV6 = struct.Struct("!IHBB16s16s")
_IPV6_FRAG = struct.Struct("!BBHI")
_UDP = struct.Struct("!HHH")
_TCP = struct.Struct("!HHIIBB")
_GRE = struct.Struct("!HH")
_ERSPAN3_WORD2 = struct.Struct("!I")
_U32_LE = struct.Struct("<I")


@dataclass(slots=True)
class Segment:
    """One UDP datagram or TCP segment after decapsulation and reassembly."""

    ts: float
    proto: int  # 17 UDP, 6 TCP
    src: str  # canonical IP text ("10.0.0.1", "2001:db8::1")
    sport: int
    dst: str
    dport: int
    payload: bytes
    seq: int = 0  # TCP sequence number
    flags: int = 0  # TCP flags byte (FIN=1, SYN=2, RST=4, PSH=8, ACK=16)


@dataclass(slots=True)
class _Reassembly:
    """Fragments of one datagram (RFC 815 style: the data buffer plus the covered ranges)."""

    first_ts: float
    data: bytearray = field(default_factory=bytearray)
    covered: list[tuple[int, int]] = field(default_factory=list)  # sorted, merged [start, end)
    pieces: set[tuple[int, int]] = field(default_factory=set)  # fragments as received
    total: int | None = None  # payload length, known once the last fragment arrived
    next_header: int | None = None  # IPv6: the protocol from the offset-0 fragment

    def charge(self) -> int:
        return len(self.data) + _REASSEMBLY_OVERHEAD

    def overlaps(self, start: int, end: int) -> list[tuple[int, int]]:
        """The parts of [start, end) already received."""
        return [(max(a, start), min(b, end)) for a, b in self.covered if a < end and start < b]

    def store(self, start: int, payload: bytes) -> None:
        """Copy `payload` into the ranges not yet covered (first arrival wins) and merge."""
        end = start + len(payload)
        if end > len(self.data):
            self.data.extend(bytes(end - len(self.data)))
        cursor = start
        for a, b in self.overlaps(start, end) + [(end, end)]:
            if cursor < a:
                self.data[cursor:a] = payload[cursor - start : a - start]
            cursor = max(cursor, b)
        merged: list[tuple[int, int]] = []
        for a, b in sorted([*self.covered, (start, end)]):
            if merged and a <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], b))
            else:
                merged.append((a, b))
        self.covered = merged
        self.pieces.add((start, end))

    def complete(self) -> bool:
        return self.total is not None and self.covered == [(0, self.total)]

    def payload(self) -> bytes:
        return bytes(self.data[: self.total])


class PacketDecoder:
    """Stateful frame decoder (the state is the IP fragment reassembly table)."""

    def __init__(self, frag_timeout_s: float = 30.0, max_frag_bytes: int = 8 << 20) -> None:
        self.frag_timeout_s = frag_timeout_s
        self.max_frag_bytes = max_frag_bytes
        self.errors: collections.Counter[str] = collections.Counter()
        self._reassemblies: dict[tuple[object, ...], _Reassembly] = {}
        self._reassembly_bytes = 0
        self._ipv4_text: dict[bytes, str] = {}
        self._ipv6_text: dict[bytes, str] = {}

    # -- entry point --------------------------------------------------------------------

    def decode(self, linktype: int, ts: float, frame: Buffer) -> Segment | None:
        """Decode one captured frame; None if it carries no (complete) UDP/TCP segment."""
        try:
            if linktype == LINKTYPE_ETHERNET:
                fast = self._ethernet_ipv4_udp(ts, frame)
                if fast is not None:
                    return fast
                return self._ethernet(ts, frame, 0, len(frame), 0)
            return self._other_link(linktype, ts, frame)
        except ParseError:
            raise
        except (IndexError, struct.error, ValueError, OverflowError) as exc:
            raise ParseError("packet.malformed", f"{type(exc).__name__}: {exc}") from exc

    def expire(self, now: float) -> None:
        """Drop fragment reassemblies older than frag_timeout_s (RFC 791 reassembly timer).

        Entries are kept in arrival order, so the scan stops at the first live one (a capture
        whose clock steps backwards only delays expiry; memory stays bounded regardless).
        """
        deadline = now - self.frag_timeout_s
        expired = []
        for key, entry in self._reassemblies.items():
            if entry.first_ts >= deadline:
                break
            expired.append(key)
        for key in expired:
            self._drop_reassembly(key)
            self.errors["frag.timeout"] += 1

    @property
    def pending_fragment_bytes(self) -> int:
        """Memory currently charged to incomplete reassemblies."""
        return self._reassembly_bytes

    # -- link layers --------------------------------------------------------------------

    def _ethernet_ipv4_udp(self, ts: float, frame: Buffer) -> Segment | None:
        """The common case inline: untagged Ethernet, option-less unfragmented IPv4, UDP.

        Returns None whenever anything is unusual; the general path then decides.
        """
        if len(frame) < 42:
            return None
        (ethertype, vihl, total, frag, proto, src, dst, sport, dport, length) = _ETH_IPV4_UDP.unpack_from(
            frame, 12
        )
        if ethertype != ETH_IPV4 or vihl != 0x45 or proto != PROTO_UDP or frag & 0x3FFF:
            return None
        if length < 8 or length > total - 20 or 14 + total > len(frame) or dport == _VXLAN_PORT:
            return None
        src_text = self._ipv4_text.get(src) or self._ipv4_address(src)
        dst_text = self._ipv4_text.get(dst) or self._ipv4_address(dst)
        return Segment(ts, PROTO_UDP, src_text, sport, dst_text, dport, bytes(frame[42 : 34 + length]))

    def _other_link(self, linktype: int, ts: float, frame: Buffer) -> Segment | None:
        end = len(frame)
        if linktype in (LINKTYPE_RAW, LINKTYPE_RAW_BSD12, LINKTYPE_RAW_BSD14):
            return self._raw_ip(ts, frame, 0, end, 0, False)
        if linktype == LINKTYPE_LINUX_SLL:
            return self._linux_sll(ts, frame, end)
        if linktype == LINKTYPE_LINUX_SLL2:
            return self._linux_sll2(ts, frame, end)
        if linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
            return self._loopback(ts, frame, end)
        if linktype == LINKTYPE_IPV4:
            return self._ipv4(ts, frame, 0, end, 0, False)
        if linktype == LINKTYPE_IPV6:
            return self._ipv6(ts, frame, 0, end, 0, False)
        raise ParseError("link.unsupported", f"link type {linktype}")

    def _ethernet(self, ts: float, buf: Buffer, off: int, end: int, depth: int) -> Segment | None:
        if end - off < 14:
            raise ParseError("eth.truncated", f"{end - off} bytes")
        (ethertype,) = _ETH_TYPE.unpack_from(buf, off + 12)
        if ethertype < _ETH_MIN_ETHERTYPE:
            return None  # 802.3 frame with an LLC header: never IP here
        return self._ethertype(ts, buf, off + 14, end, ethertype, depth)

    def _ethertype(
        self, ts: float, buf: Buffer, off: int, end: int, ethertype: int, depth: int
    ) -> Segment | None:
        """Skip any stack of VLAN tags, then dispatch on the EtherType."""
        while ethertype in _VLAN_TPIDS:
            if end - off < 4:
                raise ParseError("vlan.truncated", f"{end - off} bytes")
            (ethertype,) = _ETH_TYPE.unpack_from(buf, off + 2)  # after the 2-byte TCI
            off += 4
        if ethertype == ETH_IPV4:
            return self._ipv4(ts, buf, off, end, depth, False)
        if ethertype == ETH_IPV6:
            return self._ipv6(ts, buf, off, end, depth, False)
        return None  # ARP, LLDP, MPLS, ...

    def _linux_sll(self, ts: float, buf: Buffer, end: int) -> Segment | None:
        """Linux cooked capture v1: 16-byte header, protocol (an EtherType) last."""
        if end < 16:
            raise ParseError("sll.truncated", f"{end} bytes")
        (protocol,) = _ETH_TYPE.unpack_from(buf, 14)
        return self._ethertype(ts, buf, 16, end, protocol, 0)

    def _linux_sll2(self, ts: float, buf: Buffer, end: int) -> Segment | None:
        """Linux cooked capture v2: 20-byte header, protocol (an EtherType) first."""
        if end < 20:
            raise ParseError("sll2.truncated", f"{end} bytes")
        (protocol,) = _ETH_TYPE.unpack_from(buf, 0)
        return self._ethertype(ts, buf, 20, end, protocol, 0)

    def _loopback(self, ts: float, buf: Buffer, end: int) -> Segment | None:
        """NULL/LOOP: a 4-byte address family, in whichever byte order the host used."""
        if end < 4:
            raise ParseError("loopback.truncated", f"{end} bytes")
        (family,) = _U32_LE.unpack_from(buf, 0)
        if family > 0xFFFF:  # written big-endian (always so for LOOP)
            family = int.from_bytes(buf[0:4], "big")
        if family == _AF_INET:
            return self._ipv4(ts, buf, 4, end, 0, False)
        if family in _AF_INET6:
            return self._ipv6(ts, buf, 4, end, 0, False)
        return None

    def _raw_ip(
        self, ts: float, buf: Buffer, off: int, end: int, depth: int, truncated: bool
    ) -> Segment | None:
        """An IP packet of either version, told apart by its first nibble."""
        if off >= end:
            raise ParseError("ip.truncated", "empty packet")
        version = buf[off] >> 4
        if version == 4:
            return self._ipv4(ts, buf, off, end, depth, truncated)
        if version == 6:
            return self._ipv6(ts, buf, off, end, depth, truncated)
        raise ParseError("ip.bad_version", f"version {version}")

    # -- IPv4 ---------------------------------------------------------------------------

    def _ipv4(
        self, ts: float, buf: Buffer, off: int, end: int, depth: int, truncated: bool
    ) -> Segment | None:
        if end - off < 20:
            raise ParseError("ipv4.truncated", f"{end - off} bytes")
        vihl, _tos, total, ident, frag, _ttl, proto, _csum, src, dst = _IPV4.unpack_from(buf, off)
        if vihl >> 4 != 4:
            raise ParseError("ipv4.bad_version", f"version {vihl >> 4}")
        header_len = (vihl & 0x0F) * 4
        if header_len < 20:
            raise ParseError("ipv4.bad_header_length", f"{header_len} bytes")
        if total == 0:
            total = end - off  # TCP segmentation offload on the capturing host leaves it 0
        if total < header_len:
            raise ParseError("ipv4.bad_total_length", f"total {total} < header {header_len}")
        if off + total > end:
            truncated = True  # snaplen cut the datagram
        else:
            end = off + total  # drop Ethernet padding / trailer
        if off + header_len > end:
            raise ParseError("ipv4.truncated", "header cut by the capture")
        src_text = self._ipv4_text.get(src) or self._ipv4_address(src)
        dst_text = self._ipv4_text.get(dst) or self._ipv4_address(dst)
        off += header_len
        if frag & 0x3FFF:  # more-fragments flag or a non-zero offset
            if truncated:
                raise ParseError("ipv4.truncated", "fragment cut by the capture")
            payload = self._ipv4_fragment(ts, src_text, dst_text, ident, proto, frag, bytes(buf[off:end]))
            if payload is None:
                return None  # waiting for the other fragments
            return self._transport(ts, proto, src_text, dst_text, payload, 0, len(payload), depth, False)
        return self._transport(ts, proto, src_text, dst_text, buf, off, end, depth, truncated)

    def _ipv4_address(self, raw: bytes) -> str:
        if len(self._ipv4_text) >= _ADDRESS_CACHE_LIMIT:
            self._ipv4_text.clear()
        text = self._ipv4_text[raw] = socket.inet_ntoa(raw)
        return text

    def _ipv4_fragment(
        self, ts: float, src: str, dst: str, ident: int, proto: int, frag: int, payload: bytes
    ) -> bytes | None:
        """RFC 791 §3.2 / RFC 815: reassemble by (src, dst, id, protocol)."""
        more = bool(frag & 0x2000)
        start = (frag & 0x1FFF) * 8
        key = (4, src, dst, ident, proto)
        entry = self._reassemble(key, ts, start, payload, more, "ipv4", None)
        return None if entry is None else entry.payload()

    # -- IPv6 ---------------------------------------------------------------------------

    def _ipv6(
        self, ts: float, buf: Buffer, off: int, end: int, depth: int, truncated: bool
    ) -> Segment | None:
        if end - off < 40:
            raise ParseError("ipv6.truncated", f"{end - off} bytes")
        vtf, payload_len, next_header, _hops, src, dst = _IPV6.unpack_from(buf, off)
        if vtf >> 28 != 6:
            raise ParseError("ipv6.bad_version", f"version {vtf >> 28}")
        off += 40
        if payload_len == 0 and next_header == 0:
            pass  # RFC 2675 jumbogram: the length is in a hop-by-hop option; use the frame
        elif off + payload_len > end:
            truncated = True
        else:
            end = off + payload_len
        src_text = self._ipv6_text.get(src) or self._ipv6_address(src)
        dst_text = self._ipv6_text.get(dst) or self._ipv6_address(dst)
        reassembled = False
        while True:
            if next_header in _IPV6_GENERIC_EXT or next_header == _IPV6_AH:
                next_header, off = self._ipv6_extension(buf, off, end, next_header)
            elif next_header == _IPV6_FRAGMENT:
                if reassembled:
                    raise ParseError("ipv6.nested_fragment", "second fragment header")
                if end - off < 8:
                    raise ParseError("ipv6.truncated", "fragment header")
                nh, _reserved, offset_flags, ident = _IPV6_FRAG.unpack_from(buf, off)
                off += 8
                if offset_flags & 0xFFF9 == 0:  # RFC 6946 atomic fragment: offset 0, M clear
                    next_header = nh
                    continue
                if truncated:
                    raise ParseError("ipv6.truncated", "fragment cut by the capture")
                result = self._ipv6_fragment(ts, src_text, dst_text, ident, nh, offset_flags, bytes(buf[off:end]))
                if result is None:
                    return None
                next_header, buf = result
                off, end, reassembled = 0, len(buf), True
            elif next_header == _IPV6_NO_NEXT:
                return None
            else:
                return self._transport(ts, next_header, src_text, dst_text, buf, off, end, depth, truncated)

    @staticmethod
    def _ipv6_extension(buf: Buffer, off: int, end: int, header: int) -> tuple[int, int]:
        """Skip one extension header; returns (its next header, offset after it)."""
        if end - off < 2:
            raise ParseError("ipv6.truncated", f"extension header {header}")
        next_header, length = buf[off], buf[off + 1]
        size = (length + 2) * 4 if header == _IPV6_AH else (length + 1) * 8
        if off + size > end:
            raise ParseError("ipv6.truncated", f"extension header {header} of {size} bytes")
        return next_header, off + size

    def _ipv6_address(self, raw: bytes) -> str:
        if len(self._ipv6_text) >= _ADDRESS_CACHE_LIMIT:
            self._ipv6_text.clear()
        text = self._ipv6_text[raw] = str(ipaddress.IPv6Address(raw))
        return text

    def _ipv6_fragment(
        self, ts: float, src: str, dst: str, ident: int, next_header: int, offset_flags: int, payload: bytes
    ) -> tuple[int, bytes] | None:
        """RFC 8200 §4.5: reassemble by (src, dst, id); the offset-0 fragment names the protocol."""
        start = offset_flags & 0xFFF8
        more = bool(offset_flags & 1)
        key = (6, src, dst, ident)
        entry = self._reassemble(key, ts, start, payload, more, "ipv6", next_header)
        if entry is None or entry.next_header is None:
            return None
        return entry.next_header, entry.payload()

    # -- fragment reassembly ------------------------------------------------------------

    def _reassemble(
        self,
        key: tuple[object, ...],
        ts: float,
        start: int,
        payload: bytes,
        more: bool,
        family: str,
        next_header: int | None,
    ) -> _Reassembly | None:
        """Add one fragment; the finished reassembly once complete, else None.

        IPv4 (RFC 791/815): overlaps are accepted, the first copy of each byte wins, and
        differing overlaps are counted.  IPv6 (RFC 8200 §4.5, RFC 5722): exact duplicates
        are dropped; any other overlap abandons the whole datagram.
        """
        self.expire(ts)
        end = start + len(payload)
        if end > _MAX_DATAGRAM:
            raise ParseError(f"{family}.frag_too_big", f"fragment ends at {end}")
        if more and len(payload) % 8:
            raise ParseError(f"{family}.frag_bad_length", f"{len(payload)} bytes, not a multiple of 8")
        entry = self._reassemblies.get(key)
        if entry is None:
            entry = self._reassemblies[key] = _Reassembly(first_ts=ts)
            self._reassembly_bytes += entry.charge()
        self._check_fragment_bounds(key, entry, start, end, more, family)
        if not more:
            entry.total = end
        if self._check_overlap(key, entry, start, payload, family):
            charge_before = entry.charge()
            self._make_room(key, end - len(entry.data))
            entry.store(start, payload)
            self._reassembly_bytes += entry.charge() - charge_before
            if start == 0:
                entry.next_header = next_header
        if not entry.complete():
            return None
        self._drop_reassembly(key)
        return entry

    def _check_fragment_bounds(
        self, key: tuple[object, ...], entry: _Reassembly, start: int, end: int, more: bool, family: str
    ) -> None:
        """A second, different last fragment or data past the end: the datagram is garbage."""
        if entry.total is not None and (end > entry.total or (not more and end != entry.total)):
            self._drop_reassembly(key)
            raise ParseError(f"{family}.frag_inconsistent", f"fragment [{start}, {end}) vs total {entry.total}")
        if not more and entry.covered and entry.covered[-1][1] > end:
            self._drop_reassembly(key)
            raise ParseError(f"{family}.frag_inconsistent", f"last fragment ends at {end}, data past it")

    def _check_overlap(
        self, key: tuple[object, ...], entry: _Reassembly, start: int, payload: bytes, family: str
    ) -> bool:
        """Apply the overlap policy; False if the fragment brings no new bytes."""
        end = start + len(payload)
        overlaps = entry.overlaps(start, end)
        if not overlaps:
            return True
        same = all(entry.data[a:b] == payload[a - start : b - start] for a, b in overlaps)
        if family == "ipv6":
            if same and (start, end) in entry.pieces:
                self.errors["ipv6.frag_duplicate"] += 1
                return False
            self._drop_reassembly(key)
            raise ParseError("ipv6.frag_overlap", f"fragment [{start}, {end}) overlaps (RFC 5722)")
        if not same:
            self.errors["ipv4.frag_overlap_conflict"] += 1
        covered = sum(b - a for a, b in overlaps)
        if covered == end - start:
            self.errors["ipv4.frag_duplicate"] += 1
            return False
        return True

    def _make_room(self, key: tuple[object, ...], growth: int) -> None:
        """Evict the oldest other reassemblies until `growth` more bytes fit the budget."""
        if self._reassembly_bytes + growth <= self.max_frag_bytes:
            return
        for victim in list(self._reassemblies):
            if self._reassembly_bytes + growth <= self.max_frag_bytes:
                return
            if victim != key:
                self._drop_reassembly(victim)
                self.errors["frag.evicted"] += 1
        if self._reassembly_bytes + growth > self.max_frag_bytes:
            self._drop_reassembly(key)
            raise ParseError("frag.memory", f"datagram needs more than {self.max_frag_bytes} bytes")

    def _drop_reassembly(self, key: tuple[object, ...]) -> None:
        entry = self._reassemblies.pop(key, None)
        if entry is not None:
            self._reassembly_bytes -= entry.charge()

    # -- transport and tunnels ----------------------------------------------------------

    def _transport(
        self,
        ts: float,
        proto: int,
        src: str,
        dst: str,
        buf: Buffer,
        off: int,
        end: int,
        depth: int,
        truncated: bool,
    ) -> Segment | None:
        if proto == PROTO_UDP:
            return self._udp(ts, src, dst, buf, off, end, depth, truncated)
        if proto == PROTO_TCP:
            return self._tcp(ts, src, dst, buf, off, end, truncated)
        if proto in (_PROTO_GRE, _PROTO_IPIP, _PROTO_IPV6):
            if depth >= _MAX_ENCAPSULATION_DEPTH:
                raise ParseError("encap.too_deep", f"{depth} levels of tunnelling")
            if proto == _PROTO_GRE:
                return self._gre(ts, buf, off, end, depth + 1, truncated)
            if proto == _PROTO_IPIP:
                return self._ipv4(ts, buf, off, end, depth + 1, truncated)
            return self._ipv6(ts, buf, off, end, depth + 1, truncated)
        return None  # ICMP, ESP, SCTP, ...

    def _udp(
        self, ts: float, src: str, dst: str, buf: Buffer, off: int, end: int, depth: int, truncated: bool
    ) -> Segment | None:
        available = end - off
        if available < 8:
            raise ParseError("udp.truncated" if truncated else "udp.bad_length", f"{available} bytes")
        sport, dport, length = _UDP.unpack_from(buf, off)
        if length == 0:
            length = available  # IPv6 jumbogram (RFC 2675 §4) / UDP GSO super-packet
        elif length < 8:
            raise ParseError("udp.bad_length", f"length field {length}")
        if length > available:
            reason = "udp.truncated" if truncated else "udp.bad_length"
            raise ParseError(reason, f"length field {length}, {available} bytes present")
        if dport == _VXLAN_PORT and self._looks_like_vxlan(buf, off + 8, off + length):
            if depth >= _MAX_ENCAPSULATION_DEPTH:
                raise ParseError("encap.too_deep", f"{depth} levels of tunnelling")
            return self._ethernet(ts, buf, off + 16, off + length, depth + 1)
        return Segment(ts, PROTO_UDP, src, sport, dst, dport, bytes(buf[off + 8 : off + length]))

    def _tcp(
        self, ts: float, src: str, dst: str, buf: Buffer, off: int, end: int, truncated: bool
    ) -> Segment:
        available = end - off
        if available < 20:
            raise ParseError("tcp.truncated" if truncated else "tcp.bad_header", f"{available} bytes")
        sport, dport, seq, _ack, data_offset, flags = _TCP.unpack_from(buf, off)
        header_len = (data_offset >> 4) * 4
        if header_len < 20 or header_len > available:
            raise ParseError("tcp.bad_header_length", f"{header_len} bytes of {available}")
        if truncated:
            raise ParseError("tcp.truncated", "segment cut by the capture")
        payload = bytes(buf[off + header_len : end])
        return Segment(ts, PROTO_TCP, src, sport, dst, dport, payload, seq, flags)

    @staticmethod
    def _looks_like_vxlan(buf: Buffer, off: int, end: int) -> bool:
        """RFC 7348 §5: an 8-byte header with the I flag, then an Ethernet frame.

        Anything else on port 4789 is kept as plain UDP.
        """
        return end - off >= 8 + 14 and bool(buf[off] & _VXLAN_FLAG_I)

    def _gre(self, ts: float, buf: Buffer, off: int, end: int, depth: int, truncated: bool) -> Segment | None:
        """GRE (RFC 2784, key/sequence from RFC 2890, routing from RFC 1701)."""
        if end - off < 4:
            raise ParseError("gre.truncated", f"{end - off} bytes")
        flags, protocol = _GRE.unpack_from(buf, off)
        if flags & 0x0007:
            return None  # version 1 is PPTP's enhanced GRE (PPP inside)
        checksum, routing, key, sequence = flags & 0x8000, flags & 0x4000, flags & 0x2000, flags & 0x1000
        off += 4 + (4 if checksum or routing else 0) + (4 if key else 0) + (4 if sequence else 0)
        if routing:
            off = self._gre_skip_routing(buf, off, end)
        if off > end:
            raise ParseError("gre.truncated", "optional fields")
        if protocol == _ETH_TEB:
            return self._ethernet(ts, buf, off, end, depth)
        if protocol == _ETH_ERSPAN_1_2:
            # Type I has no ERSPAN header and no GRE sequence number; type II has both.
            return self._ethernet(ts, buf, off + 8 if sequence else off, end, depth)
        if protocol == _ETH_ERSPAN_3:
            return self._erspan3(ts, buf, off, end, depth)
        if protocol == ETH_IPV4:
            return self._ipv4(ts, buf, off, end, depth, truncated)
        if protocol == ETH_IPV6:
            return self._ipv6(ts, buf, off, end, depth, truncated)
        return None

    @staticmethod
    def _gre_skip_routing(buf: Buffer, off: int, end: int) -> int:
        """RFC 1701 source route entries: family(2) offset(1) length(1) data, until length 0."""
        while True:
            if end - off < 4:
                raise ParseError("gre.truncated", "routing")
            sre_length = buf[off + 3]
            off += 4 + sre_length
            if sre_length == 0:
                return off

    def _erspan3(self, ts: float, buf: Buffer, off: int, end: int, depth: int) -> Segment | None:
        """ERSPAN type III: 12-byte header (+8-byte platform subheader when O is set)."""
        if end - off < 12:
            raise ParseError("erspan.truncated", f"{end - off} bytes")
        (word2,) = _ERSPAN3_WORD2.unpack_from(buf, off + 8)
        frame_type = (word2 >> 10) & 0x1F  # 0: Ethernet, 2: IP
        off += 12 + (8 if word2 & 1 else 0)
        if frame_type == 0:
            return self._ethernet(ts, buf, off, end, depth)
        if frame_type == 2:
            return self._raw_ip(ts, buf, off, end, depth, False)
        return None
