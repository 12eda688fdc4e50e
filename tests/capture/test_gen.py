"""The capture generator is right on its own: tshark, scapy and FFmpeg agree with its ground truth.

These tests do not involve the recorder engine. They prove that the pcaps written by
tests/gen/callgen.py are valid (checksums, SIP, SDP-announced RTP), that tshark sees the calls,
streams and packet counts the ground truth states, that the payloads carry each leg's tone, and
that the timeline checks used by test_timeline.py accept a correct recording and reject wrong ones.
"""

from __future__ import annotations

import collections
import dataclasses
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

import av
import numpy as np
import pytest
from scapy.layers.inet import UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q
from scapy.utils import rdpcap

from tests.gen import scenarios, tshark
from tests.gen.audiocheck import metadata_problems, timeline_problems, tone_track
from tests.gen.callgen import CallTruth, GroundTruth, LegTruth, PlacedPayload, write_bulk_g711, write_capture
from tests.gen.g711 import encode_alaw, encode_ulaw
from tests.gen.media import PTIME_S, TONE_AMPLITUDE
from tests.gen.oracle import decode_payloads, reference_metadata, render_reference

SEED = 7
TSHARK_CODEC = {"pcmu": "g711U", "pcma": "g711A", "g722": "g722"}


@pytest.fixture(scope="module")
def captures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, GroundTruth]:
    """Every timeline scenario written once."""
    root = tmp_path_factory.mktemp("gen")
    return {name: write_capture(str(root / f"{name}.pcap"), build(), seed=SEED)
            for name, build in scenarios.SCENARIOS.items()}


def _call(truth: GroundTruth) -> CallTruth:
    return next(iter(truth.calls.values()))


def _rtp_fields(path: str) -> list[list[str]]:
    """Per RTP/SIP frame: frame number, Call-ID, SSRC, setup frame, timestamp, event id, end flag."""
    text = tshark.run(["-r", path, "-o", "rtp.heuristic_rtp:FALSE", "-Y", "rtp or sip", "-T", "fields",
                       "-e", "frame.number", "-e", "sip.Call-ID", "-e", "rtp.ssrc", "-e", "rtp.setup-frame",
                       "-e", "rtp.timestamp", "-e", "rtpevent.event_id", "-e", "rtpevent.end_of_event",
                       "-e", "rtp.seq"])
    return [line.split("\t") for line in text.splitlines()]


# ---------------------------------------------------------------------------------------------
# Codecs
# ---------------------------------------------------------------------------------------------

def _ffmpeg_decode(name: str, data: bytes) -> np.ndarray:
    ctx = cast(av.AudioCodecContext, av.CodecContext.create(name, "r"))
    ctx.sample_rate = 8000
    ctx.layout = "mono"
    return np.concatenate([f.to_ndarray().ravel() for f in ctx.decode(av.Packet(data))]).astype(np.int64)


def _ffmpeg_encode(name: str, pcm: np.ndarray) -> bytes:
    ctx = cast(av.AudioCodecContext, av.CodecContext.create(name, "w"))
    ctx.sample_rate, ctx.layout, ctx.format = 8000, "mono", "s16"
    ctx.open()
    frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = 8000
    return b"".join(bytes(p) for p in [*ctx.encode(frame), *ctx.encode(None)])


G711 = [(encode_ulaw, "pcm_mulaw"), (encode_alaw, "pcm_alaw")]


@pytest.mark.parametrize(("encoder", "name"), G711)
def test_g711_encoder_round_trips_through_ffmpeg(encoder, name: str) -> None:
    x = np.arange(-32768, 32768, dtype=np.int16)
    err = np.abs(_ffmpeg_decode(name, encoder(x).tobytes()) - x)
    magnitude = np.abs(x.astype(np.int64))
    in_range = magnitude < 32000
    # G.711 has 16 steps per segment: the error stays within 1/16 of the magnitude (+ the finest step).
    assert np.all(err[in_range] <= magnitude[in_range] / 16 + 16)


