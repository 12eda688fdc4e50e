"""Compliance reports (qa, auditor, admin) and the transcript under the player.

``/reports``: a date range by day or ISO week, for all calls, per agent or per team — calls,
sensitive phrase hits, missing required phrases, risk, consent rate, recording completeness
rate, calls not recorded, QA scores; the QA score ranking, the top phrases and topics. Charts
are SVG drawn here (webadmin/svgchart.py). ``/reports/export.csv`` gives any of its tables as
CSV. Figures come from analysis/reports.py.

``/analysis/recordings/<id>/transcript``: the recording's transcript segments (per channel,
with times), phrase hits and call metrics as JSON, for whoever may see the recording
(webadmin/access.py); static/js/transcript.js renders it under the player with click-to-seek.
"""

from __future__ import annotations

import csv
import io
import time
from datetime import UTC, date, datetime, timedelta
from typing import Any

from flask import Blueprint, Response, jsonify, render_template, request
from flask.typing import ResponseReturnValue

from analysis import store
from analysis.reports import GROUPS, PERIODS, Report, ReportQuery, build_report, default_range
from analysis.rules import team_map
from webadmin import playback
from webadmin.access import recording_visible, request_reader
from webadmin.authz import audit_event, current_user, define_action, deny, register_nav, requires
from webadmin.context import current_context
from webadmin.svgchart import bar_chart, hbar_chart

bp = Blueprint("reports", __name__)

VIEW = define_action("reports.view", {"qa", "auditor", "admin"}, "see the compliance reports")
EXPORT = define_action("reports.export", {"qa", "auditor", "admin"}, "download a compliance report table as CSV")
TRANSCRIPT = define_action("analysis.transcript", {"agent", "qa", "auditor", "admin"},
                           "read a recording's transcript, phrase hits and talk metrics")
register_nav("Reports", "reports.index", VIEW, order=60)

MAX_DAYS = 366
TABLES = ("periods", "ranking", "phrases", "topics")


class ReportError(ValueError):
    """A bad filter; the message is shown on the page."""


def _day(name: str, fallback: float) -> date:
    text = request.args.get(name, "").strip()
    if not text:
        return datetime.fromtimestamp(fallback, UTC).date()
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ReportError(f"{name}: a date as YYYY-MM-DD, not {text!r}") from None


def _query() -> ReportQuery:
    low, high = default_range()
    first, last = _day("from", low), _day("to", high - 86400)
    if not timedelta(0) <= last - first < timedelta(days=MAX_DAYS):
        raise ReportError(f"the range must be 1 to {MAX_DAYS} days, first day first")
    start = datetime(first.year, first.month, first.day, tzinfo=UTC).timestamp()
    end = datetime(last.year, last.month, last.day, tzinfo=UTC).timestamp() + 86400
    period, group = request.args.get("period", "day"), request.args.get("group", "all")
    try:
        return ReportQuery(start, end, period, group)
    except ValueError as err:
        raise ReportError(str(err)) from None


def _report(query: ReportQuery) -> Report:
    teams = team_map(current_context().config["analysis"]["teams"])
    return build_report(request_reader().conn, query, teams)


def _percent(value: float) -> str:
    return f"{value:.0f}%"


def _charts(report: Report) -> dict[str, Any]:
    periods = sorted({row.period for row in report.rows})
    by_period: dict[str, list[Any]] = {p: [r for r in report.rows if r.period == p] for p in periods}

    def total(period: str, name: str) -> float:
        return float(sum(getattr(r, name) for r in by_period[period]))

    def rate(period: str, part: str) -> float:
        calls = total(period, "calls")
        return 100.0 * total(period, part) / calls if calls else 0.0

    return {
        "hits": bar_chart("chart-hits", "Sensitive phrase hits and calls missing a required phrase", periods,
                          [("sensitive hits", [total(p, "sensitive_hits") for p in periods]),
                           ("calls missing a required phrase", [total(p, "calls_missing_required") for p in periods])]),
        "rates": bar_chart("chart-rates", "Consent and recording completeness rates", periods,
                           [("consent played", [rate(p, "consent_played") for p in periods]),
                            ("recorded complete", [rate(p, "complete") for p in periods])], y_max=100.0, fmt=_percent),
        "ranking": hbar_chart("chart-ranking", "QA score ranking (mean % of the rubric)",
                              [(r["name"], r["mean_percent"]) for r in report.ranking[:20]], x_max=100.0, fmt=_percent),
        "phrases": hbar_chart("chart-phrases", "Top sensitive and required phrases (hits)",
                              [(f"{p['phrase']} ({p['rule_id']})", float(p["hits"])) for p in report.phrases[:10]]),
        "topics": hbar_chart("chart-topics", "Top topics (hits)",
                             [(f"{t['phrase']} ({t['rule_id']})", float(t["hits"])) for t in report.topics[:10]]),
    }


