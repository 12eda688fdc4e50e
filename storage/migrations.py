"""Numbered schema migrations of the catalog (SQLite through apsw).

The schema version lives in ``PRAGMA user_version`` (a field of the database header, so it is
part of the same transaction as the migration's DDL). Each migration runs inside its own
``BEGIN IMMEDIATE ... COMMIT``: a failing migration leaves the database at the previous version.
A database whose version is newer than the newest migration known here is refused
(:class:`SchemaTooNew`): an older recorderd must not write to a schema it does not understand.

Migrations are append-only: never edit a released one, add the next number.

Schema notes
------------
* ``recordings.id`` is an ``INTEGER PRIMARY KEY`` (a rowid alias, which VACUUM keeps) holding
  ``started_at`` in milliseconds (the first free integer at or above it). The table, the agent
  index (``(agent_id)`` is ordered by ``(agent_id, rowid)``) and the FTS index (whose rowid is
  ``id``) are therefore all in time order: "newest first", a date range, or a page of a search
  is a range of rowids, with no sort and no separate index on ``started_at``.
  ``recording_id`` is the public key (``UNIQUE NOT NULL``) and every other table refers to it.
* ``search_fts`` is a *contentless* FTS5 table (``content=''``, ``contentless_delete=1``): the
  text already lives in the ordinary tables, the index only needs the tokens. Its rows are kept
  in sync by triggers from the view ``search_docs``, the single definition of what a
  recording's search document is (parties, tags, notes, transcript).
* ``tokenize='trigram'`` makes every substring of three characters or more a phrase query, so
  part of a URI, Call-ID, tag, note or transcript finds the call. Shorter strings cannot use the
  index: the catalog's search falls back to ``LIKE`` on the number and Call-ID columns for those.
* Phone numbers have their own index, ``search_numbers``: trigrams of digits are dense (there
  are only 1,000 of them, each in a few per cent of the calls), so a trigram phrase for 7 digits
  walks hundreds of thousands of postings at 10 M recordings (p95 > 100 ms measured). Instead the
  digits of caller and callee are indexed as 3-, 4- and 5-grams (tokens like ``3x301``,
  ``4x3012``, ``5x30123``; ``ascii`` tokenizer, ``detail=none``: only which recording, not
  where). A query of 3, 4 or 5 digits is one token, exact; a longer one ANDs the 5-grams
  covering it (each in ~0.02 % of the calls) and the catalog checks the digits are contiguous.
  The grams are made in SQL from ``number_gram_spans`` (every (n, position) for a digit string
  of each length up to 32; longer digit strings are not indexed), so triggers and bulk imports
  share one definition.
* Child rows reference ``recordings`` with ``DEFERRABLE INITIALLY DEFERRED`` foreign keys, so a
  bulk import may write them in any order within its transaction.
* A row in ``bulk_load`` (only ever present inside a bulk import's own transaction, so no other
  connection sees it) switches the FTS triggers off: FTS5 flushes its in-memory index at every
  statement savepoint, so a trigger per row would write one tiny segment per recording. The
  import then indexes its rows with one ``INSERT ... SELECT`` from ``search_docs``.
* The audit tables refuse ``UPDATE`` and ``DELETE`` with triggers (append-only); that stops
  mistakes and casual edits, the hash chain and signed checkpoints (storage/audit.py) catch the
  rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import apsw


class CatalogError(Exception):
    """Base class of the catalog's errors (the message is meant for an operator)."""


class SchemaTooNew(CatalogError):
    """The database was written by a newer recorderd than this one."""


@dataclass(frozen=True, slots=True)
class Migration:
    """One numbered step of the schema; ``sql`` may hold several statements."""

    version: int
    name: str
    sql: str


_CHILD_FK = "REFERENCES recordings(recording_id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED"

