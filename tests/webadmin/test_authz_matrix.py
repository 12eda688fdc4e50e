"""Must show 1: a role x route x object matrix over EVERY route of the console.

* Every view declares an action (``@requires``) or is explicitly public; the app refuses an
  undeclared one at request time too.
* For every route (walked from ``app.url_map``, so other areas' routes are included without
  editing this file), every method, every role and nobody: nobody is sent to the login page
  (401 for non-GET), a role outside the action's roles gets 403, a role inside does not get
  401/403; for arguments that name someone's object (route_samples.ARG_SAMPLES) the scoped roles
  are also refused another person's object (IDOR). Every refusal is an audit entry with
  outcome ``denied`` naming the actor; no allowed request writes one.

Sessions for the matrix are opened directly in the store (the login pages are tested in
test_auth.py); each request gets a fresh session, so a route that ends sessions (logout,
password change) does not disturb the next one.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import pytest
from flask import Flask
from werkzeug.routing import Rule

from storage.audit import iter_entries
from tests.webadmin.route_samples import (
    ARG_SAMPLES,
    EXPECTED_REFUSALS,
    FORM_SAMPLES,
    QUERY_SAMPLES,
    World,
    build_world,
)
from webadmin.authz import ACTIONS, ANONYMOUS_ACTOR, ROLES, is_public, route_action, undeclared_endpoints
from webadmin.context import ConsoleContext
from webadmin.security import SESSION_COOKIE
from webadmin.users_store import UserStore

PRINCIPALS = (None, *ROLES)    # None: nobody logged in
ORDER = {"GET": 0, "POST": 1, "PUT": 1, "PATCH": 1, "DELETE": 2}
_new_names = itertools.count(1)


@dataclass(frozen=True)
class Case:
    endpoint: str
    rule: str
    method: str
    role: str | None
    variant: str          # "own" or "foreign"
    action: str

    def __str__(self) -> str:
        return f"{self.method} {self.rule} as {self.role or 'nobody'} ({self.variant} objects)"


def protected_rules(app: Flask) -> list[Rule]:
    return [r for r in app.url_map.iter_rules() if not is_public(app.view_functions[r.endpoint])]


def test_every_route_declares_an_action_or_is_public(console_app: Flask) -> None:
    endpoints = {rule.endpoint for rule in console_app.url_map.iter_rules()}
    assert not undeclared_endpoints(console_app.view_functions, endpoints)
    public = sorted(e for e in endpoints if is_public(console_app.view_functions[e]))
    assert public == ["auth.login", "auth.second_factor", "static"], "only the login pages and static files are public"
    for endpoint in endpoints - set(public):
        assert route_action(console_app.view_functions[endpoint]) in ACTIONS, endpoint


def test_an_undeclared_view_is_refused_at_request_time(console_app: Flask) -> None:
    console_app.add_url_rule("/undeclared", "undeclared", lambda: "secret")
    assert undeclared_endpoints(console_app.view_functions, ["undeclared"]) == ["undeclared"]
    response = console_app.test_client().get("/undeclared")
    assert response.status_code == 500
    assert b"secret" not in response.data


def _cases(app: Flask, world: World) -> list[Case]:
    cases: list[Case] = []
    for rule in protected_rules(app):
        missing = [arg for arg in rule.arguments if arg not in ARG_SAMPLES]
        assert not missing, (f"route {rule.rule} ({rule.endpoint}): no sample for {missing} in "
                             f"tests/webadmin/route_samples.py ARG_SAMPLES/build_world")
        action = route_action(app.view_functions[rule.endpoint])
        assert action is not None
        scoped = set().union(*(ARG_SAMPLES[arg].scoped for arg in rule.arguments)) if rule.arguments else set()
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}, key=lambda m: ORDER.get(m, 3)):
            for role in PRINCIPALS:
                cases.append(Case(rule.endpoint, rule.rule, method, role, "own", action))
                if role in scoped and any(world.objects[arg][1] for arg in rule.arguments):
                    cases.append(Case(rule.endpoint, rule.rule, method, role, "foreign", action))
    # nobody and the least privileged first, safe methods before changes, admin last: a change
    # allowed to an admin (withdrawing an assignment, disabling a user) comes after every other
    # principal has been checked against the objects as built
    rank = {role: i for i, role in enumerate(PRINCIPALS)}
    return sorted(cases, key=lambda c: (rank[c.role], ORDER.get(c.method, 3)))


def _values(app: Flask, case: Case, world: World) -> dict[str, str]:
    rule = next(r for r in app.url_map.iter_rules() if r.rule == case.rule and r.endpoint == case.endpoint)
    index = 1 if case.variant == "foreign" else 0
    return {arg: world.objects[arg][index] or world.objects[arg][0] for arg in rule.arguments}


def _form(case: Case, world: World) -> dict[str, str]:
    own = {arg: values[0] for arg, values in world.objects.items()}
    form = {key: value.format(**own) for key, value in FORM_SAMPLES.get(case.endpoint, {}).items()}
    if case.endpoint == "users.create":
        form["username"] = f"matrix-new-{next(_new_names)}"
    return form


def _entries_since(ctx: ConsoleContext, seq: int) -> list[Any]:
    with ctx.catalog.reader() as reader:
        return [e for e in iter_entries(reader) if e.seq > seq]


def _last_seq(ctx: ConsoleContext) -> int:
    with ctx.catalog.reader() as reader:
        rows: list[Any] = reader.conn.execute("SELECT coalesce(max(seq), 0) FROM audit").fetchall()
    return int(rows[0][0])


def _run(app: Flask, ctx: ConsoleContext, world: World, store: UserStore, case: Case) -> tuple[int, str, list[Any]]:
    client = app.test_client()
    headers: dict[str, str] = {"Accept": "text/html"}
    form: dict[str, str] = {}
    actor = ANONYMOUS_ACTOR
    if case.role is not None:
        actor = world.principals[case.role]
        token, session = store.open_session(actor, "full")
        client.set_cookie(SESSION_COOKIE, token)
        form = {**_form(case, world), "csrf_token": session.csrf_token}
    values = _values(app, case, world)
    query: dict[str, str] = {}
    if case.role is not None and case.endpoint in QUERY_SAMPLES:
        query = QUERY_SAMPLES[case.endpoint](client, form["csrf_token"], values)
    before = _last_seq(ctx)
    url = app.url_map.bind("localhost").build(case.endpoint, {**values, **query}, method=case.method)
    response = client.open(url, method=case.method, data=form if case.method != "GET" else None, headers=headers)
    location = response.headers.get("Location", "")
    response.close()
    denials = [e for e in _entries_since(ctx, before) if e.outcome == "denied" and e.actor == actor]
    return response.status_code, location, denials


def test_role_route_object_matrix(console_app: Flask, console_context: ConsoleContext) -> None:
    world = build_world(console_context)
    store = UserStore(console_context.catalog)
    problems: list[str] = []
    cases = _cases(console_app, world)
    assert len({c.endpoint for c in cases}) >= 10
    for case in cases:
        status, location, denials = _run(console_app, console_context, world, store, case)
        action_roles = ACTIONS[case.action].roles
        if case.role is None:
            refused = (status == 302 and "/login" in location) or status == 401
            expect = "sent to login (302) or 401"
        elif case.role not in action_roles or case.variant == "foreign":
            refused = status in (403, 404) and "/login" not in location
            expect = "403/404"
        else:
            expected = EXPECTED_REFUSALS.get((case.endpoint, case.role))
            if expected and denials and all(d.reason.startswith(expected) for d in denials):
                continue   # allowed, but the object's state refuses it (route_samples.EXPECTED_REFUSALS)
            if status in (401, 403) or "/login?next=" in location or denials:
                problems.append(f"{case}: allowed role refused: {status} {location} {[d.reason for d in denials]}")
            continue
        if not refused:
            problems.append(f"{case}: expected {expect}, got {status} {location}")
        elif not denials:
            problems.append(f"{case}: refused without a 'denied' audit entry")
    assert not problems, f"{len(problems)} of {len(cases)} cases wrong:\n" + "\n".join(problems)


@pytest.mark.parametrize("role", ROLES)
def test_navigation_shows_only_pages_the_role_may_open(console_app: Flask, console_context: ConsoleContext,
                                                       role: str) -> None:
    from tests.webadmin.conftest import make_user

    username, _secret = make_user(console_context, role)
    token, _session = UserStore(console_context.catalog).open_session(username, "full")
    client = console_app.test_client()
    client.set_cookie(SESSION_COOKIE, token)
    html = client.get("/").get_data(as_text=True)
    nav = html.split("<nav", 1)[1].split("</nav>", 1)[0]
    from webadmin.authz import NAV
    for item in NAV:
        path = console_app.url_map.bind("localhost").build(item.endpoint)
        shown = f'href="{path}"' in nav
        assert shown == (role in ACTIONS[item.action].roles), (role, item.label)
