"""The retention pages of the console: the rule preview ("changes N recordings") then save, legal
holds placed and released by two admins (the requester cannot approve), the purge dry run,
and admins only."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from recorderd.appliance import open_appliance
from recorderd.cli import main
from recorderd.config import load
from storage.audit import iter_entries
from tests.retention.conftest import drop, make_appliance, tone
from tests.webadmin.conftest import client_login, csrf_of, make_user
from webadmin.app import create_app
from webadmin.context import ConsoleContext


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[ConsoleContext]:
    config = make_appliance(tmp_path / "box")
    spool = tmp_path / "box" / "spool"
    for i, seconds in enumerate((2.0, 6.0, 6.0)):
        drop(spool, f"c{i}", tone(400 + 50 * i, seconds), call_id=f"console-{i}@pbx",
             started_at=f"2024-03-0{i + 1}T10:00:00Z", direction="inbound" if i else "outbound",
             tags=["complaint"] if i == 2 else [])
    assert main(["--config", str(config), "spool", "run", "--once"]) == 0
    app = open_appliance(load(config), recover=False, warnings=None)
    try:
        yield ConsoleContext(app.catalog, app.audit, app.keys, app.vault_dir, app.config)
    finally:
        app.close()


def logged_in(ctx: ConsoleContext, role: str) -> tuple[FlaskClient, str]:
    client = create_app(ctx, testing=True).test_client()
    name, _ = make_user(ctx, role, totp=role in ("admin", "auditor"))
    assert client_login(client, ctx, name).status_code == 302
    return client, name


def text(response) -> str:  # type: ignore[no-untyped-def]
    return re.sub(r"\s+", " ", response.get_data(as_text=True))


def recording_ids(ctx: ConsoleContext) -> dict[str, str]:
    rows = ctx.catalog.search(None, limit=10).rows
    return {row.call_id.split("@")[0]: row.recording_id for row in rows}


def test_rules_holds_and_dry_run_through_the_pages(ctx: ConsoleContext) -> None:
    first, first_name = logged_in(ctx, "admin")
    csrf = csrf_of(first)
    assert first.get("/retention").status_code == 200

    # a misdial rule: the preview says it changes the one short recording, nothing is saved yet
    form = {"csrf_token": csrf, "name": "misdial", "period": "30d", "max_duration_s": "5"}
    preview = first.post("/retention/rules", data=form)
    assert preview.status_code == 200
    assert "changes 1 recording(s)" in text(preview) and 'id="confirm-save"' in text(preview)
    assert 'data-rule="misdial"' not in text(first.get("/retention"))
    saved = first.post("/retention/rules", data={**form, "confirm": "1"})
    assert "Rule misdial saved" in text(saved) and 'data-rule="misdial"' in text(saved)
    # a default rule: changes the other two
    default = {"csrf_token": csrf, "name": "default", "period": "1y", "default": "1"}
    assert "changes 2 recording(s)" in text(first.post("/retention/rules", data=default))
    first.post("/retention/rules", data={**default, "confirm": "1"})
    # a second default, and a bad period, are refused with the reason
    again = first.post("/retention/rules", data={**default, "name": "other", "confirm": "1"})
    assert again.status_code == 400 and "only one default rule" in text(again)
    bad = first.post("/retention/rules", data={**form, "name": "x", "period": "soon"})
    assert bad.status_code == 400 and "not a period" in text(bad)
    with ctx.catalog.reader() as reader:
        saves = list(iter_entries(reader, actor=first_name, action="retention_rule_save"))
    assert [e.object for e in saves] == ["rule:misdial", "rule:default"]
    assert saves[0].to_dict()["detail"]["impact"]["changed"] == 1

    # the dry run: everything from 2024 is past 30 days and past a year by now
    dry = text(first.get("/retention/plan"))
    assert re.search(r'data-rule="misdial"><td>misdial</td><td class="count">1</td>', dry)
    assert re.search(r'data-rule="default"><td>default</td><td class="count">2</td>', dry)

    # a legal hold on one recording: the dry run counts it as held
    ids = recording_ids(ctx)
    placed = first.post("/retention/holds", data={"csrf_token": csrf, "case": "case 42", "reason": "subpoena",
                                                  "recording_id": ids["console-1"]})
    assert "Legal hold 1 placed" in text(placed)
    assert 'id="plan-held">1' in text(first.get("/retention/plan"))
    searched = first.post("/retention/holds", data={"csrf_token": csrf, "case": "complaints", "reason": "regulator",
                                                    "tag": "complaint"})
    assert "1 recording(s) now, and whatever the search matches later" in text(searched)

    # release: requested by the first admin, who cannot approve it; a second admin does
    first.post("/retention/holds/release", data={"csrf_token": csrf, "hold_id": "1", "reason": "settled"})
    refused = first.post("/retention/holds/approve", data={"csrf_token": csrf, "hold_id": "1"})
    assert refused.status_code == 403 and "four eyes" in text(refused)
    second, second_name = logged_in(ctx, "admin")
    page = text(second.get("/retention"))
    assert "Approve release" in page
    approved = second.post("/retention/holds/approve", data={"csrf_token": csrf_of(second), "hold_id": "1"})
    assert approved.status_code == 200 and f"Legal hold 1 released (requested by {first_name})" in text(approved)
    with ctx.catalog.reader() as reader:
        releases = list(iter_entries(reader, action="legal_hold_release"))
    assert [(e.actor, e.outcome) for e in releases] == [(first_name, "refused"), (second_name, "ok")]
    assert 'id="plan-held">1 &middot; complaints: 1' in text(second.get("/retention/plan"))


@pytest.mark.parametrize("role", ["agent", "qa", "auditor"])
def test_only_admins(ctx: ConsoleContext, role: str) -> None:
    client, _ = logged_in(ctx, role)
    assert client.get("/retention").status_code == 403
    assert client.get("/retention/plan").status_code == 403
    csrf = csrf_of(client)
    assert client.post("/retention/rules", data={"csrf_token": csrf, "name": "x", "period": "1d",
                                                 "confirm": "1"}).status_code == 403
    assert client.post("/retention/holds", data={"csrf_token": csrf, "case": "c", "reason": "r",
                                                 "tag": "complaint"}).status_code == 403
