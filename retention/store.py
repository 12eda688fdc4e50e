"""Retention's tables in the catalog: rules, legal holds, and the recordings as retention sees them.

The I/O edge of retention/: everything here reads or writes the catalog (tables in
storage/migrations.py, ``_V5_RETENTION``); the decisions are in retention/rules.py and
retention/plan.py. Every change is written together with its audit entry, in one transaction
on the catalog's writer thread (an audit entry appended from the writer thread joins the
current transaction), so there is never a change without its entry or an entry without its
change.

Legal holds follow the four-eyes rule: one admin requests the release (with a reason), another
approves it; the database refuses an approval by the requester (a CHECK constraint), and a
hold is never deleted.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import apsw

from capture.recording import iso_utc
from retention.plan import HeldSet, impact
from retention.rules import RetentionRecord, Rule, RuleError, RuleSet
from storage.audit import AuditLog
from storage.catalog import Catalog, CatalogReader, UnknownRecording

PAGE = 2000
SEARCH_PAGE = 500
# the filters a search hold may use: those of Catalog.search
HOLD_FILTERS = ("date_from", "date_to", "party", "agent_id", "direction", "tag", "min_duration", "max_duration")


class HoldError(ValueError):
    """A legal-hold operation that is not allowed (the message says why)."""


@dataclass(frozen=True, slots=True)
class Actor:
    """Who does something: a console user or the OS user of a command line, with a role."""

    name: str
    role: str = "admin"


# -- rules --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredRule:
    rule: Rule
    created_by: str
    created_at: float
    updated_by: str
    updated_at: float

    def to_dict(self) -> dict[str, Any]:
        return {**self.rule.to_dict(), "created_by": self.created_by, "created_at": iso_utc(self.created_at),
                "updated_by": self.updated_by, "updated_at": iso_utc(self.updated_at)}


def _conn_query(conn: apsw.Connection, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    return conn.execute(sql, params).fetchall()


def _rules_on(conn: apsw.Connection) -> list[StoredRule]:
    found = []
    for definition, created_by, created_at, updated_by, updated_at in _conn_query(
            conn, "SELECT definition, created_by, created_at, updated_by, updated_at FROM retention_rules "
                  "ORDER BY is_default, name"):
        found.append(StoredRule(Rule.from_dict(json.loads(definition)), created_by, created_at, updated_by,
                                updated_at))
    return found


def stored_rules(reader: CatalogReader) -> list[StoredRule]:
    return _rules_on(reader.conn)


def load_rules(reader: CatalogReader) -> RuleSet:
    return RuleSet.of(s.rule for s in stored_rules(reader))


def rule_set_with(current: RuleSet, rule: Rule) -> RuleSet:
    """``current`` with ``rule`` added or replacing the rule of the same name (pure)."""
    return RuleSet.of([r for r in current if r.name != rule.name] + [rule])


def rule_set_without(current: RuleSet, name: str) -> RuleSet:
    if name not in current.by_name:
        raise RuleError(f"no retention rule named {name!r}")
    return RuleSet.of(r for r in current if r.name != name)


def save_rule(catalog: Catalog, audit: AuditLog, rule: Rule, actor: Actor, *, impact: dict[str, Any] | None = None,
              clock: Callable[[], float] = time.time) -> bool:
    """Add or replace a rule (audited with its before/after and the preview); True when new."""
    now = clock()

    def job(conn: apsw.Connection) -> bool:
        current = RuleSet.of(s.rule for s in _rules_on(conn))
        rule_set_with(current, rule)   # refuses a second default rule with a clear message
        before = current.by_name.get(rule.name)
        definition = json.dumps(rule.to_dict(), sort_keys=True)
        if before is None:
            conn.execute("INSERT INTO retention_rules (name, is_default, definition, created_by, created_at, "
                         "updated_by, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (rule.name, int(rule.is_default), definition, actor.name, now, actor.name, now))
        else:
            conn.execute("UPDATE retention_rules SET is_default = ?, definition = ?, updated_by = ?, updated_at = ? "
                         "WHERE name = ?", (int(rule.is_default), definition, actor.name, now, rule.name))
        audit.append(actor.name, actor.role, "retention_rule_save", f"rule:{rule.name}", "ok",
                     detail={"before": before.to_dict() if before else None, "after": rule.to_dict(),
                             "impact": impact})
        return before is None

    return catalog.writer.call(job)


def remove_rule(catalog: Catalog, audit: AuditLog, name: str, actor: Actor, *,
                impact: dict[str, Any] | None = None) -> Rule:
    def job(conn: apsw.Connection) -> Rule:
        current = RuleSet.of(s.rule for s in _rules_on(conn))
        if name not in current.by_name:
            raise RuleError(f"no retention rule named {name!r}")
        conn.execute("DELETE FROM retention_rules WHERE name = ?", (name,))
        removed = current.by_name[name]
        audit.append(actor.name, actor.role, "retention_rule_remove", f"rule:{name}", "ok",
                     detail={"before": removed.to_dict(), "impact": impact})
        return removed

    return catalog.writer.call(job)


# -- recordings as retention sees them ------------------------------------------------------------

_RECORD_SQL = """
SELECT r.id, r.recording_id, r.call_id, r.started_at, r.ended_at, r.duration_s, r.direction, r.agent_id,
       r.caller, r.callee, json_extract(r.metadata, '$.trunk'), r.state,
       (SELECT group_concat(t.tag, char(31)) FROM tags t WHERE t.recording_id = r.recording_id),
       r.kek_id, r.wrapped_key
