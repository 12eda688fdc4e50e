"""Crash recovery at start: recordings a crash left `active` become `partial` recordings.

For each active catalog row, the newest .part vault file of the recording is recovered up to
its last complete segment (storage.vault.recover_partial) and the row is completed with state
`partial` and a note saying how much audio was kept and from when the rest is lost. A row
whose .part holds no audio at all is completed as partial without a vault file.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capture.recording import iso_utc
from storage.audit import AuditLog
from storage.catalog import Catalog, RecordingRow
from storage.keys import KeyStore, data_key_id
from storage.recordingsink import CHANNELS, VAULT_SUFFIX, stored_path, vault_path
from storage.vault import VaultError, VaultReader, recover_partial

BYTES_PER_FRAME = 2 * CHANNELS


@dataclass(slots=True)
class Recovered:
    recording_id: str
    seconds_kept: float
    vault: str | None
    note: str


def _generation(path: Path) -> tuple[int, bool]:
    found = re.search(r"\.g(\d+)\.rdv(\.part)?$", path.name)
    return (int(found.group(1)) if found else 0, path.name.endswith(".part"))


def vault_files_of(vault_dir: Path, recording_id: str) -> list[Path]:
    """A recording's vault files, finished (.rdv) or not (.rdv.part), newest generation (after
    a rate change) last; within a generation the .part (still being written) after the file."""
    folder = vault_path(vault_dir, recording_id).parent
    if not folder.is_dir():
        return []
    found = [p for p in folder.glob(f"{recording_id}*{VAULT_SUFFIX}*")
             if p.name.endswith((VAULT_SUFFIX, f"{VAULT_SUFFIX}.part"))]
    return sorted(found, key=_generation)


def recover_crashed(catalog: Catalog, keys: KeyStore, vault_dir: Path,
                    audit: AuditLog | None = None, only: Collection[str] | None = None) -> list[Recovered]:
    """Every active row, or those of `only` (the recordings a dead fanout worker had open
    while the others go on recording)."""
    reader = catalog.reader()
    try:
        active = [row for row in reader.active_recordings() if only is None or row.recording_id in only]
        wrapped = {row.recording_id: reader.get_key(row.recording_id) for row in active}
        stored = {row.recording_id: (reader.get(row.recording_id) or None) for row in active}
    finally:
        reader.close()
    results = []
    for row in active:
        key_row = wrapped[row.recording_id]
        detail = stored[row.recording_id]
        identity = detail.metadata if detail is not None else {}
        try:
            result = _recover_one(catalog, keys, vault_dir, row, key_row, identity)
        except OSError as err:   # e.g. the disk is still full: the row stays active, retried next start
            result = Recovered(row.recording_id, 0.0, None, f"not recovered yet: {err}")
        results.append(result)
        if audit is not None:
            audit.append("recorderd", "system", "recover", row.recording_id, "ok", reason=result.note)
    return results


def _recover_one(catalog: Catalog, keys: KeyStore, vault_dir: Path, row: RecordingRow,
                 key_row: Any, identity: dict[str, Any]) -> Recovered:
    rid = row.recording_id
    files = vault_files_of(vault_dir, rid)
    data_key = keys.unwrap(key_row.kek_id, key_row.wrapped_key, rid) if key_row is not None else None
    vault: dict[str, Any] = {}
    frames, rate = 0, row.sample_rate or 8000
    closed = False
    if files and data_key is not None:
        newest = files[-1]
        for stale in files[:-1]:   # an interrupted rate change: the older generation is superseded
            stale.unlink(missing_ok=True)
        try:
            if newest.name.endswith(".part"):
                final = newest.with_name(newest.name[: -len(".part")])
                info, frames = recover_partial(newest, data_key, final)
            else:   # the crash came after the vault file was closed, before the catalog commit
                final, closed = newest, True
            with VaultReader(final, data_key, rid) as reader:
                if closed:
                    info, frames = reader.verify(), reader.frames
                rate = reader.header.rate
            vault = {"path": stored_path(vault_dir, info.path), "size": info.size, "sha256": info.digest}
        except VaultError:
            newest.unlink(missing_ok=True)   # cut inside its header: it held no audio
    kept = frames / rate if rate else 0.0
    lost_from = row.started_at + kept
    if closed:
        note = (f"recovered after a recorder crash: the audio ({kept:.1f} s) is whole, but the call's "
                f"final metadata (streams, DTMF, end) was lost")
    else:
        note = (f"recovered after a recorder crash: {kept:.1f} s of audio kept; "
                f"not recorded from {iso_utc(lost_from)} to the end of the call")
    metadata = {**identity, "recording_id": rid, "call_id": row.call_id,
                "started_at": iso_utc(row.started_at), "started_at_epoch": row.started_at,
                "duration_s": round(kept, 3), "sample_rate": rate, "channels": CHANNELS,
                "end_reason": "recorder_crash", "partial": True,
                "partial_lost_from": iso_utc(lost_from)}
    catalog.finish_recording(rid, metadata, vault, data_key_id(data_key).hex() if data_key else None,
                             key_row.kek_id if key_row else None, key_row.wrapped_key if key_row else None,
                             state="partial", partial_note=note)
    return Recovered(rid, kept, vault.get("path"), note)
