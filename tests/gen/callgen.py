"""Synthetic SIP/RTP captures with exact ground truth.

A capture is described by :class:`CallPlan` objects; :func:`write_capture` writes the pcap and
returns a :class:`GroundTruth` that says, per call, where each leg's tone must be audible in the
recording (absolute capture time), which packets were lost/duplicated/reordered, the DTMF digits,
the SIP messages and the RTP streams as tshark will see them.

Conventions (all times in seconds):

* A call starts with its INVITE at ``start_ts`` (epoch). ``answer`` is the 200 OK to the INVITE.
* Event times in a plan (hold, re-INVITE, DTMF) are relative to ``answer``; talk spurts are
  relative to the leg's first media slot. Media runs until ``answer + duration_s``.
* Each leg sends a 20 ms packet per slot; the tone at the receiver belongs at the slot's nominal
  time ("placement"). Jitter/reordering move the *arrival* only. The first packet of a stream
  and every packet with the marker bit (spurt start, resume after hold) arrive exactly on time,
  so an engine that anchors on arrival places audio exactly where the ground truth says.
* ``first_media_ts`` is the arrival of the call's earliest RTP packet = sample 0 of the recording.

:func:`write_bulk_g711` (in :mod:`tests.gen.bulk`) builds the large benchmark capture with numpy.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from tests.gen.bulk import BulkTruth, write_bulk_g711
from tests.gen.media import (
    PTIME_S,
    TELEPHONE_EVENT_PT,
    TS_PER_PACKET,
    codec_spec,
    dtmf_event_payload,
    pcm_payloads,
    rtp_header,
    tone_payloads,
)
from tests.gen.netframes import (
    TCP_ACK,
    TCP_FIN,
    TCP_PSH,
    TCP_SYN,
    FrameBuilder,
    LinkPath,
    pcap_record,
    quantize_ts,
    write_pcap_header,
)
from tests.gen.sipmsg import Dialog, SdpOffer, Side, SipMessage, peer

__all__ = [
    "BulkTruth", "CallPlan", "CallTruth", "DtmfPress", "DtmfTruth", "GroundTruth", "Hold", "LegPlan",
    "LegTruth", "PlacedPayload", "Reinvite", "Spurt", "StreamTruth", "write_bulk_g711", "write_capture",
]

ENDPOINT_SLACK_S = 1e-6
_DTMF_END_REPEATS_S = (0.005, 0.010)     # RFC 4733 §2.5.1.4: the end packet is sent three times
_EARLY_MEDIA_AFTER_183_S = 0.01
_TCP_MSS = 536                           # RFC 879 default MSS: INVITEs with SDP span two segments


# --------------------------------------------------------------------------------------------
# Plans
# --------------------------------------------------------------------------------------------

@dataclass(slots=True)
class Spurt:
    """A talk spurt, seconds after the leg's first media slot; outside spurts nothing is sent (VAD)."""

    start_s: float
    end_s: float


@dataclass(slots=True)
class LegPlan:
    """What one side sends: its tone, codec, talk spurts and the network impairments on the way."""

    tone_hz: float
    codec: str = "pcmu"
    spurts: list[Spurt] | None = None          # None = continuous
    loss_rate: float = 0.0                     # seeded random loss of audio packets
    drop: set[int] = field(default_factory=set)   # indices (in send order) of packets dropped
    reorder_rate: float = 0.0                  # fraction of packets delayed by 25..reorder_max_ms
    reorder_max_ms: float = 60.0
    duplicate_rate: float = 0.0                # fraction of packets delivered twice
    jitter_ms: float = 0.0                     # uniform arrival jitter ±jitter_ms
    ssrc: int | None = None                    # None = seeded random
    seq_start: int | None = None               # None = seeded random (sometimes close to a wrap)
    ts_start: int | None = None                # None = seeded random (sometimes close to a wrap)
    # audio to send instead of the tone (int16 mono at the codec's rate; sample 0 = the leg's
    # first media slot; silence after its end), e.g. synthesised speech for tests/analysis
    samples: np.ndarray | None = None


@dataclass(slots=True)
class Hold:
    """Caller puts the call on hold (a=sendonly) at start_s and resumes (a=sendrecv) at end_s."""

    start_s: float
    end_s: float


