"""Audio codecs: one RTP payload in, int16 mono PCM at the recording rate out.

Every decoder here keeps the timing promise the call timeline relies on: sample k of what
`Decoder.decode` returns is the audio k/out_rate seconds after the packet's RTP timestamp,
and the packet yields exactly its own duration of audio (within one sample when resampling
by a non-integer ratio). Nothing here adds latency: resampling is done per packet with
the previous packet as left context and a mirrored right edge (see `_Resampler`).
Codec-intrinsic delays (e.g. the G.722 QMF bank, ~1.4 ms; Opus look-ahead, ~6.5 ms) are
what any receiver of the stream hears and are left as they are.

Decoders:
  G.711 µ-law/A-law   numpy table lookup (tables computed from the ITU-T G.711 formulas)
  G.726 (both packings) own ITU-T G.726 decoder: FFmpeg's g726 deviates from the standard
                      (e.g. it leaks the zero predictor by 2^-8 at 40 kbit/s where G.726
                      says 2^-9); on the corpus' 40 kbit/s call that drops the waveform
                      correlation with the source from 0.9997 to 0.78
  L16, DVI4           numpy (RFC 3551 §4.5.11, §4.5.1)
  everything else     PyAV's bundled FFmpeg decoders (G.722, G.729(B), GSM, iLBC, Opus,
                      Speex, AMR/AMR-WB, G.723.1)
  CN                  silence of the hinted length (RFC 3389 noise is not synthesised)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import av
import av.error
import numpy as np

from capture.errors import ParseError, UnsupportedCodec

# --------------------------------------------------------------------------------------
# Codec identity
# --------------------------------------------------------------------------------------

# Names seen in the wild for the same payload format -> the canonical name used here.
_NAME_ALIASES: dict[str, str] = {
    "g721": "g726-32",  # the pre-1990 name of 32 kbit/s G.726 (old static PT 2)
    "g729a": "g729",  # Annex A is bitstream-compatible with G.729 (RFC 3551 §4.5.6)
    "g729b": "g729",
    "g729ab": "g729",
    "amr-nb": "amr",
    "ulaw": "pcmu",
    "alaw": "pcma",
    "g7231": "g723",
    "g723.1": "g723",
}

_G726_RATES = (16, 24, 32, 40)
_G726_NAMES = frozenset(f"{prefix}g726-{kbps}" for prefix in ("", "aal2-") for kbps in _G726_RATES)
_SPEEX_RATES = frozenset({8000, 16000, 32000})


@dataclass(frozen=True, slots=True)
class CodecSpec:
    """One RTP payload format as negotiated in SDP (a=rtpmap + a=fmtp)."""

    name: str  # canonical lower-case, e.g. "pcmu", "g726-32", "aal2-g726-32", "opus"
    clock_rate: int  # RTP clock rate (G.722: 8000, Opus: 48000)
    channels: int = 1
    fmtp: str = ""


def codec_spec(encoding: str, clock_rate: int, channels: int = 1, fmtp: str = "") -> CodecSpec:
    """Build a CodecSpec from SDP rtpmap/fmtp values; encoding names are case-insensitive."""
    if clock_rate <= 0:
        raise ParseError("codec.bad_clock_rate", f"{encoding}/{clock_rate}")
    if channels <= 0:
        raise ParseError("codec.bad_channels", f"{encoding}/{clock_rate}/{channels}")
    name = encoding.strip().lower()
    return CodecSpec(_NAME_ALIASES.get(name, name), clock_rate, channels, fmtp.strip())


# Codecs whose decoded audio has a fixed rate whatever the SDP clock says (a few devices
# advertise e.g. "G722/16000"; the bitstream is the same).
_NATIVE_AUDIO_RATES: dict[str, int] = {
    "g722": 16000,  # RFC 3551 §4.5.2: RTP clock 8000 for historical reasons, audio is 16 kHz
    "opus": 48000,  # RFC 7587 §4.1: the RTP clock is always 48000
    "g729": 8000,
    "gsm": 8000,
    "ilbc": 8000,
    "g723": 8000,
    "amr": 8000,
    "amr-wb": 16000,
    **{name: 8000 for name in _G726_NAMES},
}


def audio_rate(spec: CodecSpec) -> int:
    """Native sample rate of the decoded audio (not always the RTP clock rate)."""
    return _NATIVE_AUDIO_RATES.get(spec.name, spec.clock_rate)


def wav_rate_for(spec: CodecSpec) -> int:
    """Recording rate a leg in this codec needs: 8000 for narrowband, else 16000."""
    return 8000 if audio_rate(spec) <= 8000 else 16000


def fmtp_params(fmtp: str) -> dict[str, str]:
    """Parse "a=fmtp" parameters ("mode=30; octet-align=1") into a lower-cased dict."""
    params: dict[str, str] = {}
    for item in fmtp.split(";"):
        key, _, value = item.strip().partition("=")
        if key:
            params[key.strip().lower()] = value.strip()
    return params


# --------------------------------------------------------------------------------------
# G.711 (ITU-T G.711) lookup tables, computed rather than typed in
# --------------------------------------------------------------------------------------


def _build_ulaw_table() -> np.ndarray:
    """µ-law code -> linear PCM (16-bit scale, ±32124), the classic G.711 expansion."""
    code = ~np.arange(256, dtype=np.int32) & 0xFF  # µ-law code words are sent inverted
    exponent = (code >> 4) & 0x07
    mantissa = code & 0x0F
    # The encoder added a bias of 33 (0x84 at 16-bit scale) before taking the segment.
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return np.where(code & 0x80, -magnitude, magnitude).astype(np.int16)


def _build_alaw_table() -> np.ndarray:
    """A-law code -> linear PCM (16-bit scale, ±32256)."""
    code = np.arange(256, dtype=np.int32) ^ 0x55  # even bits are inverted on the line
    exponent = (code >> 4) & 0x07
    mantissa = code & 0x0F
    segment_0 = (mantissa << 4) + 0x08  # half a step added: reconstruct mid-interval
    segment_n = ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0)
    magnitude = np.where(exponent == 0, segment_0, segment_n)
    return np.where(code & 0x80, magnitude, -magnitude).astype(np.int16)


ULAW_TO_PCM16: np.ndarray = _build_ulaw_table()
ALAW_TO_PCM16: np.ndarray = _build_alaw_table()
ULAW_TO_PCM16.flags.writeable = False
ALAW_TO_PCM16.flags.writeable = False


# --------------------------------------------------------------------------------------
# Latency-free rate conversion
# --------------------------------------------------------------------------------------

_SINC_ZEROS = 8  # kernel half-width in zero crossings of the low-pass sinc


def _windowed_sinc(t: np.ndarray, cutoff: float, half_width: float) -> np.ndarray:
    """Hann-windowed sinc low-pass; `t` in input samples, `cutoff` relative to input Nyquist."""
    window = np.where(np.abs(t) < half_width, 0.5 + 0.5 * np.cos(np.pi * t / half_width), 0.0)
    return cutoff * np.sinc(cutoff * t) * window


def _to_int16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), -32768, 32767).astype(np.int16)


def _halfband_taps() -> np.ndarray:
    """Taps that interpolate the midpoint between x[k] and x[k+1] from x[k-7] .. x[k+8]."""
    offsets = np.arange(-_SINC_ZEROS, _SINC_ZEROS) + 0.5
    taps = _windowed_sinc(offsets, 1.0, _SINC_ZEROS + 0.5)
    return taps / taps.sum()  # unity gain at DC


_HALFBAND_TAPS = _halfband_taps()


def upsample_2x(x: np.ndarray) -> np.ndarray:
    """Double the sample rate of int16 audio without delay (8 kHz -> 16 kHz).

    Even output samples are the input samples themselves, so nothing moves in time; odd
    ones are windowed-sinc interpolations. Stateless: each call mirrors its own edges.
    """
    samples = np.asarray(x, dtype=np.int16)
    n = len(samples)
    if n == 0:
        return np.zeros(0, dtype=np.int16)
    pad = _SINC_ZEROS
    padded = np.pad(samples.astype(np.float64), pad, mode="symmetric")
    # Window i covers padded[i+1 .. i+2*pad]: x[i-pad+1] .. x[i+pad] around the midpoint i+0.5.
    windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * pad)[1 : n + 1]
    out = np.empty(2 * n, dtype=np.float64)
    out[0::2] = samples
    out[1::2] = windows @ _HALFBAND_TAPS
    return _to_int16(out)


def _lowpass_cutoff(up: int, down: int) -> float:
    """Kernel cutoff relative to the input Nyquist: the output Nyquist when decimating,
    with 5 % margin so that little aliases back into the band."""
    return 1.0 if up >= down else 0.95 * up / down


@functools.lru_cache(maxsize=64)
def _interpolation_plan(
    up: int, down: int, first_in: int, first_out: int, count_in: int
) -> tuple[np.ndarray, np.ndarray]:
    """Tap indices and weights for the outputs falling inside one packet.

    Output j sits at input position j*down/up (exact rational arithmetic, so lengths never
    drift). Indices address a buffer holding `width` samples of left context, the packet,
    and `width` mirrored samples on the right.
    """
    cutoff = _lowpass_cutoff(up, down)
    half_width = _SINC_ZEROS / cutoff
    width = math.ceil(half_width)
    last_out = -(-(first_in + count_in) * up // down)  # ceil: first output past the packet
    positions = np.arange(first_out, last_out) * down / up - first_in
    first_tap = np.floor(positions).astype(np.int64) - width + 1
    taps = first_tap[:, None] + np.arange(2 * width)
    weights = _windowed_sinc(positions[:, None] - taps, cutoff, half_width)
    weights /= weights.sum(axis=1, keepdims=True)
    indices = (taps + width).astype(np.intp)
    indices.flags.writeable = False
    weights.flags.writeable = False
    return indices, weights


class _RateConverter:
    """Identity conversion; base for the real ones."""

    def convert(self, x: np.ndarray) -> np.ndarray:
        return x

    def reset(self) -> None:
        """Forget any context kept from earlier packets."""


class _Doubler(_RateConverter):
    def convert(self, x: np.ndarray) -> np.ndarray:
        return upsample_2x(x)


class _Resampler(_RateConverter):
    """Rational-ratio windowed-sinc resampler, per packet and without delay.

    The previous packet's tail is the left context; the right edge is mirrored because the
    next packet is not there yet (waiting for it would be latency). The mirror costs a
    small error in the last few output samples of each packet: ~60 dB SNR on a 1 kHz tone
    from 48 kHz, ~34 dB from 11025 Hz where the kernel is short relative to the period.
    """

    def __init__(self, in_rate: int, out_rate: int) -> None:
        divisor = math.gcd(in_rate, out_rate)
        self._up = out_rate // divisor
        self._down = in_rate // divisor
        self._width = math.ceil(_SINC_ZEROS / _lowpass_cutoff(self._up, self._down))
        self.reset()

    def reset(self) -> None:
        self._history: np.ndarray | None = None
        self._in_pos = 0  # input samples consumed (modulo a whole number of ratio periods)
        self._out_pos = 0  # output samples produced (same period)

    def convert(self, x: np.ndarray) -> np.ndarray:
        samples = np.asarray(x, dtype=np.float64)
        n = len(samples)
        if n == 0:
            return np.zeros(0, dtype=np.int16)
        width = self._width
        indices, weights = _interpolation_plan(self._up, self._down, self._in_pos, self._out_pos, n)
        left = self._history
        if left is None:
            left = np.pad(samples, (width, 0), mode="symmetric")[:width]
        right = np.pad(samples, (0, width), mode="symmetric")[n:]
        buffer = np.concatenate([left, samples, right])
        out = np.einsum("ij,ij->i", buffer[indices], weights)
        self._history = buffer[n : n + width].copy()
        self._advance(n, len(out))
        return _to_int16(out)

    def _advance(self, consumed: int, produced: int) -> None:
        self._in_pos += consumed
        self._out_pos += produced
        periods = self._in_pos // self._down  # keep the counters small (and the plan cache hot)
        self._in_pos -= periods * self._down
        self._out_pos -= periods * self._up


def _rate_converter(in_rate: int, out_rate: int) -> _RateConverter:
    if in_rate == out_rate:
        return _RateConverter()
    if out_rate == 2 * in_rate:
        return _Doubler()
    return _Resampler(in_rate, out_rate)


# --------------------------------------------------------------------------------------
# Decoder base class
# --------------------------------------------------------------------------------------


class Decoder:
    """Stateful decoder for one RTP stream: payload bytes -> int16 mono at `out_rate`."""

    out_rate: int

    def __init__(self, spec: CodecSpec, out_rate: int) -> None:
        self.spec = spec
        self.out_rate = out_rate
        self._native_rate = audio_rate(spec)
        self._converter = _rate_converter(self._native_rate, out_rate)

    def decode(self, payload: bytes, samples_hint: int | None = None) -> np.ndarray:
        """Decode one RTP payload.

        `samples_hint` is the packet's duration in RTP clock ticks when the caller knows it
        (e.g. the timestamp step to the next packet); only payloads that do not carry their
        own duration use it (comfort noise, G.729B SID frames).
        Raises ParseError on a corrupt payload.
        """
        native = self._decode_native(bytes(payload), samples_hint)
        return self._converter.convert(native)

    def reset(self) -> None:
        """Drop all decoder state (after loss or an SSRC change)."""
        self._reset_native()
        self._converter.reset()

    def _decode_native(self, payload: bytes, samples_hint: int | None) -> np.ndarray:
        raise NotImplementedError

    def _reset_native(self) -> None:
        """Stateless decoders have nothing to reset."""

    def _hinted_native_samples(self, samples_hint: int | None, default: int) -> int:
        """Convert a duration hint in RTP clock ticks to native audio samples."""
        if samples_hint is None or samples_hint <= 0:
            return default
        return samples_hint * self._native_rate // self.spec.clock_rate


# --------------------------------------------------------------------------------------
# Decoders computed in numpy / Python
# --------------------------------------------------------------------------------------


class _G711Decoder(Decoder):
    def __init__(self, spec: CodecSpec, out_rate: int) -> None:
        super().__init__(spec, out_rate)
        self._table = ULAW_TO_PCM16 if spec.name == "pcmu" else ALAW_TO_PCM16

    def _decode_native(self, payload: bytes, samples_hint: int | None) -> np.ndarray:
        return self._table[np.frombuffer(payload, dtype=np.uint8)]


class _L16Decoder(Decoder):
    """RFC 3551 §4.5.11: 16-bit signed, network byte order, channels interleaved."""

    def _decode_native(self, payload: bytes, samples_hint: int | None) -> np.ndarray:
        channels = self.spec.channels
        if len(payload) % (2 * channels):
            raise ParseError("l16.bad_length", f"{len(payload)} bytes for {channels} channel(s)")
        frames = np.frombuffer(payload, dtype=">i2").astype(np.int32).reshape(-1, channels)
        return (frames.sum(axis=1) // channels).astype(np.int16)


_IMA_STEPS = np.array(
    [7, 8, 9, 10, 11, 12, 13, 14, 16, 17, 19, 21, 23, 25, 28, 31, 34, 37, 41, 45, 50, 55,
     60, 66, 73, 80, 88, 97, 107, 118, 130, 143, 157, 173, 190, 209, 230, 253, 279, 307,
     337, 371, 408, 449, 494, 544, 598, 658, 724, 796, 876, 963, 1060, 1166, 1282, 1411,
     1552, 1707, 1878, 2066, 2272, 2499, 2749, 3024, 3327, 3660, 4026, 4428, 4871, 5358,
     5894, 6484, 7132, 7845, 8630, 9493, 10442, 11487, 12635, 13899, 15289, 16818, 18500,
     20350, 22385, 24623, 27086, 29794, 32767],
    dtype=np.int32,
)  # fmt: skip
_IMA_INDEX_ADJUST = (-1, -1, -1, -1, 2, 4, 6, 8)


def _ima_step_indices(codes: Sequence[int], first_index: int) -> np.ndarray:
    """Step-table index in force for each code (index adaptation depends on codes only)."""
    indices = np.empty(len(codes), dtype=np.intp)
    index = first_index
    for i, code in enumerate(codes):
        indices[i] = index
        index = min(88, max(0, index + _IMA_INDEX_ADJUST[code & 7]))
    return indices


def _ima_accumulate(first_value: int, deltas: np.ndarray) -> np.ndarray:
    """Running predictor value, saturating at int16 like the reference decoder."""
    values = first_value + np.cumsum(deltas)
    if values.min(initial=0) >= -32768 and values.max(initial=0) <= 32767:
        return values  # no saturation happened: the vectorised sum is exact
    value = first_value
    for i, delta in enumerate(deltas.tolist()):
        value = min(32767, max(-32768, value + delta))
        values[i] = value
    return values


class _Dvi4Decoder(Decoder):
    """IMA ADPCM with the RFC 3551 §4.5.1 per-packet header.

    The 4-byte header carries the predictor state reached at the end of the previous
    packet (value, step index), so packets decode independently of each other; samples
    are packed high nibble first (verified on the corpus: the other order is noise).
    """

    def _decode_native(self, payload: bytes, samples_hint: int | None) -> np.ndarray:
        if len(payload) < 4:
            raise ParseError("dvi4.truncated", f"{len(payload)} bytes, header needs 4")
        predicted = int.from_bytes(payload[0:2], "big", signed=True)
        step_index = payload[2]
        if step_index > 88:
            raise ParseError("dvi4.bad_step_index", str(step_index))
        data = np.frombuffer(payload, dtype=np.uint8, offset=4)
        codes = np.empty(2 * len(data), dtype=np.int32)
        codes[0::2] = data >> 4
        codes[1::2] = data & 0x0F
        steps = _IMA_STEPS[_ima_step_indices(codes.tolist(), step_index)]
        # delta = (code magnitude + 0.5) * step / 4, computed with the reference's truncations
        magnitude = (
            (steps >> 3)
            + np.where(codes & 4, steps, 0)
            + np.where(codes & 2, steps >> 1, 0)
            + np.where(codes & 1, steps >> 2, 0)
        )
        deltas = np.where(codes & 8, -magnitude, magnitude)
        return _ima_accumulate(predicted, deltas).astype(np.int16)


# ITU-T G.726 tables per bits/sample, indexed by code word: reconstruction levels in the
# log domain (DQLN), scale-factor multipliers W(I)/32 and speed-control values F(I)/0x200,
# as in G.726 and its reference implementation (restored to full scale in _G726State).
_G726_DQLN: dict[int, tuple[int, ...]] = {
    2: (116, 365, 365, 116),
    3: (-2048, 135, 273, 373, 373, 273, 135, -2048),
    4: (-2048, 4, 135, 213, 273, 323, 373, 425, 425, 373, 323, 273, 213, 135, 4, -2048),
    5: (-2048, -66, 28, 104, 169, 224, 274, 318, 358, 395, 429, 459, 488, 514, 539, 566,
        566, 539, 514, 488, 459, 429, 395, 358, 318, 274, 224, 169, 104, 28, -66, -2048),
}  # fmt: skip
_G726_W: dict[int, tuple[int, ...]] = {
    2: (-22, 439, 439, -22),
    3: (-4, 30, 137, 582, 582, 137, 30, -4),
    4: (-12, 18, 41, 64, 112, 198, 355, 1122, 1122, 355, 198, 112, 64, 41, 18, -12),
    5: (14, 14, 24, 39, 40, 41, 58, 100, 141, 179, 219, 280, 358, 440, 529, 696,
        696, 529, 440, 358, 280, 219, 179, 141, 100, 58, 41, 40, 39, 24, 14, 14),
}  # fmt: skip
_G726_F: dict[int, tuple[int, ...]] = {
    2: (0, 7, 7, 0),
    3: (0, 1, 2, 7, 7, 2, 1, 0),
    4: (0, 0, 0, 1, 1, 1, 3, 7, 7, 3, 1, 1, 1, 0, 0, 0),
    5: (0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 3, 4, 5, 6, 6, 6, 6, 5, 4, 3, 2, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0),
}  # fmt: skip
_FLOAT_NEGATIVE_ZERO = -992  # 0xFC20 as a C short: "-0" in the 4.6 floating format


def _int16(value: int) -> int:
    """Wrap to a C short, as the reference implementation's variables do."""
    return ((value + 0x8000) & 0xFFFF) - 0x8000


