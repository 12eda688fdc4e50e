"""The `[consent]` settings as one checked object (recorderd/config.py validates the types;
this checks what a type cannot: addresses, port ranges, rules, prompt texts, time zone)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from recorderd.config import ConfigError
from recorderd.consent.prompts import PromptText, parse_prompt_text
from recorderd.consent.rules import Rule, RuleError, check_target_setting, parse_rules, valid_prompt_name
from storage.consent import LinkPolicy

HANDOFFS = ("refer", "hangup")
CORRELATIONS = ("caller", "header")
_CODEC = re.compile(r"^[A-Za-z0-9.+-]+(/\d+){0,2}$")
_HOSTPORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$")


@dataclass(frozen=True, slots=True)
class ConsentSettings:
    enabled: bool
    listen_host: str
    listen_port: int
    contact_host: str | None         # None: what the stack finds ("auto")
    rtp_port: int
    rtp_port_count: int
    max_calls: int
    codecs: tuple[str, ...]
    registrar: str | None
    account: str
    auth_user: str
    password_file: Path | None
    prompt_dir: Path
    prompt_texts: tuple[PromptText, ...]
    default_prompt: str
    rules: tuple[Rule, ...]
    language_header: str
    timezone: ZoneInfo | None        # None: the system's local time
    lead_in_s: float
    handoff: str
    refer_target: str
    refer_host: str
    refer_timeout_s: float
    trunk_header: str
    link: LinkPolicy
    detect_window_s: float
    audible_threshold: float
    sweep_interval_s: float

    def prompt_names(self) -> list[str]:
        """Every prompt the rules can choose (the default first)."""
        names = [self.default_prompt] + [r.prompt for r in self.rules]
        return list(dict.fromkeys(names))


def _fail(key: str, problem: str) -> ConfigError:
    return ConfigError(f"consent.{key}: {problem}")


def _host_port(key: str, value: str) -> tuple[str, int]:
    found = _HOSTPORT.match(value)
    if not found or not 0 < int(found.group(2)) < 65536:
        raise _fail(key, f"expected HOST:PORT (port 1-65535), got {value!r}")
    return found.group(1).strip("[]"), int(found.group(2))


def _port_range(value: str) -> tuple[int, int]:
    found = re.match(r"^(\d{1,5})-(\d{1,5})$", value)
    first, last = (int(found.group(1)), int(found.group(2))) if found else (0, 0)
    if not found or not 1024 <= first < last < 65536:
        raise _fail("rtp_ports", f"expected FIRST-LAST with 1024 <= FIRST < LAST <= 65535, got {value!r}")
    return first, last - first + 1


def _timezone(value: str) -> ZoneInfo | None:
    if value == "local":
        return None
    try:
        return ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as err:
        raise _fail("timezone", f"unknown time zone {value!r} (an IANA name like Asia/Shanghai, or local)") from err


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise _fail(key, f"expected one of {', '.join(allowed)}, got {value!r}")
    return value


def consent_settings(config: dict[str, dict[str, Any]]) -> ConsentSettings:
    """The checked [consent] section; ConfigError names the first bad setting."""
    c = config["consent"]
    listen_host, listen_port = _host_port("listen", c["listen"])
    rtp_port, rtp_count = _port_range(c["rtp_ports"])
    for codec in c["codecs"]:
        if not _CODEC.match(codec):
            raise _fail("codecs", f"{codec!r} is not a codec name like PCMA/8000 or G722/16000")
    if not c["codecs"]:
        raise _fail("codecs", "at least one codec is needed")
    try:
        texts = tuple(parse_prompt_text(entry) for entry in c["prompt_texts"])
    except ValueError as err:
        raise _fail("prompt_texts", str(err)) from err
    if not valid_prompt_name(c["default_prompt"]):
        raise _fail("default_prompt", f"{c['default_prompt']!r}: letters, digits, '_' and '-' only")
    try:
        rules = tuple(parse_rules(c["rules"]))
    except RuleError as err:
        raise _fail("rules", str(err)) from err
    try:
        check_target_setting(c["refer_target"])
    except ValueError as err:
        raise _fail("refer_target", str(err)) from err
    if c["refer_host"] != "source":
        _host_port("refer_host", c["refer_host"] if ":" in c["refer_host"] else c["refer_host"] + ":5060")
    registrar = None if c["registrar"] == "off" else c["registrar"]
    if registrar is not None and not re.match(r"^sips?:", registrar):
        raise _fail("registrar", f"expected a sip: URI or off, got {registrar!r}")
    if not re.match(r"^sips?:[^@\s]+@\S+$", c["account"]):
        raise _fail("account", f"expected the announcer's address of record, sip:user@domain, got {c['account']!r}")
    password = None if c["password_file"] == "off" else Path(c["password_file"])
    if password is not None and not password.is_absolute():
        raise _fail("password_file", f"must be an absolute path or off, got {c['password_file']!r}")
    if registrar is not None and password is None:
        raise _fail("password_file", "registering (consent.registrar) needs the extension's password file")
    correlation = _choice("correlation", c["correlation"], CORRELATIONS)
    header = c["correlation_header"] if correlation == "header" else None
    if header is not None and header.lower() not in {h.lower() for h in config["capture"]["extra_headers"]}:
        raise _fail("correlation_header", f"{header} must also be listed in capture.extra_headers, or the "
                                          f"recordings will not carry it")
    return ConsentSettings(
        enabled=c["enabled"], listen_host=listen_host, listen_port=listen_port,
        contact_host=None if c["contact_host"] == "auto" else c["contact_host"],
        rtp_port=rtp_port, rtp_port_count=rtp_count, max_calls=c["max_calls"], codecs=tuple(c["codecs"]),
        registrar=registrar, account=c["account"], auth_user=c["auth_user"], password_file=password,
        prompt_dir=Path(c["prompt_dir"]), prompt_texts=texts, default_prompt=c["default_prompt"],
        rules=rules, language_header=c["language_header"], timezone=_timezone(c["timezone"]),
        lead_in_s=c["lead_in_s"], handoff=_choice("handoff", c["handoff"], HANDOFFS),
        refer_target=c["refer_target"], refer_host=c["refer_host"], refer_timeout_s=c["refer_timeout_s"],
        trunk_header=c["trunk_header"],
        link=LinkPolicy(before_s=c["link_before_s"], after_s=c["link_after_s"], header=header,
                        match_digits=c["match_digits"]),
        detect_window_s=c["detect_window_s"], audible_threshold=c["audible_threshold"],
        sweep_interval_s=c["sweep_interval_s"])
