"""The compliance policy the analysis applies: lines of business, phrase rules, risk weights.

It lives in a TOML file of its own (``analysis.rules_file``; "default" = the file shipped
beside this module, analysis/default_rules.toml) because it is data the compliance team
edits — phrase lists in several languages — rather than a setting of the appliance. Parsing is
pure: :func:`parse_rules` takes the text and names the first thing wrong (``rule[3].phrases:
...``) in a :class:`RulesError`.

Shape::

    [risk]                      # analysis/risk.py: RiskWeights (every key optional)
    sensitive_hit = 30.0
    [calls]
    duration_bands_s = [30, 300, 1200]
    [negations]                 # words that, just before a phrase, turn it around ("不保本")
    en = ["not", "no", ...]
    zh = ["不", "没有", ...]
    [[line]]                    # lines of business, first match wins, else "default"
    name = "wealth"
    tags = ["wealth"]           # a tag of the recording, or "lob:<name>" always works
    teams = ["wealth-desk"]     # the agent's team (analysis.teams setting)
    numbers = ["4008*"]         # glob on the bank-side number (callee inbound, caller outbound)
    [[rule]]
    id = "guaranteed-return-zh"
    kind = "sensitive"          # sensitive | required | topic
    lines = ["*"]               # line names, "*" = every line
    speaker = "agent"           # agent | customer | any
    phrases = ["保本", "稳赚"]   # matched with tolerance (analysis/phrases.py)
    patterns = ["保证.{0,6}收益"] # regular expressions over the normalised text (exact)
    tolerance = 0.25            # allowed edit cost per phrase unit (0 = exact sounds)
    within_s = 60               # required rules only: must be said in the first N seconds
    description = "..."
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from analysis.risk import RiskWeights

DEFAULT_RULES_FILE = Path(__file__).with_name("default_rules.toml")
DEFAULT_LINE = "default"
KINDS = ("sensitive", "required", "topic")
SPEAKERS = ("agent", "customer", "any")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class RulesError(ValueError):
    """The rules file is unusable; the message names the entry and the problem."""


@dataclass(frozen=True, slots=True)
class PhraseRule:
    id: str
    kind: str
    lines: tuple[str, ...]
    speaker: str
    phrases: tuple[str, ...]
    patterns: tuple[re.Pattern[str], ...]
    tolerance: float
    within_s: float | None = None
    description: str = ""

    def applies_to(self, line: str) -> bool:
        return "*" in self.lines or line in self.lines


@dataclass(frozen=True, slots=True)
class LineOfBusiness:
    name: str
    tags: tuple[str, ...] = ()
    teams: tuple[str, ...] = ()
    numbers: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CallFacts:
    """What decides a call's line of business (from the catalog row, pure data)."""

    tags: tuple[str, ...] = ()
    team: str | None = None
    bank_number: str | None = None


@dataclass(frozen=True, slots=True)
class RuleSet:
    rules: tuple[PhraseRule, ...]
    lines: tuple[LineOfBusiness, ...] = ()
    negations: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    risk: Mapping[str, float] = field(default_factory=dict)
    duration_bands_s: tuple[float, ...] = (30.0, 300.0, 1200.0)

    def for_line(self, line: str) -> list[PhraseRule]:
        return [rule for rule in self.rules if rule.applies_to(line)]

    def line_of(self, facts: CallFacts) -> str:
        """The call's line of business: a ``lob:<name>`` tag, else the first line whose tags,
        teams or number globs match, else "default"."""
        for tag in facts.tags:
            if tag.startswith("lob:") and tag[4:]:
                return tag[4:]
        digits = re.sub(r"[^0-9*#]", "", facts.bank_number or "")
        for line in self.lines:
            if set(line.tags) & set(facts.tags):
                return line.name
            if facts.team is not None and facts.team in line.teams:
                return line.name
            if digits and any(fnmatch.fnmatchcase(digits, pattern) for pattern in line.numbers):
                return line.name
        return DEFAULT_LINE

    @property
    def weights(self) -> RiskWeights:
        return RiskWeights.from_mapping(self.risk)

    @property
    def all_negations(self) -> frozenset[str]:
        return frozenset(word for words in self.negations.values() for word in words)


def _strings(where: str, value: Any, *, allow_empty: bool = True) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise RulesError(f"{where}: expected a list of non-empty strings, got {value!r}")
    if not allow_empty and not value:
        raise RulesError(f"{where}: must not be empty")
    return tuple(v.strip() for v in value)