@dataclass(slots=True)
class Reinvite:
    """Caller re-INVITEs at at_s: both legs move to new ports, a new codec and new SSRCs."""

    at_s: float
    caller_port: int
    callee_port: int
    codec: str


@dataclass(slots=True)
class DtmfPress:
    """One RFC 4733 DTMF event sent by the caller at at_s (replaces the caller's audio meanwhile)."""

    at_s: float
    digit: str
    duration_ms: int = 100


@dataclass(slots=True)
class CallPlan:
    """One call: its dialog, both legs and what happens during it."""

    call_id: str
    start_ts: float
    duration_s: float
    caller: LegPlan = field(default_factory=lambda: LegPlan(440.0))
    callee: LegPlan = field(default_factory=lambda: LegPlan(1000.0))
    caller_num: str = "1001"
    callee_num: str = "2002"
    caller_ip: str = "10.0.0.1"            # IPv6 literals make an IPv6 call
    callee_ip: str = "10.0.0.2"
    caller_port: int = 40000
    callee_port: int = 50000
    sip_port: int = 5060
    transport: Literal["udp", "tcp"] = "udp"
    vlan: int | None = None
    ring_s: float = 0.5                    # INVITE → 200 OK (no early media)
    early_media_s: float = 0.0             # > 0: 183 with SDP, callee media this long before 200 OK
    hold: Hold | None = None
    reinvite: Reinvite | None = None
    dtmf: list[DtmfPress] = field(default_factory=list)
    ends_with: Literal["bye", "none", "cancel"] = "bye"
    bye_by: Side = "caller"


# --------------------------------------------------------------------------------------------
# Ground truth
# --------------------------------------------------------------------------------------------

@dataclass(slots=True)
class StreamTruth:
    """One RTP stream (SSRC) as it is on the wire."""

    ssrc: int
    src: tuple[str, int]
    dst: tuple[str, int]
    codec: str
    payload_types: set[int]
    sent: int = 0                 # distinct packets the sender sent (= expected by sequence)
    lost: int = 0
    duplicates: int = 0
    first_seq: int = 0
    last_seq: int = 0
    seq_wrapped: bool = False

    @property
    def packets_on_wire(self) -> int:
        """Frames in the capture for this SSRC (received + duplicate copies)."""
        return self.sent - self.lost + self.duplicates


@dataclass(slots=True)
class PlacedPayload:
    """One received audio packet and where its first sample belongs (absolute time)."""

    at: float
    codec: str
    payload: bytes


@dataclass(slots=True)
class LegTruth:
    """What the recording must show for one leg (channel).

    ``unchecked`` spans: DTMF events (an engine may render them as tones or as silence).
    """

    channel: int
    tone_hz: float
    intervals: list[tuple[float, float]] = field(default_factory=list)    # tone audible (absolute)
    unchecked: list[tuple[float, float]] = field(default_factory=list)    # nothing asserted here (see below)
    loss_gaps: list[tuple[float, float]] = field(default_factory=list)    # (start, duration) of lost runs
    streams: list[StreamTruth] = field(default_factory=list)
    audio: list[PlacedPayload] = field(default_factory=list)
    out_of_order: int = 0

    @property
    def sent(self) -> int:
        """Distinct packets sent on this leg (audio + events), i.e. the expected count."""
        return sum(s.sent for s in self.streams)

    @property
    def lost(self) -> int:
        """Packets dropped by the network on this leg."""
        return sum(s.lost for s in self.streams)

    @property
    def received(self) -> int:
        """Distinct packets that reached the capture."""
        return self.sent - self.lost

    @property
    def duplicates(self) -> int:
        """Extra copies delivered on this leg."""
        return sum(s.duplicates for s in self.streams)


@dataclass(slots=True)
class DtmfTruth:
    """One DTMF digit: absolute start (placement of the event's first packet) and duration."""

    digit: str
    channel: int
    at: float
    duration_ms: int


