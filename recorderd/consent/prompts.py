"""Consent prompts: WAV files in the prompt directory, made from text with espeak-ng.

A prompt NAME is two files, ``NAME.8k.wav`` and ``NAME.16k.wav`` (mono, 16-bit PCM): the
announcer plays the 16 kHz one (its conference bridge runs at 16 kHz, so G.722 callers get
wideband audio and G.711 callers a clean downsampling), the detector compares a recording
with the file of the recording's own rate. Default prompts come from the texts in
``consent.prompt_texts`` (``NAME|VOICE|TEXT``, VOICE an espeak-ng voice such as ``cmn`` or
``en-us``): espeak-ng speaks the text, sox normalises it to −3 dBFS and resamples it
(``rate -h``, a linear-phase band-limited resampler), and each file is written crash-safely.
So no audio is committed to the source tree; a recorded voice can replace a file of the same
name (keep both rates).
"""

from __future__ import annotations

import io
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from capture.fsutil import write_atomic
from recorderd.consent.rules import valid_prompt_name

RATES = (8000, 16000)
PLAYBACK_RATE = 16000
PEAK_DBFS = -3
TOOL_TIMEOUT_S = 60


class PromptError(Exception):
    """A prompt cannot be made or read; the message names the prompt or the file."""


@dataclass(frozen=True, slots=True)
class PromptText:
    name: str
    voice: str
    text: str


def parse_prompt_text(entry: str) -> PromptText:
    """``NAME|VOICE|TEXT`` → PromptText (ValueError saying what is wrong)."""
    parts = entry.split("|", 2)
    if len(parts) != 3 or not all(p.strip() for p in parts):
        raise ValueError(f"{entry!r}: expected NAME|VOICE|TEXT, e.g. en|en-us|This call is recorded.")
    name, voice, text = (p.strip() for p in parts)
    if not valid_prompt_name(name):
        raise ValueError(f"{entry!r}: prompt name {name!r} may only hold letters, digits, '_' and '-'")
    if not all(c.isalnum() or c in "-_+" for c in voice):
        raise ValueError(f"{entry!r}: {voice!r} is not an espeak-ng voice name")
    return PromptText(name, voice, text)


def prompt_file(prompt_dir: Path, name: str, rate: int) -> Path:
    return prompt_dir / f"{name}.{rate // 1000}k.wav"


def playback_file(prompt_dir: Path, name: str) -> Path | None:
    """The file the announcer plays for ``name`` (16 kHz, else 8 kHz), None when neither exists."""
    for rate in (PLAYBACK_RATE, *RATES):
        path = prompt_file(prompt_dir, name, rate)
        if path.is_file():
            return path
    return None


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        package = {"espeak-ng": "espeak-ng", "sox": "sox"}[name]
        raise PromptError(f"{name} is not installed (Debian package {package}): cannot make prompts from text")
    return found


def synthesise(prompt: PromptText, rate: int) -> bytes:
    """The WAV bytes of ``prompt`` spoken by espeak-ng, normalised and resampled to ``rate``."""
    try:
        spoken = subprocess.run([_tool("espeak-ng"), "-v", prompt.voice, "--stdin", "--stdout"],
                                input=prompt.text.encode(), capture_output=True, timeout=TOOL_TIMEOUT_S)
    except subprocess.TimeoutExpired as err:
        raise PromptError(f"prompt {prompt.name}: espeak-ng took longer than {TOOL_TIMEOUT_S} s") from err
    if spoken.returncode != 0 or not spoken.stdout:
        raise PromptError(f"prompt {prompt.name}: espeak-ng -v {prompt.voice} failed: "
                          f"{spoken.stderr.decode(errors='replace').strip() or 'no audio'}")
    try:
        converted = subprocess.run(   # -D: no dither, so the same text always makes the same file
            [_tool("sox"), "-D", "-t", "wav", "-", "-t", "wav", "-e", "signed-integer", "-b", "16", "-c", "1", "-",
             "gain", "-n", str(PEAK_DBFS), "rate", "-h", str(rate)],
            input=spoken.stdout, capture_output=True, timeout=TOOL_TIMEOUT_S)
    except subprocess.TimeoutExpired as err:
        raise PromptError(f"prompt {prompt.name}: sox took longer than {TOOL_TIMEOUT_S} s") from err
    if converted.returncode != 0:
        raise PromptError(f"prompt {prompt.name}: sox failed: {converted.stderr.decode(errors='replace').strip()}")
    return _with_frame_count(converted.stdout)


def _with_frame_count(wav: bytes) -> bytes:
    """sox writing to a pipe cannot seek back to fill in the sizes: rewrite the file whole."""
    samples, rate = sf.read(io.BytesIO(wav), dtype="int16")
    out = io.BytesIO()
    sf.write(out, samples, rate, subtype="PCM_16", format="WAV")
    return out.getvalue()


def generate_prompts(texts: tuple[PromptText, ...] | list[PromptText], prompt_dir: Path, *,
                     only_missing: bool = False) -> list[Path]:
    """Write ``NAME.8k.wav`` and ``NAME.16k.wav`` for every text; returns the files written."""
    prompt_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for prompt in texts:
        for rate in RATES:
            path = prompt_file(prompt_dir, prompt.name, rate)
            if only_missing and path.is_file():
                continue
            write_atomic(path, synthesise(prompt, rate), mode=0o644)
            written.append(path)
    return written


def missing_prompts(prompt_dir: Path, names: list[str]) -> list[str]:
    return [name for name in names if playback_file(prompt_dir, name) is None]


def read_prompt(path: Path) -> tuple[np.ndarray, int]:
    """(mono int16 samples, rate) of a prompt file; PromptError naming the file otherwise."""
    try:
        samples, rate = sf.read(path, dtype="int16", always_2d=True)
    except (OSError, RuntimeError, sf.LibsndfileError) as err:
        raise PromptError(f"{path}: not a readable WAV file ({err})") from err
    if samples.shape[1] != 1:
        raise PromptError(f"{path}: a prompt must be mono, this file has {samples.shape[1]} channels")
    return samples[:, 0], int(rate)


def load_prompt_library(prompt_dir: Path) -> dict[int, dict[str, np.ndarray]]:
    """Every prompt in the directory by rate (8000/16000) then name, for the detector.

    A file whose name says one rate and whose header says another is refused: comparing a
    recording with a prompt at the wrong rate would find nothing and say so wrongly."""
    library: dict[int, dict[str, np.ndarray]] = {rate: {} for rate in RATES}
    if not prompt_dir.is_dir():
        return library
    for rate in RATES:
        suffix = f".{rate // 1000}k.wav"
        for path in sorted(prompt_dir.glob(f"*{suffix}")):
            samples, actual = read_prompt(path)
            if actual != rate:
                raise PromptError(f"{path}: named for {rate} Hz but recorded at {actual} Hz")
            library[rate][path.name[: -len(suffix)]] = samples
    return library


def prompt_duration_s(path: Path) -> float:
    info = sf.info(str(path))
    return float(info.frames) / float(info.samplerate)