def _g726_fmult(an: int, srn: int) -> int:
    """G.726 FMULT: 16-bit coefficient times a value in the 4-bit-exp/6-bit-mantissa format."""
    anmag = an if an > 0 else (-an) & 0x1FFF
    anexp = anmag.bit_length() - 6
    anmant = 32 if anmag == 0 else (anmag >> anexp if anexp >= 0 else anmag << -anexp)
    wanexp = anexp + ((srn >> 6) & 0xF) - 13
    wanmant = (anmant * (srn & 0x3F) + 0x30) >> 4
    product = (wanmant << wanexp) & 0x7FFF if wanexp >= 0 else wanmant >> -wanexp
    return -product if (an ^ srn) < 0 else product


def _g726_float(value: int) -> int:
    """FLOAT A/B: a signed linear value in the 11-bit floating format used by the predictor."""
    if value == 0:
        return 0x20
    if value <= -32768:
        return _FLOAT_NEGATIVE_ZERO
    magnitude = abs(value)
    exponent = magnitude.bit_length()
    packed = (exponent << 6) + ((magnitude << 6) >> exponent)
    return packed if value > 0 else packed - 0x400


class _G726State:
    """ITU-T G.726 ADPCM decoder state, bit-faithful to the ITU/Sun reference algorithm."""

    def __init__(self, bits: int) -> None:
        self.dqln = _G726_DQLN[bits]
        self.wi = tuple(w << 5 for w in _G726_W[bits])
        self.fi = tuple(f << 9 for f in _G726_F[bits])
        self.sign_bit = 1 << (bits - 1)
        self.b_leak = 9 if bits == 5 else 8  # G.726 §4.2.7: 40 kbit/s leaks B(k) by 2^-9
        self.yl = 34816  # locked (slow) scale factor
        self.yu = 544  # unlocked (fast) scale factor
        self.dms = 0
        self.dml = 0
        self.ap = 0  # speed-control weight between yu and yl
        self.a = [0, 0]  # pole predictor coefficients
        self.b = [0] * 6  # zero predictor coefficients
        self.pk = [0, 0]
        self.dq = [32] * 6  # past quantised differences (floating format)
        self.sr = [32, 32]  # past reconstructed samples (floating format)
        self.td = 0  # tone detected

    def step_size(self) -> int:
        if self.ap >= 256:
            return self.yu
        y = self.yl >> 6
        dif = self.yu - y
        al = self.ap >> 2
        if dif > 0:
            y += (dif * al) >> 6
        elif dif < 0:
            y += (dif * al + 0x3F) >> 6
        return y

    def reconstruct(self, code: int, y: int) -> int:
        """Inverse adaptive quantiser: code word -> quantised difference (sign-magnitude)."""
        dql = self.dqln[code] + (y >> 2)
        negative = code & self.sign_bit
        if dql < 0:
            return -0x8000 if negative else 0
        exponent = (dql >> 7) & 15
        mantissa = 128 + (dql & 127)
        dq = (mantissa << 7) >> (14 - exponent)
        return dq - 0x8000 if negative else dq

    def decode(self, codes: Sequence[int]) -> list[int]:
        out = []
        fmult = _g726_fmult
        for code in codes:
            b, dq_hist, a, sr_hist = self.b, self.dq, self.a, self.sr
            sezi = _int16(
                fmult(b[0] >> 2, dq_hist[0]) + fmult(b[1] >> 2, dq_hist[1])
                + fmult(b[2] >> 2, dq_hist[2]) + fmult(b[3] >> 2, dq_hist[3])
                + fmult(b[4] >> 2, dq_hist[4]) + fmult(b[5] >> 2, dq_hist[5])
            )  # fmt: skip
            sei = _int16(sezi + fmult(a[1] >> 2, sr_hist[1]) + fmult(a[0] >> 2, sr_hist[0]))
            y = self.step_size()
            dq = self.reconstruct(code, y)
            se = sei >> 1
            sr = _int16(se - (dq & 0x3FFF) if dq < 0 else se + dq)
            dqsez = _int16(sr + (sezi >> 1) - se)
            self.update(y, self.wi[code], self.fi[code], dq, sr, dqsez)
            out.append(sr << 2)  # 14-bit reconstruction -> 16-bit scale
        return out

    def update(self, y: int, wi: int, fi: int, dq: int, sr: int, dqsez: int) -> None:
        pk0 = 1 if dqsez < 0 else 0
        magnitude = dq & 0x7FFF
        tone_transition = self.td and magnitude > self._transition_threshold()
        self._adapt_scale_factor(y, wi)
        a2p = self._adapt_predictor(pk0, dq, magnitude, dqsez, reset=bool(tone_transition))
        self.dq = [_g726_float(-(dq & 0x7FFF) if dq < 0 else dq)] + self.dq[:5]
        if magnitude == 0 and dq < 0:
            self.dq[0] = _FLOAT_NEGATIVE_ZERO
        self.sr = [_g726_float(sr), self.sr[0]]
        self.pk = [pk0, self.pk[0]]
        self.td = 0 if tone_transition else int(a2p < -11776)  # G.726 §4.2.8 tone detector
        self._adapt_speed_control(y, fi, bool(tone_transition))

    def _transition_threshold(self) -> int:
        ylint = self.yl >> 15
        ylfrac = (self.yl >> 10) & 0x1F
        thr = (31 << 10) if ylint > 9 else ((32 + ylfrac) << ylint)
        return (thr + (thr >> 1)) >> 1

    def _adapt_scale_factor(self, y: int, wi: int) -> None:
        self.yu = min(5120, max(544, y + ((wi - y) >> 5)))
        self.yl += self.yu + ((-self.yl) >> 6)

    def _adapt_predictor(self, pk0: int, dq: int, magnitude: int, dqsez: int, reset: bool) -> int:
        a, b = self.a, self.b
        if reset:  # a data/tone transition resets the predictor (G.726 §4.2.8 TRIGB)
            a[0] = a[1] = 0
            b[:] = [0] * 6
            return 0
        pks1 = pk0 ^ self.pk[0]
        a2p = a[1] - (a[1] >> 7)
        if dqsez != 0:
            fa1 = a[0] if pks1 else -a[0]
            if fa1 < -8191:
                a2p -= 0x100
            elif fa1 > 8191:
                a2p += 0xFF
            else:
                a2p += fa1 >> 5
            a2p += -0x80 if pk0 ^ self.pk[1] else 0x80
            a2p = min(12288, max(-12288, a2p))
        a[1] = a2p
        a[0] -= a[0] >> 8
        if dqsez != 0:
            a[0] += -192 if pks1 else 192
        a1_limit = 15360 - a2p
        a[0] = min(a1_limit, max(-a1_limit, a[0]))
        leak, past_dq = self.b_leak, self.dq
        for i in range(6):
            value = b[i] - (b[i] >> leak)
            if magnitude:
                value += 128 if (dq ^ past_dq[i]) >= 0 else -128
            b[i] = ((value + 0x8000) & 0xFFFF) - 0x8000  # _int16, inlined: hot loop
        return a2p

    def _adapt_speed_control(self, y: int, fi: int, tone_transition: bool) -> None:
        self.dms += (fi - self.dms) >> 5
        self.dml += ((fi << 2) - self.dml) >> 7
        if tone_transition:
            self.ap = 256
        elif y < 1536 or self.td or abs((self.dms << 2) - self.dml) >= (self.dml >> 3):
            self.ap += (0x200 - self.ap) >> 4
        else:
            self.ap += (-self.ap) >> 4


