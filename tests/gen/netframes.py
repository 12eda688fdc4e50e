"""Frame building (Ethernet, 802.1Q, IPv4, IPv6, UDP, TCP) and a plain pcap writer for the generator.

Everything is built with ``struct``; checksums are real (RFC 791 / RFC 768 / RFC 793 /
RFC 8200 §8.1 pseudo-header) so that tshark with checksum validation sees no errors.
"""

from __future__ import annotations

import hashlib
import ipaddress
import struct
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np

LINKTYPE_ETHERNET = 1
ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
ETHERTYPE_VLAN = 0x8100
IPPROTO_TCP = 6
IPPROTO_UDP = 17

TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_PSH = 0x08
TCP_ACK = 0x10

PCAP_GLOBAL_HEADER = struct.Struct("<IHHiIII")
PCAP_RECORD_HEADER = struct.Struct("<IIII")
PCAP_MAGIC_USEC = 0xA1B2C3D4
PCAP_SNAPLEN = 262144

_IPV4_HEADER = struct.Struct("!BBHHHBBH4s4s")
_IPV6_HEADER = struct.Struct("!IHBB16s16s")
_UDP_HEADER = struct.Struct("!HHHH")
_TCP_HEADER = struct.Struct("!HHIIBBHHH")


def internet_checksum(data: bytes) -> int:
    """One's-complement sum of 16-bit words (RFC 1071), complemented."""
    if len(data) % 2:
        data += b"\x00"
    total = int(np.frombuffer(data, dtype=">u2").sum(dtype=np.uint64))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def mac_for(ip: str) -> bytes:
    """A stable, locally administered unicast MAC address for a host IP."""
    return b"\x02" + hashlib.blake2s(ip.encode(), digest_size=5).digest()


def is_ipv6(ip: str) -> bool:
    """True when ``ip`` is an IPv6 address literal."""
    return ipaddress.ip_address(ip).version == 6


@dataclass(slots=True)
class LinkPath:
    """Where a frame travels: both IP endpoints, and the optional 802.1Q VLAN on the mirror."""

    src_ip: str
    dst_ip: str
    vlan: int | None = None


@dataclass(slots=True)
class FrameBuilder:
    """Builds complete Ethernet frames; keeps per-host IPv4 identification counters."""

    ip_ids: dict[str, int] = field(default_factory=dict)

    def udp(self, path: LinkPath, sport: int, dport: int, payload: bytes) -> bytes:
        """An Ethernet frame carrying one UDP datagram with a valid checksum."""
        length = _UDP_HEADER.size + len(payload)
        header = _UDP_HEADER.pack(sport, dport, length, 0)
        checksum = internet_checksum(self._pseudo_header(path, IPPROTO_UDP, length) + header + payload)
        # RFC 768: a computed checksum of zero is transmitted as all ones.
        header = _UDP_HEADER.pack(sport, dport, length, checksum or 0xFFFF)
        return self._ip_frame(path, IPPROTO_UDP, header + payload)

    def tcp(self, path: LinkPath, sport: int, dport: int, seq: int, ack: int, flags: int,
            payload: bytes = b"", window: int = 64240) -> bytes:
        """An Ethernet frame carrying one TCP segment (no options) with a valid checksum."""
        offset_words = 5 << 4
        header = _TCP_HEADER.pack(sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF,
                                  offset_words, flags, window, 0, 0)
        length = len(header) + len(payload)
        checksum = internet_checksum(self._pseudo_header(path, IPPROTO_TCP, length) + header + payload)
        header = header[:16] + struct.pack("!H", checksum) + header[18:]
        return self._ip_frame(path, IPPROTO_TCP, header + payload)

    def _ip_frame(self, path: LinkPath, proto: int, l4: bytes) -> bytes:
        if is_ipv6(path.src_ip):
            ethertype, packet = ETHERTYPE_IPV6, self._ipv6(path, proto, l4)
        else:
            ethertype, packet = ETHERTYPE_IPV4, self._ipv4(path, proto, l4)
        return ethernet_header(path, ethertype) + packet

    def _ipv4(self, path: LinkPath, proto: int, l4: bytes) -> bytes:
        ident = self.ip_ids.get(path.src_ip, 0x1000)
        self.ip_ids[path.src_ip] = (ident + 1) & 0xFFFF
        src = ipaddress.IPv4Address(path.src_ip).packed
        dst = ipaddress.IPv4Address(path.dst_ip).packed
        dont_fragment = 0x4000
        fields = [0x45, 0, 20 + len(l4), ident, dont_fragment, 64, proto]
        header = _IPV4_HEADER.pack(*fields, 0, src, dst)
        header = _IPV4_HEADER.pack(*fields, internet_checksum(header), src, dst)
        return header + l4

    @staticmethod
    def _ipv6(path: LinkPath, proto: int, l4: bytes) -> bytes:
        src = ipaddress.IPv6Address(path.src_ip).packed
        dst = ipaddress.IPv6Address(path.dst_ip).packed
        return _IPV6_HEADER.pack(6 << 28, len(l4), proto, 64, src, dst) + l4

    @staticmethod
    def _pseudo_header(path: LinkPath, proto: int, length: int) -> bytes:
        if is_ipv6(path.src_ip):
            # RFC 8200 §8.1: src, dst, 32-bit upper-layer length, 3 zero bytes, next header.
            return (ipaddress.IPv6Address(path.src_ip).packed + ipaddress.IPv6Address(path.dst_ip).packed
                    + struct.pack("!I3xB", length, proto))
        return (ipaddress.IPv4Address(path.src_ip).packed + ipaddress.IPv4Address(path.dst_ip).packed
                + struct.pack("!xBH", proto, length))


def ethernet_header(path: LinkPath, ethertype: int) -> bytes:
    """Destination MAC, source MAC, optional 802.1Q tag (PCP 5 for voice), EtherType."""
    macs = mac_for(path.dst_ip) + mac_for(path.src_ip)
    if path.vlan is None:
        return macs + struct.pack("!H", ethertype)
    tci = (5 << 13) | (path.vlan & 0x0FFF)
    return macs + struct.pack("!HHH", ETHERTYPE_VLAN, tci, ethertype)


def split_timestamp(ts: float) -> tuple[int, int]:
    """Epoch seconds → (seconds, microseconds), rounded to the microsecond."""
    usec_total = round(ts * 1_000_000)
    return usec_total // 1_000_000, usec_total % 1_000_000


def quantize_ts(ts: float) -> float:
    """The value a µs-resolution pcap will give back for ``ts``."""
    sec, usec = split_timestamp(ts)
    return sec + usec / 1_000_000


def write_pcap_header(out: BinaryIO, linktype: int = LINKTYPE_ETHERNET) -> None:
    """The classic pcap global header: µs resolution, little-endian."""
    out.write(PCAP_GLOBAL_HEADER.pack(PCAP_MAGIC_USEC, 2, 4, 0, 0, PCAP_SNAPLEN, linktype))


def pcap_record(ts: float, frame: bytes) -> bytes:
    """One pcap record (header + frame) for a frame captured in full."""
    sec, usec = split_timestamp(ts)
    return PCAP_RECORD_HEADER.pack(sec, usec, len(frame), len(frame)) + frame
