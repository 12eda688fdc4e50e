#!/usr/bin/env python3
"""`make demo`: generate a small capture with known calls, replay it, show the recordings.

The capture holds three calls a bank's mirror port could show: a plain call with DTMF, a
call with 5 % packet loss and a hold, and a G.722 wideband call over SIP/TCP on a VLAN. The
recordings land in demo/recordings/ (WAV + JSON per call).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from recorderd.cli import main as recorderd  # noqa: E402
from tests.gen.callgen import CallPlan, DtmfPress, Hold, LegPlan, write_capture  # noqa: E402

START = 1_767_225_600.0   # 2026-01-01 00:00 UTC


def demo_calls() -> list[CallPlan]:
    return [
        CallPlan(call_id="demo-plain@pbx.bank.example", start_ts=START, duration_s=8.0,
                 caller_num="+4930123456789", callee_num="7001",
                 dtmf=[DtmfPress(2.0, "4"), DtmfPress(2.5, "2")]),
        CallPlan(call_id="demo-lossy-hold@pbx.bank.example", start_ts=START + 1.0, duration_s=10.0,
                 caller_num="+4940987654321", callee_num="7002", caller_ip="10.0.0.3", callee_ip="10.0.0.4",
                 caller=LegPlan(440.0, loss_rate=0.05), callee=LegPlan(1000.0, loss_rate=0.05),
                 hold=Hold(3.0, 5.0)),
        CallPlan(call_id="demo-wideband@pbx.bank.example", start_ts=START + 2.0, duration_s=6.0,
                 caller_num="+4989555000111", callee_num="7003", caller_ip="10.0.0.5", callee_ip="10.0.0.6",
                 caller=LegPlan(440.0, codec="g722"), callee=LegPlan(1000.0, codec="g722"),
                 transport="tcp", vlan=120),
    ]


def main() -> int:
    out = REPO / "demo"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    capture = out / "demo-calls.pcap"
    write_capture(str(capture), demo_calls(), seed=2026)
    print(f"generated {capture}")
    code = recorderd(["replay", str(capture), "--out", str(out / "recordings")])
    if code:
        return code
    print("\nrecordings (channel 0 = caller, channel 1 = callee):")
    for meta_path in sorted((out / "recordings").glob("*.json")):
        if meta_path.name == "not-recorded.json":
            continue
        meta = json.loads(meta_path.read_text())
        legs = meta["completeness"]["legs"]
        loss = ", ".join(f"ch{leg['channel']} lost {leg['lost']}/{leg['expected']}" for leg in legs)
        digits = "".join(d["digit"] for d in meta["dtmf"]) or "-"
        print(f"  {meta['recording_id']}  {meta['caller']} -> {meta['callee']}  {meta['duration_s']:.1f} s "
              f"{meta['sample_rate']} Hz {'/'.join(meta['codecs'])}  DTMF {digits}  {loss}")
        print(f"      listen: play {meta_path.with_suffix('.wav').relative_to(REPO)}")
    print("\n(`play` is sox's player; any WAV player works. Metadata is in the .json beside each WAV.)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
