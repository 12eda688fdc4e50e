"""Call metrics from the two channels' voice activity (pure).

Inputs are per-frame speech flags of the agent's and the customer's channel (analysis/vad.py)
on the same frame grid. Definitions (all exact in frames):

* talk time of a side: its speech frames × frame length;
* silence ratio: frames where neither side speaks / all frames;
* overlap: frames where both speak;
* an interruption: a talk spurt of one side that starts while the other side is already
  speaking (the other's spurt began in an earlier frame) and overlaps it for at least
  ``min_overlap_ms`` (shorter overlaps are back-channel — "mm", "ok" — not a bid for the turn).
  Two spurts starting in the same frame interrupt nobody. It is counted for the side that
  started talking; the interruption rate is interruptions (both sides) per minute of call;
* duration band: the call's duration placed in configured bands ("<30s", "30s-5m", ...).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from analysis.vad import runs


@dataclass(frozen=True, slots=True)
class CallMetrics:
    duration_s: float
    talk_agent_s: float
    talk_customer_s: float
    silence_ratio: float
    overlap_s: float
    interruptions_agent: int
    interruptions_customer: int
    interruption_rate: float          # interruptions (both sides) per minute of call
    duration_band: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pad(flags: np.ndarray, length: int) -> np.ndarray:
    flags = np.asarray(flags, dtype=bool)
    if len(flags) >= length:
        return flags[:length]
    return np.concatenate((flags, np.zeros(length - len(flags), dtype=bool)))


def interruptions(interrupter: np.ndarray, speaker: np.ndarray, min_overlap_frames: int) -> int:
    """Spurts of ``interrupter`` that start inside a spurt of ``speaker`` already under way and
    overlap it for at least ``min_overlap_frames`` frames."""
    count = 0
    both = interrupter & speaker
    for start, _end in runs(interrupter):
        if start == 0 or not (speaker[start] and speaker[start - 1]):
            continue
        stop = start
        while stop < len(both) and both[stop]:
            stop += 1
        if stop - start >= max(1, min_overlap_frames):
            count += 1
    return count


def _format_seconds(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{int(seconds // 3600)}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    return f"{seconds:g}s"


def band_labels(bounds: Sequence[float]) -> list[str]:
    """Labels of the bands cut at ``bounds`` (ascending seconds): "<30s", "30s-5m", ">=5m"."""
    if not bounds:
        return ["all"]
    names = [f"<{_format_seconds(bounds[0])}"]
    names += [f"{_format_seconds(low)}-{_format_seconds(high)}" for low, high in zip(bounds, bounds[1:], strict=False)]
    names.append(f">={_format_seconds(bounds[-1])}")
    return names


def duration_band(duration_s: float, bounds: Sequence[float]) -> str:
    """The band label of a duration; a duration equal to a bound belongs to the band above it."""
    if list(bounds) != sorted(bounds) or len(set(bounds)) != len(bounds):
        raise ValueError(f"duration band bounds must be strictly ascending, got {list(bounds)}")
    labels = band_labels(bounds)
    index = sum(1 for bound in bounds if duration_s >= bound)
    return labels[index]


def call_metrics(agent: np.ndarray, customer: np.ndarray, frame_ms: int, *, duration_s: float | None = None,
                 min_overlap_ms: int = 300, band_bounds: Sequence[float] = (30.0, 300.0, 1200.0)) -> CallMetrics:
    """The metrics of one call from its two speech-flag tracks (same frame grid)."""
    frames = max(len(agent), len(customer))
    a, c = _pad(agent, frames), _pad(customer, frames)
    step = frame_ms / 1000.0
    duration = frames * step if duration_s is None else float(duration_s)
    min_overlap = math.ceil(min_overlap_ms / frame_ms)
    by_agent = interruptions(a, c, min_overlap)
    by_customer = interruptions(c, a, min_overlap)
    minutes = duration / 60.0
    return CallMetrics(
        duration_s=round(duration, 6),
        talk_agent_s=round(int(a.sum()) * step, 6),
        talk_customer_s=round(int(c.sum()) * step, 6),
        silence_ratio=float(np.count_nonzero(~a & ~c)) / frames if frames else 1.0,
        overlap_s=round(int(np.count_nonzero(a & c)) * step, 6),
        interruptions_agent=by_agent,
        interruptions_customer=by_customer,
        interruption_rate=(by_agent + by_customer) / minutes if minutes > 0 else 0.0,
        duration_band=duration_band(duration, band_bounds),
    )
