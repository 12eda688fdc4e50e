"""The timeline scenarios, shared by tests/capture/test_timeline.py (engine) and test_gen.py (generator).

Each scenario is a list of :class:`CallPlan`; every call of every scenario is checked the same
way (tone per channel, timing, duration). Short calls keep the whole suite fast.
"""

from __future__ import annotations

from collections.abc import Callable

from tests.gen.callgen import CallPlan, DtmfPress, Hold, LegPlan, Reinvite, Spurt

T0 = 1_718_000_000.0            # 2024-06-10T06:13:20Z
CALLER_HZ = 440.0
CALLEE_HZ = 1000.0
BURST_FIRST_INDEX = 100         # the 300 ms burst: caller packets 100..114 (2.02 s .. 2.32 s after answer)
BURST_PACKETS = 15


def _both_legs(**impairments: float) -> tuple[LegPlan, LegPlan]:
    """Caller and callee legs with the same network impairments."""
    return LegPlan(CALLER_HZ, **impairments), LegPlan(CALLEE_HZ, **impairments)  # type: ignore[arg-type]


def clean() -> list[CallPlan]:
    """Plain call; both legs forced across a sequence-number and an RTP-timestamp wrap."""
    return [CallPlan("clean-1@gen", T0, 3.0,
                     caller=LegPlan(CALLER_HZ, seq_start=65500, ts_start=(1 << 32) - 8000),
                     callee=LegPlan(CALLEE_HZ, seq_start=65530, ts_start=(1 << 32) - 160))]


def long_call() -> list[CallPlan]:
    """One 200 s call alone in a capture of ~4 MB: a single read chunk spans all of it, so the
    reader must hand the engine capture time in steps (a 120 s+ batch lost audio silently)."""
    return [CallPlan("long-1@gen", T0, 200.0)]


def loss() -> list[CallPlan]:
    """5 % random loss on both legs plus a 300 ms burst on the caller leg."""
    burst = set(range(BURST_FIRST_INDEX, BURST_FIRST_INDEX + BURST_PACKETS))
    return [CallPlan("loss-1@gen", T0, 5.0, caller=LegPlan(CALLER_HZ, loss_rate=0.05, drop=burst),
                     callee=LegPlan(CALLEE_HZ, loss_rate=0.05))]


def reorder() -> list[CallPlan]:
    """10 % of packets arrive 25-60 ms late (after up to three later packets)."""
    caller, callee = _both_legs(reorder_rate=0.10, reorder_max_ms=60.0)
    return [CallPlan("reorder-1@gen", T0, 4.0, caller=caller, callee=callee)]


def duplicates() -> list[CallPlan]:
    """5 % of packets delivered twice."""
    caller, callee = _both_legs(duplicate_rate=0.05)
    return [CallPlan("dup-1@gen", T0, 4.0, caller=caller, callee=callee)]


def jitter() -> list[CallPlan]:
    """Uniform ±20 ms arrival jitter on both legs."""
    caller, callee = _both_legs(jitter_ms=20.0)
    return [CallPlan("jitter-1@gen", T0, 4.0, caller=caller, callee=callee)]


def talk_spurts() -> list[CallPlan]:
    """Silence suppression: nothing is sent between spurts; the legs take turns."""
    caller = LegPlan(CALLER_HZ, spurts=[Spurt(0.0, 0.8), Spurt(1.6, 2.2), Spurt(3.2, 3.98)])
    callee = LegPlan(CALLEE_HZ, spurts=[Spurt(0.9, 1.5), Spurt(2.4, 3.99)])
    return [CallPlan("vad-1@gen", T0, 4.0, caller=caller, callee=callee)]


def hold() -> list[CallPlan]:
    """Hold for 1.5 s (no RTP either way), then resume with an RTP timestamp jump."""
    return [CallPlan("hold-1@gen", T0, 4.0, hold=Hold(1.0, 2.5))]


