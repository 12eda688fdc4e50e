"""recorderd/consent/session.py: what the announcer decides at the INVITE and as the call goes."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pytest

from capture.sip import parse_sip
from recorderd.consent.rules import parse_rules
from recorderd.consent.session import (
    HANGUP,
    PROMPT_SLACK_S,
    REFER,
    START_PROMPT,
    TAIL_S,
    CallProgress,
    PlanSettings,
    call_trunk,
    invite_facts,
    plan_call,
    rejected_announcement,
)

CODECS = ("G722/16000", "PCMA/8000", "PCMU/8000")
PROMPT_LENGTH = 4.0


def invite(*, codecs: str = "8 0 101", lang: str | None = "en", extra: str = "") -> bytes:
    sdp = (f"v=0\r\no=- 1 1 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\n"
           f"m=audio 30000 RTP/AVP {codecs}\r\na=rtpmap:101 telephone-event/8000\r\n"
           f"a=rtpmap:3 GSM/8000\r\n")
    headers = [
        "INVITE sip:4001234@consent.bank.example SIP/2.0",
        "Via: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bK1",
        "From: \"Alice\" <sip:+8613800001111@pbx.bank.example>;tag=a1",
        "To: <sip:4001234@consent.bank.example>",
        "Call-ID: call-1@pbx", "CSeq: 1 INVITE", "Contact: <sip:pbx@10.0.0.5>",
        *([f"Accept-Language: {lang}"] if lang else []), *([extra] if extra else []),
        "Content-Type: application/sdp", f"Content-Length: {len(sdp)}",
    ]
    return ("\r\n".join(headers) + "\r\n\r\n" + sdp).encode()


SETTINGS = PlanSettings(rules=tuple(parse_rules(["lang=en prompt=en", "called=999 prompt=gone"])),
                        default_prompt="zh", language_header="Accept-Language", handoff="refer",
                        refer_target="request-uri", refer_host="source", codecs=CODECS)


def find(name: str) -> tuple[Path, float] | None:
    return None if name == "gone" else (Path(f"/prompts/{name}.16k.wav"), PROMPT_LENGTH)


def progress(handoff: str = "refer", **invite_args: str) -> CallProgress:
    facts = invite_facts(parse_sip(invite(**invite_args)), "10.0.0.5:5060")
    plan = plan_call(facts, replace(SETTINGS, handoff=handoff), datetime(2026, 3, 3, 12), find)
    return CallProgress(facts, plan, invited_at=100.0, handoff=handoff, lead_in_s=0.5, refer_timeout_s=10.0,
                        trunk=call_trunk(facts, "X-Trunk"))


def played_through(call: CallProgress) -> str:
    """Answer, media, lead-in, the whole prompt: returns the action after the prompt."""
    call.answered(100.1)
    call.media_ready(100.1, "PCMA/8000")
    assert call.due(100.5) is None             # still in the lead-in
    assert call.due(100.6) == START_PROMPT
    call.prompt_started(100.6)
    assert call.due(100.6 + PROMPT_LENGTH) is None
    call.prompt_finished(100.6 + PROMPT_LENGTH)
    assert call.due(100.6 + PROMPT_LENGTH + TAIL_S - 0.01) is None       # the end still reaches the caller
    return call.due(100.6 + PROMPT_LENGTH + TAIL_S)


def test_invite_facts_and_plan() -> None:
    call = progress()
    inv = call.invite
    assert (inv.caller, inv.called, inv.call_id, inv.source) == ("+8613800001111", "4001234", "call-1@pbx",
                                                                  "10.0.0.5:5060")
    assert inv.offered_codecs == ("PCMA/8000", "PCMU/8000", "telephone-event/8000")
    assert (call.plan.prompt, call.plan.rule, call.plan.refuse) == ("en", "lang=en prompt=en", None)
    assert call.plan.target == "sip:4001234@10.0.0.5:5060"
    assert call.trunk == "10.0.0.5"
    assert call_trunk(invite_facts(parse_sip(invite(extra="X-Trunk: SIP-CT-2")), "10.0.0.5:5060"),
                      "x-trunk") == "SIP-CT-2"


def test_refer_ok() -> None:
    call = progress()
    assert played_through(call) == REFER
    assert call.transfer_status(100, "Accepted", False, 104.7) is None     # pjsua's view of 202
    assert call.transfer_status(200, "OK", True, 105.0) == HANGUP
    event = call.disconnected(105.1, 200, "Normal call clearing")
    assert (event.outcome, event.prompt, event.prompt_complete, event.refer_target, event.refer_status) == (
        "refer_ok", "en", True, "sip:4001234@10.0.0.5:5060", 200)
    assert event.prompt_played_s == PROMPT_LENGTH
    assert (event.invited_at, event.answered_at, event.prompt_started_at, event.ended_at) == (100.0, 100.1, 100.6, 105.1)
    assert (event.codec, event.language, event.trunk) == ("PCMA/8000", None, "10.0.0.5")


@pytest.mark.parametrize(("statuses", "outcome"), [
    ([(603, "Decline", True)], "refer_rejected"),                             # the REFER itself refused
    ([(100, "Accepted", False), (486, "Busy Here", True)], "refer_failed"),   # accepted, transfer failed
])
def test_refer_refused_or_failed(statuses: list[tuple[int, str, bool]], outcome: str) -> None:
    call = progress()
    played_through(call)
    actions = [call.transfer_status(code, reason, final, 105.0) for code, reason, final in statuses]
    assert actions[-1] == HANGUP
    event = call.disconnected(105.2, 200, "Normal call clearing")
    assert event.outcome == outcome and event.prompt_complete
    assert str(statuses[-1][0]) in event.detail


def test_refer_without_final_notify_times_out() -> None:
    call = progress()
    played_through(call)
    call.transfer_status(100, "Accepted", False, 104.7)
    assert call.due(114.9) is None           # REFER sent at 105.0 (prompt end + tail)
    assert call.due(115.1) == HANGUP
    assert call.disconnected(114.8, 200, "").outcome == "refer_timeout"


def test_caller_hangs_up_during_the_prompt() -> None:
    call = progress()
    call.answered(100.1)
    call.media_ready(100.1, "G722/16000")
    assert call.due(100.6) == START_PROMPT
    call.prompt_started(100.6)
    event = call.disconnected(102.1, 200, "Normal call clearing")
    assert (event.outcome, event.prompt_complete, event.prompt_played_s) == ("hangup_during_prompt", False, 1.5)
    assert "1.5 s" in event.detail


def test_handoff_hangup_is_played() -> None:
    call = progress(handoff="hangup")
    assert call.plan.target is None
    assert played_through(call) == HANGUP
    event = call.disconnected(105.0, 200, "")
    assert (event.outcome, event.prompt_complete, event.refer_target) == ("played", True, None)


def test_no_target_and_stalled_prompt() -> None:
    call = progress()
    call.plan = replace(call.plan, target=None)     # e.g. refer_target = header:X and no such header
    assert played_through(call) == HANGUP
    assert call.disconnected(105.0, 200, "").outcome == "no_target"
    stalled = progress()
    stalled.answered(100.1)
    stalled.media_ready(100.1, "PCMA/8000")
    stalled.due(100.6)
    stalled.prompt_started(100.6)
    assert stalled.due(100.6 + PROMPT_LENGTH + PROMPT_SLACK_S + 0.1) == HANGUP
    event = stalled.disconnected(110.0, 200, "")
    assert (event.outcome, event.prompt_complete) == ("error", False)


def test_unknown_prompt_and_codec_mismatch_are_refused() -> None:
    facts = invite_facts(parse_sip(invite(lang=None).replace(b"INVITE sip:4001234", b"INVITE sip:999")),
                         "10.0.0.5:5060")
    plan = plan_call(facts, SETTINGS, datetime(2026, 3, 3, 12), find)
    assert plan.refuse == (500, "Consent prompt gone missing", "unknown_prompt")
    call = CallProgress(facts, plan, 100.0, "refer", 0.5, 10.0)
    event = call.disconnected(100.01, 500, "Consent prompt gone missing")
    assert (event.outcome, event.prompt, event.prompt_complete) == ("unknown_prompt", "gone", False)

    gsm_only = invite_facts(parse_sip(invite(codecs="3 101")), "10.0.0.5:5060")
    assert plan_call(gsm_only, SETTINGS, datetime(2026, 3, 3, 12), find).refuse == (
        488, "Not Acceptable Here", "codec_mismatch")
    event = rejected_announcement(gsm_only, 100.0, 488, "Not Acceptable Here", CODECS, "10.0.0.5")
    assert event.outcome == "codec_mismatch"
    assert event.detail == "offered GSM/8000; accepted G722/16000, PCMA/8000, PCMU/8000"
    other = rejected_announcement(invite_facts(parse_sip(invite()), "10.0.0.5:5060"), 100.0, 486, "Busy Here",
                                  CODECS, "10.0.0.5")
    assert (other.outcome, other.detail) == ("rejected", "486 Busy Here")


def test_g722_offer_with_its_rfc3551_clock_rate_matches() -> None:
    """SDP says G722/8000 (RFC 3551 §4.5.2), pjsua says G722/16000: the same codec."""
    wideband = invite_facts(parse_sip(invite(codecs="9")), "10.0.0.5:5060")
    assert wideband.offered_codecs == ("G722/8000",)
    assert plan_call(wideband, SETTINGS, datetime(2026, 3, 3, 12), find).refuse is None
