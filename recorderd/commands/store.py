"""Commands over the stores: init, search, show, export-audio, verify, audit verify.

Every command that reads or changes recordings writes an audit entry (actor: the OS user).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

from recorderd.appliance import Appliance, ApplianceError, cli_actor, open_appliance, signature_checker
from recorderd.commands.common import EXIT_OK, EXIT_PROBLEM, UsageError
from recorderd.config import ConfigError, load
from retention.rules import DIRECTIONS
from storage.audit import verify_chain
from storage.catalog import RecordingRow
from storage.keys import KeyStore
from storage.masking import mask_number, mask_uri
from storage.recordingsink import resolve_path
from storage.vault import VaultError, VaultReader

ROLE = "admin"   # the command line is the appliance administrator's
EXPORT_CHUNK = 1 << 20
ETC_TEMPLATE = Path(__file__).resolve().parents[2] / "etc" / "recorderd.toml"


def add_search_filters(parser: argparse.ArgumentParser) -> None:
    """The catalog search's filters, for every command that selects recordings by a search
    (`recorderd search`, `recorderd retention hold add`)."""
    parser.add_argument("--from", dest="date_from", help="started at or after (ISO 8601 or epoch)")
    parser.add_argument("--to", dest="date_to", help="started before (ISO 8601 or epoch)")
    parser.add_argument("--party", help="part of either party's number or URI")
    parser.add_argument("--agent", dest="agent_id", help="agent id (from the configured SIP header)")
    parser.add_argument("--direction", choices=DIRECTIONS)
    parser.add_argument("--tag")


def register(sub: argparse._SubParsersAction) -> None:
    init = sub.add_parser("init", help="a self-contained appliance layout in DIR (config, keys, vault, catalog)")
    init.add_argument("dir", type=Path)
    init.add_argument("--web-port", type=int, help="the console's port on 127.0.0.1 (default: web.listen's)")
    init.set_defaults(run=cmd_init)

    search = sub.add_parser("search", help="find recordings (full text over parties, Call-ID, tags, notes)")
    search.add_argument("query", nargs="?", help="words or part of a number; all must match")
    add_search_filters(search)
    search.add_argument("--min-duration", type=float)
    search.add_argument("--max-duration", type=float)
    search.add_argument("--state", choices=["active", "complete", "partial", "purged"])
    search.add_argument("--limit", type=int, default=50)
    search.add_argument("--offset", type=int, default=0)
    search.add_argument("--order", default="-started_at",
                        choices=["-started_at", "started_at", "-duration_s", "duration_s"])
    search.add_argument("--json", action="store_true")
    search.add_argument("--unmask", action="store_true", help="show numbers whole (audited)")
    search.set_defaults(run=cmd_search)

    show = sub.add_parser("show", help="one recording's metadata")
    show.add_argument("recording_id")
    show.add_argument("--json", action="store_true")
    show.add_argument("--unmask", action="store_true")
    show.set_defaults(run=cmd_show)

    export = sub.add_parser("export-audio", help="decrypt one recording to a WAV file")
    export.add_argument("recording_id")
    export.add_argument("--out", type=Path, required=True)
    export.add_argument("--reason", default="", help="why (kept in the audit log)")
    export.set_defaults(run=cmd_export_audio)

    verify = sub.add_parser("verify", help="every vault file against the catalog; exit 1 names failures")
    verify.add_argument("--json", action="store_true")
    verify.set_defaults(run=cmd_verify)

    audit = sub.add_parser("audit", help="the audit log")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    audit_verify = audit_sub.add_parser("verify", help="walk the hash chain; exit 1 names the first bad entry")
    audit_verify.add_argument("--json", action="store_true")
    audit_verify.set_defaults(run=cmd_audit_verify)


def appliance_from(args: argparse.Namespace, *, recover: bool = True) -> Appliance:
    try:
        return open_appliance(load(Path(args.config)), recover=recover)
    except (ApplianceError, ConfigError) as err:
        raise UsageError(str(err)) from err


# -- init -------------------------------------------------------------------------------------

LAYOUT_PATHS = [("vault_dir", "vault"), ("catalog", "catalog.db"), ("key_dir", "keys"),
                ("tls_cert", "web/cert.pem"), ("tls_key", "web/key.pem"), ("bundle_dir", "exports"),
                ("prompt_dir", "prompts"), ("dir", "spool"), ("rejected_dir", "spool/rejected")]


def layout_config(extra: list[tuple[str, str]] | None = None) -> str:
    """The shipped configuration with every path inside the appliance's own directory
    (init; backup restore lays out the same)."""
    text = ETC_TEMPLATE.read_text()
    for setting, value in [*LAYOUT_PATHS, *(extra or [])]:
        text = re.sub(rf'^{setting} = ".*"$', f'{setting} = "{value}"', text, count=1, flags=re.M)
    return text


def cmd_init(args: argparse.Namespace) -> int:
    """DIR/recorderd.toml (paths inside DIR), DIR/keys (fresh KEK and signing key), vault, catalog."""
    root: Path = args.dir.resolve()
    config_path = root / "recorderd.toml"
    if config_path.exists():
        raise UsageError(f"init: {config_path} exists already; refusing to overwrite an appliance")
    root.mkdir(parents=True, exist_ok=True)
    KeyStore.create(root / "keys")
    (root / "vault").mkdir(mode=0o700, exist_ok=True)
    extra: list[tuple[str, str]] = []
    if getattr(args, "web_port", None) is not None:
        if not 1 <= args.web_port <= 65535:
            raise UsageError(f"init: --web-port {args.web_port} is not a TCP port")
        extra.append(("listen", f"127.0.0.1:{args.web_port}"))
    config_path.write_text(layout_config(extra))
    with open_appliance(load(config_path), warnings=None) as app:
        app.audit.append(cli_actor(), ROLE, "init", str(root), "ok")
    print(config_path)
    return EXIT_OK


# -- search and show --------------------------------------------------------------------------

def _masked(row: dict[str, Any], unmask: bool) -> dict[str, Any]:
    if unmask:
        return row
    for key in ("caller", "callee"):
        if row.get(key):
            row[key] = mask_number(row[key])
    for key in ("caller_uri", "callee_uri"):   # the user part only: hosts keep their digits
        if row.get(key):
            row[key] = mask_uri(row[key])
    return row


def _public(row: RecordingRow, unmask: bool) -> dict[str, Any]:
    data = row.to_dict()
    for secret in ("key_id", "kek_id"):
        data.pop(secret, None)
    return _masked(data, unmask)


def cmd_search(args: argparse.Namespace) -> int:
    with appliance_from(args, recover=False) as app:
        filters = {"date_from": args.date_from, "date_to": args.date_to, "party": args.party,
                   "agent_id": args.agent_id, "direction": args.direction, "tag": args.tag,
                   "min_duration": args.min_duration, "max_duration": args.max_duration, "state": args.state}
        try:
            result = app.catalog.search(args.query, limit=args.limit, offset=args.offset, order_by=args.order,
                                        **{k: v for k, v in filters.items() if v is not None})
        except ValueError as err:
            raise UsageError(f"search: {err}") from err
        app.audit.append(cli_actor(), ROLE, "search", args.query or "", "ok",
                         detail={"filters": {k: v for k, v in filters.items() if v is not None},
                                 "results": result.total, "unmasked": args.unmask})
    rows = [_public(row, args.unmask) for row in result.rows]
    if args.json:
        print(json.dumps({"total": result.total, "rows": rows, "total_exact": result.total_exact},
                         indent=2, ensure_ascii=False))
        return EXIT_OK
    print(f"{result.total}{'' if result.total_exact else '+'} recording(s)")
    for row in rows:
        print(f"{row['recording_id']}  {row['started_at']}  {row['caller'] or '-'} -> {row['callee'] or '-'}  "
              f"{row['duration_s'] or 0:.1f} s  {row['state']}  {','.join(row['tags'])}")
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    with appliance_from(args, recover=False) as app:
        detail = app.catalog.reader().get(args.recording_id)
        outcome = "ok" if detail is not None else "not_found"
        app.audit.append(cli_actor(), ROLE, "view", args.recording_id, outcome, detail={"unmasked": args.unmask})
    if detail is None:
        print(f"recorderd: show: no recording {args.recording_id}", file=sys.stderr)
        return EXIT_PROBLEM
    data = detail.to_dict()
    for secret in ("key_id", "kek_id"):
        data.pop(secret, None)
    data = _masked(data, args.unmask)
    if not args.unmask:
        data["metadata"] = _masked(dict(data["metadata"]), False)
    if args.json:
        print(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        for key in ("recording_id", "call_id", "caller", "callee", "started_at", "duration_s", "sample_rate",
                    "codecs", "state", "partial_note", "tags", "vault_path"):
            print(f"{key:>14}: {data.get(key)}")
    return EXIT_OK


# -- audio --------------------------------------------------------------------------------------

def _data_key(app: Appliance, recording_id: str) -> bytes:
    reader = app.catalog.reader()
    try:
        key = reader.get_key(recording_id)
    finally:
        reader.close()
    if key is None:
        raise KeyError(recording_id)
    return app.keys.unwrap(key.kek_id, key.wrapped_key, recording_id)


def cmd_export_audio(args: argparse.Namespace) -> int:
    with appliance_from(args, recover=False) as app:
        detail = app.catalog.reader().get(args.recording_id)
        problem = ""
        if detail is None:
            problem = f"no recording {args.recording_id}"
        elif detail.recording.state == "purged" or not detail.recording.has_key:
            problem = f"recording {args.recording_id} was purged: its key is destroyed"
        elif not detail.recording.vault_path:
            problem = f"recording {args.recording_id} has no audio in the vault"
        if problem:
            app.audit.append(cli_actor(), ROLE, "export_audio", args.recording_id, "refused", reason=problem)
            print(f"recorderd: export-audio: {problem}", file=sys.stderr)
            return EXIT_PROBLEM
        assert detail is not None and detail.recording.vault_path
        try:
            key = _data_key(app, args.recording_id)
            tmp = args.out.with_name(f".{args.out.name}.tmp")
            source = resolve_path(app.vault_dir, detail.recording.vault_path)
            with VaultReader(source, key, args.recording_id) as vault, open(tmp, "wb") as out:
                size = vault.wav_size()
                for offset in range(0, size, EXPORT_CHUNK):
                    out.write(vault.read_wav(offset, min(EXPORT_CHUNK, size - offset)))
            shutil.move(tmp, args.out)
        except (VaultError, ValueError, OSError) as err:
            app.audit.append(cli_actor(), ROLE, "export_audio", args.recording_id, "failed", reason=str(err))
            print(f"recorderd: export-audio: {args.recording_id}: {err}", file=sys.stderr)
            return EXIT_PROBLEM
        app.audit.append(cli_actor(), ROLE, "export_audio", args.recording_id, "ok",
                         reason=args.reason, detail={"to": str(args.out)})
    return EXIT_OK


# -- verification ----------------------------------------------------------------------------

def verify_vault(app: Appliance) -> tuple[int, list[str]]:
    """(files checked, problems): every catalogued vault file opens with its key, authenticates
    end to end and has the catalogued SHA-256; vault files the catalog does not know are named."""
    problems: list[str] = []
    checked = 0
    known: set[Path] = set()
    offset = 0
    while True:
        page = app.catalog.search(None, limit=500, offset=offset, order_by="started_at", count_limit=None)
        for row in page.rows:
            if not row.vault_path or row.state == "purged":
                continue
            path = resolve_path(app.vault_dir, row.vault_path)
            known.add(path.resolve())
            checked += 1
            try:
                key = _data_key(app, row.recording_id)
                with VaultReader(path, key, row.recording_id) as vault:
                    info = vault.verify()
                if row.vault_sha256 and info.digest != row.vault_sha256:
                    problems.append(f"{row.recording_id}: {row.vault_path}: SHA-256 differs from the catalog")
            except (VaultError, ValueError, KeyError, OSError) as err:
                problems.append(f"{row.recording_id}: {row.vault_path}: {err}")
        if len(page.rows) < 500:
            break
        offset += 500
    for path in sorted(app.vault_dir.rglob("*.rdv")):
        if path.resolve() not in known:
            problems.append(f"{path}: vault file not in the catalog")
    return checked, problems


def cmd_verify(args: argparse.Namespace) -> int:
    with appliance_from(args, recover=False) as app:
        checked, problems = verify_vault(app)
        integrity = app.catalog.integrity_check()
        if integrity != "ok":
            problems.append(f"catalog: integrity_check: {integrity}")
        app.audit.append(cli_actor(), ROLE, "verify", "vault", "ok" if not problems else "problems",
                         detail={"checked": checked, "problems": len(problems)})
    if args.json:
        print(json.dumps({"checked": checked, "problems": problems}, indent=2))
    else:
        print(f"{checked} vault file(s) checked, {len(problems)} problem(s)")
        for problem in problems:
            print(f"  {problem}")
    return EXIT_PROBLEM if problems else EXIT_OK


def cmd_audit_verify(args: argparse.Namespace) -> int:
    with appliance_from(args, recover=False) as app:
        reader = app.catalog.reader()
        try:
            report = verify_chain(reader, signature_checker(app.keys))
        finally:
            reader.close()
    if args.json:
        print(json.dumps({"ok": report.ok, "entries": report.entries, "first_bad_seq": report.first_bad_seq,
                          "problem": report.problem}, indent=2))
    elif report.ok:
        print(f"audit chain OK: {report.entries} entries")
    else:
        print(f"audit chain BROKEN at entry {report.first_bad_seq}: {report.problem}")
    return EXIT_OK if report.ok else EXIT_PROBLEM
