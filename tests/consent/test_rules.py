"""recorderd/consent/rules.py: prompt rules, Accept-Language, REFER targets."""

from __future__ import annotations

from datetime import datetime

import pytest

from recorderd.consent.rules import (
    CallFacts,
    RuleError,
    choose_prompt,
    parse_accept_language,
    parse_rule,
    parse_rules,
    refer_target,
)

RULES = parse_rules([
    "called=400* time=18:00-08:00 prompt=zh_night",
    "called=400* days=sat,sun prompt=zh_weekend",
    "lang=en prompt=en",
    "caller=+852* prompt=yue",
])
TUESDAY_NOON = datetime(2026, 3, 3, 12, 0)      # a Tuesday


def facts(called: str = "4001234", caller: str = "13800001111", lang: str | None = None,
          when: datetime = TUESDAY_NOON) -> CallFacts:
    return CallFacts(called, caller, parse_accept_language(lang), when)


@pytest.mark.parametrize(("call", "prompt", "rule"), [
    (facts(), "zh", "default"),
    (facts(when=datetime(2026, 3, 3, 23, 30)), "zh_night", RULES[0].text),
    (facts(when=datetime(2026, 3, 4, 7, 59)), "zh_night", RULES[0].text),        # wraps past midnight
    (facts(when=datetime(2026, 3, 4, 8, 0)), "zh", "default"),                    # end is exclusive
    (facts(when=datetime(2026, 3, 7, 12, 0)), "zh_weekend", RULES[1].text),       # Saturday
    (facts(called="95588", when=datetime(2026, 3, 7, 12, 0)), "zh", "default"),   # rule needs 400*
    (facts(lang="en-GB, zh;q=0.5"), "en", "lang=en prompt=en"),
    (facts(lang="zh-CN, en;q=0.9"), "zh", "default"),                             # preferred is zh
    (facts(lang="zh;q=0.2, en;q=0.8"), "en", "lang=en prompt=en"),                # q decides, not order
    (facts(lang="english"), "zh", "default"),                                      # en- prefix only
    (facts(caller="+85291234567"), "yue", "caller=+852* prompt=yue"),
])
def test_first_matching_rule_chooses_the_prompt(call: CallFacts, prompt: str, rule: str) -> None:
    choice = choose_prompt(RULES, "zh", call)
    assert (choice.prompt, choice.rule) == (prompt, rule)


@pytest.mark.parametrize(("value", "expected"), [
    ("en-US,en;q=0.9,zh-CN;q=0.8", ("en-us", "en", "zh-cn")),
    ("zh;q=0, en", ("en",)),              # q=0: not acceptable
    ("fr;q=0.5, de;q=0.5, it", ("it", "fr", "de")),
    ("*, en;q=0.1", ("en",)),
    ("en;q=2, fr", ("fr",)),               # malformed weight: entry ignored
    ("", ()),
    (None, ()),
])
def test_accept_language_order(value: str | None, expected: tuple[str, ...]) -> None:
    assert parse_accept_language(value) == expected


@pytest.mark.parametrize(("text", "problem"), [
    ("called=400*", "no prompt=NAME"),
    ("prompt=../etc/passwd", "may only hold"),
    ("time=25:00-08:00 prompt=x", "expected HH:MM-HH:MM"),
    ("time=08:00-08:00 prompt=x", "empty window"),
    ("days=weekdays prompt=x", "days='weekdays'"),
    ("colour=red prompt=x", "unknown key 'colour'"),
    ("prompt=x prompt=y", "prompt given twice"),
    ("lang=e_n prompt=x", "not a language tag"),
    ("called prompt=x", "not key=value"),
])
def test_bad_rules_are_named(text: str, problem: str) -> None:
    with pytest.raises(RuleError, match=problem.replace("(", r"\(").replace("*", r"\*")) as err:
        parse_rule(text)
    assert repr(text) in str(err.value)


def test_day_ranges_wrap_around_the_week() -> None:
    assert parse_rule("days=fri-mon prompt=x").days == frozenset({4, 5, 6, 0})
    assert parse_rule("days=mon,wed-thu prompt=x").days == frozenset({0, 2, 3})


@pytest.mark.parametrize(("setting", "host", "headers", "expected"), [
    ("request-uri", "source", {}, "sip:4001234@10.0.0.5:5060"),
    ("request-uri", "pbx.bank.example:5070", {}, "sip:4001234@pbx.bank.example:5070"),
    ("header:X-Consent-Target", "source", {"x-consent-target": "<sip:agent7@10.0.0.9>"}, "sip:agent7@10.0.0.9"),
    ("header:X-Consent-Target", "source", {}, None),
    ("header:X-Consent-Target", "source", {"X-Consent-Target": "not a uri"}, None),
])
def test_refer_target(setting: str, host: str, headers: dict[str, str], expected: str | None) -> None:
    assert refer_target(setting, host, "sip:4001234@consent.bank.example;user=phone", headers,
                        "10.0.0.5:5060") == expected


def test_refer_target_escapes_the_user_part() -> None:
    assert refer_target("request-uri", "pbx", "sip:%61gent%20one@x", {}, "s") == "sip:agent%20one@pbx"
