"""Live audio reaches a sink with a piece size (the vault: one encrypted segment) in whole
pieces, and the recording is the same audio as with a sink that takes any length."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from capture.dialogs import Call
from capture.engine import CaptureEngine
from capture.pcapio import CaptureReader
from tests.gen import scenarios
from tests.gen.callgen import write_capture

SEGMENT_FRAMES = 2048     # an 8 KiB vault segment of 8 kHz stereo int16


class PieceSink:
    """Keeps every write; `flush_frames` as VaultSink has it (None: any length)."""

    def __init__(self, flush_frames: int | None) -> None:
        if flush_frames is not None:
            self.flush_frames = flush_frames
        self.recordings: dict[str, tuple[list[int], np.ndarray]] = {}

    def open(self, call: Call, rate: int, started_at: float) -> dict[str, Any]:
        return {"writes": [], "chunks": []}

    def write(self, handle: dict[str, Any], frames: np.ndarray) -> None:
        handle["writes"].append(len(frames))
        handle["chunks"].append(frames.copy())

    def change_rate(self, handle: dict[str, Any], new_rate: int) -> None:
        raise AssertionError("narrowband only here")

    def close(self, handle: dict[str, Any], metadata: dict[str, Any]) -> None:
        self.recordings[metadata["call_id"]] = (handle["writes"], np.concatenate(handle["chunks"]))

    def discard(self, handle: dict[str, Any]) -> None:
        pass

    def not_recorded(self, metadata: dict[str, Any]) -> None:
        pass


def record(capture: Path, sink: PieceSink) -> PieceSink:
    engine = CaptureEngine(sink)
    for batch in CaptureReader(capture, chunk_bytes=4096).batches():   # small batches (~0.1 s), as live
        engine.feed(batch)
    engine.finish()
    return sink


def test_a_sink_with_a_piece_size_gets_whole_pieces_and_the_same_audio(tmp_path: Path) -> None:
    write_capture(str(tmp_path / "calls.pcap"), scenarios.long_call() + scenarios.concurrent(4), seed=5)
    pieces = record(tmp_path / "calls.pcap", PieceSink(SEGMENT_FRAMES))
    anything = record(tmp_path / "calls.pcap", PieceSink(None))
    assert pieces.recordings.keys() == anything.recordings.keys() and pieces.recordings
    for call_id, (writes, audio) in pieces.recordings.items():
        closing = len(writes) - 1
        while closing > 0 and writes[closing] % SEGMENT_FRAMES:   # the close hands over the rest
            closing -= 1
        assert all(n % SEGMENT_FRAMES == 0 for n in writes[:closing]), (call_id, writes)
        np.testing.assert_array_equal(audio, anything.recordings[call_id][1])
    # the sink without a piece size is written on (almost) every batch: the other far less often
    assert sum(len(w) for w, _ in pieces.recordings.values()) < sum(len(w) for w, _ in anything.recordings.values())
