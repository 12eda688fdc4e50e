"""What the authorisation matrix (test_authz_matrix.py) puts into each route's URL and form.

The matrix walks ``app.url_map``: every route of every blueprint is requested by every role and
by nobody, so a new route is covered without touching the test — as long as each of its URL
arguments has a sample here. A route with an argument missing here fails the matrix with a
message naming it: add the argument to ``ARG_SAMPLES`` (and, for the world it needs, to
``build_world``).

An argument that names an object some roles may reach only when it is theirs (an agent's own
calls, a reviewer's own assignments) has a *foreign* sample too, and the matrix checks that
those roles are refused it (IDOR) while the same request with the *own* sample passes.
``FORM_SAMPLES`` gives a POST route a plausible body (the CSRF token is always added;
``{arg}`` is replaced by that argument's own sample);
``QUERY_SAMPLES`` prepares what a route needs in its query string first (a playback grant: the
reason-for-access prompt answered) with the same client and session.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flask.testing import FlaskClient

from storage.export_policy import Actor
from storage.exports import ExportStore
from storage.review import ReviewStore, Rubric
from tests.webadmin.conftest import make_user
from webadmin.context import EXTENSION_KEY, ConsoleContext
from webadmin.users_store import UserStore, list_users

MATRIX_RUBRIC = Rubric.parse(["compliance=30", "communication=30", "resolution=20", "experience=20"])
FULL_MARKS = {"compliance": 30, "communication": 30, "resolution": 20, "experience": 20}


@dataclass
class World:
    """The objects the matrix's requests name; users by role (``principals``)."""

    ctx: ConsoleContext
    principals: dict[str, str] = field(default_factory=dict)   # role -> username
    objects: dict[str, tuple[str, str | None]] = field(default_factory=dict)   # arg -> (own, foreign)


@dataclass(frozen=True)
class ArgSample:
    """``scoped``: roles that may only reach their own object through this argument."""

    name: str
    scoped: frozenset[str] = frozenset()


ARG_SAMPLES: dict[str, ArgSample] = {
    "recording_id": ArgSample("recording_id", frozenset({"agent", "qa"})),
    "note_id": ArgSample("note_id", frozenset({"agent", "qa"})),
    "assignment_id": ArgSample("assignment_id", frozenset({"agent", "qa"})),
    "score_id": ArgSample("score_id", frozenset({"agent", "qa"})),
    "export_id": ArgSample("export_id", frozenset({"auditor"})),   # auditors see their own requests
    "username": ArgSample("username"),
    "filename": ArgSample("filename"),
}

FORM_SAMPLES: dict[str, dict[str, str]] = {
    "users.create": {"role": "agent", "password": "a long enough password"},   # username added per request
    "users.set_role": {"role": "qa"},
    "recordings.give_reason": {"reason": "authorisation matrix check"},
    "auth.change_password": {"current_password": "wrong", "new_password": "another long password"},
    "exports.create": {"mode": "search", "reason": "authorisation matrix check"},   # every recording
}


# Refusals that are not about who asks but about the object's state, which one pass of the
# matrix cannot satisfy for every route: (endpoint, role) -> the start of the audited reason.
# The role is still allowed the action; the object is not ready for it.
EXPECTED_REFUSALS: dict[tuple[str, str], str] = {
    # a bundle exists only after a second person approved and the build finished
    ("exports.download", "auditor"): "the export is requested",
    # only the requester downloads (admins see every export but download their own)
    ("exports.download", "admin"): "only the requester",
    # the admin's approve ran first: a decided export takes no second decision
    ("exports.reject", "admin"): "the export is building",
}


def playback_grant(client: FlaskClient, csrf: str, values: dict[str, str]) -> dict[str, str]:
    """Answer the reason-for-access prompt; the grant it redirects with (none when refused)."""
    response = client.post(f"/recordings/{values['recording_id']}/access",
                           data={"reason": "authorisation matrix check", "csrf_token": csrf})
    found = re.search(r"[?&]grant=(\d+)", response.headers.get("Location", ""))
    return {"grant": found.group(1)} if found else {}


FOREIGN_EXPORT_REASON = "authorisation matrix check (another auditor's export)"


def _export_service(client: FlaskClient) -> Any:
    from webadmin.exports import SERVICE_KEY
    return client.application.extensions[SERVICE_KEY]


def awaiting_decision(client: FlaskClient, csrf: str, values: dict[str, str]) -> dict[str, str]:
    """A fresh request by someone else (each decision is taken once; the four-eyes refusal of
    one's own request is tested in test_exports_console.py)."""
    service = _export_service(client)
    requester, _secret = make_user(client.application.extensions[EXTENSION_KEY], "auditor")
    record = service.store.get(int(values["export_id"]))
    fresh = service.store.create(Actor(requester, "auditor"), "authorisation matrix check",
                                 list(record.recording_ids), None, 10)
    return {"export_id": str(fresh.id)}


