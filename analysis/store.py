"""The analysis tables of the catalog (migration 7, storage/migrations.py): queue, transcript
segments, phrase hits, call analysis. Writes are jobs for the catalog's writer thread
(``catalog.writer.call(fn)``); reads take an apsw connection (``CatalogReader.conn``).

Writing a channel's segments turns the FTS triggers off for the job (a ``bulk_load`` row,
present only inside this job's savepoint) and re-indexes the recording once from
``search_docs``: one FTS document per channel saved instead of one per segment.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import apsw

from analysis.phrases import PhraseHit, Segment

QUEUE_STATES = ("pending", "running", "done", "failed", "skipped")
FINISHED = ("complete", "partial")

_REINDEX = ("DELETE FROM search_fts WHERE rowid = (SELECT id FROM recordings WHERE recording_id = ?)",
            "INSERT INTO search_fts (rowid, parties, tags, notes, transcript) "
            "SELECT id, parties, tags, notes, transcript FROM search_docs WHERE recording_id = ?")


def _rows(conn: apsw.Connection, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    return conn.execute(sql, tuple(params)).fetchall()


# -- the queue ---------------------------------------------------------------------------------

def requeue_abandoned(conn: apsw.Connection, max_attempts: int, now: float) -> tuple[int, int]:
    """At a worker's start (it holds the worker lock, so no other worker runs): rows left
    'running' by a killed worker go back to 'pending', or to 'failed' once they used up
    ``max_attempts``. Returns (requeued, given up)."""
    given_up = _rows(conn, "UPDATE analysis_queue SET state = 'failed', finished_at = ?, "
                     "error = 'stopped while running ' || attempts || ' time(s); gave up' "
                     "WHERE state = 'running' AND attempts >= ? RETURNING recording_id", (now, max_attempts))
    requeued = _rows(conn, "UPDATE analysis_queue SET state = 'pending', worker = NULL "
                     "WHERE state = 'running' RETURNING recording_id")
    return len(requeued), len(given_up)


def claim_next(conn: apsw.Connection, worker: str, now: float) -> str | None:
    """The oldest pending recording, now 'running' for ``worker``; None when there is none."""
    found = _rows(conn, "UPDATE analysis_queue SET state = 'running', worker = ?, started_at = ?, "
                  "attempts = attempts + 1, error = NULL WHERE recording_id = ("
                  "SELECT recording_id FROM analysis_queue WHERE state = 'pending' "
                  "ORDER BY enqueued_at, recording_id LIMIT 1) RETURNING recording_id", (worker, now))
    return str(found[0][0]) if found else None


def finish(conn: apsw.Connection, recording_id: str, state: str, now: float, error: str | None = None) -> None:
    if state not in QUEUE_STATES:
        raise ValueError(f"queue state {state!r}")
    conn.execute("UPDATE analysis_queue SET state = ?, finished_at = ?, error = ?, worker = NULL "
                 "WHERE recording_id = ?", (state, now, error, recording_id))


def release(conn: apsw.Connection, recording_id: str) -> None:
    """A worker asked to stop hands its recording back untouched (the claim does not count)."""
    conn.execute("UPDATE analysis_queue SET state = 'pending', worker = NULL, attempts = max(0, attempts - 1) "
                 "WHERE recording_id = ? AND state = 'running'", (recording_id,))


def enqueue(conn: apsw.Connection, recording_ids: Iterable[str] = (), *, since: float | None = None,
            all_finished: bool = False, again: bool = False, now: float) -> int:
    """Queue finished recordings: the ids given, those started since ``since``, or all.
    ``again`` re-queues recordings already analysed or failed. Returns how many were queued."""
    ids = list(recording_ids)
    where = [f"r.state IN ({', '.join('?' * len(FINISHED))})"]
    params: list[Any] = list(FINISHED)
    if ids:
        where.append(f"r.recording_id IN ({', '.join('?' * len(ids))})")
        params += ids
    elif since is not None:
        where.append("r.started_at >= ?")
        params.append(since)
    elif not all_finished:
        return 0
    conflict = ("DO UPDATE SET state = 'pending', attempts = 0, error = NULL, worker = NULL, "
                "enqueued_at = excluded.enqueued_at WHERE analysis_queue.state != 'running'") if again else "DO NOTHING"
    before = conn.total_changes()
    conn.execute(f"INSERT INTO analysis_queue (recording_id, enqueued_at) SELECT r.recording_id, ? "  # nosec B608  # WHERE fragments, ? placeholders and the ON CONFLICT clause are code constants; every value is a ? parameter
                 f"FROM recordings r WHERE {' AND '.join(where)} ORDER BY r.id "
                 f"ON CONFLICT(recording_id) {conflict}", (now, *params))
    return conn.total_changes() - before


# -- reading what the worker needs -------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class RecordingFacts:
    recording_id: str
    state: str
    direction: str
    agent_id: str | None
    caller: str | None
    callee: str | None
    duration_s: float | None
    vault_path: str | None
    kek_id: str | None
    wrapped_key: bytes | None
    tags: tuple[str, ...]


def recording_facts(conn: apsw.Connection, recording_id: str) -> RecordingFacts | None:
    found = _rows(conn, "SELECT recording_id, state, direction, agent_id, caller, callee, duration_s, vault_path, "
                  "kek_id, wrapped_key FROM recordings WHERE recording_id = ?", (recording_id,))
    if not found:
        return None
    rid, state, direction, agent, caller, callee, duration, vault_path, kek_id, blob = found[0]
    tags = tuple(str(t) for (t,) in _rows(conn, "SELECT tag FROM tags WHERE recording_id = ? ORDER BY tag",
                                         (recording_id,)))
    return RecordingFacts(str(rid), str(state), str(direction or "unknown"), agent, caller, callee, duration,
                          vault_path, kek_id, bytes(blob) if blob is not None else None, tags)


@dataclass(frozen=True, slots=True)
class DoneChannel:
    channel: int
    role: str
    language: str | None
    model: str


def done_channels(conn: apsw.Connection, recording_id: str) -> dict[int, DoneChannel]:
    return {int(ch): DoneChannel(int(ch), str(role), lang, str(model)) for ch, role, lang, model in _rows(
        conn, "SELECT channel, role, language, model FROM transcript_channels WHERE recording_id = ?",
        (recording_id,))}


def segments_of(conn: apsw.Connection, recording_id: str) -> list[Segment]:
    return [Segment(int(ch), float(start), float(end), str(text)) for ch, start, end, text in _rows(
        conn, "SELECT channel, start_s, end_s, text FROM transcript_segments WHERE recording_id = ? "
        "ORDER BY start_s, channel, ordinal", (recording_id,))]


# -- writing results ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SavedSegment:
    start_s: float
    end_s: float
    text: str
    confidence: float | None


def save_channel(conn: apsw.Connection, recording_id: str, channel: int, role: str, language: str | None,
                 language_prob: float | None, model: str, speech_s: float, cpu_s: float,
                 segments: Sequence[SavedSegment], now: float) -> None:
    """One channel's transcript (replacing an earlier one), and the recording re-indexed."""
    conn.execute("INSERT INTO bulk_load (active) VALUES (1)")
    conn.execute("DELETE FROM transcript_segments WHERE recording_id = ? AND channel = ?", (recording_id, channel))
    conn.executemany("INSERT INTO transcript_segments (recording_id, channel, ordinal, start_s, end_s, text, "
                     "confidence) VALUES (?, ?, ?, ?, ?, ?, ?)",
                     [(recording_id, channel, i, s.start_s, s.end_s, s.text, s.confidence)
                      for i, s in enumerate(segments)])
    conn.execute("DELETE FROM bulk_load")
    for statement in _REINDEX:
        conn.execute(statement, (recording_id,))
    conn.execute("INSERT INTO transcript_channels (recording_id, channel, role, language, language_prob, model, "
                 "speech_s, cpu_s, done_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                 "ON CONFLICT(recording_id, channel) DO UPDATE SET role = excluded.role, "
                 "language = excluded.language, language_prob = excluded.language_prob, model = excluded.model, "
                 "speech_s = excluded.speech_s, cpu_s = excluded.cpu_s, done_at = excluded.done_at",
                 (recording_id, channel, role, language, language_prob, model, speech_s, cpu_s, now))


