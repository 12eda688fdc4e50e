"""Compliance reports over a date range: per day or ISO week, for all calls, per agent or per
team (teams from the ``analysis.teams`` setting). Read on an apsw connection; the QA tables
(migration 3, storage/review.py) are read only when present.

Figures per period and group: calls, calls analysed, sensitive phrase hits (and calls with
one), calls missing a required phrase, mean risk, consent rate (recordings whose consent prompt
was played / recordings), recording completeness rate (recordings complete with at least 99 %
of the expected packets / recordings), calls seen but not recorded (period totals only: they
have no agent), mean QA score. Plus the QA score ranking and the most frequent phrases and
topics of the range.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import apsw

PERIODS = {"day": "%Y-%m-%d", "week": "%G-W%V"}
GROUPS = ("all", "agent", "team")
COMPLETE_RATIO = 0.99
NO_AGENT = "(no agent)"
NO_TEAM = "(no team)"


@dataclass(frozen=True, slots=True)
class ReportQuery:
    date_from: float
    date_to: float
    period: str = "day"
    group: str = "all"

    def __post_init__(self) -> None:
        if self.period not in PERIODS:
            raise ValueError(f"period: day or week, not {self.period!r}")
        if self.group not in GROUPS:
            raise ValueError(f"group: {', '.join(GROUPS)}, not {self.group!r}")
        if self.date_to <= self.date_from:
            raise ValueError("the range must end after it starts")


@dataclass
class PeriodRow:
    period: str
    group: str
    calls: int = 0
    analysed: int = 0
    sensitive_hits: int = 0
    calls_with_sensitive: int = 0
    calls_missing_required: int = 0
    risk_sum: float = 0.0
    consent_played: int = 0
    complete: int = 0
    not_recorded: int = 0
    qa_scores: int = 0
    qa_percent_sum: float = 0.0

    @property
    def mean_risk(self) -> float | None:
        return round(self.risk_sum / self.analysed, 1) if self.analysed else None

    @property
    def consent_rate(self) -> float | None:
        return round(self.consent_played / self.calls, 4) if self.calls else None

    @property
    def completeness_rate(self) -> float | None:
        return round(self.complete / self.calls, 4) if self.calls else None

    @property
    def mean_qa(self) -> float | None:
        return round(self.qa_percent_sum / self.qa_scores, 1) if self.qa_scores else None

    def to_dict(self) -> dict[str, Any]:
        return {"period": self.period, "group": self.group, "calls": self.calls, "analysed": self.analysed,
                "sensitive_hits": self.sensitive_hits, "calls_with_sensitive": self.calls_with_sensitive,
                "calls_missing_required": self.calls_missing_required, "mean_risk": self.mean_risk,
                "consent_rate": self.consent_rate, "completeness_rate": self.completeness_rate,
                "not_recorded": self.not_recorded, "qa_scores": self.qa_scores, "mean_qa_percent": self.mean_qa}


@dataclass
class Report:
    query: ReportQuery
    rows: list[PeriodRow] = field(default_factory=list)
    ranking: list[dict[str, Any]] = field(default_factory=list)      # QA score ranking
    phrases: list[dict[str, Any]] = field(default_factory=list)      # sensitive / required phrase hits
    topics: list[dict[str, Any]] = field(default_factory=list)
    qa_available: bool = True

    def totals(self) -> PeriodRow:
        total = PeriodRow("all", "all")
        for row in self.rows:
            for name in ("calls", "analysed", "sensitive_hits", "calls_with_sensitive", "calls_missing_required",
                         "consent_played", "complete", "not_recorded", "qa_scores"):
                setattr(total, name, getattr(total, name) + getattr(row, name))
            total.risk_sum += row.risk_sum
            total.qa_percent_sum += row.qa_percent_sum
        return total


def _q(conn: apsw.Connection, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = conn.execute(sql, params).fetchall()
    return rows


def _has_table(conn: apsw.Connection, name: str) -> bool:
    return bool(conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchall())


def build_report(conn: apsw.Connection, query: ReportQuery, teams: Mapping[str, str] | None = None) -> Report:
    """The report of ``query`` (one read transaction, so the figures agree with each other)."""
    teams = teams or {}
    fmt = PERIODS[query.period]
    bounds = (query.date_from, query.date_to)

    def group_of(agent: str | None) -> str:
        if query.group == "agent":
            return agent or NO_AGENT
        if query.group == "team":
            return teams.get(agent or "", NO_TEAM)
        return "all"

    report = Report(query)
    rows: dict[tuple[str, str], PeriodRow] = {}

    def row(period: str, agent: str | None) -> PeriodRow:
        key = (period, group_of(agent))
        if key not in rows:
            rows[key] = PeriodRow(*key)
        return rows[key]

    conn.execute("BEGIN")
    try:
        for period, agent, calls, played, complete in _q(
                conn, "SELECT strftime(?, r.started_at, 'unixepoch'), r.agent_id, count(*), "
                "sum(coalesce(r.consent_played, 0)), "
                "sum(r.state = 'complete' AND coalesce(r.completeness, 1.0) >= ?) "
                "FROM recordings r WHERE r.started_at >= ? AND r.started_at < ? AND r.state != 'active' "
                "GROUP BY 1, 2", (fmt, COMPLETE_RATIO, *bounds)):
            target = row(str(period), agent)
            target.calls += int(calls)
            target.consent_played += int(played or 0)
            target.complete += int(complete or 0)
        for period, agent, analysed, hits, with_hits, missing, risk in _q(
                conn, "SELECT strftime(?, r.started_at, 'unixepoch'), r.agent_id, count(*), sum(a.sensitive_hits), "
                "sum(a.sensitive_hits > 0), sum(a.missing_required != '[]'), sum(a.risk_score) "
                "FROM call_analysis a JOIN recordings r ON r.recording_id = a.recording_id "
                "WHERE r.started_at >= ? AND r.started_at < ? GROUP BY 1, 2", (fmt, *bounds)):
            target = row(str(period), agent)
            target.analysed += int(analysed)
            target.sensitive_hits += int(hits or 0)
            target.calls_with_sensitive += int(with_hits or 0)
            target.calls_missing_required += int(missing or 0)
            target.risk_sum += float(risk or 0.0)
        for period, count in _q(
                conn, "SELECT strftime(?, seen_at, 'unixepoch'), count(*) FROM not_recorded WHERE seen_at >= ? AND seen_at < ? "
                "GROUP BY 1", (fmt, *bounds)):
            row(str(period), None).not_recorded += int(count) if query.group == "all" else 0
        report.qa_available = _has_table(conn, "qa_scores")
        ranking: dict[str, list[float]] = defaultdict(list)
        if report.qa_available:
            for period, agent, percent in _q(
                    conn, "SELECT strftime(?, s.scored_at, 'unixepoch'), r.agent_id, 100.0 * s.total / s.max_total "
                    "FROM qa_scores s JOIN recordings r ON r.recording_id = s.recording_id "
                    "WHERE s.scored_at >= ? AND s.scored_at < ? AND s.max_total > 0", (fmt, *bounds)):
                target = row(str(period), agent)
                target.qa_scores += 1
                target.qa_percent_sum += float(percent)
                who = teams.get(agent or "", NO_TEAM) if query.group == "team" else (agent or NO_AGENT)
                ranking[who].append(float(percent))
        report.ranking = sorted(({"name": name, "scores": len(values), "mean_percent": round(sum(values) / len(values), 1)}
                                 for name, values in ranking.items()),
                                key=lambda r: (-r["mean_percent"], r["name"]))
        for kind, rule, phrase, hits, calls in _q(conn,
                "SELECT h.kind, h.rule_id, h.phrase, count(*), count(DISTINCT h.recording_id) FROM phrase_hits h "
                "JOIN recordings r ON r.recording_id = h.recording_id WHERE r.started_at >= ? AND r.started_at < ? "
                "GROUP BY h.kind, h.rule_id, h.phrase ORDER BY count(*) DESC, h.rule_id, h.phrase LIMIT 60",
                bounds):
            item = {"kind": kind, "rule_id": rule, "phrase": phrase, "hits": int(hits), "calls": int(calls)}
            (report.topics if kind == "topic" else report.phrases).append(item)
    finally:
        conn.execute("COMMIT")
    report.phrases, report.topics = report.phrases[:15], report.topics[:15]
    report.rows = sorted(rows.values(), key=lambda r: (r.period, r.group))
    return report


def default_range(now: float | None = None, days: int = 7) -> tuple[float, float]:
    """The last ``days`` whole UTC days up to and including today."""
    today = int((now if now is not None else time.time()) // 86400) * 86400
    return float(today - (days - 1) * 86400), float(today + 86400)
