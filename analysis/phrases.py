"""Phrase detection in transcripts, tolerant of transcription errors (pure).

A channel's transcript segments are joined and cut into *units*: each Han character is a unit
keyed by its toneless pinyin (pypinyin, with its phrase dictionary for polyphones such as 行 in
银行), each Latin word or number is a unit keyed by its lower-case letters. A phrase is cut the
same way and found by approximate substring matching over units (Sellers' semi-global edit
distance: the phrase must be matched whole, anywhere in the text). Costs:

* the same character or word: 0; a homophone (same pinyin, another character — the usual
  Mandarin ASR error, 保本 → 宝本): 0.1; pinyin equal after the fuzzy rules input methods use
  (z/zh, c/ch, s/sh, l/n, f/h, r/l; an/ang, en/eng, in/ing, ian/iang, uan/uang): 0.35; pinyin one
  letter apart: 0.65; otherwise 1;
* words: 1.5 × letter edit distance / length when that ratio is at most 0.4 (guarantied,
  returns), else 1;
* a unit of the text inside the phrase (a filler word the speaker or the ASR added): 0.5; a
  phrase unit missing from the text: 1;
* polarity is never traded: a negation word against a non-negation, or a negation inside the
  matched span, costs more than any tolerance allows.

A phrase is found where the cost is at most ``tolerance`` × its number of units; the score is
1 − cost / units. A sensitive or required phrase right after a negation in the same clause
("no guaranteed return", "不保本") does not count: it is the disclosure, not the promise (a
topic is a topic either way: "no fees" is about fees). Patterns (regular expressions)
match the normalised text exactly. Each hit carries its channel and its offset in seconds
(interpolated inside the segment by character position).
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from analysis.rules import PhraseRule

HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_UNIT = re.compile(rf"[{HAN}]+|[a-z0-9]+(?:['’][a-z]+)*")
_CLAUSE_BREAK = re.compile(r"[,.!?;:，。！？；：、\n]")
NEGATION_WINDOW = 3            # units before a match searched for a negation (same clause)

COST_HOMOPHONE = 0.1
COST_FUZZY_PINYIN = 0.35
COST_NEAR_PINYIN = 0.65
COST_TEXT_EXTRA = 0.5          # a text unit inside the matched span that the phrase lacks
COST_PHRASE_MISSING = 1.0      # a phrase unit the text lacks
COST_POLARITY = 10.0           # a negation against none: never within a tolerance

_FUZZY_INITIALS = (("zh", "z"), ("ch", "c"), ("sh", "s"), ("n", "l"), ("r", "l"), ("f", "h"))
_FUZZY_FINALS = (("iang", "ian"), ("uang", "uan"), ("ang", "an"), ("eng", "en"), ("ing", "in"))


@dataclass(frozen=True, slots=True)
class Segment:
    """One transcript segment of one channel (seconds from sample 0 of the recording)."""

    channel: int
    start_s: float
    end_s: float
    text: str


@dataclass(frozen=True, slots=True)
class Unit:
    kind: str        # "han" or "word"
    key: str         # toneless pinyin or the word's letters
    surface: str     # the character or the word as written (normalised)
    pos: int         # character offset in the channel's joined text
    end: int


@dataclass(frozen=True, slots=True)
class PhraseHit:
    rule_id: str
    kind: str
    channel: int
    role: str
    offset_s: float
    end_s: float
    phrase: str
    matched: str
    score: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class PhraseResult:
    hits: tuple[PhraseHit, ...]
    missing_required: tuple[str, ...]


def normalise(text: str) -> str:
    """NFKC (full-width letters and digits become ASCII) and case-folded."""
    return unicodedata.normalize("NFKC", text).casefold()


@functools.lru_cache(maxsize=65536)
def _pinyin_run(run: str) -> tuple[str, ...]:
    from pypinyin import Style, lazy_pinyin  # ~0.2 s to load its dictionaries: only when Han text is matched

    syllables = lazy_pinyin(run, style=Style.NORMAL)
    if len(syllables) != len(run):   # pypinyin keeps one item per Han character; be safe
        return tuple(lazy_pinyin(char, style=Style.NORMAL)[0] for char in run)
    return tuple(s.replace("ü", "v") for s in syllables)


def units_of(text: str) -> list[Unit]:
    """The units of already-normalised text, with their character offsets."""
    units: list[Unit] = []
    for match in _UNIT.finditer(text):
        token = match.group()
        if "a" <= token[0] <= "z" or token[0].isdigit():
            units.append(Unit("word", re.sub(r"['’]", "", token), token, match.start(), match.end()))
            continue
        for i, syllable in enumerate(_pinyin_run(token)):
            pos = match.start() + i
            units.append(Unit("han", syllable, token[i], pos, pos + 1))
    return units


def _fuzzy(syllable: str) -> str:
    for long, short in _FUZZY_INITIALS:
        if syllable.startswith(long):
            syllable = short + syllable[len(long):]
            break
    for long, short in _FUZZY_FINALS:
        if syllable.endswith(long):
            return syllable[:-len(long)] + short
    return syllable


@functools.lru_cache(maxsize=262144)
def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance of two short strings."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


@functools.lru_cache(maxsize=262144)
def unit_cost(p_kind: str, p_key: str, p_surface: str, t_kind: str, t_key: str, t_surface: str) -> float:
    """Cost of reading phrase unit p where the text has unit t (see the module text)."""
    if p_kind != t_kind:
        return 1.0
    if p_kind == "han":
        if p_surface == t_surface:
            return 0.0
        if p_key == t_key:
            return COST_HOMOPHONE
        if _fuzzy(p_key) == _fuzzy(t_key):
            return COST_FUZZY_PINYIN
        return COST_NEAR_PINYIN if edit_distance(p_key, t_key) == 1 else 1.0
    if p_key == t_key:
        return 0.0
    ratio = edit_distance(p_key, t_key) / max(len(p_key), len(t_key))
    return min(1.0, 1.5 * ratio) if ratio <= 0.4 else 1.0


def _substitution_rows(phrase: Sequence[Unit], text: Sequence[Unit]) -> np.ndarray:
    """cost[i, j] of phrase unit i against text unit j, computed once per distinct text unit."""
    tokens = [(u.kind, u.key, u.surface) for u in text]
    distinct = list(dict.fromkeys(tokens))
    index = {token: i for i, token in enumerate(distinct)}
    inverse = np.fromiter((index[t] for t in tokens), dtype=np.int64, count=len(tokens))
    rows = np.empty((len(phrase), len(text)), dtype=np.float64)
    for i, p in enumerate(phrase):
        costs = np.fromiter((unit_cost(p.kind, p.key, p.surface, *t) for t in distinct), dtype=np.float64,
                            count=len(distinct))
        rows[i] = costs[inverse]
    return rows


def _is_negation(unit: Unit, negations: frozenset[str]) -> bool:
    return (unit.key if unit.kind == "word" else unit.surface) in negations


def _costs(phrase: Sequence[Unit], text: Sequence[Unit], negations: frozenset[str]) -> tuple[np.ndarray, np.ndarray]:
    """(substitution costs [phrase unit, text unit], cost of each text unit as an extra).

    Polarity is never traded: a negation in the text against none in the phrase (or the
    reverse), or a negation slipped into the matched span, costs more than any tolerance —
    "you can't lose money" is not "you may lose money", 保不本 is not 保本."""
    sub = _substitution_rows(phrase, text)
    extra = np.full(len(text), COST_TEXT_EXTRA)
    if negations:
        text_neg = np.fromiter((_is_negation(u, negations) for u in text), dtype=bool, count=len(text))
        for i, unit in enumerate(phrase):
            sub[i, text_neg != _is_negation(unit, negations)] = COST_POLARITY
        extra[text_neg] = COST_POLARITY
    return sub, extra


def _end_costs(sub: np.ndarray, extra: np.ndarray) -> np.ndarray:
    """Sellers' DP, one vectorised row per phrase unit: D[i, j] = cheapest alignment of the
    first i phrase units ending after text unit j (free start). The recurrence's left
    dependency D[i, j-1] + extra[j] is solved with a running minimum over prefix sums C of the
    extra costs: D[i, j] = C[j] + min_{k<=j}(T[k] − C[k])."""
    m, n = sub.shape
    previous = np.zeros(n + 1)
    prefix = np.concatenate(([0.0], np.cumsum(extra)))
    for i in range(m):
        through = np.empty(n + 1)
        through[0] = previous[0] + COST_PHRASE_MISSING
        through[1:] = np.minimum(previous[:-1] + sub[i], previous[1:] + COST_PHRASE_MISSING)
        previous = prefix + np.minimum.accumulate(through - prefix)
    return previous


def _best_start(sub: np.ndarray, extra: np.ndarray, end: int) -> int:
    """Where the cheapest alignment ending after text unit ``end`` starts (small window DP)."""
    m = sub.shape[0]
    low = max(0, end - 3 * m - 2)
    width = end - low
    inf = float("inf")
    # cost[j], start[j] over text positions low..end for the current phrase row
    cost = [0.0] * (width + 1)
    start = list(range(low, end + 1))
    for i in range(m):
        new_cost = [inf] * (width + 1)
        new_start = [0] * (width + 1)
        new_cost[0], new_start[0] = cost[0] + COST_PHRASE_MISSING, start[0]
        for j in range(1, width + 1):
            options = ((cost[j - 1] + float(sub[i, low + j - 1]), start[j - 1]),
                       (cost[j] + COST_PHRASE_MISSING, start[j]),
                       (new_cost[j - 1] + float(extra[low + j - 1]), new_start[j - 1]))
            new_cost[j], new_start[j] = min(options, key=lambda o: (o[0], -o[1]))
        cost, start = new_cost, new_start
    return start[width]


def find_phrase(phrase: Sequence[Unit], text: Sequence[Unit], tolerance: float,
                negations: frozenset[str] = frozenset()) -> list[tuple[int, int, float]]:
    """(first unit, end unit exclusive, cost) of each non-overlapping approximate occurrence."""
    if not phrase or not text:
        return []
    sub, extra = _costs(phrase, text, negations)
    ends = _end_costs(sub, extra)
    limit = tolerance * len(phrase) + 1e-9
    found: list[tuple[int, int, float]] = []
    j, n = 1, len(text)
    last_end = 0
    while j <= n:
        if ends[j] <= limit:
            best = j
            while best + 1 <= n and ends[best + 1] < ends[best]:
                best += 1
            first = _best_start(sub, extra, best)
            if first >= last_end:
                found.append((first, best, float(ends[best])))
                last_end = best
            j = best + 1
            while j <= n and ends[j] <= limit and ends[j] >= ends[j - 1]:
                j += 1
            continue
        j += 1
    return found


@dataclass(frozen=True, slots=True)
class ChannelText:
    """One channel's segments joined into one normalised text, with its units."""

    channel: int
    text: str
    units: tuple[Unit, ...]
    segments: tuple[Segment, ...]
    seg_starts: tuple[int, ...]      # character offset of each segment in text

    @classmethod
    def build(cls, channel: int, segments: Iterable[Segment]) -> ChannelText:
        ordered = sorted((s for s in segments if s.channel == channel), key=lambda s: s.start_s)
        parts, starts, offset = [], [], 0
        for segment in ordered:
            piece = normalise(segment.text).strip()
            starts.append(offset)
            parts.append(piece)
            offset += len(piece) + 1      # the newline that joins them (a clause break)
        text = "\n".join(parts)
        return cls(channel, text, tuple(units_of(text)), tuple(ordered), tuple(starts))

    def time_at(self, pos: int) -> float:
        """Seconds at character ``pos``: linear inside its segment."""
        if not self.segments:
            return 0.0
        index = max(0, int(np.searchsorted(self.seg_starts, pos, side="right")) - 1)
        segment = self.segments[index]
        length = max(1, len(normalise(segment.text).strip()))
        share = min(1.0, max(0.0, (pos - self.seg_starts[index]) / length))
        return round(segment.start_s + share * (segment.end_s - segment.start_s), 3)

    def negated(self, first_unit: int, negations: frozenset[str]) -> bool:
        """A negation among the units just before ``first_unit`` in the same clause."""
        if first_unit <= 0 or not negations:
            return False
        start = self.units[first_unit].pos
        window: list[Unit] = []
        for unit in reversed(self.units[max(0, first_unit - NEGATION_WINDOW):first_unit]):
            if _CLAUSE_BREAK.search(self.text, unit.end, start):
                break
            window.insert(0, unit)
            start = unit.pos
        if not window:
            return False
        if any(u.kind == "word" and u.key in negations for u in window):
            return True
        han = "".join(u.surface for u in window if u.kind == "han")
        return any(word in han for word in negations if word and not word.isascii())


