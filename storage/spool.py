"""Spool import: recordings a PBX drops into a directory, ingested into the vault and catalog.

A recording is a WAV file plus a sidecar of the same name, ``NAME.json`` or ``NAME.xml``
(fields below). A pair is imported once it is *complete*:

* neither file has a temporary name (a leading dot, or ``.tmp``/``.part``/``.partial``/
  ``.filepart``/``.crdownload``): a writer that renames into place (atomic rename) is picked up
  at the rename;
* both files' size and modification time have not changed for ``stable_s`` (a writer that
  writes in place is waited for);
* the WAV's RIFF header agrees with the file (the ``data`` chunk is wholly there and its size is
  not a placeholder: many writers fill in the sizes last).

The audio goes through the same store path as live calls (storage.recordingsink.VaultSink:
a fresh data key, an ``active`` catalog row, the encrypted vault file, the completed row, the
audit entry). Then the spool files are removed. A pair that cannot be imported (bad sidecar,
not a WAV, a WAV without sidecar for ``orphan_s``, a header that still promises more than the
file holds after ``orphan_s`` ...) is moved to ``rejected_dir`` with a ``NAME.reason`` file
saying why, and audited.

Exactly once: ``spool_imports`` keys every pair by the SHA-256 of its bytes. A pair already
imported (dropped twice, or a crash between cataloguing and removing the files) is removed
without a second recording; an import a crash interrupted (its row recovered as partial at
start) is discarded and done again from the spool files, which are only removed after the
recording is committed.

Sidecar fields (JSON object, or XML ``<recording>`` with one child element per field;
``<tags><tag>..</tag></tags>``, ``<sip_headers><header name="..">..</header></sip_headers>``):
``call_id`` and ``started_at`` (ISO 8601 or epoch seconds) are required; optional ``caller``,
``callee``, ``caller_uri``, ``callee_uri``, ``direction`` (inbound/outbound/internal/unknown),
``agent_id``, ``answered_at``, ``ended_at``, ``trunk``, ``tags`` and ``sip_headers``.
Mono WAVs (the PBX mixed both parties) are stored in both channels; 8-48 kHz, any sample
format libsndfile reads (PCM, µ-law, A-law, GSM 6.10 ...).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import struct
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import apsw
import defusedxml
import defusedxml.ElementTree as DefusedET
import numpy as np
import soundfile as sf

from capture.dialogs import Call, make_recording_id
from capture.fsutil import fsync_dir
from capture.recording import METADATA_VERSION, iso_utc
from storage.audit import AuditLog
from storage.catalog import Catalog, to_epoch
from storage.keys import KeyStore
from storage.recordingsink import VaultSink
from storage.recovery import vault_files_of

log = logging.getLogger("recorderd.spool")

WAV_SUFFIX = ".wav"
SIDECAR_SUFFIXES = (".json", ".xml")
TEMP_SUFFIXES = (".tmp", ".part", ".partial", ".filepart", ".crdownload")
MAX_SIDECAR_BYTES = 1 << 20
READ_FRAMES = 1 << 15
MIN_RATE, MAX_RATE = 8000, 48000
DIRECTIONS = ("inbound", "outbound", "internal", "unknown")
PLACEHOLDER_SIZES = (0, 0xFFFFFFFF)
CODEC_NAMES = {"ULAW": "pcmu", "ALAW": "pcma", "GSM610": "gsm"}
ACTOR = "recorderd-spool"


class SpoolReject(Exception):
    """This pair cannot be imported; the message is the reason written beside it."""


class NotYet(Exception):
    """This pair is not complete yet (the message says what it waits for)."""


@dataclass(frozen=True, slots=True)
class SpoolSettings:
    directory: Path
    rejected_dir: Path
    stable_s: float = 5.0
    orphan_s: float = 600.0
    rescan_s: float = 30.0
    max_bytes: int = 2048 << 20
    tags: tuple[str, ...] = ("spool",)

    @classmethod
    def from_config(cls, spool: dict[str, Any]) -> SpoolSettings:
        return cls(Path(spool["dir"]), Path(spool["rejected_dir"]), spool["stable_s"], spool["orphan_s"],
                   spool["rescan_s"], spool["max_file_mb"] << 20, tuple(spool["tags"]))


# -- the pieces: names, the RIFF header, the sidecar ------------------------------------------------

def is_temporary(name: str) -> bool:
    lower = name.lower()
    return name.startswith(".") or lower.endswith(TEMP_SUFFIXES)


def wav_problem(path: Path) -> str | None:
    """None when the RIFF/WAVE header agrees with the file, else what is missing (NotYet-worthy).

    Raises SpoolReject for a file that is not RIFF/WAVE at all.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12:
            return f"only {size} bytes so far"
        if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            raise SpoolReject(f"{path.name}: not a WAV file (no RIFF/WAVE header)")
        if struct.unpack("<I", head[4:8])[0] in PLACEHOLDER_SIZES:
            return "the RIFF size is still a placeholder (the writer fills it in last)"
        offset = 12
        while offset + 8 <= size:
            f.seek(offset)
            chunk, length = struct.unpack("<4sI", f.read(8))
            if chunk == b"data":
                if length in PLACEHOLDER_SIZES:
                    return "the data chunk size is still a placeholder"
                if offset + 8 + length > size:
                    return f"the header promises {length} bytes of audio, the file holds {size - offset - 8}"
                return None
            offset += 8 + length + (length & 1)   # chunks are padded to even sizes (RIFF)
    return "no data chunk yet"


