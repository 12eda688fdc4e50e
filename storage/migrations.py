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
    rowid = key_value if key_column == "id" else f"(SELECT id FROM recordings WHERE recording_id = {key_value})"  # nosec B608  # schema DDL from code constants, run once by its migration; no runtime input
    return (f"DELETE FROM search_fts WHERE rowid = {rowid}; "  # nosec B608  # schema DDL from code constants, run once by its migration; no runtime input
            f"INSERT INTO search_fts(rowid, parties, tags, notes, transcript) "
            f"SELECT id, parties, tags, notes, transcript FROM search_docs WHERE {key_column} = {key_value};")


def _index_numbers(key_value: str) -> str:
    """Statement (for a trigger body) that indexes the numbers of one recording."""
    return (f"INSERT INTO search_numbers(rowid, grams) "  # nosec B608  # schema DDL from code constants, run once by its migration; no runtime input
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
        WHERE d.v NOT GLOB '*[^0-9]*')"""  # nosec B608  # schema DDL from code constants, run once by its migration; no runtime input

_V1_TRANSCRIPT = "(SELECT x.text FROM transcripts x WHERE x.recording_id = r.recording_id)"


def search_docs_view(parties: str, transcript: str) -> str:
    """SQL: ``CREATE VIEW search_docs``, the FTS document of each recording, from the SQL
    expressions (over ``recordings r``) of its ``parties`` and ``transcript`` columns; tags,
    notes and the number grams are the same in every version. Migration 1 is released: its
    text must not change (tests/storage/test_migrations.py pins it)."""
    return f"""CREATE VIEW search_docs AS
SELECT r.id AS id,
       r.recording_id AS recording_id,
       {parties} AS parties,
       (SELECT group_concat(t.tag, ' ') FROM tags t WHERE t.recording_id = r.recording_id) AS tags,
       (SELECT group_concat(n.text, ' ') FROM notes n WHERE n.recording_id = r.recording_id) AS notes,
       {transcript} AS transcript,
       {_NUMBER_GRAMS} AS numbers
