"""Issue 9, must show 3: talk times and interruptions are exact on generated overlapping audio;
plus the VAD's clean-ups, duration bands, the risk score and risk-driven QA sampling."""

from __future__ import annotations

import random

import numpy as np
import pytest

from analysis.metrics import band_labels, call_metrics, duration_band
from analysis.risk import RiskWeights, risk_score, riskiest_per_agent, select_for_review
from analysis.vad import VadSettings, speech_frames

RATE = 8000


def speech_like(seconds: float, seed: int) -> np.ndarray:
    """Noise shaped by a syllable-rate envelope (4 Hz), never quiet for longer than a frame:
    voice-like level changes without gaps the VAD would have to bridge."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * RATE))
    t = np.arange(n) / RATE
    envelope = 0.55 + 0.45 * np.abs(np.sin(2 * np.pi * 4.0 * t))
    return np.clip(rng.normal(0, 0.2, n) * envelope * 32767, -32768, 32767).astype(np.int16)


def place(spurts: list[tuple[float, float]], seconds: float, seed: int, noise_dbfs: float | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed + 1000)
    track = np.zeros(int(round(seconds * RATE)), dtype=np.int16)
    if noise_dbfs is not None:   # line noise well under the threshold
        track[:] = np.round(rng.normal(0, 10 ** (noise_dbfs / 20) * 32768, len(track))).astype(np.int16)
    for k, (start, end) in enumerate(spurts):
        a, b = int(round(start * RATE)), int(round(end * RATE))
        track[a:b] = speech_like(end - start, seed + k)
    return track


# A 60 s call on a 20 ms grid (the spurts below, in seconds):
# * customer starts at 7.0 while the agent talks (since 0.0), 1.0 s of overlap: an interruption;
# * customer starts at 19.76 while the agent talks, 0.24 s of overlap (< 0.3 s): back-channel;
# * agent starts at 24.4 after the customer stopped at 24.0: a clean turn;
# * customer starts at 25.0 inside the agent's 24.4-30.0 spurt, 2.0 s of overlap: an interruption;
# * both start at 40.0 in the same frame: nobody interrupts (2.0 s of overlap all the same).
AGENT = [(0.0, 8.0), (12.0, 20.0), (24.4, 30.0), (40.0, 44.0), (50.0, 55.0)]
CUSTOMER = [(7.0, 12.0), (19.76, 24.0), (25.0, 27.0), (30.0, 38.0), (40.0, 42.0)]


def expected() -> dict[str, float]:
    def covered(spurts: list[tuple[float, float]]) -> np.ndarray:
        grid = np.zeros(3000, dtype=bool)
        for start, end in spurts:
            grid[int(round(start * 50)):int(round(end * 50))] = True
        return grid
    a, c = covered(AGENT), covered(CUSTOMER)
    return {"talk_agent_s": a.sum() * 0.02, "talk_customer_s": c.sum() * 0.02,
            "overlap_s": (a & c).sum() * 0.02, "silence_ratio": (~a & ~c).sum() / 3000}


@pytest.mark.parametrize("noise", [None, -70.0], ids=["digital-silence", "line-noise"])
def test_talk_times_overlap_and_interruptions_are_exact(noise: float | None) -> None:
    settings = VadSettings()
    agent = speech_frames(place(AGENT, 60.0, 1, noise), RATE, settings)
    customer = speech_frames(place(CUSTOMER, 60.0, 2, noise), RATE, settings)
    metrics = call_metrics(agent, customer, settings.frame_ms, min_overlap_ms=300)
    want = expected()
    assert metrics.talk_agent_s == pytest.approx(want["talk_agent_s"], abs=1e-9) == 30.6
    assert metrics.talk_customer_s == pytest.approx(want["talk_customer_s"], abs=1e-9) == 21.24
    assert metrics.overlap_s == pytest.approx(want["overlap_s"], abs=1e-9) == 1.0 + 0.24 + 2.0 + 2.0
    assert metrics.silence_ratio == pytest.approx(want["silence_ratio"], abs=1e-12)
    assert (metrics.interruptions_customer, metrics.interruptions_agent) == (2, 0)
    assert metrics.interruption_rate == pytest.approx(2.0)     # 2 interruptions in 1 minute
    assert metrics.duration_s == 60.0 and metrics.duration_band == "30s-5m"


def test_the_agent_cutting_in_counts_for_the_agent() -> None:
    agent = speech_frames(place([(3.0, 6.0)], 10.0, 5), RATE)
    customer = speech_frames(place([(0.0, 4.0)], 10.0, 6), RATE)
    metrics = call_metrics(agent, customer, 20, min_overlap_ms=300)
    assert (metrics.interruptions_agent, metrics.interruptions_customer) == (1, 0)
    assert metrics.overlap_s == pytest.approx(1.0)
    assert metrics.interruption_rate == pytest.approx(6.0)     # 1 in 10 s


def test_vad_bridges_pauses_and_drops_clicks() -> None:
    # two words 0.1 s apart are one spurt; a 40 ms click is not speech
    track = place([(1.0, 2.0), (2.1, 3.0), (5.0, 5.04)], 6.0, 9)
    frames = speech_frames(track, RATE, VadSettings(bridge_ms=200, min_speech_ms=60))
    spans = np.flatnonzero(np.diff(np.concatenate(([0], frames.astype(int), [0]))))
    assert (spans * 0.02).tolist() == pytest.approx([1.0, 3.0])


def test_wideband_frames_and_a_partial_last_frame() -> None:
    track = np.zeros(16000 * 2 + 100, dtype=np.int16)
    track[16000:32000] = (np.sin(np.arange(16000) * 0.3) * 8000).astype(np.int16)
    frames = speech_frames(track, 16000)
    assert len(frames) == 101 and frames.sum() == 50


def test_duration_bands() -> None:
    assert band_labels([30, 300, 1200]) == ["<30s", "30s-5m", "5m-20m", ">=20m"]
    assert [duration_band(d, [30, 300, 1200]) for d in (0, 29.9, 30, 299, 300, 5000)] == [
        "<30s", "<30s", "30s-5m", "30s-5m", "5m-20m", ">=20m"]
    with pytest.raises(ValueError, match="strictly ascending"):
        duration_band(10, [300, 30])


def test_risk_score_adds_up_its_reasons() -> None:
    quiet = call_metrics(np.zeros(3000, bool), np.zeros(3000, bool), 20)
    assert risk_score([], [], quiet, RiskWeights(silence=5.0)).score == 5.0
    agent = np.zeros(3000, bool)
    customer = np.zeros(3000, bool)
    customer[0:1500] = True
    agent[500:1000] = True                # cuts in once, 10 s of overlap in 60 s
    metrics = call_metrics(agent, customer, 20)
    assessed = risk_score(["guaranteed-return-zh"], ["risk-disclosure"], metrics)
    # 30 + 25 + min(20, 8 × 1/min) + min(10, 100 × 10/60)
    assert assessed.score == pytest.approx(30 + 25 + 8 + 10)
    assert assessed.reasons[0] == "1 sensitive phrase hit(s): guaranteed-return-zh"
    capped = risk_score(["a", "b", "c"], ["d", "e"], metrics)
    assert capped.score == 100.0       # 3 hits capped at 60, + 50 + 8 + 10, capped at 100
    assert "required phrase(s) missing: risk-disclosure" in assessed.reasons


def test_sampling_takes_the_riskiest_first_with_a_share_by_chance() -> None:
    rows = [{"recording_id": f"r{i:02d}", "risk_score": float(i)} for i in range(20)]
    rows.append({"recording_id": "new", "risk_score": None})
    picked = select_for_review(rows, 0.25)
    assert [r["recording_id"] for r in picked] == ["r19", "r18", "r17", "r16", "r15", "r14"]
    mixed = select_for_review(rows, 0.25, random_share=0.5, seed="s")
    assert [r["recording_id"] for r in mixed[:3]] == ["r19", "r18", "r17"]
    assert len(mixed) == 6 and all(float(r["risk_score"] or -1) < 17 for r in mixed[3:])
    assert mixed == select_for_review(list(reversed(rows)), 0.25, random_share=0.5, seed="s")
    assert len(select_for_review(rows, 0.0, minimum=2)) == 2
    per_agent = riskiest_per_agent([("a1", "x"), ("a2", "x"), ("a3", "x"), ("b1", "y")],
                                   {"a1": 5.0, "a2": 90.0, "b1": 1.0}, 0.5, random.Random(1))
    assert per_agent == {"x": ["a2", "a1"], "y": ["b1"]}