@dataclass(frozen=True, slots=True)
class CallAnalysis:
    line: str
    agent_channel: int
    languages: tuple[str, ...]
    metrics: dict[str, Any]
    sensitive_hits: int
    missing_required: tuple[str, ...]
    risk_score: float
    risk_reasons: tuple[str, ...]
    model: str


def save_analysis(conn: apsw.Connection, recording_id: str, result: CallAnalysis, hits: Sequence[PhraseHit],
                  now: float) -> None:
    """The call's hits, metrics and risk (replacing earlier ones); the queue row is done."""
    m = result.metrics
    conn.execute("DELETE FROM phrase_hits WHERE recording_id = ?", (recording_id,))
    conn.executemany("INSERT INTO phrase_hits (recording_id, ordinal, rule_id, kind, line, channel, role, offset_s, "
                     "end_s, phrase, matched, score) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     [(recording_id, i, h.rule_id, h.kind, result.line, h.channel, h.role, h.offset_s, h.end_s,
                       h.phrase, h.matched, h.score) for i, h in enumerate(hits)])
    conn.execute(
        "INSERT OR REPLACE INTO call_analysis (recording_id, line, agent_channel, languages, duration_s, "
        "duration_band, talk_agent_s, talk_customer_s, silence_ratio, overlap_s, interruptions_agent, "
        "interruptions_customer, interruption_rate, sensitive_hits, missing_required, risk_score, risk_reasons, "
        "model, analysed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (recording_id, result.line, result.agent_channel, json.dumps(list(result.languages)), m["duration_s"],
         m["duration_band"], m["talk_agent_s"], m["talk_customer_s"], m["silence_ratio"], m["overlap_s"],
         m["interruptions_agent"], m["interruptions_customer"], m["interruption_rate"], result.sensitive_hits,
         json.dumps(list(result.missing_required)), result.risk_score,
         json.dumps(list(result.risk_reasons), ensure_ascii=False), result.model, now))
    finish(conn, recording_id, "done", now)


