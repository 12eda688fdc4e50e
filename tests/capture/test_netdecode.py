"""capture.netdecode: link layers, tunnels, IPv4/IPv6 (with reassembly), UDP/TCP.

Packets are built with scapy, independently of the decoder; the real corpus captures are
checked against tshark's view of them.
"""

from __future__ import annotations

import random
import re
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest
from scapy.contrib.erspan import ERSPAN_II, ERSPAN_III, ERSPAN_PlatformSpecific
from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
from scapy.layers.inet6 import (
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    fragment6,
)
from scapy.layers.ipsec import AH
from scapy.layers.l2 import ARP, GRE, LLC, CookedLinux, CookedLinuxV2, Dot1AD, Dot1Q, Dot3, Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Packet, Raw

from capture.errors import ParseError
from capture.netdecode import PacketDecoder, Segment
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
    read_batches,
)

CORPUS = Path("/work/shared/corpus/pcap")
SIP = b"OPTIONS sip:bob@example.com SIP/2.0\r\nCall-ID: abc\r\nContent-Length: 0\r\n\r\n"
V4 = IP(src="192.0.2.10", dst="198.51.100.20")
V6 = IPv6(src="2001:db8:0:0::1", dst="2001:db8::00ff:0:2")
U = UDP(sport=5060, dport=5062)


def eth(**fields: Any) -> Packet:
    return Ether(src="00:11:22:33:44:55", dst="66:77:88:99:aa:bb", **fields)


def decode(pkt: Packet | bytes, linktype: int = LINKTYPE_ETHERNET, decoder: PacketDecoder | None = None) -> Segment | None:
    return (decoder or PacketDecoder()).decode(linktype, 12.5, memoryview(bytes(pkt)))


def assert_udp_v4(seg: Segment | None, payload: bytes = SIP) -> None:
    assert seg == Segment(12.5, 17, "192.0.2.10", 5060, "198.51.100.20", 5062, payload)


def assert_udp_v6(seg: Segment | None, payload: bytes = SIP) -> None:
    assert seg == Segment(12.5, 17, "2001:db8::1", 5060, "2001:db8::ff:0:2", 5062, payload)


def reason_of(pkt: Packet | bytes, linktype: int = LINKTYPE_ETHERNET) -> str:
    with pytest.raises(ParseError) as info:
        decode(pkt, linktype)
    return info.value.reason


# -- link layers ------------------------------------------------------------------------------


def test_ethernet_ipv4_udp() -> None:
    assert_udp_v4(decode(eth() / V4 / U / SIP))


def test_ethernet_padding_and_trailer_are_not_payload() -> None:
    frame = bytes(eth() / V4 / U / b"hi") + b"\0" * 14 + b"FCS!"
    assert_udp_v4(decode(frame), b"hi")


@pytest.mark.parametrize(
    "tags",
    [
        [Dot1Q(vlan=100)],
        [Dot1AD(vlan=10), Dot1Q(vlan=20)],  # 802.1ad QinQ
        [Dot1Q(vlan=1), Dot1Q(vlan=2), Dot1Q(vlan=3)],
    ],
)
def test_vlan_tag_stacks(tags: list[Packet]) -> None:
    pkt = eth()
    for tag in tags:
        pkt = pkt / tag
    assert_udp_v4(decode(pkt / V4 / U / SIP))
    assert_udp_v6(decode(pkt / V6 / U / SIP))


def test_legacy_qinq_tpid_0x9100() -> None:
    pkt = eth(type=0x9100) / Dot1Q(vlan=7) / V4 / U / SIP
    assert_udp_v4(decode(pkt))


@pytest.mark.parametrize(
    "pkt",
    [
        eth() / ARP(),
        Dot3(src="00:11:22:33:44:55", dst="66:77:88:99:aa:bb") / LLC() / Raw(b"\x00" * 40),
        eth(type=0x88CC) / Raw(b"lldp" * 10),
        eth() / V4 / ICMP() / b"ping",
        eth() / V6 / IPv6ExtHdrDestOpt(nh=59),  # "no next header"
    ],
)
def test_frames_without_udp_or_tcp_give_none(pkt: Packet) -> None:
    assert decode(pkt) is None


