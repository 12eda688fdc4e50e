"""Consent in the catalog: announcement events, their links to recordings, detection results.

Tables (storage/migrations.py, migration 6):

* ``consent_announcements`` — one row per call the announcer handled (append-only): who called
  whom, which prompt by which rule, how much of it was played, how the call was handed back
  and the ``outcome`` (see :data:`OUTCOMES`).
* ``consent_checks`` — one row per finished recording the consent sweep looked at: whether a
  prompt is audible in it (normalised cross-correlation, capture/consent.py), where, which
  prompt, and the call's trunk (for the per-trunk report).
* ``consent_links`` — recording → the announcement its caller heard (at most one per recording;
  an announcement may be linked to several recordings: the leg that carried the prompt, the
  call to the agent that followed).
* ``consent_cursor`` — how far the sweep has linked new announcements.

The recording's own columns ``consent_played`` and ``consent_audible`` (searched by the console)
and its metadata's ``consent`` object are kept in step with these tables.

Linking (``LinkPolicy``): an announcement A and a recording R belong together when
1. they are the same SIP dialog (same Call-ID: R is the recording of the announcer's leg), or
2. ``header`` is set: R's copy of that header (capture.extra_headers) equals the value A saw
   (the PBX copies a reference into both INVITEs), or
3. otherwise: the callers' numbers agree (equal, or equal in the last ``match_digits`` digits:
   PBXs add or strip prefixes), and R started within [A's INVITE − before_s, A's end + after_s]
   (the customer's leg began before the announcement, the call to the agent follows it).
The earliest rule that finds a candidate wins; among candidates the nearest in time.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timedelta, tzinfo
from typing import Any

import apsw

from storage.audit import AuditLog
from storage.catalog import Catalog, time_id

OUTCOMES = (
    "played",                # prompt played to the end, then hung up (handoff = hangup)
    "refer_ok",              # prompt played, REFER accepted and the transfer succeeded (NOTIFY 2xx)
    "refer_rejected",        # prompt played, the REFER itself was refused (non-2xx response)
    "refer_failed",          # prompt played, REFER accepted, the transfer failed (NOTIFY non-2xx)
    "refer_timeout",         # prompt played, no final NOTIFY within consent.refer_timeout_s
    "no_target",             # prompt played, no REFER target could be derived from the INVITE
    "hangup_during_prompt",  # the caller hung up before the prompt ended
    "unknown_prompt",        # the rules chose a prompt that has no file: call refused
    "codec_mismatch",        # the offer had none of the configured codecs: 488
    "rejected",              # refused before answering for another reason (too many calls, bad SDP)
    "error",                 # media could not be set up or the prompt not played
)
PROMPT_COMPLETE_OUTCOMES = frozenset({"played", "refer_ok", "refer_rejected", "refer_failed", "refer_timeout",
                                      "no_target"})
LINK_RULES = ("call_id", "header", "caller_window")
MAX_ANNOUNCEMENT_S = 3600.0   # no announcer call lasts longer (bounds the linking queries)
LINK_BATCH = 500
REPORT_DEFAULT_DAYS = 30


@dataclass(slots=True)
class Announcement:
    call_id: str
    caller: str
    called: str
    invited_at: float
    ended_at: float
    outcome: str
    caller_uri: str = ""
    called_uri: str = ""
    trunk: str | None = None
    language: str | None = None
    correlation: str | None = None
    prompt: str | None = None
    rule: str | None = None
    codec: str | None = None
    answered_at: float | None = None
    prompt_started_at: float | None = None
    prompt_played_s: float = 0.0
    prompt_complete: bool = False
    handoff: str | None = None
    refer_target: str | None = None
    refer_status: int | None = None
    detail: str = ""
    id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_ANNOUNCEMENT_COLUMNS = tuple(f.name for f in fields(Announcement) if f.name != "id")


def _fetch(conn: apsw.Connection, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Rows of a query, typed loosely (apsw's own row type is a union of SQLite's types)."""
    rows: list[tuple[Any, ...]] = conn.execute(sql, tuple(params)).fetchall()
    return rows


