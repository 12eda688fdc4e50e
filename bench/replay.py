#!/usr/bin/env python3
"""Offline replay benchmark: `recorderd replay` vs. `tshark -z rtp,streams` on the same capture.

Generates (or reuses from the cache directory) a G.711 capture of N calls × S seconds with full
SIP dialogs (default 200 × 60 s ≈ 1.2 M RTP packets), then in the same run:

1. runs `recorderd replay FILE --out DIR` as a child process: wall time, peak RSS;
2. runs `recorderd replay` on a 1-call capture: the baseline RSS of the process itself;
3. runs `tshark -n -q -r FILE -z rtp,streams` (RTP found through the SIP/SDP, as the recorder
   must): wall time, peak RSS;

and prints both times, their ratio (target <= 0.5), packets/s, peak RSS and RSS per concurrent
call (target <= 100 KB). Not a test: it prints figures; the exit status is non-zero only when a
command fails. Usage: see bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.gen.bulk import write_bulk_g711  # noqa: E402
from tests.gen.tshark import parse_rtp_streams  # noqa: E402

RATIO_TARGET = 0.5
RSS_PER_CALL_TARGET_KB = 100


@dataclass(slots=True)
class CaptureInfo:
    """The benchmark capture and what it holds (stored next to it as JSON for reuse)."""

    path: str
    calls: int
    seconds: float
    concurrency: int
    seed: int
    frames: int
    rtp_packets: int
    sip_messages: int
    size: int
    generated_in_s: float | None = None     # None when reused from the cache


@dataclass(slots=True)
class ChildRun:
    """One measured child process."""

    seconds: float
    max_rss_kb: int
    exit_code: int
    stdout: str
    stderr_tail: str


def ensure_capture(cache_dir: Path, calls: int, seconds: float, concurrency: int, seed: int,
                   fresh: bool) -> CaptureInfo:
    """Reuse the cached capture when its sidecar matches the file, else generate it."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    stem = f"bulk-{calls}x{seconds:g}s-c{concurrency}-s{seed}"
    path, sidecar = cache_dir / f"{stem}.pcap", cache_dir / f"{stem}.json"
    if not fresh and path.exists() and sidecar.exists():
        info = CaptureInfo(**json.loads(sidecar.read_text()))
        if info.size == path.stat().st_size:
            info.generated_in_s = None
            return info
    print(f"generating {path} ...", file=sys.stderr)
    started = time.perf_counter()
    truth = write_bulk_g711(str(path), n_calls=calls, seconds=seconds, concurrency=concurrency, seed=seed)
    elapsed = time.perf_counter() - started
    info = CaptureInfo(str(path), calls, seconds, concurrency, seed, truth.frames, truth.rtp_packets,
                       truth.sip_messages, path.stat().st_size, elapsed)
    sidecar.write_text(json.dumps(asdict(info)))
    return info


GNU_TIME = "/usr/bin/time"


def run_measured(cmd: list[str], capture_stdout: bool = False) -> ChildRun:
    """Run ``cmd``; wall time and its peak RSS in KB.

    The RSS comes from GNU time (%M) when installed. It cannot come from this process's
    wait4/getrusage: a child spawned from a big Python process inherits the parent's RSS
    high-water mark across exec (Linux records the pre-exec mm's peak), so a 1 MB program
    would show ~50 MB. Without GNU time, /proc/<pid>/status VmHWM is polled every 10 ms.
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err, \
            tempfile.NamedTemporaryFile("r") as rss_file:
        use_time = os.access(GNU_TIME, os.X_OK)
        argv = [GNU_TIME, "-f", "%M", "-o", rss_file.name, *cmd] if use_time else cmd
        started = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out if capture_stdout else subprocess.DEVNULL, stderr=err)
        peak_kb = 0 if use_time else _poll_vmhwm(proc)
        proc.wait()
        elapsed = time.perf_counter() - started
        if use_time:
            peak_kb = int((rss_file.read().strip().splitlines() or ["0"])[-1])
        out.seek(0)
        err.seek(0)
        return ChildRun(elapsed, peak_kb, proc.returncode, out.read(), err.read()[-2000:])


def _poll_vmhwm(proc: subprocess.Popen) -> int:
    """Highest VmHWM seen in /proc/<pid>/status until the process exits."""
    peak = 0
    while proc.poll() is None:
        try:
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
        except (OSError, ValueError):
            pass
        time.sleep(0.01)
    return peak


def recorderd_command(explicit: str | None) -> list[str]:
    """The recorderd entry point: --recorderd, the venv's console script, or `python -m recorderd`."""
    if explicit:
        return explicit.split()
    script = Path(sys.executable).with_name("recorderd")
    if script.exists():
        return [str(script)]
    found = shutil.which("recorderd")
    return [found] if found else [sys.executable, "-m", "recorderd"]