class _G726Decoder(Decoder):
    """G.726 at 16/24/32/40 kbit/s in either bit packing.

    "G726-xx" (RFC 3551 §4.5.4) packs the first code word into the least significant bits
    of the first octet; "AAL2-G726-xx" (ITU-T I.366.2, RFC 4856) into the most significant
    ones. Verified on the corpus: the swapped order decodes to noise.
    """

    def __init__(self, spec: CodecSpec, out_rate: int) -> None:
        super().__init__(spec, out_rate)
        self._bits = int(spec.name.rsplit("-", 1)[1]) // 8
        self._msb_first = spec.name.startswith("aal2-")
        weights = 1 << np.arange(self._bits)
        self._bit_weights = weights[::-1] if self._msb_first else weights
        self._state = _G726State(self._bits)

    def _reset_native(self) -> None:
        self._state = _G726State(self._bits)

    def _code_words(self, payload: bytes) -> list[int]:
        bits = np.unpackbits(
            np.frombuffer(payload, dtype=np.uint8), bitorder="big" if self._msb_first else "little"
        )
        whole = len(bits) - len(bits) % self._bits  # trailing pad bits, if any, carry no sample
        return (bits[:whole].reshape(-1, self._bits) @ self._bit_weights).tolist()

    def _decode_native(self, payload: bytes, samples_hint: int | None) -> np.ndarray:
        samples = self._state.decode(self._code_words(payload))
        return np.clip(np.array(samples, dtype=np.int32), -32768, 32767).astype(np.int16)