def _announcement(row: Sequence[Any]) -> Announcement:
    values = dict(zip(("id", *_ANNOUNCEMENT_COLUMNS), row, strict=True))
    values["prompt_complete"] = bool(values["prompt_complete"])
    return Announcement(**values)


_SELECT_ANNOUNCEMENTS = f"SELECT id, {', '.join(_ANNOUNCEMENT_COLUMNS)} FROM consent_announcements"  # nosec B608  # column names from the _ANNOUNCEMENT_COLUMNS constant


@dataclass(frozen=True, slots=True)
class LinkPolicy:
    before_s: float = 60.0
    after_s: float = 30.0
    header: str | None = None      # correlation header; None: caller number + time window
    match_digits: int = 8


@dataclass(frozen=True, slots=True)
class RecordingFacts:
    recording_id: str
    call_id: str
    caller: str | None
    started_at: float
    headers: dict[str, str]


def digits(number: str | None) -> str:
    return re.sub(r"\D", "", number or "")


def numbers_match(a: str | None, b: str | None, match_digits: int) -> bool:
    """Same number, or the same last ``match_digits`` digits (national vs international form)."""
    da, db = digits(a), digits(b)
    if not da or not db:
        return False
    if da == db:
        return True
    return len(da) >= match_digits and len(db) >= match_digits and da[-match_digits:] == db[-match_digits:]


def header_value(headers: dict[str, str], name: str) -> str | None:
    """A header by case-insensitive name (RFC 3261 §7.3.1)."""
    wanted = name.lower()
    return next((str(v) for k, v in headers.items() if k.lower() == wanted and v is not None), None)


def _distance(announcement: Announcement, started_at: float) -> float:
    """0 when the recording began during the announcement, else how far outside it."""
    if started_at < announcement.invited_at:
        return announcement.invited_at - started_at
    return max(0.0, started_at - announcement.ended_at)


def pick_announcement(recording: RecordingFacts, candidates: Iterable[Announcement],
                      policy: LinkPolicy) -> tuple[Announcement, str] | None:
    """The announcement ``recording`` belongs to and the rule that said so (module docstring)."""
    pool = list(candidates)
    same_dialog = [a for a in pool if a.call_id == recording.call_id]
    if same_dialog:
        return min(same_dialog, key=lambda a: _distance(a, recording.started_at)), "call_id"
    in_window = [a for a in pool
                 if a.invited_at - policy.before_s <= recording.started_at <= a.ended_at + policy.after_s]
    if policy.header is not None:
        wanted = header_value(recording.headers, policy.header)
        found = [a for a in in_window if wanted and a.correlation == wanted]
        rule = "header"
    else:
        found = [a for a in in_window if numbers_match(a.caller, recording.caller, policy.match_digits)]
        rule = "caller_window"
    if not found:
        return None
    return min(found, key=lambda a: (_distance(a, recording.started_at), -(a.id or 0))), rule


def consent_summary(played: bool | None, detection: dict[str, Any] | None,
                    announcement: Announcement | None, rule: str | None) -> dict[str, Any]:
    """The ``consent`` object of a recording's metadata (played/audible/offset_s first: the
    recording contract in DESIGN.md)."""
    detection = detection or {}
    return {
        "played": played,
        "audible": detection.get("audible"),
        "offset_s": detection.get("offset_s"),
        "channel": detection.get("channel"),
        "prompt": detection.get("prompt"),
        "score": detection.get("score"),
        "note": detection.get("note", ""),
        "announcement": None if announcement is None else {
            "id": announcement.id, "call_id": announcement.call_id, "outcome": announcement.outcome,
            "prompt": announcement.prompt, "rule": announcement.rule,
            "prompt_played_s": announcement.prompt_played_s, "link": rule},
    }


