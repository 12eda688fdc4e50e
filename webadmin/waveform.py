"""Waveform peaks of a stereo recording: per channel, the lowest and highest sample in each of
``points`` equal slices of the timeline, for the player to draw (static/js/player.js).

Pure: PCM chunks (interleaved little-endian int16, as storage.vault.VaultReader.iter_pcm
yields them, of any length) in, arrays out. Memory stays at one chunk whatever the length of
the call: a 1-hour recording is reduced chunk by chunk with numpy's reduceat.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

SAMPLE_BYTES = 2
FULL_SCALE = 32768.0


@dataclass(frozen=True, slots=True)
class Peaks:
    """``low[c][i]``/``high[c][i]``: extremes of channel c in slice i, scaled to [-1, 1)."""

    rate: int
    channels: int
    frames: int
    low: np.ndarray    # shape (channels, points), float32
    high: np.ndarray

    @property
    def points(self) -> int:
        return int(self.low.shape[1])

    def to_json(self, decimals: int = 3) -> dict[str, Any]:
        return {"rate": self.rate, "channels": self.channels, "frames": self.frames,
                "duration_s": round(self.frames / self.rate, 3) if self.rate else 0.0,
                "points": self.points,
                "low": np.round(self.low, decimals).tolist(), "high": np.round(self.high, decimals).tolist()}


def slice_edges(frames: int, points: int) -> np.ndarray:
    """Start frame of each slice plus the end: ``points + 1`` strictly increasing values
    (``points`` is lowered to ``frames`` for a recording shorter than that many frames)."""
    count = max(0, min(points, frames))
    return (np.arange(count + 1, dtype=np.int64) * frames) // max(count, 1)


def compute_peaks(chunks: Iterable[bytes], *, frames: int, channels: int, rate: int, points: int) -> Peaks:
    """Peaks over the first ``frames`` frames of the PCM in ``chunks``."""
    if points < 1 or channels < 1:
        raise ValueError("points and channels must be at least 1")
    edges = slice_edges(frames, points)
    count = len(edges) - 1
    low = np.full((count, channels), np.iinfo(np.int16).max, dtype=np.int32)
    high = np.full((count, channels), np.iinfo(np.int16).min, dtype=np.int32)
    frame_bytes = SAMPLE_BYTES * channels
    carry = b""
    done = 0                                  # frames reduced so far
    for chunk in chunks:
        data = carry + chunk if carry else chunk
        usable = min(len(data) // frame_bytes, frames - done)
        carry = data[usable * frame_bytes:] if usable * frame_bytes < len(data) else b""
        if usable <= 0:
            if done >= frames:
                break
            continue
        samples = np.frombuffer(data, dtype="<i2", count=usable * channels).reshape(usable, channels)
        _reduce(samples, done, edges, low, high)
        done += usable
        if done >= frames:
            break
    if done < frames and count:
        raise ValueError(f"the audio ended after {done} of {frames} frames")
    scale = np.float32(1.0 / FULL_SCALE)
    return Peaks(rate, channels, frames, (low.T * scale).astype(np.float32), (high.T * scale).astype(np.float32))


def _reduce(samples: np.ndarray, first_frame: int, edges: np.ndarray, low: np.ndarray, high: np.ndarray) -> None:
    """Fold frames [first_frame, first_frame + len(samples)) into the slices they fall in."""
    end_frame = first_frame + len(samples)
    first_slice = int(np.searchsorted(edges, first_frame, side="right")) - 1
    inner = edges[(edges > first_frame) & (edges < end_frame)] - first_frame
    starts = np.concatenate(([0], inner)).astype(np.intp)
    slices = np.arange(first_slice, first_slice + len(starts))
    np.minimum.at(low, slices, np.minimum.reduceat(samples, starts, axis=0))
    np.maximum.at(high, slices, np.maximum.reduceat(samples, starts, axis=0))