@dataclass(slots=True)
class CallTruth:
    """Everything a correct recording of one call must say."""

    call_id: str
    caller: str
    callee: str
    recorded: bool
    legs: tuple[LegTruth, LegTruth]
    first_media_ts: float | None = None
    media_end_ts: float | None = None
    sample_rate: int = 8000
    codecs: list[str] = field(default_factory=list)
    dtmf: list[DtmfTruth] = field(default_factory=list)
    sip: collections.Counter[str] = field(default_factory=collections.Counter)

    @property
    def duration_s(self) -> float:
        """Length of the recording: first media arrival to the end of the last placed packet."""
        if self.first_media_ts is None or self.media_end_ts is None:
            return 0.0
        return self.media_end_ts - self.first_media_ts

    def offset(self, ts: float) -> float:
        """Absolute time → seconds after sample 0 of the recording."""
        if self.first_media_ts is None:
            raise ValueError(f"call {self.call_id} has no media")
        return ts - self.first_media_ts


@dataclass(slots=True)
class GroundTruth:
    """Ground truth for a whole capture file."""

    path: str
    calls: dict[str, CallTruth]
    frames: int = 0
    rtp_packets: int = 0

    @property
    def sip(self) -> collections.Counter[str]:
        """SIP messages in the capture by method / status code."""
        total: collections.Counter[str] = collections.Counter()
        for call in self.calls.values():
            total.update(call.sip)
        return total

    @property
    def streams(self) -> list[StreamTruth]:
        """Every RTP stream of the capture that put at least one packet on the wire."""
        return [s for c in self.calls.values() for leg in c.legs for s in leg.streams if s.packets_on_wire]


# --------------------------------------------------------------------------------------------
# Media simulation
# --------------------------------------------------------------------------------------------

@dataclass(slots=True)
class _StreamCfg:
    codec: str
    src: tuple[str, int]
    dst: tuple[str, int]
    ssrc: int
    seq0: int
    ts0: int
    first_slot: int


@dataclass(slots=True)
class _Send:
    """One RTP packet as the sender emits it."""

    nominal: float              # absolute send time (= ideal arrival)
    stream: int
    seq: int
    timestamp: int
    marker: bool
    payload_type: int
    payload: bytes
    slot: int                   # packet slot of the leg
    slot_time: float            # where the audio belongs (absolute)
    audio: bool = True          # False for RFC 4733 event packets
    protected: bool = False     # never lost: first/last of a stream, events


@dataclass(slots=True)
class _Arrival:
    ts: float
    send: _Send


def _random_start(rng: np.random.Generator, modulus: int, span: int) -> int:
    """A random initial value; a quarter of the time just below the wrap so that it wraps mid-call."""
    if span > 1 and rng.random() < 0.25:
        return int(modulus - rng.integers(1, min(span, modulus)))
    return int(rng.integers(0, modulus))


