"""End-to-end timeline tests: generated captures → `recorderd replay` → WAV + JSON vs. ground truth.

Every scenario of tests/gen/scenarios.py is written by the generator (whose own correctness is
proven in test_gen.py), replayed in-process through ``recorderd.cli.main`` and every resulting
recording is checked against the recording contract (docs: DESIGN.md "Recording contract"):

* channel 0 carries the caller's tone, channel 1 the callee's, each within 40 ms of where the
  ground truth places it, silence where nothing was received, never the other leg's tone;
* sample 0 = the first media packet (``started_at``), ``duration_s`` within 0.1 s;
* loss, duplicates, DTMF and "not recorded" reasons as the plan says.
"""

from __future__ import annotations

import json
import wave
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.gen import scenarios
from tests.gen.audiocheck import TOLERANCE_S, metadata_problems, timeline_problems
from tests.gen.callgen import CallTruth, GroundTruth, LegTruth, write_capture

SEED = 11
COUNT_TOLERANCE_S = TOLERANCE_S


@dataclass(slots=True)
class Recording:
    """One recording written by the engine."""

    meta: dict
    audio: np.ndarray          # int16 (frames, channels)
    sample_rate: int
    channels: int
    sample_width: int


@dataclass(slots=True)
class Replay:
    """A scenario's capture, its ground truth and what the engine wrote for it."""

    truth: GroundTruth
    exit_code: int
    recordings: dict[str, list[Recording]] = field(default_factory=dict)
    not_recorded: list[dict] = field(default_factory=list)

    def recording(self, call_id: str) -> Recording:
        """The single recording of ``call_id`` (fails if there is none or several)."""
        found = self.recordings.get(call_id, [])
        assert len(found) == 1, f"{call_id}: expected one recording, found {len(found)}"
        return found[0]


def _read_wav(path: Path) -> tuple[np.ndarray, int, int, int]:
    with wave.open(str(path), "rb") as w:
        channels, width, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
        data = w.readframes(w.getnframes())
    dtype = np.int16 if width == 2 else np.uint8
    return np.frombuffer(data, dtype=dtype).reshape(-1, channels), rate, channels, width


def load_output(out_dir: Path) -> tuple[dict[str, list[Recording]], list[dict]]:
    """Recordings by call_id (from every <id>.json with its <id>.wav) and not-recorded.json."""
    recordings: dict[str, list[Recording]] = {}
    for meta_path in sorted(out_dir.glob("*.json")):
        if meta_path.name == "not-recorded.json":
            continue
        meta = json.loads(meta_path.read_text())
        audio, rate, channels, width = _read_wav(meta_path.with_suffix(".wav"))
        recordings.setdefault(meta.get("call_id"), []).append(Recording(meta, audio, rate, channels, width))
    not_recorded_path = out_dir / "not-recorded.json"
    not_recorded = json.loads(not_recorded_path.read_text()) if not_recorded_path.exists() else []
    return recordings, not_recorded


@pytest.fixture(scope="module")
def replay(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Replay]:
    """Generate + replay a scenario once per module; returns a lookup by scenario name."""
    cache: dict[str, Replay] = {}

    def get(name: str) -> Replay:
        if name not in cache:
            from recorderd.cli import main  # the engine under test

            root = tmp_path_factory.mktemp(name)
            truth = write_capture(str(root / f"{name}.pcap"), scenarios.SCENARIOS[name](), seed=SEED)
            out = root / "out"
            exit_code = main(["replay", truth.path, "--out", str(out)])
            recordings, not_recorded = load_output(out)
            cache[name] = Replay(truth, exit_code, recordings, not_recorded)
        return cache[name]

    return get


def _recording_problems(call: CallTruth, rec: Recording) -> list[str]:
    problems = []
    if (rec.channels, rec.sample_width, rec.sample_rate) != (2, 2, call.sample_rate):
        problems.append(f"WAV is {rec.channels} ch, {8 * rec.sample_width} bit, {rec.sample_rate} Hz; "
                        f"want 2 ch, 16 bit, {call.sample_rate} Hz")
        return problems
    problems += metadata_problems(rec.meta, call, len(rec.audio))
    problems += timeline_problems(rec.audio, rec.sample_rate, call)
    return problems


RECORDED = [name for name in scenarios.SCENARIOS if name != "cancelled"]


@pytest.mark.parametrize("name", RECORDED)
def test_each_call_is_recorded_on_its_timeline(replay: Callable[[str], Replay], name: str) -> None:
    """Right channel, right time (±40 ms), silence elsewhere, sample 0, duration, format."""
    result = replay(name)
    assert result.exit_code == 0
    problems = []
    for call in result.truth.calls.values():
        problems += [f"{call.call_id}: {p}" for p in _recording_problems(call, result.recording(call.call_id))]
    assert problems == []


def _ssrc(value: int | str) -> int:
    """SSRC as an int whether the JSON holds a number or a "0x..." string."""
    return int(value, 0) if isinstance(value, str) else int(value)


