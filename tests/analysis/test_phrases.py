"""Issue 9, must show 2: phrase detection on a labelled set of transcripts (English and
Mandarin, with transcription-error variants and negatives), precision and recall printed and
enforced; plus the pieces of the matcher and the rules file's error messages."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from analysis.phrases import Segment, analyse_phrases, find_phrase, normalise, units_of
from analysis.rules import CallFacts, RulesError, load_rules, parse_rules

LABELS = Path(__file__).with_name("data") / "phrase_labels.tsv"
MIN_PRECISION = 0.95
MIN_RECALL = 0.90


def labelled() -> list[tuple[str, str, set[str], str]]:
    rows = []
    for number, line in enumerate(LABELS.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        lob, speaker, expected, text = line.split("\t")
        assert speaker in ("agent", "customer"), f"{LABELS.name}:{number}: speaker {speaker!r}"
        rows.append((lob, speaker, set() if expected == "-" else set(expected.split(",")), text))
    return rows


def detected(rules_set, lob: str, speaker: str, text: str) -> set[str]:
    """Rule ids with at least one hit when ``speaker`` says ``text`` (alone on channel 0)."""
    result = analyse_phrases(rules_set.for_line(lob), [Segment(0, 0.0, 4.0, text)], {0: speaker},
                             rules_set.all_negations)
    return {hit.rule_id for hit in result.hits}


def test_precision_and_recall_on_the_labelled_set() -> None:
    rules_set = load_rules("default")
    rows = labelled()
    assert len(rows) >= 100
    languages = {"zh" if any("\u4e00" <= c <= "\u9fff" for c in text) else "en" for *_, text in rows}
    assert languages == {"zh", "en"}
    true_pos = false_pos = false_neg = 0
    by_language: dict[str, list[int]] = {"zh": [0, 0, 0], "en": [0, 0, 0]}
    mistakes = []
    for lob, speaker, expected, text in rows:
        found = detected(rules_set, lob, speaker, text)
        tp, fp, fn = len(found & expected), len(found - expected), len(expected - found)
        true_pos, false_pos, false_neg = true_pos + tp, false_pos + fp, false_neg + fn
        counts = by_language["zh" if any("\u4e00" <= c <= "\u9fff" for c in text) else "en"]
        counts[0], counts[1], counts[2] = counts[0] + tp, counts[1] + fp, counts[2] + fn
        if fp or fn:
            mistakes.append(f"  {text!r}: expected {sorted(expected)}, found {sorted(found)}")
    precision = true_pos / (true_pos + false_pos)
    recall = true_pos / (true_pos + false_neg)
    print(f"\nphrase detection on {len(rows)} labelled transcripts: precision {precision:.3f}, "
          f"recall {recall:.3f} (tp {true_pos}, fp {false_pos}, fn {false_neg})")
    for language, (tp, fp, fn) in sorted(by_language.items()):
        print(f"  {language}: precision {tp / max(1, tp + fp):.3f}, recall {tp / max(1, tp + fn):.3f}")
    print("\n".join(mistakes) or "  no mistakes")
    assert precision >= MIN_PRECISION, "\n".join(mistakes)
    assert recall >= MIN_RECALL, "\n".join(mistakes)


def test_homophones_cost_little_and_other_characters_a_lot() -> None:
    phrase = units_of(normalise("保本"))
    assert find_phrase(phrase, units_of(normalise("它是保本的")), 0.25) == [(2, 4, 0.0)]
    (first, end, cost), = find_phrase(phrase, units_of(normalise("它是宝本的")), 0.25)
    assert (first, end) == (2, 4) and cost == pytest.approx(0.1)
    assert find_phrase(phrase, units_of(normalise("宝贝")), 0.25) == []


def test_hits_carry_channel_role_and_offset() -> None:
    rules_set = load_rules("default")
    segments = [Segment(1, 10.0, 14.0, "您好，本次通话将被录音。"), Segment(1, 30.0, 34.0, "这个产品保本。"),
                Segment(0, 31.0, 33.0, "保本吗？")]
    result = analyse_phrases(rules_set.for_line("wealth"), segments, {0: "customer", 1: "agent"},
                             rules_set.all_negations)
    sensitive = [h for h in result.hits if h.kind == "sensitive"]
    assert [(h.channel, h.role, h.matched) for h in sensitive] == [(1, "agent", "保本")]
    # "这个产品保本。" is 7 characters over 4 s: 保 is the 5th → 30 + 4 × 4/7
    assert sensitive[0].offset_s == pytest.approx(30.0 + 4 * 4 / 7, abs=0.01)
    assert result.missing_required == ("risk-disclosure",)


def test_a_required_phrase_too_late_is_missing() -> None:
    rules_set = load_rules("default")
    rules = [r for r in rules_set.rules if r.id == "recording-notice"]
    late = analyse_phrases(rules, [Segment(0, 75.0, 78.0, "this call is recorded")], {0: "agent"})
    early = analyse_phrases(rules, [Segment(0, 5.0, 8.0, "this call is recorded")], {0: "agent"})
    assert late.missing_required == ("recording-notice",) and len(late.hits) == 1
    assert early.missing_required == ()


def test_line_of_business() -> None:
    rules_set = load_rules("default")
    assert rules_set.line_of(CallFacts(tags=("lob:cards",))) == "cards"
    assert rules_set.line_of(CallFacts(team="wealth")) == "wealth"
    assert rules_set.line_of(CallFacts(bank_number="+86 4008-123")) == "default"
    assert rules_set.line_of(CallFacts(bank_number="4008-123")) == "wealth"
    assert rules_set.line_of(CallFacts()) == "default"


@pytest.mark.parametrize(("text", "message"), [
    ("[[rule]]\nid = 'x'\nkind = 'bad'\nphrases = ['a']\n", "rule x.kind: expected one of sensitive"),
    ("[[rule]]\nid = 'x'\nkind = 'sensitive'\n", "rule x: needs phrases or patterns"),
    ("[[rule]]\nid = 'x'\nkind = 'topic'\npatterns = ['(']\n", "rule x.patterns: '(' is not a regular expression"),
    ("[[rule]]\nid = 'x'\nkind = 'topic'\nlines = ['nope']\nphrases = ['a']\n", "rule x.lines: no [[line]] named nope"),
    ("[risk]\nloudness = 3\n", "risk: unknown weight(s) loudness"),
    ("[calls]\nduration_bands_s = [300, 30]\n", "calls.duration_bands_s: must be strictly ascending"),
])
def test_rules_errors_name_the_entry(text: str, message: str) -> None:
    with pytest.raises(RulesError, match="^" + re.escape("test.toml: " + message)):
        parse_rules(text, source="test.toml")
