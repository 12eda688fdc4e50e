"""kill -9 of the daemon during calls, then a restart (issue 4, Must show 2).

SIPp places calls one per second (each 7 s of speech, then a digit, BYE at 9 s); the daemon is
SIGKILLed at 12.5 s, when calls 0-1 have ended, 2-5 are past their speech and 6-7 are talking,
then started again. Checked: it is capturing again
(READY=1) within 5 s; the calls finished before the kill are complete and verify; the calls
interrupted are recovered as partial, with at most 1 s of their audio before the kill lost;
`recorderd verify` finds nothing wrong.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.system.test_daemon_sipp import SIPP_SHARE, appliance, start_daemon  # noqa: F401 - fixture

REPO = Path(__file__).resolve().parents[2]
CALLS = 8
MAX_LOST_S = 1.0


def cli(config: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "recorderd", "--config", str(config), *argv],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)


def test_kill_9_during_calls_then_restart(appliance: Path, tmp_path: Path) -> None:  # noqa: F811
    import socket

    pcap_dir = tmp_path / "sipp" / "pcap"
    pcap_dir.mkdir(parents=True)
    for name in ("g711a.pcap", "dtmf_2833_1.pcap"):
        shutil.copy(SIPP_SHARE / name, pcap_dir / name)
    sockets = []

    def notify_socket(name: str) -> tuple[socket.socket, str]:
        path = str(tmp_path / name)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sockets.append(sock)
        return sock, path

    first = start_daemon(appliance, *notify_socket("n1.sock"))
    uas = subprocess.Popen(["sipp", "-sn", "uas", "-i", "127.0.0.1", "-p", "5082", "-mp", "36000", "-rtp_echo",
                            "-nostdin", "-timeout", "90"], cwd=tmp_path / "sipp",
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    uac = subprocess.Popen(["sipp", "127.0.0.1:5082", "-sn", "uac_pcap", "-i", "127.0.0.1", "-p", "5083",
                            "-mp", "38000", "-m", str(CALLS), "-l", str(CALLS), "-r", "1", "-nostdin",
                            "-timeout", "90"], cwd=tmp_path / "sipp",
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    second = None
    try:
        time.sleep(12.5)
        first.send_signal(signal.SIGKILL)
        killed_at = time.time()
        first.wait(timeout=10)
        restart = time.monotonic()
        second = start_daemon(appliance, *notify_socket("n2.sock"))
        assert time.monotonic() - restart <= 5.0, "not capturing again within 5 s"
        uac.wait(timeout=60)
        time.sleep(3.0)
    finally:
        uas.terminate()
        uac.kill()
        if second is not None:
            second.send_signal(signal.SIGTERM)
            second.communicate(timeout=60)
        for sock in sockets:
            sock.close()
    rows = json.loads(cli(appliance, "search", "--limit", "100", "--json").stdout)["rows"]
    states = {r["state"] for r in rows}
    assert states <= {"complete", "partial"}
    complete = [r for r in rows if r["state"] == "complete"]
    partial = [r for r in rows if r["state"] == "partial"]
    assert complete, "calls that ended before the kill must be complete"
    assert partial, "calls in flow at the kill must be recovered as partial"
    talking_at_kill = 0
    for row in partial:
        assert "recovered after a recorder crash" in (row["partial_note"] or "")
        detail = json.loads(cli(appliance, "show", row["recording_id"], "--json").stdout)
        started = detail["metadata"]["started_at_epoch"]
        talking = min(killed_at - started, 7.05)          # SIPp's speech lasts 7.05 s
        talking_at_kill += killed_at - started < 7.05
        assert talking - detail["duration_s"] <= MAX_LOST_S, (row["recording_id"], talking, detail["duration_s"])
    assert talking_at_kill, "the kill must land while some calls are talking"
    verify = cli(appliance, "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
