"""Issue 9, must show 4: the reports page renders in headless Chromium (against `recorderd web`)
with its SVG charts, no CSP violations; its CSV export; the transcript JSON under the player
needs the playback grant; the reports' figures match what was analysed."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from analysis.rules import load_rules
from analysis.transcribe import ChannelTranscript, TextSegment
from analysis.worker import AnalysisSettings, AnalysisWorker
from tests.webadmin.conftest import (
    browser_login,
    console_errors,
    make_user,
    screenshot,
    wait_for_js,
    web_server,
)
from tests.webadmin.recordings_helpers import (
    SmallAppliance,
    grant_for,
    logged_in,
    player_chromium,
    small_appliance,
)

DAY = "2026-02-02"          # the calls below start at 1_770_000_000 = 2026-02-02T02:40Z
SAYS = {"agent": "Hello, this call is recorded. We offer a guaranteed return on this fund.",
        "customer": "I want to make a complaint about the annual fee."}


class ScriptedTranscriber:
    """Stands in for Whisper here (tests/analysis/test_transcription.py runs the real one)."""

    name = "scripted"

    def __init__(self) -> None:
        self.channel = 0

    def transcribe(self, audio: np.ndarray, pause: Any = None) -> ChannelTranscript:
        role = "customer" if self.channel % 2 == 0 else "agent"     # inbound: channel 0 is the customer
        self.channel += 1
        return ChannelTranscript("en", None, (TextSegment(0.2, 1.6, SAYS[role], 0.9),))


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmallAppliance]:
    calls: list[Any] = [("+8613800138000", "7001", 2.0), ("+8613800138001", "7002", 2.0), ("+8613800138002", "7001", 2.0)]
    with small_appliance(tmp_path_factory.mktemp("reports"), calls) as made:
        app = made.appliance
        AnalysisWorker(app.catalog, app.keys, app.vault_dir, app.audit, AnalysisSettings(cpu_budget_percent=100.0),
                       load_rules("default"), ScriptedTranscriber).run(once=True)

        def scores(conn: Any) -> None:     # two QA scores: agent-7001 80 %, agent-7002 50 %
            for i, (rid, total) in enumerate([(made.recording_ids[0], 80.0), (made.recording_ids[1], 50.0)], 1):
                conn.execute("INSERT INTO qa_assignments (id, recording_id, reviewer, kind, method, assigned_by, "
                             "assigned_at, state) VALUES (?, ?, 'rev', 'review', 'manual', 'adm', 1770000000, 'scored')",
                             (i, rid))
                conn.execute("INSERT INTO qa_scores (assignment_id, recording_id, reviewer, rubric, points, total, "
                             "max_total, scored_at) VALUES (?, ?, 'rev', '[]', '{}', ?, 100, 1770003600)", (i, rid, total))
        app.catalog.writer.call(scores)
        yield made


@pytest.fixture(scope="module")
def server(box: SmallAppliance, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with web_server(box.config_path, tmp_path_factory.mktemp("web-log"), 30.0) as url:
        yield url


def test_reports_page_renders_with_charts_in_the_browser(box: SmallAppliance, server: str, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    username, _secret = make_user(box.ctx, "auditor", totp=True)
    with player_chromium(tmp_path / "profile") as driver:
        browser_login(driver, server, box.ctx, username)
        assert driver.find_element(By.LINK_TEXT, "Reports")       # in the navigation for an auditor
        driver.get(f"{server}/reports?from={DAY}&to={DAY}&group=agent")
        wait_for_js(driver, "document.getElementById('chart-hits')")
        bars = driver.execute_script(
            "return Array.from(document.querySelectorAll('svg.chart rect.bar')).map("
            "b => [b.closest('svg').id, b.dataset.label, Number(b.dataset.value), b.getBoundingClientRect().height])")
        charts = {chart for chart, *_ in bars}
        assert charts == {"chart-hits", "chart-rates", "chart-ranking", "chart-phrases", "chart-topics"}
        series = driver.execute_script(
            "return Array.from(document.querySelectorAll('#chart-hits rect.bar')).map("
            "b => [b.dataset.series, b.dataset.label, Number(b.dataset.value)])")
        # each call: one guaranteed-return promise; the recording notice was given (default line)
        assert series == [["sensitive hits", DAY, 3], ["calls missing a required phrase", DAY, 0]]
        ranking = [(label, value) for chart, label, value, _h in bars if chart == "chart-ranking"]
        assert ranking == [("agent-7001", 80.0), ("agent-7002", 50.0)]
        assert all(height > 0 for chart, _l, value, height in bars if value > 0)    # drawn, not just present
        assert driver.find_element(By.ID, "total-calls").text == "3"
        assert driver.find_element(By.ID, "total-complete").text == "100.0%"
        screenshot(driver, "analysis-reports")
        assert console_errors(driver) == []


def test_csv_export_and_figures(box: SmallAppliance) -> None:
    app = box.app()
    client, _user = logged_in(app, box.ctx, "qa")
    reply = client.get(f"/reports/export.csv?table=periods&from={DAY}&to={DAY}&group=agent")
    assert reply.status_code == 200 and reply.mimetype == "text/csv"
    rows = list(csv.DictReader(io.StringIO(reply.get_data(as_text=True))))
    assert {(r["group"], r["calls"], r["sensitive_hits"], r["mean_qa_percent"]) for r in rows} == {
        ("agent-7001", "2", "2", "80.0"), ("agent-7002", "1", "1", "50.0")}
    phrases = client.get(f"/reports/export.csv?table=topics&from={DAY}&to={DAY}").get_data(as_text=True)
    assert "topic-complaint" in phrases and "topic-fees" in phrases
    assert client.get("/reports?from=2026-02-05&to=2026-02-01").status_code == 400
    agent, _ = logged_in(app, box.ctx, "agent", "agent-7001")
    assert agent.get("/reports").status_code == 403


def test_transcript_json_needs_the_playback_grant(box: SmallAppliance) -> None:
    app = box.app()
    client, _user = logged_in(app, box.ctx, "auditor")
    rid = box.recording_ids[0]
    assert client.get(f"/analysis/recordings/{rid}/transcript").status_code == 403
    grant = grant_for(client, rid)
    page = client.get(f"/recordings/{rid}?grant={grant}").get_data(as_text=True)
    assert 'id="transcript"' in page and "js/transcript.js" in page
    data = client.get(f"/analysis/recordings/{rid}/transcript?grant={grant}").get_json()
    assert [(s["channel"], s["role"]) for s in data["segments"]] == [(0, "customer"), (1, "agent")]
    assert {h["rule_id"] for h in data["hits"]} >= {"guaranteed-return-en", "recording-notice", "topic-complaint"}
    assert data["analysis"]["missing_required"] == []          # default line: no disclosure required
    other, _ = logged_in(app, box.ctx, "agent", "agent-7002")
    assert other.get(f"/analysis/recordings/{rid}/transcript?grant={grant}").status_code == 403
