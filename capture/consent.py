"""Is the consent announcement audible in a recording? (pure numpy, no I/O)

The announcer plays a known prompt; the mirror port sees that audio too, so the recording of
the leg that carried it contains the prompt — decoded from G.711 or G.722, shifted in time,
possibly scaled by a gain somewhere on the path. The detector slides the prompt over each
channel and computes the normalised cross-correlation (Pearson's r of the prompt against the
recording window of the same length) at every lag:

    r[k] = Σ_j (x[k+j] − x̄_k) · p[j] / (‖p‖ · √(Σ_j x[k+j]² − L·x̄_k²)),   p zero-mean

The numerator for all lags is one FFT correlation (O(N log N)); the window energies and means
come from cumulative sums. r is invariant to the gain and to a DC offset, and G.711's
quantisation noise (≈ 38 dB SNR for speech at a normal level) costs < 0.01 of it: a prompt that
reached the recording scores ≈ 0.95–1.0, speech that is not the prompt stays well under 0.5.
Windows quieter than ``SILENCE_RMS`` (int16 units) are skipped: near-silence correlates by
chance with anything once normalised.

Search is coarse to fine: the whole prompt is located on copies decimated to ``COARSE_RATE``
(block means: speech's energy is mostly under 1 kHz, and 30 s of 16 kHz stereo then costs a
few milliseconds instead of half a second), then refined at the full rate. The whole prompt's
lag says *where*; whether *all* of it is there is decided per part: the prompt is cut into ``PARTS`` pieces, each is correlated on its own within ``SLIP_S``
of where the whole-prompt lag puts it (a jitter buffer or a PBX on the path may drop or insert
a frame, shifting the rest of the prompt by 10–20 ms, which would halve the whole-prompt r),
and the prompt is audible when every part reaches the threshold. A prompt cut off by a
hang-up therefore is not audible (its missing parts score 0), though its beginning is found.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

SILENCE_RMS = 16.0           # ≈ −66 dBFS: below this a window is treated as silence
DEFAULT_THRESHOLD = 0.6      # every part's r at or above this: the prompt is audible
PARTS = 4
SLIP_S = 0.1                 # how far a part may sit from where the whole prompt's lag puts it
COARSE_RATE = 2000           # the whole-prompt search runs at this rate (then refined per part)


@dataclass(frozen=True, slots=True)
class PromptMatch:
    """One prompt in one channel: where it starts and how well each part matches."""

    prompt: str
    channel: int
    offset_samples: int
    offset_s: float
    score: float            # mean r of the parts (each at its own best lag near the whole's)
    coverage: float         # the lowest part's r: the prompt is audible when this passes
    whole: float            # r of the whole prompt at its best lag


@dataclass(frozen=True, slots=True)
class ConsentDetection:
    """The verdict for a recording: the best match over every prompt and channel."""

    audible: bool
    best: PromptMatch | None      # None: nothing to compare (no prompt, empty recording)
    threshold: float

    def to_dict(self) -> dict[str, object]:
        best = self.best
        found = best is not None and self.audible
        return {
            "audible": self.audible,
            "offset_s": round(best.offset_s, 3) if found and best else None,
            "channel": best.channel if found and best else None,
            "prompt": best.prompt if found and best else None,
            "score": round(best.score, 4) if best else None,
            "coverage": round(best.coverage, 4) if best else None,
        }


def _fft_size(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _as_float(samples: np.ndarray) -> np.ndarray:
    if samples.ndim != 1:
        raise ValueError(f"expected one channel (a 1-D array), got shape {samples.shape}")
    return samples.astype(np.float64, copy=False)


def _unit(samples: np.ndarray) -> np.ndarray | None:
    """Zero-mean, unit-norm copy; None when it is silent."""
    p = samples - samples.mean()
    norm = float(np.linalg.norm(p))
    return p / norm if norm > 0.0 else None


def ncc(x: np.ndarray, p_unit: np.ndarray, p_spectrum: np.ndarray | None = None) -> np.ndarray:
    """r[k] for every lag k = 0 .. len(x) − len(p) of a zero-mean unit-norm ``p_unit`` in ``x``.

    ``p_spectrum`` may give conj(rfft(p_unit, n)) for n = _fft_size(len(x)) (reused across calls)."""
    length = len(p_unit)
    lags = len(x) - length + 1
    if lags <= 0:
        return np.zeros(0)
    size = _fft_size(len(x))
    spectrum = p_spectrum if p_spectrum is not None else np.conj(np.fft.rfft(p_unit, size))
    # a circular correlation of size >= len(x): lags 0 .. len(x) − L never wrap around
    numerator = np.fft.irfft(np.fft.rfft(x, size) * spectrum, size)[:lags]
    csum = np.concatenate(([0.0], np.cumsum(x)))
    csum2 = np.concatenate(([0.0], np.cumsum(x * x)))
    total = csum[length:length + lags] - csum[:lags]
    energy = csum2[length:length + lags] - csum2[:lags] - total * total / length
    quiet = energy <= (SILENCE_RMS * SILENCE_RMS) * length
    r = numerator / np.sqrt(np.where(quiet, 1.0, energy))
    r[quiet] = 0.0
    return np.clip(r, -1.0, 1.0)


def decimate(x: np.ndarray, factor: int) -> np.ndarray:
    """Means of consecutive blocks of ``factor`` samples (a crude low-pass, enough to locate)."""
    if factor <= 1:
        return x
    usable = len(x) // factor * factor
    return x[:usable].reshape(-1, factor).mean(axis=1)


@dataclass(frozen=True, slots=True)
class _Prompt:
    unit: np.ndarray
    coarse: np.ndarray                              # unit copy at the coarse rate
    parts: list[tuple[int, np.ndarray | None]]     # (start sample, unit part or None if silent)


class PromptCorrelator:
    """Finds prompts (mono arrays at ``rate``) in channels of the same rate.

    The prompts' spectra are kept per FFT size, reused for every channel and recording (a
    daemon checks many recordings against the same few prompts).
    """

    def __init__(self, prompts: Mapping[str, np.ndarray], rate: int) -> None:
        if rate <= 0:
            raise ValueError(f"sample rate must be positive, got {rate}")
        self.rate = rate
        self.slip = int(SLIP_S * rate)
        self.factor = max(1, rate // COARSE_RATE)
        self.prompts: dict[str, _Prompt] = {}
        for name, samples in prompts.items():
            p = _as_float(samples)
            if len(p) < PARTS * rate // 10:
                raise ValueError(f"prompt {name!r} is shorter than {PARTS / 10:g} s ({len(p)} samples at {rate} Hz)")
            unit, coarse = _unit(p), _unit(decimate(p, self.factor))
            if unit is None or coarse is None:
                raise ValueError(f"prompt {name!r} is silent")
            bounds = np.linspace(0, len(p), PARTS + 1).astype(int)
            parts = [(int(a), _unit(p[a:b])) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
            self.prompts[name] = _Prompt(unit, coarse, parts)
        self._spectra: dict[tuple[str, int], np.ndarray] = {}

    def _spectrum(self, name: str, size: int) -> np.ndarray:
        key = (name, size)
        if key not in self._spectra:
            self._spectra[key] = np.conj(np.fft.rfft(self.prompts[name].coarse, size))
        return self._spectra[key]

    def correlate_coarse(self, signal: np.ndarray, name: str) -> np.ndarray:
        """r of the whole prompt ``name`` at every lag of ``signal``, at the coarse rate (lag k
        is sample k × factor); the signal is padded with silence at the end, so a prompt cut
        off there still has lags."""
        prompt = self.prompts[name]
        x = decimate(_as_float(signal), self.factor)
        x = np.concatenate([x, np.zeros(len(prompt.coarse) - 1)])
        return ncc(x, prompt.coarse, self._spectrum(name, _fft_size(len(x))))

    def whole_score(self, signal: np.ndarray, name: str, lag: int) -> float:
        """r of the whole prompt at one full-rate lag."""
        p = self.prompts[name].unit
        x = signal[lag:lag + len(p)].astype(np.float64)
        x = np.concatenate([x, np.zeros(len(p) - len(x))]) - x.sum() / len(p)
        energy = float(np.dot(x, x))
        if energy <= SILENCE_RMS * SILENCE_RMS * len(p):
            return 0.0
        return float(np.dot(p, x)) / np.sqrt(energy)

    def match(self, signal: np.ndarray, name: str, channel: int = 0) -> PromptMatch | None:
        """Where prompt ``name`` is best placed in ``signal``, and how well each part matches."""
        x = _as_float(signal)
        if not len(x) or float(np.max(np.abs(x))) <= SILENCE_RMS:
            return None   # an empty or silent channel holds no prompt
        lag = int(np.argmax(self.correlate_coarse(x, name))) * self.factor
        scores, first_shift = [], 0
        for i, (start, part) in enumerate(self.prompts[name].parts):
            score, shift = self._part_score(x, lag + start, part)
            scores.append(score)
            if i == 0:
                first_shift = shift
        offset = max(0, lag + first_shift)
        return PromptMatch(name, channel, offset, offset / self.rate, float(np.mean(scores)), float(min(scores)),
                           self.whole_score(x, name, offset))

    def _part_score(self, x: np.ndarray, expected: int, part: np.ndarray | None) -> tuple[float, int]:
        """(best r, its shift from ``expected``) of one part within ±slip of ``expected``.
        A silent part of the prompt (a pause) matches anything: r 1, shift 0."""
        if part is None:
            return 1.0, 0
        reach = self.slip + self.factor      # the coarse lag is known to ± one coarse sample
        lo = expected - reach
        segment = x[max(0, lo):expected + len(part) + reach]
        if lo < 0:   # before the recording: silence
            segment = np.concatenate([np.zeros(-lo), segment])
        if len(segment) < len(part) + 2 * reach:
            segment = np.concatenate([segment, np.zeros(len(part) + 2 * reach - len(segment))])
        r = ncc(segment, part)
        k = int(np.argmax(r))
        return float(r[k]), k - reach


def detect_consent(channels: np.ndarray, correlator: PromptCorrelator, *,
                   threshold: float = DEFAULT_THRESHOLD) -> ConsentDetection:
    """Search every channel of ``channels`` (frames × channels, or one channel, at the
    correlator's rate) for every prompt; the prompt is audible when each of its parts reaches
    ``threshold``. The offset counts from sample 0 of ``channels``."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    audio = channels[:, None] if channels.ndim == 1 else channels
    matches = [m for ch in range(audio.shape[1]) for name in correlator.prompts
               if (m := correlator.match(audio[:, ch], name, ch)) is not None]
    if not matches:
        return ConsentDetection(False, None, threshold)
    best = max(matches, key=lambda m: (m.coverage, m.score, -m.offset_samples))
    return ConsentDetection(best.coverage >= threshold, best, threshold)