# -- status and reads for the console and the command line ---------------------------------------

def status(conn: apsw.Connection, now: float) -> dict[str, Any]:
    """Queue counts, the backlog (recordings and hours of audio), its oldest entry, and the last
    hour's throughput."""
    counts = dict.fromkeys(QUEUE_STATES, 0)
    for state, count in _rows(conn, "SELECT state, count(*) FROM analysis_queue GROUP BY state"):
        counts[str(state)] = int(count)
    backlog = _rows(conn, "SELECT count(*), coalesce(sum(r.duration_s), 0), min(q.enqueued_at) FROM analysis_queue q "
                    "JOIN recordings r ON r.recording_id = q.recording_id WHERE q.state IN ('pending', 'running')")[0]
    hour = _rows(conn, "SELECT count(*), coalesce(sum(r.duration_s), 0), coalesce(sum(q.finished_at - q.started_at), 0) "
                 "FROM analysis_queue q JOIN recordings r ON r.recording_id = q.recording_id "
                 "WHERE q.state = 'done' AND q.finished_at >= ?", (now - 3600.0,))[0]
    running = _rows(conn, "SELECT recording_id, worker, started_at FROM analysis_queue WHERE state = 'running' "
                    "ORDER BY started_at")
    failures = _rows(conn, "SELECT recording_id, error FROM analysis_queue WHERE state = 'failed' "
                     "ORDER BY finished_at DESC LIMIT 10")
    return {
        "counts": counts,
        "backlog": int(backlog[0]),
        "backlog_audio_h": round(float(backlog[1]) / 3600.0, 3),
        "oldest_pending_age_s": round(now - float(backlog[2]), 1) if backlog[2] is not None else None,
        "done_last_hour": int(hour[0]),
        "realtime_factor_last_hour": round(float(hour[1]) / float(hour[2]), 2) if hour[2] else None,
        "running": [{"recording_id": r, "worker": w, "started_at": s} for r, w, s in running],
        "recent_failures": [{"recording_id": r, "error": e} for r, e in failures],
    }


@dataclass(frozen=True, slots=True)
class TranscriptView:
    """Everything the console shows under the player and `analysis show` prints."""

    recording_id: str
    state: str | None                    # the queue state (None: never queued)
    channels: list[dict[str, Any]]
    segments: list[dict[str, Any]]
    hits: list[dict[str, Any]]
    analysis: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def transcript_view(conn: apsw.Connection, recording_id: str) -> TranscriptView:
    queue = _rows(conn, "SELECT state FROM analysis_queue WHERE recording_id = ?", (recording_id,))
    channels = [{"channel": ch, "role": role, "language": lang, "model": model} for ch, role, lang, model in _rows(
        conn, "SELECT channel, role, language, model FROM transcript_channels WHERE recording_id = ? ORDER BY channel",
        (recording_id,))]
    roles = {c["channel"]: c["role"] for c in channels}
    segments = [{"channel": ch, "role": roles.get(ch), "start_s": start, "end_s": end, "text": text,
                 "confidence": conf} for ch, start, end, text, conf in _rows(
        conn, "SELECT channel, start_s, end_s, text, confidence FROM transcript_segments WHERE recording_id = ? "
        "ORDER BY start_s, channel, ordinal", (recording_id,))]
    hits = [{"rule_id": rule, "kind": kind, "channel": ch, "role": role, "offset_s": off, "end_s": end,
             "phrase": phrase, "matched": matched, "score": score}
            for rule, kind, ch, role, off, end, phrase, matched, score in _rows(
                conn, "SELECT rule_id, kind, channel, role, offset_s, end_s, phrase, matched, score FROM phrase_hits "
                "WHERE recording_id = ? ORDER BY offset_s, ordinal", (recording_id,))]
    found = conn.execute("SELECT * FROM call_analysis WHERE recording_id = ?", (recording_id,))
    row = found.fetchone()
    analysis = None
    if row is not None:
        names = [d[0] for d in found.getdescription()]
        analysis = dict(zip(names, row, strict=True))
        for key in ("languages", "missing_required", "risk_reasons"):
            analysis[key] = json.loads(analysis[key])
        analysis.pop("recording_id")
    return TranscriptView(recording_id, str(queue[0][0]) if queue else None, channels, segments, hits, analysis)


def risk_scores(conn: apsw.Connection, recording_ids: Sequence[str]) -> dict[str, float]:
    """recording id → risk score, for those analysed (QA sampling: analysis.risk)."""
    scores: dict[str, float] = {}
    for first in range(0, len(recording_ids), 500):
        chunk = list(recording_ids[first:first + 500])
        scores.update({str(rid): float(score) for rid, score in _rows(
            conn, f"SELECT recording_id, risk_score FROM call_analysis WHERE recording_id IN "  # nosec B608  # only ? placeholders are joined in; every value is a ? parameter
            f"({', '.join('?' * len(chunk))})", chunk)})
    return scores
