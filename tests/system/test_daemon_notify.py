"""The daemon under a systemd-like supervisor (issue 4, Must show 3).

The daemon runs in this process (its threads, a real AF_PACKET capture on lo) with
NOTIFY_SOCKET and WATCHDOG_USEC set, as systemd sets them. The test reads the notify socket
like systemd does: READY=1 with STATUS=, periodic WATCHDOG=1; then the engine stage is made to
hang, and the pings must stop until it moves again; at the end STOPPING=1.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from recorderd import daemon as daemon_module
from recorderd.cli import main
from recorderd.daemon import Daemon
from storage.catalog import CatalogReader

WATCHDOG_USEC = 600_000   # pings every 0.3 s


class Supervisor:
    """Collects notify messages with their arrival times, as systemd would receive them."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self.running = True
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while self.running:
            try:
                self.messages.append((time.monotonic(), self.sock.recv(4096).decode()))
            except (TimeoutError, OSError):
                continue

    def pings_between(self, start: float, end: float) -> int:
        return sum(1 for t, m in self.messages if start <= t < end and "WATCHDOG=1" in m)

    def close(self) -> None:
        self.running = False
        self.thread.join(timeout=2)
        self.sock.close()


def test_ready_watchdog_status_stall_and_stopping(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert main(["init", str(tmp_path / "box")]) == 0
    config = tmp_path / "box" / "recorderd.toml"
    text = config.read_text().replace('metrics_listen = "127.0.0.1:9464"', 'metrics_listen = "off"')
    text = text.replace("stage_max_age_s = 10.0", "stage_max_age_s = 1.0")
    text = text.replace("sync_interval_s = 1.0", "sync_interval_s = 0.2")
    text = text.replace("min_free_mb = 512", "min_free_mb = 0").replace("resume_free_mb = 1024", "resume_free_mb = 0")
    config.write_text(text)
    supervisor = Supervisor(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    monkeypatch.setenv("WATCHDOG_USEC", str(WATCHDOG_USEC))
    daemon = Daemon(config)
    try:
        daemon.start()
        time.sleep(1.5)
        healthy_from = time.monotonic()
        time.sleep(1.5)
        assert supervisor.pings_between(healthy_from, time.monotonic()) >= 3
        assert any("READY=1" in m and "STATUS=" in m for _, m in supervisor.messages)
        assert any(m.startswith("STATUS=") or "\nSTATUS=" in m for _, m in supervisor.messages[1:])

        release = threading.Event()
        assert daemon.engine is not None
        real_tick = daemon.engine.tick

        def hung_tick(now: float) -> None:   # the engine stage hangs (e.g. a stuck disk write)
            release.wait(30)
            real_tick(now)

        daemon.engine.tick = hung_tick  # type: ignore[method-assign]
        time.sleep(2.0)                  # stage_max_age_s passes
        stalled_from = time.monotonic()
        time.sleep(1.5)
        assert supervisor.pings_between(stalled_from, time.monotonic()) == 0, "pings must stop while stalled"
        assert any("stalled" in m for _, m in supervisor.messages)
        daemon.engine.tick = real_tick  # type: ignore[method-assign]
        release.set()
        time.sleep(1.0)
        resumed_from = time.monotonic()
        time.sleep(1.5)
        assert supervisor.pings_between(resumed_from, time.monotonic()) >= 2, "pings resume"

        # the vault-sync stage: syncfs(2) of the vault runs every sync_interval_s, and a
        # filesystem that cannot sync (a stuck disk) stops the pings as well
        syncs: list[int] = []
        unstick = threading.Event()

        class StuckDisk:
            def syncfs(self, fd: int) -> int:
                syncs.append(fd)
                unstick.wait(30)
                return int(real_libc.syncfs(fd))

        real_libc = daemon_module._LIBC
        monkeypatch.setattr(daemon_module, "_LIBC", StuckDisk())
        time.sleep(2.0)
        stuck_from = time.monotonic()
        time.sleep(1.5)
        assert len(syncs) == 1, "the sync thread called syncfs and is stuck in it"
        assert supervisor.pings_between(stuck_from, time.monotonic()) == 0, "pings stop while the disk is stuck"
        monkeypatch.setattr(daemon_module, "_LIBC", real_libc)
        unstick.set()
        time.sleep(1.0)
        synced_from = time.monotonic()
        time.sleep(1.5)
        assert supervisor.pings_between(synced_from, time.monotonic()) >= 2, "pings resume after the sync"
    finally:
        daemon.stop()
        time.sleep(0.3)
        supervisor.close()
    assert any("STOPPING=1" in m for _, m in supervisor.messages)
    # the kernel's counters went into the catalog for the minute(s) the daemon ran
    with CatalogReader(tmp_path / "box" / "catalog.db") as reader:
        rows = reader.capture_minutes()
    assert rows and {interface for _, interface, _, _ in rows} == {"lo"}
    assert all(minute % 60 == 0 and packets >= 0 and drops >= 0 for minute, _, packets, drops in rows)