def _number(where: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RulesError(f"{where}: expected a number, got {value!r}")
    if not low <= float(value) <= high:
        raise RulesError(f"{where}: {value} is outside {low}..{high}")
    return float(value)


def _choice(where: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise RulesError(f"{where}: expected one of {', '.join(choices)}, got {value!r}")
    return str(value)


def _rule(index: int, raw: Any, known_lines: set[str]) -> PhraseRule:
    where = f"rule[{index}]"
    if not isinstance(raw, dict):
        raise RulesError(f"{where}: expected a table")
    unknown = set(raw) - {"id", "kind", "lines", "speaker", "phrases", "patterns", "tolerance", "within_s",
                          "description"}
    if unknown:
        raise RulesError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    rule_id = raw.get("id")
    if not isinstance(rule_id, str) or not _ID.match(rule_id):
        raise RulesError(f"{where}.id: expected letters, digits, '.', '_' or '-' (at most 64), got {rule_id!r}")
    where = f"rule {rule_id}"
    kind = _choice(f"{where}.kind", raw.get("kind"), KINDS)
    lines = _strings(f"{where}.lines", raw.get("lines", ["*"]), allow_empty=False)
    strays = [name for name in lines if name != "*" and name != DEFAULT_LINE and name not in known_lines]
    if strays:
        raise RulesError(f"{where}.lines: no [[line]] named {', '.join(strays)}")
    speaker = _choice(f"{where}.speaker", raw.get("speaker", "any" if kind == "topic" else "agent"), SPEAKERS)
    phrases = _strings(f"{where}.phrases", raw.get("phrases"))
    sources = _strings(f"{where}.patterns", raw.get("patterns"))
    if not phrases and not sources:
        raise RulesError(f"{where}: needs phrases or patterns")
    patterns = []
    for source in sources:
        try:
            patterns.append(re.compile(source, re.IGNORECASE))
        except re.error as err:
            raise RulesError(f"{where}.patterns: {source!r} is not a regular expression: {err}") from err
    tolerance = _number(f"{where}.tolerance", raw.get("tolerance", 0.25), 0.0, 0.6)
    within = raw.get("within_s")
    if within is not None:
        if kind != "required":
            raise RulesError(f"{where}.within_s: only required rules have a deadline")
        within = _number(f"{where}.within_s", within, 0.0, 86400.0)
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise RulesError(f"{where}.description: expected a string")
    return PhraseRule(rule_id, kind, lines, speaker, phrases, tuple(patterns), tolerance, within, description)


def _line(index: int, raw: Any) -> LineOfBusiness:
    where = f"line[{index}]"
    if not isinstance(raw, dict):
        raise RulesError(f"{where}: expected a table")
    unknown = set(raw) - {"name", "tags", "teams", "numbers"}
    if unknown:
        raise RulesError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    name = raw.get("name")
    if not isinstance(name, str) or not _ID.match(name) or name == DEFAULT_LINE:
        raise RulesError(f"{where}.name: expected an identifier other than {DEFAULT_LINE!r}, got {name!r}")
    return LineOfBusiness(name, _strings(f"line {name}.tags", raw.get("tags")),
                          _strings(f"line {name}.teams", raw.get("teams")),
                          _strings(f"line {name}.numbers", raw.get("numbers")))


def parse_rules(text: str, *, source: str = "rules") -> RuleSet:
    """A RuleSet from the TOML text; RulesError naming ``source`` and the bad entry."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise RulesError(f"{source}: not valid TOML: {err}") from err
    try:
        return _parse(raw)
    except RulesError as err:
        raise RulesError(f"{source}: {err}") from None


def _parse(raw: dict[str, Any]) -> RuleSet:
    unknown = set(raw) - {"risk", "calls", "negations", "line", "rule"}
    if unknown:
        raise RulesError(f"unknown section(s) {', '.join(sorted(unknown))}")
    lines = tuple(_line(i, item) for i, item in enumerate(raw.get("line", [])))
    names = [line.name for line in lines]
    if len(set(names)) != len(names):
        raise RulesError("line: names must be unique")
    rules = tuple(_rule(i, item, set(names)) for i, item in enumerate(raw.get("rule", [])))
    ids = [rule.id for rule in rules]
    if len(set(ids)) != len(ids):
        raise RulesError(f"rule: ids must be unique ({', '.join(sorted({i for i in ids if ids.count(i) > 1}))})")
    negations_raw = raw.get("negations", {})
    if not isinstance(negations_raw, dict):
        raise RulesError("negations: expected a table of language = [words]")
    negations = {lang: tuple(w.lower() for w in _strings(f"negations.{lang}", words))
                 for lang, words in negations_raw.items()}
    risk_raw = raw.get("risk", {})
    if not isinstance(risk_raw, dict):
        raise RulesError("risk: expected a table of weights")
    risk = {key: _number(f"risk.{key}", value, 0.0, 1000.0) for key, value in risk_raw.items()}
    try:
        RiskWeights.from_mapping(risk)
    except ValueError as err:
        raise RulesError(str(err)) from None
    calls = raw.get("calls", {})
    if not isinstance(calls, dict) or set(calls) - {"duration_bands_s"}:
        raise RulesError("calls: only duration_bands_s is known")
    bands_raw = calls.get("duration_bands_s", [30, 300, 1200])
    if not isinstance(bands_raw, list):
        raise RulesError("calls.duration_bands_s: expected a list of seconds")
    bands = tuple(_number("calls.duration_bands_s", b, 0.0, 86400.0 * 7) for b in bands_raw)
    if list(bands) != sorted(set(bands)):
        raise RulesError(f"calls.duration_bands_s: must be strictly ascending, got {list(bands)}")
    return RuleSet(rules, lines, negations, risk, bands)


def load_rules(path: str | Path) -> RuleSet:
    """Read a rules file ("default" = the shipped one); RulesError if unreadable or invalid."""
    file = DEFAULT_RULES_FILE if str(path) == "default" else Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as err:
        raise RulesError(f"{file}: cannot read the rules file: {err.strerror or err}") from err
    return parse_rules(text, source=str(file))


def team_map(entries: Iterable[str]) -> dict[str, str]:
    """agent id → team from setting entries "TEAM=AGENT1,AGENT2"; ValueError names a bad one."""
    teams: dict[str, str] = {}
    for entry in entries:
        team, sep, agents = entry.partition("=")
        members = [a.strip() for a in agents.split(",") if a.strip()]
        if not sep or not team.strip() or not members:
            raise ValueError(f"{entry!r} is not TEAM=AGENT[,AGENT...]")
        for agent in members:
            if agent in teams and teams[agent] != team.strip():
                raise ValueError(f"agent {agent!r} is in two teams ({teams[agent]}, {team.strip()})")
            teams[agent] = team.strip()
    return teams
