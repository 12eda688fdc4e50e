"""Must show 3 (login security): cookies, CSRF, lockout, idle timeout, TOTP, audit entries.

Time is not mocked: "30 minutes later" and "15 minutes idle" are made by moving the stored
instants back (``locked_until``, ``last_seen``), which is what the passing of time does to them.
"""

from __future__ import annotations

import re
import time
from http.cookies import SimpleCookie
from typing import Any

import pyotp
from flask.testing import FlaskClient

from storage.audit import iter_entries
from tests.webadmin.conftest import PASSWORD, client_login, csrf_of, form_csrf, make_user
from webadmin.auth import LOGIN_FAILED
from webadmin.context import ConsoleContext
from webadmin.security import LOGIN_COOKIE, SESSION_COOKIE
from webadmin.users_store import get_user, token_digest


def entries_for(ctx: ConsoleContext, actor: str, action: str | None = None) -> list[Any]:
    with ctx.catalog.reader() as reader:
        return list(iter_entries(reader, actor=actor, action=action))


def set_cookie_headers(response: Any) -> dict[str, str]:
    """name -> the whole Set-Cookie header for it."""
    return {header.split("=", 1)[0]: header for header in response.headers.getlist("Set-Cookie")}


def post_login(client: FlaskClient, username: str, password: str) -> Any:
    page = client.get("/login")
    return client.post("/login", data={"username": username, "password": password,
                                       "csrf_token": form_csrf(page.get_data(as_text=True))})


def session_token(client: FlaskClient) -> str | None:
    cookie = client.get_cookie(SESSION_COOKIE)
    return cookie.value if cookie else None


def sql(ctx: ConsoleContext, statement: str, params: tuple[Any, ...]) -> None:
    ctx.catalog.writer.call(lambda conn: conn.execute(statement, params))


# -- cookies ------------------------------------------------------------------------------------

def test_cookies_are_host_prefixed_secure_httponly_strict(client: FlaskClient, console_context: ConsoleContext) -> None:
    page = client.get("/login")
    login_cookie = set_cookie_headers(page)[LOGIN_COOKIE]
    username, _secret = make_user(console_context, "agent")
    response = client.post("/login", data={"username": username, "password": PASSWORD,
                                           "csrf_token": form_csrf(page.get_data(as_text=True))})
    assert response.status_code == 302
    session_cookie = set_cookie_headers(response)[SESSION_COOKIE]
    for header in (login_cookie, session_cookie):
        parsed = SimpleCookie()
        parsed.load(header)
        morsel = next(iter(parsed.values()))
        assert morsel.key.startswith("__Host-")
        assert morsel["secure"] and morsel["httponly"]
        assert morsel["samesite"] == "Strict"
        assert morsel["path"] == "/"
        assert not morsel["domain"] and not morsel["expires"] and not morsel["max-age"]
    # the token is random and only its hash is stored
    token = session_token(client)
    assert token and len(token) >= 40
    with console_context.catalog.reader() as reader:
        stored = [row[0] for row in reader.conn.execute("SELECT token_sha256 FROM console_sessions")]
    assert token not in stored and token_digest(token) in stored


# -- login, audit ---------------------------------------------------------------------------------

def test_every_login_outcome_is_audited_without_telling_the_user_which(client: FlaskClient,
                                                                      console_context: ConsoleContext) -> None:
    username, _secret = make_user(console_context, "agent")
    wrong = post_login(client, username, "not the password at all")
    unknown = post_login(client, f"nobody-{username}", PASSWORD)
    assert wrong.status_code == unknown.status_code == 401
    for page in (wrong, unknown):
        text = page.get_data(as_text=True)
        assert LOGIN_FAILED in text and "wrong password" not in text and "unknown user" not in text
    ok = post_login(client, username, PASSWORD)
    assert ok.status_code == 302 and ok.headers["Location"] == "/"
    logins = [(e.outcome, e.reason) for e in entries_for(console_context, username, "auth.login")]
    assert logins == [("failed", "wrong password"), ("ok", "logged in (password)")]
    assert [(e.outcome, e.reason) for e in entries_for(console_context, f"nobody-{username}", "auth.login")] == [
        ("failed", "unknown user")]
    assert client.get("/").status_code == 200


def test_totp_is_required_for_admin_and_refuses_a_reused_code(client: FlaskClient,
                                                              console_context: ConsoleContext) -> None:
    username, secret = make_user(console_context, "admin")
    assert secret
    first = post_login(client, username, PASSWORD)
    assert first.status_code == 302 and first.headers["Location"].startswith("/login/code")
    pending = session_token(client)
    # password alone opens nothing
    assert client.get("/users").status_code == 401
    page = client.get(first.headers["Location"])
    code = pyotp.TOTP(secret).now()
    done = client.post("/login/code", data={"code": code, "csrf_token": form_csrf(page.get_data(as_text=True))})
    assert done.status_code == 302 and done.headers["Location"] == "/"
    full = session_token(client)
    assert full and full != pending, "a new session token after the second factor (no fixation)"
    assert client.get("/users").status_code == 200
    # the same code again (a replay seen on the wire) is refused
    client.delete_cookie(SESSION_COOKIE)
    again = post_login(client, username, PASSWORD)
    page = client.get(again.headers["Location"])
    replay = client.post("/login/code", data={"code": code, "csrf_token": form_csrf(page.get_data(as_text=True))})
    assert replay.status_code == 401
    outcomes = [(e.outcome, e.reason) for e in entries_for(console_context, username, "auth.second_factor")]
    assert outcomes == [("ok", "logged in (password and TOTP)"), ("failed", "wrong or reused code")]


