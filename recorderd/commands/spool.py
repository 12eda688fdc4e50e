"""`recorderd spool run --once`: import the recordings a PBX dropped into the spool directory.

Takes the vault's writer lock like any recorder (refused while the daemon runs: the daemon
imports the spool itself when ``spool.enabled``).
"""

from __future__ import annotations

import argparse
import json

from recorderd.appliance import cli_actor
from recorderd.commands.common import EXIT_OK, EXIT_PROBLEM, UsageError
from recorderd.commands.store import ROLE, appliance_from
from storage.spool import SpoolImporter, SpoolSettings, run_once


def register(sub: argparse._SubParsersAction) -> None:
    spool = sub.add_parser("spool", help="import recordings a PBX drops into the spool directory")
    spool_sub = spool.add_subparsers(dest="spool_command", required=True)
    run = spool_sub.add_parser("run", help="import what is complete now")
    run.add_argument("--once", action="store_true", required=True,
                     help="one pass (the daemon watches continuously when spool.enabled)")
    run.add_argument("--max-wait", type=float, default=None,
                     help="seconds to wait for files still being written (default: 3 x spool.stable_s)")
    run.add_argument("--json", action="store_true")
    run.set_defaults(run=cmd_spool_run)


def cmd_spool_run(args: argparse.Namespace) -> int:
    with appliance_from(args) as app:
        settings = SpoolSettings.from_config(app.config["spool"])
        try:
            importer = SpoolImporter(settings, app.vault_dir, app.keys, app.catalog, app.audit, actor=cli_actor())
        except OSError as err:
            raise UsageError(f"spool.dir: {err}") from err
        wait = args.max_wait if args.max_wait is not None else 3 * settings.stable_s
        report = run_once(importer, max_wait_s=wait)
        app.audit.append(cli_actor(), ROLE, "spool_run", str(settings.directory), "ok",
                         detail={"imported": len(report.imported), "rejected": len(report.rejected),
                                 "duplicates": len(report.duplicates), "pending": len(report.pending)})
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        print(f"imported {len(report.imported)}, rejected {len(report.rejected)}, "
              f"duplicates removed {len(report.duplicates)}, waiting {len(report.pending)}")
        for item in report.rejected:
            print(f"  rejected {item['name']}: {item['reason']}")
        for name, why in sorted(report.pending.items()):
            print(f"  waiting  {name}: {why}")
    return EXIT_PROBLEM if report.rejected else EXIT_OK
