"""Decrypted audio for the console: access grants, the vault reader, ranged streaming, peaks.

Reason for access
-----------------
Nobody hears a recording without saying why. Giving a reason writes the audit entry
``recording.play`` (actor, role, recording, the reason); that entry *is* the grant: the audio,
waveform and download URLs carry its sequence number (``?grant=SEQ``), and a request is served
only if that entry exists, is a successful ``recording.play`` of this recording by this user,
and is younger than ``[recordings] grant_minutes``. The grant thus lives in the tamper-evident
audit chain itself: nothing to forge in a cookie, nothing lost when the console restarts, and
every byte served can be traced to the audited reason. The audio element's many ranged
requests (seeking) are the continuation of that one audited playback and write no entry each;
a download writes its own entry (``recording.download``) with the grant's reason.

Audio
-----
The data key is unwrapped per request (storage.keys.KeyStore.unwrap of the catalog's wrapped
key) and the WAV view of the vault file is read with ``VaultReader.read_wav`` (random access:
only the 64 KiB segments a range touches are decrypted and authenticated), in pieces of
:data:`STREAM_CHUNK` so a long range never sits in memory whole. The ETag is the vault file's
SHA-256 from the catalog (strong: the bytes served are a function of that file).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from storage.audit import HASHED_FIELDS, AuditEntry
from storage.catalog import CatalogReader, RecordingRow
from storage.keys import KeyDirError, UnwrapError
from storage.recordingsink import resolve_path
from storage.vault import VaultError, VaultReader
from webadmin.authz import ConsoleUser
from webadmin.context import ConsoleContext
from webadmin.httprange import ByteRange
from webadmin.waveform import Peaks, compute_peaks

PLAY_ACTION = "recording.play"
STREAM_CHUNK = 256 * 1024
FIRST_CHUNK = 64 * 1024
PLAYABLE_STATES = ("complete", "partial")
PEAKS_CACHE_ENTRIES = 32


class AudioUnavailable(Exception):
    """The recording has no audio to serve; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------------------------------------
# grants


def grant_entry(reader: CatalogReader, seq: int) -> AuditEntry | None:
    found: list[tuple[Any, ...]] = reader.conn.execute(
        f"SELECT {', '.join(HASHED_FIELDS)}, hash FROM audit WHERE seq = ?", (seq,)).fetchall()  # nosec B608  # column names from the HASHED_FIELDS constant; every value is a ? parameter
    return AuditEntry(*found[0]) if found else None


def parse_grant(text: str | None) -> int | None:
    """The grant's sequence number from a query argument, None when absent or not a number."""
    if not text or not text.isdigit() or len(text) > 18:
        return None
    return int(text)


def valid_grant(entry: AuditEntry | None, user: ConsoleUser, recording_id: str, lifetime_s: float,
                now: float) -> str | None:
    """None when ``entry`` lets ``user`` hear ``recording_id`` now, else why not."""
    if entry is None:
        return "no such grant"
    if (entry.action, entry.outcome, entry.object) != (PLAY_ACTION, "ok", recording_id):
        return "the grant is not a playback of this recording"
    if (entry.actor, entry.role) != (user.username, user.role):
        return "the grant belongs to someone else"
    if now - entry.ts > lifetime_s:
        return "the grant has expired: give the reason again"
    return None


# ---------------------------------------------------------------------------------------------
# audio


@dataclass(frozen=True, slots=True)
class AudioSource:
    """What is needed to serve one recording's WAV: opened per request, closed after it."""

    row: RecordingRow
    vault: VaultReader

    @property
    def etag(self) -> str:
        return f'"{self.row.vault_sha256 or self.row.recording_id}"'

    @property
    def size(self) -> int:
        return self.vault.wav_size()

    def close(self) -> None:
        self.vault.close()


def playable_row(row: RecordingRow) -> None:
    """Raise AudioUnavailable when the catalog row has no audio that can be served."""
    if row.state == "purged" or not row.has_key:
        raise AudioUnavailable(410, f"recording {row.recording_id} was purged: its key is destroyed")
    if row.state not in PLAYABLE_STATES:
        raise AudioUnavailable(409, f"recording {row.recording_id} is {row.state}: it can be played once finished")
    if not row.vault_path:
        raise AudioUnavailable(404, f"recording {row.recording_id} has no audio in the vault")


def open_audio(ctx: ConsoleContext, reader: CatalogReader, row: RecordingRow) -> AudioSource:
    """Unwrap the data key and open the vault file (header and last segment authenticated)."""
    playable_row(row)
    assert row.vault_path is not None
    wrapped = reader.get_key(row.recording_id)
    if wrapped is None:
        raise AudioUnavailable(410, f"recording {row.recording_id} was purged: its key is destroyed")
    try:
        key = ctx.keys.unwrap(wrapped.kek_id, wrapped.wrapped_key, row.recording_id)
        vault = VaultReader(resolve_path(ctx.vault_dir, row.vault_path), key, row.recording_id)
    except (KeyDirError, UnwrapError) as err:
        raise AudioUnavailable(500, f"recording {row.recording_id}: its key cannot be opened ({err})") from err
    except VaultError as err:
        raise AudioUnavailable(500, f"recording {row.recording_id}: the vault file is damaged ({err})") from err
    return AudioSource(row, vault)


class AudioStream:
    """The WAV bytes of a range (everything when None) as a WSGI body, in STREAM_CHUNK pieces.

    A class rather than a generator: the server calls ``close()`` when the response ends, also
    when the body was never iterated (HEAD, a client gone before the first byte), and a
    generator that never started would not run its cleanup then."""

    def __init__(self, source: AudioSource, byte_range: ByteRange | None) -> None:
        self.source = source
        self.first, self.last = (byte_range.first, byte_range.last) if byte_range else (0, source.size - 1)

    def __iter__(self) -> Iterator[bytes]:
        offset = self.first
        chunk = FIRST_CHUNK     # one segment first: the first byte waits for one decryption only
        while offset <= self.last:
            piece = self.source.vault.read_wav(offset, min(chunk, self.last - offset + 1))
            chunk = STREAM_CHUNK
            if not piece:
                return
            yield piece
            offset += len(piece)

    def close(self) -> None:
        self.source.close()


# ---------------------------------------------------------------------------------------------
# waveform peaks (computed once per recording and size, kept in a small LRU)


class PeaksCache:
    def __init__(self, entries: int = PEAKS_CACHE_ENTRIES) -> None:
        self._entries = entries
        self._data: OrderedDict[tuple[str, str, int], dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, source: AudioSource, points: int) -> dict[str, Any]:
        key = (source.row.recording_id, source.etag, points)
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
        started = time.perf_counter()
        header = source.vault.header
        peaks: Peaks = compute_peaks(source.vault.iter_pcm(), frames=source.vault.frames,
                                     channels=header.channels, rate=header.rate, points=points)
        result = {**peaks.to_json(), "compute_ms": round((time.perf_counter() - started) * 1000, 1)}
        with self._lock:
            self._data[key] = result
            while len(self._data) > self._entries:
                self._data.popitem(last=False)
        return result
