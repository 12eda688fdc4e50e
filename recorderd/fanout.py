"""`recorderd run` with capture.workers > 1: the daemon process above N worker processes.

The daemon does what must happen once: it loads and checks the configuration, opens the
stores (key directory, catalog, the vault's writer lock, crash recovery) before any worker
exists, then opens every capture socket itself (capture.fanout explains the split):
- per interface, one media socket per worker, joined in worker order to a new
  PACKET_FANOUT_CBPF group (the kernel hands member i the packets whose port sum is i mod N),
  and one signalling socket per worker (every SIP message reaches every worker);
- a SOCK_SEQPACKET pair between every two workers (forwarded media, "call ended" notices).
It keeps all of them open and passes each worker its own (recorderd/worker.py). So a worker
that dies leaves its rings, its place in the fanout group and its peers' messages in the
kernel: its replacement reads on where it stopped, and nothing is re-hashed onto the others.

Then it supervises: it reads each worker's control socket (the recordings it opens and
closes, its figures every second), sums the figures for STATUS=, the metrics and the logs,
reads the kernel counters of every socket, and gives the watchdog a stage per worker, fresh
only while that worker reports with every one of its own stages fresh. A worker that exits
is logged, the recordings it had open are recovered as partial (storage.recovery, as at a
start after a crash) and it is started again (after 1, 2, 4 ... 30 s if it keeps dying
young). SIGTERM reaches every worker (from here, and from systemd's control-group stop):
each finishes its open calls; SIGHUP is passed on. The spool import and the consent stage
run here, once.
"""

from __future__ import annotations

import json
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capture.afpacket import NEW_FANOUT_GROUP, LiveCapture, interface_linktype
from capture.fanout import fanout_program, media_class_filter
from recorderd.daemon import Daemon, RecordingFigures, capture_filter, disk_guard, ring_settings
from recorderd.metrics import Metric
from recorderd.worker import (
    MESSAGE_BYTES,
    InterfaceFds,
    WorkerSpec,
    check_fanout_settings,
    signalling_ring,
    tune_socket,
)
from storage.recovery import recover_crashed

log = logging.getLogger("recorderd.fanout")

SUPERVISE_POLL_S = 0.2
SNAPSHOT_WAIT_S = 5.0          # a restart waits this long at most for a peer's call state
YOUNG_DEATH_S = 10.0           # a worker that dies younger than this is restarted after a back-off
MAX_BACKOFF_S = 30.0
REPO_ROOT = str(Path(__file__).resolve().parents[1])


@dataclass
class WorkerSlot:
    """One worker place: its sockets stay, the process in it may be replaced."""

    index: int
    process: subprocess.Popen[bytes] | None = None
    control: socket.socket | None = None
    started: float = 0.0
    open_recordings: dict[str, str] = field(default_factory=dict)   # recording id -> call key
    stats: dict[str, Any] = field(default_factory=dict)          # the running process's last figures
    restarts: int = 0
    backoff_s: float = 0.0
    restart_at: float | None = None
    recovered: list[str] = field(default_factory=list)    # what the process it replaces had open
    snapshot: str | None = None       # the peer's call state asked for its replacement ...
    snapshot_ready: bool = False      # ... and whether it was written
    snapshot_deadline: float = 0.0


@dataclass
class InterfaceSockets:
    name: str
    linktype: int
    media: list[LiveCapture]          # one per worker, in fanout-group order
    signalling: list[LiveCapture]     # one per worker


def _summed(figures: list[dict[str, Any]], key: str) -> Counter[str]:
    total: Counter[str] = Counter()
    for stats in figures:
        total.update(stats.get(key, {}))
    return total


