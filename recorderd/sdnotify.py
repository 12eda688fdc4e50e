"""systemd service notifications: readiness, status, stopping and a stage-aware watchdog.

The daemon runs as Type=notify (systemd/recorderd.service). The notification protocol is
sd_notify(3): newline-separated KEY=VALUE assignments in one datagram to the AF_UNIX socket named
by $NOTIFY_SOCKET (a path, or "@name" for the abstract namespace). systemd-python's
`systemd.daemon.notify` (sd_notify here) wraps libsystemd's sd_notify, which handles both address forms.

The watchdog (WatchdogSec= in the unit, passed as $WATCHDOG_USEC) must mean "the recorder is
recording", not "some thread is alive": every pipeline stage beats its `Heartbeats` entry, and
`WatchdogThread` sends WATCHDOG=1 only while no stage is stale. A stalled stage therefore stops
the pings, systemd kills the service (SIGABRT) and Restart=on-failure brings it back.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping

# Imported by its full dotted name: the repository's systemd/ directory (unit files) is a
# namespace package to mypy, and `from systemd import daemon` would be looked up there.
from systemd.daemon import notify as sd_notify

log = logging.getLogger(__name__)


def _one_line(text: str) -> str:
    """A value that cannot break the newline-separated sd_notify message format."""
    return " ".join(text.splitlines())


def watchdog_interval_from_env(environ: Mapping[str, str]) -> float | None:
    """Seconds between watchdog pings, or None when the watchdog is not enabled for us.

    Follows sd_watchdog_enabled(3): WATCHDOG_USEC is the timeout in microseconds; when
    WATCHDOG_PID is set the watchdog is meant for that process only. The man page advises
    pinging at half the timeout, which is what we return.
    """
    usec = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID", "")
    try:
        timeout_us = int(usec)
        if pid and int(pid) != os.getpid():
            return None
    except ValueError:
        return None
    if timeout_us <= 0:
        return None
    return timeout_us / 1_000_000 / 2


class Notifier:
    """Sends sd_notify messages; every method is a no-op when NOTIFY_SOCKET is not set
    (not started by systemd, or by a unit that is not Type=notify)."""

    def __init__(self) -> None:
        self.enabled: bool = bool(os.environ.get("NOTIFY_SOCKET"))
        self.watchdog_interval_s: float | None = watchdog_interval_from_env(os.environ)

    def _send(self, *assignments: str) -> None:
        if not self.enabled:
            return
        try:
            sd_notify("\n".join(assignments))
        except OSError as err:
            # A lost notification must not take the recorder down; if the manager is really
            # gone the missing watchdog pings will tell it.
            log.warning("sd_notify failed: %s", err)

    def ready(self, status: str) -> None:
        """READY=1: start-up is complete (capture open); systemd moves the unit to active."""
        self._send("READY=1", f"STATUS={_one_line(status)}")

    def status(self, text: str) -> None:
        """STATUS=: the one-line text `systemctl status` shows."""
        self._send(f"STATUS={_one_line(text)}")

    def watchdog(self) -> None:
        """WATCHDOG=1: keep-alive ping for WatchdogSec=."""
        self._send("WATCHDOG=1")

    def stopping(self, status: str = "") -> None:
        """STOPPING=1: shutdown has begun (open calls are being finalised)."""
        if status:
            self._send("STOPPING=1", f"STATUS={_one_line(status)}")
        else:
            self._send("STOPPING=1")


class Heartbeats:
    """Last beat time of each pipeline stage; a stage is stale when it has not beaten for
    more than max_age_s. Every stage counts as fresh at construction (start-up grace).

    Thread-safety: the set of stages is fixed at construction and a beat only replaces one
    dict value, which is atomic under the GIL, so beat() needs no lock on the hot path.
    """

    def __init__(self, stages: list[str], max_age_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not stages:
            raise ValueError("Heartbeats needs at least one stage")
        if max_age_s <= 0:
            raise ValueError(f"max_age_s must be positive, got {max_age_s}")
        self.max_age_s = max_age_s
        self._clock = clock
        now = clock()
        self._last: dict[str, float] = dict.fromkeys(stages, now)

    @property
    def stages(self) -> list[str]:
        return list(self._last)

    def beat(self, stage: str) -> None:
        """Record that `stage` made progress now."""
        if stage not in self._last:
            raise KeyError(f"unknown pipeline stage {stage!r} (known: {', '.join(self._last)})")
        self._last[stage] = self._clock()

    def stale(self) -> list[str]:
        """Stages whose last beat is older than max_age_s, in declaration order."""
        now = self._clock()
        return [stage for stage, last in list(self._last.items()) if now - last > self.max_age_s]


class WatchdogThread:
    """Every interval_s: if no stage is stale, send WATCHDOG=1 (and STATUS= from status_fn);
    otherwise withhold the ping and log which stages stalled (once per change)."""

    def __init__(self, notifier: Notifier, heartbeats: Heartbeats, interval_s: float,
                 status_fn: Callable[[], str] | None = None) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        self.notifier = notifier
        self.heartbeats = heartbeats
        self.interval_s = interval_s
        self.status_fn = status_fn
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reported_stale: list[str] = []

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("WatchdogThread already started")
        self._thread = threading.Thread(target=self._run, name="sd-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop pinging and wait for the thread (at most one interval)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.tick()
            self._stop.wait(self.interval_s)

    def tick(self) -> None:
        """One watchdog round (the thread calls this every interval)."""
        stale = self.heartbeats.stale()
        self._report_change(stale)
        if stale:
            return
        self._send_status()
        self.notifier.watchdog()

    def _report_change(self, stale: list[str]) -> None:
        if stale == self._reported_stale:
            return
        if stale:
            log.error("pipeline stalled: no heartbeat for over %.1f s from %s; withholding watchdog pings",
                      self.heartbeats.max_age_s, ", ".join(stale))
            self.notifier.status(f"stalled: {', '.join(stale)}")
        else:
            log.warning("pipeline recovered: every stage is beating again; watchdog pings resume")
        self._reported_stale = stale

    def _send_status(self) -> None:
        if self.status_fn is None:
            return
        try:
            text = self.status_fn()
        except Exception:
            # A broken status line is not a stalled pipeline: log it and keep pinging.
            log.exception("status function failed")
            return
        self.notifier.status(text)
