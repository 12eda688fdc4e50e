#!/usr/bin/env python3
"""Live capture benchmark: `recorderd run` recording a tcpreplay'd capture, tcpdump beside it.

For each concurrent-call count in --rates (default 250, 500, 1000, 2000) it:

1. generates (or reuses from the cache directory) a capture of that many concurrent G.711 calls
   of --seconds each (tests/gen/bulk.py, the same cache as bench/replay.py): 100 packets/s
   per call, so 2,000 calls = 200 k packets/s;
2. sets up an appliance (`recorderd init`; interfaces = the capture interface, metrics on a
   free localhost port, min_free_mb = 0) and starts `recorderd run` pinned to one core
   (taskset, --daemon-cpus), waiting for READY=1 on a NOTIFY_SOCKET it keeps draining, and
   `tcpdump -i IF -w /dev/null` as the reference;
3. replays the capture in real time (never --topspeed) with `tcpreplay -K` onto one end of a
   veth pair inside a network namespace created for the run (no addresses, no route out;
   deleted at the end, also on error), or onto `lo` with --interface lo. By default at the
   capture's steady packet rate (`--pps`, 100 per call), since tcpreplay 4.4's pacing by the
   capture's timestamps drifts behind at these rates (--timing capture to use it anyway);
4. waits until the daemon has finished every call (bounded), then reads its metrics
   (recorderd_kernel_drops_total, packets, calls), its CPU seconds (/proc/PID/stat) and peak
   RSS (VmHWM), stops both, reads tcpdump's "packets dropped by kernel", and counts the
   recordings with `recorderd search --json`.

It prints one line per rate and whether >= 2,000 calls reached 0 drops and 100 % complete
recordings (the target of issue 4: on one core, for 10 minutes). Not a test: the exit status
is non-zero only when a command fails. Needs root (network namespaces, AF_PACKET). Usage: see
bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.replay import CaptureInfo, ensure_capture, recorderd_command  # noqa: E402
from recorderd.config import load as load_config  # noqa: E402

TARGET_CALLS = 2000
TARGET_SECONDS = 600.0
PACKETS_PER_CALL_S = 100            # two G.711 streams × 50 packets/s (20 ms ptime)
VAULT_BYTES_PER_CALL_S = 32_000     # 8 kHz stereo 16-bit audio, encrypted (a few % more with framing)
PCAP_BYTES_PER_PACKET = 246         # 16-byte record header + 230-byte RTP frame
# tcpreplay -K keeps its own record per cached packet besides the bytes: a 240 s run (11 GB,
# 48 M packets) counted as "under half the RAM" by size alone was killed by the OOM killer
TCPREPLAY_BYTES_PER_PACKET = 160
DURATION_SLACK_S = 0.1
# --timing pps sends the ramps faster than recorded: a call whose setup came x s into the first
# second loses (1 - x)²/2 s at its start and about x²/2 s at its end, 0.25-0.5 s in all.
PPS_RAMP_SHORTENING_S = 0.5
TX_IF, RX_IF = "rdb-tx", "rdb-rx"   # names inside the namespace the script creates
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 120.0
POLL_S = 1.0
KERNEL_STATS_PERIOD_S = 1.0         # the daemon refreshes its kernel counters this often
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- records ---------------------------------------------------------------------------------

@dataclass(slots=True)
class Link:
    """Where the replay goes in and where it is captured, and how to run a command there."""

    tx: str
    rx: str
    prefix: list[str]               # `ip netns exec NS` or nothing (lo)
    netns: str | None = None


@dataclass(slots=True)
class ReplayStats:
    """tcpreplay's own summary."""

    exit_code: int
    packets: int = 0
    seconds: float = 0.0
    pps: float = 0.0
    failed: int = 0
    output_tail: str = ""


@dataclass(slots=True)
class TcpdumpStats:
    captured: int = 0
    received: int = 0
    dropped: int = 0


@dataclass(slots=True)
class RecordingCounts:
    """What `recorderd search` lists after the run."""

    listed: int = 0
    states: Counter[str] = field(default_factory=Counter)
    complete: int = 0               # state complete, every packet received and placed, full duration
    durations: list[float] = field(default_factory=list)
    late_samples: int = 0           # audio that arrived after its place was written (lost), all calls
    with_late: int = 0              # recordings with any


