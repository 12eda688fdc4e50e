"""One RTP stream (one SSRC on one channel of one call): its state and statistics.

The work on packets is done for all streams of a batch at once by capture.mediabatch; this
module holds what each stream carries from batch to batch, and the one careful per-stream
walk that is needed rarely: re-anchoring.

Placement: a packet's place is its stream anchor's arrival time plus its RTP timestamp
distance from the anchor (RFC 3550 §5.1: the timestamp is the sampling instant), so network
jitter does not move audio around. When a timestamp disagrees with the arrival clock by more
than `reanchor_s` (a hold that froze or jumped the timestamps, a sender restart), the stream
re-anchors on the arrival time of that packet. The anchor also follows the earliest arrival
seen (the minimum one-way delay), which corrects the first packet's own jitter and slow drift.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from capture.codecs import CodecSpec, Decoder, make_decoder
from capture.streamstate import Column, StreamTable, initial_values
from capture.timeline import CallTimeline


@dataclass(slots=True)
class DtmfDigit:
    digit: str
    channel: int
    offset_s: float
    duration_ms: int
    rtp_timestamp: int


@dataclass(slots=True)
class Gap:
    offset_s: float
    duration_s: float
    packets: int


class CallAudio(Protocol):
    """What a stream needs from its call: the timeline, and a way to raise the rate."""

    timeline: CallTimeline

    def ensure_rate(self, rate: int) -> None: ...


@dataclass(eq=False)
class MediaStream:
    """One stream. The counters and placement state below the dataclass fields live in a row
    of the engine's StreamTable while the call runs (capture.streamstate), and in `detached`
    before its first batch and after its call ends."""

    channel: int
    ssrc: int
    src: str
    dst: str
    reanchor_s: float = 0.2
    codecs: set[str] = field(default_factory=set)
    gaps: list[Gap] = field(default_factory=list)
    dtmf: dict[int, DtmfDigit] = field(default_factory=dict)
    decoders: dict[tuple[CodecSpec, int], Decoder] = field(default_factory=dict)
    table: StreamTable | None = None    # while attached: the table holding the row below
    row: int = -1
    detached: dict[str, Any] = field(default_factory=initial_values)
    detached_payload_types: Counter[int] = field(default_factory=Counter)

    packets = Column[int]()
    unique = Column[int]()
    duplicates = Column[int]()
    out_of_order = Column[int]()
    undecodable = Column[int]()
    first_seq = Column[int | None]()
    max_seq = Column[int | None]()        # highest extended sequence number seen
    max_ts = Column[int | None]()         # extended timestamp of that packet
    last_seq = Column[int | None]()       # extended values of the last packet to arrive
    last_ts = Column[int | None]()
    first_arrival = Column[float]()
    last_arrival = Column[float]()
    jitter_s = Column[float]()
    max_jitter_s = Column[float]()
    jitter_transit = Column[float | None]()
    frame_ticks = Column[int]()           # timestamp step between consecutive packets (ptime)
    clock = Column[int]()
    anchor_arrival = Column[float]()
    anchor_ts = Column[int]()
    t0 = Column[float]()                  # the call's timeline origin (capture time)

    def attach(self, table: StreamTable) -> int:
        """Move the state into a row of `table` (the stream's first batch); returns the row."""
        if self.table is None:
            self.row = table.allocate(self.detached)
            for pt, count in self.detached_payload_types.items():
                table.payload_types[self.row, pt] = count
            self.table = table
        return self.row

    def detach(self) -> None:
        """Copy the row back into the object and free it (the call ended)."""
        if self.table is not None:
            self.detached, self.detached_payload_types = self.table.release(self.row)
            self.table, self.row = None, -1

    @property
    def payload_types(self) -> Counter[int]:
        """Packets per RTP payload type (a copy while attached)."""
        if self.table is None:
            return self.detached_payload_types
        return self.table.payload_counts(self.row)

    @property
    def expected(self) -> int:
        if self.first_seq is None or self.max_seq is None:
            return 0
        return self.max_seq - self.first_seq + 1

    @property
    def lost(self) -> int:
        return max(0, self.expected - self.unique)

    def decoder(self, spec: CodecSpec, rate: int) -> Decoder:
        """The stream's decoder for a codec at the call's rate (decoders keep state)."""
        key = (spec, rate)
        found = self.decoders.get(key)
        if found is None:
            found = self.decoders[key] = make_decoder(spec, rate)
        return found

    def place(self, arrival: np.ndarray, ext_ts: np.ndarray, in_order: np.ndarray, t0: float) -> np.ndarray:
        """Seconds from the call's sample 0 for this stream's packets of a batch, re-anchoring
        on an in-order packet whose timestamp disagrees with its arrival by > reanchor_s."""
        n = len(arrival)
        out = np.empty(n)
        start = 0
        while start < n:
            rel = (ext_ts[start:] - self.anchor_ts) / self.clock
            drift = arrival[start:] - (self.anchor_arrival + rel)
            bad = np.flatnonzero((np.abs(drift) > self.reanchor_s) & in_order[start:])
            stop = start + int(bad[0]) if len(bad) else n
            if stop > start:
                seg = slice(0, stop - start)
                early = np.where(in_order[start:stop], drift[seg], 0.0)
                shift = np.minimum(np.minimum.accumulate(early), 0.0)
                out[start:stop] = self.anchor_arrival + shift + rel[seg] - t0
                self.anchor_arrival += float(shift[-1])
            if stop < n:  # re-anchor: this packet's drift becomes 0, so the loop moves on
                self.anchor_arrival, self.anchor_ts = float(arrival[stop]), int(ext_ts[stop])
            start = stop
        return out

    def describe(self) -> dict[str, object]:
        return {
            "ssrc": f"0x{self.ssrc:08x}",
            "channel": self.channel,
            "src": self.src,
            "dst": self.dst,
            "payload_types": {str(pt): c for pt, c in sorted(self.payload_types.items())},
            "codecs": sorted(self.codecs),
            "packets": self.packets,
            "expected": self.expected,
            "lost": self.lost,
            "duplicates": self.duplicates,
            "out_of_order": self.out_of_order,
            "max_jitter_ms": round(self.max_jitter_s * 1000, 2),
            "first_arrival": self.first_arrival,
            "last_arrival": self.last_arrival,
        }
