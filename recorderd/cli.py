"""The `recorderd` command line (DESIGN.md: Command line). Exit 0 ok, 1 a check failed, 2 usage."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from capture.engine import EngineSettings
from capture.wavsink import WavDirectorySink
from recorderd.config import ConfigError, engine_settings, load
from recorderd.replay import progress_stream, replay_files

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE = 0, 1, 2
DEFAULT_CONFIG = "/etc/recorderd/recorderd.toml"


class UsageError(Exception):
    """Bad arguments: exit status 2 with the message."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recorderd", description="SIP call-recording appliance")
    parser.add_argument("--config", default=os.environ.get("RECORDERD_CONFIG", DEFAULT_CONFIG),
                        help="configuration file (default: $RECORDERD_CONFIG or %(default)s)")
    sub = parser.add_subparsers(dest="command", required=True)
    replay = sub.add_parser("replay", help="decode captures into one stereo WAV + JSON per call")
    replay.add_argument("files", nargs="+", type=Path, help="pcap or pcapng files, in time order")
    replay.add_argument("--out", type=Path, required=True, help="directory for <recording-id>.wav/.json")
    replay.add_argument("--json", action="store_true", help="print the summary as JSON")
    return parser


def replay_settings(args: argparse.Namespace) -> EngineSettings:
    """The forensic tool works without a configuration; one that exists is honoured."""
    config_path = Path(args.config)
    explicit = args.config != DEFAULT_CONFIG
    if not explicit and not config_path.exists():
        return EngineSettings()
    return engine_settings(load(config_path))


def cmd_replay(args: argparse.Namespace) -> int:
    for path in args.files:
        if not path.is_file():
            raise UsageError(f"replay: {path}: no such capture file")
    settings = replay_settings(args)
    sink = WavDirectorySink(args.out)
    summary = replay_files(list(args.files), sink, settings, progress=progress_stream())
    sink.finish()
    report = summary.as_dict()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{report['files']} file(s), {report['frames']} packets in {report['seconds']} s: "
              f"{report['calls']} calls, {report['recordings']} recorded, "
              f"{report['not_recorded']} not recorded (see {args.out / 'not-recorded.json'})")
        print(f"SIP messages {report['sip_messages']}, RTP packets {report['rtp_packets']}")
        for reason, count in report["parse_errors"].items():
            print(f"  skipped {count:>8}  {reason}")
    for problem in summary.unreadable:
        print(f"recorderd: replay: {problem}", file=sys.stderr)
    return EXIT_PROBLEM if summary.unreadable else EXIT_OK


COMMANDS = {"replay": cmd_replay}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    try:
        return COMMANDS[args.command](args)
    except (UsageError, ConfigError) as err:
        print(f"recorderd: {err}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
