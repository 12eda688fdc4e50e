"""The `recorderd` command line (DESIGN.md: Command line). Exit 0 ok, 1 a check failed, 2 usage."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from recorderd.commands import analysis as analysis_commands
from recorderd.commands import backup as backup_commands
from recorderd.commands import bundle as bundle_commands
from recorderd.commands import consent as consent_commands
from recorderd.commands import keys, replay, run, store
from recorderd.commands import retention as retention_commands
from recorderd.commands import spool as spool_commands
from recorderd.commands import user as user_commands
from recorderd.commands import web as web_commands
from recorderd.commands.common import DEFAULT_CONFIG, EXIT_PROBLEM, EXIT_USAGE, UsageError
from recorderd.config import ConfigError
from storage.catalog import CatalogError

COMMAND_MODULES = [replay, store, keys, run, retention_commands, user_commands, web_commands, spool_commands, bundle_commands, backup_commands, consent_commands, analysis_commands]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recorderd", description="SIP call-recording appliance")
    parser.add_argument("--config", default=os.environ.get("RECORDERD_CONFIG", DEFAULT_CONFIG),
                        help="configuration file (default: $RECORDERD_CONFIG or %(default)s)")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    try:
        return int(args.run(args))
    except (UsageError, ConfigError) as err:
        print(f"recorderd: {err}", file=sys.stderr)
        return EXIT_USAGE
    except CatalogError as err:   # locked by another writer past the busy timeout, newer schema, ...
        print(f"recorderd: catalog: {err}", file=sys.stderr)
        return EXIT_PROBLEM


if __name__ == "__main__":
    sys.exit(main())
