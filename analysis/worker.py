"""The analysis worker: finished recordings in, transcripts, phrase hits, metrics and risk out.

One recording at a time, oldest queued first (analysis/store.py has the queue):

1. its row: purged, key destroyed or no audio → 'skipped' with the reason;
2. the audio out of the vault (authenticated; an audit entry per recording read);
3. voice activity per channel → call metrics (analysis/vad.py, analysis/metrics.py);
4. each channel not transcribed yet: its speech compacted, resampled to 16 kHz, transcribed,
   and saved at once (a worker killed after channel 0 resumes at channel 1);
5. phrase rules of the call's line of business over both channels, the risk score, saved;
   the queue row is 'done'.

Low priority is the caller's business at the process edge (recorderd/commands/analysis.py:
nice, SCHED_IDLE); the CPU budget is kept here by :class:`CpuBudget`, which sleeps between
decoded windows. A stop request (SIGTERM) is seen at the same places: the recording in hand
is handed back to the queue as it was.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from analysis import store
from analysis.audio import compact, merge_spans, read_channels, to_whisper
from analysis.metrics import call_metrics
from analysis.phrases import Segment, analyse_phrases
from analysis.risk import risk_score
from analysis.rules import CallFacts, RuleSet, team_map
from analysis.transcribe import ChannelTranscript
from analysis.vad import VadSettings, speech_frames, speech_spans_s
from storage.audit import AuditLog
from storage.catalog import Catalog
from storage.keys import KeyStore
from storage.recordingsink import resolve_path
from storage.vault import VaultError

log = logging.getLogger("recorderd.analysis")

ACTOR = "recorderd-analysis"
ACTOR_ROLE = "system"
AGENT, CUSTOMER = "agent", "customer"


class Stopped(Exception):
    """The worker was asked to stop in the middle of a recording."""


class Transcriber(Protocol):
    name: str

    def transcribe(self, audio: np.ndarray, pause: Callable[[], None] = ...) -> ChannelTranscript: ...


@dataclass(frozen=True, slots=True)
class AnalysisSettings:
    """The [analysis] settings the worker uses (recorderd/config.py validates them)."""

    cpu_budget_percent: float = 50.0
    poll_s: float = 5.0
    max_attempts: int = 3
    teams: tuple[str, ...] = ()
    unknown_direction_agent: str = "callee"
    vad_threshold_dbfs: float = -45.0
    interruption_min_overlap_ms: int = 300

    @classmethod
    def from_config(cls, section: dict[str, Any]) -> AnalysisSettings:
        if section["unknown_direction_agent"] not in ("callee", "caller"):
            raise ValueError(f"analysis.unknown_direction_agent: expected callee or caller, "
                             f"got {section['unknown_direction_agent']!r}")
        try:
            team_map(section["teams"])
        except ValueError as err:
            raise ValueError(f"analysis.teams: {err}") from None
        return cls(section["cpu_budget_percent"], section["poll_s"], section["max_attempts"], tuple(section["teams"]),
                   section["unknown_direction_agent"], section["vad_threshold_dbfs"],
                   section["interruption_min_overlap_ms"])


def agent_channel(direction: str, unknown_direction_agent: str) -> int:
    """Channel 0 is the caller, 1 the callee (the recording contract): the agent is the callee
    of an inbound call and the caller of an outbound one."""
    if direction == "inbound":
        return 1
    if direction == "outbound":
        return 0
    return 1 if unknown_direction_agent == "callee" else 0


class CpuBudget:
    """Keeps this process's CPU time at or under ``percent`` of the machine (all cores) over a
    window: ``pause()`` sleeps as long as needed for that, and raises Stopped when ``stop`` is
    set. Clocks and sleep come in from the caller (tests pass their own)."""

    def __init__(self, percent: float, *, cpus: int | None = None, stop: threading.Event | None = None,
                 cpu_clock: Callable[[], float] = time.process_time, wall_clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] | None = None, window_s: float = 30.0) -> None:
        self.share = percent / 100.0 * (cpus or os.cpu_count() or 1)
        self.stop = stop or threading.Event()
        self._cpu, self._wall = cpu_clock, wall_clock
        self._sleep = sleep or (lambda s: self.stop.wait(s))
        self._window = window_s
        self.restart()

    def restart(self) -> None:
        self._cpu0, self._wall0 = self._cpu(), self._wall()

    def pause(self) -> None:
        if self.stop.is_set():
            raise Stopped
        used, elapsed = self._cpu() - self._cpu0, self._wall() - self._wall0
        owed = used / self.share - elapsed       # wall time that makes used/elapsed == share
        if owed > 0:
            self._sleep(owed)
            if self.stop.is_set():
                raise Stopped
        if elapsed > self._window:               # forget old history: a budget, not a debt
            self.restart()


class AnalysisWorker:
    def __init__(self, catalog: Catalog, keys: KeyStore, vault_dir: Path, audit: AuditLog, settings: AnalysisSettings,
                 rules: RuleSet, transcriber: Callable[[], Transcriber], *, clock: Callable[[], float] = time.time,
                 stop: threading.Event | None = None) -> None:
        self.catalog, self.keys, self.vault_dir, self.audit = catalog, keys, vault_dir, audit
        self.settings, self.rules = settings, rules
        self._make_transcriber = transcriber
        self._transcriber: Transcriber | None = None
        self.clock = clock
        self.stop = stop or threading.Event()
        self.budget = CpuBudget(settings.cpu_budget_percent, stop=self.stop)
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        self.teams = team_map(settings.teams)
        self.vad = VadSettings(threshold_dbfs=settings.vad_threshold_dbfs)

    @property
    def transcriber(self) -> Transcriber:
        if self._transcriber is None:
            self._transcriber = self._make_transcriber()
        return self._transcriber

    # -- the loop

    def recover(self) -> tuple[int, int]:
        """Rows a killed worker left running go back to the queue (call with the worker lock held)."""
        now = self.clock()
        requeued, given_up = self.catalog.writer.call(
            lambda conn: store.requeue_abandoned(conn, self.settings.max_attempts, now))
        if requeued or given_up:
            log.info("analysis: %d recording(s) interrupted earlier requeued, %d given up", requeued, given_up)
        return requeued, given_up

    def run(self, *, once: bool = False, limit: int | None = None) -> int:
        """Process the queue until stopped (``once``: until it is empty); returns how many
        recordings were processed."""
        done = 0
        while not self.stop.is_set() and (limit is None or done < limit):
            if self.run_one() is None:
                if once:
                    break
                self.stop.wait(self.settings.poll_s)
                continue
            done += 1
        return done

    def run_one(self) -> str | None:
        now = self.clock()
        recording_id = self.catalog.writer.call(lambda conn: store.claim_next(conn, self.worker_id, now))
        if recording_id is None:
            return None
        try:
            self.process(recording_id)
        except Stopped:
            self.catalog.writer.call(lambda conn: store.release(conn, recording_id))
            log.info("analysis: stopped; %s handed back to the queue", recording_id)
        return recording_id

    # -- one recording

    def _skip(self, recording_id: str, reason: str) -> None:
        now = self.clock()
        self.catalog.writer.call(lambda conn: store.finish(conn, recording_id, "skipped", now, reason))
        log.info("analysis: %s skipped: %s", recording_id, reason)

    def _fail(self, recording_id: str, reason: str) -> None:
        now = self.clock()
        self.catalog.writer.call(lambda conn: store.finish(conn, recording_id, "failed", now, reason))
        self.audit.append(ACTOR, ACTOR_ROLE, "analysis.read", recording_id, "failed", reason=reason)
        log.warning("analysis: %s failed: %s", recording_id, reason)

    def process(self, recording_id: str) -> None:
        reader = self.catalog.reader()
        try:
            facts = store.recording_facts(reader.conn, recording_id)
            done = store.done_channels(reader.conn, recording_id)
        finally:
            reader.close()
        if facts is None:
            return   # deleted meanwhile: the queue row went with it (ON DELETE CASCADE)
        if facts.state == "purged" or facts.wrapped_key is None or facts.kek_id is None:
            return self._skip(recording_id, "purged: the key is destroyed")
        if facts.state not in store.FINISHED:
            return self._skip(recording_id, f"recording is {facts.state}, not finished")
        if not facts.vault_path:
            return self._skip(recording_id, "no audio in the vault")
        try:
            key = self.keys.unwrap(facts.kek_id, facts.wrapped_key, recording_id)
            pcm, rate = read_channels(resolve_path(self.vault_dir, facts.vault_path), key, recording_id)
        except (VaultError, ValueError, OSError) as err:
            return self._fail(recording_id, f"cannot read the audio: {err}")
        self.audit.append(ACTOR, ACTOR_ROLE, "analysis.read", recording_id, "ok",
                          detail={"frames": int(pcm.shape[0]), "rate": rate})
        self.budget.restart()
        self._analyse(facts, pcm, rate, done)

    def _analyse(self, facts: store.RecordingFacts, pcm: np.ndarray, rate: int,
                 done: dict[int, store.DoneChannel]) -> None:
        rid = facts.recording_id
        agent_ch = agent_channel(facts.direction, self.settings.unknown_direction_agent) if pcm.shape[1] > 1 else 0
        roles = {ch: AGENT if ch == agent_ch else CUSTOMER for ch in range(pcm.shape[1])}
        flags = {ch: speech_frames(pcm[:, ch], rate, self.vad) for ch in roles}
        duration = pcm.shape[0] / rate
        metrics = call_metrics(flags[agent_ch], flags.get(1 - agent_ch, np.zeros(0, bool)), self.vad.frame_ms,
                               duration_s=duration, min_overlap_ms=self.settings.interruption_min_overlap_ms,
                               band_bounds=self.rules.duration_bands_s)
        languages: set[str] = {d.language for d in done.values() if d.language}
        for ch, role in roles.items():
            if ch in done and done[ch].role == role:
                continue
            language = self._transcribe_channel(rid, ch, role, pcm[:, ch], rate,
                                                speech_spans_s(flags[ch], self.vad.frame_ms), duration)
            if language:
                languages.add(language)
        reader = self.catalog.reader()
        try:
            segments: list[Segment] = store.segments_of(reader.conn, rid)
        finally:
            reader.close()
        bank_number = facts.caller if agent_ch == 0 else facts.callee
        line = self.rules.line_of(CallFacts(facts.tags, self.teams.get(facts.agent_id or ""), bank_number))
        phrases = analyse_phrases(self.rules.for_line(line), segments, roles, self.rules.all_negations)
        sensitive = [h.rule_id for h in phrases.hits if h.kind == "sensitive"]
        assessed = risk_score(sensitive, phrases.missing_required, metrics, self.rules.weights)
        result = store.CallAnalysis(line, agent_ch, tuple(sorted(languages)), metrics.to_dict(), len(sensitive),
                                    phrases.missing_required, assessed.score, assessed.reasons,
                                    self._model_name(done))
        now = self.clock()
        self.catalog.writer.call(lambda conn: store.save_analysis(conn, rid, result, phrases.hits, now))
        log.info("analysis: %s done: line %s, %d segment(s), %d hit(s), risk %.1f", rid, line, len(segments),
                 len(phrases.hits), assessed.score)

    def _model_name(self, done: dict[int, store.DoneChannel]) -> str:
        if self._transcriber is not None:
            return self._transcriber.name
        return next((d.model for d in done.values() if d.model != "none"), "none")

    def _transcribe_channel(self, rid: str, channel: int, role: str, samples: np.ndarray, rate: int,
                            spans: list[tuple[float, float]], duration: float) -> str | None:
        cpu0 = time.process_time()
        speech_s = round(sum(end - start for start, end in spans), 3)
        if spans:
            audio, timemap = compact(samples, rate, merge_spans(spans, duration))
            transcript = self.transcriber.transcribe(to_whisper(audio, rate), self.budget.pause)
            saved = [store.SavedSegment(round(timemap.to_original(s.start_s), 3),
                                        round(min(duration, timemap.to_original(s.end_s)), 3), s.text, s.confidence)
                     for s in transcript.segments]
            language, prob, model = transcript.language, transcript.language_prob, self.transcriber.name
        else:
            saved, language, prob, model = [], None, None, "none"
        cpu_s = round(time.process_time() - cpu0, 3)
        now = self.clock()
        self.catalog.writer.call(lambda conn: store.save_channel(conn, rid, channel, role, language, prob, model,
                                                                 speech_s, cpu_s, saved, now))
        return language
