"""Audio checks shared by tests: loudness, tone detection, speech-versus-noise."""

from __future__ import annotations

import numpy as np


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) if len(x) else 0.0


def spectral_flatness(x: np.ndarray, rate: int, frame_s: float = 0.032) -> float:
    """Median Wiener entropy of the loud frames: ~1 for white noise, well below for speech
    or tones. Used to tell decoded speech from what a wrong decoder or cipher text gives."""
    size = int(rate * frame_s)
    frames = x[: len(x) // size * size].astype(np.float64).reshape(-1, size)
    if not len(frames):
        return 1.0
    energy = np.sqrt(np.mean(frames ** 2, axis=1))
    loud = frames[energy > max(50.0, 0.1 * energy.max())]
    if not len(loud):
        return 1.0
    power = np.abs(np.fft.rfft(loud * np.hanning(size), axis=1)) ** 2 + 1e-9
    flatness = np.exp(np.mean(np.log(power), axis=1)) / np.mean(power, axis=1)
    return float(np.median(flatness))


def tone_energy(x: np.ndarray, rate: int, freq: float) -> float:
    """Goertzel-style power of one frequency in a window, normalised by window length."""
    if not len(x):
        return 0.0
    t = np.arange(len(x)) / rate
    c = np.dot(x.astype(np.float64), np.cos(2 * np.pi * freq * t))
    s = np.dot(x.astype(np.float64), np.sin(2 * np.pi * freq * t))
    return float((c * c + s * s) / len(x) ** 2)


def peak_correlation(signal_: np.ndarray, reference: np.ndarray) -> float:
    """Peak normalised cross-correlation of `reference` within `signal_` (FFT; the sliding
    window energy by cumulative sums): 1.0 where the signal holds the reference exactly."""
    signal_, reference = signal_.astype(np.float64), reference.astype(np.float64)
    n = len(signal_) + len(reference)
    size = 1 << (n - 1).bit_length()
    corr = np.fft.irfft(np.fft.rfft(signal_, size) * np.conj(np.fft.rfft(reference, size)), size)[: len(signal_)]
    squares = np.concatenate([[0.0], np.cumsum(signal_ ** 2)])
    ends = np.minimum(np.arange(len(signal_)) + len(reference), len(signal_))
    energy = np.sqrt(np.maximum(squares[ends] - squares[: len(signal_)], 0.0))
    return float(np.max(corr / (energy * np.linalg.norm(reference) + 1e-9)))
