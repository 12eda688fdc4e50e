"""The consent announcer with real peers on loopback (issue 8, Must show 1-3).

One run, checked by the tests below: `recorderd run` (consent stage on) captures lo while
`recorderd consent run` answers calls from three pjsua2 caller processes (tests/system/
consent_caller.py: G.711 callers, a GSM-only caller, a G.722 caller), each recording what it
hears. A SIPp UAS is the REFER target (and echoes RTP); a SIPp UAC places a call with speech
and no prompt. The calls:

    refer_ok    PCMA, Accept-Language en → prompt en, REFER accepted, transferred call answered
    reject      PCMA, no language       → prompt zh, the caller refuses the REFER (603)
    hangup      PCMA                    → the caller hangs up 1.5 s into the prompt
    unknown     PCMA, to 9999           → a rule chooses a prompt with no file
    mismatch    GSM only                → no common codec (488)
    wideband    G.722, en               → prompt en over G.722, REFER accepted
    sipp        SIPp speech call UAC → UAS, no announcer at all
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from recorderd.cli import main
from storage.catalog import CatalogReader
from storage.consent import list_announcements
from tests.system.test_daemon_sipp import SIPP_SHARE, start_daemon

REPO = Path(__file__).resolve().parents[2]
CALLER_SCRIPT = Path(__file__).with_name("consent_caller.py")
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
NUMBERS = {"refer_ok": "13800000001", "reject": "13800000002", "hangup": "13800000003",
           "unknown": "13800000004", "mismatch": "13900000005", "wideband": "13700000006"}


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_port_block(size: int) -> int:
    """A base port with ``size`` free UDP ports above it (RTP ranges)."""
    for base in range(30000 + (os.getpid() % 200) * 100, 60000, 1000):
        socks = []
        try:
            for port in range(base, base + size):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise AssertionError("no free block of UDP ports")


def set_option(text: str, section: str, key: str, value: str) -> str:
    """Replace ``key = ...`` inside ``[section]`` of a TOML text."""
    head, start, rest = text.partition(f"[{section}]\n")
    lines = rest.split("\n")
    index = next(i for i, line in enumerate(lines) if line.startswith(f"{key} = "))
    lines[index] = f"{key} = {value}"
    return head + start + "\n".join(lines)


def _ncc(x: np.ndarray, part: np.ndarray) -> np.ndarray:
    """Normalised cross-correlation of ``part`` at every lag of ``x`` (FFT; written here, apart
    from capture/consent.py, so that the test does not grade the detector with itself)."""
    p = part - part.mean()
    p /= np.linalg.norm(p)
    n = len(x) + len(p)
    size = 1 << (n - 1).bit_length()
    corr = np.fft.irfft(np.fft.rfft(x, size) * np.conj(np.fft.rfft(p, size)), size)[: len(x) - len(p) + 1]
    c1 = np.concatenate(([0.0], np.cumsum(x)))
    c2 = np.concatenate(([0.0], np.cumsum(x * x)))
    s1 = c1[len(p):] - c1[:-len(p)]
    return corr / np.sqrt(np.maximum(c2[len(p):] - c2[:-len(p)] - s1 * s1 / len(p), 1e-9))


def prompt_heard(heard: np.ndarray, prompt: np.ndarray, rate: int) -> tuple[float, float, float]:
    """How well ``heard`` reproduces ``prompt``: (energy-weighted mean normalised
    cross-correlation of its 1/16 s pieces, the longest stretch of the prompt in seconds whose
    pieces all score under 0.5 — i.e. missing —, the drift in seconds from start to end).

    The caller's jitter buffer drops or inserts a 10-20 ms frame now and then when packets
    come in bursts (a loaded test machine), which shifts the rest of the prompt: each piece is
    therefore located on its own, within 1/8 s of where the previous one was found, in order."""
    x, p = heard.astype(np.float64), prompt.astype(np.float64)
    x = np.concatenate([x, np.zeros(len(p))])     # a prompt cut off at the end still has lags
    piece, reach = rate // 16, rate // 8
    lag = int(np.argmax(_ncc(x, p)))              # where the prompt starts, roughly
    first_lag, scores, weights = lag, [], []
    missing = longest_missing = 0
    for start in range(0, len(p) - piece + 1, piece):
        part = p[start:start + piece]
        energy = float(np.dot(part - part.mean(), part - part.mean()))
        if energy < piece * 100.0 ** 2:      # a pause in the prompt (RMS under 100)
            continue
        lo = max(0, lag + start - reach)
        r = _ncc(x[lo:lag + start + piece + reach], part)
        k = int(np.argmax(r))
        lag = lo + k - start
        scores.append(float(r[k]))
        weights.append(energy)
        missing = missing + piece if r[k] < 0.5 else 0
        longest_missing = max(longest_missing, missing)
    return float(np.average(scores, weights=weights)), longest_missing / rate, (lag - first_lag) / rate


@dataclass
class Run:
    root: Path
    config: Path
    prompts: Path
    uas_port: int
    callers: dict[str, dict[str, Any]]
    events: dict[str, dict[str, Any]]
    recordings: dict[str, dict[str, Any]]
    announcer_exit: int
    announcer_log: str
    seconds: float
    phases: dict[str, float]


def _wait_ready(proc: subprocess.Popen[str], notify: socket.socket, what: str) -> None:
    notify.settimeout(0.5)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited with {proc.returncode}")
        try:
            if "READY=1" in notify.recv(4096).decode():
                return
        except (TimeoutError, OSError):
            continue
    raise AssertionError(f"no READY=1 from {what}")


def _configure(root: Path, ann_port: int, uas_port: int, rtp_base: int) -> Path:
    assert main(["init", str(root / "box")]) == 0
    config = root / "box" / "recorderd.toml"
    text = config.read_text()
    for section, key, value in (
            ("daemon", "metrics_listen", '"off"'), ("daemon", "min_free_mb", "0"), ("daemon", "resume_free_mb", "0"),
            ("capture", "bpf_filter", '"udp and host 127.0.0.1"'),
            ("consent", "enabled", "true"), ("consent", "listen", f'"127.0.0.1:{ann_port}"'),
            ("consent", "rtp_ports", f'"{rtp_base}-{rtp_base + 99}"'), ("consent", "prompt_dir", '"prompts"'),
            ("consent", "refer_host", f'"127.0.0.1:{uas_port}"'), ("consent", "refer_timeout_s", "8.0"),
            ("consent", "rules", '["lang=en prompt=en", "called=9999 prompt=missing"]'),
            ("consent", "sweep_interval_s", "0.5"), ("consent", "timezone", '"UTC"')):
        text = set_option(text, section, key, value)
    config.write_text(text)
    # exit 1: the rules name a prompt ("missing") with neither text nor file — on purpose
    assert main(["--config", str(config), "consent", "prompts"]) == 1
    assert sorted(p.name for p in (root / "box" / "prompts").iterdir()) == [
        "en.16k.wav", "en.8k.wav", "zh.16k.wav", "zh.8k.wav"]
    return config


def _caller_plans(root: Path, ann_port: int, media_base: int) -> dict[str, dict[str, Any]]:
    def call(name: str, called: str, **extra: Any) -> dict[str, Any]:
        return {"name": name, "caller": NUMBERS[name], "uri": f"sip:{called}@127.0.0.1:{ann_port}",
                "record": str(root / f"heard-{name}.wav"), "refer": "accept", **extra}

    en = {"Accept-Language": "en-GB, zh;q=0.3"}
    # the pjsua2 wheel handles at most 4 calls per process (PJSUA_MAX_CALLS): the starts are
    # staggered so that neither a caller nor the announcer ever has more
    return {
        "g711": {"codecs": ["PCMA/8000", "PCMU/8000"], "media_port": media_base, "timeout_s": 45, "calls": [
            call("refer_ok", "8001", headers=en, start_after_s=0.0),
            call("hangup", "8003", hangup_after_s=1.5, start_after_s=0.3),
            call("unknown", "9999", start_after_s=2.8)]},
        "g711b": {"codecs": ["PCMA/8000"], "media_port": media_base + 100, "timeout_s": 45, "calls": [
            call("reject", "8002", refer="reject", start_after_s=0.2)]},
        "gsm": {"codecs": ["GSM/8000"], "media_port": media_base + 200, "timeout_s": 20,
                "calls": [call("mismatch", "8005", start_after_s=0.5)]},
        # PCMU after G.722: the REFER target (SIPp's UAS) answers with PCMU only
        "g722": {"codecs": ["G722/16000", "PCMU/8000"], "media_port": media_base + 300, "timeout_s": 45,
                 "calls": [call("wideband", "8006", headers={"Accept-Language": "en"}, start_after_s=3.0)]},
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    for tool in ("sipp", "espeak-ng", "sox"):
        assert shutil.which(tool), f"{tool} is required (packaging/system-deps.txt)"
    began = time.monotonic()
    phases: dict[str, float] = {}

    def phase(name: str) -> None:
        phases[name] = round(time.monotonic() - began, 1)

    root = tmp_path_factory.mktemp("consent-system")
    ann_port, uas_port = free_udp_port(), free_udp_port()
    rtp_base = free_port_block(600)        # the announcer's RTP ports, then the callers' and SIPp's
    media_base = rtp_base + 100
    config = _configure(root, ann_port, uas_port, rtp_base)
    sipp_dir = root / "sipp"
    (sipp_dir / "pcap").mkdir(parents=True)
    for name in ("g711a.pcap", "dtmf_2833_1.pcap"):
        shutil.copy(SIPP_SHARE / name, sipp_dir / "pcap" / name)

    sockets = []
    processes: list[subprocess.Popen[str]] = []
    announcer: subprocess.Popen[str] | None = None
    daemon: subprocess.Popen[str] | None = None
    try:
        daemon_notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        daemon_notify.bind(str(root / "daemon.sock"))
        sockets.append(daemon_notify)
        phase("configured")
        daemon = start_daemon(config, daemon_notify, str(root / "daemon.sock"))
        phase("daemon ready")
        ann_notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        ann_notify.bind(str(root / "announcer.sock"))
        sockets.append(ann_notify)
        announcer_log = open(root / "announcer.log", "w")   # noqa: SIM115 - closed below
        announcer = subprocess.Popen([sys.executable, "-m", "recorderd", "--config", str(config), "consent", "run"],
                                     stdout=announcer_log, stderr=subprocess.STDOUT, text=True,
                                     env={**ENV, "NOTIFY_SOCKET": str(root / "announcer.sock")})
        _wait_ready(announcer, ann_notify, "the announcer")
        phase("announcer ready")
        uas = subprocess.Popen(["sipp", "-sn", "uas", "-i", "127.0.0.1", "-p", str(uas_port),
                                "-mp", str(media_base + 400), "-rtp_echo", "-nostdin", "-timeout", "60"],
                               cwd=sipp_dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        processes.append(uas)
        time.sleep(0.3)
        callers = {}
        for name, plan in _caller_plans(root, ann_port, media_base).items():
            plan_path = root / f"plan-{name}.json"
            plan_path.write_text(json.dumps(plan))
            callers[name] = subprocess.Popen([sys.executable, str(CALLER_SCRIPT), str(plan_path),
                                              str(root / f"result-{name}.json")],
                                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
            processes.append(callers[name])
        sipp_uac = subprocess.run(["sipp", f"127.0.0.1:{uas_port}", "-sn", "uac_pcap", "-i", "127.0.0.1",
                                   "-p", str(free_udp_port()), "-mp", str(media_base + 450), "-m", "1", "-nostdin",
                                   "-timeout", "40", "-timeout_error"],
                                  cwd=sipp_dir, capture_output=True, text=True, timeout=60)
        assert sipp_uac.returncode == 0, sipp_uac.stdout[-2000:]
        phase("sipp call done")
        results: dict[str, dict[str, Any]] = {}
        for name, proc in callers.items():
            out, _ = proc.communicate(timeout=60)
            assert proc.returncode == 0, f"caller {name}: {out[-3000:]}"
            results.update(json.loads((root / f"result-{name}.json").read_text())["results"])
            phase(f"caller {name} done")
        time.sleep(3.0)    # BYE linger (2 s), then a sweep (0.5 s)
    finally:
        ann_exit, ann_log = -1, ""
        if announcer is not None:
            announcer.send_signal(signal.SIGTERM)
            ann_exit = announcer.wait(timeout=30)
            announcer_log.close()
            ann_log = (root / "announcer.log").read_text()
        for proc in processes:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=10)
        if daemon is not None:
            daemon.send_signal(signal.SIGTERM)
            daemon_log, _ = daemon.communicate(timeout=60)
            (root / "daemon.log").write_text(daemon_log)
            assert daemon.returncode == 0, daemon_log[-3000:]
        for s in sockets:
            s.close()
    phase("stopped")
    with CatalogReader(root / "box" / "catalog.db") as reader:
        events = {}
        for event in list_announcements(reader.conn):
            name = next((n for n, number in NUMBERS.items() if number == event.caller), event.caller)
            events[name] = event.to_dict()
        recordings = {}
        for row in reader.search(limit=100).rows:
            detail = reader.get(row.recording_id)
            assert detail is not None
            recordings[row.call_id] = detail.to_dict()
    phase("read back")
    return Run(root, config, root / "box" / "prompts", uas_port, results, events, recordings, ann_exit, ann_log,
               time.monotonic() - began, phases)


def _recording(run: Run, name: str) -> dict[str, Any]:
    """The daemon's recording of the announcer's leg of call ``name`` (same Call-ID)."""
    return run.recordings[run.events[name]["call_id"]]


def _prompt(run: Path, name: str, rate: int) -> np.ndarray:
    samples, _ = sf.read(run / f"{name}.{rate // 1000}k.wav", dtype="int16")
    return samples


# -- Must show 1 ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("call", "prompt"), [("refer_ok", "en"), ("reject", "zh"), ("wideband", "en")])
def test_the_caller_hears_the_prompt(run: Run, call: str, prompt: str) -> None:
    heard, rate = sf.read(run.root / f"heard-{call}.wav", dtype="int16")
    assert rate == 16000
    mean, missing, drift = prompt_heard(heard, _prompt(run.prompts, prompt, rate), rate)
    assert mean >= 0.9, (call, mean, missing, drift)
    assert missing <= 0.25, (call, mean, missing, drift)   # a slip spoils a piece, never a stretch
    assert abs(drift) <= 0.2, (call, mean, missing, drift)


def test_the_refer_names_the_target_and_the_events_are_catalogued(run: Run) -> None:
    target = f"sip:8001@127.0.0.1:{run.uas_port}"
    ok = run.callers["refer_ok"]
    assert ok["refer_to"] == target
    assert [s[1] for s in ok["transfer_states"]][-2:] == ["CONFIRMED", "DISCONNECTED"]   # SIPp answered it
    event = run.events["refer_ok"]
    assert (event["outcome"], event["prompt"], event["rule"], event["refer_target"], event["refer_status"]) == (
        "refer_ok", "en", "lang=en prompt=en", target, 200)
    assert event["prompt_complete"] and event["codec"] == "PCMA/8000"
    assert event["language"] == "en-GB, zh;q=0.3" and event["trunk"] == "127.0.0.1"
    assert 3.0 < event["prompt_played_s"] < 4.5
    wideband = run.events["wideband"]
    assert (wideband["outcome"], wideband["codec"]) == ("refer_ok", "G722/16000")
    assert run.callers["wideband"]["refer_to"] == f"sip:8006@127.0.0.1:{run.uas_port}"


# -- Must show 2 ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("call", "rate"), [("refer_ok", 8000), ("reject", 8000), ("wideband", 16000)])
def test_the_recorded_leg_shows_the_prompt_audible_at_its_offset(run: Run, call: str, rate: int) -> None:
    recording = _recording(run, call)
    event = run.events[call]
    consent = recording["metadata"]["consent"]
    assert (recording["sample_rate"], recording["consent_played"], recording["consent_audible"]) == (rate, True, True)
    assert consent["channel"] == 1 and consent["prompt"] == event["prompt"]      # the announcer is the callee
    expected = event["prompt_started_at"] - recording["metadata"]["started_at_epoch"]
    assert abs(consent["offset_s"] - expected) <= 0.1, (consent, expected)
    assert consent["announcement"]["link"] == "call_id"


def test_calls_without_the_prompt_show_not_audible(run: Run) -> None:
    sipp = [r for r in run.recordings.values() if r["caller"] == "sipp"]
    assert len(sipp) == 1, sorted(run.recordings)
    assert (sipp[0]["consent_audible"], sipp[0]["consent_played"]) == (False, False)
    assert sipp[0]["metadata"]["consent"]["score"] < 0.5                  # speech, not the prompt
    # the calls the callers made to the REFER target: played (linked by caller and time), not in them
    transferred = {r["caller"]: r for r in run.recordings.values() if r["callee"] in ("8001", "8006")
                   and r["call_id"] not in {e["call_id"] for e in run.events.values()}}
    assert set(transferred) == {NUMBERS["refer_ok"], NUMBERS["wideband"]}
    for caller, recording in transferred.items():
        consent = recording["metadata"]["consent"]
        assert (recording["consent_played"], recording["consent_audible"]) == (True, False), caller
        assert consent["announcement"]["link"] == "caller_window"


# -- Must show 3 ----------------------------------------------------------------------------------

def test_failures_are_clear_outcomes(run: Run) -> None:
    hangup = run.events["hangup"]
    assert (hangup["outcome"], hangup["prompt_complete"]) == ("hangup_during_prompt", False)
    # the caller hung up 1.5 s after the answer; the prompt began 0.5 s (lead-in) after it
    assert 0.7 <= hangup["prompt_played_s"] <= 1.3 and "hung up" in hangup["detail"]
    leg = _recording(run, "hangup")
    assert (leg["consent_played"], leg["consent_audible"]) == (False, False)   # half a prompt is not consent

    unknown = run.events["unknown"]
    assert (unknown["outcome"], unknown["prompt"], unknown["prompt_complete"]) == ("unknown_prompt", "missing", False)
    assert "missing" in unknown["detail"]
    assert run.callers["unknown"]["final"][0] == 500

    mismatch = run.events["mismatch"]
    assert mismatch["outcome"] == "codec_mismatch"
    assert mismatch["detail"].startswith("offered GSM/8000") and "accepted G722/16000, PCMA/8000, PCMU/8000" in \
        mismatch["detail"]
    assert run.callers["mismatch"]["final"][0] == 488

    rejected = run.events["reject"]
    assert (rejected["outcome"], rejected["refer_status"], rejected["prompt_complete"]) == ("refer_rejected", 603, True)
    assert run.callers["reject"]["refer_to"] == f"sip:8002@127.0.0.1:{run.uas_port}"

    assert run.announcer_exit == 0, run.announcer_log[-3000:]
    assert "Traceback" not in run.announcer_log
    assert len(run.events) == len(NUMBERS)
    assert run.seconds < 90, f"the run took {run.seconds:.0f} s: {run.phases}"