class _SilenceDecoder(Decoder):
    """RFC 3389 comfort noise: the gap is recorded as silence of the hinted length."""

    def _decode_native(self, payload: bytes, samples_hint: int | None) -> np.ndarray:
        return np.zeros(self._hinted_native_samples(samples_hint, 0), dtype=np.int16)


# --------------------------------------------------------------------------------------
# Decoders backed by FFmpeg (PyAV)
# --------------------------------------------------------------------------------------


@functools.cache
def _ffmpeg_has_decoder(name: str) -> bool:
    try:
        av.codec.Codec(name, "r")
    except (av.error.FFmpegError, ValueError):
        return False
    return True


def _frame_to_mono_int16(frame: av.AudioFrame) -> np.ndarray:
    """Any FFmpeg sample format / layout -> int16 mono (channels averaged)."""
    data = frame.to_ndarray()
    channels = frame.layout.nb_channels
    if not frame.format.is_planar:
        data = data.reshape(-1, channels).T
    if np.issubdtype(data.dtype, np.floating):
        data = data.astype(np.float64) * 32768.0
    elif data.dtype == np.int32:
        data = data.astype(np.float64) / 65536.0
    mono = data.astype(np.float64).mean(axis=0) if channels > 1 else data[0]
    return _to_int16(mono)


