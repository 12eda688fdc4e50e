"""Shared fixtures of the consent tests: prompts spoken by espeak-ng once per session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recorderd.consent.prompts import PromptText, generate_prompts, read_prompt

PROMPTS = (PromptText("zh", "cmn", "为保障服务质量，本次通话将录音。"),
           PromptText("en", "en-us", "To ensure the quality of our service, this call will be recorded."))
# speech that is not a prompt: what a caller or an agent says
OTHER_SPEECH = PromptText("talk", "en-us", "Good morning, I would like to ask about the balance of my savings "
                                             "account and a transfer I made last week.")


@pytest.fixture(scope="session")
def prompt_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("prompts")
    generate_prompts(PROMPTS, directory)
    return directory


@pytest.fixture(scope="session")
def other_speech(tmp_path_factory: pytest.TempPathFactory) -> dict[int, np.ndarray]:
    directory = tmp_path_factory.mktemp("speech")
    generate_prompts((OTHER_SPEECH,), directory)
    return {rate: read_prompt(directory / f"talk.{rate // 1000}k.wav")[0] for rate in (8000, 16000)}