# -- writing -----------------------------------------------------------------------------------


def add_announcement(catalog: Catalog, announcement: Announcement, audit: AuditLog | None = None,
                     actor: str = "recorderd-consent") -> int:
    """Catalogue one announcement (and an audit entry, so the proof of consent sits in the
    signed hash chain too); returns its id."""
    if announcement.outcome not in OUTCOMES:
        raise ValueError(f"unknown consent outcome {announcement.outcome!r} (known: {', '.join(OUTCOMES)})")
    values = [getattr(announcement, c) for c in _ANNOUNCEMENT_COLUMNS]
    values[_ANNOUNCEMENT_COLUMNS.index("prompt_complete")] = int(announcement.prompt_complete)

    def job(conn: apsw.Connection) -> int:
        conn.execute(f"INSERT INTO consent_announcements ({', '.join(_ANNOUNCEMENT_COLUMNS)}) "  # nosec B608  # column names from the _ANNOUNCEMENT_COLUMNS constant; every value is a ? parameter
                     f"VALUES ({', '.join('?' * len(_ANNOUNCEMENT_COLUMNS))})", values)
        return int(conn.last_insert_rowid())

    new_id = catalog.writer.call(job)
    announcement.id = new_id
    if audit is not None:
        audit.append(actor, "system", "consent_announce", announcement.call_id, announcement.outcome,
                     reason=announcement.detail,
                     detail={"announcement": new_id, "prompt": announcement.prompt,
                             "prompt_played_s": announcement.prompt_played_s, "refer_target": announcement.refer_target})
    return new_id


def _recording_facts(conn: apsw.Connection, recording_id: str) -> tuple[RecordingFacts, str] | None:
    found = _fetch(conn, "SELECT call_id, caller, started_at, json_extract(metadata, '$.sip_headers'), state "
                         "FROM recordings WHERE recording_id = ?", (recording_id,))
    if not found:
        return None
    call_id, caller, started_at, headers, state = found[0]
    return RecordingFacts(recording_id, call_id, caller, started_at, json.loads(headers or "{}") or {}), state


def _candidates(conn: apsw.Connection, facts: RecordingFacts, policy: LinkPolicy) -> list[Announcement]:
    by_dialog = _fetch(conn, f"{_SELECT_ANNOUNCEMENTS} WHERE call_id = ?", (facts.call_id,))
    s = facts.started_at
    nearby = _fetch(conn, f"{_SELECT_ANNOUNCEMENTS} WHERE ended_at >= ? AND ended_at <= ? AND invited_at <= ?",
                          (s - policy.after_s, s + policy.before_s + MAX_ANNOUNCEMENT_S, s + policy.before_s)
                          )
    unique = {row[0]: row for row in [*by_dialog, *nearby]}
    return [_announcement(row) for row in unique.values()]


def _set_consent(conn: apsw.Connection, recording_id: str, now: float, *, played: bool | None,
                 detection: dict[str, Any] | None, announcement: Announcement | None, rule: str | None) -> None:
    summary = consent_summary(played, detection, announcement, rule)
    conn.execute("UPDATE recordings SET consent_played = ?, consent_audible = ?, "
                 "metadata = json_set(metadata, '$.consent', json(?)), updated_at = ? WHERE recording_id = ?",
                 (None if played is None else int(played),
                  None if summary["audible"] is None else int(summary["audible"]),
                  json.dumps(summary, ensure_ascii=False), now, recording_id))


@dataclass(frozen=True, slots=True)
class CheckResult:
    recording_id: str
    played: bool | None
    audible: bool | None
    announcement_id: int | None
    link: str | None


