"""Configuration: etc/recorderd.toml, validated against one schema.

Every setting the code reads is declared in SCHEMA with its type, default and limits; an
unknown key or a bad value stops start-up with the setting's dotted name and the reason.
tests/test_config.py checks that etc/recorderd.toml documents exactly the settings here.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from capture.dialogs import TrackerSettings
from capture.engine import EngineSettings


class ConfigError(Exception):
    """A setting is unknown or invalid; the message starts with its dotted name."""


@dataclass(frozen=True, slots=True)
class Setting:
    kind: type
    default: Any
    minimum: float | None = None
    maximum: float | None = None


SCHEMA: dict[str, dict[str, Setting]] = {
    "capture": {
        "jitter_window_s": Setting(float, 0.5, 0.05, 10.0),
        "reanchor_s": Setting(float, 0.2, 0.05, 10.0),
        "media_timeout_s": Setting(float, 60.0, 1.0, 86400.0),
        "hold_timeout_s": Setting(float, 7200.0, 1.0, 604800.0),
        "setup_timeout_s": Setting(float, 300.0, 1.0, 86400.0),
        "linger_s": Setting(float, 2.0, 0.0, 600.0),
        "challenge_linger_s": Setting(float, 32.0, 0.0, 600.0),
        "flush_chunk_s": Setting(float, 10.0, 0.1, 600.0),
        "min_flush_s": Setting(float, 0.0, 0.0, 10.0),
        "extra_headers": Setting(list, ["X-Agent-ID"]),
        "interfaces": Setting(list, ["lo"]),
        "bpf_filter": Setting(str, "default"),
        "promiscuous": Setting(bool, True),
        "ring_block_kib": Setting(int, 1024, 64, 65536),
        "ring_blocks": Setting(int, 64, 2, 4096),
    },
    "daemon": {
        "queue_batches": Setting(int, 1024, 8, 1_000_000),
        "idle_tick_s": Setting(float, 0.1, 0.01, 10.0),
        "batch_window_s": Setting(float, 0.2, 0.0, 1.0),
        "stage_max_age_s": Setting(float, 10.0, 1.0, 600.0),
        "min_free_mb": Setting(int, 512, 0, 10_000_000),
        "resume_free_mb": Setting(int, 1024, 0, 10_000_000),
        "metrics_listen": Setting(str, "127.0.0.1:9464"),
        "log_level": Setting(str, "info"),
    },
    "storage": {
        "vault_dir": Setting(str, "/var/lib/recorderd/vault"),
        "catalog": Setting(str, "/var/lib/recorderd/catalog.db"),
        "key_dir": Setting(str, "/etc/recorderd/keys"),
        "agent_header": Setting(str, "X-Agent-ID"),
        "live_segment_kib": Setting(int, 8, 4, 1024),
        "sync_interval_s": Setting(float, 1.0, 0.0, 60.0),
    },
    "audit": {
        "checkpoint_every": Setting(int, 100, 1, 1_000_000),
        "checkpoint_seconds": Setting(float, 300.0, 1.0, 86400.0),
    },
}
PATH_SETTINGS = {("storage", "vault_dir"), ("storage", "catalog"), ("storage", "key_dir")}


def _check(name: str, spec: Setting, given: object) -> Any:
    value: Any = given
    if spec.kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, spec.kind) or isinstance(value, bool) and spec.kind is not bool:
        raise ConfigError(f"{name}: expected {spec.kind.__name__}, got {type(value).__name__} {value!r}")
    if spec.kind is str and not value:
        raise ConfigError(f"{name}: must not be empty")
    if spec.kind is list and not all(isinstance(v, str) and v for v in cast(list, value)):
        raise ConfigError(f"{name}: expected a list of non-empty strings, got {value!r}")
    number = cast(float, value)
    if spec.minimum is not None and number < spec.minimum:
        raise ConfigError(f"{name}: {value} is below the minimum {spec.minimum}")
    if spec.maximum is not None and number > spec.maximum:
        raise ConfigError(f"{name}: {value} is above the maximum {spec.maximum}")
    return value


def validate(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Defaults filled in; ConfigError on the first unknown or invalid setting."""
    result: dict[str, dict[str, Any]] = {}
    for section in raw:
        if section not in SCHEMA:
            raise ConfigError(f"{section}: unknown section (known: {', '.join(SCHEMA)})")
        if not isinstance(raw[section], dict):
            raise ConfigError(f"{section}: expected a table of settings")
    for section, settings in SCHEMA.items():
        given = raw.get(section, {})
        for key in given:
            if key not in settings:
                raise ConfigError(f"{section}.{key}: unknown setting")
        result[section] = {
            key: _check(f"{section}.{key}", spec, given[key]) if key in given else spec.default
            for key, spec in settings.items()
        }
    return result


def load(path: Path) -> dict[str, dict[str, Any]]:
    """Read and validate a configuration file; relative paths in it are relative to the
    file's own directory (so a self-contained layout from `recorderd init` can move)."""
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError as err:
        raise ConfigError(f"{path}: no such configuration file") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from err
    config = validate(raw)
    for section, key in PATH_SETTINGS:
        config[section][key] = str((path.resolve().parent / config[section][key]).resolve())
    return config


def engine_settings(config: dict[str, dict[str, Any]]) -> EngineSettings:
    c = config["capture"]
    tracker = TrackerSettings(
        extra_headers=tuple(c["extra_headers"]), media_timeout_s=c["media_timeout_s"],
        hold_timeout_s=c["hold_timeout_s"], setup_timeout_s=c["setup_timeout_s"],
        linger_s=c["linger_s"], challenge_linger_s=c["challenge_linger_s"])
    return EngineSettings(tracker=tracker, jitter_window_s=c["jitter_window_s"],
                          reanchor_s=c["reanchor_s"], flush_chunk_s=c["flush_chunk_s"],
                          min_flush_s=c["min_flush_s"])
