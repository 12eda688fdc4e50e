"""Export bundles in the console (issue 6): an auditor requests an export of a search or of ids
with a reason, an admin who is not the requester approves or rejects it, the bundle is built in
the background with its progress on the page, only the requester downloads it (audited), and it
is gone once expired. Headless Chromium watches the progress bar move (static/js/exports.js)."""

from __future__ import annotations

import io
import re
import time
import zipfile
from typing import Any

import pyotp
from flask import Flask
from flask.testing import FlaskClient
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from storage.audit import AuditEntry, entries
from storage.bundle import BuildProgress, BundleRequest, build_bundle
from storage.bundle_verify import verify_bundle_file
from storage.export_policy import ExportState
from storage.exports import Actor, ExportService, ExportSettings
from tests.webadmin.conftest import PASSWORD, LoginAs, console_errors, csrf_of, make_user, screenshot
from webadmin.authz import ConsoleUser
from webadmin.context import ConsoleContext
from webadmin.exports import SERVICE_KEY

WAIT_S = 15


def service_of(app: Flask) -> ExportService:
    service = app.extensions[SERVICE_KEY]
    assert isinstance(service, ExportService)
    return service


def session(app: Flask, login_as: LoginAs, role: str) -> tuple[FlaskClient, ConsoleUser]:
    client = app.test_client()
    return client, login_as(client, role)


def post(client: FlaskClient, path: str, **data: Any) -> Any:
    return client.post(path, data={**data, "csrf_token": csrf_of(client)})


def all_ids(ctx: ConsoleContext) -> list[str]:
    return [r.recording_id for r in ctx.catalog.search(None, limit=100, order_by="started_at").rows]


def request_ids(client: FlaskClient, ids: list[str], reason: str = "FCA request 2026/31") -> int:
    reply = post(client, "/exports", mode="ids", ids="\n".join(ids), reason=reason)
    assert reply.status_code == 302, reply.get_data(as_text=True)[:400]
    found = re.search(r"/exports/(\d+)$", reply.headers["Location"])
    assert found
    return int(found.group(1))


def trail(ctx: ConsoleContext, export_id: int) -> list[tuple[str, str, str]]:
    return [(e.actor, e.action, e.outcome) for e in entries(ctx.catalog, object=f"export:{export_id}")]


def last_by(ctx: ConsoleContext, user: ConsoleUser) -> AuditEntry:
    return entries(ctx.catalog, actor=user.username)[-1]


def test_auditor_requests_other_admin_approves_requester_downloads(console_app: Flask, login_as: LoginAs,
                                                                    console_context: ConsoleContext) -> None:
    auditor, alice = session(console_app, login_as, "auditor")
    admin, bob = session(console_app, login_as, "admin")
    ids = all_ids(console_context)[:2]
    export_id = request_ids(auditor, ids)
    page = auditor.get(f"/exports/{export_id}").get_data(as_text=True)
    assert "Waiting for an admin" in page and 'id="approve-form"' not in page
    # nothing to download before approval
    reply = post(auditor, f"/exports/{export_id}/download")
    assert reply.status_code == 409 and "not approved and built yet" in reply.get_data(as_text=True)
    # the admin sees it waiting, approves it; the build runs in the background
    assert f"Export {export_id}</a>" in admin.get("/exports").get_data(as_text=True)
    assert 'id="approve-form"' in admin.get(f"/exports/{export_id}").get_data(as_text=True)
    assert post(admin, f"/exports/{export_id}/approve", note="case confirmed").status_code == 302
    service_of(console_app).wait(timeout=30)
    status = auditor.get(f"/exports/{export_id}/status").get_json()
    assert status == {"state": "ready", "percent": 100, "recordings_done": 2, "recordings": 2, "error": None}
    # the approver may not take the bundle; the requester may
    reply = post(admin, f"/exports/{export_id}/download")
    assert reply.status_code == 403 and "only the requester" in reply.get_data(as_text=True)
    reply = post(auditor, f"/exports/{export_id}/download")
    assert reply.status_code == 200 and reply.mimetype == "application/zip"
    assert f"recorderd-export-{export_id}.zip" in reply.headers["Content-Disposition"]
    bundle = reply.get_data()
    report = verify_bundle_file(io.BytesIO(bundle), console_context.keys.public_key_pem().encode())
    assert report.ok, report.problems
    assert report.info["Export-Requester"] == f"{alice.username} (auditor)"
    assert report.info["Export-Approver"] == f"{bob.username} (admin)" and report.info["Recording-Count"] == "2"
    with zipfile.ZipFile(io.BytesIO(bundle)) as archive:
        assert sorted(n for n in archive.namelist() if n.endswith(".wav")) == sorted(
            f"data/recordings/{rid}.wav" for rid in ids)
    assert trail(console_context, export_id) == [
        (alice.username, "export.request", "ok"), (alice.username, "export.view", "ok"),
        (alice.username, "export.download", "refused"), (bob.username, "export.view", "ok"),
        (bob.username, "export.approve", "ok"), ("recorderd", "export.build", "started"),
        ("recorderd", "export.build", "ok"), (bob.username, "export.download", "denied"),
        (alice.username, "export.download", "ok")]


