"""All RTP streams of one batch in one vectorised pass.

A replay batch holds ~18,000 packets of ~400 streams; a live block a few thousand. Doing the
per-stream work (unwrap, duplicates, ordering, jitter, placement, G.711 decode) once per stream
costs a few hundred microseconds of interpreter time per stream and batch, which dominated
the replay time. Here the packets of every stream are laid out one stream after the other
(sorted by stream, then arrival) and each step runs over the whole array, with the usual
segmented tricks: a running maximum or minimum that restarts at each stream by adding a
per-stream offset, cumulative sums minus the sum before the stream's start, bincount and
reduceat for per-stream totals. Per-stream state lives in the columns of a StreamTable
(capture.streamstate), one row per live stream: a batch gathers its streams' rows with one
fancy index and scatters the results back with another, without a Python pass per field.

What stays per packet in Python: codecs other than G.711 (their FFmpeg decoders are
stateful), SRTP decryption, RFC 4733 events, loss gaps (rare) and streams that must
re-anchor (rare).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from capture.codecs import (
    ALAW_TO_PCM16,
    ULAW_TO_PCM16,
    CodecSpec,
    is_decodable_audio,
    upsample_2x,
    wav_rate_for,
)
from capture.errors import ParseError
from capture.rtp import parse_telephone_event
from capture.streams import CallAudio, DtmfDigit, Gap, MediaStream
from capture.streamstate import PAYLOAD_TYPES, RING, UNSET, StreamTable

G711_TABLES = np.stack([ULAW_TO_PCM16, ALAW_TO_PCM16])     # row 0 µ-law, row 1 A-law
G711_ROW = {"pcmu": 0, "pcma": 1}


def _pair_table(table: np.ndarray) -> np.ndarray:
    """65,536 entries: two G.711 bytes (read as one little-endian uint16) -> their two
    samples packed as one uint32, so one lookup decodes two samples (the table fits in L2)."""
    pair = np.arange(1 << 16, dtype=np.uint32)
    low = table[pair & 0xFF].astype(np.uint16).astype(np.uint32)
    high = table[pair >> 8].astype(np.uint16).astype(np.uint32)
    return low | (high << 16)


G711_PAIR_TABLES = [_pair_table(ULAW_TO_PCM16), _pair_table(ALAW_TO_PCM16)]


def decode_g711_rows(rows: np.ndarray, law: int) -> np.ndarray:
    """An (n, L) uint8 matrix of G.711 payloads to (n, L) int16 samples."""
    if rows.shape[1] % 2:
        return np.take(G711_TABLES[law], rows)
    pairs = np.ascontiguousarray(rows).view("<u2")
    return np.take(G711_PAIR_TABLES[law], pairs).view("<i2").reshape(rows.shape)
GAP_REPORT_S = 0.2
# Packet kinds after the codec lookup
UNKNOWN, G711, OTHER_AUDIO, EVENT, SILENT, UNDECODABLE = range(6)
SEGMENT_OFFSET = 1 << 42          # larger than any extended sequence number
SEGMENT_OFFSET_S = 1.0e7          # larger than any drift in seconds
DECODE_CHUNK = 4096               # G.711 packets decoded per matrix (bounds temporary memory)
JITTER_GAIN = 1.0 / 16.0          # RFC 3550 §6.4.1


PayloadOf = Callable[[int], bytes | None]
IIR_BLOCK = 64


def first_order_iir(x: np.ndarray, gain: float) -> np.ndarray:
    """y[i] = (1 - gain) * y[i-1] + gain * x[i], y[-1] = 0, for the whole array at once.

    Blocks of IIR_BLOCK samples are filtered by one matrix product (the filter's impulse
    response as a lower-triangular Toeplitz matrix); each block then adds its predecessor's
    last value, decayed, carried by a short loop over blocks. Exact up to rounding."""
    n = len(x)
    if not n:
        return np.zeros(0)
    decay = 1.0 - gain
    k = np.arange(IIR_BLOCK)
    response = np.where(k[None, :] >= k[:, None], gain * decay ** (k[None, :] - k[:, None]), 0.0)
    blocks = np.zeros(-(-n // IIR_BLOCK) * IIR_BLOCK)
    blocks[:n] = x
    inner = blocks.reshape(-1, IIR_BLOCK) @ response
    carry = np.empty(len(inner))
    previous, block_decay = 0.0, decay ** IIR_BLOCK
    for b, last in enumerate(inner[:, -1].tolist()):
        carry[b] = previous
        previous = block_decay * previous + last
    return (inner + carry[:, None] * decay ** (k + 1)).reshape(-1)[:n]


@dataclass(slots=True)
class StreamWork:
    """One stream's share of the batch: its state object, its call, how to read its payloads."""

    stream: MediaStream
    audio: CallAudio
    codec_for: Callable[[int], CodecSpec | None]
    silenced: bool
    payload_of: PayloadOf | None      # packet index (into the batch arrays) -> payload, e.g. SRTP


