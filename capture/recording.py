"""The recording's metadata (the JSON half of the recording contract in DESIGN.md)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from capture.dialogs import Call
from capture.streams import MediaStream

METADATA_VERSION = 1


def iso_utc(ts: float | None) -> str | None:
    """ISO 8601 UTC with milliseconds, e.g. 2024-05-01T10:00:00.123Z."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _leg(channel: int, streams: list[MediaStream]) -> dict[str, Any]:
    mine = [s for s in streams if s.channel == channel]
    gaps = sorted((g for s in mine for g in s.gaps), key=lambda g: g.offset_s)
    expected = sum(s.expected for s in mine)
    received = sum(s.unique for s in mine)
    return {
        "channel": channel,
        "streams": len(mine),
        "expected": expected,
        "received": received,
        "lost": sum(s.lost for s in mine),
        "duplicates": sum(s.duplicates for s in mine),
        "out_of_order": sum(s.out_of_order for s in mine),
        "ratio": round(received / expected, 4) if expected else None,
        "gaps": [{"offset_s": g.offset_s, "duration_s": g.duration_s, "packets": g.packets} for g in gaps],
    }


def call_identity(call: Call) -> dict[str, Any]:
    """Fields shared by recordings and not-recorded rows."""
    return {
        "call_id": call.call_id,
        "recording_id": call.recording_id,
        "caller": call.caller,
        "callee": call.callee,
        "caller_uri": call.caller_uri,
        "callee_uri": call.callee_uri,
        "direction": "unknown",
        "invited_at": iso_utc(call.invited_at),
        "answered_at": iso_utc(call.answered_at),
        "ended_at": iso_utc(call.ended_at),
        "end_reason": call.end_reason,
        "final_status": call.final_status or None,
        "sip_headers": dict(call.headers),
    }


def recording_metadata(call: Call, streams: list[MediaStream], *, started_at: float, frames: int,
                       rate: int, late_samples: int, encrypted: bool, decodable: bool,
                       refused_samples: int = 0, kernel_drops: int = 0) -> dict[str, Any]:
    audio_codecs = sorted({c for s in streams for c in s.codecs} - {"telephone-event", "cn"})
    events = sorted((d for s in streams for d in s.dtmf.values()), key=lambda d: d.offset_s)
    dtmf = [d for d in events if len(d.digit) == 1]
    # RFC 4733 §3.3: events 32-49 are fax and modem tones (ANS, ANSam, CNG ...), not keys
    tones = [d for d in events if len(d.digit) != 1]
    legs = [_leg(0, streams), _leg(1, streams)]
    return {
        "metadata_version": METADATA_VERSION,
        **call_identity(call),
        "started_at": iso_utc(started_at),
        "started_at_epoch": started_at,
        "duration_s": round(frames / rate, 3),
        "sample_rate": rate,
        "channels": 2,
        "codecs": audio_codecs,
        "dtmf": [{"digit": d.digit, "channel": d.channel, "offset_s": d.offset_s,
                  "duration_ms": d.duration_ms} for d in dtmf],
        "tone_events": [{"event": d.digit, "channel": d.channel, "offset_s": d.offset_s,
                         "duration_ms": d.duration_ms} for d in tones],
        "streams": [s.describe() for s in streams],
        "completeness": {
            "legs": legs,
            "late_samples": late_samples,
            # samples placed absurdly far ahead of the timeline (bad timestamps): not written
            "refused_samples": refused_samples,
            # packets the kernel dropped on the capture while this call was recorded (any call's)
            "kernel_drops": kernel_drops,
            "both_legs": all(leg["received"] for leg in legs),
        },
        "encryption": {"srtp": encrypted, "decodable": decodable,
                       "note": "" if decodable else "encrypted, not decodable"},
        "consent": {"played": None, "audible": None, "offset_s": None},
        "partial": False,
    }
