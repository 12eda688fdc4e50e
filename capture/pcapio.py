"""Streamed reading of pcap and pcapng capture files.

The reader never holds a whole file: it reads fixed-size chunks and yields `FrameBatch`es
whose frames are slices of the chunk just read (a record cut by a chunk boundary is carried
over into the next chunk).  The per-record Python work is one `unpack_from` and one list
append; headers and timestamps are then decoded for the whole batch at once with numpy.

Formats:
- pcap (https://datatracker.ietf.org/doc/draft-ietf-opsawg-pcap/): the four magics
  (micro/nanosecond resolution, either byte order);
- pcapng (https://datatracker.ietf.org/doc/draft-ietf-opsawg-pcapng/): SHB (either byte
  order, several sections), IDB (link type, if_tsresol, if_tsoffset), EPB, SPB and the
  obsolete PB; every other block type is skipped.

Damage is counted in `CaptureReader.errors` by a stable reason key: a record cut by the end
of the file ends the file cleanly, an absurd length stops reading the file (without trying
to allocate it).  Only a file that is not a capture at all raises `ParseError`.
"""

from __future__ import annotations

import collections
import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from capture.errors import ParseError

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
# DLT_RAW as written by some BSDs (the numeric DLT leaked into files); both mean raw IP.
LINKTYPE_RAW_BSD12 = 12
LINKTYPE_RAW_BSD14 = 14

# A record bigger than this (or than the file's snaplen, when larger) is corrupt. 256 KiB is
# libpcap/Wireshark's maximum snapshot length for ordinary link types.
MAX_RECORD_BYTES = 256 * 1024
# pcapng blocks larger than this are corrupt (Wireshark uses the same 16 MiB bound).
MAX_BLOCK_BYTES = 16 * 1024 * 1024

_PCAP_HEADER_LEN = 24
_PCAP_RECORD_HEADER_LEN = 16
# pcap magic (as the first 4 bytes appear in the file) -> (struct byte order, tick in seconds)
_PCAP_MAGICS: dict[bytes, tuple[str, float]] = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e-6),
    b"\xa1\xb2\xc3\xd4": (">", 1e-6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e-9),
    b"\xa1\xb2\x3c\x4d": (">", 1e-9),
}
_PCAPNG_SHB_TYPE = b"\x0a\x0d\x0d\x0a"  # a palindrome: readable before the byte order is known
_PCAPNG_BOM_LE = b"\x4d\x3c\x2b\x1a"
_PCAPNG_BOM_BE = b"\x1a\x2b\x3c\x4d"

_BLOCK_IDB = 1
_BLOCK_PB = 2  # obsolete Packet Block
_BLOCK_SPB = 3
_BLOCK_EPB = 6
_OPT_END = 0
_OPT_IF_TSRESOL = 9
_OPT_IF_TSOFFSET = 14

_ARANGE16 = np.arange(_PCAP_RECORD_HEADER_LEN, dtype=np.int64)


_RUN_LOOKAHEAD = 1024   # records checked at once in a run of equal lengths
_RUN_MIN = 8


@dataclass(slots=True)
class FrameBatch:
    """Frames of one link type that live inside one read buffer."""

    linktype: int
    buf: bytes
    offsets: np.ndarray  # int64: start of each frame in buf
    lengths: np.ndarray  # int64: captured length of each frame
    ts: np.ndarray  # float64: seconds since the epoch (UTC)
    _view: memoryview = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._view = memoryview(self.buf)

    def __len__(self) -> int:
        return len(self.offsets)

    def frame(self, i: int) -> memoryview:
        """Frame `i` as a zero-copy view into `buf`."""
        start = int(self.offsets[i])
        return self._view[start : start + int(self.lengths[i])]

    def iter_frames(self) -> Iterator[tuple[float, memoryview]]:
        """(timestamp, frame) pairs in capture order; faster than calling frame(i) in a loop."""
        view = self._view
        for start, length, ts in zip(
            self.offsets.tolist(), self.lengths.tolist(), self.ts.tolist(), strict=True
        ):
            yield ts, view[start : start + length]


# The engine holds a call's audio in memory only for the jitter window and refuses writes
# far ahead of what it flushed (capture/timeline.py MAX_SPAN_S): it must see capture time
# advance in steps. CaptureEngine.feed takes a batch in pieces of at most this much.
MAX_BATCH_SPAN_S = 5.0


