"""The catalog: every recording's metadata, keys, tags, notes and search index in SQLite (apsw).

Threads and connections
-----------------------
* One writer thread (:class:`CatalogWriter`) owns the only write connection. Public write
  methods put a job on its queue and block until the job's transaction has committed (or raise
  the job's error). The writer groups queued jobs into one transaction (each job in its own
  SAVEPOINT, so one failing job does not take the others down): many concurrent callers cost
  one commit, not one each. A job submitted from the writer thread itself (e.g. an audit entry
  written inside a catalog operation) runs inline, inside the current transaction.
* Readers (:meth:`Catalog.reader`) open their own read-only connections. WAL mode lets them
  read committed data while the writer writes. A reader may be used from any thread; its own
  lock serialises callers. :class:`Catalog`'s read methods use one reader per calling thread.

Connection settings: WAL, ``synchronous=FULL`` (a committed recording survives a power cut,
not only a process crash), foreign keys on, ``secure_delete`` on for the writer (a destroyed
wrapped key is overwritten in the database file rather than left in a free page;
:meth:`Catalog.checkpoint` then squeezes it out of the WAL), ``trusted_schema`` off, and a busy
timeout after which :class:`CatalogLocked` names the problem.

Search
------
:meth:`CatalogReader.search` combines a free-text query with filters; every criterion must hold.
Each word of the query (text in double quotes is one phrase) is matched as a substring:

* digits (``+``, spaces, dashes, dots, slashes, parentheses allowed, three digits or more):
  part of the caller's or callee's number, through the number n-gram index (see
  storage/migrations.py; trigrams of digits are too dense to search 10 M calls quickly);
* a whole Call-ID: that dialog, through the ``call_id`` index;
* any other text of three characters or more: FTS5 with the trigram tokenizer over the parties
  (numbers, URIs, Call-ID), tags, notes and transcript;
* shorter text: trigram FTS cannot match fewer than three characters, so the term is matched
  with ``LIKE`` against the numbers, URIs and Call-ID only, which scans the rows the other
  criteria leave (fine with a date range or an agent, slow on a bare 10 M-row catalog).

``party`` is the same restricted to the parties. ``tag`` is exact (case-insensitive).
Results are newest first by default. ``recordings.id`` is the start time in milliseconds, so
"newest first", date ranges and pages are rowid ranges, and an FTS index (whose rowid is the
same id) can drive the query in time order and stop after the page. ``total`` is exact up to
``count_limit`` (1,000 by default; None counts everything); above it ``total_exact`` is False and
``total == count_limit`` (show "1,000+"): counting every match of a term found in millions of rows would
cost seconds for no use.

JSON
----
``to_dict()`` of every row type gives a stable key order (the dataclass field order below):
timestamps as ISO 8601 UTC with milliseconds (``2024-05-01T10:00:00.123Z``), booleans as
booleans, lists as lists. Key material is never part of it: a row says ``has_key`` only.

Storage security
----------------
The catalog holds metadata in the clear (numbers, Call-IDs, notes, transcripts) so that it can
be searched; only audio is encrypted (in the vault). Its volume belongs on encrypted storage
(dm-crypt/LUKS): :func:`storage_encryption_warning` tells when it is not, for the daemon to log
at start.
"""

from __future__ import annotations

import json
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import apsw

from capture.recording import iso_utc
from storage.agents import DEFAULT_AGENT_HEADER, AgentMapping
from storage.migrations import (
    AGENT_MARKER_BASE,
    AGENT_MARKER_END,
    AGENT_MARKER_SPAN,
    CJK_BIGRAM_PAD,
    CJK_FIRST,
    CJK_LAST,
    MIGRATIONS,
    NUMBER_GRAM_SIZES,
    CatalogError,
    Migration,
    SchemaTooNew,
    apply_migrations,
    digits_sql,
    schema_version,
)

__all__ = [
    "Catalog", "CatalogClosed", "CatalogError", "CatalogLocked", "CatalogReader", "CatalogWriter",
    "NotRecordedRow", "Note", "RecordingDetail", "RecordingRow", "SchemaTooNew", "SearchResult",
    "UnknownRecording", "WrappedKey", "storage_encryption_warning",
]

T = TypeVar("T")

DEFAULT_BUSY_TIMEOUT_MS = 5000
DEFAULT_COUNT_LIMIT = 1_000
READER_CACHE_MB = 32
FINISHED_STATES = ("complete", "partial")
# trigram tokenizer: FTS5 cannot match a string shorter than three characters
TRIGRAM = 3
NUMBER_SEPARATORS = re.compile(r"[\s\-./()]")
# consent filters of search(): the recording's consent.played / consent.audible (None until
# the announcer is configured: "unknown")
CONSENT_FILTERS = {
    "played": "r.consent_played = 1",
    "not_played": "r.consent_played = 0",
    "audible": "r.consent_audible = 1",
    "not_audible": "r.consent_audible = 0",
    "unknown": "r.consent_played IS NULL",
}
# the rowid is the start time in milliseconds (storage/migrations.py)
ORDERINGS = {
    "-started_at": "{rowid} DESC",
    "started_at": "{rowid} ASC",
    "-duration_s": "r.duration_s DESC, {rowid} DESC",
    "duration_s": "r.duration_s ASC, {rowid} ASC",
}


class UnknownRecording(CatalogError):
    """No recording with that id."""

    def __init__(self, recording_id: str) -> None:
        super().__init__(f"unknown recording id {recording_id!r}")
        self.recording_id = recording_id


class CatalogLocked(CatalogError):
    """Another process held the write lock longer than the busy timeout."""


class CatalogClosed(CatalogError):
    """The catalog (or its writer) was closed."""


# ---------------------------------------------------------------------------------------------
# rows


def _to_dict(obj: Any) -> dict[str, Any]:
    """Dataclass → dict in field order; *_at floats become ISO strings, nested rows dicts."""
    out: dict[str, Any] = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if f.name.endswith("_at") or f.name == "ts":
            value = iso_utc(value)
        elif isinstance(value, list):
            value = [v.to_dict() if hasattr(v, "to_dict") else v for v in value]
        out[f.name] = value
    return out


@dataclass(slots=True)
class RecordingRow:
    """One recording as listed by search (no metadata JSON, no key material)."""

    recording_id: str
    call_id: str
    caller: str | None
    callee: str | None
    caller_uri: str | None
    callee_uri: str | None
    direction: str
    agent_id: str | None
    started_at: float
    answered_at: float | None
    ended_at: float | None
    duration_s: float | None
    sample_rate: int | None
    channels: int | None
    codecs: list[str]
    end_reason: str | None
    state: str
    partial_note: str | None
    consent_played: bool | None
    consent_audible: bool | None
    completeness: float | None
    vault_path: str | None
    vault_size: int | None
    vault_sha256: str | None
    key_id: str | None
    kek_id: str | None
    has_key: bool
    tags: list[str]
    created_at: float
    updated_at: float

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)


@dataclass(slots=True)
class Note:
    id: int
    recording_id: str
    author: str
    text: str
    ts: float

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)


@dataclass(slots=True)
class RecordingDetail:
    """One recording with everything the catalog knows (``recorderd show``)."""

    recording: RecordingRow
    metadata: dict[str, Any]
    streams: list[dict[str, Any]]
    dtmf: list[dict[str, Any]]
    notes: list[Note]

    def to_dict(self) -> dict[str, Any]:
        return {**self.recording.to_dict(), "metadata": self.metadata, "streams": self.streams,
                "dtmf": self.dtmf, "notes": [n.to_dict() for n in self.notes]}


@dataclass(slots=True)
class SearchResult:
    rows: list[RecordingRow]
    total: int
    total_exact: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total, "total_exact": self.total_exact,
                "rows": [r.to_dict() for r in self.rows]}


@dataclass(slots=True)
class WrappedKey:
    """A recording's data key as stored: wrapped by the KEK ``kek_id``."""

    recording_id: str
    key_id: str | None
    kek_id: str
    wrapped_key: bytes


@dataclass(slots=True)
class NotRecordedRow:
    id: int
    call_id: str
    reason: str
    seen_at: float
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)