def test_linux_sll_and_sll2() -> None:
    assert_udp_v4(decode(CookedLinux(pkttype=0, proto=0x0800) / V4 / U / SIP, LINKTYPE_LINUX_SLL))
    assert_udp_v6(decode(CookedLinux(pkttype=4, proto=0x86DD) / V6 / U / SIP, LINKTYPE_LINUX_SLL))
    assert_udp_v4(decode(CookedLinuxV2(proto=0x0800) / V4 / U / SIP, LINKTYPE_LINUX_SLL2))
    assert_udp_v6(decode(CookedLinuxV2(proto=0x86DD) / V6 / U / SIP, LINKTYPE_LINUX_SLL2))
    assert_udp_v4(decode(CookedLinux(proto=0x8100) / Dot1Q(vlan=5) / V4 / U / SIP, LINKTYPE_LINUX_SLL))
    assert decode(CookedLinux(proto=0x0806) / ARP(), LINKTYPE_LINUX_SLL) is None


@pytest.mark.parametrize("linktype", [LINKTYPE_NULL, LINKTYPE_LOOP])
@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("family", [2, 24, 28, 30])
def test_null_and_loop_families_either_byte_order(linktype: int, order: str, family: int) -> None:
    inner = V4 / U / SIP if family == 2 else V6 / U / SIP
    frame = struct.pack(order + "I", family) + bytes(inner)
    check = assert_udp_v4 if family == 2 else assert_udp_v6
    check(decode(frame, linktype))


def test_null_unknown_family_is_none() -> None:
    assert decode(struct.pack("<I", 7) + bytes(V4 / U / SIP), LINKTYPE_NULL) is None


@pytest.mark.parametrize("linktype", [LINKTYPE_RAW, LINKTYPE_RAW_BSD12, LINKTYPE_RAW_BSD14])
def test_raw_ip_either_version(linktype: int) -> None:
    assert_udp_v4(decode(V4 / U / SIP, linktype))
    assert_udp_v6(decode(V6 / U / SIP, linktype))
    assert reason_of(b"\x50" + bytes(30), linktype) == "ip.bad_version"


def test_linktype_ipv4_and_ipv6() -> None:
    assert_udp_v4(decode(V4 / U / SIP, LINKTYPE_IPV4))
    assert_udp_v6(decode(V6 / U / SIP, LINKTYPE_IPV6))


def test_unknown_linktype_is_an_error() -> None:
    assert reason_of(bytes(V4 / U / SIP), 147) == "link.unsupported"


# -- IPv4 / IPv6 / transport ------------------------------------------------------------------


def test_ipv4_options_are_skipped() -> None:
    pkt = IP(src="192.0.2.10", dst="198.51.100.20", options=b"\x94\x04\x00\x00" + b"\x01" * 8) / U / SIP
    assert IP(bytes(pkt)).ihl == 8
    assert_udp_v4(decode(eth() / pkt))


def test_tcp_segment_fields() -> None:
    tcp = TCP(sport=40000, dport=5060, seq=0xFFFFFFF0, flags="PA", options=[("NOP", None), ("NOP", None), ("Timestamp", (1, 2))])
    seg = decode(eth() / V4 / tcp / SIP)
    assert seg == Segment(12.5, 6, "192.0.2.10", 40000, "198.51.100.20", 5060, SIP, 0xFFFFFFF0, 0x18)
    syn = decode(eth() / V6 / TCP(sport=1, dport=2, seq=7, flags="S"))
    assert syn is not None and syn.flags == 0x02 and syn.payload == b"" and syn.src == "2001:db8::1"


