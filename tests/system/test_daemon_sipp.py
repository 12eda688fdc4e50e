"""The daemon records real SIPp calls on loopback (issue 4, Must show 1).

`recorderd run` captures on lo while a SIPp UAC places 20 calls (uac_pcap: 7 s of G.711 A-law
speech and an RFC 2833 digit) against a SIPp UAS that echoes the RTP back (-rtp_echo), so every
call has both legs. tcpdump captures the same traffic beside it. Checked afterwards:
- every call is catalogued, complete, with both legs;
- its duration is within 0.1 s of the recording that `recorderd replay` makes from tcpdump's
  capture of the same packets, and its audio is the same;
- the caller's channel carries the speech SIPp sent (cross-correlation with the decoded
  g711a.pcap payload) and the digit is in the DTMF list.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from capture.codecs import ALAW_TO_PCM16
from capture.pcapio import read_batches
from recorderd.cli import main
from tests.support.audio import peak_correlation

SIPP_SHARE = Path("/usr/share/sip-tester")
CALLS = 20
REPO = Path(__file__).resolve().parents[2]


def wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def sent_speech() -> np.ndarray:
    """The audio SIPp's uac_pcap plays: g711a.pcap's RTP payloads, decoded."""
    chunks = []
    for batch in read_batches(SIPP_SHARE / "g711a.pcap"):
        for i in range(len(batch)):
            frame = bytes(batch.frame(i))
            payload = frame[14 + 20 + 8 + 12:]
            chunks.append(ALAW_TO_PCM16[np.frombuffer(payload, np.uint8)])
    return np.concatenate(chunks).astype(np.float64)


@pytest.fixture
def appliance(tmp_path: Path) -> Path:
    assert main(["init", str(tmp_path / "box")]) == 0
    config = tmp_path / "box" / "recorderd.toml"
    text = config.read_text()
    text = text.replace('metrics_listen = "127.0.0.1:9464"', 'metrics_listen = "off"')
    text = text.replace("min_free_mb = 512", "min_free_mb = 0").replace("resume_free_mb = 1024", "resume_free_mb = 0")
    text = text.replace('bpf_filter = "default"', 'bpf_filter = "udp and host 127.0.0.1"')
    config.write_text(text)
    return config


def start_daemon(config: Path, notify: socket.socket, notify_path: str) -> subprocess.Popen[str]:
    """Start `recorderd run` and wait for READY=1; like systemd, keep reading the notify
    socket afterwards (a datagram sender blocks once 10 unread messages are queued)."""
    env = {**os.environ, "NOTIFY_SOCKET": notify_path, "PYTHONPATH": str(REPO)}
    daemon = subprocess.Popen([sys.executable, "-m", "recorderd", "--config", str(config), "run"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    ready = threading.Event()

    def drain() -> None:
        notify.settimeout(0.5)
        while daemon.poll() is None:
            try:
                if "READY=1" in notify.recv(4096).decode():
                    ready.set()
            except (TimeoutError, OSError):
                continue

    threading.Thread(target=drain, daemon=True).start()
    assert ready.wait(30), "no READY=1 from the daemon"
    return daemon


def test_daemon_records_sipp_calls_with_both_legs(appliance: Path, tmp_path: Path) -> None:
    if not shutil.which("sipp"):
        raise AssertionError("sipp (Debian sip-tester) is required: make test installs it")
    pcap_dir = tmp_path / "sipp" / "pcap"
    pcap_dir.mkdir(parents=True)
    for name in ("g711a.pcap", "dtmf_2833_1.pcap"):
        shutil.copy(SIPP_SHARE / name, pcap_dir / name)
    notify_path = str(tmp_path / "notify.sock")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    reference_capture = tmp_path / "reference.pcap"
    tcpdump = subprocess.Popen(["tcpdump", "-i", "lo", "-w", str(reference_capture), "-U", "udp and host 127.0.0.1"],
                               stderr=subprocess.DEVNULL)
    daemon = start_daemon(appliance, notify, notify_path)
    uas = subprocess.Popen(["sipp", "-sn", "uas", "-i", "127.0.0.1", "-p", "5072", "-mp", "26000", "-rtp_echo",
                            "-nostdin", "-timeout", "90"], cwd=tmp_path / "sipp",
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        uac = subprocess.run(["sipp", "127.0.0.1:5072", "-sn", "uac_pcap", "-i", "127.0.0.1", "-p", "5073",
                              "-mp", "28000", "-m", str(CALLS), "-l", str(CALLS), "-r", "10", "-nostdin",
                              "-timeout", "90", "-timeout_error"],
                             cwd=tmp_path / "sipp", capture_output=True, text=True, timeout=120)
        assert uac.returncode == 0, uac.stdout[-2000:] + uac.stderr[-2000:]
        time.sleep(3.0)   # BYE linger and the last flushes
    finally:
        uas.terminate()
        daemon.send_signal(signal.SIGTERM)
        out, _ = daemon.communicate(timeout=60)
        tcpdump.send_signal(signal.SIGINT)
        tcpdump.wait(timeout=10)
    notify.close()
    assert daemon.returncode == 0, out[-3000:]

    listing = tmp_path / "listing.json"
    with open(listing, "w") as fh:
        subprocess.run([sys.executable, "-m", "recorderd", "--config", str(appliance), "search", "--limit", "100",
                        "--json", "--unmask"], stdout=fh, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    rows = {r["call_id"]: r for r in json.loads(listing.read_text())["rows"]}
    assert len(rows) == CALLS, sorted(rows)

    replayed = tmp_path / "replayed"
    assert main(["replay", str(reference_capture), "--out", str(replayed)]) == 0
    reference = {}
    for meta_path in replayed.glob("*.json"):
        if meta_path.name != "not-recorded.json":
            meta = json.loads(meta_path.read_text())
            reference[meta["call_id"]] = (meta, meta_path.with_suffix(".wav"))
    speech = sent_speech()
    for call_id, row in rows.items():
        assert row["state"] == "complete", call_id
        detail = tmp_path / f"{row['recording_id']}.json"
        with open(detail, "w") as fh:
            subprocess.run([sys.executable, "-m", "recorderd", "--config", str(appliance), "show",
                            row["recording_id"], "--json", "--unmask"], stdout=fh, check=True,
                           env={**os.environ, "PYTHONPATH": str(REPO)})
        meta = json.loads(detail.read_text())["metadata"]
        legs = meta["completeness"]["legs"]
        assert all(leg["received"] > 200 for leg in legs), (call_id, legs)
        ref_meta, ref_wav = reference[call_id]
        assert abs(meta["duration_s"] - ref_meta["duration_s"]) <= 0.1, (call_id, meta["duration_s"])
        # the caller pressed 1; the UAS echoes RTP (events too), so the callee's channel has it as well
        assert sorted((d["channel"], d["digit"]) for d in meta["dtmf"]) == [(0, "1"), (1, "1")]
        wav = tmp_path / f"{row['recording_id']}.wav"
        assert main(["--config", str(appliance), "export-audio", row["recording_id"], "--out", str(wav)]) == 0
        audio, rate = sf.read(wav, dtype="int16")
        assert rate == 8000
        assert peak_correlation(audio[:, 0].astype(np.float64), speech[: 4 * rate]) > 0.9
        ref_audio, _ = sf.read(ref_wav, dtype="int16")
        overlap = min(len(audio), len(ref_audio))
        assert peak_correlation(audio[:overlap, 1].astype(np.float64),
                                ref_audio[: 2 * rate, 1].astype(np.float64)) > 0.9