_ROW_COLUMNS = (
    "r.recording_id, r.call_id, r.caller, r.callee, r.caller_uri, r.callee_uri, r.direction, "
    "r.agent_id, r.started_at, r.answered_at, r.ended_at, r.duration_s, r.sample_rate, r.channels, "
    "r.codecs, r.end_reason, r.state, r.partial_note, r.consent_played, r.consent_audible, "
    "r.completeness, r.vault_path, r.vault_size, r.vault_sha256, r.key_id, r.kek_id, "
    "r.wrapped_key IS NOT NULL, r.created_at, r.updated_at")


def _optional_bool(value: Any) -> bool | None:
    return None if value is None else bool(value)


def _row_from_sql(values: tuple[Any, ...], tags: list[str]) -> RecordingRow:
    (recording_id, call_id, caller, callee, caller_uri, callee_uri, direction, agent_id, started_at,
     answered_at, ended_at, duration_s, sample_rate, channels, codecs, end_reason, state,
     partial_note, consent_played, consent_audible, completeness, vault_path, vault_size,
     vault_sha256, key_id, kek_id, has_key, created_at, updated_at) = values
    return RecordingRow(
        recording_id, call_id, caller, callee, caller_uri, callee_uri, direction, agent_id,
        started_at, answered_at, ended_at, duration_s, sample_rate, channels, json.loads(codecs),
        end_reason, state, partial_note, _optional_bool(consent_played),
        _optional_bool(consent_audible), completeness, vault_path, vault_size, vault_sha256,
        key_id, kek_id, bool(has_key), tags, created_at, updated_at)


# ---------------------------------------------------------------------------------------------
# values from the recording contract's JSON


