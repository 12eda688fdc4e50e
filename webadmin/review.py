"""QA review pages: assignment (by hand or by a random sample per agent), scoring, cross-review.

Roles: admins assign, withdraw and ask for cross-reviews (``review.assign``); QA reviewers
score what is assigned to them (``review.score``); QA, auditors and admins see assignments and
scores (``review.view``) — a reviewer only their own assignments, the scores they gave, and a
score they cross-reviewed once their own cross-review is in (cross-reviews are blind: the
second reviewer does not see the first score before giving theirs). An assignment is also what
lets a reviewer open the recording (webadmin/access.py).

Every page and change is an audit entry: ``review.view``, ``review.assign``, ``review.sample``
(with the random seed, so a sample can be reproduced), ``review.withdraw``, ``review.score``,
``review.cross_assign``. Storage and the pure sampling functions are in storage/review.py; the
rubric and sampling settings in ``[review]``.
"""

from __future__ import annotations

import random
import secrets
from datetime import UTC, date, datetime, timedelta
from typing import Any, NoReturn

from flask import Blueprint, abort, redirect, render_template, request, url_for
from flask.blueprints import BlueprintSetupState
from flask.typing import ResponseReturnValue

from analysis.risk import riskiest_per_agent
from analysis.store import risk_scores
from storage import review
from storage.catalog import CatalogError, UnknownRecording
from storage.review import Assignment, ReviewError, ReviewStore, Rubric, Score
from webadmin.access import request_reader
from webadmin.authz import audit_event, current_user, define_action, deny, register_nav, requires
from webadmin.context import EXTENSION_KEY, current_context
from webadmin.users_store import get_user, list_users

bp = Blueprint("review", __name__)

VIEW = define_action("review.view", {"qa", "auditor", "admin"},
                     "see QA assignments and scores (QA reviewers: their own)")
ASSIGN = define_action("review.assign", {"admin"},
                       "assign recordings for QA review (by hand or sample), withdraw, ask for cross-reviews")
SCORE = define_action("review.score", {"qa"}, "score a recording assigned to oneself")
register_nav("QA review", "review.index", VIEW, order=20)

SEE_ALL_ROLES = ("auditor", "admin")
LIST_LIMIT = 200
MAX_COMMENT = 4000
MAX_SAMPLE_DAYS = 366


def settings() -> dict[str, Any]:
    return current_context().config["review"]


def rubric() -> Rubric:
    return Rubric.parse(settings()["rubric"])


@bp.record_once
def _check_rubric(state: BlueprintSetupState) -> None:
    """A bad [review] rubric stops the console at start, naming the setting."""
    try:
        Rubric.parse(state.app.extensions[EXTENSION_KEY].config["review"]["rubric"])
    except ValueError as err:
        raise ValueError(f"review.rubric: {err}") from err


def _store() -> ReviewStore:
    return ReviewStore(current_context().catalog)


def _reviewers() -> list[str]:
    return [u.username for u in list_users(request_reader(), role="qa") if not u.disabled]


def _check_reviewer(name: str) -> str:
    user = get_user(request_reader(), name)
    if user is None or user.role != "qa" or user.disabled:
        raise ReviewError(f"{name or '(none)'} is not an active QA reviewer")
    return name


def _refuse(action: str, obj: str, err: Exception, detail: dict[str, Any] | None = None) -> NoReturn:
    audit_event(action, obj, "refused", reason=str(err), detail=detail)
    abort(400, description=str(err))


# ---------------------------------------------------------------------------------------------
# the queue


@bp.get("/review")
@requires(VIEW)
def index() -> ResponseReturnValue:
    user = current_user()
    reader = request_reader()
    state = request.args.get("state") or None
    if state not in (None, *review.ASSIGNMENT_STATES):
        state = None
    if user.role in SEE_ALL_ROLES:
        wanted = request.args.get("reviewer") or None
        items = review.assignments(reader, reviewer=wanted, state=state, limit=LIST_LIMIT)
    else:
        items = review.assignments(reader, reviewer=user.username, state=state, limit=LIST_LIMIT)
    rows = {a.recording_id: reader.row(a.recording_id) for a in items}
    scores = {a.id: review.score_of_assignment(reader, a.id) for a in items if a.state == "scored"}
    audit_event(VIEW, "review-queue", detail={"state": state, "shown": len(items)})
    today = datetime.now(UTC).date()
    return render_template("review/index.html", items=items, rows=rows, scores=scores, state=state,
                           states=review.ASSIGNMENT_STATES, reviewers=_reviewers() if user.role == "admin" else [],
                           can_assign=user.role == "admin", sample_rate=settings()["sample_rate"],
                           sample_minimum=settings()["sample_min_per_agent"],
                           default_from=(today - timedelta(days=7)).isoformat(), default_to=today.isoformat())


