"""Checks a recording (stereo audio + JSON metadata) against a call's ground truth.

Tone presence is measured in 20 ms Hann windows every 10 ms as the spectral energy within
±150 Hz of each leg's frequency (see :func:`tone_track`). A window must show its leg's tone when it lies
inside a ground-truth interval shrunk by the tolerance, must be quiet when it is farther than
the tolerance from every interval, and is not judged in between. The other leg's frequency must
never appear on a channel (except during DTMF events, which an engine may render as tones).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from tests.gen.callgen import CallTruth, LegTruth
from tests.gen.media import TONE_AMPLITUDE

WINDOW_S = 0.02
HOP_S = 0.01
TOLERANCE_S = 0.04
BAND_HZ = 150.0                      # tones of the two legs must be at least 2 * BAND_HZ apart
ON_LEVEL = 0.75 * TONE_AMPLITUDE     # tone present: at least -2.5 dB of the sent amplitude
OFF_LEVEL = 0.1 * TONE_AMPLITUDE     # tone absent: below -20 dB
# The other leg's tone: a click (a tone starting, stopping or jumping in phase, as at every loss,
# spurt edge or codec switch) spreads up to ~0.16 A into any band; mixing the legs gives >= 0.5 A.
CROSSTALK_LEVEL = 0.25 * TONE_AMPLITUDE
DURATION_TOLERANCE_S = 0.1
CODEC_ALIASES = {"PCMU": ("PCMU", "G711U", "ULAW"), "PCMA": ("PCMA", "G711A", "ALAW"), "G722": ("G722",)}
STARTED_AT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@dataclass(slots=True)
class ToneTrack:
    """Amplitude (int16 units) of one frequency in consecutive windows."""

    starts: np.ndarray      # window start, seconds after sample 0
    amplitude: np.ndarray


def tone_track(samples: np.ndarray, sample_rate: int, freq_hz: float, until_s: float) -> ToneTrack:
    """Windowed amplitude of one tone in a mono signal, zero-padded up to ``until_s``.

    The amplitude comes from the energy of the Hann-windowed frame's spectrum within
    ±BAND_HZ of the tone (Parseval), not from a single coherent DFT bin: a phase jump inside the
    window (a packet placed a fraction of a millisecond off, a codec switch) does not cancel it,
    while real silence of 10 ms or more in a window still pulls it well below ON_LEVEL.
    """
    width = round(WINDOW_S * sample_rate)
    hop = round(HOP_S * sample_rate)
    needed = max(len(samples), round(until_s * sample_rate) + width)
    x = np.zeros(needed, dtype=np.float64)
    x[:len(samples)] = samples
    window = np.hanning(width)
    frames = np.lib.stride_tricks.sliding_window_view(x, width)[::hop] * window
    n_fft = 1 << int(np.ceil(np.log2(width * 4)))
    freqs = np.fft.rfftfreq(n_fft, 1 / sample_rate)
    band = (freqs >= freq_hz - BAND_HZ) & (freqs <= freq_hz + BAND_HZ)
    spectrum = np.fft.rfft(frames, n_fft, axis=1)[:, band]
    energy = 2 * np.sum(np.abs(spectrum) ** 2, axis=1) / n_fft          # one side of the spectrum, doubled
    amplitude = np.sqrt(2 * energy / np.sum(window ** 2))               # a sine of amplitude A → A
    return ToneTrack(np.arange(len(frames)) * hop / sample_rate, amplitude)


def _inside(starts: np.ndarray, spans: list[tuple[float, float]], margin: float) -> np.ndarray:
    """Windows lying wholly inside some span shrunk by ``margin``."""
    mask = np.zeros(len(starts), dtype=bool)
    for a, b in spans:
        mask |= (starts >= a + margin) & (starts + WINDOW_S <= b - margin)
    return mask


def _touching(starts: np.ndarray, spans: list[tuple[float, float]], margin: float) -> np.ndarray:
    """Windows overlapping some span widened by ``margin``."""
    mask = np.zeros(len(starts), dtype=bool)
    for a, b in spans:
        mask |= (starts + WINDOW_S > a - margin) & (starts < b + margin)
    return mask


def _describe(starts: np.ndarray, mask: np.ndarray) -> str:
    """'0.50-0.62 s, 1.10-1.13 s' for the flagged windows (first few runs)."""
    idx = np.flatnonzero(mask)
    runs: list[tuple[float, float]] = []
    for i in idx:
        t = float(starts[i])
        if runs and t - runs[-1][1] <= HOP_S + 1e-9:
            runs[-1] = (runs[-1][0], t)
        else:
            runs.append((t, t))
    text = ", ".join(f"{a:.2f}-{b + WINDOW_S:.2f} s" for a, b in runs[:4])
    return text + (f" (+{len(runs) - 4} more)" if len(runs) > 4 else "")


def _relative(truth: CallTruth, spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    return [(truth.offset(a), truth.offset(b)) for a, b in spans]


def channel_problems(audio: np.ndarray, sample_rate: int, truth: CallTruth, leg: LegTruth,
                     other: LegTruth) -> list[str]:
    """Own tone where (and only where) the ground truth has it; never the other leg's tone."""
    name = "caller" if leg.channel == 0 else "callee"
    intervals = _relative(truth, leg.intervals)
    unchecked = _relative(truth, leg.unchecked)
    own = tone_track(audio[:, leg.channel], sample_rate, leg.tone_hz, truth.duration_s)
    foreign = tone_track(audio[:, leg.channel], sample_rate, other.tone_hz, truth.duration_s)
    must_sound = _inside(own.starts, intervals, TOLERANCE_S) & ~_touching(own.starts, unchecked, TOLERANCE_S)
    must_be_quiet = ~_touching(own.starts, intervals + unchecked, TOLERANCE_S)
    must_be_quiet &= own.starts + WINDOW_S <= truth.duration_s
    problems = []
    if intervals and not must_sound.any():
        problems.append(f"channel {leg.channel}: no window to check the {name} tone (plan too short?)")
    missing = must_sound & (own.amplitude < ON_LEVEL)
    if missing.any():
        problems.append(f"channel {leg.channel}: {name} tone {leg.tone_hz:g} Hz missing at {_describe(own.starts, missing)}")
    extra = must_be_quiet & (own.amplitude > OFF_LEVEL)
    if extra.any():
        problems.append(f"channel {leg.channel}: {name} tone {leg.tone_hz:g} Hz where the ground truth has "
                        f"silence at {_describe(own.starts, extra)}")
    crosstalk = ~_touching(foreign.starts, unchecked, TOLERANCE_S) & (foreign.amplitude > CROSSTALK_LEVEL)
    if crosstalk.any():
        problems.append(f"channel {leg.channel}: the other leg's {other.tone_hz:g} Hz tone leaks in at "
                        f"{_describe(foreign.starts, crosstalk)}")
    return problems