def replay(recorderd: list[str], capture: str, out_dir: Path) -> ChildRun:
    """`recorderd replay FILE --out DIR` into a fresh directory."""
    shutil.rmtree(out_dir, ignore_errors=True)
    return run_measured([*recorderd, "replay", capture, "--out", str(out_dir)])


def count_output(out_dir: Path) -> tuple[int, int]:
    """(recordings written, calls listed as not recorded)."""
    wavs = len(list(out_dir.glob("*.wav")))
    listed = out_dir / "not-recorded.json"
    not_recorded = len(json.loads(listed.read_text())) if listed.exists() else 0
    return wavs, not_recorded


def _mb(kb: float) -> str:
    return f"{kb / 1024:,.1f} MB"


def _verdict(ok: bool) -> str:
    return "meets target" if ok else "MISSES target"


@dataclass(slots=True)
class MemoryRuns:
    """Replays that isolate per-call memory from the fixed working set of a batch."""

    half: CaptureInfo          # half the calls at once, same length
    half_run: ChildRun
    long: CaptureInfo          # half the calls at once, twice as long
    long_run: ChildRun


def report_memory(info: CaptureInfo, rec: ChildRun, mem: MemoryRuns) -> None:
    """Marginal memory per active call: the slope between two concurrency levels (the batch
    buffers and interpreter are a fixed cost, not a per-call one), and flatness in call length."""
    extra_calls = info.concurrency - mem.half.concurrency
    slope = (rec.max_rss_kb - mem.half_run.max_rss_kb) / extra_calls if extra_calls else 0.0
    fixed = mem.half_run.max_rss_kb - slope * mem.half.concurrency
    print(f"memory     marginal per active call = {slope:,.1f} KB "
          f"(peak {_mb(rec.max_rss_kb)} at {info.concurrency} calls vs {_mb(mem.half_run.max_rss_kb)} at "
          f"{mem.half.concurrency}; target <= {RSS_PER_CALL_TARGET_KB} KB: "
          f"{_verdict(slope <= RSS_PER_CALL_TARGET_KB)}); fixed working set {_mb(fixed)}")
    print(f"           call length: {mem.half.concurrency} calls x {mem.half.seconds:g} s peak "
          f"{_mb(mem.half_run.max_rss_kb)}, x {mem.long.seconds:g} s peak {_mb(mem.long_run.max_rss_kb)} "
          f"(flat in call length: {_verdict(mem.long_run.max_rss_kb <= 1.05 * mem.half_run.max_rss_kb)})")