_V1_RECORDINGS = f"""
CREATE TABLE recordings (
    id              INTEGER PRIMARY KEY,
    recording_id    TEXT NOT NULL UNIQUE,
    call_id         TEXT NOT NULL,
    caller          TEXT,
    callee          TEXT,
    caller_uri      TEXT,
    callee_uri      TEXT,
    direction       TEXT NOT NULL DEFAULT 'unknown',
    agent_id        TEXT,
    started_at      REAL NOT NULL,
    answered_at     REAL,
    ended_at        REAL,
    duration_s      REAL,
    sample_rate     INTEGER,
    channels        INTEGER,
    codecs          TEXT NOT NULL DEFAULT '[]',
    end_reason      TEXT,
    state           TEXT NOT NULL DEFAULT 'active'
                    CHECK (state IN ('active', 'complete', 'partial', 'purged')),
    partial_note    TEXT,
    consent_played  INTEGER,
    consent_audible INTEGER,
    completeness    REAL,
    metadata        TEXT NOT NULL DEFAULT '{{}}',
    vault_path      TEXT,
    vault_size      INTEGER,
    vault_sha256    TEXT,
    key_id          TEXT,
    kek_id          TEXT,
    wrapped_key     BLOB,
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL
);
CREATE INDEX recordings_agent ON recordings(agent_id);
CREATE INDEX recordings_call_id ON recordings(call_id);
CREATE INDEX recordings_active ON recordings(state) WHERE state = 'active';

CREATE TABLE streams (
    recording_id  TEXT NOT NULL {_CHILD_FK},
    ordinal       INTEGER NOT NULL,
    ssrc          TEXT,
    channel       INTEGER,
    src           TEXT,
    dst           TEXT,
    payload_types TEXT NOT NULL DEFAULT '{{}}',
    codecs        TEXT NOT NULL DEFAULT '[]',
    packets       INTEGER,
    expected      INTEGER,
    lost          INTEGER,
    duplicates    INTEGER,
    out_of_order  INTEGER,
    max_jitter_ms REAL,
    first_arrival REAL,
    last_arrival  REAL,
    PRIMARY KEY (recording_id, ordinal)
) WITHOUT ROWID;

CREATE TABLE dtmf (
    recording_id TEXT NOT NULL {_CHILD_FK},
    ordinal      INTEGER NOT NULL,
    digit        TEXT NOT NULL,
    channel      INTEGER,
    offset_s     REAL,
    duration_ms  INTEGER,
    PRIMARY KEY (recording_id, ordinal)
) WITHOUT ROWID;

CREATE TABLE tags (
    recording_id TEXT NOT NULL {_CHILD_FK},
    tag          TEXT NOT NULL,
    PRIMARY KEY (recording_id, tag)
) WITHOUT ROWID;
CREATE INDEX tags_by_tag ON tags(tag, recording_id);

CREATE TABLE notes (
    id           INTEGER PRIMARY KEY,
    recording_id TEXT NOT NULL {_CHILD_FK},
    author       TEXT NOT NULL,
    text         TEXT NOT NULL,
    ts           REAL NOT NULL
);
CREATE INDEX notes_by_recording ON notes(recording_id, id);

-- reserved for analysis/: one transcript per recording, indexed by search_fts
CREATE TABLE transcripts (
    recording_id TEXT PRIMARY KEY {_CHILD_FK},
    text         TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE not_recorded (
    id       INTEGER PRIMARY KEY,
    call_id  TEXT NOT NULL,
    reason   TEXT NOT NULL,
    seen_at  REAL NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{{}}'
);
CREATE INDEX not_recorded_seen ON not_recorded(seen_at);
CREATE INDEX not_recorded_call_id ON not_recorded(call_id);

CREATE TABLE bulk_load (active INTEGER PRIMARY KEY CHECK (active = 1));
"""

NUMBER_GRAM_SIZES = (3, 4, 5)
NUMBER_MAX_DIGITS = 32


def digits_sql(expr: str) -> str:
    """SQL: ``expr`` without the separators people and PBXs put in numbers (+ - . space ( ))."""
    for char in "+-. ()":
        expr = f"replace({expr}, '{char}', '')"
    return expr


# The URIs usually contain the numbers: a number already inside its URI is not indexed twice.
_PARTIES = """concat_ws(' ',
        iif(instr(coalesce(r.caller_uri, ''), r.caller) > 0, NULL, r.caller),
        iif(instr(coalesce(r.callee_uri, ''), r.callee) > 0, NULL, r.callee),
        r.caller_uri, r.callee_uri, r.call_id)"""


_UNLESS_BULK = "WHEN NOT EXISTS (SELECT 1 FROM bulk_load)"


