"""The console's app factory: one Flask app, a blueprint per area.

Each module named in BLUEPRINTS (under webadmin/) exposes ``bp: flask.Blueprint``; its routes
wear ``@requires(action)`` or ``@public_route`` (webadmin/authz.py). The app is served by
`recorderd web` (webadmin/server.py: gunicorn over TLS).
"""

from __future__ import annotations

import importlib
import time
from typing import Any

from flask import Flask, render_template
from werkzeug.exceptions import HTTPException

from webadmin import security
from webadmin.authz import ROLES, allowed, current_user_or_none, nav_items, public_route
from webadmin.context import EXTENSION_KEY, ConsoleContext

# Areas of the console, in navigation order. Other areas append their module name here.
BLUEPRINTS: list[str] = ["auth", "users", "audit_log", "system", "recordings", "review", "retention", "exports", "backup", "reports", "consent"]

MAX_REQUEST_BYTES = 1 << 20   # forms only: nothing is uploaded through the console


def create_app(ctx: ConsoleContext, *, testing: bool = False) -> Flask:
    app = Flask(__name__, static_folder="static", template_folder="templates")
    app.config.update(
        TESTING=testing,
        MAX_CONTENT_LENGTH=MAX_REQUEST_BYTES,
        PREFERRED_URL_SCHEME="https",
        # Flask's own signed-cookie session is not used (webadmin/security.py keeps sessions
        # server-side); these keep it harmless should anything touch flask.session.
        SESSION_COOKIE_NAME="__Host-recorderd-flask",
        SESSION_COOKIE_SECURE=True,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SEND_FILE_MAX_AGE_DEFAULT=3600,
    )
    app.extensions[EXTENSION_KEY] = ctx
    app.view_functions["static"] = public_route(app.view_functions["static"])
    security.install(app)
    for name in BLUEPRINTS:
        module = importlib.import_module(f"webadmin.{name}")
        app.register_blueprint(module.bp)
    app.jinja_env.globals.update(current_user=current_user_or_none, nav_items=_nav, ROLES=ROLES,
                                 can=lambda action: allowed(current_user_or_none(), action),
                                 idle_timeout_s=ctx.config["web"]["idle_timeout_s"])
    app.jinja_env.filters["utc"] = utc_text
    app.context_processor(lambda: {"now": time.time()})
    app.register_error_handler(HTTPException, _error_page)
    return app


def utc_text(epoch: float | None) -> str:
    """Seconds since the epoch as ISO 8601 UTC to the second (a Jinja filter)."""
    if epoch is None:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(float(epoch)))


def _nav() -> list[Any]:
    return nav_items(current_user_or_none())


def _error_page(err: HTTPException) -> Any:
    """Errors as a page of the console (same headers, no stack traces, no server details)."""
    if err.code is None or err.code < 400:
        return err
    return render_template("error.html", code=err.code, name=err.name, description=err.description), err.code
