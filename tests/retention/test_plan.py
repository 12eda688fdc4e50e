"""retention/: periods, rule matching, the pure purge plan and the rule-change preview."""

from __future__ import annotations

import calendar
import random
from datetime import UTC, datetime, timedelta

import pytest

from retention.periods import Period, PeriodError
from retention.plan import HeldSet, decide, impact, plan
from retention.rules import RetentionRecord, Rule, RuleError, RuleSet

DAY = 86400.0


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def ts(text: str) -> float:
    return utc(text).timestamp()


def record(rid: str, end: str, duration: float = 60.0, **kw: object) -> RetentionRecord:
    """A finished recording ending at ``end`` (UTC) after ``duration`` seconds."""
    return RetentionRecord(rid, f"{rid}@pbx", ts(end) - duration, ts(end), duration, **kw)  # type: ignore[arg-type]


# -- periods --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("start", "period", "expected"), [
    ("2024-01-15T10:00:00", "1m", "2024-02-15T10:00:00"),
    ("2024-01-31T10:00:00", "1m", "2024-03-01T10:00:00"),   # no 31 February: rolls forward, never earlier
    ("2023-01-31T10:00:00", "1m", "2023-03-01T10:00:00"),
    ("2024-03-31T23:59:59", "1m", "2024-05-01T23:59:59"),   # no 31 April
    ("2024-02-29T12:00:00", "1y", "2025-03-01T12:00:00"),   # leap day + 1 year
    ("2024-02-29T12:00:00", "4y", "2028-02-29T12:00:00"),   # next leap year: the day exists
    ("2023-03-01T00:00:00", "1y", "2024-03-01T00:00:00"),
    ("2024-08-31T08:00:00", "6m", "2025-03-01T08:00:00"),   # no 31 February 2025
    ("2024-12-15T00:00:00", "1m", "2025-01-15T00:00:00"),   # year boundary
    ("2024-01-01T00:00:00", "30d", "2024-01-31T00:00:00"),
    ("2024-02-01T00:00:00", "30d", "2024-03-02T00:00:00"),  # leap February has 29 days
    ("2023-02-01T00:00:00", "30d", "2023-03-03T00:00:00"),
    ("2020-06-30T09:00:00", "7y", "2027-06-30T09:00:00"),
])
def test_calendar_arithmetic(start: str, period: str, expected: str) -> None:
    assert Period.parse(period).after(utc(start)) == utc(expected)


def test_a_period_is_never_shorter_than_its_calendar_reading() -> None:
    """Every day of four years (a leap year included), random times: start + n months is never
    before the shortest legal reading (same day number n months on, or that month's last day
    when it is shorter) and at most one day after it."""
    rng = random.Random(7)
    start = utc("2023-01-01T00:00:00")
    for day in range(0, 4 * 366):
        moment = start + timedelta(days=day, seconds=rng.randrange(86400))
        for months in (1, 6, 12, 84):
            due = Period(months, "months").after(moment)
            year, month0 = divmod(moment.year * 12 + moment.month - 1 + months, 12)
            last = calendar.monthrange(year, month0 + 1)[1]
            legal = moment.replace(year=year, month=month0 + 1, day=min(moment.day, last))
            assert legal <= due <= legal + timedelta(days=1), (moment, months)


@pytest.mark.parametrize("text", ["", "7", "7w", "-1y", "0d", "1.5y", "y7", "201y"])
def test_bad_periods_are_named(text: str) -> None:
    with pytest.raises(PeriodError):
        Period.parse(text)


def test_period_text_round_trips() -> None:
    for text in ("30d", "6m", "7y"):
        assert str(Period.parse(text)) == text
    assert Period.parse("10 years") == Period(10, "years")


# -- rules ----------------------------------------------------------------------------------------

RULES = [
    Rule("default", Period(1, "years"), is_default=True),
    Rule("misdial", Period(30, "days"), max_duration_s=5.0),
    Rule("inbound", Period(6, "months"), directions=frozenset({"inbound"})),
    Rule("trading", Period(7, "years"), tags=frozenset({"Trading"})),
    Rule("desk", Period(1, "months"), agents=("desk-*",)),
    Rule("berlin", Period(2, "years"), numbers=("+4930*",)),
    Rule("trunk-b", Period(3, "years"), trunks=("sbc-b*",)),
]