def report(info: CaptureInfo, rec: ChildRun, base: ChildRun, ts: ChildRun, out_dir: Path) -> None:
    """Print the figures."""
    origin = "cached" if info.generated_in_s is None else f"generated in {info.generated_in_s:.1f} s"
    print(f"capture    {info.path}")
    print(f"           {info.calls} calls x {info.seconds:g} s, {info.concurrency} concurrent, "
          f"{info.frames:,} frames ({info.rtp_packets:,} RTP), {info.size / 1e6:,.1f} MB; {origin}")
    wavs, not_recorded = count_output(out_dir)
    print(f"recorderd  {rec.seconds:8.2f} s  {info.frames / rec.seconds:12,.0f} packets/s  "
          f"peak RSS {_mb(rec.max_rss_kb)}  exit {rec.exit_code}  "
          f"recordings {wavs}/{info.calls}, not recorded {not_recorded}")
    streams = parse_rtp_streams(ts.stdout)
    print(f"tshark     {ts.seconds:8.2f} s  {info.frames / ts.seconds:12,.0f} packets/s  "
          f"peak RSS {_mb(ts.max_rss_kb)}  exit {ts.exit_code}  "
          f"RTP streams {len(streams)}/{2 * info.calls}")
    ratio = rec.seconds / ts.seconds
    print(f"ratio      recorderd / tshark = {ratio:.2f}  (target <= {RATIO_TARGET}: {_verdict(ratio <= RATIO_TARGET)})")
    per_call_raw = rec.max_rss_kb / info.concurrency
    per_call = max(0, rec.max_rss_kb - base.max_rss_kb) / info.concurrency
    print(f"memory     baseline RSS (1-call replay) {_mb(base.max_rss_kb)}; "
          f"(peak - baseline) / {info.concurrency} concurrent calls = {per_call:,.1f} KB per call "
          f"(target <= {RSS_PER_CALL_TARGET_KB} KB: {_verdict(per_call <= RSS_PER_CALL_TARGET_KB)}); "
          f"peak / calls = {per_call_raw:,.1f} KB")
    for name, run in (("recorderd", rec), ("recorderd (baseline)", base), ("tshark", ts)):
        if run.exit_code != 0:
            print(f"{name} failed with exit {run.exit_code}:\n{run.stderr_tail}", file=sys.stderr)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=200, help="number of calls (default 200)")
    p.add_argument("--seconds", type=float, default=60.0, help="length of each call (default 60)")
    p.add_argument("--concurrency", type=int, help="calls at once (default: all of them)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "recorderd-bench",
                   help="where generated captures are kept and reused (default $TMPDIR/recorderd-bench)")
    p.add_argument("--fresh", action="store_true", help="regenerate the capture even if cached")
    p.add_argument("--keep", action="store_true", help="keep the replay output directory and print its path")
    p.add_argument("--recorderd", help="command to run instead of the recorderd entry point")
    p.add_argument("--no-memory-runs", action="store_true",
                   help="skip the two extra replays that measure marginal memory per call")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    concurrency = args.concurrency or args.calls
    info = ensure_capture(args.cache_dir, args.calls, args.seconds, concurrency, args.seed, args.fresh)
    tiny = ensure_capture(args.cache_dir, 1, 1.0, 1, args.seed, args.fresh)
    recorderd = recorderd_command(args.recorderd)
    work = Path(tempfile.mkdtemp(prefix="recorderd-bench-out-"))
    try:
        print("recorderd replay (baseline, 1 call) ...", file=sys.stderr)
        base = replay(recorderd, tiny.path, work / "baseline")
        print("recorderd replay ...", file=sys.stderr)
        rec = replay(recorderd, info.path, work / "out")
        print("tshark -z rtp,streams ...", file=sys.stderr)
        # tshark finds RTP the same way the recorder must: from the SDP of the SIP dialogs on 5060.
        ts = run_measured(["tshark", "-n", "-q", "-r", info.path, "-o", "rtp.heuristic_rtp:FALSE",
                           "-z", "rtp,streams"], capture_stdout=True)
        report(info, rec, base, ts, work / "out")
        if not args.no_memory_runs:
            half_calls = max(1, concurrency // 2)
            half = ensure_capture(args.cache_dir, half_calls, args.seconds, half_calls, args.seed, args.fresh)
            long = ensure_capture(args.cache_dir, half_calls, 2 * args.seconds, half_calls, args.seed, args.fresh)
            print("recorderd replay (half the calls; twice as long) ...", file=sys.stderr)
            mem = MemoryRuns(half, replay(recorderd, half.path, work / "half"),
                             long, replay(recorderd, long.path, work / "long"))
            report_memory(info, rec, mem)
    finally:
        if args.keep:
            print(f"output kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if rec.exit_code == base.exit_code == ts.exit_code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
