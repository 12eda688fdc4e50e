"""Capture filters compiled through libpcap: the same bytecode as `tcpdump -dd`, clear errors,
and a default filter that keeps signalling and media and nothing else."""

from __future__ import annotations

import re
import struct
import subprocess
from pathlib import Path

import pytest

from capture.bpf import (
    DEFAULT_FILTER,
    FilterError,
    accept_all,
    check_program,
    compile_filter,
    pack_program,
)
from capture.errors import ParseError
from capture.pcapio import LINKTYPE_ETHERNET, LINKTYPE_RAW, read_batches, write_pcap
from tests.gen.netframes import FrameBuilder, LinkPath, ethernet_header

EXPRESSIONS = [
    DEFAULT_FILTER,
    "udp",
    "udp dst port 5060",
    "tcp port 5060 or tcp port 5061",
    "vlan and (udp or tcp port 5060)",
    "host 10.0.0.1 and not port 22",
    "ip6 and udp portrange 10000-20000",
    "ip[6:2] & 0x1fff != 0",
]
_DD_LINE = re.compile(r"\{ 0x([0-9a-f]+), (\d+), (\d+), 0x([0-9a-f]+) \},")


def tcpdump_dd(expression: str, *extra: str) -> list[tuple[int, int, int, int]]:
    out = subprocess.run(["tcpdump", *extra, "-dd", expression], check=True, capture_output=True,
                         text=True, timeout=20).stdout
    return [(int(c, 16), int(jt), int(jf), int(k, 16)) for c, jt, jf, k in _DD_LINE.findall(out)]


@pytest.mark.parametrize("expression", EXPRESSIONS)
def test_bytecode_is_what_tcpdump_compiles(expression: str) -> None:
    program = compile_filter(expression)
    assert program == tcpdump_dd(expression)
    check_program(program)


def test_the_link_type_is_honoured(tmp_path: Path) -> None:
    """For raw IP frames there is no Ethernet header: tcpdump reading a LINKTYPE_RAW file
    compiles for that link type, and so must we."""
    raw = tmp_path / "raw.pcap"
    write_pcap(raw, LINKTYPE_RAW, [])
    expression = "udp port 5060"
    assert compile_filter(expression, LINKTYPE_RAW) == tcpdump_dd(expression, "-r", str(raw))
    assert compile_filter(expression, LINKTYPE_RAW) != compile_filter(expression, LINKTYPE_ETHERNET)


@pytest.mark.parametrize("expression", ["udp port", "tcp port 99999", "hots 10.0.0.1", "vlan and (udp"])
def test_a_bad_expression_names_itself_and_libpcaps_reason(expression: str) -> None:
    with pytest.raises(FilterError) as caught:
        compile_filter(expression)
    err = caught.value
    assert isinstance(err, ParseError) and isinstance(err, ValueError)
    assert err.reason == "bpf.bad_filter"
    assert repr(expression) in str(err)
    stderr = subprocess.run(["tcpdump", "-dd", expression], capture_output=True, text=True, timeout=20).stderr
    assert str(err).endswith(stderr.strip().splitlines()[-1].removeprefix("tcpdump: "))   # libpcap's words


def test_non_ascii_expressions_are_refused_cleanly() -> None:
    with pytest.raises(FilterError, match="not ASCII"):
        compile_filter("host caf\u00e9")


def test_programs_are_checked_and_packed_as_struct_sock_filter() -> None:
    program = compile_filter("udp")
    packed = pack_program(program)
    assert len(packed) == 8 * len(program)
    assert struct.unpack_from("=HBBI", packed, 0) == program[0]
    assert pack_program(accept_all(96)) == struct.pack("=HBBI", 0x06, 0, 0, 96)
    with pytest.raises(ValueError, match="jumps past the end"):
        check_program([(0x15, 5, 0, 17), (0x06, 0, 0, 0)])
    with pytest.raises(ValueError, match="end with a return"):
        check_program([(0x28, 0, 0, 12)])
    with pytest.raises(ValueError, match="out of range"):
        check_program([(0x06, 0, 0, 1 << 32)])
    with pytest.raises(ValueError, match="1..4096"):
        check_program([])


# -- what the default filter keeps (libpcap's own interpreter, through tcpdump -r) ----------------

def _gre_frame() -> bytes:
    """IPv4 / GRE (protocol 47) with an ERSPAN type II header: how mirror sessions travel."""
    gre = struct.pack("!HHI", 0x1000, 0x88BE, 1) + bytes(8)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(gre), 1, 0, 64, 47, 0,
                     bytes([192, 0, 2, 1]), bytes([192, 0, 2, 2]))
    return ethernet_header(LinkPath("192.0.2.1", "192.0.2.2"), 0x0800) + ip + gre


def _arp_frame() -> bytes:
    return ethernet_header(LinkPath("10.0.0.1", "10.0.0.2"), 0x0806) + bytes(28)


def _sample_frames() -> dict[str, bytes]:
    fb = FrameBuilder()
    v4, v6, tagged = LinkPath("10.0.0.1", "10.0.0.2"), LinkPath("2001:db8::1", "2001:db8::2"), \
        LinkPath("10.0.0.1", "10.0.0.2", vlan=100)
    return {
        "rtp": fb.udp(v4, 40000, 50000, bytes(172)),
        "sip_udp_odd_port": fb.udp(v4, 5080, 5080, b"OPTIONS sip:a SIP/2.0\r\n\r\n"),
        "sip_tcp": fb.tcp(v4, 33000, 5060, 1, 1, 0x18, b"INVITE sip:a SIP/2.0\r\n"),
        "sips_tcp": fb.tcp(v4, 5061, 33001, 1, 1, 0x18, b"\x17\x03\x03"),
        "rtp_v6": fb.udp(v6, 40000, 50000, bytes(172)),
        "sip_tcp_v6": fb.tcp(v6, 33000, 5060, 1, 1, 0x18, b"BYE sip:a SIP/2.0\r\n"),
        "rtp_vlan": fb.udp(tagged, 40000, 50000, bytes(172)),
        "sip_tcp_vlan": fb.tcp(tagged, 33000, 5060, 1, 1, 0x18, b"ACK sip:a SIP/2.0\r\n"),
        "erspan": _gre_frame(),
        "web_tcp": fb.tcp(v4, 33000, 443, 1, 1, 0x18, b"GET"),
        "web_tcp_vlan": fb.tcp(tagged, 33000, 80, 1, 1, 0x18, b"GET"),
        "ssh_v6": fb.tcp(v6, 22, 33000, 1, 1, 0x18, b"SSH-2.0"),
        "arp": _arp_frame(),
    }


def test_the_default_filter_keeps_signalling_and_media_only(tmp_path: Path) -> None:
    frames = _sample_frames()
    names = list(frames)
    source, kept = tmp_path / "all.pcap", tmp_path / "kept.pcap"
    write_pcap(source, LINKTYPE_ETHERNET, [(1.0 + i, frames[n]) for i, n in enumerate(names)])
    subprocess.run(["tcpdump", "-r", str(source), "-w", str(kept), DEFAULT_FILTER], check=True,
                   capture_output=True, timeout=20)
    passed = {bytes(f) for batch in read_batches(kept) for _, f in batch.iter_frames()}
    assert {n for n in names if frames[n] in passed} == {
        "rtp", "sip_udp_odd_port", "sip_tcp", "sips_tcp", "rtp_v6", "sip_tcp_v6", "rtp_vlan",
        "sip_tcp_vlan", "erspan"}