def governing(rec: RetentionRecord, rules: list[Rule] = RULES) -> tuple[str, float] | None:
    found = RuleSet.of(rules).governing(rec)
    return None if found is None else (found[0].name, found[1])


def test_each_criterion_matches() -> None:
    end = "2024-05-10T10:00:00"
    assert governing(record("a", end, direction="inbound")) == ("inbound", ts("2024-11-10T10:00:00"))
    assert governing(record("b", end, tags=frozenset({"trading"}))) == ("trading", ts("2031-05-10T10:00:00"))
    assert governing(record("c", end, agent_id="desk-4")) == ("desk", ts("2024-06-10T10:00:00"))
    assert governing(record("d", end, caller="+49 30 1234-5")) == ("berlin", ts("2026-05-10T10:00:00"))
    assert governing(record("e", end, callee="+4930999")) == ("berlin", ts("2026-05-10T10:00:00"))
    assert governing(record("f", end, trunk="sbc-b2")) == ("trunk-b", ts("2027-05-10T10:00:00"))
    assert governing(record("g", end, duration=4.9)) == ("misdial", ts("2024-06-09T10:00:00"))
    # 5 s is not shorter than 5 s: the misdial rule's bound is exclusive
    assert governing(record("h", end, duration=5.0)) == ("default", ts("2025-05-10T10:00:00"))
    assert governing(record("i", end, agent_id="trader-1", caller="+4940")) == ("default", ts("2025-05-10T10:00:00"))


def test_longest_matching_period_wins() -> None:
    end = "2024-01-31T10:00:00"
    # inbound (6 m) and desk (1 m) both match: 6 months wins
    assert governing(record("a", end, direction="inbound", agent_id="desk-1"))[0] == "inbound"  # type: ignore[index]
    # a misdial on an inbound line: the longer inbound period wins over the misdial period
    assert governing(record("b", end, duration=2, direction="inbound")) == ("inbound", ts("2024-07-31T10:00:00"))
    # trading (7 y) beats everything else that matches
    rec = record("c", end, duration=2, direction="inbound", agent_id="desk-1", tags=frozenset({"trading"}),
                 caller="+4930", trunk="sbc-b1")
    assert governing(rec) == ("trading", ts("2031-01-31T10:00:00"))


def test_longest_is_compared_on_the_calendar() -> None:
    """12 months vs 365 days: which is longer depends on a leap day inside the period."""
    rules = [Rule("year", Period(12, "months"), directions=frozenset({"inbound"})),
             Rule("days", Period(365, "days"), directions=frozenset({"inbound"}))]
    leap = record("a", "2023-06-01T00:00:00", direction="inbound")     # 29 Feb 2024 inside: 366 days
    plain = record("b", "2022-06-01T00:00:00", direction="inbound")    # 365 days either way: tie, by name
    assert governing(leap, rules) == ("year", ts("2024-06-01T00:00:00"))
    assert governing(plain, rules) == ("days", ts("2023-06-01T00:00:00"))


def test_default_only_applies_when_nothing_else_matches() -> None:
    rules = [Rule("default", Period(10, "years"), is_default=True), Rule("misdial", Period(30, "days"),
                                                                         max_duration_s=5)]
    assert governing(record("a", "2024-01-01T00:00:00", duration=3), rules)[0] == "misdial"  # type: ignore[index]
    assert governing(record("b", "2024-01-01T00:00:00", duration=30), rules)[0] == "default"  # type: ignore[index]
    assert governing(record("c", "2024-01-01T00:00:00", duration=30), rules[1:]) is None


def test_rule_sets_refuse_ambiguity() -> None:
    with pytest.raises(RuleError, match="only one default"):
        RuleSet.of([Rule("a", Period(1, "years"), is_default=True), Rule("b", Period(2, "years"), is_default=True)])
    with pytest.raises(RuleError, match="two rules are named"):
        RuleSet.of([Rule("a", Period(1, "years")), Rule("a", Period(2, "years"))])
    with pytest.raises(RuleError, match="takes no criteria"):
        Rule("d", Period(1, "years"), is_default=True, tags=frozenset({"x"}))
    with pytest.raises(RuleError, match="unknown direction"):
        Rule("d", Period(1, "years"), directions=frozenset({"sideways"}))
    with pytest.raises(RuleError, match="min_duration_s must be below"):
        Rule("d", Period(1, "years"), min_duration_s=10, max_duration_s=5)