def _unit_index_at(units: Sequence[Unit], pos: int) -> int:
    for i, unit in enumerate(units):
        if unit.end > pos:
            return i
    return len(units)


def _merge(hits: list[PhraseHit]) -> list[PhraseHit]:
    """One hit per overlapping region of the same rule and channel (the best score)."""
    merged: list[PhraseHit] = []
    for hit in sorted(hits, key=lambda h: (h.offset_s, -h.score)):
        if merged and hit.offset_s < merged[-1].end_s and hit.rule_id == merged[-1].rule_id:
            if hit.score > merged[-1].score:
                merged[-1] = hit
            continue
        merged.append(hit)
    return merged


@functools.lru_cache(maxsize=4096)
def _phrase_units(phrase: str) -> tuple[Unit, ...]:
    return tuple(units_of(normalise(phrase)))


def rule_hits(rule: PhraseRule, channel: ChannelText, role: str, negations: frozenset[str]) -> list[PhraseHit]:
    """Every hit of one rule on one channel."""
    found: list[PhraseHit] = []
    for phrase in rule.phrases:
        units = _phrase_units(phrase)
        for first, end, cost in find_phrase(units, channel.units, rule.tolerance, negations):
            if rule.kind != "topic" and channel.negated(first, negations):
                continue
            pos, stop = channel.units[first].pos, channel.units[end - 1].end
            found.append(PhraseHit(rule.id, rule.kind, channel.channel, role, channel.time_at(pos),
                                   channel.time_at(stop), phrase, channel.text[pos:stop],
                                   round(1.0 - cost / len(units), 3)))
    for pattern in rule.patterns:
        for match in pattern.finditer(channel.text):
            if match.end() <= match.start():
                continue
            first = _unit_index_at(channel.units, match.start())
            if rule.kind != "topic" and first < len(channel.units) and channel.negated(first, negations):
                continue
            found.append(PhraseHit(rule.id, rule.kind, channel.channel, role, channel.time_at(match.start()),
                                   channel.time_at(match.end()), pattern.pattern, match.group(), 1.0))
    return _merge(found)


def analyse_phrases(rules: Sequence[PhraseRule], segments: Iterable[Segment], roles: Mapping[int, str],
                    negations: frozenset[str] = frozenset()) -> PhraseResult:
    """Hits of every rule on the channels whose speaker it concerns; required rules with no
    hit by their speaker (within their deadline) are missing."""
    segments = list(segments)
    channels = {ch: ChannelText.build(ch, segments) for ch in sorted(roles)}
    hits: list[PhraseHit] = []
    missing: list[str] = []
    for rule in rules:
        mine = [h for ch, text in channels.items() if rule.speaker in ("any", roles[ch])
                for h in rule_hits(rule, text, roles[ch], negations)]
        hits += mine
        if rule.kind == "required":
            in_time = [h for h in mine if rule.within_s is None or h.offset_s <= rule.within_s]
            if not in_time:
                missing.append(rule.id)
    hits.sort(key=lambda h: (h.offset_s, h.channel, h.rule_id))
    return PhraseResult(tuple(hits), tuple(missing))
