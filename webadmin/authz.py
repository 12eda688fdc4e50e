"""Authorisation: a registry of named actions, the decorators every route wears, audit entries.

Each blueprint module names its actions at import time::

    VIEW = define_action("recording.view", {"agent", "qa", "auditor", "admin"}, "open a recording")

    @bp.get("/recordings/<recording_id>")
    @requires(VIEW)
    def show(recording_id): ...

``@requires`` (every route but the login pages and static files, which wear ``@public_route``)
lets a request through only when someone is logged in (webadmin/sessions.py put them in
``flask.g``) and their role is among the action's roles. Otherwise the request is refused and
the refusal is an audit entry (outcome ``denied``): anonymous requests are sent to the login
page (a GET) or get 401, a role outside the action's roles gets 403. The app refuses, at request
time, any view that wears neither decorator (fail closed), and tests/webadmin/test_authz_matrix.py
fails for one at test time.

Every request that passes is an audit entry too: the view may write its own (``audit_event``,
with the object and reason it knows, e.g. the recording id and the reason for access); if it
wrote none, one is written after it returns with the request path as object and the outcome
from the status (``ok`` below 400, ``denied`` for 403, ``failed`` otherwise). A view that must
not write one per request (the ranged continuation of an audited playback) calls
``mark_audited()``.

Object-level checks (an agent may open only their own recordings) live with the blueprint that
knows the objects (e.g. webadmin/access.py); a refusal there goes through ``deny()``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar, cast

from flask import abort, g, redirect, request, url_for
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response

from webadmin.context import current_context

ROLES = ("agent", "qa", "auditor", "admin")   # least to most (DESIGN.md, "Roles")
ANONYMOUS_ACTOR = "anonymous"
ANONYMOUS_ROLE = "anonymous"
ACTION_ATTR = "__recorderd_action__"
PUBLIC_ATTR = "__recorderd_public__"

View = TypeVar("View", bound=Callable[..., Any])


class AuthzError(Exception):
    """The registry was used wrongly (an unknown role or action, an action defined twice)."""


@dataclass(frozen=True)
class Action:
    name: str
    roles: frozenset[str]
    description: str


@dataclass(frozen=True)
class ConsoleUser:
    username: str
    role: str
    agent_id: str | None


@dataclass(frozen=True)
class NavItem:
    label: str
    endpoint: str
    action: str
    order: int


ACTIONS: dict[str, Action] = {}
NAV: list[NavItem] = []


def define_action(name: str, roles: set[str] | frozenset[str], description: str) -> str:
    """Register an action (at import time); returns its name for ``@requires``.

    Defining the same name again with the same roles is allowed (a module imported twice);
    with other roles it is a programming error.
    """
    unknown = set(roles) - set(ROLES)
    if unknown or not roles:
        raise AuthzError(f"action {name!r}: roles must be a non-empty subset of {ROLES}, got {sorted(roles)}")
    action = Action(name, frozenset(roles), description)
    existing = ACTIONS.get(name)
    if existing is not None and existing.roles != action.roles:
        raise AuthzError(f"action {name!r} is defined twice with different roles")
    ACTIONS[name] = action
    return name


def register_nav(label: str, endpoint: str, action: str, order: int = 50) -> None:
    """A page in the navigation bar, shown to the roles that may perform ``action``."""
    if action not in ACTIONS:
        raise AuthzError(f"navigation entry {label!r}: unknown action {action!r}")
    if all(item.endpoint != endpoint for item in NAV):
        NAV.append(NavItem(label, endpoint, action, order))
        NAV.sort(key=lambda item: (item.order, item.label))


def nav_items(user: ConsoleUser | None) -> list[NavItem]:
    """The navigation entries ``user`` may open (none when nobody is logged in)."""
    if user is None:
        return []
    return [item for item in NAV if allowed(user, item.action)]


def allowed(user: ConsoleUser | None, action: str) -> bool:
    """Whether ``user``'s role may perform ``action`` (False for nobody or an unknown action)."""
    found = ACTIONS.get(action)
    return user is not None and found is not None and user.role in found.roles


# ---------------------------------------------------------------------------------------------
# the current user and the audit log


def current_user_or_none() -> ConsoleUser | None:
    user = g.get("console_user")
    return user if isinstance(user, ConsoleUser) else None


