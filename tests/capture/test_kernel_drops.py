"""Kernel drops reach the recordings that were active when they happened (issue 4): the
engine cannot tell whose packets the kernel dropped, so each active call carries the count."""

from __future__ import annotations

import json
from pathlib import Path

from capture.engine import CaptureEngine
from capture.pcapio import CaptureReader, split_by_time
from capture.wavsink import WavDirectorySink
from tests.gen.callgen import CallPlan, write_capture

T0 = 1_767_225_600.0


def test_drops_mark_the_calls_active_at_the_time(tmp_path: Path) -> None:
    plans = [CallPlan("early@gen", T0, 3.0, caller_port=40000, callee_port=40002),
             CallPlan("later@gen", T0 + 20.0, 3.0, caller_port=41000, callee_port=41002)]
    capture = tmp_path / "two.pcap"
    write_capture(str(capture), plans, seed=4)
    sink = WavDirectorySink(tmp_path / "out")
    engine = CaptureEngine(sink)
    told = False
    pieces = [piece for batch in CaptureReader(capture).batches() for piece in split_by_time(batch, 1.0)]
    for batch in pieces:                          # a second of capture at a time, as live
        engine.feed(batch)
        if not told and engine.media and engine.now > T0 + 1.5:
            engine.note_kernel_drops(7)          # while only the first call is being recorded
            engine.note_kernel_drops(0)
            told = True
    engine.finish()
    sink.finish()
    assert told
    drops = {}
    for meta_path in (tmp_path / "out").glob("*.json"):
        if meta_path.name != "not-recorded.json":
            meta = json.loads(meta_path.read_text())
            drops[meta["call_id"]] = meta["completeness"]["kernel_drops"]
    assert drops == {"early@gen": 7, "later@gen": 0}
