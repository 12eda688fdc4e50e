"""QA review in the console (issue 5): admins assign by hand or by a random sample per agent,
reviewers score with the rubric and comment, a second reviewer cross-reviews (blind) and the
difference is shown; reviewers reach only their own assignments; everything is audited."""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from typing import Any

import pytest

from analysis.risk import riskiest_per_agent
from analysis.store import risk_scores
from storage import review
from tests.webadmin.conftest import make_user
from tests.webadmin.recordings_helpers import (
    SmallAppliance,
    audit_of,
    grant_for,
    logged_in,
    post,
    small_appliance,
)

CALLS = [("+49301110001", "7001", 2.0), ("+49301110002", "7001", 2.0), ("+49301110003", "7001", 2.0),
         ("+49301110004", "7002", 2.0), ("+49301110005", "7002", 2.0), ("+49301110006", "7003", 2.0)]
FROM, TO = "2026-02-02", "2026-02-02"     # the generated calls' day (plans start 2026-02-02T02:40Z)
POINTS = {"compliance": 25, "communication": 20, "resolution": 15, "experience": 10}


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmallAppliance]:
    with small_appliance(tmp_path_factory.mktemp("review"), CALLS) as made:
        yield made


@pytest.fixture(scope="module")
def app(box: SmallAppliance) -> Any:
    return box.app()


def points_form(points: dict[str, int], comment: str = "") -> dict[str, Any]:
    return {**{f"points.{name}": str(value) for name, value in points.items()}, "comment": comment}


def assignment_ids(html: str) -> list[int]:
    return [int(x) for x in re.findall(r'<tr class="assignment" data-assignment-id="(\d+)"', html)]


def test_manual_assignment_scoring_and_cross_review(box: SmallAppliance, app: Any) -> None:
    admin, admin_user = box.client(app, "admin")
    first_qa, first = logged_in(app, box.ctx, "qa")
    second_qa, second = logged_in(app, box.ctx, "qa")
    rid = box.recording_ids[5]

    assert post(admin, "/review/assign", {"recording_id": rid, "reviewer": first.username}).status_code == 302
    entry = audit_of(box.ctx, actor=admin_user.username, action="review.assign")[-1]
    assert entry.object == rid and f'"reviewer":"{first.username}"' in entry.detail
    # only QA reviewers can be given recordings
    refused = post(admin, "/review/assign", {"recording_id": rid, "reviewer": admin_user.username})
    assert refused.status_code == 400 and "is not an active QA reviewer" in refused.get_data(as_text=True)

    queue = first_qa.get("/review").get_data(as_text=True)
    [assignment_id] = assignment_ids(queue)
    assert assignment_ids(second_qa.get("/review").get_data(as_text=True)) == []
    # the reviewer listens (reason first), then scores
    grant = grant_for(first_qa, rid, "QA review of the weekly sample")
    assert first_qa.get(f"/recordings/{rid}/audio?grant={grant}", headers={"Range": "bytes=0-9"}).status_code == 206
    form = first_qa.get(f"/review/assignments/{assignment_id}").get_data(as_text=True)
    assert 'id="score-form"' in form and 'max="30"' in form and 'name="points.experience"' in form
    bad = post(first_qa, f"/review/assignments/{assignment_id}/score", points_form({**POINTS, "compliance": 31}))
    assert bad.status_code == 400 and "compliance: 31 is outside 0-30" in bad.get_data(as_text=True)
    # another reviewer can neither see nor score this assignment (IDOR)
    assert second_qa.get(f"/review/assignments/{assignment_id}").status_code == 403
    assert post(second_qa, f"/review/assignments/{assignment_id}/score", points_form(POINTS)).status_code == 403
    done = post(first_qa, f"/review/assignments/{assignment_id}/score", points_form(POINTS, "missed the ID check"))
    assert done.status_code == 302
    scored = audit_of(box.ctx, actor=first.username, action="review.score")[-1]
    assert scored.object == rid and '"total":70.0' in scored.detail
    again = post(first_qa, f"/review/assignments/{assignment_id}/score", points_form(POINTS))
    assert again.status_code == 400 and "cannot be scored" in again.get_data(as_text=True)
    with box.ctx.catalog.reader() as reader:
        [score] = review.scores_for(reader, rid)
    assert second_qa.get(f"/review/scores/{score.id}").status_code == 403

    # cross-review: blind until given, then the difference is shown
    assert post(admin, f"/review/scores/{score.id}/cross", {"reviewer": first.username}).status_code == 400
    assert post(admin, f"/review/scores/{score.id}/cross", {"reviewer": second.username}).status_code == 302
    [cross_id] = assignment_ids(second_qa.get("/review").get_data(as_text=True))
    assert second_qa.get(f"/recordings/{rid}").status_code == 200          # the cross-reviewer may listen
    blind = second_qa.get(f"/review/assignments/{cross_id}").get_data(as_text=True)
    assert 'id="score-form"' in blind and "missed the ID check" not in blind and 'class="comparison"' not in blind
    assert second_qa.get(f"/review/scores/{score.id}").status_code == 403   # not before their own score
    cross_points = {"compliance": 10, "communication": 20, "resolution": 15, "experience": 12}
    assert post(second_qa, f"/review/assignments/{cross_id}/score",
                points_form(cross_points, "no disclosure given")).status_code == 302
    shown = second_qa.get(f"/review/assignments/{cross_id}").get_data(as_text=True)
    differences = dict(re.findall(r'class="difference[^"]*" data-criterion="(\w+)">([+-]\d+)<', shown))
    assert differences == {"compliance": "-15", "communication": "+0", "resolution": "+0", "experience": "+2"}
    assert re.search(r'class="total-difference">-13', shown) and "differs by more than 10 points" in shown
    page = admin.get(f"/review/scores/{score.id}").get_data(as_text=True)
    assert "Cross-review by " + second.username in page and "no disclosure given" in page
    assert second_qa.get(f"/review/scores/{score.id}").status_code == 200
    assert audit_of(box.ctx, actor=admin_user.username, action="review.cross_assign")[-1].object == rid
    # the admin and auditors see every score on the recording page
    auditor, _ = box.client(app, "auditor")
    assert f"/review/scores/{score.id}" in auditor.get(f"/recordings/{rid}").get_data(as_text=True)


