"""The consent announcer: a SIP user agent on pjsua2 that answers, plays the prompt, hands back.

It is the edge around recorderd/consent/session.py (which decides everything): pjsua2's
callbacks only put what happened on a queue; one thread (the one that created the endpoint)
polls the SIP stack (``libHandleEvents``), takes the queue, feeds each call's
:class:`CallProgress` and carries out its actions (answer, start the prompt, REFER, hang up).
pjsua2 runs with no worker threads of its own (``threadCnt = 0``) apart from the media clock,
whose only callback here (end of prompt) is queued like the rest.

Audio: the null sound device (a recorder has no sound card); the conference bridge runs at
16 kHz, prompts are played from the 16 kHz file with pjmedia's player, so a G.722 call gets
wideband audio and a G.711 call the bridge's downsampled copy. Codec priorities come from
``consent.codecs`` (every other codec disabled); a caller offering none of them is refused by
pjsua with 488 before the application sees the call — ``onRejectedIncomingCall`` still
receives the INVITE, so that call is catalogued as ``codec_mismatch`` too.

A pjsua2 failure must not take the recorder down: the announcer runs in its own process
(``recorderd consent run``, systemd/recorderd-consent.service), not inside the daemon.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pjsua2 as pj

from capture.errors import ParseError
from capture.sip import parse_sip
from recorderd.consent.prompts import playback_file, prompt_duration_s
from recorderd.consent.session import (
    HANGUP,
    REFER,
    START_PROMPT,
    CallProgress,
    PlanSettings,
    call_trunk,
    invite_facts,
    plan_call,
    rejected_announcement,
)
from recorderd.consent.settings import ConsentSettings
from storage.consent import Announcement

log = logging.getLogger("recorderd.consent")
POLL_MS = 10
SHUTDOWN_S = 3.0
CLOCK_RATE = 16000
# pjsua's log levels → Python's (pj: 1 error, 2 warning, 3 info, 4-6 debug)
_PJ_LEVELS = {0: logging.CRITICAL, 1: logging.ERROR, 2: logging.WARNING, 3: logging.INFO}


class AnnouncerError(Exception):
    """The announcer cannot start (address in use, unknown codec, …); the message says which."""


class _LogWriter(pj.LogWriter):
    def write(self, entry: Any) -> None:
        log.log(_PJ_LEVELS.get(int(entry.level), logging.DEBUG), "pjsip: %s", str(entry.msg).rstrip())


class _Player(pj.AudioMediaPlayer):
    def __init__(self, events: queue.SimpleQueue[tuple[Any, ...]], key: int) -> None:
        super().__init__()
        self._events, self._key = events, key

    def onEof2(self) -> None:   # media clock thread: only queue it (destroying here is forbidden)
        self._events.put(("eof", self._key, time.time()))


class _Call(pj.Call):
    def __init__(self, account: pj.Account, call_id: int, events: queue.SimpleQueue[tuple[Any, ...]],
                 key: int) -> None:
        super().__init__(account, call_id)
        self._events = events
        self.key = key     # ours, never reused (pjsua reuses call ids: a late event must not hit a new call)

    def onCallState(self, prm: Any) -> None:
        info = self.getInfo()
        self._events.put(("state", self.key, time.time(), int(info.state), int(info.lastStatusCode),
                          str(info.lastReason)))

    def onCallMediaState(self, prm: Any) -> None:
        self._events.put(("media", self.key, time.time()))

    def onCallTransferStatus(self, prm: Any) -> None:
        prm.cont = True
        self._events.put(("xfer", self.key, time.time(), int(prm.statusCode), str(prm.reason), bool(prm.finalNotify)))


class _Account(pj.Account):
    def __init__(self, announcer: Announcer) -> None:
        super().__init__()
        self._announcer = announcer

    def onIncomingCall(self, prm: Any) -> None:
        self._announcer._incoming(self, prm)

    def onRegState(self, prm: Any) -> None:
        level = logging.INFO if 200 <= int(prm.code) < 300 else logging.WARNING
        log.log(level, "registration: %s %s", prm.code, prm.reason)


class _Endpoint(pj.Endpoint):
    def __init__(self, announcer: Announcer) -> None:
        super().__init__()
        self._announcer = announcer

    def onRejectedIncomingCall(self, prm: Any) -> None:
        self._announcer._rejected(prm)


@dataclass
class _Live:
    """One call in progress: the pjsua2 objects and the pure state."""

    call: _Call
    progress: CallProgress
    player: _Player | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Announcer:
    """Create with the settings and where events go; ``run(stop)`` until ``stop`` is set."""

    def __init__(self, settings: ConsentSettings, record: Callable[[Announcement], object], *,
                 password: str | None = None, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.record = record
        self.password = password
        self.clock = clock
        self.events: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self.calls: dict[int, _Live] = {}
        self.orphans: dict[int, _Call] = {}
        self._keys = itertools.count(1)     # refused before parsing: kept until disconnected
        self.handled = 0
        self.ep: _Endpoint | None = None
        self.account: _Account | None = None
        self._log_writer = _LogWriter()
        self.address = ""
        self.plan_settings = PlanSettings(
            rules=settings.rules, default_prompt=settings.default_prompt, language_header=settings.language_header,
            handoff=settings.handoff, refer_target=settings.refer_target, refer_host=settings.refer_host,
            codecs=settings.codecs)

    # -- start and stop ------------------------------------------------------------------------

    def start(self) -> None:
        s = self.settings
        ep = _Endpoint(self)
        ep.libCreate()
        self.ep = ep
        try:
            cfg = pj.EpConfig()
            cfg.uaConfig.threadCnt = 0          # this thread polls; callbacks arrive on it
            cfg.uaConfig.mainThreadOnly = False
            cfg.uaConfig.maxCalls = s.max_calls
            cfg.uaConfig.userAgent = "recorderd-consent"
            cfg.medConfig.clockRate = CLOCK_RATE
            cfg.medConfig.noVad = True          # continuous RTP: the recording shows the real timeline
            cfg.medConfig.ecTailLen = 0         # no echo canceller: nothing is captured here
            cfg.medConfig.threadCnt = 1
            cfg.logConfig.writer = self._log_writer
            cfg.logConfig.decor = 0
            # pjsip's info level dumps every call's statistics: only warnings, unless debugging
            level = 5 if log.isEnabledFor(logging.DEBUG) else 2
            cfg.logConfig.level = level
            cfg.logConfig.consoleLevel = level
            cfg.logConfig.msgLogging = 0
            ep.libInit(cfg)
            ep.audDevManager().setNullDev()
            transport = pj.TransportConfig()
            transport.port = s.listen_port
            if s.listen_host not in ("0.0.0.0", "::"):  # nosec B104  # a comparison: binds to all interfaces only when consent.listen says so
                transport.boundAddress = s.listen_host
            if s.contact_host:
                transport.publicAddress = s.contact_host
            ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, transport)
            self._set_codecs(ep)
            ep.libStart()
            self.account = self._create_account()
        except AnnouncerError:
            self._destroy()
            raise
        except pj.Error as err:
            self._destroy()
            raise AnnouncerError(f"consent announcer on {s.listen_host}:{s.listen_port}: {err.info()}") from err
        self.address = f"{s.listen_host}:{s.listen_port}"
        missing = [n for n in s.prompt_names() if playback_file(s.prompt_dir, n) is None]
        if missing:
            log.error("prompts missing in %s: %s (calls choosing them are refused, outcome unknown_prompt; "
                      "run `recorderd consent prompts`)", s.prompt_dir, ", ".join(missing))
        log.info("consent announcer listening on udp %s, codecs %s", self.address, ", ".join(s.codecs))

    def _set_codecs(self, ep: _Endpoint) -> None:
        available = {c.codecId.lower(): c.codecId for c in ep.codecEnum2()}
        for codec_id in available.values():
            ep.codecSetPriority(codec_id, 0)
        for rank, wanted in enumerate(self.settings.codecs):
            matches = [cid for low, cid in available.items() if low.startswith(wanted.lower())]
            if not matches:
                raise AnnouncerError(f"consent.codecs: {wanted} is not available in pjsua2 "
                                     f"(available: {', '.join(sorted(available.values()))})")
            for codec_id in matches:
                ep.codecSetPriority(codec_id, 254 - rank)

    def _create_account(self) -> _Account:
        s = self.settings
        acc_cfg = pj.AccountConfig()
        acc_cfg.idUri = s.account
        media = acc_cfg.mediaConfig
        media.transportConfig.port = s.rtp_port
        media.transportConfig.portRange = s.rtp_port_count
        if s.listen_host not in ("0.0.0.0", "::"):  # nosec B104  # a comparison: binds to all interfaces only when consent.listen says so
            media.transportConfig.boundAddress = s.listen_host
        if s.contact_host:
            media.transportConfig.publicAddress = s.contact_host
        media.lockCodecEnabled = False      # no re-INVITE after answering to narrow the codecs
        if s.registrar is not None:
            acc_cfg.regConfig.registrarUri = s.registrar
            acc_cfg.sipConfig.authCreds.append(pj.AuthCredInfo("digest", "*", s.auth_user, 0, self.password or ""))
        account = _Account(self)
        account.create(acc_cfg, True)
        return account

    def run(self, stop: threading.Event, *, heartbeat: Callable[[], None] | None = None) -> None:
        """Poll the SIP stack and serve calls until ``stop`` is set; then end the calls left."""
        assert self.ep is not None
        try:
            while not stop.is_set():
                self.poll()
                if heartbeat is not None:
                    heartbeat()
        finally:
            self.shutdown()

    def poll(self) -> None:
        assert self.ep is not None
        self.ep.libHandleEvents(POLL_MS)
        self._drain()
        now = self.clock()
        for key, live in list(self.calls.items()):
            action = live.progress.due(now)
            if action is not None:
                self._act(key, live, action)

    def shutdown(self) -> None:
        """End every call (each still catalogued), then destroy the endpoint."""
        if self.ep is None:
            return
        for key, live in list(self.calls.items()):
            live.progress.notes.append("announcer stopped")
            self._hangup(key, live, 503 if live.progress.answered_at is None else 200)
        deadline = time.monotonic() + SHUTDOWN_S
        while self.calls and time.monotonic() < deadline:
            self.ep.libHandleEvents(POLL_MS)
            self._drain()
        for key in list(self.calls):   # no DISCONNECTED in time: catalogue them anyway
            self._ended(key, self.clock(), 0, "announcer stopped")
        self._destroy()

    def _destroy(self) -> None:
        self.calls.clear()
        self.orphans.clear()
        self.account = None
        gc.collect()   # pjsua2 objects must go before the library (else pjsua asserts on exit)
        if self.ep is not None:
            try:
                self.ep.libDestroy()
            finally:
                self.ep = None

    # -- callbacks (on the polling thread) -----------------------------------------------------

    def _incoming(self, account: _Account, prm: Any) -> None:
        now = self.clock()
        call = _Call(account, prm.callId, self.events, next(self._keys))
        try:
            invite = invite_facts(parse_sip(str(prm.rdata.wholeMsg).encode()), str(prm.rdata.srcAddress))
        except ParseError as err:
            log.warning("unparsable INVITE from %s refused: %s", prm.rdata.srcAddress, err)
            self.orphans[call.key] = call
            self._respond(call, 400, "Bad Request")
            return
        plan = plan_call(invite, self.plan_settings, self._local_time(now), self._find_prompt)
        progress = CallProgress(invite, plan, now, self.settings.handoff, self.settings.lead_in_s,
                                self.settings.refer_timeout_s, trunk=call_trunk(invite, self.settings.trunk_header),
                                language=invite.header(self.settings.language_header),
                                correlation=(invite.header(self.settings.link.header)
                                             if self.settings.link.header else None))
        self.calls[call.key] = _Live(call, progress)
        if plan.refuse is not None:
            code, reason, outcome = plan.refuse
            log.warning("call %s from %s refused: %s (%s)", invite.call_id, invite.caller, reason, outcome)
            self._respond(call, code, reason)
            return
        log.info("call %s from %s to %s: prompt %s (%s)", invite.call_id, invite.caller, invite.called,
                 plan.prompt, plan.rule)
        self._respond(call, 200, "OK")

    def _respond(self, call: _Call, code: int, reason: str) -> None:
        op = pj.CallOpParam()
        op.statusCode = code
        op.reason = reason
        try:
            if code >= 300:
                call.hangup(op)      # a final non-2xx response to the INVITE
            else:
                call.answer(op)
        except pj.Error as err:
            live = self.calls.get(call.key)
            if live is not None:
                self._act(call.key, live, live.progress.failed(f"answering failed: {err.info()}"))

    def _rejected(self, prm: Any) -> None:
        """pjsua refused an INVITE itself (488 when no codec fits): catalogue it too."""
        now = self.clock()
        source = str(prm.rdata.srcAddress)
        try:
            invite = invite_facts(parse_sip(str(prm.rdata.wholeMsg).encode()), source)
        except ParseError as err:
            log.warning("unparsable INVITE from %s rejected by the SIP stack: %s", source, err)
            return
        event = rejected_announcement(invite, now, int(prm.statusCode), str(prm.reason), self.settings.codecs,
                                      call_trunk(invite, self.settings.trunk_header))
        event.language = invite.header(self.settings.language_header)
        log.warning("call %s from %s refused by the SIP stack: %s (%s)", invite.call_id, invite.caller,
                    event.detail, event.outcome)
        self._catalogue(event)

    # -- the queue -----------------------------------------------------------------------------

    def _drain(self) -> None:
        while True:
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                return
            kind, key, when = event[0], event[1], event[2]
            live = self.calls.get(key)
            if live is None:
                if kind == "state" and event[3] == pj.PJSIP_INV_STATE_DISCONNECTED:
                    self.orphans.pop(key, None)
                continue
            if kind == "state":
                self._state(key, live, when, *event[3:])
            elif kind == "media":
                self._media(key, live, when)
            elif kind == "eof":
                self._stop_player(live)
                live.progress.prompt_finished(when)
            elif kind == "xfer":
                action = live.progress.transfer_status(event[3], event[4], event[5], when)
                if action is not None:
                    self._act(key, live, action)

    def _state(self, key: int, live: _Live, when: float, state: int, code: int, reason: str) -> None:
        if state == pj.PJSIP_INV_STATE_CONFIRMED:
            live.progress.answered(when)
        elif state == pj.PJSIP_INV_STATE_DISCONNECTED:
            self._ended(key, when, code, reason)

    def _media(self, key: int, live: _Live, when: float) -> None:
        try:
            info = live.call.getInfo()
            audio = [m for m in info.media if m.type == pj.PJMEDIA_TYPE_AUDIO
                     and m.status == pj.PJSUA_CALL_MEDIA_ACTIVE]
            if not audio:
                return
            stream = live.call.getStreamInfo(audio[0].index)
            live.progress.media_ready(when, f"{stream.codecName}/{stream.codecClockRate}")
            live.extra["media_index"] = audio[0].index
        except pj.Error as err:
            self._act(key, live, live.progress.failed(f"media: {err.info()}"))

    def _start_prompt(self, key: int, live: _Live) -> None:
        path = live.progress.plan.prompt_file
        assert path is not None
        try:
            player = _Player(self.events, key)
            player.createPlayer(str(path), pj.PJMEDIA_FILE_NO_LOOP)
            player.startTransmit(live.call.getAudioMedia(live.extra.get("media_index", -1)))
        except pj.Error as err:
            self._act(key, live, live.progress.failed(f"prompt {path}: {err.info()}"))
            return
        live.player = player
        live.progress.prompt_started(self.clock())

    def _stop_player(self, live: _Live) -> None:
        """Disconnect the prompt from a call that is still up; dropping the player (after the
        call ended too) destroys it and removes it from the conference bridge."""
        if live.player is None:
            return
        if live.call.isActive():
            with contextlib.suppress(pj.Error):   # the call's media may be going already
                live.player.stopTransmit(live.call.getAudioMedia(live.extra.get("media_index", -1)))
        live.player = None

    def _act(self, key: int, live: _Live, action: str | None) -> None:
        if action == START_PROMPT:
            self._start_prompt(key, live)
        elif action == REFER:
            target = live.progress.plan.target
            log.info("call %s: prompt played, REFER to %s", live.progress.invite.call_id, target)
            try:
                live.call.xfer(target or "", pj.CallOpParam())
            except pj.Error as err:
                self._act(key, live, live.progress.refer_failed_to_send(err.info()))
        elif action == HANGUP:
            self._stop_player(live)
            self._hangup(key, live, 200)

    def _hangup(self, key: int, live: _Live, code: int) -> None:
        if not live.call.isActive():
            return   # the other side ended it already (a transferee hangs up after the transfer)
        op = pj.CallOpParam()
        op.statusCode = code
        try:
            live.call.hangup(op)
        except pj.Error as err:   # already disconnecting
            log.debug("hangup of call %s: %s", live.progress.invite.call_id, err.info())

    def _ended(self, key: int, when: float, code: int, reason: str) -> None:
        live = self.calls.pop(key, None)
        if live is None:
            return
        self._stop_player(live)
        self._catalogue(live.progress.disconnected(when, code, reason))

    def _catalogue(self, event: Announcement) -> None:
        self.handled += 1
        log.info("announcement %s: %s, prompt %s played %.1f s%s", event.call_id, event.outcome, event.prompt,
                 event.prompt_played_s, f" ({event.detail})" if event.detail else "")
        try:
            self.record(event)
        except Exception:   # noqa: BLE001 - a full disk must not stop the announcements
            log.exception("could not catalogue the announcement of call %s", event.call_id)

    # -- helpers -------------------------------------------------------------------------------

    def _find_prompt(self, name: str) -> tuple[Path, float] | None:
        path = playback_file(self.settings.prompt_dir, name)
        if path is None:
            return None
        try:
            return path, prompt_duration_s(path)
        except RuntimeError as err:
            log.error("prompt %s: %s", path, err)
            return None

    def _local_time(self, now: float) -> datetime:
        tz = self.settings.timezone
        return datetime.fromtimestamp(now, tz) if tz is not None else datetime.fromtimestamp(now)
