"""The users, audit-log and system pages, driven through the Flask test client."""

from __future__ import annotations

import copy
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apsw
import pyotp
import pytest
from flask.testing import FlaskClient

from recorderd.appliance import open_appliance
from recorderd.cli import main
from recorderd.config import load
from recorderd.metrics import Metric, MetricsServer
from storage.audit import iter_entries
from tests.webadmin.conftest import PASSWORD, client_login, csrf_of, free_port
from webadmin.app import create_app
from webadmin.context import ConsoleContext
from webadmin.users_store import UserStore, get_user


def admin_entries(ctx: ConsoleContext, admin: str) -> list[tuple[str, str, str]]:
    with ctx.catalog.reader() as reader:
        return [(e.object, e.outcome, e.reason) for e in iter_entries(reader, actor=admin, action="user.manage")]


def shown_secret(html: str) -> str:
    found = re.search(r'id="totp-uri">(otpauth://totp/[^<]+)<', html)
    assert found, "no otpauth URI on the page"
    secret = re.search(r"secret=([A-Z2-7]+)", found.group(1).replace("&amp;", "&"))
    assert secret
    return secret.group(1)


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[ConsoleContext]:
    """An appliance of its own (tests that need exactly one admin or a tampered audit log)."""
    assert main(["init", str(tmp_path / "box")]) == 0
    app = open_appliance(load(tmp_path / "box" / "recorderd.toml"), recover=False, warnings=None)
    try:
        yield ConsoleContext(app.catalog, app.audit, app.keys, app.vault_dir, app.config)
    finally:
        app.close()


def test_admin_manages_users_through_the_pages(client: FlaskClient, console_context: ConsoleContext,
                                               login_as: Any) -> None:
    admin = login_as(client, "admin")
    csrf = csrf_of(client)
    name = f"pages-{int(time.time() * 1000) % 10**9}"
    made = client.post("/users", data={"csrf_token": csrf, "username": name, "role": "agent",
                                       "agent_id": f"ag-{name}", "password": PASSWORD})
    assert made.status_code == 302
    listing = client.get("/users").get_data(as_text=True)
    assert f'data-username="{name}"' in listing and f"ag-{name}" in listing
    # too short a password is refused, naming why, and audited
    short = client.post("/users", data={"csrf_token": csrf, "username": name + "x", "role": "qa", "password": "short"})
    assert short.status_code == 400 and "at least 12 characters" in short.get_data(as_text=True)
    # a new role that needs a second factor: the secret is shown once, and it works
    promoted = client.post(f"/users/{name}/role", data={"csrf_token": csrf, "role": "auditor"})
    assert promoted.status_code == 200
    secret = shown_secret(promoted.get_data(as_text=True))
    user = get_user(console_context.catalog, name)
    assert user is not None and user.role == "auditor" and user.totp_secret == secret
    other = client.application.test_client()
    assert client_login(other, console_context, name).status_code == 302
    assert other.get("/audit").status_code == 200
    # disabling ends that session at once
    assert client.post(f"/users/{name}/disable", data={"csrf_token": csrf}).status_code == 302
    assert other.get("/audit").status_code in (302, 401)
    assert client.post(f"/users/{name}/enable", data={"csrf_token": csrf}).status_code == 302
    reset = client.post(f"/users/{name}/totp", data={"csrf_token": csrf})
    assert shown_secret(reset.get_data(as_text=True)) != secret
    assert admin_entries(console_context, admin.username) == [
        (f"user:{name}", "ok", "user created"),
        (f"user:{name}x", "failed", "create: the password must have at least 12 characters"),
        (f"user:{name}", "ok", "role agent -> auditor"),
        (f"user:{name}", "ok", "disabled (sessions ended)"),
        (f"user:{name}", "ok", "enabled"),
        (f"user:{name}", "ok", "new TOTP secret (sessions ended)"),
    ]


def test_the_last_admin_cannot_be_disabled_or_demoted(fresh: ConsoleContext) -> None:
    name, secret = "only-admin", None
    _user, secret = UserStore(fresh.catalog).create(name, "admin", PASSWORD)
    client = create_app(fresh, testing=True).test_client()
    assert client_login(client, fresh, name).status_code == 302
    csrf = csrf_of(client)
    assert client.post(f"/users/{name}/disable", data={"csrf_token": csrf}).status_code == 400
    assert client.post(f"/users/{name}/role", data={"csrf_token": csrf, "role": "qa"}).status_code == 400
    user = get_user(fresh.catalog, name)
    assert user is not None and user.role == "admin" and not user.disabled
    assert secret and pyotp.TOTP(secret).now()


