"""Must show 1: every call of the third-party corpus against tshark's view (expected.json).

Each capture is replayed on its own; every INVITE dialog must come out as a recording or a
not-recorded row; calls with audio RTP (not video, not ZRTP) must be recordings with that
Call-ID whose stream packet counts add up to tshark's within 2 %, whose audio is speech
(loud, not noise), and whose DTMF digits are tshark's. SRTP calls must decrypt to speech.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from recorderd.cli import main
from tests.support.audio import rms, spectral_flatness

# the checkout sits beside shared/ (work tree and CI clone alike)
CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "pcap"
EXPECTED: dict[str, Any] = json.loads((CORPUS / "expected.json").read_text())
FILES = sorted(k for k in EXPECTED if not k.startswith("_"))
VIDEO_CODECS = {"h263", "h261", "h264", "vp8", "mpv", "jpeg"}
ZRTP_FILES = {"zrtp_asterisk_xlite_reinvite.pcap"}
SPEECH_FLATNESS = 0.35
MIN_RMS = 30.0
# After this capture's T.38 re-INVITE, an SDP puts `m=image` on the audio ports while the
# gateway keeps sending RTP (v2, PT 8, same SSRC, continuing sequence) on them; tshark's
# expected.json then labels ~2,000 RTP packets "T.38". For this file the reference count is
# tshark's own, told to decode those ports as RTP.
RELABELLED_BY_TSHARK = {"fax_t38_reinvite_multihop.pcap"}


def tshark_rtp_packets(path: Path, stream: dict[str, Any]) -> int:
    ports = {stream["src"].rsplit(":", 1)[1], stream["dst"].rsplit(":", 1)[1]}
    decode_as = [arg for port in sorted(ports) for arg in ("-d", f"udp.port=={port},rtp")]
    out = subprocess.run(["tshark", "-r", str(path), "--disable-protocol", "sdp", *decode_as, "-Y", f"rtp.ssrc=={stream['ssrc']}",
                          "-T", "fields", "-e", "frame.number"],
                         capture_output=True, text=True, check=True).stdout
    return len(out.split())


def audio_streams(call: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in call["rtp_streams"]
            if not {c.strip().lower() for c in s["codec"].split(",")} & VIDEO_CODECS]


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for name in FILES:
        target = tmp_path_factory.mktemp(name.replace(".", "_"))
        assert main(["replay", str(CORPUS / name), "--out", str(target)]) == 0, name
        out[name] = target
    return out


def recordings(directory: Path) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for path in directory.glob("*.json"):
        if path.name == "not-recorded.json":
            continue
        meta = json.loads(path.read_text())
        found[meta["call_id"]] = meta
    return found


def not_recorded(directory: Path) -> dict[str, dict[str, Any]]:
    return {row["call_id"]: row for row in json.loads((directory / "not-recorded.json").read_text())}


def test_the_corpus_is_there() -> None:
    assert len(FILES) >= 27


@pytest.mark.parametrize("name", FILES)
def test_every_call_is_accounted_for(replayed: dict[str, Path], name: str) -> None:
    recs, missing = recordings(replayed[name]), not_recorded(replayed[name])
    for call in EXPECTED[name]["calls"]:
        cid = call["call_id"]
        assert cid in recs or cid in missing, f"{name}: call {cid} neither recorded nor listed"
        if cid in missing:
            assert missing[cid]["reason"], f"{name}: {cid} not recorded without a reason"


@pytest.mark.parametrize("name", FILES)
def test_audio_calls_are_recorded_like_tshark_sees_them(replayed: dict[str, Path], name: str) -> None:
    recs = recordings(replayed[name])
    for call in EXPECTED[name]["calls"]:
        streams = audio_streams(call)
        if not streams:
            continue
        cid = call["call_id"]
        assert cid in recs, f"{name}: audio call {cid} was not recorded"
        meta = recs[cid]
        if name in RELABELLED_BY_TSHARK:
            theirs = sum(tshark_rtp_packets(CORPUS / name, s) for s in streams)
        else:
            theirs = sum(s["packets"] for s in streams)
        ours = sum(s["packets"] for s in meta["streams"])
        assert abs(ours - theirs) <= 0.02 * theirs, f"{name} {cid}: {ours} packets, tshark {theirs}"
        wav, rate = sf.read(replayed[name] / f"{meta['recording_id']}.wav", dtype="int16")
        assert wav.ndim == 2 and wav.shape[1] == 2 and rate == meta["sample_rate"]
        assert abs(len(wav) / rate - meta["duration_s"]) < 0.01
        if name in ZRTP_FILES:
            assert meta["encryption"]["decodable"] is False
            assert meta["encryption"]["note"] == "encrypted, not decodable"
            continue
        mono = wav.astype(np.int32).sum(axis=1)
        assert rms(mono) > MIN_RMS, f"{name} {cid}: recording is silent"
        flat = spectral_flatness(mono, rate)
        assert flat < SPEECH_FLATNESS, f"{name} {cid}: audio looks like noise (flatness {flat:.2f})"
        digits = [str(d) for s in streams for d in s.get("rfc2833_events") or [] if len(str(d)) == 1]
        assert [d["digit"] for d in meta["dtmf"]] == digits, f"{name} {cid}: DTMF"


def test_zrtp_media_is_silence_not_noise(replayed: dict[str, Path]) -> None:
    name = "zrtp_asterisk_xlite_reinvite.pcap"
    for meta in recordings(replayed[name]).values():
        wav, rate = sf.read(replayed[name] / f"{meta['recording_id']}.wav", dtype="int16")
        tail = wav[int(2 * rate):].astype(np.int32)
        assert rms(tail) < 1.0, "cipher text must not be played as audio"


def test_srtp_calls_decrypt_to_both_legs_of_speech(replayed: dict[str, Path]) -> None:
    name = "srtp_sdes_two_legs_pcmu.pcap"
    recs = recordings(replayed[name])
    assert len(recs) == 2
    for meta in recs.values():
        assert meta["encryption"] == {"srtp": True, "decodable": True, "note": ""}
        wav, rate = sf.read(replayed[name] / f"{meta['recording_id']}.wav", dtype="int16")
        for channel in (0, 1):
            assert rms(wav[:, channel]) > MIN_RMS, f"channel {channel} silent"
            assert spectral_flatness(wav[:, channel], rate) < SPEECH_FLATNESS


def test_wideband_calls_are_16k(replayed: dict[str, Path]) -> None:
    meta = next(iter(recordings(replayed["g722_sipp_fs.pcap"]).values()))
    assert meta["sample_rate"] == 16000 and meta["codecs"] == ["g722"]


def test_channels_follow_the_initial_invite(replayed: dict[str, Path]) -> None:
    """sipp_loopback: SIPp (caller, 5061) sends nothing, the UAS sends 10 s of PCMU: all of it
    must be on channel 1. tshark's stream says who sent it; the INVITE says who called."""
    name = "sipp_loopback_pcmu.pcap"
    meta = next(iter(recordings(replayed[name]).values()))
    wav, _ = sf.read(replayed[name] / f"{meta['recording_id']}.wav", dtype="int16")
    (stream,) = EXPECTED[name]["calls"][0]["rtp_streams"]
    sdp_by_sender = {s["from"]: s for s in EXPECTED[name]["calls"][0]["sdp"]}
    invite_sender = next(s["from"] for s in EXPECTED[name]["calls"][0]["sdp"] if s["kind"] == "INVITE")
    caller_ip = sdp_by_sender[invite_sender]["connection"]
    sent_by_caller = stream["src"].rsplit(":", 1)[0] == caller_ip and \
        stream["src"].rsplit(":", 1)[1] == sdp_by_sender[invite_sender]["media"][0].split()[1]
    loud, quiet = (0, 1) if sent_by_caller else (1, 0)
    assert rms(wav[:, loud]) > MIN_RMS and rms(wav[:, quiet]) < 1.0
