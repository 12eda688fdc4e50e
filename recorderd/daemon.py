"""`recorderd run`: the appliance recording live from the mirror port.

Threads:
- one capture thread per interface: TPACKET_V3 blocks → a bounded queue. It does nothing
  else, so the kernel ring is drained at once (decoding, encryption and disk writes happen
  in the engine thread);
- the engine thread: batches → CaptureEngine → VaultSink (vault + catalog); with no packets
  it advances on the wall clock (timeouts, flushes); it also watches the disk floor;
- the vault-sync thread: one syncfs() of the vault's filesystem every storage.sync_interval_s,
  so live audio reaches the disk within about a second without an fsync per call in the
  engine thread;
- the watchdog thread: WATCHDOG=1 only while every stage's heartbeat is fresh;
- the metrics server (localhost).
SIGTERM finishes every open call and stops within the stop timeout; SIGHUP reloads the log
level and the disk thresholds.
"""

from __future__ import annotations

import ctypes
import logging
import os
import queue
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capture.afpacket import LiveCapture, RingSettings
from capture.bpf import DEFAULT_FILTER, Instruction, compile_filter
from capture.engine import CaptureEngine
from capture.pcapio import FrameBatch, merge_batches
from recorderd.appliance import Appliance, open_appliance
from recorderd.capturestats import CaptureMinutes, MinuteRow
from recorderd.config import ConfigError, engine_settings, load
from recorderd.consent.sweep import ConsentStage, start_consent_stage
from recorderd.logsetup import configure_logging
from recorderd.metrics import Metric, MetricsServer
from recorderd.sdnotify import Heartbeats, Notifier, WatchdogThread
from storage.recordingsink import VaultSink
from storage.spool import SpoolWatcher, start_watcher

log = logging.getLogger("recorderd.daemon")
MIB = 1 << 20
QUEUE_POLL_S = 0.05
MERGE_BYTES = 16 << 20     # at most this much captured data per engine batch
_LIBC = ctypes.CDLL(None, use_errno=True)


