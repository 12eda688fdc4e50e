"""Canonical RIFF/WAVE PCM headers (44 bytes), for writers that stream raw frames."""

from __future__ import annotations

import struct

WAV_HEADER_BYTES = 44


def wav_header(rate: int, channels: int, frames: int, bits: int = 16) -> bytes:
    """The header of a PCM WAV holding `frames` frames (RIFF chunk sizes filled in)."""
    block_align = channels * bits // 8
    data_size = frames * block_align
    return (b"RIFF" + struct.pack("<I", 36 + data_size) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * block_align, block_align, bits)
            + b"data" + struct.pack("<I", data_size))
