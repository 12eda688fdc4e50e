"""Recordings: search, the recording page, tags and notes, and the player (audio + waveform).

Every request is an audit entry: ``recording.search`` (the query, filters and how many
matched), ``recording.view``, ``recording.play`` (the reason for access; see
webadmin/playback.py for how that entry is the playback's grant), ``recording.download``,
``recording.tag`` / ``recording.untag``, ``recording.note`` / ``recording.note_edit``; refusals as
``denied`` (webadmin/authz.py). Objects are checked by webadmin/access.py on every route that
names a recording: an agent's or reviewer's request for a recording that is not theirs gets the
same 403 as one for an id that does not exist.

Numbers (caller, callee, their URIs) are masked for agent and qa (storage/masking.py), on the
page and in every JSON answer; so are DTMF digits (keys pressed during a call are often card
numbers or PINs).
"""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, Response, abort, current_app, g, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from capture.recording import iso_utc
from storage import review as review_store
from storage.catalog import CONSENT_FILTERS, ORDERINGS, CatalogError, RecordingDetail
from storage.masking import mask_row, needs_masking
from webadmin import playback
from webadmin.access import recording_visible, request_reader, search_scope
from webadmin.authz import (
    ConsoleUser,
    allowed,
    audit_event,
    current_user,
    define_action,
    deny,
    mark_audited,
    register_nav,
    requires,
)
from webadmin.context import current_context
from webadmin.httprange import RangeNotSatisfiable, if_range_allows, parse_range
from webadmin.searchform import COMPLETENESS, DIRECTIONS, parse_search

bp = Blueprint("recordings", __name__)

ALL_ROLES = {"agent", "qa", "auditor", "admin"}
SEARCH = define_action("recording.search", ALL_ROLES, "search recordings (agents: their own, QA: assigned)")
VIEW = define_action("recording.view", ALL_ROLES, "open a recording's page")
PLAY = define_action(playback.PLAY_ACTION, ALL_ROLES, "listen to a recording (after giving a reason)")
DOWNLOAD = define_action("recording.download", {"auditor", "admin"}, "download a recording's WAV")
TAG = define_action("recording.tag", {"qa", "admin"}, "add or remove a recording's tags")
NOTE = define_action("recording.note", {"qa", "admin"}, "add notes to a recording, edit one's own")
register_nav("Recordings", "recordings.search", SEARCH, order=10)

PEAKS_KEY = "recorderd.peaks"
MAX_TAG = 64
MAX_NOTE = 4000
MAX_REASON = 500
MASKED_DIGIT = "•"


# -- template filters (times in UTC, as everywhere in the console)


@bp.app_template_filter("rec_utc")
def _utc(epoch: float | None) -> str:
    return "–" if epoch is None else str(iso_utc(epoch)).replace("T", " ").replace("Z", "")


@bp.app_template_filter("rec_clock")
def _clock(seconds: float | None) -> str:
    """Offset in a recording as m:ss.s."""
    if seconds is None:
        return "–"
    minutes, rest = divmod(max(0.0, float(seconds)), 60.0)
    return f"{int(minutes)}:{rest:04.1f}"


@bp.app_template_filter("rec_duration")
def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    hours, rest = divmod(int(round(seconds)), 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


@bp.app_template_filter("rec_percent")
def _percent(ratio: float | None) -> str:
    return "–" if ratio is None else f"{ratio * 100:.1f} %"


@bp.app_template_filter("rec_yesno")
def _yesno(value: bool | None) -> str:
    return "unknown" if value is None else ("yes" if value else "no")


@bp.app_template_filter("rec_ms")
def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f} ms"


def settings() -> dict[str, Any]:
    return current_context().config["recordings"]


def _peaks_cache() -> playback.PeaksCache:
    cache = current_app.extensions.get(PEAKS_KEY)
    if not isinstance(cache, playback.PeaksCache):
        cache = current_app.extensions[PEAKS_KEY] = playback.PeaksCache()
    return cache