def record_check(catalog: Catalog, recording_id: str, detection: dict[str, Any], policy: LinkPolicy, *,
                 trunk_header: str, audit: AuditLog | None = None, actor: str = "recorderd",
                 clock: Callable[[], float] = time.time) -> CheckResult | None:
    """Store what the sweep found in one finished recording, link it to its announcement,
    and update the recording's consent columns and metadata — one transaction. ``detection``
    is capture.consent.ConsentDetection.to_dict() (plus an optional ``note``); its
    ``audible`` may be None when the audio could not be read. None if the recording is gone."""
    now = clock()

    def job(conn: apsw.Connection) -> CheckResult | None:
        found = _recording_facts(conn, recording_id)
        if found is None:
            return None
        facts, _ = found
        picked = pick_announcement(facts, _candidates(conn, facts, policy), policy)
        announcement, rule = picked if picked else (None, None)
        trunk = header_value(facts.headers, trunk_header) or (announcement.trunk if announcement else None)
        audible = detection.get("audible")
        conn.execute("INSERT OR REPLACE INTO consent_checks (recording_id, checked_at, audible, score, offset_s, "
                     "channel, prompt, trunk, note) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     (recording_id, now, None if audible is None else int(audible), detection.get("score"),
                      detection.get("offset_s"), detection.get("channel"), detection.get("prompt"), trunk,
                      detection.get("note", "")))
        if announcement is not None:
            conn.execute("INSERT OR REPLACE INTO consent_links (recording_id, announcement_id, rule, linked_at) "
                         "VALUES (?, ?, ?, ?)", (recording_id, announcement.id, rule, now))
        played = announcement.prompt_complete if announcement is not None else False
        _set_consent(conn, recording_id, now, played=played, detection=detection,
                     announcement=announcement, rule=rule)
        return CheckResult(recording_id, played, audible, announcement.id if announcement else None, rule)

    result = catalog.writer.call(job)
    if result is not None and audit is not None:
        audit.append(actor, "system", "consent_check", recording_id, "ok",
                     detail={"played": result.played, "audible": result.audible,
                             "announcement": result.announcement_id, "link": result.link,
                             "offset_s": detection.get("offset_s"), "score": detection.get("score")})
    return result


def link_new_announcements(catalog: Catalog, policy: LinkPolicy, *, audit: AuditLog | None = None,
                           actor: str = "recorderd", clock: Callable[[], float] = time.time) -> list[tuple[str, int]]:
    """Announcements catalogued since the last call, linked to recordings that were checked
    before they arrived (the usual race: the announcer writes its event when its call ends,
    about when the recording of that leg is finished). Returns (recording, announcement) pairs."""
    now = clock()

    def job(conn: apsw.Connection) -> list[tuple[str, int]]:
        cursor_rows = _fetch(conn, "SELECT value FROM consent_cursor WHERE name = 'announcements'")
        cursor = int(cursor_rows[0][0]) if cursor_rows else 0
        fresh = [_announcement(r) for r in _fetch(
            conn, f"{_SELECT_ANNOUNCEMENTS} WHERE id > ? ORDER BY id LIMIT ?", (cursor, LINK_BATCH))]
        linked: list[tuple[str, int]] = []
        for announcement in fresh:
            linked += _link_checked_recordings(conn, announcement, policy, now)
        if fresh:
            conn.execute("INSERT INTO consent_cursor (name, value) VALUES ('announcements', ?) "
                         "ON CONFLICT(name) DO UPDATE SET value = excluded.value", (fresh[-1].id,))
        return linked

    linked = catalog.writer.call(job)
    if audit is not None:
        for recording_id, announcement_id in linked:
            audit.append(actor, "system", "consent_link", recording_id, "ok", detail={"announcement": announcement_id})
    return linked


