"""Live capture from a network interface: AF_PACKET with a TPACKET_V3 memory-mapped ring.

The kernel writes packets into a ring of blocks shared with this process (see the kernel's
Documentation/networking/packet_mmap.rst).  A block is handed over (TP_STATUS_USER) when it is
full or when `retire_timeout_ms` passes; this reader copies the used part of the block once,
gives the block straight back to the kernel (TP_STATUS_KERNEL), and only then works out where
the frames are.  Each retired block becomes one `FrameBatch`, the same object the file reader
yields, so the capture engine runs live unchanged.

Layout of a block (linux/if_packet.h):
- `struct tpacket_block_desc`: version, offset_to_priv, then `struct tpacket_hdr_v1`
  (block_status, num_pkts, offset_to_first_pkt, blk_len, seq_num, first/last timestamps);
- `num_pkts` frames, each a `struct tpacket3_hdr` (tp_next_offset, tp_sec, tp_nsec, tp_snaplen,
  tp_len, tp_status, tp_mac, tp_net, hv1: rxhash, vlan_tci, vlan_tpid), a `struct
  sockaddr_ll`, then the frame itself at tp_mac.  Frames are linked by tp_next_offset (0 in
  the last one), so the walk is sequential; runs of equal-size frames (all G.711 20 ms RTP
  packets are the same size) are taken at once through a strided numpy view, as in
  capture.pcapio.

Filtering happens in the kernel (SO_ATTACH_FILTER, classic BPF from capture.bpf), before the
packet is copied into the ring.  On the loopback device every packet passes a packet socket
twice (leaving, as PACKET_OUTGOING, and arriving); like libpcap, the outgoing copy is dropped,
here by a three-instruction prefix to the filter (it works inside a fanout group too, where the
per-socket PACKET_IGNORE_OUTGOING option does not apply).

The receive path strips the outer VLAN tag into metadata before packet sockets see it; like
libpcap, the tag is put back into the frame (such frames are rebuilt at the end of the batch
buffer), so a tagged frame reads the same live as in a capture file.

The block status word is read without a memory barrier, which is sound on x86 (loads are
not reordered with older loads); weakly ordered CPUs (arm64) would want one before the copy.

Needs CAP_NET_RAW (and CAP_NET_ADMIN for promiscuous mode on some drivers).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import select
import socket
import struct
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType

import numpy as np

from capture.bpf import Instruction, accept_all, pack_program
from capture.pcapio import LINKTYPE_ETHERNET, LINKTYPE_RAW, FrameBatch

# linux/if_ether.h, linux/if_packet.h, asm-generic/socket.h, linux/sockios.h, linux/if_arp.h
ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
PACKET_FANOUT = 18
PACKET_FANOUT_DATA = 22
PACKET_MR_PROMISC = 1
PACKET_OUTGOING = 4
TPACKET_V3 = 2
SO_ATTACH_FILTER = 26
SIOCGIFHWADDR = 0x8927
SIOCGIFINDEX = 0x8933
ARPHRD_ETHER = 1
ARPHRD_RAWIP = 519
ARPHRD_LOOPBACK = 772
ARPHRD_NONE = 0xFFFE

TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
TP_STATUS_VLAN_VALID = 0x10
TP_STATUS_VLAN_TPID_VALID = 0x40
ETH_P_8021Q = 0x8100

FANOUT_MODES = {"hash": 0, "lb": 1, "cpu": 2, "rollover": 3, "random": 4, "qm": 5, "cbpf": 6}
PACKET_FANOUT_FLAG_DEFRAG = 0x8000   # reassemble IP fragments before hashing: one flow, one socket
PACKET_FANOUT_FLAG_UNIQUEID = 0x2000  # the kernel picks an unused group id (joined with id 0)
NEW_FANOUT_GROUP = -1                 # LiveCapture(fanout_group=...): start a group, id chosen by the kernel

# Classic BPF ancillary load of skb->pkt_type (linux/filter.h: SKF_AD_OFF + SKF_AD_PKTTYPE).
_SKF_AD_PKTTYPE = (-0x1000 + 4) & 0xFFFFFFFF
_DROP_OUTGOING: list[Instruction] = [
    (0x30, 0, 0, _SKF_AD_PKTTYPE),   # ldb [pkttype]
    (0x15, 0, 1, PACKET_OUTGOING),   # jeq #PACKET_OUTGOING, next, skip one
    (0x06, 0, 0, 0),                 # ret #0: drop
]

_LINKTYPES = {ARPHRD_ETHER: LINKTYPE_ETHERNET, ARPHRD_LOOPBACK: LINKTYPE_ETHERNET,
              ARPHRD_NONE: LINKTYPE_RAW, ARPHRD_RAWIP: LINKTYPE_RAW}

_BLOCK_HEADER = struct.Struct("=IIII")       # block_status, num_pkts, offset_to_first_pkt, blk_len
_BLOCK_HEADER_AT = 8                         # after version and offset_to_priv
_BLOCK_STATUS = struct.Struct("=I")
_BLOCK_SEQ = struct.Struct("=Q")
_BLOCK_SEQ_AT = 24                           # tpacket_hdr_v1.seq_num (after four u32 fields)
_NEXT_OFFSET = struct.Struct("=I")
_NEXT_DTYPE = np.dtype("=u4")
_STATS_V3 = struct.Struct("=III")            # tp_packets, tp_drops, tp_freeze_q_cnt
_REQ3 = struct.Struct("=7I")                 # struct tpacket_req3
_MREQ = struct.Struct("=iHH8s")              # struct packet_mreq
_VLAN_TAG = struct.Struct("!HH")
_IFNAMSIZ = 16                               # linux/if.h, the terminating NUL included
_ETH_ADDRS = 12                              # destination + source MAC: where a tag goes

# struct tpacket3_hdr up to and including hv1 (the frame walk only needs these 40 bytes).
_FRAME_HEADER = np.dtype([
    ("next", "=u4"), ("sec", "=u4"), ("nsec", "=u4"), ("snaplen", "=u4"), ("len", "=u4"),
    ("status", "=u4"), ("mac", "=u2"), ("net", "=u2"), ("rxhash", "=u4"), ("vlan_tci", "=u4"),
    ("vlan_tpid", "=u2"), ("pad", "=u2"),
])
_FRAME_HEADER_BYTES = _FRAME_HEADER.itemsize
_ARANGE_HEADER = np.arange(_FRAME_HEADER_BYTES, dtype=np.int64)
_RUN_LOOKAHEAD = 1024
_RUN_MIN = 8
_PAGE = mmap.PAGESIZE
_TPACKET_ALIGNMENT = 16


@dataclass(slots=True)
class RingSettings:
    """Size of the receive ring: block_count blocks of block_size bytes (a page multiple)."""

    block_size: int = 1 << 20
    block_count: int = 64
    frame_size: int = 2048          # TPACKET_V3 packs frames of any size; only sizes the request
    retire_timeout_ms: int = 50     # a partly filled block is handed over after this long

    def check(self) -> None:
        """ValueError naming the setting the kernel would refuse."""
        if self.block_size <= 0 or self.block_size % _PAGE:
            raise ValueError(f"ring block_size {self.block_size} is not a positive multiple of {_PAGE}")
        if self.frame_size < 128 or self.frame_size % _TPACKET_ALIGNMENT or self.block_size % self.frame_size:
            raise ValueError(f"ring frame_size {self.frame_size} must be a multiple of "
                             f"{_TPACKET_ALIGNMENT}, at least 128, and divide block_size")
        if self.block_count <= 0:
            raise ValueError(f"ring block_count {self.block_count} must be positive")
        if not 0 < self.retire_timeout_ms < 1 << 31:
            raise ValueError(f"ring retire_timeout_ms {self.retire_timeout_ms} must be positive")

    def request(self) -> bytes:
        """struct tpacket_req3 for PACKET_RX_RING."""
        frames = self.block_size // self.frame_size * self.block_count
        return _REQ3.pack(self.block_size, self.block_count, self.frame_size, frames,
                          self.retire_timeout_ms, 0, 0)


@dataclass(slots=True)
class CaptureStats:
    """Kernel counters since the capture opened (PACKET_STATISTICS, accumulated).

    `packets` counts every packet that passed the filter, dropped ones included (the kernel's
    tp_packets, libpcap's ps_recv); `drops` those lost because the ring was full;
    `freeze_count` how often the ring filled up."""

    packets: int
    drops: int
    freeze_count: int

    @property
    def delivered(self) -> int:
        return self.packets - self.drops


def fanout_argument(group: int, mode: str) -> int:
    """The PACKET_FANOUT option value: group id in the low 16 bits, mode and flags above;
    NEW_FANOUT_GROUP asks the kernel for an unused id."""
    unique = group == NEW_FANOUT_GROUP
    if not unique and not 0 <= group <= 0xFFFF:
        raise ValueError(f"fanout group {group} is not in 0..65535")
    if mode not in FANOUT_MODES:
        raise ValueError(f"fanout mode {mode!r} is not one of {sorted(FANOUT_MODES)}")
    flags = PACKET_FANOUT_FLAG_DEFRAG if mode == "hash" else 0
    flags |= PACKET_FANOUT_FLAG_UNIQUEID if unique else 0
    return (0 if unique else group) | (FANOUT_MODES[mode] | flags) << 16


class _SockFprog(ctypes.Structure):
    """struct sock_fprog (linux/filter.h): instruction count and a pointer to the array."""

    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _set_program(sock: socket.socket, level: int, option: int, program: list[Instruction]) -> None:
    """Hand a classic BPF program to the kernel as a struct sock_fprog (it copies the array)."""
    code = pack_program(program)
    array = ctypes.create_string_buffer(code, len(code))
    fprog = _SockFprog(len(program), ctypes.addressof(array))
    sock.setsockopt(level, option, bytes(fprog))


def attach_filter(sock: socket.socket, program: list[Instruction]) -> None:
    """SO_ATTACH_FILTER: the socket's filter."""
    _set_program(sock, socket.SOL_SOCKET, SO_ATTACH_FILTER, program)


def _interface_request(sock: socket.socket, interface: str, request: int) -> bytes:
    """An ifreq ioctl through `sock`, so it is answered in the socket's network namespace."""
    if not 0 < len(interface.encode()) < _IFNAMSIZ:
        raise ValueError(f"{interface!r} is not an interface name (1..{_IFNAMSIZ - 1} bytes)")
    try:
        return fcntl.ioctl(sock.fileno(), request, struct.pack("16s16x", interface.encode()))
    except OSError as exc:
        if exc.errno == errno.ENODEV:
            raise ValueError(f"no network interface named {interface!r}") from exc
        raise


def interface_hardware_type(sock: socket.socket, interface: str) -> int:
    """ARPHRD_* type of `interface` (ifr_hwaddr.sa_family)."""
    (family,) = struct.unpack_from("=H", _interface_request(sock, interface, SIOCGIFHWADDR), 16)
    return family


def interface_index(sock: socket.socket, interface: str) -> int:
    """ifindex of `interface` (ifr_ifindex)."""
    (index,) = struct.unpack_from("=i", _interface_request(sock, interface, SIOCGIFINDEX), 16)
    return index


def interface_linktype(interface: str) -> int:
    """The pcap link type LiveCapture will report for `interface` (compile filters for it)."""
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0) as sock:
        return _linktype_for(interface, interface_hardware_type(sock, interface))


