"""Running tshark and parsing its text statistics (-z sip,stat, -z rtp,streams, -z expert)."""

from __future__ import annotations

import collections
import re
import subprocess
from dataclasses import dataclass

# Validate every checksum we write; by default tshark does not.
CHECKSUM_OPTIONS = ["-o", "ip.check_checksum:TRUE", "-o", "udp.check_checksum:TRUE",
                    "-o", "tcp.check_checksum:TRUE"]

_STREAM_ROW = re.compile(
    r"^\s*([\d.]+)\s+([\d.]+)\s+(\S+)\s+(\d+)\s+(\S+)\s+(\d+)\s+(0x[0-9A-Fa-f]+)\s+(.+?)\s+(\d+)\s+(-?\d+)\s+\(")
_SIP_STATUS = re.compile(r"^\s+SIP (\d{3}) .*:\s+(\d+) Packets")
_SIP_METHOD = re.compile(r"^\s+([A-Z]+)\s+:\s+(\d+) Packets")


@dataclass(frozen=True, slots=True)
class TsharkStream:
    """One row of ``-z rtp,streams``."""

    src: tuple[str, int]
    dst: tuple[str, int]
    ssrc: int
    payload: str
    packets: int
    lost: int          # expected - received by sequence numbers; negative with duplicates


def run(args: list[str], timeout: float = 120.0) -> str:
    """tshark with ``args``; returns stdout, raises on a non-zero exit."""
    proc = subprocess.run(["tshark", "-n", *args], capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"tshark {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def parse_rtp_streams(text: str) -> list[TsharkStream]:
    """Rows of the RTP Streams table."""
    streams = []
    for line in text.splitlines():
        m = _STREAM_ROW.match(line)
        if m:
            streams.append(TsharkStream((m[3], int(m[4])), (m[5], int(m[6])), int(m[7], 16), m[8].strip(),
                                        int(m[9]), int(m[10])))
    return streams


def parse_sip_stat(text: str) -> collections.Counter[str]:
    """SIP messages by status code ("200") and request method ("INVITE")."""
    counts: collections.Counter[str] = collections.Counter()
    section = text[text.find("SIP Statistics"):]
    for line in section.splitlines():
        if (m := _SIP_STATUS.match(line)) or (m := _SIP_METHOD.match(line)):
            counts[m[1]] += int(m[2])
    return counts


def expert_sections(text: str) -> list[str]:
    """Headings like 'Errors (2)' / 'Warns (5)' in ``-z expert,warn`` output (none = clean)."""
    return re.findall(r"^(?:Errors|Warns) \(\d+\)", text, flags=re.MULTILINE)


@dataclass(slots=True)
class CaptureView:
    """tshark's view of a capture: SIP counts, RTP streams, expert warnings/errors."""

    sip: collections.Counter[str]
    streams: list[TsharkStream]
    expert: list[str]
    text: str


def view(path: str) -> CaptureView:
    """One tshark pass with checksum validation: sip,stat + rtp,streams + expert,warn.

    RTP is found only through the SDP of the SIP dialogs (no RTP heuristics).
    """
    text = run(["-r", str(path), "-q", *CHECKSUM_OPTIONS, "-o", "rtp.heuristic_rtp:FALSE",
                "-z", "sip,stat", "-z", "rtp,streams", "-z", "expert,warn"])
    return CaptureView(parse_sip_stat(text), parse_rtp_streams(text), expert_sections(text), text)