@dataclass(slots=True)
class RateResult:
    calls: int
    capture: CaptureInfo
    replay: ReplayStats | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    drained: bool = False
    catch_up_s: float = 0.0         # after the replay, until the daemon had finished every call
    cpu_s: float = 0.0
    cpu_split: list[float] = field(default_factory=list)   # per process (the fanout daemon, then its workers)
    peak_rss_kb: int = 0
    tcpdump: TcpdumpStats | None = None
    recordings: RecordingCounts | None = None
    daemon_exit: int | None = None
    error: str | None = None

    @property
    def drops(self) -> int:
        return int(self.metrics.get("recorderd_kernel_drops_total", -1))

    @property
    def cpu_percent(self) -> float:
        return 100.0 * self.cpu_s / self.replay.seconds if self.replay and self.replay.seconds else 0.0


# -- processes -------------------------------------------------------------------------------

class Children:
    """Every process the benchmark starts, so that an error or a signal still stops them."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                stop_process(proc, signal.SIGTERM, 10.0)
        self.procs.clear()


def stop_process(proc: subprocess.Popen[bytes], sig: int, timeout: float,
                 while_waiting: Callable[[], None] | None = None) -> int:
    """Send ``sig`` and wait up to ``timeout`` (calling ``while_waiting`` meanwhile); SIGKILL after."""
    if proc.poll() is None:
        proc.send_signal(sig)
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if while_waiting:
            while_waiting()
        time.sleep(0.1)
    if proc.poll() is None:
        proc.kill()
    return proc.wait()


def run_checked(cmd: list[str], timeout: float) -> str:
    """Run a short command; its stdout, or RuntimeError with its output."""
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {(done.stdout + done.stderr)[-1500:]}")
    return done.stdout


def wait_for_text(log: Path, text: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Until ``text`` appears in the process's log (RuntimeError if it exits or times out)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError(f"no {text!r} from {proc.args!r}: {log.read_text(errors='replace')[-1500:]}")


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the daemon's worker processes with capture.workers > 1),
    from /proc/PID/task/TID/children of every thread (a restarted worker is the child of the
    thread that started it)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def cpu_by_process(pid: int) -> dict[int, float]:
    """utime + stime of every thread of ``pid`` and of each descendant (/proc/PID/stat fields
    14 and 15, proc(5))."""
    found = {}
    for member in process_tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        found[member] = (int(fields[11]) + int(fields[12])) / CLK_TCK   # fields after "(comm)" start at field 3
    return found


def peak_rss_kb(pid: int) -> int:
    """VmHWM summed over ``pid`` and its descendants: each process's own RSS high-water mark
    (not inherited across exec, unlike ru_maxrss)."""
    total = 0
    for member in process_tree(pid):
        try:
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


# -- network namespace -----------------------------------------------------------------------

@contextmanager
def capture_link(interface: str) -> Iterator[Link]:
    """A veth pair inside a fresh network namespace (removed on exit), or the named interface."""
    if interface != "veth":
        yield Link(interface, interface, [])
        return
    name = f"rdbench{os.getpid()}"
    run_checked(["ip", "netns", "add", name], 10)
    try:
        ns = ["ip", "netns", "exec", name]
        # No IPv6 on the pair: no router or multicast-listener solicitations among the counted packets.
        run_checked([*ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
                     "net.ipv6.conf.default.disable_ipv6=1"], 10)
        run_checked(["ip", "-n", name, "link", "add", TX_IF, "type", "veth", "peer", "name", RX_IF], 10)
        for dev in ("lo", TX_IF, RX_IF):        # lo for the metrics endpoint; no addresses, no routes
            run_checked(["ip", "-n", name, "link", "set", dev, "up"], 10)
        yield Link(TX_IF, RX_IF, ns, name)
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the appliance and the daemon ------------------------------------------------------------

def set_setting(text: str, section: str, key: str, value: str) -> str:
    """Replace ``key = ...`` inside ``[section]`` of a TOML text by ``key = value`` (a TOML literal)."""
    lines, current, done = text.splitlines(), "", False
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("["):
            current = stripped.strip("[]")
        elif current == section and re.match(rf"{re.escape(key)}\s*=", stripped):
            lines[i], done = f"{key} = {value}", True
    if not done:
        raise RuntimeError(f"{section}.{key} not found in the configuration")
    return "\n".join(lines) + "\n"


def make_appliance(recorderd: list[str], box: Path, interface: str, port: int,
                   overrides: list[tuple[str, str, str]]) -> Path:
    """`recorderd init BOX`, then the settings the benchmark needs (and --set overrides)."""
    config = Path(run_checked([*recorderd, "init", str(box)], 60).strip().splitlines()[-1])
    text = config.read_text()
    for section, key, value in [("capture", "interfaces", json.dumps([interface])),
                                ("daemon", "metrics_listen", json.dumps(f"127.0.0.1:{port}")),
                                ("daemon", "min_free_mb", "0"), ("daemon", "resume_free_mb", "0"),
                                *overrides]:
        text = set_setting(text, section, key, value)
    config.write_text(text)
    return config


class NotifyListener:
    """The NOTIFY_SOCKET end, as systemd: READY=1 and the last STATUS=. It keeps reading, since
    a datagram sender blocks once the socket's queue is full."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.ready = threading.Event()
        self.status = ""
        self.closing = threading.Event()
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()

    def _drain(self) -> None:
        while not self.closing.is_set():
            try:
                message = self.sock.recv(4096).decode(errors="replace")
            except (TimeoutError, OSError):
                continue
            for line in message.splitlines():
                if line == "READY=1":
                    self.ready.set()
                elif line.startswith("STATUS="):
                    self.status = line.removeprefix("STATUS=")

    def close(self) -> None:
        self.closing.set()
        self.thread.join(timeout=2)
        self.sock.close()
        self.path.unlink(missing_ok=True)


