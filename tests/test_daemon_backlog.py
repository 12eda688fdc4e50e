"""The daemon's engine thread behind a backlog (issue 4): blocks captured seconds ago are still
queued while the wall clock runs on. Capture time must follow the packets, not the clock:
a wall-clock tick would flush the calls' audio as silence before the queued packets arrive,
and their audio would be lost as late samples although every packet was captured."""

from __future__ import annotations

import json
import time
from pathlib import Path

from capture.engine import CaptureEngine
from capture.pcapio import CaptureReader
from recorderd.appliance import open_appliance
from recorderd.cli import main
from recorderd.config import engine_settings
from recorderd.daemon import Daemon, disk_guard, vault_sink
from recorderd.sdnotify import Heartbeats
from tests.gen import scenarios
from tests.gen.callgen import write_capture

BACKLOG_S = 30.0   # the capture ends this long before the engine sees it


def test_a_backlog_is_recorded_whole_however_far_the_wall_clock_ran_ahead(tmp_path: Path) -> None:
    assert main(["init", str(tmp_path / "box")]) == 0
    config = tmp_path / "box" / "recorderd.toml"
    config.write_text(config.read_text().replace("min_free_mb = 512", "min_free_mb = 0")
                      .replace("resume_free_mb = 1024", "resume_free_mb = 0"))
    write_capture(str(tmp_path / "call.pcap"), scenarios.clean(), seed=3)
    batches = list(CaptureReader(tmp_path / "call.pcap", chunk_bytes=4096).batches())
    assert len(batches) > 5, "the call must arrive in several blocks"
    shift = time.time() - BACKLOG_S - float(batches[-1].ts.max())

    daemon = Daemon(config)
    daemon.config["capture"]["interfaces"] = []   # no live capture: the queue is filled below
    daemon.appliance = open_appliance(daemon.config)
    daemon.engine = CaptureEngine(vault_sink(daemon.appliance, daemon.config), engine_settings(daemon.config))
    daemon.disk = disk_guard(daemon.appliance.vault_dir, daemon.config["daemon"])
    daemon.heartbeats = Heartbeats(["engine"], 30.0)
    for batch in batches:   # every block captured BACKLOG_S ago, all waiting in the queue
        batch.ts += shift
        daemon.queue.put(batch)
    daemon.stop_event.set()       # the loop drains the queue, then returns
    daemon._engine_loop()
    daemon.engine.finish()
    catalog = daemon.appliance.catalog
    rows = catalog.writer.call(lambda c: c.execute("SELECT state, metadata FROM recordings").fetchall())
    daemon.appliance.close()

    assert len(rows) == 1 and rows[0][0] == "complete"
    completeness = json.loads(str(rows[0][1]))["completeness"]
    assert completeness["late_samples"] == 0, completeness