def _link_checked_recordings(conn: apsw.Connection, announcement: Announcement, policy: LinkPolicy,
                             now: float) -> list[tuple[str, int]]:
    lo = time_id(announcement.invited_at - policy.before_s)
    hi = time_id(announcement.ended_at + policy.after_s)
    rows = _fetch(
        conn, "SELECT r.recording_id FROM recordings r JOIN consent_checks c ON c.recording_id = r.recording_id "
        "WHERE (r.call_id = ? OR r.id BETWEEN ? AND ?) "
        "AND NOT EXISTS (SELECT 1 FROM consent_links l WHERE l.recording_id = r.recording_id)",
        (announcement.call_id, lo, hi))
    linked = []
    for (recording_id,) in rows:
        found = _recording_facts(conn, recording_id)
        if found is None:
            continue
        facts, _ = found
        picked = pick_announcement(facts, [announcement], policy)
        if picked is None:
            continue
        _, rule = picked
        conn.execute("INSERT INTO consent_links (recording_id, announcement_id, rule, linked_at) VALUES (?, ?, ?, ?)",
                     (recording_id, announcement.id, rule, now))
        conn.execute("UPDATE consent_checks SET trunk = coalesce(trunk, ?) WHERE recording_id = ?",
                     (announcement.trunk, recording_id))
        detection = json.loads(_fetch(conn, "SELECT json_extract(metadata, '$.consent') FROM recordings "
                                      "WHERE recording_id = ?", (recording_id,))[0][0] or "{}")
        _set_consent(conn, recording_id, now, played=announcement.prompt_complete, detection=detection,
                     announcement=announcement, rule=rule)
        linked.append((recording_id, int(announcement.id or 0)))
    return linked


# -- reading -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PendingRecording:
    recording_id: str
    vault_path: str | None
    sample_rate: int | None


def pending_checks(conn: apsw.Connection, limit: int = 50) -> list[PendingRecording]:
    """Finished recordings the sweep has not looked at yet, oldest first. The partial index
    ``recordings_consent_unchecked`` holds only rows whose consent_audible is unknown, so this
    stays cheap at millions of recordings."""
    rows = _fetch(
        conn, "SELECT r.recording_id, r.vault_path, r.sample_rate FROM recordings r "
        "WHERE r.consent_audible IS NULL AND r.state IN ('complete', 'partial') "
        "AND NOT EXISTS (SELECT 1 FROM consent_checks c WHERE c.recording_id = r.recording_id) "
        "ORDER BY r.id LIMIT ?", (limit,))
    return [PendingRecording(*row) for row in rows]


def list_announcements(conn: apsw.Connection, *, since: float | None = None, until: float | None = None,
                       outcome: str | None = None, limit: int = 100) -> list[Announcement]:
    """Newest first."""
    clauses, params = [], []
    for clause, value in (("invited_at >= ?", since), ("invited_at < ?", until), ("outcome = ?", outcome)):
        if value is not None:
            clauses.append(clause)
            params.append(value)
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    rows = _fetch(conn, f"{_SELECT_ANNOUNCEMENTS}{where} ORDER BY id DESC LIMIT ?", (*params, limit))
    return [_announcement(r) for r in rows]


def announcement_of(conn: apsw.Connection, recording_id: str) -> tuple[Announcement, str] | None:
    """The announcement linked to a recording and the rule that linked it."""
    columns = ", ".join(f"a.{c}" for c in ("id", *_ANNOUNCEMENT_COLUMNS))
    rows = _fetch(conn, f"SELECT l.rule, {columns} FROM consent_links l JOIN consent_announcements a "  # nosec B608  # column names from the _ANNOUNCEMENT_COLUMNS constant; every value is a ? parameter
                        f"ON a.id = l.announcement_id WHERE l.recording_id = ?", (recording_id,))
    if not rows:
        return None
    return _announcement(rows[0][1:]), str(rows[0][0])


