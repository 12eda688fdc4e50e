"""A fanout worker process of `recorderd run` (capture.workers > 1; see recorderd/fanout.py).

Started by the fanout daemon as `python -m recorderd.worker --config FILE --spec JSON`, with
the sockets the daemon set up passed as file descriptors (the daemon keeps its copies, so the
rings, the fanout group and what arrives meanwhile outlive a worker that dies):
- per interface, this worker's member of the media fanout group and its own signalling
  socket (capture.fanout: media spread by port sum, signalling to every worker);
- a SOCK_SEQPACKET socket to each other worker (media of their calls, "call ended" notices);
- a SOCK_SEQPACKET control socket to the daemon: the recordings it opens and closes (so the
  daemon can recover them if this process dies) and its figures every second.

Threads: a reader per socket (blocks into a queue, nothing else); the peer reader; the engine
thread, which merges what arrived back into capture-time order (capture.fanout.TimeOrderedPool)
up to the point every socket is known to be complete, feeds the engine with the fanout router,
and reports; the vault-sync thread. Each worker has its own catalog writer and vault sink.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import math
import os
import pickle
import queue
import select
import signal
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from capture.afpacket import LiveCapture, RingSettings
from capture.dialogs import Call
from capture.engine import CaptureEngine
from capture.fanout import FanoutRouter, TimeOrderedPool, decode_frames, encode_frames
from capture.pcapio import FrameBatch
from recorderd.appliance import open_appliance
from recorderd.config import ConfigError, engine_settings
from recorderd.daemon import (
    MERGE_BYTES,
    QUEUE_POLL_S,
    Daemon,
    Signals,
    disk_guard,
    vault_sink,
)
from recorderd.logsetup import configure_logging
from recorderd.sdnotify import Heartbeats
from storage.recordingsink import VaultHandle, VaultSink

log = logging.getLogger("recorderd.worker")

MESSAGE_BYTES = 60 * 1024        # one SEQPACKET message between processes, at most
SOCKET_BUFFER_BYTES = 4 << 20    # per socket; forwarded media waits here while its reader is busy
END_MAGIC = b"RDEN"              # "a call this worker recorded timed out": JSON after it
RETIRE_SLACK_S = 0.02            # the kernel's block-retire timer fires up to a jiffy or two late
MAX_HOLD_BACK_S = 1.0            # frames never wait longer than this for a lagging socket
FORWARD_GRACE_S = 0.5            # at stop: media other workers are still forwarding is awaited
REPORT_EVERY_S = 1.0
FORWARDING_SLACK_S = 0.2         # forwarded media arrives up to a batch window + this late
_PR_SET_PDEATHSIG = 1


def signalling_ring(ring: RingSettings) -> RingSettings:
    """The signalling sockets' ring: SIP is a small share of the traffic (a quarter of the
    media ring, at least 8 blocks)."""
    return RingSettings(block_size=ring.block_size, block_count=max(8, ring.block_count // 4),
                        frame_size=ring.frame_size, retire_timeout_ms=ring.retire_timeout_ms)


def check_fanout_settings(config: dict[str, dict[str, Any]]) -> None:
    """ConfigError unless media forwarded between workers still lands inside the jitter window."""
    jitter, window = config["capture"]["jitter_window_s"], config["daemon"]["batch_window_s"]
    if jitter < window + FORWARDING_SLACK_S - 1e-9:
        raise ConfigError(f"capture.jitter_window_s: {jitter} is too short for capture.workers > 1: media "
                          f"forwarded between workers arrives up to daemon.batch_window_s + {FORWARDING_SLACK_S} s "
                          f"late, so it must be at least {window + FORWARDING_SLACK_S:g}")


def tune_socket(sock: socket.socket) -> None:
    """Large send and receive buffers (beyond net.core.*mem_max with CAP_NET_ADMIN)."""
    for force, plain in ((33, socket.SO_SNDBUF), (32, socket.SO_RCVBUF)):   # SO_SNDBUFFORCE, SO_RCVBUFFORCE
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER_BYTES)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER_BYTES)


@dataclass(slots=True)
class InterfaceFds:
    name: str
    linktype: int
    media_fd: int
    signalling_fd: int


@dataclass(slots=True)
class WorkerSpec:
    """What a worker process is handed on its command line (file descriptors it inherits)."""

    index: int
    workers: int
    interfaces: list[InterfaceFds]
    peers: dict[int, int]          # other worker's index -> socket fd
    control_fd: int
    ring_block_size: int           # the media rings' geometry, as the daemon set them up (not
    ring_blocks: int               # re-read: the file may have changed since)
    snapshot: str | None = None    # a peer's signalling state to start from (a restart)
    recovered: list[str] = field(default_factory=list)   # calls (keys) whose recording died with its predecessor

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> WorkerSpec:
        raw = json.loads(text)
        return cls(raw["index"], raw["workers"], [InterfaceFds(**i) for i in raw["interfaces"]],
                   {int(k): v for k, v in raw["peers"].items()}, raw["control_fd"], raw["ring_block_size"],
                   raw["ring_blocks"], raw["snapshot"], raw["recovered"])

    def fds(self) -> list[int]:
        return ([fd for i in self.interfaces for fd in (i.media_fd, i.signalling_fd)]
                + list(self.peers.values()) + [self.control_fd])


class ReportingSink:
    """The vault sink, telling the daemon which recordings this worker has open: it recovers
    them as partial if the worker dies (the notice goes out before the catalog row exists)."""

    def __init__(self, sink: VaultSink, report: Callable[[dict[str, Any]], None]) -> None:
        self.sink = sink
        self.report = report
        self.flush_frames = sink.flush_frames

    def open(self, call: Call, rate: int, started_at: float) -> VaultHandle:
        self.report({"kind": "open", "recording_id": call.recording_id, "call": call.key})
        return self.sink.open(call, rate, started_at)

    def write(self, handle: VaultHandle, frames: np.ndarray) -> None:
        self.sink.write(handle, frames)

    def change_rate(self, handle: VaultHandle, new_rate: int) -> None:
        self.sink.change_rate(handle, new_rate)

    def close(self, handle: VaultHandle, metadata: dict[str, Any]) -> None:
        self.sink.close(handle, metadata)
        self.report({"kind": "closed", "recording_id": handle.call.recording_id})

    def discard(self, handle: VaultHandle) -> None:
        self.sink.discard(handle)
        self.report({"kind": "closed", "recording_id": handle.call.recording_id})

    def not_recorded(self, metadata: dict[str, Any]) -> None:
        self.sink.not_recorded(metadata)


class FanoutWorker(Daemon):
    """One worker: the daemon's recording pipeline on its share of the traffic."""

    def __init__(self, config_path: Path, spec: WorkerSpec) -> None:
        super().__init__(config_path)
        self.spec = spec
        self.control = socket.socket(fileno=spec.control_fd)
        self.peers = {index: socket.socket(fileno=fd) for index, fd in spec.peers.items()}
        self.arrivals: queue.Queue[tuple[str, Any, bool]] = queue.Queue(maxsize=self.config["daemon"]["queue_batches"])
        self.sources: list[tuple[str, LiveCapture, bool]] = []     # stage name, ring, frames only here
        self.watermarks: dict[str, float | None] = {}   # per source: every frame up to this time is read
        self.pool = TimeOrderedPool()
        self.router = FanoutRouter(spec.index, spec.workers, self._send_frames, self._send_end)
        self.peer_counters: Counter[str] = Counter()
        self.engine_done = threading.Event()

    # -- start ---------------------------------------------------------------------------------

    def start(self) -> None:
        daemon_cfg = self.config["daemon"]
        configure_logging(daemon_cfg["log_level"])
        check_fanout_settings(self.config)
        self.appliance = open_appliance(self.config, recover=False, warnings=None)
        stages = self._open_pipeline() + ["peers"]
        if self.spec.snapshot:
            self._load_snapshot(Path(self.spec.snapshot))
        self.heartbeats = Heartbeats(stages, daemon_cfg["stage_max_age_s"])
        self._start_pipeline()
        log.info("worker %d of %d recording on %s", self.spec.index, self.spec.workers,
                 ", ".join(i.name for i in self.spec.interfaces))

    def _open_pipeline(self) -> list[str]:
        assert self.appliance is not None
        self.engine = CaptureEngine(ReportingSink(vault_sink(self.appliance, self.config), self._report),
                                    engine_settings(self.config), router=self.router)
        self.disk = disk_guard(self.appliance.vault_dir, self.config["daemon"])
        ring = RingSettings(block_size=self.spec.ring_block_size, block_count=self.spec.ring_blocks)
        for fds in self.spec.interfaces:
            media = LiveCapture.attach(fds.media_fd, fds.name, linktype=fds.linktype, ring=ring)
            signalling = LiveCapture.attach(fds.signalling_fd, fds.name, linktype=fds.linktype,
                                            ring=signalling_ring(ring))
            self.sources += [(f"media:{fds.name}", media, True), (f"signalling:{fds.name}", signalling, False)]
        self.captures = [capture for _, capture, _ in self.sources]
        self.watermarks = dict.fromkeys(name for name, _, _ in self.sources)   # None until its first read
        sync = ["vault-sync"] if self.config["storage"]["sync_interval_s"] else []
        return [f"capture:{name}" for name, _, _ in self.sources] + ["engine"] + sync

    def _start_pipeline(self) -> None:
        sync_interval = self.config["storage"]["sync_interval_s"]
        if sync_interval:
            self._spawn("vault-sync", self._sync_loop, sync_interval)
        for name, capture, only_here in self.sources:
            self._spawn(f"capture-{name}", self._source_loop, name, capture, only_here)
        self._spawn("peers", self._peer_loop)
        self._spawn("engine", self._engine_loop)

    # -- readers -------------------------------------------------------------------------------

    def _source_loop(self, name: str, capture: LiveCapture, only_here: bool) -> None:
        """Blocks into the queue; the watermark says up to when this ring is known complete:
        the last frame taken, or (nothing ready for a poll interval) now less the time a
        partly filled block may wait before the kernel hands it over."""
        assert self.heartbeats is not None
        stage = f"capture:{name}"
        retire_s = capture.ring.retire_timeout_ms / 1000 + RETIRE_SLACK_S
        while not self.stop_event.is_set():
            batch = capture.poll_once(QUEUE_POLL_S)
            self.heartbeats.beat(stage)
            if batch is not None and len(batch):
                self.arrivals.put(("local", batch, only_here))   # bounded: the ring absorbs a stall
                self._raise_watermark(name, float(batch.ts.max()))
            elif batch is None:
                self._raise_watermark(name, time.time() - retire_s)

    def _raise_watermark(self, name: str, value: float) -> None:
        self.watermarks[name] = max(self.watermarks[name] or 0.0, value)

    def _cutoff(self, finishing: bool) -> float:
        """Frames up to this capture time may go to the engine: every source has delivered
        them (a source that lags more than MAX_HOLD_BACK_S is not waited for; none yet
        before every source has been read once, e.g. a restarted worker's backlog)."""
        if finishing:
            return math.inf
        marks = list(self.watermarks.values())
        if any(mark is None for mark in marks):
            return -math.inf
        return max(min(mark for mark in marks if mark is not None), time.time() - MAX_HOLD_BACK_S)

    def _peer_loop(self) -> None:
        """Media and notices from the other workers, requests from the daemon, until the
        engine has finished."""
        assert self.heartbeats is not None
        poller = select.poll()
        by_fd = {sock.fileno(): sock for sock in [*self.peers.values(), self.control]}
        for fd in by_fd:
            poller.register(fd, select.POLLIN)
        while not self.engine_done.is_set():
            self.heartbeats.beat("peers")
            for fd, _ in poller.poll(int(QUEUE_POLL_S * 1000)):
                try:
                    message = by_fd[fd].recv(MESSAGE_BYTES, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    continue
                if not message:          # every copy of the other end is closed: the daemon is gone
                    poller.unregister(fd)
                elif fd == self.control.fileno():
                    request = json.loads(message)
                    payload = request["count"] if request["kind"] == "drops" else request["path"]
                    self.arrivals.put((request["kind"], payload, False))
                else:
                    self._peer_message(message)

    def _peer_message(self, message: bytes) -> None:
        if message.startswith(END_MAGIC):
            self.arrivals.put(("end", json.loads(message[len(END_MAGIC):]), False))
            return
        try:
            frames = decode_frames(message)
        except ValueError as err:
            self.peer_counters["bad_messages"] += 1
            log.error("worker %d: unreadable message from another worker: %s", self.spec.index, err)
            return
        self.peer_counters["received_packets"] += len(frames)
        self.arrivals.put(("peer", frames, False))

    # -- to the other workers and the daemon -----------------------------------------------------

    def _send_frames(self, worker: int, frames: FrameBatch) -> None:
        for message in encode_frames(frames, MESSAGE_BYTES):
            self._to_peer(worker, message, len(frames))

    def _send_end(self, call: Call) -> None:
        notice = json.dumps({"call_id": call.key, "ended_at": call.ended_at, "reason": call.end_reason})
        for worker in self.peers:
            self._to_peer(worker, END_MAGIC + notice.encode(), 0)

    def _to_peer(self, worker: int, message: bytes, packets: int) -> None:
        """Never blocks the engine: a peer that is this far behind loses the message (counted)."""
        try:
            self.peers[worker].send(message, socket.MSG_DONTWAIT)
        except OSError as err:
            self.peer_counters["send_failures"] += 1
            self.peer_counters["dropped_packets"] += packets
            log.warning("worker %d: forwarding to worker %d failed: %s", self.spec.index, worker, err)

    def _report(self, message: dict[str, Any]) -> None:
        """To the daemon (blocking: these are small and the daemon reads them at once)."""
        try:
            self.control.send(json.dumps(message).encode())
        except OSError as err:
            log.error("worker %d: the daemon's control socket failed: %s", self.spec.index, err)

    # -- the engine ------------------------------------------------------------------------------

    def _engine_loop(self) -> None:
        assert self.engine is not None and self.heartbeats is not None and self.disk is not None
        idle_tick = self.config["daemon"]["idle_tick_s"]
        window = self.config["daemon"]["batch_window_s"]
        last_tick = last_disk = 0.0
        stopped_at: float | None = None
        try:
            while True:
                self._collect(window)
                if self.stop_event.is_set() and stopped_at is None:
                    stopped_at = time.monotonic()
                finishing = stopped_at is not None
                cutoff = self._cutoff(finishing)
                self._take_arrivals()    # after reading the watermarks: what they cover is queued by now
                if not finishing:
                    for frames, flags in self.router.take_held(self.engine.now):
                        self.pool.add(frames, flags)
                for batch, flags in self.pool.release(cutoff):
                    self.engine.feed(batch, flags)
                now = time.time()
                if now - last_tick >= idle_tick:   # never past frames still held back
                    self.engine.tick(min(now - self.engine.settings.jitter_window_s, cutoff))
                    last_tick = now
                if now - last_disk >= REPORT_EVERY_S:
                    self.disk.check(self.engine)
                    self._report(self._figures())
                    last_disk = now
                self.heartbeats.beat("engine")
                if stopped_at is not None and time.monotonic() - stopped_at >= FORWARD_GRACE_S \
                        and self.arrivals.empty():
                    break
        finally:
            self.engine_done.set()

    def _collect(self, window: float) -> None:
        """Wait for the first arrival, then gather for the batch window (fewer, larger batches:
        per-stream costs are paid once per batch); frames from other workers end the wait,
        they are late already."""
        try:
            first = self.arrivals.get(timeout=QUEUE_POLL_S)
        except queue.Empty:
            return
        size = self._accept(first)
        if first[0] == "peer":
            return
        deadline = time.monotonic() + window
        while size < MERGE_BYTES and not self.stop_event.is_set():
            try:
                item = self.arrivals.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            size += self._accept(item)
            if item[0] == "peer":
                break

    def _take_arrivals(self) -> None:
        while True:
            try:
                self._accept(self.arrivals.get_nowait())
            except queue.Empty:
                return

    def _accept(self, item: tuple[str, Any, bool]) -> int:
        assert self.engine is not None
        kind, payload, only_here = item
        if kind == "end":
            self.engine.tracker.end(payload["call_id"], payload["ended_at"], payload["reason"])
            return 0
        if kind == "snapshot":
            self._write_snapshot(Path(payload))
            return 0
        if kind == "drops":       # the kernel dropped packets on this worker's sockets
            self.engine.note_kernel_drops(int(payload))
            return 0
        self.pool.add(payload, only_here)
        return len(payload.buf)

    # -- a restarted worker starts from a peer's signalling state ---------------------------------

    def _write_snapshot(self, path: Path) -> None:
        """For the daemon, which restarts a worker that died: this worker's dialogs and
        expectations (every worker has all of them) and the owners fixed so far, written
        between two batches, made durable, renamed, then announced."""
        assert self.engine is not None
        temp = path.with_name(path.name + ".part")
        with open(temp, "wb") as out:
            pickle.dump({"tracker": self.engine.tracker, "owners": self.router.owners}, out,
                        protocol=pickle.HIGHEST_PROTOCOL)
            out.flush()
            os.fsync(out.fileno())
        temp.rename(path)
        self._report({"kind": "snapshot", "path": str(path)})

    def _load_snapshot(self, path: Path) -> None:
        """Start from a peer's snapshot (written by the same program for this daemon, in the
        daemon's private directory): the calls in progress are known, so their media is not
        taken for another call's; those whose recording died with the process this one
        replaces (recovered as partial by the daemon) are recorded no further."""
        assert self.engine is not None
        try:
            with open(path, "rb") as source:
                state = pickle.load(source)   # nosec B301  # our own snapshot, from a sibling worker, in the daemon's 0700 mkdtemp dir
        except (OSError, pickle.UnpicklingError, EOFError) as err:
            log.error("worker %d: starting without the other workers' call state: %s", self.spec.index, err)
            return
        finally:
            path.unlink(missing_ok=True)
        tracker, owners = state["tracker"], state["owners"]
        self.router.owners = owners
        recovered = set(self.spec.recovered)
        stopped = {}
        for key, call in tracker.calls.items():
            call.media_elsewhere = owners.get(key, self.spec.index) != self.spec.index
            if key in recovered:    # by Call-ID: workers' timestamps (and so recording ids) differ by µs
                stopped[key] = "worker_restart"
        self.engine.take_over(tracker, stopped)
        log.info("worker %d: took over %d calls in progress (%d recorded up to the restart)",
                 self.spec.index, len(tracker.calls), len(stopped))

    def _figures(self) -> dict[str, Any]:
        assert self.engine is not None and self.heartbeats is not None and self.disk is not None
        engine = self.engine
        return {"kind": "stats", "pid": os.getpid(), "active": len(engine.media),
                "oldest": min((m.timeline.t0 for m in engine.media.values()), default=None),
                "counters": dict(engine.counters), "errors": dict(engine.errors),
                "router": dict(self.router.counters), "peers": dict(self.peer_counters),
                "paused": self.disk.paused, "stale": self.heartbeats.stale()}

    # -- stop ----------------------------------------------------------------------------------

    def stop(self) -> None:
        """Captures closed; what arrived (and what the other workers still forward, for a
        moment) recorded; every call this worker records finished."""
        self.stop_event.set()
        self._stop_pipeline()
        if self.engine is not None:
            self._report(self._figures())
        if self.appliance is not None:
            self.appliance.close()
        log.info("worker %d stopped", self.spec.index)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="recorderd.worker", description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--config", required=True)
    parser.add_argument("--spec", required=True, help="what the fanout daemon hands over (JSON)")
    args = parser.parse_args(argv)
    # the daemon holds the sockets: a worker outliving it would record beside its successor
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    parent = os.getppid()
    worker = FanoutWorker(Path(args.config), WorkerSpec.from_json(args.spec))
    signals = Signals()
    worker.start()
    try:
        while os.getppid() == parent:
            received = signals.wait(1.0)
            if signal.SIGHUP in received:
                worker.reload()
            if any(s in Signals.STOP for s in received):
                break
    finally:
        worker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
