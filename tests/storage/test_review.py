"""QA review storage (storage/review.py): rubric, pure sampling, assignments, scores, cross-reviews."""

from __future__ import annotations

import collections
import random
from pathlib import Path
from typing import Any

import apsw
import pytest

from analysis.risk import riskiest_per_agent
from storage import review
from storage.catalog import Catalog, UnknownRecording
from storage.review import (
    DEFAULT_RUBRIC,
    ReviewError,
    ReviewStore,
    Rubric,
    compare,
    distribute,
)
from tests.storage.test_catalog import T0, metadata, store

RUBRIC = Rubric.parse(DEFAULT_RUBRIC)


@pytest.fixture
def catalog(tmp_path: Path) -> Any:
    with Catalog(tmp_path / "catalog.db") as cat:
        for i in range(6):
            store(cat, f"r{i}", started=T0 + i, agent=f"A{i % 2}")
        yield cat


def test_rubric_parse_and_check() -> None:
    assert [(c.name, c.max_points) for c in RUBRIC.criteria] == [
        ("compliance", 30), ("communication", 30), ("resolution", 20), ("experience", 20)]
    assert RUBRIC.max_total == 100
    assert RUBRIC.check({"compliance": "30", "communication": 0, "resolution": " 7", "experience": 20}) == {
        "compliance": 30, "communication": 0, "resolution": 7, "experience": 20}
    for points, message in (({"compliance": 31}, "compliance: 31 is outside 0-30"),
                            ({"compliance": "x"}, "compliance: 'x' is not a whole number"),
                            ({}, "compliance: no points given"),
                            ({"charm": 3}, "not in the rubric: charm")):
        with pytest.raises(ValueError, match=message):
            RUBRIC.check({**{c.name: 1 for c in RUBRIC.criteria if c.name not in points and points != {}},
                          **points})
    for entries, message in ((["a=0"], "not CRITERION=MAX_POINTS"), (["a"], "not CRITERION=MAX_POINTS"),
                             (["a=3", "a=4"], "listed twice"), ([], "at least one criterion")):
        with pytest.raises(ValueError, match=message):
            Rubric.parse(entries)
    assert Rubric.from_json(RUBRIC.to_json()) == RUBRIC


def test_sampling_rate_minimum_and_determinism() -> None:
    """With nothing analysed yet, the risk-driven sample (analysis/risk.py) is a random one."""
    candidates = [(f"a{i:03d}", "alice") for i in range(100)] + [(f"b{i}", "bob") for i in range(3)] + [
        ("c0", "carol")]
    picked = riskiest_per_agent(candidates, {}, 0.05, random.Random(7))
    assert {agent: len(rids) for agent, rids in picked.items()} == {"alice": 5, "bob": 1, "carol": 1}
    assert set(picked["alice"]) <= {rid for rid, _ in candidates}
    # the same seed gives the same sample whatever order the candidates come in
    assert riskiest_per_agent(list(reversed(candidates)), {}, 0.05, random.Random(7)) == picked
    assert riskiest_per_agent(candidates, {}, 0.05, random.Random(8)) != picked
    assert riskiest_per_agent(candidates, {}, 0.0, random.Random(1), minimum=0) == {}
    assert {a: len(r) for a, r in riskiest_per_agent(candidates, {}, 1.0, random.Random(1)).items()} == {
        "alice": 100, "bob": 3, "carol": 1}
    with pytest.raises(ValueError, match="between 0 and 1"):
        riskiest_per_agent(candidates, {}, 1.5, random.Random(1))


def test_sampling_is_uniform_over_an_agents_calls() -> None:
    candidates = [(f"r{i}", "alice") for i in range(10)]
    rng = random.Random(3)
    counts = collections.Counter(rid for _ in range(2000) for rid in riskiest_per_agent(candidates, {}, 0.2, rng)["alice"])
    assert sum(counts.values()) == 4000
    assert all(300 < counts[f"r{i}"] < 500 for i in range(10)), counts  # 400 expected each


def test_distribute_balances_reviewers() -> None:
    sampled = {"alice": [f"a{i}" for i in range(5)], "bob": ["b0", "b1"]}
    pairs = distribute(sampled, ["quinn", "rita", "quinn"], random.Random(2))
    assert sorted(rid for rid, _ in pairs) == sorted(sampled["alice"] + sampled["bob"])
    load = collections.Counter(reviewer for _, reviewer in pairs)
    assert set(load) == {"quinn", "rita"} and abs(load["quinn"] - load["rita"]) <= 1
    assert {r for rid, r in pairs if rid.startswith("a")} == {"quinn", "rita"}
    with pytest.raises(ValueError, match="no reviewers"):
        distribute(sampled, [], random.Random(2))


