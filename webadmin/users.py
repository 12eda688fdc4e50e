"""Users and roles (admin): list, create, change role or agent id, disable/enable, reset the
second factor, set a new password, unlock.

A change ends the user's sessions (webadmin/users_store.py), so a new role or a disabled
account takes effect at their next request. The last enabled admin cannot be disabled or given
another role (the console would have nobody left to manage it). A new TOTP secret is shown to
the admin once, to hand over; it is never shown again.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from webadmin import security
from webadmin.authz import audit_event, current_user, define_action, register_nav, requires
from webadmin.context import current_context
from webadmin.users_store import (
    ROLES,
    TOTP_REQUIRED_ROLES,
    User,
    UserError,
    get_user,
    list_users,
    totp_uri,
)

bp = Blueprint("users", __name__, url_prefix="/users")

LIST = define_action("user.list", {"admin"}, "see the console's users and their roles")
MANAGE = define_action("user.manage", {"admin"}, "create users, change roles, disable, reset second factors")
register_nav("Users", "users.index", LIST, order=80)

MAX_FIELD = 1024


def _field(name: str) -> str:
    return request.form.get(name, "")[:MAX_FIELD].strip()


def _target(username: str) -> User:
    user = get_user(current_context().catalog, username)
    if user is None:
        abort(404, description=f"No user {username!r}.")
    return user


def _is_last_admin(user: User) -> bool:
    admins = [u for u in list_users(current_context().catalog, "admin") if not u.disabled]
    return user.role == "admin" and not user.disabled and len(admins) <= 1


def _page(status: int = 200, **extra: Any) -> ResponseReturnValue:
    role = request.args.get("role") or None
    if role not in (None, *ROLES):
        role = None
    users = list_users(current_context().catalog, role)
    return render_template("users/index.html", users=users, roles=ROLES, role_filter=role,
                           totp_required=TOTP_REQUIRED_ROLES, me=current_user().username,
                           min_length=security.web_settings()["min_password_length"], **extra), status


def _refused(username: str, what: str, err: Exception | str) -> ResponseReturnValue:
    audit_event(MANAGE, f"user:{username}", "failed", f"{what}: {err}")
    return _page(400, error=f"{what}: {err}")


def _secret_page(username: str, secret: str, why: str) -> ResponseReturnValue:
    return render_template("users/secret.html", username=username, uri=totp_uri(username, secret),
                           secret=secret, why=why)


def _changed(username: str, reason: str, detail: dict[str, Any] | None = None, *,
             secret: str | None = None, why: str = "") -> ResponseReturnValue:
    """Audit a change made to ``username`` (ok); then the list again, or the new TOTP secret
    (shown this once, with ``why``) when the change made one."""
    audit_event(MANAGE, f"user:{username}", "ok", reason, detail)
    if secret:
        return _secret_page(username, secret, why)
    return redirect(url_for("users.index"))


@bp.get("")
@requires(LIST)
def index() -> ResponseReturnValue:
    return _page()


@bp.post("")
@requires(MANAGE)
def create() -> ResponseReturnValue:
    username = _field("username").lower()
    role = _field("role")
    agent_id = _field("agent_id") or None
    try:
        user, secret = security.user_store().create(
            username, role, request.form.get("password", "")[:MAX_FIELD], agent_id=agent_id,
            totp=bool(request.form.get("totp")), min_password_length=security.web_settings()["min_password_length"])
    except UserError as err:
        return _refused(username or "-", "create", err)
    return _changed(user.username, "user created",
                    {"role": user.role, "agent_id": user.agent_id, "totp": secret is not None},
                    secret=secret, why="new user")


@bp.post("/<username>/role")
@requires(MANAGE)
def set_role(username: str) -> ResponseReturnValue:
    user = _target(username)
    role = _field("role")
    if role != user.role and _is_last_admin(user):
        return _refused(username, "set role", "the last enabled admin keeps the admin role")
    try:
        secret = security.user_store().set_role(username, role)
    except UserError as err:
        return _refused(username, "set role", err)
    return _changed(username, f"role {user.role} -> {role}",
                    {"old_role": user.role, "new_role": role, "new_totp": secret is not None},
                    secret=secret, why=f"role {role} needs a second factor")


@bp.post("/<username>/agent")
@requires(MANAGE)
def set_agent(username: str) -> ResponseReturnValue:
    user = _target(username)
    agent_id = _field("agent_id") or None
    try:
        security.user_store().set_agent_id(username, agent_id)
    except UserError as err:
        return _refused(username, "set agent id", err)
    return _changed(username, f"agent id {user.agent_id} -> {agent_id}",
                    {"old_agent_id": user.agent_id, "new_agent_id": agent_id})


@bp.post("/<username>/disable")
@requires(MANAGE)
def disable(username: str) -> ResponseReturnValue:
    user = _target(username)
    if _is_last_admin(user):
        return _refused(username, "disable", "the last enabled admin cannot be disabled")
    security.user_store().set_disabled(username, True)
    return _changed(username, "disabled (sessions ended)")


@bp.post("/<username>/enable")
@requires(MANAGE)
def enable(username: str) -> ResponseReturnValue:
    _target(username)
    security.user_store().set_disabled(username, False)
    return _changed(username, "enabled")


@bp.post("/<username>/totp")
@requires(MANAGE)
def reset_totp(username: str) -> ResponseReturnValue:
    user = _target(username)
    remove = request.form.get("remove") == "1"
    try:
        secret = security.user_store().reset_totp(username, enabled=not remove)
    except UserError as err:
        return _refused(username, "second factor", err)
    return _changed(username, "second factor removed" if remove else "new TOTP secret (sessions ended)",
                    {"had_totp": user.has_totp}, secret=secret, why="second factor reset")


@bp.post("/<username>/password")
@requires(MANAGE)
def set_password(username: str) -> ResponseReturnValue:
    _target(username)
    try:
        security.user_store().set_password(username, request.form.get("password", "")[:MAX_FIELD],
                                           security.web_settings()["min_password_length"])
    except UserError as err:
        return _refused(username, "set password", err)
    return _changed(username, "password set by an admin (sessions ended)")


@bp.post("/<username>/unlock")
@requires(MANAGE)
def unlock(username: str) -> ResponseReturnValue:
    user = _target(username)
    security.user_store().unlock(username)
    return _changed(username, "unlocked", {"failed_logins": user.failed_logins})
