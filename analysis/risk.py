"""A call's risk score and risk-driven QA sampling (pure).

The score (0–100) adds up what a compliance reviewer would want to hear first:

* sensitive phrases said by the speaker the rule concerns: ``sensitive_hit`` points each, at
  most ``sensitive_max``;
* required phrases missing (no risk disclosure, no recording notice): ``missing_required``
  points each;
* the agent interrupting the customer: ``agent_interruption_per_min`` points per interruption
  per minute, at most ``interruption_max``;
* talking over each other: ``overlap_share`` points × the share of the call in overlap, at most
  ``overlap_max``;
* long silences (a call mostly dead air: hold, a stuck line): ``silence`` points once the
  silence ratio reaches ``silence_ratio``.

Weights come from the rules file's ``[risk]`` table. Sampling takes the riskiest calls first
and, with ``random_share``, leaves part of the sample to chance so that reviewers also hear
ordinary calls (a sample of only flagged calls cannot tell how good the flagging is).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from analysis.metrics import CallMetrics

Row = TypeVar("Row")


@dataclass(frozen=True, slots=True)
class RiskWeights:
    sensitive_hit: float = 30.0
    sensitive_max: float = 60.0
    missing_required: float = 25.0
    agent_interruption_per_min: float = 8.0
    interruption_max: float = 20.0
    overlap_share: float = 100.0
    overlap_max: float = 10.0
    silence_ratio: float = 0.7
    silence: float = 5.0

    @classmethod
    def from_mapping(cls, values: Mapping[str, float]) -> RiskWeights:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"risk: unknown weight(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(known))})")
        return cls(**{k: float(v) for k, v in values.items()})


@dataclass(frozen=True, slots=True)
class RiskAssessment:
    score: float
    reasons: tuple[str, ...]


def risk_score(sensitive_rules: Sequence[str], missing_required: Sequence[str], metrics: CallMetrics,
               weights: RiskWeights = RiskWeights()) -> RiskAssessment:
    """The score and the reasons behind it; ``sensitive_rules`` has one rule id per hit."""
    points = 0.0
    reasons: list[str] = []
    if sensitive_rules:
        got = min(weights.sensitive_max, weights.sensitive_hit * len(sensitive_rules))
        points += got
        reasons.append(f"{len(sensitive_rules)} sensitive phrase hit(s): {', '.join(sorted(set(sensitive_rules)))}")
    if missing_required:
        points += weights.missing_required * len(missing_required)
        reasons.append(f"required phrase(s) missing: {', '.join(missing_required)}")
    minutes = metrics.duration_s / 60.0
    if metrics.interruptions_agent and minutes > 0:
        per_min = metrics.interruptions_agent / minutes
        points += min(weights.interruption_max, weights.agent_interruption_per_min * per_min)
        reasons.append(f"agent interrupted {metrics.interruptions_agent} time(s) ({per_min:.1f}/min)")
    if metrics.overlap_s and metrics.duration_s > 0:
        share = metrics.overlap_s / metrics.duration_s
        got = min(weights.overlap_max, weights.overlap_share * share)
        if got >= 0.5:
            points += got
            reasons.append(f"{share:.0%} of the call talked over")
    if metrics.duration_s > 0 and metrics.silence_ratio >= weights.silence_ratio:
        points += weights.silence
        reasons.append(f"{metrics.silence_ratio:.0%} silence")
    return RiskAssessment(round(min(100.0, points), 1), tuple(reasons))


# -- sampling ----------------------------------------------------------------------------------


def _field(row: Any, name: str) -> Any:
    return row.get(name) if isinstance(row, Mapping) else getattr(row, name, None)


def _risk_key(row: Any) -> tuple[float, str]:
    risk = _field(row, "risk_score")
    return (-(float(risk) if risk is not None else -1.0), str(_field(row, "recording_id")))


def _chance_key(seed: str, recording_id: str) -> bytes:
    return hashlib.sha256(f"{seed}\0{recording_id}".encode()).digest()


def select_for_review(rows: Iterable[Row], coverage: float, *, random_share: float = 0.0, minimum: int = 0,
                      seed: str = "") -> list[Row]:
    """The QA sample, in review order: ``ceil(coverage × n)`` of the ``n`` rows (at least
    ``minimum``, at most n). The riskiest rows come first (``risk_score`` descending, not yet
    analysed last, equal scores in an order drawn from ``seed``, so that a period with no
    analysis yet gives a random sample, not the lowest ids); ``random_share`` of the sample is instead drawn by
    chance from the rest, deterministically from ``seed`` (same rows and seed → same sample),
    and follows the risky part. Rows are mappings or objects with ``recording_id`` and
    ``risk_score``; they are returned as given."""
    if not 0.0 <= coverage <= 1.0:
        raise ValueError(f"coverage must be between 0 and 1, not {coverage}")
    if not 0.0 <= random_share <= 1.0:
        raise ValueError(f"random_share must be between 0 and 1, not {random_share}")
    ranked = sorted(rows, key=lambda row: (_risk_key(row)[0], _chance_key(seed, str(_field(row, "recording_id")))))
    size = min(len(ranked), max(minimum, math.ceil(coverage * len(ranked))))
    by_chance = int(round(size * random_share))
    risky = ranked[:size - by_chance]
    rest = ranked[size - by_chance:]
    rest.sort(key=lambda row: _chance_key(seed, str(_field(row, "recording_id"))))
    return risky + rest[:by_chance]


def riskiest_per_agent(candidates: Iterable[tuple[str, str]], risk: Mapping[str, float | None], rate: float,
                       rng: random.Random, *, minimum: int = 1, random_share: float = 0.0) -> dict[str, list[str]]:
    """The drop-in for storage.review.sample_per_agent that samples by risk: per agent,
    ``ceil(rate × n)`` of its ``n`` (recording_id, agent_id) candidates (at least ``minimum``),
    riskiest first (``risk``: recording id → score, missing = not analysed yet), with
    ``random_share`` of each agent's sample drawn by chance (from ``rng``). Returns agent →
    recording ids in review order."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"sample rate must be between 0 and 1, not {rate}")
    by_agent: dict[str, set[str]] = {}
    for recording_id, agent in candidates:
        by_agent.setdefault(agent, set()).add(recording_id)
    sampled: dict[str, list[str]] = {}
    for agent in sorted(by_agent):
        rows = [{"recording_id": rid, "risk_score": risk.get(rid)} for rid in sorted(by_agent[agent])]
        seed = str(rng.getrandbits(64))
        picked = select_for_review(rows, rate, random_share=random_share, minimum=minimum, seed=seed)
        if picked:
            sampled[agent] = [str(row["recording_id"]) for row in picked]
    return sampled
