"""The consent report (auditor, admin): per day and trunk, how many recorded calls had the
announcement played and audible in the recording, and what the announcer's calls ended as.

``/consent``: a date range (whole days in ``consent.timezone``, default the last 30 days),
the table per day and trunk with totals, and the announcer's latest events in the range
(filterable by outcome). ``/consent.csv``: the same table as CSV. Figures come from
storage/consent.py; the search filter "consent" of the recordings page uses the recordings'
own consent columns.
"""

from __future__ import annotations

import csv
import io
import time
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from flask import Blueprint, Response, render_template, request
from flask.typing import ResponseReturnValue

from storage.consent import OUTCOMES, ReportRow, consent_report, list_announcements, report_window
from storage.masking import mask_number, needs_masking
from webadmin.authz import audit_event, current_user, define_action, register_nav, requires
from webadmin.context import current_context

bp = Blueprint("consent", __name__)

VIEW = define_action("consent.report", {"auditor", "admin"},
                     "see the consent-rate report per day and trunk and the announcer's events")
EXPORT = define_action("consent.export", {"auditor", "admin"}, "download the consent report as CSV")
register_nav("Consent", "consent.report", VIEW, order=65)

EVENTS_SHOWN = 50
MAX_FIELD = 40
CSV_FIELDS = ("day", "trunk", "recordings", "played", "audible", "unchecked", "played_rate", "audible_rate",
              "announcements")


class FilterError(ValueError):
    pass


def _timezone(name: str) -> ZoneInfo | None:
    if name == "local":
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None   # recorderd refuses such a setting at start; the console falls back to local time


def _query() -> tuple[dict[str, str], float, float, float]:
    ctx = current_context()
    filters = {name: request.args.get(name, "")[:MAX_FIELD].strip() for name in ("from", "to", "outcome")}
    if filters["outcome"] and filters["outcome"] not in OUTCOMES:
        raise FilterError(f"outcome: {filters['outcome']!r} is not one of {', '.join(OUTCOMES)}")
    try:
        start, end, offset = report_window(filters["from"] or None, filters["to"] or None,
                                           _timezone(ctx.config["consent"]["timezone"]), time.time())
    except ValueError as err:
        raise FilterError(str(err)) from err
    return filters, start, end, offset


def _totals(rows: list[ReportRow]) -> ReportRow:
    total = ReportRow("all days", "all trunks", outcomes={})
    for row in rows:
        total.recordings += row.recordings
        total.played += row.played
        total.audible += row.audible
        total.unchecked += row.unchecked
        total.announcements += row.announcements
        for outcome, count in (row.outcomes or {}).items():
            assert total.outcomes is not None
            total.outcomes[outcome] = total.outcomes.get(outcome, 0) + count
    return total


@bp.get("/consent")
@requires(VIEW)
def report() -> ResponseReturnValue:
    ctx = current_context()
    error, rows, events = "", [], []
    try:
        filters, start, end, offset = _query()
    except FilterError as err:
        filters = {name: request.args.get(name, "")[:MAX_FIELD] for name in ("from", "to", "outcome")}
        error, start, end, offset = str(err), 0.0, 0.0, 0.0
    if not error:
        with ctx.catalog.reader() as reader:
            rows = consent_report(reader.conn, start, end, utc_offset_s=offset)
            events = list_announcements(reader.conn, since=start, until=end, outcome=filters["outcome"] or None,
                                        limit=EVENTS_SHOWN)
    user = current_user()
    shown: list[dict[str, Any]] = [e.to_dict() for e in events]
    if needs_masking(user.role):
        for event in shown:
            event["caller"], event["called"] = mask_number(event["caller"]), mask_number(event["called"])
    audit_event(VIEW, "consent", "failed" if error else "ok", error,
                {"from": start, "to": end, "rows": len(rows), "events": len(shown)})
    return render_template("consent/report.html", rows=rows, total=_totals(rows), events=shown, filters=filters,
                           outcomes=OUTCOMES, error=error, start=start, end=end), 400 if error else 200


@bp.get("/consent.csv")
@requires(EXPORT)
def export_csv() -> ResponseReturnValue:
    ctx = current_context()
    try:
        filters, start, end, offset = _query()
    except FilterError as err:
        audit_event(EXPORT, "consent", "failed", str(err))
        return Response(f"{err}\n", status=400, mimetype="text/plain")
    with ctx.catalog.reader() as reader:
        rows = consent_report(reader.conn, start, end, utc_offset_s=offset)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([*CSV_FIELDS, *(f"outcome_{o}" for o in OUTCOMES)])
    for row in rows:
        data = row.to_dict()
        writer.writerow([*(data[f] for f in CSV_FIELDS), *((row.outcomes or {}).get(o, 0) for o in OUTCOMES)])
    audit_event(EXPORT, "consent", "ok", detail={"from": start, "to": end, "rows": len(rows)})
    name = f"consent-{filters['from'] or 'last-30-days'}-{filters['to'] or 'today'}.csv"
    return Response(out.getvalue(), mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})
