"""storage/consent.py: announcements, their links to recordings, checks, the report."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apsw
import pytest

from storage.audit import AuditLog
from storage.catalog import Catalog
from storage.consent import (
    OUTCOMES,
    Announcement,
    LinkPolicy,
    RecordingFacts,
    add_announcement,
    announcement_of,
    consent_report,
    link_new_announcements,
    list_announcements,
    numbers_match,
    pending_checks,
    pick_announcement,
    record_check,
)
from tests.storage.test_catalog import metadata

T0 = 1_714_557_600.0          # 2024-05-01T10:00:00Z
CALLER = "+8613800001111"
POLICY = LinkPolicy(before_s=60.0, after_s=30.0, header=None, match_digits=8)
UNKNOWN = {"played": None, "audible": None, "offset_s": None}
HEARD = {"audible": True, "offset_s": 0.52, "channel": 1, "prompt": "zh", "score": 0.98, "coverage": 0.97}
NOT_HEARD = {"audible": False, "offset_s": None, "channel": None, "prompt": None, "score": 0.12, "coverage": 0.01}


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[Catalog]:
    with Catalog(tmp_path / "catalog.db") as cat:
        yield cat


def store(catalog: Catalog, rid: str, *, started: float, caller: str = CALLER, call_id: str | None = None,
          headers: dict[str, str] | None = None) -> None:
    meta = metadata(rid, caller=caller, started=started, call_id=call_id, consent=dict(UNKNOWN))
    meta["sip_headers"] = headers or {}
    catalog.finish_recording(rid, meta, {"path": f"{rid}.rdv", "size": 1, "sha256": "00" * 32},
                             key_id="00" * 16, kek_id="kek", wrapped_key=os.urandom(61))


def announcement(call_id: str = "ann-1@pbx", *, caller: str = "13800001111", invited: float = T0,
                 outcome: str = "refer_ok", complete: bool = True, **extra: Any) -> Announcement:
    return Announcement(call_id=call_id, caller=caller, called="4001234", invited_at=invited,
                        ended_at=invited + 6.0, outcome=outcome, prompt="zh", rule="default",
                        prompt_started_at=invited + 0.6, prompt_played_s=4.9 if complete else 1.0,
                        prompt_complete=complete, trunk="10.0.0.5", **extra)


def consent_of(catalog: Catalog, rid: str) -> tuple[Any, Any, dict[str, Any]]:
    detail = catalog.get(rid)
    assert detail is not None
    return detail.recording.consent_played, detail.recording.consent_audible, detail.metadata["consent"]


def pending(catalog: Catalog) -> list[str]:
    with catalog.reader() as reader:
        return [p.recording_id for p in pending_checks(reader.conn)]


def test_outcomes_checked_and_events_append_only(catalog: Catalog) -> None:
    for i, outcome in enumerate(OUTCOMES):
        add_announcement(catalog, announcement(f"c{i}", outcome=outcome))
    with pytest.raises(ValueError, match="unknown consent outcome 'maybe'"):
        add_announcement(catalog, announcement(outcome="maybe"))
    with pytest.raises(apsw.ConstraintError):   # the table's CHECK says the same
        catalog.writer.call(lambda c: c.execute(
            "INSERT INTO consent_announcements (call_id, caller, called, invited_at, ended_at, outcome) "
            "VALUES ('x', '1', '2', 0, 0, 'maybe')"))
    with pytest.raises(apsw.ConstraintError, match="append-only"):
        catalog.writer.call(lambda c: c.execute("UPDATE consent_announcements SET outcome = 'played'"))
    with catalog.reader() as reader:
        events = list_announcements(reader.conn, outcome="codec_mismatch")
        assert [e.call_id for e in events] == [f"c{OUTCOMES.index('codec_mismatch')}"]
        assert len(list_announcements(reader.conn, limit=1000)) == len(OUTCOMES)


@pytest.mark.parametrize(("a", "b", "same"), [
    ("+8613800001111", "13800001111", True),        # last 8 digits agree
    ("013800001111", "+86 138-0000-1111", True),
    ("13800001111", "13800002222", False),
    ("1234", "001234", False),                       # short numbers must be equal
    ("1234", "1234", True),
    ("", "", False),
])
def test_numbers_match(a: str, b: str, same: bool) -> None:
    assert numbers_match(a, b, 8) is same


def test_pick_announcement_rules() -> None:
    near = announcement("a@pbx", invited=T0)
    near.id = 1
    later = announcement("b@pbx", invited=T0 + 40)
    later.id = 2
    other = announcement("c@pbx", caller="13900009999", invited=T0)
    other.id = 3
    pool = [near, later, other]

    def facts(started: float, call_id: str = "rec@pbx", caller: str | None = CALLER,
              headers: dict[str, str] | None = None) -> RecordingFacts:
        return RecordingFacts("r", call_id, caller, started, headers or {})

    assert pick_announcement(facts(T0 + 1, call_id="c@pbx"), pool, POLICY) == (other, "call_id")
    assert pick_announcement(facts(T0 + 10), pool, POLICY) == (near, "caller_window")
    assert pick_announcement(facts(T0 - 59), pool, POLICY) == (near, "caller_window")   # customer leg began first
    assert pick_announcement(facts(T0 + 45), pool, POLICY) == (later, "caller_window")  # the nearer one
    assert pick_announcement(facts(T0 + 75), pool, POLICY) == (later, "caller_window")   # 29 s after its end
    assert pick_announcement(facts(T0 + 47 + 30.5), [near], POLICY) is None              # after the window
    assert pick_announcement(facts(T0 + 10, caller="+4930123"), pool, POLICY) is None
    by_header = LinkPolicy(header="X-Consent-Ref")
    near.correlation = "ref-77"
    assert pick_announcement(facts(T0 + 10, headers={"x-consent-ref": "ref-77"}), pool, by_header) == (near, "header")
    assert pick_announcement(facts(T0 + 10, headers={}), pool, by_header) is None        # caller alone is not enough


def test_check_links_the_leg_and_the_call_that_follows(catalog: Catalog, tmp_path: Path) -> None:
    audit = AuditLog(catalog)
    add_announcement(catalog, announcement(), audit)
    store(catalog, "leg", started=T0 + 0.1, call_id="ann-1@pbx")           # the announcer's own leg
    store(catalog, "agent", started=T0 + 12, caller="013800001111", headers={"X-Trunk": "CT-7"})
    store(catalog, "stranger", started=T0 + 12, caller="+4930123456")
    assert pending(catalog) == ["leg", "agent", "stranger"]
    results = {rid: record_check(catalog, rid, det, POLICY, trunk_header="X-Trunk", audit=audit)
               for rid, det in (("leg", HEARD), ("agent", NOT_HEARD), ("stranger", NOT_HEARD))}
    assert pending(catalog) == []
    assert {rid: (r.played, r.audible, r.link) for rid, r in results.items() if r} == {
        "leg": (True, True, "call_id"), "agent": (True, False, "caller_window"), "stranger": (False, False, None)}
    played, audible, consent = consent_of(catalog, "leg")
    assert (played, audible) == (True, True)
    assert (consent["played"], consent["audible"], consent["offset_s"], consent["channel"], consent["prompt"]) == (
        True, True, 0.52, 1, "zh")
    assert consent["announcement"]["outcome"] == "refer_ok" and consent["announcement"]["link"] == "call_id"
    assert consent_of(catalog, "stranger")[:2] == (False, False)
    assert [r.recording_id for r in catalog.search(consent="audible").rows] == ["leg"]
    assert sorted(r.recording_id for r in catalog.search(consent="played").rows) == ["agent", "leg"]
    with catalog.reader() as reader:
        linked = announcement_of(reader.conn, "agent")
        assert linked is not None and (linked[0].call_id, linked[1]) == ("ann-1@pbx", "caller_window")
        trunks = dict(reader.conn.execute("SELECT recording_id, trunk FROM consent_checks").fetchall())
        assert trunks == {"leg": "10.0.0.5", "agent": "CT-7", "stranger": None}
        actions = [row[0] for row in reader.conn.execute("SELECT action FROM audit ORDER BY seq")]
    assert actions == ["consent_announce", "consent_check", "consent_check", "consent_check"]


def test_a_hangup_during_the_prompt_is_not_played(catalog: Catalog) -> None:
    add_announcement(catalog, announcement(outcome="hangup_during_prompt", complete=False))
    store(catalog, "leg", started=T0 + 0.1, call_id="ann-1@pbx")
    result = record_check(catalog, "leg", NOT_HEARD, POLICY, trunk_header="X-Trunk")
    assert result is not None and (result.played, result.announcement_id is not None) == (False, True)
    assert consent_of(catalog, "leg")[2]["announcement"]["outcome"] == "hangup_during_prompt"


def test_an_announcement_that_comes_later_is_linked_by_the_sweep(catalog: Catalog) -> None:
    store(catalog, "leg", started=T0 + 0.1, call_id="ann-1@pbx")
    assert record_check(catalog, "leg", HEARD, POLICY, trunk_header="X-Trunk").played is False  # type: ignore[union-attr]
    add_announcement(catalog, announcement())
    assert link_new_announcements(catalog, POLICY) == [("leg", 1)]
    played, audible, consent = consent_of(catalog, "leg")
    assert (played, audible, consent["offset_s"], consent["announcement"]["id"]) == (True, True, 0.52, 1)
    assert link_new_announcements(catalog, POLICY) == []                 # the cursor moved on
    with catalog.reader() as reader:
        assert reader.conn.execute("SELECT trunk FROM consent_checks").fetchall() == [("10.0.0.5",)]


def test_report_per_day_and_trunk(catalog: Catalog) -> None:
    day = 86400.0
    add_announcement(catalog, announcement())
    add_announcement(catalog, announcement("ann-2@pbx", invited=T0 + day, outcome="codec_mismatch", complete=False))
    store(catalog, "leg", started=T0 + 0.1, call_id="ann-1@pbx")
    store(catalog, "agent", started=T0 + 12, headers={"X-Trunk": "CT-7"})
    store(catalog, "next-day", started=T0 + day + 5, caller="+4930123456", headers={"X-Trunk": "CT-7"})
    store(catalog, "unchecked", started=T0 + day + 9, caller="+4930123456")
    for rid, det in (("leg", HEARD), ("agent", NOT_HEARD), ("next-day", NOT_HEARD)):
        record_check(catalog, rid, det, POLICY, trunk_header="X-Trunk")
    with catalog.reader() as reader:
        rows = [r.to_dict() for r in consent_report(reader.conn, T0 - day, T0 + 2 * day)]
        shifted = consent_report(reader.conn, T0 - day, T0 + 2 * day, utc_offset_s=14 * 3600.0)
    assert [(r["day"], r["trunk"], r["recordings"], r["played"], r["audible"], r["unchecked"], r["announcements"],
             r["outcomes"]) for r in rows] == [
        ("2024-05-01", "10.0.0.5", 1, 1, 1, 0, 1, {"refer_ok": 1}),
        ("2024-05-01", "CT-7", 1, 1, 0, 0, 0, {}),
        ("2024-05-02", "10.0.0.5", 0, 0, 0, 0, 1, {"codec_mismatch": 1}),
        ("2024-05-02", "CT-7", 1, 0, 0, 0, 0, {}),
        ("2024-05-02", "unknown", 1, 0, 0, 1, 0, {}),
    ]
    assert rows[0]["played_rate"] == 1.0 and rows[3]["played_rate"] == 0.0 and rows[2]["played_rate"] is None
    assert {r.day for r in shifted} == {"2024-05-02", "2024-05-03"}     # 10:00Z + 14 h is the next day


def test_pending_skips_active_and_checked(catalog: Catalog) -> None:
    catalog.begin_recording("live", "live@pbx", T0, {"caller": CALLER}, kek_id="kek", wrapped_key=b"k" * 61,
                            key_id="00" * 16)
    store(catalog, "done", started=T0 + 1)
    assert pending(catalog) == ["done"]
    record_check(catalog, "done", {"audible": None, "note": "audio not readable: truncated"}, POLICY,
                 trunk_header="X-Trunk")
    assert pending(catalog) == []      # a failed check is not retried in a loop
    assert consent_of(catalog, "done")[2]["note"] == "audio not readable: truncated"
