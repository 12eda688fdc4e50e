"""The daemon with two worker processes (capture.workers = 2; issue 4, "past one core").

Everything runs on the loopback device of a network namespace each test creates (nothing else
is on it, so the catalog holds exactly the calls placed here): the daemon, a SIPp UAS echoing
RTP on one port, SIPp UACs (uac_pcap gives call k of a UAC the media port -mp + 4k, so which
worker the kernel hands each call to is known in advance: capture.fanout.landing_worker), and
tcpdump as the reference. A tcpreplay of generated calls that re-INVITE to ports landing on
the other worker makes the worker that does not record them receive their media and forward it.

Checked: every call is recorded exactly once (no duplicate rows, no not-recorded rows from the
worker that does not own a call), with both legs, its duration within 0.1 s of the reference,
its audio what was sent; per-worker metrics show both workers recording, both seeing every SIP
message, and media forwarded from one to the other. Then a kill -9 of one worker during calls:
the daemon notices, recovers that worker's recordings as partial, restarts it, and calls that
start meanwhile are recorded whole (the sockets and their rings stayed open in the daemon).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from capture.fanout import landing_worker
from recorderd.cli import main
from storage.catalog import CatalogReader
from tests.gen.callgen import CallPlan, Reinvite, write_capture
from tests.support.audio import peak_correlation, tone_energy
from tests.system.test_daemon_sipp import SIPP_SHARE, sent_speech

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
UAC_CALLS = 10                   # per UAC: 20 SIPp calls
READY_S = 40.0
UAS_MEDIA_PORT = 26000           # -rtp_echo: every call's callee side
SIPP_PORT_STEP = 4               # [auto_media_port]: -mp + 4 (call number - 1)


def sipp_workers(media_base: int, calls: int) -> list[int]:
    """The worker each call of a UAC with -mp `media_base` lands on (and is recorded by)."""
    return [landing_worker(media_base + SIPP_PORT_STEP * k, UAS_MEDIA_PORT, 2) for k in range(calls)]


def media_base_for(worker: int, calls: int, start: int) -> int:
    """A -mp base from `start` on whose `calls` calls all land on `worker`."""
    return next(base for base in range(start, 60000, 10) if set(sipp_workers(base, calls)) == {worker})


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def netns() -> Iterator[list[str]]:
    """A network namespace with only its loopback up; the command prefix to run inside it."""
    name = f"rdfan{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield ["ip", "netns", "exec", name]
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def box(tmp_path: Path) -> Path:
    assert main(["init", str(tmp_path / "box")]) == 0
    config = tmp_path / "box" / "recorderd.toml"
    text = config.read_text()
    for old, new in [("workers = 1", "workers = 2"), ('bpf_filter = "default"', 'bpf_filter = "udp"'),
                     ("min_free_mb = 512", "min_free_mb = 0"), ("resume_free_mb = 1024", "resume_free_mb = 0")]:
        assert old in text
        text = text.replace(old, new)
    config.write_text(text)
    for name in ("g711a.pcap", "dtmf_2833_1.pcap"):
        (tmp_path / "sipp" / "pcap").mkdir(parents=True, exist_ok=True)
        shutil.copy(SIPP_SHARE / name, tmp_path / "sipp" / "pcap" / name)
    return config


class Daemon:
    """`recorderd run` inside the namespace, with a NOTIFY_SOCKET read like systemd does."""

    def __init__(self, ns: list[str], config: Path, tmp: Path, env: dict[str, str] | None = None) -> None:
        self.ns = ns
        self.log = tmp / "daemon.log"
        path = str(tmp / f"notify-{time.monotonic_ns()}.sock")
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(path)
        self.notify.settimeout(0.3)
        self.ready = threading.Event()
        self.messages: list[tuple[float, str]] = []     # (monotonic arrival, datagram)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([*ns, sys.executable, "-m", "recorderd", "--config", str(config), "run"],
                                         stdout=out, stderr=subprocess.STDOUT,
                                         env={**ENV, "NOTIFY_SOCKET": path, **(env or {})})
        threading.Thread(target=self._drain, daemon=True).start()
        if not self.ready.wait(READY_S):
            self.stop()
            raise AssertionError(f"no READY=1: {self.log.read_text()[-3000:]}")

    def _drain(self) -> None:
        while self.proc.poll() is None:
            try:
                message = self.notify.recv(4096).decode()
            except (TimeoutError, OSError):
                continue
            self.messages.append((time.monotonic(), message))
            if "READY=1" in message:
                self.ready.set()

    def pings_between(self, start: float, end: float) -> int:
        return sum(1 for t, m in self.messages if start <= t < end and "WATCHDOG=1" in m.split("\n"))

    def metrics(self) -> dict[str, float]:
        """name{labels} -> value, from the Prometheus endpoint inside the namespace."""
        done = subprocess.run([*self.ns, "curl", "-sf", "--max-time", "5", "http://127.0.0.1:9464/metrics"],
                              capture_output=True, text=True, timeout=15)
        return {line.rpartition(" ")[0]: float(line.rpartition(" ")[2])
                for line in done.stdout.splitlines() if line and not line.startswith("#")}

    def workers(self) -> dict[int, int]:
        """worker index -> pid, from the daemon's children (of any of its threads)."""
        found = {}
        children = [pid for task in Path(f"/proc/{self.proc.pid}/task").iterdir()
                    for pid in (task / "children").read_text().split()]
        for pid in children:
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"recorderd.worker" in argv:
                found[json.loads(argv[argv.index(b"--spec") + 1])["index"]] = int(pid)
        return found

    def wait_idle(self, calls: int, timeout: float) -> dict[str, float]:
        """Until every call has ended (no active call, `calls` finished); the metrics then."""
        result: dict[str, float] = {}

        def idle() -> bool:
            result.update(self.metrics())
            return result.get("recorderd_active_calls", 1) == 0 and result.get("recorderd_calls_total", 0) >= calls
        wait_for(idle, timeout, f"{calls} calls to finish")
        return result

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.notify.close()
        return code