@dataclass(slots=True)
class BatchPackets:
    """Columns of the batch's matched RTP packets, sorted by stream then arrival."""

    raw: bytes | memoryview
    buf: np.ndarray
    stream: np.ndarray        # index into the StreamWork list
    arrival: np.ndarray
    seq: np.ndarray
    timestamp: np.ndarray
    payload_type: np.ndarray
    payload_offset: np.ndarray
    payload_length: np.ndarray


def _segment_starts(stream: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Index of each stream's first packet, and a mask of those positions."""
    starts = np.searchsorted(stream, np.arange(count))
    first = np.zeros(len(stream), bool)
    first[starts] = True
    return starts, first


def _unwrap(values: np.ndarray, stream: np.ndarray, first: np.ndarray, starts: np.ndarray,
            previous: np.ndarray, known: np.ndarray, bits: int) -> np.ndarray:
    """Segmented RFC 3550 A.1-style unwrapping: each step is the signed difference modulo
    2**bits from the packet before it in the same stream (or the stream's last packet of the
    previous batch)."""
    modulus, half = 1 << bits, 1 << (bits - 1)
    before = np.empty_like(values)
    before[1:] = values[:-1]
    before[first] = (previous[stream[first]] % modulus)
    step = ((values - before + half) % modulus) - half
    # a stream seen for the first time starts at its own first value
    new = first & ~known[stream]
    step[new] = 0
    total = np.cumsum(step)
    base = np.where(known, previous, values[starts])
    offset = total[starts] - step[starts]          # cumulative sum before each stream starts
    return base[stream] + total - offset[stream]


def _classify(batch: BatchPackets, work: list[StreamWork]) -> tuple[np.ndarray, np.ndarray, list[CodecSpec | None]]:
    """Per packet: its kind and the index of its codec spec (one lookup per stream and PT)."""
    key = batch.stream * 128 + batch.payload_type
    unique, inverse = np.unique(key, return_inverse=True)
    specs: list[CodecSpec | None] = []
    kinds = np.empty(len(unique), np.int8)
    rows = np.full(len(unique), -1, np.int8)
    for j, k in enumerate(unique.tolist()):
        w = work[k // 128]
        spec = w.codec_for(k % 128)
        specs.append(spec)
        if spec is not None:
            w.stream.codecs.add(spec.name)
        if spec is None:
            kinds[j] = UNKNOWN
        elif spec.name == "telephone-event":
            kinds[j] = EVENT
        elif spec.name == "cn" or w.silenced:
            kinds[j] = SILENT
        elif not is_decodable_audio(spec):
            kinds[j] = UNDECODABLE
        elif spec.name in G711_ROW and w.payload_of is None:
            kinds[j] = G711
            rows[j] = G711_ROW[spec.name]
        else:
            kinds[j] = OTHER_AUDIO
    spec_index = inverse.astype(np.int64)
    return kinds[spec_index], spec_index, specs


def _clocks(work: list[StreamWork], known: np.ndarray, spec_index: np.ndarray, specs: list[CodecSpec | None],
            starts: np.ndarray, stream: np.ndarray) -> np.ndarray:
    """The RTP clock of every stream (`known`: the table's, 0 for a new stream): fixed at its
    first packet with a known codec."""
    clock = known.astype(np.float64)
    for s in np.flatnonzero(clock == 0).tolist():
        end = starts[s + 1] if s + 1 < len(starts) else len(stream)
        for j in spec_index[starts[s]:end].tolist():
            spec = specs[j]
            if spec is not None and spec.name != "cn":
                clock[s] = spec.clock_rate
                break
        else:
            clock[s] = 8000.0
    return clock


class RowScatter:
    """Writes per-work-item results into the stream table's rows.

    A batch may list one stream twice (two expectations of one call and channel, e.g. around a
    re-INVITE that moved the media): then the work item listed last wins an assignment and
    additions accumulate, as they did when each item updated its stream object in turn."""

    def __init__(self, rows: np.ndarray) -> None:
        self.rows = rows
        self.repeats = len(rows) > 1 and len(np.unique(rows)) != len(rows)

    def _rows(self, items: np.ndarray | None) -> np.ndarray:
        return self.rows if items is None else self.rows[items]

    def assign(self, column: np.ndarray, values: np.ndarray, items: np.ndarray | None = None) -> None:
        rows = self._rows(items)
        if self.repeats:   # numpy does not promise which of repeated indices is written last
            last = len(rows) - 1 - np.unique(rows[::-1], return_index=True)[1]
            rows, values = rows[last], values[last]
        column[rows] = values

    def assign_first(self, column: np.ndarray, values: np.ndarray, items: np.ndarray) -> None:
        """The first work item wins (a value set once, e.g. a stream's first arrival)."""
        rows = self._rows(items)
        if self.repeats:
            firsts = np.unique(rows, return_index=True)[1]
            rows, values = rows[firsts], values[firsts]
        column[rows] = values

    def add(self, column: np.ndarray, values: np.ndarray, items: np.ndarray | None = None) -> None:
        rows = self._rows(items)
        if self.repeats:
            np.add.at(column, rows, values)
        else:
            column[rows] += values

    def maximum(self, column: np.ndarray, values: np.ndarray, items: np.ndarray | None = None) -> None:
        rows = self._rows(items)
        if self.repeats:
            np.maximum.at(column, rows, values)
        else:
            column[rows] = np.maximum(column[rows], values)


class MediaBatchProcessor:
    """Owns the stream table: the state of every live stream (capture.streamstate)."""

    def __init__(self, reanchor_s: float) -> None:
        self.reanchor_s = reanchor_s
        self.table = StreamTable()

    # -- the pass --------------------------------------------------------------------------------

    def process(self, batch: BatchPackets, work: list[StreamWork]) -> dict[str, int]:
        """Account for, place and decode every packet; returns error counts by reason."""
        errors: dict[str, int] = {}
        count = len(work)
        streams = [w.stream for w in work]
        table = self.table
        rows = np.array([s.attach(table) for s in streams], np.int64)
        scatter = RowScatter(rows)
        col = table.columns
        sid = batch.stream
        starts, first = _segment_starts(sid, count)
        seen_last = col["last_seq"][rows]
        known_seq = seen_last != UNSET
        last_seq = np.where(known_seq, seen_last, 0)
        last_ts = np.where(known_seq, col["last_ts"][rows], 0)
        ext_seq = _unwrap(batch.seq, sid, first, starts, last_seq, known_seq, 16)
        ext_ts = _unwrap(batch.timestamp, sid, first, starts, last_ts, known_seq, 32)
        ends = np.append(starts[1:], len(sid)) - 1
        fresh, in_order = self._duplicates_and_order(rows, sid, first, starts, ext_seq)
        self._totals(col, scatter, sid, fresh, in_order, ext_seq, starts)
        kind, spec_index, specs = _classify(batch, work)
        clock = _clocks(work, col["clock"][rows], spec_index, specs, starts, sid)
        positions = self._positions(streams, col, scatter, batch, sid, starts, ends, ext_ts, in_order, clock)
        self._jitter(col, scatter, batch.arrival, ext_ts, in_order, sid, clock, count)
        self._gaps(streams, col, scatter, sid, ext_seq, ext_ts, positions, in_order, clock)
        scatter.assign(col["last_seq"], ext_seq[ends])
        scatter.assign(col["last_ts"], ext_ts[ends])
        scatter.maximum(col["last_arrival"], batch.arrival[ends])
        unset = np.flatnonzero(col["first_arrival"][rows] == 0.0)
        scatter.assign_first(col["first_arrival"], batch.arrival[starts[unset]], unset)
        self._payload_type_counts(table.payload_types, scatter, sid, batch.payload_type)
        self._extend_ends(work, col["frame_ticks"][rows], clock, fresh, positions, starts)
        undecodable = fresh & ((kind == UNKNOWN) | (kind == UNDECODABLE))
        if undecodable.any():
            scatter.add(col["undecodable"], np.bincount(sid[undecodable], minlength=count))
            unknown = int(np.count_nonzero(fresh & (kind == UNKNOWN)))
            if unknown:
                errors["rtp.unknown_payload_type"] = unknown
        self._rates(work, fresh, kind, spec_index, specs, sid)
        self._events(work, batch, fresh & (kind == EVENT), sid, ext_ts, positions, specs, spec_index, errors)
        self._decode_g711(work, batch, fresh & (kind == G711), sid, spec_index, specs, positions)
        self._decode_other(work, batch, fresh & (kind == OTHER_AUDIO), sid, spec_index, specs, positions, errors)
        return errors

    def _duplicates_and_order(self, rows: np.ndarray, sid: np.ndarray, first: np.ndarray,
                              starts: np.ndarray, ext_seq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = len(sid)
        ring = self.table.ring
        packet_rows = rows[sid]
        slot = ext_seq % RING
        seen_before = ring[packet_rows, slot] == ext_seq
        # first arrival of each (stream, seq) within the batch: stable sort by (stream, seq)
        order = np.lexsort((ext_seq, sid))
        same = np.zeros(n, bool)
        same[1:] = (sid[order][1:] == sid[order][:-1]) & (ext_seq[order][1:] == ext_seq[order][:-1])
        repeat = np.zeros(n, bool)
        repeat[order] = same
        fresh = ~repeat & ~seen_before
        ring[packet_rows[fresh], slot[fresh]] = ext_seq[fresh]
        # in order: above every sequence number of the stream that came before it
        highest = self.table.columns["max_seq"][rows]
        prior = np.where(highest == UNSET, -(1 << 40), highest)
        shifted = ext_seq + sid * SEGMENT_OFFSET
        running = np.maximum.accumulate(shifted) - sid * SEGMENT_OFFSET
        before = np.empty(n, np.int64)
        before[1:] = running[:-1]
        before[first] = prior[sid[first]]
        before = np.maximum(before, prior[sid])
        return fresh, fresh & (ext_seq > before)

    @staticmethod
    def _totals(col: dict[str, np.ndarray], scatter: RowScatter, sid: np.ndarray, fresh: np.ndarray,
                in_order: np.ndarray, ext_seq: np.ndarray, starts: np.ndarray) -> None:
        count = len(scatter.rows)
        packets = np.bincount(sid, minlength=count)
        unique = np.bincount(sid, weights=fresh, minlength=count).astype(np.int64)
        late = np.bincount(sid, weights=fresh & ~in_order, minlength=count).astype(np.int64)
        scatter.add(col["packets"], packets)
        scatter.add(col["unique"], unique)
        scatter.add(col["duplicates"], packets - unique)
        scatter.add(col["out_of_order"], late)
        big = np.where(fresh, ext_seq, np.iinfo(np.int64).max)
        low = np.minimum.reduceat(big, starts)
        items = np.flatnonzero(unique)
        column = col["first_seq"]
        if scatter.repeats:   # one item after the other, each keeping the smaller
            for i in items.tolist():
                row, candidate = int(scatter.rows[i]), int(low[i])
                column[row] = candidate if column[row] == UNSET else min(int(column[row]), candidate)
            return
        known = column[scatter.rows[items]]
        column[scatter.rows[items]] = np.where(known == UNSET, low[items], np.minimum(known, low[items]))

    def _positions(self, streams: list[MediaStream], col: dict[str, np.ndarray], scatter: RowScatter,
                   batch: BatchPackets, sid: np.ndarray, starts: np.ndarray, ends: np.ndarray,
                   ext_ts: np.ndarray, in_order: np.ndarray, clock: np.ndarray) -> np.ndarray:
        """Seconds from each call's sample 0, anchored as capture.streams explains."""
        arrival = batch.arrival
        rows = scatter.rows
        new = np.flatnonzero(col["clock"][rows] == 0)
        if len(new):   # a stream's first batch: its clock, and its anchor on its first packet
            scatter.assign_first(col["clock"], clock[new].astype(np.int64), new)
            scatter.assign_first(col["anchor_arrival"], arrival[starts[new]], new)
            scatter.assign_first(col["anchor_ts"], ext_ts[starts[new]], new)
        anchor_arrival = col["anchor_arrival"][rows]
        anchor_ts = col["anchor_ts"][rows]
        t0 = col["t0"][rows]
        rel = (ext_ts - anchor_ts[sid]) / clock[sid]
        drift = arrival - (anchor_arrival[sid] + rel)
        bad = (np.abs(drift) > self.reanchor_s) & in_order
        slow = np.zeros(len(streams), bool)
        if bad.any():
            slow[np.unique(sid[bad])] = True
        early = np.where(in_order, drift, 0.0)
        offset = (len(streams) - sid) * SEGMENT_OFFSET_S
        shift = np.minimum(np.minimum.accumulate(early + offset) - offset, 0.0)
        out = anchor_arrival[sid] + shift + rel - t0[sid]
        steady = np.flatnonzero(~slow)
        scatter.add(col["anchor_arrival"], shift[ends[steady]], steady)
        for s in np.flatnonzero(slow).tolist():   # re-anchoring: the careful per-stream walk
            seg = slice(starts[s], ends[s] + 1)
            out[seg] = streams[s].place(arrival[seg], ext_ts[seg], in_order[seg], float(t0[s]))
        return out

    @staticmethod
    def _jitter(col: dict[str, np.ndarray], scatter: RowScatter, arrival: np.ndarray, ext_ts: np.ndarray,
                in_order: np.ndarray, sid: np.ndarray, clock: np.ndarray, count: int) -> None:
        """RFC 3550 §6.4.1 interarrival jitter over in-order packets, one IIR filter for all
        streams: the filter runs across stream boundaries and each stream's part is then
        corrected by the decaying difference between its true start state and the filter's."""
        idx = np.flatnonzero(in_order)
        if not len(idx):
            return
        s_of = sid[idx]
        transit = arrival[idx] - ext_ts[idx] / clock[s_of]
        start_pos = np.searchsorted(s_of, np.arange(count))
        has = np.bincount(s_of, minlength=count) > 0
        prev = np.empty(len(idx))
        prev[1:] = transit[:-1]
        firsts = start_pos[has]
        prev_state = col["jitter_transit"][scatter.rows]
        prev[firsts] = np.where(np.isnan(prev_state[has]), transit[firsts], prev_state[has])
        d = np.abs(transit - prev)
        y = first_order_iir(d, JITTER_GAIN)
        # correction: y_true = y + a^(k+1) * (J0 - y_before_start), k = index within the stream
        k = np.arange(len(idx)) - start_pos[s_of]
        y_before = np.zeros(count)
        y_before[has] = np.where(firsts > 0, y[np.maximum(firsts - 1, 0)], 0.0)
        j0 = col["jitter_s"][scatter.rows]
        y = y + (1 - JITTER_GAIN) ** (k + 1) * (j0 - y_before)[s_of]
        peak = np.maximum.reduceat(y, firsts)
        last = np.append(firsts[1:], len(idx)) - 1
        items = np.flatnonzero(has)
        scatter.assign(col["jitter_s"], y[last], items)
        scatter.maximum(col["max_jitter_s"], peak, items)
        scatter.assign(col["jitter_transit"], transit[last], items)

    @staticmethod
    def _gaps(streams: list[MediaStream], col: dict[str, np.ndarray], scatter: RowScatter, sid: np.ndarray,
              ext_seq: np.ndarray, ext_ts: np.ndarray, positions: np.ndarray, in_order: np.ndarray,
              clock: np.ndarray) -> None:
        """Loss runs between consecutive in-order packets; ptime from steady steps."""
        idx = np.flatnonzero(in_order)
        if not len(idx):
            return
        s_of = sid[idx]
        seq, ts = ext_seq[idx], ext_ts[idx]
        highest = col["max_seq"][scatter.rows]
        prior_seq = np.where(highest == UNSET, -1, highest)
        prior_ts = np.where(highest == UNSET, 0, col["max_ts"][scatter.rows])
        prev_seq = np.empty(len(idx), np.int64)
        prev_ts = np.empty(len(idx), np.int64)
        prev_seq[1:], prev_ts[1:] = seq[:-1], ts[:-1]
        first = np.ones(len(idx), bool)
        first[1:] = s_of[1:] != s_of[:-1]
        prev_seq[first], prev_ts[first] = prior_seq[s_of[first]], prior_ts[s_of[first]]
        known = prev_seq >= 0
        dseq = np.where(known, seq - prev_seq, 1)
        steady = np.flatnonzero(known & (dseq == 1) & (ts > prev_ts))
        if len(steady):
            # the last steady step of each stream is its current packet interval
            owners = s_of[steady][::-1]
            found, where = np.unique(owners, return_index=True)
            scatter.assign(col["frame_ticks"], (ts - prev_ts)[steady][::-1][where], found)
        for i in np.flatnonzero(dseq > 1).tolist():
            stream = streams[int(s_of[i])]
            if stream.frame_ticks <= 0:
                continue
            missing = int(dseq[i] - 1)
            duration = missing * stream.frame_ticks / float(clock[s_of[i]])
            if duration > GAP_REPORT_S:
                stream.gaps.append(Gap(round(float(positions[idx[i]]) - duration, 3), round(duration, 3), missing))
        last = np.append(np.flatnonzero(first)[1:], len(idx)) - 1
        scatter.assign(col["max_seq"], seq[last], s_of[last])
        scatter.assign(col["max_ts"], ts[last], s_of[last])

    @staticmethod
    def _extend_ends(work: list[StreamWork], frame_ticks: np.ndarray, clock: np.ndarray, fresh: np.ndarray,
                     positions: np.ndarray, starts: np.ndarray) -> None:
        """Every fresh packet, audio or not, lasts on the timeline to its place + one packet
        interval; so a recording ends with its last media packet whatever the batch sizes."""
        latest = np.maximum.reduceat(np.where(fresh, positions, -np.inf), starts)
        tail = np.where(frame_ticks > 0, frame_ticks, clock // 50) / clock
        until = latest + tail
        for s in np.flatnonzero(np.isfinite(latest)).tolist():
            timeline = work[s].audio.timeline
            timeline.extend_end(int(round(float(until[s]) * timeline.rate)))

    @staticmethod
    def _payload_type_counts(counts: np.ndarray, scatter: RowScatter, sid: np.ndarray, pt: np.ndarray) -> None:
        """Packets per (stream, payload type) added to the table's (row, PT) counts."""
        pairs, seen = np.unique(sid * PAYLOAD_TYPES + pt, return_counts=True)
        cells = scatter.rows[pairs // PAYLOAD_TYPES], pairs % PAYLOAD_TYPES
        if scatter.repeats:
            np.add.at(counts, cells, seen)
        else:
            counts[cells] += seen

    @staticmethod
    def _rates(work: list[StreamWork], fresh: np.ndarray, kind: np.ndarray, spec_index: np.ndarray,
               specs: list[CodecSpec | None], sid: np.ndarray) -> None:
        """A wideband codec raises its call to 16 kHz before anything of the batch is written."""
        audio = fresh & ((kind == G711) | (kind == OTHER_AUDIO))
        for j in np.unique(spec_index[audio]).tolist():
            spec = specs[j]
            if spec is not None and wav_rate_for(spec) > 8000:
                for s in np.unique(sid[audio & (spec_index == j)]).tolist():
                    work[s].audio.ensure_rate(wav_rate_for(spec))

    @staticmethod
    def _payload(work: StreamWork, batch: BatchPackets, i: int) -> bytes | None:
        if work.payload_of is not None:
            return work.payload_of(i)
        start = int(batch.payload_offset[i])
        return bytes(batch.raw[start:start + int(batch.payload_length[i])])

    def _events(self, work: list[StreamWork], batch: BatchPackets, chosen: np.ndarray, sid: np.ndarray,
                ext_ts: np.ndarray, positions: np.ndarray, specs: list[CodecSpec | None],
                spec_index: np.ndarray, errors: dict[str, int]) -> None:
        """RFC 4733 §2.5: packets of one event share its start timestamp; the end packet comes
        three times. One digit per event, with the longest duration reported."""
        for i in np.flatnonzero(chosen).tolist():
            w = work[int(sid[i])]
            payload = self._payload(w, batch, i)
            spec = specs[int(spec_index[i])]
            if payload is None or spec is None:
                continue
            try:
                event = parse_telephone_event(payload)
            except ParseError as err:
                errors[err.reason] = errors.get(err.reason, 0) + 1
                continue
            start = int(ext_ts[i])
            duration_ms = int(round(event.duration * 1000 / (spec.clock_rate or 8000)))
            known = w.stream.dtmf.get(start)
            if known is None:
                w.stream.dtmf[start] = DtmfDigit(event.digit, w.stream.channel, round(float(positions[i]), 3),
                                                 duration_ms, start)
            else:
                known.duration_ms = max(known.duration_ms, duration_ms)

    @staticmethod
    def _decode_g711(work: list[StreamWork], batch: BatchPackets, chosen: np.ndarray, sid: np.ndarray,
                     spec_index: np.ndarray, specs: list[CodecSpec | None], positions: np.ndarray) -> None:
        """One table lookup for all G.711 packets of a payload size (chunked to bound memory);
        each stream's rows are then written to its call's timeline as contiguous runs."""
        idx = np.flatnonzero(chosen & (batch.payload_length > 0))
        if not len(idx):
            return
        table_row = np.array([G711_ROW.get(s.name, 0) if s is not None else 0 for s in specs], np.int64)
        lengths = batch.payload_length[idx]
        for size in np.unique(lengths).tolist():
            of_size = idx[lengths == size]
            # every `size`-byte window of the buffer as a row (a view): gathering rows copies
            # whole payloads instead of indexing byte by byte
            windows = np.lib.stride_tricks.sliding_window_view(batch.buf, size)
            for lo in range(0, len(of_size), DECODE_CHUNK):
                rows = of_size[lo:lo + DECODE_CHUNK]
                payload = windows[batch.payload_offset[rows]]
                tables = table_row[spec_index[rows]]
                if tables.min() == tables.max():   # the usual case: one law for the whole chunk
                    block = decode_g711_rows(payload, int(tables[0]))
                else:
                    block = np.where(tables[:, None] == 0, decode_g711_rows(payload, 0),
                                     decode_g711_rows(payload, 1))
                _write_rows(work, sid[rows], positions[rows], block)

    def _decode_other(self, work: list[StreamWork], batch: BatchPackets, chosen: np.ndarray, sid: np.ndarray,
                      spec_index: np.ndarray, specs: list[CodecSpec | None], positions: np.ndarray,
                      errors: dict[str, int]) -> None:
        for i in np.flatnonzero(chosen).tolist():
            w = work[int(sid[i])]
            spec = specs[int(spec_index[i])]
            payload = self._payload(w, batch, i)
            if payload is None or spec is None:
                continue
            timeline = w.audio.timeline
            try:
                if spec.name in G711_ROW:
                    pcm = G711_TABLES[G711_ROW[spec.name]][np.frombuffer(payload, np.uint8)]
                    if timeline.rate != 8000:
                        pcm = upsample_2x(pcm)
                else:
                    pcm = w.stream.decoder(spec, timeline.rate).decode(payload)
            except ParseError as err:
                errors[err.reason] = errors.get(err.reason, 0) + 1
                continue
            timeline.write(w.stream.channel, int(round(float(positions[i]) * timeline.rate)), pcm)


def _write_rows(work: list[StreamWork], sid: np.ndarray, positions_s: np.ndarray, block: np.ndarray) -> None:
    """Write decoded G.711 rows (sorted by stream, then arrival) at their places.

    Runs of rows that sit back to back on one stream's timeline (the usual case) are found
    for all streams at once and each is written as one contiguous copy."""
    rates = np.array([w.audio.timeline.rate for w in work])[sid]
    wide = rates != 8000
    if wide.any():  # calls raised to 16 kHz: upsample their rows, stream by stream
        for s in np.unique(sid[wide]).tolist():
            mine = sid == s
            timeline = work[s].audio.timeline
            rows = upsample_2x(block[mine].reshape(-1)).reshape(int(mine.sum()), -1)
            timeline.write_block(work[s].stream.channel, np.rint(positions_s[mine] * timeline.rate).astype(np.int64), rows)
        keep = ~wide
        sid, positions_s, block = sid[keep], positions_s[keep], block[keep]
        if not len(sid):
            return
    width = block.shape[1]
    pos = np.rint(positions_s * 8000).astype(np.int64)
    breaks = np.flatnonzero((np.diff(pos) != width) | (np.diff(sid) != 0)) + 1
    bounds = np.concatenate(([0], breaks, [len(sid)])).tolist()
    starts, owners = pos[bounds[:-1]].tolist(), sid[bounds[:-1]].tolist()
    for n, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        w = work[owners[n]]
        w.audio.timeline.write_run(w.stream.channel, starts[n], block[lo:hi])
