"""SDP session descriptions (RFC 8866, formerly RFC 4566) as used in offer/answer (RFC 3264).

Only what a recorder needs is modelled: where each media stream goes (c=/m=), which codecs its
payload types mean (a=rtpmap, RFC 3551 §6 static defaults, a=fmtp, a=ptime), its direction, and
its keys (a=crypto, RFC 4568) or ZRTP (a=zrtp-hash, RFC 6189).

Parsing is lenient (unknown or malformed attribute lines are ignored, CRLF or bare LF, trailing
blanks) and strict where a wrong answer would misroute media: a bad m= or c= line, or a body
that is not SDP at all, raises ParseError("sdp.<reason>").
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from capture.errors import ParseError, never_leaks

MAX_SDP_BYTES = 256 * 1024
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
HOLD_ADDRESSES = frozenset({"0.0.0.0", "::"})  # nosec B104  # SDP c= addresses that signal hold (RFC 3264 §8.4, RFC 2543): parsed, never bound

_HOSTNAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9\-.]*[A-Za-z0-9])?")
_PORT_RE = re.compile(r"(\d{1,5})(?:/(\d{1,5}))?")
_PT_RE = re.compile(r"\d{1,3}")


@dataclass(frozen=True, slots=True)
class RtpMap:
    """a=rtpmap:<pt> <encoding>/<clock rate>[/<channels>] (RFC 8866 §6.6)."""

    encoding: str    # as written, e.g. "PCMU", "telephone-event", "G726-32", "opus"
    clock_rate: int
    channels: int = 1


@dataclass(frozen=True, slots=True)
class Crypto:
    """a=crypto:<tag> <suite> <key-params> (RFC 4568 §9.1)."""

    tag: int
    suite: str
    key_params: str  # e.g. "inline:BASE64KEYSALT|2^20|1:32"


# RFC 3551 §6, Table 4 (audio) and Table 5 (video): the statically assigned payload types.
STATIC_PAYLOAD_TYPES: dict[int, RtpMap] = {
    0: RtpMap("PCMU", 8000), 3: RtpMap("GSM", 8000), 4: RtpMap("G723", 8000),
    5: RtpMap("DVI4", 8000), 6: RtpMap("DVI4", 16000), 7: RtpMap("LPC", 8000),
    8: RtpMap("PCMA", 8000), 9: RtpMap("G722", 8000), 10: RtpMap("L16", 44100, 2),
    11: RtpMap("L16", 44100), 12: RtpMap("QCELP", 8000), 13: RtpMap("CN", 8000),
    14: RtpMap("MPA", 90000), 15: RtpMap("G728", 8000), 16: RtpMap("DVI4", 11025),
    17: RtpMap("DVI4", 22050), 18: RtpMap("G729", 8000), 25: RtpMap("CelB", 90000),
    26: RtpMap("JPEG", 90000), 28: RtpMap("nv", 90000), 31: RtpMap("H261", 90000),
    32: RtpMap("MPV", 90000), 33: RtpMap("MP2T", 90000), 34: RtpMap("H263", 90000),
}


@dataclass(slots=True)
class MediaDescription:
    """One m= section with its effective connection address and attributes."""

    kind: str                  # audio / video / image / application ...
    port: int
    port_count: int
    proto: str                 # RTP/AVP, RTP/SAVP, RTP/AVPF, RTP/SAVPF, udptl, ...
    formats: list[str]         # as listed on the m= line
    payload_types: list[int]   # the numeric formats (RTP profiles only)
    connection: str | None     # media-level c=, else session-level; canonical IP text
    rtpmap: dict[int, RtpMap] = field(default_factory=dict)
    fmtp: dict[int, str] = field(default_factory=dict)
    ptime: int | None = None
    direction: str = "sendrecv"
    crypto: list[Crypto] = field(default_factory=list)
    rtcp_mux: bool = False
    zrtp: bool = False

    @property
    def is_hold(self) -> bool:
        """Hold as signalled by RFC 3264 §8.4 (sendonly/inactive) or the RFC 2543 c=0.0.0.0 style."""
        return self.direction in ("sendonly", "inactive") or self.connection in HOLD_ADDRESSES

    @property
    def is_disabled(self) -> bool:
        """Port 0: the stream is rejected or removed (RFC 3264 §6, §8.2)."""
        return self.port == 0


@dataclass(slots=True)
class SessionDescription:
    """A parsed SDP body: origin, session name, session-level c= and the media sections."""

    origin: str
    session_name: str
    connection: str | None
    media: list[MediaDescription]


@dataclass(slots=True)
class _Section:
    """Attributes collected for one level (session or one m= section) before resolution."""

    connection: str | None = None
    direction: str | None = None
    ptime: int | None = None
    rtpmap: dict[int, RtpMap] = field(default_factory=dict)
    fmtp: dict[int, str] = field(default_factory=dict)
    crypto: list[Crypto] = field(default_factory=list)
    rtcp_mux: bool = False
    zrtp: bool = False


def parse_sdp(body: bytes) -> SessionDescription:
    """Parse an SDP body; raises ParseError("sdp.<reason>") on input that is not usable SDP."""
    if len(body) > MAX_SDP_BYTES:
        raise ParseError("sdp.too_large", f"{len(body)} bytes > {MAX_SDP_BYTES}")
    return _parse(body)


@never_leaks("sdp.malformed")
def _parse(body: bytes) -> SessionDescription:
    lines = _sdp_lines(body)
    if not lines or lines[0][0] != "v":
        raise ParseError("sdp.no_version", "SDP must start with v= (RFC 8866 §5)")
    if lines[0][1].strip() != "0":
        raise ParseError("sdp.bad_version", lines[0][1][:40])
    origin = session_name = ""
    session = _Section()
    sections: list[tuple[MediaDescription, _Section]] = []
    for kind, value in lines[1:]:
        if kind == "m":
            sections.append((_parse_media_line(value), _Section()))
            continue
        level = sections[-1][1] if sections else session
        if kind == "c":
            if level.connection is None:  # several c= lines only for layered multicast: first wins
                level.connection = _parse_connection(value)
        elif kind == "a":
            _apply_attribute(level, value)
        elif kind == "o" and not sections:
            origin = value
        elif kind == "s" and not sections:
            session_name = value
    media = [_resolve(description, own, session) for description, own in sections]
    return SessionDescription(origin, session_name, session.connection, media)


def _sdp_lines(body: bytes) -> list[tuple[str, str]]:
    """(type, value) for each "<type>=<value>" line; other lines are ignored (lenient)."""
    text = body.decode("utf-8", "replace")
    lines = []
    for raw in text.split("\n"):
        line = raw.rstrip("\r \t")
        if len(line) >= 2 and line[1] == "=" and line[0].isalpha():
            lines.append((line[0], line[2:]))
    return lines


def _parse_media_line(value: str) -> MediaDescription:
    """m=<media> <port>[/<number of ports>] <proto> <fmt> ... (RFC 8866 §5.14)."""
    fields = value.split()
    if len(fields) < 3:
        raise ParseError("sdp.bad_media", value[:80])
    kind, port_text, proto, *formats = fields
    match = _PORT_RE.fullmatch(port_text)
    if match is None or int(match.group(1)) > 65535:
        raise ParseError("sdp.bad_port", port_text[:40])
    port_count = int(match.group(2)) if match.group(2) else 1
    if port_count < 1:
        raise ParseError("sdp.bad_port", port_text[:40])
    return MediaDescription(
        kind=kind.lower(), port=int(match.group(1)), port_count=port_count, proto=proto,
        formats=formats, payload_types=_payload_types(proto, formats), connection=None,
    )


def _payload_types(proto: str, formats: list[str]) -> list[int]:
    """Numeric formats are RTP payload types only under an RTP profile (RFC 8866 §5.14)."""
    if "RTP/" not in proto.upper():
        return []
    return [int(fmt) for fmt in formats if _PT_RE.fullmatch(fmt) and int(fmt) <= 127]


def _parse_connection(value: str) -> str | None:
    """c=<nettype> <addrtype> <address>[/<ttl>][/<count>] (RFC 8866 §5.7) -> canonical address.

    Returns None for a non-Internet network type; raises on a malformed line.
    """
    fields = value.split()
    if len(fields) < 3:
        raise ParseError("sdp.bad_connection", value[:80])
    nettype, _addrtype, address = fields[0], fields[1], fields[2]
    if nettype.upper() != "IN":
        return None
    host = address.split("/", 1)[0]
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if _HOSTNAME_RE.fullmatch(host) and any(ch.isalpha() for ch in host):
        return host.lower()  # RFC 8866 §5.7 allows an FQDN for unicast
    raise ParseError("sdp.bad_connection", f"bad address {host[:60]!r}")


def _apply_attribute(level: _Section, value: str) -> None:
    """Record one a= attribute on its level; malformed or unknown attributes are ignored."""
    name, _, rest = value.partition(":")
    name = name.strip().lower()
    if name in DIRECTIONS:
        level.direction = level.direction or name
    elif name == "rtpmap":
        _add_rtpmap(level, rest)
    elif name == "fmtp":
        pt, _, params = rest.strip().partition(" ")
        if _PT_RE.fullmatch(pt):
            level.fmtp.setdefault(int(pt), params.strip())
    elif name == "ptime":
        level.ptime = level.ptime or _parse_ptime(rest)
    elif name == "crypto":
        crypto = _parse_crypto(rest)
        if crypto is not None:
            level.crypto.append(crypto)
    elif name == "rtcp-mux":
        level.rtcp_mux = True  # RFC 5761 §5.1.1
    elif name == "zrtp-hash":
        level.zrtp = True      # RFC 6189 §8.1


def _add_rtpmap(level: _Section, rest: str) -> None:
    """a=rtpmap:<pt> <encoding>/<clock>[/<channels>]; the first mapping of a PT wins."""
    pt, _, mapping = rest.strip().partition(" ")
    parts = mapping.strip().split("/")
    if not _PT_RE.fullmatch(pt) or len(parts) < 2 or not parts[0]:
        return
    if not parts[1].isdigit() or int(parts[1]) == 0:
        return
    channels = int(parts[2]) if len(parts) > 2 and parts[2].isdigit() and int(parts[2]) > 0 else 1
    level.rtpmap.setdefault(int(pt), RtpMap(parts[0], int(parts[1]), channels))


def _parse_ptime(text: str) -> int | None:
    """a=ptime:<ms>; some senders write decimals ("20.0")."""
    try:
        ptime = round(float(text.strip()))
    except ValueError:
        return None
    return ptime if 0 < ptime <= 10_000 else None


def _parse_crypto(text: str) -> Crypto | None:
    """a=crypto:<tag> <crypto-suite> <key-params> [<session-params>] (RFC 4568 §9.1)."""
    fields = text.split()
    if len(fields) < 3 or not fields[0].isdigit() or len(fields[0]) > 9:
        return None
    return Crypto(int(fields[0]), fields[1], fields[2])


def _resolve(media: MediaDescription, own: _Section, session: _Section) -> MediaDescription:
    """Apply media-level attributes, falling back to session level (RFC 8866 §5)."""
    media.connection = own.connection if own.connection is not None else session.connection
    media.direction = own.direction or session.direction or "sendrecv"  # RFC 3264 §5.1 default
    media.ptime = own.ptime or session.ptime
    media.fmtp = own.fmtp
    media.crypto = own.crypto
    media.rtcp_mux = own.rtcp_mux
    media.zrtp = own.zrtp or session.zrtp  # a=zrtp-hash may sit at session level (RFC 6189 §8.1)
    rtpmap = dict(own.rtpmap)
    for pt in media.payload_types:
        if pt not in rtpmap and pt in STATIC_PAYLOAD_TYPES:
            rtpmap[pt] = STATIC_PAYLOAD_TYPES[pt]
    media.rtpmap = rtpmap
    return media
