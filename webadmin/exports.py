"""Export bundles in the console: request, four-eyes decision, background build, download.

* An auditor (or an admin) requests an export of a search's results (the same fields as the
  recordings search, GET ``/exports/new?q=...``) or of a list of recording ids, with a reason.
* An admin who is not the requester approves or rejects it (storage/export_policy.py; the
  catalog refuses ``approver = requester`` too). Approval queues the build on the export
  service's background thread; the export's page shows the progress (static/js/exports.js
  polls ``/exports/<id>/status``).
* Only the requester downloads the bundle (a POST, so no other site can make a browser fetch
  it), until it expires; then the service deletes it (``[exports] expire_hours``).

Who sees what: admins every export, auditors their own. Every step is an audit entry, written
by storage/exports.py in the same transaction as the change (``export.request``,
``export.approve``, ``export.reject``, ``export.build``, ``export.download``,
``export.expire``); page views are audited as ``export.list``, ``export.view`` and
``export.preview`` (the request form, with the search and how many recordings it finds).
The service (one per app) is created when the blueprint is registered and, at start, fails
builds that a stopped process left unfinished and expires what is due.
"""

from __future__ import annotations

import threading
from typing import Any

from flask import (
    Blueprint,
    abort,
    current_app,
    jsonify,
    redirect,
    render_template,
    request,
    send_file,
    url_for,
)
from flask.blueprints import BlueprintSetupState
from flask.typing import ResponseReturnValue

from storage.export_policy import DOWNLOADABLE, ExportRefused, ExportState
from storage.exports import Actor, ExportRecord, ExportService, ExportSettings, UnknownExport, describe_search
from webadmin.authz import (
    ConsoleUser,
    audit_event,
    current_user,
    define_action,
    deny,
    mark_audited,
    register_nav,
    requires,
)
from webadmin.context import EXTENSION_KEY, ConsoleContext
from webadmin.searchform import parse_search

bp = Blueprint("exports", __name__)

LIST = define_action("export.list", {"auditor", "admin"}, "see export requests (auditors: their own)")
REQUEST = define_action("export.request", {"auditor", "admin"}, "request an export bundle, with a reason")
DECIDE = define_action("export.decide", {"admin"}, "approve or reject an export someone else requested")
DOWNLOAD = define_action("export.download", {"auditor", "admin"}, "download one's own approved bundle")
register_nav("Exports", "exports.index", LIST, order=40)

SERVICE_KEY = "recorderd.exports"
SEE_ALL_ROLES = ("admin",)
PREVIEW_ROWS = 20
MAX_IDS_TEXT = 200_000
MAX_NOTE = 2000
_service_lock = threading.Lock()


@bp.record_once
def _start_service(state: BlueprintSetupState) -> None:
    """One export service per app: recover interrupted builds, expire what is due, keep sweeping."""
    app = state.app
    ctx: ConsoleContext = app.extensions[EXTENSION_KEY]
    with _service_lock:
        if SERVICE_KEY not in app.extensions:
            service = ExportService(ctx.catalog, ctx.audit, ctx.keys, ctx.vault_dir,
                                    ExportSettings.from_config(ctx.config["exports"]))
            service.start()
            app.extensions[SERVICE_KEY] = service


def export_service() -> ExportService:
    service = current_app.extensions.get(SERVICE_KEY)
    if not isinstance(service, ExportService):
        raise RuntimeError("the exports blueprint was not registered on this app")
    return service


def _actor(user: ConsoleUser) -> Actor:
    return Actor(user.username, user.role)


def _visible(export_id: int) -> ExportRecord:
    """The export, if the current user may see it (admins: all; auditors: their own)."""
    user = current_user()
    record = export_service().store.get(export_id)
    if record is None:
        deny(f"export:{export_id}", "no such export", 404)
    if user.role not in SEE_ALL_ROLES and record.requester != user.username:
        deny(record.object, "not the requester's export")
    return record


def _refused(err: ExportRefused, status: int = 409) -> ResponseReturnValue:
    """The store audited the refusal already; show it: 404 for an unknown export, 403 for an
    authorisation rule (four eyes, not the requester), else ``status`` (the state or the input)."""
    mark_audited()
    abort(404 if isinstance(err, UnknownExport) else 403 if err.denied else status, description=err.reason)


# ---------------------------------------------------------------------------------------------
# pages


@bp.get("/exports")
@requires(LIST)
def index() -> ResponseReturnValue:
    user = current_user()
    service = export_service()
    service.expire_due()
    requester = None if user.role in SEE_ALL_ROLES else user.username
    records = service.store.find(requester=requester)
    waiting = [r for r in records if r.state == ExportState.REQUESTED and r.requester != user.username
               and user.role == "admin"]
    audit_event(LIST, "exports", detail={"shown": len(records)})
    return render_template("exports/index.html", records=records, waiting=waiting, settings=service.settings)


