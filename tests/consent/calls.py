"""A capture of one G.711 A-law call whose legs carry given audio (for the consent sweep tests).

The caller (10.0.0.1) INVITEs the callee (10.0.0.2); both legs send 20 ms RTP packets from
``media_at`` on, arriving exactly on time, so sample 0 of the recording is ``media_at`` and
audio placed at sample n of a leg is at n / 8000 s in the recording.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.gen.g711 import encode_alaw
from tests.gen.media import rtp_header
from tests.gen.netframes import FrameBuilder, LinkPath, pcap_record, write_pcap_header

RATE = 8000
PACKET = 160           # 20 ms at 8 kHz
CALLER = ("10.0.0.1", 40000)
CALLEE = ("10.0.0.2", 50000)


def _sdp(ip: str, port: int) -> str:
    return (f"v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n")


def _sip(start: str, call_id: str, caller: str, callee: str, cseq: str, to_tag: bool,
         body: str = "", extra: tuple[str, ...] = ()) -> bytes:
    lines = [start, "Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK" + str(abs(hash((call_id, cseq))) % 10**8),
             f"From: <sip:{caller}@10.0.0.1>;tag=from1",
             f"To: <sip:{callee}@10.0.0.2>" + (";tag=to1" if to_tag else ""),
             f"Call-ID: {call_id}", f"CSeq: {cseq}", "Contact: <sip:x@10.0.0.1>", *extra]
    if body:
        lines.append("Content-Type: application/sdp")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


def write_call(path: Path, *, call_id: str, caller: str, callee: str, invite_at: float,
               caller_audio: np.ndarray, callee_audio: np.ndarray, extra_headers: tuple[str, ...] = ()) -> float:
    """Write the capture; returns the time of sample 0 (the first RTP packet)."""
    fb = FrameBuilder()
    out: list[tuple[float, bytes]] = []
    to_callee, to_caller = LinkPath(CALLER[0], CALLEE[0]), LinkPath(CALLEE[0], CALLER[0])

    def sip(ts: float, forward: bool, message: bytes) -> None:
        out.append((ts, fb.udp(to_callee if forward else to_caller, 5060, 5060, message)))

    uri = f"sip:{callee}@10.0.0.2"
    sip(invite_at, True, _sip(f"INVITE {uri} SIP/2.0", call_id, caller, callee, "1 INVITE", False,
                              _sdp(*CALLER), extra_headers))
    sip(invite_at + 0.1, False, _sip("SIP/2.0 200 OK", call_id, caller, callee, "1 INVITE", True, _sdp(*CALLEE)))
    sip(invite_at + 0.11, True, _sip(f"ACK {uri} SIP/2.0", call_id, caller, callee, "1 ACK", True))
    media_at = invite_at + 0.2
    frames = max(len(caller_audio), len(callee_audio)) // PACKET
    for leg, (audio, src, dst, ssrc) in enumerate(((caller_audio, CALLER, CALLEE, 0x1111),
                                                   (callee_audio, CALLEE, CALLER, 0x2222))):
        padded = np.zeros(frames * PACKET, np.int16)
        padded[: min(len(audio), len(padded))] = audio[: len(padded)]
        payload = encode_alaw(padded).tobytes()
        path_ = LinkPath(src[0], dst[0])
        for i in range(frames):
            packet = rtp_header(8, 1000 + i, 5000 + i * PACKET, ssrc, marker=i == 0)
            out.append((media_at + i * 0.02 + leg * 1e-5,
                        fb.udp(path_, src[1], dst[1], packet + payload[i * PACKET:(i + 1) * PACKET])))
    end = media_at + frames * 0.02
    sip(end + 0.01, True, _sip(f"BYE {uri} SIP/2.0", call_id, caller, callee, "2 BYE", True))
    sip(end + 0.02, False, _sip("SIP/2.0 200 OK", call_id, caller, callee, "2 BYE", True))
    with open(path, "wb") as fh:
        write_pcap_header(fh)
        for ts, frame in sorted(out, key=lambda item: item[0]):
            fh.write(pcap_record(ts, frame))
    return media_at