FROM recordings r;"""  # nosec B608  # schema DDL from code constants, run once by its migration; no runtime input


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

{search_docs_view(_PARTIES, _V1_TRANSCRIPT)}

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
"""  # nosec B608  # schema DDL from code constants, run once by its migration; no runtime input


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
_V3_CONSOLE = """
-- console users (webadmin/users_store.py). Never deleted (audit entries and QA assignments name
-- them): a leaver is disabled. password_hash is argon2id (PHC string); totp_secret is base32
-- (RFC 6238), NULL when the user has no second factor; totp_last_step refuses a code's reuse.
CREATE TABLE users (
    username        TEXT PRIMARY KEY,
    role            TEXT NOT NULL CHECK (role IN ('agent', 'qa', 'auditor', 'admin')),
    agent_id        TEXT,
    password_hash   TEXT NOT NULL,
    totp_secret     TEXT,
    totp_last_step  INTEGER NOT NULL DEFAULT 0,
    disabled        INTEGER NOT NULL DEFAULT 0,
    failed_logins   INTEGER NOT NULL DEFAULT 0,
    locked_until    REAL NOT NULL DEFAULT 0,
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL,
    last_login_at   REAL
) WITHOUT ROWID;
CREATE INDEX users_by_role ON users(role, username);
CREATE UNIQUE INDEX users_by_agent_id ON users(agent_id) WHERE agent_id IS NOT NULL;

-- server-side console sessions: the cookie carries a random token, the table only its SHA-256.
-- stage 'password' = password accepted, second factor pending; 'full' = logged in.
CREATE TABLE console_sessions (
    token_sha256  TEXT PRIMARY KEY,
    username      TEXT NOT NULL REFERENCES users(username),
    stage         TEXT NOT NULL CHECK (stage IN ('password', 'full')),
    csrf_token    TEXT NOT NULL,
    created_at    REAL NOT NULL,
    last_seen     REAL NOT NULL,
    client        TEXT NOT NULL DEFAULT ''
) WITHOUT ROWID;
CREATE INDEX console_sessions_by_user ON console_sessions(username);
"""
# QA review (storage/review.py). An assignment gives one reviewer one recording to score:
# ``kind`` 'review' (first score) or 'cross' (a second reviewer re-scores the recording against
# the score ``cross_of``, with that score's rubric, so the two can be compared). One score per
# assignment, final when given: qa_scores is append-only; the rubric in force is stored with
# each score (criterion and maximum points), so a later change of [review] rubric leaves
# earlier scores readable. The partial unique index allows re-assigning after a withdrawal.
_V3_QA = f"""
CREATE TABLE qa_assignments (
    id           INTEGER PRIMARY KEY,
    recording_id TEXT NOT NULL {_CHILD_FK},
    reviewer     TEXT NOT NULL,
    kind         TEXT NOT NULL CHECK (kind IN ('review', 'cross')),
    cross_of     INTEGER REFERENCES qa_scores(id) DEFERRABLE INITIALLY DEFERRED,
    method       TEXT NOT NULL CHECK (method IN ('manual', 'sample')),
    assigned_by  TEXT NOT NULL,
    assigned_at  REAL NOT NULL,
    state        TEXT NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'scored', 'withdrawn')),
    closed_at    REAL,
    CHECK ((kind = 'cross') = (cross_of IS NOT NULL))
);
CREATE UNIQUE INDEX qa_assignments_once ON qa_assignments(recording_id, reviewer, kind)
    WHERE state != 'withdrawn';
CREATE INDEX qa_assignments_by_reviewer ON qa_assignments(reviewer, state, recording_id);
CREATE INDEX qa_assignments_by_recording ON qa_assignments(recording_id);

CREATE TABLE qa_scores (
    id            INTEGER PRIMARY KEY,
    assignment_id INTEGER NOT NULL UNIQUE REFERENCES qa_assignments(id) DEFERRABLE INITIALLY DEFERRED,
    recording_id  TEXT NOT NULL,
    reviewer      TEXT NOT NULL,
    rubric        TEXT NOT NULL,
    points        TEXT NOT NULL,
    total         REAL NOT NULL,
    max_total     REAL NOT NULL,
    comment       TEXT NOT NULL DEFAULT '',
    scored_at     REAL NOT NULL
);
CREATE INDEX qa_scores_by_recording ON qa_scores(recording_id, id);
{_append_only('qa_scores')}
"""
# Auditor export bundles (storage/exports.py; rules in storage/export_policy.py). One row per
# request, from the request to expiry; the resolved recording ids are in export_items (so "which
# exports held this recording" is an index read). Rows are never deleted: an expired export
# keeps its history, only the bundle file goes (deleted_at).
_V4_EXPORTS = """
CREATE TABLE exports (
    id               INTEGER PRIMARY KEY,
    requester        TEXT NOT NULL,
    requester_role   TEXT NOT NULL,
    reason           TEXT NOT NULL CHECK (length(trim(reason)) > 0),
    query            TEXT,
    state            TEXT NOT NULL DEFAULT 'requested'
                     CHECK (state IN ('requested', 'approved', 'rejected', 'building', 'ready', 'failed',
                                      'expired', 'downloaded')),
    approver         TEXT,
    decision_note    TEXT NOT NULL DEFAULT '',
    requested_at     REAL NOT NULL,
    decided_at       REAL,
    build_started_at REAL,
    built_at         REAL,
    progress_done    INTEGER NOT NULL DEFAULT 0,
    progress_total   INTEGER NOT NULL DEFAULT 0,
    recordings_done  INTEGER NOT NULL DEFAULT 0,
    path             TEXT,
    size             INTEGER,
    sha256           TEXT,
    error            TEXT,
    expires_at       REAL,
    downloads        INTEGER NOT NULL DEFAULT 0,
    downloaded_at    REAL,
    deleted_at       REAL,
    updated_at       REAL NOT NULL,
    CHECK (approver IS NULL OR approver != requester)
);
CREATE INDEX exports_by_state ON exports(state, id);
CREATE INDEX exports_by_requester ON exports(requester, id);

CREATE TABLE export_items (
    export_id    INTEGER NOT NULL REFERENCES exports(id),
    ordinal      INTEGER NOT NULL,
    recording_id TEXT NOT NULL,
    PRIMARY KEY (export_id, ordinal)
) WITHOUT ROWID;
CREATE INDEX export_items_by_recording ON export_items(recording_id, export_id);
"""
# Retention (retention/store.py). Rules are stored as JSON (retention.rules.Rule.to_dict); at
# most one default rule. Legal holds cover one recording or a search (JSON {query, filters},
# re-run at every plan; the recordings it matched when placed are kept in legal_hold_items
# too, so a hold never shrinks). A hold is never deleted: release is a request by one admin and
# an approval by another (the CHECK makes the two differ). Tombstones outlive the purged
# recording's data: ids, Call-ID, keyed hashes of the parties, times, the rule; only
# files_removed_at may be filled in (once) after the vault files are gone. retention_keks maps
# the per-expiry-month KEKs that let a purge also make offsite copies unreadable, and
# retention_key_history every KEK that ever wrapped a recording's data key.
_V5_RETENTION = """
CREATE TABLE retention_rules (
    name        TEXT PRIMARY KEY,
    is_default  INTEGER NOT NULL DEFAULT 0 CHECK (is_default IN (0, 1)),
    definition  TEXT NOT NULL,
    created_by  TEXT NOT NULL,
    created_at  REAL NOT NULL,
    updated_by  TEXT NOT NULL,
    updated_at  REAL NOT NULL
) WITHOUT ROWID;
CREATE UNIQUE INDEX retention_rules_one_default ON retention_rules(is_default) WHERE is_default = 1;

CREATE TABLE legal_holds (
    id                    INTEGER PRIMARY KEY,
    case_name             TEXT NOT NULL CHECK (length(case_name) > 0),
    reason                TEXT NOT NULL CHECK (length(reason) > 0),
    recording_id          TEXT,
    search                TEXT,
    placed_by             TEXT NOT NULL,
    placed_at             REAL NOT NULL,
    release_requested_by  TEXT,
    release_requested_at  REAL,
    release_reason        TEXT,
    released_by           TEXT,
    released_at           REAL,
    CHECK ((recording_id IS NULL) != (search IS NULL)),
    CHECK (released_by IS NULL OR (release_requested_by IS NOT NULL AND released_by != release_requested_by))
);
CREATE INDEX legal_holds_open ON legal_holds(id) WHERE released_at IS NULL;
CREATE TABLE legal_hold_items (
    hold_id      INTEGER NOT NULL REFERENCES legal_holds(id),
    recording_id TEXT NOT NULL,
    PRIMARY KEY (hold_id, recording_id)
) WITHOUT ROWID;
CREATE INDEX legal_hold_items_by_recording ON legal_hold_items(recording_id);
CREATE TRIGGER legal_holds_no_delete BEFORE DELETE ON legal_holds BEGIN
    SELECT RAISE(ABORT, 'legal_holds: a hold is released, never deleted'); END;
CREATE TRIGGER legal_holds_fixed BEFORE UPDATE OF id, case_name, reason, recording_id, search, placed_by,
    placed_at ON legal_holds BEGIN
    SELECT RAISE(ABORT, 'legal_holds: what a hold covers and why cannot be changed'); END;
CREATE TRIGGER legal_holds_released_stays BEFORE UPDATE ON legal_holds WHEN OLD.released_at IS NOT NULL BEGIN
    SELECT RAISE(ABORT, 'legal_holds: a released hold cannot be changed'); END;
CREATE TRIGGER legal_hold_items_no_delete BEFORE DELETE ON legal_hold_items BEGIN
    SELECT RAISE(ABORT, 'legal_hold_items: append-only'); END;
CREATE TRIGGER legal_hold_items_no_update BEFORE UPDATE ON legal_hold_items BEGIN
    SELECT RAISE(ABORT, 'legal_hold_items: append-only'); END;

CREATE TABLE retention_tombstones (
    recording_id     TEXT PRIMARY KEY,
    call_id          TEXT NOT NULL,
    caller_hash      TEXT,
    callee_hash      TEXT,
    started_at       REAL NOT NULL,
    ended_at         REAL,
    duration_s       REAL,
    rule             TEXT NOT NULL,
    period           TEXT NOT NULL,
    expired_at       REAL NOT NULL,
    purged_at        REAL NOT NULL,
    purged_by        TEXT NOT NULL,
    files_removed_at REAL
) WITHOUT ROWID;
CREATE INDEX retention_tombstones_pending ON retention_tombstones(recording_id) WHERE files_removed_at IS NULL;
CREATE INDEX retention_tombstones_by_call ON retention_tombstones(call_id);
CREATE TRIGGER retention_tombstones_no_delete BEFORE DELETE ON retention_tombstones BEGIN
    SELECT RAISE(ABORT, 'retention_tombstones is append-only: DELETE refused'); END;
CREATE TRIGGER retention_tombstones_no_update BEFORE UPDATE ON retention_tombstones
WHEN OLD.files_removed_at IS NOT NULL OR NEW.recording_id IS NOT OLD.recording_id
    OR NEW.call_id IS NOT OLD.call_id OR NEW.caller_hash IS NOT OLD.caller_hash
    OR NEW.callee_hash IS NOT OLD.callee_hash OR NEW.started_at IS NOT OLD.started_at
    OR NEW.ended_at IS NOT OLD.ended_at OR NEW.duration_s IS NOT OLD.duration_s OR NEW.rule IS NOT OLD.rule
    OR NEW.period IS NOT OLD.period OR NEW.expired_at IS NOT OLD.expired_at
    OR NEW.purged_at IS NOT OLD.purged_at OR NEW.purged_by IS NOT OLD.purged_by BEGIN
    SELECT RAISE(ABORT, 'retention_tombstones: only files_removed_at may be set, once'); END;

CREATE TABLE retention_keks (
    kek_id       TEXT PRIMARY KEY,
    bucket       TEXT NOT NULL,
    created_at   REAL NOT NULL,
    destroyed_at REAL
) WITHOUT ROWID;
CREATE INDEX retention_keks_live ON retention_keks(bucket) WHERE destroyed_at IS NULL;
CREATE TABLE retention_key_history (
    recording_id TEXT NOT NULL,
    kek_id       TEXT NOT NULL,
    PRIMARY KEY (recording_id, kek_id)
) WITHOUT ROWID;
CREATE INDEX retention_key_history_by_kek ON retention_key_history(kek_id);

-- spool import (storage/spool.py): one row per dropped file pair, by content hash, so that a
-- file dropped twice or an import interrupted by a crash is never catalogued twice
CREATE TABLE spool_imports (
    source_sha256 TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    recording_id  TEXT NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('ingesting', 'done')),
    started_at    REAL NOT NULL,
    finished_at   REAL
) WITHOUT ROWID;
"""
_V5_BACKUP = """
-- backup targets and runs (retention/backup/). A target's settings are JSON and hold no
-- secret, only references to where the secret is read from (file:, env:, credential:).
-- Removing a target keeps its row (removed_at) so that its run history stays readable.
CREATE TABLE backup_targets (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('s3', 'sftp', 'path')),
    settings    TEXT NOT NULL DEFAULT '{}',
    created_at  REAL NOT NULL,
    created_by  TEXT NOT NULL,
    updated_at  REAL NOT NULL,
    removed_at  REAL
);
CREATE UNIQUE INDEX backup_targets_name ON backup_targets(name) WHERE removed_at IS NULL;

-- one row per backup, verify or restore run; progress is updated while it runs
CREATE TABLE backup_runs (
    id            INTEGER PRIMARY KEY,
    target_id     INTEGER NOT NULL REFERENCES backup_targets(id),
    kind          TEXT NOT NULL CHECK (kind IN ('backup', 'verify', 'restore')),
    state         TEXT NOT NULL CHECK (state IN ('running', 'ok', 'failed', 'interrupted')),
    actor         TEXT NOT NULL,
    host          TEXT NOT NULL,
    pid           INTEGER NOT NULL,
    started_at    REAL NOT NULL,
    updated_at    REAL NOT NULL,
    finished_at   REAL,
    files_planned INTEGER NOT NULL DEFAULT 0,
    bytes_planned INTEGER NOT NULL DEFAULT 0,
    files_done    INTEGER NOT NULL DEFAULT 0,
    bytes_done    INTEGER NOT NULL DEFAULT 0,
    files_present INTEGER NOT NULL DEFAULT 0,
    files_failed  INTEGER NOT NULL DEFAULT 0,
    snapshot      TEXT,
    manifest      TEXT,
    error         TEXT
);
CREATE INDEX backup_runs_by_target ON backup_runs(target_id, kind, id);
CREATE INDEX backup_runs_running ON backup_runs(state) WHERE state = 'running';

-- what went wrong in a run, one row per object (the run goes on with the others)
CREATE TABLE backup_failures (
    run_id  INTEGER NOT NULL REFERENCES backup_runs(id),
    ordinal INTEGER NOT NULL,
    object  TEXT NOT NULL,
    error   TEXT NOT NULL,
    ts      REAL NOT NULL,
    PRIMARY KEY (run_id, ordinal)
) WITHOUT ROWID;
"""
# Consent (storage/consent.py): the announcer's events (append-only), what the sweep found in
# each recording, and which announcement a recording belongs to. The partial index lists the
# finished recordings not checked yet (consent_audible unknown), so the sweep's "what is new"
# stays a short index read at millions of recordings.
_V6_CONSENT = f"""
CREATE TABLE consent_announcements (
    id                INTEGER PRIMARY KEY,
    call_id           TEXT NOT NULL,
    caller            TEXT NOT NULL,
    called            TEXT NOT NULL,
    invited_at        REAL NOT NULL,
    ended_at          REAL NOT NULL,
    outcome           TEXT NOT NULL CHECK (outcome IN (
                          'played', 'refer_ok', 'refer_rejected', 'refer_failed', 'refer_timeout',
                          'no_target', 'hangup_during_prompt', 'unknown_prompt', 'codec_mismatch',
                          'rejected', 'error')),
    caller_uri        TEXT NOT NULL DEFAULT '',
    called_uri        TEXT NOT NULL DEFAULT '',
    trunk             TEXT,
    language          TEXT,
    correlation       TEXT,
    prompt            TEXT,
    rule              TEXT,
    codec             TEXT,
    answered_at       REAL,
    prompt_started_at REAL,
    prompt_played_s   REAL NOT NULL DEFAULT 0,
    prompt_complete   INTEGER NOT NULL DEFAULT 0 CHECK (prompt_complete IN (0, 1)),
    handoff           TEXT,
    refer_target      TEXT,
    refer_status      INTEGER,
    detail            TEXT NOT NULL DEFAULT ''
);
CREATE INDEX consent_announcements_call_id ON consent_announcements(call_id);
CREATE INDEX consent_announcements_ended ON consent_announcements(ended_at);
CREATE INDEX consent_announcements_invited ON consent_announcements(invited_at);
{_append_only('consent_announcements')}

CREATE TABLE consent_checks (
    recording_id TEXT PRIMARY KEY {_CHILD_FK},
    checked_at   REAL NOT NULL,
    audible      INTEGER,
    score        REAL,
    offset_s     REAL,
    channel      INTEGER,
    prompt       TEXT,
    trunk        TEXT,
    note         TEXT NOT NULL DEFAULT ''
) WITHOUT ROWID;

CREATE TABLE consent_links (
    recording_id    TEXT PRIMARY KEY {_CHILD_FK},
    announcement_id INTEGER NOT NULL REFERENCES consent_announcements(id),
    rule            TEXT NOT NULL CHECK (rule IN ('call_id', 'header', 'caller_window')),
    linked_at       REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX consent_links_by_announcement ON consent_links(announcement_id);

CREATE TABLE consent_cursor (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;

CREATE INDEX recordings_consent_unchecked ON recordings(id)
    WHERE consent_audible IS NULL AND state IN ('complete', 'partial');
"""
# Analysis (analysis/store.py). A finished recording (state complete/partial, by the recorder or
# recovery; bulk imports are left to `recorderd analysis enqueue`) gets a queue row by trigger,
# so none is missed whatever process finishes it. The worker claims the oldest pending row
# ('running'); a worker killed mid-recording leaves it 'running' and the next worker's start
# puts it back to 'pending' (attempts counts the claims; max_attempts gives up). Each channel's
# transcript is saved as soon as it is done (transcript_channels says which), so a resumed
# recording only redoes the channel that was interrupted. Segment text is part of the search
# document: search_docs is redefined below to add it, and triggers on transcript_segments keep
# search_fts in step; the worker writes a recording's segments with the bulk_load switch on and
# re-indexes the recording once. Purging a recording (state 'purged') deletes what was said
# (segments, hits) and the analysis derived from it.
_ANALYSIS_TRANSCRIPT = """nullif(concat_ws(' ',
           (SELECT x.text FROM transcripts x WHERE x.recording_id = r.recording_id),
           (SELECT group_concat(t, ' ') FROM (SELECT s.text AS t FROM transcript_segments s
            WHERE s.recording_id = r.recording_id ORDER BY s.channel, s.ordinal))), '')"""