def test_open_redirect_is_refused(client: FlaskClient, console_context: ConsoleContext) -> None:
    username, _secret = make_user(console_context, "agent")
    page = client.get("/login?next=//evil.example/x")
    response = client.post("/login", data={"username": username, "password": PASSWORD, "next": "//evil.example/x",
                                           "csrf_token": form_csrf(page.get_data(as_text=True))})
    assert response.headers["Location"] == "/"


# -- lockout ------------------------------------------------------------------------------------

def test_ten_failures_lock_the_account_for_thirty_minutes(client: FlaskClient, console_context: ConsoleContext) -> None:
    settings = console_context.config["web"]
    assert (settings["lockout_failures"], settings["lockout_s"]) == (10, 1800)
    username, _secret = make_user(console_context, "agent")
    for _ in range(10):
        assert post_login(client, username, "wrong password!!").status_code == 401
    user = get_user(console_context.catalog, username)
    assert user is not None and user.failed_logins == 10
    assert abs(user.locked_until - (time.time() + 1800)) < 60
    # the right password does not help while locked
    assert post_login(client, username, PASSWORD).status_code == 401
    reasons = [e.reason for e in entries_for(console_context, username, "auth.login")]
    assert reasons[:10] == ["wrong password"] * 10 and reasons[10].startswith("account locked until")
    assert entries_for(console_context, username, "auth.lockout")[0].reason.startswith("10 failed attempts")
    # thirty minutes later
    sql(console_context, "UPDATE users SET locked_until = ? WHERE username = ?", (time.time() - 1, username))
    assert post_login(client, username, PASSWORD).status_code == 302
    user = get_user(console_context.catalog, username)
    assert user is not None and user.failed_logins == 0


def test_wrong_codes_count_towards_the_lockout(client: FlaskClient, console_context: ConsoleContext) -> None:
    username, _secret = make_user(console_context, "auditor")
    first = post_login(client, username, PASSWORD)
    page = client.get(first.headers["Location"])
    csrf = form_csrf(page.get_data(as_text=True))
    for attempt in range(10):
        response = client.post("/login/code", data={"code": "000000" if attempt % 2 else "999999", "csrf_token": csrf})
        assert response.status_code == 401
    user = get_user(console_context.catalog, username)
    assert user is not None and user.locked_until > time.time()
    assert session_token(client) is None, "the pending session ends with the lockout"


# -- idle timeout and session end ---------------------------------------------------------------

def test_fifteen_minutes_idle_ends_the_session(client: FlaskClient, console_context: ConsoleContext,
                                               login_as: Any) -> None:
    user = login_as(client, "agent")
    token = session_token(client)
    assert token
    digest = token_digest(token)
    sql(console_context, "UPDATE console_sessions SET last_seen = ? WHERE token_sha256 = ?", (time.time() - 890, digest))
    assert client.get("/account").status_code == 200, "under 15 minutes: still logged in (and refreshed)"
    sql(console_context, "UPDATE console_sessions SET last_seen = ? WHERE token_sha256 = ?", (time.time() - 901, digest))
    response = client.get("/account", headers={"Accept": "text/html"})
    assert response.status_code == 302 and response.headers["Location"].startswith("/login")
    ended = entries_for(console_context, user.username, "auth.session_end")
    assert [(e.outcome, e.reason) for e in ended] == [("expired", "idle for more than 900 s")]
    with console_context.catalog.reader() as reader:
        assert not list(reader.conn.execute("SELECT 1 FROM console_sessions WHERE token_sha256 = ?", (digest,)))


def test_logout_and_disable_end_sessions_server_side(client: FlaskClient, console_context: ConsoleContext,
                                                     login_as: Any) -> None:
    user = login_as(client, "qa")
    token = session_token(client)
    response = client.post("/logout", data={"csrf_token": csrf_of(client)})
    assert response.status_code == 302
    client.set_cookie(SESSION_COOKIE, token or "")   # a stolen copy of the old cookie
    assert client.get("/account").status_code in (302, 401)
    assert entries_for(console_context, user.username, "auth.logout")[0].outcome == "ok"

    other = login_as(client, "agent")
    from webadmin.users_store import UserStore
    UserStore(console_context.catalog).set_disabled(other.username, True)
    assert client.get("/account").status_code in (302, 401)
    assert post_login(client, other.username, PASSWORD).status_code == 401


# -- CSRF -----------------------------------------------------------------------------------------

def test_state_changes_without_the_csrf_token_are_refused(client: FlaskClient, console_context: ConsoleContext,
                                                          login_as: Any) -> None:
    user = login_as(client, "agent")
    token = csrf_of(client)
    missing = client.post("/logout")
    wrong = client.post("/logout", data={"csrf_token": token[:-2] + "xx"})
    assert missing.status_code == wrong.status_code == 400
    assert client.get("/account").status_code == 200, "still logged in: the refused logouts did nothing"
    refusals = [(e.outcome, e.reason) for e in entries_for(console_context, user.username, "security.csrf")]
    assert refusals == [("denied", "CSRF token missing"), ("denied", "CSRF token wrong")]
    # fetch() sends it as a header
    assert client.post("/logout", headers={"X-CSRF-Token": token}).status_code == 302


def test_the_login_form_itself_needs_its_token(client: FlaskClient, console_context: ConsoleContext) -> None:
    username, _secret = make_user(console_context, "agent")
    client.get("/login")
    forged = client.post("/login", data={"username": username, "password": PASSWORD})
    assert forged.status_code == 400
    assert session_token(client) is None
    assert client_login(client, console_context, username).status_code == 302


def test_the_login_page_has_no_inline_script(client: FlaskClient) -> None:
    html = client.get("/login").get_data(as_text=True)
    assert not re.search(r"<script(?![^>]*\bsrc=)", html)
    assert not re.search(r"\son[a-z]+=", html), "no inline event handlers"