def require_visible(recording_id: str) -> None:
    """Go on only if the current user may see this recording; otherwise an audited 403 (404 for
    the roles that see everything, to whom existence is no secret)."""
    user = current_user()
    if not recording_visible(user, recording_id):
        if user.role in ("auditor", "admin"):
            audit_event(str(g.get("recorderd_action", "")), recording_id, "not_found")
            abort(404, description=f"No recording {recording_id}.")
        deny(recording_id, f"{user.role} {user.username} may not see recording {recording_id}")


def visible_detail(recording_id: str) -> RecordingDetail:
    """Everything about the recording, if the current user may see it (see require_visible)."""
    require_visible(recording_id)
    detail = request_reader().get(recording_id)
    if detail is None:   # removed between the check and the read
        abort(404)
    return detail


def _masked_dtmf(dtmf: list[dict[str, Any]], role: str) -> list[dict[str, Any]]:
    if not needs_masking(role):
        return dtmf
    return [{**event, "digit": MASKED_DIGIT} for event in dtmf]


# ---------------------------------------------------------------------------------------------
# search


@bp.get("/recordings")
@requires(SEARCH)
def search() -> ResponseReturnValue:
    user = current_user()
    form = parse_search(request.args)
    scope = search_scope(user)
    if user.role == "agent":
        form.filters.pop("agent_id", None)    # an agent's own id is the scope; no other
    page_size = settings()["page_size"]
    result = None
    if not form.errors and scope is not None:
        try:
            result = request_reader().search(form.query, **{**form.filters, **scope}, order_by=form.order_by,
                                             limit=page_size, offset=(form.page - 1) * page_size)
        except ValueError as err:
            form.errors["q"] = str(err)
    rows = [mask_row(row, user.role) for row in result.rows] if result else []
    audit_event(SEARCH, form.query or "", "ok" if not form.errors else "refused",
                detail={"filters": {k: v for k, v in form.values.items() if v and k != "q"},
                        "page": form.page, "results": result.total if result else 0,
                        "scope": sorted(scope) if scope is not None else "none"})
    status = 400 if form.errors else 200
    return render_template("recordings/search.html", form=form, rows=rows, result=result, page_size=page_size,
                           scope=scope, directions=DIRECTIONS, consents=tuple(CONSENT_FILTERS),
                           completeness=tuple(COMPLETENESS), orderings=tuple(ORDERINGS),
                           show_agent_filter=user.role != "agent"), status


# ---------------------------------------------------------------------------------------------
# one recording


def _grant_of_request(user: ConsoleUser, recording_id: str) -> tuple[int | None, str | None]:
    """(grant seq, why it is refused) for ``?grant=`` of this request; (None, None) without one."""
    seq = playback.parse_grant(request.args.get("grant"))
    if seq is None:
        return None, None if "grant" not in request.args else "malformed grant"
    entry = playback.grant_entry(request_reader(), seq)
    problem = playback.valid_grant(entry, user, recording_id, settings()["grant_minutes"] * 60.0, time.time())
    return seq, problem


@bp.get("/recordings/<recording_id>")
@requires(VIEW)
def show(recording_id: str) -> ResponseReturnValue:
    user = current_user()
    detail = visible_detail(recording_id)
    grant, grant_problem = _grant_of_request(user, recording_id)
    reader = request_reader()
    scores = review_store.scores_for(reader, recording_id) if user.role in ("auditor", "admin") else [
        s for s in review_store.scores_for(reader, recording_id) if s.reviewer == user.username]
    my_assignments = [a for a in review_store.assignments(reader, recording_id=recording_id, reviewer=user.username)
                      if a.state != "withdrawn"] if user.role == "qa" else []
    audit_event(VIEW, recording_id, detail={"masked": needs_masking(user.role)})
    try:
        playback.playable_row(detail.recording)
        unplayable = None
    except playback.AudioUnavailable as err:
        unplayable = str(err)
    return render_template(
        "recordings/detail.html", rec=mask_row(detail.recording, user.role), metadata=mask_row(detail.metadata, user.role),
        streams=detail.streams, dtmf=_masked_dtmf(detail.dtmf, user.role), notes=detail.notes,
        legs=(detail.metadata.get("completeness") or {}).get("legs") or [],
        grant=grant if grant_problem is None else None, grant_problem=grant_problem, unplayable=unplayable,
        reason_min=settings()["reason_min_chars"], scores=scores, my_assignments=my_assignments,
        can_tag=allowed(user, TAG), can_note=allowed(user, NOTE), can_download=allowed(user, DOWNLOAD))