# ---------------------------------------------------------------------------------------------
# assigning (admin)


@bp.post("/review/assign")
@requires(ASSIGN)
def assign() -> ResponseReturnValue:
    recording_id = request.form.get("recording_id", "").strip()
    reviewer = request.form.get("reviewer", "").strip()
    try:
        made = _store().assign(recording_id, _check_reviewer(reviewer), current_user().username)
    except (ReviewError, UnknownRecording) as err:
        _refuse(ASSIGN, recording_id or "-", err, {"reviewer": reviewer})
    audit_event(ASSIGN, recording_id, detail={"assignment": made.id, "reviewer": reviewer, "method": "manual"})
    return redirect(url_for("review.index"))


def _form_day(name: str) -> datetime:
    try:
        return datetime.combine(date.fromisoformat(request.form.get(name, "").strip()), datetime.min.time(), tzinfo=UTC)
    except ValueError:
        raise ReviewError(f"{name}: a date YYYY-MM-DD is needed") from None


def _sample_parameters() -> tuple[datetime, datetime, float, int]:
    first, last = _form_day("from"), _form_day("to") + timedelta(days=1)
    if not timedelta(0) < last - first <= timedelta(days=MAX_SAMPLE_DAYS):
        raise ReviewError(f"the sampled period must be 1 to {MAX_SAMPLE_DAYS} days, first day first")
    try:
        rate = float(request.form.get("rate") or settings()["sample_rate"])
    except ValueError:
        raise ReviewError("rate: a share between 0 and 1, e.g. 0.05") from None
    if not 0.0 < rate <= 1.0:
        raise ReviewError("rate: a share between 0 and 1, e.g. 0.05")
    seed_text = request.form.get("seed", "").strip()
    if seed_text and not seed_text.isdigit():
        raise ReviewError("seed: a whole number (or empty for a random one)")
    seed = int(seed_text) if seed_text else secrets.randbits(63)
    return first, last, rate, seed


@bp.post("/review/sample")
@requires(ASSIGN)
def sample() -> ResponseReturnValue:
    """A random sample of each agent's calls in a period, dealt out over the chosen reviewers."""
    reviewers = request.form.getlist("reviewers")
    try:
        first, last, rate, seed = _sample_parameters()
        chosen = [_check_reviewer(name) for name in reviewers]
        if not chosen:
            raise ReviewError("choose at least one reviewer")
        candidates = review.sample_candidates(request_reader(), first.timestamp(), last.timestamp())
        rng = random.Random(seed)
        # riskiest first by the analysis' risk score (analysis/risk.py), with a share by chance;
        # recordings not analysed yet come after the scored ones, in random order
        risk = risk_scores(request_reader().conn, [rid for rid, _ in candidates])
        picked = riskiest_per_agent(candidates, risk, rate, rng, minimum=settings()["sample_min_per_agent"],
                                    random_share=settings()["sample_random_share"])
        pairs = review.distribute(picked, chosen, rng)
        made = _store().assign_many(pairs, current_user().username, method="sample")
    except (ReviewError, ValueError, CatalogError) as err:
        _refuse("review.sample", "sample", err, {"reviewers": reviewers})
    audit_event("review.sample", f"{first.date()}..{(last - timedelta(days=1)).date()}",
                detail={"seed": seed, "rate": rate, "minimum": settings()["sample_min_per_agent"],
                        "random_share": settings()["sample_random_share"], "scored": len(risk),
                        "reviewers": chosen, "candidates": len(candidates), "assigned": len(made),
                        "per_agent": {agent: len(rids) for agent, rids in picked.items()}})
    return redirect(url_for("review.index", state="open"))


@bp.post("/review/assignments/<int:assignment_id>/withdraw")
@requires(ASSIGN)
def withdraw(assignment_id: int) -> ResponseReturnValue:
    try:
        done = _store().withdraw(assignment_id)
    except ReviewError as err:
        _refuse("review.withdraw", f"assignment:{assignment_id}", err)
    audit_event("review.withdraw", done.recording_id, detail={"assignment": assignment_id, "reviewer": done.reviewer})
    return redirect(url_for("review.index"))


