"""Offsite backup in the console (admin): targets, their last runs, progress and failures,
"run now", and adding, testing and removing targets (the same as `recorderd backup target ...`).

A run started here runs in a thread of the console's process (retention/backup/runner.py,
the same code as the timer's `recorderd backup run`); the target's run lock keeps it from
overlapping a timer run. Its progress is written to the catalog, which the page polls
(static/js/backup.js reads ``/backup/status.json``). If the console restarts mid-run, the next
run resumes where it stopped. Secrets are entered as references only (file:, credential:,
env:): a ``credential:`` secret needs the same LoadCredential= in recorderd-web.service for
"run now" to read it. Target names travel in form fields, not in URLs.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any

from flask import Blueprint, jsonify, render_template, request
from flask.typing import ResponseReturnValue

from retention.backup import records
from retention.backup.connect import open_remote, probe_target, remote_options
from retention.backup.remote import RemoteError
from retention.backup.runner import BackupRun, Edges, RunBusy, RunOptions
from retention.backup.targets import (
    HOST_KEY_TYPES,
    KINDS,
    LOCK_MODES,
    Settings,
    Target,
    TargetError,
    check_name,
    parse_host_key_line,
    settings_from,
)
from storage.keys import KeyStore
from webadmin.app import utc_text
from webadmin.authz import audit_event, current_user, define_action, register_nav, requires
from webadmin.context import ConsoleContext, current_context
from webadmin.system import Rows, register_section

bp = Blueprint("backup", __name__, url_prefix="/backup")

VIEW = define_action("backup.view", {"admin"}, "see backup targets, runs, progress and failures")
EDIT = define_action("backup.target_edit", {"admin"}, "add, test and remove backup targets")
RUN = define_action("backup.run", {"admin"}, "start a backup run now")
register_nav("Backup", "backup.index", VIEW, order=75)

MAX_FIELD = 2048
HISTORY = 20
_threads: dict[int, threading.Thread] = {}
_threads_lock = threading.Lock()


def _field(name: str) -> str:
    return request.form.get(name, "")[:MAX_FIELD].strip()


def _settings_from_form(kind: str, config: dict[str, Any]) -> Settings:
    if kind == "s3":
        lock_days = _field("lock_days")
        try:
            days = int(lock_days) if lock_days else int(config["object_lock_days"])
        except ValueError:
            raise TargetError(f"lock_days: {lock_days!r} is not a number of days") from None
        return settings_from("s3", {
            "bucket": _field("bucket"), "prefix": _field("prefix").strip("/"), "endpoint": _field("endpoint") or None,
            "region": _field("region") or "us-east-1", "access_key_id": _field("access_key_id") or None,
            "secret": _field("secret") or None, "addressing": _field("addressing") or "path",
            "ca_bundle": _field("ca_bundle") or None, "lock_mode": _field("lock_mode") or config["object_lock_mode"],
            "lock_days": days})
    if kind == "sftp":
        port = _field("port") or "22"
        if not port.isdigit():
            raise TargetError(f"port: {port!r} is not a TCP port")
        if _field("host_key").startswith("SHA256:"):
            key_type, fingerprint = _field("host_key_type") or "ssh-ed25519", _field("host_key")
        else:
            key_type, fingerprint = parse_host_key_line(_field("host_key"))
        return settings_from("sftp", {
            "host": _field("host"), "port": int(port), "user": _field("user"),
            "directory": _field("directory").rstrip("/") or "/", "key": _field("key"),
            "host_key_type": key_type, "host_key_sha256": fingerprint})
    if kind == "path":
        return settings_from("path", {"directory": _field("directory").rstrip("/") or "/",
                                      "require_mount": not request.form.get("allow_unmounted")})
    raise TargetError(f"kind: {kind!r} is not one of {', '.join(KINDS)}")


def _page(status: int = 200, *, error: str = "", notice: str = "", probe: dict[str, Any] | None = None,
          form: dict[str, str] | None = None) -> ResponseReturnValue:
    ctx = current_context()
    statuses = records.target_status(ctx.catalog)
    history = records.list_runs(ctx.catalog, limit=HISTORY)
    return render_template("backup/index.html", statuses=statuses, history=history, error=error, notice=notice,
                           probe=probe, form=form or {}, kinds=KINDS, lock_modes=LOCK_MODES,
                           host_key_types=HOST_KEY_TYPES, defaults=ctx.config["backup"]), status


@bp.get("")
@requires(VIEW)
def index() -> ResponseReturnValue:
    return _page()


@bp.get("/status.json")
@requires(VIEW)
def status_json() -> ResponseReturnValue:
    """What the page polls while a run is in progress."""
    ctx = current_context()
    return jsonify([s.to_dict() for s in records.target_status(ctx.catalog)])


@bp.post("/targets")
@requires(EDIT)
def add_target() -> ResponseReturnValue:
    ctx = current_context()
    name, kind = _field("name"), _field("kind")
    form = {k: _field(k) for k in request.form if k != "csrf_token"}
    try:
        check_name(name)
        settings = _settings_from_form(kind, ctx.config["backup"])
        target = records.add_target(ctx.catalog, name, kind, settings, current_user().username, time.time(),
                                    replace=bool(request.form.get("replace")))
    except TargetError as err:
        audit_event("backup_target_add", f"backup-target:{name}", "refused", reason=str(err))
        return _page(400, error=f"Target not saved: {err}", form=form)
    audit_event("backup_target_add", f"backup-target:{name}", detail={"kind": kind, "where": target.describe()})
    return _page(notice=f"Target {name} saved: {target.kind} {target.describe()}. Test it before the first run.")


@bp.post("/targets/remove")
@requires(EDIT)
def remove_target() -> ResponseReturnValue:
    ctx = current_context()
    name = _field("name")
    try:
        target = records.remove_target(ctx.catalog, name, time.time())
    except TargetError as err:
        return _page(400, error=str(err))
    audit_event("backup_target_remove", f"backup-target:{name}", detail={"where": target.describe()})
    return _page(notice=f"Target {name} removed; its history is kept and nothing was deleted on it.")


@bp.post("/targets/test")
@requires(EDIT)
def test_target() -> ResponseReturnValue:
    ctx = current_context()
    name = _field("name")
    try:
        target = records.get_target(ctx.catalog, name)
    except TargetError as err:
        return _page(400, error=str(err))
    probe: dict[str, Any] = {"target": name, "problems": []}
    try:
        remote = open_remote(target, remote_options(ctx.config["backup"]))
    except RemoteError as err:
        probe["problems"].append(str(err))
    else:
        try:
            probe.update(probe_target(remote, f"target {name}, console"))
        finally:
            remote.close()
    ok = not probe["problems"]
    audit_event("backup_target_test", f"backup-target:{name}", "ok" if ok else "failed", detail=probe)
    return _page(200 if ok else 502, probe=probe)


def start_run(ctx: ConsoleContext, target: Target, actor: str) -> threading.Thread:
    """A backup run of ``target`` in a thread of this process (one per target at a time)."""
    backup = ctx.config["backup"]
    run = BackupRun(ctx.catalog, Path(ctx.config["storage"]["catalog"]), ctx.vault_dir, target,
                    lambda: open_remote(target, remote_options(backup)),
                    RunOptions(throttle_bytes_per_s=backup["throttle_bytes_per_s"],
                               keep_snapshots=backup["keep_snapshots"]),
                    Edges(clock=time.time, sleep=time.sleep, actor=actor, host=socket.gethostname()),
                    # read the key directory afresh: retention adds per-month KEKs after this process started
                    keys=KeyStore(ctx.keys.directory))

    def work() -> None:
        try:
            result = run.run()
        except RunBusy as err:
            ctx.audit.append(actor, "admin", "backup_run", f"backup-target:{target.name}", "refused", reason=str(err))
            return
        ctx.audit.append(actor, "admin", "backup_run", f"backup-target:{target.name}",
                         "ok" if result.state == "ok" else "failed", reason=result.error or "",
                         detail={"run": result.run_id, "files_copied": result.progress.files_done,
                                 "files_failed": result.progress.files_failed})

    thread = threading.Thread(target=work, name=f"backup-{target.name}", daemon=True)
    thread.start()
    return thread


@bp.post("/run")
@requires(RUN)
def run_now() -> ResponseReturnValue:
    ctx = current_context()
    name = _field("name")
    try:
        target = records.get_target(ctx.catalog, name)
    except TargetError as err:
        return _page(400, error=str(err))
    with _threads_lock:
        running = _threads.get(target.id)
        last = next(iter(records.list_runs(ctx.catalog, target, "backup", limit=1)), None)
        if (running is not None and running.is_alive()) or (last is not None and last.state == "running"):
            audit_event("backup_run_now", f"backup-target:{name}", "refused", reason="a run is in progress")
            return _page(409, error=f"A backup run of {name} is in progress already.")
        user = current_user()
        _threads[target.id] = start_run(ctx, target, f"{user.username}@console")
    audit_event("backup_run_now", f"backup-target:{name}")
    return _page(202, notice=f"Backup run of {name} started; progress below.")


def system_rows(ctx: ConsoleContext) -> Rows:
    """The backup section of the system page."""
    rows: Rows = []
    for status in records.target_status(ctx.catalog):
        last = status.last_run
        state = f"{last.state} ({utc_text(last.started_at)})" if last else "never run"
        success = utc_text(status.last_success.finished_at) if status.last_success else "never"
        rows.append((status.target.name, f"last run {state}; last success {success}"))
    return rows or [("targets", "no backup target configured")]


register_section("Backup", system_rows)