@dataclass(slots=True)
class ReportRow:
    """One day and trunk: how many recordings, how many with the prompt played / audible."""

    day: str
    trunk: str
    recordings: int = 0
    played: int = 0
    audible: int = 0
    unchecked: int = 0
    announcements: int = 0
    outcomes: dict[str, int] | None = None

    @property
    def played_rate(self) -> float | None:
        return round(self.played / self.recordings, 4) if self.recordings else None

    @property
    def audible_rate(self) -> float | None:
        return round(self.audible / self.recordings, 4) if self.recordings else None

    def to_dict(self) -> dict[str, Any]:
        return {"day": self.day, "trunk": self.trunk, "recordings": self.recordings, "played": self.played,
                "audible": self.audible, "unchecked": self.unchecked, "played_rate": self.played_rate,
                "audible_rate": self.audible_rate, "announcements": self.announcements,
                "outcomes": dict(self.outcomes or {})}


def _day(value: str | None, default: datetime, name: str) -> datetime:
    if not value:
        return default
    try:
        return datetime.strptime(value, "%Y-%m-%d")
    except ValueError as err:
        raise ValueError(f"{name}: expected a date YYYY-MM-DD, got {value!r}") from err


def report_window(date_from: str | None, date_to: str | None, tz: tzinfo | None,
                  now: float) -> tuple[float, float, float]:
    """(start, end, UTC offset) in epoch seconds for the whole days ``date_from`` ..
    ``date_to`` (inclusive, YYYY-MM-DD) in time zone ``tz`` (None: the system's local time);
    by default the last 30 days up to today. ValueError names a bad date."""
    current = datetime.fromtimestamp(now, tz) if tz is not None else datetime.fromtimestamp(now).astimezone()
    today = current.replace(hour=0, minute=0, second=0, microsecond=0, tzinfo=None)
    first = _day(date_from, today - timedelta(days=REPORT_DEFAULT_DAYS - 1), "from")
    last = _day(date_to, today, "to")
    if last < first:
        raise ValueError(f"to ({last:%Y-%m-%d}) is before from ({first:%Y-%m-%d})")

    def epoch(day: datetime) -> float:
        return day.replace(tzinfo=tz).timestamp() if tz is not None else day.timestamp()

    offset = current.utcoffset()
    return epoch(first), epoch(last + timedelta(days=1)), offset.total_seconds() if offset else 0.0


def consent_report(conn: apsw.Connection, date_from: float, date_to: float, *,
                   utc_offset_s: float = 0.0) -> list[ReportRow]:
    """Consent rates per day and trunk for recordings started in [date_from, date_to) and the
    announcer's outcomes for the same days. Days are cut at midnight ``utc_offset_s`` from UTC
    (one offset for the whole range: around a daylight-saving change a day may be cut an hour
    off). A recording's trunk is the configured trunk header's value, else its announcement's."""
    rows: dict[tuple[str, str], ReportRow] = {}
    recordings = _fetch(
        conn, "SELECT date(r.started_at + ?, 'unixepoch') AS day, coalesce(c.trunk, 'unknown') AS trunk, count(*), "
        "coalesce(sum(r.consent_played = 1), 0), coalesce(sum(r.consent_audible = 1), 0), "
        "coalesce(sum(c.recording_id IS NULL), 0) "
        "FROM recordings r LEFT JOIN consent_checks c ON c.recording_id = r.recording_id "
        "WHERE r.id >= ? AND r.id < ? AND r.state != 'active' GROUP BY day, trunk",
        (utc_offset_s, time_id(date_from), time_id(date_to)))
    for day, trunk, total, played, audible, unchecked in recordings:
        rows[(day, trunk)] = ReportRow(day, trunk, total, played, audible, unchecked, 0, {})
    announced = _fetch(
        conn, "SELECT date(invited_at + ?, 'unixepoch') AS day, coalesce(trunk, 'unknown'), outcome, count(*) "
        "FROM consent_announcements WHERE invited_at >= ? AND invited_at < ? GROUP BY 1, 2, 3",
        (utc_offset_s, date_from, date_to))
    for day, trunk, outcome, count in announced:
        row = rows.setdefault((day, trunk), ReportRow(day, trunk, outcomes={}))
        row.announcements += count
        assert row.outcomes is not None
        row.outcomes[outcome] = count
    return [rows[key] for key in sorted(rows)]