def _linktype_for(interface: str, hardware: int) -> int:
    if hardware not in _LINKTYPES:
        raise ValueError(f"interface {interface!r} has hardware type {hardware}, "
                         "not Ethernet, loopback or raw IP")
    return _LINKTYPES[hardware]


def walk_block(data: bytes, first: int, count: int) -> list[int]:
    """Offsets of the `count` frame headers of a block, following tp_next_offset from `first`.

    The hot loop: one unpack per frame, except inside runs of equal-size frames, which are
    checked ahead through a strided view of their tp_next_offset fields and taken whole.  The
    walk stops early (with fewer offsets) at a link that leaves the block."""
    unpack_next = _NEXT_OFFSET.unpack_from
    starts: list[int] = []
    append = starts.append
    size = len(data)
    last_header = size - _FRAME_HEADER_BYTES
    remaining = count
    pos = first
    previous = -1
    while remaining > 0 and 0 <= pos <= last_header:
        append(pos)
        remaining -= 1
        (step,) = unpack_next(data, pos)
        if step < _FRAME_HEADER_BYTES:        # 0 marks the last frame; less is damage
            break
        nxt = pos + step
        if step == previous and remaining >= _RUN_MIN:
            ahead = min(_RUN_LOOKAHEAD, remaining, (size - nxt) // step)
            if ahead >= _RUN_MIN:
                same = np.ndarray((ahead,), _NEXT_DTYPE, data, nxt, (step,)) == step
                run = ahead if same.all() else int(same.argmin())
                starts.extend(range(nxt, nxt + run * step, step))
                remaining -= run
                nxt += run * step
        previous = step
        pos = nxt
    return starts


def restore_vlan_tags(data: bytes, offsets: np.ndarray, lengths: np.ndarray,
                      headers: np.ndarray, tagged: np.ndarray) -> bytes:
    """Put the VLAN tag the kernel stripped back into each `tagged` frame (as libpcap does).

    The rebuilt frames are appended to the buffer; `offsets` and `lengths` are updated in
    place to point at them.  Returns the new buffer."""
    pieces = [data]
    end = len(data)
    for i in np.flatnonzero(tagged).tolist():
        start, length = int(offsets[i]), int(lengths[i])
        if length < _ETH_ADDRS:
            continue
        header = headers[i]
        tpid = int(header["vlan_tpid"]) if header["status"] & TP_STATUS_VLAN_TPID_VALID else ETH_P_8021Q
        tag = _VLAN_TAG.pack(tpid or ETH_P_8021Q, int(header["vlan_tci"]) & 0xFFFF)
        pieces += [data[start : start + _ETH_ADDRS], tag, data[start + _ETH_ADDRS : start + length]]
        offsets[i] = end
        lengths[i] = length + len(tag)
        end += length + len(tag)
    return b"".join(pieces)


def empty_batch(linktype: int) -> FrameBatch:
    """A batch with no frames (what `LiveCapture.batches` yields when nothing arrived)."""
    return FrameBatch(linktype, b"", np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64))