FROM recordings r WHERE {where} ORDER BY r.id LIMIT ?"""


def _record(values: tuple[Any, ...]) -> RetentionRecord:
    (_, rid, call_id, started, ended, duration, direction, agent, caller, callee, trunk, state, tags) = values[:13]
    return RetentionRecord(rid, call_id, started, ended, duration, direction or "unknown", agent, caller, callee,
                           None if trunk is None else str(trunk),
                           frozenset(tags.split("\x1f")) if tags else frozenset(), state)


def iter_records(reader: CatalogReader, *, page: int = PAGE) -> Iterator[RetentionRecord]:
    """Every recording not yet purged, in start order, read in pages (no long read transaction)."""
    for record, _, _ in iter_keyed_records(reader, page=page):
        yield record


def iter_keyed_records(reader: CatalogReader, *,
                       page: int = PAGE) -> Iterator[tuple[RetentionRecord, str | None, bytes | None]]:
    """As iter_records, each with its KEK id and wrapped data key (None when there is none)."""
    last = -(2**63)
    while True:
        found = _conn_query(reader.conn, _RECORD_SQL.format(where="r.id > ? AND r.state != 'purged'"), (last, page))
        for values in found:
            kek_id, wrapped = values[13], values[14]
            yield _record(values), None if kek_id is None else str(kek_id), None if wrapped is None else bytes(wrapped)
        if len(found) < page:
            return
        last = found[-1][0]


def record_on(conn: apsw.Connection, recording_id: str) -> RetentionRecord | None:
    found = _conn_query(conn, _RECORD_SQL.format(where="r.recording_id = ?"), (recording_id, 1))
    return _record(found[0]) if found else None


def purged_count(reader: CatalogReader) -> int:
    return int(_conn_query(reader.conn, "SELECT count(*) FROM recordings WHERE state = 'purged'")[0][0])


# -- legal holds --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hold:
    id: int
    case_name: str
    reason: str
    recording_id: str | None
    search: dict[str, Any] | None
    placed_by: str
    placed_at: float
    release_requested_by: str | None
    release_requested_at: float | None
    release_reason: str | None
    released_by: str | None
    released_at: float | None
    items: int

    @property
    def state(self) -> str:
        if self.released_at is not None:
            return "released"
        return "release_requested" if self.release_requested_by else "active"

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "case": self.case_name, "reason": self.reason, "state": self.state,
                "recording_id": self.recording_id, "search": self.search, "recordings": self.items,
                "placed_by": self.placed_by, "placed_at": iso_utc(self.placed_at),
                "release_requested_by": self.release_requested_by,
                "release_requested_at": iso_utc(self.release_requested_at), "release_reason": self.release_reason,
                "released_by": self.released_by, "released_at": iso_utc(self.released_at)}


_HOLD_COLUMNS = ("h.id, h.case_name, h.reason, h.recording_id, h.search, h.placed_by, h.placed_at, "
                 "h.release_requested_by, h.release_requested_at, h.release_reason, h.released_by, h.released_at, "
                 "(SELECT count(*) FROM legal_hold_items i WHERE i.hold_id = h.id)")


def _hold(values: tuple[Any, ...]) -> Hold:
    values = tuple(values)
    search = json.loads(values[4]) if values[4] else None
    return Hold(values[0], values[1], values[2], values[3], search, *values[5:])


def _holds_on(conn: apsw.Connection, *, include_released: bool, hold_id: int | None = None) -> list[Hold]:
    where = []
    params: list[Any] = []
    if not include_released:
        where.append("h.released_at IS NULL")
    if hold_id is not None:
        where.append("h.id = ?")
        params.append(hold_id)
    sql = f"SELECT {_HOLD_COLUMNS} FROM legal_holds h{' WHERE ' + ' AND '.join(where) if where else ''} ORDER BY h.id"  # nosec B608  # _HOLD_COLUMNS and fixed WHERE fragments; every value is a ? parameter
    return [_hold(v) for v in _conn_query(conn, sql, tuple(params))]


def list_holds(reader: CatalogReader, *, include_released: bool = False) -> list[Hold]:
    return _holds_on(reader.conn, include_released=include_released)


def get_hold(reader: CatalogReader, hold_id: int) -> Hold | None:
    found = _holds_on(reader.conn, include_released=True, hold_id=hold_id)
    return found[0] if found else None


def check_search(search: dict[str, Any]) -> dict[str, Any]:
    """A search hold's criteria: ``query`` and/or Catalog.search filters; at least one given."""
    unknown = set(search) - {"query", *HOLD_FILTERS}
    if unknown:
        raise HoldError(f"a search hold takes query and {', '.join(HOLD_FILTERS)}; unknown: {sorted(unknown)}")
    cleaned = {k: v for k, v in search.items() if v not in (None, "")}
    if not cleaned:
        raise HoldError("a search hold needs a query or a filter (a hold on everything is not a legal hold)")
    return cleaned


