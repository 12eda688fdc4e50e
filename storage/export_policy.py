"""The four-eyes rules of export bundles, as pure functions (facts and a clock in, a decision out).

States and the steps between them::

    requested --approve (an admin, not the requester)--> approved --build--> building --> ready
        |  \\--reject (an admin, not the requester)--> rejected                  |       \\--> failed
        \\--no decision within exports.request_expire_hours--> expired          |
                                                 ready / downloaded --download (the requester)--> downloaded
                                                 ready / downloaded --exports.expire_hours after the build--> expired

* Requesting needs a reason and the role auditor or admin; approving or rejecting needs the role
  admin and a different person from the requester (DESIGN.md: "Exports need a second person's
  approval").
* Only the requester may download, only a built (ready or already downloaded) bundle, only
  before it expires: an approver cannot take the bundle themselves, and nothing unapproved
  can be downloaded because nothing unapproved is ever built.
* rejected, failed and expired are final.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class ExportState(StrEnum):
    REQUESTED = "requested"
    APPROVED = "approved"
    REJECTED = "rejected"
    BUILDING = "building"
    READY = "ready"
    FAILED = "failed"
    EXPIRED = "expired"
    DOWNLOADED = "downloaded"


TRANSITIONS: dict[ExportState, frozenset[ExportState]] = {
    ExportState.REQUESTED: frozenset({ExportState.APPROVED, ExportState.REJECTED, ExportState.EXPIRED}),
    ExportState.APPROVED: frozenset({ExportState.BUILDING, ExportState.FAILED}),
    ExportState.BUILDING: frozenset({ExportState.READY, ExportState.FAILED}),
    ExportState.READY: frozenset({ExportState.DOWNLOADED, ExportState.EXPIRED}),
    ExportState.DOWNLOADED: frozenset({ExportState.DOWNLOADED, ExportState.EXPIRED}),
    ExportState.REJECTED: frozenset(),
    ExportState.FAILED: frozenset(),
    ExportState.EXPIRED: frozenset(),
}
DOWNLOADABLE = frozenset({ExportState.READY, ExportState.DOWNLOADED})
REQUESTER_ROLES = frozenset({"auditor", "admin"})
APPROVER_ROLES = frozenset({"admin"})
MAX_REASON_CHARS = 2000


DENIED = "denied"      # who is asking may not do this (role, four eyes, not the requester)
REFUSED = "refused"    # nobody may, now or like this (state, expiry, missing reason, bad ids)


class ExportRefused(Exception):
    """A step is not allowed; ``reason`` says why (for the person and the audit log), ``outcome``
    is the audit outcome: DENIED for an authorisation rule, REFUSED for the state or the input."""

    def __init__(self, reason: str, outcome: str = REFUSED) -> None:
        super().__init__(reason)
        self.reason = reason
        self.outcome = outcome

    @property
    def denied(self) -> bool:
        return self.outcome == DENIED


@dataclass(frozen=True, slots=True)
class Actor:
    username: str
    role: str


@dataclass(frozen=True, slots=True)
class ExportFacts:
    """What the rules look at."""

    state: ExportState
    requester: str
    requested_at: float
    expires_at: float | None = None


def check_transition(old: ExportState, new: ExportState) -> None:
    if new not in TRANSITIONS[old]:
        raise ExportRefused(f"an export cannot go from {old} to {new}")


def check_request(actor: Actor, reason: str, count: int, max_recordings: int) -> None:
    if actor.role not in REQUESTER_ROLES:
        raise ExportRefused(f"role {actor.role} may not request exports (only {', '.join(sorted(REQUESTER_ROLES))})",
                            DENIED)
    if not reason.strip():
        raise ExportRefused("a reason is required")
    if len(reason) > MAX_REASON_CHARS:
        raise ExportRefused(f"the reason is longer than {MAX_REASON_CHARS} characters")
    if count == 0:
        raise ExportRefused("no recordings to export")
    if count > max_recordings:
        raise ExportRefused(f"{count} recordings, more than the {max_recordings} one export may hold "
                            f"(exports.max_recordings): narrow the search")


def check_decision(facts: ExportFacts, actor: Actor) -> None:
    """May ``actor`` approve or reject this export (both need the same rights)?"""
    if actor.role not in APPROVER_ROLES:
        raise ExportRefused(f"role {actor.role} may not approve or reject exports (only admin)", DENIED)
    if actor.username == facts.requester:
        raise ExportRefused("the requester cannot approve or reject their own export (four eyes)", DENIED)
    if facts.state != ExportState.REQUESTED:
        raise ExportRefused(f"the export is {facts.state}, not awaiting a decision")


def check_download(facts: ExportFacts, actor: Actor, now: float) -> None:
    if actor.username != facts.requester:
        raise ExportRefused("only the requester may download the bundle", DENIED)
    if facts.state not in DOWNLOADABLE:
        if facts.state in (ExportState.REQUESTED, ExportState.APPROVED, ExportState.BUILDING):
            raise ExportRefused(f"the export is {facts.state}: not approved and built yet")
        raise ExportRefused(f"the export is {facts.state}: there is no bundle to download")
    if facts.expires_at is not None and now >= facts.expires_at:
        raise ExportRefused("the bundle has expired")


def expiry_due(facts: ExportFacts, now: float, request_ttl_s: float) -> bool:
    """A pending request nobody decided on, or a built bundle past its time."""
    if facts.state == ExportState.REQUESTED:
        return now >= facts.requested_at + request_ttl_s
    if facts.state in DOWNLOADABLE:
        return facts.expires_at is not None and now >= facts.expires_at
    return False