@dataclass(slots=True)
class Sidecar:
    call_id: str
    started_at: float
    fields: dict[str, Any]

    def text(self, name: str) -> str | None:
        value = self.fields.get(name)
        return None if value in (None, "") else str(value)

    def time(self, name: str) -> float | None:
        try:
            return moment(self.fields.get(name))
        except ValueError as err:
            raise SpoolReject(f"sidecar: {name}: {err}") from None


def moment(value: Any) -> float | None:
    """Epoch seconds from ISO 8601 or epoch seconds, also as text (XML has nothing else)."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return to_epoch(value)


def _xml_fields(root: ET.Element) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for child in root:
        if child.tag == "tags":
            fields["tags"] = [(t.text or "").strip() for t in child if t.tag == "tag"]
        elif child.tag == "sip_headers":
            fields["sip_headers"] = {h.get("name", ""): (h.text or "").strip() for h in child if h.tag == "header"}
        else:
            fields[child.tag] = (child.text or "").strip()
    return fields


def parse_sidecar(path: Path) -> Sidecar:
    """The sidecar's fields, checked; SpoolReject naming the problem."""
    raw = path.read_bytes()
    if len(raw) > MAX_SIDECAR_BYTES:
        raise SpoolReject(f"sidecar {path.name} is larger than {MAX_SIDECAR_BYTES} bytes")
    if path.suffix.lower() == ".json":
        try:
            fields = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as err:
            raise SpoolReject(f"sidecar {path.name} is not valid JSON: {err}") from None
        if not isinstance(fields, dict):
            raise SpoolReject(f"sidecar {path.name}: expected a JSON object")
    else:
        # defusedxml refuses any DTD or entity whatever the document's encoding (a byte search for
        # "<!DOCTYPE" misses a UTF-16 one): no entity-expansion or external-entity attacks
        try:
            fields = _xml_fields(DefusedET.fromstring(raw, forbid_dtd=True))
        except defusedxml.DefusedXmlException:
            raise SpoolReject(f"sidecar {path.name}: XML with a DTD or entities is refused") from None
        except ET.ParseError as err:
            raise SpoolReject(f"sidecar {path.name} is not well-formed XML: {err}") from None
    return check_sidecar(path.name, fields)


def check_sidecar(name: str, fields: dict[str, Any]) -> Sidecar:
    call_id = fields.get("call_id")
    if not isinstance(call_id, str) or not call_id.strip():
        raise SpoolReject(f"sidecar {name}: call_id is missing")
    try:
        started = moment(fields.get("started_at"))
    except ValueError as err:
        raise SpoolReject(f"sidecar {name}: started_at: {err}") from None
    if started is None:
        raise SpoolReject(f"sidecar {name}: started_at is missing")
    direction = fields.get("direction") or "unknown"
    if direction not in DIRECTIONS:
        raise SpoolReject(f"sidecar {name}: direction {direction!r} is not one of {', '.join(DIRECTIONS)}")
    tags = fields.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise SpoolReject(f"sidecar {name}: tags must be a list of strings")
    headers = fields.get("sip_headers") or {}
    if not isinstance(headers, dict):
        raise SpoolReject(f"sidecar {name}: sip_headers must be an object of header: value")
    return Sidecar(call_id.strip(), started, fields)