def split_by_time(batch: FrameBatch, max_span_s: float = MAX_BATCH_SPAN_S) -> list[FrameBatch]:
    """`batch` cut into consecutive batches of at most `max_span_s` of capture time each
    (sharing its buffer). Timestamps that step back stay with the batch they arrive in."""
    if len(batch) < 2 or float(batch.ts[-1] - batch.ts[0]) <= max_span_s and bool(np.all(np.diff(batch.ts) >= 0)):
        return [batch]
    reached = np.maximum.accumulate(batch.ts)
    slot = np.floor((reached - reached[0]) / max_span_s).astype(np.int64)
    cuts = [0, *(np.flatnonzero(np.diff(slot)) + 1).tolist(), len(batch)]
    return [FrameBatch(batch.linktype, batch.buf, batch.offsets[a:b], batch.lengths[a:b], batch.ts[a:b])
            for a, b in zip(cuts[:-1], cuts[1:], strict=True)]


def merge_batches(batches: list[FrameBatch]) -> FrameBatch:
    """Several batches of one link type as one (their buffers joined, offsets shifted)."""
    if len(batches) == 1:
        return batches[0]
    shifts = np.cumsum([0] + [len(b.buf) for b in batches[:-1]])
    return FrameBatch(
        batches[0].linktype,
        b"".join(bytes(b.buf) for b in batches),
        np.concatenate([b.offsets + shift for b, shift in zip(batches, shifts, strict=True)]),
        np.concatenate([b.lengths for b in batches]),
        np.concatenate([b.ts for b in batches]),
    )


@dataclass(slots=True)
class _ChunkResult:
    """What a format parser made of one buffer."""

    batches: list[FrameBatch]
    consumed: int  # offset of the first byte not consumed (the start of a partial record)
    stop: bool = False  # the file is damaged beyond this point: stop reading it


