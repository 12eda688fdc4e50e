"""Audio for the analysis: a recording's channels out of the vault, speech-only compaction and
resampling to Whisper's 16 kHz.

Whisper's encoder costs the same for every 30 s window, speech or not; a call is about half
silence on each channel. So each channel is *compacted*: its speech spans (from the energy
VAD, padded) are cut out and joined, separated by a short silence, and a :class:`TimeMap`
takes the transcript's times back to the recording's timeline.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from storage.vault import VaultReader

WHISPER_RATE = 16000
SPAN_PAD_S = 0.2          # speech spans are widened by this on each side (word onsets, fades)
JOIN_GAP_S = 0.3          # silence put between joined spans (Whisper splits segments there)
MERGE_GAP_S = 1.0         # spans closer than this are taken as one


def read_channels(path: Path, data_key: bytes, recording_id: str) -> tuple[np.ndarray, int]:
    """The recording's PCM as int16 [frames, channels] and its sample rate (authenticated)."""
    with VaultReader(path, data_key, recording_id) as vault:
        channels, rate = vault.header.channels, vault.header.rate
        data = b"".join(vault.iter_pcm())
    pcm = np.frombuffer(data, dtype="<i2")
    usable = len(pcm) - len(pcm) % channels
    return pcm[:usable].reshape(-1, channels), rate


@dataclass(frozen=True, slots=True)
class TimeMap:
    """Piecewise map from the compacted audio's time to the recording's (seconds)."""

    compact_starts: tuple[float, ...]
    original_starts: tuple[float, ...]

    def to_original(self, t: float) -> float:
        i = max(0, bisect.bisect_right(self.compact_starts, t) - 1)
        if not self.compact_starts:
            return t
        return self.original_starts[i] + (t - self.compact_starts[i])


def merge_spans(spans: Sequence[tuple[float, float]], duration_s: float, *, pad_s: float = SPAN_PAD_S,
                merge_gap_s: float = MERGE_GAP_S) -> list[tuple[float, float]]:
    """Padded spans, clipped to the recording, with those less than ``merge_gap_s`` apart joined."""
    merged: list[tuple[float, float]] = []
    for start, end in sorted(spans):
        start, end = max(0.0, start - pad_s), min(duration_s, end + pad_s)
        if merged and start - merged[-1][1] < merge_gap_s:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def compact(channel: np.ndarray, rate: int, spans: Sequence[tuple[float, float]],
            gap_s: float = JOIN_GAP_S) -> tuple[np.ndarray, TimeMap]:
    """The speech spans of one channel joined with ``gap_s`` of silence between them."""
    pieces: list[np.ndarray] = []
    compact_starts: list[float] = []
    original_starts: list[float] = []
    gap = np.zeros(int(round(gap_s * rate)), dtype=channel.dtype)
    position = 0
    for start, end in spans:
        a, b = int(round(start * rate)), int(round(end * rate))
        if b <= a:
            continue
        if pieces:
            pieces.append(gap)
            position += len(gap)
        compact_starts.append(position / rate)
        original_starts.append(a / rate)
        pieces.append(channel[a:b])
        position += b - a
    audio = np.concatenate(pieces) if pieces else np.zeros(0, dtype=channel.dtype)
    return audio, TimeMap(tuple(compact_starts), tuple(original_starts))


def to_whisper(channel: np.ndarray, rate: int) -> np.ndarray:
    """int16 mono at ``rate`` → float32 mono at 16 kHz in [-1, 1), resampled by FFmpeg's
    swresample (through PyAV, as faster-whisper's own decoder does)."""
    samples = np.ascontiguousarray(channel, dtype=np.int16)
    if rate == WHISPER_RATE:
        return samples.astype(np.float32) / 32768.0
    if samples.size == 0:
        return np.zeros(0, dtype=np.float32)
    resampler = av.AudioResampler(format="s16", layout="mono", rate=WHISPER_RATE)
    out: list[np.ndarray] = []
    for first in range(0, len(samples), rate * 60):      # a minute at a time
        frame = av.AudioFrame.from_ndarray(samples[first:first + rate * 60].reshape(1, -1), format="s16",
                                           layout="mono")
        frame.sample_rate = rate
        out += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    out += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(out).astype(np.float32) / 32768.0
