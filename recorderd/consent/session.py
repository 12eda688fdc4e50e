"""One announcer call as a pure state machine: SIP/media happenings in, actions and the
catalogued announcement out. The pjsua2 edge (recorderd/consent/announcer.py) feeds it and
carries out what it asks; every decision is here, testable without a SIP stack.

    INVITE ──plan──> refuse (unknown prompt, no codec …)   → outcome at once
                └──> answer → media up → lead-in → prompt … end → tail ─┬─ handoff hangup → BYE
                                                                        └─ handoff refer  → REFER (RFC 3515)
                                                                              NOTIFY 2xx → BYE (refer_ok)
                                                                              non-2xx    → BYE (refer_rejected/failed)
                                                                              no final   → BYE (refer_timeout)
    BYE from the caller before the prompt ended → hangup_during_prompt
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from capture.sdp import parse_sdp
from capture.sip import SipMessage, uri_user
from recorderd.consent.rules import CallFacts, Rule, choose_prompt, parse_accept_language, refer_target
from storage.consent import PROMPT_COMPLETE_OUTCOMES, Announcement

PROMPT_SLACK_S = 5.0     # the prompt must end this long after its length, else the call is ended
# after the prompt's last sample, this long before REFER/BYE: the caller's jitter buffer (and a
# PBX's) still holds the end of the prompt, which a BYE at once would cut off
TAIL_S = 0.4
NON_AUDIO = {"telephone-event", "cn", "red"}


@dataclass(frozen=True, slots=True)
class InviteFacts:
    """What the announcer keeps from an INVITE."""

    call_id: str
    caller: str
    called: str
    caller_uri: str
    called_uri: str
    request_uri: str
    headers: dict[str, str]
    source: str                     # host:port the INVITE came from
    offered_codecs: tuple[str, ...]  # "PCMA/8000", … from the SDP offer

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == wanted), None)


def invite_facts(message: SipMessage, source: str) -> InviteFacts:
    """From a parsed INVITE (capture.sip) and the address it came from."""
    headers: dict[str, str] = {}
    for name, value in message.headers:
        headers.setdefault(name, value)
    codecs: list[str] = []
    body = message.sdp()
    if body:
        try:
            sdp = parse_sdp(body)
        except ValueError:
            sdp = None
        for media in sdp.media if sdp else []:
            if media.kind == "audio" and media.port:
                for pt in media.payload_types:
                    codecs.append(_codec_name(pt, media.rtpmap.get(pt)))
    return InviteFacts(
        call_id=message.call_id, caller=uri_user(message.from_uri), called=uri_user(message.request_uri),
        caller_uri=message.from_uri, called_uri=message.to_uri, request_uri=message.request_uri,
        headers=headers, source=source, offered_codecs=tuple(codecs))


# RFC 3551 §6 static payload types a caller may offer without an rtpmap
_STATIC = {0: "PCMU/8000", 3: "GSM/8000", 4: "G723/8000", 8: "PCMA/8000", 9: "G722/8000", 18: "G729/8000"}


def _codec_name(pt: int, rtpmap: object) -> str:
    if rtpmap is not None:
        encoding = getattr(rtpmap, "encoding", "?")
        rate = getattr(rtpmap, "clock_rate", 0)
        return f"{encoding}/{rate}"
    return _STATIC.get(pt, f"PT{pt}")


def _codec_key(name: str) -> tuple[str, str]:
    """("G722", "8000") for both G722/8000 (SDP: RFC 3551's 8000 for G.722) and G722/16000
    (pjsua's name): G.722 is compared by name only."""
    encoding, _, rate = name.partition("/")
    encoding = encoding.upper()
    return (encoding, "") if encoding == "G722" else (encoding, rate.split("/")[0])


def common_codecs(offered: tuple[str, ...], configured: tuple[str, ...]) -> list[str]:
    wanted = {_codec_key(c) for c in configured}
    return [c for c in offered if _codec_key(c) in wanted]


def audio_codecs(offered: tuple[str, ...]) -> list[str]:
    return [c for c in offered if c.split("/")[0].lower() not in NON_AUDIO]


@dataclass(frozen=True, slots=True)
class CallPlan:
    """What to do with a new call, decided at the INVITE."""

    prompt: str
    rule: str
    prompt_file: Path | None
    prompt_length_s: float
    target: str | None
    refuse: tuple[int, str, str] | None = None    # (SIP status, reason phrase, outcome)


@dataclass(frozen=True, slots=True)
class PlanSettings:
    rules: tuple[Rule, ...]
    default_prompt: str
    language_header: str
    handoff: str
    refer_target: str
    refer_host: str
    codecs: tuple[str, ...]


def plan_call(invite: InviteFacts, settings: PlanSettings, local_time: datetime,
              find_prompt: Callable[[str], tuple[Path, float] | None]) -> CallPlan:
    """Prompt by the rules, the REFER target, or why the call is refused. ``find_prompt``
    gives a prompt's file and length, None when it has no file."""
    facts = CallFacts(called=invite.called, caller=invite.caller,
                      languages=parse_accept_language(invite.header(settings.language_header)),
                      local_time=local_time)
    choice = choose_prompt(settings.rules, settings.default_prompt, facts)
    target = (refer_target(settings.refer_target, settings.refer_host, invite.request_uri, invite.headers,
                           invite.source) if settings.handoff == "refer" else None)
    found = find_prompt(choice.prompt)
    if found is None:
        return CallPlan(choice.prompt, choice.rule, None, 0.0, target,
                        refuse=(500, f"Consent prompt {choice.prompt} missing", "unknown_prompt"))
    offered = audio_codecs(invite.offered_codecs)
    if offered and not common_codecs(tuple(offered), settings.codecs):
        # pjsua would refuse this offer itself (488, RFC 3261 §13.3.1.3); saying so here keeps
        # the reason in the event
        return CallPlan(choice.prompt, choice.rule, found[0], found[1], target,
                        refuse=(488, "Not Acceptable Here", "codec_mismatch"))
    return CallPlan(choice.prompt, choice.rule, found[0], found[1], target)


# -- the call as it happens -------------------------------------------------------------------

HANGUP = "hangup"
REFER = "refer"
START_PROMPT = "start_prompt"


@dataclass
class CallProgress:
    """Times and results of one call; ``next_action``/``due`` say what the edge must do."""

    invite: InviteFacts
    plan: CallPlan
    invited_at: float
    handoff: str
    lead_in_s: float
    refer_timeout_s: float
    trunk: str | None = None
    language: str | None = None
    correlation: str | None = None
    codec: str | None = None
    answered_at: float | None = None
    media_at: float | None = None
    prompt_started_at: float | None = None
    prompt_ended_at: float | None = None
    handed_off: bool = False
    refer_sent_at: float | None = None
    refer_accepted: bool = False
    refer_status: int | None = None
    refer_final: bool = False
    outcome: str | None = None
    detail: str = ""
    hangup_requested: bool = False
    ended_at: float | None = None
    notes: list[str] = field(default_factory=list)

    # -- inputs

    def answered(self, now: float) -> None:
        self.answered_at = self.answered_at or now

    def media_ready(self, now: float, codec: str | None) -> None:
        if self.media_at is None:
            self.media_at = now
            self.codec = codec

    def prompt_started(self, now: float) -> None:
        self.prompt_started_at = now

    def prompt_finished(self, now: float) -> None:
        """The player reached the end of the prompt; the handoff follows TAIL_S later
        (``due``), once the end of the prompt has also left the caller's jitter buffer."""
        self.prompt_ended_at = now

    def _handoff(self, now: float) -> str:
        """After the prompt: REFER or hang up."""
        self.handed_off = True
        if self.handoff == "hangup":
            return self._finish("played", "")
        if self.plan.target is None:
            return self._finish("no_target", "no REFER target in the INVITE (consent.refer_target)")
        self.refer_sent_at = now
        return REFER

    def refer_failed_to_send(self, reason: str) -> str:
        return self._finish("refer_rejected", f"REFER could not be sent: {reason}")

    def transfer_status(self, code: int, reason: str, final: bool, now: float) -> str | None:
        """A REFER response or a NOTIFY (RFC 3515 §2.4.5 sipfrag); HANGUP once it is final.

        pjsua reports the REFER's 202 as a provisional 100 "Accepted"; a final status with no
        provisional before it is the response to the REFER itself (the PBX refused it)."""
        self.refer_status = code
        if not final:
            self.refer_accepted = True
            return None
        self.refer_final = True
        if 200 <= code < 300:
            return self._finish("refer_ok", f"transfer to {self.plan.target} succeeded ({code} {reason})")
        if self.refer_accepted:
            return self._finish("refer_failed", f"transfer to {self.plan.target} failed: {code} {reason}")
        return self._finish("refer_rejected", f"REFER to {self.plan.target} refused: {code} {reason}")

    def failed(self, detail: str) -> str:
        """Media or playback could not be set up: end the call, outcome error."""
        return self._finish("error", detail)

    def _finish(self, outcome: str, detail: str) -> str:
        if self.outcome is None:
            self.outcome, self.detail = outcome, detail
        self.hangup_requested = True
        return HANGUP

    def due(self, now: float) -> str | None:
        """Timers: the lead-in before the prompt, a prompt that never ends, a REFER with no
        final answer."""
        if self.hangup_requested or self.ended_at is not None:
            return None
        if self.prompt_ended_at is not None and not self.handed_off and now >= self.prompt_ended_at + TAIL_S:
            return self._handoff(now)
        if self.media_at is not None and self.prompt_started_at is None and now >= self.media_at + self.lead_in_s:
            return START_PROMPT
        if (self.prompt_started_at is not None and self.prompt_ended_at is None
                and now > self.prompt_started_at + self.plan.prompt_length_s + PROMPT_SLACK_S):
            return self._finish("error", "the prompt did not end in time (media stalled)")
        if self.refer_sent_at is not None and not self.refer_final and now > self.refer_sent_at + self.refer_timeout_s:
            return self._finish("refer_timeout", f"no final NOTIFY for the REFER to {self.plan.target} "
                                                 f"within {self.refer_timeout_s:g} s")
        return None

    def disconnected(self, now: float, status: int, reason: str) -> Announcement:
        """The dialog is over: the event to catalogue."""
        self.ended_at = now
        if self.outcome is None:
            if self.plan.refuse is not None:
                self.outcome, self.detail = self.plan.refuse[2], self.plan.refuse[1]
            elif self.prompt_ended_at is None:
                self.outcome = "hangup_during_prompt"
                self.detail = f"caller hung up after {self._played(now):.1f} s of the prompt ({status} {reason})"
            elif self.refer_sent_at is not None:
                self.outcome = "refer_failed"
                self.detail = f"call ended before the transfer completed ({status} {reason})"
            else:
                self.outcome, self.detail = "error", f"call ended unexpectedly ({status} {reason})"
        return self.announcement()

    def _played(self, now: float) -> float:
        if self.prompt_started_at is None:
            return 0.0
        end = self.prompt_ended_at if self.prompt_ended_at is not None else now
        return round(min(max(0.0, end - self.prompt_started_at), self.plan.prompt_length_s), 3)

    def announcement(self) -> Announcement:
        outcome = self.outcome or "error"
        ended = self.ended_at if self.ended_at is not None else self.invited_at
        return Announcement(
            call_id=self.invite.call_id, caller=self.invite.caller, called=self.invite.called,
            invited_at=self.invited_at, ended_at=ended, outcome=outcome,
            caller_uri=self.invite.caller_uri, called_uri=self.invite.called_uri, trunk=self.trunk,
            language=self.language, correlation=self.correlation, prompt=self.plan.prompt, rule=self.plan.rule,
            codec=self.codec, answered_at=self.answered_at, prompt_started_at=self.prompt_started_at,
            prompt_played_s=self._played(ended),
            prompt_complete=self.prompt_ended_at is not None and outcome in PROMPT_COMPLETE_OUTCOMES,
            handoff=self.handoff, refer_target=self.plan.target if self.refer_sent_at is not None else None,
            refer_status=self.refer_status, detail="; ".join([self.detail, *self.notes]).strip("; "))


def call_trunk(invite: InviteFacts, trunk_header: str) -> str:
    """The trunk a call came in on: the configured header's value, else the sender's address."""
    value = invite.header(trunk_header)
    return value.strip() if value and value.strip() else invite.source.rsplit(":", 1)[0]


def rejected_announcement(invite: InviteFacts, now: float, status: int, reason: str,
                          configured: tuple[str, ...], trunk: str) -> Announcement:
    """A call the SIP stack refused before the announcer saw it (pjsua checks the SDP offer
    before the application: RFC 3261 §13.3.1.3's 488 when no codec fits)."""
    offered = audio_codecs(invite.offered_codecs)
    mismatch = status == 488 or (bool(offered) and not common_codecs(tuple(offered), configured))
    detail = (f"offered {', '.join(offered) or 'no audio codec'}; accepted {', '.join(configured)}"
              if mismatch else f"{status} {reason}")
    return Announcement(call_id=invite.call_id, caller=invite.caller, called=invite.called, invited_at=now,
                        ended_at=now, outcome="codec_mismatch" if mismatch else "rejected",
                        caller_uri=invite.caller_uri, called_uri=invite.called_uri, trunk=trunk,
                        detail=detail, refer_status=None)