def to_epoch(value: float | int | str | datetime | None) -> float | None:
    """Epoch seconds from a float, an ISO 8601 string (``...Z`` allowed) or a datetime."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, int | float):
        return float(value)
    try:
        return datetime.fromisoformat(value).timestamp()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"not a timestamp: {value!r}") from exc


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _completeness_ratio(metadata: dict[str, Any]) -> float | None:
    legs = (metadata.get("completeness") or {}).get("legs") or []
    expected = sum(int(leg.get("expected") or 0) for leg in legs)
    received = sum(int(leg.get("received") or 0) for leg in legs)
    return round(received / expected, 4) if expected else None


def _identity_values(identity: dict[str, Any], agents: AgentMapping) -> dict[str, Any]:
    """Columns known when a call starts (capture.recording.call_identity())."""
    return {
        "call_id": identity.get("call_id") or "",
        "caller": identity.get("caller"),
        "callee": identity.get("callee"),
        "caller_uri": identity.get("caller_uri"),
        "callee_uri": identity.get("callee_uri"),
        "direction": identity.get("direction") or "unknown",
        "agent_id": agents.agent_of(identity),
        "answered_at": to_epoch(identity.get("answered_at")),
        "ended_at": to_epoch(identity.get("ended_at")),
        "end_reason": identity.get("end_reason"),
    }


def _metadata_values(metadata: dict[str, Any], agents: AgentMapping) -> dict[str, Any]:
    """Every searched column of a finished recording (capture.recording.recording_metadata())."""
    consent = metadata.get("consent") or {}
    started = metadata.get("started_at_epoch")
    return {
        **_identity_values(metadata, agents),
        "started_at": to_epoch(started if started is not None else metadata.get("started_at")),
        "duration_s": metadata.get("duration_s"),
        "sample_rate": metadata.get("sample_rate"),
        "channels": metadata.get("channels"),
        "codecs": _dumps(list(metadata.get("codecs") or [])),
        "partial_note": metadata.get("partial_note"),
        "consent_played": consent.get("played"),
        "consent_audible": consent.get("audible"),
        "completeness": _completeness_ratio(metadata),
        "metadata": _dumps(metadata),
    }


_STREAM_FIELDS = ("ssrc", "channel", "src", "dst", "payload_types", "codecs", "packets", "expected",
                  "lost", "duplicates", "out_of_order", "max_jitter_ms", "first_arrival", "last_arrival")
_JSON_STREAM_FIELDS = {"payload_types", "codecs"}
_DTMF_FIELDS = ("digit", "channel", "offset_s", "duration_ms")


def _stream_values(recording_id: str, ordinal: int, stream: dict[str, Any]) -> tuple[Any, ...]:
    values = [_dumps(stream.get(k) or ({} if k == "payload_types" else [])) if k in _JSON_STREAM_FIELDS
              else stream.get(k) for k in _STREAM_FIELDS]
    return (recording_id, ordinal, *values)


#: columns of ``recordings`` a bulk import provides (``id`` is derived from ``started_at``)
IMPORT_COLUMNS = ("recording_id", "call_id", "caller", "callee", "caller_uri", "callee_uri", "direction",
                  "agent_id", "started_at", "answered_at", "ended_at", "duration_s", "sample_rate",
                  "channels", "codecs", "end_reason", "state", "partial_note", "consent_played",
                  "consent_audible", "completeness", "metadata", "vault_path", "vault_size",
                  "vault_sha256", "key_id", "kek_id", "wrapped_key", "created_at", "updated_at")


def time_id(epoch: float) -> int:
    """The rowid a recording starting at ``epoch`` wants: its start in milliseconds."""
    return round(epoch * 1000)


def _free_id(conn: apsw.Connection, started_at: float, recording_id: str) -> int:
    """The first id at or after ``time_id(started_at)`` that is free (or already this recording's).

    One query walks the taken ids from there in order: a burst of calls starting within the
    same milliseconds (a daemon restart, a mass dial-out) used to cost one query per taken id,
    which made catalogue inserts quadratic in the burst."""
    candidate = time_id(started_at)
    rows = conn.execute("SELECT id, recording_id FROM recordings WHERE id >= ? ORDER BY id", (candidate,))
    try:
        for taken, owner in rows:
            if taken != candidate or owner == recording_id:
                break   # a gap, or this recording's own row
            candidate += 1
    finally:
        rows.close()
    return candidate


def _distinct_time_ids(started: list[float]) -> list[int]:
    """Time ids for a batch, made distinct within it (a clash moves one millisecond on)."""
    taken: set[int] = set()
    ids = []
    for epoch in started:
        candidate = time_id(epoch)
        while candidate in taken:
            candidate += 1
        taken.add(candidate)
        ids.append(candidate)
    return ids


@dataclass(frozen=True, slots=True)
class StoredRow:
    """What a write needs to know of a recording's row before it changes it."""

    state: str
    id: int
    started_at: float | None

    def starts_at(self, epoch: float) -> bool:
        """The same millisecond: the row may keep its id."""
        return self.started_at is not None and time_id(self.started_at) == time_id(epoch)


def _stored_row(conn: apsw.Connection, recording_id: str) -> StoredRow | None:
    found = conn.execute("SELECT state, id, started_at FROM recordings WHERE recording_id = ?",
                         (recording_id,)).fetchone()
    return StoredRow(str(found[0]), int(found[1]), found[2]) if found else None


def _write_recording(conn: apsw.Connection, values: dict[str, Any], stored: StoredRow | None) -> None:
    """Insert (``stored`` None) or update one ``recordings`` row; its id follows ``started_at``
    (an update whose start is the same millisecond keeps the id it has)."""
    if stored is not None and stored.starts_at(values["started_at"]):
        row_id = stored.id
    else:
        row_id = _free_id(conn, values["started_at"], values["recording_id"])
    values = {**values, "id": row_id}
    if stored is not None:
        changed = [c for c in values if c not in ("recording_id", "created_at")]
        conn.execute(f"UPDATE recordings SET {', '.join(f'{c} = ?' for c in changed)} WHERE recording_id = ?",  # nosec B608  # column names from _identity_values/_metadata_values/IMPORT_COLUMNS (code); every value is a ? parameter
                     (*(values[c] for c in changed), values["recording_id"]))
    else:
        conn.execute(f"INSERT INTO recordings ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",  # nosec B608  # column names from _identity_values/_metadata_values/IMPORT_COLUMNS (code); every value is a ? parameter
                     tuple(values.values()))


# ---------------------------------------------------------------------------------------------
# connections


def _translate(exc: BaseException, path: str, busy_timeout_ms: int) -> BaseException:
    """apsw errors an operator can act on → CatalogError with a clear message."""
    if isinstance(exc, apsw.BusyError):
        return CatalogLocked(f"catalog {path} is locked by another process "
                             f"(waited {busy_timeout_ms} ms for the write lock)")
    if isinstance(exc, apsw.FullError):
        return CatalogError(f"catalog {path}: disk full")
    if isinstance(exc, apsw.ReadOnlyError | apsw.PermissionsError):
        return CatalogError(f"catalog {path}: no permission to write ({exc})")
    if isinstance(exc, apsw.CorruptError | apsw.NotADBError):
        return CatalogError(f"catalog {path} is damaged or not a database ({exc})")
    return exc


def _open(path: str, *, readonly: bool, busy_timeout_ms: int) -> apsw.Connection:
    flags = apsw.SQLITE_OPEN_READONLY if readonly else apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE
    try:
        conn = apsw.Connection(path, flags=flags)
        conn.set_busy_timeout(busy_timeout_ms)
        conn.execute("PRAGMA foreign_keys = ON; PRAGMA trusted_schema = OFF")
        if readonly:  # searches revisit the FTS structure and index pages: keep them in process
            conn.execute(f"PRAGMA cache_size = {-1024 * READER_CACHE_MB}")
    except apsw.CantOpenError as exc:
        raise CatalogError(f"cannot open catalog {path} ({'read-only' if readonly else 'read-write'}): "
                           f"{exc}") from exc
    return conn


def _configure_writer(conn: apsw.Connection, synchronous: str, cache_mb: int) -> None:
    if synchronous.upper() not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
        raise ValueError(f"synchronous must be OFF, NORMAL, FULL or EXTRA, not {synchronous!r}")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchall()[0][0]
    if str(mode).lower() != "wal":
        raise CatalogError(f"catalog {conn.filename}: cannot switch to WAL mode (got {mode})")
    conn.execute(f"PRAGMA synchronous = {synchronous.upper()}; PRAGMA secure_delete = ON; "
                 f"PRAGMA cache_size = {-1024 * int(cache_mb)}")


@dataclass(slots=True)
class _Job:
    fn: Callable[[apsw.Connection], Any]
    future: Future[Any]
    in_transaction: bool = True


class CatalogWriter:
    """The thread that owns the catalog's write connection.

    ``call(fn)`` runs ``fn(connection)`` in a transaction on the writer thread and returns its
    result once committed. Opening the database and applying migrations happen on the thread
    too; their errors are raised by the constructor.
    """

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
                 synchronous: str = "FULL", cache_mb: int = 64, max_batch: int = 64,
                 migrations: tuple[Migration, ...] = MIGRATIONS) -> None:
        self.path = str(path)
        self.busy_timeout_ms = busy_timeout_ms
        self._synchronous = synchronous
        self._cache_mb = cache_mb
        self._max_batch = max(1, max_batch)
        self._migrations = migrations
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._conn: apsw.Connection | None = None
        ready: Future[None] = Future()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="catalog-writer", daemon=True)
        self._thread.start()
        ready.result()

    # -- public

    def call(self, fn: Callable[[apsw.Connection], T], *, in_transaction: bool = True) -> T:
        """Run ``fn`` in a write transaction; block until it committed; return its result.

        ``in_transaction=False`` runs ``fn`` alone between transactions (a WAL checkpoint).
        """
        if threading.current_thread() is self._thread:
            assert self._conn is not None
            return fn(self._conn)
        return self.submit(fn, in_transaction=in_transaction).result()

    def submit(self, fn: Callable[[apsw.Connection], T], *, in_transaction: bool = True) -> Future[T]:
        """Queue ``fn``; the future resolves after the commit (or with the job's error)."""
        future: Future[T] = Future()
        with self._lock:
            if self._closed:
                raise CatalogClosed(f"catalog {self.path} is closed")
            self._jobs.put(_Job(fn, future, in_transaction))
        return future

    def close(self) -> None:
        """Finish the queued jobs, then close the connection and stop the thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._jobs.put(None)
        self._thread.join()

    @property
    def closed(self) -> bool:
        return self._closed

    # -- the thread

    def _run(self, ready: Future[None]) -> None:
        try:
            conn = _open(self.path, readonly=False, busy_timeout_ms=self.busy_timeout_ms)
        except BaseException as exc:  # noqa: BLE001 - handed to the constructor's caller
            ready.set_exception(exc)
            return
        try:
            _configure_writer(conn, self._synchronous, self._cache_mb)
            apply_migrations(conn, self._migrations)
        except BaseException as exc:  # noqa: BLE001
            conn.close()
            ready.set_exception(_translate(exc, self.path, self.busy_timeout_ms))
            return
        self._conn = conn
        ready.set_result(None)
        try:
            self._serve(conn)
        finally:
            conn.close()

    def _serve(self, conn: apsw.Connection) -> None:
        held: _Job | None = None
        while True:
            first = held if held is not None else self._jobs.get()
            held = None
            if first is None:
                return
            if not first.in_transaction:
                self._run_alone(conn, first)
                continue
            batch, held, stop = self._drain(first)
            self._run_batch(conn, batch)
            if stop:
                return

    def _drain(self, first: _Job) -> tuple[list[_Job], _Job | None, bool]:
        """Queued transactional jobs after ``first``: (batch, a job that must run outside a
        transaction and was taken from the queue, whether the stop marker came)."""
        batch = [first]
        while len(batch) < self._max_batch:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return batch, None, True
            if not job.in_transaction:
                return batch, job, False
            batch.append(job)
        return batch, None, False

    def _run_alone(self, conn: apsw.Connection, job: _Job) -> None:
        try:
            job.future.set_result(job.fn(conn))
        except BaseException as exc:  # noqa: BLE001 - delivered to the job's caller
            job.future.set_exception(_translate(exc, self.path, self.busy_timeout_ms))

    def _fail_all(self, batch: list[_Job], exc: BaseException) -> None:
        error = _translate(exc, self.path, self.busy_timeout_ms)
        for job in batch:
            if not job.future.done():
                job.future.set_exception(error)

    def _run_batch(self, conn: apsw.Connection, batch: list[_Job]) -> None:
        """One transaction for the batch, one SAVEPOINT per job (group commit)."""
        try:
            conn.execute("BEGIN IMMEDIATE")
        except apsw.Error as exc:
            self._fail_all(batch, exc)
            return
        outcomes: list[tuple[_Job, Any, BaseException | None]] = []
        for job in batch:
            conn.execute("SAVEPOINT job")
            try:
                result = job.fn(conn)
            except BaseException as exc:  # noqa: BLE001 - delivered to the job's caller
                if conn.get_autocommit():
                    # SQLite rolled the whole transaction back (disk full, I/O error): nothing
                    # of this batch is committed
                    self._fail_all(batch, exc)
                    return
                conn.execute("ROLLBACK TO job; RELEASE job")
                outcomes.append((job, None, _translate(exc, self.path, self.busy_timeout_ms)))
            else:
                conn.execute("RELEASE job")
                outcomes.append((job, result, None))
        try:
            conn.execute("COMMIT")
        except apsw.Error as exc:
            if not conn.get_autocommit():
                conn.execute("ROLLBACK")
            self._fail_all(batch, exc)
            return
        for job, result, error in outcomes:
            if error is None:
                job.future.set_result(result)
            else:
                job.future.set_exception(error)


# ---------------------------------------------------------------------------------------------
# reading


def _fts_phrase(text: str) -> str:
    """An FTS5 string literal: the text as one phrase (quotes doubled)."""
    return '"' + text.replace('"', '""') + '"'


def is_cjk_pair(text: str) -> bool:
    """Two CJK ideographs: searched through the transcript's pair tokens."""
    return len(text) == 2 and all(CJK_FIRST <= ord(ch) <= CJK_LAST for ch in text)


