"""The capture engine's sink for recordings at rest: encrypted vault file + catalog row.

Per call: a fresh random data key, wrapped by the active KEK; the catalog row appears when
the recording opens (state `active`, with the wrapped key, so a crash leaves a recoverable
.part behind, see storage.recovery); audio is appended to the vault as the engine hands it
over; at the end the vault is closed and the row completed in one transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from capture.codecs import upsample_2x
from capture.dialogs import Call
from capture.recording import call_identity
from storage.audit import AuditLog
from storage.catalog import Catalog
from storage.keys import KeyStore, new_data_key
from storage.vault import SAMPLE_BYTES, VaultReader, VaultWriter

VAULT_SUFFIX = ".rdv"
CHANNELS = 2
UPGRADE_CHUNK = 1 << 20


def vault_path(vault_dir: Path, recording_id: str, generation: int = 0) -> Path:
    """vault/<YYYY>/<MM>/<DD>/<id>[.gN].rdv, dated by the recording id (its UTC start)."""
    try:
        day = datetime.strptime(recording_id[:8], "%Y%m%d").replace(tzinfo=UTC)
        folder = vault_dir / f"{day:%Y}" / f"{day:%m}" / f"{day:%d}"
    except ValueError:
        folder = vault_dir / "undated"
    name = recording_id if not generation else f"{recording_id}.g{generation}"
    return folder / f"{name}{VAULT_SUFFIX}"


def stored_path(vault_dir: Path, path: Path) -> str:
    """What the catalog keeps: the path relative to the vault, so that a vault restored or
    moved elsewhere (backup restore, a copied test appliance) still resolves."""
    return str(Path(path).resolve().relative_to(vault_dir.resolve()))


def resolve_path(vault_dir: Path, stored: str) -> Path:
    return vault_dir / stored


def pcm_bytes(frames: np.ndarray) -> bytes:
    return frames.astype("<i2", copy=False).tobytes()


@dataclass
class VaultHandle:
    call: Call
    key: bytes
    key_id: bytes
    kek_id: str
    wrapped: bytes
    rate: int
    path: Path
    writer: VaultWriter
    generation: int = 0


@dataclass
class VaultSink:
    """RecordingSink (capture.engine) that writes into the vault and the catalog."""

    vault_dir: Path
    keys: KeyStore
    catalog: Catalog
    audit: AuditLog | None = None
    actor: str = "recorderd"
    tags: list[str] = field(default_factory=list)
    segment_size: int = 65536
    fsync_every_segments: int = 1
    recorded: list[str] = field(default_factory=list)
    open_handles: dict[str, VaultHandle] = field(default_factory=dict)

    @property
    def flush_frames(self) -> int:
        """Frames in one vault segment (capture.engine.RecordingSink): live audio comes in
        whole segments."""
        return max(1, self.segment_size // (CHANNELS * SAMPLE_BYTES))

    def open(self, call: Call, rate: int, started_at: float) -> VaultHandle:
        key, key_id = new_data_key()
        kek_id, wrapped = self.keys.wrap(key, call.recording_id)
        path = vault_path(self.vault_dir, call.recording_id)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.catalog.begin_recording(call.recording_id, call.call_id, started_at, call_identity(call),
                                     kek_id=kek_id, wrapped_key=wrapped, key_id=key_id.hex())
        writer = VaultWriter(path, key, key_id, call.recording_id, rate, CHANNELS, segment_size=self.segment_size,
                             fsync_every_segments=self.fsync_every_segments)
        handle = VaultHandle(call, key, key_id, kek_id, wrapped, rate, path, writer)
        self.open_handles[call.recording_id] = handle
        return handle

    def write(self, handle: VaultHandle, frames: np.ndarray) -> None:
        handle.writer.append(pcm_bytes(frames))

    def change_rate(self, handle: VaultHandle, new_rate: int) -> None:
        """A wideband leg joined: the audio so far is re-encrypted, upsampled, into a new vault
        file (never rewritten in place: that would reuse GCM nonces); the old file goes."""
        handle.writer.close()
        old_path = handle.path
        handle.generation += 1
        handle.path = vault_path(self.vault_dir, handle.call.recording_id, handle.generation)
        writer = VaultWriter(handle.path, handle.key, handle.key_id, handle.call.recording_id, new_rate, CHANNELS,
                             segment_size=self.segment_size, fsync_every_segments=self.fsync_every_segments)
        with VaultReader(old_path, handle.key, handle.call.recording_id) as old:
            for chunk in old.iter_pcm(UPGRADE_CHUNK):
                pcm = np.frombuffer(chunk, "<i2").reshape(-1, CHANNELS)
                writer.append(pcm_bytes(np.stack([upsample_2x(pcm[:, 0]), upsample_2x(pcm[:, 1])], axis=1)))
        old_path.unlink()
        handle.writer, handle.rate = writer, new_rate

    def close(self, handle: VaultHandle, metadata: dict[str, Any]) -> None:
        self.open_handles.pop(handle.call.recording_id, None)
        info = handle.writer.close()
        vault = {"path": stored_path(self.vault_dir, info.path), "size": info.size, "sha256": info.digest}
        rid = handle.call.recording_id
        partial = metadata.get("partial_reason")
        self.catalog.finish_recording(rid, metadata, vault, handle.key_id.hex(), handle.kek_id, handle.wrapped,
                                      state="partial" if partial else "complete",
                                      partial_note=f"recording stopped early: {partial}" if partial else None)
        for tag in self.tags:
            self.catalog.add_tag(rid, tag)
        if self.audit is not None:
            self.audit.append(self.actor, "system", "record", rid, "ok",
                              detail={"call_id": handle.call.call_id, "duration_s": metadata.get("duration_s")})
        self.recorded.append(rid)

    def detach_all(self) -> None:
        """After a failure (disk full): close every open vault file, leaving the .part files
        and active rows for recovery at the next start."""
        for handle in self.open_handles.values():
            handle.writer.detach()
        self.open_handles.clear()

    def discard(self, handle: VaultHandle) -> None:
        self.open_handles.pop(handle.call.recording_id, None)
        handle.writer.abort()
        self.catalog.abandon_recording(handle.call.recording_id)

    def not_recorded(self, metadata: dict[str, Any]) -> None:
        self.catalog.add_not_recorded(metadata)
        if self.audit is not None:
            self.audit.append(self.actor, "system", "not_recorded", metadata.get("call_id", ""), "ok",
                              reason=str(metadata.get("reason", "")))
