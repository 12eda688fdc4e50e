"""Must show 4: a writer SIGKILLed at random points, 50 times.

The writer is a real process recording a capture of many overlapping calls into the vault
and catalog (the engine with the storage sink, as `replay --store` and the daemon run it),
printing each recording id once its close has returned. After each kill, recovery runs as it
does at start-up; then every recording the writer reported committed must be complete and
decrypt end to end, `PRAGMA integrity_check` must say ok, no row may be left active, and the
recordings that were half-written must be partial, with a note, and their kept audio intact.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recorderd.appliance import open_appliance
from recorderd.cli import main
from recorderd.config import load
from storage.vault import VaultReader
from tests.gen.callgen import CallPlan, write_capture

KILLS = 50
REPO = Path(__file__).resolve().parents[2]
WRITER = """
import sys
from pathlib import Path
from recorderd.appliance import open_appliance
from recorderd.config import engine_settings, load
from recorderd.replay import replay_files
from storage.recordingsink import VaultSink

class Reporting(VaultSink):
    def close(self, handle, metadata):
        super().close(handle, metadata)
        print(handle.call.recording_id, flush=True)

app = open_appliance(load(Path(sys.argv[1])), warnings=None)
sink = Reporting(app.vault_dir, app.keys, app.catalog, app.audit)
replay_files([Path(sys.argv[2])], sink, engine_settings(app.config))
app.close()
print("DONE", flush=True)
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("crash")
    plans = [CallPlan(call_id=f"crash-{i}@pbx.example", start_ts=1_700_000_000.0 + 0.25 * i, duration_s=4.0,
                      caller_port=20000 + 2 * i, callee_port=24000 + 2 * i) for i in range(80)]
    capture = root / "calls.pcap"
    write_capture(str(capture), plans, seed=5)
    assert main(["init", str(root / "template")]) == 0
    return root, capture


def start_writer(config: Path, capture: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", WRITER, str(config), str(capture)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def check_after_crash(config: Path, committed: list[str]) -> tuple[int, int]:
    """(complete, partial) after recovery; asserts everything the module docstring says."""
    with open_appliance(load(config), warnings=None) as app:
        reader = app.catalog.reader()
        try:
            assert reader.integrity_check() == "ok"
            assert reader.active_recordings() == []
            rows = reader.search(None, limit=1000).rows
            by_id = {r.recording_id: r for r in rows}
            for rid in committed:
                assert by_id[rid].state == "complete", rid
            for row in rows:
                if row.state == "partial":
                    assert row.partial_note and "recovered after a recorder crash" in row.partial_note
                if row.vault_path:
                    key = reader.get_key(row.recording_id)
                    data_key = app.keys.unwrap(key.kek_id, key.wrapped_key, row.recording_id)
                    with VaultReader(app.vault_dir / row.vault_path, data_key, row.recording_id) as vault:
                        info = vault.verify()
                    assert info.digest == row.vault_sha256
            leftovers = list((config.parent / "vault").rglob("*.part"))
            assert leftovers == [], leftovers
            on_disk = {str(p.resolve()) for p in (config.parent / "vault").rglob("*.rdv")}
            assert on_disk == {str((app.vault_dir / r.vault_path).resolve()) for r in rows if r.vault_path}
            states = [r.state for r in rows]
            return states.count("complete"), states.count("partial")
        finally:
            reader.close()


def test_sigkill_at_random_points(setup: tuple[Path, Path], tmp_path: Path) -> None:
    root, capture = setup
    # one undisturbed run says how long the whole job takes
    box = tmp_path / "full"
    shutil.copytree(root / "template", box)
    started = time.monotonic()
    full = start_writer(box / "recorderd.toml", capture)
    out, err = full.communicate(timeout=120)
    duration = time.monotonic() - started
    assert full.returncode == 0 and out.strip().endswith("DONE"), err
    rng = random.Random(2024)
    partial_seen = complete_seen = 0
    for kill in range(KILLS):
        box = tmp_path / f"kill-{kill}"
        shutil.copytree(root / "template", box)
        writer = start_writer(box / "recorderd.toml", capture)
        time.sleep(rng.uniform(0.2, 1.0) * duration)
        writer.send_signal(signal.SIGKILL)
        out, _ = writer.communicate(timeout=30)
        committed = [line for line in out.split() if line != "DONE"]
        complete, partial = check_after_crash(box / "recorderd.toml", committed)
        complete_seen += complete
        partial_seen += partial
        shutil.rmtree(box)
    # the kills landed while calls were being written, and after some had been committed
    assert partial_seen > 0 and complete_seen > 0