def _refresh_doc(key_column: str, key_value: str) -> str:
    """Statements (for a trigger body) that rewrite the FTS document of one recording.

    An explicit DELETE then INSERT: inside a trigger, ``INSERT OR REPLACE`` takes the outer
    statement's conflict mode (an UPSERT's is ABORT), and FTS5 would keep the old document.
    """
    rowid = key_value if key_column == "id" else f"(SELECT id FROM recordings WHERE recording_id = {key_value})"
    return (f"DELETE FROM search_fts WHERE rowid = {rowid}; "
            f"INSERT INTO search_fts(rowid, parties, tags, notes, transcript) "
            f"SELECT id, parties, tags, notes, transcript FROM search_docs WHERE {key_column} = {key_value};")


def _index_numbers(key_value: str) -> str:
    """Statement (for a trigger body) that indexes the numbers of one recording."""
    return (f"INSERT INTO search_numbers(rowid, grams) "
            f"SELECT id, numbers FROM search_docs WHERE id = {key_value} AND numbers IS NOT NULL;")


def _child_triggers(table: str, events: tuple[str, ...]) -> str:
    """Triggers that rebuild the parent recording's FTS document when a child row changes."""
    parts = []
    for event in events:
        row = "OLD" if event == "DELETE" else "NEW"
        parts.append(f"CREATE TRIGGER {table}_fts_{event.lower()} AFTER {event} ON {table} {_UNLESS_BULK} "
                     f"BEGIN {_refresh_doc('recording_id', row + '.recording_id')} END;")
    return "\n".join(parts)


_NUMBER_GRAMS = f"""(
        SELECT group_concat(s.n || 'x' || substr(d.v, s.pos, s.n), ' ')
        FROM (SELECT {digits_sql('r.caller')} AS v UNION ALL SELECT {digits_sql('r.callee')}) AS d
        JOIN number_gram_spans s ON s.len = length(d.v)
        WHERE d.v NOT GLOB '*[^0-9]*')"""

_V1_SEARCH = f"""
CREATE VIRTUAL TABLE search_fts USING fts5(
    parties, tags, notes, transcript,
    tokenize = 'trigram', content = '', contentless_delete = 1
);
CREATE VIRTUAL TABLE search_numbers USING fts5(
    grams, tokenize = 'ascii', detail = 'none', content = '', contentless_delete = 1
);
CREATE TABLE number_gram_spans (
    len INTEGER NOT NULL,
    n   INTEGER NOT NULL,
    pos INTEGER NOT NULL,
    PRIMARY KEY (len, n, pos)
) WITHOUT ROWID;
INSERT INTO number_gram_spans (len, n, pos)
WITH RECURSIVE k(x) AS (VALUES (1) UNION ALL SELECT x + 1 FROM k WHERE x < {NUMBER_MAX_DIGITS})
SELECT l.x, g.n, p.x FROM k AS l, ({' UNION ALL '.join(f'SELECT {n} AS n' for n in NUMBER_GRAM_SIZES)}) AS g, k AS p
WHERE p.x <= l.x - g.n + 1;

-- FTS5 keeps up to 64 MiB of pending index data in memory within one transaction (default 1 MiB):
-- a bulk import writes fewer, larger segments
INSERT INTO search_fts(search_fts, rank) VALUES ('hashsize', 67108864);
INSERT INTO search_numbers(search_numbers, rank) VALUES ('hashsize', 67108864);

CREATE VIEW search_docs AS
SELECT r.id AS id,
       r.recording_id AS recording_id,
       {_PARTIES} AS parties,
       (SELECT group_concat(t.tag, ' ') FROM tags t WHERE t.recording_id = r.recording_id) AS tags,
       (SELECT group_concat(n.text, ' ') FROM notes n WHERE n.recording_id = r.recording_id) AS notes,
       (SELECT x.text FROM transcripts x WHERE x.recording_id = r.recording_id) AS transcript,
       {_NUMBER_GRAMS} AS numbers
FROM recordings r;

CREATE TRIGGER recordings_fts_insert AFTER INSERT ON recordings {_UNLESS_BULK} BEGIN
    {_refresh_doc('id', 'NEW.id')}
    {_index_numbers('NEW.id')}
END;
CREATE TRIGGER recordings_fts_update
AFTER UPDATE OF id, caller, callee, caller_uri, callee_uri, call_id ON recordings {_UNLESS_BULK} BEGIN
    DELETE FROM search_fts WHERE rowid = OLD.id;
    DELETE FROM search_numbers WHERE rowid = OLD.id;
    {_refresh_doc('id', 'NEW.id')}
    {_index_numbers('NEW.id')}
END;
CREATE TRIGGER recordings_fts_delete AFTER DELETE ON recordings {_UNLESS_BULK} BEGIN
    DELETE FROM search_fts WHERE rowid = OLD.id;
    DELETE FROM search_numbers WHERE rowid = OLD.id;
END;
{_child_triggers('tags', ('INSERT', 'DELETE'))}
{_child_triggers('notes', ('INSERT', 'UPDATE', 'DELETE'))}
{_child_triggers('transcripts', ('INSERT', 'UPDATE', 'DELETE'))}
"""


