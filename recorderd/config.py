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
        "workers": Setting(int, 1, 1, 64),   # fanout worker processes (recorderd/fanout.py)
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
        "agent_source": Setting(str, "header"),
        "agent_extensions": Setting(list, []),
        "live_segment_kib": Setting(int, 8, 4, 1024),
        "sync_interval_s": Setting(float, 1.0, 0.0, 60.0),
    },
    "audit": {
        "checkpoint_every": Setting(int, 100, 1, 1_000_000),
        "checkpoint_seconds": Setting(float, 300.0, 1.0, 86400.0),
    },
}
SCHEMA["web"] = {
    "listen": Setting(str, "127.0.0.1:8443"),
    "tls_cert": Setting(str, "/var/lib/recorderd/web/cert.pem"),
    "tls_key": Setting(str, "/var/lib/recorderd/web/key.pem"),
    "self_signed": Setting(bool, True),
    "tls_hostnames": Setting(list, ["localhost"]),
    "threads": Setting(int, 8, 1, 256),
    "idle_timeout_s": Setting(int, 900, 60, 86400),
    "session_max_s": Setting(int, 43200, 300, 604800),
    "lockout_failures": Setting(int, 10, 3, 1000),
    "lockout_s": Setting(int, 1800, 60, 86400),
    "min_password_length": Setting(int, 12, 8, 1024),
    "hsts_max_age_s": Setting(int, 31536000, 0, 63072000),
}
PATH_SETTINGS = {("storage", "vault_dir"), ("storage", "catalog"), ("storage", "key_dir"),
                 ("web", "tls_cert"), ("web", "tls_key")}