ROW = re.compile(r'<tr class="outcome-(\w+)">\s*<td>(\d+)</td><td>[^<]*</td><td>([^<]*)</td><td>([^<]*)</td>\s*'
                 r'<td><code>([^<]+)</code></td>')


def table(client: FlaskClient, query: str) -> list[tuple[str, str, str]]:
    """(outcome, actor, action) of each row the audit page shows for ``query``."""
    response = client.get(f"/audit?{query}")
    assert response.status_code == 200
    return [(outcome, actor, action) for outcome, _seq, actor, _role, action in ROW.findall(response.get_data(as_text=True))]


def test_audit_log_filters_and_chain_status(client: FlaskClient, console_context: ConsoleContext,
                                            login_as: Any) -> None:
    auditor = login_as(client, "auditor")
    agent_client = client.application.test_client()
    agent = login_as(agent_client, "agent")
    assert agent_client.get("/").status_code == 200
    assert agent_client.get("/users").status_code == 403
    who = agent.username
    assert table(client, f"actor={who}") == [("denied", who, "user.list"), ("ok", who, "console.home"),
                                             ("ok", who, "auth.login")]
    assert table(client, f"actor={who}&action=auth.") == [("ok", who, "auth.login")]
    assert table(client, f"actor={who}&outcome=denied") == [("denied", who, "user.list")]
    assert table(client, "object=nothing-has-this-object") == []
    assert "Chain verified" in client.get("/audit").get_data(as_text=True)
    bad = client.get("/audit?since=yesterday")
    assert bad.status_code == 400 and "is not a date" in bad.get_data(as_text=True)
    with console_context.catalog.reader() as reader:
        views = list(iter_entries(reader, actor=auditor.username, action="audit.view"))
    assert f'"actor":"{who}"' in views[0].detail and views[-1].outcome == "failed"


def test_a_tampered_audit_log_shows_as_broken(fresh: ConsoleContext) -> None:
    UserStore(fresh.catalog).create("boss", "admin", PASSWORD)
    client = create_app(fresh, testing=True).test_client()
    assert client_login(client, fresh, "boss").status_code == 302
    assert "Chain verified" in client.get("/audit").get_data(as_text=True)
    # someone with write access to the database file edits an entry behind the triggers' back
    conn = apsw.Connection(fresh.config["storage"]["catalog"])
    conn.execute("DROP TRIGGER audit_no_update")
    conn.execute("UPDATE audit SET reason = 'nothing happened' WHERE seq = 2")
    conn.close()
    page = client.get("/audit?verify=1").get_data(as_text=True)
    assert "Chain BROKEN at entry 2" in page


@pytest.fixture
def metrics_server() -> Iterator[str]:
    metrics = [
        Metric("recorderd_active_calls", "calls", "gauge", [({}, 7)]),
        Metric("recorderd_kernel_drops_total", "drops", "counter", [({"interface": "eth1"}, 42)]),
        Metric("recorderd_packets_total", "packets", "counter", [({"interface": "eth1"}, 123456)]),
    ]
    server = MetricsServer("127.0.0.1", free_port(), lambda: metrics)
    server.start()
    try:
        yield f"127.0.0.1:{server.port}"
    finally:
        server.stop()


def test_system_page_reads_the_daemon_disk_catalog_and_keys(console_context: ConsoleContext,
                                                            metrics_server: str, login_as: Any) -> None:
    config = copy.deepcopy(console_context.config)
    config["daemon"]["metrics_listen"] = metrics_server
    live = create_app(ConsoleContext(console_context.catalog, console_context.audit, console_context.keys,
                                     console_context.vault_dir, config), testing=True).test_client()
    login_as(live, "admin")
    page = live.get("/system").get_data(as_text=True)
    assert "<dt>Active calls</dt><dd>7</dd>" in page
    assert "<dt>Kernel drops on eth1</dt><dd>42</dd>" in page
    assert "<dt>Recordings complete</dt><dd>" in page and "free of" in page
    assert f"KEK {console_context.keys.active_kek_id}" in page
    assert "no backup configured" in page or "Backup" in page

    config["daemon"]["metrics_listen"] = f"127.0.0.1:{free_port()}"
    stopped = create_app(ConsoleContext(console_context.catalog, console_context.audit, console_context.keys,
                                        console_context.vault_dir, config), testing=True).test_client()
    login_as(stopped, "auditor")
    assert "capture daemon not running" in stopped.get("/system").get_data(as_text=True)