def _append_only(table: str) -> str:
    return "\n".join(
        f"CREATE TRIGGER {table}_no_{verb.lower()} BEFORE {verb} ON {table} BEGIN "
        f"SELECT RAISE(ABORT, '{table} is append-only: {verb} refused'); END;"
        for verb in ("UPDATE", "DELETE"))


_V2_AUDIT = f"""
CREATE TABLE audit (
    seq       INTEGER PRIMARY KEY,
    ts        REAL NOT NULL,
    actor     TEXT NOT NULL,
    role      TEXT NOT NULL,
    action    TEXT NOT NULL,
    object    TEXT NOT NULL,
    outcome   TEXT NOT NULL,
    reason    TEXT NOT NULL DEFAULT '',
    detail    TEXT NOT NULL DEFAULT 'null',
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL
);
CREATE INDEX audit_by_object ON audit(object, seq);
CREATE INDEX audit_by_ts ON audit(ts);

CREATE TABLE audit_checkpoints (
    seq       INTEGER PRIMARY KEY,
    hash      TEXT NOT NULL,
    ts        REAL NOT NULL,
    signature BLOB NOT NULL
);
{_append_only('audit')}
{_append_only('audit_checkpoints')}
"""

# Migrations 3-7 are owned by one area each (console, exports, retention + backup, consent,
# analysis); each area writes only its own constant.
_V3_CONSOLE = "-- console: users, logins, sessions"
_V3_QA = "-- QA review: assignments, rubric scores, cross-reviews"
_V4_EXPORTS = "-- auditor export bundles"
_V5_RETENTION = "-- retention rules, legal holds, tombstones, spool imports"
_V5_BACKUP = "-- backup targets and runs"
_V6_CONSENT = "-- consent announcements"
_V7_ANALYSIS = "-- transcripts, phrase hits, call metrics"

# An agent's recordings in the trigram index: each agent id gets a number n (agent_markers)
# and a marker of exactly three private-use characters, one trigram token that no text
# contains; the marker is part of the recording's `parties` document. "keyword AND agent" is
# then one FTS5 query that intersects two doclists (seeking through the keyword's), instead of
# walking every recording with the keyword and testing its agent (p95 107 ms at 10 M).
AGENT_MARKER_BASE = 0xE000     # first two characters: U+E000 .. U+F7FF (6,144 each)
AGENT_MARKER_SPAN = 6144
AGENT_MARKER_END = 0xF8FF      # third character, outside that range


def agent_marker_sql(n: str) -> str:
    """SQL expression of the marker of agent number `n` (see agent_marker in storage/catalog.py)."""
    return (f"char({AGENT_MARKER_BASE} + ({n}) % {AGENT_MARKER_SPAN}, "
            f"{AGENT_MARKER_BASE} + (({n}) / {AGENT_MARKER_SPAN}) % {AGENT_MARKER_SPAN}, {AGENT_MARKER_END})")


_PARTIES_WITH_AGENT = f"""concat_ws(' ', {_PARTIES},
        (SELECT {agent_marker_sql('m.n')} FROM agent_markers m WHERE m.agent_id = r.agent_id))"""
_TRANSCRIPT_DOC = "(SELECT x.text FROM transcripts x WHERE x.recording_id = r.recording_id)"
_MARK_AGENT = ("INSERT OR IGNORE INTO agent_markers (agent_id) SELECT NEW.agent_id "
               "WHERE NEW.agent_id IS NOT NULL;")

