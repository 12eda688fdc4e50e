"""`recorderd run`: the daemon (see recorderd/daemon.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from recorderd.appliance import ApplianceError
from recorderd.commands.common import UsageError


def register(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="record live from the configured interfaces (systemd Type=notify)")
    run.set_defaults(run=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from recorderd.daemon import run  # systemd bindings are only loaded by the daemon

    try:
        return run(Path(args.config))
    except ApplianceError as err:
        raise UsageError(str(err)) from err
