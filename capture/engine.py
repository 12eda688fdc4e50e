"""The capture engine: batches of frames in, finished recordings out through a sink.

Per batch (a read chunk in replay, a TPACKET_V3 block when live):
1. decode every frame to a transport payload (capture.packets, vectorised);
2. walk the batch in order: RTP-like datagrams between two signalling messages are matched
   against the media expectations in one vectorised lookup, and each SIP message (UDP, or
   reassembled from TCP) updates the dialogs before the packets after it are matched;
3. group the matched RTP packets by (expectation, SSRC) and let each stream account for,
   place and decode its packets at once;
4. hand the audio older than the jitter window to the sink, and finish the calls that ended.

Nothing in the input can stop the engine: every ParseError is counted by reason and skipped.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from capture.codecs import CodecSpec
from capture.dialogs import Call, DialogTracker, TrackerSettings
from capture.errors import ParseError
from capture.expectations import MediaExpectation
from capture.fanout import take_frames
from capture.mediabatch import BatchPackets, MediaBatchProcessor, PayloadOf, StreamWork
from capture.netdecode import PacketDecoder
from capture.packets import KIND_MESSAGE, KIND_RTP, KIND_TCP, PacketArrays, decode_batch
from capture.pcapio import FrameBatch, split_by_time
from capture.recording import call_identity, recording_metadata
from capture.rtp import parse_rtp_headers
from capture.sip import SipMessage, looks_like_sip, parse_sip
from capture.srtp import SrtpReceiver, supported_suite
from capture.streams import MediaStream
from capture.tcpstream import SipTcpReassembler
from capture.timeline import CallTimeline

ZRTP_MAGIC = b"ZRTP"   # RFC 6189 §5: magic cookie at bytes 4-7 of every ZRTP packet
NARROWBAND_RATE = 8000


class RecordingSink(Protocol):
    """Where finished audio goes: WAV files for replay, the encrypted vault for the daemon.

    A sink may also say, as `flush_frames`, the number of frames it stores in one piece (the
    vault: one encrypted segment): live audio is then handed over in whole pieces, so the
    sink never buffers a partial one and each call is flushed once per piece rather than once
    per batch (see CaptureEngine._housekeeping)."""

    def open(self, call: Call, rate: int, started_at: float) -> Any: ...
    def write(self, handle: Any, frames: np.ndarray) -> None: ...
    def change_rate(self, handle: Any, new_rate: int) -> None: ...
    def close(self, handle: Any, metadata: dict[str, Any]) -> None: ...
    def discard(self, handle: Any) -> None: ...
    def not_recorded(self, metadata: dict[str, Any]) -> None: ...


class MediaRouter(Protocol):
    """Fanout over worker processes (capture.fanout.FanoutRouter): which worker records a call.

    Every worker sees all signalling; a worker opens media state and writes outputs only for
    the calls it owns, forwards the media of others' calls that lands on it, and holds back
    media whose owner is not fixed yet."""

    worker: int

    def on_signalling(self, call: Call, message: SipMessage) -> None: ...
    def owner(self, call: Call) -> int | None: ...
    def records(self, call: Call) -> bool: ...
    def forward(self, worker: int, frames: FrameBatch) -> None: ...
    def hold(self, frames: FrameBatch, forwardable: np.ndarray) -> None: ...


@dataclass(slots=True)
class EngineSettings:
    tracker: TrackerSettings = field(default_factory=TrackerSettings)
    jitter_window_s: float = 0.5     # audio older than this (capture time) goes to the sink
    reanchor_s: float = 0.2          # see capture.streams
    flush_chunk_s: float = 10.0      # silence is written in pieces of at most this
    min_flush_s: float = 0.0         # audio is handed to the sink in pieces of at least this


class CallMedia:
    """The audio side of one call: its timeline, streams, and the sink handle."""

    def __init__(self, call: Call, sink: RecordingSink, t0: float) -> None:
        self.call = call
        self.sink = sink
        self.timeline = CallTimeline(t0, NARROWBAND_RATE)
        self.handle = sink.open(call, NARROWBAND_RATE, t0)
        self.streams: dict[tuple[int, int], MediaStream] = {}
        self.work: dict[tuple[int, int], StreamWork] = {}   # (expectation, SSRC) -> plain RTP's StreamWork
        self.srtp: dict[int, SrtpReceiver | None] = {}
        self.frames = 0
        self.encrypted = False
        self.undecryptable = False
        self.kernel_drops = 0          # packets the kernel dropped on the capture while this call ran

    def ensure_rate(self, rate: int) -> None:
        while rate > self.timeline.rate:
            self.timeline.double_rate()
            self.sink.change_rate(self.handle, self.timeline.rate)

    def flush(self, upto: int, chunk: int) -> None:
        for frames in self.timeline.chunks(upto, chunk):
            self.sink.write(self.handle, frames)
            self.frames += len(frames)


class CaptureEngine:
    def __init__(self, sink: RecordingSink, settings: EngineSettings | None = None,
                 router: MediaRouter | None = None) -> None:
        self.settings = settings or EngineSettings()
        self.sink = sink
        self.flush_frames = max(1, int(getattr(sink, "flush_frames", 1)))   # optional, see RecordingSink
        self.router = router                      # None: this engine records every call
        self.tracker = DialogTracker(self.settings.tracker)
        self.decoder = PacketDecoder()
        self.tcp = SipTcpReassembler()
        self.media_pass = MediaBatchProcessor(self.settings.reanchor_s)
        self.media: dict[str, CallMedia] = {}
        self.video_seen: set[str] = set()
        self.counters: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.now = 0.0
        self.paused_reason: str | None = None     # set: new calls are not recorded (e.g. disk_full)
        self.refused: dict[str, str] = {}         # call key -> why its audio is not recorded
        self.closed_early: set[str] = set()       # calls whose recording pause() closed

    # -- batches -------------------------------------------------------------------------------

    def feed(self, batch: FrameBatch, forwardable: np.ndarray | None = None) -> None:
        """Decode and record one batch.  With a router, `forwardable` flags the frames that
        only this worker has (None: all), which it may forward to the call's owner.

        A batch is taken in pieces of at most MAX_BATCH_SPAN_S of capture time: the timelines
        refuse writes far ahead of what they flushed (capture/timeline.py MAX_SPAN_S), so the
        housekeeping between pieces must see time advance, however the caller cut its input."""
        first = 0
        for part in split_by_time(batch):
            flags = None if forwardable is None else forwardable[first:first + len(part)]
            first += len(part)
            self._feed_piece(part, flags)

    def _feed_piece(self, batch: FrameBatch, forwardable: np.ndarray | None) -> None:
        if not len(batch):
            return
        arrays = decode_batch(batch, self.decoder, self.tracker.expectations.addresses, self.errors)
        n = len(arrays)
        self.counters["frames"] += n
        matched = np.full(n, -1, np.int64)
        claims: dict[int, MediaExpectation] = {}
        rtp_like = arrays.kind == KIND_RTP
        start = 0
        for i in np.flatnonzero(arrays.kind >= KIND_MESSAGE).tolist() + [n]:
            if i > start:
                self._match(arrays, start, i, rtp_like, matched, claims)
            if i < n:
                self._message(arrays, i)
            start = i + 1
        self._media(arrays, matched, claims, batch, forwardable)
        self.now = max(self.now, float(arrays.ts.max()))
        self._housekeeping()

    def _match(self, arrays: PacketArrays, lo: int, hi: int, rtp_like: np.ndarray,
               matched: np.ndarray, claims: dict[int, MediaExpectation]) -> None:
        idx = lo + np.flatnonzero(rtp_like[lo:hi])
        if not len(idx):
            return
        local, table, idents = self.tracker.expectations.lookup_keys(arrays.src_key[idx], arrays.dst_key[idx])
        hit = local >= 0
        self.counters["rtp_unmatched"] += int(len(idx) - np.count_nonzero(hit))
        for j in np.unique(local[hit]).tolist():
            claims[table[j].ident] = table[j]
        matched[idx[hit]] = idents[local[hit]]

    # -- signalling ----------------------------------------------------------------------------

    def _message(self, arrays: PacketArrays, i: int) -> None:
        ts = float(arrays.ts[i])
        src, dst = arrays.endpoints(i)
        if arrays.kind[i] == KIND_TCP:
            seg = arrays.segments[i]
            before = Counter(self.tcp.errors)
            for done_ts, message in self.tcp.feed(seg):
                self._sip(message, done_ts, src, dst)
            self.errors.update(self.tcp.errors - before)
            return
        payload = arrays.payload(i)
        if payload[4:8] == ZRTP_MAGIC:
            self._zrtp(src, dst)
        elif looks_like_sip(payload):
            self._sip(payload, ts, src, dst)

    def _sip(self, data: bytes, ts: float, src: tuple[str, int], dst: tuple[str, int]) -> None:
        self.counters["sip_messages"] += 1
        try:
            message = parse_sip(data)
            call = self.tracker.on_message(message, ts, src, dst)
        except ParseError as err:
            self.errors[err.reason] += 1
            return
        if self.router is not None and call is not None:
            self.router.on_signalling(call, message)

    def _zrtp(self, src: tuple[str, int], dst: tuple[str, int]) -> None:
        """ZRTP (RFC 6189) negotiates keys in-band: the media after it cannot be decrypted."""
        self.counters["zrtp_packets"] += 1
        claim = self.tracker.expectations.lookup(src[0], src[1], dst[0], dst[1])
        call = self.tracker.calls.get(claim.call_key) if claim else None
        if call is not None:
            call.zrtp = True

    # -- media ---------------------------------------------------------------------------------

    def _media(self, arrays: PacketArrays, matched: np.ndarray, claims: dict[int, MediaExpectation],
               source: FrameBatch, forwardable: np.ndarray | None) -> None:
        idx = np.flatnonzero(matched >= 0)
        if not len(idx):
            return
        hdr = parse_rtp_headers(arrays.buf, arrays.payload_offset[idx], arrays.payload_length[idx])
        bad = int(len(idx) - np.count_nonzero(hdr.valid))
        if bad:
            self.errors["rtp.malformed"] += bad
        keep = np.flatnonzero(hdr.valid)
        idx, ident, ssrc = idx[keep], matched[idx[keep]], hdr.ssrc[keep]
        order = np.lexsort((idx, ssrc, ident))           # by stream, then arrival
        keep, idx, ident, ssrc = keep[order], idx[order], ident[order], ssrc[order]
        cuts = np.flatnonzero((np.diff(ident) != 0) | (np.diff(ssrc) != 0)) + 1
        seg_start = np.concatenate(([0], cuts))
        seg_length = np.diff(np.append(seg_start, len(idx)))
        recorded = np.zeros(len(seg_start), bool)
        plan: list[tuple[MediaExpectation, int, int]] = []   # claim, ssrc, first packet index
        first_arrival: dict[str, float] = {}
        routed: dict[int | None, list[np.ndarray]] = {}
        segments = zip(seg_start.tolist(), (seg_start + seg_length).tolist(), ident[seg_start].tolist(),
                       ssrc[seg_start].tolist(), idx[seg_start].tolist(), arrays.ts[idx[seg_start]].tolist(),
                       strict=True)
        for j, (a, b, claim_ident, stream_ssrc, first, t) in enumerate(segments):
            claim = claims[claim_ident]
            key = claim.call_key
            if self.router is not None and self._routed_away(claim, idx[a:b], routed):
                continue
            if key in self.refused or (self.paused_reason and key not in self.media):
                self.refused.setdefault(key, self.paused_reason or "refused")
                self.counters["rtp_not_recorded"] += b - a
                continue
            if claim.kind != "audio":
                self.counters["rtp_non_audio"] += b - a
                self.video_seen.add(key)
                continue
            recorded[j] = True
            plan.append((claim, stream_ssrc, first))
            first_arrival[key] = min(first_arrival.get(key, t), t)
        if routed:
            self._send_routed(source, routed, forwardable)
        if not plan:
            return
        for key, t in first_arrival.items():
            self._prepare_call(key, t)
        rows = np.flatnonzero(np.repeat(recorded, seg_length))
        sid = np.repeat(np.arange(len(plan)), seg_length[recorded])
        at, hrow = idx[rows], keep[rows]
        self.counters["rtp_packets"] += len(rows)
        batch = BatchPackets(
            raw=arrays.raw, buf=arrays.buf, stream=sid, arrival=arrays.ts[at], seq=hdr.seq[hrow],
            timestamp=hdr.timestamp[hrow], payload_type=hdr.payload_type[hrow],
            payload_offset=hdr.payload_offset[hrow], payload_length=hdr.payload_length[hrow])
        packet_offset, packet_length = arrays.payload_offset[at], arrays.payload_length[at]
        work = [self._stream_work(arrays, claim, stream_ssrc, first, batch, packet_offset, packet_length)
                for claim, stream_ssrc, first in plan]
        for reason, count in self.media_pass.process(batch, work).items():
            self.errors[reason] += count

    def _routed_away(self, claim: MediaExpectation, rows: np.ndarray,
                     routed: dict[int | None, list[np.ndarray]]) -> bool:
        """Fanout: False when this worker records the stream's call; otherwise its packets are
        set aside for the owner (None: owner not fixed yet)."""
        assert self.router is not None
        owner = self.router.owner(self.tracker.calls[claim.call_key])
        if owner == self.router.worker:
            return False
        routed.setdefault(owner, []).append(rows)
        return True

    def _send_routed(self, batch: FrameBatch, routed: dict[int | None, list[np.ndarray]],
                     forwardable: np.ndarray | None) -> None:
        """Media of calls another worker records goes to it, unless that worker has the
        frames itself (not forwardable); media of calls without an owner yet is held back."""
        assert self.router is not None
        for owner, parts in routed.items():
            rows = np.sort(np.concatenate(parts))
            flags = forwardable[rows] if forwardable is not None else np.ones(len(rows), bool)
            if owner is None:
                self.counters["rtp_held"] += len(rows)
                self.router.hold(take_frames(batch, rows), flags)
                continue
            self.counters["rtp_elsewhere"] += int(len(rows) - np.count_nonzero(flags))
            rows = rows[flags]
            if len(rows):
                self.counters["rtp_forwarded"] += len(rows)
                self.router.forward(owner, take_frames(batch, rows))

    def _prepare_call(self, key: str, first: float) -> None:
        """Open the recording at the call's first media packet; after a quiet spell, write the
        silence up to the jitter window before the new packets, so the buffer stays small."""
        call = self.tracker.calls[key]
        self.tracker.on_media(call, max(first, self.now))
        media = self.media.get(key)
        if media is None:
            self.media[key] = CallMedia(call, self.sink, first)
            return
        target = media.timeline.sample_at(first - self.settings.jitter_window_s)
        if target > media.timeline.end:
            media.flush(target, int(self.settings.flush_chunk_s * media.timeline.rate))

    def _stream_work(self, arrays: PacketArrays, claim: MediaExpectation, ssrc: int, first: int,
                     batch: BatchPackets, packet_offset: np.ndarray, packet_length: np.ndarray) -> StreamWork:
        """The stream's share of the batch. Plain RTP keeps the same StreamWork from batch to
        batch (a new one per batch cost more than its packets at thousands of calls); SRTP
        and ZRTP streams get one per batch, as their payload reader depends on the batch."""
        media = self.media[claim.call_key]
        call = media.call
        plain = not claim.secure and not call.zrtp
        cached = media.work.get((claim.ident, ssrc))
        if cached is not None and plain:
            return cached
        stream = media.streams.get((claim.channel, ssrc))
        if stream is None:
            src, dst = arrays.endpoints(first)
            stream = MediaStream(claim.channel, ssrc, f"{src[0]}:{src[1]}", f"{dst[0]}:{dst[1]}",
                                 reanchor_s=self.settings.reanchor_s)
            stream.t0 = media.timeline.t0
            media.streams[(claim.channel, ssrc)] = stream
        silenced, payload_of = self._secure_payloads(call, media, claim, batch, packet_offset, packet_length)

        def codec_for(pt: int) -> CodecSpec | None:
            return claim.codecs.get(pt) or call.codecs.get(pt)

        work = StreamWork(stream, media, codec_for, silenced, payload_of)
        if plain:
            media.work[(claim.ident, ssrc)] = work
        return work

    def _secure_payloads(self, call: Call, media: CallMedia, claim: MediaExpectation, batch: BatchPackets,
                         packet_offset: np.ndarray, packet_length: np.ndarray) -> tuple[bool, PayloadOf | None]:
        """(silenced, payload_of) for the stream: SRTP is decrypted with the SDES key of the
        side that sends it (RFC 4568 §6.1); ZRTP or missing keys leave silence."""
        if call.zrtp:
            media.encrypted = media.undecryptable = True
            return True, None
        if not claim.secure:
            return False, None
        media.encrypted = True
        receiver = self._srtp_receiver(call, media, claim.channel)
        if receiver is None:
            media.undecryptable = True
            return True, None
        raw = batch.raw

        def payload_of(i: int) -> bytes | None:
            start = int(packet_offset[i])
            try:
                plain = receiver.unprotect(bytes(raw[start:start + int(packet_length[i])]))
            except ParseError as err:
                self.errors[err.reason] += 1
                return None
            header = int(batch.payload_offset[i]) - start
            pad = plain[-1] if plain[0] & 0x20 and len(plain) > header else 0
            return plain[header:len(plain) - pad]

        return False, payload_of

    def _srtp_receiver(self, call: Call, media: CallMedia, channel: int) -> SrtpReceiver | None:
        if channel not in media.srtp:
            keys = [k for k in call.crypto.get(channel, []) if supported_suite(k.suite)]
            chosen = [k for k in keys if k.tag == call.chosen_crypto_tag] or keys
            receiver = None
            if chosen:
                try:
                    receiver = SrtpReceiver(chosen[0].suite, chosen[0].key_params)
                except ParseError as err:
                    self.errors[err.reason] += 1
            media.srtp[channel] = receiver
        return media.srtp[channel]

    # -- time and endings ----------------------------------------------------------------------

    def _housekeeping(self) -> None:
        for call in self.tracker.expire(self.now):
            self._finish_call(call)
        window = self.settings.jitter_window_s
        quantum = self.flush_frames
        for media in self.media.values():
            t = media.timeline
            ready = min(t.sample_at(self.now - window), t.end) - t.base
            # hand audio over in pieces of at least min_flush_s, in whole pieces of the sink
            # (a vault segment: 0.26 s at 8 kHz): thousands of calls each flushed on every
            # batch cost more in per-call overhead than in audio. Whole segments add nothing
            # to what a crash loses: a partial one would only wait in the sink's buffer.
            ready -= ready % quantum
            if ready > 0 and ready >= self.settings.min_flush_s * t.rate:
                media.flush(t.base + ready, int(self.settings.flush_chunk_s * t.rate))
        self.tcp.expire(self.now)

    def tick(self, now: float) -> None:
        """Advance capture time without packets (a live capture that is idle): calls time out
        and audio older than the jitter window is written."""
        if now > self.now:
            self.now = now
            self._housekeeping()

    def note_kernel_drops(self, count: int) -> None:
        """The kernel dropped `count` packets of the capture since the last report (its ring
        was full). Which calls they belonged to is unknowable, so every recording active now
        carries the count in its completeness: it may miss some of them."""
        if count > 0:
            for media in self.media.values():
                media.kernel_drops += count

    def pause(self, reason: str) -> None:
        """Stop recording (e.g. the disk is under its floor): active recordings are closed
        cleanly now, marked partial; new calls are catalogued as not recorded with `reason`."""
        self.paused_reason = reason
        for key in list(self.media):
            call = self.tracker.calls.get(key)
            if call is None:
                continue
            self.refused[key] = reason
            self._close_media(call, self.media.pop(key), partial_reason=reason)

    def resume(self) -> None:
        """Record new calls again (calls refused meanwhile stay unrecorded to their end)."""
        self.paused_reason = None

    def take_over(self, tracker: DialogTracker, stopped: dict[str, str]) -> None:
        """Continue from another engine's signalling state (fanout: a restarted worker starts
        from a peer's dialogs and expectations, so it knows the calls already in progress).
        The calls in `stopped` (key -> reason) are recorded no further: their recordings were
        closed elsewhere (recovered as partial), and they end without a row of their own."""
        self.tracker = tracker
        for key, reason in stopped.items():
            self.refused[key] = reason
            self.closed_early.add(key)

    def finish(self) -> None:
        """End of input: every open call ends now and is written out."""
        for call in self.tracker.close_all():
            self._finish_call(call)

    def _finish_call(self, call: Call) -> None:
        if self.router is not None and not self.router.records(call):
            self.refused.pop(call.key, None)      # another worker records it (or lists it)
            self.counters["calls_elsewhere"] += 1
            return
        media = self.media.pop(call.key, None)
        self.counters["calls"] += 1
        refused = self.refused.pop(call.key, None)
        if media is None:
            if refused and call.key in self.closed_early:
                self.closed_early.discard(call.key)
                return   # its recording was closed when recording paused
            reason = refused or ("video_only" if call.key in self.video_seen else "no_media")
            self._not_recorded(call, reason)
            return
        self._close_media(call, media)

    def _close_media(self, call: Call, media: CallMedia, partial_reason: str | None = None) -> None:
        t = media.timeline
        media.flush(max(t.end, t.base), int(self.settings.flush_chunk_s * t.rate))
        streams = list(media.streams.values())
        for stream in streams:
            stream.detach()   # its row in the stream table is free again; the values stay with it
        decoded_any = any(s.unique > s.undecodable for s in streams)
        if not decoded_any and not media.undecryptable:
            media.sink.discard(media.handle)
            names = sorted({c for s in streams for c in s.codecs}) or ["unknown payload types"]
            self._not_recorded(call, "codec_unknown: " + ", ".join(names))
            return
        metadata = recording_metadata(
            call, streams, started_at=t.t0, frames=media.frames, rate=t.rate,
            late_samples=t.late_samples, refused_samples=t.refused_samples, encrypted=media.encrypted,
            decodable=not media.undecryptable, kernel_drops=media.kernel_drops)
        if partial_reason:
            metadata["partial"] = True
            metadata["partial_reason"] = partial_reason
            self.closed_early.add(call.key)
        self.sink.close(media.handle, metadata)
        self.counters["recordings"] += 1

    def _not_recorded(self, call: Call, reason: str) -> None:
        self.counters["not_recorded"] += 1
        self.sink.not_recorded({**call_identity(call), "reason": reason})