def sipp(ns: list[str], cwd: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([*ns, "sipp", *args, "-nostdin", "-timeout", "60"], cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def uac(ns: list[str], cwd: Path, sip_port: int, media_port: int, calls: int, rate: float) -> subprocess.Popen[bytes]:
    return sipp(ns, cwd, "127.0.0.1:5072", "-sn", "uac_pcap", "-i", "127.0.0.1", "-p", str(sip_port),
                "-mp", str(media_port), "-m", str(calls), "-l", str(calls), "-r", str(rate), "-timeout_error")


def cli(config: Path, *argv: str) -> str:
    return subprocess.run([sys.executable, "-m", "recorderd", "--config", str(config), *argv],
                          capture_output=True, text=True, check=True, env=ENV, timeout=120).stdout


def catalogue(config: Path) -> tuple[list[dict], list[str], dict[str, dict]]:
    """Search rows (as `recorderd search --json`), the not-recorded Call-IDs, and each
    recording's metadata by recording id."""
    rows = json.loads(cli(config, "search", "--limit", "200", "--json", "--unmask"))["rows"]
    reader = CatalogReader(config.parent / "catalog.db")
    try:
        listed = [row.call_id for row in reader.not_recorded(limit=1000)]
        metadata = {}
        for row in rows:
            detail = reader.get(row["recording_id"])
            assert detail is not None
            metadata[row["recording_id"]] = detail.metadata
    finally:
        reader.close()
    return rows, listed, metadata


def reinvite_calls(path: Path) -> tuple[dict[str, float], Counter[int]]:
    """Two generated calls whose media moves, at a re-INVITE, to ports that land on the other
    worker than the first ones (their owner): call-id -> duration, and calls per owner."""
    t0 = time.time()
    plans, owners = [], Counter[int]()
    moved = [(41100 + 20 * j, 51100 + 20 * j) for j in range(40)]
    for i in range(2):
        ports = (40100 + 20 * i, 50100 + 20 * i)
        new_ports = next(m for m in moved[i:] if landing_worker(*m, 2) != landing_worker(*ports, 2))
        plans.append(CallPlan(f"moved-{i}@gen", t0 + 0.3 * i, 5.0, caller_port=ports[0], callee_port=ports[1],
                              caller_ip=f"10.7.0.{1 + 2 * i}", callee_ip=f"10.7.0.{2 + 2 * i}",
                              reinvite=Reinvite(1.5, new_ports[0], new_ports[1], "pcma")))
        owners[landing_worker(*ports, 2)] += 1
    truth = write_capture(str(path), plans, seed=7)
    return {cid: t.duration_s for cid, t in truth.calls.items()}, owners


def test_two_workers_record_every_call_once(netns: list[str], box: Path, tmp_path: Path) -> None:
    reference = tmp_path / "reference.pcap"
    generated, expected_workers = reinvite_calls(tmp_path / "moved.pcap")
    expected_workers.update(sipp_workers(28000, UAC_CALLS) + sipp_workers(29000, UAC_CALLS))
    tcpdump = subprocess.Popen([*netns, "tcpdump", "-i", "lo", "-w", str(reference), "-U", "udp and host 127.0.0.1"],
                               stderr=subprocess.DEVNULL)
    daemon = Daemon(netns, box, tmp_path)
    uas = sipp(netns, tmp_path / "sipp", "-sn", "uas", "-i", "127.0.0.1", "-p", "5072", "-mp", "26000", "-rtp_echo")
    try:
        time.sleep(0.5)
        uacs = [uac(netns, tmp_path / "sipp", 5073, 28000, UAC_CALLS, 10),
                uac(netns, tmp_path / "sipp", 5074, 29000, UAC_CALLS, 10)]
        replay = subprocess.run([*netns, "tcpreplay", "-i", "lo", str(tmp_path / "moved.pcap")],
                                capture_output=True, text=True, timeout=60)
        assert replay.returncode == 0, replay.stdout + replay.stderr
        for proc in uacs:
            assert proc.wait(timeout=60) == 0, "a SIPp UAC failed"
        metrics = daemon.wait_idle(2 * UAC_CALLS + len(generated), 20)
    finally:
        uas.terminate()
        code = daemon.stop()
        tcpdump.send_signal(signal.SIGINT)
        tcpdump.wait(timeout=10)
    assert code == 0, daemon.log.read_text()[-3000:]

    rows, listed, metadata = catalogue(box)
    assert listed == [], f"not-recorded rows: {listed}"
    per_call = Counter(r["call_id"] for r in rows)
    assert len(per_call) == 2 * UAC_CALLS + len(generated) and set(per_call.values()) == {1}, per_call
    assert {r["state"] for r in rows} == {"complete"}

    # per worker: each records the calls that land on it, both see every SIP message, one
    # forwards the moved media to the other
    recorded = [metrics[f'recorderd_worker_recordings_total{{worker="{w}"}}'] for w in (0, 1)]
    assert recorded == [expected_workers[0], expected_workers[1]] and min(recorded) > 0, (recorded, expected_workers)
    sip = [metrics[f'recorderd_worker_sip_messages_total{{worker="{w}"}}'] for w in (0, 1)]
    assert sip[0] == sip[1] >= 6 * (2 * UAC_CALLS + len(generated)), sip
    forwarded = [metrics[f'recorderd_worker_forwarded_packets_total{{worker="{w}"}}'] for w in (0, 1)]
    received = [metrics[f'recorderd_worker_received_packets_total{{worker="{w}"}}'] for w in (0, 1)]
    assert sum(forwarded) > 300 and received == forwarded[::-1], (forwarded, received)

    assert main(["replay", str(reference), "--out", str(tmp_path / "replayed")]) == 0
    expected = {}
    for meta_path in (tmp_path / "replayed").glob("*.json"):
        if meta_path.name != "not-recorded.json":
            meta = json.loads(meta_path.read_text())
            expected[meta["call_id"]] = meta["duration_s"]
    expected.update(generated)
    speech = sent_speech()
    for row in rows:
        legs = metadata[row["recording_id"]]["completeness"]["legs"]
        assert all(leg["received"] > 100 for leg in legs), (row["call_id"], legs)
        assert abs(row["duration_s"] - expected[row["call_id"]]) <= 0.1, (row["call_id"], row["duration_s"])
        wav = tmp_path / f"{row['recording_id']}.wav"
        assert main(["--config", str(box), "export-audio", row["recording_id"], "--out", str(wav)]) == 0
        audio, rate = sf.read(wav, dtype="int16")
        if row["call_id"] in generated:       # after the re-INVITE: caller's 440 Hz, callee's 1000 Hz
            tail = audio[-rate:].astype(np.float64)
            assert tone_energy(tail[:, 0], rate, 440) > 100 * tone_energy(tail[:, 0], rate, 1000), row["call_id"]
            assert tone_energy(tail[:, 1], rate, 1000) > 100 * tone_energy(tail[:, 1], rate, 440), row["call_id"]
        else:
            assert peak_correlation(audio[:, 0].astype(np.float64), speech[: 4 * rate]) > 0.9, row["call_id"]


def test_a_killed_worker_is_restarted_and_loses_only_its_calls_in_flight(netns: list[str], box: Path,
                                                                        tmp_path: Path) -> None:
    daemon = Daemon(netns, box, tmp_path)
    uas = sipp(netns, tmp_path / "sipp", "-sn", "uas", "-i", "127.0.0.1", "-p", "5072", "-mp", "26000", "-rtp_echo")
    later = None
    try:
        time.sleep(0.5)
        first = [uac(netns, tmp_path / "sipp", 5073, media_base_for(0, 3, 28000), 3, 2),
                 uac(netns, tmp_path / "sipp", 5074, media_base_for(1, 3, 29000), 3, 2)]   # killed mid-call
        time.sleep(3.0)
        before = daemon.workers()
        assert sorted(before) == [0, 1], before
        os.kill(before[1], signal.SIGKILL)
        killed_at = time.time()
        later = uac(netns, tmp_path / "sipp", 5075, media_base_for(1, 2, 31000), 2, 2)   # while it restarts
        wait_for(lambda: daemon.workers().get(1) not in (None, before[1]), 15, "worker 1 to be restarted")
        assert daemon.workers()[0] == before[0]
        for proc in [*first, later]:
            assert proc.wait(timeout=60) == 0, "a SIPp UAC failed"
        metrics = daemon.wait_idle(5, 20)     # worker 1's interrupted calls are not its any more
    finally:
        uas.terminate()
        if later is not None and later.poll() is None:
            later.kill()
        code = daemon.stop()
    assert code == 0, daemon.log.read_text()[-3000:]
    log_text = daemon.log.read_text()
    assert f"worker 1 (pid {before[1]}) exited with signal 9" in log_text
    assert metrics['recorderd_worker_restarts_total{worker="1"}'] == 1
    assert metrics['recorderd_worker_restarts_total{worker="0"}'] == 0

    rows, listed, metadata = catalogue(box)
    assert listed == []
    assert Counter(Counter(r["call_id"] for r in rows).values()) == {1: 8}    # every call, once
    partial = [r for r in rows if r["state"] == "partial"]
    complete = [r for r in rows if r["state"] == "complete"]
    assert len(partial) == 3 and len(complete) == 5, [(r["call_id"], r["state"]) for r in rows]
    for row in partial:                # worker 1's calls in flight: recovered, audio up to the kill
        assert "recovered after a recorder crash" in row["partial_note"]
        assert row["duration_s"] > 0.5, row
    started = {r["call_id"]: metadata[r["recording_id"]]["started_at_epoch"] for r in complete}
    after_kill = [cid for cid, t in started.items() if t > killed_at]
    assert len(after_kill) == 2, started          # the calls placed while worker 1 was restarting
    for row in complete:
        assert abs(row["duration_s"] - 8.0) < 0.2, (row["call_id"], row["duration_s"])
    verify = subprocess.run([sys.executable, "-m", "recorderd", "--config", str(box), "verify"],
                            capture_output=True, text=True, env=ENV, timeout=120)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_a_stalled_worker_stops_the_watchdog_pings_until_it_moves_again(netns: list[str], box: Path,
                                                                      tmp_path: Path) -> None:
    """Each worker is a watchdog stage of the daemon, fresh only while the worker reports with
    every one of its own stages fresh: a worker that stops (SIGSTOP: its engine, captures,
    everything) withholds WATCHDOG=1, so systemd would restart the service; pings come back
    when it runs again."""
    box.write_text(box.read_text().replace("stage_max_age_s = 10.0", "stage_max_age_s = 2.0"))
    daemon = Daemon(netns, box, tmp_path, env={"WATCHDOG_USEC": "1000000"})      # a ping every 0.5 s
    stopped = 0
    try:
        wait_for(lambda: len(daemon.workers()) == 2, 15, "both workers")
        time.sleep(2.0)
        healthy_from = time.monotonic()
        time.sleep(3.0)
        assert daemon.pings_between(healthy_from, time.monotonic()) >= 4, daemon.messages[-10:]
        stopped = daemon.workers()[1]
        os.kill(stopped, signal.SIGSTOP)
        stalled_at = time.monotonic()
        time.sleep(6.0)              # past stage_max_age_s, plus a report period and a ping interval
        silent_from = stalled_at + 3.5
        assert daemon.pings_between(silent_from, time.monotonic()) == 0, daemon.messages[-10:]
        os.kill(stopped, signal.SIGCONT)
        stopped = 0
        resumed_at = time.monotonic()
        wait_for(lambda: daemon.pings_between(resumed_at, time.monotonic()) >= 2, 10, "pings after SIGCONT")
    finally:
        if stopped:
            os.kill(stopped, signal.SIGCONT)
        code = daemon.stop()
    assert code == 0, daemon.log.read_text()[-3000:]
    assert "withholding watchdog pings" in daemon.log.read_text()


def test_a_jitter_window_too_short_for_forwarding_stops_start_up(box: Path, capsys: pytest.CaptureFixture[str]) -> None:
    box.write_text(box.read_text().replace("jitter_window_s = 0.5", "jitter_window_s = 0.3"))
    assert main(["--config", str(box), "run"]) == 2
    assert "capture.jitter_window_s: 0.3 is too short for capture.workers > 1" in capsys.readouterr().err