def agent_marker(n: int) -> str:
    """The three-character token of agent number `n` in the search index (storage/migrations.py,
    agent_marker_sql: the same formula in SQL)."""
    return (chr(AGENT_MARKER_BASE + n % AGENT_MARKER_SPAN)
            + chr(AGENT_MARKER_BASE + (n // AGENT_MARKER_SPAN) % AGENT_MARKER_SPAN) + chr(AGENT_MARKER_END))


def _like_pattern(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def split_terms(query: str) -> list[str]:
    """Words of a search query; text in double quotes stays one phrase."""
    return [quoted or bare for quoted, bare in re.findall(r'"([^"]*)"|(\S+)', query) if quoted or bare]


_PARTY_COLUMNS = ("r.caller", "r.callee", "r.caller_uri", "r.callee_uri", "r.call_id")
NUMBER_LIKE = re.compile(r"^\+?[0-9]+$")


def number_digits(text: str) -> str | None:
    """The digits of a search term that is a (part of a) phone number, else None."""
    stripped = NUMBER_SEPARATORS.sub("", text)
    return stripped.lstrip("+") if NUMBER_LIKE.match(stripped) and len(stripped.lstrip("+")) >= TRIGRAM else None


def number_grams_query(digits: str) -> str:
    """FTS5 query on ``search_numbers`` for a run of digits (storage/migrations.py).

    The longest gram size that fits, at positions covering the whole run: one token (exact)
    for 3 to 5 digits; for more, the catalog also checks that the digits are contiguous.
    """
    size = max(n for n in NUMBER_GRAM_SIZES if n <= len(digits))
    starts = sorted(set(range(0, len(digits) - size + 1, size)) | {len(digits) - size})
    return " AND ".join(f"{size}x{digits[i:i + size]}" for i in starts)


@dataclass(slots=True)
class _Plan:
    """A search as SQL: FTS5 queries, a rowid (= start time) range, and filters on ``recordings r``.

    ``fts`` maps an FTS table (``search_numbers``, ``search_fts``) to the expressions ANDed in
    its MATCH. With FTS expressions, one FTS index drives (the numbers index if used: it is the
    more selective), newest first by its rowid, within the time range, stopping after the page:
    a term found in millions of rows costs no more than a rare one. Another FTS table is probed
    per candidate. Filters on ``recordings`` are checked per match through a join, or, with
    ``index_first`` (an agent or an exact Call-ID: few rows, reachable by an index), as a set of
    ids built once. Without FTS, ``recordings`` drives through its rowid or an index.
    """

    fts: dict[str, list[str]] = field(default_factory=dict)
    clauses: list[str] = field(default_factory=list)
    params: list[Any] = field(default_factory=list)
    lo: int | None = None
    hi: int | None = None
    index_first: bool = False

    def add(self, clause: str, *params: Any) -> None:
        self.clauses.append(clause)
        self.params.extend(params)

    def add_match(self, table: str, expression: str) -> None:
        self.fts.setdefault(table, []).append(expression)

    def add_text(self, text: str, *, column: str | None) -> None:
        """Substring match: the numbers index for digits, trigram FTS for other text of three
        characters or more, else LIKE on the party columns."""
        digits = number_digits(text)
        if digits is not None:
            self.add_match("search_numbers", number_grams_query(digits))
            if len(digits) not in NUMBER_GRAM_SIZES:  # several grams: are they contiguous?
                self.add(f"(instr({digits_sql('r.caller')}, ?) > 0 OR instr({digits_sql('r.callee')}, ?) > 0)",
                         digits, digits)
        elif len(text) >= TRIGRAM:
            self.add_match("search_fts", f"{column} : {_fts_phrase(text)}" if column else _fts_phrase(text))
        elif column is None and is_cjk_pair(text):
            # a two-character Chinese word: its pair token in the transcript (migration 10)
            self.add_match("search_fts", f"transcript : {_fts_phrase(text + chr(CJK_BIGRAM_PAD))}")
        else:
            pattern = _like_pattern(text)
            self.add("(" + " OR ".join(f"{c} LIKE ? ESCAPE '\\'" for c in _PARTY_COLUMNS) + ")",
                     *([pattern] * len(_PARTY_COLUMNS)))

    def _bounds(self, rowid: str) -> tuple[list[str], list[Any]]:
        clauses, params = [], []
        if self.lo is not None:
            clauses.append(f"{rowid} >= ?")
            params.append(self.lo)
        if self.hi is not None:
            clauses.append(f"{rowid} < ?")
            params.append(self.hi)
        return clauses, params

    def _tables(self) -> list[tuple[str, str]]:
        """(table, MATCH expression), the driving one first."""
        order = sorted(self.fts, key=lambda t: t != "search_numbers")
        return [(table, " AND ".join(self.fts[table])) for table in order]

    def from_where(self, *, rows: bool) -> tuple[str, list[Any], str]:
        """(``FROM ... WHERE ...``, its parameters, the rowid expression to order by).

        ``rows=False`` (counting) skips the join when no filter needs ``recordings``.
        """
        tables = self._tables()
        if not tables:
            conditions, params = self._bounds("r.id")
            where = " AND ".join([*conditions, *self.clauses])
            return f"FROM recordings r{' WHERE ' + where if where else ''}", [*params, *self.params], "r.id"
        (driver, expression), probes = tables[0], tables[1:]
        conditions, params = self._bounds("f.rowid")
        conditions, params = [f"f.{driver} MATCH ?", *conditions], [expression, *params]
        for table, probe in probes:
            conditions.append(f"EXISTS (SELECT 1 FROM {table} p WHERE p.{table} MATCH ? AND p.rowid = f.rowid)")  # nosec B608  # FTS table names are literals (_Plan.add_match callers); the MATCH text is a parameter
            params.append(probe)
        join = rows
        if self.clauses and self.index_first:
            # few rows through an index: build their id set once (SQLite adds a Bloom filter)
            # and test each FTS match against it; ``+`` keeps SQLite from turning the IN list
            # into one MATCH per id (~0.5 ms each: parse, then a seek per token and segment)
            inner, inner_params = self._bounds("r.id")
            conditions.append(f"+f.rowid IN (SELECT r.id FROM recordings r WHERE {' AND '.join([*inner, *self.clauses])})")  # nosec B608  # _Plan clauses are code constants; search values are ? parameters
            params += [*inner_params, *self.params]
        elif self.clauses:
            conditions += self.clauses
            params += self.params
            join = True
        # CROSS JOIN keeps the FTS index as the outer loop (SQLite does not reorder it)
        source = f"{driver} f" + (" CROSS JOIN recordings r ON r.id = f.rowid" if join else "")
        return f"FROM {source} WHERE {' AND '.join(conditions)}", params, "f.rowid"


def _order_sql(order_by: str, rowid: str) -> str:
    if order_by not in ORDERINGS:
        raise ValueError(f"order_by must be one of {', '.join(ORDERINGS)}, not {order_by!r}")
    return ORDERINGS[order_by].format(rowid=rowid)


class CatalogReader:
    """A read-only connection with the catalog's queries; usable from any thread."""

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS) -> None:
        self.path = str(path)
        if not Path(self.path).exists():
            raise CatalogError(f"catalog {self.path} does not exist")
        self.conn = _open(self.path, readonly=True, busy_timeout_ms=busy_timeout_ms)
        self._lock = threading.RLock()
        self._check_version()

    def _check_version(self) -> None:
        version, newest = schema_version(self.conn), MIGRATIONS[-1].version
        if version > newest:
            self.close()
            raise SchemaTooNew(f"catalog {self.path} has schema version {version}, newer than the "
                               f"{newest} this recorderd knows: upgrade recorderd")
        if version == 0:
            self.close()
            raise CatalogError(f"catalog {self.path} is not initialised (schema version 0)")

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> CatalogReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self.conn.execute(sql, tuple(params)).fetchall()

    def _snapshot(self, fn: Callable[[], T]) -> T:
        """Run several queries on one consistent snapshot (a read transaction)."""
        with self._lock:
            self.conn.execute("BEGIN")
            try:
                return fn()
            finally:
                self.conn.execute("COMMIT")

    def _tags_of(self, recording_ids: list[str]) -> dict[str, list[str]]:
        tags: dict[str, list[str]] = {rid: [] for rid in recording_ids}
        if recording_ids:
            marks = ", ".join("?" * len(recording_ids))
            for rid, tag in self._query(f"SELECT recording_id, tag FROM tags WHERE recording_id IN ({marks}) "  # nosec B608  # only ? placeholders are joined in; every value is a ? parameter
                                        f"ORDER BY recording_id, tag", recording_ids):
                tags[rid].append(tag)
        return tags

    def _rows(self, sql: str, params: Iterable[Any] = ()) -> list[RecordingRow]:
        found = self._query(sql, params)
        tags = self._tags_of([values[0] for values in found])
        return [_row_from_sql(values, tags[values[0]]) for values in found]

    # -- single recordings

    def get(self, recording_id: str) -> RecordingDetail | None:
        """Everything about one recording, or None when the id is unknown."""
        return self._snapshot(lambda: self._get(recording_id))

    def _get(self, recording_id: str) -> RecordingDetail | None:
        rows = self._rows(f"SELECT {_ROW_COLUMNS} FROM recordings r WHERE r.recording_id = ?", (recording_id,))  # nosec B608  # column names from the _ROW_COLUMNS constant; every value is a ? parameter
        if not rows:
            return None
        metadata = json.loads(self._query("SELECT metadata FROM recordings WHERE recording_id = ?",
                                          (recording_id,))[0][0])
        streams = [self._stream_dict(values) for values in self._query(
            f"SELECT {', '.join(_STREAM_FIELDS)} FROM streams WHERE recording_id = ? ORDER BY ordinal",  # nosec B608  # column names from the _STREAM_FIELDS constant; every value is a ? parameter
            (recording_id,))]
        dtmf = [dict(zip(_DTMF_FIELDS, values, strict=True)) for values in self._query(
            f"SELECT {', '.join(_DTMF_FIELDS)} FROM dtmf WHERE recording_id = ? ORDER BY ordinal",  # nosec B608  # column names from the _DTMF_FIELDS constant; every value is a ? parameter
            (recording_id,))]
        notes = [Note(*values) for values in self._query(
            "SELECT id, recording_id, author, text, ts FROM notes WHERE recording_id = ? ORDER BY id",
            (recording_id,))]
        return RecordingDetail(rows[0], metadata, streams, dtmf, notes)

    @staticmethod
    def _stream_dict(values: tuple[Any, ...]) -> dict[str, Any]:
        return {k: json.loads(v) if k in _JSON_STREAM_FIELDS else v
                for k, v in zip(_STREAM_FIELDS, values, strict=True)}

    def row(self, recording_id: str) -> RecordingRow | None:
        """One recording's search row (no metadata, streams or notes), or None."""
        rows = self._rows(f"SELECT {_ROW_COLUMNS} FROM recordings r WHERE r.recording_id = ?", (recording_id,))  # nosec B608  # column names from the _ROW_COLUMNS constant; every value is a ? parameter
        return rows[0] if rows else None

    def get_key(self, recording_id: str) -> WrappedKey | None:
        """The wrapped data key of a recording; None when destroyed (purged) or never stored."""
        found = self._query("SELECT recording_id, key_id, kek_id, wrapped_key FROM recordings "
                            "WHERE recording_id = ?", (recording_id,))
        if not found:
            raise UnknownRecording(recording_id)
        rid, key_id, kek_id, blob = found[0]
        return None if blob is None or kek_id is None else WrappedKey(rid, key_id, kek_id, bytes(blob))

    def find_by_call_id(self, call_id: str) -> list[RecordingRow]:
        """Recordings of one SIP dialog (exact Call-ID)."""
        return self._rows(f"SELECT {_ROW_COLUMNS} FROM recordings r WHERE r.call_id = ? ORDER BY r.id",  # nosec B608  # column names from the _ROW_COLUMNS constant; every value is a ? parameter
                          (call_id,))

    def active_recordings(self) -> list[RecordingRow]:
        """Recordings begun and not finished (after a crash: the ones to recover)."""
        return self._rows(f"SELECT {_ROW_COLUMNS} FROM recordings r WHERE r.state = 'active' ORDER BY r.id")  # nosec B608  # column names from the _ROW_COLUMNS constant

    # -- search

    def search(self, query: str | None = None, *, date_from: float | str | datetime | None = None,
               date_to: float | str | datetime | None = None, party: str | None = None,
               agent_id: str | None = None, direction: str | None = None, tag: str | None = None,
               tags: Sequence[str] = (), min_duration: float | None = None, max_duration: float | None = None,
               state: str | None = None, min_completeness: float | None = None,
               completeness_below: float | None = None, consent: str | None = None,
               assigned_to: str | None = None, limit: int = 50, offset: int = 0,
               order_by: str = "-started_at", count_limit: int | None = DEFAULT_COUNT_LIMIT) -> SearchResult:
        """Recordings matching all the given criteria, newest first by default.

        ``date_from`` is inclusive, ``date_to`` exclusive (epoch seconds, ISO 8601 or datetime,
        compared with ``started_at`` to the millisecond). ``tag`` and each of ``tags`` is exact
        (case-insensitive); a recording must carry every one. ``min_completeness`` (inclusive)
        and ``completeness_below`` (exclusive) bound the ratio of received to expected packets
        (recordings without one, e.g. no RTP expected, match neither). ``consent`` is one of
        :data:`CONSENT_FILTERS`. ``assigned_to`` keeps the recordings a QA reviewer holds an
        assignment for (open or scored). ``order_by`` is one of ``-started_at``, ``started_at``,
        ``-duration_s``, ``duration_s``.
        """
        if limit < 0 or offset < 0:
            raise ValueError("limit and offset must not be negative")
        if consent is not None and consent not in CONSENT_FILTERS:
            raise ValueError(f"consent must be one of {', '.join(CONSENT_FILTERS)}, not {consent!r}")
        plan = self._plan(query, date_from=date_from, date_to=date_to, party=party, agent_id=agent_id,
                          direction=direction, tags=[*([tag] if tag is not None else []), *tags],
                          min_duration=min_duration, max_duration=max_duration, state=state)
        for clause, value in (("r.completeness >= ?", min_completeness), ("r.completeness < ?", completeness_below)):
            if value is not None:
                plan.add(clause, value)
        if consent is not None:
            plan.add(CONSENT_FILTERS[consent])
        if assigned_to is not None:
            # a reviewer's assignments are few: their recordings' ids, looked up by rowid
            plan.add("r.id IN (SELECT x.id FROM qa_assignments a JOIN recordings x ON x.recording_id = a.recording_id "
                     "WHERE a.reviewer = ? AND a.state != 'withdrawn')", assigned_to)
            plan.index_first = True
        return self._snapshot(lambda: self._search(plan, limit, offset, order_by, count_limit))

    def _plan(self, query: str | None, *, date_from: Any, date_to: Any, party: str | None,
              agent_id: str | None, direction: str | None, tags: list[str],
              min_duration: float | None, max_duration: float | None, state: str | None) -> _Plan:
        plan = _Plan()
        for term in split_terms(query or ""):
            if self._is_call_id(term):  # a whole Call-ID: exact, through its index
                plan.add("r.call_id = ?", term)
                plan.index_first = True
            else:
                plan.add_text(term, column=None)
        if party:
            plan.add_text(party, column="parties")
        low, high = to_epoch(date_from), to_epoch(date_to)
        plan.lo = None if low is None else time_id(low)
        plan.hi = None if high is None else time_id(high)
        for clause, value in (("r.agent_id = ?", agent_id), ("r.direction = ?", direction),
                              ("r.duration_s >= ?", min_duration), ("r.duration_s <= ?", max_duration),
                              ("r.state = ?", state)):
            if value is not None:
                plan.add(clause, value)
        for tag in tags:
            tag = tag.strip()
            if len(tag) >= TRIGRAM:  # the FTS narrows, the tags table decides
                plan.add_match("search_fts", f"tags : {_fts_phrase(tag)}")
            plan.add("EXISTS (SELECT 1 FROM tags t WHERE t.recording_id = r.recording_id "
                     "AND t.tag = ? COLLATE NOCASE)", tag)
        if agent_id is not None and "search_fts" in plan.fts:
            # text and an agent: the agent's marker joins the FTS query, which then intersects
            # the agent's doclist with the text's (the agent_id clause stays, to be exact)
            marker = self._query("SELECT n FROM agent_markers WHERE agent_id = ?", (agent_id,))
            if marker:
                plan.add_match("search_fts", f"parties : {_fts_phrase(agent_marker(int(marker[0][0])))}")
        elif agent_id is not None:
            # one agent's calls are few: walk them (agent index, in time order) and test each
            plan.index_first = True
        return plan

    def _is_call_id(self, term: str) -> bool:
        return len(term) >= TRIGRAM and bool(self._query("SELECT 1 FROM recordings WHERE call_id = ? LIMIT 1", (term,)))

    def _search(self, plan: _Plan, limit: int, offset: int, order_by: str,
                count_limit: int | None) -> SearchResult:
        source, params, rowid = plan.from_where(rows=True)
        rows = self._rows(f"SELECT {_ROW_COLUMNS} {source} ORDER BY {_order_sql(order_by, rowid)} "
                          f"LIMIT ? OFFSET ?", [*params, limit, offset])
        if offset == 0 and len(rows) < limit:
            return SearchResult(rows, len(rows), True)
        source, params, _ = plan.from_where(rows=False)
        if count_limit is None:
            return SearchResult(rows, self._query(f"SELECT count(*) {source}", params)[0][0])
        counted = self._query(f"SELECT count(*) FROM (SELECT 1 {source} LIMIT ?)", [*params, count_limit + 1])[0][0]  # nosec B608  # FROM/WHERE built by _Plan from code constants; every value is a ? parameter
        return SearchResult(rows, min(counted, count_limit), counted <= count_limit)

    # -- keys and the rest

    def iter_wrapped_keys(self, kek_id: str, *, batch: int = 500) -> Iterator[WrappedKey]:
        """Every live data key wrapped by ``kek_id``, in small batches (no long read transaction).

        Rows rewrapped meanwhile drop out (their ``kek_id`` changed): a rotation killed halfway
        and started again simply continues with the rest.
        """
        last = -(2**63)  # ids are start times (ms): below any of them
        while True:
            found = self._query(
                "SELECT id, recording_id, key_id, kek_id, wrapped_key FROM recordings "
                "WHERE id > ? AND kek_id = ? AND wrapped_key IS NOT NULL ORDER BY id LIMIT ?",
                (last, kek_id, batch))
            for _, rid, key_id, kek, blob in found:
                yield WrappedKey(rid, key_id, kek, bytes(blob))
            if len(found) < batch:
                return
            last = found[-1][0]

    def key_counts(self) -> dict[str, int]:
        """Live (wrapped) data keys per KEK id (``recorderd keys status``)."""
        return dict(self._query("SELECT kek_id, count(*) FROM recordings WHERE wrapped_key IS NOT NULL "
                                "GROUP BY kek_id ORDER BY kek_id"))

    def not_recorded(self, *, since: float | str | datetime | None = None,
                     until: float | str | datetime | None = None, limit: int = 100) -> list[NotRecordedRow]:
        """Calls seen but not recorded, newest first."""
        low, high = to_epoch(since), to_epoch(until)
        found = self._query(
            "SELECT id, call_id, reason, seen_at, metadata FROM not_recorded "
            "WHERE (? IS NULL OR seen_at >= ?) AND (? IS NULL OR seen_at < ?) ORDER BY seen_at DESC, id DESC LIMIT ?",
            (low, low, high, high, limit))
        return [NotRecordedRow(i, cid, reason, seen, json.loads(meta)) for i, cid, reason, seen, meta in found]

    def capture_minutes(self, *, since: float | str | datetime | None = None) -> list[tuple[int, str, int, int]]:
        """(minute, interface, packets, drops) per minute of capture, oldest first."""
        low = to_epoch(since)
        return [(int(m), str(i), int(p), int(d)) for m, i, p, d in self._query(
            "SELECT minute, interface, packets, drops FROM capture_minutes WHERE ? IS NULL OR minute >= ? "
            "ORDER BY minute, interface", (low, low))]

    def integrity_check(self) -> str:
        """``ok``, or one problem per line (SQLite's integrity check, FTS5 included, and FKs)."""
        problems = [str(r[0]) for r in self._query("PRAGMA integrity_check") if r[0] != "ok"]
        problems += [f"foreign key: {table} row {rowid} refers to a missing {parent}"
                     for table, rowid, parent, _ in self._query("PRAGMA foreign_key_check")]
        return "\n".join(problems) if problems else "ok"


# ---------------------------------------------------------------------------------------------
# the catalog


class Catalog:
    """The catalog database: writes through one writer thread, reads through readers.

    ``agents`` says how a recording's ``agent_id`` is found (storage/agents.py: a SIP header or
    an extension → agent mapping); without it, ``agent_header`` names the SIP header (in the
    metadata's ``sip_headers``) that carries the agent id. ``clock`` gives ``created_at`` /
    ``updated_at`` / note times (tests pass their own).
    """

    def __init__(self, path: str | os.PathLike[str], *, agent_header: str = DEFAULT_AGENT_HEADER,
                 agents: AgentMapping | None = None,
                 busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS, synchronous: str = "FULL",
                 cache_mb: int = 64, clock: Callable[[], float] = time.time,
                 migrations: tuple[Migration, ...] = MIGRATIONS) -> None:
        self.path = str(path)
        self.agents = agents if agents is not None else AgentMapping("header", agent_header)
        self.agent_header = self.agents.header
        self.busy_timeout_ms = busy_timeout_ms
        self.clock = clock
        self.writer = CatalogWriter(self.path, busy_timeout_ms=busy_timeout_ms, synchronous=synchronous,
                                    cache_mb=cache_mb, migrations=migrations)
        self._local = threading.local()
        self._readers: list[CatalogReader] = []
        self._readers_lock = threading.Lock()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Finish queued writes; close the writer and every reader this object opened."""
        self.writer.close()
        with self._readers_lock:
            for reader in self._readers:
                reader.close()
            self._readers.clear()

    def reader(self) -> CatalogReader:
        """A new read-only connection (the caller closes it)."""
        if self.writer.closed:
            raise CatalogClosed(f"catalog {self.path} is closed")
        return CatalogReader(self.path, busy_timeout_ms=self.busy_timeout_ms)

    def thread_reader(self) -> CatalogReader:
        """This thread's own read-only connection, opened once and kept until :meth:`close`
        (servers with a pool of request threads: no connection set-up per request). The
        caller must not close it."""
        reader: CatalogReader | None = getattr(self._local, "reader", None)
        if reader is None:
            reader = self.reader()
            self._local.reader = reader
            with self._readers_lock:
                self._readers.append(reader)
        return reader

    # -- writes

    def begin_recording(self, recording_id: str, call_id: str, started_at: float | str | datetime,
                        identity: dict[str, Any], *, kek_id: str | None = None,
                        wrapped_key: bytes | None = None, key_id: str | None = None) -> None:
        """A call is being recorded: a row in state ``active`` (idempotent while active).

        The wrapped data key is stored from the start, so that the audio of a recording a
        crash interrupted can still be decrypted and recovered (storage/recovery.py)."""
        now = self.clock()
        values = {**_identity_values(identity, self.agents), "recording_id": recording_id,
                  "call_id": call_id, "started_at": to_epoch(started_at), "state": "active",
                  "metadata": _dumps(identity), "created_at": now, "updated_at": now}
        if wrapped_key is not None:
            values.update(kek_id=kek_id, wrapped_key=wrapped_key, key_id=key_id)

        def job(conn: apsw.Connection) -> None:
            stored = _stored_row(conn, recording_id)
            if stored is not None and stored.state != "active":
                raise CatalogError(f"recording {recording_id} is already {stored.state}")
            _write_recording(conn, values, stored)

        self.writer.call(job)

    def finish_recording(self, recording_id: str, metadata: dict[str, Any], vault: dict[str, Any],
                         key_id: str | bytes | None, kek_id: str | None, wrapped_key: bytes | None,
                         state: str = "complete", partial_note: str | None = None) -> None:
        """The recording is closed and in the vault: every column, its streams and DTMF."""
        if state not in FINISHED_STATES:
            raise ValueError(f"a finished recording is {' or '.join(FINISHED_STATES)}, not {state!r}")
        now = self.clock()
        values = {**_metadata_values(metadata, self.agents), "recording_id": recording_id,
                  "state": state, "vault_path": str(vault.get("path")) if vault.get("path") else None,
                  "vault_size": vault.get("size"), "vault_sha256": vault.get("sha256"),
                  "created_at": now, "updated_at": now}
        if wrapped_key is not None:  # else the key stored by begin_recording stays
            values.update(key_id=key_id.hex() if isinstance(key_id, bytes) else key_id, kek_id=kek_id,
                          wrapped_key=wrapped_key)
        if partial_note is not None:
            values["partial_note"] = partial_note
        if values["started_at"] is None:
            raise ValueError(f"metadata of {recording_id} has no started_at")
        streams = [_stream_values(recording_id, i, s) for i, s in enumerate(metadata.get("streams") or [])]
        dtmf = [(recording_id, i, *(d.get(k) for k in _DTMF_FIELDS)) for i, d in enumerate(metadata.get("dtmf") or [])]

        def job(conn: apsw.Connection) -> None:
            stored = _stored_row(conn, recording_id)
            if stored is not None and stored.state == "purged":
                raise CatalogError(f"recording {recording_id} is purged: its key was destroyed")
            _write_recording(conn, values, stored)
            conn.execute("DELETE FROM streams WHERE recording_id = ?; DELETE FROM dtmf WHERE recording_id = ?",
                         (recording_id, recording_id))
            conn.executemany(f"INSERT INTO streams (recording_id, ordinal, {', '.join(_STREAM_FIELDS)}) "  # nosec B608  # column names from the _STREAM_FIELDS constant; every value is a ? parameter
                             f"VALUES ({', '.join('?' * (len(_STREAM_FIELDS) + 2))})", streams)
            conn.executemany(f"INSERT INTO dtmf (recording_id, ordinal, {', '.join(_DTMF_FIELDS)}) "  # nosec B608  # column names from the _DTMF_FIELDS constant; every value is a ? parameter
                             f"VALUES ({', '.join('?' * (len(_DTMF_FIELDS) + 2))})", dtmf)

        self.writer.call(job)

    def import_recordings(self, rows: Iterable[tuple[Any, ...]], *, columns: tuple[str, ...] = IMPORT_COLUMNS,
                          tags: Iterable[tuple[str, str]] = (),
                          transcripts: Iterable[tuple[str, str]] = ()) -> int:
        """Bulk import (restore, migration, benchmarks): many finished recordings, one transaction.

        ``rows`` are tuples in ``columns`` order (names from :data:`IMPORT_COLUMNS`; must include
        ``recording_id`` and ``started_at``); ``tags`` and ``transcripts`` are
        ``(recording_id, text)`` pairs for recordings of this import. The FTS triggers are off
        for the transaction (see storage/migrations.py) and the rows are indexed by one
        statement. A recording id already in the catalog fails the whole import. Returns the
        number of recordings imported.
        """
        unknown = set(columns) - set(IMPORT_COLUMNS)
        if unknown or "recording_id" not in columns or "started_at" not in columns:
            raise ValueError(f"import columns must include recording_id and started_at and come from "
                             f"IMPORT_COLUMNS (unknown: {sorted(unknown)})")
        batch, tag_rows, transcript_rows = list(rows), list(tags), list(transcripts)
        rid_at, start_at = columns.index("recording_id"), columns.index("started_at")
        imported = {row[rid_at] for row in batch}
        strays = {rid for rid, _ in tag_rows + transcript_rows} - imported
        if strays:
            raise ValueError(f"tags/transcripts for recordings outside this import: {sorted(strays)[:5]}")
        ids = _distinct_time_ids([row[start_at] for row in batch])

        def job(conn: apsw.Connection) -> int:
            conn.execute("INSERT INTO bulk_load (active) VALUES (1)")
            before = conn.total_changes()
            conn.executemany(f"INSERT OR IGNORE INTO recordings (id, {', '.join(columns)}) "
                             f"VALUES (?, {', '.join('?' * len(columns))})",
                             [(i, *row) for i, row in zip(ids, batch, strict=True)])
            if conn.total_changes() - before != len(batch):
                self._import_leftovers(conn, batch, ids, rid_at, columns)
            conn.executemany("INSERT OR IGNORE INTO tags (recording_id, tag) VALUES (?, ?)", tag_rows)
            conn.executemany("INSERT INTO transcripts (recording_id, text) VALUES (?, ?) "
                             "ON CONFLICT(recording_id) DO UPDATE SET text = excluded.text", transcript_rows)
            conn.execute("INSERT OR IGNORE INTO agent_markers (agent_id) SELECT DISTINCT agent_id FROM recordings "
                         "WHERE recording_id IN (SELECT value FROM json_each(?)) AND agent_id IS NOT NULL",
                         (_dumps(sorted(imported)),))
            conn.execute("INSERT INTO search_fts (rowid, parties, tags, notes, transcript) "
                         "SELECT id, parties, tags, notes, transcript FROM search_docs "
                         "WHERE recording_id IN (SELECT value FROM json_each(?))", (_dumps(sorted(imported)),))
            conn.execute("INSERT INTO search_numbers (rowid, grams) SELECT id, numbers FROM search_docs "
                         "WHERE recording_id IN (SELECT value FROM json_each(?)) AND numbers IS NOT NULL",
                         (_dumps(sorted(imported)),))
            conn.execute("DELETE FROM bulk_load")
            return len(batch)

        return self.writer.call(job)

    @staticmethod
    def _import_leftovers(conn: apsw.Connection, batch: list[tuple[Any, ...]], ids: list[int], rid_at: int,
                          columns: tuple[str, ...]) -> None:
        """Rows INSERT OR IGNORE skipped: an id taken by an older recording gets the next free
        one; a duplicate recording id (or a violated constraint) is an error."""
        for row_id, row in zip(ids, batch, strict=True):
            found = conn.execute("SELECT recording_id FROM recordings WHERE id = ?", (row_id,)).fetchall()
            if found and found[0][0] == row[rid_at]:
                continue
            if conn.execute("SELECT 1 FROM recordings WHERE recording_id = ?", (row[rid_at],)).fetchall():
                raise CatalogError(f"import: recording {row[rid_at]} is already in the catalog")
            values = dict(zip(columns, row, strict=True))
            _write_recording(conn, values, None)

    def abandon_recording(self, recording_id: str) -> None:
        """An active recording turned out to hold nothing to keep (e.g. no decodable audio):
        its row goes; the call is then listed with add_not_recorded."""
        def job(conn: apsw.Connection) -> None:
            state = self._state(conn, recording_id)
            if state != "active":
                raise CatalogError(f"recording {recording_id} is {state or 'unknown'}, not active")
            conn.execute("DELETE FROM recordings WHERE recording_id = ?", (recording_id,))

        self.writer.call(job)

    def add_not_recorded(self, row: dict[str, Any]) -> int:
        """A call seen but not recorded (``reason``: no_media, codec_unknown: …); returns its id."""
        seen = row.get("seen_at") or row.get("invited_at") or row.get("ended_at")
        values = (row.get("call_id") or "", row.get("reason") or "unknown",
                  to_epoch(seen) if seen is not None else self.clock(), _dumps(row))

        def job(conn: apsw.Connection) -> int:
            conn.execute("INSERT INTO not_recorded (call_id, reason, seen_at, metadata) VALUES (?, ?, ?, ?)", values)
            return conn.last_insert_rowid()

        return self.writer.call(job)

    def add_tag(self, recording_id: str, tag: str) -> bool:
        """Tag a recording; False when it already had the tag."""
        tag = tag.strip()
        if not tag:
            raise ValueError("empty tag")

        def job(conn: apsw.Connection) -> bool:
            self._require(conn, recording_id)
            conn.execute("INSERT OR IGNORE INTO tags (recording_id, tag) VALUES (?, ?)", (recording_id, tag))
            return conn.changes() == 1

        return self.writer.call(job)

    def remove_tag(self, recording_id: str, tag: str) -> bool:
        """Remove a tag; False when the recording did not have it."""
        def job(conn: apsw.Connection) -> bool:
            self._require(conn, recording_id)
            conn.execute("DELETE FROM tags WHERE recording_id = ? AND tag = ?", (recording_id, tag.strip()))
            return conn.changes() == 1

        return self.writer.call(job)

    def add_note(self, recording_id: str, author: str, text: str, ts: float | None = None) -> Note:
        """A reviewer's note (searchable)."""
        when = self.clock() if ts is None else ts

        def job(conn: apsw.Connection) -> Note:
            self._require(conn, recording_id)
            conn.execute("INSERT INTO notes (recording_id, author, text, ts) VALUES (?, ?, ?, ?)",
                         (recording_id, author, text, when))
            return Note(conn.last_insert_rowid(), recording_id, author, text, when)

        return self.writer.call(job)

    def update_note(self, note_id: int, text: str, *, author: str | None = None) -> tuple[Note, Note]:
        """Change a note's text (the search index follows); returns (before, after).

        With ``author``, only that author's note may change (CatalogError otherwise). The time
        stays the note's creation time; the before/after pair is for the caller's audit entry.
        """
        def job(conn: apsw.Connection) -> tuple[Note, Note]:
            found = conn.execute("SELECT id, recording_id, author, text, ts FROM notes WHERE id = ?",
                                 (note_id,)).fetchall()
            if not found:
                raise CatalogError(f"unknown note {note_id}")
            values: tuple[Any, ...] = found[0]
            before = Note(*values)
            if author is not None and before.author != author:
                raise CatalogError(f"note {note_id} was written by {before.author}, not {author}")
            conn.execute("UPDATE notes SET text = ? WHERE id = ?", (text, note_id))
            return before, Note(before.id, before.recording_id, before.author, text, before.ts)

        return self.writer.call(job)

    def add_capture_minutes(self, rows: Iterable[tuple[int, str, int, int]]) -> Future[None]:
        """Count (minute, interface, packets, drops) in; a minute written twice (a restart within
        it) adds up. Queued on the writer thread: the daemon does not wait for it."""
        batch = list(rows)

        def job(conn: apsw.Connection) -> None:
            conn.executemany("INSERT INTO capture_minutes (minute, interface, packets, drops) VALUES (?, ?, ?, ?) "
                             "ON CONFLICT (minute, interface) DO UPDATE SET packets = packets + excluded.packets, "
                             "drops = drops + excluded.drops", batch)

        return self.writer.submit(job)

    def set_transcript(self, recording_id: str, text: str) -> None:
        """The recording's transcript (for analysis/); replaces any earlier one."""
        def job(conn: apsw.Connection) -> None:
            self._require(conn, recording_id)
            conn.execute("INSERT INTO transcripts (recording_id, text) VALUES (?, ?) "
                         "ON CONFLICT(recording_id) DO UPDATE SET text = excluded.text", (recording_id, text))

        self.writer.call(job)

    def set_wrapped_key(self, recording_id: str, kek_id: str, blob: bytes, *,
                        expected_kek_id: str | None = None) -> bool:
        """Store a rewrapped data key (key rotation); one transaction.

        False, and nothing written, when the key was destroyed meanwhile (a rotation never
        resurrects a purged recording) or is no longer wrapped by ``expected_kek_id``.
        """
        return self.set_wrapped_keys([(recording_id, kek_id, blob)], expected_kek_id=expected_kek_id) == 1

    def set_wrapped_keys(self, items: Iterable[tuple[str, str, bytes]], *,
                         expected_kek_id: str | None = None) -> int:
        """Several rewrapped keys in one transaction (a small batch); returns how many were stored."""
        batch, now = list(items), self.clock()

        def job(conn: apsw.Connection) -> int:
            stored = 0
            for recording_id, kek_id, blob in batch:
                self._require(conn, recording_id)
                conn.execute("UPDATE recordings SET kek_id = ?, wrapped_key = ?, updated_at = ? "
                             "WHERE recording_id = ? AND wrapped_key IS NOT NULL AND (? IS NULL OR kek_id = ?)",
                             (kek_id, blob, now, recording_id, expected_kek_id, expected_kek_id))
                stored += conn.changes()
            return stored

        return self.writer.call(job)

    def destroy_key(self, recording_id: str) -> None:
        """Crypto-shred: forget the wrapped data key; the recording becomes ``purged``.

        With ``secure_delete`` the old bytes are overwritten in the database file; call
        :meth:`checkpoint` afterwards (e.g. at the end of a purge run) to also drop them from
        the WAL. Copies of the catalog taken earlier still hold the wrapped key: destroying the
        KEK (after rotating the live keys away from it) is what makes those unreadable.
        """
        now = self.clock()

        def job(conn: apsw.Connection) -> None:
            self._require(conn, recording_id)
            conn.execute("UPDATE recordings SET wrapped_key = NULL, state = 'purged', updated_at = ? "
                         "WHERE recording_id = ?", (now, recording_id))

        self.writer.call(job)

    def checkpoint(self) -> tuple[int, int]:
        """Copy the WAL into the database and truncate it; returns (WAL frames, frames copied)."""
        def job(conn: apsw.Connection) -> tuple[int, int]:
            return conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)

        # a checkpoint cannot run inside a transaction: run it between the writer's batches
        return self.writer.call(job, in_transaction=False)

    @staticmethod
    def _state(conn: apsw.Connection, recording_id: str) -> str | None:
        found = conn.execute("SELECT state FROM recordings WHERE recording_id = ?", (recording_id,)).fetchall()
        return str(found[0][0]) if found else None

    def _require(self, conn: apsw.Connection, recording_id: str) -> None:
        if self._state(conn, recording_id) is None:
            raise UnknownRecording(recording_id)

    # -- reads (one reader per calling thread)

    def get(self, recording_id: str) -> RecordingDetail | None:
        return self.thread_reader().get(recording_id)

    def get_key(self, recording_id: str) -> WrappedKey | None:
        return self.thread_reader().get_key(recording_id)

    def search(self, query: str | None = None, **filters: Any) -> SearchResult:
        return self.thread_reader().search(query, **filters)

    def active_recordings(self) -> list[RecordingRow]:
        return self.thread_reader().active_recordings()

    def iter_wrapped_keys(self, kek_id: str, *, batch: int = 500) -> Iterator[WrappedKey]:
        return self.thread_reader().iter_wrapped_keys(kek_id, batch=batch)

    def key_counts(self) -> dict[str, int]:
        return self.thread_reader().key_counts()

    def integrity_check(self) -> str:
        return self.thread_reader().integrity_check()


# ---------------------------------------------------------------------------------------------
# is the catalog's volume encrypted?


def storage_encryption_warning(path: str | os.PathLike[str], *, mountinfo: str = "/proc/self/mountinfo",
                               sys_root: str = "/sys") -> str | None:
    """A warning when the filesystem holding ``path`` is not on dm-crypt/LUKS, else None.

    The catalog keeps numbers, Call-IDs, notes and transcripts in the clear (it must search
    them); on a stolen disk or backup they are readable unless the volume is encrypted. The
    check finds the mount holding ``path`` in ``/proc/self/mountinfo``, then walks its block
    device and the devices under it (``/sys/dev/block/MAJ:MIN/slaves``, e.g. LVM on LUKS)
    looking for a device-mapper uuid starting with ``CRYPT-``.
    """
    try:
        mount = _mount_of(Path(path), Path(mountinfo).read_text())
    except OSError as exc:
        return f"cannot tell whether {path} is on encrypted storage ({exc})"
    if mount is None:
        return f"cannot tell whether {path} is on encrypted storage (no mount found for it)"
    mount_point, device, fstype, source = mount
    if device.startswith("0:"):
        device = _device_of_source(source) or device
    if device.startswith("0:"):
        return (f"catalog {path} is on {fstype} ({source}), not a block device known to be "
                f"dm-crypt/LUKS: its metadata (numbers, notes) is stored in the clear; "
                f"put the catalog on an encrypted volume")
    if _is_dm_crypt(Path(sys_root), device, set()):
        return None
    return (f"catalog {path} is on {source} (mounted at {mount_point}), which is not dm-crypt/LUKS: "
            f"its metadata (numbers, Call-IDs, notes) is stored in the clear; put the catalog on an "
            f"encrypted volume")


def _unescape_mount(field_text: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (\\040 …)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field_text)


def _mount_of(path: Path, mountinfo_text: str) -> tuple[str, str, str, str] | None:
    """(mount point, MAJ:MIN, fstype, source) of the longest mount point containing ``path``."""
    target = path.resolve()
    best: tuple[str, str, str, str] | None = None
    for line in mountinfo_text.splitlines():
        left, sep, right = line.partition(" - ")
        parts, rest = left.split(), right.split()
        if not sep or len(parts) < 5 or len(rest) < 2:
            continue
        mount_point = _unescape_mount(parts[4])
        if target != Path(mount_point) and Path(mount_point) not in target.parents:
            continue
        if best is None or len(mount_point) >= len(best[0]):
            best = (mount_point, parts[2], rest[0], _unescape_mount(rest[1]))
    return best


def _device_of_source(source: str) -> str | None:
    """MAJ:MIN of a mount source like /dev/mapper/x (btrfs and others report device 0:N)."""
    try:
        st = os.stat(source)
    except OSError:
        return None
    return f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}" if st.st_rdev else None


def _is_dm_crypt(sys_root: Path, device: str, seen: set[str]) -> bool:
    if device in seen:
        return False
    seen.add(device)
    node = sys_root / "dev" / "block" / device
    try:
        if (node / "dm" / "uuid").read_text().strip().startswith("CRYPT-"):
            return True
    except OSError:
        pass
    slaves = node / "slaves"
    try:
        names = sorted(p.name for p in slaves.iterdir())
    except OSError:
        return False
    for name in names:
        try:
            dev = (sys_root / "class" / "block" / name / "dev").read_text().strip()
        except OSError:
            continue
        if _is_dm_crypt(sys_root, dev, seen):
            return True
    return False
