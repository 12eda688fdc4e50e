"""SIP (RFC 3261) and SDP (RFC 4566 / RFC 3264) text for generated dialogs.

A :class:`Dialog` produces byte-exact, realistic messages for one call between a caller and a
callee user agent: Via with a fresh branch per transaction, From/To tags, Call-ID, CSeq,
Contact, Content-Type and a correct Content-Length. Responses copy the request's Via, From,
To, Call-ID and CSeq as RFC 3261 §8.2.6.2 requires.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from tests.gen.media import TELEPHONE_EVENT_PT, codec_spec
from tests.gen.netframes import is_ipv6

Side = Literal["caller", "callee"]
Direction = Literal["sendrecv", "sendonly", "recvonly", "inactive"]

REASONS = {100: "Trying", 180: "Ringing", 183: "Session Progress", 200: "OK", 487: "Request Terminated"}
USER_AGENT = "callgen/1.0"


def peer(side: Side) -> Side:
    """The other side of the dialog."""
    return "callee" if side == "caller" else "caller"


def host(ip: str) -> str:
    """An address as it appears in a SIP URI or Via (IPv6 in brackets, RFC 3261 §25.1)."""
    return f"[{ip}]" if is_ipv6(ip) else ip


@dataclass(slots=True)
class Party:
    """One user agent of the dialog."""

    number: str
    ip: str
    sip_port: int
    tag: str
    display: str
    sdp_session: int
    sdp_version: int = 0
    cseq: int = 0

    def uri(self) -> str:
        """Address-of-record URI (user part = the phone number)."""
        return f"sip:{self.number}@{host(self.ip)}"


@dataclass(slots=True)
class SdpOffer:
    """The media part of one SDP body."""

    port: int
    codecs: list[str]
    direction: Direction = "sendrecv"


@dataclass(slots=True)
class SipMessage:
    """One SIP message ready for the wire and a short label for statistics ("INVITE", "200")."""

    sender: Side
    label: str
    data: bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Dialog:
    """Builds every message of one call; keeps tags, CSeq numbers and SDP versions."""

    call_id: str
    caller: Party
    callee: Party
    transport: Literal["UDP", "TCP"]
    rng: np.random.Generator

    @classmethod
    def create(cls, call_id: str, caller: tuple[str, str, int], callee: tuple[str, str, int],
               transport: Literal["UDP", "TCP"], rng: np.random.Generator) -> Dialog:
        """``caller``/``callee`` are (number, ip, sip_port)."""
        def party(spec: tuple[str, str, int], display: str) -> Party:
            number, ip, port = spec
            return Party(number, ip, port, tag=_token(rng, 8), display=display,
                         sdp_session=int(rng.integers(10**9, 10**10)))
        return cls(call_id, party(caller, "Caller"), party(callee, "Callee"), transport, rng)

    def party(self, side: Side) -> Party:
        """The user agent on ``side``."""
        return self.caller if side == "caller" else self.callee

    def contact(self, side: Side) -> str:
        """Contact URI of a side (carries transport=tcp when the dialog runs over TCP)."""
        p = self.party(side)
        params = ";transport=tcp" if self.transport == "TCP" else ""
        return f"sip:{p.number}@{host(p.ip)}:{p.sip_port}{params}"

    def request(self, method: str, sender: Side, sdp: SdpOffer | None = None,
                cseq: int | None = None, branch: str | None = None, in_dialog: bool = True) -> SipMessage:
        """A request from ``sender`` to the other side; a new transaction unless ``branch`` is given."""
        me = self.party(sender)
        other = self.party(peer(sender))
        if cseq is None:
            me.cseq += 1
            cseq = me.cseq
        target = self.contact(peer(sender)) if in_dialog else other.uri()
        rport = ";rport" if self.transport == "UDP" else ""
        headers = {
            "Via": f"SIP/2.0/{self.transport} {host(me.ip)}:{me.sip_port};branch={branch or self.new_branch()}{rport}",
            "Max-Forwards": "70",
            "From": f'"{me.display}" <{me.uri()}>;tag={me.tag}',
            "To": f"<{other.uri()}>" + (f";tag={other.tag}" if in_dialog else ""),
            "Call-ID": self.call_id,
            "CSeq": f"{cseq} {method}",
        }
        if method == "INVITE":
            headers["Contact"] = f"<{self.contact(sender)}>"
            headers["Allow"] = "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO"
        headers["User-Agent"] = USER_AGENT
        start_line = f"{method} {target} SIP/2.0"
        return self._message(sender, method, start_line, headers, self._body(sender, sdp))

    def response(self, request: SipMessage, code: int, sdp: SdpOffer | None = None) -> SipMessage:
        """A response to ``request`` from its receiver (To tag added except on 100 Trying)."""
        sender = peer(request.sender)
        me = self.party(sender)
        to = request.headers["To"]
        if code != 100 and ";tag=" not in to:
            to += f";tag={me.tag}"
        headers = {name: request.headers[name] for name in ("Via", "From")}
        headers |= {"To": to, "Call-ID": self.call_id, "CSeq": request.headers["CSeq"]}
        method = request.headers["CSeq"].split()[1]
        if method == "INVITE" and 100 < code < 300:
            headers["Contact"] = f"<{self.contact(sender)}>"
        headers["Server"] = USER_AGENT
        start_line = f"SIP/2.0 {code} {REASONS[code]}"
        return self._message(sender, str(code), start_line, headers, self._body(sender, sdp))

    def ack(self, invite: SipMessage, final: SipMessage) -> SipMessage:
        """ACK for an INVITE's final response (RFC 3261 §13.2.2.4 for 2xx, §17.1.1.3 otherwise)."""
        cseq = int(invite.headers["CSeq"].split()[0])
        if final.label.startswith("2"):
            return self.request("ACK", invite.sender, cseq=cseq)
        # Non-2xx ACK belongs to the INVITE transaction: same branch, To with the response's tag.
        branch = invite.headers["Via"].split("branch=")[1].split(";")[0]
        msg = self.request("ACK", invite.sender, cseq=cseq, branch=branch, in_dialog=False)
        return self._retag(msg, to=final.headers["To"])

    def cancel(self, invite: SipMessage) -> SipMessage:
        """CANCEL for a pending INVITE: same branch, Request-URI and CSeq number (RFC 3261 §9.1)."""
        cseq = int(invite.headers["CSeq"].split()[0])
        branch = invite.headers["Via"].split("branch=")[1].split(";")[0]
        return self.request("CANCEL", invite.sender, cseq=cseq, branch=branch, in_dialog=False)

    def new_branch(self) -> str:
        """A transaction branch with the RFC 3261 §8.1.1.7 magic cookie."""
        return "z9hG4bK" + _token(self.rng, 16)

    def _retag(self, msg: SipMessage, to: str) -> SipMessage:
        headers = dict(msg.headers)
        headers["To"] = to
        start_line = msg.data.split(b"\r\n", 1)[0].decode()
        body = msg.data.split(b"\r\n\r\n", 1)[1].decode()
        return self._message(msg.sender, msg.label, start_line, headers, body)

    def _body(self, sender: Side, sdp: SdpOffer | None) -> str:
        if sdp is None:
            return ""
        me = self.party(sender)
        me.sdp_version += 1
        return sdp_body(me, sdp)

    @staticmethod
    def _message(sender: Side, label: str, start_line: str, headers: dict[str, str], body: str) -> SipMessage:
        all_headers = dict(headers)
        if body:
            all_headers["Content-Type"] = "application/sdp"
        all_headers["Content-Length"] = str(len(body.encode()))
        lines = [start_line, *(f"{k}: {v}" for k, v in all_headers.items()), "", body]
        return SipMessage(sender, label, "\r\n".join(lines).encode(), headers)


def sdp_body(party: Party, offer: SdpOffer) -> str:
    """An SDP session with one audio stream (RFC 4566), telephone-event always offered (RFC 4733)."""
    family = "IP6" if is_ipv6(party.ip) else "IP4"
    specs = [codec_spec(c) for c in dict.fromkeys(offer.codecs)]
    payload_types = " ".join(str(s.payload_type) for s in specs)
    lines = [
        "v=0",
        f"o={party.number} {party.sdp_session} {party.sdp_version} IN {family} {party.ip}",
        "s=callgen",
        f"c=IN {family} {party.ip}",
        "t=0 0",
        f"m=audio {offer.port} RTP/AVP {payload_types} {TELEPHONE_EVENT_PT}",
        *(f"a=rtpmap:{s.rtpmap}" for s in specs),
        f"a=rtpmap:{TELEPHONE_EVENT_PT} telephone-event/8000",
        f"a=fmtp:{TELEPHONE_EVENT_PT} 0-16",
        "a=ptime:20",
        f"a={offer.direction}",
    ]
    return "\r\n".join(lines) + "\r\n"


def _token(rng: np.random.Generator, length: int) -> str:
    return "".join(f"{b:02x}" for b in rng.integers(0, 256, size=length // 2))
