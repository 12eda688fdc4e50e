"""Export requests: stored in the catalog, every step audited, bundles built in the background.

:class:`ExportStore` keeps the rows (tables ``exports`` and ``export_items``, migration 4) and
writes each state change and its audit entry in *one* transaction on the catalog's writer, after
checking the step against the rules (storage/export_policy.py) on the row as it is inside that
transaction: two admins clicking at once cannot both decide. A refused step is audited with
outcome ``denied`` (an authorisation rule: role, four eyes, not the requester) or ``refused``
(the state or the input: not approved yet, expired, no reason) and raised as
:class:`ExportRefused`.

:class:`ExportService` is what the console and the command line use: it resolves a search or a
list of ids, builds approved bundles on one background thread (progress in the row), deletes
bundles when they expire, and at start fails builds a stopped process left half done.

Audit actions (object ``export:<id>``): ``export.request``, ``export.approve``,
``export.reject``, ``export.build`` (``started`` / ``ok`` / ``failed``), ``export.download``,
``export.expire``; and ``export.read`` per recording (object: the recording id) when its audio
is decrypted into a bundle.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import apsw

from capture.recording import iso_utc
from storage.audit import AuditLog
from storage.bundle import BuildProgress, BundleError, BundleRequest, build_bundle
from storage.catalog import Catalog
from storage.export_policy import (
    DOWNLOADABLE,
    Actor,
    ExportFacts,
    ExportRefused,
    ExportState,
    check_decision,
    check_download,
    check_request,
    check_transition,
    expiry_due,
)
from storage.keys import KeyStore

log = logging.getLogger(__name__)

SYSTEM = Actor("recorderd", "system")       # background builds and expiry
PROGRESS_INTERVAL_S = 0.5
SWEEP_INTERVAL_S = 60.0
BUNDLE_NAME = re.compile(r"export-(\d+)\.zip")
PART_NAME = re.compile(r"\.export-(\d+)\.zip\.part")

__all__ = ["SYSTEM", "Actor", "ExportRecord", "ExportRefused", "ExportService", "ExportSettings", "ExportState",
           "ExportStore", "UnknownExport"]


class UnknownExport(ExportRefused):
    """No export with that id."""


@dataclass(frozen=True, slots=True)
class ExportSettings:
    bundle_dir: Path
    expire_hours: float
    request_expire_hours: float
    max_recordings: int
    appliance_id: str

    @classmethod
    def from_config(cls, section: dict[str, Any]) -> ExportSettings:
        """From the validated ``[exports]`` section (recorderd/config.py)."""
        appliance = str(section["appliance_id"])
        return cls(Path(section["bundle_dir"]), float(section["expire_hours"]),
                   float(section["request_expire_hours"]), int(section["max_recordings"]),
                   socket.gethostname() if appliance == "auto" else appliance)


@dataclass(frozen=True, slots=True)
class ExportRecord:
    id: int
    requester: str
    requester_role: str
    reason: str
    query: str | None
    state: ExportState
    approver: str | None
    decision_note: str
    requested_at: float
    decided_at: float | None
    build_started_at: float | None
    built_at: float | None
    progress_done: int
    progress_total: int
    recordings_done: int
    path: str | None
    size: int | None
    sha256: str | None
    error: str | None
    expires_at: float | None
    downloads: int
    downloaded_at: float | None
    deleted_at: float | None
    updated_at: float
    recording_ids: tuple[str, ...]

    @property
    def object(self) -> str:
        """Its object in the audit log."""
        return f"export:{self.id}"

    @property
    def bundle_id(self) -> str:
        return f"export-{self.id}"

    @property
    def percent(self) -> int:
        if self.state in (ExportState.READY, ExportState.DOWNLOADED):
            return 100
        return int(100 * self.progress_done / self.progress_total) if self.progress_total else 0

    def facts(self) -> ExportFacts:
        return ExportFacts(self.state, self.requester, self.requested_at, self.expires_at)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key, value in out.items():
            if key.endswith("_at"):
                out[key] = iso_utc(value)
        out["state"] = str(self.state)
        out["recording_ids"] = list(self.recording_ids)
        out.pop("path")   # where on the appliance is nobody's business outside it
        return out


_COLUMNS = tuple(f.name for f in fields(ExportRecord) if f.name != "recording_ids")


def _record(conn: apsw.Connection, row: tuple[Any, ...]) -> ExportRecord:
    values = dict(zip(_COLUMNS, row, strict=True))
    values["state"] = ExportState(values["state"])
    ids = tuple(str(rid) for (rid,) in conn.execute(
        "SELECT recording_id FROM export_items WHERE export_id = ? ORDER BY ordinal", (values["id"],)))
    return ExportRecord(**values, recording_ids=ids)


def _load(conn: apsw.Connection, export_id: int) -> ExportRecord | None:
    found = conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM exports WHERE id = ?", (export_id,)).fetchall()  # nosec B608  # column names from the ExportRecord dataclass fields; every value is a ? parameter
    return _record(conn, found[0]) if found else None


def _unexportable(conn: apsw.Connection, recording_ids: list[str]) -> list[str]:
    """Why some of these recordings cannot go into a bundle (unknown, purged, still recording)."""
    rows: list[tuple[Any, ...]] = conn.execute(
        "SELECT recording_id, state, wrapped_key IS NOT NULL, vault_path FROM recordings "
        "WHERE recording_id IN (SELECT value FROM json_each(?))", (json.dumps(recording_ids),)).fetchall()
    known = {str(rid): (str(state), bool(has_key), vault) for rid, state, has_key, vault in rows}
    problems = []
    for rid in recording_ids:
        if rid not in known:
            problems.append(f"{rid}: no such recording")
        elif known[rid][0] == "purged" or not known[rid][1]:
            problems.append(f"{rid}: purged, its audio no longer exists")
        elif known[rid][0] == "active" or not known[rid][2]:
            problems.append(f"{rid}: still being recorded")
    return problems


class ExportStore:
    """The export rows and their audit trail (see the module docstring)."""

    def __init__(self, catalog: Catalog, audit: AuditLog, clock: Callable[[], float] = time.time) -> None:
        self.catalog = catalog
        self.audit = audit
        self.clock = clock

    def _audit_on(self, conn: apsw.Connection) -> AuditLog:
        """The audit log, written inside the caller's transaction (entry and change commit together)."""
        return AuditLog(conn, sign=self.audit.sign, checkpoint_every=self.audit.checkpoint_every,
                        checkpoint_seconds=self.audit.checkpoint_seconds, clock=self.audit.clock)

    def _run(self, job: Callable[[apsw.Connection], ExportRecord | ExportRefused]) -> ExportRecord:
        result = self.catalog.writer.call(job)
        if isinstance(result, ExportRefused):
            raise result
        return result

    # -- reads

    def get(self, export_id: int) -> ExportRecord | None:
        with self.catalog.reader() as reader:
            return _load(reader.conn, export_id)

    def find(self, *, states: Iterable[ExportState] | None = None, requester: str | None = None,
             limit: int = 200) -> list[ExportRecord]:
        """Newest first."""
        clauses, params = [], []
        if states is not None:
            clauses.append("state IN (SELECT value FROM json_each(?))")
            params.append(json.dumps([str(s) for s in states]))
        if requester is not None:
            clauses.append("requester = ?")
            params.append(requester)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        with self.catalog.reader() as reader:
            conn = reader.conn
            conn.execute("BEGIN")
            try:
                rows = conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM exports{where} ORDER BY id DESC LIMIT ?",  # nosec B608  # column names from ExportRecord fields, fixed WHERE fragments; every value is a ? parameter
                                    (*params, limit)).fetchall()
                return [_record(conn, row) for row in rows]
            finally:
                conn.execute("COMMIT")

    # -- steps

    def create(self, actor: Actor, reason: str, recording_ids: list[str], query: str | None,
               max_recordings: int) -> ExportRecord:
        """A new request (state requested), or ExportRefused (audited) naming what is wrong."""
        now = self.clock()
        detail = {"query": query, "count": len(recording_ids), "recordings": recording_ids[:max_recordings]}

        def job(conn: apsw.Connection) -> ExportRecord | ExportRefused:
            audit = self._audit_on(conn)
            try:
                check_request(actor, reason, len(recording_ids), max_recordings)
                problems = _unexportable(conn, recording_ids)
                if len(set(recording_ids)) != len(recording_ids):
                    problems.append("a recording is listed twice")
                if problems:
                    raise ExportRefused("cannot export: " + "; ".join(problems[:10])
                                        + (f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""))
            except ExportRefused as refused:
                audit.append(actor.username, actor.role, "export.request", "export", refused.outcome,
                             reason=refused.reason, detail=detail)
                return refused
            conn.execute("INSERT INTO exports (requester, requester_role, reason, query, state, requested_at, "
                         "updated_at) VALUES (?, ?, ?, ?, 'requested', ?, ?)",
                         (actor.username, actor.role, reason, query, now, now))
            export_id = conn.last_insert_rowid()
            conn.executemany("INSERT INTO export_items (export_id, ordinal, recording_id) VALUES (?, ?, ?)",
                             [(export_id, i, rid) for i, rid in enumerate(recording_ids)])
            audit.append(actor.username, actor.role, "export.request", f"export:{export_id}", "ok",
                         reason=reason, detail=detail)
            record = _load(conn, export_id)
            assert record is not None
            return record

        return self._run(job)

    def _step(self, export_id: int, actor: Actor, action: str, check: Callable[[ExportRecord], None],
              changes: Callable[[ExportRecord], dict[str, Any]], *, reason: str = "",
              outcome: str = "ok", detail: Callable[[ExportRecord], dict[str, Any]] | None = None) -> ExportRecord:
        """Load, check, change and audit one export in one transaction."""
        def job(conn: apsw.Connection) -> ExportRecord | ExportRefused:
            audit = self._audit_on(conn)
            record = _load(conn, export_id)
            try:
                if record is None:
                    raise UnknownExport(f"no export {export_id}")
                check(record)
                new = changes(record)
                check_transition(record.state, new["state"])
            except ExportRefused as refused:
                audit.append(actor.username, actor.role, action, f"export:{export_id}", refused.outcome,
                             reason=refused.reason)
                return refused
            new["updated_at"] = self.clock()
            conn.execute(f"UPDATE exports SET {', '.join(f'{k} = ?' for k in new)} WHERE id = ?",  # nosec B608  # column names are the literal keys of this module's transition lambdas; every value is a ? parameter
                         (*(str(v) if isinstance(v, ExportState) else v for v in new.values()), export_id))
            audit.append(actor.username, actor.role, action, record.object, outcome, reason=reason,
                         detail={"from": str(record.state), "to": str(new["state"]),
                                 **(detail(record) if detail else {})})
            changed = _load(conn, export_id)
            assert changed is not None
            return changed

        return self._run(job)

    def decide(self, export_id: int, actor: Actor, approve: bool, note: str = "") -> ExportRecord:
        state = ExportState.APPROVED if approve else ExportState.REJECTED
        return self._step(export_id, actor, "export.approve" if approve else "export.reject",
                          lambda r: check_decision(r.facts(), actor),
                          lambda r: {"state": state, "approver": actor.username, "decided_at": self.clock(),
                                     "decision_note": note},
                          reason=note, detail=lambda r: {"requester": r.requester})

    def start_build(self, export_id: int, total_bytes: int = 0) -> ExportRecord:
        return self._step(export_id, SYSTEM, "export.build", lambda r: None,
                          lambda r: {"state": ExportState.BUILDING, "build_started_at": self.clock(),
                                     "progress_done": 0, "progress_total": total_bytes, "recordings_done": 0},
                          outcome="started", detail=lambda r: {"recordings": len(r.recording_ids)})

    def set_progress(self, export_id: int, progress: BuildProgress) -> None:
        """Progress of a build (not audited: the build's start and end are)."""
        def job(conn: apsw.Connection) -> None:
            conn.execute("UPDATE exports SET progress_done = ?, progress_total = ?, recordings_done = ? "
                         "WHERE id = ? AND state = 'building'",
                         (progress.audio_bytes_done, progress.audio_bytes_total, progress.recordings_done, export_id))

        self.catalog.writer.call(job)

    def finish(self, export_id: int, path: Path, size: int, sha256: str, expires_at: float) -> ExportRecord:
        return self._step(export_id, SYSTEM, "export.build", lambda r: None,
                          lambda r: {"state": ExportState.READY, "built_at": self.clock(), "path": str(path),
                                     "size": size, "sha256": sha256, "expires_at": expires_at,
                                     "progress_done": r.progress_total, "recordings_done": len(r.recording_ids)},
                          detail=lambda r: {"size": size, "sha256": sha256, "expires_at": iso_utc(expires_at)})

    def fail(self, export_id: int, error: str) -> ExportRecord:
        return self._step(export_id, SYSTEM, "export.build", lambda r: None,
                          lambda r: {"state": ExportState.FAILED, "error": error},
                          reason=error, outcome="failed")

    def record_download(self, export_id: int, actor: Actor) -> ExportRecord:
        now = self.clock()
        return self._step(export_id, actor, "export.download", lambda r: check_download(r.facts(), actor, now),
                          lambda r: {"state": ExportState.DOWNLOADED, "downloads": r.downloads + 1,
                                     "downloaded_at": now},
                          detail=lambda r: {"sha256": r.sha256, "size": r.size, "download": r.downloads + 1})

    def refuse(self, export_id: int, actor: Actor, action: str, reason: str) -> None:
        """Audit a refusal decided outside the store (e.g. the bundle file is missing)."""
        self.audit.append(actor.username, actor.role, action, f"export:{export_id}", "refused", reason=reason)

    def expire(self, export_id: int, request_ttl_s: float) -> ExportRecord:
        now = self.clock()

        def due(record: ExportRecord) -> None:
            if not expiry_due(record.facts(), now, request_ttl_s):
                raise ExportRefused(f"the export is {record.state} and not due to expire")

        return self._step(export_id, SYSTEM, "export.expire", due,
                          lambda r: {"state": ExportState.EXPIRED, "deleted_at": now if r.path else None},
                          detail=lambda r: {"bundle_deleted": bool(r.path), "sha256": r.sha256})


