"""Per-request security: the session behind the cookie, CSRF, and the response headers.

Cookies (RFC 6265bis): ``__Host-`` prefixed (the browser accepts them only with Secure, Path=/
and no Domain, so a sibling host cannot plant or widen them), Secure, HttpOnly, SameSite=Strict,
no expiry (a browser session cookie; the server ends sessions by itself):

* ``__Host-recorderd-session``: the session token (webadmin/users_store.py keeps its hash).
* ``__Host-recorderd-login``: before login, a random value the login forms echo in their
  ``csrf_token`` field (double submit), so a login form cannot be posted from another site.

CSRF: every POST/PUT/PATCH/DELETE carries the session's token in the ``csrf_token`` form field
or the ``X-CSRF-Token`` header (fetch()); a missing or wrong one is refused with 400 and an audit
entry (action ``security.csrf``). Requests to a protected route without a session are left to
``@requires`` (refused there, before anything happens).

Headers on every response: a Content-Security-Policy that allows scripts, styles, images, media
and fetches from this origin only (no inline script or style, no eval, no plugins, no framing,
forms post here only), HSTS, X-Content-Type-Options: nosniff, Referrer-Policy: no-referrer,
X-Frame-Options (older browsers), Cross-Origin-Opener/Resource-Policy, a Permissions-Policy that
turns off camera/microphone/geolocation, and Cache-Control: no-store on everything but static
files (pages carry personal data).
"""

from __future__ import annotations

import hmac
import secrets
import time
from typing import Any

from flask import Flask, abort, current_app, g, request
from werkzeug.wrappers import Response

from webadmin.authz import ConsoleUser, audit_as, audit_event, is_public, route_action
from webadmin.context import current_context
from webadmin.users_store import Session, UserStore, get_session, get_user

SESSION_COOKIE = "__Host-recorderd-session"
LOGIN_COOKIE = "__Host-recorderd-login"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
PENDING_SECOND_FACTOR_S = 300      # a password-only session must finish its TOTP step within this
TOUCH_EVERY_S = 5.0                 # last_seen is refreshed at most this often (one write)

CSP = "; ".join((
    "default-src 'none'", "script-src 'self'", "style-src 'self'", "img-src 'self'",
    "media-src 'self' blob:", "connect-src 'self'", "font-src 'self'", "form-action 'self'",
    "frame-ancestors 'none'", "base-uri 'none'", "object-src 'none'",
))


def web_settings() -> dict[str, Any]:
    return current_context().config["web"]


def user_store() -> UserStore:
    store = current_app.extensions.get("recorderd.users")
    if not isinstance(store, UserStore):
        store = UserStore(current_context().catalog)
        current_app.extensions["recorderd.users"] = store
    return store


def set_cookie(response: Response, name: str, value: str) -> None:
    response.set_cookie(name, value, secure=True, httponly=True, samesite="Strict", path="/")


def clear_cookie(response: Response, name: str) -> None:
    response.delete_cookie(name, secure=True, httponly=True, samesite="Strict", path="/")


def start_session(username: str, stage: str) -> Session:
    """A fresh session (a new token: never reuse one from before the login, RFC 6749-style
    fixation defence); the cookie is set on the way out."""
    token, session = user_store().open_session(username, stage, request.remote_addr or "")
    g.console_session = session
    g.new_session_token = token
    return session


def end_session() -> None:
    session: Session | None = g.get("console_session")
    if session is not None:
        user_store().close_session(session.token_sha256)
    g.console_session = None
    g.console_user = None
    g.clear_session_cookie = True


def _expiry_reason(session: Session, now: float) -> str | None:
    web = web_settings()
    if session.stage == "password" and now - session.created_at > PENDING_SECOND_FACTOR_S:
        return "second factor not given in time"
    if now - session.last_seen > web["idle_timeout_s"]:
        return f"idle for more than {web['idle_timeout_s']} s"
    if now - session.created_at > web["session_max_s"]:
        return f"session older than {web['session_max_s']} s"
    return None


