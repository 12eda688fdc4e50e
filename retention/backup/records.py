"""Backup targets, runs and failures in the catalog (tables of migration 5, storage/migrations.py).

Writes go through the catalog's writer thread; reads open their own read-only connection.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, TypeVar

import apsw

from capture.recording import iso_utc
from retention.backup.targets import Settings, Target, TargetError, settings_from_json, settings_json
from storage.catalog import Catalog

T = TypeVar("T")
RUN_KINDS = ("backup", "verify", "restore")
RUN_COLUMNS = ("id", "target_id", "kind", "state", "actor", "host", "pid", "started_at", "updated_at",
               "finished_at", "files_planned", "bytes_planned", "files_done", "bytes_done", "files_present",
               "files_failed", "snapshot", "manifest", "error")
PROGRESS_FIELDS = {"files_planned", "bytes_planned", "files_done", "bytes_done", "files_present",
                   "files_failed", "snapshot", "manifest"}


class UnknownTarget(TargetError):
    """No (active) target of that name."""


class TargetExists(TargetError):
    """A target of that name exists already."""


@dataclass(slots=True)
class RunRow:
    id: int
    target_id: int
    kind: str
    state: str
    actor: str
    host: str
    pid: int
    started_at: float
    updated_at: float
    finished_at: float | None
    files_planned: int
    bytes_planned: int
    files_done: int
    bytes_done: int
    files_present: int
    files_failed: int
    snapshot: str | None
    manifest: str | None
    error: str | None
    target: str = ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = iso_utc(value) if f.name.endswith("_at") and value is not None else value
        return out


@dataclass(slots=True)
class Failure:
    run_id: int
    ordinal: int
    object: str
    error: str
    ts: float

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "object": self.object, "error": self.error, "ts": iso_utc(self.ts)}


@dataclass(slots=True)
class TargetStatus:
    """What the console and the metrics show per target."""

    target: Target
    last_run: RunRow | None           # the newest backup run, whatever its state
    last_success: RunRow | None       # the newest backup run that ended ok
    last_verify: RunRow | None
    failures: list[Failure]           # of the newest backup run

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target.to_dict(),
                "last_run": self.last_run.to_dict() if self.last_run else None,
                "last_success": self.last_success.to_dict() if self.last_success else None,
                "last_verify": self.last_verify.to_dict() if self.last_verify else None,
                "failures": [f.to_dict() for f in self.failures]}


def _read(catalog: Catalog, fn: Callable[[apsw.Connection], T]) -> T:
    reader = catalog.reader()
    try:
        return fn(reader.conn)
    finally:
        reader.close()


def _target(row: tuple[Any, ...]) -> Target:
    tid, name, kind, settings, created_at, created_by, updated_at = row
    return Target(int(tid), str(name), str(kind), settings_from_json(str(kind), str(settings)),
                  float(created_at), str(created_by), float(updated_at))


_TARGET_SQL = "SELECT id, name, kind, settings, created_at, created_by, updated_at FROM backup_targets"


# -- targets ----------------------------------------------------------------------------------------

def add_target(catalog: Catalog, name: str, kind: str, settings: Settings, actor: str, now: float,
               *, replace: bool = False) -> Target:
    """Store a validated target; ``replace`` updates an existing one of that name (its history stays)."""
    text = settings_json(settings)

    def job(conn: apsw.Connection) -> None:
        found = conn.execute("SELECT id, kind FROM backup_targets WHERE name = ? AND removed_at IS NULL",
                             (name,)).fetchall()
        if found and not replace:
            raise TargetExists(f"name: a target {name!r} exists already (remove it, or use --replace)")
        if found:
            if found[0][1] != kind:
                raise TargetError(f"kind: target {name!r} is a {found[0][1]} target; remove it to make it {kind}")
            conn.execute("UPDATE backup_targets SET settings = ?, updated_at = ? WHERE id = ?",
                         (text, now, found[0][0]))
        else:
            conn.execute("INSERT INTO backup_targets (name, kind, settings, created_at, created_by, updated_at) "
                         "VALUES (?, ?, ?, ?, ?, ?)", (name, kind, text, now, actor, now))

    catalog.writer.call(job)
    return get_target(catalog, name)


def list_targets(catalog: Catalog) -> list[Target]:
    rows = _read(catalog, lambda c: c.execute(f"{_TARGET_SQL} WHERE removed_at IS NULL ORDER BY name").fetchall())
    return [_target(r) for r in rows]


def get_target(catalog: Catalog, name: str) -> Target:
    rows = _read(catalog, lambda c: c.execute(f"{_TARGET_SQL} WHERE name = ? AND removed_at IS NULL",
                                              (name,)).fetchall())
    if not rows:
        known = ", ".join(t.name for t in list_targets(catalog)) or "none configured"
        raise UnknownTarget(f"target: no backup target {name!r} (known: {known})")
    return _target(rows[0])


def remove_target(catalog: Catalog, name: str, now: float) -> Target:
    target = get_target(catalog, name)
    catalog.writer.call(lambda c: c.execute("UPDATE backup_targets SET removed_at = ? WHERE id = ?",
                                            (now, target.id)))
    return target


# -- runs -------------------------------------------------------------------------------------------

def start_run(catalog: Catalog, target: Target, kind: str, actor: str, host: str, pid: int, now: float) -> int:
    if kind not in RUN_KINDS:
        raise ValueError(f"run kind {kind!r}")

    def job(conn: apsw.Connection) -> int:
        conn.execute("INSERT INTO backup_runs (target_id, kind, state, actor, host, pid, started_at, updated_at) "
                     "VALUES (?, ?, 'running', ?, ?, ?, ?, ?)", (target.id, kind, actor, host, pid, now, now))
        return int(conn.last_insert_rowid())

    return catalog.writer.call(job)


def update_run(catalog: Catalog, run_id: int, now: float, **values: Any) -> None:
    """Progress figures of a running run (names from PROGRESS_FIELDS)."""
    unknown = set(values) - PROGRESS_FIELDS
    if unknown:
        raise ValueError(f"not progress fields: {sorted(unknown)}")
    names = sorted(values)
    sets = ", ".join(f"{n} = ?" for n in names)
    catalog.writer.call(lambda c: c.execute(f"UPDATE backup_runs SET {sets}, updated_at = ? WHERE id = ?",  # nosec B608  # column names checked against PROGRESS_FIELDS above; every value is a ? parameter
                                            (*(values[n] for n in names), now, run_id)))


def finish_run(catalog: Catalog, run_id: int, state: str, now: float, error: str | None = None,
               **values: Any) -> None:
    if state not in ("ok", "failed", "interrupted"):
        raise ValueError(f"run state {state!r}")
    update_run(catalog, run_id, now, **values)
    catalog.writer.call(lambda c: c.execute(
        "UPDATE backup_runs SET state = ?, error = ?, finished_at = ?, updated_at = ? WHERE id = ?",
        (state, error, now, now, run_id)))


def add_failure(catalog: Catalog, run_id: int, obj: str, error: str, now: float) -> None:
    def job(conn: apsw.Connection) -> None:
        ordinal: Any = conn.execute("SELECT coalesce(max(ordinal), 0) + 1 FROM backup_failures WHERE run_id = ?",
                                    (run_id,)).fetchall()[0][0]
        conn.execute("INSERT INTO backup_failures (run_id, ordinal, object, error, ts) VALUES (?, ?, ?, ?, ?)",
                     (run_id, ordinal, obj, error, now))

    catalog.writer.call(job)


def mark_interrupted(catalog: Catalog, target: Target, kind: str, now: float) -> list[int]:
    """Runs of this target and kind still marked running: the caller holds the target's run
    lock, so they are dead (killed, crashed, power cut); they become ``interrupted``."""
    def job(conn: apsw.Connection) -> list[int]:
        rows: list[Any] = conn.execute(
            "SELECT id FROM backup_runs WHERE target_id = ? AND kind = ? AND state = 'running'",
            (target.id, kind)).fetchall()
        ids = [int(r[0]) for r in rows]
        for run_id in ids:
            conn.execute("UPDATE backup_runs SET state = 'interrupted', finished_at = ?, updated_at = ?, "
                         "error = coalesce(error, 'the run stopped before it finished (killed or crashed); "
                         "the next run resumes it') WHERE id = ?", (now, now, run_id))
        return ids

    return catalog.writer.call(job)


def close_restored_runs(catalog: Catalog, now: float, note: str) -> int:
    """In a restored catalog: the run that took the snapshot (and any other) was still running
    in it; they did not die, they are over elsewhere. They become ``interrupted`` with ``note``."""
    def job(conn: apsw.Connection) -> int:
        conn.execute("UPDATE backup_runs SET state = 'interrupted', finished_at = ?, updated_at = ?, error = ? "
                     "WHERE state = 'running'", (now, now, note))
        return int(conn.changes())

    return catalog.writer.call(job)


_RUN_SQL = (f"SELECT {', '.join('r.' + c for c in RUN_COLUMNS)}, t.name FROM backup_runs r "  # nosec B608  # column names from the RUN_COLUMNS constant
            f"JOIN backup_targets t ON t.id = r.target_id")


def _run(row: tuple[Any, ...]) -> RunRow:
    values: dict[str, Any] = dict(zip(RUN_COLUMNS, row, strict=False))
    return RunRow(**values, target=str(row[-1]))


def list_runs(catalog: Catalog, target: Target | None = None, kind: str | None = None,
              limit: int = 20, state: str | None = None) -> list[RunRow]:
    """Newest first."""
    where: list[str] = []
    params: list[Any] = []
    for clause, value in (("r.target_id = ?", target.id if target else None), ("r.kind = ?", kind),
                          ("r.state = ?", state)):
        if value is not None:
            where.append(clause)
            params.append(value)
    sql = _RUN_SQL + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY r.id DESC LIMIT ?"
    rows = _read(catalog, lambda c: c.execute(sql, (*params, limit)).fetchall())
    return [_run(r) for r in rows]


def get_run(catalog: Catalog, run_id: int) -> RunRow | None:
    rows = _read(catalog, lambda c: c.execute(_RUN_SQL + " WHERE r.id = ?", (run_id,)).fetchall())
    return _run(rows[0]) if rows else None


def list_failures(catalog: Catalog, run_id: int, limit: int = 100) -> list[Failure]:
    rows: list[Any] = _read(catalog, lambda c: c.execute(
        "SELECT run_id, ordinal, object, error, ts FROM backup_failures WHERE run_id = ? ORDER BY ordinal LIMIT ?",
        (run_id, limit)).fetchall())
    return [Failure(int(r[0]), int(r[1]), str(r[2]), str(r[3]), float(r[4])) for r in rows]


def bad_objects_of_last_verify(catalog: Catalog, target: Target) -> set[str]:
    """Objects the newest finished verify run of the target found damaged or missing."""
    runs = [r for r in list_runs(catalog, target, "verify", limit=5) if r.state != "running"]
    if not runs:
        return set()
    return {f.object for f in list_failures(catalog, runs[0].id, limit=1_000_000)}


def target_status(catalog: Catalog) -> list[TargetStatus]:
    statuses = []
    for target in list_targets(catalog):
        last = next(iter(list_runs(catalog, target, "backup", limit=1)), None)
        success = next(iter(list_runs(catalog, target, "backup", limit=1, state="ok")), None)
        verify = next(iter(list_runs(catalog, target, "verify", limit=1)), None)
        statuses.append(TargetStatus(target, last, success, verify,
                                     list_failures(catalog, last.id, limit=20) if last else []))
    return statuses