def reinvite_pcma() -> list[CallPlan]:
    """Media moves to new ports and from PCMU to PCMA mid-call."""
    return [CallPlan("reinvite-pcma@gen", T0, 4.0, reinvite=Reinvite(2.0, 41000, 51000, "pcma"))]


def reinvite_g722() -> list[CallPlan]:
    """Media moves to G.722: the recording becomes 16 kHz."""
    return [CallPlan("reinvite-g722@gen", T0, 4.0, reinvite=Reinvite(2.0, 41002, 51002, "g722"))]


def port_reuse() -> list[CallPlan]:
    """A second call on the same addresses and ports, new Call-ID, after the first has ended."""
    first = CallPlan("reuse-1@gen", T0, 2.0)
    second = CallPlan("reuse-2@gen", T0 + 4.0, 2.0, caller=LegPlan(660.0), callee=LegPlan(1400.0))
    return [first, second]


def concurrent(n: int = 50) -> list[CallPlan]:
    """n overlapping calls (PCMU and PCMA alternating), own phones and tones, started 50 ms apart."""
    calls = []
    for i in range(n):
        codec = "pcmu" if i % 2 == 0 else "pcma"
        calls.append(CallPlan(
            f"conc-{i:02d}@gen", T0 + 0.05 * i, 3.0,
            caller=LegPlan(400.0 + 10 * (i % 20), codec), callee=LegPlan(1000.0 + 20 * (i % 25), codec),
            caller_ip=f"10.10.{i // 200}.{i % 200 + 1}", callee_ip=f"10.20.{i // 200}.{i % 200 + 1}",
            caller_num=f"3{i:03d}", callee_num=f"4{i:03d}", caller_port=16384 + 2 * i,
            callee_port=24000 + 2 * i))
    return calls


def vlan() -> list[CallPlan]:
    """Everything 802.1Q-tagged on VLAN 120."""
    return [CallPlan("vlan-1@gen", T0, 3.0, vlan=120)]


def ipv6() -> list[CallPlan]:
    """IPv6 for SIP and media (c=IN IP6)."""
    return [CallPlan("ipv6-1@gen", T0, 3.0, caller_ip="2001:db8:10::1", callee_ip="2001:db8:20::2")]


def sip_tcp() -> list[CallPlan]:
    """SIP over one TCP connection; the INVITE and 200 OK span two segments."""
    return [CallPlan("tcp-1@gen", T0, 3.0, transport="tcp")]


def early_media() -> list[CallPlan]:
    """183 with SDP, 1.5 s of callee early media before the 200 OK; sample 0 is the early media."""
    return [CallPlan("early-1@gen", T0, 3.0, early_media_s=1.5)]


def dtmf() -> list[CallPlan]:
    """Caller presses 1, 5, # (RFC 4733); the callee hangs up (BYE from the callee)."""
    presses = [DtmfPress(0.6, "1", 100), DtmfPress(1.2, "5", 160), DtmfPress(2.0, "#", 120)]
    return [CallPlan("dtmf-1@gen", T0, 3.0, dtmf=presses, bye_by="callee")]


def no_bye() -> list[CallPlan]:
    """No BYE: the call ends by media inactivity."""
    return [CallPlan("nobye-1@gen", T0, 3.0, ends_with="none")]


def cancelled() -> list[CallPlan]:
    """CANCEL before answer: no media, must be listed in not-recorded.json."""
    return [CallPlan("cancel-1@gen", T0, 3.0, ends_with="cancel")]


SCENARIOS: dict[str, Callable[[], list[CallPlan]]] = {
    "clean": clean, "loss": loss, "reorder": reorder, "duplicates": duplicates, "jitter": jitter,
    "talk_spurts": talk_spurts, "hold": hold, "reinvite_pcma": reinvite_pcma, "reinvite_g722": reinvite_g722,
    "port_reuse": port_reuse, "concurrent": concurrent, "vlan": vlan, "ipv6": ipv6, "sip_tcp": sip_tcp,
    "early_media": early_media, "dtmf": dtmf, "no_bye": no_bye, "cancelled": cancelled,
    "long_call": long_call,
}