_V7_ANALYSIS = f"""
CREATE TABLE analysis_queue (
    recording_id TEXT PRIMARY KEY {_CHILD_FK},
    state        TEXT NOT NULL DEFAULT 'pending'
                 CHECK (state IN ('pending', 'running', 'done', 'failed', 'skipped')),
    attempts     INTEGER NOT NULL DEFAULT 0,
    enqueued_at  REAL NOT NULL,
    started_at   REAL,
    finished_at  REAL,
    worker       TEXT,
    error        TEXT
) WITHOUT ROWID;
CREATE INDEX analysis_queue_todo ON analysis_queue(state, enqueued_at, recording_id)
    WHERE state IN ('pending', 'running');
CREATE INDEX analysis_queue_finished ON analysis_queue(finished_at) WHERE finished_at IS NOT NULL;

CREATE TRIGGER recordings_analysis_finished AFTER UPDATE OF state ON recordings
WHEN NEW.state IN ('complete', 'partial') AND OLD.state = 'active' BEGIN
    INSERT OR IGNORE INTO analysis_queue (recording_id, enqueued_at) VALUES (NEW.recording_id, ((julianday('now') - 2440587.5) * 86400.0));
END;
CREATE TRIGGER recordings_analysis_inserted AFTER INSERT ON recordings
WHEN NEW.state IN ('complete', 'partial') AND NOT EXISTS (SELECT 1 FROM bulk_load) BEGIN
    INSERT OR IGNORE INTO analysis_queue (recording_id, enqueued_at) VALUES (NEW.recording_id, ((julianday('now') - 2440587.5) * 86400.0));
END;

CREATE TABLE transcript_channels (
    recording_id  TEXT NOT NULL {_CHILD_FK},
    channel       INTEGER NOT NULL,
    role          TEXT NOT NULL CHECK (role IN ('agent', 'customer')),
    language      TEXT,
    language_prob REAL,
    model         TEXT NOT NULL,
    speech_s      REAL NOT NULL,
    cpu_s         REAL NOT NULL,
    done_at       REAL NOT NULL,
    PRIMARY KEY (recording_id, channel)
) WITHOUT ROWID;

CREATE TABLE transcript_segments (
    recording_id TEXT NOT NULL {_CHILD_FK},
    channel      INTEGER NOT NULL,
    ordinal      INTEGER NOT NULL,
    start_s      REAL NOT NULL,
    end_s        REAL NOT NULL,
    text         TEXT NOT NULL,
    confidence   REAL,
    PRIMARY KEY (recording_id, channel, ordinal)
) WITHOUT ROWID;

CREATE TABLE phrase_hits (
    recording_id TEXT NOT NULL {_CHILD_FK},
    ordinal      INTEGER NOT NULL,
    rule_id      TEXT NOT NULL,
    kind         TEXT NOT NULL CHECK (kind IN ('sensitive', 'required', 'topic')),
    line         TEXT NOT NULL,
    channel      INTEGER NOT NULL,
    role         TEXT NOT NULL,
    offset_s     REAL NOT NULL,
    end_s        REAL NOT NULL,
    phrase       TEXT NOT NULL,
    matched      TEXT NOT NULL,
    score        REAL NOT NULL,
    PRIMARY KEY (recording_id, ordinal)
) WITHOUT ROWID;
CREATE INDEX phrase_hits_by_rule ON phrase_hits(kind, rule_id, recording_id);

CREATE TABLE call_analysis (
    recording_id           TEXT PRIMARY KEY {_CHILD_FK},
    line                   TEXT NOT NULL,
    agent_channel          INTEGER NOT NULL,
    languages              TEXT NOT NULL DEFAULT '[]',
    duration_s             REAL NOT NULL,
    duration_band          TEXT NOT NULL,
    talk_agent_s           REAL NOT NULL,
    talk_customer_s        REAL NOT NULL,
    silence_ratio          REAL NOT NULL,
    overlap_s              REAL NOT NULL,
    interruptions_agent    INTEGER NOT NULL,
    interruptions_customer INTEGER NOT NULL,
    interruption_rate      REAL NOT NULL,
    sensitive_hits         INTEGER NOT NULL,
    missing_required       TEXT NOT NULL DEFAULT '[]',
    risk_score             REAL NOT NULL,
    risk_reasons           TEXT NOT NULL DEFAULT '[]',
    model                  TEXT NOT NULL,
    analysed_at            REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX call_analysis_by_risk ON call_analysis(risk_score DESC, recording_id);

CREATE TRIGGER recordings_analysis_purged AFTER UPDATE OF state ON recordings
WHEN NEW.state = 'purged' AND OLD.state != 'purged' BEGIN
    DELETE FROM transcript_segments WHERE recording_id = NEW.recording_id;
    DELETE FROM transcript_channels WHERE recording_id = NEW.recording_id;
    DELETE FROM phrase_hits WHERE recording_id = NEW.recording_id;
    DELETE FROM call_analysis WHERE recording_id = NEW.recording_id;
    UPDATE analysis_queue SET state = 'skipped', error = 'purged', finished_at = ((julianday('now') - 2440587.5) * 86400.0)
    WHERE recording_id = NEW.recording_id;
END;

DROP VIEW search_docs;
{search_docs_view(_PARTIES, _ANALYSIS_TRANSCRIPT)}
{_child_triggers('transcript_segments', ('INSERT', 'UPDATE', 'DELETE'))}
"""  # nosec B608  # schema DDL from code constants, run once by its migration; no runtime input

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
        (SELECT {agent_marker_sql('m.n')} FROM agent_markers m WHERE m.agent_id = r.agent_id))"""  # nosec B608  # schema DDL from code constants, run once by its migration; no runtime input
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
{search_docs_view(_PARTIES_WITH_AGENT, _ANALYSIS_TRANSCRIPT)}

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
"""  # nosec B608  # schema DDL from code constants, run once by its migration; no runtime input

