"""Capture filters: tcpdump-syntax expressions compiled to classic BPF at the edge.

The compiler is libpcap's own (`pcap_compile` on a "dead" handle, through ctypes), so an
expression means here exactly what it means to tcpdump: `compile_filter(e)` returns the same
instructions as `tcpdump -dd e`.  The result is a list of `(code, jt, jf, k)` tuples, the
layout of the kernel's `struct sock_filter` (linux/filter.h), ready for SO_ATTACH_FILTER.

A note on VLANs in live capture: the Linux receive path removes the outer 802.1Q/802.1ad tag
from the packet before any packet socket sees it (it moves to the skb's metadata; AF_PACKET
reports it beside the frame).  The kernel filter therefore runs on the untagged frame, so a
plain "udp" already matches singly tagged UDP, and "vlan and (...)" matches the inner tag of
QinQ traffic.  On a dead handle libpcap compiles "vlan" as a test of the EtherType in the
packet bytes, which is what the remaining (inner) tag needs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import struct

from capture.errors import ParseError
from capture.pcapio import LINKTYPE_ETHERNET, LINKTYPE_RAW, MAX_RECORD_BYTES

Instruction = tuple[int, int, int, int]

# SIP on its ports (TCP; UDP is taken whole below), any UDP (RTP, SIP over UDP on any port,
# VXLAN) and GRE (ERSPAN mirror sessions); then the same behind one more VLAN tag.  The
# "vlan" clause comes last: libpcap shifts the offsets of everything that follows "vlan".
_SIGNALLING_AND_MEDIA = "udp or tcp port 5060 or tcp port 5061 or ip proto 47"
DEFAULT_FILTER = f"{_SIGNALLING_AND_MEDIA} or (vlan and ({_SIGNALLING_AND_MEDIA}))"

# tcpdump's default snapshot length; the accept instructions return it (bytes kept per packet).
DEFAULT_SNAPLEN = MAX_RECORD_BYTES
BPF_MAXINSNS = 4096          # linux/bpf_common.h: the kernel refuses longer classic programs
PCAP_NETMASK_UNKNOWN = 0xFFFFFFFF
_OPTIMIZE = 1                # tcpdump optimises unless -O is given
# pcap_open_dead takes a DLT_ value.  Link types (the numbers in files, which capture.pcapio
# uses) equal their DLT_ values except for a few old ones (pcap draft §8.1); raw IP is the one
# a live interface can have here (DLT_RAW is 12 on Linux).
_DLT_FOR_LINKTYPE = {LINKTYPE_RAW: 12}

BPF_RET_K = 0x06             # BPF_RET | BPF_K
_CLASS_MASK = 0x07           # linux/bpf_common.h: BPF_CLASS(code)
_CLASS_JMP = 0x05
_CLASS_RET = 0x06
_OP_MASK = 0xF0              # BPF_OP(code)
_OP_JA = 0x00
_SOCK_FILTER = struct.Struct("=HBBI")   # struct sock_filter: u16 code, u8 jt, u8 jf, u32 k


class FilterError(ParseError):
    """A filter expression libpcap refuses; `detail` names the expression and libpcap's reason."""


class _BpfInsn(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte),
                ("k", ctypes.c_uint32)]


class _BpfProgram(ctypes.Structure):
    _fields_ = [("bf_len", ctypes.c_uint), ("bf_insns", ctypes.POINTER(_BpfInsn))]