def load_session() -> None:
    """Put the session and, once fully logged in, the user into ``flask.g``."""
    g.console_session = None
    g.console_user = None
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return
    ctx = current_context()
    session = get_session(ctx.catalog, token)
    if session is None:
        g.clear_session_cookie = True
        return
    now = time.time()
    user = get_user(ctx.catalog, session.username)
    expired = _expiry_reason(session, now)
    if user is None or user.disabled or expired:
        user_store().close_session(session.token_sha256)
        g.clear_session_cookie = True
        audit_as(session.username, user.role if user else "", "auth.session_end", session.username,
                 "expired", expired or "account disabled")
        return
    g.console_session = session
    if session.stage == "full":
        g.console_user = ConsoleUser(user.username, user.role, user.agent_id)
        if now - session.last_seen >= TOUCH_EVERY_S:
            user_store().touch_session(session)


def csrf_token() -> str:
    """The token forms and fetch() must send back (a Jinja global)."""
    session: Session | None = g.get("console_session")
    if session is not None:
        return session.csrf_token
    existing = request.cookies.get(LOGIN_COOKIE) or g.get("new_login_csrf")
    if not existing:
        existing = g.new_login_csrf = secrets.token_urlsafe(32)
    return str(existing)


def check_request() -> None:
    """before_request: refuse views that declare no action, then check CSRF."""
    view = current_app.view_functions.get(request.endpoint or "")
    if view is None:
        return   # 404/405: nothing runs
    public = is_public(view)
    if not public and route_action(view) is None:
        current_app.logger.error("view %s declares no action: refused", request.endpoint)
        abort(500)
    if request.method in SAFE_METHODS:
        return
    session: Session | None = g.get("console_session")
    if session is None and not public:
        return   # @requires refuses it (audited) before anything happens
    expected = session.csrf_token if session else request.cookies.get(LOGIN_COOKIE, "")
    sent = request.headers.get(CSRF_HEADER) or request.form.get(CSRF_FIELD, "")
    if not expected or not sent or not hmac.compare_digest(sent.encode(), expected.encode()):
        audit_event("security.csrf", request.path, "denied",
                    "CSRF token missing" if not sent else "CSRF token wrong", {"method": request.method})
        abort(400, description="The form's security token is missing or out of date: reload the page and try again.")


def finish_response(response: Response) -> Response:
    """after_request: cookies and security headers."""
    if g.get("new_session_token"):
        set_cookie(response, SESSION_COOKIE, g.new_session_token)
        clear_cookie(response, LOGIN_COOKIE)
    elif g.get("clear_session_cookie"):
        clear_cookie(response, SESSION_COOKIE)
    if g.get("new_login_csrf") and not g.get("new_session_token"):
        set_cookie(response, LOGIN_COOKIE, g.new_login_csrf)
    headers = response.headers
    headers["Content-Security-Policy"] = CSP
    max_age = current_context().config["web"]["hsts_max_age_s"]
    if max_age:
        headers["Strict-Transport-Security"] = f"max-age={max_age}; includeSubDomains"
    headers["X-Content-Type-Options"] = "nosniff"
    headers["Referrer-Policy"] = "no-referrer"
    headers["X-Frame-Options"] = "DENY"
    headers["Cross-Origin-Opener-Policy"] = "same-origin"
    headers["Cross-Origin-Resource-Policy"] = "same-origin"
    headers["Permissions-Policy"] = "camera=(), microphone=(), geolocation=(), payment=(), usb=()"
    if request.endpoint != "static":
        headers["Cache-Control"] = "no-store"
    return response


def install(app: Flask) -> None:
    app.before_request(load_session)
    app.before_request(check_request)
    app.after_request(finish_response)
    app.jinja_env.globals["csrf_token"] = csrf_token