# The kernel's capture counters per minute and interface (the daemon writes a row each
# minute, and the partial minute when it stops): when drops happened, for how many packets.
_V9_CAPTURE_MINUTES = """
CREATE TABLE capture_minutes (
    minute    INTEGER NOT NULL,   -- start of the minute, seconds since the epoch (UTC)
    interface TEXT NOT NULL,
    packets   INTEGER NOT NULL,   -- packets the kernel passed to the capture in that minute
    drops     INTEGER NOT NULL,   -- packets it dropped (ring full) in that minute
    PRIMARY KEY (minute, interface)
) WITHOUT ROWID;
"""

# Chinese words are mostly two characters (保本, 稳赚), below the trigram tokenizer's three: the
# transcript document also lists every pair of adjacent CJK ideographs followed by a pad
# character (U+F8FE, private use, outside the agent markers' range), so that the pair is one
# trigram token and a two-character query is one exact lookup (storage/catalog.py).
CJK_FIRST, CJK_LAST = 0x3400, 0x9FFF       # CJK Unified Ideographs and Extension A
CJK_BIGRAM_PAD = 0xF8FE


def cjk_bigrams_sql(text: str) -> str:
    """SQL: the adjacent CJK pairs of the SQL text expression `text`, each followed by the pad."""
    return f"""(WITH RECURSIVE d(t) AS (SELECT {text}),
        k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k, d WHERE i < length(d.t) - 1)
        SELECT group_concat(substr(d.t, i, 2) || char({CJK_BIGRAM_PAD}), ' ') FROM k, d
        WHERE unicode(substr(d.t, i, 1)) BETWEEN {CJK_FIRST} AND {CJK_LAST}
          AND unicode(substr(d.t, i + 1, 1)) BETWEEN {CJK_FIRST} AND {CJK_LAST})"""  # nosec B608  # schema DDL from code constants