def search_ids(catalog: Catalog, search: dict[str, Any]) -> set[str]:
    """Every recording a search hold's criteria match now (all pages)."""
    criteria = dict(search)
    query = criteria.pop("query", None)
    found: set[str] = set()
    offset = 0
    while True:
        page = catalog.search(query, limit=SEARCH_PAGE, offset=offset, order_by="started_at", count_limit=0,
                              **criteria)
        found.update(row.recording_id for row in page.rows)
        if len(page.rows) < SEARCH_PAGE:
            return found
        offset += SEARCH_PAGE


def place_hold(catalog: Catalog, audit: AuditLog, actor: Actor, case_name: str, reason: str, *,
               recording_id: str | None = None, search: dict[str, Any] | None = None,
               clock: Callable[[], float] = time.time) -> Hold:
    """A legal hold on one recording or on a search; what it covers now is recorded with it."""
    case_name, reason = case_name.strip(), reason.strip()
    if not case_name or not reason:
        raise HoldError("a legal hold needs a case name and a reason")
    if (recording_id is None) == (search is None):
        raise HoldError("a legal hold is on one recording or on a search, not both and not neither")
    criteria = check_search(search) if search is not None else None
    matched = search_ids(catalog, criteria) if criteria is not None else set()
    now = clock()

    def job(conn: apsw.Connection) -> Hold:
        ids = set(matched)
        if recording_id is not None:
            if not _conn_query(conn, "SELECT 1 FROM recordings WHERE recording_id = ?", (recording_id,)):
                raise UnknownRecording(recording_id)
            ids = {recording_id}
        conn.execute("INSERT INTO legal_holds (case_name, reason, recording_id, search, placed_by, placed_at) "
                     "VALUES (?, ?, ?, ?, ?, ?)",
                     (case_name, reason, recording_id, json.dumps(criteria, sort_keys=True) if criteria else None,
                      actor.name, now))
        hold_id = conn.last_insert_rowid()
        conn.executemany("INSERT INTO legal_hold_items (hold_id, recording_id) VALUES (?, ?)",
                         [(hold_id, rid) for rid in sorted(ids)])
        audit.append(actor.name, actor.role, "legal_hold_place", f"hold:{hold_id}", "ok", reason=reason,
                     detail={"case": case_name, "recording_id": recording_id, "search": criteria,
                             "recordings": len(ids)})
        return _holds_on(conn, include_released=True, hold_id=hold_id)[0]

    return catalog.writer.call(job)