@bp.post("/review/scores/<int:score_id>/cross")
@requires(ASSIGN)
def assign_cross(score_id: int) -> ResponseReturnValue:
    reviewer = request.form.get("reviewer", "").strip()
    try:
        made = _store().assign_cross(score_id, _check_reviewer(reviewer), current_user().username)
    except ReviewError as err:
        _refuse("review.cross_assign", f"score:{score_id}", err, {"reviewer": reviewer})
    audit_event("review.cross_assign", made.recording_id,
                detail={"score": score_id, "assignment": made.id, "reviewer": reviewer})
    return redirect(url_for("review.score_page", score_id=score_id))


# ---------------------------------------------------------------------------------------------
# one assignment: the score form, or what was given


def _own_assignment(assignment_id: int) -> Assignment:
    """The assignment, if the current user may see it (reviewers: only their own)."""
    user = current_user()
    found = review.get_assignment(request_reader(), assignment_id)
    if found is None or (user.role not in SEE_ALL_ROLES and found.reviewer != user.username):
        deny(f"assignment:{assignment_id}", f"assignment {assignment_id} is not {user.username}'s")
    assert found is not None
    return found


@bp.get("/review/assignments/<int:assignment_id>")
@requires(VIEW)
def assignment(assignment_id: int) -> ResponseReturnValue:
    user = current_user()
    item = _own_assignment(assignment_id)
    reader = request_reader()
    score = review.score_of_assignment(reader, item.id)
    first = review.get_score(reader, item.cross_of) if item.cross_of is not None else None
    # blind cross-review: the first score is shown only once the second is in
    comparison = review.compare(first, score) if first is not None and score is not None else None
    used = first.rubric if first is not None else rubric()
    audit_event(VIEW, item.recording_id, detail={"assignment": item.id})
    return render_template("review/assignment.html", item=item, rec=reader.get(item.recording_id), score=score,
                           comparison=comparison, rubric=used, flag_points=settings()["cross_review_flag_points"],
                           can_score=user.role == "qa" and item.reviewer == user.username and item.state == "open")


@bp.post("/review/assignments/<int:assignment_id>/score")
@requires(SCORE)
def give_score(assignment_id: int) -> ResponseReturnValue:
    user = current_user()
    item = _own_assignment(assignment_id)
    comment = request.form.get("comment", "").strip()[:MAX_COMMENT]
    points = {key[len("points."):]: value for key, value in request.form.items() if key.startswith("points.")}
    try:
        score = _store().score(item.id, user.username, points, comment, rubric())
    except ReviewError as err:
        _refuse(SCORE, item.recording_id, err, {"assignment": item.id, "points": points})
    audit_event(SCORE, item.recording_id, detail={"assignment": item.id, "score": score.id, "kind": item.kind,
                                                   "points": score.points, "total": score.total,
                                                   "comment": score.comment})
    return redirect(url_for("review.assignment", assignment_id=item.id))


# ---------------------------------------------------------------------------------------------
# one score with its cross-reviews


def _may_see_score(score: Score, crosses: list[Score]) -> bool:
    user = current_user()
    return (user.role in SEE_ALL_ROLES or score.reviewer == user.username
            or any(c.reviewer == user.username for c in crosses))


@bp.get("/review/scores/<int:score_id>")
@requires(VIEW)
def score_page(score_id: int) -> ResponseReturnValue:
    user = current_user()
    reader = request_reader()
    score = review.get_score(reader, score_id)
    crosses = review.cross_reviews_of(reader, score_id) if score else []
    if score is None or not _may_see_score(score, crosses):
        deny(f"score:{score_id}", f"score {score_id} is not visible to {user.username}")
    assert score is not None
    pending = [a for a in review.assignments(reader, recording_id=score.recording_id)
               if a.cross_of == score_id and a.state == "open"]
    audit_event(VIEW, score.recording_id, detail={"score": score_id})
    return render_template("review/score.html", score=score, rec=reader.get(score.recording_id),
                           comparisons=[review.compare(score, c) for c in crosses], pending=pending,
                           flag_points=settings()["cross_review_flag_points"],
                           reviewers=[r for r in _reviewers() if r != score.reviewer] if user.role == "admin" else [],
                           can_assign=user.role == "admin")