def test_ipv6_extension_header_chain() -> None:
    chain = (
        IPv6ExtHdrHopByHop()
        / IPv6ExtHdrRouting(addresses=["2001:db8::99"])
        / IPv6ExtHdrDestOpt()
        / AH(spi=1, icv=b"\0" * 12)
        / IPv6ExtHdrDestOpt()
    )
    assert_udp_v6(decode(eth() / V6 / chain / U / SIP))


def test_ipv6_atomic_fragment_is_not_reassembled() -> None:
    """RFC 6946: offset 0 and M clear means a whole packet in a fragment header."""
    assert_udp_v6(decode(eth() / V6 / IPv6ExtHdrFragment(id=5, offset=0, m=0) / U / SIP))


def test_ipv6_addresses_are_canonical() -> None:
    pkt = IPv6(src="2001:0DB8:0000:0000:0000:0000:0000:0001", dst="::ffff:192.0.2.1") / U / SIP
    seg = decode(pkt, LINKTYPE_RAW)
    assert seg is not None and (seg.src, seg.dst) == ("2001:db8::1", "::ffff:c000:201")


def test_udp_length_checks() -> None:
    frame = bytes(eth() / V4 / U / SIP)
    # Capture truncated by snaplen: IP says more than was captured.
    assert reason_of(frame[:-10]) == "udp.truncated"
    # UDP claims more than its IP datagram carries.
    lying = bytearray(frame)
    struct.pack_into("!H", lying, 38, len(SIP) + 8 + 4)
    assert reason_of(bytes(lying)) == "udp.bad_length"
    # A UDP length shorter than the datagram: the rest is not payload.
    short = bytearray(frame)
    struct.pack_into("!H", short, 38, 8 + 7)
    assert_udp_v4(decode(bytes(short)), SIP[:7])
    struct.pack_into("!H", short, 38, 5)
    assert reason_of(bytes(short)) == "udp.bad_length"


def test_truncated_headers_raise_parse_error() -> None:
    frame = bytes(eth() / V4 / TCP(sport=1, dport=2) / SIP)
    assert reason_of(frame[:10]) == "eth.truncated"
    assert reason_of(frame[:30]) == "ipv4.truncated"
    assert reason_of(frame[:40]) == "tcp.truncated"
    assert reason_of(frame[:-1]) == "tcp.truncated"
    v6 = bytes(eth() / V6 / U / SIP)
    assert reason_of(v6[:40]) == "ipv6.truncated"
    assert reason_of(v6[:-3]) == "udp.truncated"


def test_random_damage_only_raises_parse_error() -> None:
    """Truncate and flip bytes of many valid packets: a Segment, None or ParseError, nothing else."""
    rng = random.Random(7)
    samples = [
        bytes(eth() / Dot1Q() / V4 / U / SIP),
        bytes(eth() / V6 / IPv6ExtHdrHopByHop() / IPv6ExtHdrFragment(offset=0, m=1, id=3) / U / SIP),
        bytes(eth() / V4 / GRE(key_present=1, proto=0x6558) / Ether() / V6 / TCP() / SIP),
        bytes(eth() / V4 / UDP(dport=4789) / VXLAN(vni=3) / Ether() / V4 / U / SIP),
        bytes(eth() / V4 / GRE(seqnum_present=1, proto=0x22EB) / ERSPAN_III(o=1) / ERSPAN_PlatformSpecific() / Ether() / V4 / U / SIP),
    ] + [bytes(f) for f in fragment(eth() / IP(dst="10.9.9.9", id=77) / U / (SIP * 20), fragsize=200)]
    decoder = PacketDecoder()
    for _ in range(3000):
        frame = bytearray(rng.choice(samples))
        for _ in range(rng.randint(0, 4)):
            frame[rng.randrange(len(frame))] = rng.randrange(256)
        frame = frame[: rng.randint(0, len(frame))] if rng.random() < 0.5 else frame
        try:
            result = decoder.decode(rng.choice([LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_LINUX_SLL2]), 1.0, bytes(frame))
        except ParseError as exc:
            assert re.fullmatch(r"[a-z0-9_]+\.[a-z0-9_]+", exc.reason)
        else:
            assert result is None or isinstance(result, Segment)
    assert decoder.pending_fragment_bytes <= decoder.max_frag_bytes