class _LegSimulator:
    """Turns a leg's plan into the sequence of RTP packets its phone sends."""

    def __init__(self, plan: CallPlan, side: Side, answer: float, rng: np.random.Generator) -> None:
        self.plan = plan
        self.side = side
        self.leg = plan.caller if side == "caller" else plan.callee
        self.answer = answer
        self.rng = rng
        self.start_rel = self._start_rel()
        self.slots = max(0, int((plan.duration_s - self.start_rel) / PTIME_S + 1e-9))
        self.streams: list[_StreamCfg] = []
        self.sends: list[_Send] = []
        self.dtmf: list[DtmfTruth] = []
        self._sent_per_stream: collections.Counter[int] = collections.Counter()

    def _start_rel(self) -> float:
        """First slot relative to the answer: early media before it, callee 10 ms and caller 20 ms after."""
        if self.side == "callee":
            return -self.plan.early_media_s if self.plan.early_media_s > 0 else 0.01
        return 0.02

    def slot_rel(self, k: int) -> float:
        """Slot k's nominal time relative to the answer."""
        return self.start_rel + k * PTIME_S

    def run(self) -> None:
        """Walk the slots; emit audio, DTMF events, gaps for VAD and hold, stream switches."""
        if self.plan.ends_with == "cancel":
            return
        ts_jump = 0
        held = False
        pending_marker = True
        for k in range(self.slots):
            rel = self.slot_rel(k)
            if self._on_hold(rel):
                held = pending_marker = True
                continue
            if held:
                # Some phones restart their RTP clock after hold: the jump says nothing about wall time.
                ts_jump += int(self.rng.integers(1 << 20, 1 << 31))
                held = False
            stream = self._stream_for(rel, k)
            if not self._talking(rel):
                pending_marker = True
                continue
            cfg = self.streams[stream]
            timestamp = cfg.ts0 + (k - cfg.first_slot) * TS_PER_PACKET + ts_jump
            press = self._dtmf_at(rel)
            if press is not None:
                self._emit_event(k, stream, timestamp, press)
            else:
                self._emit(k, stream, timestamp, pending_marker, codec_spec(cfg.codec).payload_type, b"")
            pending_marker = False
        self._protect_stream_ends()
        self._fill_audio_payloads()

    def _on_hold(self, rel: float) -> bool:
        hold = self.plan.hold
        return hold is not None and hold.start_s - ENDPOINT_SLACK_S <= rel < hold.end_s - ENDPOINT_SLACK_S

    def _talking(self, rel: float) -> bool:
        if self.leg.spurts is None:
            return True
        t = rel - self.start_rel
        return any(s.start_s - ENDPOINT_SLACK_S <= t < s.end_s - ENDPOINT_SLACK_S for s in self.leg.spurts)

    def _stream_for(self, rel: float, k: int) -> int:
        """Index of the stream slot k belongs to (0, or 1 once a re-INVITE moved the media)."""
        reinvite = self.plan.reinvite
        wanted = int(reinvite is not None and rel >= reinvite.at_s - ENDPOINT_SLACK_S)
        while len(self.streams) <= wanted:
            self.streams.append(self._new_stream(len(self.streams), k))
        return wanted

    def _new_stream(self, index: int, first_slot: int) -> _StreamCfg:
        """Addresses, codec, SSRC and sequence/timestamp origins of a leg's stream ``index``."""
        plan, leg = self.plan, self.leg
        reinvite = plan.reinvite if index > 0 else None
        moved = reinvite is not None
        codec, caller_port, callee_port = leg.codec, plan.caller_port, plan.callee_port
        if reinvite is not None:
            codec, caller_port, callee_port = reinvite.codec, reinvite.caller_port, reinvite.callee_port
        caller, callee = (plan.caller_ip, caller_port), (plan.callee_ip, callee_port)
        src, dst = (caller, callee) if self.side == "caller" else (callee, caller)
        remaining = self.slots - first_slot
        ssrc = leg.ssrc if not moved and leg.ssrc is not None else int(self.rng.integers(1, 1 << 32))
        seq0 = leg.seq_start if not moved and leg.seq_start is not None \
            else _random_start(self.rng, 1 << 16, remaining)
        ts0 = leg.ts_start if not moved and leg.ts_start is not None \
            else _random_start(self.rng, 1 << 32, remaining * TS_PER_PACKET)
        return _StreamCfg(codec, src, dst, ssrc, seq0, ts0, first_slot)

    def _dtmf_at(self, rel: float) -> DtmfPress | None:
        if self.side != "caller":
            return None
        for press in self.plan.dtmf:
            if press.at_s - ENDPOINT_SLACK_S <= rel < press.at_s + press.duration_ms / 1000 - ENDPOINT_SLACK_S:
                return press
        return None

    def _emit(self, k: int, stream: int, timestamp: int, marker: bool, payload_type: int, payload: bytes,
              delay: float = 0.0, audio: bool = True) -> None:
        t = self.answer + self.slot_rel(k)
        seq = self.streams[stream].seq0 + self._sent_per_stream[stream]
        self._sent_per_stream[stream] += 1
        self.sends.append(_Send(t + delay, stream, seq, timestamp, marker, payload_type, payload, k, t,
                                audio=audio, protected=not audio))

    def _emit_event(self, k: int, stream: int, timestamp: int, press: DtmfPress) -> None:
        """RFC 4733 §2.5.1: one packet per slot with the event's start timestamp and growing duration."""
        slots = max(1, round(press.duration_ms / 1000 / PTIME_S))
        j = round((self.slot_rel(k) - press.at_s) / PTIME_S)
        event_ts = timestamp - j * TS_PER_PACKET
        end = j == slots - 1
        payload = dtmf_event_payload(press.digit, end, (j + 1) * TS_PER_PACKET)
        self._emit(k, stream, event_ts, j == 0, TELEPHONE_EVENT_PT, payload, audio=False)
        if j == 0:
            self.dtmf.append(DtmfTruth(press.digit, 0, self.sends[-1].slot_time, slots * round(PTIME_S * 1000)))
        if end:
            for delay in _DTMF_END_REPEATS_S:
                self._emit(k, stream, event_ts, False, TELEPHONE_EVENT_PT, payload, delay=delay, audio=False)

    def _protect_stream_ends(self) -> None:
        """First and last packet of each stream: loss there is invisible to sequence numbers."""
        for stream in range(len(self.streams)):
            mine = [s for s in self.sends if s.stream == stream]
            if mine:
                mine[0].protected = mine[-1].protected = True

    def _fill_audio_payloads(self) -> None:
        """Encode each stream's tone once over its whole slot range, then cut per packet."""
        for stream, cfg in enumerate(self.streams):
            audio = [s for s in self.sends if s.stream == stream and s.audio]
            if not audio:
                continue
            first, last = audio[0].slot, audio[-1].slot
            if self.leg.samples is not None:
                payloads = pcm_payloads(cfg.codec, self.leg.samples, first, last - first + 1)
            else:
                payloads = tone_payloads(cfg.codec, self.leg.tone_hz, first, last - first + 1)
            for send in audio:
                send.payload = payloads[send.slot - first]


