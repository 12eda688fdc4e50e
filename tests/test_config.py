"""The configuration schema, etc/recorderd.toml and the errors a bad setting gives."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from recorderd.cli import main
from recorderd.config import SCHEMA, ConfigError, load, validate

ETC = Path(__file__).resolve().parent.parent / "etc" / "recorderd.toml"


def test_etc_documents_exactly_the_settings_the_code_reads() -> None:
    shipped = tomllib.loads(ETC.read_text())
    assert set(shipped) == set(SCHEMA)
    for section, settings in SCHEMA.items():
        assert set(shipped[section]) == set(settings), section
        for key, spec in settings.items():
            assert shipped[section][key] == spec.default, f"{section}.{key} default differs"
    text = ETC.read_text().splitlines()
    for i, line in enumerate(text):
        if "=" in line and not line.startswith("#"):
            assert text[i - 1].startswith("#"), f"setting on line {i + 1} has no comment above it"


def test_the_shipped_file_loads() -> None:
    assert load(ETC)["capture"]["jitter_window_s"] == 0.5


@pytest.mark.parametrize(("raw", "named"), [
    ({"capture": {"jiter_window_s": 1.0}}, "capture.jiter_window_s: unknown setting"),
    ({"capture": {"jitter_window_s": "fast"}}, "capture.jitter_window_s: expected float"),
    ({"capture": {"jitter_window_s": 99.0}}, "capture.jitter_window_s: 99.0 is above the maximum"),
    ({"capture": {"extra_headers": [""]}}, "capture.extra_headers: expected a list"),
    ({"captur": {}}, "captur: unknown section"),
])
def test_bad_settings_are_named(raw: dict, named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace(".", r"\.").replace("(", r"\(")):
        validate(raw)


def test_replay_stops_on_a_bad_config_naming_the_setting(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[capture]\nlinger_s = -1\n")
    capture = tmp_path / "empty.pcap"
    capture.write_bytes(bytes.fromhex("d4c3b2a1020004000000000000000000ffff000001000000"))
    assert main(["--config", str(bad), "replay", str(capture), "--out", str(tmp_path / "o")]) == 2
    assert "capture.linger_s" in capsys.readouterr().err
