"""A pjsua2 caller for the consent system tests (run as its own process: one pjsua2 endpoint
per process, and a pjsua assertion must not take pytest down).

    python consent_caller.py PLAN.json RESULT.json

PLAN: {"codecs": ["PCMA/8000"], "media_port": 42000, "timeout_s": 40,
       "calls": [{"name", "caller", "uri", "headers": {..}, "start_after_s", "record": WAV path or null,
                  "hangup_after_s": seconds after answer or null, "refer": "accept" | "reject",
                  "transferred_hangup_after_s": 1.5}]}
Each call uses its own account (its own caller number, sip:CALLER@127.0.0.1). What the caller
hears is recorded with an AudioMediaRecorder from the moment its media is up (the null sound
device stands in for a sound card). RESULT: per call, the SIP states with times, the REFER
target it was asked to call, how the transferred call went, the recording's start time.
"""

from __future__ import annotations

import contextlib
import gc
import json
import queue
import sys
import time
from typing import Any

import pjsua2 as pj

EVENTS: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()


class Call(pj.Call):
    def __init__(self, account: pj.Account, name: str, transferred: bool = False) -> None:
        super().__init__(account)
        self.account_ref = account
        self.name = name
        self.transferred = transferred

    def onCallState(self, prm: Any) -> None:
        info = self.getInfo()
        EVENTS.put(("state", self, time.time(), info.stateText, int(info.lastStatusCode), str(info.lastReason)))

    def onCallMediaState(self, prm: Any) -> None:
        EVENTS.put(("media", self, time.time()))

    def onCallTransferRequest(self, prm: Any) -> None:
        EVENTS.put(("refer", self, time.time(), str(prm.dstUri)))
        plan = PLANS[self.name]
        if plan.get("refer") == "reject":
            prm.statusCode = 603
        else:
            transfer = Call(self.account_ref, self.name, transferred=True)
            TRANSFERS.append(transfer)
            prm.newCall = transfer


class Account(pj.Account):
    def onIncomingCall(self, prm: Any) -> None:
        call = pj.Call(self, prm.callId)
        op = pj.CallOpParam()
        op.statusCode = 486
        call.hangup(op)


PLANS: dict[str, dict[str, Any]] = {}
TRANSFERS: list[Call] = []


def main() -> int:
    with open(sys.argv[1]) as fh:
        plan = json.load(fh)
    ep = pj.Endpoint()
    ep.libCreate()
    cfg = pj.EpConfig()
    cfg.uaConfig.threadCnt = 0
    cfg.uaConfig.maxCalls = 16
    cfg.logConfig.level = 1
    cfg.logConfig.consoleLevel = 1
    cfg.medConfig.noVad = True
    cfg.medConfig.ecTailLen = 0
    # a fixed 300 ms jitter buffer: on a loaded test machine packets come
    # in bursts, and an adaptive buffer would stretch what the caller hears (inserting or
    # dropping frames), which is the network's doing, not the announcer's
    cfg.medConfig.jbInit = 300
    cfg.medConfig.jbMinPre = -1
    cfg.medConfig.jbMaxPre = -1
    cfg.medConfig.jbMax = 2000
    ep.libInit(cfg)
    ep.audDevManager().setNullDev()
    transport = pj.TransportConfig()
    transport.port = 0
    transport.boundAddress = "127.0.0.1"
    transport.publicAddress = "127.0.0.1"
    ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, transport)
    for codec in ep.codecEnum2():
        ep.codecSetPriority(codec.codecId, 0)
    for rank, codec in enumerate(plan["codecs"]):
        ep.codecSetPriority(codec, 250 - rank)
    ep.libStart()
    results = serve(ep, plan)     # every Call and Account is gone when it returns...
    while True:                   # ...but those queued events still hold
        try:
            EVENTS.get_nowait()
        except queue.Empty:
            break
    TRANSFERS.clear()
    gc.collect()                  # pjsua2 objects must go before the library (else pjsua asserts)
    ep.libDestroy()
    with open(sys.argv[2], "w") as out:
        json.dump(results, out, indent=1)
    return 0


