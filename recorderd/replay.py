"""`recorderd replay`: decode captures offline into recordings (plaintext, for forensics)."""

from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from capture.engine import CaptureEngine, EngineSettings, RecordingSink
from capture.errors import ParseError
from capture.pcapio import CaptureReader

PROGRESS_EVERY_S = 1.0
# A later file whose first packet is this much older than what came before is not a
# continuation of the same capture: the calls still open are finished first.
CONTINUATION_SLACK_S = 60.0


@dataclass
class ReplaySummary:
    files: int = 0
    frames: int = 0
    calls: int = 0
    recordings: int = 0
    not_recorded: int = 0
    sip_messages: int = 0
    rtp_packets: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    unreadable: list[str] = field(default_factory=list)   # "path: why" per file that could not be read
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "files": self.files, "frames": self.frames, "calls": self.calls,
            "recordings": self.recordings, "not_recorded": self.not_recorded,
            "sip_messages": self.sip_messages, "rtp_packets": self.rtp_packets,
            "parse_errors": dict(sorted(self.errors.items())), "unreadable": self.unreadable,
            "seconds": round(self.seconds, 3),
        }


def replay_files(paths: list[Path], sink: RecordingSink, settings: EngineSettings | None = None,
                 progress: TextIO | None = None) -> ReplaySummary:
    """Feed every capture through one engine, in order; finish all calls at the end."""
    engine = CaptureEngine(sink, settings)
    started = time.monotonic()
    last_report = started
    summary = ReplaySummary()
    for path in paths:
        summary.files += 1
        try:
            reader = CaptureReader(path)
            first = True
            for batch in reader.batches():
                if first and len(batch):
                    if engine.now and float(batch.ts.min()) < engine.now - CONTINUATION_SLACK_S:
                        engine.finish()
                        engine.now = 0.0
                    first = False
                engine.feed(batch)
                if progress is not None and time.monotonic() - last_report >= PROGRESS_EVERY_S:
                    last_report = time.monotonic()
                    progress.write(f"\r{path.name}: {reader.bytes_read * 100 // max(reader.size, 1)}% "
                                   f"{engine.counters['frames']} packets, {len(engine.media)} calls active")
                    progress.flush()
        except ParseError as err:  # not a capture, or a header we cannot read: name it, go on
            summary.unreadable.append(f"{path}: {err}")
            continue
        except OSError as err:
            summary.unreadable.append(f"{path}: {err.strerror or err}")
            continue
        summary.errors.update(reader.errors)
    engine.finish()
    if progress is not None:
        progress.write("\n")
    summary.frames = engine.counters["frames"]
    summary.calls = engine.counters["calls"]
    summary.recordings = engine.counters["recordings"]
    summary.not_recorded = engine.counters["not_recorded"]
    summary.sip_messages = engine.counters["sip_messages"]
    summary.rtp_packets = engine.counters["rtp_packets"]
    summary.errors.update(engine.errors)
    summary.seconds = time.monotonic() - started
    return summary


def progress_stream() -> TextIO | None:
    return sys.stderr if sys.stderr.isatty() else None
