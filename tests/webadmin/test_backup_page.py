"""The console's backup page (admin): add a target, test it, "run now" and watch the run finish,
its history, failures and the system page's section; only admins get in."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from flask import Flask

from retention.backup import records
from retention.backup.targets import settings_from
from tests.webadmin.conftest import LoginAs, csrf_of
from webadmin.context import ConsoleContext

RUN_DEADLINE_S = 30.0


def audit_actions(ctx: ConsoleContext, since: int) -> list[tuple[str, str, str]]:
    reader = ctx.catalog.reader()
    try:
        rows: list[Any] = reader.conn.execute("SELECT action, object, outcome FROM audit WHERE seq > ? ORDER BY seq",
                                              (since,)).fetchall()
    finally:
        reader.close()
    return [(str(a), str(o), str(c)) for a, o, c in rows]


def last_seq(ctx: ConsoleContext) -> int:
    reader = ctx.catalog.reader()
    try:
        found: Any = reader.conn.execute("SELECT coalesce(max(seq), 0) FROM audit").fetchall()[0][0]
        return int(found)
    finally:
        reader.close()


def test_admin_adds_tests_and_runs_a_target(console_app: Flask, console_context: ConsoleContext, login_as: LoginAs,
                                            tmp_path: Path) -> None:
    client = console_app.test_client()
    login_as(client, "admin")
    csrf = csrf_of(client)
    start = last_seq(console_context)
    offsite = tmp_path / "offsite"
    offsite.mkdir()

    refused = client.post("/backup/targets", data={"csrf_token": csrf, "name": "console-s3", "kind": "s3",
                                                   "bucket": "rec-backup", "access_key_id": "AKIA1",
                                                   "secret": "hunter2"})
    assert refused.status_code == 400
    assert "not a secret reference" in refused.get_data(as_text=True)

    added = client.post("/backup/targets", data={"csrf_token": csrf, "name": "console-usb", "kind": "path",
                                                 "directory": str(offsite), "allow_unmounted": "1"})
    assert added.status_code == 200, added.get_data(as_text=True)[:300]
    assert "Target console-usb saved" in added.get_data(as_text=True)

    tested = client.post("/backup/targets/test", data={"csrf_token": csrf, "name": "console-usb"})
    assert tested.status_code == 200
    assert 'id="backup-probe"' in tested.get_data(as_text=True) and "OK" in tested.get_data(as_text=True)

    started = client.post("/backup/run", data={"csrf_token": csrf, "name": "console-usb"})
    assert started.status_code == 202, started.get_data(as_text=True)[:300]
    target = records.get_target(console_context.catalog, "console-usb")
    deadline = time.monotonic() + RUN_DEADLINE_S
    state = "running"
    while time.monotonic() < deadline:
        status = next(s for s in client.get("/backup/status.json").get_json() if s["target"]["name"] == "console-usb")
        state = status["last_run"]["state"] if status["last_run"] else "running"
        if state != "running":
            break
        time.sleep(0.1)
    assert state == "ok", status
    run = records.list_runs(console_context.catalog, target, "backup", limit=1)[0]
    stored = sum(1 for _ in console_context.vault_dir.rglob("*.rdv"))
    assert run.files_done == stored and run.files_failed == 0
    assert len(list((offsite / "vault").rglob("*.rdv"))) == stored
    assert len(list((offsite / "manifests").glob("*.json"))) == 1

    page = client.get("/backup").get_data(as_text=True)
    assert 'data-target="console-usb" data-state="ok"' in page
    assert f'data-run="{run.id}"' in page
    assert "console-usb" in client.get("/system").get_data(as_text=True)

    deadline = time.monotonic() + RUN_DEADLINE_S   # the run's own audit entry is written as it ends
    while not any(a == "backup_run" for a, _, _ in audit_actions(console_context, start)):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    actions = audit_actions(console_context, start)
    for expected in [("backup_target_add", "backup-target:console-s3", "refused"),
                     ("backup_target_add", "backup-target:console-usb", "ok"),
                     ("backup_target_test", "backup-target:console-usb", "ok"),
                     ("backup_run_now", "backup-target:console-usb", "ok"),
                     ("backup_run", "backup-target:console-usb", "ok")]:
        assert expected in actions

    removed = client.post("/backup/targets/remove", data={"csrf_token": csrf, "name": "console-usb"})
    assert removed.status_code == 200 and "console-usb removed" in removed.get_data(as_text=True)
    assert run.id in [r.id for r in records.list_runs(console_context.catalog, limit=50)], "history is kept"


def test_only_admins_open_the_backup_page(console_app: Flask, login_as: LoginAs) -> None:
    for role in ("agent", "qa", "auditor"):
        client = console_app.test_client()
        login_as(client, role)
        assert client.get("/backup").status_code == 403
        assert client.get("/backup/status.json").status_code == 403
        assert client.post("/backup/run", data={"csrf_token": csrf_of(client), "name": "x"}).status_code == 403


def test_run_now_in_chromium_updates_the_progress_under_the_csp(browser: Any, live_server: str,
                                                                  console_context: ConsoleContext,
                                                                  tmp_path: Path) -> None:
    """The page's script (static/js/backup.js) polls /backup/status.json after "Run now" and
    rewrites the row from the JSON (its times are ISO 8601 with a 'T', the page's are not)."""
    import pyotp
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.webadmin.conftest import PASSWORD, console_errors, make_user, screenshot

    offsite = tmp_path / "browser-offsite"
    offsite.mkdir()
    records.add_target(console_context.catalog, "browser-usb", "path",
                       settings_from("path", {"directory": str(offsite), "require_mount": False}),
                       "test", time.time())
    username, secret = make_user(console_context, "admin")
    assert secret
    wait = WebDriverWait(browser, RUN_DEADLINE_S)
    browser.get(f"{live_server}/login")
    browser.find_element(By.ID, "username").send_keys(username)
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    browser.find_element(By.ID, "login-submit").click()
    wait.until(lambda d: d.find_elements(By.ID, "code-form"))
    browser.find_element(By.ID, "code").send_keys(pyotp.TOTP(secret).now())
    browser.find_element(By.ID, "code-submit").click()
    wait.until(lambda d: d.find_elements(By.ID, "home-pages"))

    browser.get(f"{live_server}/backup")
    row = 'tr[data-target="browser-usb"]'
    browser.find_element(By.CSS_SELECTOR, f"{row} button.run-now").click()
    wait.until(lambda d: d.find_elements(By.ID, "backup-notice"))
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, row).get_attribute("data-state") == "ok"
               and "T" in d.find_element(By.CSS_SELECTOR, f"{row} .run-state").text)
    stored = sum(1 for _ in console_context.vault_dir.rglob("*.rdv"))
    progress = browser.find_element(By.CSS_SELECTOR, f"{row} .progress-text").text
    assert progress.strip().startswith(f"{stored}/{stored} files"), progress
    assert browser.find_element(By.CSS_SELECTOR, f"{row} .last-success").text != "never"
    screenshot(browser, "backup-run-now")
    assert console_errors(browser) == [], "the backup page must work under the CSP"
    assert len(list((offsite / "vault").rglob("*.rdv"))) == stored
    records.remove_target(console_context.catalog, "browser-usb", time.time())   # the appliance is shared