def serve(ep: pj.Endpoint, plan: dict[str, Any]) -> dict[str, Any]:
    accounts: list[Account] = []
    calls: dict[str, Call] = {}
    results: dict[str, dict[str, Any]] = {}
    recorders: dict[str, pj.AudioMediaRecorder] = {}
    pending = sorted(plan["calls"], key=lambda c: c.get("start_after_s", 0.0))
    total = len(pending)
    started = time.time()
    for spec in pending:
        PLANS[spec["name"]] = spec
        results[spec["name"]] = {"states": [], "refer_to": None, "transfer_states": [], "record_started_at": None,
                                 "confirmed_at": None, "final": None}
    deadline = started + plan.get("timeout_s", 40)
    hangups: dict[int, tuple[float, Call]] = {}
    done: set[str] = set()
    while time.time() < deadline and len(done) < total:
        while pending and time.time() - started >= pending[0].get("start_after_s", 0.0):
            spec = pending.pop(0)
            acc_cfg = pj.AccountConfig()
            acc_cfg.idUri = f"sip:{spec['caller']}@127.0.0.1"
            acc_cfg.mediaConfig.transportConfig.port = plan["media_port"] + 20 * len(accounts)
            acc_cfg.mediaConfig.transportConfig.portRange = 20
            acc_cfg.mediaConfig.transportConfig.boundAddress = "127.0.0.1"
            acc_cfg.mediaConfig.lockCodecEnabled = False
            account = Account()
            account.create(acc_cfg)
            accounts.append(account)
            call = Call(account, spec["name"])
            calls[spec["name"]] = call
            op = pj.CallOpParam(True)
            for name, value in spec.get("headers", {}).items():
                header = pj.SipHeader()
                header.hName, header.hValue = name, value
                op.txOption.headers.append(header)
            call.makeCall(spec["uri"], op)
        ep.libHandleEvents(10)
        now = time.time()
        while True:
            try:
                event = EVENTS.get_nowait()
            except queue.Empty:
                break
            kind, call, when = event[0], event[1], event[2]
            result = results[call.name]
            spec = PLANS[call.name]
            if kind == "state":
                _, _, _, state, code, reason = event
                (result["transfer_states"] if call.transferred else result["states"]).append([when, state, code, reason])
                if state == "CONFIRMED":
                    if call.transferred:
                        hangups[id(call)] = (when + spec.get("transferred_hangup_after_s", 1.5), call)
                    else:
                        result["confirmed_at"] = when
                        if spec.get("hangup_after_s") is not None:
                            hangups[id(call)] = (when + spec["hangup_after_s"], call)
                if state == "DISCONNECTED":
                    hangups.pop(id(call), None)
                    if not call.transferred:
                        result["final"] = [code, reason]
                        if not (spec.get("refer") == "accept" and result["refer_to"]):
                            done.add(call.name)
                    else:
                        done.add(call.name)
            elif kind == "media" and not call.transferred and spec.get("record") and call.name not in recorders:
                recorder = pj.AudioMediaRecorder()
                recorder.createRecorder(spec["record"])
                call.getAudioMedia(-1).startTransmit(recorder)
                recorders[call.name] = recorder
                result["record_started_at"] = when
            elif kind == "refer":
                result["refer_to"] = event[3]
                if spec.get("refer") == "reject":
                    result["refer_rejected"] = True
        for key, (at, call) in list(hangups.items()):
            if now >= at:
                hangups.pop(key)
                with contextlib.suppress(pj.Error):   # it ended meanwhile
                    call.hangup(pj.CallOpParam())
        # a call whose REFER was accepted is done once its transfer has ended too
        for name, result in results.items():
            if name not in done and result["final"] and result["transfer_states"] and \
                    result["transfer_states"][-1][1] == "DISCONNECTED":
                done.add(name)
    ep.hangupAllCalls()
    for _ in range(50):
        ep.libHandleEvents(10)
    return {"results": results, "finished": sorted(done)}


if __name__ == "__main__":
    sys.exit(main())
