"""Plaintext WAV + JSON per call: the forensic output of `recorderd replay --out DIR`.

Audio is streamed into DIR/<id>.wav.part as the engine hands it over and renamed into place,
with its JSON, when the call is finished; a crash leaves only .part files, never a WAV that
looks complete and is not. Writes go through a temp file, fsync and rename.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from capture.codecs import upsample_2x
from capture.dialogs import Call

READ_CHUNK_FRAMES = 1 << 16


def write_atomic(path: Path, data: bytes) -> None:
    """Temp file in the target directory, fsync, rename, fsync the directory."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def json_bytes(value: Any) -> bytes:
    return (json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False) + "\n").encode()


@dataclass
class WavHandle:
    recording_id: str
    path: Path
    rate: int
    file: sf.SoundFile


@dataclass
class WavDirectorySink:
    out_dir: Path
    not_recorded_rows: list[dict[str, Any]] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)

    def _open_file(self, path: Path, rate: int) -> sf.SoundFile:
        return sf.SoundFile(path, "w", samplerate=rate, channels=2, subtype="PCM_16", format="WAV")

    def open(self, call: Call, rate: int, started_at: float) -> WavHandle:
        path = self.out_dir / f"{call.recording_id}.wav.part"
        return WavHandle(call.recording_id, path, rate, self._open_file(path, rate))

    def write(self, handle: WavHandle, frames: np.ndarray) -> None:
        handle.file.write(frames)

    def change_rate(self, handle: WavHandle, new_rate: int) -> None:
        """A wideband leg joined: rewrite what is on disk at the doubled rate, in chunks."""
        handle.file.close()
        upgraded = handle.path.with_name(handle.path.name + ".up")
        with sf.SoundFile(handle.path, "r") as old, self._open_file(upgraded, new_rate) as new:
            while True:
                block = old.read(READ_CHUNK_FRAMES, dtype="int16")
                if not len(block):
                    break
                new.write(np.stack([upsample_2x(block[:, 0]), upsample_2x(block[:, 1])], axis=1))
        os.replace(upgraded, handle.path)
        handle.rate = new_rate
        handle.file = sf.SoundFile(handle.path, "r+")
        handle.file.seek(0, sf.SEEK_END)

    def close(self, handle: WavHandle, metadata: dict[str, Any]) -> None:
        handle.file.close()
        with open(handle.path, "rb+") as fh:
            os.fsync(fh.fileno())
        final = self.out_dir / f"{handle.recording_id}.wav"
        os.replace(handle.path, final)
        write_atomic(self.out_dir / f"{handle.recording_id}.json", json_bytes(metadata))
        self.written.append(final)

    def discard(self, handle: WavHandle) -> None:
        handle.file.close()
        handle.path.unlink(missing_ok=True)

    def not_recorded(self, metadata: dict[str, Any]) -> None:
        self.not_recorded_rows.append(metadata)

    def finish(self) -> None:
        write_atomic(self.out_dir / "not-recorded.json", json_bytes(self.not_recorded_rows))