@pytest.mark.parametrize(("encoder", "name"), G711)
def test_g711_encoder_is_as_good_as_ffmpeg_encoder(encoder, name: str) -> None:
    x = np.arange(-32768, 32768, dtype=np.int16)
    ours = encoder(x)
    ref = np.frombuffer(_ffmpeg_encode(name, x), np.uint8)
    # Both implement G.711; they may only pick the neighbouring level right at decision thresholds.
    assert (ref != ours).mean() < 0.02
    our_err = np.abs(_ffmpeg_decode(name, ours.tobytes()) - x).mean()
    ref_err = np.abs(_ffmpeg_decode(name, ref.tobytes()) - x).mean()
    assert our_err <= ref_err * 1.01


# ---------------------------------------------------------------------------------------------
# tshark agrees with the ground truth
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(scenarios.SCENARIOS))
def test_tshark_sees_the_calls_streams_and_counts(captures: dict[str, GroundTruth], name: str) -> None:
    truth = captures[name]
    seen = tshark.view(truth.path)
    assert seen.expert == [], seen.text              # no malformed packet, no bad checksum
    assert seen.sip == truth.sip
    reordered = {s.ssrc for c in truth.calls.values() for leg in c.legs if leg.out_of_order for s in leg.streams}
    want = {(s.src, s.dst, s.ssrc): s for s in truth.streams}
    got = {(s.src, s.dst, s.ssrc): s for s in seen.streams}
    assert set(got) == set(want)
    for key, stream in want.items():
        assert got[key].packets == stream.packets_on_wire, key
        # tshark's "lost" = (sequence number of the last packet to ARRIVE - first + 1) - packets, so
        # with reordering near the end of a stream it is off by up to the reordering depth (3).
        slack = 3 if stream.ssrc in reordered else 0
        assert abs(got[key].lost - (stream.lost - stream.duplicates)) <= slack, key
        assert TSHARK_CODEC[stream.codec] in got[key].payload


@pytest.mark.parametrize("name", ["clean", "concurrent", "port_reuse", "early_media", "sip_tcp", "ipv6"])
def test_each_stream_is_set_up_by_its_own_call(captures: dict[str, GroundTruth], name: str) -> None:
    truth = captures[name]
    rows = _rtp_fields(truth.path)
    call_of_frame = {r[0]: r[1] for r in rows if r[1]}
    setup_calls: dict[int, set[str]] = collections.defaultdict(set)
    for r in rows:
        if r[2]:
            setup_calls[int(r[2], 16)].add(call_of_frame[r[3]])
    for call in truth.calls.values():
        for leg in call.legs:
            for stream in leg.streams:
                assert setup_calls[stream.ssrc] == {call.call_id}


def test_dtmf_events_on_the_wire(captures: dict[str, GroundTruth]) -> None:
    truth = captures["dtmf"]
    events: dict[str, list[list[str]]] = collections.defaultdict(list)
    for row in _rtp_fields(truth.path):
        if row[5]:
            events[row[4]].append(row)        # RFC 4733 §2.5.1: one timestamp per event
    digits = ["0123456789*#"[int(rows[0][5])] for rows in events.values()]
    assert "".join(digits) == "".join(d.digit for d in _call(truth).dtmf) == "15#"
    for rows, press in zip(events.values(), scenarios.dtmf()[0].dtmf, strict=True):
        assert {r[5] for r in rows} == {rows[0][5]}
        assert [r[6] for r in rows][-3:] == ["1", "1", "1"]          # the end packet, three times
        assert len(rows) == press.duration_ms // 20 + 2


def test_sequence_and_timestamp_wrap_in_the_clean_call(captures: dict[str, GroundTruth]) -> None:
    call = _call(captures["clean"])
    assert all(s.seq_wrapped for leg in call.legs for s in leg.streams)
    rows = [r for r in _rtp_fields(captures["clean"].path) if r[7]]
    seqs = [int(r[7]) for r in rows]
    assert 65535 in seqs and 0 in seqs
    timestamps = [int(r[4]) for r in rows]
    assert min(timestamps) < 8000 and max(timestamps) > (1 << 32) - 8000