def test_assign_score_and_final(catalog: Catalog) -> None:
    store_ = ReviewStore(catalog)
    assignment = store_.assign("r1", "quinn", "ada")
    assert (assignment.kind, assignment.method, assignment.state) == ("review", "manual", "open")
    with pytest.raises(ReviewError, match="quinn already has a review of recording r1"):
        store_.assign("r1", "quinn", "ada")
    with pytest.raises(UnknownRecording):
        store_.assign("nope", "quinn", "ada")
    with pytest.raises(ReviewError, match="belongs to another reviewer"):
        store_.score(assignment.id, "rita", {}, "", RUBRIC)
    with pytest.raises(ReviewError, match="compliance: 40 is outside 0-30"):
        store_.score(assignment.id, "quinn", {"compliance": 40, "communication": 1, "resolution": 1,
                                              "experience": 1}, "", RUBRIC)
    score = store_.score(assignment.id, "quinn", {"compliance": 25, "communication": 20, "resolution": 15,
                                                  "experience": 10}, "  polite, missed the ID check ", RUBRIC)
    assert (score.total, score.max_total, score.comment) == (70.0, 100.0, "polite, missed the ID check")
    with pytest.raises(ReviewError, match="is scored: it cannot be scored"):
        store_.score(assignment.id, "quinn", score.points, "", RUBRIC)
    with catalog.reader() as reader:
        assert review.get_assignment(reader, assignment.id).state == "scored"
        assert review.scores_for(reader, "r1") == [score]
        assert review.is_assigned(reader, "quinn", "r1") and not review.is_assigned(reader, "rita", "r1")
    # scores are append-only
    with pytest.raises(apsw.ConstraintError, match="append-only"):
        catalog.writer.call(lambda conn: conn.execute("UPDATE qa_scores SET total = 100"))


def test_only_finished_recordings_are_assigned(catalog: Catalog) -> None:
    meta = metadata("live")
    catalog.begin_recording("live", meta["call_id"], T0 + 100, meta)
    with pytest.raises(ReviewError, match="recording live is active: only finished recordings"):
        ReviewStore(catalog).assign("live", "quinn", "ada")


def test_withdraw_then_reassign(catalog: Catalog) -> None:
    store_ = ReviewStore(catalog)
    first = store_.assign("r2", "quinn", "ada")
    assert store_.withdraw(first.id).state == "withdrawn"
    with catalog.reader() as reader:
        assert not review.is_assigned(reader, "quinn", "r2")
    again = store_.assign("r2", "quinn", "ada")
    assert again.id != first.id
    with pytest.raises(ReviewError, match="no assignment 999"):
        store_.withdraw(999)


def test_cross_review_uses_the_first_rubric_and_compares(catalog: Catalog) -> None:
    store_ = ReviewStore(catalog)
    first = store_.score(store_.assign("r3", "quinn", "ada").id, "quinn",
                         {"compliance": 30, "communication": 20, "resolution": 10, "experience": 15}, "", RUBRIC)
    with pytest.raises(ReviewError, match="a cross-review needs a second reviewer"):
        store_.assign_cross(first.id, "quinn", "ada")
    cross = store_.assign_cross(first.id, "rita", "ada")
    assert (cross.kind, cross.cross_of, cross.recording_id) == ("cross", first.id, "r3")
    changed = Rubric.parse(["accuracy=50", "tone=50"])  # the configuration changed meanwhile
    second = store_.score(cross.id, "rita", {"compliance": 20, "communication": 25, "resolution": 10,
                                             "experience": 15}, "missed the disclosure", changed)
    assert second.rubric == RUBRIC
    result = compare(first, second)
    assert result.difference == {"compliance": -10, "communication": 5, "resolution": 0, "experience": 0}
    assert (result.total_difference, result.largest_gap()) == (-5.0, 10)
    with catalog.reader() as reader:
        assert review.cross_reviews_of(reader, first.id) == [second]
        assert [a.kind for a in review.assignments(reader, recording_id="r3")] == ["cross", "review"]


def test_sample_candidates_skip_assigned_and_agentless(catalog: Catalog) -> None:
    store(catalog, "noagent", started=T0 + 10, agent=None)
    ReviewStore(catalog).assign("r0", "quinn", "ada")
    with catalog.reader() as reader:
        found = review.sample_candidates(reader, T0, T0 + 60)
        assert found == [("r1", "A1"), ("r2", "A0"), ("r3", "A1"), ("r4", "A0"), ("r5", "A1")]
        assert review.sample_candidates(reader, T0 + 2, T0 + 4) == [("r2", "A0"), ("r3", "A1")]
        with pytest.raises(ValueError, match="needs a date range"):
            review.sample_candidates(reader, T0 + 5, T0)
    pairs = distribute(riskiest_per_agent(found, {}, 0.5, random.Random(1)), ["quinn", "rita"], random.Random(1))
    made = ReviewStore(catalog).assign_many(pairs, "ada", method="sample")
    assert {a.method for a in made} == {"sample"} and len(made) == 3  # A0: ceil(0.5 × 2), A1: ceil(0.5 × 3)