# -- tunnels ----------------------------------------------------------------------------------


def _outer(inner: Packet) -> Packet:
    return eth() / IP(src="10.1.1.1", dst="10.2.2.2") / inner


@pytest.mark.parametrize(
    "gre",
    [
        GRE(proto=0x0800),
        GRE(chksum_present=1, key_present=1, seqnum_present=1, key=0xBEEF, sequence_number=9, proto=0x0800),
        GRE(key_present=1, key=1, proto=0x0800),
    ],
)
def test_gre_ipv4_with_optional_fields(gre: Packet) -> None:
    assert_udp_v4(decode(_outer(gre / V4 / U / SIP)))


def test_gre_ipv6_and_transparent_ethernet() -> None:
    assert_udp_v6(decode(_outer(GRE(proto=0x86DD) / V6 / U / SIP)))
    assert_udp_v4(decode(_outer(GRE(proto=0x6558, key_present=1) / eth() / Dot1Q(vlan=3) / V4 / U / SIP)))


def test_gre_version_1_is_not_decoded() -> None:
    raw = bytes(_outer(GRE(proto=0x880B) / (b"\x00" * 20)))
    pptp = bytearray(raw)
    pptp[34 + 1] |= 1  # version 1 (PPTP enhanced GRE)
    assert decode(bytes(pptp)) is None


def test_erspan_type_i_has_no_header() -> None:
    """Type I: GRE protocol 0x88BE without a sequence number, Ethernet right after GRE."""
    assert_udp_v4(decode(_outer(GRE(proto=0x88BE) / eth() / V4 / U / SIP)))


def test_erspan_type_ii() -> None:
    pkt = _outer(GRE(seqnum_present=1, sequence_number=5, proto=0x88BE) / ERSPAN_II(session_id=3, vlan=12) / eth() / V4 / U / SIP)
    assert_udp_v4(decode(pkt))


@pytest.mark.parametrize("platform", [False, True])
def test_erspan_type_iii(platform: bool) -> None:
    header = ERSPAN_III(o=1, session_id=9) / ERSPAN_PlatformSpecific(platf_id=3, info2=0xFFFFFFFF) if platform else ERSPAN_III(o=0)
    pkt = _outer(GRE(seqnum_present=1, proto=0x22EB) / header / eth() / V6 / U / SIP)
    assert_udp_v6(decode(pkt))


def test_vxlan() -> None:
    pkt = eth() / IP(src="10.1.1.1", dst="10.2.2.2") / UDP(sport=55555, dport=4789) / VXLAN(vni=42) / eth() / V4 / U / SIP
    assert_udp_v4(decode(pkt))
    pkt6 = eth() / V6 / UDP(sport=55555, dport=4789) / VXLAN(vni=42) / eth() / Dot1Q() / V6 / U / SIP
    assert_udp_v6(decode(pkt6))


def test_port_4789_without_vxlan_header_stays_udp() -> None:
    payload = b"\x00" * 30  # I flag clear: not VXLAN
    seg = decode(eth() / V4 / UDP(sport=1, dport=4789) / payload)
    assert seg is not None and seg.dport == 4789 and seg.payload == payload


def test_ip_in_ip() -> None:
    assert_udp_v4(decode(eth() / IP(src="10.1.1.1", dst="10.2.2.2", proto=4) / V4 / U / SIP))
    assert_udp_v6(decode(eth() / IP(src="10.1.1.1", dst="10.2.2.2", proto=41) / V6 / U / SIP))
    assert_udp_v4(decode(eth() / IPv6(nh=4) / V4 / U / SIP))


