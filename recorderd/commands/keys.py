"""`recorderd keys status|rotate|public|export-escrow`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from capture.fsutil import write_atomic
from recorderd.appliance import Appliance, cli_actor
from recorderd.commands.common import EXIT_OK, EXIT_PROBLEM, UsageError
from recorderd.commands.store import ROLE, appliance_from

ROTATE_BATCH = 200
MIN_PASSPHRASE = 12


def register(sub: argparse._SubParsersAction) -> None:
    keys = sub.add_parser("keys", help="key-encryption keys and the signing key")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    status = keys_sub.add_parser("status", help="KEKs and how many data keys each wraps")
    status.add_argument("--json", action="store_true")
    status.set_defaults(run=cmd_status)
    rotate = keys_sub.add_parser("rotate", help="new KEK, rewrap every data key (resumes an unfinished rotation)")
    rotate.set_defaults(run=cmd_rotate)
    public = keys_sub.add_parser("public", help="print the audit/export signing public key (PEM)")
    public.set_defaults(run=cmd_public)
    escrow = keys_sub.add_parser("export-escrow", help="the KEKs encrypted under a passphrase read from stdin")
    escrow.add_argument("--out", type=Path, required=True)
    escrow.set_defaults(run=cmd_export_escrow)


def key_status(app: Appliance) -> dict[str, Any]:
    counts = app.catalog.key_counts()
    return {"active_kek": app.keys.active_kek_id,
            "keks": [{"id": k, "active": k == app.keys.active_kek_id, "data_keys": counts.get(k, 0)}
                     for k in app.keys.kek_ids()],
            "data_keys_destroyed": counts.get("", 0)}


def cmd_status(args: argparse.Namespace) -> int:
    with appliance_from(args, recover=False) as app:
        status = key_status(app)
        app.audit.append(cli_actor(), ROLE, "keys_status", "keys", "ok")
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        for kek in status["keks"]:
            print(f"{kek['id']}  {'active' if kek['active'] else 'retired'}  wraps {kek['data_keys']} data key(s)")
    return EXIT_OK


def rewrap_all(app: Appliance) -> int:
    """Rewrap every data key not under the active KEK, in small committed batches; a rotation
    killed midway leaves each key under either KEK (both kept), and the next run finishes it."""
    moved = 0
    active = app.keys.active_kek_id
    for kek in app.keys.kek_ids():
        if kek == active:
            continue
        while True:
            batch = []
            for wrapped in app.catalog.iter_wrapped_keys(kek, batch=ROTATE_BATCH):
                key = app.keys.unwrap(kek, wrapped.wrapped_key, wrapped.recording_id)
                new_kek, blob = app.keys.wrap(key, wrapped.recording_id, active)
                batch.append((wrapped.recording_id, new_kek, blob))
                if len(batch) >= ROTATE_BATCH:
                    break
            if not batch:
                break
            moved += app.catalog.set_wrapped_keys(batch, expected_kek_id=kek)
    return moved


def cmd_rotate(args: argparse.Namespace) -> int:
    with appliance_from(args, recover=False) as app:
        counts = app.catalog.key_counts()
        unfinished = any(counts.get(k, 0) for k in app.keys.kek_ids() if k != app.keys.active_kek_id)
        if not unfinished:
            app.keys.new_kek()
        moved = rewrap_all(app)
        app.audit.append(cli_actor(), ROLE, "keys_rotate", app.keys.active_kek_id, "ok",
                         detail={"rewrapped": moved, "resumed": unfinished})
    print(f"active KEK {app.keys.active_kek_id}; {moved} data key(s) rewrapped"
          + (" (resumed an unfinished rotation)" if unfinished else ""))
    return EXIT_OK


def cmd_public(args: argparse.Namespace) -> int:
    with appliance_from(args, recover=False) as app:
        print(app.keys.public_key_pem(), end="")
    return EXIT_OK


def cmd_export_escrow(args: argparse.Namespace) -> int:
    passphrase = sys.stdin.readline().rstrip("\n")
    if len(passphrase) < MIN_PASSPHRASE:
        raise UsageError(f"export-escrow: the passphrase (stdin) must have at least {MIN_PASSPHRASE} characters")
    with appliance_from(args, recover=False) as app:
        blob = app.keys.export_escrow(passphrase)
        write_atomic(args.out, blob)
        app.audit.append(cli_actor(), ROLE, "keys_export_escrow", str(args.out), "ok",
                         detail={"keks": len(app.keys.kek_ids())})
    print(f"{len(app.keys.kek_ids())} KEK(s) escrowed to {args.out}")
    return EXIT_OK if blob else EXIT_PROBLEM