def start_daemon(children: Children, recorderd: list[str], link: Link, config: Path, cpus: str,
                 notify: NotifyListener, log: Path) -> subprocess.Popen[bytes]:
    """`recorderd run` in the link's namespace, pinned to ``cpus``; returns once READY=1 arrived.
    `ip netns exec` and `taskset` exec in place, so the process id is the daemon's own."""
    env = {**os.environ, "NOTIFY_SOCKET": str(notify.path), "PYTHONPATH": str(REPO)}
    env.pop("WATCHDOG_USEC", None)
    proc = children.start([*link.prefix, "taskset", "-c", cpus, *recorderd, "--config", str(config), "run"],
                          log, env)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not notify.ready.wait(0.2):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"no READY=1 from the daemon: {log.read_text(errors='replace')[-2000:]}")
    return proc


def scrape_metrics(link: Link, port: int) -> dict[str, float]:
    """The daemon's Prometheus text, each metric summed over its labels (curl runs in the namespace)."""
    done = subprocess.run([*link.prefix, "curl", "-sf", "--max-time", "5", f"http://127.0.0.1:{port}/metrics"],
                          capture_output=True, text=True, timeout=15)
    totals: dict[str, float] = {}
    for line in done.stdout.splitlines():
        if line and not line.startswith("#"):
            name_labels, _, value = line.rpartition(" ")
            name = name_labels.partition("{")[0]
            totals[name] = totals.get(name, 0.0) + float(value)
    return totals


def wait_until_drained(link: Link, port: int, calls: int, timeout: float) -> tuple[bool, float, dict[str, float]]:
    """Until the daemon has finished every call (no active call, calls_total >= calls), bounded;
    then one more kernel-counter refresh. (drained, seconds it took, the final metrics)."""
    started = time.monotonic()
    drained = False
    while time.monotonic() - started < timeout:
        metrics = scrape_metrics(link, port)
        if metrics.get("recorderd_active_calls", 1) == 0 and metrics.get("recorderd_calls_total", 0) >= calls:
            drained = True
            break
        time.sleep(POLL_S)
    waited = time.monotonic() - started
    time.sleep(KERNEL_STATS_PERIOD_S + 0.2)
    return drained, waited, scrape_metrics(link, port)


# -- tcpreplay and tcpdump -------------------------------------------------------------------

def _number(pattern: str, text: str, kind: type = int) -> float:
    found = re.search(pattern, text)
    return kind(found.group(1).replace(",", "")) if found else 0


def pacing_options(timing: str, capture: CaptureInfo) -> list[str]:
    """tcpreplay's pace. "capture": the capture's own timestamps. tcpreplay 4.4 sleeps packet
    by packet from deltas and the oversleeps add up (appneta/tcpreplay#724): measured here, a
    2,000-call capture went out at 112 k instead of 200 k packets/s. "pps": a fixed rate, paced
    from the start time (no drift), set to the capture's steady rate (100 packets/s per call),
    so every RTP stream arrives at its real 50 packets/s; only the ramps (call setups spread
    over the first second, stream ends over the last) go out faster than recorded."""
    return [] if timing == "capture" else [f"--pps={capture.calls * PACKETS_PER_CALL_S}"]