class LiveCapture:
    """A TPACKET_V3 receive ring on one interface; yields one FrameBatch per retired block.

    `bpf` is a classic BPF program for the interface's link type (capture.bpf.compile_filter;
    see `interface_linktype`); None keeps every packet.  With `fanout_group`, several captures
    (in one process or many) on the same interface share its traffic: each packet goes to
    exactly one of them, chosen by `fanout_mode` ("hash": by flow, both directions alike, IP
    fragments reassembled first; "cbpf": `fanout_program` returns the member's index, in the
    order the members joined).  NEW_FANOUT_GROUP starts a group with an id the kernel picks
    (`fanout_group` holds it afterwards).  One thread reads; `stats()` and `close()` may come
    from another.

    `attach()` reads the ring of a socket that another process set up and handed over (the
    fanout daemon's workers): that process keeps the socket, so the ring, the group
    membership and the kernel counters outlive a reader that dies."""

    def __init__(self, interface: str, *, bpf: list[Instruction] | None, promiscuous: bool = True,
                 ring: RingSettings | None = None, fanout_group: int | None = None,
                 fanout_mode: str = "hash", fanout_program: list[Instruction] | None = None) -> None:
        self._setup(interface, ring)
        self.fanout_group = fanout_group
        fanout = fanout_argument(fanout_group, fanout_mode) if fanout_group is not None else None
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            self._ring_map = self._open(bpf, promiscuous, fanout, fanout_program)
        except BaseException:
            self._sock.close()
            raise
        self._poller = select.poll()
        self._poller.register(self._sock.fileno(), select.POLLIN | select.POLLERR)

    @classmethod
    def attach(cls, fd: int, interface: str, *, linktype: int, ring: RingSettings) -> LiveCapture:
        """Read the ring of the configured, bound packet socket `fd` (inherited from the process
        that opened it with the same `ring`).  Blocks that process's reader left unread are
        read first, oldest first (by block sequence number).  stats() is left to the owner
        of the socket: the kernel resets the counters on every read."""
        capture = cls.__new__(cls)
        capture._setup(interface, ring)
        capture.fanout_group = None
        capture.linktype = linktype
        capture._attached = True
        capture._synced = False
        capture._sock = socket.socket(fileno=fd)
        capture._ring_map = mmap.mmap(fd, ring.block_size * ring.block_count, mmap.MAP_SHARED,
                                      mmap.PROT_READ | mmap.PROT_WRITE)
        capture._poller = select.poll()
        capture._poller.register(fd, select.POLLIN | select.POLLERR)
        return capture

    def _setup(self, interface: str, ring: RingSettings | None) -> None:
        self.interface = interface
        self.ring = ring if ring is not None else RingSettings()
        self.ring.check()
        self.errors: Counter[str] = Counter()      # frames the walk could not place, by reason
        self.frames = 0                             # frames yielded so far
        self.linktype = LINKTYPE_ETHERNET
        self.ifindex = 0
        self._lock = threading.Lock()               # the ring and the socket: reader vs close()
        self._stats_lock = threading.Lock()
        self._totals = [0, 0, 0]                    # accumulated tpacket_stats_v3
        self._current = 0                           # the next block to hand over, in ring order
        self._closed = False
        self._attached = False                      # reading a ring another process set up
        self._handed_over = False                   # another process reads this ring
        self._synced = True                         # _current is the kernel's next block

    # -- set-up -----------------------------------------------------------------------------------

    def _open(self, bpf: list[Instruction] | None, promiscuous: bool, fanout: int | None,
              fanout_program: list[Instruction] | None) -> mmap.mmap:
        """Set the socket up so that nothing unfiltered is seen: it was made with protocol 0,
        so no packet reaches it before bind(), and the filter is in place by then."""
        sock = self._sock
        hardware = interface_hardware_type(sock, self.interface)
        self.linktype = _linktype_for(self.interface, hardware)
        self.ifindex = interface_index(sock, self.interface)
        program = bpf if bpf is not None else accept_all()
        if hardware == ARPHRD_LOOPBACK:
            program = _DROP_OUTGOING + program     # BPF jumps are relative: the program still holds
        attach_filter(sock, program)
        sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
        sock.setsockopt(SOL_PACKET, PACKET_RX_RING, self.ring.request())
        ring_map = mmap.mmap(sock.fileno(), self.ring.block_size * self.ring.block_count,
                             mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        try:
            sock.bind((self.interface, ETH_P_ALL))
            if promiscuous:
                # Reference-counted by the kernel and undone when the socket closes.
                membership = _MREQ.pack(self.ifindex, PACKET_MR_PROMISC, 0, b"")
                sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, membership)
            if fanout is not None:
                # After bind(), as required; packed because the value may not fit a C int.
                sock.setsockopt(SOL_PACKET, PACKET_FANOUT, struct.pack("=I", fanout))
                (joined,) = struct.unpack("=I", sock.getsockopt(SOL_PACKET, PACKET_FANOUT, 4))
                self.fanout_group = joined & 0xFFFF
                if fanout_program is not None:   # PACKET_FANOUT_CBPF: one program for the group
                    _set_program(sock, SOL_PACKET, PACKET_FANOUT_DATA, fanout_program)
        except BaseException:
            ring_map.close()
            raise
        return ring_map

    # -- reading ----------------------------------------------------------------------------------

    def fileno(self) -> int:
        """The socket, for a caller's own poll loop over several captures (POLLIN: a block is ready)."""
        return self._sock.fileno()

    @property
    def closed(self) -> bool:
        return self._closed

    def batches(self, timeout_s: float = 0.1) -> Iterator[FrameBatch]:
        """One FrameBatch per retired block, until close().  When nothing arrives for `timeout_s`
        an empty batch is yielded, so the consumer gets control back regularly."""
        idle = empty_batch(self.linktype)
        while not self._closed:
            batch = self.poll_once(timeout_s)
            yield idle if batch is None else batch

    def poll_once(self, timeout_s: float) -> FrameBatch | None:
        """The next retired block as a batch, waiting at most `timeout_s`; None if none came."""
        with self._lock:
            if self._closed or self._handed_over:
                return None
            if not self._synced:
                self._resync()
            if not self._block_ready():
                self._poller.poll(max(0, int(timeout_s * 1000)))
                if not self._block_ready() and not self._resync():
                    return None
            data, count, first = self._take_block()
        return self._batch(data, count, first)

    def _resync(self) -> bool:
        """An attached ring: start at the oldest block handed to user space (the kernel fills
        and hands over blocks in ring order, numbering them); True once found."""
        if self._synced:
            return False
        ready = []
        for index in range(self.ring.block_count):
            base = index * self.ring.block_size
            if _BLOCK_STATUS.unpack_from(self._ring_map, base + _BLOCK_HEADER_AT)[0] & TP_STATUS_USER:
                ready.append((_BLOCK_SEQ.unpack_from(self._ring_map, base + _BLOCK_SEQ_AT)[0], index))
        if ready:
            self._current = min(ready)[1]
            self._synced = True
        return self._synced

    def _block_ready(self) -> bool:
        base = self._current * self.ring.block_size + _BLOCK_HEADER_AT
        return bool(_BLOCK_STATUS.unpack_from(self._ring_map, base)[0] & TP_STATUS_USER)

    def _take_block(self) -> tuple[bytes, int, int]:
        """Copy the used part of the current block, give the block back, move on."""
        base = self._current * self.ring.block_size
        _status, count, first, used = _BLOCK_HEADER.unpack_from(self._ring_map, base + _BLOCK_HEADER_AT)
        data = self._ring_map[base : base + min(used, self.ring.block_size)]
        _BLOCK_STATUS.pack_into(self._ring_map, base + _BLOCK_HEADER_AT, TP_STATUS_KERNEL)
        self._current = (self._current + 1) % self.ring.block_count
        return data, count, first

    def _batch(self, data: bytes, count: int, first: int) -> FrameBatch:
        """Frame offsets, lengths and timestamps of a copied block, decoded at once with numpy."""
        starts = walk_block(data, first, count)
        if len(starts) < count:
            self.errors["afpacket.bad_frame_link"] += count - len(starts)
        offs = np.array(starts, dtype=np.int64)
        headers = np.frombuffer(data, np.uint8)[offs[:, None] + _ARANGE_HEADER].view(_FRAME_HEADER)[:, 0]
        offsets = offs + headers["mac"]
        lengths = headers["snaplen"].astype(np.int64)
        inside = offsets + lengths <= len(data)
        if not inside.all():
            self.errors["afpacket.frame_outside_block"] += int(len(inside) - np.count_nonzero(inside))
            offs, offsets, lengths, headers = offs[inside], offsets[inside], lengths[inside], headers[inside]
        ts = headers["sec"].astype(np.float64) + headers["nsec"].astype(np.float64) * 1e-9
        tagged = (headers["status"] & TP_STATUS_VLAN_VALID).astype(bool) | (headers["vlan_tci"] != 0)
        if self.linktype == LINKTYPE_ETHERNET and tagged.any():
            data = restore_vlan_tags(data, offsets, lengths, headers, tagged)
        self.frames += len(offsets)
        return FrameBatch(self.linktype, data, offsets, lengths, ts)

    def hand_over(self) -> None:
        """Another process reads this ring (`attach()` on this socket): unmap it here.  The
        socket keeps the ring, the filter, the fanout membership and the counters; stats()
        and close() still work, batches come no more."""
        with self._lock:
            if not self._handed_over and not self._closed:
                self._ring_map.close()
                self._handed_over = True

    # -- counters and the end ---------------------------------------------------------------------

    def stats(self) -> CaptureStats:
        """Kernel counters since the capture opened.  The kernel resets its counters on every
        read, so they are accumulated here; after close() the last totals are returned."""
        with self._stats_lock:
            if not self._closed:
                raw = self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _STATS_V3.size)
                for i, value in enumerate(_STATS_V3.unpack(raw)):
                    self._totals[i] += value
            return CaptureStats(*self._totals)

    def close(self) -> None:
        """Release the ring and the socket (promiscuous mode and fanout membership go with it).
        Safe from another thread: waits for a read in progress (at most its timeout)."""
        with self._lock:
            if self._closed:
                return
            if not self._attached:
                self.stats()
            with self._stats_lock:
                self._closed = True
            self._poller.unregister(self._sock.fileno())
            self._ring_map.close()
            self._sock.close()

    def __enter__(self) -> LiveCapture:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
