"""One RTP stream (one SSRC on one channel of one call): statistics, placement, decoding.

The engine hands over each stream's packets of a batch at once (arrival order), so every step
here is vectorised over the group: sequence and timestamp unwrapping, duplicate and
reordering detection, loss gaps, the position of every packet on the call timeline, and the
G.711 decode. Other codecs decode packet by packet through their (stateful) decoders.

Placement: a packet's place is its stream anchor's arrival time plus its RTP timestamp
distance from the anchor (RFC 3550 §5.1: the timestamp is the sampling instant), so network
jitter does not move audio around. When a timestamp disagrees with the arrival clock by more
than `reanchor_s` (a hold that froze or jumped the timestamps, a sender restart), the stream
re-anchors on the arrival time of that packet. The anchor also follows the earliest arrival
seen (the minimum one-way delay), which corrects the first packet's own jitter and slow drift.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from capture.codecs import (
    ALAW_TO_PCM16,
    ULAW_TO_PCM16,
    CodecSpec,
    Decoder,
    is_decodable_audio,
    make_decoder,
    upsample_2x,
    wav_rate_for,
)
from capture.errors import ParseError
from capture.rtp import parse_telephone_event, unwrap
from capture.timeline import CallTimeline

DUPLICATE_RING = 1024           # how far back (in sequence numbers) a duplicate is recognised
GAP_REPORT_S = 0.2              # loss gaps longer than this are listed in completeness
G711_TABLES = {"pcmu": ULAW_TO_PCM16, "pcma": ALAW_TO_PCM16}


@dataclass(slots=True)
class PacketGroup:
    """The packets of one stream in one batch, in arrival order (arrays of equal length)."""

    buf: np.ndarray          # uint8 view of the batch buffer
    raw: bytes | memoryview  # the same bytes, for slicing payloads out
    arrival: np.ndarray      # float64 capture time
    seq: np.ndarray          # int64
    timestamp: np.ndarray    # int64
    payload_type: np.ndarray  # int16
    payload_offset: np.ndarray
    payload_length: np.ndarray
    packet_offset: np.ndarray
    packet_length: np.ndarray


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


class CallAudio:
    """What a stream needs from its call: the timeline, and a way to raise the rate."""

    timeline: CallTimeline

    def ensure_rate(self, rate: int) -> None:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass(slots=True)
class StreamSettings:
    reanchor_s: float = 0.2


@dataclass
class MediaStream:
    channel: int
    ssrc: int
    src: str
    dst: str
    settings: StreamSettings = field(default_factory=StreamSettings)
    packets: int = 0
    unique: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    undecodable: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    payload_types: Counter[int] = field(default_factory=Counter)
    codecs: set[str] = field(default_factory=set)
    gaps: list[Gap] = field(default_factory=list)
    dtmf: dict[int, DtmfDigit] = field(default_factory=dict)
    first_seq: int | None = None
    max_seq: int | None = None
    last_seq: int | None = None
    last_ts: int | None = None
    first_arrival: float = 0.0
    last_arrival: float = 0.0
    jitter_s: float = 0.0
    max_jitter_s: float = 0.0
    _jitter_prev: tuple[float, int] | None = None
    _max_ts: int | None = None      # extended timestamp of the packet holding max_seq
    frame_ticks: int = 0            # timestamp step between consecutive packets (ptime)
    clock: int = 0
    anchor_arrival: float = 0.0
    anchor_ts: int = 0
    decoders: dict[int, Decoder] = field(default_factory=dict)
    ring: np.ndarray = field(default_factory=lambda: np.full(DUPLICATE_RING, -1, np.int64))

    # -- statistics ---------------------------------------------------------------------------

    @property
    def expected(self) -> int:
        if self.first_seq is None or self.max_seq is None:
            return 0
        return self.max_seq - self.first_seq + 1

    @property
    def lost(self) -> int:
        return max(0, self.expected - self.unique)

    def _sequence(self, g: PacketGroup) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Extended seq/ts; masks of fresh (not duplicate) and in-order packets."""
        n = len(g.seq)
        ext_seq = unwrap(g.seq, self.last_seq, 16)
        ext_ts = unwrap(g.timestamp, self.last_ts, 32)
        self.last_seq, self.last_ts = int(ext_seq[-1]), int(ext_ts[-1])
        slot = ext_seq % DUPLICATE_RING
        seen_before = self.ring[slot] == ext_seq
        first_time = np.zeros(n, bool)
        first_time[np.unique(ext_seq, return_index=True)[1]] = True
        fresh = first_time & ~seen_before
        self.ring[slot[fresh]] = ext_seq[fresh]
        prior = self.max_seq if self.max_seq is not None else int(ext_seq[0]) - 1
        running = np.maximum.accumulate(np.concatenate(([prior], ext_seq[:-1])))
        in_order = fresh & (ext_seq > running)
        self.packets += n
        self.unique += int(fresh.sum())
        self.duplicates += n - int(fresh.sum())
        self.out_of_order += int((fresh & ~in_order).sum())
        low = int(ext_seq[fresh].min()) if fresh.any() else prior
        self.first_seq = low if self.first_seq is None else min(self.first_seq, low)
        return ext_seq, ext_ts, fresh, in_order

    def _jitter(self, arrival: np.ndarray, ext_ts: np.ndarray, clock: int) -> None:
        """Interarrival jitter, RFC 3550 §6.4.1 / appendix A.8, over in-order packets."""
        if clock <= 0 or not len(arrival):
            return
        transit = (arrival - ext_ts / clock).tolist()
        j, peak = self.jitter_s, self.max_jitter_s
        prev = self._jitter_prev[0] if self._jitter_prev else transit[0]
        for t in transit:
            j += (abs(t - prev) - j) / 16.0
            prev = t
            if j > peak:
                peak = j
        self._jitter_prev = (prev, 0)
        self.jitter_s, self.max_jitter_s = j, peak

    def _gaps(self, ext_seq: np.ndarray, ext_ts: np.ndarray, positions_s: np.ndarray, clock: int) -> None:
        """Loss gaps between in-order packets (a gap later filled by a reordered packet within
        the same batch is not a gap: only in-order successors are compared)."""
        if self.max_seq is not None:
            ext_seq = np.concatenate(([self.max_seq], ext_seq))
            ext_ts = np.concatenate(([self._max_ts if self._max_ts is not None else ext_ts[0]], ext_ts))
            positions_s = np.concatenate(([np.nan], positions_s))
        dseq = np.diff(ext_seq)
        dts = np.diff(ext_ts)
        steady = dts[dseq == 1]
        if len(steady):
            self.frame_ticks = int(np.median(steady))
        if clock > 0 and self.frame_ticks > 0:
            for k in np.flatnonzero(dseq > 1):
                missing = int(dseq[k] - 1)
                duration = missing * self.frame_ticks / clock
                if duration > GAP_REPORT_S:
                    start = positions_s[k + 1] - duration
                    self.gaps.append(Gap(round(float(start), 3), round(duration, 3), missing))
        self.max_seq = int(ext_seq[-1])
        self._max_ts = int(ext_ts[-1])

    # -- placement ------------------------------------------------------------------------------

    def _positions(self, arrival: np.ndarray, ext_ts: np.ndarray, in_order: np.ndarray,
                   clock: int, t0: float) -> np.ndarray:
        """Seconds from the call's sample 0 for every packet (see the module docstring)."""
        n = len(arrival)
        out = np.empty(n)
        if not self.clock:
            self.clock = clock
            self.anchor_arrival, self.anchor_ts = float(arrival[0]), int(ext_ts[0])
        start = 0
        while start < n:
            rel = (ext_ts[start:] - self.anchor_ts) / self.clock
            drift = arrival[start:] - (self.anchor_arrival + rel)
            bad = np.flatnonzero((np.abs(drift) > self.settings.reanchor_s) & in_order[start:])
            stop = start + int(bad[0]) if len(bad) else n
            if stop > start:
                seg = slice(0, stop - start)
                # follow the earliest arrival: a packet that came sooner than the anchor
                # predicts shows the anchor itself was delayed (minimum one-way delay)
                early = np.where(in_order[start:stop], drift[seg], 0.0)
                shift = np.minimum(np.minimum.accumulate(early), 0.0)
                out[start:stop] = self.anchor_arrival + shift + rel[seg] - t0
                self.anchor_arrival += float(shift[-1])
            if stop < n:  # re-anchor: this packet's drift becomes 0, so the loop moves on
                self.anchor_arrival, self.anchor_ts = float(arrival[stop]), int(ext_ts[stop])
            start = stop
        return out

    # -- the whole group --------------------------------------------------------------------------

    def ingest(self, g: PacketGroup, codecs: Callable[[int], CodecSpec | None], audio: CallAudio,
               silenced: bool, payload_of: Callable[[int], bytes | None] | None = None) -> None:
        """Account for, place and decode one batch of this stream's packets.

        `payload_of(i)` returns the payload of packet i when it must be transformed first
        (SRTP decryption); None from it means the packet failed and is skipped.
        """
        n = len(g.seq)
        if not n:
            return
        if self.packets == 0:
            self.first_arrival = float(g.arrival[0])
        self.last_arrival = max(self.last_arrival, float(g.arrival[-1]))
        ext_seq, ext_ts, fresh, in_order = self._sequence(g)
        pts, counts = np.unique(g.payload_type, return_counts=True)
        specs = {int(pt): codecs(int(pt)) for pt in pts}
        for pt, count in zip(pts.tolist(), counts.tolist(), strict=True):
            self.payload_types[pt] += count
            spec = specs[pt]
            if spec is not None:
                self.codecs.add(spec.name)
        clock = self._stream_clock(specs)
        timeline = audio.timeline
        positions_s = self._positions(g.arrival, ext_ts, in_order, clock, timeline.t0)
        self._jitter(g.arrival[in_order], ext_ts[in_order], clock)
        self._gaps(ext_seq[in_order], ext_ts[in_order], positions_s[in_order], clock)
        for pt, spec in specs.items():
            chosen = fresh & (g.payload_type == pt)
            if not chosen.any():
                continue
            index = np.flatnonzero(chosen)
            if spec is None:
                self.undecodable += len(index)
                self.errors["rtp.unknown_payload_type"] += len(index)
            elif spec.name == "telephone-event":
                self._events(g, index, ext_ts, positions_s, spec, payload_of)
            elif spec.name == "cn" or silenced:
                continue  # comfort noise (RFC 3389) and undecryptable media stay silence
            elif not is_decodable_audio(spec):
                self.undecodable += len(index)
            else:
                audio.ensure_rate(wav_rate_for(spec))
                self._decode(g, index, positions_s, spec, audio.timeline, payload_of)

    def _stream_clock(self, specs: dict[int, CodecSpec | None]) -> int:
        if self.clock:
            return self.clock
        for spec in specs.values():
            if spec is not None and spec.name not in ("cn",):
                return spec.clock_rate
        return 8000

    def _events(self, g: PacketGroup, index: np.ndarray, ext_ts: np.ndarray, positions_s: np.ndarray,
                spec: CodecSpec, payload_of: Callable[[int], bytes | None] | None) -> None:
        """RFC 4733 §2.5: all packets of one event share its start timestamp; the end packet is
        sent three times. Each event becomes one digit, its duration the longest reported."""
        for i in index.tolist():
            payload = self._payload(g, i, payload_of)
            if payload is None:
                continue
            try:
                event = parse_telephone_event(payload)
            except ParseError as err:
                self.errors[err.reason] += 1
                continue
            start = int(ext_ts[i])
            duration_ms = int(round(event.duration * 1000 / (spec.clock_rate or 8000)))
            known = self.dtmf.get(start)
            if known is None:
                self.dtmf[start] = DtmfDigit(event.digit, self.channel, round(float(positions_s[i]), 3),
                                             duration_ms, start)
            else:
                known.duration_ms = max(known.duration_ms, duration_ms)

    @staticmethod
    def _payload(g: PacketGroup, i: int, payload_of: Callable[[int], bytes | None] | None) -> bytes | None:
        if payload_of is not None:
            return payload_of(i)
        start = int(g.payload_offset[i])
        return bytes(g.raw[start:start + int(g.payload_length[i])])

    def _decode(self, g: PacketGroup, index: np.ndarray, positions_s: np.ndarray, spec: CodecSpec,
                timeline: CallTimeline, payload_of: Callable[[int], bytes | None] | None) -> None:
        rate = timeline.rate
        positions = np.rint(positions_s[index] * rate).astype(np.int64)
        table = G711_TABLES.get(spec.name)
        if table is not None and payload_of is None:
            self._decode_g711(g, index, positions, table, timeline)
            return
        decoder = self._decoder(spec, rate)
        for i, pos in zip(index.tolist(), positions.tolist(), strict=True):
            payload = self._payload(g, i, payload_of)
            if payload is None:
                continue
            try:
                pcm = decoder.decode(payload)
            except ParseError as err:
                self.errors[err.reason] += 1
                continue
            timeline.write(self.channel, pos, pcm)

    def _decoder(self, spec: CodecSpec, rate: int) -> Decoder:
        pt_key = hash((spec, rate))
        decoder = self.decoders.get(pt_key)
        if decoder is None:
            decoder = make_decoder(spec, rate)
            self.decoders[pt_key] = decoder
        return decoder

    def _decode_g711(self, g: PacketGroup, index: np.ndarray, positions: np.ndarray,
                     table: np.ndarray, timeline: CallTimeline) -> None:
        """Vectorised G.711: packets of equal payload size decode as one matrix lookup."""
        lengths = g.payload_length[index]
        for size in np.unique(lengths).tolist():
            if size <= 0:
                continue
            rows = index[lengths == size]
            at = g.payload_offset[rows][:, None] + np.arange(size)
            block = table[g.buf[at]]
            if timeline.rate != 8000:
                block = upsample_2x(block.reshape(-1)).reshape(len(rows), -1)
            timeline.write_block(self.channel, positions[lengths == size], block)

    # -- report -------------------------------------------------------------------------------

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
