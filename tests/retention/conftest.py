"""Shared helpers: a self-contained appliance, spool drops with known audio, the CLI in-process."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from recorderd.cli import main

RATE = 8000


def configure(config: Path, **sections: dict[str, Any]) -> None:
    """Set settings in an appliance's recorderd.toml (each must exist there already)."""
    text = config.read_text()
    for section, settings in sections.items():
        head = text.index(f"[{section}]\n")
        end = text.find("\n[", head + 1)
        end = len(text) if end < 0 else end
        body = text[head:end]
        for key, value in settings.items():
            body, count = re.subn(rf"^{key} = .*$", f"{key} = {json.dumps(value)}", body, count=1, flags=re.M)
            assert count == 1, f"{section}.{key} not in the config"
        text = text[:head] + body + text[end:]
    config.write_text(text)


def make_appliance(root: Path, **sections: dict[str, Any]) -> Path:
    """`recorderd init` + a test clock + a spool inside the appliance."""
    assert main(["init", str(root)]) == 0
    config = root / "recorderd.toml"
    spool = {"dir": "spool", "rejected_dir": "spool/rejected", "stable_s": 0.3, "orphan_s": 2.0, "rescan_s": 0.5}
    spool.update(sections.pop("spool", {}))
    retention = {"allow_test_clock": True, **sections.pop("retention", {})}
    configure(config, spool=spool, retention=retention, **sections)
    return config


def tone(frequency: float, seconds: float, channels: int = 1, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    mono = (np.sin(2 * np.pi * frequency * t) * 6000).astype(np.int16)
    return mono if channels == 1 else np.stack([mono, (mono // 2).astype(np.int16)], axis=1)


def sidecar_xml(fields: dict[str, Any]) -> str:
    parts = []
    for key, value in fields.items():
        if key == "tags":
            parts.append("<tags>" + "".join(f"<tag>{t}</tag>" for t in value) + "</tags>")
        else:
            parts.append(f"<{key}>{value}</{key}>")
    return "<recording>" + "".join(parts) + "</recording>"


@dataclass
class Drop:
    name: str
    audio: np.ndarray
    fields: dict[str, Any]


def drop(spool: Path, name: str, audio: np.ndarray, *, xml: bool = False, **fields: Any) -> Drop:
    """WAV (PCM 16) and its sidecar, both written in place."""
    spool.mkdir(parents=True, exist_ok=True)
    sf.write(spool / f"{name}.wav", audio, RATE, subtype="PCM_16")
    if xml:
        (spool / f"{name}.xml").write_text(sidecar_xml(fields))
    else:
        (spool / f"{name}.json").write_text(json.dumps(fields))
    return Drop(name, audio, fields)


def iso(text: str) -> str:
    return datetime.fromisoformat(text).strftime("%Y-%m-%dT%H:%M:%S.000Z")


@pytest.fixture
def cli(capsys: pytest.CaptureFixture) -> Callable[..., tuple[int, str, str]]:
    """Run `recorderd --config C ARGS`; (exit status, stdout, stderr)."""
    def run(config: Path, *argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(["--config", str(config), *argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def cli_json(cli: Callable[..., tuple[int, str, str]]) -> Callable[..., Any]:
    def run(config: Path, *argv: str) -> Any:
        code, out, err = cli(config, *argv, "--json")
        assert code == 0, err
        return json.loads(out)

    return run