def test_the_sample_takes_each_agents_riskiest_recording_first(box: SmallAppliance, app: Any) -> None:
    """Issue 9: the analysis' risk score drives the sample (riskiest first, a share by chance)."""
    admin, _ = box.client(app, "admin")
    reviewer = make_user(box.ctx, "qa")[0]
    with box.ctx.catalog.reader() as reader:
        left = review.sample_candidates(reader, 1_770_000_000.0 - 86400, 1_770_000_000.0 + 86400)
    by_agent: dict[str, list[str]] = {}
    for rid, agent in left:
        by_agent.setdefault(agent, []).append(rid)
    riskiest = {agent: sorted(rids)[-1] for agent, rids in by_agent.items()}   # not the first by id
    assert any(len(rids) > 1 for rids in by_agent.values()), "the test needs a choice to make"

    def score(conn: Any) -> None:
        for agent, rids in by_agent.items():
            for rid in rids:
                conn.execute(
                    "INSERT OR REPLACE INTO call_analysis (recording_id, line, agent_channel, duration_s, "
                    "duration_band, talk_agent_s, talk_customer_s, silence_ratio, overlap_s, "
                    "interruptions_agent, interruptions_customer, interruption_rate, sensitive_hits, "
                    "risk_score, model, analysed_at) VALUES (?, 'retail', 1, 60, 'short', 30, 30, 0.1, 0, "
                    "0, 0, 0, 0, ?, 'test', 0)", (rid, 90.0 if rid == riskiest[agent] else 5.0))
    box.ctx.catalog.writer.call(score)
    # one per agent (a tiny rate, minimum 1): the 20 % share by chance rounds to none
    reply = post(admin, "/review/sample", {"from": FROM, "to": TO, "rate": "0.001", "seed": "7",
                                           "reviewers": [reviewer]})
    assert reply.status_code == 302
    with box.ctx.catalog.reader() as reader:
        made = {a.recording_id for a in review.assignments(reader, state="open") if a.reviewer == reviewer}
    assert made == set(riskiest.values())