@bp.get("/reports")
@requires(VIEW)
def index() -> ResponseReturnValue:
    try:
        query = _query()
    except ReportError as err:
        audit_event(VIEW, "reports", "failed", reason=str(err))
        return render_template("reports/index.html", error=str(err), report=None, args=request.args,
                               periods=PERIODS, groups=GROUPS), 400
    report = _report(query)
    audit_event(VIEW, "reports", detail={"from": query.date_from, "to": query.date_to, "period": query.period,
                                         "group": query.group})
    return render_template("reports/index.html", error=None, report=report, totals=report.totals(),
                           charts=_charts(report), args=request.args, periods=PERIODS, groups=GROUPS,
                           first=datetime.fromtimestamp(query.date_from, UTC).date().isoformat(),
                           last=datetime.fromtimestamp(query.date_to - 86400, UTC).date().isoformat())


def _table(report: Report, table: str) -> tuple[list[str], list[list[Any]]]:
    if table == "periods":
        rows = [r.to_dict() for r in report.rows]
        header = list(rows[0]) if rows else list(report.totals().to_dict())
        return header, [[row[h] for h in header] for row in rows]
    if table == "ranking":
        return ["name", "scores", "mean_percent"], [[r["name"], r["scores"], r["mean_percent"]] for r in report.ranking]
    items = report.phrases if table == "phrases" else report.topics
    return ["kind", "rule_id", "phrase", "hits", "calls"], [[i["kind"], i["rule_id"], i["phrase"], i["hits"], i["calls"]]
                                                            for i in items]


def _csv_cell(value: Any) -> Any:
    """Cells a spreadsheet would run as a formula are quoted (CSV injection)."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return "" if value is None else value


@bp.get("/reports/export.csv")
@requires(EXPORT)
def export_csv() -> ResponseReturnValue:
    table = request.args.get("table", "periods")
    try:
        if table not in TABLES:
            raise ReportError(f"table: one of {', '.join(TABLES)}")
        query = _query()
    except ReportError as err:
        audit_event(EXPORT, "reports", "failed", reason=str(err))
        return Response(f"{err}\n", status=400, mimetype="text/plain")
    header, rows = _table(_report(query), table)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")     # RFC 4180
    writer.writerow(header)
    writer.writerows([[_csv_cell(v) for v in row] for row in rows])
    audit_event(EXPORT, f"reports:{table}", detail={"from": query.date_from, "to": query.date_to,
                                                    "period": query.period, "group": query.group, "rows": len(rows)})
    name = f"recorderd-{table}-{query.period}-{query.group}.csv"
    return Response(out.getvalue(), mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})


@bp.get("/analysis/recordings/<recording_id>/transcript")
@requires(TRANSCRIPT)
def transcript(recording_id: str) -> ResponseReturnValue:
    """What was said is as sensitive as the audio: the same playback grant (the audited reason
    for access, ``?grant=SEQ``, webadmin/playback.py) is required."""
    user = current_user()
    if not recording_visible(user, recording_id):
        deny(recording_id, "not a recording this user may see")
    seq = playback.parse_grant(request.args.get("grant"))
    entry = playback.grant_entry(request_reader(), seq) if seq is not None else None
    lifetime_s = current_context().config["recordings"]["grant_minutes"] * 60.0
    problem = playback.valid_grant(entry, user, recording_id, lifetime_s, time.time())
    if problem:
        deny(recording_id, f"transcript without a valid playback grant: {problem}")
    view = store.transcript_view(request_reader().conn, recording_id)
    audit_event(TRANSCRIPT, recording_id, reason=entry.reason if entry else "",
                detail={"grant": seq, "segments": len(view.segments), "hits": len(view.hits)})
    return jsonify(view.to_dict())