def own_ready_export(client: FlaskClient, csrf: str, values: dict[str, str]) -> dict[str, str]:
    """Only the requester downloads: for the own-object case, a bundle the principal requested
    (through the page) and another admin approved; another auditor's export stays as it is."""
    service = _export_service(client)
    record = service.store.get(int(values["export_id"]))
    if record.reason == FOREIGN_EXPORT_REASON:
        return {}
    reply = client.post("/exports", data={"mode": "ids", "ids": record.recording_ids[0],
                                          "reason": "authorisation matrix check", "csrf_token": csrf})
    found = re.search(r"/exports/(\d+)$", reply.headers.get("Location", ""))
    if not found:   # a role that may not request: the route's own refusal is what is tested
        return {}
    service.approve(int(found.group(1)), Actor("matrix-approver", "admin"))
    service.wait(timeout=30)
    return {"export_id": found.group(1)}


QUERY_SAMPLES: dict[str, Callable[[FlaskClient, str, dict[str, str]], dict[str, str]]] = {
    "recordings.audio": playback_grant,
    "recordings.waveform": playback_grant,
    "recordings.download": playback_grant,
    "reports.transcript": playback_grant,
    "exports.approve": awaiting_decision,
    "exports.reject": awaiting_decision,
    "exports.download": own_ready_export,
}


def _recording_of(ctx: ConsoleContext, agent_id: str, skip: int = 0) -> str:
    with ctx.catalog.reader() as reader:
        rows: list[Any] = reader.conn.execute(
            "SELECT recording_id FROM recordings WHERE agent_id = ? ORDER BY id LIMIT 1 OFFSET ?",
            (agent_id, skip)).fetchall()
    assert rows, f"the appliance has no recording of {agent_id} (tests/webadmin/conftest.py GENERATED_CALLS)"
    return str(rows[0][0])


def build_world(ctx: ConsoleContext) -> World:
    """Users of each role; agent-7001's calls are the matrix agent's and assigned to the matrix
    reviewer; agent-7002's call belongs to nobody of the matrix."""
    world = World(ctx)
    for role, agent_id in (("agent", None), ("qa", None), ("auditor", None), ("admin", None)):
        world.principals[role], _secret = make_user(ctx, role, agent_id)
    other_reviewer, _secret = make_user(ctx, "qa")
    # the matrix agent takes over agent-7001 (an agent id belongs to one user at a time)
    store = UserStore(ctx.catalog)
    for user in list_users(ctx.catalog):
        if user.agent_id == "agent-7001":
            store.set_agent_id(user.username, None)
    store.set_agent_id(world.principals["agent"], "agent-7001")

    own, own_scored, foreign = (_recording_of(ctx, "agent-7001"), _recording_of(ctx, "agent-7001", 1),
                                _recording_of(ctx, "agent-7002"))
    reviews = ReviewStore(ctx.catalog)
    own_assignment = reviews.assign(own, world.principals["qa"], "matrix")
    scored = reviews.assign(own_scored, world.principals["qa"], "matrix")
    own_score = reviews.score(scored.id, world.principals["qa"], FULL_MARKS, "matrix", MATRIX_RUBRIC)
    foreign_assignment = reviews.assign(foreign, other_reviewer, "matrix")
    foreign_scored = reviews.assign(_recording_of(ctx, "agent-7003"), other_reviewer, "matrix")
    foreign_score = reviews.score(foreign_scored.id, other_reviewer, FULL_MARKS, "matrix", MATRIX_RUBRIC)
    own_note = ctx.catalog.add_note(own, world.principals["admin"], "matrix note")
    foreign_note = ctx.catalog.add_note(foreign, world.principals["admin"], "matrix note")

    exports = ExportStore(ctx.catalog, ctx.audit)
    other_auditor, _secret = make_user(ctx, "auditor")
    own_export = exports.create(Actor(world.principals["auditor"], "auditor"), "authorisation matrix check", [own],
                                None, 10)
    foreign_export = exports.create(Actor(other_auditor, "auditor"), FOREIGN_EXPORT_REASON, [foreign], None, 10)

    victim, _secret = make_user(ctx, "agent")
    world.objects = {
        "recording_id": (own, foreign),
        "note_id": (str(own_note.id), str(foreign_note.id)),
        "assignment_id": (str(own_assignment.id), str(foreign_assignment.id)),
        "score_id": (str(own_score.id), str(foreign_score.id)),
        "export_id": (str(own_export.id), str(foreign_export.id)),
        "username": (victim, None),
        "filename": ("app.css", None),
    }
    return world

