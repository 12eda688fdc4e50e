"""Login (password, then TOTP for those who have it), logout, the start page, one's account.

Every attempt is an audit entry: ``auth.login`` (ok / failed with the reason: unknown user,
wrong password, account disabled, account locked), ``auth.second_factor`` (ok / failed),
``auth.lockout`` when a failure locks the account, ``auth.logout``. The page itself never says
which part was wrong (no user enumeration); the audit log does.
"""

from __future__ import annotations

import time

from flask import Blueprint, abort, g, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from webadmin import security
from webadmin.authz import (
    audit_as,
    audit_event,
    current_user,
    current_user_or_none,
    define_action,
    public_route,
    requires,
)
from webadmin.context import current_context
from webadmin.users_store import (
    TOTP_REQUIRED_ROLES,
    User,
    UserError,
    get_user,
    hash_password,
    needs_rehash,
    password_matches,
    totp_step_matching,
    totp_uri,
)

bp = Blueprint("auth", __name__)

HOME = define_action("console.home", {"agent", "qa", "auditor", "admin"}, "open the start page")
LOGOUT = define_action("auth.logout", {"agent", "qa", "auditor", "admin"}, "log out")
ACCOUNT = define_action("account.view", {"agent", "qa", "auditor", "admin"}, "see one's own account")
ACCOUNT_CHANGE = define_action("account.change", {"agent", "qa", "auditor", "admin"},
                               "change one's own password or second factor")

LOGIN_FAILED = "Login failed. Check your user name, password and code. After repeated failures the account is locked for a while."
MAX_FIELD = 1024


def _safe_next(target: str | None) -> str:
    """Only a path on this site (no scheme, no //host): no open redirect."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return url_for("auth.home")


def _field(name: str) -> str:
    return request.form.get(name, "")[:MAX_FIELD]


def _fail(username: str, user: User | None, action: str, reason: str) -> None:
    """Audit a failed step; count it against the account (which may lock it)."""
    settings = security.web_settings()
    role = user.role if user else ""
    audit_as(username or "-", role, action, username or "-", "failed", reason)
    if user is None:
        return
    failures, locked = security.user_store().record_failure(
        user.username, settings["lockout_failures"], settings["lockout_s"])
    if locked:
        audit_as(user.username, role, "auth.lockout", user.username, "ok",
                 f"{failures} failed attempts in a row: locked for {settings['lockout_s']} s")


def _login_refusal(user: User | None, password: str, now: float) -> str | None:
    if user is None:
        password_matches(None, password)   # same work as for a real user
        return "unknown user"
    if user.locked(now):
        return f"account locked until {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(user.locked_until))}"
    if not password_matches(user, password):
        return "wrong password"
    if user.disabled:
        return "account disabled"
    if user.role in TOTP_REQUIRED_ROLES and not user.has_totp:
        return f"role {user.role} requires a second factor and none is enrolled"
    return None


@bp.route("/login", methods=["GET", "POST"])
@public_route
def login() -> ResponseReturnValue:
    if current_user_or_none():
        return redirect(_safe_next(request.args.get("next")))
    next_url = _safe_next(request.values.get("next"))
    if request.method == "GET":
        return render_template("auth/login.html", next_url=next_url, expired=bool(request.args.get("expired")))
    username = _field("username").strip().lower()
    password = _field("password")
    user = get_user(current_context().catalog, username) if username else None
    refusal = _login_refusal(user, password, time.time())
    if refusal is not None:
        _fail(username, user, "auth.login", refusal)
        return render_template("auth/login.html", next_url=next_url, error=LOGIN_FAILED), 401
    assert user is not None
    security.end_session()   # whatever was there before: a new session, a new token
    if user.has_totp:
        security.start_session(user.username, "password")
        audit_as(user.username, user.role, "auth.login", user.username, "ok", "password accepted; second factor next")
        return redirect(url_for("auth.second_factor", next=next_url))
    security.start_session(user.username, "full")
    security.user_store().record_success(user.username, new_password_hash=_rehash(user, password))
    audit_as(user.username, user.role, "auth.login", user.username, "ok", "logged in (password)")
    return redirect(next_url)


def _rehash(user: User, password: str) -> str | None:
    """A new hash when the stored one was made with other argon2 parameters than today's."""
    return hash_password(password) if needs_rehash(user.password_hash) else None