def test_random_sample_per_agent_is_reproducible(box: SmallAppliance, app: Any) -> None:
    admin, admin_user = box.client(app, "admin")
    reviewers = [make_user(box.ctx, "qa")[0] for _ in range(2)]
    with box.ctx.catalog.reader() as reader:
        candidates = review.sample_candidates(reader, 1_770_000_000.0 - 86400, 1_770_000_000.0 + 86400)
        risk = risk_scores(reader.conn, [rid for rid, _ in candidates])
    rng = random.Random(42)
    sampled = riskiest_per_agent(candidates, risk, 0.5, rng, minimum=1, random_share=0.2)
    expected = review.distribute(sampled, reviewers, rng)
    reply = post(admin, "/review/sample", {"from": FROM, "to": TO, "rate": "0.5", "seed": "42",
                                           "reviewers": reviewers})
    assert reply.status_code == 302
    with box.ctx.catalog.reader() as reader:
        made = [(a.recording_id, a.reviewer) for a in review.assignments(reader, state="open")
                if a.method == "sample" and a.reviewer in reviewers]
    assert sorted(made) == sorted(expected) and made
    by_agent = {rid: agent for rid, agent in candidates}
    per_agent: dict[str, int] = {}
    for rid, _ in made:
        per_agent[by_agent[rid]] = per_agent.get(by_agent[rid], 0) + 1
    # ceil(0.5 × calls not yet assigned) of each agent, at least one
    for agent in {a for _, a in candidates}:
        assert per_agent[agent] == max(1, -(-sum(1 for _, a in candidates if a == agent) // 2))
    entry = audit_of(box.ctx, actor=admin_user.username, action="review.sample")[-1]
    assert '"seed":42' in entry.detail and f'"assigned":{len(made)}' in entry.detail
    # a second draw skips what is assigned now
    with box.ctx.catalog.reader() as reader:
        left = review.sample_candidates(reader, 1_770_000_000.0 - 86400, 1_770_000_000.0 + 86400)
    assert not {rid for rid, _ in made} & {rid for rid, _ in left}
    for form, message in (({"from": "bad", "to": TO, "reviewers": reviewers}, "from: a date YYYY-MM-DD"),
                          ({"from": FROM, "to": TO, "rate": "2", "reviewers": reviewers}, "rate: a share between 0 and 1"),
                          ({"from": FROM, "to": TO}, "choose at least one reviewer")):
        bad = post(admin, "/review/sample", form)
        assert bad.status_code == 400 and message in bad.get_data(as_text=True)


def test_withdraw_and_roles(box: SmallAppliance, app: Any) -> None:
    admin, _ = box.client(app, "admin")
    qa_client, qa = logged_in(app, box.ctx, "qa")
    rid = box.recording_ids[0]
    assert post(admin, "/review/assign", {"recording_id": rid, "reviewer": qa.username}).status_code == 302
    [assignment_id] = assignment_ids(qa_client.get("/review").get_data(as_text=True))
    assert qa_client.get(f"/recordings/{rid}").status_code == 200
    assert post(qa_client, f"/review/assignments/{assignment_id}/withdraw").status_code == 403   # admins only
    assert post(admin, f"/review/assignments/{assignment_id}/withdraw").status_code == 302
    assert qa_client.get(f"/recordings/{rid}").status_code == 403
    assert post(qa_client, f"/review/assignments/{assignment_id}/score", points_form(POINTS)).status_code == 400
    agent, _ = box.client(app, "agent", "agent-7001")
    assert agent.get("/review").status_code == 403
    auditor, _ = box.client(app, "auditor")
    html = auditor.get("/review").get_data(as_text=True)
    assert assignment_id in assignment_ids(html) and 'id="assign-form"' not in html
    assert post(auditor, "/review/assign", {"recording_id": rid, "reviewer": qa.username}).status_code == 403


def test_a_bad_rubric_stops_the_console_naming_the_setting(box: SmallAppliance) -> None:
    with pytest.raises(ValueError, match=r"review\.rubric: 'clarity' is not CRITERION=MAX_POINTS"):
        box.app(review={"rubric": ["compliance=50", "clarity"]})