def _leg_counts(rec: Recording, channel: int) -> dict:
    legs = [leg for leg in rec.meta["completeness"]["legs"] if leg["channel"] == channel]
    assert len(legs) == 1, f"completeness must have exactly one entry for channel {channel}"
    return legs[0]


def _assert_counts(rec: Recording, leg: LegTruth) -> None:
    got = _leg_counts(rec, leg.channel)
    want = {"expected": leg.sent, "received": leg.received, "lost": leg.lost, "duplicates": leg.duplicates}
    assert {k: got[k] for k in want} == want, f"channel {leg.channel}"


def test_loss_is_counted_exactly_and_the_burst_is_a_gap(replay: Callable[[str], Replay]) -> None:
    result = replay("loss")
    call = next(iter(result.truth.calls.values()))
    rec = result.recording(call.call_id)
    for leg in call.legs:
        _assert_counts(rec, leg)
    start, duration = next(g for g in call.legs[0].loss_gaps if g[1] > 0.1)
    gaps = _leg_counts(rec, 0)["gaps"]
    assert any(abs(g["offset_s"] - call.offset(start)) <= TOLERANCE_S
               and abs(g["duration_s"] - duration) <= TOLERANCE_S for g in gaps), gaps
    streams = {_ssrc(s["ssrc"]): s for s in rec.meta["streams"]}
    for leg in call.legs:
        for stream in leg.streams:
            assert streams[stream.ssrc]["lost"] == stream.lost


def _single_call(replay: Callable[[str], Replay], name: str) -> tuple[Any, dict[str, Any]]:
    """A one-call scenario replayed: its ground truth and its recording's metadata."""
    result = replay(name)
    call = next(iter(result.truth.calls.values()))
    return call, result.recording(call.call_id)


def test_duplicates_are_counted_and_not_lost(replay: Callable[[str], Replay]) -> None:
    call, rec = _single_call(replay, "duplicates")
    for leg in call.legs:
        assert leg.duplicates > 0
        _assert_counts(rec, leg)


@pytest.mark.parametrize("name", ["reorder", "jitter"])
def test_reordering_and_jitter_lose_nothing(replay: Callable[[str], Replay], name: str) -> None:
    """Packets up to 60 ms late are put back in order, not dropped as lost."""
    call, rec = _single_call(replay, name)
    for leg in call.legs:
        assert leg.out_of_order > 0
        _assert_counts(rec, leg)


@pytest.mark.parametrize("name", ["talk_spurts", "hold"])
def test_silence_suppression_and_hold_are_not_loss(replay: Callable[[str], Replay], name: str) -> None:
    call, rec = _single_call(replay, name)
    for leg in call.legs:
        _assert_counts(rec, leg)
        assert _leg_counts(rec, leg.channel)["gaps"] == []


def test_dtmf_digits_channel_and_offsets(replay: Callable[[str], Replay]) -> None:
    result = replay("dtmf")
    call = next(iter(result.truth.calls.values()))
    got = result.recording(call.call_id).meta["dtmf"]
    assert [d["digit"] for d in got] == [d.digit for d in call.dtmf] == ["1", "5", "#"]
    for seen, want in zip(got, call.dtmf, strict=True):
        assert seen["channel"] == want.channel == 0
        assert abs(seen["offset_s"] - call.offset(want.at)) <= TOLERANCE_S
        assert abs(seen["duration_ms"] - want.duration_ms) <= TOLERANCE_S * 1000


def test_reinvite_codecs_are_listed(replay: Callable[[str], Replay]) -> None:
    for name, codecs in (("reinvite_pcma", {"PCMU", "PCMA"}), ("reinvite_g722", {"PCMU", "G722"})):
        result = replay(name)
        call = next(iter(result.truth.calls.values()))
        assert set(call.codecs) == codecs
        rec = result.recording(call.call_id)
        assert metadata_problems(rec.meta, call, len(rec.audio)) == []
        assert len(rec.meta["streams"]) == 4      # two SSRCs per leg: before and after the move


def test_port_reuse_makes_two_separate_recordings(replay: Callable[[str], Replay]) -> None:
    result = replay("port_reuse")
    first, second = (result.recording(c) for c in result.truth.calls)
    assert first.meta["started_at"] < second.meta["started_at"]
    assert {_ssrc(s["ssrc"]) for s in first.meta["streams"]}.isdisjoint(
        {_ssrc(s["ssrc"]) for s in second.meta["streams"]})


def test_cancelled_call_is_listed_as_not_recorded(replay: Callable[[str], Replay]) -> None:
    result = replay("cancelled")
    call_id = next(iter(result.truth.calls))
    assert result.exit_code == 0
    assert call_id not in result.recordings
    reasons = [row.get("reason") for row in result.not_recorded if row.get("call_id") == call_id]
    assert len(reasons) == 1 and reasons[0]
