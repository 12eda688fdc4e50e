"""The analysis worker's queue: recordings queued as they finish, resumed per channel after a
kill, purged recordings' transcripts gone from the catalog and the index; the CPU budget and
the low priority at the process edge."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from analysis import store
from analysis.rules import load_rules
from analysis.transcribe import ChannelTranscript, TextSegment
from analysis.worker import AnalysisSettings, AnalysisWorker, CpuBudget
from recorderd.appliance import Appliance, open_appliance
from recorderd.config import load
from tests.analysis.conftest import new_appliance, store_calls
from tests.gen.callgen import CallPlan


class Killed(BaseException):
    """Stands for kill -9: nothing after it runs (not an Exception, nothing catches it)."""


class FakeTranscriber:
    name = "fake"

    def __init__(self, die_on_call: int | None = None) -> None:
        self.calls = 0
        self.die_on_call = die_on_call

    def transcribe(self, audio: np.ndarray, pause: Callable[[], None] = lambda: None) -> ChannelTranscript:
        self.calls += 1
        pause()
        if self.calls == self.die_on_call:
            raise Killed
        return ChannelTranscript("en", None, (TextSegment(0.1, 0.9, f"zebra words number {self.calls}", 0.9),))


@pytest.fixture()
def appliance(tmp_path: Path) -> Iterator[Appliance]:
    config = new_appliance(tmp_path)
    plans = [CallPlan(call_id=f"tones-{i}@test", start_ts=1_767_225_600.0 + 60 * i, duration_s=2.0,
                      caller_port=34000 + 4 * i, callee_port=34002 + 4 * i) for i in range(2)]
    store_calls(config, plans, tmp_path)
    app = open_appliance(load(config), recover=False, warnings=None)
    try:
        yield app
    finally:
        app.close()


def worker(app: Appliance, transcriber: FakeTranscriber) -> AnalysisWorker:
    return AnalysisWorker(app.catalog, app.keys, app.vault_dir, app.audit, AnalysisSettings(cpu_budget_percent=100.0),
                          load_rules("default"), lambda: transcriber)


def query(app: Appliance, sql: str, *params: object) -> list[tuple]:
    reader = app.catalog.reader()
    try:
        return reader.conn.execute(sql, params).fetchall()
    finally:
        reader.close()


def found(app: Appliance, words: str) -> list[str]:
    return [row.recording_id for row in app.catalog.search(words).rows]


def test_finished_recordings_are_queued_and_a_killed_worker_resumes_at_the_next_channel(appliance: Appliance) -> None:
    queued = query(appliance, "SELECT state, attempts FROM analysis_queue ORDER BY enqueued_at, recording_id")
    assert queued == [("pending", 0), ("pending", 0)]          # by trigger, as replay finished them
    first = worker(appliance, FakeTranscriber(die_on_call=2))
    with pytest.raises(Killed):
        first.run_one()                                         # dies transcribing channel 1
    [(rid, state, attempts)] = query(appliance, "SELECT recording_id, state, attempts FROM analysis_queue "
                                     "WHERE state != 'pending'")
    assert (state, attempts) == ("running", 1)
    assert query(appliance, "SELECT channel, role FROM transcript_channels") == [(0, "customer")]
    assert found(appliance, "zebra words number 1") == [rid]    # channel 0 is searchable already

    fresh = FakeTranscriber()
    second = worker(appliance, fresh)
    assert second.recover() == (1, 0)
    assert second.run(once=True) == 2
    assert fresh.calls == 3                                     # channel 1 of the first, both of the second
    assert query(appliance, "SELECT state, attempts FROM analysis_queue WHERE recording_id = ?", rid) == [("done", 2)]
    assert query(appliance, "SELECT channel FROM transcript_channels WHERE recording_id = ? ORDER BY channel",
                 rid) == [(0,), (1,)]
    assert set(found(appliance, "zebra words")) == {rid, *[r for (r,) in query(
        appliance, "SELECT recording_id FROM analysis_queue WHERE recording_id != ?", rid)]}
    reads = query(appliance, "SELECT object, outcome FROM audit WHERE action = 'analysis.read' ORDER BY seq")
    assert [r[0] for r in reads].count(rid) == 2 and {r[1] for r in reads} == {"ok"}
    with appliance.catalog.reader() as reader:
        status = store.status(reader.conn, 0.0)
    assert status["counts"]["done"] == 2 and status["backlog"] == 0


def test_a_recording_killed_too_often_is_given_up(appliance: Appliance) -> None:
    def stuck(conn):
        conn.execute("UPDATE analysis_queue SET state = 'running', attempts = 3")
    appliance.catalog.writer.call(stuck)
    assert worker(appliance, FakeTranscriber()).recover() == (0, 2)
    errors = {e for (e,) in query(appliance, "SELECT error FROM analysis_queue WHERE state = 'failed'")}
    assert errors == {"stopped while running 3 time(s); gave up"}


def test_purging_removes_what_was_said_and_enqueue_again_skips_it(appliance: Appliance) -> None:
    worker(appliance, FakeTranscriber()).run(once=True)
    rid = found(appliance, "zebra words number 1")[0]
    appliance.catalog.writer.call(lambda conn: conn.execute(
        "UPDATE recordings SET state = 'purged', wrapped_key = NULL, key_id = NULL WHERE recording_id = ?", (rid,)))
    for table in ("transcript_segments", "phrase_hits", "call_analysis", "transcript_channels"):
        assert query(appliance, f"SELECT count(*) FROM {table} WHERE recording_id = ?", rid) == [(0,)], table
    assert rid not in found(appliance, "zebra words")
    assert query(appliance, "SELECT state, error FROM analysis_queue WHERE recording_id = ?", rid) == [
        ("skipped", "purged")]
    queued = appliance.catalog.writer.call(lambda conn: store.enqueue(conn, all_finished=True, again=True, now=1.0))
    assert queued == 1                                         # only the other, still finished, recording


def test_cpu_budget_sleeps_what_the_share_needs() -> None:
    clock = {"cpu": 0.0, "wall": 0.0}
    slept: list[float] = []
    budget = CpuBudget(50.0, cpus=2, cpu_clock=lambda: clock["cpu"], wall_clock=lambda: clock["wall"],
                       sleep=slept.append)
    clock.update(cpu=3.0, wall=1.0)        # 3 CPU-seconds in 1 s; 50 % of 2 cores = 1 CPU-second/s
    budget.pause()
    assert slept == [pytest.approx(2.0)]
    clock.update(cpu=3.5, wall=4.0)        # under budget: no sleep
    budget.pause()
    assert slept == [pytest.approx(2.0)]


def test_lower_priority_applies_to_the_process() -> None:
    code = ("import json, os; from recorderd.commands.analysis import lower_priority; "
            "problems = lower_priority(19, True); "
            "print(json.dumps([problems, os.getpriority(os.PRIO_PROCESS, 0), os.sched_getscheduler(0) == os.SCHED_IDLE]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True,
                          cwd=Path(__file__).resolve().parents[2], env={**os.environ, "PYTHONPATH": "."})
    problems, nice, idle = json.loads(done.stdout)
    assert problems == [] and nice == 19 and idle is True
