"""Voice activity per channel from frame energy: pure numpy, frame-exact.

A channel is cut into frames of ``frame_ms`` from sample 0 (20 ms = one RTP packet of the
usual ptime, so a recording's packets and frames line up). A frame is speech when its mean
square level reaches the threshold; level is ``10·log10(mean(x²))`` with x in [-1, 1), so a
full-scale square wave is 0 dB and a full-scale sine -3 dB. The threshold is the configured
absolute level, raised on noisy lines to the channel's noise floor (a low percentile of its
frame levels) plus a margin, by at most ``max_raise_db``. Then two clean-ups, in this order:

1. gaps of silence shorter than ``bridge_ms`` between speech frames become speech (the pauses
   between words are part of a turn: a turn is not two turns because of a breath);
2. speech runs shorter than ``min_speech_ms`` become silence (clicks, line noise, DTMF blips).

Nothing else smooths: a talk spurt that starts and ends on frame boundaries, with gaps of at
least ``bridge_ms``, is measured to the sample (tests/analysis/test_metrics.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_CHUNK_FRAMES = 4096          # frames per energy chunk: bounds the int64 temporary (4096 × frame)
_FULL_SCALE = 32768.0
_SILENCE_DB = -150.0          # digital silence (-inf) in percentiles


@dataclass(frozen=True, slots=True)
class VadSettings:
    frame_ms: int = 20
    threshold_dbfs: float = -45.0
    noise_margin_db: float = 12.0
    noise_percentile: float = 10.0
    max_raise_db: float = 20.0
    bridge_ms: int = 200
    min_speech_ms: int = 60

    def __post_init__(self) -> None:
        if self.frame_ms <= 0 or self.bridge_ms < 0 or self.min_speech_ms < 0:
            raise ValueError("VAD durations must be positive (frame) or zero or more (bridge, min speech)")
        if not 0.0 <= self.noise_percentile <= 100.0:
            raise ValueError(f"noise_percentile {self.noise_percentile} is not a percentage")


def frame_samples(rate: int, frame_ms: int) -> int:
    """Samples per frame; the frame must be a whole number of samples at ``rate``."""
    samples, remainder = divmod(rate * frame_ms, 1000)
    if remainder or samples <= 0:
        raise ValueError(f"a {frame_ms} ms frame is not a whole number of samples at {rate} Hz")
    return samples


def frame_levels_db(pcm: np.ndarray, frame: int) -> np.ndarray:
    """Level (dB re full scale) of each whole-or-partial frame of int16 mono ``pcm``; -inf for
    digital silence. A partial last frame is measured over the samples it has."""
    pcm = np.asarray(pcm)
    if pcm.ndim != 1:
        raise ValueError("frame_levels_db takes one channel")
    count = -(-len(pcm) // frame)
    energy = np.empty(count, dtype=np.float64)
    whole = len(pcm) // frame
    for first in range(0, whole, _CHUNK_FRAMES):
        last = min(whole, first + _CHUNK_FRAMES)
        block = pcm[first * frame:last * frame].astype(np.int64).reshape(-1, frame)
        energy[first:last] = np.einsum("ij,ij->i", block, block) / frame
    if count > whole:
        tail = pcm[whole * frame:].astype(np.int64)
        energy[whole] = float(np.dot(tail, tail)) / len(tail)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(energy / (_FULL_SCALE * _FULL_SCALE))


def threshold_db(levels: np.ndarray, settings: VadSettings) -> float:
    """The channel's speech threshold: the absolute level, or noise floor + margin if higher
    (by at most ``max_raise_db``). The floor is a low percentile over all frames, digital
    silence included: a side of a call is silent at least while the other side talks, so the
    percentile lands on a pause — digital silence (no raise) or the line's noise."""
    if levels.size == 0:
        return settings.threshold_dbfs
    floor = float(np.percentile(np.maximum(levels, _SILENCE_DB), settings.noise_percentile))
    raised = min(floor + settings.noise_margin_db, settings.threshold_dbfs + settings.max_raise_db)
    return max(settings.threshold_dbfs, raised)


def runs(active: np.ndarray) -> np.ndarray:
    """(start, end) frame index pairs of the True runs of a boolean array, end exclusive."""
    padded = np.concatenate(([False], np.asarray(active, dtype=bool), [False]))
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    return edges.reshape(-1, 2)


def _fill_short_gaps(active: np.ndarray, max_gap: int) -> np.ndarray:
    if max_gap <= 0:
        return active
    out = active.copy()
    spans = runs(~active)
    for start, end in spans:
        if start > 0 and end < len(active) and end - start < max_gap:
            out[start:end] = True
    return out


def _drop_short_runs(active: np.ndarray, min_run: int) -> np.ndarray:
    if min_run <= 1:
        return active
    out = active.copy()
    for start, end in runs(active):
        if end - start < min_run:
            out[start:end] = False
    return out


def speech_frames(pcm: np.ndarray, rate: int, settings: VadSettings = VadSettings()) -> np.ndarray:
    """Boolean speech flag per frame of one int16 channel (see the module text)."""
    frame = frame_samples(rate, settings.frame_ms)
    levels = frame_levels_db(pcm, frame)
    active = levels >= threshold_db(levels, settings)
    active = _fill_short_gaps(active, -(-settings.bridge_ms // settings.frame_ms))
    return _drop_short_runs(active, -(-settings.min_speech_ms // settings.frame_ms))


def speech_spans_s(active: np.ndarray, frame_ms: int) -> list[tuple[float, float]]:
    """The speech runs as (start, end) seconds."""
    step = frame_ms / 1000.0
    return [(float(start) * step, float(end) * step) for start, end in runs(active)]
