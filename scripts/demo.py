#!/usr/bin/env python3
"""`make demo`: the appliance on its embedded default, recording real calls on loopback.

1. `recorderd init demo/appliance` (config, fresh keys, vault, catalog; capture on lo);
2. `recorderd run` records from lo;
3. SIPp places three calls (7 s of G.711 speech and a DTMF digit each) to a SIPp UAS that
   echoes the audio back, so both legs are recorded;
4. the recordings appear: `recorderd search`, one is decrypted with `export-audio`;
5. the console: `recorderd web` on https://127.0.0.1:8443 (self-signed certificate) with a demo
   admin whose password and TOTP secret are printed (made fresh each run, never shipped);
6. with a terminal, the daemon and the console keep running (metrics on 127.0.0.1:9464)
   until Ctrl-C.

`scripts/demo.py --replay` instead generates a capture with known calls (loss, hold, a G.722
call over SIP/TCP on a VLAN) and replays it offline into plaintext WAV + JSON.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from recorderd.cli import main as recorderd  # noqa: E402

DEMO = REPO / "demo"
SIPP_SHARE = Path("/usr/share/sip-tester")
START = 1_767_225_600.0   # 2026-01-01 00:00 UTC
CALLS = 3


def cli(config: Path, *argv: str) -> str:
    result = subprocess.run([sys.executable, "-m", "recorderd", "--config", str(config), *argv],
                            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    return result.stdout


def demo_admin(config: Path) -> tuple[str, str, str]:
    """(user, password, TOTP secret) of a console admin made for this demo run only."""
    user, password = "demo-admin", secrets.token_urlsafe(12)
    made = subprocess.run([sys.executable, "-m", "recorderd", "--config", str(config), "user", "add", user,
                           "--role", "admin", "--password-stdin"], input=password + "\n", capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, check=True)
    found = re.search(r"secret=([A-Z2-7]+)", made.stdout)
    return user, password, found.group(1) if found else "?"


def live_demo() -> int:
    shutil.rmtree(DEMO / "appliance", ignore_errors=True)
    DEMO.mkdir(exist_ok=True)
    if recorderd(["init", str(DEMO / "appliance")]):
        return 1
    config = DEMO / "appliance" / "recorderd.toml"
    print(f"appliance laid out; configuration {config.relative_to(REPO)}")
    sipp_dir = DEMO / "sipp"
    (sipp_dir / "pcap").mkdir(parents=True, exist_ok=True)
    for name in ("g711a.pcap", "dtmf_2833_1.pcap"):
        shutil.copy(SIPP_SHARE / name, sipp_dir / "pcap" / name)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    daemon = subprocess.Popen([sys.executable, "-m", "recorderd", "--config", str(config), "run"], env=env)
    user, password, totp_secret = demo_admin(config)
    web = subprocess.Popen([sys.executable, "-m", "recorderd", "--config", str(config), "web"], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(2.0)
    print("\nrecorderd run is capturing on lo; SIPp places 3 calls (about 12 s) ...\n")
    uas = subprocess.Popen(["sipp", "-sn", "uas", "-i", "127.0.0.1", "-p", "5062", "-mp", "16000", "-rtp_echo",
                            "-nostdin", "-timeout", "60"], cwd=sipp_dir,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        subprocess.run(["sipp", "127.0.0.1:5062", "-sn", "uac_pcap", "-i", "127.0.0.1", "-p", "5063",
                        "-mp", "18000", "-m", str(CALLS), "-l", str(CALLS), "-r", "1", "-nostdin", "-timeout", "60"],
                       cwd=sipp_dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=90)
        time.sleep(3.0)
        print("$ recorderd search")
        print(cli(config, "search"))
        rows = json.loads(cli(config, "search", "--json"))["rows"]
        if rows:
            wav = DEMO / f"{rows[0]['recording_id']}.wav"
            cli(config, "export-audio", rows[0]["recording_id"], "--out", str(wav), "--reason", "demo")
            print(f"decrypted one recording: play {wav.relative_to(REPO)}   (left: caller, right: callee)")
        print(f"all of them: RECORDERD_CONFIG={config.relative_to(REPO)} .venv/bin/recorderd search --unmask")
        print("audit trail check: .venv/bin/recorderd --config", config.relative_to(REPO), "audit verify")
        print("\nconsole: https://127.0.0.1:8443 (self-signed certificate: accept it in the browser)")
        print(f"  user {user}   password {password}")
        print(f"  TOTP secret {totp_secret} (an authenticator app, or the current code with:")
        print(f"  .venv/bin/python -c \"import pyotp; print(pyotp.TOTP('{totp_secret}').now())\")")
        if sys.stdin.isatty():
            print("\nthe daemon keeps recording (metrics: curl -s 127.0.0.1:9464/metrics); Ctrl-C stops it")
            with contextlib.suppress(KeyboardInterrupt):
                daemon.wait()
    finally:
        web.terminate()
        uas.terminate()
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)
    return 0 if rows else 1


def replay_demo() -> int:
    from tests.gen.callgen import CallPlan, DtmfPress, Hold, LegPlan, write_capture

    out = DEMO / "replay"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    capture = out / "demo-calls.pcap"
    plans = [
        CallPlan(call_id="demo-plain@pbx.bank.example", start_ts=START, duration_s=8.0,
                 caller_num="+4930123456789", callee_num="7001", dtmf=[DtmfPress(2.0, "4"), DtmfPress(2.5, "2")]),
        CallPlan(call_id="demo-lossy-hold@pbx.bank.example", start_ts=START + 1.0, duration_s=10.0,
                 caller_num="+4940987654321", callee_num="7002", caller_ip="10.0.0.3", callee_ip="10.0.0.4",
                 caller=LegPlan(440.0, loss_rate=0.05), callee=LegPlan(1000.0, loss_rate=0.05), hold=Hold(3.0, 5.0)),
        CallPlan(call_id="demo-wideband@pbx.bank.example", start_ts=START + 2.0, duration_s=6.0,
                 caller_num="+4989555000111", callee_num="7003", caller_ip="10.0.0.5", callee_ip="10.0.0.6",
                 caller=LegPlan(440.0, codec="g722"), callee=LegPlan(1000.0, codec="g722"), transport="tcp", vlan=120),
    ]
    write_capture(str(capture), plans, seed=2026)
    if recorderd(["replay", str(capture), "--out", str(out / "recordings")]):
        return 1
    print("\nrecordings (channel 0 = caller, channel 1 = callee):")
    for meta_path in sorted((out / "recordings").glob("*.json")):
        if meta_path.name == "not-recorded.json":
            continue
        meta = json.loads(meta_path.read_text())
        loss = ", ".join(f"ch{leg['channel']} lost {leg['lost']}/{leg['expected']}" for leg in meta["completeness"]["legs"])
        digits = "".join(d["digit"] for d in meta["dtmf"]) or "-"
        print(f"  {meta['caller']} -> {meta['callee']}  {meta['duration_s']:.1f} s {meta['sample_rate']} Hz "
              f"{'/'.join(meta['codecs'])}  DTMF {digits}  {loss}")
        print(f"      play {meta_path.with_suffix('.wav').relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(replay_demo() if "--replay" in sys.argv else live_demo())