def _impair(leg: LegPlan, sends: list[_Send], rng: np.random.Generator) -> tuple[list[_Arrival], set[int]]:
    """Apply loss, jitter, reordering and duplication; returns arrivals and the lost send indices."""
    for index in leg.drop:
        if index >= len(sends) or sends[index].protected:
            raise ValueError(f"drop index {index} is outside the leg or a protected packet "
                             "(first/last of a stream or a DTMF event)")
    lost = set(leg.drop)
    draws = rng.random((len(sends), 5))
    arrivals: list[_Arrival] = []
    for i, send in enumerate(sends):
        if i in lost or (not send.protected and draws[i, 0] < leg.loss_rate):
            lost.add(i)
            continue
        ts = send.nominal
        if not (send.marker or send.protected):
            ts += (2 * draws[i, 1] - 1) * leg.jitter_ms / 1000
            if draws[i, 2] < leg.reorder_rate:
                ts += (25 + draws[i, 3] * (leg.reorder_max_ms - 25)) / 1000
        arrivals.append(_Arrival(ts, send))
        if draws[i, 4] < leg.duplicate_rate and not send.protected:
            arrivals.append(_Arrival(ts + 0.0005 + draws[i, 3] * 0.0095, send))
    _keep_stream_starts_first(arrivals)
    for a in arrivals:
        a.ts = quantize_ts(a.ts)
    return arrivals, lost


def _keep_stream_starts_first(arrivals: list[_Arrival]) -> None:
    """Nothing of a stream may arrive before that stream's first packet (the anchor)."""
    first: dict[int, float] = {}
    for a in arrivals:
        if a.send.stream not in first:
            first[a.send.stream] = a.ts
        elif a.ts <= first[a.send.stream]:
            a.ts = first[a.send.stream] + 0.0005


def _leg_truth(channel: int, sim: _LegSimulator, arrivals: list[_Arrival], lost: set[int]) -> LegTruth:
    """Ground truth of one leg from what was sent and what arrived."""
    truth = LegTruth(channel, sim.leg.tone_hz)
    for index, cfg in enumerate(sim.streams):
        mine = [s for s in sim.sends if s.stream == index]
        pts = {s.payload_type for s in mine}
        truth.streams.append(StreamTruth(cfg.ssrc, cfg.src, cfg.dst, cfg.codec, pts, sent=len(mine),
                                         first_seq=cfg.seq0 & 0xFFFF,
                                         last_seq=(cfg.seq0 + len(mine) - 1) & 0xFFFF,
                                         seq_wrapped=cfg.seq0 + len(mine) - 1 > 0xFFFF))
    for i in lost:
        truth.streams[sim.sends[i].stream].lost += 1
    seen: set[int] = set()
    for a in arrivals:
        if id(a.send) in seen:
            truth.streams[a.send.stream].duplicates += 1
        seen.add(id(a.send))
    received = [s for i, s in enumerate(sim.sends) if i not in lost]
    truth.intervals = _merge((s.slot_time, s.slot_time + PTIME_S) for s in received if s.audio)
    truth.audio = [PlacedPayload(s.slot_time, sim.streams[s.stream].codec, s.payload)
                   for s in received if s.audio]
    truth.unchecked = [(d.at, d.at + d.duration_ms / 1000) for d in sim.dtmf]
    truth.loss_gaps = [(a, b - a) for a, b in _merge((sim.sends[i].slot_time, sim.sends[i].slot_time + PTIME_S)
                                                       for i in lost)]
    truth.out_of_order = _count_out_of_order(arrivals)
    return truth