def run_tcpreplay(link: Link, capture: CaptureInfo, cpus: str, timing: str, preload: bool, log: Path,
                  timeout: float, progress: Callable[[], str]) -> ReplayStats:
    """tcpreplay (never --topspeed) onto the link; stderr gets a progress line every 10 s."""
    cmd = [*link.prefix, "taskset", "-c", cpus, "tcpreplay", "-i", link.tx, *pacing_options(timing, capture),
           *(["-K"] if preload else []), capture.path]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    started = last = time.monotonic()
    try:
        while proc.poll() is None:
            now = time.monotonic()
            if now - started > timeout:
                raise RuntimeError(f"tcpreplay still running after {timeout:.0f} s; killed")
            if now - last >= 10:
                print(f"  ... {now - started:5.0f} s  daemon: {progress()}", file=sys.stderr)
                last = now
            time.sleep(0.2)
    finally:   # also on an error or a signal: no replay may outlive the run
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text(errors="replace")
    return ReplayStats(proc.returncode, int(_number(r"Actual: ([\d,]+) packets", text)),
                       float(_number(r"sent in ([\d.]+) seconds", text, float)),
                       float(_number(r"([\d.]+) pps", text, float)),
                       int(_number(r"Failed packets:\s+(\d+)", text)), text[-1500:])


def start_tcpdump(children: Children, link: Link, cpus: str, log: Path) -> subprocess.Popen[bytes]:
    proc = children.start([*link.prefix, "taskset", "-c", cpus, "tcpdump", "-n", "-i", link.rx, "-w", "/dev/null"],
                          log)
    wait_for_text(log, "listening on", proc, 30)
    return proc


def stop_tcpdump(proc: subprocess.Popen[bytes], log: Path) -> TcpdumpStats:
    """SIGINT, then its closing lines: captured / received by filter / dropped by kernel."""
    stop_process(proc, signal.SIGINT, 30)
    text = log.read_text(errors="replace")
    return TcpdumpStats(int(_number(r"(\d+) packets? captured", text)),
                        int(_number(r"(\d+) packets? received by filter", text)),
                        int(_number(r"(\d+) packets? dropped by kernel", text)))


# -- recordings ------------------------------------------------------------------------------

def late_samples(config: Path) -> dict[str, int]:
    """Per recording, the samples that reached the engine after their place on the timeline had
    been written (metadata completeness.late_samples): audio lost although every packet was
    captured, e.g. flushed as silence while the engine was behind. Read from the catalog
    (read-only): `recorderd search` does not list it."""
    catalog = load_config(config)["storage"]["catalog"]   # resolved against the config's directory
    with contextlib.closing(sqlite3.connect(f"file:{catalog}?mode=ro", uri=True)) as db:
        rows = db.execute("SELECT recording_id, json_extract(metadata, '$.completeness.late_samples') "
                          "FROM recordings").fetchall()
    return {rid: int(late or 0) for rid, late in rows}


def count_recordings(recorderd: list[str], config: Path, calls: int, seconds: float, timing: str) -> RecordingCounts:
    """`recorderd search --json`: rows by state, and how many are complete: state complete,
    every RTP packet of both legs received, none of their audio late (see `late_samples`), and
    their full length (the generator's streams last ``seconds`` − 10 ms; less the ramp
    shortening with --timing pps)."""
    shortest = seconds - DURATION_SLACK_S - (PPS_RAMP_SHORTENING_S if timing == "pps" else 0.0)
    listing = json.loads(run_checked([*recorderd, "--config", str(config), "search", "--json",
                                      "--limit", str(calls + 100)], 300))
    late = late_samples(config)
    counts = RecordingCounts(listed=len(listing["rows"]))
    for row in listing["rows"]:
        counts.states[row["state"]] += 1
        counts.durations.append(row["duration_s"] or 0.0)
        full_length = shortest <= counts.durations[-1] <= seconds + DURATION_SLACK_S
        lost = late.get(row["recording_id"], 0)
        counts.late_samples += lost
        counts.with_late += bool(lost)
        if row["state"] == "complete" and row["completeness"] == 1.0 and full_length and not lost:
            counts.complete += 1
    return counts


