"""The purge plan: a pure function of recordings, rules, legal holds and ``now``.

``plan(records, rules, holds, now)`` walks the recordings once and says, per recording, what
retention would do now:

* ``purge``    its governing rule's period has passed (expiry <= now) and no hold covers it;
* ``held``     it would be due, but a legal hold covers it: kept, whatever the rules say;
* ``keep``     its period has not passed yet;
* ``no_rule``  no rule matches and there is no default rule: kept indefinitely;
* ``active``   still being recorded: never touched;
* ``purged``   already purged.

Only finished recordings (``complete``, ``partial``) are ever purged. The plan keeps, per rule,
how many recordings are due, the oldest and newest start among them, and their ids (oldest
first). ``impact(...)`` compares two rule sets on the same recordings: what saving a rule
changes (a pure diff of the two plans' decisions).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from capture.recording import iso_utc
from retention.rules import RetentionRecord, Rule, RuleSet

PURGEABLE_STATES = frozenset({"complete", "partial"})
EXAMPLES = 20


@dataclass(frozen=True, slots=True)
class HeldSet:
    """The recordings one legal hold covers (resolved at the edge: a recording, or a search)."""

    hold_id: int
    case: str
    recording_ids: frozenset[str]


@dataclass(frozen=True, slots=True)
class Decision:
    action: str               # purge | held | keep | no_rule | active | purged
    rule: str | None = None
    expires_at: float | None = None


def decide(record: RetentionRecord, rules: RuleSet, held: frozenset[str] | set[str], now: float) -> Decision:
    """What retention does with one recording at ``now``."""
    if record.state == "purged":
        return Decision("purged")
    if record.state not in PURGEABLE_STATES:
        return Decision("active")
    found = rules.governing(record)
    if found is None:
        return Decision("no_rule")
    rule, expiry = found
    if expiry > now:
        return Decision("keep", rule.name, expiry)
    if record.recording_id in held:
        return Decision("held", rule.name, expiry)
    return Decision("purge", rule.name, expiry)


@dataclass(slots=True)
class Tally:
    """Recordings counted together: how many, oldest and newest start, ids (oldest first)."""

    count: int = 0
    oldest: float | None = None
    newest: float | None = None
    items: list[tuple[float, str]] = field(default_factory=list)

    def add(self, record: RetentionRecord) -> None:
        self.count += 1
        start = record.started_at
        self.oldest = start if self.oldest is None else min(self.oldest, start)
        self.newest = start if self.newest is None else max(self.newest, start)
        self.items.append((start, record.recording_id))

    @property
    def ids(self) -> list[str]:
        return [rid for _, rid in sorted(self.items)]

    def to_dict(self, with_ids: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {"count": self.count, "oldest": iso_utc(self.oldest), "newest": iso_utc(self.newest)}
        if with_ids:
            out["ids"] = self.ids
        return out


@dataclass(slots=True)
class PurgePlan:
    now: float
    due: dict[str, Tally] = field(default_factory=dict)       # rule name -> due recordings
    held: Tally = field(default_factory=Tally)                 # due, but under legal hold
    held_by_case: dict[str, int] = field(default_factory=dict)
    kept: int = 0
    no_rule: int = 0
    active: int = 0
    purged: int = 0
    assigned: dict[str, str] = field(default_factory=dict)     # due recording id -> rule name

    @property
    def total(self) -> int:
        return sum(t.count for t in self.due.values())

    @property
    def ids(self) -> list[str]:
        """Every recording to purge, oldest first."""
        return [rid for _, rid in sorted(item for t in self.due.values() for item in t.items)]

    def to_dict(self, with_ids: bool = True) -> dict[str, Any]:
        return {"now": iso_utc(self.now), "total": self.total,
                "rules": {name: self.due[name].to_dict(with_ids) for name in sorted(self.due)},
                "held": {**self.held.to_dict(with_ids), "by_case": dict(sorted(self.held_by_case.items()))},
                "kept": self.kept, "no_rule": self.no_rule, "active": self.active, "purged": self.purged}


def _held_index(holds: Iterable[HeldSet]) -> tuple[set[str], dict[str, list[str]]]:
    ids: set[str] = set()
    cases: dict[str, list[str]] = {}
    for hold in holds:
        ids |= hold.recording_ids
        for rid in hold.recording_ids:
            cases.setdefault(rid, []).append(hold.case)
    return ids, cases


def plan(records: Iterable[RetentionRecord], rules: Iterable[Rule] | RuleSet, holds: Iterable[HeldSet],
         now: float) -> PurgePlan:
    """The dry run: what a purge at ``now`` would do (see the module docstring)."""
    ruleset = rules if isinstance(rules, RuleSet) else RuleSet.of(rules)
    held_ids, cases = _held_index(holds)
    result = PurgePlan(now)
    for record in records:
        decision = decide(record, ruleset, held_ids, now)
        if decision.action == "purge":
            assert decision.rule is not None
            result.due.setdefault(decision.rule, Tally()).add(record)
            result.assigned[record.recording_id] = decision.rule
        elif decision.action == "held":
            result.held.add(record)
            for case in cases.get(record.recording_id, []):
                result.held_by_case[case] = result.held_by_case.get(case, 0) + 1
        elif decision.action == "keep":
            result.kept += 1
        elif decision.action == "no_rule":
            result.no_rule += 1
        elif decision.action == "active":
            result.active += 1
        else:
            result.purged += 1
    return result


@dataclass(slots=True)
class RuleImpact:
    """What replacing one rule set by another changes, on the same recordings at ``now``."""

    changed: int = 0          # recordings whose governing rule or expiry differs
    newly_due: int = 0        # purged by the next run under the new rules, not under the old
    no_longer_due: int = 0    # the reverse
    due_before: int = 0
    due_after: int = 0
    examples: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"changed": self.changed, "newly_due": self.newly_due, "no_longer_due": self.no_longer_due,
                "due_before": self.due_before, "due_after": self.due_after, "examples": self.examples}


def impact(records: Iterable[RetentionRecord], before: Iterable[Rule] | RuleSet, after: Iterable[Rule] | RuleSet,
           holds: Iterable[HeldSet], now: float) -> RuleImpact:
    """The diff of the two plans, recording by recording (pure)."""
    old = before if isinstance(before, RuleSet) else RuleSet.of(before)
    new = after if isinstance(after, RuleSet) else RuleSet.of(after)
    held_ids, _ = _held_index(holds)
    result = RuleImpact()
    for record in records:
        a, b = decide(record, old, held_ids, now), decide(record, new, held_ids, now)
        result.due_before += a.action == "purge"
        result.due_after += b.action == "purge"
        if (a.rule, a.expires_at) != (b.rule, b.expires_at):
            result.changed += 1
            if len(result.examples) < EXAMPLES:
                result.examples.append(record.recording_id)
        if b.action == "purge" and a.action != "purge":
            result.newly_due += 1
        elif a.action == "purge" and b.action != "purge":
            result.no_longer_due += 1
    return result