_V8_AGENT_MARKERS = f"""
CREATE TABLE agent_markers (
    n        INTEGER PRIMARY KEY,
    agent_id TEXT NOT NULL UNIQUE
);
INSERT INTO agent_markers (agent_id)
SELECT DISTINCT agent_id FROM recordings WHERE agent_id IS NOT NULL ORDER BY agent_id;

DROP VIEW search_docs;
CREATE VIEW search_docs AS
SELECT r.id AS id,
       r.recording_id AS recording_id,
       {_PARTIES_WITH_AGENT} AS parties,
       (SELECT group_concat(t.tag, ' ') FROM tags t WHERE t.recording_id = r.recording_id) AS tags,
       (SELECT group_concat(n.text, ' ') FROM notes n WHERE n.recording_id = r.recording_id) AS notes,
       {_TRANSCRIPT_DOC} AS transcript,
       {_NUMBER_GRAMS} AS numbers
FROM recordings r;

DROP TRIGGER recordings_fts_insert;
CREATE TRIGGER recordings_fts_insert AFTER INSERT ON recordings {_UNLESS_BULK} BEGIN
    {_MARK_AGENT}
    {_refresh_doc('id', 'NEW.id')}
    {_index_numbers('NEW.id')}
END;
DROP TRIGGER recordings_fts_update;
CREATE TRIGGER recordings_fts_update
AFTER UPDATE OF id, caller, callee, caller_uri, callee_uri, call_id, agent_id ON recordings {_UNLESS_BULK} BEGIN
    {_MARK_AGENT}
    DELETE FROM search_fts WHERE rowid = OLD.id;
    DELETE FROM search_numbers WHERE rowid = OLD.id;
    {_refresh_doc('id', 'NEW.id')}
    {_index_numbers('NEW.id')}
END;

-- every document again, now with its agent's marker
INSERT INTO search_fts (search_fts) VALUES ('delete-all');
INSERT INTO search_fts (rowid, parties, tags, notes, transcript)
SELECT id, parties, tags, notes, transcript FROM search_docs;
"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "recordings, children, not_recorded, search index", _V1_RECORDINGS + _V1_SEARCH),
    Migration(2, "audit log and signed checkpoints", _V2_AUDIT),
    Migration(3, "console: users, sessions, QA review", _V3_CONSOLE + "\n" + _V3_QA),
    Migration(4, "auditor export bundles", _V4_EXPORTS),
    Migration(5, "retention, legal holds, backup, spool", _V5_RETENTION + "\n" + _V5_BACKUP),
    Migration(6, "consent announcements", _V6_CONSENT),
    Migration(7, "transcripts and analytics", _V7_ANALYSIS),
    Migration(8, "agent markers in the search index", _V8_AGENT_MARKERS),
)

LATEST_VERSION = MIGRATIONS[-1].version


def schema_version(conn: apsw.Connection) -> int:
    """The catalog's schema version (0 for an empty database)."""
    version: Any = conn.execute("PRAGMA user_version").fetchall()[0][0]
    return int(version)


def _check_numbering(migrations: tuple[Migration, ...]) -> None:
    numbers = [m.version for m in migrations]
    if numbers != list(range(1, len(numbers) + 1)):
        raise CatalogError(f"migrations must be numbered 1..n without gaps, got {numbers}")


def apply_migrations(conn: apsw.Connection, migrations: tuple[Migration, ...] = MIGRATIONS) -> int:
    """Bring the database to the newest version; returns that version.

    Each pending migration runs in its own immediate transaction together with the
    ``user_version`` update, so a crash or an error leaves a consistent, lower version.
    """
    _check_numbering(migrations)
    newest = migrations[-1].version if migrations else 0
    current = schema_version(conn)
    if current > newest:
        raise SchemaTooNew(
            f"catalog {conn.filename or ':memory:'} has schema version {current}, newer than the "
            f"{newest} this recorderd knows: upgrade recorderd (refusing to touch the catalog)")
    for migration in migrations[current:]:
        _apply_one(conn, migration)
    return schema_version(conn)


def _apply_one(conn: apsw.Connection, migration: Migration) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        # re-read inside the write lock: another process may have migrated meanwhile
        if schema_version(conn) >= migration.version:
            conn.execute("COMMIT")
            return
        conn.execute(migration.sql)
        conn.execute(f"PRAGMA user_version = {int(migration.version)}")
        conn.execute("COMMIT")
    except BaseException:
        if not conn.get_autocommit():
            conn.execute("ROLLBACK")
        raise
