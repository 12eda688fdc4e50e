"""Media for the generator: codec table, tone synthesis, encoding, RTP and RFC 4733 packing."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import cast

import av
import numpy as np

from tests.gen.g711 import encode_alaw, encode_ulaw

PTIME_S = 0.02
RTP_CLOCK = 8000            # every codec here uses an 8000 Hz RTP clock (G.722 too: RFC 3551 §4.5.2)
TS_PER_PACKET = int(RTP_CLOCK * PTIME_S)
TONE_AMPLITUDE = 8000       # int16 peak amplitude of every generated tone
TELEPHONE_EVENT_PT = 101
DTMF_VOLUME = 10            # RFC 4733 §2.3.4: power level in -dBm0 (0..63)

_RTP_HEADER = struct.Struct("!BBHII")
_EVENT_PAYLOAD = struct.Struct("!BBH")
_DTMF_CODES = {**{str(d): d for d in range(10)}, "*": 10, "#": 11, "A": 12, "B": 13, "C": 14, "D": 15}


@dataclass(frozen=True, slots=True)
class CodecSpec:
    """One audio codec as it appears on the wire and in SDP."""

    name: str               # encoding name in a=rtpmap (RFC 3551 §6)
    payload_type: int       # static payload type
    sample_rate: int        # audio sampling rate (16000 for G.722, whose RTP clock is still 8000)

    @property
    def samples_per_packet(self) -> int:
        """Audio samples carried by one 20 ms packet."""
        return int(self.sample_rate * PTIME_S)

    @property
    def rtpmap(self) -> str:
        """The a=rtpmap value (encoding name / RTP clock rate)."""
        return f"{self.payload_type} {self.name}/{RTP_CLOCK}"


CODECS: dict[str, CodecSpec] = {
    "pcmu": CodecSpec("PCMU", 0, 8000),
    "pcma": CodecSpec("PCMA", 8, 8000),
    "g722": CodecSpec("G722", 9, 16000),
}


def codec_spec(codec: str) -> CodecSpec:
    """Look a codec up by its short name (pcmu, pcma, g722)."""
    try:
        return CODECS[codec]
    except KeyError:
        raise ValueError(f"unsupported codec {codec!r}; choose from {sorted(CODECS)}") from None


def tone(freq_hz: float, sample_rate: int, first_sample: int, count: int) -> np.ndarray:
    """``count`` int16 samples of a sine tone, phase-continuous in the absolute sample index."""
    n = np.arange(first_sample, first_sample + count, dtype=np.float64)
    return np.round(TONE_AMPLITUDE * np.sin(2 * np.pi * freq_hz * n / sample_rate)).astype(np.int16)


def encode(codec: str, pcm: np.ndarray) -> bytes:
    """Encode int16 mono PCM at the codec's sampling rate; returns the concatenated bitstream."""
    if codec == "pcmu":
        return encode_ulaw(pcm).tobytes()
    if codec == "pcma":
        return encode_alaw(pcm).tobytes()
    if codec == "g722":
        return _encode_g722(pcm)
    raise ValueError(f"unsupported codec {codec!r}")


def _encode_g722(pcm: np.ndarray) -> bytes:
    """G.722 at 64 kbit/s through PyAV: 320 samples (20 ms at 16 kHz) become 160 bytes."""
    ctx = cast(av.AudioCodecContext, av.CodecContext.create("g722", "w"))
    ctx.sample_rate = 16000
    ctx.layout = "mono"
    ctx.format = "s16"
    ctx.open()
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm, dtype=np.int16).reshape(1, -1),
                                       format="s16", layout="mono")
    frame.sample_rate = 16000
    packets = list(ctx.encode(frame)) + list(ctx.encode(None))
    data = b"".join(bytes(p) for p in packets)
    if len(data) != len(pcm) // 2:
        raise RuntimeError(f"g722 encoder returned {len(data)} bytes for {len(pcm)} samples")
    return data


def tone_payloads(codec: str, freq_hz: float, first_slot: int, slots: int) -> list[bytes]:
    """Encoded 20 ms payloads for packet slots ``first_slot .. first_slot+slots-1`` of one tone.

    The encoder runs over the whole contiguous range, as a phone's encoder would.
    """
    spec = codec_spec(codec)
    spp = spec.samples_per_packet
    data = encode(codec, tone(freq_hz, spec.sample_rate, first_slot * spp, slots * spp))
    size = len(data) // slots
    return [data[i * size:(i + 1) * size] for i in range(slots)]


def pcm_payloads(codec: str, pcm: np.ndarray, first_slot: int, slots: int) -> list[bytes]:
    """Encoded 20 ms payloads for slots ``first_slot .. first_slot+slots-1`` of given audio
    (int16 mono at the codec's rate, sample 0 at slot 0; zeros past its end)."""
    spec = codec_spec(codec)
    spp = spec.samples_per_packet
    window = np.zeros(slots * spp, dtype=np.int16)
    piece = np.asarray(pcm, dtype=np.int16)[first_slot * spp:(first_slot + slots) * spp]
    window[:len(piece)] = piece
    data = encode(codec, window)
    size = len(data) // slots
    return [data[i * size:(i + 1) * size] for i in range(slots)]


def rtp_header(payload_type: int, seq: int, timestamp: int, ssrc: int, marker: bool = False) -> bytes:
    """A 12-byte RTP fixed header (RFC 3550 §5.1), version 2, no CSRC/extension/padding."""
    return _RTP_HEADER.pack(0x80, (0x80 if marker else 0) | payload_type,
                            seq & 0xFFFF, timestamp & 0xFFFFFFFF, ssrc)


def dtmf_event_payload(digit: str, end: bool, duration_ts: int) -> bytes:
    """An RFC 4733 §2.3 named-event payload for a DTMF digit."""
    try:
        code = _DTMF_CODES[digit.upper()]
    except KeyError:
        raise ValueError(f"not a DTMF digit: {digit!r}") from None
    return _EVENT_PAYLOAD.pack(code, (0x80 if end else 0) | DTMF_VOLUME, duration_ts)