_TRANSCRIPT_WITH_PAIRS = f"nullif(concat_ws(' ', {_ANALYSIS_TRANSCRIPT}, {cjk_bigrams_sql(_ANALYSIS_TRANSCRIPT)}), '')"

_V10_CJK_PAIRS = f"""
DROP VIEW search_docs;
{search_docs_view(_PARTIES_WITH_AGENT, _TRANSCRIPT_WITH_PAIRS)}
INSERT INTO search_fts (search_fts) VALUES ('delete-all');
INSERT INTO search_fts (rowid, parties, tags, notes, transcript)
SELECT id, parties, tags, notes, transcript FROM search_docs;
"""  # nosec B608  # schema DDL from code constants, run once by its migration; no runtime input

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "recordings, children, not_recorded, search index", _V1_RECORDINGS + _V1_SEARCH),
    Migration(2, "audit log and signed checkpoints", _V2_AUDIT),
    Migration(3, "console: users, sessions, QA review", _V3_CONSOLE + "\n" + _V3_QA),
    Migration(4, "auditor export bundles", _V4_EXPORTS),
    Migration(5, "retention, legal holds, backup, spool", _V5_RETENTION + "\n" + _V5_BACKUP),
    Migration(6, "consent announcements", _V6_CONSENT),
    Migration(7, "transcripts and analytics", _V7_ANALYSIS),
    Migration(8, "agent markers in the search index", _V8_AGENT_MARKERS),
    Migration(9, "capture counters per minute", _V9_CAPTURE_MINUTES),
    Migration(10, "two-character Chinese words in the transcript index", _V10_CJK_PAIRS),
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