def test_hold_leaves_no_rtp_and_jumps_the_timestamp(captures: dict[str, GroundTruth]) -> None:
    truth = captures["hold"]
    call = _call(truth)
    for leg in call.legs:
        gaps = [(b1, a2) for (_, b1), (a2, _) in zip(leg.intervals, leg.intervals[1:], strict=False)]
        assert len(gaps) == 1 and gaps[0][1] - gaps[0][0] == pytest.approx(1.5, abs=0.021)
    rows = _rtp_fields(truth.path)
    for stream in truth.streams:
        ts = [int(r[4]) for r in rows if r[2] and int(r[2], 16) == stream.ssrc]
        steps = [(b - a) % (1 << 32) for a, b in zip(ts, ts[1:], strict=False)]
        jumps = [s for s in steps if s != 160]
        wall_clock_step = (round(1.5 / PTIME_S) + 1) * 160     # what a phone without the jump would send
        assert len(jumps) == 1 and jumps[0] != wall_clock_step


def test_loss_plan_in_the_ground_truth(captures: dict[str, GroundTruth]) -> None:
    caller, callee = _call(captures["loss"]).legs
    burst = [g for g in caller.loss_gaps if g[1] > 0.1]
    assert len(burst) == 1 and burst[0][1] == pytest.approx(0.3)
    assert caller.lost >= scenarios.BURST_PACKETS + 5 and 5 <= callee.lost <= 25
    assert caller.received + caller.lost == caller.sent


def test_talk_spurts_are_silence_not_loss(captures: dict[str, GroundTruth]) -> None:
    call = _call(captures["talk_spurts"])
    caller = call.legs[0]
    assert caller.lost == 0 and len(caller.intervals) == 3
    starts = [round(a - caller.intervals[0][0], 3) for a, _ in caller.intervals]
    assert starts == [0.0, 1.6, 3.2]


def test_impairments_happened(captures: dict[str, GroundTruth]) -> None:
    assert all(leg.out_of_order >= 5 for leg in _call(captures["reorder"]).legs)
    assert all(leg.duplicates >= 3 for leg in _call(captures["duplicates"]).legs)
    assert all(leg.out_of_order >= 3 for leg in _call(captures["jitter"]).legs)
    assert all(leg.lost == 0 for name in ("reorder", "duplicates", "jitter") for leg in _call(captures[name]).legs)


def test_sample_zero_and_rates(captures: dict[str, GroundTruth]) -> None:
    early = _call(captures["early_media"])
    assert early.first_media_ts == pytest.approx(scenarios.T0 + 0.04)     # callee early media
    assert early.duration_s == pytest.approx(4.5, abs=0.021)
    assert _call(captures["reinvite_g722"]).sample_rate == 16000
    assert _call(captures["reinvite_pcma"]).codecs == ["PCMU", "PCMA"]
    assert not _call(captures["cancelled"]).recorded


# ---------------------------------------------------------------------------------------------
# Independent parse (scapy) and decode (FFmpeg) of the payloads
# ---------------------------------------------------------------------------------------------

def _dominant_hz(pcm: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(pcm * np.hanning(len(pcm))))
    return float(np.argmax(spectrum) * rate / len(pcm))


@pytest.mark.parametrize("name", ["clean", "vlan", "ipv6", "reinvite_g722", "sip_tcp"])
def test_scapy_parses_every_frame_and_payloads_carry_the_leg_tone(captures: dict[str, GroundTruth],
                                                                  name: str) -> None:
    truth = captures[name]
    packets = rdpcap(truth.path)
    assert len(packets) == truth.frames
    times = [float(p.time) for p in packets]
    assert times == sorted(times)
    by_ssrc: dict[int, list[tuple[int, bytes]]] = collections.defaultdict(list)
    for p in packets:
        if name == "vlan":
            assert p.haslayer(Dot1Q) and p[Dot1Q].vlan == 120
        if name == "ipv6":
            assert p.haslayer(IPv6)
        if p.haslayer(UDP) and p[UDP].dport != 5060 and p[UDP].sport != 5060:
            raw = bytes(p[UDP].payload)
            seq, ssrc = struct.unpack_from("!H4xI", raw, 2)
            by_ssrc[ssrc].append((seq, raw[12:]))
    call = _call(truth)
    for leg in call.legs:
        for stream in leg.streams:
            received = by_ssrc[stream.ssrc]
            assert len(received) == stream.packets_on_wire
            ordered = [payload for _, payload in sorted(received, key=lambda r: (r[0] - stream.first_seq) % 65536)]
            pcm = decode_payloads(stream.codec, ordered).astype(np.float64)
            rate = 16000 if stream.codec == "g722" else 8000
            assert _dominant_hz(pcm, rate) == pytest.approx(leg.tone_hz, abs=rate / len(pcm) + 1)
            assert np.percentile(np.abs(pcm), 99) == pytest.approx(TONE_AMPLITUDE, rel=0.1)