@bp.get("/exports/new")
@requires(REQUEST)
def new() -> ResponseReturnValue:
    """The request form: of a search (the recordings search's fields) or of a list of ids."""
    form = parse_search(request.args)
    service = export_service()
    matches: list[Any] = []
    total = 0
    searched = any(form.values.values())
    if searched and not form.errors:
        ids = service.resolve(form.query, form.filters)
        total = len(ids)
        reader_rows = [service.catalog.get(rid) for rid in ids[:PREVIEW_ROWS]]
        matches = [d.recording for d in reader_rows if d is not None]
    audit_event("export.preview", "exports/new",
                detail={"search": describe_search(form.query, _typed(form.values)) if searched else None,
                        "matches": total})
    return render_template("exports/new.html", form=form, searched=searched, matches=matches, total=total,
                           limit=service.settings.max_recordings)


def _typed(values: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in values.items() if k != "q" and v}


def _ids_from(text: str) -> list[str]:
    return list(dict.fromkeys(part for part in text.replace(",", " ").split() if part))


@bp.post("/exports")
@requires(REQUEST)
def create() -> ResponseReturnValue:
    user = current_user()
    service = export_service()
    reason = (request.form.get("reason") or "").strip()
    ids_text = (request.form.get("ids") or "")[:MAX_IDS_TEXT]
    try:
        if request.form.get("mode") == "ids":
            record = service.request(_actor(user), reason, recording_ids=_ids_from(ids_text))
        else:
            form = parse_search(request.form)
            if form.errors:
                abort(400, description="; ".join(form.errors.values()))
            ids = service.resolve(form.query, form.filters)
            record = service.store.create(_actor(user), reason, ids, describe_search(form.query, _typed(form.values)),
                                          service.settings.max_recordings)
    except ExportRefused as err:
        return _refused(err, 400)
    mark_audited()   # export.request was written with the new row
    return redirect(url_for("exports.show", export_id=record.id))


@bp.get("/exports/<int:export_id>")
@requires(LIST)
def show(export_id: int) -> ResponseReturnValue:
    record = _visible(export_id)
    user = current_user()
    rows = [export_service().catalog.get(rid) for rid in record.recording_ids[:PREVIEW_ROWS]]
    audit_event("export.view", record.object, detail={"state": str(record.state)})
    return render_template("exports/detail.html", record=record, rows=[r.recording for r in rows if r is not None],
                           can_decide=user.role == "admin" and record.requester != user.username
                           and record.state == ExportState.REQUESTED,
                           can_download=record.requester == user.username and record.state in DOWNLOADABLE,
                           own_request=record.requester == user.username)


@bp.get("/exports/<int:export_id>/status")
@requires(LIST)
def status(export_id: int) -> ResponseReturnValue:
    """Progress for the export's page (polled while building; not audited per poll)."""
    record = _visible(export_id)
    mark_audited()
    return jsonify(state=str(record.state), percent=record.percent, recordings_done=record.recordings_done,
                   recordings=len(record.recording_ids), error=record.error)


@bp.post("/exports/<int:export_id>/approve")
@requires(DECIDE)
def approve(export_id: int) -> ResponseReturnValue:
    return _decide(export_id, approve=True)


@bp.post("/exports/<int:export_id>/reject")
@requires(DECIDE)
def reject(export_id: int) -> ResponseReturnValue:
    return _decide(export_id, approve=False)


def _decide(export_id: int, *, approve: bool) -> ResponseReturnValue:
    service = export_service()
    actor = _actor(current_user())
    note = (request.form.get("note") or "").strip()[:MAX_NOTE]
    try:
        if approve:
            service.approve(export_id, actor, note)
        else:
            service.reject(export_id, actor, note)
    except ExportRefused as err:
        return _refused(err)
    mark_audited()
    return redirect(url_for("exports.show", export_id=export_id))


@bp.post("/exports/<int:export_id>/download")
@requires(DOWNLOAD)
def download(export_id: int) -> ResponseReturnValue:
    try:
        record, path = export_service().download(export_id, _actor(current_user()))
    except ExportRefused as err:
        return _refused(err)
    mark_audited()
    response = send_file(path, mimetype="application/zip", as_attachment=True,
                         download_name=f"recorderd-{record.bundle_id}.zip", max_age=0)
    response.headers["Cache-Control"] = "no-store"
    return response
