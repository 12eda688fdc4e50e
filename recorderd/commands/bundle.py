"""`recorderd verify-bundle`, `recorderd export`, `recorderd exports list|expire`.

verify-bundle is standalone: it reads no configuration and opens no catalog, so an auditor can
run it anywhere on a bundle and the appliance's public key. export is the administrator's
scripted path (no second person: whoever runs it already holds the key directory); it is
audited like the console's exports, and the bundle's bag-info says who ran it and why.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import time
from collections.abc import Callable
from pathlib import Path

from capture.recording import iso_utc
from recorderd.appliance import Appliance, cli_actor
from recorderd.commands.common import EXIT_OK, EXIT_PROBLEM, UsageError
from recorderd.commands.store import ROLE, appliance_from
from storage.bundle import BuildProgress, BundleError, BundleRequest, build_bundle
from storage.bundle_verify import KeyFileError, verify_bundle
from storage.catalog import UnknownRecording
from storage.exports import ExportService, ExportSettings, describe_search
from storage.vault import VaultError


def register(sub: argparse._SubParsersAction) -> None:
    verify = sub.add_parser("verify-bundle", help="check an export bundle (standalone: no config, no catalog)")
    verify.add_argument("bundle", type=Path, help="the bundle .zip (or an unpacked bag directory)")
    verify.add_argument("--pubkey", type=Path, help="the appliance's signing key, PEM (recorderd keys public); "
                                                    "without it the bundle's own signing-key.pem is used")
    verify.add_argument("--json", action="store_true")
    verify.set_defaults(run=cmd_verify_bundle)

    export = sub.add_parser("export", help="build a signed export bundle of a search or of ids (admin, audited)")
    export.add_argument("--query", help="the recordings a search finds (as `recorderd search QUERY`)")
    export.add_argument("--id", dest="ids", action="append", default=[], help="a recording id (repeatable)")
    export.add_argument("--reason", required=True, help="why (in the audit log and the bundle's bag-info)")
    export.add_argument("--out", type=Path, required=True, help="the bundle file to write (.zip)")
    export.add_argument("--json", action="store_true")
    export.set_defaults(run=cmd_export)

    exports = sub.add_parser("exports", help="console export requests")
    exports_sub = exports.add_subparsers(dest="exports_command", required=True)
    listing = exports_sub.add_parser("list", help="export requests, newest first")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(run=cmd_exports_list)
    expire = exports_sub.add_parser("expire", help="expire what is due now and delete those bundles")
    expire.set_defaults(run=cmd_exports_expire)


# -- verify-bundle ----------------------------------------------------------------------------

def cmd_verify_bundle(args: argparse.Namespace) -> int:
    if not args.bundle.exists():
        raise UsageError(f"verify-bundle: {args.bundle}: no such file")
    key: bytes | None = None
    if args.pubkey is not None:
        try:
            key = args.pubkey.read_bytes()
        except OSError as err:
            raise UsageError(f"verify-bundle: --pubkey {args.pubkey}: {err.strerror}") from err
    try:
        report = verify_bundle(args.bundle, key)
    except KeyFileError as err:
        raise UsageError(f"verify-bundle: --pubkey {args.pubkey}: {err}") from err
    except OSError as err:
        raise UsageError(f"verify-bundle: {args.bundle}: {err.strerror}") from err
    if args.json:
        print(json.dumps({"ok": report.ok, "recordings": report.recordings, "audit_entries": report.audit_entries,
                          "key": report.key_source, "key_sha256": report.key_fingerprint,
                          "problems": [{"file": p.subject, "problem": p.what} for p in report.problems]}, indent=2))
    elif report.ok:
        print(f"OK {args.bundle}: {report.recordings} recording(s), {report.audit_entries} audit entries bound to "
              f"signed checkpoints; signature checked with {report.key_source} (SHA-256 {report.key_fingerprint})")
    else:
        print(f"FAILED {args.bundle}: {len(report.problems)} problem(s)")
        for problem in report.problems:
            print(f"  {problem}")
    return EXIT_OK if report.ok else EXIT_PROBLEM


# -- export -----------------------------------------------------------------------------------

def _resolve(app: Appliance, args: argparse.Namespace, limit: int) -> list[str]:
    ids = list(dict.fromkeys(args.ids))
    if args.query is not None:
        try:
            found = app.catalog.search(args.query, limit=limit + 1, order_by="started_at", count_limit=None)
        except ValueError as err:
            raise UsageError(f"export: --query: {err}") from err
        ids += [row.recording_id for row in found.rows if row.recording_id not in ids]
    return ids


def _terminal_progress() -> Callable[[BuildProgress], None]:
    """Progress on one stderr line (DESIGN.md: long work shows progress when stderr is a terminal)."""
    shown: list[tuple[int, int]] = []

    def show(step: BuildProgress) -> None:
        percent = 100 * step.audio_bytes_done // step.audio_bytes_total if step.audio_bytes_total else 100
        if [(percent, step.recordings_done)] != shown:
            shown[:] = [(percent, step.recordings_done)]
            print(f"\rexport: {percent:3d} %  ({step.recordings_done}/{step.recordings_total} recordings)",
                  end="", file=sys.stderr, flush=True)

    return show


def cmd_export(args: argparse.Namespace) -> int:
    if args.query is None and not args.ids:
        raise UsageError("export: give --query or --id")
    if not args.reason.strip():
        raise UsageError("export: --reason must say why")
    if not args.out.parent.is_dir():
        raise UsageError(f"export: --out: directory {args.out.parent} does not exist")
    with appliance_from(args, recover=False) as app:
        settings = ExportSettings.from_config(app.config["exports"])
        ids = _resolve(app, args, settings.max_recordings)
        actor = cli_actor()
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        bundle_id = f"cli-{stamp}-{secrets.token_hex(3)}"
        export_object = f"export:{bundle_id}"
        query = describe_search(args.query, {"id": ",".join(args.ids)} if args.ids else None)
        detail = {"query": query, "count": len(ids), "recordings": ids[:settings.max_recordings],
                  "out": str(args.out)}
        problem = ("no recordings match" if not ids else
                   f"{len(ids)} recordings, more than exports.max_recordings ({settings.max_recordings}): "
                   f"narrow the search" if len(ids) > settings.max_recordings else "")
        if problem:
            app.audit.append(actor, ROLE, "export.cli", export_object, "refused", reason=problem, detail=detail)
            print(f"recorderd: export: {problem}", file=sys.stderr)
            return EXIT_PROBLEM
        app.audit.append(actor, ROLE, "export.cli", export_object, "started", reason=args.reason, detail=detail)
        request = BundleRequest(bundle_id, export_object, actor, ROLE, None, args.reason.strip(), query,
                                tuple(ids), settings.appliance_id)
        try:
            built = build_bundle(request, catalog=app.catalog, keys=app.keys, audit=app.audit,
                                 vault_dir=app.vault_dir, out_path=args.out, actor=actor, role=ROLE,
                                 progress=_terminal_progress() if sys.stderr.isatty() else None)
            if sys.stderr.isatty():
                print(file=sys.stderr)
        except (BundleError, UnknownRecording, VaultError, OSError) as err:
            app.audit.append(actor, ROLE, "export.cli", export_object, "failed", reason=str(err))
            print(f"recorderd: export: {err}", file=sys.stderr)
            return EXIT_PROBLEM
        app.audit.append(actor, ROLE, "export.cli", export_object, "ok", reason=args.reason,
                         detail={"out": str(args.out), "size": built.size, "sha256": built.sha256,
                                 "recordings": built.recordings})
    result = {"bundle": str(args.out), "id": bundle_id, "recordings": built.recordings, "size": built.size,
              "sha256": built.sha256, "audit_entries": built.audit_entries}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{args.out}: {built.recordings} recording(s), {built.size} bytes, SHA-256 {built.sha256}")
    return EXIT_OK


# -- exports list / expire -------------------------------------------------------------------

def _service(app: Appliance) -> ExportService:
    return ExportService(app.catalog, app.audit, app.keys, app.vault_dir,
                         ExportSettings.from_config(app.config["exports"]), background=False)


def cmd_exports_list(args: argparse.Namespace) -> int:
    with appliance_from(args, recover=False) as app:
        records = _service(app).store.find()
        app.audit.append(cli_actor(), ROLE, "export.list", "exports", "ok", detail={"shown": len(records)})
    if args.json:
        print(json.dumps([r.to_dict() for r in records], indent=2, ensure_ascii=False))
        return EXIT_OK
    for r in records:
        print(f"{r.id:>5}  {r.state:<10}  {iso_utc(r.requested_at)}  {r.requester} -> {r.approver or '-'}  "
              f"{len(r.recording_ids)} recording(s)  {r.reason[:60]}")
    return EXIT_OK


def cmd_exports_expire(args: argparse.Namespace) -> int:
    with appliance_from(args, recover=False) as app:
        expired = _service(app).expire_due()
    for record in expired:
        print(f"export {record.id}: expired" + (" (bundle deleted)" if record.deleted_at else ""))
    return EXIT_OK
