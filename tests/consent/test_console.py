"""The console's consent report (webadmin/consent.py) and the recordings search filter fed by
the consent columns: per day and trunk, roles, CSV, audit."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator

import pytest
from flask.testing import FlaskClient

from recorderd.appliance import Appliance, open_appliance
from recorderd.cli import main
from recorderd.config import load
from storage.consent import LinkPolicy, add_announcement, record_check
from tests.consent.test_store import HEARD, NOT_HEARD, T0, announcement, store
from tests.webadmin.conftest import client_login, make_user
from webadmin.app import create_app
from webadmin.context import ConsoleContext

DAY = 86400.0
POLICY = LinkPolicy()


@pytest.fixture(scope="module")
def appliance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    root = tmp_path_factory.mktemp("consent-console")
    assert main(["init", str(root / "box")]) == 0
    config = root / "box" / "recorderd.toml"
    config.write_text(config.read_text().replace('timezone = "local"', 'timezone = "Asia/Shanghai"'))
    app = open_appliance(load(config), recover=False, warnings=None)
    catalog = app.catalog
    add_announcement(catalog, announcement(), app.audit)                                        # 18:00 in Shanghai
    add_announcement(catalog, announcement("late@pbx", invited=T0 + DAY, outcome="hangup_during_prompt",
                                           complete=False), app.audit)
    store(catalog, "leg", started=T0 + 0.1, call_id="ann-1@pbx")
    store(catalog, "agent", started=T0 + 12, headers={"X-Trunk": "CT-7"})
    store(catalog, "stranger", started=T0 + 14 * 3600, caller="+4930123456")                   # 04:00 next day
    for rid, detection in (("leg", HEARD), ("agent", NOT_HEARD), ("stranger", NOT_HEARD)):
        record_check(catalog, rid, detection, POLICY, trunk_header="X-Trunk")
    try:
        yield app
    finally:
        app.close()


@pytest.fixture
def client(appliance: Appliance) -> FlaskClient:
    ctx = ConsoleContext(appliance.catalog, appliance.audit, appliance.keys, appliance.vault_dir, appliance.config)
    return create_app(ctx, testing=True).test_client()


def login(client: FlaskClient, appliance: Appliance, role: str) -> str:
    ctx = ConsoleContext(appliance.catalog, appliance.audit, appliance.keys, appliance.vault_dir, appliance.config)
    name, _ = make_user(ctx, role, "agent-1" if role == "agent" else None)
    assert client_login(client, ctx, name).status_code == 302
    return name


def table_rows(html: str, table_id: str) -> list[list[str]]:
    body = re.search(rf'<table id="{table_id}">.*?<tbody>(.*?)</tbody>', html, re.S)
    assert body, table_id
    return [[re.sub(r"<[^>]+>", " ", cell).split()[0] if cell.strip() else "" for cell in
             re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)] for row in re.findall(r"<tr[^>]*>(.*?)</tr>", body.group(1), re.S)]


def test_report_per_day_and_trunk(client: FlaskClient, appliance: Appliance) -> None:
    user = login(client, appliance, "auditor")
    page = client.get("/consent?from=2024-05-01&to=2024-05-02")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    # days are cut at midnight in Asia/Shanghai (UTC+8): 10:00Z is 18:00 on the 1st, +14 h the 2nd
    assert [row[:7] for row in table_rows(html, "consent-report")] == [
        ["2024-05-01", "10.0.0.5", "1", "1", "1", "100.0", "100.0"],
        ["2024-05-01", "CT-7", "1", "1", "0", "100.0", "0.0"],
        ["2024-05-02", "10.0.0.5", "0", "0", "0", "–", "–"],
        ["2024-05-02", "unknown", "1", "0", "0", "0.0", "0.0"],
    ]
    assert re.search(r'id="consent-total"><th colspan="2">Total</th><th>3</th><th>2</th><th>1</th>', html)
    events = table_rows(html, "consent-events")
    assert [e[6] for e in events] == ["hangup", "refer"]          # newest first ("hangup during prompt")
    assert "13800001111" in html                                     # auditors see whole numbers
    with appliance.catalog.reader() as reader:
        entry = reader.conn.execute("SELECT actor, action, outcome FROM audit ORDER BY seq DESC LIMIT 1").fetchall()
    assert entry == [(user, "consent.report", "ok")]


def test_outcome_filter_csv_and_bad_dates(client: FlaskClient, appliance: Appliance) -> None:
    login(client, appliance, "admin")
    html = client.get("/consent?from=2024-05-01&to=2024-05-02&outcome=refer_ok").get_data(as_text=True)
    assert [e[6] for e in table_rows(html, "consent-events")] == ["refer"]
    reply = client.get("/consent.csv?from=2024-05-01&to=2024-05-01")
    assert reply.status_code == 200 and reply.mimetype == "text/csv"
    rows = list(csv.DictReader(io.StringIO(reply.get_data(as_text=True))))
    assert [(r["trunk"], r["recordings"], r["played"], r["audible"], r["outcome_refer_ok"]) for r in rows] == [
        ("10.0.0.5", "1", "1", "1", "1"), ("CT-7", "1", "1", "0", "0")]
    bad = client.get("/consent?from=2024-13-01")
    assert bad.status_code == 400 and "expected a date YYYY-MM-DD" in bad.get_data(as_text=True)
    assert client.get("/consent?outcome=maybe").status_code == 400
    assert client.get("/consent.csv?from=2024-05-02&to=2024-05-01").status_code == 400


@pytest.mark.parametrize("role", ["agent", "qa"])
def test_other_roles_may_not_see_it(client: FlaskClient, appliance: Appliance, role: str) -> None:
    login(client, appliance, role)
    assert client.get("/consent").status_code == 403
    assert client.get("/consent.csv").status_code == 403


def test_recordings_search_filters_on_consent(client: FlaskClient, appliance: Appliance) -> None:
    """The recordings page's consent filter (webadmin/recordings.py) sees what the sweep stored."""
    login(client, appliance, "auditor")
    for choice, expected in (("audible", {"leg"}), ("played", {"leg", "agent"}), ("not_played", {"stranger"})):
        html = client.get(f"/recordings?consent={choice}").get_data(as_text=True)
        shown = {rid for rid in ("leg", "agent", "stranger") if f"/recordings/{rid}\"" in html}
        assert shown == expected, choice