# retention (retention/, recorderd/commands/retention.py) and spool import (storage/spool.py)
SCHEMA["retention"] = {
    "allow_test_clock": Setting(bool, False),
    "max_purge_per_run": Setting(int, 100_000, 1, 100_000_000),
    "offsite_shred": Setting(bool, True),
}
SCHEMA["spool"] = {
    "enabled": Setting(bool, False),
    "dir": Setting(str, "/var/lib/recorderd/spool"),
    "rejected_dir": Setting(str, "/var/lib/recorderd/spool/rejected"),
    "stable_s": Setting(float, 5.0, 0.05, 3600.0),
    "orphan_s": Setting(float, 600.0, 1.0, 604800.0),
    "rescan_s": Setting(float, 30.0, 0.1, 3600.0),
    "max_file_mb": Setting(int, 2048, 1, 1_000_000),
    "tags": Setting(list, ["spool"]),
}
PATH_SETTINGS |= {("spool", "dir"), ("spool", "rejected_dir")}
# the console's recordings pages and player (webadmin/recordings.py, webadmin/playback.py)
SCHEMA["recordings"] = {
    "page_size": Setting(int, 25, 5, 200),
    "reason_min_chars": Setting(int, 10, 3, 500),
    "grant_minutes": Setting(int, 30, 1, 1440),
    "waveform_points": Setting(int, 1000, 100, 10_000),
}
# QA review (webadmin/review.py, storage/review.py)
SCHEMA["review"] = {
    "rubric": Setting(list, ["compliance=30", "communication=30", "resolution=20", "experience=20"]),
    "sample_rate": Setting(float, 0.05, 0.0, 1.0),
    "sample_min_per_agent": Setting(int, 1, 0, 10_000),
    "sample_random_share": Setting(float, 0.2, 0.0, 1.0),
    "cross_review_flag_points": Setting(int, 10, 0, 10_000),
}
# offsite backup (retention/backup/, recorderd/commands/backup.py); targets live in the catalog
SCHEMA["backup"] = {
    "throttle_bytes_per_s": Setting(int, 10_000_000, 0, 100_000_000_000),
    "object_lock_mode": Setting(str, "COMPLIANCE"),
    "object_lock_days": Setting(int, 30, 0, 36500),
    "keep_snapshots": Setting(int, 30, 0, 1_000_000),
    "verify_sample": Setting(int, 20, 0, 100_000_000),
    "timeout_s": Setting(float, 30.0, 1.0, 3600.0),
    "part_size_mib": Setting(int, 8, 5, 5120),
}
# auditor export bundles (storage/exports.py, webadmin/exports.py, recorderd/commands/bundle.py)
SCHEMA["exports"] = {
    "bundle_dir": Setting(str, "/var/lib/recorderd/exports"),
    "expire_hours": Setting(float, 72.0, 0.01, 8760.0),
    "request_expire_hours": Setting(float, 168.0, 0.01, 8760.0),
    "max_recordings": Setting(int, 1000, 1, 100_000),
    "appliance_id": Setting(str, "auto"),
}
PATH_SETTINGS |= {("exports", "bundle_dir")}
# consent announcer and detection (recorderd/consent/, storage/consent.py, capture/consent.py)
SCHEMA["consent"] = {
    "enabled": Setting(bool, False),
    "listen": Setting(str, "0.0.0.0:5080"),
    "contact_host": Setting(str, "auto"),
    "rtp_ports": Setting(str, "40000-40999"),
    "max_calls": Setting(int, 4, 1, 256),
    "codecs": Setting(list, ["G722/16000", "PCMA/8000", "PCMU/8000"]),
    "registrar": Setting(str, "off"),
    "account": Setting(str, "sip:consent@localhost"),
    "auth_user": Setting(str, "consent"),
    "password_file": Setting(str, "off"),
    "prompt_dir": Setting(str, "/var/lib/recorderd/prompts"),
    "prompt_texts": Setting(list, ["zh|cmn|为保障服务质量，本次通话将录音。",
                                   "en|en-us|To ensure the quality of our service, this call will be recorded."]),
    "default_prompt": Setting(str, "zh"),
    "rules": Setting(list, ["lang=en prompt=en"]),
    "language_header": Setting(str, "Accept-Language"),
    "timezone": Setting(str, "local"),
    "lead_in_s": Setting(float, 0.5, 0.0, 10.0),
    "handoff": Setting(str, "refer"),
    "refer_target": Setting(str, "request-uri"),
    "refer_host": Setting(str, "source"),
    "refer_timeout_s": Setting(float, 10.0, 1.0, 300.0),
    "trunk_header": Setting(str, "X-Trunk"),
    "correlation": Setting(str, "caller"),
    "correlation_header": Setting(str, "X-Consent-Ref"),
    "link_before_s": Setting(float, 60.0, 0.0, 86400.0),
    "link_after_s": Setting(float, 30.0, 0.0, 86400.0),
    "match_digits": Setting(int, 8, 3, 32),
    "detect_window_s": Setting(float, 30.0, 1.0, 600.0),
    "audible_threshold": Setting(float, 0.6, 0.1, 1.0),
    "sweep_interval_s": Setting(float, 5.0, 0.1, 3600.0),
}
PATH_SETTINGS |= {("consent", "prompt_dir")}
# transcription, phrase rules, call metrics, QA sampling (analysis/, recorderd/commands/analysis.py)
SCHEMA["analysis"] = {
    "enabled": Setting(bool, True),
    "model_dir": Setting(str, "/usr/share/recorderd/whisper-model"),
    "compute_type": Setting(str, "int8"),
    "languages": Setting(list, ["zh", "en"]),
    "threads": Setting(int, 2, 1, 64),
    "cpu_budget_percent": Setting(float, 50.0, 1.0, 100.0),
    "nice": Setting(int, 19, 0, 19),
    "idle_scheduling": Setting(bool, True),
    "beam_size": Setting(int, 5, 1, 16),
    "poll_s": Setting(float, 5.0, 0.1, 3600.0),
    "max_attempts": Setting(int, 3, 1, 100),
    "rules_file": Setting(str, "default"),
    "teams": Setting(list, []),
    "unknown_direction_agent": Setting(str, "callee"),
    "vad_threshold_dbfs": Setting(float, -45.0, -90.0, -10.0),
    "interruption_min_overlap_ms": Setting(int, 300, 20, 5000),
    "qa_coverage_percent": Setting(float, 10.0, 0.0, 100.0),
    "qa_random_percent": Setting(float, 20.0, 0.0, 100.0),
}
PATH_SETTINGS |= {("analysis", "model_dir")}


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