def timeline_problems(audio: np.ndarray, sample_rate: int, truth: CallTruth) -> list[str]:
    """Both channels checked against the ground truth; an empty list means the audio is right."""
    if audio.ndim != 2 or audio.shape[1] != 2:
        return [f"expected stereo audio, got shape {audio.shape}"]
    caller, callee = truth.legs
    return channel_problems(audio, sample_rate, truth, caller, callee) + \
        channel_problems(audio, sample_rate, truth, callee, caller)


def parse_started_at(value: str) -> float:
    """ISO 8601 UTC with milliseconds and a trailing Z → epoch seconds."""
    if not STARTED_AT.match(value):
        raise ValueError(f"started_at {value!r} is not YYYY-MM-DDTHH:MM:SS.mmmZ")
    return datetime.fromisoformat(value).timestamp()


def metadata_problems(meta: dict, truth: CallTruth, audio_frames: int) -> list[str]:
    """Identity, sample 0, duration and format fields of the recording's JSON."""
    problems = []
    for key, want in (("call_id", truth.call_id), ("caller", truth.caller), ("callee", truth.callee),
                      ("sample_rate", truth.sample_rate), ("channels", 2)):
        if meta.get(key) != want:
            problems.append(f"{key} is {meta.get(key)!r}, want {want!r}")
    try:
        started = parse_started_at(str(meta.get("started_at")))
        if truth.first_media_ts is not None and abs(started - truth.first_media_ts) > 0.001:
            problems.append(f"started_at is {started - truth.first_media_ts:+.3f} s from the first media packet")
    except ValueError as exc:
        problems.append(str(exc))
    duration = meta.get("duration_s")
    if not isinstance(duration, int | float) or abs(duration - truth.duration_s) > DURATION_TOLERANCE_S:
        problems.append(f"duration_s is {duration!r}, want {truth.duration_s:.3f} ± {DURATION_TOLERANCE_S}")
    audio_s = audio_frames / truth.sample_rate
    if abs(audio_s - truth.duration_s) > DURATION_TOLERANCE_S:
        problems.append(f"WAV holds {audio_s:.3f} s, want {truth.duration_s:.3f} ± {DURATION_TOLERANCE_S}")
    refused = (meta.get("completeness") or {}).get("refused_samples")
    if refused:
        problems.append(f"{refused} samples were refused by the timeline (written too far ahead)")
    named = " ".join(str(c) for c in meta.get("codecs", [])).upper().replace(".", "").replace("-", "")
    problems += [f"codec {c} missing from codecs {meta.get('codecs')!r}" for c in truth.codecs
                 if not any(alias in named for alias in CODEC_ALIASES.get(c, (c,)))]
    return problems