# -- one rate --------------------------------------------------------------------------------

@dataclass(slots=True)
class Settings:
    """What every rate's run shares."""

    recorderd: list[str]
    link: Link
    work: Path
    daemon_cpus: str
    load_cpus: str
    timing: str
    drain_timeout: float
    overrides: list[tuple[str, str, str]]
    keep: bool


def run_rate(s: Settings, capture: CaptureInfo, children: Children) -> RateResult:
    """Daemon and tcpdump on the receiving end, tcpreplay on the sending end, then the figures."""
    result = RateResult(capture.calls, capture)
    run_dir = s.work / f"calls-{capture.calls}"
    run_dir.mkdir(parents=True)
    port = free_port()
    config = make_appliance(s.recorderd, run_dir / "box", s.link.rx, port, s.overrides)
    notify = NotifyListener(run_dir / "notify.sock")
    daemon = tcpdump = None
    try:
        print(f"[{capture.calls} calls] starting tcpdump and recorderd run (cpus {s.daemon_cpus}) ...",
              file=sys.stderr)
        tcpdump = start_tcpdump(children, s.link, s.load_cpus, run_dir / "tcpdump.log")
        daemon = start_daemon(children, s.recorderd, s.link, config, s.daemon_cpus, notify, run_dir / "daemon.log")
        preload = capture.size + capture.frames * TCPREPLAY_BYTES_PER_PACKET < available_memory() // 2
        print(f"[{capture.calls} calls] tcpreplay {' '.join(pacing_options(s.timing, capture))} "
              f"{'-K' if preload else '(no -K: cache > RAM/2)'}: {capture.frames:,} packets ...", file=sys.stderr)
        cpu_before = cpu_by_process(daemon.pid)
        result.replay = run_tcpreplay(s.link, capture, s.load_cpus, s.timing, preload, run_dir / "tcpreplay.log",
                                      3 * capture.seconds + 120, lambda: notify.status)
        if result.replay.exit_code != 0:
            raise RuntimeError(f"tcpreplay exited {result.replay.exit_code}: {result.replay.output_tail}")
        print(f"[{capture.calls} calls] waiting for the daemon to finish the calls "
              f"(at most {s.drain_timeout:g} s) ...", file=sys.stderr)
        result.drained, result.catch_up_s, result.metrics = wait_until_drained(s.link, port, capture.calls, s.drain_timeout)
        cpu_after = cpu_by_process(daemon.pid)
        result.cpu_split = [seconds - cpu_before.get(member, 0.0) for member, seconds in cpu_after.items()]
        result.cpu_s = sum(result.cpu_split)
        result.tcpdump = stop_tcpdump(tcpdump, run_dir / "tcpdump.log")
        result.peak_rss_kb = peak_rss_kb(daemon.pid)
        result.daemon_exit = stop_process(daemon, signal.SIGTERM, STOP_TIMEOUT_S, lambda: _track_rss(result, daemon))
        result.recordings = count_recordings(s.recorderd, config, capture.calls, capture.seconds, s.timing)
        if result.daemon_exit != 0:
            result.error = f"daemon exited {result.daemon_exit}: {(run_dir / 'daemon.log').read_text()[-1500:]}"
    except (RuntimeError, OSError, subprocess.TimeoutExpired, ValueError, KeyError) as err:
        result.error = str(err)
    finally:
        for proc in (daemon, tcpdump):
            if proc is not None and proc.poll() is None:
                stop_process(proc, signal.SIGTERM, 30)
        notify.close()
        if not s.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
    return result


def _track_rss(result: RateResult, daemon: subprocess.Popen[bytes]) -> None:
    result.peak_rss_kb = max(result.peak_rss_kb, peak_rss_kb(daemon.pid))


def available_memory() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


# -- planning --------------------------------------------------------------------------------

def cached_size(cache_dir: Path, calls: int, seconds: float, seed: int) -> int:
    """Size of the cached capture for this rate, 0 when it would have to be generated."""
    stem = f"bulk-{calls}x{seconds:g}s-c{calls}-s{seed}"
    path = cache_dir / f"{stem}.pcap"
    return path.stat().st_size if path.exists() and (cache_dir / f"{stem}.json").exists() else 0


