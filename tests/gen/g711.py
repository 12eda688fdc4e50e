"""Vectorised G.711 encoders (ITU-T G.711; the classic Sun ``g711.c`` algorithm) for the generator.

Only encoding lives here: tests decode with PyAV's own ``pcm_mulaw``/``pcm_alaw`` decoders so
that the generator is checked against an implementation it does not share code with.
"""

from __future__ import annotations

import numpy as np

# Segment end points (G.711 Table 1/2 expressed for 14-bit µ-law / 13-bit A-law magnitudes).
_ULAW_SEG_END = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF], dtype=np.int32)
_ALAW_SEG_END = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF], dtype=np.int32)
_ULAW_BIAS = 0x84 >> 2
_ULAW_CLIP = 8159


def encode_ulaw(pcm: np.ndarray) -> np.ndarray:
    """Encode int16 linear PCM to µ-law bytes (uint8), element-wise."""
    x = np.asarray(pcm, dtype=np.int32) >> 2
    negative = x < 0
    mask = np.where(negative, 0x7F, 0xFF)
    magnitude = np.minimum(np.abs(x), _ULAW_CLIP) + _ULAW_BIAS
    seg = np.searchsorted(_ULAW_SEG_END, magnitude, side="left")
    mantissa = (magnitude >> (seg + 1)) & 0x0F
    code = np.where(seg >= 8, 0x7F, (np.minimum(seg, 7) << 4) | mantissa)
    return (code ^ mask).astype(np.uint8)


def encode_alaw(pcm: np.ndarray) -> np.ndarray:
    """Encode int16 linear PCM to A-law bytes (uint8), element-wise."""
    x = np.asarray(pcm, dtype=np.int32) >> 3
    negative = x < 0
    mask = np.where(negative, 0x55, 0xD5)
    magnitude = np.where(negative, -x - 1, x)
    seg = np.searchsorted(_ALAW_SEG_END, magnitude, side="left")
    shift = np.where(seg < 2, 1, seg)
    mantissa = (magnitude >> np.minimum(shift, 15)) & 0x0F
    code = np.where(seg >= 8, 0x7F, (np.minimum(seg, 7) << 4) | mantissa)
    return (code ^ mask).astype(np.uint8)