class _FfmpegDecoder(Decoder):
    """Generic PyAV decoder; subclasses split or rewrite payloads into FFmpeg packets."""

    ffmpeg_names: tuple[str, ...] = ()  # preferred first

    def __init__(self, spec: CodecSpec, out_rate: int) -> None:
        super().__init__(spec, out_rate)
        ffmpeg_name = self.available_ffmpeg_decoder(spec)
        if ffmpeg_name is None:
            raise UnsupportedCodec("codec.unsupported", f"no FFmpeg decoder for {spec.name}")
        self._ffmpeg_name: str = ffmpeg_name
        self._options = self._ffmpeg_options()
        self._context = self._open_context()

    @classmethod
    def ffmpeg_candidates(cls, spec: CodecSpec) -> tuple[str, ...]:
        return cls.ffmpeg_names

    @classmethod
    def available_ffmpeg_decoder(cls, spec: CodecSpec) -> str | None:
        return next((n for n in cls.ffmpeg_candidates(spec) if _ffmpeg_has_decoder(n)), None)

    def _ffmpeg_options(self) -> dict[str, str]:
        return {}

    def _open_context(self) -> av.AudioCodecContext:
        context = cast(av.AudioCodecContext, av.CodecContext.create(self._ffmpeg_name, "r"))
        context.sample_rate = self._native_rate
        context.layout = "mono"
        if self._options:
            context.options = self._options
        try:
            context.open()
        except av.error.FFmpegError as exc:
            raise UnsupportedCodec("codec.unsupported", f"{self._ffmpeg_name}: {exc}") from exc
        return context

    def _reset_native(self) -> None:
        self._context = self._open_context()

    def _decode_native(self, payload: bytes, samples_hint: int | None) -> np.ndarray:
        chunks = [self._decode_packet(p) for p in self._packets(payload, samples_hint)]
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)

    def _packets(self, payload: bytes, samples_hint: int | None) -> list[bytes]:
        """FFmpeg packets for one RTP payload (default: the payload itself)."""
        return [payload]

    def _decode_packet(self, packet: bytes) -> np.ndarray:
        try:
            frames = self._context.decode(av.Packet(packet))
        except (av.error.FFmpegError, ValueError) as exc:
            raise ParseError("codec.decode_failed", f"{self.spec.name}: {exc}") from exc
        if not frames:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate([_frame_to_mono_int16(f) for f in frames])