class ExportService:
    """Requests, decisions, background builds, downloads and expiry over an :class:`ExportStore`."""

    def __init__(self, catalog: Catalog, audit: AuditLog, keys: KeyStore, vault_dir: Path,
                 settings: ExportSettings, *, clock: Callable[[], float] = time.time, background: bool = True) -> None:
        self.catalog = catalog
        self.audit = audit
        self.keys = keys
        self.vault_dir = vault_dir
        self.settings = settings
        self.clock = clock
        self.store = ExportStore(catalog, audit, clock)
        self.background = background
        self._executor: ThreadPoolExecutor | None = None
        self._futures: list[Future[ExportRecord | None]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sweeper: threading.Thread | None = None
        settings.bundle_dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    # -- lifecycle

    def start(self) -> None:
        """Fail builds a stopped process left unfinished, queue approved ones, expire what is due,
        and (background) keep expiring every minute.

        A build holds an flock(2) on ``.export-<id>.lock`` in the bundle directory; the kernel
        drops it when the builder dies. So a ``building`` row whose lock can be taken is a build
        nobody runs any more, while one whose lock is held (another console worker, another
        service in this process) is left alone."""
        for record in self.store.find(states=[ExportState.BUILDING], limit=10_000):
            lock = self.lock_build(record.id)
            if lock is None:
                continue
            try:
                self._remove(self.settings.bundle_dir / f".{record.bundle_id}.zip.part")
                with contextlib.suppress(ExportRefused):
                    self.store.fail(record.id, "interrupted: recorderd stopped while building this bundle")
            finally:
                self.unlock_build(record.id, lock)
        for record in self.store.find(states=[ExportState.APPROVED], limit=10_000):
            self.submit(record.id)
        self.expire_due()
        if self.background and self._sweeper is None:
            self._sweeper = threading.Thread(target=self._sweep_loop, name="export-expiry", daemon=True)
            self._sweeper.start()

    def _sweep_loop(self) -> None:
        while not self._stop.wait(SWEEP_INTERVAL_S):
            try:
                self.expire_due()
            except Exception:   # the sweeper must survive a locked catalog and try again later
                log.exception("export expiry sweep failed")

    def close(self) -> None:
        self._stop.set()
        if self._sweeper is not None:
            self._sweeper.join(timeout=5)
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    def wait(self, timeout: float = 60.0) -> None:
        """Until the queued builds are done (tests, the command line)."""
        with self._lock:
            pending = list(self._futures)
        for future in pending:
            future.result(timeout=timeout)

    # -- requests and decisions

    def resolve(self, query: str | None, filters: dict[str, Any] | None = None) -> list[str]:
        """The recording ids a search finds, oldest first (at most max_recordings + 1, so that
        a search matching too many is refused rather than cut)."""
        result = self.catalog.search(query or None, limit=self.settings.max_recordings + 1, order_by="started_at",
                                     count_limit=None, **(filters or {}))
        return [row.recording_id for row in result.rows]

    def request(self, actor: Actor, reason: str, *, recording_ids: list[str] | None = None,
                query: str | None = None, filters: dict[str, Any] | None = None) -> ExportRecord:
        """A request for the given ids, or for what a search finds (``query`` and ``filters``)."""
        if recording_ids is None:
            recording_ids = self.resolve(query, filters)
            description = describe_search(query, filters)
        else:
            description = None
        return self.store.create(actor, reason.strip(), list(recording_ids), description,
                                 self.settings.max_recordings)

    def approve(self, export_id: int, actor: Actor, note: str = "") -> ExportRecord:
        record = self.store.decide(export_id, actor, True, note)
        self.submit(record.id)
        return record

    def reject(self, export_id: int, actor: Actor, note: str = "") -> ExportRecord:
        return self.store.decide(export_id, actor, False, note)

    # -- building

    def submit(self, export_id: int) -> None:
        """Build in the background (or now, without a background thread)."""
        if not self.background:
            self.build(export_id)
            return
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="export-build")
            self._futures = [f for f in self._futures if not f.done()]
            self._futures.append(self._executor.submit(self.build, export_id))

    def bundle_path(self, record: ExportRecord) -> Path:
        return self.settings.bundle_dir / f"{record.bundle_id}.zip"

    def _lock_path(self, export_id: int) -> Path:
        return self.settings.bundle_dir / f".export-{export_id}.lock"

    def lock_build(self, export_id: int) -> int | None:
        """Take the export's build lock (see start()): its descriptor, or None when held."""
        fd = os.open(self._lock_path(export_id), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    def unlock_build(self, export_id: int, fd: int) -> None:
        self._remove(self._lock_path(export_id))   # before closing: nobody else can hold it now
        os.close(fd)

    def build(self, export_id: int) -> ExportRecord | None:
        """approved -> building -> ready (or failed, with the reason); every step audited.
        None when another builder has it or it is no longer approved."""
        lock = self.lock_build(export_id)
        if lock is None:
            return None
        try:
            current = self.store.get(export_id)
            if current is None or current.state != ExportState.APPROVED:
                return None
            return self._build_locked(export_id)
        finally:
            self.unlock_build(export_id, lock)

    def _build_locked(self, export_id: int) -> ExportRecord:
        record = self.store.start_build(export_id)
        request = BundleRequest(record.bundle_id, record.object, record.requester, record.requester_role,
                                f"{record.approver} (admin)", record.reason, record.query, record.recording_ids,
                                self.settings.appliance_id)
        last = [0.0]

        def progress(step: BuildProgress) -> None:
            now = time.monotonic()
            if now - last[0] >= PROGRESS_INTERVAL_S or step.recordings_done == step.recordings_total:
                last[0] = now
                self.store.set_progress(export_id, step)

        try:
            built = build_bundle(request, catalog=self.catalog, keys=self.keys, audit=self.audit,
                                 vault_dir=self.vault_dir, out_path=self.bundle_path(record),
                                 actor=SYSTEM.username, role=SYSTEM.role, progress=progress, clock=self.clock)
        except (BundleError, OSError) as err:
            log.warning("export %s failed: %s", export_id, err)
            return self.store.fail(export_id, str(err))
        except Exception as err:   # a bug must not leave the row "building" for ever
            log.exception("export %s failed", export_id)
            return self.store.fail(export_id, f"internal error: {err}")
        expires = self.clock() + self.settings.expire_hours * 3600
        return self.store.finish(export_id, built.path, built.size, built.sha256, expires)

    # -- download and expiry

    def download(self, export_id: int, actor: Actor) -> tuple[ExportRecord, Path]:
        """Check and audit a download; returns the record and the bundle file to send."""
        record = self.store.get(export_id)
        if record is not None and record.path and not Path(record.path).is_file() \
                and record.state in (ExportState.READY, ExportState.DOWNLOADED):
            reason = "the bundle file is missing from exports.bundle_dir"
            self.store.refuse(export_id, actor, "export.download", reason)
            raise ExportRefused(reason)
        record = self.store.record_download(export_id, actor)
        assert record.path is not None
        return record, Path(record.path)

    def expire_due(self) -> list[ExportRecord]:
        """Expire what is due (deleting bundle files), then remove stray files in bundle_dir."""
        now = self.clock()
        ttl = self.settings.request_expire_hours * 3600
        expired = []
        for record in self.store.find(states=[ExportState.REQUESTED, ExportState.READY, ExportState.DOWNLOADED],
                                      limit=100_000):
            if expiry_due(record.facts(), now, ttl):
                with contextlib.suppress(ExportRefused):   # another process expired it meanwhile
                    expired.append(self.store.expire(record.id, ttl))
                if record.path:
                    self._remove(Path(record.path))
        self._remove_strays()
        return expired

    def _remove_strays(self) -> None:
        """Bundle files no live export owns (a crash between expiry and deletion)."""
        live = {r.id: r.state for r in self.store.find(
            states=[ExportState.BUILDING, ExportState.READY, ExportState.DOWNLOADED], limit=100_000)}
        for path in self.settings.bundle_dir.iterdir():
            bundle, part = BUNDLE_NAME.fullmatch(path.name), PART_NAME.fullmatch(path.name)
            # a bundle is renamed into place just before its row becomes ready: building counts as live
            stray_bundle = bundle is not None and live.get(int(bundle[1])) not in (*DOWNLOADABLE, ExportState.BUILDING)
            stray_part = part is not None and live.get(int(part[1])) != ExportState.BUILDING
            if stray_bundle or stray_part:
                self._remove(path)

    @staticmethod
    def _remove(path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def describe_search(query: str | None, filters: dict[str, Any] | None) -> str:
    """A search as people read it: 'text; tag=x; date_from=...'."""
    parts = [query.strip()] if query and query.strip() else []
    parts += [f"{k}={v}" for k, v in sorted((filters or {}).items()) if v not in (None, "")]
    return "; ".join(parts) or "(all recordings)"
