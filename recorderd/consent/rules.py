"""Which prompt a call hears, and where it goes afterwards (pure: facts in, decisions out).

Rules (setting ``consent.rules``) are tried in order; the first whose every condition holds
picks the prompt, else ``consent.default_prompt``. A rule is a line of ``key=value`` tokens:

    called=GLOB     the called number (user part of the request-URI), shell glob: "800*", "+8610?*"
    caller=GLOB     the caller's number (user part of From)
    lang=TAG        the caller's preferred language (highest q in the language header,
                    RFC 9110 §12.5.4) is TAG or starts with TAG- (RFC 4647 §3.3.1 basic filtering)
    time=HH:MM-HH:MM  local time of day, start inclusive, end exclusive; may wrap past midnight
    days=LIST       weekdays: mon,tue,...,sun and ranges (mon-fri)
    prompt=NAME     the prompt to play (required)

e.g. ``"lang=en prompt=en"``, ``"called=400* time=18:00-08:00 prompt=zh_after_hours"``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from fnmatch import fnmatchcase
from urllib.parse import quote

from capture.sip import uri_user

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
PROMPT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
CONDITIONS = ("called", "caller", "lang", "time", "days")
_TIME = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$")
_QVALUE = re.compile(r"^q=(0(\.\d{0,3})?|1(\.0{0,3})?)$", re.IGNORECASE)
_LANGUAGE_RANGE = re.compile(r"^([A-Za-z]{1,8}(-[A-Za-z0-9]{1,8})*|\*)$")


class RuleError(ValueError):
    """A rule cannot be parsed; the message quotes it and says what is wrong."""


@dataclass(frozen=True, slots=True)
class Rule:
    text: str
    prompt: str
    called: str | None = None
    caller: str | None = None
    lang: str | None = None
    minutes: tuple[int, int] | None = None     # [start, end) in minutes after midnight
    days: frozenset[int] | None = None         # 0 = Monday


@dataclass(frozen=True, slots=True)
class CallFacts:
    """What the rules may look at, taken from the INVITE and the local clock."""

    called: str
    caller: str
    languages: tuple[str, ...]     # most preferred first
    local_time: datetime


@dataclass(frozen=True, slots=True)
class PromptChoice:
    prompt: str
    rule: str          # the rule's text, or "default"


def valid_prompt_name(name: str) -> bool:
    """Prompt names become file names: letters, digits, '_' and '-' only."""
    return bool(PROMPT_NAME.match(name))


def _parse_days(value: str, text: str) -> frozenset[int]:
    days: set[int] = set()
    for part in value.lower().split(","):
        first, _, last = part.partition("-")
        if first not in DAYS or (last and last not in DAYS):
            raise RuleError(f"rule {text!r}: days={value!r}: use mon,tue,wed,thu,fri,sat,sun and ranges like mon-fri")
        a, b = DAYS.index(first), DAYS.index(last or first)
        days.update(range(a, b + 1) if a <= b else [*range(a, 7), *range(0, b + 1)])
    return frozenset(days)


def _parse_time(value: str, text: str) -> tuple[int, int]:
    found = _TIME.match(value)
    if not found:
        raise RuleError(f"rule {text!r}: time={value!r}: expected HH:MM-HH:MM (24-hour clock)")
    h1, m1, h2, m2 = (int(g) for g in found.groups())
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if start == end:
        raise RuleError(f"rule {text!r}: time={value!r}: start and end are equal (an empty window)")
    return start, end


def parse_rule(text: str) -> Rule:
    fields: dict[str, str] = {}
    for token in text.split():
        key, sep, value = token.partition("=")
        if not sep or not value:
            raise RuleError(f"rule {text!r}: {token!r} is not key=value")
        if key not in (*CONDITIONS, "prompt"):
            raise RuleError(f"rule {text!r}: unknown key {key!r} (known: {', '.join((*CONDITIONS, 'prompt'))})")
        if key in fields:
            raise RuleError(f"rule {text!r}: {key} given twice")
        fields[key] = value
    prompt = fields.get("prompt")
    if prompt is None:
        raise RuleError(f"rule {text!r}: no prompt=NAME")
    if not valid_prompt_name(prompt):
        raise RuleError(f"rule {text!r}: prompt name {prompt!r} may only hold letters, digits, '_' and '-'")
    lang = fields.get("lang")
    if lang is not None and not _LANGUAGE_RANGE.match(lang):
        raise RuleError(f"rule {text!r}: lang={lang!r} is not a language tag like en or zh-CN")
    return Rule(
        text=text, prompt=prompt, called=fields.get("called"), caller=fields.get("caller"),
        lang=lang.lower() if lang else None,
        minutes=_parse_time(fields["time"], text) if "time" in fields else None,
        days=_parse_days(fields["days"], text) if "days" in fields else None)


def parse_rules(texts: Sequence[str]) -> list[Rule]:
    return [parse_rule(t) for t in texts]


def parse_accept_language(value: str | None) -> tuple[str, ...]:
    """Language tags of an Accept-Language value, most preferred first (RFC 9110 §12.5.4):
    higher q first, equal q in the order given; q=0 means "not acceptable" and is dropped,
    as are malformed entries and "*"."""
    if not value:
        return ()
    ranked: list[tuple[float, int, str]] = []
    for position, item in enumerate(value.split(",")):
        tag, *params = (part.strip() for part in item.split(";"))
        if not _LANGUAGE_RANGE.match(tag) or tag == "*":
            continue
        q = 1.0
        for param in params:
            if _QVALUE.match(param):
                q = float(param[2:])
            elif param.lower().startswith("q="):
                q = -1.0   # malformed weight: ignore the entry
        if q > 0:
            ranked.append((-q, position, tag.lower()))
    return tuple(tag for _, _, tag in sorted(ranked))


def _language_matches(wanted: str, languages: tuple[str, ...]) -> bool:
    return bool(languages) and (languages[0] == wanted or languages[0].startswith(wanted + "-"))


def _in_window(minutes: tuple[int, int], when: datetime) -> bool:
    now = when.hour * 60 + when.minute
    start, end = minutes
    return start <= now < end if start < end else now >= start or now < end


def rule_matches(rule: Rule, facts: CallFacts) -> bool:
    return ((rule.called is None or fnmatchcase(facts.called, rule.called))
            and (rule.caller is None or fnmatchcase(facts.caller, rule.caller))
            and (rule.lang is None or _language_matches(rule.lang, facts.languages))
            and (rule.minutes is None or _in_window(rule.minutes, facts.local_time))
            and (rule.days is None or facts.local_time.weekday() in rule.days))


def choose_prompt(rules: Sequence[Rule], default_prompt: str, facts: CallFacts) -> PromptChoice:
    for rule in rules:
        if rule_matches(rule, facts):
            return PromptChoice(rule.prompt, rule.text)
    return PromptChoice(default_prompt, "default")


# -- where the caller goes after the prompt -----------------------------------------------------

REQUEST_URI = "request-uri"
USER_SAFE = "-_.!~*'()&=+$,;?/"
HEADER_PREFIX = "header:"


def check_target_setting(value: str) -> None:
    if value != REQUEST_URI and not (value.startswith(HEADER_PREFIX) and value[len(HEADER_PREFIX):].strip()):
        raise ValueError(f"expected {REQUEST_URI!r} or 'header:NAME', got {value!r}")


def _header(headers: Mapping[str, str], name: str) -> str | None:
    wanted = name.lower()
    return next((v for k, v in headers.items() if k.lower() == wanted), None)


def refer_target(setting: str, refer_host: str, request_uri: str, headers: Mapping[str, str],
                 source: str) -> str | None:
    """The URI to REFER the caller to (RFC 3515), or None when the call does not say.

    ``setting`` "request-uri": the called number (user part of the INVITE's request-URI) at
    ``refer_host`` — "source" meaning the host:port the INVITE came from (the PBX).
    "header:NAME": the URI in that INVITE header (the PBX names the target itself).
    """
    if setting.startswith(HEADER_PREFIX):
        value = _header(headers, setting[len(HEADER_PREFIX):].strip())
        if not value:
            return None
        value = value.strip()
        if value.startswith("<") and value.endswith(">"):
            value = value[1:-1]
        return value if re.match(r"^(sips?|tel):", value, re.IGNORECASE) else None
    user = uri_user(request_uri)
    if not user:
        return None
    host = source if refer_host == "source" else refer_host
    # uri_user percent-decoded the user part; escape it again (RFC 3261 §25.1 user grammar)
    return f"sip:{quote(user, safe=USER_SAFE)}@{host}"
