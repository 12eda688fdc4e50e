"""SIP dialog tracking (RFC 3261 §12-§17): calls, their state, and their media expectations.

Pure: SIP messages with their arrival time and addresses come in, call records and claims in
the ExpectationTable come out. The caller is whoever sent the initial INVITE; every later SDP
is attributed to caller or callee by the From tag of its transaction, so re-INVITEs from
either side, proxies that copy the INVITE (several hops of one Call-ID) and late offers in a
2xx all land on the right channel.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime

from capture.codecs import CodecSpec, codec_spec
from capture.expectations import ExpectationTable
from capture.sdp import HOLD_ADDRESSES, Crypto, MediaDescription, SessionDescription, parse_sdp
from capture.sip import SipMessage, uri_user

CALLER, CALLEE = 0, 1


@dataclass(slots=True)
class SdpEvent:
    """One SDP seen in a call, kept for the recording's metadata (and for tests)."""

    ts: float
    author: int           # CALLER or CALLEE
    method: str           # INVITE / 200 / 183 / ACK / UPDATE / PRACK ...
    hold: bool


@dataclass(slots=True)
class Call:
    """What signalling told us about one call (one Call-ID)."""

    key: str
    call_id: str
    recording_id: str
    caller_uri: str
    callee_uri: str
    caller_tag: str
    caller_signalling: tuple[str, int]
    invited_at: float
    headers: dict[str, str] = field(default_factory=dict)
    answered_at: float | None = None
    ended_at: float | None = None
    end_reason: str = ""
    final_status: int = 0
    last_activity: float = 0.0
    on_hold: bool = False
    zrtp: bool = False
    crypto: dict[int, list[Crypto]] = field(default_factory=dict)   # sender channel -> keys
    chosen_crypto_tag: int | None = None
    codecs: dict[int, CodecSpec] = field(default_factory=dict)     # every PT mapping seen
    sdp_events: list[SdpEvent] = field(default_factory=list)
    media_kinds: set[str] = field(default_factory=set)
    media_addresses: dict[tuple[int, int], tuple[str, int]] = field(default_factory=dict)  # (side, m-index)
    first_audio: dict[int, int] = field(default_factory=dict)   # side -> port of its first audio SDP
    media_elsewhere: bool = False   # fanout: another worker records it (capture.fanout)

    @property
    def caller(self) -> str:
        return uri_user(self.caller_uri)

    @property
    def callee(self) -> str:
        return uri_user(self.callee_uri)

    @property
    def ended(self) -> bool:
        return self.ended_at is not None


@dataclass(slots=True)
class TrackerSettings:
    """Timers of the tracker, in seconds of capture time."""

    extra_headers: tuple[str, ...] = ()       # SIP headers copied into the metadata, e.g. X-Agent-ID
    media_timeout_s: float = 60.0             # no RTP or SIP for this long: the call is over
    hold_timeout_s: float = 7200.0            # ... unless the last SDP put it on hold
    setup_timeout_s: float = 300.0            # INVITE never answered nor rejected
    linger_s: float = 2.0                     # after BYE/CANCEL/final failure: stragglers welcome
    challenge_linger_s: float = 32.0          # after 401/407 the caller retries with credentials


def make_recording_id(call_id: str, caller_tag: str, invited_at: float) -> str:
    """Sortable and stable for the same capture: UTC time of the INVITE plus a digest."""
    stamp = datetime.fromtimestamp(invited_at, UTC).strftime("%Y%m%dT%H%M%SZ")
    digest = hashlib.sha256(f"{call_id}\x00{caller_tag}\x00{invited_at:.6f}".encode()).hexdigest()
    return f"{stamp}-{digest[:12]}"


def codecs_of(media: MediaDescription) -> dict[int, CodecSpec]:
    return {
        pt: codec_spec(m.encoding, m.clock_rate, m.channels, media.fmtp.get(pt, ""))
        for pt, m in media.rtpmap.items()
    }


