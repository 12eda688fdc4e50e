"""Plaintext WAV + JSON per call: the forensic output of `recorderd replay --out DIR`.

Audio is streamed into DIR/<id>.wav.part as the engine hands it over (raw frames appended
after a placeholder header, which is filled in at the end). Finished recordings are made
durable in groups by a background thread, so that the waiting for the disk overlaps the
decoding: each file of the group is fsynced (its own data only: syncfs(2) would also wait for
every other writer on the filesystem), then renamed into place, then the directory synced.
A crash leaves only .part and .tmp files, never a WAV or JSON that looks complete and is not.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from capture.codecs import upsample_2x
from capture.dialogs import Call
from capture.fsutil import fsync_dir, write_atomic
from capture.wavfile import WAV_HEADER_BYTES, wav_header

READ_CHUNK_FRAMES = 1 << 16
CHANNELS = 2
COMMIT_GROUP = 32          # finished recordings made durable together


def sync_and_publish(directory: Path, group: list[tuple[Path, Path]]) -> list[Path]:
    """Durable first, visible second: fsync every temp file, rename them, sync the directory."""
    for tmp, _ in group:
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    for tmp, final in group:
        os.replace(tmp, final)
    fsync_dir(directory)
    return [final for _, final in group if final.suffix == ".wav"]


def json_bytes(value: Any) -> bytes:
    return (json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False) + "\n").encode()


@dataclass
class WavHandle:
    recording_id: str
    path: Path
    rate: int
    file: BinaryIO
    frames: int = 0


@dataclass
class WavDirectorySink:
    out_dir: Path
    not_recorded_rows: list[dict[str, Any]] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)
    pending: list[tuple[Path, Path]] = field(default_factory=list)   # (temp, final) not yet durable
    publishing: list[Future[list[Path]]] = field(default_factory=list)
    publisher: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1, "wav-publisher"))

    def __post_init__(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def _start(path: Path, rate: int) -> BinaryIO:
        handle = open(path, "wb")  # noqa: SIM115 - stays open for the life of the call
        handle.write(wav_header(rate, CHANNELS, 0))
        return handle

    def open(self, call: Call, rate: int, started_at: float) -> WavHandle:
        path = self.out_dir / f"{call.recording_id}.wav.part"
        return WavHandle(call.recording_id, path, rate, self._start(path, rate))

    def write(self, handle: WavHandle, frames: np.ndarray) -> None:
        handle.file.write(frames.astype("<i2", copy=False).tobytes())
        handle.frames += len(frames)

    def change_rate(self, handle: WavHandle, new_rate: int) -> None:
        """A wideband leg joined: rewrite what is on disk at the doubled rate, in chunks."""
        handle.file.close()
        upgraded = handle.path.with_name(handle.path.name + ".up")
        with open(handle.path, "rb") as old, open(upgraded, "wb") as new:
            old.seek(WAV_HEADER_BYTES)
            new.write(wav_header(new_rate, CHANNELS, 0))
            while block := old.read(READ_CHUNK_FRAMES * 2 * CHANNELS):
                pcm = np.frombuffer(block, "<i2").reshape(-1, CHANNELS)
                up = np.stack([upsample_2x(pcm[:, 0]), upsample_2x(pcm[:, 1])], axis=1)
                new.write(up.astype("<i2").tobytes())
        os.replace(upgraded, handle.path)
        handle.rate = new_rate
        handle.frames *= 2
        handle.file = open(handle.path, "r+b")  # noqa: SIM115 - not "ab": the header is rewritten at close
        handle.file.seek(0, os.SEEK_END)

    def close(self, handle: WavHandle, metadata: dict[str, Any]) -> None:
        handle.file.seek(0)
        handle.file.write(wav_header(handle.rate, CHANNELS, handle.frames))
        handle.file.close()
        meta_tmp = self.out_dir / f".{handle.recording_id}.json.tmp"
        meta_tmp.write_bytes(json_bytes(metadata))
        self.pending.append((handle.path, self.out_dir / f"{handle.recording_id}.wav"))
        self.pending.append((meta_tmp, self.out_dir / f"{handle.recording_id}.json"))
        if len(self.pending) >= 2 * COMMIT_GROUP:
            self.commit()

    def commit(self) -> None:
        """Hand the finished group to the publisher thread (see the module docstring)."""
        if self.pending:
            self.publishing.append(self.publisher.submit(sync_and_publish, self.out_dir, list(self.pending)))
            self.pending.clear()

    def _wait_published(self) -> None:
        for done in self.publishing:
            self.written.extend(done.result())
        self.publishing.clear()

    def discard(self, handle: WavHandle) -> None:
        handle.file.close()
        handle.path.unlink(missing_ok=True)

    def not_recorded(self, metadata: dict[str, Any]) -> None:
        self.not_recorded_rows.append(metadata)

    def finish(self) -> None:
        self.commit()
        self._wait_published()
        self.publisher.shutdown()
        # plaintext forensic output: readable like the WAV files beside it
        write_atomic(self.out_dir / "not-recorded.json", json_bytes(self.not_recorded_rows), mode=0o644)
