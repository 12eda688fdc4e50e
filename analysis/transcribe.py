"""Speech to text on the box with faster-whisper (CTranslate2), from a local model directory.

Nothing is downloaded (``local_files_only``): a missing or incomplete model directory is a
:class:`ModelError` naming the setting. One channel at a time: the language is the only
configured one, or the most likely among the configured ones (Whisper's language detection
restricted to them); an English-only model (``*.en``) is always English. Decoding is beam
search at temperature 0 only: no temperature fallback, which samples at random, so the same
audio always gives the same transcript (a compliance record must be reproducible, and a
fallback costs up to six decodes of a bad window); no conditioning on the previous window (it
lets one hallucination repeat), and repeated 3-grams suppressed.

``pause`` is called between decoded windows: the worker's CPU budget sleeps there, and a stop
request raises out of it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

MODEL_FILES = ("model.bin", "config.json", "tokenizer.json")
# Whisper writes Mandarin in traditional or simplified characters as the first window leans;
# a simplified prompt keeps it to simplified (the usual faster-whisper practice).
PROMPTS = {"zh": "以下是普通话的句子。"}


class ModelError(Exception):
    """The Whisper model cannot be loaded; the message names analysis.model_dir."""


@dataclass(frozen=True, slots=True)
class TextSegment:
    start_s: float            # in the audio given to transcribe()
    end_s: float
    text: str
    confidence: float         # exp(average log-probability of the tokens), 0..1


@dataclass(frozen=True, slots=True)
class ChannelTranscript:
    language: str
    language_prob: float | None
    segments: tuple[TextSegment, ...] = field(default_factory=tuple)


def describe_model(model_dir: Path) -> str:
    """A short identity of the model for the catalog: directory name and vocabulary size
    (51864 = English-only, 51865/51866 = multilingual)."""
    try:
        vocabulary = sum(1 for _ in (model_dir / "vocabulary.txt").open(encoding="utf-8"))
    except OSError:
        vocabulary = 0
    return f"faster-whisper:{model_dir.name}:{vocabulary}"


class WhisperTranscriber:
    def __init__(self, model_dir: str | Path, *, languages: Sequence[str], threads: int, compute_type: str = "int8",
                 beam_size: int = 5) -> None:
        path = Path(model_dir)
        missing = [name for name in MODEL_FILES if not (path / name).is_file()]
        if missing:
            raise ModelError(f"analysis.model_dir: {path} is not a CTranslate2 Whisper model directory "
                             f"(missing {', '.join(missing)})")
        from faster_whisper import WhisperModel  # loads CTranslate2: only where a model is used

        try:
            self._model: Any = WhisperModel(str(path), device="cpu", compute_type=compute_type,
                                            cpu_threads=threads, local_files_only=True)
        except (RuntimeError, ValueError, OSError) as err:
            raise ModelError(f"analysis.model_dir: cannot load {path}: {err}") from err
        self.name = describe_model(path)
        self.multilingual = bool(self._model.model.is_multilingual)
        self.languages = tuple(languages)
        self.beam_size = beam_size

    def _language(self, audio: np.ndarray) -> tuple[str, float | None]:
        if not self.multilingual:
            return "en", None
        if len(self.languages) == 1:
            return self.languages[0], None
        _best, _prob, ranked = self._model.detect_language(audio=audio)
        allowed = [(lang, prob) for lang, prob in ranked if lang in self.languages]
        if not allowed:
            return self.languages[0], None
        total = sum(prob for _, prob in allowed) or 1.0
        language, prob = max(allowed, key=lambda item: item[1])
        return language, round(prob / total, 4)

    def transcribe(self, audio: np.ndarray, pause: Callable[[], None] = lambda: None) -> ChannelTranscript:
        """Segments of one channel's 16 kHz float32 audio."""
        if audio.size == 0:
            return ChannelTranscript(self.languages[0] if self.languages else "en", None)
        language, prob = self._language(audio)
        pause()
        pieces, _info = self._model.transcribe(
            audio, language=language, beam_size=self.beam_size, temperature=0.0,
            condition_on_previous_text=False, no_repeat_ngram_size=3, initial_prompt=PROMPTS.get(language),
            vad_filter=False)
        segments = []
        for piece in pieces:            # a generator: each window is decoded on demand
            text = piece.text.strip()
            if text and text != PROMPTS.get(language):     # a window of silence can echo the prompt
                segments.append(TextSegment(round(piece.start, 3), round(piece.end, 3), text,
                                            round(math.exp(min(0.0, piece.avg_logprob)), 4)))
            pause()
        return ChannelTranscript(language, prob, tuple(segments))