@functools.cache
def _libpcap() -> ctypes.CDLL:
    """libpcap with the prototypes used here; RuntimeError when it is not installed."""
    name = ctypes.util.find_library("pcap") or "libpcap.so.0.8"
    try:
        lib = ctypes.CDLL(name)
    except OSError as exc:
        raise RuntimeError(f"libpcap is needed to compile capture filters: {exc}") from exc
    lib.pcap_open_dead.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.pcap_open_dead.restype = ctypes.c_void_p
    lib.pcap_compile.argtypes = [ctypes.c_void_p, ctypes.POINTER(_BpfProgram), ctypes.c_char_p,
                                 ctypes.c_int, ctypes.c_uint32]
    lib.pcap_compile.restype = ctypes.c_int
    lib.pcap_geterr.argtypes = [ctypes.c_void_p]
    lib.pcap_geterr.restype = ctypes.c_char_p
    lib.pcap_freecode.argtypes = [ctypes.POINTER(_BpfProgram)]
    lib.pcap_freecode.restype = None
    lib.pcap_close.argtypes = [ctypes.c_void_p]
    lib.pcap_close.restype = None
    return lib


def compile_filter(expression: str, linktype: int = LINKTYPE_ETHERNET,
                   snaplen: int = DEFAULT_SNAPLEN) -> list[Instruction]:
    """Compile a tcpdump-syntax `expression` for frames of `linktype` (as `tcpdump -dd` does).

    Raises FilterError (a ParseError, reason "bpf.bad_filter") naming the expression and
    libpcap's message when the expression does not compile."""
    try:
        encoded = expression.encode("ascii")
    except UnicodeEncodeError as exc:
        raise FilterError("bpf.bad_filter", f"{expression!r}: not ASCII") from exc
    lib = _libpcap()
    handle = lib.pcap_open_dead(_DLT_FOR_LINKTYPE.get(linktype, linktype), snaplen)
    if not handle:
        raise RuntimeError(f"pcap_open_dead({linktype}, {snaplen}) failed")
    try:
        program = _BpfProgram()
        if lib.pcap_compile(handle, ctypes.byref(program), encoded, _OPTIMIZE, PCAP_NETMASK_UNKNOWN) != 0:
            message = (lib.pcap_geterr(handle) or b"").decode("utf-8", "replace")
            raise FilterError("bpf.bad_filter", f"{expression!r}: {message}")
        try:
            return [(i.code, i.jt, i.jf, i.k) for i in program.bf_insns[: program.bf_len]]
        finally:
            lib.pcap_freecode(ctypes.byref(program))
    finally:
        lib.pcap_close(handle)


def accept_all(snaplen: int = DEFAULT_SNAPLEN) -> list[Instruction]:
    """The one-instruction program that keeps every packet (up to `snaplen` bytes)."""
    return [(BPF_RET_K, 0, 0, snaplen)]


def check_program(program: list[Instruction]) -> None:
    """ValueError unless `program` has the shape the kernel accepts: 1..4096 instructions, each
    field in range, and every jump landing inside the program (the kernel's own checker is
    stricter; this catches what a caller can get wrong when building a program by hand)."""
    if not 1 <= len(program) <= BPF_MAXINSNS:
        raise ValueError(f"a BPF program has 1..{BPF_MAXINSNS} instructions, not {len(program)}")
    last = len(program) - 1
    for pc, (code, jt, jf, k) in enumerate(program):
        if not (0 <= code <= 0xFFFF and 0 <= jt <= 0xFF and 0 <= jf <= 0xFF and 0 <= k <= 0xFFFFFFFF):
            raise ValueError(f"BPF instruction {pc} has a field out of range: {(code, jt, jf, k)}")
        if code & _CLASS_MASK == _CLASS_JMP and pc + 1 + _jump_distance(code, jt, jf, k) > last:
            raise ValueError(f"BPF instruction {pc} jumps past the end of the program")
    if program[last][0] & _CLASS_MASK != _CLASS_RET:
        raise ValueError("a BPF program must end with a return instruction")


def _jump_distance(code: int, jt: int, jf: int, k: int) -> int:
    """How far a jump instruction may go: k for the unconditional BPF_JA, else max(jt, jf)."""
    return k if code & _OP_MASK == _OP_JA else max(jt, jf)


def pack_program(program: list[Instruction]) -> bytes:
    """The program as an array of `struct sock_filter` (native byte order), after check_program."""
    check_program(program)
    return b"".join(_SOCK_FILTER.pack(*insn) for insn in program)
