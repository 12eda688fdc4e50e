"""`recorderd consent prompts|run|sweep|events|report`: the consent announcer and its proof.

- ``prompts``: speak ``consent.prompt_texts`` into the prompt directory (espeak-ng + sox);
- ``run``: the announcer (systemd/recorderd-consent.service, Type=notify);
- ``sweep``: check finished recordings for the prompt and link announcements now (the daemon
  does it continuously when ``consent.enabled``; this is for ``replay --store`` imports);
- ``events``: the catalogued announcements; ``report``: consent rates per day and trunk.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from recorderd.appliance import cli_actor
from recorderd.commands.common import EXIT_OK, EXIT_PROBLEM, UsageError
from recorderd.commands.store import ROLE, appliance_from
from recorderd.config import load
from recorderd.consent.prompts import PromptError, generate_prompts, missing_prompts
from recorderd.consent.settings import ConsentSettings, consent_settings
from recorderd.logsetup import configure_logging
from storage.catalog import to_epoch
from storage.consent import OUTCOMES, add_announcement, consent_report, list_announcements, report_window
from storage.masking import mask_number, mask_uri

log = logging.getLogger("recorderd.consent")


def register(sub: argparse._SubParsersAction) -> None:
    consent = sub.add_parser("consent", help="the consent announcer, its prompts, events and report")
    consent_sub = consent.add_subparsers(dest="consent_command", required=True)

    prompts = consent_sub.add_parser("prompts", help="make the prompt WAV files from consent.prompt_texts")
    prompts.add_argument("--out", type=Path, help="directory to write to (default: consent.prompt_dir)")
    prompts.add_argument("--missing", action="store_true", help="only prompts that have no file yet")
    prompts.set_defaults(run=cmd_prompts)

    run = consent_sub.add_parser("run", help="the announcer: answer, play the prompt, hand the call back")
    run.set_defaults(run=cmd_run)

    sweep = consent_sub.add_parser("sweep", help="check finished recordings for the prompt, link announcements")
    sweep.add_argument("--limit", type=int, help="check at most this many recordings")
    sweep.add_argument("--json", action="store_true")
    sweep.set_defaults(run=cmd_sweep)

    events = consent_sub.add_parser("events", help="announcements the announcer catalogued, newest first")
    events.add_argument("--since", help="invited at or after (ISO 8601 or epoch)")
    events.add_argument("--until", help="invited before (ISO 8601 or epoch)")
    events.add_argument("--outcome", choices=OUTCOMES)
    events.add_argument("--limit", type=int, default=100)
    events.add_argument("--json", action="store_true")
    events.add_argument("--unmask", action="store_true", help="show numbers whole (audited)")
    events.set_defaults(run=cmd_events)

    report = consent_sub.add_parser("report", help="consent rates per day and trunk")
    report.add_argument("--from", dest="date_from", help="first day (YYYY-MM-DD, default: 30 days ago)")
    report.add_argument("--to", dest="date_to", help="last day, inclusive (YYYY-MM-DD, default: today)")
    report.add_argument("--json", action="store_true")
    report.set_defaults(run=cmd_report)


def settings_from(args: argparse.Namespace) -> tuple[dict[str, dict[str, Any]], ConsentSettings]:
    config = load(Path(args.config))
    return config, consent_settings(config)


# -- prompts ------------------------------------------------------------------------------------

def cmd_prompts(args: argparse.Namespace) -> int:
    _, settings = settings_from(args)
    out = args.out if args.out is not None else settings.prompt_dir
    try:
        written = generate_prompts(settings.prompt_texts, out, only_missing=args.missing)
    except (PromptError, OSError) as err:
        print(f"recorderd: consent prompts: {err}", file=sys.stderr)
        return EXIT_PROBLEM
    for path in written:
        print(path)
    missing = missing_prompts(out, settings.prompt_names())
    if missing:
        print(f"recorderd: consent prompts: the rules use prompts with no text and no file in {out}: "
              f"{', '.join(missing)}", file=sys.stderr)
        return EXIT_PROBLEM
    return EXIT_OK


# -- the announcer --------------------------------------------------------------------------------

def _password(settings: ConsentSettings) -> str | None:
    if settings.password_file is None:
        return None
    try:
        return settings.password_file.read_text().strip()
    except OSError as err:
        raise UsageError(f"consent.password_file: {err}") from err


def cmd_run(args: argparse.Namespace) -> int:
    from recorderd.consent.announcer import Announcer, AnnouncerError  # pjsua2 only for this command
    from recorderd.sdnotify import Notifier

    config, settings = settings_from(args)
    configure_logging(config["daemon"]["log_level"])
    try:
        generated = generate_prompts(settings.prompt_texts, settings.prompt_dir, only_missing=True)
        for path in generated:
            log.info("prompt made from its text: %s", path)
    except (PromptError, OSError) as err:
        log.error("cannot make missing prompts: %s", err)
    password = _password(settings)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    notifier = Notifier()
    with appliance_from(args, recover=False) as app:
        announcer = Announcer(settings, lambda event: add_announcement(app.catalog, event, app.audit),
                              password=password)
        try:
            announcer.start()
        except AnnouncerError as err:
            app.audit.append("recorderd-consent", "system", "consent_start", settings.listen_host, "failed",
                             reason=str(err))
            raise UsageError(str(err)) from err
        app.audit.append("recorderd-consent", "system", "consent_start", announcer.address, "ok")
        notifier.ready(f"announcing on {announcer.address}")
        interval = notifier.watchdog_interval_s
        last_ping = [0.0]

        def heartbeat() -> None:
            now = time.monotonic()
            if interval and now - last_ping[0] >= interval:
                notifier.watchdog()
                notifier.status(f"{len(announcer.calls)} calls, {announcer.handled} handled")
                last_ping[0] = now

        try:
            announcer.run(stop, heartbeat=heartbeat)
        finally:
            notifier.stopping("ending announcer calls")
            app.audit.append("recorderd-consent", "system", "consent_stop", announcer.address, "ok",
                             detail={"handled": announcer.handled})
    return EXIT_OK


# -- sweep, events, report ----------------------------------------------------------------------

def cmd_sweep(args: argparse.Namespace) -> int:
    from recorderd.consent.sweep import ConsentSweeper

    _, settings = settings_from(args)
    with appliance_from(args, recover=False) as app:
        sweeper = ConsentSweeper(app, settings, actor=cli_actor())
        try:
            stats = sweeper.sweep(limit=args.limit)
        finally:
            sweeper.close()
        app.audit.append(cli_actor(), ROLE, "consent_sweep", "recordings", "ok", detail=stats.to_dict())
    if args.json:
        print(json.dumps({**stats.to_dict(), "results": [
            {"recording_id": r.recording_id, "played": r.played, "audible": r.audible,
             "announcement": r.announcement_id, "link": r.link} for r in stats.results]}, indent=2))
    else:
        print(f"checked {stats.checked} recording(s): {stats.played} with the prompt played, "
              f"{stats.audible} with it audible, {stats.unreadable} unreadable; "
              f"{stats.linked_later} linked to announcements that came later")
    return EXIT_OK


def _epoch_arg(value: str | None, name: str) -> float | None:
    try:
        return to_epoch(float(value) if value and value.replace(".", "", 1).isdigit() else value)
    except ValueError as err:
        raise UsageError(f"{name}: {err}") from err


def cmd_events(args: argparse.Namespace) -> int:
    since, until = _epoch_arg(args.since, "--since"), _epoch_arg(args.until, "--until")
    with appliance_from(args, recover=False) as app:
        reader = app.catalog.reader()
        try:
            events = list_announcements(reader.conn, since=since, until=until, outcome=args.outcome,
                                        limit=args.limit)
        finally:
            reader.close()
        app.audit.append(cli_actor(), ROLE, "consent_events", "consent", "ok",
                         detail={"count": len(events), "unmasked": args.unmask})
    rows = [e.to_dict() for e in events]
    if not args.unmask:
        for row in rows:
            row["caller"], row["called"] = mask_number(row["caller"]), mask_number(row["called"])
            row["caller_uri"], row["called_uri"] = mask_uri(row["caller_uri"]), mask_uri(row["called_uri"])
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
    else:
        for row in rows:
            when = datetime.fromtimestamp(row["invited_at"]).isoformat(timespec="seconds")
            print(f"{when}  {row['outcome']:<21} {row['caller']} → {row['called']}  prompt {row['prompt']} "
                  f"{row['prompt_played_s']:.1f} s  {row['detail']}")
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    _, settings = settings_from(args)
    try:
        start, end, offset = report_window(args.date_from, args.date_to, settings.timezone, time.time())
    except ValueError as err:
        raise UsageError(str(err)) from err
    with appliance_from(args, recover=False) as app:
        reader = app.catalog.reader()
        try:
            rows = consent_report(reader.conn, start, end, utc_offset_s=offset)
        finally:
            reader.close()
        app.audit.append(cli_actor(), ROLE, "consent_report", "consent", "ok",
                         detail={"from": start, "to": end, "rows": len(rows)})
    if args.json:
        print(json.dumps([r.to_dict() for r in rows], indent=2))
        return EXIT_OK
    print(f"{'day':<10}  {'trunk':<20} {'recordings':>10} {'played':>7} {'audible':>7} {'rate':>6}  announcements")
    for r in rows:
        rate = f"{r.played_rate:.0%}" if r.played_rate is not None else "-"
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted((r.outcomes or {}).items()))
        print(f"{r.day:<10}  {r.trunk:<20} {r.recordings:>10} {r.played:>7} {r.audible:>7} {rate:>6}  "
              f"{r.announcements} {outcomes}")
    return EXIT_OK
