"""A reference recording built straight from the ground truth, for testing the checks themselves.

Payloads are decoded with PyAV's FFmpeg decoders (independent of the generator's encoders) and
placed where the ground truth says. If the checks in :mod:`tests.gen.audiocheck` accept this
recording and reject deliberately broken variants of it, they are sound.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import cast

import av
import numpy as np

from tests.gen.callgen import CallTruth, PlacedPayload
from tests.gen.media import codec_spec

_DECODERS = {"pcmu": "pcm_mulaw", "pcma": "pcm_alaw", "g722": "g722"}


def decode_payloads(codec: str, payloads: list[bytes]) -> np.ndarray:
    """Decode consecutive payloads of one stream; returns int16 samples at the codec's rate."""
    ctx = cast(av.AudioCodecContext, av.CodecContext.create(_DECODERS[codec], "r"))
    ctx.sample_rate = codec_spec(codec).sample_rate
    ctx.layout = "mono"
    out = [frame.to_ndarray().reshape(-1) for p in payloads for frame in ctx.decode(av.Packet(p))]
    return np.concatenate(out).astype(np.int16) if out else np.zeros(0, dtype=np.int16)


def _place_leg(track: np.ndarray, truth: CallTruth, packets: list[PlacedPayload], rate: int) -> None:
    """Decode runs of same-codec packets with one decoder (G.722 is stateful), place each packet."""
    run_start = 0
    for i in range(1, len(packets) + 1):
        if i < len(packets) and packets[i].codec == packets[run_start].codec:
            continue
        run = packets[run_start:i]
        spec = codec_spec(run[0].codec)
        pcm = decode_payloads(run[0].codec, [p.payload for p in run])
        for n, packet in enumerate(run):
            chunk = pcm[n * spec.samples_per_packet:(n + 1) * spec.samples_per_packet]
            chunk = np.repeat(chunk, rate // spec.sample_rate)   # crude 8k → 16k: images far above the tones
            start = round(truth.offset(packet.at) * rate)
            end = min(len(track), start + len(chunk))
            track[start:end] = chunk[:end - start]
        run_start = i


def render_reference(truth: CallTruth) -> np.ndarray:
    """Stereo int16 audio (frames, 2) at ``truth.sample_rate``, as a correct engine would write it."""
    rate = truth.sample_rate
    audio = np.zeros((round(truth.duration_s * rate), 2), dtype=np.int16)
    for leg in truth.legs:
        _place_leg(audio[:, leg.channel], truth, leg.audio, rate)
    return audio


def reference_metadata(truth: CallTruth) -> dict:
    """The JSON fields the checks look at, with correct values."""
    assert truth.first_media_ts is not None
    started = datetime.fromtimestamp(truth.first_media_ts, UTC)
    return {
        "call_id": truth.call_id, "caller": truth.caller, "callee": truth.callee,
        "started_at": started.strftime("%Y-%m-%dT%H:%M:%S.") + f"{started.microsecond // 1000:03d}Z",
        "duration_s": round(truth.duration_s, 3), "sample_rate": truth.sample_rate, "channels": 2,
        "codecs": list(truth.codecs),
    }
