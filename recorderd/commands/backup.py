"""`recorderd backup target add|list|remove|test|scan`, `backup run|status|verify|restore`.

Targets live in the catalog (retention/backup/records.py); their secrets only by reference
(retention/backup/targets.py says why). Every command is an audit entry. Exit status: 0 ok,
1 a run, test, verify or restore found a problem (named), 2 bad usage or setup.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from capture.fsutil import write_atomic
from recorderd.appliance import Appliance, ApplianceError, cli_actor, open_appliance
from recorderd.commands.common import EXIT_OK, EXIT_PROBLEM, UsageError
from recorderd.commands.store import ROLE, appliance_from, layout_config
from recorderd.config import ConfigError, load
from retention.backup import records
from retention.backup.connect import open_remote, probe_target, remote_options
from retention.backup.plan import Throttle
from retention.backup.remote import Remote, RemoteError, RemoteOptions
from retention.backup.restore import RestoreError, read_manifest, restore
from retention.backup.runner import (
    BackupRun,
    Edges,
    Progress,
    RunBusy,
    RunOptions,
    RunResult,
    live_key,
    staging_dir,
)
from retention.backup.targets import (
    HOST_KEY_TYPES,
    Settings,
    Target,
    TargetError,
    check_name,
    parse_host_key_line,
    settings_from,
)
from retention.backup.verify import verify_target
from storage.keys import (
    ACTIVE_FILE,
    KEK_FILE,
    SIGNING_FILE,
    KeyDirError,
    KeyStore,
    check_key_dir,
    read_private,
)

MIN_PASSPHRASE = 12
RESTORE_MARKER = ".restore-unfinished"


def register(sub: argparse._SubParsersAction) -> None:
    backup = sub.add_parser("backup", help="offsite backup: targets, runs, verify, restore")
    backup_sub = backup.add_subparsers(dest="backup_command", required=True)
    _register_targets(backup_sub)

    run = backup_sub.add_parser("run", help="copy new vault files and a catalog snapshot to the target(s)")
    run.add_argument("--target", help="only this target (default: every target)")
    run.add_argument("--throttle", type=int, help="bytes per second (default: backup.throttle_bytes_per_s; 0 = unlimited)")
    run.add_argument("--repair", action="store_true", help="copy again the objects the last verify found damaged")
    run.add_argument("--json", action="store_true")
    run.set_defaults(run=cmd_run)

    status = backup_sub.add_parser("status", help="targets, their last runs, progress and failures")
    status.add_argument("--target")
    status.add_argument("--runs", type=int, default=10, help="history length per target")
    status.add_argument("--json", action="store_true")
    status.set_defaults(run=cmd_status)

    verify = backup_sub.add_parser("verify", help="download a sample of a target's newest run and check hashes")
    verify.add_argument("--target", help="only this target (default: every target)")
    verify.add_argument("--sample", type=int, help="vault files to download (default: backup.verify_sample; 0 = all)")
    verify.add_argument("--seed", type=int, help="seed of the random sample (to repeat a check)")
    verify.add_argument("--throttle", type=int, help="bytes per second (default: 0 = unlimited)")
    verify.add_argument("--json", action="store_true")
    verify.set_defaults(run=cmd_verify)

    rest = backup_sub.add_parser("restore", help="rebuild catalog and vault from a target into a new appliance layout")
    rest.add_argument("--target", required=True)
    rest.add_argument("--to", type=Path, required=True, help="the new appliance directory (empty or absent)")
    keys = rest.add_mutually_exclusive_group(required=True)
    keys.add_argument("--escrow", type=Path, help="KEK escrow file (keys export-escrow); passphrase on stdin")
    keys.add_argument("--key-dir", type=Path, help="a key directory holding the KEKs (copied)")
    rest.add_argument("--signing-key", type=Path,
                      help="with --escrow: the old audit signing key (PEM), so the restored audit chain verifies")
    rest.add_argument("--manifest", help="restore this run (manifests/<stamp>.json) instead of the newest")
    rest.add_argument("--skip-missing-keks", action="store_true",
                      help="restore what the given KEKs open; leave out recordings whose KEK is gone "
                           "(crypto-shredded by retention since this backup)")
    rest.add_argument("--throttle", type=int, help="bytes per second (default: 0 = unlimited)")
    rest.add_argument("--json", action="store_true")
    rest.set_defaults(run=cmd_restore)


def _register_targets(backup_sub: argparse._SubParsersAction) -> None:
    target = backup_sub.add_parser("target", help="configure backup targets")
    target_sub = target.add_subparsers(dest="target_command", required=True)
    add = target_sub.add_parser("add", help="add (or --replace) a target")
    kinds = add.add_subparsers(dest="kind", required=True)

    s3 = kinds.add_parser("s3", help="an S3-compatible bucket")
    s3.add_argument("name")
    s3.add_argument("--bucket", required=True)
    s3.add_argument("--endpoint", help="http(s) URL of the S3 service (default: AWS)")
    s3.add_argument("--prefix", default="", help="key prefix inside the bucket")
    s3.add_argument("--region", default="us-east-1")
    s3.add_argument("--access-key-id")
    s3.add_argument("--secret", help="where the secret access key is read: file:/path, credential:NAME or env:NAME")
    s3.add_argument("--addressing", choices=["path", "virtual"], default="path")
    s3.add_argument("--ca-bundle", help="CA certificates (PEM) for a private endpoint")
    s3.add_argument("--lock-mode", choices=["GOVERNANCE", "COMPLIANCE"], help="default: backup.object_lock_mode")
    s3.add_argument("--lock-days", type=int, help="default: backup.object_lock_days")

    sftp = kinds.add_parser("sftp", help="an SFTP server (pinned host key, key authentication)")
    sftp.add_argument("name")
    sftp.add_argument("--host", required=True)
    sftp.add_argument("--port", type=int, default=22)
    sftp.add_argument("--user", required=True)
    sftp.add_argument("--directory", required=True, help="absolute directory on the server")
    sftp.add_argument("--key", required=True, help="the private key: file:/path, credential:NAME or env:NAME")
    pin = sftp.add_mutually_exclusive_group(required=True)
    pin.add_argument("--host-key", help="the server's public host key line ('ssh-ed25519 AAAA...')")
    pin.add_argument("--host-key-file", type=Path, help="a file with that line (e.g. ssh_host_ed25519_key.pub)")
    pin.add_argument("--host-key-sha256", help="its fingerprint as ssh-keygen -l prints it (SHA256:...)")
    sftp.add_argument("--host-key-type", choices=HOST_KEY_TYPES, default="ssh-ed25519",
                      help="with --host-key-sha256: the key's algorithm")

    path = kinds.add_parser("path", help="a mounted directory (NFS, SMB, USB disk)")
    path.add_argument("name")
    path.add_argument("--directory", required=True)
    path.add_argument("--allow-unmounted", action="store_true",
                      help="accept a directory that is not on a mounted file system of its own")

    for parser in (s3, sftp, path):
        parser.add_argument("--replace", action="store_true", help="update an existing target of that name")
        parser.add_argument("--json", action="store_true")
        parser.set_defaults(run=cmd_target_add)

    listing = target_sub.add_parser("list", help="the configured targets")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(run=cmd_target_list)
    remove = target_sub.add_parser("remove", help="remove a target (its run history stays)")
    remove.add_argument("name")
    remove.set_defaults(run=cmd_target_remove)
    test = target_sub.add_parser("test", help="connect, write, read back and delete a probe object")
    test.add_argument("name")
    test.add_argument("--json", action="store_true")
    test.set_defaults(run=cmd_target_test)
    scan = target_sub.add_parser("scan", help="print an SFTP server's host key fingerprint (check it out of band)")
    scan.add_argument("--host", required=True)
    scan.add_argument("--port", type=int, default=22)
    scan.add_argument("--host-key-type", choices=HOST_KEY_TYPES, default="ssh-ed25519")
    scan.set_defaults(run=cmd_target_scan)


# -- helpers ------------------------------------------------------------------------------------

def _options(config: dict[str, dict[str, Any]]) -> RemoteOptions:
    return remote_options(config["backup"])


def _throttle(rate: int | None, default: int) -> Throttle:
    chosen = default if rate is None else rate
    if chosen < 0:
        raise UsageError("--throttle: bytes per second must be 0 (unlimited) or more")
    return Throttle(chosen, time.monotonic, time.sleep)


def _targets(app: Appliance, name: str | None) -> list[Target]:
    try:
        if name:
            return [records.get_target(app.catalog, name)]
    except TargetError as err:
        raise UsageError(f"backup: {err}") from None
    found = records.list_targets(app.catalog)
    if not found:
        raise UsageError("backup: no backup target configured (recorderd backup target add ...)")
    return found


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


def _human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _terminal_progress(name: str) -> Callable[[Progress], None] | None:
    """Progress on stderr when it is a terminal (DESIGN: long work shows progress)."""
    if not sys.stderr.isatty():
        return None

    def show(p: Progress) -> None:
        print(f"\r{name}: {p.stage} {p.files_done}/{p.files_planned} files, {_human(p.bytes_done)}/"
              f"{_human(p.bytes_planned)}, {p.files_present} already there, {p.files_failed} failed   ",
              end="", file=sys.stderr, flush=True)

    return show


# -- targets ------------------------------------------------------------------------------------

def _settings_from_args(args: argparse.Namespace, config: dict[str, dict[str, Any]]) -> Settings:
    if args.kind == "s3":
        return settings_from("s3", {
            "bucket": args.bucket, "prefix": args.prefix.strip("/"), "endpoint": args.endpoint, "region": args.region,
            "access_key_id": args.access_key_id, "secret": args.secret, "addressing": args.addressing,
            "ca_bundle": args.ca_bundle, "lock_mode": args.lock_mode or config["backup"]["object_lock_mode"],
            "lock_days": config["backup"]["object_lock_days"] if args.lock_days is None else args.lock_days})
    if args.kind == "sftp":
        if args.host_key_sha256:
            key_type, fingerprint = args.host_key_type, args.host_key_sha256
        else:
            line = args.host_key
            if args.host_key_file is not None:
                try:
                    line = args.host_key_file.read_text()
                except OSError as err:
                    raise TargetError(f"host_key_file: cannot read {args.host_key_file} ({err.strerror})") from None
            key_type, fingerprint = parse_host_key_line(line.strip())
        return settings_from("sftp", {
            "host": args.host, "port": args.port, "user": args.user, "directory": args.directory.rstrip("/") or "/",
            "key": args.key, "host_key_type": key_type, "host_key_sha256": fingerprint})
    return settings_from("path", {"directory": args.directory.rstrip("/") or "/",
                                  "require_mount": not args.allow_unmounted})


def cmd_target_add(args: argparse.Namespace) -> int:
    with appliance_from(args, recover=False) as app:
        try:
            check_name(args.name)
            settings = _settings_from_args(args, app.config)
            target = records.add_target(app.catalog, args.name, args.kind, settings, cli_actor(), time.time(),
                                        replace=args.replace)
        except TargetError as err:
            app.audit.append(cli_actor(), ROLE, "backup_target_add", f"backup-target:{args.name}", "refused",
                             reason=str(err))
            raise UsageError(f"backup target add: {err}") from None
        app.audit.append(cli_actor(), ROLE, "backup_target_add", f"backup-target:{args.name}", "ok",
                         detail={"kind": target.kind, "where": target.describe(), "replace": args.replace})
    if args.json:
        _print_json(target.to_dict())
    else:
        print(f"target {target.name}: {target.kind} {target.describe()}")
    return EXIT_OK


def cmd_target_list(args: argparse.Namespace) -> int:
    with appliance_from(args, recover=False) as app:
        found = records.list_targets(app.catalog)
        app.audit.append(cli_actor(), ROLE, "backup_target_list", "backup-targets", "ok")
    if args.json:
        _print_json([t.to_dict() for t in found])
    else:
        for target in found:
            print(f"{target.name}  {target.kind}  {target.describe()}")
    return EXIT_OK


def cmd_target_remove(args: argparse.Namespace) -> int:
    with appliance_from(args, recover=False) as app:
        try:
            target = records.remove_target(app.catalog, args.name, time.time())
        except TargetError as err:
            raise UsageError(f"backup target remove: {err}") from None
        app.audit.append(cli_actor(), ROLE, "backup_target_remove", f"backup-target:{args.name}", "ok",
                         detail={"kind": target.kind, "where": target.describe()})
    print(f"target {args.name} removed (its run history is kept; nothing was deleted on the target)")
    return EXIT_OK


def cmd_target_test(args: argparse.Namespace) -> int:
    with appliance_from(args, recover=False) as app:
        target = _targets(app, args.name)[0]
        try:
            remote = open_remote(target, _options(app.config))
        except RemoteError as err:
            result: dict[str, Any] = {"where": target.describe(), "reachable": False, "problems": [str(err)]}
        else:
            try:
                result = {"reachable": True, **probe_target(remote, f"target {target.name}, command line")}
            finally:
                remote.close()
        ok = not result["problems"]
        app.audit.append(cli_actor(), ROLE, "backup_target_test", f"backup-target:{target.name}",
                         "ok" if ok else "failed", detail=result)
    if args.json:
        _print_json({"target": target.name, **result})
    else:
        print(f"target {target.name} ({result['where']}): {'OK' if ok else 'FAILED'}")
        for key in ("object_lock", "notes"):
            if key in result:
                print(f"  {key}: {result[key]}")
        for problem in result["problems"]:
            print(f"  problem: {problem}")
    return EXIT_OK if ok else EXIT_PROBLEM


def cmd_target_scan(args: argparse.Namespace) -> int:
    with appliance_from(args, recover=False) as app:
        try:
            from retention.backup.sftp import server_host_key  # paramiko: only when asked
            key_type, fingerprint = server_host_key(args.host, args.port, args.host_key_type,
                                                    app.config["backup"]["timeout_s"])
        except RemoteError as err:
            app.audit.append(cli_actor(), ROLE, "backup_target_scan", f"{args.host}:{args.port}", "failed",
                             reason=str(err))
            print(f"recorderd: backup target scan: {err}", file=sys.stderr)
            return EXIT_PROBLEM
        app.audit.append(cli_actor(), ROLE, "backup_target_scan", f"{args.host}:{args.port}", "ok",
                         detail={"type": key_type, "fingerprint": fingerprint})
    print(f"{args.host}:{args.port} {key_type} {fingerprint}")
    print("compare this with `ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub` on the server itself before pinning it")
    return EXIT_OK


# -- runs ---------------------------------------------------------------------------------------

def _run_one(app: Appliance, target: Target, args: argparse.Namespace) -> tuple[RunResult | None, str | None]:
    backup = app.config["backup"]
    rate = backup["throttle_bytes_per_s"] if args.throttle is None else args.throttle
    if rate < 0:
        raise UsageError("--throttle: bytes per second must be 0 (unlimited) or more")
    edges = Edges(clock=time.time, sleep=time.sleep, actor=cli_actor(), host=socket.gethostname(),
                  report=_terminal_progress(target.name))
    options = RunOptions(throttle_bytes_per_s=rate, keep_snapshots=backup["keep_snapshots"], repair=args.repair)
    try:
        return BackupRun(app.catalog, Path(app.config["storage"]["catalog"]), app.vault_dir, target,
                         lambda: open_remote(target, _options(app.config)), options, edges, keys=app.keys).run(), None
    except RunBusy as err:
        return None, str(err)
    finally:
        if sys.stderr.isatty():
            print(file=sys.stderr)


def _run_summary(target: Target, result: RunResult | None, error: str | None) -> dict[str, Any]:
    if result is None:
        return {"target": target.name, "state": "failed", "error": error}
    p = result.progress
    return {"target": target.name, "run": result.run_id, "state": result.state, "files_copied": p.files_done,
            "bytes_copied": p.bytes_done, "files_present": p.files_present, "files_failed": p.files_failed,
            "snapshot": result.snapshot, "manifest": result.manifest, "pruned": result.pruned,
            "resumed_after": result.interrupted_before, "error": result.error, "failures": result.failures}


def cmd_run(args: argparse.Namespace) -> int:
    summaries = []
    with appliance_from(args, recover=False) as app:
        for target in _targets(app, args.target):
            result, error = _run_one(app, target, args)
            summary = _run_summary(target, result, error)
            app.audit.append(cli_actor(), ROLE, "backup_run", f"backup-target:{target.name}",
                             "ok" if summary["state"] == "ok" else "failed", reason=summary["error"] or "",
                             detail={k: v for k, v in summary.items() if k not in ("failures", "error")})
            summaries.append(summary)
    if args.json:
        _print_json(summaries)
    else:
        for s in summaries:
            if "run" not in s:
                print(f"{s['target']}: FAILED: {s['error']}")
                continue
            print(f"{s['target']}: run {s['run']} {s['state']}: {s['files_copied']} file(s) copied "
                  f"({_human(s['bytes_copied'])}), {s['files_present']} already there, {s['files_failed']} failed")
            for failure in s["failures"]:
                print(f"  {failure}")
            if s["error"] and not s["failures"]:
                print(f"  {s['error']}")
    return EXIT_OK if all(s["state"] == "ok" for s in summaries) else EXIT_PROBLEM


def cmd_status(args: argparse.Namespace) -> int:
    with appliance_from(args, recover=False) as app:
        statuses = [s for s in records.target_status(app.catalog) if not args.target or s.target.name == args.target]
        if args.target and not statuses:
            raise UsageError(f"backup status: no backup target {args.target!r}")
        data = []
        for status in statuses:
            entry = status.to_dict()
            entry["runs"] = [r.to_dict() for r in records.list_runs(app.catalog, status.target, limit=args.runs)]
            data.append(entry)
        app.audit.append(cli_actor(), ROLE, "backup_status", "backup-targets", "ok")
    if args.json:
        _print_json(data)
        return EXIT_OK
    for entry in data:
        target = entry["target"]
        print(f"{target['name']} ({target['kind']} {target['where']})")
        last = entry["last_success"]
        print(f"  last successful run: {last['finished_at'] if last else 'never'}")
        for run in entry["runs"]:
            print(f"  run {run['id']} {run['kind']} {run['state']} {run['started_at']}: {run['files_done']}/"
                  f"{run['files_planned']} files, {run['files_failed']} failed{'  ' + run['error'] if run['error'] else ''}")
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    results = []
    with appliance_from(args, recover=False) as app:
        sample = app.config["backup"]["verify_sample"] if args.sample is None else args.sample
        if sample < 0:
            raise UsageError("backup verify: --sample must be 0 (every file) or more")
        rng = random.Random(args.seed) if args.seed is not None else random.SystemRandom()
        staging = staging_dir(Path(app.config["storage"]["catalog"]))
        for target in _targets(app, args.target):
            results.append(_verify_one(app, target, staging, sample, rng, _throttle(args.throttle, 0)))
    if args.json:
        _print_json(results)
    else:
        for r in results:
            print(f"{r['target']}: {'OK' if r['ok'] else 'PROBLEMS'}: {r['listed']} vault file(s) listed, "
                  f"{r['downloaded']} downloaded and hashed ({r['manifest']})")
            for problem in r["problems"]:
                print(f"  {problem['object']}: {problem['problem']}")
    return EXIT_OK if all(r["ok"] for r in results) else EXIT_PROBLEM


def _verify_one(app: Appliance, target: Target, staging: Path, sample: int, rng: random.Random,
                throttle: Throttle) -> dict[str, Any]:
    now = time.time()
    run_id = records.start_run(app.catalog, target, "verify", cli_actor(), socket.gethostname(), os.getpid(), now)
    try:
        remote = open_remote(target, _options(app.config))
    except RemoteError as err:
        problems = [("target", str(err))]
        listed = downloaded = 0
        manifest = None
    else:
        try:
            report = verify_target(remote, staging, sample, rng, throttle, app.keys, live_key(app.catalog))
        finally:
            remote.close()
        problems, listed, downloaded, manifest = report.problems, report.listed, report.downloaded, report.manifest_key
    for obj, problem in problems:
        records.add_failure(app.catalog, run_id, obj, problem, time.time())
    records.finish_run(app.catalog, run_id, "failed" if problems else "ok", time.time(),
                       f"{len(problems)} problem(s)" if problems else None, files_planned=listed,
                       files_done=downloaded, files_failed=len(problems), manifest=manifest)
    result = {"target": target.name, "run": run_id, "ok": not problems, "manifest": manifest, "listed": listed,
              "downloaded": downloaded, "problems": [{"object": o, "problem": p} for o, p in problems]}
    app.audit.append(cli_actor(), ROLE, "backup_verify", f"backup-target:{target.name}",
                     "ok" if not problems else "problems", detail={k: v for k, v in result.items() if k != "problems"}
                     | {"problems": len(problems)})
    return result


# -- restore ------------------------------------------------------------------------------------

def _escrowed_keks(path: Path) -> dict[str, bytes]:
    passphrase = sys.stdin.readline().rstrip("\n")
    if len(passphrase) < MIN_PASSPHRASE:
        raise UsageError(f"backup restore: the escrow passphrase (stdin) must have at least {MIN_PASSPHRASE} characters")
    try:
        return KeyStore.import_escrow(path.read_bytes(), passphrase)
    except OSError as err:
        raise UsageError(f"backup restore: --escrow {path}: {err.strerror}") from None
    except ValueError as err:
        raise UsageError(f"backup restore: --escrow {path}: {err}") from None


def _install_escrowed_keys(dest: Path, keks: dict[str, bytes], signing_key: Path | None) -> None:
    """A key directory with the escrowed KEKs (to open the restored recordings), a fresh active
    KEK for new recordings (the escrow does not say which of its KEKs wrapped new ones; retention
    makes per-month KEKs it may destroy) and the old signing key if given, else a fresh one."""
    KeyStore.create(dest)
    for kek_id, kek in keks.items():
        write_atomic(dest / f"kek-{kek_id}.key", kek, mode=0o600)
    if signing_key is not None:
        try:
            write_atomic(dest / SIGNING_FILE, signing_key.read_bytes(), mode=0o600)
        except OSError as err:
            raise UsageError(f"backup restore: --signing-key {signing_key}: {err.strerror}") from None


def _copy_key_dir(source: Path, dest: Path) -> None:
    try:
        files = check_key_dir(source)
        KeyStore(source)   # refuses an incomplete or unreadable one
    except KeyDirError as err:
        raise UsageError(f"backup restore: --key-dir: {err}") from None
    dest.mkdir(mode=0o700)
    for path in files:
        if KEK_FILE.match(path.name) or path.name in (ACTIVE_FILE, SIGNING_FILE):
            write_atomic(dest / path.name, read_private(path), mode=0o600)


def _prepare_dir(root: Path) -> bool:
    """True when continuing an unfinished restore into ``root``."""
    if root.exists() and (root / RESTORE_MARKER).exists():
        return True
    if root.exists() and any(root.iterdir()):
        raise UsageError(f"backup restore: --to {root} is not empty (restore into a new directory)")
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    (root / RESTORE_MARKER).write_text("a backup restore into this directory has not finished; run it again\n")
    return False


def cmd_restore(args: argparse.Namespace) -> int:
    keks = _escrowed_keks(args.escrow) if args.escrow else None
    root: Path = args.to.resolve()
    with appliance_from(args, recover=False) as app:
        target = _targets(app, args.target)[0]
        throttle = _throttle(args.throttle, 0)
        try:
            remote = open_remote(target, _options(app.config))
        except RemoteError as err:
            raise UsageError(f"backup restore: {err}") from None
        try:
            outcome = _restore_into(app, target, remote, root, keks, args, throttle)
        finally:
            remote.close()
        app.audit.append(cli_actor(), ROLE, "backup_restore", f"backup-target:{target.name}",
                         "ok" if not outcome["problems"] else "problems",
                         detail={k: v for k, v in outcome.items() if k != "problems"} | {"problems": len(outcome["problems"])})
    if args.json:
        _print_json(outcome)
    else:
        print(f"restored {outcome['recordings']} recording(s) from {target.name} ({outcome['manifest']}) into "
              f"{root}: {outcome['files']} vault file(s) downloaded, {outcome['kept']} already there")
        print(f"config: {outcome['config']}")
        if args.escrow:
            print("a fresh KEK is active for new recordings: export a new escrow of the restored appliance "
                  "(recorderd keys export-escrow)")
        if outcome["skipped"]:
            print(f"left out {len(outcome['skipped'])} recording(s) whose KEK is not available (crypto-shredded)")
        for problem in outcome["problems"]:
            print(f"  problem: {problem}")
    return EXIT_OK if not outcome["problems"] else EXIT_PROBLEM


def _restore_into(app: Appliance, target: Target, remote: Remote, root: Path, keks: dict[str, bytes] | None,
                  args: argparse.Namespace, throttle: Throttle) -> dict[str, Any]:
    try:
        manifest_key, manifest = read_manifest(remote, args.manifest)
    except (RestoreError, RemoteError) as err:
        raise UsageError(f"backup restore: {err}") from None
    available = set(keks) if keks is not None else _kek_ids_in(args.key_dir)
    missing = sorted(set(manifest.kek_ids) - available)
    if missing and not args.skip_missing_keks:
        raise UsageError(f"backup restore: the backup needs KEK(s) {', '.join(missing)}, which the "
                         f"{'escrow file' if keks is not None else 'key directory'} does not hold (if they were "
                         f"destroyed by retention, restore the rest with --skip-missing-keks)")
    resumed = _prepare_dir(root)
    if not (root / "keys").exists():
        if keks is not None:
            _install_escrowed_keys(root / "keys", keks, args.signing_key)
        else:
            _copy_key_dir(args.key_dir, root / "keys")
    config_path = root / "recorderd.toml"
    if not config_path.exists():
        config_path.write_text(layout_config())
    try:
        result = restore(remote, root / "catalog.db", root / "vault", KeyStore(root / "keys"), throttle, manifest_key)
    except (RestoreError, RemoteError) as err:
        raise UsageError(f"backup restore: {err} (run the same command again to continue)") from None
    try:
        with open_appliance(load(config_path), recover=False, warnings=None) as restored:
            records.close_restored_runs(restored.catalog, time.time(),
                                        f"this catalog was restored from the run's snapshot ({manifest_key})")
            restored.audit.append(cli_actor(), ROLE, "backup_restore", f"backup-target:{target.name}", "ok",
                                  detail={"manifest": manifest_key, "from_host": manifest.host,
                                          "recordings": result.recordings})
    except (ApplianceError, ConfigError) as err:
        raise UsageError(f"backup restore: the restored layout does not open: {err}") from None
    (root / RESTORE_MARKER).unlink()
    return {"target": target.name, "manifest": manifest_key, "to": str(root), "config": str(config_path),
            "resumed": resumed, "recordings": result.recordings, "files": result.files, "bytes": result.bytes,
            "kept": result.kept, "kek_ids": result.kek_ids, "skipped": result.skipped, "problems": result.problems}


def _kek_ids_in(key_dir: Path) -> set[str]:
    try:
        return set(KeyStore(key_dir).kek_ids())
    except KeyDirError as err:
        raise UsageError(f"backup restore: --key-dir: {err}") from None

