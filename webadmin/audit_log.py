"""The audit log (auditor, admin): entries newest first with filters, and the chain's status.

Filters: actor (exact), action (exact, or a prefix ending in ``.``/``*`` such as ``auth.``),
object (exact, or a prefix ending in ``*``), outcome, a time range (UTC dates or ISO 8601 times);
pages of ``PAGE`` entries walk back by sequence number. The chain's verification status comes
from storage.audit.verify_chain (every hash and every signed checkpoint); it walks the whole log,
so its result is kept for ``VERIFY_EVERY_S`` and redone on demand.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, current_app, render_template, request
from flask.typing import ResponseReturnValue

from storage.audit import HASHED_FIELDS, AuditEntry, ChainReport, verify_chain
from storage.keys import verify_signature
from webadmin.authz import audit_event, define_action, register_nav, requires
from webadmin.context import ConsoleContext, current_context

bp = Blueprint("audit_log", __name__, url_prefix="/audit")

VIEW = define_action("audit.view", {"auditor", "admin"}, "read the audit log and its verification status")
register_nav("Audit log", "audit_log.index", VIEW, order=70)

PAGE = 100
VERIFY_EVERY_S = 60.0
OUTCOMES = ("ok", "denied", "failed", "expired")
MAX_FIELD = 200


@dataclass(frozen=True)
class Verification:
    report: ChainReport
    at: float
    seconds: float


_verify_lock = threading.Lock()


class FilterError(ValueError):
    pass


def _when(text: str, name: str) -> float | None:
    """A UTC date (2026-01-31) or ISO 8601 time; None when empty."""
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as err:
        raise FilterError(f"{name}: {text!r} is not a date (YYYY-MM-DD) or ISO 8601 time") from err
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def _prefix_clause(column: str, value: str) -> tuple[str, list[Any]]:
    """Exact match, or a prefix when the value ends in ``*`` (or ``.`` for actions)."""
    if value.endswith("*") or (column == "action" and value.endswith(".")):
        stem = value.rstrip("*")
        escaped = stem.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return f"{column} LIKE ? ESCAPE '\\'", [escaped + "%"]
    return f"{column} = ?", [value]


def query_entries(ctx: ConsoleContext, filters: dict[str, str], before: int | None,
                  limit: int = PAGE) -> list[AuditEntry]:
    clauses: list[str] = []
    params: list[Any] = []
    for column in ("actor", "action", "object"):
        if filters.get(column):
            clause, values = _prefix_clause(column, filters[column])
            clauses.append(clause)
            params += values
    if filters.get("outcome"):
        clauses.append("outcome = ?")
        params.append(filters["outcome"])
    since, until = _when(filters.get("since", ""), "from"), _when(filters.get("until", ""), "to")
    if since is not None:
        clauses.append("ts >= ?")
        params.append(since)
    if until is not None:
        clauses.append("ts < ?")
        params.append(until)
    if before is not None:
        clauses.append("seq < ?")
        params.append(before)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    with ctx.catalog.reader() as reader:
        rows: list[Any] = reader.conn.execute(f"SELECT {', '.join(HASHED_FIELDS)}, hash FROM audit {where} "  # nosec B608  # HASHED_FIELDS and fixed column/operator fragments; filter values are ? parameters
                                              f"ORDER BY seq DESC LIMIT ?", (*params, limit)).fetchall()
    return [AuditEntry(*row) for row in rows]


def chain_status(ctx: ConsoleContext, force: bool = False) -> Verification:
    """The chain's verification, at most VERIFY_EVERY_S old (one walk at a time)."""
    key = "recorderd.audit_verification"
    with _verify_lock:
        cached = current_app.extensions.get(key)
        if isinstance(cached, Verification) and not force and time.time() - cached.at < VERIFY_EVERY_S:
            return cached
        public = ctx.keys.signing_public_key()
        started = time.monotonic()
        with ctx.catalog.reader() as reader:
            report = verify_chain(reader, lambda data, sig: verify_signature(public, data, sig),
                                  checkpoint_every=ctx.config["audit"]["checkpoint_every"])
        result = Verification(report, time.time(), time.monotonic() - started)
        current_app.extensions[key] = result
        return result


@bp.get("")
@requires(VIEW)
def index() -> ResponseReturnValue:
    ctx = current_context()
    filters = {name: request.args.get(name, "")[:MAX_FIELD].strip()
               for name in ("actor", "action", "object", "outcome", "since", "until")}
    before_text = request.args.get("before", "")
    before = int(before_text) if before_text.isdigit() else None
    error = ""
    try:
        rows = query_entries(ctx, filters, before)
    except FilterError as err:
        rows, error = [], str(err)
    verification = chain_status(ctx, force=request.args.get("verify") == "1")
    audit_event(VIEW, "audit", "ok" if not error else "failed", error,
                {"filters": {k: v for k, v in filters.items() if v}, "before": before, "shown": len(rows),
                 "chain_ok": verification.report.ok})
    status = 400 if error else 200
    return render_template("audit_log/index.html", rows=rows, filters=filters, outcomes=OUTCOMES,
                           verification=verification, error=error, page=PAGE,
                           next_before=rows[-1].seq if len(rows) == PAGE else None), status
