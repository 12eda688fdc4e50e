"""`recorderd consent prompts|sweep|events|report` and the [consent] settings, offline: calls
stored with `replay --store` from captures whose legs carry the prompt (or not), announcements
catalogued as the announcer would."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from recorderd.cli import main
from recorderd.config import ConfigError, load
from recorderd.consent.settings import consent_settings
from storage.catalog import Catalog
from storage.consent import Announcement, add_announcement
from tests.consent.calls import RATE, write_call

T0 = 1_714_557_600.0          # 2024-05-01T10:00:00Z


def run_json(capsys: pytest.CaptureFixture, *argv: str) -> Any:
    capsys.readouterr()
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def set_option(config: Path, line_start: str, new_line: str) -> None:
    lines = config.read_text().splitlines()
    index = next(i for i, line in enumerate(lines) if line.startswith(line_start))
    lines[index] = new_line
    config.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def appliance(tmp_path_factory: pytest.TempPathFactory, prompt_dir: Path, other_speech: dict) -> Path:
    root = tmp_path_factory.mktemp("consent-box")
    assert main(["init", str(root / "box")]) == 0
    config = root / "box" / "recorderd.toml"
    shutil.copytree(prompt_dir, root / "box" / "prompts")
    set_option(config, "prompt_dir = ", 'prompt_dir = "prompts"')
    set_option(config, "timezone = ", 'timezone = "UTC"')
    zh, _ = sf.read(prompt_dir / "zh.8k.wav", dtype="int16")
    talk = other_speech[RATE]
    with_prompt = np.zeros(12 * RATE, np.int16)
    with_prompt[RATE:RATE + len(zh)] = zh                          # the prompt 1.0 s into the callee's leg
    captures = []
    for name, call_id, caller, callee_audio, at in (
            ("prompted", "leg-1@pbx", "+8613800001111", with_prompt, T0),
            ("silent", "other-2@pbx", "+4930123456", np.zeros(6 * RATE, np.int16), T0 + 30),
            ("talk", "agent-3@pbx", "013800001111", talk, T0 + 20)):
        path = root / f"{name}.pcap"
        write_call(path, call_id=call_id, caller=caller, callee="4001234", invite_at=at,
                   caller_audio=talk[: 5 * RATE], callee_audio=callee_audio)
        captures.append(str(path))
    assert main(["--config", str(config), "replay", *captures, "--store"]) == 0
    with Catalog(root / "box" / "catalog.db") as catalog:
        for call_id, outcome, complete, at in (("mismatch@pbx", "codec_mismatch", False, T0 - 3600),
                                               ("leg-1@pbx", "refer_ok", True, T0 - 0.05)):
            add_announcement(catalog, Announcement(
                call_id=call_id, caller="13800001111", called="4001234", invited_at=at, ended_at=at + 7.05,
                outcome=outcome, prompt="zh" if complete else None, prompt_complete=complete,
                prompt_played_s=5.5 if complete else 0.0, trunk="10.0.0.1"))
    return config


def test_sweep_finds_the_prompt_and_links_announcements(appliance: Path, capsys: pytest.CaptureFixture) -> None:
    swept = run_json(capsys, "--config", str(appliance), "consent", "sweep", "--json")
    assert (swept["checked"], swept["audible"], swept["played"]) == (3, 1, 2)
    rows = {r["call_id"]: r for r in run_json(capsys, "--config", str(appliance), "search", "--json",
                                              "--unmask")["rows"]}
    assert {cid: (r["consent_played"], r["consent_audible"]) for cid, r in rows.items()} == {
        "leg-1@pbx": (True, True),            # the announcer's leg: linked by Call-ID, prompt in it
        "agent-3@pbx": (True, False),         # the call that followed: same caller (other prefix), no prompt
        "other-2@pbx": (False, False)}        # another caller, silence
    shown = run_json(capsys, "--config", str(appliance), "show", rows["leg-1@pbx"]["recording_id"], "--json")
    consent = shown["metadata"]["consent"]
    assert (consent["channel"], consent["prompt"]) == (1, "zh")
    assert abs(consent["offset_s"] - 1.0) <= 0.002
    assert consent["score"] >= 0.95 and consent["announcement"]["link"] == "call_id"
    again = run_json(capsys, "--config", str(appliance), "consent", "sweep", "--json")
    assert again["checked"] == 0


def test_events_and_report(appliance: Path, capsys: pytest.CaptureFixture) -> None:
    run_json(capsys, "--config", str(appliance), "consent", "sweep", "--json")
    events = run_json(capsys, "--config", str(appliance), "consent", "events", "--json")
    assert [e["outcome"] for e in events] == ["refer_ok", "codec_mismatch"]      # newest first
    assert all(e["caller"].startswith("138") and "*" in e["caller"] for e in events)  # masked
    unmasked = run_json(capsys, "--config", str(appliance), "consent", "events", "--json", "--unmask",
                        "--outcome", "refer_ok")
    assert [e["caller"] for e in unmasked] == ["13800001111"]
    report = run_json(capsys, "--config", str(appliance), "consent", "report", "--json",
                      "--from", "2024-05-01", "--to", "2024-05-01")
    assert [(r["day"], r["trunk"], r["recordings"], r["played"], r["audible"], r["outcomes"]) for r in report] == [
        ("2024-05-01", "10.0.0.1", 2, 2, 1, {"codec_mismatch": 1, "refer_ok": 1}),
        ("2024-05-01", "unknown", 1, 0, 0, {})]
    assert main(["--config", str(appliance), "consent", "report", "--from", "2024-05-02", "--to", "2024-05-01"]) == 2


def test_prompts_command(tmp_path: Path, appliance: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "made"
    assert main(["--config", str(appliance), "consent", "prompts", "--out", str(out)]) == 0
    made = sorted(p.name for p in out.iterdir())
    assert made == ["en.16k.wav", "en.8k.wav", "zh.16k.wav", "zh.8k.wav"]
    for name in made:
        info = sf.info(str(out / name))
        assert (info.channels, info.samplerate, info.subtype) == (1, 16000 if "16k" in name else 8000, "PCM_16")
        assert info.frames / info.samplerate > 2.0
    capsys.readouterr()
    assert main(["--config", str(appliance), "consent", "prompts", "--out", str(out), "--missing"]) == 0
    assert capsys.readouterr().out == ""              # nothing was missing
    broken = tmp_path / "rules.toml"
    broken.write_text(appliance.read_text().replace('rules = ["lang=en prompt=en"]',
                                                    'rules = ["lang=en prompt=en", "called=9* prompt=yue"]'))
    assert main(["--config", str(broken), "consent", "prompts", "--out", str(out)]) == 1
    assert "yue" in capsys.readouterr().err


@pytest.mark.parametrize(("setting", "value", "named"), [
    ("listen", '"5080"', "consent.listen: expected HOST:PORT"),
    ("rtp_ports", '"40000-30000"', "consent.rtp_ports"),
    ("rules", '["called=1* promt=x"]', "consent.rules: rule 'called=1* promt=x': unknown key 'promt'"),
    ("prompt_texts", '["en|just text"]', "consent.prompt_texts: 'en|just text': expected NAME|VOICE|TEXT"),
    ("timezone", '"Mars/Olympus"', "consent.timezone: unknown time zone"),
    ("handoff", '"transfer"', "consent.handoff: expected one of refer, hangup"),
    ("refer_target", '"header:"', "consent.refer_target"),
    ("correlation", '"header"', "consent.correlation_header: X-Consent-Ref must also be listed in capture"),
    ("registrar", '"sip:pbx.bank.example"', "consent.password_file: registering"),
    ("codecs", '["PCMA 8000"]', "consent.codecs: 'PCMA 8000'"),
])
def test_bad_consent_settings_are_named(tmp_path: Path, setting: str, value: str, named: str) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f"[consent]\n{setting} = {value}\n")
    with pytest.raises(ConfigError) as err:
        consent_settings(load(config))
    assert named in str(err.value)


def test_shipped_consent_settings_are_valid() -> None:
    settings = consent_settings(load(Path(__file__).resolve().parents[2] / "etc" / "recorderd.toml"))
    assert settings.prompt_names() == ["zh", "en"]
    assert [t.voice for t in settings.prompt_texts] == ["cmn", "en-us"]
    assert settings.link.header is None and not settings.enabled
