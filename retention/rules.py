"""Retention rules: which recordings a rule matches, and which rule governs a recording.

A rule matches on any combination of: direction, tags (any of), agent group (agent ids or
glob patterns such as ``trading-*``), number pattern (glob on either party's number, with or
without separators), trunk (glob), and duration (``min_duration_s`` inclusive,
``max_duration_s`` exclusive: a misdial rule "shorter than 5 s" is ``max_duration_s = 5``).
Every criterion given must hold; a criterion left empty matches everything.

Which rule governs a recording (``governing``): among the ordinary rules that match, the one
that keeps it *longest* (the latest expiry for this recording, so 12 months and 365 days are
compared on the calendar, leap years included); ties go to the rule name that sorts first. The
default rule only applies when no ordinary rule matches. A recording no rule matches and with
no default rule is kept indefinitely (never purged: the legal period is a minimum).

A misdial rule is an ordinary rule: it shortens the keeping of short calls that only the
default rule would otherwise keep; a longer specific rule that also matches still wins.

Pure: records and rules in, decisions out.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from retention.periods import Period

DIRECTIONS = ("inbound", "outbound", "internal", "unknown")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SEPARATORS = re.compile(r"[\s\-./()]")


class RuleError(ValueError):
    """A rule (or a set of rules) that cannot be used; the message says why."""


@dataclass(frozen=True, slots=True)
class RetentionRecord:
    """What retention needs to know about one recording (times in epoch seconds)."""

    recording_id: str
    call_id: str
    started_at: float
    ended_at: float | None = None
    duration_s: float | None = None
    direction: str = "unknown"
    agent_id: str | None = None
    caller: str | None = None
    callee: str | None = None
    trunk: str | None = None
    tags: frozenset[str] = frozenset()
    state: str = "complete"

    @property
    def end(self) -> float:
        """When the recording ended: the latest of its known ends (the period runs from here)."""
        return max(self.started_at + (self.duration_s or 0.0), self.ended_at or self.started_at)


def _digits(number: str) -> str:
    return _SEPARATORS.sub("", number)


def _glob_any(patterns: tuple[str, ...], values: Iterable[str | None]) -> bool:
    present = [v for v in values if v]
    return any(fnmatch.fnmatchcase(v, p) for p in patterns for v in present)


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    period: Period
    is_default: bool = False
    directions: frozenset[str] = frozenset()
    tags: frozenset[str] = frozenset()
    agents: tuple[str, ...] = ()
    numbers: tuple[str, ...] = ()
    trunks: tuple[str, ...] = ()
    min_duration_s: float | None = None
    max_duration_s: float | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise RuleError(f"rule name {self.name!r}: letters, digits, '_', '-', '.' (1-64, starting "
                            f"with a letter or digit)")
        unknown = set(self.directions) - set(DIRECTIONS)
        if unknown:
            raise RuleError(f"rule {self.name}: unknown direction(s) {sorted(unknown)} "
                            f"(known: {', '.join(DIRECTIONS)})")
        for what, value in (("min_duration_s", self.min_duration_s), ("max_duration_s", self.max_duration_s)):
            if value is not None and value < 0:
                raise RuleError(f"rule {self.name}: {what} must not be negative")
        if (self.min_duration_s is not None and self.max_duration_s is not None
                and self.min_duration_s >= self.max_duration_s):
            raise RuleError(f"rule {self.name}: min_duration_s must be below max_duration_s")
        if self.is_default and self.has_criteria:
            raise RuleError(f"rule {self.name}: the default rule applies to what no other rule "
                            f"matches; it takes no criteria")

    @property
    def has_criteria(self) -> bool:
        return bool(self.directions or self.tags or self.agents or self.numbers or self.trunks
                    or self.min_duration_s is not None or self.max_duration_s is not None)

    def matches(self, record: RetentionRecord) -> bool:
        if self.is_default:
            return True
        if self.directions and record.direction not in self.directions:
            return False
        if self.tags and not {t.casefold() for t in record.tags} & {t.casefold() for t in self.tags}:
            return False
        if self.agents and not _glob_any(self.agents, [record.agent_id]):
            return False
        if self.numbers:
            parties = [record.caller, record.callee]
            if not _glob_any(self.numbers, parties + [_digits(p) for p in parties if p]):
                return False
        if self.trunks and not _glob_any(self.trunks, [record.trunk]):
            return False
        duration = record.duration_s if record.duration_s is not None else record.end - record.started_at
        if self.min_duration_s is not None and duration < self.min_duration_s:
            return False
        return self.max_duration_s is None or duration < self.max_duration_s

    def expires_at(self, record: RetentionRecord) -> float:
        return self.period.after_epoch(record.end)

    def criteria(self) -> dict[str, Any]:
        """The criteria as plain data (JSON, listings); only the ones given."""
        found: dict[str, Any] = {
            "directions": sorted(self.directions), "tags": sorted(self.tags), "agents": list(self.agents),
            "numbers": list(self.numbers), "trunks": list(self.trunks),
            "min_duration_s": self.min_duration_s, "max_duration_s": self.max_duration_s}
        return {k: v for k, v in found.items() if v not in (None, [], ())}

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "period": str(self.period), "default": self.is_default,
                "criteria": self.criteria(), "description": self.description}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Rule:
        """The inverse of ``to_dict`` (the catalog stores criteria as JSON)."""
        criteria = data.get("criteria") or {}
        known = {"directions", "tags", "agents", "numbers", "trunks", "min_duration_s", "max_duration_s"}
        unknown = set(criteria) - known
        if unknown:
            raise RuleError(f"rule {data.get('name')!r}: unknown criteria {sorted(unknown)}")
        return cls(name=str(data["name"]), period=Period.parse(str(data["period"])),
                   is_default=bool(data.get("default")),
                   directions=frozenset(criteria.get("directions") or ()),
                   tags=frozenset(criteria.get("tags") or ()),
                   agents=tuple(criteria.get("agents") or ()), numbers=tuple(criteria.get("numbers") or ()),
                   trunks=tuple(criteria.get("trunks") or ()),
                   min_duration_s=_optional_float(criteria.get("min_duration_s")),
                   max_duration_s=_optional_float(criteria.get("max_duration_s")),
                   description=str(data.get("description") or ""))


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True, slots=True)
class RuleSet:
    """Rules checked together: unique names, at most one default."""

    ordinary: tuple[Rule, ...] = ()
    default: Rule | None = None
    by_name: dict[str, Rule] = field(default_factory=dict, compare=False)

    @classmethod
    def of(cls, rules: Iterable[Rule]) -> RuleSet:
        ordinary: list[Rule] = []
        default: Rule | None = None
        names: dict[str, Rule] = {}
        for rule in rules:
            if rule.name in names:
                raise RuleError(f"two rules are named {rule.name!r}")
            names[rule.name] = rule
            if rule.is_default:
                if default is not None:
                    raise RuleError(f"only one default rule: {default.name!r} and {rule.name!r}")
                default = rule
            else:
                ordinary.append(rule)
        return cls(tuple(sorted(ordinary, key=lambda r: r.name)), default, names)

    def governing(self, record: RetentionRecord) -> tuple[Rule, float] | None:
        """(rule, expiry in epoch seconds) for ``record``, or None: kept indefinitely."""
        best: tuple[Rule, float] | None = None
        for rule in self.ordinary:   # sorted by name: the first of equal expiries wins
            if rule.matches(record):
                expiry = rule.expires_at(record)
                if best is None or expiry > best[1]:
                    best = (rule, expiry)
        if best is None and self.default is not None:
            best = (self.default, self.default.expires_at(record))
        return best

    def __iter__(self) -> Iterator[Rule]:
        return iter(self.by_name.values())