class FanoutDaemon(Daemon):
    """The supervising daemon process of `recorderd run` with capture.workers > 1."""

    def __init__(self, config_path: Path) -> None:
        super().__init__(config_path)
        check_fanout_settings(self.config)    # before the stores are opened
        self.worker_count: int = self.config["capture"]["workers"]
        self.slots = [WorkerSlot(i) for i in range(self.worker_count)]
        self.interfaces: list[InterfaceSockets] = []
        self.peer_sockets: dict[tuple[int, int], socket.socket] = {}    # (this worker, other) -> its end
        self.retired: dict[str, Counter[str]] = {"counters": Counter(), "errors": Counter(),
                                                 "router": Counter(), "peers": Counter()}
        self.state_dir: Path | None = None     # private: call-state snapshots for restarted workers
        self.ring = ring_settings(self.config["capture"])
        self.worker_drops: dict[int, int] = {}    # each worker's sockets' kernel drops, last told

    # -- start -----------------------------------------------------------------------------------

    def _open_pipeline(self) -> list[str]:
        """Every capture and peer socket, opened here and kept here; no engine in this process."""
        assert self.appliance is not None
        cpus = len(os.sched_getaffinity(0))
        if self.worker_count > cpus:
            log.warning("capture.workers = %d, but this process may run on %d CPU(s): the workers share them",
                        self.worker_count, cpus)
        self.state_dir = Path(tempfile.mkdtemp(prefix="recorderd-fanout-"))   # 0700
        capture_cfg = self.config["capture"]
        self.disk = disk_guard(self.appliance.vault_dir, self.config["daemon"])   # free space for the metrics
        ring = self.ring
        program = capture_filter(capture_cfg)
        for name in capture_cfg["interfaces"]:
            linktype = interface_linktype(name)
            media_filter = media_class_filter(program, media=True, linktype=linktype)
            media: list[LiveCapture] = []
            for index in range(self.worker_count):
                group = media[0].fanout_group if media else NEW_FANOUT_GROUP
                media.append(LiveCapture(name, bpf=media_filter, promiscuous=capture_cfg["promiscuous"], ring=ring,
                                         fanout_group=group, fanout_mode="cbpf",
                                         fanout_program=None if index else fanout_program(self.worker_count, linktype)))
            signalling = [LiveCapture(name, bpf=media_class_filter(program, media=False, linktype=linktype),
                                      promiscuous=capture_cfg["promiscuous"], ring=signalling_ring(ring))
                          for _ in range(self.worker_count)]
            for capture in media + signalling:
                capture.hand_over()           # the workers map and read the rings
            self.interfaces.append(InterfaceSockets(name, linktype, media, signalling))
            self.captures += media + signalling
        for a in range(self.worker_count):
            for b in range(a + 1, self.worker_count):
                one, other = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                for sock in (one, other):
                    tune_socket(sock)
                self.peer_sockets[(a, b)], self.peer_sockets[(b, a)] = one, other
        return [f"worker:{i}" for i in range(self.worker_count)]

    def _start_pipeline(self) -> None:
        for slot in self.slots:
            self._start_worker(slot)
        self._spawn("supervisor", self._supervise)

    def _start_worker(self, slot: WorkerSlot) -> None:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        spec = WorkerSpec(
            slot.index, self.worker_count,
            [InterfaceFds(i.name, i.linktype, i.media[slot.index].fileno(), i.signalling[slot.index].fileno())
             for i in self.interfaces],
            {other: self.peer_sockets[(slot.index, other)].fileno()
             for other in range(self.worker_count) if other != slot.index},
            theirs.fileno(), self.ring.block_size, self.ring.block_count,
            slot.snapshot if slot.snapshot_ready else None, slot.recovered)
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO_ROOT, env.get("PYTHONPATH")]))
        try:
            slot.process = subprocess.Popen(
                [sys.executable, "-m", "recorderd.worker", "--config", str(self.config_path), "--spec", spec.to_json()],
                pass_fds=spec.fds(), env=env, stdin=subprocess.DEVNULL)
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        slot.control, slot.started, slot.stats, slot.restart_at = mine, time.monotonic(), {}, None
        slot.recovered, slot.snapshot, slot.snapshot_ready = [], None, False
        log.info("worker %d started (pid %d)", slot.index, slot.process.pid)

    # -- supervision -------------------------------------------------------------------------------

    def _supervise(self) -> None:
        last_kernel = 0.0
        while not self.stop_event.is_set():
            self._read_controls(SUPERVISE_POLL_S)
            for slot in self.slots:
                if slot.process is not None and slot.process.poll() is not None:
                    self._worker_exited(slot)
                if self._restart_due(slot):
                    try:
                        self._start_worker(slot)
                    except OSError as err:     # e.g. out of file descriptors or memory: try again
                        slot.backoff_s = min(MAX_BACKOFF_S, max(1.0, slot.backoff_s * 2))
                        slot.restart_at = time.monotonic() + slot.backoff_s
                        log.error("worker %d could not be started (%s); next try in %g s", slot.index, err,
                                  slot.backoff_s)
            if time.monotonic() - last_kernel >= 1.0:
                self._read_kernel_stats()
                last_kernel = time.monotonic()

    def _restart_due(self, slot: WorkerSlot) -> bool:
        """Its back-off is over and the peer's call state is written (or took too long)."""
        now = time.monotonic()
        if slot.process is not None or slot.restart_at is None or now < slot.restart_at:
            return False
        if slot.snapshot is not None and not slot.snapshot_ready and now < slot.snapshot_deadline:
            return False
        if slot.snapshot is not None and not slot.snapshot_ready:
            log.warning("worker %d restarts without the calls in progress: no call state from the other "
                        "workers within %g s", slot.index, SNAPSHOT_WAIT_S)
        return True

    def _ask_for_call_state(self, slot: WorkerSlot) -> None:
        """Ask a live worker to write its dialogs and expectations for `slot`'s next process:
        every worker tracks every call, so the replacement knows the calls in progress."""
        assert self.state_dir is not None
        peer = next((s for s in self.slots if s is not slot and s.process is not None and s.control is not None),
                    None)
        if peer is None:
            return
        assert peer.control is not None
        path = self.state_dir / f"worker-{slot.index}-{slot.restarts}.state"
        try:
            peer.control.send(json.dumps({"kind": "snapshot", "path": str(path)}).encode())
        except OSError as err:
            log.warning("asking worker %d for the call state failed: %s", peer.index, err)
            return
        slot.snapshot, slot.snapshot_ready = str(path), False
        slot.snapshot_deadline = time.monotonic() + SNAPSHOT_WAIT_S

    def _read_controls(self, timeout_s: float) -> None:
        poller = select.poll()
        by_fd = {}
        for slot in self.slots:
            if slot.control is not None:
                poller.register(slot.control.fileno(), select.POLLIN)
                by_fd[slot.control.fileno()] = slot
        for fd, _ in poller.poll(int(timeout_s * 1000)):
            self._drain_control(by_fd[fd])

    def _drain_control(self, slot: WorkerSlot) -> None:
        assert slot.control is not None and self.heartbeats is not None
        while True:
            try:
                data = slot.control.recv(MESSAGE_BYTES, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            if not data:     # the worker's end is closed
                return
            try:
                message = json.loads(data)
            except ValueError as err:
                log.error("worker %d sent an unreadable report (%s): %r", slot.index, err, data[:200])
                continue
            kind = message.get("kind")
            if kind == "open":
                slot.open_recordings[message["recording_id"]] = message["call"]
            elif kind == "closed":
                slot.open_recordings.pop(message["recording_id"], None)
            elif kind == "stats":
                slot.stats = message
                if not message["stale"]:
                    self.heartbeats.beat(f"worker:{slot.index}")
            elif kind == "snapshot":
                for waiting in self.slots:
                    if waiting.snapshot == message["path"]:
                        waiting.snapshot_ready = True

    def _worker_exited(self, slot: WorkerSlot, restart: bool = True) -> None:
        """Log it, recover the recordings it had open, schedule its replacement."""
        assert self.appliance is not None and slot.process is not None and slot.control is not None
        self._drain_control(slot)            # its last notices are still queued
        code, pid = slot.process.returncode, slot.process.pid
        slot.control.close()
        slot.control, slot.process = None, None
        for key in self.retired:
            self.retired[key].update(slot.stats.get(key, {}))
        slot.stats = {}
        how = f"signal {-code}" if code < 0 else f"status {code}"
        log.error("worker %d (pid %d) exited with %s; recovering its %d open recording(s)%s",
                  slot.index, pid, how, len(slot.open_recordings), "; restarting it" if restart else "")
        for rec in recover_crashed(self.appliance.catalog, self.appliance.keys, self.appliance.vault_dir,
                                   self.appliance.audit, only=slot.open_recordings):
            log.warning("recovered %s: %s", rec.recording_id, rec.note)
        slot.recovered = sorted(set(slot.open_recordings.values()))
        slot.open_recordings.clear()
        if not restart:
            return
        slot.restarts += 1
        self._ask_for_call_state(slot)
        young = time.monotonic() - slot.started < YOUNG_DEATH_S
        slot.backoff_s = min(MAX_BACKOFF_S, max(1.0, slot.backoff_s * 2)) if young else 0.0
        slot.restart_at = time.monotonic() + slot.backoff_s
        self.appliance.audit.append("recorderd", "system", "worker_restart", f"worker {slot.index}", "ok",
                                    reason=how, detail={"pid": pid, "backoff_s": slot.backoff_s})

    def _read_kernel_stats(self) -> None:
        """Packets: the media sockets' plus one signalling socket's (each worker's signalling
        socket gets the same packets); drops: every socket's (each is a loss to its worker)."""
        per_worker: Counter[int] = Counter()
        for iface in self.interfaces:
            media = [capture.stats() for capture in iface.media]
            signalling = [capture.stats() for capture in iface.signalling]
            self.live.packets[iface.name] = sum(s.packets for s in media) + max(s.packets for s in signalling)
            self.live.drops[iface.name] = sum(s.drops for s in media + signalling)
            for index, (m, s) in enumerate(zip(media, signalling, strict=True)):
                per_worker[index] += m.drops + s.drops
        for slot in self.slots:     # a worker marks its active recordings with its own sockets' drops
            new = per_worker[slot.index] - self.worker_drops.get(slot.index, 0)
            self.worker_drops[slot.index] = per_worker[slot.index]
            if new > 0 and slot.process is not None and slot.control is not None:
                try:
                    slot.control.send(json.dumps({"kind": "drops", "count": new}).encode())
                except OSError as err:
                    log.warning("worker %d: could not report %d kernel drops: %s", slot.index, new, err)
        _, ended = self.minutes.update(time.time(), self._interface_totals())
        self._save_minutes(ended)

    # -- reporting ---------------------------------------------------------------------------------

    def recording_figures(self) -> RecordingFigures | None:
        live = [slot.stats for slot in self.slots if slot.stats]
        counters, errors = _summed(live, "counters"), _summed(live, "errors")
        counters.update(self.retired["counters"])
        errors.update(self.retired["errors"])
        oldest = min((s["oldest"] for s in live if s.get("oldest") is not None), default=None)
        return RecordingFigures(sum(s.get("active", 0) for s in live), oldest, counters, errors,
                                any(s.get("paused") for s in live))

    def status_line(self) -> str:
        running = sum(slot.process is not None for slot in self.slots)
        return f"{super().status_line()}, workers {running}/{self.worker_count}"

    def collect_metrics(self) -> list[Metric]:
        per_worker = [(str(slot.index), slot) for slot in self.slots]

        def family(name: str, text: str, value: Any) -> Metric:
            return Metric(name, text, "counter", [({"worker": w}, value(slot)) for w, slot in per_worker])

        def count(key: str, name: str) -> Any:
            return lambda slot: slot.stats.get(key, {}).get(name, 0)

        return super().collect_metrics() + [
            family("recorderd_worker_recordings_total", "recordings written by this worker process",
                   count("counters", "recordings")),
            family("recorderd_worker_calls_total", "calls this worker process recorded or listed as not recorded",
                   count("counters", "calls")),
            family("recorderd_worker_sip_messages_total", "SIP messages this worker process saw (every worker "
                   "sees all)", count("counters", "sip_messages")),
            family("recorderd_worker_forwarded_packets_total", "media packets this worker process forwarded to "
                   "the worker recording their call", count("counters", "rtp_forwarded")),
            family("recorderd_worker_received_packets_total", "media packets other worker processes forwarded "
                   "to this one", count("peers", "received_packets")),
            family("recorderd_worker_forward_dropped_total", "media packets this worker process could not "
                   "forward (the receiving worker was too far behind)", count("peers", "dropped_packets")),
            family("recorderd_worker_restarts_total", "times this worker was restarted after it died",
                   lambda slot: slot.restarts),
        ]

    # -- stop and reload -----------------------------------------------------------------------------

    def reload(self) -> None:
        super().reload()
        for slot in self.slots:
            if slot.process is not None:
                slot.process.send_signal(signal.SIGHUP)

    def _stop_pipeline(self) -> None:
        """Every worker finishes its open calls (SIGTERM); then the sockets close."""
        for thread in self.threads:
            thread.join()              # the supervisor: no restart from here on
        for slot in self.slots:
            if slot.process is not None and slot.process.poll() is None:
                slot.process.send_signal(signal.SIGTERM)
        while any(slot.process is not None for slot in self.slots):
            self._read_controls(SUPERVISE_POLL_S)
            for slot in self.slots:
                if slot.process is not None and slot.process.poll() is not None:
                    self._worker_stopped(slot)
        for capture in self.captures:
            capture.close()
        for sock in self.peer_sockets.values():
            sock.close()
        if self.state_dir is not None:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def _worker_stopped(self, slot: WorkerSlot) -> None:
        assert slot.process is not None and slot.control is not None
        self._drain_control(slot)
        if slot.process.returncode != 0 or slot.open_recordings:
            self._worker_exited(slot, restart=False)   # it did not finish its calls: recover them
            return
        slot.control.close()
        slot.control, slot.process = None, None