# ---------------------------------------------------------------------------------------------
# The timeline checks accept a correct recording and reject wrong ones
# ---------------------------------------------------------------------------------------------

def _render_moved(truth: CallTruth, move: Callable[[LegTruth, int, PlacedPayload], float]) -> np.ndarray:
    """The reference recording with every packet placed at ``move(leg, index, packet)`` instead."""
    caller, callee = (LegTruth(leg.channel, leg.tone_hz,
                               audio=[PlacedPayload(move(leg, i, p), p.codec, p.payload)
                                      for i, p in enumerate(leg.audio)]) for leg in truth.legs)
    return render_reference(dataclasses.replace(truth, legs=(caller, callee)))


def _compressed(truth: CallTruth) -> np.ndarray:
    """What an engine that ignores RTP timestamps writes: each leg's packets back to back."""
    return _render_moved(truth, lambda leg, i, p: leg.audio[0].at + i * PTIME_S)


def _unaligned(truth: CallTruth) -> np.ndarray:
    """What an engine that starts each channel at its own first packet writes."""
    sample0 = truth.first_media_ts or 0.0
    return _render_moved(truth, lambda leg, i, p: p.at - leg.audio[0].at + sample0)


@pytest.mark.parametrize("name", [n for n in scenarios.SCENARIOS if n != "cancelled"])
def test_reference_recording_passes_the_timeline_checks(captures: dict[str, GroundTruth], name: str) -> None:
    for call in captures[name].calls.values():
        audio = render_reference(call)
        assert timeline_problems(audio, call.sample_rate, call) == []
        assert metadata_problems(reference_metadata(call), call, len(audio)) == []


@pytest.mark.parametrize("name", ["clean", "loss", "talk_spurts", "hold", "early_media", "reinvite_g722"])
def test_broken_recordings_fail_the_timeline_checks(captures: dict[str, GroundTruth], name: str) -> None:
    call = _call(captures[name])
    audio = render_reference(call)
    rate = call.sample_rate
    assert timeline_problems(audio[:, ::-1], rate, call), "swapped channels"
    late = np.zeros_like(audio)
    late[round(0.05 * rate):] = audio[:-round(0.05 * rate)]
    assert timeline_problems(late, rate, call), "both channels 50 ms late"
    one_late = audio.copy()
    one_late[round(0.06 * rate):, 1] = audio[:-round(0.06 * rate), 1]
    one_late[:round(0.06 * rate), 1] = 0
    assert timeline_problems(one_late, rate, call), "callee 60 ms late"
    mixed = audio.copy()
    mixed[:, 0] = audio[:, 0] // 2 + audio[:, 1] // 2
    assert timeline_problems(mixed, rate, call), "callee mixed into channel 0"
    meta = reference_metadata(call)
    assert metadata_problems({**meta, "started_at": meta["started_at"][:-5] + "999Z"}, call, len(audio))
    assert metadata_problems({**meta, "duration_s": meta["duration_s"] + 0.2}, call, len(audio))


@pytest.mark.parametrize("name", ["talk_spurts", "hold", "loss"])
def test_ignoring_timestamps_fails_the_timeline_checks(captures: dict[str, GroundTruth], name: str) -> None:
    call = _call(captures[name])
    assert timeline_problems(_compressed(call), call.sample_rate, call)