def check_disk(args: argparse.Namespace, work: Path) -> None:
    """Refuse to start when the captures still to generate and the largest vault cannot fit."""
    new_pcaps = sum(calls * args.seconds * PACKETS_PER_CALL_S * PCAP_BYTES_PER_PACKET
                    for calls in args.rates if not cached_size(args.cache_dir, calls, args.seconds, args.seed)
                    or args.fresh)
    vault = max(args.rates) * args.seconds * VAULT_BYTES_PER_CALL_S * 1.1
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    same_fs = os.stat(args.cache_dir).st_dev == os.stat(work).st_dev
    needs = {args.cache_dir: new_pcaps + (vault if same_fs else 0)}
    if not same_fs:
        needs[work] = vault
    for where, need in needs.items():
        st = os.statvfs(where)
        free = st.f_bavail * st.f_frsize
        if need + (1 << 30) > free:
            raise SystemExit(f"live.py: {where} has {free / 1e9:.1f} GB free; this run needs about "
                             f"{need / 1e9:.1f} GB (captures to generate, the largest vault) + 1 GB")


def parse_overrides(items: list[str]) -> list[tuple[str, str, str]]:
    """--set section.key=TOML-value."""
    result = []
    for item in items:
        name, sep, value = item.partition("=")
        section, dot, key = name.partition(".")
        if not (sep and dot and section and key and value):
            raise SystemExit(f"live.py: --set expects section.key=value, got {item!r}")
        result.append((section, key, value))
    return result


# -- report ----------------------------------------------------------------------------------

HEADER = (f"{'calls':>6} {'packets/s':>10} {'daemon CPU':>10} {'drops daemon/tcpdump':>21} "
          f"{'complete recordings':>22} {'peak RSS':>10}")


def report_line(r: RateResult) -> str:
    """The per-rate figures; a detail line with the packet counts and recording states."""
    if r.replay is None or r.recordings is None or r.tcpdump is None:
        return f"{r.calls:>6} FAILED: {r.error}"
    complete_pct = 100.0 * r.recordings.complete / r.calls
    line = (f"{r.calls:>6} {r.replay.pps:>10,.0f} {r.cpu_percent:>9.1f}% "
            f"{r.drops:>10,} / {r.tcpdump.dropped:<10,}"
            f"{r.recordings.complete:>8,}/{r.calls:<6,} {complete_pct:6.1f}% "
            f"{r.peak_rss_kb / 1024:>7,.1f} MB")
    states = ", ".join(f"{n} {state}" for state, n in sorted(r.recordings.states.items()))
    detail = (f"{'':>6} sent {r.replay.packets:,} in {r.replay.seconds:.1f} s (failed {r.replay.failed}); "
              f"daemon saw {int(r.metrics.get('recorderd_packets_total', 0)):,}, tcpdump "
              f"{r.tcpdump.received:,}; CPU {r.cpu_s:.1f} s"
              f"{' (' + ' + '.join(f'{s:.1f}' for s in r.cpu_split) + ' by process)' if len(r.cpu_split) > 1 else ''}"
              f"; finished the calls {r.catch_up_s:.0f} s after the "
              f"replay; catalog: {r.recordings.listed} rows ({states}), "
              f"durations {min(r.recordings.durations, default=0):.2f}-{max(r.recordings.durations, default=0):.2f} s"
              f"; late audio {r.recordings.late_samples / 8000:.1f} s in {r.recordings.with_late} recordings"
              f"{'' if r.drained else '; NOT DRAINED in time'}")
    return line + "\n" + detail + (f"\n{'':>6} error: {r.error}" if r.error else "")


def verdict(results: list[RateResult], seconds: float, daemon_cpus: str) -> str:
    at_target = [r for r in results if r.calls >= TARGET_CALLS]
    if not at_target:
        return (f"target (>= {TARGET_CALLS:,} calls, {TARGET_CALLS * PACKETS_PER_CALL_S // 1000} k packets/s, "
                f"0 drops, 100 % complete): not measured in this run (largest rate "
                f"{max(r.calls for r in results):,} calls)")
    ok = all(r.recordings is not None and r.drops == 0 and r.recordings.complete == r.calls for r in at_target)
    length = "" if seconds >= TARGET_SECONDS else f"; calls lasted {seconds:g} s, the target run is {TARGET_SECONDS:g} s"
    return (f"target (>= {TARGET_CALLS:,} calls, 0 drops, 100 % complete) on cpus {daemon_cpus}: "
            f"{'MET' if ok else 'MISSED'}{length}")