def test_encapsulation_depth_is_bounded() -> None:
    pkt: Packet = V4 / U / SIP
    for _ in range(20):
        pkt = IP(src="10.0.0.1", dst="10.0.0.2", proto=4) / pkt
    assert reason_of(pkt, LINKTYPE_RAW) == "encap.too_deep"


# -- IPv4 fragments ---------------------------------------------------------------------------

BIG = b"INVITE sip:x@y SIP/2.0\r\n" + bytes(range(256)) * 12


def _v4_fragments(payload: bytes = BIG, ident: int = 1234, fragsize: int = 400) -> list[bytes]:
    pkt = eth() / IP(src="192.0.2.10", dst="198.51.100.20", id=ident) / U / payload
    return [bytes(f) for f in fragment(pkt, fragsize=fragsize)]


def _feed(decoder: PacketDecoder, frames: list[bytes], linktype: int = LINKTYPE_ETHERNET, ts: float = 12.5) -> list[Segment]:
    out = []
    for frame in frames:
        seg = decoder.decode(linktype, ts, frame)
        if seg is not None:
            out.append(seg)
    return out


def _shuffled_with_duplicates(frames: list[bytes], rng: random.Random, n_dups: int) -> list[bytes]:
    """All frames in random order, plus duplicates placed before the last one."""
    order = frames[:]
    rng.shuffle(order)
    head, last = order[:-1], order[-1]
    for dup in rng.sample(head, n_dups):
        head.insert(rng.randrange(head.index(dup) + 1, len(head) + 1), dup)
    return [*head, last]


@pytest.mark.parametrize("seed", range(6))
def test_ipv4_fragments_out_of_order_and_duplicated(seed: int) -> None:
    rng = random.Random(seed)
    frames = _v4_fragments()
    assert len(frames) > 5
    order = _shuffled_with_duplicates(frames, rng, 3)
    decoder = PacketDecoder()
    results = [decoder.decode(1, 12.5, f) for f in order]
    assert results[:-1] == [None] * (len(order) - 1)  # complete exactly at the last fragment
    assert_udp_v4(results[-1], BIG)
    assert decoder.errors == {"ipv4.frag_duplicate": 3}
    assert decoder.pending_fragment_bytes == 0