def _split_fixed_frames(payload: bytes, frame_size: int, codec: str) -> list[bytes]:
    if not payload or len(payload) % frame_size:
        raise ParseError(f"{codec}.bad_length", f"{len(payload)} bytes, frames are {frame_size}")
    return [payload[i : i + frame_size] for i in range(0, len(payload), frame_size)]


class _G722Decoder(_FfmpegDecoder):
    ffmpeg_names = ("g722",)


class _GsmDecoder(_FfmpegDecoder):
    """GSM 06.10 full rate, 33-byte frames (RFC 3551 §4.5.8)."""

    ffmpeg_names = ("gsm",)

    def _packets(self, payload: bytes, samples_hint: int | None) -> list[bytes]:
        frames = _split_fixed_frames(payload, 33, "gsm")
        if any(frame[0] >> 4 != 0xD for frame in frames):  # RFC 3551 §4.5.8: 0xD signature
            raise ParseError("gsm.bad_signature", "frame does not start with 0xD")
        return [payload]


class _G729Decoder(_FfmpegDecoder):
    """G.729/G.729A 10-byte frames, optionally ending in a 2-byte G.729B SID frame.

    RFC 3551 §4.5.6. FFmpeg does not decode SID frames; the silence they start lasts until
    the next packet, so the SID is rendered as silence of the hinted duration.
    """

    ffmpeg_names = ("g729",)
    _FRAME = 10
    _SID = 2

    def _decode_native(self, payload: bytes, samples_hint: int | None) -> np.ndarray:
        voice_frames, remainder = divmod(len(payload), self._FRAME)
        if remainder not in (0, self._SID) or not payload:
            raise ParseError("g729.bad_length", f"{len(payload)} bytes")
        voice_bytes = payload[: voice_frames * self._FRAME]
        voice = self._decode_packet(voice_bytes) if voice_bytes else np.zeros(0, dtype=np.int16)
        if not remainder:
            return voice
        sid_samples = self._hinted_native_samples(samples_hint, 0) - len(voice)
        return np.concatenate([voice, np.zeros(max(sid_samples, 80), dtype=np.int16)])