@bp.post("/recordings/<recording_id>/access")
@requires(PLAY)
def give_reason(recording_id: str) -> ResponseReturnValue:
    """The reason-for-access prompt: its audit entry is the playback grant."""
    user = current_user()
    detail = visible_detail(recording_id)
    reason = " ".join(request.form.get("reason", "").split())[:MAX_REASON]
    minimum = settings()["reason_min_chars"]
    if len(reason) < minimum:
        audit_event(PLAY, recording_id, "refused", reason=reason,
                    detail={"why": f"a reason of at least {minimum} characters is required"})
        abort(400, description=f"Say why you need to listen: a reason of at least {minimum} characters.")
    try:
        playback.playable_row(detail.recording)
    except playback.AudioUnavailable as err:
        audit_event(PLAY, recording_id, "refused", reason=reason, detail={"why": str(err)})
        abort(err.status, description=str(err))
    entry = current_context().audit.append(user.username, user.role, PLAY, recording_id, "ok", reason=reason,
                                           detail={"client": request.remote_addr or "",
                                                   "grant_minutes": settings()["grant_minutes"]})
    mark_audited()
    return redirect(url_for("recordings.show", recording_id=recording_id, grant=entry.seq, _anchor="player"))


def _checked_grant(recording_id: str) -> int:
    """The request's valid grant for this recording, or an audited 403."""
    user = current_user()
    seq, problem = _grant_of_request(user, recording_id)
    if seq is None or problem is not None:
        deny(recording_id, f"playback refused: {problem or 'no reason for access given'}")
    assert seq is not None
    return seq


def _open_audio(recording_id: str, *, audit_failure: bool) -> playback.AudioSource:
    """The recording's audio, opened from the vault; 404 for no such recording, the reason it
    cannot be played otherwise (an audit entry of the failure when ``audit_failure``)."""
    row = request_reader().row(recording_id)
    if row is None:
        abort(404)
    try:
        return playback.open_audio(current_context(), request_reader(), row)
    except playback.AudioUnavailable as err:
        if audit_failure:
            audit_event(str(g.get("recorderd_action", "")), recording_id, "failed", reason=str(err))
        abort(err.status, description=str(err))


def _audio_response(recording_id: str, *, attachment: bool) -> Response:
    """The WAV (or the requested range of it) streamed from the vault."""
    source = _open_audio(recording_id, audit_failure=True)
    headers = {"Accept-Ranges": "bytes", "ETag": source.etag, "Content-Type": "audio/wav",
               "Content-Disposition": f'{"attachment" if attachment else "inline"}; filename="{recording_id}.wav"'}
    wanted = request.headers.get("Range")
    try:
        byte_range = parse_range(wanted, source.size) if if_range_allows(request.headers.get("If-Range"),
                                                                         source.etag) else None
    except RangeNotSatisfiable as err:
        source.close()
        return Response(f"{err}\n", status=416, mimetype="text/plain",
                        headers={"Content-Range": err.content_range, "Accept-Ranges": "bytes"})
    if byte_range is None:
        headers["Content-Length"] = str(source.size)
        return Response(playback.AudioStream(source, None), status=200, headers=headers, direct_passthrough=True)
    headers.update({"Content-Range": byte_range.content_range, "Content-Length": str(byte_range.length)})
    return Response(playback.AudioStream(source, byte_range), status=206, headers=headers, direct_passthrough=True)


