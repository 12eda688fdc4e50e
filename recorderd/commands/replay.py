"""`recorderd replay FILE... --out DIR`: captures → plaintext WAV + JSON per call (forensics)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from capture.engine import EngineSettings
from capture.wavsink import WavDirectorySink
from recorderd.commands.common import DEFAULT_CONFIG, EXIT_OK, EXIT_PROBLEM, UsageError
from recorderd.config import engine_settings, load
from recorderd.replay import ReplaySummary, progress_stream, replay_files


def register(sub: argparse._SubParsersAction) -> None:
    replay = sub.add_parser("replay", help="decode captures into one stereo WAV + JSON per call")
    replay.add_argument("files", nargs="+", type=Path, help="pcap or pcapng files, in time order")
    replay.add_argument("--out", type=Path, required=True, help="directory for <recording-id>.wav/.json")
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
    settings = replay_settings(args)
    sink = WavDirectorySink(args.out)
    summary = replay_files(list(args.files), sink, settings, progress=progress_stream())
    sink.finish()
    return print_summary(summary, args.json, f"see {args.out / 'not-recorded.json'}")