@pytest.mark.parametrize("name", ["early_media", "talk_spurts"])
def test_unaligned_legs_fail_the_timeline_checks(captures: dict[str, GroundTruth], name: str) -> None:
    call = _call(captures[name])
    assert timeline_problems(_unaligned(call), call.sample_rate, call)


def test_tone_track_measures_amplitude() -> None:
    rate = 8000
    t = np.arange(rate) / rate
    track = tone_track(3000 * np.sin(2 * np.pi * 440 * t), rate, 440.0, 1.0)
    assert np.median(track.amplitude[:90]) == pytest.approx(3000, rel=0.02)
    other = tone_track(3000 * np.sin(2 * np.pi * 1000 * t), rate, 440.0, 1.0).amplitude
    assert np.max(other[:-3]) < 30          # the last windows run past the end of the signal


# ---------------------------------------------------------------------------------------------
# Bulk capture for the benchmark
# ---------------------------------------------------------------------------------------------

def test_bulk_capture_is_valid_for_tshark(tmp_path: Path) -> None:
    path = str(tmp_path / "bulk.pcap")
    truth = write_bulk_g711(path, n_calls=10, seconds=4.0, concurrency=5, seed=3)
    seen = tshark.view(path)
    assert seen.expert == [], seen.text
    assert seen.sip == {"INVITE": 10, "100": 10, "180": 10, "200": 20, "ACK": 10, "BYE": 10}
    assert sorted(s.ssrc for s in seen.streams) == sorted(truth.ssrcs)
    assert all(s.packets == truth.packets_per_stream and s.lost == 0 for s in seen.streams)
    assert {s.payload for s in seen.streams} == {"g711U", "g711A"}
    # Ports are reused by the second round of calls (new Call-IDs, new SSRCs).
    assert len({(s.src, s.dst) for s in seen.streams}) == 10
    assert truth.frames == truth.rtp_packets + truth.sip_messages == 2 * 10 * truth.packets_per_stream + 70
    assert _walk_records(path) == truth.frames


def _walk_records(path: str) -> int:
    """Walk the pcap records: lengths consistent, file fully consumed, time never goes back."""
    data = Path(path).read_bytes()
    magic, _, _, _, _, snaplen, linktype = struct.unpack_from("<IHHiIII", data, 0)
    assert (magic, linktype) == (0xA1B2C3D4, 1)
    off, last, count = 24, 0, 0
    while off < len(data):
        sec, usec, incl, orig = struct.unpack_from("<IIII", data, off)
        assert incl == orig <= snaplen and usec < 1_000_000
        assert sec * 1_000_000 + usec >= last
        last = sec * 1_000_000 + usec
        off += 16 + incl
        count += 1
    assert off == len(data)
    return count


def test_bulk_capture_decodes_to_the_tones(tmp_path: Path) -> None:
    path = str(tmp_path / "bulk.pcap")
    write_bulk_g711(path, n_calls=2, seconds=1.0, concurrency=2, seed=1)
    by_port: dict[int, list[bytes]] = collections.defaultdict(list)
    codec_of: dict[int, str] = {}
    for p in rdpcap(path):
        if p[UDP].dport != 5060:
            raw = bytes(p[UDP].payload)
            by_port[p[UDP].sport].append(raw[12:])
            codec_of[p[UDP].sport] = "pcmu" if raw[1] & 0x7F == 0 else "pcma"
    for sport, payloads in by_port.items():
        pcm = decode_payloads(codec_of[sport], payloads).astype(np.float64)
        want = 440.0 if sport < 30000 else 1000.0
        assert _dominant_hz(pcm, 8000) == pytest.approx(want, abs=8000 / len(pcm) + 1)


def test_bulk_generation_is_fast(tmp_path: Path) -> None:
    started = time.perf_counter()
    truth = write_bulk_g711(str(tmp_path / "bulk.pcap"), n_calls=40, seconds=30.0, concurrency=40)
    elapsed = time.perf_counter() - started
    assert truth.rtp_packets == 40 * 2 * 1499
    # ~1.2 M packets take ~1.5 s on one core; this is 1/10 of that with 4x slack.
    assert elapsed < 2.0