class _PcapParser:
    """Classic pcap: a 24-byte file header, then 16-byte record headers and frames."""

    def __init__(self, errors: collections.Counter[str]) -> None:
        self.errors = errors
        self.linktype = -1
        self.tick = 1e-6
        self.max_record = MAX_RECORD_BYTES
        self._incl_len: struct.Struct | None = None
        self._record_dtype = np.dtype("<u4")

    def parse(self, buf: bytes, final: bool) -> _ChunkResult:
        pos = 0
        if self._incl_len is None:
            if len(buf) < _PCAP_HEADER_LEN:
                if final:
                    self.errors["pcap.truncated_header"] += 1
                return _ChunkResult([], 0, stop=final)
            self._read_file_header(buf)
            pos = _PCAP_HEADER_LEN
        starts, pos = self._walk_records(buf, pos)
        result = _ChunkResult([], pos)
        if starts:
            batch, bad_at = self._build_batch(buf, starts)
            if len(batch):
                result.batches.append(batch)
            if bad_at is not None:
                self.errors["pcap.bad_record_length"] += 1
                result.stop = True
                return result
        self._check_stop_point(buf, pos, final, result)
        return result

    def _read_file_header(self, buf: bytes) -> None:
        order, self.tick = _PCAP_MAGICS[bytes(buf[:4])]
        _major, _minor, _zone, _sigfigs, snaplen, linktype = struct.unpack_from(order + "HHiIII", buf, 4)
        # The upper bits of the link-type field may carry FCS information (pcap draft §4).
        self.linktype = linktype & 0xFFFF
        self.max_record = max(MAX_RECORD_BYTES, snaplen if snaplen <= MAX_BLOCK_BYTES else 0)
        self._incl_len = struct.Struct(order + "I")
        self._record_dtype = np.dtype(order + "u4")

    def _walk_records(self, buf: bytes, pos: int) -> tuple[list[int], int]:
        """Record header offsets of every complete record from `pos`; the hot loop.

        Voice traffic is mostly runs of records of one length (all G.711 20 ms packets are
        the same size), so after two equal lengths the next records are checked at once
        through a strided numpy view of their length fields, and the run is taken whole."""
        assert self._incl_len is not None
        unpack_incl = self._incl_len.unpack_from
        starts: list[int] = []
        append = starts.append
        extend = starts.extend
        end = len(buf)
        last_header = end - _PCAP_RECORD_HEADER_LEN
        previous = -1
        while pos <= last_header:
            (incl,) = unpack_incl(buf, pos + 8)
            step = _PCAP_RECORD_HEADER_LEN + incl
            nxt = pos + step
            if nxt > end:
                break
            append(pos)
            if incl == previous:
                ahead = min(_RUN_LOOKAHEAD, (end - nxt) // step)
                if ahead >= _RUN_MIN:
                    lengths = np.ndarray((ahead,), self._record_dtype, buf, nxt + 8, (step,))
                    same = lengths == incl
                    run = ahead if same.all() else int(same.argmin())
                    extend(range(nxt, nxt + run * step, step))
                    nxt += run * step
            previous = incl
            pos = nxt
        return starts, pos

    def _build_batch(self, buf: bytes, starts: list[int]) -> tuple[FrameBatch, int | None]:
        """Decode all record headers at once; cut the batch at the first absurd length."""
        offs = np.array(starts, dtype=np.int64)
        raw = np.frombuffer(buf, dtype=np.uint8)[offs[:, None] + _ARANGE16]
        headers = raw.view(self._record_dtype)  # (n, 4): ts_sec, ts_frac, incl_len, orig_len
        lengths = headers[:, 2].astype(np.int64)
        bad_at: int | None = None
        bad = np.flatnonzero(lengths > self.max_record)
        if bad.size:
            bad_at = int(bad[0])
            offs, lengths, headers = offs[:bad_at], lengths[:bad_at], headers[:bad_at]
        ts = headers[:, 0].astype(np.float64) + headers[:, 1].astype(np.float64) * self.tick
        return FrameBatch(self.linktype, buf, offs + _PCAP_RECORD_HEADER_LEN, lengths, ts), bad_at

    def _check_stop_point(self, buf: bytes, pos: int, final: bool, result: _ChunkResult) -> None:
        """Classify why the walk stopped: absurd length, a partial record at EOF, or neither."""
        assert self._incl_len is not None
        remaining = len(buf) - pos
        if remaining >= _PCAP_RECORD_HEADER_LEN:
            (incl,) = self._incl_len.unpack_from(buf, pos + 8)
            if incl > self.max_record:
                self.errors["pcap.bad_record_length"] += 1
                result.stop = True
                return
        if final and remaining:
            self.errors["pcap.truncated_record"] += 1
            result.stop = True


@dataclass(slots=True)
class _Interface:
    """A pcapng interface (IDB) with its timestamp scale."""

    linktype: int
    snaplen: int
    units_per_second: int = 1_000_000
    offset_s: int = 0


@dataclass(slots=True)
class _BatchBuilder:
    """Per-record lists for the batch being assembled (one link type)."""

    linktype: int
    offsets: list[int] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    ts_high: list[int] = field(default_factory=list)
    ts_low: list[int] = field(default_factory=list)
    iface: list[int] = field(default_factory=list)  # index into _PcapngParser.interfaces


class _PcapngParser:
    """pcapng: a sequence of blocks, sections introduced by SHBs."""

    def __init__(self, errors: collections.Counter[str]) -> None:
        self.errors = errors
        self.interfaces: list[_Interface] = []  # every IDB of the file, all sections
        self._section: list[int] = []  # this section's interface id -> index in interfaces
        self._order = ""
        self._block_header = struct.Struct("<II")
        self._epb = struct.Struct("<IIIII")
        self._pb = struct.Struct("<HHIIII")
        self._u32 = struct.Struct("<I")
        self._last_ts = (0, 0, -1)  # (ts_high, ts_low, interface) of the previous packet

    def parse(self, buf: bytes, final: bool) -> _ChunkResult:
        result = _ChunkResult([], 0)
        builder: _BatchBuilder | None = None
        pos = 0
        end = len(buf)
        while end - pos >= 12:
            if builder is not None:
                pos = self._walk_epbs(buf, pos, builder)
                if end - pos < 12:
                    break
            step, builder = self._other_block(buf, pos, result.batches, builder)
            if step <= 0:
                result.stop = step < 0
                break
            pos += step
        if builder is not None and builder.offsets:
            result.batches.append(self._finish(buf, builder))
        result.consumed = pos
        if final and not result.stop and pos < end:
            self.errors["pcapng.truncated_block"] += 1
            result.stop = True
        return result

    def _walk_epbs(self, buf: bytes, pos: int, builder: _BatchBuilder) -> int:
        """The hot loop: append consecutive well-formed EPBs of the builder's link type.

        Returns the position of the first block not consumed.  Anything unusual (another
        block type, a link-type change, a partial or suspicious block) is left to
        `_other_block`.
        """
        unpack_header = self._block_header.unpack_from
        unpack_epb = self._epb.unpack_from
        section = self._section
        n_section = len(section)
        linktypes = [self.interfaces[i].linktype for i in section]
        linktype = builder.linktype
        offsets, lengths = builder.offsets.append, builder.lengths.append
        ts_high, ts_low, ifaces = builder.ts_high.append, builder.ts_low.append, builder.iface.append
        last_header = len(buf) - 12
        end = len(buf)
        last = self._last_ts
        while pos <= last_header:
            btype, blen = unpack_header(buf, pos)
            if btype != _BLOCK_EPB or blen < 32 or blen & 3 or pos + blen > end:
                break
            local_if, high, low, caplen, _orig = unpack_epb(buf, pos + 8)
            if local_if >= n_section or linktypes[local_if] != linktype:
                break
            if caplen > blen - 32 or caplen > MAX_RECORD_BYTES:
                break
            iface = section[local_if]
            offsets(pos + 28)
            lengths(caplen)
            ts_high(high)
            ts_low(low)
            ifaces(iface)
            pos += blen
            last = (high, low, iface)
        self._last_ts = last
        return pos

    def _other_block(
        self, buf: bytes, pos: int, batches: list[FrameBatch], builder: _BatchBuilder | None
    ) -> tuple[int, _BatchBuilder | None]:
        """Handle the block at `pos`: (bytes to skip: 0 incomplete, -1 corrupt; builder)."""
        if buf[pos : pos + 4] == _PCAPNG_SHB_TYPE:
            return self._section_header(buf, pos), builder
        if not self._order:
            self.errors["pcapng.bad_block"] += 1  # data before any SHB
            return -1, builder
        btype, blen = self._block_header.unpack_from(buf, pos)
        if blen < 12 or blen & 3 or blen > MAX_BLOCK_BYTES:
            self.errors["pcapng.bad_block"] += 1
            return -1, builder
        if pos + blen > len(buf):
            return 0, builder
        if btype in (_BLOCK_EPB, _BLOCK_PB, _BLOCK_SPB):
            builder = self._packet_block(buf, pos, btype, blen, builder, batches)
        elif btype == _BLOCK_IDB:
            self._interface_block(buf, pos, blen)
        return blen, builder

    # -- blocks -------------------------------------------------------------------------

    def _section_header(self, buf: bytes, pos: int) -> int:
        """Start a new section; returns the block length, 0 if incomplete, -1 if corrupt."""
        bom = bytes(buf[pos + 8 : pos + 12])
        if bom == _PCAPNG_BOM_LE:
            order = "<"
        elif bom == _PCAPNG_BOM_BE:
            order = ">"
        else:
            self.errors["pcapng.bad_block"] += 1
            return -1
        (blen,) = struct.unpack_from(order + "I", buf, pos + 4)
        if blen < 28 or blen & 3 or blen > MAX_BLOCK_BYTES:
            self.errors["pcapng.bad_block"] += 1
            return -1
        if pos + blen > len(buf):
            return 0
        (major,) = struct.unpack_from(order + "H", buf, pos + 12)
        if major != 1:
            self.errors["pcapng.unsupported_version"] += 1
            return -1
        if order != self._order:
            self._order = order
            self._block_header = struct.Struct(order + "II")
            self._epb = struct.Struct(order + "IIIII")
            self._pb = struct.Struct(order + "HHIIII")
            self._u32 = struct.Struct(order + "I")
        self._section = []  # interface ids are local to a section
        return blen

    def _interface_block(self, buf: bytes, pos: int, blen: int) -> None:
        if blen < 20:
            self.errors["pcapng.bad_block"] += 1
            self._section.append(self._add_interface(_Interface(-1, 0)))
            return
        linktype, _reserved, snaplen = struct.unpack_from(self._order + "HHI", buf, pos + 8)
        iface = _Interface(linktype, snaplen)
        self._read_interface_options(buf, pos + 16, pos + blen - 4, iface)
        self._section.append(self._add_interface(iface))

    def _add_interface(self, iface: _Interface) -> int:
        self.interfaces.append(iface)
        return len(self.interfaces) - 1

    def _read_interface_options(self, buf: bytes, pos: int, end: int, iface: _Interface) -> None:
        order = self._order
        while pos + 4 <= end:
            code, length = struct.unpack_from(order + "HH", buf, pos)
            value_at = pos + 4
            if code == _OPT_END:
                return
            if value_at + length > end:
                self.errors["pcapng.bad_option"] += 1
                return
            if code == _OPT_IF_TSRESOL and length >= 1:
                self._set_resolution(iface, buf[value_at])
            elif code == _OPT_IF_TSOFFSET and length >= 8:
                (iface.offset_s,) = struct.unpack_from(order + "q", buf, value_at)
            pos = value_at + ((length + 3) & ~3)

    def _set_resolution(self, iface: _Interface, tsresol: int) -> None:
        """if_tsresol: MSB clear -> 10**-v seconds per tick, MSB set -> 2**-v (pcapng §4.2)."""
        exponent = tsresol & 0x7F
        units = 1 << exponent if tsresol & 0x80 else 10**exponent
        if units >= 1 << 64:  # the 64-bit timestamp could not even count one second
            self.errors["pcapng.bad_tsresol"] += 1
            return
        iface.units_per_second = units

    def _packet_block(
        self,
        buf: bytes,
        pos: int,
        btype: int,
        blen: int,
        builder: _BatchBuilder | None,
        batches: list[FrameBatch],
    ) -> _BatchBuilder | None:
        """Add one EPB/PB/SPB to the current batch (starting a new batch on a link-type change)."""
        if btype == _BLOCK_EPB:
            if blen < 32:
                self.errors["pcapng.bad_block"] += 1
                return builder
            local_if, ts_high, ts_low, caplen, _orig = self._epb.unpack_from(buf, pos + 8)
            data_at, room = pos + 28, blen - 32
        elif btype == _BLOCK_SPB:
            return self._simple_packet_block(buf, pos, blen, builder, batches)
        else:
            if blen < 32:
                self.errors["pcapng.bad_block"] += 1
                return builder
            local_if, _drops, ts_high, ts_low, caplen, _orig = self._pb.unpack_from(buf, pos + 8)
            data_at, room = pos + 28, blen - 32
        if caplen > room or caplen > MAX_RECORD_BYTES:
            self.errors["pcapng.bad_record_length"] += 1
            return builder
        if local_if >= len(self._section):
            self.errors["pcapng.bad_interface"] += 1
            return builder
        iface = self._section[local_if]
        self._last_ts = (ts_high, ts_low, iface)
        return self._add_record(buf, builder, batches, iface, data_at, caplen, ts_high, ts_low)

    def _simple_packet_block(
        self,
        buf: bytes,
        pos: int,
        blen: int,
        builder: _BatchBuilder | None,
        batches: list[FrameBatch],
    ) -> _BatchBuilder | None:
        """SPB: interface 0, no timestamp (we reuse the previous packet's), caplen implied."""
        if blen < 16 or not self._section:
            self.errors["pcapng.bad_block" if blen < 16 else "pcapng.bad_interface"] += 1
            return builder
        (orig_len,) = self._u32.unpack_from(buf, pos + 8)
        iface = self._section[0]
        snaplen = self.interfaces[iface].snaplen
        caplen = min(orig_len, blen - 16, snaplen if snaplen else orig_len)
        ts_high, ts_low, last_iface = self._last_ts
        if last_iface != iface:  # the previous timestamp is in another interface's units
            ts_high, ts_low, last_iface = self._rescale_last_ts(iface)
        return self._add_record(buf, builder, batches, iface, pos + 12, caplen, ts_high, ts_low)

    def _rescale_last_ts(self, iface: int) -> tuple[int, int, int]:
        ts_high, ts_low, last_iface = self._last_ts
        if last_iface < 0:
            return 0, 0, iface
        src = self.interfaces[last_iface]
        dst = self.interfaces[iface]
        ticks = ((ts_high << 32) | ts_low) * dst.units_per_second // src.units_per_second
        ticks += (src.offset_s - dst.offset_s) * dst.units_per_second
        ticks = max(0, min(ticks, (1 << 64) - 1))
        return ticks >> 32, ticks & 0xFFFFFFFF, iface

    def _add_record(
        self,
        buf: bytes,
        builder: _BatchBuilder | None,
        batches: list[FrameBatch],
        iface: int,
        data_at: int,
        caplen: int,
        ts_high: int,
        ts_low: int,
    ) -> _BatchBuilder:
        linktype = self.interfaces[iface].linktype
        if builder is None or builder.linktype != linktype:
            if builder is not None and builder.offsets:
                batches.append(self._finish(buf, builder))
            builder = _BatchBuilder(linktype)
        builder.offsets.append(data_at)
        builder.lengths.append(caplen)
        builder.ts_high.append(ts_high)
        builder.ts_low.append(ts_low)
        builder.iface.append(iface)
        return builder

    def _finish(self, buf: bytes, builder: _BatchBuilder) -> FrameBatch:
        """Convert the builder's lists to arrays; timestamps per interface resolution."""
        ticks = (np.array(builder.ts_high, dtype=np.uint64) << np.uint64(32)) | np.array(
            builder.ts_low, dtype=np.uint64
        )
        ifaces = np.array(builder.iface, dtype=np.int64)
        ts = np.empty(len(ticks), dtype=np.float64)
        for iface in np.unique(ifaces).tolist():
            sel = ifaces == iface
            info = self.interfaces[iface]
            units = np.uint64(info.units_per_second)
            # Split seconds and fraction before converting to float: keeps sub-µs precision.
            seconds = (ticks[sel] // units).astype(np.float64)
            fraction = (ticks[sel] % units).astype(np.float64) / float(info.units_per_second)
            ts[sel] = seconds + fraction + info.offset_s
        return FrameBatch(
            builder.linktype,
            buf,
            np.array(builder.offsets, dtype=np.int64),
            np.array(builder.lengths, dtype=np.int64),
            ts,
        )


class CaptureReader:
    """Reads a pcap or pcapng file chunk by chunk and yields `FrameBatch`es.

    `errors` counts damage by reason, `packets` the frames yielded so far; `bytes_read` and
    `size` are for progress reporting.  Raises `ParseError` at construction when the file is
    neither pcap nor pcapng.
    """

    def __init__(self, path: str | os.PathLike[str], chunk_bytes: int = 4 << 20) -> None:
        if chunk_bytes < 1:
            raise ValueError("chunk_bytes must be positive")
        self.path = os.fspath(path)
        self.chunk_bytes = chunk_bytes
        self.errors: collections.Counter[str] = collections.Counter()
        self.packets = 0
        self.bytes_read = 0
        self.size = os.path.getsize(self.path)
        self.format = self._detect_format()

    def _detect_format(self) -> str:
        with open(self.path, "rb") as f:
            magic = f.read(4)
        if magic in _PCAP_MAGICS:
            return "pcap"
        if magic == _PCAPNG_SHB_TYPE:
            return "pcapng"
        if len(magic) < 4:
            raise ParseError("capture.truncated_header", f"{self.path}: {len(magic)} bytes")
        raise ParseError("capture.unknown_format", f"{self.path}: magic {magic.hex()}")

    def batches(self) -> Iterator[FrameBatch]:
        """Yield the file's frames batch by batch (one batch per read chunk and link type)."""
        parser = _PcapParser(self.errors) if self.format == "pcap" else _PcapngParser(self.errors)
        self.packets = 0
        self.bytes_read = 0
        pending = b""  # the unconsumed tail of the previous chunk (a partial record)
        with open(self.path, "rb", buffering=0) as f:
            while True:
                data = f.read(self.chunk_bytes)
                self.bytes_read += len(data)
                final = not data
                buf = pending + data if pending else data
                result = parser.parse(buf, final)
                for batch in result.batches:
                    self.packets += len(batch)
                    yield batch
                if final or result.stop:
                    return
                pending = buf[result.consumed :]


def read_batches(path: str | os.PathLike[str], chunk_bytes: int = 4 << 20) -> Iterator[FrameBatch]:
    """Convenience: `CaptureReader(path, chunk_bytes).batches()`."""
    return CaptureReader(path, chunk_bytes).batches()


def write_pcap(path: str | os.PathLike[str], linktype: int, records: Iterable[tuple[float, bytes]]) -> int:
    """Write a little-endian microsecond pcap file; returns the number of records written."""
    record_header = struct.Struct("<IIII")
    count = 0
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, MAX_RECORD_BYTES, linktype))
        for ts, frame in records:
            micros = round(ts * 1_000_000)
            seconds, micros = divmod(micros, 1_000_000)
            f.write(record_header.pack(seconds, micros, len(frame), len(frame)))
            f.write(frame)
            count += 1
    return count