def test_rules_round_trip_through_their_stored_form() -> None:
    for rule in RULES:
        assert Rule.from_dict(rule.to_dict()) == rule


# -- the plan -----------------------------------------------------------------------------------------

def test_plan_boundaries_counts_oldest_newest() -> None:
    recs = [record("jan31", "2024-01-31T10:00:00", agent_id="desk-1"),      # desk 1 m -> 2024-03-01T10:00
            record("feb29", "2024-02-29T12:00:00"),                           # default 1 y -> 2025-03-01T12:00
            record("mis", "2024-03-10T08:00:00", duration=2),                 # misdial 30 d -> 2024-04-09T08:00
            record("mis2", "2024-03-11T08:00:00", duration=3)]                # misdial -> 2024-04-10T08:00
    at = {name: ts(when) for name, when in (("jan31", "2024-03-01T10:00:00"), ("feb29", "2025-03-01T12:00:00"),
                                            ("mis", "2024-04-09T08:00:00"), ("mis2", "2024-04-10T08:00:00"))}
    for rid, due in at.items():
        for offset, expect in ((-DAY, False), (-0.001, False), (0.0, True), (DAY, True)):
            result = plan(recs, RULES, [], due + offset)
            assert (rid in result.ids) is expect, (rid, offset)
    late = plan(recs, RULES, [], ts("2024-04-11T00:00:00"))
    assert late.total == 3 and late.kept == 1
    assert late.due["misdial"].count == 2
    assert late.due["misdial"].oldest == recs[2].started_at and late.due["misdial"].newest == recs[3].started_at
    assert late.due["desk"].ids == ["jan31"]
    assert late.ids == ["jan31", "mis", "mis2"]   # oldest first
    assert late.to_dict(with_ids=False)["rules"]["misdial"] == {
        "count": 2, "oldest": "2024-03-10T07:59:58.000Z", "newest": "2024-03-11T07:59:57.000Z"}


def test_holds_override_everything() -> None:
    recs = [record("a", "2020-01-01T00:00:00"), record("b", "2020-01-01T00:00:00", duration=1)]
    holds = [HeldSet(1, "case-7", frozenset({"a"})), HeldSet(2, "case-9", frozenset({"a", "b"}))]
    result = plan(recs, RULES, holds, ts("2030-01-01T00:00:00"))
    assert result.total == 0 and result.held.count == 2
    assert result.held_by_case == {"case-7": 1, "case-9": 2}


def test_states_other_than_finished_are_never_purged() -> None:
    recs = [record("active", "2020-01-01T00:00:00", state="active"),
            record("gone", "2020-01-01T00:00:00", state="purged"),
            record("partial", "2020-01-01T00:00:00", state="partial")]
    result = plan(recs, RULES, [], ts("2030-01-01T00:00:00"))
    assert result.ids == ["partial"] and result.active == 1 and result.purged == 1


def test_no_rule_keeps_forever() -> None:
    result = plan([record("a", "2000-01-01T00:00:00")], [Rule("x", Period(1, "days"), tags=frozenset({"t"}))], [],
                  ts("2100-01-01T00:00:00"))
    assert result.total == 0 and result.no_rule == 1


def _random_rule(rng: random.Random, name: str) -> Rule:
    unit = rng.choice(["days", "months", "years"])
    amount = rng.randint(1, {"days": 900, "months": 40, "years": 4}[unit])
    kind = rng.randrange(6)
    if kind == 0:
        return Rule(name, Period(amount, unit), directions=frozenset({rng.choice(["inbound", "outbound"])}))
    if kind == 1:
        return Rule(name, Period(amount, unit), tags=frozenset({rng.choice(["a", "b", "c"])}))
    if kind == 2:
        return Rule(name, Period(amount, unit), max_duration_s=rng.choice([3.0, 5.0, 10.0]))
    if kind == 3:
        return Rule(name, Period(amount, unit), agents=(rng.choice(["desk-*", "x1", "trader-?"]),))
    if kind == 4:
        return Rule(name, Period(amount, unit), numbers=(rng.choice(["+4930*", "*99", "+1*"]),))
    return Rule(name, Period(amount, unit), min_duration_s=rng.choice([1.0, 30.0]))


