"""capture/consent.py: the prompt is found in a recording channel through G.711 and G.722, at
its offset, despite gain, other speech and a slipped frame; other speech, silence and a
prompt cut short are not "audible"."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from capture.codecs import ALAW_TO_PCM16, ULAW_TO_PCM16, codec_spec, make_decoder
from capture.consent import PromptCorrelator, detect_consent
from recorderd.consent.prompts import load_prompt_library
from tests.gen.g711 import encode_alaw, encode_ulaw
from tests.gen.media import encode


def g711(pcm: np.ndarray, law: str) -> np.ndarray:
    """A G.711 round trip (encoder from tests/gen, decoder table from capture/)."""
    if law == "alaw":
        return ALAW_TO_PCM16[encode_alaw(pcm)]
    return ULAW_TO_PCM16[encode_ulaw(pcm)]


def g722(pcm: np.ndarray) -> np.ndarray:
    """A G.722 round trip at 16 kHz (PyAV's encoder and decoder, as on the wire)."""
    pcm = pcm[: len(pcm) // 320 * 320]
    data = encode("g722", pcm)
    decoder = make_decoder(codec_spec("G722", 8000), 16000)
    return np.concatenate([decoder.decode(data[i:i + 160]) for i in range(0, len(data), 160)])


def place(length: int, *pieces: tuple[int, np.ndarray, float]) -> np.ndarray:
    """A channel of ``length`` samples with each (start, samples, gain) mixed in."""
    out = np.zeros(length, np.float64)
    for start, samples, gain in pieces:
        end = min(length, start + len(samples))
        out[start:end] += samples[: end - start] * gain
    return np.clip(np.round(out), -32768, 32767).astype(np.int16)


@pytest.fixture(scope="module")
def library(prompt_dir: Path) -> dict[int, dict[str, np.ndarray]]:
    return load_prompt_library(prompt_dir)


@pytest.mark.parametrize("law", ["alaw", "ulaw"])
def test_prompt_found_through_g711_at_its_offset(library: dict, other_speech: dict, law: str) -> None:
    rate = 8000
    prompt = library[rate]["en"]
    start = int(2.345 * rate)
    callee = place(12 * rate, (start, prompt, 0.4), (start + len(prompt) + rate, other_speech[rate], 1.0))
    caller = place(12 * rate, (rate // 2, other_speech[rate], 0.8))
    audio = np.stack([g711(caller, law), g711(callee, law)], axis=1)
    result = detect_consent(audio, PromptCorrelator(library[rate], rate))
    assert result.audible and result.best is not None
    assert (result.best.prompt, result.best.channel) == ("en", 1)
    assert abs(result.best.offset_s - 2.345) <= 1 / rate
    assert result.best.score >= 0.95 and result.best.whole >= 0.95
    assert result.to_dict()["offset_s"] == 2.345


def test_wideband_prompt_found_through_g722(library: dict, other_speech: dict) -> None:
    rate = 16000
    prompt = library[rate]["zh"]
    channel = g722(place(10 * rate, (int(0.75 * rate), prompt, 1.0)))
    result = detect_consent(np.stack([g722(place(10 * rate, (0, other_speech[rate], 1.0))), channel], axis=1),
                            PromptCorrelator(library[rate], rate))
    assert result.audible and result.best is not None
    assert (result.best.prompt, result.best.channel) == ("zh", 1)
    # G.722's QMF filter bank delays the signal by 22 samples (1.4 ms)
    assert abs(result.best.offset_s - 0.75) <= 0.003
    assert result.best.coverage >= 0.9


def test_a_slipped_frame_does_not_hide_the_prompt(library: dict) -> None:
    """A jitter buffer on the path dropped 10 ms in the middle of the prompt: the whole-prompt
    correlation falls, every part still matches near its place."""
    rate = 8000
    prompt = library[rate]["en"]
    cut = len(prompt) // 2
    slipped = np.concatenate([prompt[:cut], prompt[cut + rate // 100:]])
    channel = g711(place(8 * rate, (rate, slipped, 1.0)), "alaw")
    result = detect_consent(channel, PromptCorrelator(library[rate], rate))
    assert result.audible and result.best is not None
    assert abs(result.best.offset_s - 1.0) <= 1 / rate
    assert result.best.coverage >= 0.9
    assert result.best.whole < result.best.coverage


def test_other_speech_is_not_the_prompt(library: dict, other_speech: dict) -> None:
    rate = 8000
    talk = g711(place(15 * rate, (rate, other_speech[rate], 1.0), (8 * rate, other_speech[rate][::-1], 0.7)), "ulaw")
    result = detect_consent(np.stack([talk, talk[::-1].copy()], axis=1), PromptCorrelator(library[rate], rate))
    assert not result.audible and result.best is not None
    assert result.best.coverage < 0.4, result.best
    assert result.to_dict()["offset_s"] is None


def test_a_prompt_cut_short_is_not_audible_but_is_located(library: dict) -> None:
    """The caller hung up half way: the recording ends in the middle of the prompt."""
    rate = 8000
    prompt = library[rate]["zh"]
    start = int(1.5 * rate)
    channel = g711(place(start + len(prompt) // 2, (start, prompt, 1.0)), "alaw")
    result = detect_consent(channel, PromptCorrelator(library[rate], rate))
    assert not result.audible and result.best is not None
    assert result.best.prompt == "zh" and abs(result.best.offset_s - 1.5) <= 1 / rate
    assert result.best.coverage == 0.0       # the missing half is silence


def test_silence_and_empty_recordings(library: dict) -> None:
    correlator = PromptCorrelator(library[8000], 8000)
    silent = np.zeros((8000 * 5, 2), np.int16)
    silent[:, 0] = 8          # A-law's idle pattern decodes to ±8
    assert detect_consent(silent, correlator).to_dict() == {
        "audible": False, "offset_s": None, "channel": None, "prompt": None, "score": None, "coverage": None}
    assert not detect_consent(np.zeros((0, 2), np.int16), correlator).audible


def test_bad_inputs_are_named(library: dict) -> None:
    with pytest.raises(ValueError, match="silent"):
        PromptCorrelator({"quiet": np.zeros(8000, np.int16)}, 8000)
    with pytest.raises(ValueError, match="shorter than"):
        PromptCorrelator({"blip": np.ones(100, np.int16)}, 8000)
    with pytest.raises(ValueError, match="threshold"):
        detect_consent(np.zeros(8000, np.int16), PromptCorrelator(library[8000], 8000), threshold=1.5)
