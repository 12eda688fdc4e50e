"""SIP message recognition and parsing (RFC 3261).

`looks_like_sip` is the cheap content test run on every non-RTP UDP payload (SIP is recognised
by content, on any port). `parse_sip` turns one complete message (a UDP datagram, or one message
framed out of a TCP stream) into a `SipMessage`. Bad input raises `ParseError("sip.<reason>")`;
no other exception escapes.

Leniency is chosen for a passive recorder: a message is kept whenever the fields that identify
the call (start line, Call-ID, CSeq, From, To) are sound. Header text is decoded as UTF-8 with
replacement characters, so stray bytes never crash the parser.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

from capture.errors import ParseError, never_leaks

MAX_MESSAGE_BYTES = 256 * 1024
MAX_HEADERS = 512
MAX_MULTIPART_DEPTH = 4

KNOWN_METHODS = frozenset({
    b"INVITE", b"ACK", b"BYE", b"CANCEL", b"OPTIONS", b"REGISTER", b"PRACK", b"UPDATE", b"INFO",
    b"REFER", b"NOTIFY", b"SUBSCRIBE", b"MESSAGE", b"PUBLISH",
})
_MAX_METHOD_LEN = 32

# Compact header forms: RFC 3261 §7.3.3 (i f t m l c v k s e), RFC 6665 (o u), RFC 3515 (r),
# RFC 3892 (b), RFC 4028 (x), RFC 8224 (y), RFC 3841 (j a d), RFC 4474 (n).
COMPACT_HEADERS: dict[str, str] = {
    "i": "call-id", "f": "from", "t": "to", "m": "contact", "l": "content-length",
    "c": "content-type", "v": "via", "k": "supported", "s": "subject", "e": "content-encoding",
    "o": "event", "u": "allow-events", "r": "refer-to", "b": "referred-by",
    "x": "session-expires", "y": "identity", "j": "reject-contact", "a": "accept-contact",
    "d": "request-disposition", "n": "identity-info",
}

# token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~")  (§25.1)
_TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]+"
_TOKEN_RE = re.compile(_TOKEN)
_URI_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:[^\s<>\"]+")
_STATUS_RE = re.compile(r"SIP/2\.0 ([1-6][0-9][0-9])(?: (.*))?", re.IGNORECASE)
_CSEQ_RE = re.compile(rf"(\d{{1,10}})[ \t]+({_TOKEN})")
_DIGITS_RE = re.compile(r"\d{1,10}")
_QUOTED_RE = re.compile(r'"((?:[^"\\]++|\\.)*+)"', re.DOTALL)
_QUOTED_PAIR_RE = re.compile(r"\\(.)", re.DOTALL)
_VIA_RE = re.compile(
    rf"SIP\s*/\s*2\.0\s*/\s*({_TOKEN})\s+(\[[0-9A-Fa-f:.]+\]|[^\s:;\[\]]+)(?:\s*:\s*(\d{{1,5}}))?\s*(;.*)?",
    re.IGNORECASE | re.DOTALL,
)
_CSEQ_MAX = 2**31  # §8.1.1.5: the sequence number MUST be less than 2**31


@dataclass(slots=True)
class NameAddr:
    """A From/To style value: optional display name, URI and header parameters."""

    display: str
    uri: str
    params: dict[str, str]


@dataclass(slots=True)
class Via:
    """One Via hop (RFC 3261 §20.42): transport, sent-by and parameters (branch, received, rport)."""

    transport: str
    host: str
    port: int | None
    params: dict[str, str]

    @property
    def branch(self) -> str:
        return self.params.get("branch", "")


@dataclass(slots=True)
class SipMessage:
    """One parsed SIP request or response."""

    is_request: bool
    method: str            # request method; for responses the CSeq method
    status: int            # 0 for requests
    reason: str
    request_uri: str
    call_id: str
    from_uri: str
    from_tag: str
    from_display: str
    to_uri: str
    to_tag: str
    to_display: str
    cseq: int
    cseq_method: str
    headers: list[tuple[str, str]]  # (canonical lower-case long name, value) in order
    body: bytes
    via: list[Via]
    truncated_body: bool = False    # Content-Length promised more bytes than the message holds

    def header(self, name: str) -> str | None:
        """First value of a header; `name` may be long or compact, in any case."""
        wanted = canonical_header_name(name)
        for key, value in self.headers:
            if key == wanted:
                return value
        return None

    def headers_named(self, name: str) -> list[str]:
        """Every value of a header, one per header line, in message order."""
        wanted = canonical_header_name(name)
        return [value for key, value in self.headers if key == wanted]

    @property
    def content_type(self) -> str:
        """Media type of the body, lower case, without parameters ("" when absent)."""
        return _media_type(self.header("content-type") or "")

    def sdp(self) -> bytes | None:
        """The application/sdp body, also when carried in a multipart body; None if absent."""
        content_type = self.header("content-type")
        if content_type is None:
            # A body without Content-Type violates §20.15, but some UAs send bare SDP; a
            # recorder that ignored it would lose the media description of the call.
            return self.body if self.body.lstrip().startswith(b"v=") else None
        return _find_sdp(content_type, self.body, depth=0)


def canonical_header_name(name: str) -> str:
    """Lower-case long form of a header name (compact forms expanded, §7.3.3)."""
    lowered = name.strip().lower()
    return COMPACT_HEADERS.get(lowered, lowered)


def looks_like_sip(payload: bytes) -> bool:
    """Cheap content check: does this payload start like a SIP request or response?

    Any bytes-like payload (bytes, bytearray, memoryview) is accepted.
    """
    if not isinstance(payload, bytes):
        payload = bytes(payload)
    if payload.startswith(b"SIP/2.0 "):
        return True
    space = payload.find(b" ", 0, _MAX_METHOD_LEN + 1)
    if space <= 0:
        return False
    method = payload[:space]
    if method not in KNOWN_METHODS and not (method.isalpha() and method.isupper()):
        return False
    line_end = payload.find(b"\n", space)
    if line_end < 0:
        line_end = len(payload)
    return payload.find(b" SIP/2.0", space, line_end) >= 0


def parse_sip(data: bytes) -> SipMessage:
    """Parse one SIP message; raises ParseError("sip.<reason>", detail) on bad input.

    Any bytes-like input is accepted; the body of the result is always `bytes`.
    """
    if not isinstance(data, bytes):
        data = bytes(data)
    if len(data) > MAX_MESSAGE_BYTES:
        raise ParseError("sip.too_large", f"{len(data)} bytes > {MAX_MESSAGE_BYTES}")
    return _parse(data)


def uri_user(uri: str) -> str:
    """User part of a sip:/sips:/tel: URI ("" if none), percent-decoded, without parameters.

    Telephone-subscriber users may carry ";"-parameters (RFC 3261 §19.1.6, e.g.
    "sip:+4930123;npdi@host"): those are dropped so the number stays searchable.
    """
    text = uri.strip()
    if text.startswith("<"):
        text = text[1:].split(">", 1)[0]
    scheme, colon, rest = text.partition(":")
    if not colon:
        return ""
    scheme = scheme.lower()
    if scheme == "tel":
        user = rest.split(";", 1)[0]
    elif scheme in ("sip", "sips"):
        userinfo, at, _ = rest.partition("@")
        if not at:
            return ""
        user = userinfo.split(":", 1)[0].split(";", 1)[0]
    else:
        return ""
    return unquote(user)


# --- message structure ------------------------------------------------------------------------

@never_leaks("sip.malformed")
def _parse(data: bytes) -> SipMessage:
    # §7.5: CRLFs before the start line are ignored (keep-alives, stream leftovers).
    head_bytes, body, _ = split_head_body(data.lstrip(b"\r\n"))
    if not head_bytes:
        raise ParseError("sip.empty", "no start line")
    lines = _unfold(head_bytes.decode("utf-8", "replace"))
    start_line, header_lines = lines[0], lines[1:]
    headers = [_split_header(line) for line in header_lines]
    msg = _start_message(start_line, headers)
    _fill_identity(msg)
    msg.via = [hop for value in _values(headers, "via") for hop in parse_via(value)]
    msg.body, msg.truncated_body = _cut_body(body, _values(headers, "content-length"))
    return msg


def split_head_body(data: bytes) -> tuple[bytes, bytes, bool]:
    """Split at the first empty line (CRLF CRLF, or bare LF LF from lenient senders).

    Returns (header section, body, found); without an empty line the whole input is headers.
    """
    crlf = data.find(b"\r\n\r\n")
    lf = data.find(b"\n\n")
    if lf >= 0 and (crlf < 0 or lf < crlf):
        return data[:lf], data[lf + 2:], True
    if crlf >= 0:
        return data[:crlf], data[crlf + 4:], True
    return data, b"", False


def _unfold(text: str) -> list[str]:
    """Split header text into logical lines, joining folded continuations (§7.3.1).

    A line starting with SP or HT continues the previous one; the fold is replaced by one SP.
    Parts are joined once at the end, so many continuation lines cost linear time.
    """
    logical: list[list[str]] = []
    for raw in text.split("\n"):
        line = raw.rstrip("\r")
        if line[:1] in (" ", "\t"):
            if not logical:
                raise ParseError("sip.no_start_line", _clip(line))
            if len(logical) == 1:  # only header lines may be folded, never the start line
                raise ParseError("sip.bad_folding", "continuation line without a header")
            logical[-1].append(line.strip(" \t"))
        elif line:
            if len(logical) > MAX_HEADERS:  # start line + MAX_HEADERS headers already
                raise ParseError("sip.too_many_headers", f"more than {MAX_HEADERS} headers")
            logical.append([line.rstrip(" \t")])
    if not logical:
        raise ParseError("sip.empty", "no start line")
    return [" ".join(part for part in parts if part) for parts in logical]


def _split_header(line: str) -> tuple[str, str]:
    """One "name: value" line -> (canonical name, stripped value); HCOLON allows WSP before ":"."""
    name, colon, value = line.partition(":")
    name = name.rstrip(" \t")
    if not colon or not _TOKEN_RE.fullmatch(name):
        raise ParseError("sip.bad_header", _clip(line))
    return canonical_header_name(name), value.strip(" \t")


def _start_message(start_line: str, headers: list[tuple[str, str]]) -> SipMessage:
    """Build the message skeleton from the start line (§7.1 Request-Line, §7.2 Status-Line)."""
    msg = SipMessage(
        is_request=True, method="", status=0, reason="", request_uri="", call_id="",
        from_uri="", from_tag="", from_display="", to_uri="", to_tag="", to_display="",
        cseq=0, cseq_method="", headers=headers, body=b"", via=[],
    )
    if start_line[:8].upper() == "SIP/2.0 ":
        match = _STATUS_RE.fullmatch(start_line)
        if match is None:
            raise ParseError("sip.bad_status_line", _clip(start_line))
        msg.is_request = False
        msg.status = int(match.group(1))
        msg.reason = (match.group(2) or "").strip()
        return msg
    parts = start_line.split()
    if len(parts) != 3 or parts[2].upper() != "SIP/2.0":
        raise ParseError("sip.no_start_line", _clip(start_line))
    method, request_uri, _ = parts
    if not _TOKEN_RE.fullmatch(method):
        raise ParseError("sip.bad_method", _clip(method))
    if not _URI_RE.fullmatch(request_uri):
        raise ParseError("sip.bad_request_uri", _clip(request_uri))
    msg.method = method
    msg.request_uri = request_uri
    return msg


def _fill_identity(msg: SipMessage) -> None:
    """Call-ID, CSeq, From and To: mandatory in every message (§8.1.1)."""
    call_id = _required(msg.headers, "call-id", "Call-ID")
    if not call_id or any(ch.isspace() for ch in call_id):
        raise ParseError("sip.bad_call_id", _clip(call_id))
    msg.call_id = call_id

    msg.cseq, msg.cseq_method = _parse_cseq(_required(msg.headers, "cseq", "CSeq"))
    if msg.is_request:
        # §8.1.1.5: the CSeq method MUST match the request method.
        if msg.cseq_method != msg.method:
            raise ParseError("sip.cseq_method_mismatch", f"{msg.method} vs CSeq {msg.cseq_method}")
    else:
        msg.method = msg.cseq_method

    sender = parse_name_addr(_required(msg.headers, "from", "From"), "from")
    msg.from_display, msg.from_uri, msg.from_tag = sender.display, sender.uri, sender.params.get("tag", "")
    target = parse_name_addr(_required(msg.headers, "to", "To"), "to")
    msg.to_display, msg.to_uri, msg.to_tag = target.display, target.uri, target.params.get("tag", "")


def _required(headers: list[tuple[str, str]], name: str, label: str) -> str:
    for key, value in headers:
        if key == name:
            return value
    raise ParseError(f"sip.missing_{name.replace('-', '_')}", f"no {label} header")


def _values(headers: list[tuple[str, str]], name: str) -> list[str]:
    return [value for key, value in headers if key == name]


def _parse_cseq(value: str) -> tuple[int, str]:
    """CSeq = 1*DIGIT LWS Method (§20.16), number below 2**31 (§8.1.1.5)."""
    match = _CSEQ_RE.fullmatch(value)
    if match is None:
        raise ParseError("sip.bad_cseq", _clip(value))
    number = int(match.group(1))
    if number >= _CSEQ_MAX:
        raise ParseError("sip.bad_cseq", f"sequence number {number} >= 2**31")
    return number, match.group(2)


def _cut_body(body: bytes, lengths: list[str]) -> tuple[bytes, bool]:
    """Apply Content-Length (§18.3, §20.14); returns (body, truncated)."""
    if not lengths:
        return body, False  # over UDP the body runs to the end of the datagram (§18.3)
    if not _DIGITS_RE.fullmatch(lengths[0]):
        raise ParseError("sip.bad_content_length", _clip(lengths[0]))
    length = int(lengths[0])
    if length > len(body):
        # §18.3 says a UDP message with a short body should be discarded; a passive recorder
        # keeps the call and flags the body instead.
        return body, True
    return body[:length], False


# --- header values ----------------------------------------------------------------------------

def parse_name_addr(value: str, header: str = "name_addr") -> NameAddr:
    """name-addr or addr-spec with header parameters (§20.10, §25.1).

    `"Bob \\"B\\"" <sip:bob@b.example>;tag=1`, `Bob <sip:bob@b.example>`, `<sip:bob@b.example>`
    and bare `sip:bob@b.example;tag=1` (parameters then belong to the header, not the URI).
    Raises ParseError("sip.bad_<header>").
    """
    reason = f"sip.bad_{header}"
    text = value.strip()
    display = ""
    if text.startswith('"'):
        match = _QUOTED_RE.match(text)
        if match is None:
            raise ParseError(reason, "unterminated display name")
        display = _QUOTED_PAIR_RE.sub(r"\1", match.group(1))
        text = text[match.end():].lstrip()
        if not text.startswith("<"):
            raise ParseError(reason, "display name without <URI>")
    if "<" in text:
        before, _, rest = text.partition("<")
        display = display or before.strip()
        uri, closed, after = rest.partition(">")
        if not closed:
            raise ParseError(reason, "missing '>'")
        after = after.strip()
        if after and not after.startswith(";"):
            raise ParseError(reason, f"junk after name-addr: {_clip(after)}")
        params = split_params(after)
    else:
        uri, _, after = text.partition(";")
        params = split_params(after)
    uri = uri.strip()
    if not _URI_RE.fullmatch(uri):
        raise ParseError(reason, f"bad URI {_clip(uri)!r}")
    return NameAddr(display, uri, params)


def parse_via(value: str) -> list[Via]:
    """A Via header value, which may hold several comma-separated hops (§20.42)."""
    hops = []
    for part in _split_outside_quotes(value, ","):
        if not part.strip():
            continue
        match = _VIA_RE.fullmatch(part.strip())
        if match is None:
            raise ParseError("sip.bad_via", _clip(part))
        transport, host, port, params = match.groups()
        port_number = int(port) if port else None
        if port_number is not None and port_number > 65535:
            raise ParseError("sip.bad_via", f"port {port_number}")
        hops.append(Via(transport.upper(), host, port_number, split_params(params or "")))
    return hops


def split_params(text: str) -> dict[str, str]:
    """";name=value;flag" -> {"name": "value", "flag": ""}; names lower-cased, first wins."""
    params: dict[str, str] = {}
    for item in _split_outside_quotes(text, ";"):
        name, _, raw = item.partition("=")
        name = name.strip().lower()
        if not name or name in params:
            continue
        raw = raw.strip()
        quoted = _QUOTED_RE.fullmatch(raw)
        params[name] = _QUOTED_PAIR_RE.sub(r"\1", quoted.group(1)) if quoted else raw
    return params


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    """Split on `sep` except inside double-quoted strings (with backslash escapes)."""
    if '"' not in text:
        return text.split(sep)
    parts: list[str] = []
    start = 0
    in_quotes = False
    escaped = False
    for index, ch in enumerate(text):
        if escaped:
            escaped = False
        elif in_quotes and ch == "\\":
            escaped = True
        elif ch == '"':
            in_quotes = not in_quotes
        elif ch == sep and not in_quotes:
            parts.append(text[start:index])
            start = index + 1
    parts.append(text[start:])
    return parts


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


# --- bodies -----------------------------------------------------------------------------------

def _find_sdp(content_type: str, body: bytes, depth: int) -> bytes | None:
    """The first application/sdp entity in `body`, descending into multipart (RFC 2046 §5.1)."""
    media_type = _media_type(content_type)
    if media_type == "application/sdp":
        return body
    if not media_type.startswith("multipart/") or depth >= MAX_MULTIPART_DEPTH:
        return None
    boundary = split_params(content_type.partition(";")[2]).get("boundary", "")
    if not boundary:
        return None
    for part_type, part_body in _multipart_parts(body, boundary.encode("utf-8", "replace")):
        found = _find_sdp(part_type, part_body, depth + 1)
        if found is not None:
            return found
    return None


def _multipart_parts(body: bytes, boundary: bytes) -> list[tuple[str, bytes]]:
    """Split a multipart body into (Content-Type, entity body) pairs (RFC 2046 §5.1.1).

    A delimiter is "--boundary" at the start of a line; the CRLF before it belongs to the
    delimiter. A part without Content-Type is text/plain (§5.1).
    """
    delimiter = b"--" + boundary
    marker = b"\n" + delimiter
    parts: list[tuple[str, bytes]] = []
    if body.startswith(delimiter):
        position = 0
    else:
        found = body.find(marker)  # anything before the first delimiter is preamble
        if found < 0:
            return parts
        position = found + 1
    while True:
        position += len(delimiter)
        if body.startswith(b"--", position):  # close-delimiter
            break
        line_end = body.find(b"\n", position)  # skip transport padding after the boundary
        if line_end < 0:
            break
        next_delimiter = body.find(marker, line_end)
        end = len(body) if next_delimiter < 0 else next_delimiter
        parts.append(_part_entity(body[line_end + 1:end].removesuffix(b"\r")))
        if next_delimiter < 0:
            break
        position = next_delimiter + 1
    return parts


def _part_entity(part: bytes) -> tuple[str, bytes]:
    """(Content-Type, body) of one body part; its headers end at the first empty line."""
    if part.startswith(b"\r\n") or part.startswith(b"\n"):
        return "text/plain", part.split(b"\n", 1)[1]
    head, body, _ = split_head_body(part)
    content_type = "text/plain"
    for line in head.decode("utf-8", "replace").split("\n"):
        name, colon, value = line.partition(":")
        if colon and canonical_header_name(name) == "content-type":
            content_type = value.strip()
            break
    return content_type, body