def current_user() -> ConsoleUser:
    """The logged-in user of this request (inside a ``@requires`` view there always is one)."""
    user = current_user_or_none()
    if user is None:
        raise RuntimeError("current_user() outside a logged-in request")
    return user


def _client() -> str:
    return request.remote_addr or ""


def audit_as(actor: str, role: str, action: str, object: str, outcome: str = "ok",  # noqa: A002
             reason: str = "", detail: dict[str, Any] | None = None) -> None:
    """An audit entry for someone who is not (yet) the logged-in user: login attempts."""
    entry_detail = dict(detail or {})
    entry_detail.setdefault("client", _client())
    current_context().audit.append(actor, role, action, object, outcome, reason=reason, detail=entry_detail)


def audit_event(action: str, object: str, outcome: str = "ok", reason: str = "",  # noqa: A002
                detail: dict[str, Any] | None = None) -> None:
    """An audit entry as the current user (anonymous outside a login); marks the request audited."""
    user = current_user_or_none()
    actor, role = (user.username, user.role) if user else (ANONYMOUS_ACTOR, ANONYMOUS_ROLE)
    audit_as(actor, role, action, object, outcome, reason, detail)
    g.recorderd_audited = True


def mark_audited() -> None:
    """This request needs no automatic entry (the view accounts for it some other way)."""
    g.recorderd_audited = True


def deny(object: str, reason: str, status: int = 403) -> NoReturn:  # noqa: A002
    """Refuse the request for an object-level reason: audited as ``denied``, then 403."""
    audit_event(str(g.get("recorderd_action", "")), object, "denied", reason)
    abort(status)


# ---------------------------------------------------------------------------------------------
# the decorators


def _outcome(status: int) -> str:
    if status < 400:
        return "ok"
    return "denied" if status in (401, 403) else "failed"


def _refuse_anonymous(action: str) -> Response:
    audit_event(action, request.path, "denied", "not logged in", {"method": request.method})
    if request.method == "GET" and request.accept_mimetypes.accept_html:
        return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
    abort(401)


def requires(action: str) -> Callable[[View], View]:
    """The route performs ``action``: login required, the role must be among its roles."""
    if action not in ACTIONS:
        raise AuthzError(f"@requires({action!r}): no such action (define_action it first)")

    def decorate(view: View) -> View:
        @functools.wraps(view)
        def guarded(*args: Any, **kwargs: Any) -> ResponseReturnValue:
            g.recorderd_action = action
            user = current_user_or_none()
            if user is None:
                return _refuse_anonymous(action)
            if user.role not in ACTIONS[action].roles:
                audit_event(action, request.path, "denied", f"role {user.role} may not {action}",
                            {"method": request.method})
                abort(403)
            g.recorderd_audited = False
            try:
                response = _as_response(view(*args, **kwargs))
            except HTTPException as err:
                if not g.get("recorderd_audited"):
                    audit_event(action, request.path, _outcome(err.code or 500), err.description or "",
                                {"method": request.method, "status": err.code})
                raise
            if not g.get("recorderd_audited"):
                audit_event(action, request.path, _outcome(response.status_code), "",
                            {"method": request.method, "status": response.status_code})
            return response

        setattr(guarded, ACTION_ATTR, action)
        return cast(View, guarded)

    return decorate


def _as_response(value: ResponseReturnValue) -> Response:
    from flask import make_response  # local: make_response needs an app context
    return make_response(value)


def public_route(view: View) -> View:
    """The route is open without login (the login pages, static files)."""
    setattr(view, PUBLIC_ATTR, True)
    return view


def route_action(view: Callable[..., Any]) -> str | None:
    """The action a view requires, or None (public, or undeclared)."""
    return getattr(view, ACTION_ATTR, None)


def is_public(view: Callable[..., Any]) -> bool:
    return bool(getattr(view, PUBLIC_ATTR, False))


def undeclared_endpoints(view_functions: dict[str, Callable[..., Any]], endpoints: Iterable[str]) -> list[str]:
    """Endpoints whose view wears neither ``@requires`` nor ``@public_route``."""
    return sorted(e for e in endpoints if route_action(view_functions[e]) is None
                  and not is_public(view_functions[e]))