def _v4_raw_fragment(ident: int, offset: int, more: bool, data: bytes, proto: int = 17) -> bytes:
    ip = IP(src="192.0.2.10", dst="198.51.100.20", id=ident, proto=proto, frag=offset // 8, flags="MF" if more else 0)
    return bytes(eth() / ip / Raw(data))


def test_ipv4_overlapping_fragments() -> None:
    datagram = bytes(U / BIG)
    a, b, c = datagram[:800], datagram[400:1600], datagram[1600:]
    decoder = PacketDecoder()
    assert decoder.decode(1, 1.0, _v4_raw_fragment(9, 0, True, a)) is None
    assert decoder.decode(1, 1.0, _v4_raw_fragment(9, 400, True, b)) is None  # overlaps a, same bytes
    assert_udp_v4(decoder.decode(1, 12.5, _v4_raw_fragment(9, 1600, False, c)), BIG)
    assert not decoder.errors


def test_ipv4_last_fragment_carrying_no_new_bytes_still_completes() -> None:
    datagram = bytes(U / BIG)
    decoder = PacketDecoder()
    assert decoder.decode(1, 1.0, _v4_raw_fragment(15, 0, True, datagram[:1600])) is None
    assert decoder.decode(1, 1.0, _v4_raw_fragment(15, 1600, True, datagram[1600:])) is None
    # The end is only known now, from a copy of bytes already received.
    tail = len(datagram) - len(datagram) % 8
    assert_udp_v4(decoder.decode(1, 12.5, _v4_raw_fragment(15, tail - 8, False, datagram[tail - 8 :])), BIG)


def test_ipv4_conflicting_overlap_keeps_first_copy_and_counts() -> None:
    datagram = bytes(U / BIG)
    forged = datagram[400:800].replace(b"\x10", b"\xee") + datagram[800:1200]
    decoder = PacketDecoder()
    decoder.decode(1, 1.0, _v4_raw_fragment(10, 0, True, datagram[:800]))
    decoder.decode(1, 1.0, _v4_raw_fragment(10, 400, True, forged))
    assert_udp_v4(decoder.decode(1, 12.5, _v4_raw_fragment(10, 1200, False, datagram[1200:])), BIG)
    assert decoder.errors["ipv4.frag_overlap_conflict"] == 1


def test_ipv4_inconsistent_fragments_raise() -> None:
    datagram = bytes(U / BIG)
    decoder = PacketDecoder()
    decoder.decode(1, 1.0, _v4_raw_fragment(11, 800, False, datagram[800:1200]))  # last: ends at 1200
    with pytest.raises(ParseError) as info:
        decoder.decode(1, 1.0, _v4_raw_fragment(11, 1200, True, datagram[1200:1600]))  # past the end
    assert info.value.reason == "ipv4.frag_inconsistent"
    with pytest.raises(ParseError) as info:
        decoder.decode(1, 1.0, _v4_raw_fragment(12, 0, True, datagram[:13]))  # not a multiple of 8
    assert info.value.reason == "ipv4.frag_bad_length"
    with pytest.raises(ParseError) as info:
        decoder.decode(1, 1.0, _v4_raw_fragment(13, 65528, False, b"x" * 16))
    assert info.value.reason == "ipv4.frag_too_big"


def test_ipv4_fragment_key_includes_protocol_and_addresses() -> None:
    datagram = bytes(U / BIG)
    decoder = PacketDecoder()
    decoder.decode(1, 1.0, _v4_raw_fragment(14, 0, True, datagram[:800]))
    # Same id, other protocol: a different datagram, so the UDP one stays incomplete.
    assert decoder.decode(1, 1.0, _v4_raw_fragment(14, 800, False, datagram[800:], proto=6)) is None
    assert_udp_v4(decoder.decode(1, 12.5, _v4_raw_fragment(14, 800, False, datagram[800:])), BIG)


def test_fragments_expire_by_packet_time() -> None:
    frames = _v4_fragments()
    decoder = PacketDecoder(frag_timeout_s=30.0)
    _feed(decoder, frames[:-1], ts=100.0)
    assert decoder.pending_fragment_bytes > 0
    assert decoder.decode(1, 131.0, frames[-1]) is None  # the rest was dropped after 30 s
    assert decoder.errors["frag.timeout"] == 1
    decoder.expire(1000.0)
    assert decoder.pending_fragment_bytes == 0


def test_fragment_memory_is_bounded() -> None:
    first = _v4_fragments(ident=0)[0]
    decoder = PacketDecoder(max_frag_bytes=64 * 1024)
    for ident in range(2000):  # first parts of 2000 datagrams that never complete
        frame = bytearray(first)
        struct.pack_into("!H", frame, 18, ident)  # the IPv4 identification field
        decoder.decode(1, 1.0, bytes(frame))
        assert decoder.pending_fragment_bytes <= 64 * 1024
    assert decoder.errors["frag.evicted"] > 1000
    # The most recent datagram survived the evictions and still completes.
    segs = _feed(decoder, _v4_fragments(ident=1999)[1:])
    assert_udp_v4(segs[0], BIG)


# -- IPv6 fragments ---------------------------------------------------------------------------


def _v6_fragments(ident: int = 99, ext: Packet | None = None) -> list[bytes]:
    pkt = IPv6(src="2001:db8::1", dst="2001:db8::ff:0:2") / IPv6ExtHdrHopByHop() / IPv6ExtHdrFragment(id=ident)
    if ext is not None:
        pkt = pkt / ext
    return [bytes(eth() / f) for f in fragment6(pkt / U / BIG, 500)]


@pytest.mark.parametrize("seed", range(4))
def test_ipv6_fragments_reordered_with_duplicates(seed: int) -> None:
    rng = random.Random(seed)
    frames = _v6_fragments(ext=IPv6ExtHdrDestOpt())  # a header inside the fragmentable part
    assert len(frames) > 3
    order = _shuffled_with_duplicates(frames, rng, 2)
    decoder = PacketDecoder()
    results = [decoder.decode(1, 12.5, f) for f in order]
    assert results[:-1] == [None] * (len(order) - 1)
    assert_udp_v6(results[-1], BIG)
    assert decoder.errors == {"ipv6.frag_duplicate": 2}


def test_ipv6_overlapping_fragments_abandon_datagram() -> None:
    """RFC 5722: an overlap (other than an exact duplicate) discards the whole datagram."""
    datagram = bytes(U / BIG)

    def frag(offset: int, more: bool, data: bytes) -> bytes:
        return bytes(eth() / V6 / IPv6ExtHdrFragment(id=5, offset=offset // 8, m=int(more), nh=17) / Raw(data))

    decoder = PacketDecoder()
    assert decoder.decode(1, 1.0, frag(0, True, datagram[:800])) is None
    with pytest.raises(ParseError) as info:
        decoder.decode(1, 1.0, frag(400, True, datagram[400:1200]))
    assert info.value.reason == "ipv6.frag_overlap"
    assert decoder.decode(1, 1.0, frag(800, False, datagram[800:])) is None  # first part is gone
    assert decoder.decode(1, 1.0, frag(0, True, datagram[:800])) is not None  # a fresh start completes


def test_sll_ipv6_fragments_like_the_corpus() -> None:
    frames = [bytes(CookedLinux(proto=0x86DD) / IPv6(bytes(f)[14:])) for f in _v6_fragments()]
    segs = _feed(PacketDecoder(), list(reversed(frames)), LINKTYPE_LINUX_SLL)
    assert_udp_v6(segs[0], BIG)


# -- real captures vs tshark ------------------------------------------------------------------

_SIP_START = re.compile(rb"(?:[A-Z]+ [^ \r\n]+ SIP/2\.0\r?\n|SIP/2\.0 [1-6]\d\d )")


def _tshark_sip_endpoints(path: Path) -> list[tuple[str, int, str, int]]:
    """Per SIP frame: the innermost addresses and ports, as tshark sees them."""
    fields = ["ip.src", "ip.dst", "ipv6.src", "ipv6.dst", "udp.srcport", "udp.dstport", "tcp.srcport", "tcp.dstport"]
    cmd = ["tshark", "-r", str(path), "-Y", "sip", "-T", "fields", "-E", "occurrence=l"]
    for name in fields:
        cmd += ["-e", name]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        ip_src, ip_dst, v6_src, v6_dst, usp, udp_, tsp, tdp = line.split("\t")
        rows.append((v6_src or ip_src, int(usp or tsp), v6_dst or ip_dst, int(udp_ or tdp)))
    return rows


@pytest.mark.parametrize(
    "name",
    [
        "ipv6_sll_frag_prack_sip_only.pcap",  # Linux SLL + IPv6 + fragments
        "hold_refer_erspan_sip_only.pcapng",  # mirrored through GRE (outer and inner IPv4)
        "h263_video_dlt_null.pcap",  # BSD loopback
        "aaa_register_auth_cancel_183.pcap",  # plenty of non-SIP traffic around
    ],
)
def test_corpus_sip_messages_match_tshark(name: str) -> None:
    path = CORPUS / name
    decoder = PacketDecoder()
    mine = []
    for batch in read_batches(path):
        for ts, frame in batch.iter_frames():
            seg = decoder.decode(batch.linktype, ts, frame)
            if seg is not None and _SIP_START.match(seg.payload):
                mine.append((seg.src, seg.sport, seg.dst, seg.dport))
    expected = _tshark_sip_endpoints(path)
    assert len(expected) > 0
    assert mine == expected
    assert not decoder.errors