@dataclass
class DiskGuard:
    """Recording pauses under min_free and resumes above resume_free (hysteresis)."""

    path: Path
    min_free: int
    resume_free: int
    paused: bool = False

    def free_bytes(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def check(self, engine: CaptureEngine) -> None:
        free = self.free_bytes()
        if not self.paused and free < self.min_free:
            self.paused = True
            engine.pause("disk_full")
            log.error("disk free %d MiB under the floor of %d MiB: recording paused, active calls closed",
                      free // MIB, self.min_free // MIB)
        elif self.paused and free >= self.resume_free:
            self.paused = False
            engine.resume()
            log.warning("disk free %d MiB again: recording resumed", free // MIB)


def vault_sink(appliance: Appliance, config: dict[str, dict[str, Any]]) -> VaultSink:
    """The engine's sink in the live daemon: small live segments, made durable by the
    vault-sync thread rather than an fsync per call."""
    return VaultSink(appliance.vault_dir, appliance.keys, appliance.catalog, appliance.audit, actor="recorderd",
                     segment_size=config["storage"]["live_segment_kib"] * 1024, fsync_every_segments=0)


def disk_guard(vault_dir: Path, daemon_cfg: dict[str, Any]) -> DiskGuard:
    return DiskGuard(vault_dir, daemon_cfg["min_free_mb"] * MIB, daemon_cfg["resume_free_mb"] * MIB)


def capture_filter(capture_cfg: dict[str, Any]) -> list[Instruction]:
    """capture.bpf_filter compiled for the kernel ("default": capture.bpf.DEFAULT_FILTER)."""
    expression = DEFAULT_FILTER if capture_cfg["bpf_filter"] == "default" else capture_cfg["bpf_filter"]
    return compile_filter(expression)


def ring_settings(capture_cfg: dict[str, Any]) -> RingSettings:
    return RingSettings(block_size=capture_cfg["ring_block_kib"] * 1024, block_count=capture_cfg["ring_blocks"])


@dataclass
class RecordingFigures:
    """What the status line and the metrics say about recording."""

    active: int                 # calls being recorded now
    oldest: float | None        # start of the oldest of them
    counters: Counter[str]      # CaptureEngine.counters
    errors: Counter[str]        # parse errors by reason
    paused: bool                # under the disk floor


@dataclass
class LiveStats:
    packets: Counter[str] = field(default_factory=Counter)   # per interface, from the kernel
    drops: Counter[str] = field(default_factory=Counter)


class Daemon:
    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.config = load(config_path)
        self.stop_event = threading.Event()
        self.queue: queue.Queue[FrameBatch] = queue.Queue(maxsize=self.config["daemon"]["queue_batches"])
        self.notifier = Notifier()
        self.captures: list[LiveCapture] = []
        self.threads: list[threading.Thread] = []
        self.live = LiveStats()
        self.minutes = CaptureMinutes()
        self.appliance: Appliance | None = None
        self.engine: CaptureEngine | None = None
        self.disk: DiskGuard | None = None
        self.metrics: MetricsServer | None = None
        self.heartbeats: Heartbeats | None = None
        self.watchdog: WatchdogThread | None = None
        self.spool: SpoolWatcher | None = None     # spool import, when [spool] enabled (storage/spool.py)
        self.consent: ConsentStage | None = None   # consent check + linking (recorderd/consent/sweep.py)

    # -- start ---------------------------------------------------------------------------------

    def start(self) -> None:
        daemon_cfg, capture_cfg = self.config["daemon"], self.config["capture"]
        sync_interval = self.config["storage"]["sync_interval_s"]
        if sync_interval >= daemon_cfg["stage_max_age_s"]:
            raise ConfigError(f"storage.sync_interval_s: {sync_interval} must be shorter than "
                              f"daemon.stage_max_age_s ({daemon_cfg['stage_max_age_s']}), or the watchdog starves")
        configure_logging(daemon_cfg["log_level"])
        self.appliance = open_appliance(self.config)
        for rec in self.appliance.recovered:
            log.warning("recovered %s: %s", rec.recording_id, rec.note)
        stages = self._open_pipeline()
        self.consent = start_consent_stage(self.appliance, self.config)   # None unless consent.enabled
        stages += ["spool"] if self.config["spool"]["enabled"] else []
        self.heartbeats = Heartbeats(stages, daemon_cfg["stage_max_age_s"])
        if self.config["spool"]["enabled"]:
            beat = self.heartbeats.beat
            self.spool = start_watcher(self.config["spool"], self.appliance.vault_dir, self.appliance.keys,
                                       self.appliance.catalog, self.appliance.audit, lambda: beat("spool"))
        self._start_pipeline()
        self._start_metrics(daemon_cfg["metrics_listen"])
        interval = self.notifier.watchdog_interval_s
        if interval:
            self.watchdog = WatchdogThread(self.notifier, self.heartbeats, interval, self.status_line)
            self.watchdog.start()
        self.appliance.audit.append("recorderd", "system", "start", ",".join(capture_cfg["interfaces"]), "ok")
        self.notifier.ready(self.status_line())
        log.info("recording on %s", ", ".join(capture_cfg["interfaces"]))

    def _open_pipeline(self) -> list[str]:
        """This process's recording pipeline: the engine writing into the vault, the disk
        floor, the captures (opened: capture is on from here). Returns its watchdog stages.
        (With capture.workers > 1, recorderd/fanout.py opens worker processes instead.)"""
        assert self.appliance is not None
        capture_cfg = self.config["capture"]
        self.engine = CaptureEngine(vault_sink(self.appliance, self.config), engine_settings(self.config))
        self.disk = disk_guard(self.appliance.vault_dir, self.config["daemon"])
        program, ring = capture_filter(capture_cfg), ring_settings(capture_cfg)
        for interface in capture_cfg["interfaces"]:
            self.captures.append(LiveCapture(interface, bpf=program, promiscuous=capture_cfg["promiscuous"],
                                             ring=ring))
        sync = ["vault-sync"] if self.config["storage"]["sync_interval_s"] else []
        return [f"capture:{c}" for c in capture_cfg["interfaces"]] + ["engine"] + sync

    def _start_pipeline(self) -> None:
        sync_interval = self.config["storage"]["sync_interval_s"]
        if sync_interval:
            self._spawn("vault-sync", self._sync_loop, sync_interval)
        for name, capture in zip(self.config["capture"]["interfaces"], self.captures, strict=True):
            self._spawn(f"capture-{name}", self._capture_loop, name, capture)
        self._spawn("engine", self._engine_loop)

    def _stop_pipeline(self) -> None:
        """Captures closed, the queue drained, every open call finished."""
        for capture in self.captures:
            capture.close()
        for thread in self.threads:
            # the engine thread drains the queue first; finishing the calls before it is done
            # would race with it (systemd's stop timeout bounds the wait; recovery covers a kill)
            thread.join()
        if self.engine is not None:
            self.engine.finish()

    def _spawn(self, name: str, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self.threads.append(thread)

    def _start_metrics(self, listen: str) -> None:
        if listen == "off":
            return
        host, _, port = listen.rpartition(":")
        self.metrics = MetricsServer(host or "127.0.0.1", int(port), self.collect_metrics)
        self.metrics.start()

    # -- the loops -----------------------------------------------------------------------------

    def _capture_loop(self, name: str, capture: LiveCapture) -> None:
        assert self.heartbeats is not None
        stage = f"capture:{name}"
        for batch in capture.batches(timeout_s=QUEUE_POLL_S):
            self.heartbeats.beat(stage)
            if len(batch):
                self.queue.put(batch)   # bounded: if the engine falls behind, the ring absorbs it
            if self.stop_event.is_set():
                break

    def _sync_loop(self, interval: float) -> None:
        """syncfs(2) of the vault's filesystem every `interval` s: data and metadata of every
        live call's file reach the disk in one system call (ctypes releases the GIL)."""
        assert self.appliance is not None and self.heartbeats is not None
        fd = os.open(self.appliance.vault_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            while not self.stop_event.wait(interval):
                if _LIBC.syncfs(fd) != 0:
                    log.error("syncfs of the vault failed: %s", os.strerror(ctypes.get_errno()))
                    continue   # no heartbeat: a filesystem that cannot sync stops the watchdog
                self.heartbeats.beat("vault-sync")
        finally:
            os.close(fd)

    def _engine_loop(self) -> None:
        assert self.engine is not None and self.heartbeats is not None and self.disk is not None
        idle_tick = self.config["daemon"]["idle_tick_s"]
        last_tick = last_disk = 0.0
        window = self.config["daemon"]["batch_window_s"]
        while not (self.stop_event.is_set() and self.queue.empty()):
            try:
                batch = self.queue.get(timeout=QUEUE_POLL_S)
            except queue.Empty:
                idle = True
            else:
                idle = False
                self.engine.feed(self._with_backlog(batch, time.monotonic() + window))
            now = time.time()
            # The wall clock may only move capture time on when nothing is queued: behind a
            # backlog it runs ahead of the packets still waiting, and the audio they carry
            # would be flushed as silence before it arrives (then counted as late, and lost).
            if idle and now - last_tick >= idle_tick:
                self.engine.tick(now - self.engine.settings.jitter_window_s)
                last_tick = now
            if now - last_disk >= 1.0:
                self.disk.check(self.engine)
                self._read_kernel_stats()
                last_disk = now
            self.heartbeats.beat("engine")

    def _with_backlog(self, batch: FrameBatch, deadline: float) -> FrameBatch:
        """Batching: blocks that queued up while the engine worked, and those arriving until
        `deadline` (daemon.batch_window_s), are merged into one batch (up to MERGE_BYTES), so
        the per-stream cost of a batch is paid once for all of them. Blocks of another link
        type wait their turn."""
        assert self.engine is not None
        merged, size = [batch], len(batch.buf)
        while size < MERGE_BYTES and not self.stop_event.is_set():
            try:
                nxt = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if nxt.linktype != batch.linktype:
                self.engine.feed(merge_batches(merged))
                merged, size, batch = [nxt], len(nxt.buf), nxt
                continue
            merged.append(nxt)
            size += len(nxt.buf)
        return merge_batches(merged)

    def _read_kernel_stats(self) -> None:
        for name, capture in zip(self.config["capture"]["interfaces"], self.captures, strict=True):
            stats = capture.stats()
            self.live.packets[name] = stats.packets
            self.live.drops[name] = stats.drops
        new_drops, ended = self.minutes.update(time.time(), self._interface_totals())
        if new_drops and self.engine is not None:
            self.engine.note_kernel_drops(new_drops)
        self._save_minutes(ended)

    def _interface_totals(self) -> dict[str, tuple[int, int]]:
        return {name: (self.live.packets[name], self.live.drops[name]) for name in self.live.packets}

    def _save_minutes(self, rows: list[MinuteRow]) -> None:
        """Per-minute capture counters into the catalog (queued on its writer thread)."""
        if rows and self.appliance is not None:
            self.appliance.catalog.add_capture_minutes(rows)

    # -- reporting -----------------------------------------------------------------------------

    def recording_figures(self) -> RecordingFigures | None:
        """The engine's figures (the fanout daemon sums its workers'); None before start."""
        engine = self.engine
        if engine is None:
            return None
        return RecordingFigures(len(engine.media), min((m.timeline.t0 for m in engine.media.values()), default=None),
                                engine.counters, engine.errors, bool(self.disk and self.disk.paused))

    def status_line(self) -> str:
        figures = self.recording_figures()
        if figures is None:
            return "starting"
        return (f"{figures.active} active, {figures.counters['recordings']} recorded, "
                f"{sum(self.live.packets.values())} packets, {sum(self.live.drops.values())} drops"
                + (", PAUSED: disk full" if figures.paused else ""))

    def collect_metrics(self) -> list[Metric]:
        figures = self.recording_figures()
        if figures is None:
            return []
        oldest = figures.oldest
        free = self.disk.free_bytes() if self.disk else 0
        return [
            Metric("recorderd_active_calls", "calls being recorded now", "gauge", [({}, figures.active)]),
            Metric("recorderd_calls_total", "calls finished", "counter", [({}, figures.counters["calls"])]),
            Metric("recorderd_recordings_total", "recordings written", "counter",
                   [({}, figures.counters["recordings"])]),
            Metric("recorderd_packets_total", "packets the kernel passed to the capture", "counter",
                   [({"interface": k}, v) for k, v in self.live.packets.items()]),
            Metric("recorderd_kernel_drops_total", "packets the kernel dropped (ring full)", "counter",
                   [({"interface": k}, v) for k, v in self.live.drops.items()]),
            Metric("recorderd_parse_errors_total", "malformed input skipped, by reason", "counter",
                   [({"reason": k}, v) for k, v in sorted(figures.errors.items())]),
            Metric("recorderd_disk_free_bytes", "free space on the vault's filesystem", "gauge", [({}, free)]),
            Metric("recorderd_oldest_active_call_seconds", "age of the oldest unfinalised call", "gauge",
                   [({}, time.time() - oldest if oldest else 0.0)]),
            Metric("recorderd_recording_paused", "1 while recording is paused (disk floor)", "gauge",
                   [({}, 1 if figures.paused else 0)]),
        ]

    # -- stop and reload -------------------------------------------------------------------------

    def reload(self) -> None:
        """SIGHUP: what can change without a restart (log level, disk thresholds)."""
        try:
            fresh = load(self.config_path)
        except Exception as err:  # noqa: BLE001 - a bad edit must not kill a recording daemon
            log.error("reload refused, keeping the running configuration: %s", err)
            return
        configure_logging(fresh["daemon"]["log_level"])
        if self.disk is not None:
            self.disk.min_free = fresh["daemon"]["min_free_mb"] * MIB
            self.disk.resume_free = fresh["daemon"]["resume_free_mb"] * MIB
        self.config["daemon"].update(log_level=fresh["daemon"]["log_level"],
                                     min_free_mb=fresh["daemon"]["min_free_mb"],
                                     resume_free_mb=fresh["daemon"]["resume_free_mb"])
        log.info("configuration reloaded")
        self.notifier.status(self.status_line())

    def stop(self) -> None:
        self.notifier.stopping("finishing open calls")
        self.stop_event.set()
        self._stop_pipeline()
        if self.spool is not None:
            self.spool.stop()   # the import in progress finishes; the next start picks up the rest
        if self.consent is not None:
            self.consent.stop()   # after the last recordings are finished: one bounded last pass
        if self.watchdog is not None:
            self.watchdog.stop()
        if self.metrics is not None:
            self.metrics.stop()
        if self.appliance is not None:
            self.minutes.update(time.time(), self._interface_totals())
            self._save_minutes(self.minutes.flush())    # the minute in progress
            self.appliance.audit.append("recorderd", "system", "stop", "", "ok")
            self.appliance.close()
        log.info("stopped")


class Signals:
    """SIGTERM, SIGINT and SIGHUP, for the main loop to act on. The handlers only append to a
    list: a handler runs in the main thread between two bytecodes, and anything that takes a
    lock there (Event.set, logging, a reload) can wait forever for a lock the interrupted code
    holds - e.g. the main thread inside Event.wait, as the fanout workers found out."""

    STOP = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: list[int] = []
        for signum in (*self.STOP, signal.SIGHUP):
            signal.signal(signum, lambda signum, _frame: self.received.append(signum))

    def wait(self, seconds: float) -> list[int]:
        """The signals received, waiting up to `seconds` for the first (sleep wakes for it)."""
        deadline = time.monotonic() + seconds
        while not self.received and time.monotonic() < deadline:
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
        taken = []
        while self.received:
            taken.append(self.received.pop(0))
        return taken


def run(config_path: Path) -> int:
    daemon = Daemon(config_path)
    if daemon.config["capture"]["workers"] > 1:
        from recorderd.fanout import FanoutDaemon  # it imports this module

        daemon = FanoutDaemon(config_path)
    signals = Signals()
    daemon.start()
    try:
        while True:
            received = signals.wait(1.0)
            if signal.SIGHUP in received:
                daemon.reload()
            if any(s in Signals.STOP for s in received):
                break
            daemon.notifier.status(daemon.status_line())
    finally:
        daemon.stop()
    return 0
