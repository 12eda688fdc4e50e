"""Recordings in the console (issue 5): search with filters, paging and masking per role, the
recording page, object-level access (agents: own calls; QA: assigned calls), the reason for
access before playback, tags and notes, the waveform — and the audit entries of all of it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from storage.audit import AuditEntry
from storage.masking import mask_number
from storage.review import ReviewStore
from tests.gen.callgen import DtmfPress, LegPlan
from tests.webadmin.recordings_helpers import (
    SmallAppliance,
    audit_of,
    grant_for,
    logged_in,
    post,
    small_appliance,
)
from webadmin.authz import ConsoleUser
from webadmin.playback import valid_grant
from webadmin.waveform import compute_peaks, slice_edges

CALLS = [
    # agent-7001's call with a 400 ms loss gap on the caller's leg and a DTMF key
    ("+493012345601", "7001", 3.0, {"caller": LegPlan(440.0, drop=set(range(60, 80))),
                                    "dtmf": [DtmfPress(2.0, "5")]}),
    ("+493012345602", "7002", 2.0),
    ("+493012345603", "7001", 2.0),
    ("+493012345604", "7003", 2.0),
]


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmallAppliance]:
    with small_appliance(tmp_path_factory.mktemp("recordings"), CALLS) as made:
        yield made


@pytest.fixture(scope="module")
def app(box: SmallAppliance) -> Any:
    return box.app()


def result_ids(html: str) -> list[str]:
    return re.findall(r'<tr class="result" data-recording-id="([^"]+)"', html)


def last_entry(box: SmallAppliance, user: ConsoleUser, action: str | None = None) -> AuditEntry:
    found = audit_of(box.ctx, actor=user.username, action=action)
    assert found, f"no audit entry by {user.username} ({action})"
    return found[-1]


# -- search ----------------------------------------------------------------------------------


def test_admin_finds_a_call_by_part_of_its_number_unmasked(box: SmallAppliance, app: Any) -> None:
    client, admin = box.client(app, "admin")
    reply = client.get("/recordings?q=2345602")
    html = reply.get_data(as_text=True)
    assert reply.status_code == 200 and result_ids(html) == [box.recording_ids[1]]
    assert "+493012345602" in html
    entry = last_entry(box, admin, "recording.search")
    assert (entry.object, entry.outcome) == ("2345602", "ok") and '"results":1' in entry.detail
    # the results can be taken to an export request (issue 6), with the same search
    assert 'id="export-results" href="/exports/new?q=2345602' in html
    assert client.get("/exports/new?q=2345602").status_code == 200


def test_only_roles_that_may_request_exports_get_the_link(box: SmallAppliance, app: Any) -> None:
    for role, shown in (("auditor", True), ("qa", False)):
        client, _ = box.client(app, role)
        html = client.get("/recordings").get_data(as_text=True)
        assert ('id="export-results"' in html) is shown, role
    agent, _ = box.client(app, "agent", "agent-7001")
    assert 'id="export-results"' not in agent.get("/recordings").get_data(as_text=True)


def test_agent_sees_only_their_calls_with_masked_numbers(box: SmallAppliance, app: Any) -> None:
    client, agent = box.client(app, "agent", "agent-7001")
    own = {box.recording_ids[0], box.recording_ids[2]}
    html = client.get("/recordings").get_data(as_text=True)
    assert set(result_ids(html)) == own
    assert "+493012345601" not in html and mask_number("+493012345601") in html
    # another agent's id in the filter changes nothing; another agent's number finds nothing
    assert set(result_ids(client.get("/recordings?agent=agent-7002").get_data(as_text=True))) == own
    assert result_ids(client.get("/recordings?q=2345602").get_data(as_text=True)) == []
    assert '"scope":["agent_id"]' in last_entry(box, agent, "recording.search").detail


def test_agent_account_without_agent_id_sees_nothing(box: SmallAppliance, app: Any) -> None:
    client, _ = logged_in(app, box.ctx, "agent")
    html = client.get("/recordings").get_data(as_text=True)
    assert 'id="no-scope"' in html and result_ids(html) == []


def test_qa_search_lists_only_assigned_recordings(box: SmallAppliance, app: Any) -> None:
    client, qa = logged_in(app, box.ctx, "qa")
    assert result_ids(client.get("/recordings").get_data(as_text=True)) == []
    ReviewStore(box.ctx.catalog).assign(box.recording_ids[3], qa.username, "admin-test")
    html = client.get("/recordings").get_data(as_text=True)
    assert result_ids(html) == [box.recording_ids[3]] and "+493012345604" not in html


@pytest.mark.parametrize(("query", "expected"), [
    ("completeness=loss", [0]),
    ("completeness=full", [3, 2, 1]),
    ("min_duration=2.5", [0]),
    ("max_duration=2.5&tags=small", [3, 2, 1]),
    ("tags=small,nope", []),
    ("party=2345603", [2]),
    ("agent=agent-7001&order=started_at", [0, 2]),
    ("direction=unknown&consent=unknown&q=pbx.example", [3, 2, 1, 0]),
    ("from=2026-02-02&to=2026-02-02", [3, 2, 1, 0]),
    ("to=2026-02-01", []),
])
def test_filters(box: SmallAppliance, app: Any, query: str, expected: list[int]) -> None:
    client, _ = box.client(app, "auditor")
    reply = client.get(f"/recordings?{query}")
    assert reply.status_code == 200
    assert result_ids(reply.get_data(as_text=True)) == [box.recording_ids[i] for i in expected]


@pytest.mark.parametrize(("query", "message"), [
    ("from=yesterday", "Dates are YYYY-MM-DD"),
    ("from=2026-03-01&to=2026-02-01", "first day is after the last day"),
    ("completeness=most", "Choose one of: full, loss, partial"),
    ("min_duration=long", "Durations are seconds"),
    ("order=caller", "Unknown sort order"),
])
def test_bad_filters_are_named(box: SmallAppliance, app: Any, query: str, message: str) -> None:
    client, user = box.client(app, "auditor")
    reply = client.get(f"/recordings?{query}")
    assert reply.status_code == 400 and message in reply.get_data(as_text=True)
    assert last_entry(box, user, "recording.search").outcome == "refused"


def test_paging_and_sorting(box: SmallAppliance) -> None:
    app = box.app(recordings={"page_size": 2})
    client, _ = logged_in(app, box.ctx, "admin")
    ids = box.recording_ids
    first = client.get("/recordings?order=started_at").get_data(as_text=True)
    assert result_ids(first) == [ids[0], ids[1]] and 'id="next-page"' in first
    second = client.get("/recordings?order=started_at&page=2").get_data(as_text=True)
    assert result_ids(second) == [ids[2], ids[3]] and 'id="next-page"' not in second
    assert result_ids(client.get("/recordings?order=-duration_s").get_data(as_text=True))[0] == ids[0]
    assert result_ids(client.get("/recordings").get_data(as_text=True)) == [ids[3], ids[2]]  # newest first


# -- the recording page ----------------------------------------------------------------------


def test_recording_page_shows_metadata_streams_gaps_and_dtmf(box: SmallAppliance, app: Any) -> None:
    client, admin = box.client(app, "admin")
    rid = box.recording_ids[0]
    html = client.get(f"/recordings/{rid}").get_data(as_text=True)
    assert "+493012345601" in html and "agent-7001" in html
    gaps = re.findall(r'class="gap" data-channel="(\d)" data-offset="([\d.]+)" data-duration="([\d.]+)"', html)
    assert gaps and gaps[0][0] == "0" and 0.3 <= float(gaps[0][2]) <= 0.5   # the 20 dropped packets
    assert re.search(r'<table id="dtmf">.*<td class="mono">5</td>', html, re.S)
    streams = re.findall(r'<tr><td class="mono">0x[0-9a-f]+</td><td>(caller|callee)</td>.*?<td>(\d+)</td><td>(\d+)</td>',
                         html, re.S)
    assert sorted(streams) == [("callee", "149", "0"), ("caller", "131", "20")]   # (leg, packets, lost)
    assert 'id="reason-form"' in html and 'id="audio"' not in html   # no player before a reason
    entry = last_entry(box, admin, "recording.view")
    assert (entry.object, entry.outcome) == (rid, "ok")


def test_agent_page_masks_numbers_and_dtmf(box: SmallAppliance, app: Any) -> None:
    client, _ = box.client(app, "agent", "agent-7001")
    html = client.get(f"/recordings/{box.recording_ids[0]}").get_data(as_text=True)
    assert "+493012345601" not in html and mask_number("+493012345601") in html
    assert re.search(r'<table id="dtmf">.*<td class="mono">•</td>', html, re.S)
    assert not re.search(r'<table id="dtmf">.*<td class="mono">5</td>', html, re.S)


# -- object-level access ---------------------------------------------------------------------


def test_agent_cannot_reach_another_agents_recording_by_id(box: SmallAppliance, app: Any) -> None:
    client, agent = box.client(app, "agent", "agent-7001")
    own, other = box.recording_ids[0], box.recording_ids[1]   # recording 1 is agent-7002's
    grant = grant_for(client, own)
    for method, path in (("get", f"/recordings/{other}"), ("get", f"/recordings/{other}/audio?grant={grant}"),
                         ("get", f"/recordings/{other}/waveform.json?grant={grant}"),
                         ("post", f"/recordings/{other}/access"), ("get", "/recordings/no-such-recording")):
        reply = post(client, path, {"reason": "curious about this one"}) if method == "post" else client.get(
            path, headers={"Range": "bytes=0-99"})
        assert reply.status_code == 403, path
        entry = last_entry(box, agent)
        assert entry.outcome == "denied" and entry.object in (other, "no-such-recording"), path
    assert client.get(f"/recordings/{other}/download?grant={grant}").status_code == 403   # role: no download
    # the agent's own recording plays with the same grant
    assert client.get(f"/recordings/{own}/audio?grant={grant}", headers={"Range": "bytes=0-99"}).status_code == 206


def test_unknown_recording_is_404_for_roles_that_see_everything(box: SmallAppliance, app: Any) -> None:
    client, admin = box.client(app, "admin")
    assert client.get("/recordings/no-such-recording").status_code == 404
    assert last_entry(box, admin).outcome == "not_found"


def test_a_grant_serves_only_its_owner(box: SmallAppliance, app: Any) -> None:
    first, _ = box.client(app, "admin")
    second, _ = box.client(app, "auditor")      # may hear the recording, but with a reason of their own
    rid = box.recording_ids[2]
    grant = grant_for(first, rid)
    assert second.get(f"/recordings/{rid}/audio?grant={grant}").status_code == 403
    assert first.get(f"/recordings/{rid}/audio?grant={grant}").status_code == 200


def test_qa_opens_only_assigned_recordings(box: SmallAppliance, app: Any) -> None:
    client, qa = logged_in(app, box.ctx, "qa")
    rid = box.recording_ids[1]
    assert client.get(f"/recordings/{rid}").status_code == 403
    assert last_entry(box, qa).outcome == "denied"
    reviews = ReviewStore(box.ctx.catalog)
    assignment = reviews.assign(rid, qa.username, "admin-test")
    assert client.get(f"/recordings/{rid}").status_code == 200
    grant = grant_for(client, rid)
    assert client.get(f"/recordings/{rid}/audio?grant={grant}", headers={"Range": "bytes=44-143"}).status_code == 206
    reviews.withdraw(assignment.id)
    assert client.get(f"/recordings/{rid}").status_code == 403
    assert client.get(f"/recordings/{rid}/audio?grant={grant}").status_code == 403


# -- reason for access -----------------------------------------------------------------------


def test_playback_needs_a_reason_which_is_audited(box: SmallAppliance, app: Any) -> None:
    client, auditor = box.client(app, "auditor")
    rid = box.recording_ids[3]
    reply = client.get(f"/recordings/{rid}/audio")
    assert reply.status_code == 403
    assert "no reason for access given" in last_entry(box, auditor).reason
    assert client.get(f"/recordings/{rid}/audio?grant=abc").status_code == 403
    short = post(client, f"/recordings/{rid}/access", {"reason": "   why  "})
    assert short.status_code == 400
    refused = last_entry(box, auditor, "recording.play")
    assert (refused.outcome, refused.reason) == ("refused", "why")
    # without the CSRF token the reason is not even looked at
    assert client.post(f"/recordings/{rid}/access", data={"reason": "complaint 4711 amount"}).status_code == 400
    grant = grant_for(client, rid, reason="complaint 4711:   amount disputed")
    entry = last_entry(box, auditor, "recording.play")
    assert (entry.seq, entry.object, entry.outcome, entry.reason) == (grant, rid, "ok", "complaint 4711: amount disputed")
    page = client.get(f"/recordings/{rid}?grant={grant}").get_data(as_text=True)
    assert f'src="/recordings/{rid}/audio?grant={grant}"' in page and 'id="reason-form"' not in page
    before = len(audit_of(box.ctx, actor=auditor.username))
    assert client.get(f"/recordings/{rid}/audio?grant={grant}", headers={"Range": "bytes=0-9"}).status_code == 206
    assert len(audit_of(box.ctx, actor=auditor.username)) == before   # ranges continue the audited playback
    download = client.get(f"/recordings/{rid}/download?grant={grant}")
    assert download.status_code == 200 and download.headers["Content-Disposition"].startswith("attachment")
    entry = last_entry(box, auditor, "recording.download")
    assert (entry.object, entry.reason) == (rid, "complaint 4711: amount disputed")


def test_grant_rules() -> None:
    user = ConsoleUser("ann", "auditor", None)

    def play(**changes: Any) -> AuditEntry:
        fields = {"seq": 7, "ts": 1000.0, "actor": "ann", "role": "auditor", "action": "recording.play",
                  "object": "r1", "outcome": "ok", "reason": "complaint", "detail": "{}", "prev_hash": "0",
                  "hash": "1", **changes}
        return AuditEntry(**fields)

    assert valid_grant(play(), user, "r1", 60.0, 1059.0) is None
    assert "expired" in str(valid_grant(play(), user, "r1", 60.0, 1061.0))
    assert "not a playback of this recording" in str(valid_grant(play(), user, "r2", 60.0, 1000.0))
    assert "not a playback" in str(valid_grant(play(action="recording.view"), user, "r1", 60.0, 1000.0))
    assert "not a playback" in str(valid_grant(play(outcome="refused"), user, "r1", 60.0, 1000.0))
    assert "someone else" in str(valid_grant(play(actor="bob"), user, "r1", 60.0, 1000.0))
    assert "someone else" in str(valid_grant(play(role="admin"), user, "r1", 60.0, 1000.0))
    assert valid_grant(None, user, "r1", 60.0, 1000.0) == "no such grant"


# -- tags and notes --------------------------------------------------------------------------


def test_tags_and_notes_by_role(box: SmallAppliance, app: Any) -> None:
    rid = box.recording_ids[2]
    qa_client, qa = logged_in(app, box.ctx, "qa")
    ReviewStore(box.ctx.catalog).assign(rid, qa.username, "admin-test")
    assert post(qa_client, f"/recordings/{rid}/tags", {"tag": "training"}).status_code == 302
    assert post(qa_client, f"/recordings/{rid}/tags", {"tag": "two words"}).status_code == 400
    assert post(qa_client, f"/recordings/{rid}/notes", {"text": "good greeting, weak close"}).status_code == 302
    note_id = box.ctx.catalog.get(rid).notes[-1].id
    assert post(qa_client, f"/recordings/{rid}/notes/{note_id}", {"text": "good greeting, strong close"}).status_code == 302
    edit = last_entry(box, qa, "recording.note_edit")
    assert '"before":"good greeting, weak close"' in edit.detail and '"after":"good greeting, strong close"' in edit.detail
    detail = box.ctx.catalog.get(rid)
    assert "training" in detail.recording.tags and detail.notes[-1].text == "good greeting, strong close"
    admin_client, _ = box.client(app, "admin")
    html = admin_client.get("/recordings?q=strong+close").get_data(as_text=True)
    assert result_ids(html) == [rid]                                             # notes are searchable
    assert post(admin_client, f"/recordings/{rid}/notes/{note_id}", {"text": "rewritten"}).status_code == 403
    assert post(admin_client, f"/recordings/{rid}/tags/remove", {"tag": "training"}).status_code == 302
    assert "training" not in box.ctx.catalog.get(rid).recording.tags
    agent_client, _ = box.client(app, "agent", "agent-7001")
    auditor_client, _ = box.client(app, "auditor")
    assert post(agent_client, f"/recordings/{rid}/tags", {"tag": "mine"}).status_code == 403
    assert post(auditor_client, f"/recordings/{rid}/notes", {"text": "auditor was here"}).status_code == 403
    other_qa, _ = logged_in(app, box.ctx, "qa")
    assert post(other_qa, f"/recordings/{rid}/tags", {"tag": "sneaky"}).status_code == 403   # not assigned
    assert "sneaky" not in box.ctx.catalog.get(rid).recording.tags


# -- the waveform ----------------------------------------------------------------------------


def exported(box: SmallAppliance, rid: str, out: Path) -> tuple[np.ndarray, int]:
    """The recording as `recorderd export-audio` writes it, as samples."""
    box.export_audio(rid, out)
    data, rate = sf.read(str(out), dtype="int16", always_2d=True)
    return data, rate


def test_waveform_peaks_are_the_audios_extremes(box: SmallAppliance, app: Any, tmp_path: Path) -> None:
    client, _ = box.client(app, "auditor")
    rid = box.recording_ids[0]
    grant = grant_for(client, rid)
    reply = client.get(f"/recordings/{rid}/waveform.json?grant={grant}")
    assert reply.status_code == 200
    peaks = reply.get_json()
    samples, rate = exported(box, rid, tmp_path / "ref.wav")
    assert (peaks["rate"], peaks["channels"], peaks["frames"], peaks["points"]) == (rate, 2, len(samples), 1000)
    edges = slice_edges(len(samples), 1000)
    for ch in range(2):
        low = [samples[a:b, ch].min() / 32768 for a, b in zip(edges[:-1], edges[1:], strict=True)]
        high = [samples[a:b, ch].max() / 32768 for a, b in zip(edges[:-1], edges[1:], strict=True)]
        assert np.allclose(peaks["low"][ch], low, atol=6e-4) and np.allclose(peaks["high"][ch], high, atol=6e-4)
    # the caller's 400 ms loss gap is silence in channel 0, while the callee keeps talking
    gap = box.ctx.catalog.get(rid).metadata["completeness"]["legs"][0]["gaps"][0]
    inside = slice(int((gap["offset_s"] + 0.05) / (len(samples) / rate) * 1000),
                   int((gap["offset_s"] + gap["duration_s"] - 0.05) / (len(samples) / rate) * 1000))
    assert max(peaks["high"][0][inside]) < 0.01 and min(peaks["high"][1][inside]) > 0.1


def test_peaks_do_not_depend_on_chunking() -> None:
    rng = np.random.default_rng(5)
    pcm = rng.integers(-32768, 32767, size=(10_007, 2), dtype=np.int16)
    data = pcm.tobytes()
    whole = compute_peaks([data], frames=len(pcm), channels=2, rate=8000, points=333)
    pieces = [data[i:i + 997] for i in range(0, len(data), 997)]      # odd sizes split frames
    split = compute_peaks(pieces, frames=len(pcm), channels=2, rate=8000, points=333)
    assert np.array_equal(whole.low, split.low) and np.array_equal(whole.high, split.high)
    edges = slice_edges(len(pcm), 333)
    assert np.array_equal(whole.high[1], np.array([pcm[a:b, 1].max() for a, b in zip(edges[:-1], edges[1:], strict=True)]) / 32768)
    short = compute_peaks([pcm[:10].tobytes()], frames=10, channels=2, rate=8000, points=333)
    assert short.points == 10
    with pytest.raises(ValueError, match="ended after 10 of 20 frames"):
        compute_peaks([pcm[:10].tobytes()], frames=20, channels=2, rate=8000, points=5)