def _random_record(rng: random.Random, i: int) -> RetentionRecord:
    end = ts("2019-01-01T00:00:00") + rng.uniform(0, 6 * 365 * DAY)
    duration = rng.choice([0.5, 2.0, 4.99, 5.0, 12.0, 300.0])
    return RetentionRecord(
        f"r{i}", f"c{i}", end - duration, end, duration, rng.choice(["inbound", "outbound", "internal", "unknown"]),
        rng.choice([None, "desk-1", "trader-7", "x1"]), rng.choice([None, "+49301234", "+15550199", "7099"]),
        rng.choice([None, "+4930", "12399"]), None, frozenset(rng.sample(["a", "b", "c", "d"], rng.randint(0, 2))),
        rng.choice(["complete", "complete", "partial", "active", "purged"]))


def test_property_no_held_or_unexpired_recording_is_ever_planned() -> None:
    """Random rules, records, holds and clocks (fixed seed, bounded): every planned recording is
    finished, unheld and past the longest period of every rule that matches it (checked here
    independently of ``governing``), and every finished, unheld, expired one is planned."""
    rng = random.Random(20240229)
    for trial in range(120):
        rules = [_random_rule(rng, f"r{n}") for n in range(rng.randint(0, 5))]
        if rng.random() < 0.7:
            rules.append(Rule("default", Period(rng.randint(1, 36), "months"), is_default=True))
        recs = [_random_record(rng, i) for i in range(60)]
        held_ids = {r.recording_id for r in recs if rng.random() < 0.2}
        holds = [HeldSet(1, "case", frozenset(held_ids))]
        now = ts("2019-01-01T00:00:00") + rng.uniform(0, 10 * 365 * DAY)
        planned = set(plan(recs, rules, holds, now).ids)
        for rec in recs:
            ordinary = [r for r in rules if not r.is_default and r.matches(rec)]
            default = [r for r in rules if r.is_default]
            applicable = ordinary or default
            expiries = [r.period.after(datetime.fromtimestamp(rec.end, UTC)).timestamp() for r in applicable]
            expired = bool(expiries) and all(e <= now for e in expiries)
            should = rec.state in ("complete", "partial") and rec.recording_id not in held_ids and expired
            assert (rec.recording_id in planned) == should, (trial, rec, rules)
            if rec.recording_id in planned:
                assert rec.recording_id not in held_ids and rec.state in ("complete", "partial")


# -- the preview: what saving a rule changes ---------------------------------------------------------

def test_impact_counts_what_a_rule_change_changes() -> None:
    recs = [record(f"in{i}", "2024-01-10T00:00:00", direction="inbound") for i in range(3)] + \
           [record(f"out{i}", "2024-01-10T00:00:00", direction="outbound") for i in range(2)] + \
           [record("mis", "2024-01-10T00:00:00", duration=2, direction="outbound")]
    before = [Rule("default", Period(1, "years"), is_default=True)]
    after = before + [Rule("inbound", Period(6, "months"), directions=frozenset({"inbound"}))]
    now = ts("2024-08-01T00:00:00")
    change = impact(recs, before, after, [], now)
    assert (change.changed, change.newly_due, change.no_longer_due) == (3, 3, 0)
    assert sorted(change.examples) == ["in0", "in1", "in2"]
    # a hold: the rule still changes its expiry, but it does not become due
    held = impact(recs, before, after, [HeldSet(1, "c", frozenset({"in0"}))], now)
    assert (held.changed, held.newly_due) == (3, 2)
    misdial = impact(recs, before, before + [Rule("misdial", Period(30, "days"), max_duration_s=5)], [], now)
    assert (misdial.changed, misdial.newly_due, misdial.due_before, misdial.due_after) == (1, 1, 0, 1)
    assert impact(recs, after, after, [], now).changed == 0


def test_decide_matches_plan() -> None:
    rec = record("a", "2024-01-10T00:00:00", direction="inbound")
    rules = RuleSet.of(RULES)
    assert decide(rec, rules, set(), ts("2024-07-10T00:00:00")).action == "purge"
    assert decide(rec, rules, {"a"}, ts("2024-07-10T00:00:00")).action == "held"
    assert decide(rec, rules, set(), ts("2024-07-09T23:59:59")).action == "keep"