# -- results ---------------------------------------------------------------------------------------

@dataclass(slots=True)
class ScanReport:
    imported: list[dict[str, str]] = field(default_factory=list)    # {name, recording_id}
    rejected: list[dict[str, str]] = field(default_factory=list)    # {name, reason}
    duplicates: list[str] = field(default_factory=list)
    pending: dict[str, str] = field(default_factory=dict)           # name -> what it waits for
    settling: int = 0                                               # pairs waiting only for stable_s

    def merge(self, other: ScanReport) -> None:
        self.imported += other.imported
        self.rejected += other.rejected
        self.duplicates += other.duplicates
        self.pending = other.pending
        self.settling = other.settling

    def to_dict(self) -> dict[str, Any]:
        return {"imported": self.imported, "rejected": self.rejected, "duplicates": self.duplicates,
                "pending": [{"name": k, "waiting_for": v} for k, v in sorted(self.pending.items())]}


@dataclass(slots=True)
class _Seen:
    size: int
    mtime_ns: int
    since: float        # when this (size, mtime) was first observed
    first: float        # when the file was first observed
    changed_wall: float  # st_ctime: set when the file was created, written or renamed here


# -- the importer -----------------------------------------------------------------------------------

@dataclass
class SpoolImporter:
    """One pass over the spool directory at a time (``scan``); keeps what it observed between passes."""

    settings: SpoolSettings
    vault_dir: Path
    keys: KeyStore
    catalog: Catalog
    audit: AuditLog
    actor: str = ACTOR
    clock: Callable[[], float] = time.monotonic
    progress: Callable[[], None] = field(default=lambda: None)   # called per block read (a heartbeat)
    seen: dict[str, _Seen] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.settings.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.settings.rejected_dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    # one pass
    def scan(self) -> ScanReport:
        report = ScanReport()
        now = self.clock()
        groups = self._observe(now)
        for stem, files in sorted(groups.items()):
            try:
                self._handle(stem, files, now, report)
            except SpoolReject as err:
                self._reject(stem, files, str(err), report)
            except NotYet as err:
                report.pending[stem] = str(err)
            except FileNotFoundError:
                continue   # taken away meanwhile (by the PBX): nothing to import
            except OSError as err:   # disk full, permissions: not the files' fault, try again later
                report.pending[stem] = f"a retry after: {err}"
                log.error("spool: %s: %s (will retry)", stem, err)
        return report

    def _observe(self, now: float) -> dict[str, dict[str, Path]]:
        groups: dict[str, dict[str, Path]] = {}
        present = set()
        with os.scandir(self.settings.directory) as entries:
            for entry in entries:
                if not entry.is_file(follow_symlinks=False) or is_temporary(entry.name):
                    continue
                st = entry.stat(follow_symlinks=False)
                present.add(entry.name)
                old = self.seen.get(entry.name)
                if old is None:
                    self.seen[entry.name] = _Seen(st.st_size, st.st_mtime_ns, now, now, st.st_ctime)
                elif (old.size, old.mtime_ns) != (st.st_size, st.st_mtime_ns):
                    old.size, old.mtime_ns, old.since = st.st_size, st.st_mtime_ns, now
                self.seen[entry.name].changed_wall = st.st_ctime
                path = Path(entry.path)
                groups.setdefault(path.stem, {})[path.suffix.lower()] = path
        for gone in set(self.seen) - present:
            del self.seen[gone]
        return groups

    def _stable(self, path: Path, now: float) -> bool:
        seen = self.seen[path.name]
        return now - seen.since >= self.settings.stable_s

    def _age(self, files: dict[str, Path], now: float) -> float:
        """How long the pair has been waiting: observed by this process, or since its files
        last changed (ctime, which a copy that keeps old timestamps cannot set back), whichever
        is longer, so one-shot runs (`spool run --once`) see orphans age too."""
        wall = time.time()
        return max(max(now - self.seen[p.name].first, wall - self.seen[p.name].changed_wall)
                   for p in files.values())

    def _handle(self, stem: str, files: dict[str, Path], now: float, report: ScanReport) -> None:
        unknown = set(files) - {WAV_SUFFIX, *SIDECAR_SUFFIXES}
        if unknown:
            if self._age(files, now) < self.settings.orphan_s:
                raise NotYet(f"unexpected file type(s) {sorted(unknown)}")
            raise SpoolReject(f"{stem}: not a WAV or a sidecar ({', '.join(sorted(unknown))})")
        sidecars = [files[s] for s in SIDECAR_SUFFIXES if s in files]
        if len(sidecars) > 1:
            raise SpoolReject(f"{stem}: two sidecars ({', '.join(p.name for p in sidecars)}); which one is right?")
        wav = files.get(WAV_SUFFIX)
        if wav is None or not sidecars:
            missing = "sidecar (.json or .xml)" if wav is not None else "WAV"
            if self._age(files, now) >= self.settings.orphan_s:
                raise SpoolReject(f"{stem}: no {missing} arrived within {self.settings.orphan_s:g} s")
            raise NotYet(f"its {missing}")
        if not all(self._stable(p, now) for p in (wav, sidecars[0])):
            report.settling += 1
            raise NotYet(f"the files to stop changing for {self.settings.stable_s:g} s")
        if wav.stat().st_size > self.settings.max_bytes:
            raise SpoolReject(f"{wav.name}: larger than spool.max_file_mb ({self.settings.max_bytes >> 20} MiB)")
        problem = wav_problem(wav)
        if problem is not None:
            if self._age(files, now) >= self.settings.orphan_s:
                raise SpoolReject(f"{wav.name}: incomplete WAV after {self.settings.orphan_s:g} s: {problem}")
            raise NotYet(f"the WAV to be complete ({problem})")
        sidecar = parse_sidecar(sidecars[0])
        self._ingest(stem, wav, sidecars[0], sidecar, report)

    # ingest
    def _ingest(self, stem: str, wav: Path, sidecar_path: Path, sidecar: Sidecar, report: ScanReport) -> None:
        digest = hashlib.sha256()
        for path in (wav, sidecar_path):
            with open(path, "rb") as f:
                while block := f.read(1 << 20):
                    digest.update(block)
            digest.update(b"\x00")
        sha = digest.hexdigest()
        recording_id = make_recording_id(sidecar.call_id, f"spool:{sha[:32]}", sidecar.started_at)
        state = self._import_state(sha, recording_id, stem)
        if state == "done":
            self._remove_sources(wav, sidecar_path)
            self.audit.append(self.actor, "system", "spool_duplicate", recording_id, "ok",
                              reason=f"{stem}: the same files were imported before", detail={"sha256": sha})
            report.duplicates.append(stem)
            return
        if state == "interrupted":
            self._discard_interrupted(recording_id)
        self._set_state(sha, stem, recording_id, "ingesting")
        self._store(recording_id, wav, sidecar)
        self._set_state(sha, stem, recording_id, "done")
        self._remove_sources(wav, sidecar_path)
        report.imported.append({"name": stem, "recording_id": recording_id})
        log.info("spool: imported %s as %s", stem, recording_id)

    def _import_state(self, sha: str, recording_id: str, name: str) -> str | None:
        """None (new), "done", or "interrupted" (an earlier attempt did not finish)."""
        reader = self.catalog.reader()
        try:
            found: list[Any] = reader.conn.execute("SELECT state FROM spool_imports WHERE source_sha256 = ?",
                                                   (sha,)).fetchall()
            row: list[Any] = reader.conn.execute("SELECT state FROM recordings WHERE recording_id = ?",
                                                 (recording_id,)).fetchall()
        finally:
            reader.close()
        if found and found[0][0] == "done":
            return "done"
        if row and row[0][0] == "complete":   # committed, but the crash came before "done"
            self._set_state(sha, name, recording_id, "done")
            return "done"
        return "interrupted" if found or row else None

    def _set_state(self, sha: str, name: str, recording_id: str, state: str) -> None:
        now = time.time()

        def job(conn: apsw.Connection) -> None:
            conn.execute("INSERT INTO spool_imports (source_sha256, name, recording_id, state, started_at) "
                         "VALUES (?, ?, ?, ?, ?) ON CONFLICT(source_sha256) DO UPDATE SET state = excluded.state, "
                         "finished_at = CASE WHEN excluded.state = 'done' THEN ? END",
                         (sha, name, recording_id, state, now, now))

        self.catalog.writer.call(job)

    def _discard_interrupted(self, recording_id: str) -> None:
        """An import a crash cut short (its row active, or recovered as partial): the spool files
        are still here, so the incomplete copy goes and the import starts again."""
        def job(conn: apsw.Connection) -> None:
            conn.execute("DELETE FROM recordings WHERE recording_id = ? AND state IN ('active', 'partial')",
                         (recording_id,))

        self.catalog.writer.call(job)
        for path in vault_files_of(self.vault_dir, recording_id):
            path.unlink(missing_ok=True)
        self.audit.append(self.actor, "system", "spool_retry", recording_id, "ok",
                          reason="an interrupted import was discarded and is done again")

    def _store(self, recording_id: str, wav: Path, sidecar: Sidecar) -> None:
        headers = {str(k): str(v) for k, v in (sidecar.fields.get("sip_headers") or {}).items()}
        agent = sidecar.text("agent_id")
        if agent:
            headers[self.catalog.agent_header] = agent
        caller_uri = sidecar.text("caller_uri") or (f"tel:{sidecar.text('caller')}" if sidecar.text("caller") else "")
        callee_uri = sidecar.text("callee_uri") or (f"tel:{sidecar.text('callee')}" if sidecar.text("callee") else "")
        call = Call(key=recording_id, call_id=sidecar.call_id, recording_id=recording_id, caller_uri=caller_uri,
                    callee_uri=callee_uri, caller_tag="spool", caller_signalling=("", 0),
                    invited_at=sidecar.started_at, headers=headers, answered_at=sidecar.time("answered_at"),
                    end_reason="spool_import")
        tags = [*self.settings.tags, *(t for t in sidecar.fields.get("tags") or [] if t.strip())]
        sink = VaultSink(self.vault_dir, self.keys, self.catalog, self.audit, actor=self.actor, tags=tags)
        try:
            audio = sf.SoundFile(wav)
        except (sf.LibsndfileError, RuntimeError) as err:
            raise SpoolReject(f"{wav.name}: unreadable WAV: {err}") from None
        with audio:
            if not MIN_RATE <= audio.samplerate <= MAX_RATE or audio.channels not in (1, 2):
                raise SpoolReject(f"{wav.name}: {audio.channels} channel(s) at {audio.samplerate} Hz: "
                                  f"1 or 2 channels at {MIN_RATE}-{MAX_RATE} Hz are imported")
            handle = sink.open(call, audio.samplerate, sidecar.started_at)
            frames = 0
            try:
                for block in audio.blocks(blocksize=READ_FRAMES, dtype="int16", always_2d=True):
                    stereo = block if block.shape[1] == 2 else np.repeat(block, 2, axis=1)
                    sink.write(handle, stereo)
                    frames += len(block)
                    self.progress()
                metadata = self._metadata(call, sidecar, audio, frames, wav.name)
            except (sf.LibsndfileError, RuntimeError) as err:   # the audio itself is damaged
                sink.discard(handle)
                raise SpoolReject(f"{wav.name}: unreadable audio after {frames} frames: {err}") from None
            except BaseException:
                sink.discard(handle)
                raise
            try:
                sink.close(handle, metadata)
            except BaseException:
                sink.discard(handle)
                raise

    @staticmethod
    def _metadata(call: Call, sidecar: Sidecar, audio: sf.SoundFile, frames: int, name: str) -> dict[str, Any]:
        duration = frames / audio.samplerate
        ended = sidecar.time("ended_at") or sidecar.started_at + duration
        answered = sidecar.time("answered_at")
        return {
            "metadata_version": METADATA_VERSION, "recording_id": call.recording_id, "call_id": call.call_id,
            "caller": sidecar.text("caller") or call.caller, "callee": sidecar.text("callee") or call.callee,
            "caller_uri": call.caller_uri, "callee_uri": call.callee_uri,
            "direction": sidecar.text("direction") or "unknown",
            "invited_at": iso_utc(sidecar.started_at), "answered_at": iso_utc(answered), "ended_at": iso_utc(ended),
            "end_reason": "spool_import", "final_status": None, "sip_headers": dict(call.headers),
            "started_at": iso_utc(sidecar.started_at), "started_at_epoch": sidecar.started_at,
            "duration_s": round(duration, 3), "sample_rate": audio.samplerate, "channels": 2,
            "codecs": [CODEC_NAMES.get(audio.subtype, audio.subtype.lower())],
            "dtmf": [], "tone_events": [], "streams": [], "completeness": {"legs": []},
            "encryption": {"srtp": False, "decodable": True, "note": ""},
            "consent": {"played": None, "audible": None, "offset_s": None}, "partial": False,
            "trunk": sidecar.text("trunk"),
            "source": {"kind": "spool", "file": name, "mono": audio.channels == 1, "sidecar": sidecar.fields},
        }

    # leaving the spool
    def _remove_sources(self, *paths: Path) -> None:
        for path in paths:
            path.unlink(missing_ok=True)
            self.seen.pop(path.name, None)
        fsync_dir(self.settings.directory)

    def _reject(self, stem: str, files: dict[str, Path], reason: str, report: ScanReport) -> None:
        target = self.settings.rejected_dir
        base = stem if not any((target / p.name).exists() for p in files.values()) else \
            f"{stem}.{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
        moved = []
        for path in files.values():
            destination = target / f"{base}{path.suffix}"
            with contextlib.suppress(FileNotFoundError):
                shutil.move(path, destination)   # os.rename within a filesystem
                moved.append(destination.name)
            self.seen.pop(path.name, None)
        (target / f"{base}.reason").write_text(
            f"{reason}\nrejected at {iso_utc(time.time())}; files: {', '.join(moved) or '(none left)'}\n")
        fsync_dir(target)
        fsync_dir(self.settings.directory)
        self.audit.append(self.actor, "system", "spool_reject", stem, "rejected", reason=reason,
                          detail={"moved_to": str(target), "files": moved})
        report.rejected.append({"name": stem, "reason": reason})
        log.warning("spool: rejected %s: %s", stem, reason)


