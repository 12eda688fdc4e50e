"""RTP (RFC 3550) header parsing, vectorised over many packets, and RFC 4733 events.

The live and replay paths see hundreds of thousands of RTP packets per second, so headers are
parsed with numpy over whole batches: one fancy-indexing pass per field instead of a Python
loop per packet. A scalar parser serves the odd single packet.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from capture.errors import ParseError

RTP_VERSION = 2
RTP_FIXED_HEADER = 12


@dataclass(slots=True)
class RtpHeaders:
    """Parsed headers of n packets (arrays of length n), with where each payload lies."""

    valid: np.ndarray          # bool: a well-formed RTP header with a non-negative payload
    marker: np.ndarray         # bool
    payload_type: np.ndarray   # int16
    seq: np.ndarray            # int64 (16-bit value)
    timestamp: np.ndarray      # int64 (32-bit value)
    ssrc: np.ndarray           # int64 (32-bit value)
    payload_offset: np.ndarray  # int64, absolute offset in the buffer
    payload_length: np.ndarray  # int64


def _be16(buf: np.ndarray, at: np.ndarray) -> np.ndarray:
    return (buf[at].astype(np.int64) << 8) | buf[at + 1]


def _be32(buf: np.ndarray, at: np.ndarray) -> np.ndarray:
    return (_be16(buf, at) << 16) | _be16(buf, at + 2)


def parse_rtp_headers(buf: np.ndarray, offsets: np.ndarray, lengths: np.ndarray) -> RtpHeaders:
    """Parse the RTP headers of the packets at buf[offsets[i]:offsets[i]+lengths[i]].

    Handles CSRC lists, the header extension (RFC 3550 §5.3.1) and padding (§5.1, the last
    octet counts the padding octets). Packets too short for what their header announces are
    marked invalid rather than raising, so one bad packet never costs the batch.
    """
    n = len(offsets)
    offsets = offsets.astype(np.int64, copy=False)
    lengths = lengths.astype(np.int64, copy=False)
    limit = len(buf)
    ok = lengths >= RTP_FIXED_HEADER
    safe = np.where(ok, offsets, 0)
    b0 = buf[safe]
    b1 = buf[np.minimum(safe + 1, limit - 1)] if n else np.zeros(0, np.uint8)
    ok &= (b0 >> 6) == RTP_VERSION
    csrc_count = (b0 & 0x0F).astype(np.int64)
    header_len = RTP_FIXED_HEADER + 4 * csrc_count
    has_ext = (b0 & 0x10) != 0
    ext_at = safe + header_len
    ext_ok = ok & has_ext & (header_len + 4 <= lengths)
    ok &= ~has_ext | ext_ok
    ext_words = np.zeros(n, np.int64)
    if ext_ok.any():
        at = np.where(ext_ok, ext_at + 2, 0)
        ext_words = np.where(ext_ok, _be16(buf, at), 0)
    header_len = header_len + np.where(has_ext, 4 + 4 * ext_words, 0)
    ok &= header_len <= lengths
    has_pad = (b0 & 0x20) != 0
    last = np.where(ok & has_pad, safe + lengths - 1, 0)
    pad = np.where(ok & has_pad, buf[last].astype(np.int64), 0)
    payload_length = lengths - header_len - pad
    ok &= payload_length >= 0
    head = np.where(ok, safe, 0)
    return RtpHeaders(
        valid=ok,
        marker=(b1 & 0x80) != 0,
        payload_type=(b1 & 0x7F).astype(np.int16),
        seq=np.where(ok, _be16(buf, head + 2), 0),
        timestamp=np.where(ok, _be32(buf, head + 4), 0),
        ssrc=np.where(ok, _be32(buf, head + 8), 0),
        payload_offset=np.where(ok, offsets + header_len, 0),
        payload_length=np.where(ok, payload_length, 0),
    )


def unwrap(values: np.ndarray, previous: int | None, bits: int) -> np.ndarray:
    """Extend wrapping counters (RTP seq: 16 bits, timestamp: 32 bits) to int64.

    Each step is taken as the signed difference modulo 2**bits from the packet before it
    (RFC 3550 appendix A.1 does the same for sequence numbers), so wrap-around and moderate
    reordering both come out right. `previous` is the extended value of the last packet of
    the stream seen before this batch.
    """
    modulus = 1 << bits
    half = modulus >> 1
    values = values.astype(np.int64, copy=False)
    if previous is None:
        start = int(values[0])
    else:
        start = previous + ((int(values[0]) - previous + half) % modulus) - half
    steps = ((np.diff(values) + half) % modulus) - half
    out = np.empty(len(values), np.int64)
    out[0] = start
    if len(values) > 1:
        np.cumsum(steps, out=out[1:])
        out[1:] += start
    return out


@dataclass(slots=True, frozen=True)
class TelephoneEvent:
    """One RFC 4733 §2.3 named event payload."""

    event: int
    end: bool
    volume: int
    duration: int  # in RTP timestamp units

    @property
    def digit(self) -> str:
        """DTMF events 0-15 (RFC 4733 §3.2 table 7) as the key printed on the phone."""
        return "0123456789*#ABCD"[self.event] if self.event < 16 else f"event-{self.event}"


def parse_telephone_event(payload: bytes) -> TelephoneEvent:
    if len(payload) < 4:
        raise ParseError("rtp.event_truncated", f"telephone-event payload of {len(payload)} bytes")
    return TelephoneEvent(
        event=payload[0],
        end=bool(payload[1] & 0x80),
        volume=payload[1] & 0x3F,
        duration=(payload[2] << 8) | payload[3],
    )
