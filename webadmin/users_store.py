"""Console users and sessions in the catalog (tables ``users`` and ``console_sessions``,
migration 3 in storage/migrations.py).

Passwords: argon2id (RFC 9106) through argon2-cffi, its default parameters (t=3, m=64 MiB, p=4);
a hash made with older parameters is replaced at the next successful login. Second factor:
TOTP (RFC 6238, SHA-1, 6 digits, 30 s) through pyotp, a code accepted one step early or late
and never twice (``totp_last_step``). Lockout: ``lockout_failures`` failed attempts in a row
(password or code) lock the account for ``lockout_s``; the lock runs out by itself.

Sessions: a random 256-bit token in the cookie; the table keeps only its SHA-256, so a copy of
the catalog cannot be replayed as a cookie. Logout, idle timeout, disabling a user and role
changes delete rows, which ends those sessions at their next request.

Writes go through the catalog's writer thread (``Catalog.writer.call``); reads take a
``Catalog``, a ``CatalogReader`` or an apsw connection.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import apsw
import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from storage.catalog import Catalog, CatalogReader

ROLES = ("agent", "qa", "auditor", "admin")
TOTP_REQUIRED_ROLES = frozenset({"admin", "auditor"})
USERNAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
AGENT_ID = re.compile(r"^[\x21-\x7e]{1,128}$")   # printable ASCII, as a SIP header value
TOTP_ISSUER = "recorderd"
TOTP_STEP_S = 30
TOKEN_BYTES = 32

Source = Catalog | CatalogReader | apsw.Connection
T = TypeVar("T")

_HASHER = PasswordHasher()   # argon2id with RFC 9106's second recommended parameter set


@functools.cache
def _dummy_hash() -> str:
    """Verified against when a username is unknown, so that the answer takes as long either
    way; made on first use, not at import (an argon2id hash is ~0.1 s of every command's start-up)."""
    return _HASHER.hash(secrets.token_hex(16))


USER_COLUMNS = ("username", "role", "agent_id", "password_hash", "totp_secret", "totp_last_step",
                "disabled", "failed_logins", "locked_until", "created_at", "updated_at", "last_login_at")


class UserError(ValueError):
    """A user operation was refused; the message says why (shown to the admin as is)."""


@dataclass(frozen=True)
class User:
    username: str
    role: str
    agent_id: str | None
    password_hash: str
    totp_secret: str | None
    totp_last_step: int
    disabled: bool
    failed_logins: int
    locked_until: float
    created_at: float
    updated_at: float
    last_login_at: float | None

    @property
    def has_totp(self) -> bool:
        return self.totp_secret is not None

    def locked(self, now: float) -> bool:
        return self.locked_until > now

    def public(self) -> dict[str, Any]:
        """What `user list --json` and the users page show (no hash, no secret)."""
        return {"username": self.username, "role": self.role, "agent_id": self.agent_id,
                "totp": self.has_totp, "disabled": self.disabled, "failed_logins": self.failed_logins,
                "locked_until": self.locked_until or None, "created_at": self.created_at,
                "last_login_at": self.last_login_at}


@dataclass(frozen=True)
class Session:
    token_sha256: str
    username: str
    stage: str
    csrf_token: str
    created_at: float
    last_seen: float


def _read(source: Source, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(source, Catalog):   # every request looks its session up: no connection per read
        return list(source.thread_reader().conn.execute(sql, params))
    conn = source.conn if isinstance(source, CatalogReader) else source
    return list(conn.execute(sql, params))


def _user(row: tuple[Any, ...]) -> User:
    values = dict(zip(USER_COLUMNS, row, strict=True))
    values["disabled"] = bool(values["disabled"])
    return User(**values)


def check_username(username: str) -> str:
    if not USERNAME.match(username):
        raise UserError(f"username {username!r}: use 1-64 lower-case letters, digits, '.', '_' or '-', "
                        f"starting with a letter or digit")
    return username


def check_role(role: str) -> str:
    if role not in ROLES:
        raise UserError(f"role {role!r}: must be one of {', '.join(ROLES)}")
    return role


def check_agent_id(agent_id: str | None) -> str | None:
    if agent_id is not None and not AGENT_ID.match(agent_id):
        raise UserError(f"agent id {agent_id!r}: 1-128 printable ASCII characters without spaces")
    return agent_id


def check_password(password: str, min_length: int) -> str:
    if len(password) < min_length:
        raise UserError(f"the password must have at least {min_length} characters")
    if password.strip() != password or "\n" in password:
        raise UserError("the password must not start or end with white space")
    return password


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def needs_rehash(password_hash: str) -> bool:
    try:
        return _HASHER.check_needs_rehash(password_hash)
    except InvalidHashError:
        return True


def password_matches(user: User | None, password: str) -> bool:
    """Constant-ish time whether or not the user exists."""
    try:
        return _HASHER.verify(user.password_hash if user else _dummy_hash(), password) and user is not None
    except (VerificationError, InvalidHashError):
        return False


def totp_uri(username: str, secret: str) -> str:
    """The otpauth:// URI (Google Authenticator key URI format) an authenticator app imports."""
    return pyotp.TOTP(secret).provisioning_uri(name=username, issuer_name=TOTP_ISSUER)


def totp_step_matching(secret: str, code: str, now: float, last_step: int) -> int | None:
    """The time step whose code ``code`` is (one step of clock drift allowed either way), or None;
    steps at or before ``last_step`` are refused (RFC 6238 §5.2: a code is used once)."""
    code = code.strip().replace(" ", "")
    if not re.fullmatch(r"\d{6}", code):
        return None
    totp = pyotp.TOTP(secret)
    current = int(now // TOTP_STEP_S)
    for step in (current - 1, current, current + 1):
        if step > last_step and hmac.compare_digest(totp.generate_otp(step), code):
            return step
    return None


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# reading


def get_user(source: Source, username: str) -> User | None:
    rows = _read(source, f"SELECT {', '.join(USER_COLUMNS)} FROM users WHERE username = ?", (username,))  # nosec B608  # column names from the USER_COLUMNS constant; every value is a ? parameter
    return _user(rows[0]) if rows else None


def list_users(source: Source, role: str | None = None) -> list[User]:
    """Every user (of ``role`` when given), by username."""
    where, params = ("WHERE role = ?", (role,)) if role else ("", ())
    return [_user(r) for r in _read(source, f"SELECT {', '.join(USER_COLUMNS)} FROM users {where} "  # nosec B608  # column names from the USER_COLUMNS constant; every value is a ? parameter
                                            f"ORDER BY username", params)]


def get_session(source: Source, token: str) -> Session | None:
    rows = _read(source, "SELECT token_sha256, username, stage, csrf_token, created_at, last_seen "
                         "FROM console_sessions WHERE token_sha256 = ?", (token_digest(token),))
    return Session(*rows[0]) if rows else None


# ---------------------------------------------------------------------------------------------
# writing


class UserStore:
    """Changes to users and sessions, each one transaction on the catalog's writer."""

    def __init__(self, catalog: Catalog, clock: Callable[[], float] = time.time) -> None:
        self.catalog = catalog
        self.clock = clock

    def _write(self, job: Callable[[apsw.Connection], T]) -> T:
        return self.catalog.writer.call(job)

    def create(self, username: str, role: str, password: str, *, agent_id: str | None = None,
               totp: bool = False, min_password_length: int = 12) -> tuple[User, str | None]:
        """A new user; returns it and its TOTP secret (always for admin/auditor, else if ``totp``)."""
        check_username(username)
        check_role(role)
        check_agent_id(agent_id)
        check_password(password, min_password_length)
        secret = pyotp.random_base32() if totp or role in TOTP_REQUIRED_ROLES else None
        password_hash = hash_password(password)
        now = self.clock()

        def job(conn: apsw.Connection) -> None:
            if conn.execute("SELECT 1 FROM users WHERE username = ?", (username,)).fetchall():
                raise UserError(f"user {username!r} exists already")
            if agent_id is not None and conn.execute("SELECT 1 FROM users WHERE agent_id = ?",
                                                     (agent_id,)).fetchall():
                raise UserError(f"agent id {agent_id!r} belongs to another user")
            conn.execute("INSERT INTO users (username, role, agent_id, password_hash, totp_secret, "
                         "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (username, role, agent_id, password_hash, secret, now, now))

        self._write(job)
        user = get_user(self.catalog, username)
        assert user is not None
        return user, secret

    def _update(self, username: str, assignments: str, params: tuple[Any, ...],
                end_sessions: bool = False) -> None:
        now = self.clock()

        def job(conn: apsw.Connection) -> None:
            conn.execute(f"UPDATE users SET {assignments}, updated_at = ? WHERE username = ?",  # nosec B608  # assignments are literal SQL from this class's callers; every value is a ? parameter
                         (*params, now, username))
            if conn.changes() == 0:
                raise UserError(f"no user {username!r}")
            if end_sessions:
                conn.execute("DELETE FROM console_sessions WHERE username = ?", (username,))

        self._write(job)

    def set_role(self, username: str, role: str) -> str | None:
        """Change the role and end the user's sessions; returns a new TOTP secret when the new
        role needs a second factor the user does not have yet."""
        check_role(role)
        user = self._require(username)
        secret = pyotp.random_base32() if role in TOTP_REQUIRED_ROLES and not user.has_totp else None
        if secret:
            self._update(username, "role = ?, totp_secret = ?, totp_last_step = 0", (role, secret), True)
        else:
            self._update(username, "role = ?", (role,), True)
        return secret

    def set_agent_id(self, username: str, agent_id: str | None) -> None:
        check_agent_id(agent_id)
        try:
            self._update(username, "agent_id = ?", (agent_id,), True)
        except apsw.ConstraintError as err:
            raise UserError(f"agent id {agent_id!r} belongs to another user") from err

    def set_disabled(self, username: str, disabled: bool) -> None:
        """Disable (ending every session) or enable again; a disabled user cannot log in."""
        self._update(username, "disabled = ?", (int(disabled),), end_sessions=disabled)

    def set_password(self, username: str, password: str, min_password_length: int = 12) -> None:
        check_password(password, min_password_length)
        self._update(username, "password_hash = ?", (hash_password(password),), True)

    def reset_totp(self, username: str, enabled: bool = True) -> str | None:
        """A new TOTP secret (ending every session); ``enabled=False`` removes the second factor,
        refused for roles that require one."""
        user = self._require(username)
        if not enabled and user.role in TOTP_REQUIRED_ROLES:
            raise UserError(f"role {user.role} requires a second factor")
        secret = pyotp.random_base32() if enabled else None
        self._update(username, "totp_secret = ?, totp_last_step = 0", (secret,), True)
        return secret

    def unlock(self, username: str) -> None:
        self._update(username, "failed_logins = 0, locked_until = 0", ())

    def _require(self, username: str) -> User:
        user = get_user(self.catalog, username)
        if user is None:
            raise UserError(f"no user {username!r}")
        return user

    # -- login bookkeeping --------------------------------------------------------------------

    def record_failure(self, username: str, max_failures: int, lockout_s: float) -> tuple[int, bool]:
        """Count a failed attempt; returns (failures in a row, whether the account is now locked)."""
        now = self.clock()

        def job(conn: apsw.Connection) -> tuple[int, bool]:
            rows: list[Any] = conn.execute("SELECT failed_logins, locked_until FROM users WHERE username = ?",
                                           (username,)).fetchall()
            if not rows:
                return 0, False
            failures, locked_until = int(rows[0][0]), float(rows[0][1])
            if locked_until and locked_until <= now:   # an expired lock starts a new count
                failures = 0
            failures += 1
            lock = now + lockout_s if failures >= max_failures else 0.0
            conn.execute("UPDATE users SET failed_logins = ?, locked_until = ? WHERE username = ?",
                         (failures, lock, username))
            return failures, bool(lock)

        return self._write(job)

    def record_success(self, username: str, *, totp_step: int | None = None,
                       new_password_hash: str | None = None) -> None:
        now = self.clock()

        def job(conn: apsw.Connection) -> None:
            conn.execute("UPDATE users SET failed_logins = 0, locked_until = 0, last_login_at = ?, "
                         "totp_last_step = max(totp_last_step, coalesce(?, 0)), "
                         "password_hash = coalesce(?, password_hash) WHERE username = ?",
                         (now, totp_step, new_password_hash, username))

        self._write(job)

    def accept_totp_step(self, username: str, step: int) -> bool:
        """Record ``step`` as used; False when it (or a later one) was used meanwhile."""
        def job(conn: apsw.Connection) -> bool:
            conn.execute("UPDATE users SET totp_last_step = ? WHERE username = ? AND totp_last_step < ?",
                         (step, username, step))
            return bool(conn.changes())

        return self._write(job)

    # -- sessions -----------------------------------------------------------------------------

    def open_session(self, username: str, stage: str, client: str = "") -> tuple[str, Session]:
        """A new session; returns the cookie token (never stored) and the row."""
        token = secrets.token_urlsafe(TOKEN_BYTES)
        now = self.clock()
        session = Session(token_digest(token), username, stage, secrets.token_urlsafe(TOKEN_BYTES), now, now)

        def job(conn: apsw.Connection) -> None:
            conn.execute("INSERT INTO console_sessions (token_sha256, username, stage, csrf_token, "
                         "created_at, last_seen, client) VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (session.token_sha256, username, stage, session.csrf_token, now, now, client))

        self._write(job)
        return token, session

    def touch_session(self, session: Session) -> None:
        now = self.clock()
        self._write(lambda conn: conn.execute(
            "UPDATE console_sessions SET last_seen = ? WHERE token_sha256 = ?", (now, session.token_sha256)))

    def close_session(self, token_sha256: str) -> None:
        self._write(lambda conn: conn.execute(
            "DELETE FROM console_sessions WHERE token_sha256 = ?", (token_sha256,)))

    def purge_sessions(self, idle_s: float, max_age_s: float) -> int:
        """Delete sessions idle or older than allowed; returns how many."""
        now = self.clock()

        def job(conn: apsw.Connection) -> int:
            conn.execute("DELETE FROM console_sessions WHERE last_seen < ? OR created_at < ?",
                         (now - idle_s, now - max_age_s))
            return int(conn.changes())

        return self._write(job)
