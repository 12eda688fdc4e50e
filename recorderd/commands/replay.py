"""`recorderd replay FILE... --out DIR`: captures → plaintext WAV + JSON per call (forensics)."""

from __future__ import annotations

import argparse
import errno
import json
import sys
from pathlib import Path

from capture.engine import EngineSettings
from capture.wavsink import WavDirectorySink
from recorderd.appliance import cli_actor
from recorderd.commands.common import DEFAULT_CONFIG, EXIT_OK, EXIT_PROBLEM, UsageError
from recorderd.commands.store import ROLE, appliance_from
from recorderd.config import engine_settings, load
from recorderd.replay import ReplaySummary, progress_stream, replay_files
from storage.recordingsink import VaultSink


def register(sub: argparse._SubParsersAction) -> None:
    replay = sub.add_parser("replay", help="decode captures into one stereo WAV + JSON per call")
    replay.add_argument("files", nargs="+", type=Path, help="pcap or pcapng files, in time order")
    target = replay.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", type=Path, help="directory for plaintext <recording-id>.wav/.json")
    target.add_argument("--store", action="store_true",
                        help="into the vault and catalog of the configured appliance, as the daemon would")
    replay.add_argument("--tag", action="append", default=[], help="with --store: tag every recording (repeatable)")
    replay.add_argument("--json", action="store_true", help="print the summary as JSON")
    replay.set_defaults(run=cmd_replay)


def replay_settings(args: argparse.Namespace) -> EngineSettings:
    """The forensic tool works without a configuration; one that exists is honoured."""
    config_path = Path(args.config)
    explicit = args.config != DEFAULT_CONFIG
    if not explicit and not config_path.exists():
        return EngineSettings()
    return engine_settings(load(config_path))


def check_captures(files: list[Path]) -> None:
    for path in files:
        if not path.is_file():
            raise UsageError(f"replay: {path}: no such capture file")


def print_summary(summary: ReplaySummary, as_json: bool, where: str) -> int:
    report = summary.as_dict()
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{report['files']} file(s), {report['frames']} packets in {report['seconds']} s: "
              f"{report['calls']} calls, {report['recordings']} recorded, "
              f"{report['not_recorded']} not recorded ({where})")
        print(f"SIP messages {report['sip_messages']}, RTP packets {report['rtp_packets']}")
        for reason, count in report["parse_errors"].items():
            print(f"  skipped {count:>8}  {reason}")
    for problem in summary.unreadable:
        print(f"recorderd: replay: {problem}", file=sys.stderr)
    return EXIT_PROBLEM if summary.unreadable else EXIT_OK


def cmd_replay(args: argparse.Namespace) -> int:
    check_captures(args.files)
    if args.store:
        return replay_into_store(args)
    if args.tag:
        raise UsageError("replay: --tag goes with --store")
    settings = replay_settings(args)
    sink = WavDirectorySink(args.out)
    summary = replay_files(list(args.files), sink, settings, progress=progress_stream())
    sink.finish()
    return print_summary(summary, args.json, f"see {args.out / 'not-recorded.json'}")


def replay_into_store(args: argparse.Namespace) -> int:
    """Encrypted into the vault and catalogued, with an audit entry for the import."""
    with appliance_from(args) as app:
        sink = VaultSink(app.vault_dir, app.keys, app.catalog, app.audit, actor=cli_actor(), tags=list(args.tag))
        try:
            summary = replay_files(list(args.files), sink, engine_settings(app.config), progress=progress_stream())
        except OSError as err:
            sink.detach_all()
            if err.errno != errno.ENOSPC:
                raise
            app.audit.append(cli_actor(), ROLE, "import_captures", ",".join(str(f) for f in args.files),
                             "disk_full", reason=str(err))
            print(f"recorderd: replay --store: disk full ({err.filename or app.vault_dir}): "
                  f"{len(sink.recorded)} recording(s) committed and intact; the calls being written are "
                  f"recovered as partial at the next start", file=sys.stderr)
            return EXIT_PROBLEM
        app.audit.append(cli_actor(), ROLE, "import_captures", ",".join(str(f) for f in args.files), "ok",
                         detail={"recordings": summary.recordings, "not_recorded": summary.not_recorded,
                                 "tags": list(args.tag)})
    return print_summary(summary, args.json, "see `recorderd search`")