class DialogTracker:
    """Follows every INVITE dialog; keeps the expectation table in step with the SDP."""

    def __init__(self, settings: TrackerSettings | None = None,
                 expectations: ExpectationTable | None = None) -> None:
        self.settings = settings or TrackerSettings()
        self.expectations = expectations or ExpectationTable()
        self.calls: dict[str, Call] = {}

    # -- messages -------------------------------------------------------------------------

    def on_message(self, msg: SipMessage, ts: float, src: tuple[str, int], dst: tuple[str, int]) -> Call | None:
        """Apply one SIP message; returns the call it belongs to (None: not an INVITE dialog)."""
        call = self.calls.get(msg.call_id)
        if call is None:
            if not (msg.is_request and msg.method == "INVITE" and not msg.to_tag):
                return None
            call = self._open(msg, ts, src)
        elif msg.is_request and msg.method == "INVITE" and not msg.to_tag and call.ended \
                and msg.from_tag == call.caller_tag:
            # a new attempt after a failure (e.g. 401/407 challenge): the call goes on
            call.ended_at = None
            call.end_reason = ""
        call.last_activity = ts
        self._copy_headers(call, msg)
        if msg.is_request:
            self._on_request(call, msg, ts)
        else:
            self._on_response(call, msg, ts)
        self._apply_sdp(call, msg, ts)
        return call

    def _open(self, msg: SipMessage, ts: float, src: tuple[str, int]) -> Call:
        call = Call(
            key=msg.call_id,
            call_id=msg.call_id,
            recording_id=make_recording_id(msg.call_id, msg.from_tag, ts),
            caller_uri=msg.from_uri,
            callee_uri=msg.to_uri,
            caller_tag=msg.from_tag,
            caller_signalling=src,
            invited_at=ts,
            last_activity=ts,
        )
        self.calls[call.key] = call
        return call

    def _copy_headers(self, call: Call, msg: SipMessage) -> None:
        for name in self.settings.extra_headers:
            value = msg.header(name)
            if value is not None and name not in call.headers:
                call.headers[name] = value

    def _sender(self, call: Call, msg: SipMessage) -> int:
        """Which side sent this message: requests come from their From, responses from the other."""
        from_caller = msg.from_tag == call.caller_tag or not call.caller_tag
        if msg.is_request:
            return CALLER if from_caller else CALLEE
        return CALLEE if from_caller else CALLER

    def _on_request(self, call: Call, msg: SipMessage, ts: float) -> None:
        if msg.method == "BYE" and not call.ended:
            side = "caller" if self._sender(call, msg) == CALLER else "callee"
            self._end(call, ts, f"bye_{side}")
        elif msg.method == "CANCEL" and call.answered_at is None and not call.ended:
            self._end(call, ts, "cancelled")

    def _on_response(self, call: Call, msg: SipMessage, ts: float) -> None:
        if msg.cseq_method != "INVITE":
            return
        if 200 <= msg.status < 300:
            if call.answered_at is None:
                call.answered_at = ts
            call.final_status = call.final_status or msg.status
        elif msg.status >= 300 and call.answered_at is None:
            call.final_status = msg.status
            if not call.ended:
                self._end(call, ts, f"rejected_{msg.status}")

    def _end(self, call: Call, ts: float, reason: str) -> None:
        call.ended_at = ts
        call.end_reason = reason

    # -- SDP --------------------------------------------------------------------------------

    def _apply_sdp(self, call: Call, msg: SipMessage, ts: float) -> None:
        body = msg.sdp()
        if not body:
            return
        session = parse_sdp(body)  # a ParseError is counted by the caller; the call goes on
        author = self._sender(call, msg)
        method = msg.method if msg.is_request else str(msg.status)
        hold = bool(session.media) and all(m.is_hold for m in session.media if m.port)
        call.sdp_events.append(SdpEvent(ts, author, method, hold))
        call.on_hold = hold
        self._claim_media(call, session, author)

    def _claim_media(self, call: Call, session: SessionDescription, author: int) -> None:
        keys: list[Crypto] = []
        for index, media in enumerate(session.media):
            call.media_kinds.add(media.kind)
            codecs = codecs_of(media)
            call.codecs.update(codecs)
            secure = "SAVP" in media.proto.upper()
            if media.zrtp:
                call.zrtp = True
            if media.crypto:
                keys.extend(media.crypto)
                if author == CALLEE or call.chosen_crypto_tag is None:
                    call.chosen_crypto_tag = media.crypto[0].tag
            address = media.connection
            if not media.port or not address or address in HOLD_ADDRESSES:
                continue  # rejected stream, or hold by the RFC 2543 c=0.0.0.0 convention
            if media.kind == "audio":
                call.first_audio.setdefault(author, media.port)
            self.expectations.claim(address, media.port, call_key=call.key, author_channel=author,
                                    kind=media.kind, codecs=codecs, secure=secure)
            mine = (address, media.port)
            call.media_addresses[(author, index)] = mine
            theirs = call.media_addresses.get((1 - author, index))
            if theirs is not None:   # RFC 3264 §6: m-lines of offer and answer pair up by position
                for sender, src, dst in ((author, mine, theirs), (1 - author, theirs, mine)):
                    self.expectations.claim_pair(src, dst, call_key=call.key, channel=sender,
                                                 kind=media.kind, codecs=codecs, secure=secure)
        if keys:
            call.crypto[author] = keys

    # -- time --------------------------------------------------------------------------------

    def on_media(self, call: Call, ts: float) -> None:
        call.last_activity = max(call.last_activity, ts)

    def expire(self, now: float) -> list[Call]:
        """Calls that are over at capture time `now`; they leave the tracker and free their ports."""
        done = [c for c in self.calls.values() if self._is_over(c, now)]
        for call in done:
            if call.ended_at is None:
                call.ended_at = call.last_activity
                call.end_reason = "media_timeout" if call.answered_at else "setup_timeout"
            self._forget(call)
        return done

    def close_all(self, reason: str = "capture_end") -> list[Call]:
        """End of the capture (or shutdown): every open call is over."""
        done = list(self.calls.values())
        for call in done:
            if call.ended_at is None:
                call.ended_at = call.last_activity
                call.end_reason = reason
            self._forget(call)
        return done

    def end(self, key: str, ts: float, reason: str) -> None:
        """End a call for a reason signalling did not show here (fanout: the worker recording
        it saw its media time out); it leaves after the linger time."""
        call = self.calls.get(key)
        if call is not None and not call.ended:
            self._end(call, ts, reason)

    def _forget(self, call: Call) -> None:
        self.calls.pop(call.key, None)
        self.expectations.release_call(call.key)

    def _is_over(self, call: Call, now: float) -> bool:
        s = self.settings
        if call.ended_at is not None:
            challenged = call.end_reason in ("rejected_401", "rejected_407")
            return now - call.ended_at > (s.challenge_linger_s if challenged else s.linger_s)
        idle = now - call.last_activity
        if call.media_elsewhere:   # its media may never come here: the recording worker ends it
            return idle > max(s.hold_timeout_s, s.setup_timeout_s)
        if call.answered_at is None:
            return idle > s.setup_timeout_s
        return idle > (s.hold_timeout_s if call.on_hold else s.media_timeout_s)