def _open_hold(conn: apsw.Connection, hold_id: int) -> Hold:
    found = _holds_on(conn, include_released=True, hold_id=hold_id)
    if not found:
        raise HoldError(f"no legal hold {hold_id}")
    if found[0].released_at is not None:
        raise HoldError(f"legal hold {hold_id} was released already (by {found[0].released_by})")
    return found[0]


def request_release(catalog: Catalog, audit: AuditLog, actor: Actor, hold_id: int, reason: str, *,
                    clock: Callable[[], float] = time.time) -> Hold:
    """First admin: ask for the release of a hold; it stays in force until a second admin approves."""
    if not reason.strip():
        raise HoldError("releasing a legal hold needs a reason")
    now = clock()

    def job(conn: apsw.Connection) -> Hold:
        hold = _open_hold(conn, hold_id)
        if hold.release_requested_by is not None:
            raise HoldError(f"release of legal hold {hold_id} was already requested by {hold.release_requested_by}; "
                            f"a second admin approves it")
        conn.execute("UPDATE legal_holds SET release_requested_by = ?, release_requested_at = ?, release_reason = ? "
                     "WHERE id = ?", (actor.name, now, reason.strip(), hold_id))
        audit.append(actor.name, actor.role, "legal_hold_release_request", f"hold:{hold_id}", "ok",
                     reason=reason.strip(), detail={"case": hold.case_name})
        return _holds_on(conn, include_released=True, hold_id=hold_id)[0]

    return catalog.writer.call(job)


def approve_release(catalog: Catalog, audit: AuditLog, actor: Actor, hold_id: int, *,
                    clock: Callable[[], float] = time.time) -> Hold:
    """Second admin: approve a requested release; refused (and audited) for the requester."""
    now = clock()

    def job(conn: apsw.Connection) -> Hold:
        hold = _open_hold(conn, hold_id)
        if hold.release_requested_by is None:
            raise HoldError(f"nobody requested the release of legal hold {hold_id} yet (request it first; "
                            f"a second admin then approves)")
        if hold.release_requested_by == actor.name:
            raise HoldError(f"four eyes: {actor.name} requested the release of legal hold {hold_id} and "
                            f"cannot also approve it; another admin must")
        conn.execute("UPDATE legal_holds SET released_by = ?, released_at = ? WHERE id = ?",
                     (actor.name, now, hold_id))
        audit.append(actor.name, actor.role, "legal_hold_release", f"hold:{hold_id}", "ok",
                     reason=hold.release_reason or "",
                     detail={"case": hold.case_name, "requested_by": hold.release_requested_by})
        return _holds_on(conn, include_released=True, hold_id=hold_id)[0]

    try:
        return catalog.writer.call(job)
    except HoldError as err:
        audit.append(actor.name, actor.role, "legal_hold_release", f"hold:{hold_id}", "refused", reason=str(err))
        raise


def held_sets(catalog: Catalog, reader: CatalogReader) -> list[HeldSet]:
    """Every hold in force, with the recordings it covers: those recorded when it was placed and,
    for a search hold, those its search matches now."""
    sets = []
    for hold in list_holds(reader):
        ids = {str(r[0]) for r in _conn_query(reader.conn, "SELECT recording_id FROM legal_hold_items WHERE hold_id = ?",
                                              (hold.id,))}
        if hold.search:
            ids |= search_ids(catalog, hold.search)
        sets.append(HeldSet(hold.id, hold.case_name, frozenset(ids)))
    return sets


def current_rules(catalog: Catalog) -> RuleSet:
    """The rules in force (read on a reader of its own)."""
    with catalog.reader() as reader:
        return load_rules(reader)


def rule_change_impact(catalog: Catalog, before: RuleSet, after: RuleSet, now: float) -> dict[str, Any]:
    """How many recordings change their keeping if ``after`` replaces ``before``: the preview the
    CLI and the console show before a rule is saved or removed (holds in force counted)."""
    with catalog.reader() as reader:
        return impact(iter_records(reader), before, after, held_sets(catalog, reader), now).to_dict()


def held_on(conn: apsw.Connection, recording_id: str) -> bool:
    """Inside a write transaction: is the recording named by a hold in force? (search holds'
    current matches are resolved before a purge starts; see retention/purge.py)"""
    return bool(_conn_query(conn, "SELECT 1 FROM legal_hold_items i JOIN legal_holds h ON h.id = i.hold_id "
                                  "WHERE i.recording_id = ? AND h.released_at IS NULL LIMIT 1", (recording_id,)))