@bp.get("/recordings/<recording_id>/audio")
@requires(PLAY)
def audio(recording_id: str) -> ResponseReturnValue:
    require_visible(recording_id)
    _checked_grant(recording_id)
    mark_audited()   # a continuation of the audited playback (its grant); seeking asks many ranges
    return _audio_response(recording_id, attachment=False)


@bp.get("/recordings/<recording_id>/waveform.json")
@requires(PLAY)
def waveform(recording_id: str) -> ResponseReturnValue:
    require_visible(recording_id)
    _checked_grant(recording_id)
    mark_audited()
    source = _open_audio(recording_id, audit_failure=False)
    try:
        return _peaks_cache().get(source, settings()["waveform_points"])
    finally:
        source.close()


@bp.get("/recordings/<recording_id>/download")
@requires(DOWNLOAD)
def download(recording_id: str) -> ResponseReturnValue:
    require_visible(recording_id)
    seq = _checked_grant(recording_id)
    response = _audio_response(recording_id, attachment=True)    # an unavailable file is audited there
    entry = playback.grant_entry(request_reader(), seq)
    audit_event(DOWNLOAD, recording_id, reason=entry.reason if entry else "",
                detail={"grant": seq, "status": response.status_code, "range": request.headers.get("Range")})
    return response


# ---------------------------------------------------------------------------------------------
# tags and notes


def _back(recording_id: str) -> ResponseReturnValue:
    return redirect(url_for("recordings.show", recording_id=recording_id, _anchor="annotations"))


@bp.post("/recordings/<recording_id>/tags")
@requires(TAG)
def add_tag(recording_id: str) -> ResponseReturnValue:
    visible_detail(recording_id)
    tag = request.form.get("tag", "").strip()
    if not tag or len(tag) > MAX_TAG or any(ch.isspace() for ch in tag):
        audit_event(TAG, recording_id, "refused", detail={"tag": tag[:MAX_TAG]})
        abort(400, description=f"A tag is one word of at most {MAX_TAG} characters.")
    added = current_context().catalog.add_tag(recording_id, tag)
    audit_event(TAG, recording_id, "ok" if added else "unchanged", detail={"tag": tag})
    return _back(recording_id)


@bp.post("/recordings/<recording_id>/tags/remove")
@requires(TAG)
def remove_tag(recording_id: str) -> ResponseReturnValue:
    visible_detail(recording_id)
    tag = request.form.get("tag", "").strip()
    removed = current_context().catalog.remove_tag(recording_id, tag)
    audit_event("recording.untag", recording_id, "ok" if removed else "unchanged", detail={"tag": tag})
    return _back(recording_id)


def _note_text() -> str:
    text = request.form.get("text", "").strip()
    if not text or len(text) > MAX_NOTE:
        abort(400, description=f"A note has 1 to {MAX_NOTE} characters.")
    return text


@bp.post("/recordings/<recording_id>/notes")
@requires(NOTE)
def add_note(recording_id: str) -> ResponseReturnValue:
    visible_detail(recording_id)
    note = current_context().catalog.add_note(recording_id, current_user().username, _note_text())
    audit_event(NOTE, recording_id, detail={"note": note.id, "text": note.text})
    return _back(recording_id)


@bp.post("/recordings/<recording_id>/notes/<int:note_id>")
@requires(NOTE)
def edit_note(recording_id: str, note_id: int) -> ResponseReturnValue:
    detail = visible_detail(recording_id)
    if all(n.id != note_id for n in detail.notes):
        deny(recording_id, f"note {note_id} is not a note of recording {recording_id}")
    text = _note_text()
    try:
        before, after = current_context().catalog.update_note(note_id, text, author=current_user().username)
    except CatalogError as err:
        deny(recording_id, str(err))
    audit_event("recording.note_edit", recording_id,
                detail={"note": note_id, "before": before.text, "after": after.text})
    return _back(recording_id)