# -- main ------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--rates", type=lambda text: [int(x) for x in text.split(",")], default=[250, 500, 1000, 2000],
                   help="concurrent-call counts, comma-separated (default 250,500,1000,2000)")
    p.add_argument("--seconds", type=float, default=60.0, help="length of the calls (default 60; the target is 600)")
    p.add_argument("--interface", default="veth",
                   help='"veth" (default): a veth pair in a namespace created for the run; or "lo"')
    p.add_argument("--daemon-cpus", default="1", help="taskset CPU list for the daemon (default 1: one core)")
    p.add_argument("--load-cpus", default="0", help="taskset CPU list for tcpreplay and tcpdump (default 0)")
    p.add_argument("--timing", choices=["pps", "capture"], default="pps",
                   help="tcpreplay pace: the capture's steady packet rate (default, drift-free) or its "
                        "own timestamps (tcpreplay 4.4 falls behind at high rates)")
    p.add_argument("--drain-timeout", type=float, default=60.0,
                   help="after the replay, wait at most this long for the daemon to finish the calls (default 60)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="extra setting for the daemon's configuration (TOML value), e.g. capture.ring_blocks=256")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "recorderd-bench",
                   help="where generated captures are kept and reused (default $TMPDIR/recorderd-bench)")
    p.add_argument("--fresh", action="store_true", help="regenerate the captures even if cached")
    p.add_argument("--keep", action="store_true", help="keep the appliances and logs and print where they are")
    p.add_argument("--recorderd", help="command to run instead of the recorderd entry point")
    return p.parse_args(argv)


def check_cpus(*cpu_lists: str) -> None:
    have = os.sched_getaffinity(0)
    for cpus in cpu_lists:
        wanted = {int(c) for part in cpus.split(",") for c in _cpu_range(part)}
        if not wanted <= have:
            raise SystemExit(f"live.py: CPU list {cpus} is not within this machine's {sorted(have)}")


def _cpu_range(part: str) -> range:
    low, _, high = part.partition("-")
    return range(int(low), int(high or low) + 1)


def _raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(f"live.py: signal {signum}, cleaning up")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("live.py: needs root (network namespace, AF_PACKET capture)")
    check_cpus(args.daemon_cpus, args.load_cpus)
    overrides = parse_overrides(args.overrides)
    recorderd = recorderd_command(args.recorderd)
    work = Path(tempfile.mkdtemp(prefix="recorderd-live-"))
    check_disk(args, work)
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    children = Children()
    results: list[RateResult] = []
    per_rate = args.seconds + 1.5 + args.drain_timeout + 30
    load_before = os.getloadavg()
    print(f"live benchmark: rates {args.rates}, {args.seconds:g} s calls, at most ~"
          f"{len(args.rates) * (per_rate + 3 * args.seconds + 120) / 60:.0f} min (typically "
          f"{len(args.rates) * per_rate / 60:.0f} min plus capture generation)", file=sys.stderr)
    try:
        with capture_link(args.interface) as link:
            settings = Settings(recorderd, link, work, args.daemon_cpus, args.load_cpus, args.timing, args.drain_timeout,
                                overrides, args.keep)
            for calls in args.rates:
                capture = ensure_capture(args.cache_dir, calls, args.seconds, calls, args.seed, args.fresh)
                results.append(run_rate(settings, capture, children))
                print(report_line(results[-1]), file=sys.stderr)
    finally:
        children.stop_all()
        if args.keep:
            print(f"appliances and logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    where = f"veth pair in a namespace ({link.rx})" if link.netns else link.rx
    workers = next((value for section, key, value in overrides if (section, key) == ("capture", "workers")), "1")
    print(f"live capture on {where}; daemon ({workers} worker process{'es' if workers != '1' else ''}; CPU and "
          f"RSS summed over its processes) pinned to cpus {args.daemon_cpus}, tcpreplay ({args.timing} "
          f"timing) and tcpdump to {args.load_cpus}; G.711 calls of {args.seconds:g} s, 100 packets/s per call; "
          f"load average {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after")
    print(HEADER)
    for result in results:
        print(report_line(result))
    print(verdict(results, args.seconds, args.daemon_cpus))
    return 0 if all(r.error is None for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