def test_an_admin_cannot_approve_their_own_request(console_app: Flask, login_as: LoginAs,
                                                    console_context: ConsoleContext) -> None:
    carol_client, carol = session(console_app, login_as, "admin")
    export_id = request_ids(carol_client, all_ids(console_context)[:1], "internal audit")
    assert 'id="approve-form"' not in carol_client.get(f"/exports/{export_id}").get_data(as_text=True)
    reply = post(carol_client, f"/exports/{export_id}/approve")
    assert reply.status_code == 403 and "their own export" in reply.get_data(as_text=True)
    entry = last_by(console_context, carol)
    assert (entry.action, entry.object, entry.outcome) == ("export.approve", f"export:{export_id}", "denied")
    other_client, _ = session(console_app, login_as, "admin")
    assert post(other_client, f"/exports/{export_id}/reject", note="use the ticket").status_code == 302
    assert service_of(console_app).store.get(export_id).state == ExportState.REJECTED  # type: ignore[union-attr]


def test_who_may_see_and_do_what(console_app: Flask, login_as: LoginAs, console_context: ConsoleContext) -> None:
    first, _ = session(console_app, login_as, "auditor")
    second, mallory = session(console_app, login_as, "auditor")
    export_id = request_ids(first, all_ids(console_context)[:1])
    assert second.get(f"/exports/{export_id}").status_code == 403          # not theirs
    assert last_by(console_context, mallory).outcome == "denied"
    assert post(second, f"/exports/{export_id}/approve").status_code == 403   # auditors never decide
    assert f'data-export-id="{export_id}"' not in second.get("/exports").get_data(as_text=True)
    for role in ("qa", "agent"):
        client, _ = session(console_app, login_as, role)
        assert client.get("/exports").status_code == 403
        assert post(client, "/exports", mode="ids", ids="x", reason="y").status_code == 403


def test_requesting_a_search_result(console_app: Flask, login_as: LoginAs, console_context: ConsoleContext) -> None:
    client, user = session(console_app, login_as, "auditor")
    page = client.get("/exports/new?tags=generated").get_data(as_text=True)
    total = len(all_ids(console_context))
    assert re.search(rf'id="match-count"><strong>{total}</strong>', page)
    reply = post(client, "/exports", mode="search", tags="generated", reason="all generated calls")
    assert reply.status_code == 302
    record = service_of(console_app).store.find(requester=user.username)[0]
    assert record.query == "tags=generated" and len(record.recording_ids) == total
    refused = post(client, "/exports", mode="ids", ids=all_ids(console_context)[0], reason="  ")
    assert refused.status_code == 400 and "a reason is required" in refused.get_data(as_text=True)
    assert last_by(console_context, user).outcome == "refused"


