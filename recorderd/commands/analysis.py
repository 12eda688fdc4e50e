"""`recorderd analysis run|status|enqueue|show`: the transcription and analytics worker.

`run` is what systemd/recorderd-analysis.service starts: it lowers its own priority first
(nice, SCHED_IDLE, idle I/O class — settings), takes the worker lock (one worker per catalog:
it may then treat 'running' queue rows as left over by a killed worker), loads the model,
says READY=1 to systemd, and works through the queue until SIGTERM (``--once``: until the
queue is empty).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from analysis import store
from analysis.rules import RulesError, load_rules
from analysis.transcribe import ModelError, WhisperTranscriber
from analysis.worker import AnalysisSettings, AnalysisWorker
from recorderd.appliance import Appliance, cli_actor
from recorderd.commands.common import EXIT_OK, EXIT_PROBLEM, UsageError
from recorderd.commands.store import ROLE, appliance_from
from recorderd.logsetup import configure_logging
from recorderd.sdnotify import Notifier
from storage.catalog import to_epoch

IOPRIO_WHO_PROCESS, IOPRIO_CLASS_IDLE = 1, 3     # linux/ioprio.h
_SYS_IOPRIO_SET = {"x86_64": 251, "aarch64": 30}


def register(sub: argparse._SubParsersAction) -> None:
    analysis = sub.add_parser("analysis", help="transcripts, phrase rules, call metrics, risk (the analysis worker)")
    analysis_sub = analysis.add_subparsers(dest="analysis_command", required=True)
    run = analysis_sub.add_parser("run", help="work through the analysis queue (low priority) until stopped")
    run.add_argument("--once", action="store_true", help="stop when the queue is empty")
    run.add_argument("--limit", type=int, help="stop after this many recordings")
    run.set_defaults(run=cmd_run)
    status = analysis_sub.add_parser("status", help="queue counts, backlog, throughput, failures")
    status.add_argument("--json", action="store_true")
    status.set_defaults(run=cmd_status)
    enqueue = analysis_sub.add_parser("enqueue", help="queue finished recordings (e.g. imported ones) for analysis")
    enqueue.add_argument("recording_ids", nargs="*")
    enqueue.add_argument("--since", help="recordings started at or after (ISO 8601 or epoch)")
    enqueue.add_argument("--all", action="store_true", help="every finished recording")
    enqueue.add_argument("--again", action="store_true", help="also those analysed or failed before")
    enqueue.set_defaults(run=cmd_enqueue)
    show = analysis_sub.add_parser("show", help="one recording's transcript, phrase hits and metrics")
    show.add_argument("recording_id")
    show.add_argument("--json", action="store_true")
    show.set_defaults(run=cmd_show)


def rules_path(config_path: Path, setting: str) -> Path | str:
    """analysis.rules_file: "default", or a path relative to the configuration file."""
    return setting if setting == "default" else (config_path.resolve().parent / setting)


def lower_priority(nice: int, idle_scheduling: bool) -> list[str]:
    """Make this process (and the threads it starts later) yield to everything else; returns
    what could not be done (e.g. SCHED_IDLE refused in a container)."""
    problems = []
    try:
        current = os.getpriority(os.PRIO_PROCESS, 0)
        if nice > current:
            os.setpriority(os.PRIO_PROCESS, 0, nice)
    except OSError as err:
        problems.append(f"nice {nice}: {err.strerror}")
    if idle_scheduling:
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        except OSError as err:
            problems.append(f"SCHED_IDLE: {err.strerror}")
        number = _SYS_IOPRIO_SET.get(os.uname().machine)
        if number is not None:   # ioprio_set(2) has no libc wrapper; best effort
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            if libc.syscall(number, IOPRIO_WHO_PROCESS, 0, IOPRIO_CLASS_IDLE << 13) != 0:
                problems.append(f"idle I/O class: {os.strerror(ctypes.get_errno())}")
    return problems


def _worker_lock(catalog_path: str) -> int:
    path = f"{catalog_path}.analysis.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise UsageError(f"analysis run: another analysis worker (pid {holder}) works on {catalog_path}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _worker(args: argparse.Namespace, app: Appliance, stop: threading.Event) -> AnalysisWorker:
    section = app.config["analysis"]
    try:
        settings = AnalysisSettings.from_config(section)
        rules = load_rules(rules_path(Path(args.config), section["rules_file"]))
    except RulesError as err:
        raise UsageError(f"analysis.rules_file: {err}") from err
    except ValueError as err:
        raise UsageError(str(err)) from err

    def transcriber() -> WhisperTranscriber:
        return WhisperTranscriber(section["model_dir"], languages=section["languages"], threads=section["threads"],
                                  compute_type=section["compute_type"], beam_size=section["beam_size"])

    return AnalysisWorker(app.catalog, app.keys, app.vault_dir, app.audit, settings, rules, transcriber, stop=stop)


def cmd_run(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 1:
        raise UsageError("analysis run: --limit must be at least 1")
    with appliance_from(args, recover=False) as app:
        section = app.config["analysis"]
        if not section["enabled"]:
            raise UsageError("analysis run: analysis.enabled is false in the configuration")
        configure_logging(app.config["daemon"]["log_level"])
        for problem in lower_priority(section["nice"], section["idle_scheduling"]):
            print(f"recorderd: analysis run: could not lower priority: {problem}", file=sys.stderr)
        lock = _worker_lock(app.config["storage"]["catalog"])
        stop = threading.Event()
        previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
        notifier = Notifier()
        try:
            worker = _worker(args, app, stop)
            requeued, given_up = worker.recover()
            try:
                worker.transcriber   # noqa: B018 - load the model now: a bad model_dir stops start-up
            except ModelError as err:
                raise UsageError(str(err)) from err
            app.audit.append(cli_actor(), ROLE, "analysis.run", "queue", "ok",
                             detail={"once": args.once, "requeued": requeued, "given_up": given_up})
            notifier.ready(f"analysis worker: model {worker.transcriber.name}")
            processed = worker.run(once=args.once, limit=args.limit)
            notifier.stopping(f"analysis worker: {processed} recording(s) processed")
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            os.close(lock)
    print(f"{processed} recording(s) analysed", file=sys.stderr)
    return EXIT_OK


def _read(app: Appliance, fn: Any) -> Any:
    reader = app.catalog.reader()
    try:
        return fn(reader.conn)
    finally:
        reader.close()


def cmd_status(args: argparse.Namespace) -> int:
    with appliance_from(args, recover=False) as app:
        report = _read(app, lambda conn: store.status(conn, time.time()))
        app.audit.append(cli_actor(), ROLE, "analysis.status", "queue", "ok")
    if args.json:
        print(json.dumps(report, indent=2))
        return EXIT_OK
    counts = report["counts"]
    print(f"backlog: {report['backlog']} recording(s), {report['backlog_audio_h']:.2f} h of audio"
          + (f", oldest queued {report['oldest_pending_age_s']:.0f} s ago" if report["oldest_pending_age_s"] else ""))
    print("queue: " + ", ".join(f"{state} {count}" for state, count in counts.items()))
    rtf = report["realtime_factor_last_hour"]
    print(f"last hour: {report['done_last_hour']} done" + (f", {rtf}x real time" if rtf else ""))
    for failure in report["recent_failures"]:
        print(f"  failed {failure['recording_id']}: {failure['error']}")
    return EXIT_OK


def cmd_enqueue(args: argparse.Namespace) -> int:
    if not (args.recording_ids or args.since or args.all):
        raise UsageError("analysis enqueue: name recordings, or --since DATE, or --all")
    since = None
    if args.since:
        try:
            since = to_epoch(args.since)
        except ValueError as err:
            raise UsageError(f"analysis enqueue: --since: {err}") from err
    with appliance_from(args, recover=False) as app:
        now = time.time()
        queued = app.catalog.writer.call(lambda conn: store.enqueue(
            conn, args.recording_ids, since=since, all_finished=args.all, again=args.again, now=now))
        app.audit.append(cli_actor(), ROLE, "analysis.enqueue", ",".join(args.recording_ids) or (args.since or "all"),
                         "ok", detail={"queued": queued, "again": args.again})
    print(f"{queued} recording(s) queued for analysis")
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    with appliance_from(args, recover=False) as app:
        exists = _read(app, lambda conn: store.recording_facts(conn, args.recording_id)) is not None
        view = _read(app, lambda conn: store.transcript_view(conn, args.recording_id)) if exists else None
        app.audit.append(cli_actor(), ROLE, "analysis.show", args.recording_id, "ok" if exists else "not_found")
    if view is None:
        print(f"recorderd: analysis show: no recording {args.recording_id}", file=sys.stderr)
        return EXIT_PROBLEM
    if args.json:
        print(json.dumps(view.to_dict(), indent=2, ensure_ascii=False))
        return EXIT_OK
    print(f"{view.recording_id}: analysis {view.state or 'never queued'}")
    if view.analysis:
        a = view.analysis
        print(f"  line {a['line']}, risk {a['risk_score']}: {'; '.join(a['risk_reasons']) or 'no findings'}")
        print(f"  talk agent {a['talk_agent_s']:.1f} s, customer {a['talk_customer_s']:.1f} s, silence "
              f"{a['silence_ratio']:.0%}, overlap {a['overlap_s']:.1f} s, interruptions {a['interruptions_agent']}"
              f"/{a['interruptions_customer']} (agent/customer), {a['duration_band']}")
    for segment in view.segments:
        print(f"  [{segment['start_s']:7.2f}-{segment['end_s']:7.2f}] {segment['role'] or segment['channel']}: "
              f"{segment['text']}")
    for hit in view.hits:
        print(f"  {hit['kind']} {hit['rule_id']} at {hit['offset_s']:.2f} s ({hit['role']}): {hit['matched']}")
    return EXIT_OK