@bp.route("/login/code", methods=["GET", "POST"])
@public_route
def second_factor() -> ResponseReturnValue:
    session = g.get("console_session")
    if session is None or session.stage != "password":
        return redirect(url_for("auth.login"))
    next_url = _safe_next(request.values.get("next"))
    if request.method == "GET":
        return render_template("auth/code.html", next_url=next_url)
    user = get_user(current_context().catalog, session.username)
    now = time.time()
    if user is None or user.disabled or user.locked(now) or not user.totp_secret:
        security.end_session()
        _fail(session.username, user, "auth.second_factor", "account locked or disabled meanwhile")
        return redirect(url_for("auth.login"))
    step = totp_step_matching(user.totp_secret, _field("code"), now, user.totp_last_step)
    if step is None or not security.user_store().accept_totp_step(user.username, step):
        _fail(user.username, user, "auth.second_factor", "wrong or reused code")
        refreshed = get_user(current_context().catalog, user.username)
        if refreshed is None or refreshed.locked(time.time()):
            security.end_session()
            return render_template("auth/login.html", next_url=next_url, error=LOGIN_FAILED), 401
        return render_template("auth/code.html", next_url=next_url, error="Wrong code: try the current one."), 401
    security.end_session()
    security.start_session(user.username, "full")
    security.user_store().record_success(user.username, totp_step=step)
    audit_as(user.username, user.role, "auth.second_factor", user.username, "ok", "logged in (password and TOTP)")
    return redirect(next_url)


@bp.post("/logout")
@requires(LOGOUT)
def logout() -> ResponseReturnValue:
    user = current_user()
    audit_event(LOGOUT, user.username)
    security.end_session()
    return redirect(url_for("auth.login"))


@bp.get("/")
@requires(HOME)
def home() -> ResponseReturnValue:
    return render_template("auth/home.html")


@bp.get("/account")
@requires(ACCOUNT)
def account() -> ResponseReturnValue:
    user = get_user(current_context().catalog, current_user().username)
    if user is None:
        abort(404)
    return render_template("auth/account.html", account=user,
                           totp_required=user.role in TOTP_REQUIRED_ROLES,
                           min_length=security.web_settings()["min_password_length"])


@bp.post("/account/password")
@requires(ACCOUNT_CHANGE)
def change_password() -> ResponseReturnValue:
    me = current_user()
    user = get_user(current_context().catalog, me.username)
    if user is None or not password_matches(user, _field("current_password")):
        audit_event(ACCOUNT_CHANGE, me.username, "failed", "password change: current password wrong")
        return _account_error("The current password is wrong.")
    try:
        security.user_store().set_password(me.username, _field("new_password"),
                                           security.web_settings()["min_password_length"])
    except UserError as err:
        audit_event(ACCOUNT_CHANGE, me.username, "failed", f"password change: {err}")
        return _account_error(str(err))
    audit_event(ACCOUNT_CHANGE, me.username, "ok", "password changed (every session ended)")
    security.end_session()
    return redirect(url_for("auth.login"))


@bp.post("/account/totp")
@requires(ACCOUNT_CHANGE)
def enrol_totp() -> ResponseReturnValue:
    """A new second factor for oneself; shown once, every session ends (log in with it)."""
    me = current_user()
    secret = security.user_store().reset_totp(me.username)
    assert secret is not None
    audit_event(ACCOUNT_CHANGE, me.username, "ok", "new TOTP secret enrolled (every session ended)")
    security.end_session()
    return render_template("auth/totp_enrolled.html", uri=totp_uri(me.username, secret), secret=secret,
                           username=me.username)


def _account_error(message: str) -> ResponseReturnValue:
    user = get_user(current_context().catalog, current_user().username)
    return render_template("auth/account.html", account=user, error=message,
                           totp_required=bool(user and user.role in TOTP_REQUIRED_ROLES),
                           min_length=security.web_settings()["min_password_length"]), 400