def test_expired_bundles_are_gone(console_app: Flask, login_as: LoginAs, console_context: ConsoleContext) -> None:
    auditor, _ = session(console_app, login_as, "auditor")
    admin, _ = session(console_app, login_as, "admin")
    export_id = request_ids(auditor, all_ids(console_context)[:1])
    post(admin, f"/exports/{export_id}/approve")
    service = service_of(console_app)
    service.wait(timeout=30)
    record = service.store.get(export_id)
    assert record is not None and record.state == ExportState.READY
    path = service.bundle_path(record)
    assert path.is_file()
    console_context.catalog.writer.call(lambda conn: conn.execute(
        "UPDATE exports SET expires_at = ? WHERE id = ?", (time.time() - 1, export_id)))
    assert 'state-expired' in auditor.get("/exports").get_data(as_text=True)   # the list expires what is due
    assert not path.exists()
    reply = post(auditor, f"/exports/{export_id}/download")
    assert reply.status_code == 409 and "expired" in reply.get_data(as_text=True)
    assert trail(console_context, export_id)[-2][1:] == ("export.expire", "ok")


# ---------------------------------------------------------------------------------------------
# the progress bar, in a real browser against `recorderd web`


def browser_login(browser: Any, live_server: str, username: str, secret: str | None) -> None:
    browser.get(f"{live_server}/login")
    wait_for(browser, "#login-form")
    browser.find_element(By.ID, "username").send_keys(username)
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    browser.find_element(By.ID, "login-submit").click()
    if secret:
        wait_for(browser, "#code-form")
        browser.find_element(By.ID, "code").send_keys(pyotp.TOTP(secret).now())
        browser.find_element(By.ID, "code-submit").click()
    wait_for(browser, "#home-pages")


def wait_for(driver: Any, css: str) -> Any:
    return WebDriverWait(driver, WAIT_S).until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, css)))


def test_the_progress_bar_follows_the_build_in_chromium(browser: Any, live_server: str,
                                                        console_context: ConsoleContext) -> None:
    """The build is driven from here, step by step, while the browser watches the server's page."""
    username, secret = make_user(console_context, "auditor")
    service = ExportService(console_context.catalog, console_context.audit, console_context.keys,
                            console_context.vault_dir, ExportSettings.from_config(console_context.config["exports"]),
                            background=False)
    ids = all_ids(console_context)[:2]
    record = service.request(Actor(username, "auditor"), "progress in the browser", recording_ids=ids)
    service.store.decide(record.id, Actor("browser-test-admin", "admin"), True)
    lock = service.lock_build(record.id)   # the server's service leaves a locked build alone
    assert lock is not None
    try:
        service.store.start_build(record.id)
        service.store.set_progress(record.id, BuildProgress(40, 100, 0, 2))
        browser_login(browser, live_server, username, secret)
        browser.get(f"{live_server}/exports/{record.id}")
        bar = wait_for(browser, "#export-progress")
        assert bar.get_attribute("value") == "40"
        screenshot(browser, "exports-01-building")
        service.store.set_progress(record.id, BuildProgress(80, 100, 1, 2))
        WebDriverWait(browser, WAIT_S).until(
            lambda d: d.find_element(By.ID, "export-progress").get_attribute("value") == "80")
        assert browser.find_element(By.ID, "export-done").text == "1"
        built = build_bundle(BundleRequest(record.bundle_id, record.object, username, "auditor",
                                           "browser-test-admin", record.reason, None, record.recording_ids, "box"),
                             catalog=console_context.catalog, keys=console_context.keys, audit=console_context.audit,
                             vault_dir=console_context.vault_dir, out_path=service.bundle_path(record),
                             actor="recorderd", role="system")
        service.store.finish(record.id, built.path, built.size, built.sha256, time.time() + 3600)
        wait_for(browser, "#download-form")   # the page reloaded itself when the state changed
        assert browser.find_element(By.ID, "export-state").text == "ready"
        assert browser.find_element(By.ID, "export-sha256").text == built.sha256
        screenshot(browser, "exports-02-ready")
        assert console_errors(browser) == []
    finally:
        service.unlock_build(record.id, lock)