class _IlbcDecoder(_FfmpegDecoder):
    """iLBC (RFC 3952): 38-byte 20 ms frames or 50-byte 30 ms frames.

    The payload length tells the mode; fmtp "mode=" only breaks ties (lengths that are
    multiples of both). FFmpeg takes the mode from block_align and one frame per packet.
    """

    ffmpeg_names = ("ilbc",)
    _FRAME_BYTES = {20: 38, 30: 50}

    def __init__(self, spec: CodecSpec, out_rate: int) -> None:
        self._mode = 20 if fmtp_params(spec.fmtp).get("mode") == "20" else 30
        super().__init__(spec, out_rate)

    def _ffmpeg_options(self) -> dict[str, str]:
        return {"block_align": str(self._FRAME_BYTES[self._mode])}

    def _mode_for_length(self, length: int) -> int:
        fits = [mode for mode, size in self._FRAME_BYTES.items() if length and length % size == 0]
        if not fits:
            raise ParseError("ilbc.bad_length", f"{length} bytes")
        return self._mode if self._mode in fits else fits[0]

    def _packets(self, payload: bytes, samples_hint: int | None) -> list[bytes]:
        mode = self._mode_for_length(len(payload))
        if mode != self._mode:  # the sender switched frame size: start a decoder for it
            self._mode = mode
            self._options = self._ffmpeg_options()
            self._context = self._open_context()
        return _split_fixed_frames(payload, self._FRAME_BYTES[mode], "ilbc")


class _OpusDecoder(_FfmpegDecoder):
    """Opus (RFC 7587), decoded at 48 kHz and mixed to mono by the decoder.

    FFmpeg's libopus wrapper always outputs 48 kHz (it ignores a 16 kHz request), so the
    16 kHz/8 kHz recording rates come from `_Resampler`.
    """

    ffmpeg_names = ("libopus", "opus")

    def _packets(self, payload: bytes, samples_hint: int | None) -> list[bytes]:
        if not payload:
            raise ParseError("opus.empty", "zero-length Opus payload")
        return [payload]


class _SpeexDecoder(_FfmpegDecoder):
    """Speex narrow/wide/ultra-wide band by RTP clock rate (RFC 5574)."""

    ffmpeg_names = ("speex", "libspeex")


class _G723Decoder(_FfmpegDecoder):
    """G.723.1: 24/20-byte speech frames and 4-byte SID frames, self-describing."""

    ffmpeg_names = ("g723_1",)


# AMR frame sizes in bits by frame type (3GPP TS 26.101 / 26.201); missing types carry
# no speech we can decode (SID, lost, no data) and become silence.
_AMR_SPEECH_BITS = {
    "amr": (95, 103, 118, 134, 148, 159, 204, 244),
    "amr-wb": (132, 177, 253, 285, 317, 365, 397, 461, 477),
}
_AMR_SID_TYPES = {"amr": 8, "amr-wb": 9}
_AMR_SID_BITS = {"amr": 39, "amr-wb": 40}
_AMR_NO_DATA = 15


@dataclass(slots=True)
class _AmrFrame:
    frame_type: int
    quality: int
    speech: bytes  # speech bits left-aligned and zero-padded to whole octets


def _amr_frame_bits(codec: str, frame_type: int) -> int:
    speech = _AMR_SPEECH_BITS[codec]
    if frame_type < len(speech):
        return speech[frame_type]
    if frame_type == _AMR_SID_TYPES[codec]:
        return _AMR_SID_BITS[codec]
    if frame_type in (14, _AMR_NO_DATA):  # speech lost / no data (TS 26.101 Table 1a)
        return 0
    raise ParseError("amr.bad_frame_type", f"{codec} frame type {frame_type}")


def _parse_amr_toc(entries: list[tuple[int, int, int]], codec: str) -> list[tuple[int, int, int]]:
    """(follow, type, quality) TOC entries -> (type, quality, bits); checks the F-bit chain."""
    if not entries or entries[-1][0]:
        raise ParseError("amr.truncated", "table of contents does not end")
    return [(ft, q, _amr_frame_bits(codec, ft)) for _, ft, q in entries]