def _merge(spans: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """Union of [start, end) spans, touching spans joined."""
    merged: list[tuple[float, float]] = []
    for a, b in sorted(spans):
        if merged and a <= merged[-1][1] + ENDPOINT_SLACK_S:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def _count_out_of_order(arrivals: list[_Arrival]) -> int:
    """Packets arriving after a packet sent later on the same stream (duplicates ignored)."""
    count = 0
    latest: dict[int, float] = {}
    seen: set[int] = set()
    for a in sorted(arrivals, key=lambda x: x.ts):
        if id(a.send) in seen:
            continue
        seen.add(id(a.send))
        if a.send.nominal < latest.get(a.send.stream, -1.0):
            count += 1
        latest[a.send.stream] = max(latest.get(a.send.stream, -1.0), a.send.nominal)
    return count


# --------------------------------------------------------------------------------------------
# Signalling
# --------------------------------------------------------------------------------------------

@dataclass(slots=True)
class _TimedSip:
    ts: float
    msg: SipMessage


def _answer_ts(plan: CallPlan) -> float:
    """When the 200 OK to the INVITE is sent (the reference for plan event times)."""
    if plan.early_media_s > 0:
        return plan.start_ts + 0.03 + _EARLY_MEDIA_AFTER_183_S + plan.early_media_s
    return plan.start_ts + plan.ring_s


def _signalling(plan: CallPlan, dialog: Dialog) -> list[_TimedSip]:
    """The call's SIP messages with their send times (the offer/answer carries every codec used)."""
    t0 = plan.start_ts
    answer = _answer_ts(plan)
    codecs = list(dict.fromkeys([plan.caller.codec, plan.callee.codec]))
    offer = SdpOffer(plan.caller_port, codecs)
    reply = SdpOffer(plan.callee_port, codecs)
    out: list[_TimedSip] = []
    invite = dialog.request("INVITE", "caller", offer, in_dialog=False)
    out += [_TimedSip(t0, invite), _TimedSip(t0 + 0.005, dialog.response(invite, 100))]
    if plan.ends_with == "cancel":
        return out + _cancel_flow(dialog, invite, t0)
    if plan.early_media_s > 0:
        out.append(_TimedSip(t0 + 0.03, dialog.response(invite, 183, reply)))
    else:
        out.append(_TimedSip(t0 + 0.03, dialog.response(invite, 180)))
    ok = dialog.response(invite, 200, reply)
    out += [_TimedSip(answer, ok), _TimedSip(answer + 0.005, dialog.ack(invite, ok))]
    out += _mid_call(plan, dialog, answer)
    if plan.ends_with == "bye":
        bye = dialog.request("BYE", plan.bye_by)
        end = answer + plan.duration_s + 0.01
        out += [_TimedSip(end, bye), _TimedSip(end + 0.005, dialog.response(bye, 200))]
    return sorted(out, key=lambda s: s.ts)


def _cancel_flow(dialog: Dialog, invite: SipMessage, t0: float) -> list[_TimedSip]:
    """180, CANCEL, 200 (CANCEL), 487 (INVITE), ACK: RFC 3261 §9."""
    ringing = dialog.response(invite, 180)
    cancel = dialog.cancel(invite)
    terminated = dialog.response(invite, 487)
    return [_TimedSip(t0 + 0.03, ringing), _TimedSip(t0 + 0.5, cancel),
            _TimedSip(t0 + 0.505, dialog.response(cancel, 200)), _TimedSip(t0 + 0.507, terminated),
            _TimedSip(t0 + 0.51, dialog.ack(invite, terminated))]


def _mid_call(plan: CallPlan, dialog: Dialog, answer: float) -> list[_TimedSip]:
    """Hold/resume and media-moving re-INVITEs, each completed just before the media changes."""
    codecs = list(dict.fromkeys([plan.caller.codec, plan.callee.codec]))
    changes: list[tuple[float, SdpOffer, SdpOffer]] = []
    if plan.hold is not None:
        changes.append((plan.hold.start_s, SdpOffer(plan.caller_port, codecs, "sendonly"),
                        SdpOffer(plan.callee_port, codecs, "recvonly")))
        changes.append((plan.hold.end_s, SdpOffer(plan.caller_port, codecs),
                        SdpOffer(plan.callee_port, codecs)))
    if plan.reinvite is not None:
        r = plan.reinvite
        changes.append((r.at_s, SdpOffer(r.caller_port, [r.codec]), SdpOffer(r.callee_port, [r.codec])))
    out: list[_TimedSip] = []
    for at, offer, reply in sorted(changes, key=lambda c: c[0]):
        t = answer + at - 0.04
        reinvite = dialog.request("INVITE", "caller", offer)
        ok = dialog.response(reinvite, 200, reply)
        out += [_TimedSip(t, reinvite), _TimedSip(t + 0.015, ok), _TimedSip(t + 0.02, dialog.ack(reinvite, ok))]
    return out


@dataclass(slots=True)
class _TcpConnection:
    """One TCP connection from the caller to the callee's SIP port carrying the whole dialog."""

    caller: tuple[str, int]
    callee: tuple[str, int]
    vlan: int | None
    seq: dict[Side, int]

    def path(self, sender: Side) -> tuple[LinkPath, int, int]:
        """Link path, source port and destination port of a segment from ``sender``."""
        a, b = (self.caller, self.callee) if sender == "caller" else (self.callee, self.caller)
        return LinkPath(a[0], b[0], self.vlan), a[1], b[1]

    def segment(self, fb: FrameBuilder, sender: Side, flags: int, payload: bytes = b"") -> bytes:
        path, sport, dport = self.path(sender)
        frame = fb.tcp(path, sport, dport, self.seq[sender], self.seq[peer(sender)], flags, payload)
        self.seq[sender] += len(payload) + (1 if flags & (TCP_SYN | TCP_FIN) else 0)
        return frame

    def handshake(self, fb: FrameBuilder, ts: float) -> list[tuple[float, bytes]]:
        """SYN, SYN/ACK, ACK."""
        return [(ts, self.segment(fb, "caller", TCP_SYN)),
                (ts + 0.0002, self.segment(fb, "callee", TCP_SYN | TCP_ACK)),
                (ts + 0.0004, self.segment(fb, "caller", TCP_ACK))]

    def send(self, fb: FrameBuilder, ts: float, sender: Side, data: bytes) -> list[tuple[float, bytes]]:
        """The message in MSS-sized segments (PSH on the last), then the peer's ACK."""
        out = []
        chunks = [data[i:i + _TCP_MSS] for i in range(0, len(data), _TCP_MSS)]
        for n, chunk in enumerate(chunks):
            flags = TCP_ACK | (TCP_PSH if n == len(chunks) - 1 else 0)
            out.append((ts + n * 0.0001, self.segment(fb, sender, flags, chunk)))
        out.append((ts + 0.001, self.segment(fb, peer(sender), TCP_ACK)))
        return out

    def close(self, fb: FrameBuilder, ts: float) -> list[tuple[float, bytes]]:
        """FIN/ACK both ways, last ACK."""
        return [(ts, self.segment(fb, "caller", TCP_FIN | TCP_ACK)),
                (ts + 0.0002, self.segment(fb, "callee", TCP_FIN | TCP_ACK)),
                (ts + 0.0004, self.segment(fb, "caller", TCP_ACK))]


def _sip_frames(plan: CallPlan, sips: list[_TimedSip], fb: FrameBuilder,
                rng: np.random.Generator) -> list[tuple[float, bytes]]:
    """SIP messages as UDP datagrams, or over one TCP connection (segmented, ACKed, closed)."""
    ends = {"caller": (plan.caller_ip, plan.sip_port), "callee": (plan.callee_ip, plan.sip_port)}
    if plan.transport == "udp":
        frames = []
        for s in sips:
            (src, sport), (dst, dport) = ends[s.msg.sender], ends[peer(s.msg.sender)]
            frames.append((s.ts, fb.udp(LinkPath(src, dst, plan.vlan), sport, dport, s.msg.data)))
        return frames
    ephemeral = (plan.caller_ip, int(rng.integers(32768, 61000)))
    conn = _TcpConnection(ephemeral, ends["callee"], plan.vlan,
                          {"caller": int(rng.integers(0, 1 << 32)), "callee": int(rng.integers(0, 1 << 32))})
    frames = conn.handshake(fb, sips[0].ts - 0.003)
    for s in sips:
        frames += conn.send(fb, s.ts, s.msg.sender, s.msg.data)
    if plan.ends_with != "none":
        frames += conn.close(fb, sips[-1].ts + 0.05)
    return frames


# --------------------------------------------------------------------------------------------
# Capture
# --------------------------------------------------------------------------------------------

def _build_call(plan: CallPlan, index: int, seed: int,
                fb: FrameBuilder) -> tuple[CallTruth, list[tuple[float, bytes]], int]:
    """Frames and ground truth of one call (signalling and both legs)."""
    rng = np.random.default_rng([seed, index])
    transport: Literal["UDP", "TCP"] = "TCP" if plan.transport == "tcp" else "UDP"
    dialog = Dialog.create(plan.call_id, (plan.caller_num, plan.caller_ip, plan.sip_port),
                           (plan.callee_num, plan.callee_ip, plan.sip_port), transport, rng)
    sips = _signalling(plan, dialog)
    frames = _sip_frames(plan, sips, fb, rng)
    answer = _answer_ts(plan)
    legs: list[LegTruth] = []
    dtmf: list[DtmfTruth] = []
    first_arrival: list[float] = []
    rtp_packets = 0
    sides: tuple[Side, Side] = ("caller", "callee")
    for channel, side in enumerate(sides):
        leg_rng = np.random.default_rng([seed, index, channel])
        sim = _LegSimulator(plan, side, answer, leg_rng)
        sim.run()
        arrivals, lost = _impair(sim.leg, sim.sends, leg_rng)
        legs.append(_leg_truth(channel, sim, arrivals, lost))
        frames += _rtp_frames(fb, plan.vlan, sim.streams, arrivals)
        dtmf += sim.dtmf
        first_arrival += [min(a.ts for a in arrivals)] if arrivals else []
        rtp_packets += len(arrivals)
    truth = CallTruth(plan.call_id, plan.caller_num, plan.callee_num, recorded=bool(first_arrival),
                      legs=(legs[0], legs[1]), dtmf=dtmf,
                      sip=collections.Counter(s.msg.label for s in sips))
    if first_arrival:
        truth.first_media_ts = min(first_arrival)
        truth.media_end_ts = max(p.at for leg in legs for p in leg.audio) + PTIME_S
        used = [s for leg in legs for s in leg.streams if s.sent]
        truth.codecs = list(dict.fromkeys(codec_spec(s.codec).name for s in used))
        truth.sample_rate = max(codec_spec(s.codec).sample_rate for s in used)
    return truth, frames, rtp_packets


def _rtp_frames(fb: FrameBuilder, vlan: int | None, streams: list[_StreamCfg],
                arrivals: list[_Arrival]) -> list[tuple[float, bytes]]:
    frames = []
    for a in arrivals:
        cfg = streams[a.send.stream]
        rtp = rtp_header(a.send.payload_type, a.send.seq, a.send.timestamp, cfg.ssrc, a.send.marker)
        frames.append((a.ts, fb.udp(LinkPath(cfg.src[0], cfg.dst[0], vlan), cfg.src[1], cfg.dst[1],
                                    rtp + a.send.payload)))
    return frames


def write_capture(path: str, calls: list[CallPlan], seed: int = 0) -> GroundTruth:
    """Write a pcap (Ethernet, µs timestamps) with all ``calls`` interleaved in time order."""
    if len({c.call_id for c in calls}) != len(calls):
        raise ValueError("call_id values must be unique")
    fb = FrameBuilder()
    truth = GroundTruth(str(path), {})
    frames: list[tuple[float, bytes]] = []
    for index, plan in enumerate(calls):
        call_truth, call_frames, rtp = _build_call(plan, index, seed, fb)
        truth.calls[plan.call_id] = call_truth
        truth.rtp_packets += rtp
        frames += call_frames
    frames.sort(key=lambda f: f[0])
    with open(path, "wb") as out:
        write_pcap_header(out)
        for ts, frame in frames:
            out.write(pcap_record(ts, frame))
    truth.frames = len(frames)
    return truth