# -- running it -------------------------------------------------------------------------------------

def run_once(importer: SpoolImporter, *, max_wait_s: float, sleep: Callable[[float], None] = time.sleep) -> ScanReport:
    """Import everything complete now; wait (at most ``max_wait_s``) for pairs still settling."""
    total = ScanReport()
    deadline = importer.clock() + max_wait_s
    while True:
        report = importer.scan()
        total.merge(report)
        if not report.settling or importer.clock() >= deadline:
            return total
        sleep(min(importer.settings.stable_s / 2, 0.5))


class SpoolWatcher:
    """Runs the importer in a thread, woken by file events (watchdog's inotify observer) and by a
    periodic rescan; ``beat`` is called every loop (the daemon's stage heartbeat)."""

    def __init__(self, importer: SpoolImporter, beat: Callable[[], None] | None = None,
                 tick_s: float = 1.0) -> None:
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        self.importer = importer
        self.beat = beat or (lambda: None)
        importer.progress = self.beat   # a long import keeps the stage's heartbeat fresh
        self.tick_s = tick_s
        self.wake = threading.Event()
        self.stop_event = threading.Event()
        self.reports = ScanReport()
        self.errors = 0
        wake = self.wake

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                wake.set()

        self.observer = Observer()
        self.observer.schedule(Handler(), str(importer.settings.directory), recursive=False)
        self.thread = threading.Thread(target=self._loop, name="spool", daemon=True)

    def start(self) -> None:
        self.observer.start()
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        self.wake.set()
        self.thread.join()
        self.observer.stop()
        self.observer.join()

    def _loop(self) -> None:
        settings = self.importer.settings
        next_scan = 0.0
        while not self.stop_event.is_set():
            self.beat()
            now = self.importer.clock()
            if self.wake.is_set() or now >= next_scan:
                self.wake.clear()
                try:
                    report = self.importer.scan()
                except Exception:   # noqa: BLE001 - a spool problem (disk full ...) must not stop recording
                    self.errors += 1
                    log.exception("spool: scan failed; retrying at the next rescan")
                    report = ScanReport()
                self.reports.merge(report)
                # pairs still settling are looked at again once they may have become stable
                wait = settings.stable_s / 2 if report.pending else settings.rescan_s
                next_scan = self.importer.clock() + min(wait, settings.rescan_s)
            self.wake.wait(min(self.tick_s, max(0.0, next_scan - self.importer.clock())))


def start_watcher(spool: dict[str, Any], vault_dir: Path, keys: KeyStore, catalog: Catalog, audit: AuditLog,
                  beat: Callable[[], None]) -> SpoolWatcher:
    """The daemon's spool stage (``[spool] enabled``): importer + watcher, started."""
    watcher = SpoolWatcher(SpoolImporter(SpoolSettings.from_config(spool), vault_dir, keys, catalog, audit), beat)
    watcher.start()
    return watcher