def _amr_octet_aligned_frames(payload: bytes, codec: str) -> list[_AmrFrame]:
    """RFC 4867 §4.4: CMR octet, one TOC octet per frame, then octet-padded frames."""
    entries: list[tuple[int, int, int]] = []
    pos = 1  # skip the codec mode request
    while pos < len(payload):
        toc = payload[pos]
        entries.append((toc >> 7, (toc >> 3) & 0x0F, (toc >> 2) & 1))
        pos += 1
        if not toc >> 7:
            break
    frames = []
    for frame_type, quality, bits in _parse_amr_toc(entries, codec):
        size = (bits + 7) // 8
        if pos + size > len(payload):
            raise ParseError("amr.truncated", f"frame type {frame_type} needs {size} bytes")
        frames.append(_AmrFrame(frame_type, quality, payload[pos : pos + size]))
        pos += size
    return frames


def _amr_bandwidth_efficient_frames(payload: bytes, codec: str) -> list[_AmrFrame]:
    """RFC 4867 §4.3: 4-bit CMR, 6-bit TOC entries and speech bits, all unpadded."""
    bits = np.unpackbits(np.frombuffer(payload, dtype=np.uint8))
    entries: list[tuple[int, int, int]] = []
    pos = 4
    while pos + 6 <= len(bits):
        toc = int(bits[pos : pos + 6] @ (1 << np.arange(5, -1, -1)))
        entries.append((toc >> 5, (toc >> 1) & 0x0F, toc & 1))
        pos += 6
        if not toc >> 5:
            break
    frames = []
    for frame_type, quality, size in _parse_amr_toc(entries, codec):
        if pos + size > len(bits):
            raise ParseError("amr.truncated", f"frame type {frame_type} needs {size} bits")
        frames.append(_AmrFrame(frame_type, quality, np.packbits(bits[pos : pos + size]).tobytes()))
        pos += size
    return frames


class _AmrDecoder(_FfmpegDecoder):
    """AMR / AMR-WB RTP payloads (RFC 4867), both payload formats, no interleaving.

    FFmpeg decodes the storage format (RFC 4867 §5.3): per frame one header octet
    (FT, Q) followed by the octet-padded speech bits, which is what we rebuild here.
    SID / no-data frames become 20 ms of silence (FFmpeg has no AMR comfort noise).
    """

    def __init__(self, spec: CodecSpec, out_rate: int) -> None:
        params = fmtp_params(spec.fmtp)
        if params.get("interleaving") or params.get("crc") == "1" or params.get("robust-sorting") == "1":
            raise UnsupportedCodec("codec.unsupported", f"{spec.name} with {spec.fmtp!r}")
        self._octet_aligned = params.get("octet-align") == "1"
        self._frame_samples = 160 if spec.name == "amr" else 320
        super().__init__(spec, out_rate)

    def _decode_native(self, payload: bytes, samples_hint: int | None) -> np.ndarray:
        if len(payload) < 2:
            raise ParseError("amr.truncated", f"{len(payload)} bytes")
        if self._octet_aligned:
            frames = _amr_octet_aligned_frames(payload, self.spec.name)
        else:
            frames = _amr_bandwidth_efficient_frames(payload, self.spec.name)
        return np.concatenate([self._decode_frame(frame) for frame in frames])

    def _decode_frame(self, frame: _AmrFrame) -> np.ndarray:
        if frame.frame_type >= len(_AMR_SPEECH_BITS[self.spec.name]) or not frame.quality:
            return np.zeros(self._frame_samples, dtype=np.int16)  # no usable speech in this slot
        header = bytes([(frame.frame_type << 3) | (frame.quality << 2)])
        return self._decode_packet(header + frame.speech)

    @classmethod
    def ffmpeg_candidates(cls, spec: CodecSpec) -> tuple[str, ...]:
        return ("amrnb",) if spec.name == "amr" else ("amrwb",)


# --------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------

_DECODERS: dict[str, type[Decoder]] = {
    "pcmu": _G711Decoder,
    "pcma": _G711Decoder,
    "g722": _G722Decoder,
    "g729": _G729Decoder,
    "gsm": _GsmDecoder,
    "ilbc": _IlbcDecoder,
    "opus": _OpusDecoder,
    "speex": _SpeexDecoder,
    "l16": _L16Decoder,
    "dvi4": _Dvi4Decoder,
    "amr": _AmrDecoder,
    "amr-wb": _AmrDecoder,
    "g723": _G723Decoder,
    "cn": _SilenceDecoder,
    **{name: _G726Decoder for name in _G726_NAMES},
}
_NOT_AUDIO = frozenset({"telephone-event", "red", "ulpfec", "rtx", "t140"})


def _unsupported_reason(spec: CodecSpec) -> tuple[str, str] | None:
    """Why `spec` cannot be decoded, as (reason, detail), or None when it can."""
    if spec.name in _NOT_AUDIO:
        return "codec.not_audio", spec.name
    factory = _DECODERS.get(spec.name)
    if factory is None:
        return "codec.unsupported", spec.name
    if spec.name == "speex" and spec.clock_rate not in _SPEEX_RATES:
        return "codec.bad_rate", f"speex/{spec.clock_rate}: only 8000, 16000, 32000 exist"
    if issubclass(factory, _FfmpegDecoder) and factory.available_ffmpeg_decoder(spec) is None:
        return "codec.unsupported", f"no FFmpeg decoder for {spec.name} in this PyAV build"
    return None


def is_decodable_audio(spec: CodecSpec) -> bool:
    """True when make_decoder(spec, ...) will succeed (CN counts: it decodes to silence)."""
    return _unsupported_reason(spec) is None


def make_decoder(spec: CodecSpec, out_rate: int) -> Decoder:
    """A fresh decoder for one RTP stream; raises UnsupportedCodec when we cannot decode it."""
    if out_rate <= 0:
        raise UnsupportedCodec("codec.bad_rate", f"output rate {out_rate}")
    problem = _unsupported_reason(spec)
    if problem is not None:
        raise UnsupportedCodec(*problem)
    return _DECODERS[spec.name](spec, out_rate)
