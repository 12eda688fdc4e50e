"""A full disk under the daemon (issue 4, Must show 4).

The vault lives on a small tmpfs the test mounts. SIPp places a call every second while the
daemon records; midway a filler file takes the free space under the floor, later it is
deleted. Checked: no recording is corrupt (`recorderd verify`); the calls active when the
floor was crossed were closed cleanly as partial ("disk_full"); calls that started while the
disk was full are catalogued as not recorded with reason disk_full; calls after the space
returned are complete again.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

from recorderd.cli import main
from tests.system.test_daemon_crash import cli
from tests.system.test_daemon_sipp import SIPP_SHARE, start_daemon

TMPFS_MB = 24
FLOOR_MB, RESUME_MB = 8, 12


def test_disk_floor_pauses_and_resumes_recording(tmp_path: Path) -> None:
    import socket

    assert main(["init", str(tmp_path / "box")]) == 0
    config = tmp_path / "box" / "recorderd.toml"
    text = config.read_text().replace('metrics_listen = "127.0.0.1:9464"', 'metrics_listen = "off"')
    text = text.replace("min_free_mb = 512", f"min_free_mb = {FLOOR_MB}")
    text = text.replace("resume_free_mb = 1024", f"resume_free_mb = {RESUME_MB}")
    config.write_text(text)
    vault = tmp_path / "box" / "vault"
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_MB}m,mode=0700", "tmpfs", str(vault)], check=True)
    pcap_dir = tmp_path / "sipp" / "pcap"
    pcap_dir.mkdir(parents=True)
    for name in ("g711a.pcap", "dtmf_2833_1.pcap"):
        shutil.copy(SIPP_SHARE / name, pcap_dir / name)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    daemon = start_daemon(config, notify, str(tmp_path / "notify.sock"))
    uas = subprocess.Popen(["sipp", "-sn", "uas", "-i", "127.0.0.1", "-p", "5092", "-mp", "46000", "-rtp_echo",
                            "-nostdin", "-timeout", "120"], cwd=tmp_path / "sipp",
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    uac = subprocess.Popen(["sipp", "127.0.0.1:5092", "-sn", "uac_pcap", "-i", "127.0.0.1", "-p", "5093",
                            "-mp", "48000", "-m", "24", "-l", "24", "-r", "1", "-nostdin", "-timeout", "120"],
                           cwd=tmp_path / "sipp", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    filler = vault / "filler"
    try:
        time.sleep(12.0)   # the first calls (9 s each, then BYE and linger) have ended
        free = shutil.disk_usage(vault).free
        filler.write_bytes(b"\0" * (free - (FLOOR_MB // 2) * (1 << 20)))   # under the floor
        time.sleep(8.0)
        filler.unlink()                                                      # space returns
        uac.wait(timeout=90)
        time.sleep(3.0)
    finally:
        uas.terminate()
        uac.kill()
        daemon.send_signal(signal.SIGTERM)
        out, _ = daemon.communicate(timeout=60)
        notify.close()
    try:
        assert daemon.returncode == 0, out[-2000:]
        assert "recording paused" in out and "recording resumed" in out, out[-2000:]
        rows = json.loads(cli(config, "search", "--limit", "100", "--json", "--order", "started_at").stdout)["rows"]
        partial = [r for r in rows if r["state"] == "partial"]
        assert partial and all("disk_full" in (r["partial_note"] or "") for r in partial)
        complete = [r for r in rows if r["state"] == "complete"]
        first_partial = min(r["started_at"] for r in partial)
        assert any(r["started_at"] < first_partial for r in complete), "calls before the floor are complete"
        assert any(r["started_at"] > first_partial for r in complete), "recording resumed after space returned"
        from recorderd.appliance import open_appliance
        from recorderd.config import load

        with open_appliance(load(config), recover=False, warnings=None) as app:
            reader = app.catalog.reader()
            refused = [row for row in reader.not_recorded(limit=100) if row.reason == "disk_full"]
            reader.close()
        assert refused, "calls that started while the disk was full are catalogued as not recorded"
        verify = cli(config, "verify")
        assert verify.returncode == 0, verify.stdout + verify.stderr
    finally:
        subprocess.run(["umount", "-l", str(vault)], check=False)
