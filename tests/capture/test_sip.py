"""Tests for capture.sip: recognition, parsing, header forms, bodies, and the real corpus.

The corpus part runs tshark on every capture in ../shared/corpus/pcap (once per session, files
in parallel) and compares what we parse from the raw SIP payloads with tshark's own dissection.
The helpers `corpus_sip_frames` and `CorpusFrame` are shared with test_sdp.py.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import re
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from capture.errors import ParseError
from capture.sip import (
    COMPACT_HEADERS,
    KNOWN_METHODS,
    MAX_HEADERS,
    MAX_MESSAGE_BYTES,
    looks_like_sip,
    parse_sip,
    uri_user,
)

CORPUS_DIR = Path(os.environ.get("RECORDERD_CORPUS", Path(__file__).resolve().parents[3] / "shared" / "corpus"))
PCAP_DIR = CORPUS_DIR / "pcap"
EXPECTED = PCAP_DIR / "expected.json"

# --- corpus extraction through tshark (shared with test_sdp.py) --------------------------------

_AGGREGATOR = "\x1f"
_TSHARK_FIELDS = (
    "frame.number", "sip.Method", "sip.Status-Code", "sip.Call-ID", "sip.CSeq.method",
    "sip.CSeq.seq", "sip.from.user", "sip.to.user", "sip.from.tag", "sip.to.tag",
    "udp.payload", "tcp.payload", "sdp.media_attr", "sdp.crypto.tag", "sdp.crypto.crypto_suite",
    "sdp.crypto.master_key",
)
_TSHARK_ESCAPES = {"\\\\": "\\", "\\a": "\a", "\\b": "\b", "\\f": "\f", "\\n": "\n", "\\r": "\r",
                   "\\t": "\t", "\\v": "\v"}
_TSHARK_ESCAPE_RE = re.compile(r"\\[\\abfnrtv]")


@dataclass(slots=True)
class CorpusFrame:
    """One SIP message of a corpus capture: the raw payload and tshark's view of it."""

    file: str
    frame: int
    payload: bytes
    method: str          # request method, "" for responses
    status: str          # status code text, "" for requests
    call_id: str
    cseq_method: str
    cseq: str
    from_user: str
    to_user: str
    from_tag: str
    to_tag: str
    media_attrs: list[str]
    crypto_tags: list[str]
    crypto_suites: list[str]
    crypto_keys: list[str]   # hex of tshark's master key (first 16 bytes of the key)


def corpus_files() -> list[str]:
    """Capture file names of the corpus (every entry of expected.json)."""
    return sorted(name for name in json.loads(EXPECTED.read_text()) if not name.startswith("_"))


def expected_corpus() -> dict:
    return json.loads(EXPECTED.read_text())


@functools.cache
def corpus_sip_frames() -> dict[str, list[CorpusFrame]]:
    """Every SIP message tshark finds in each corpus capture (tshark runs in parallel, once)."""
    assert shutil.which("tshark"), "tshark is needed to cross-check the corpus"
    files = corpus_files()
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        return dict(zip(files, pool.map(_tshark_sip_frames, files), strict=True))


def _tshark_sip_frames(name: str) -> list[CorpusFrame]:
    command = ["tshark", "-r", str(PCAP_DIR / name), "-Y", "sip", "-T", "fields",
               "-E", "occurrence=a", "-E", f"aggregator={_AGGREGATOR}"]
    for field in _TSHARK_FIELDS:
        command += ["-e", field]
    result = subprocess.run(command, capture_output=True, check=True)
    frames = []
    for line in result.stdout.decode("utf-8", "surrogateescape").splitlines():
        values = [_unescape(value) for value in line.split("\t")]
        row = dict(zip(_TSHARK_FIELDS, values, strict=True))
        payload_hex = _last(row["udp.payload"]) or _last(row["tcp.payload"])  # innermost UDP
        frames.append(CorpusFrame(
            file=name, frame=int(row["frame.number"]), payload=bytes.fromhex(payload_hex),
            method=_first(row["sip.Method"]), status=_first(row["sip.Status-Code"]),
            call_id=_first(row["sip.Call-ID"]), cseq_method=_first(row["sip.CSeq.method"]),
            cseq=_first(row["sip.CSeq.seq"]), from_user=_first(row["sip.from.user"]),
            to_user=_first(row["sip.to.user"]), from_tag=_first(row["sip.from.tag"]),
            to_tag=_first(row["sip.to.tag"]), media_attrs=_all(row["sdp.media_attr"]),
            crypto_tags=_all(row["sdp.crypto.tag"]), crypto_suites=_all(row["sdp.crypto.crypto_suite"]),
            crypto_keys=_all(row["sdp.crypto.master_key"]),
        ))
    return frames


def _unescape(value: str) -> str:
    """tshark -T fields writes some control characters as C escapes (e.g. \\f)."""
    return _TSHARK_ESCAPE_RE.sub(lambda match: _TSHARK_ESCAPES[match.group(0)], value)


def _all(value: str) -> list[str]:
    return value.split(_AGGREGATOR) if value else []


def _first(value: str) -> str:
    return value.split(_AGGREGATOR, 1)[0]


def _last(value: str) -> str:
    return value.rsplit(_AGGREGATOR, 1)[-1]


# --- message builders ---------------------------------------------------------------------------

SDP_OFFER = (
    b"v=0\r\n"
    b"o=alice 2890844526 2890844526 IN IP4 192.0.2.10\r\n"
    b"s=-\r\n"
    b"c=IN IP4 192.0.2.10\r\n"
    b"t=0 0\r\n"
    b"m=audio 49170 RTP/AVP 0 8 101\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\n"
)

BASE_HEADERS = [
    "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds",
    "Max-Forwards: 70",
    'From: "Alice" <sip:alice@atlanta.example>;tag=1928301774',
    "To: Bob <sip:bob@biloxi.example>",
    "Call-ID: a84b4c76e66710@pc33.atlanta.example",
    "CSeq: 314159 INVITE",
    "Contact: <sip:alice@192.0.2.10>",
]


def build(start: str = "INVITE sip:bob@biloxi.example SIP/2.0", headers: list[str] | None = None,
          body: bytes = b"", content_type: str | None = "application/sdp",
          content_length: int | None = None, eol: str = "\r\n") -> bytes:
    """A SIP message from parts; Content-Length defaults to the body length."""
    lines = [start, *(BASE_HEADERS if headers is None else headers)]
    if body and content_type is not None:
        lines.append(f"Content-Type: {content_type}")
    lines.append(f"Content-Length: {len(body) if content_length is None else content_length}")
    return (eol.join(lines) + eol + eol).encode() + body


def without(name: str) -> list[str]:
    return [line for line in BASE_HEADERS if not line.lower().startswith(name.lower() + ":")]


def reason_of(data: bytes) -> str:
    with pytest.raises(ParseError) as info:
        parse_sip(data)
    return info.value.reason


# --- looks_like_sip -----------------------------------------------------------------------------

@pytest.mark.parametrize("method", sorted(m.decode() for m in KNOWN_METHODS))
def test_looks_like_sip_accepts_every_known_method(method: str) -> None:
    assert looks_like_sip(f"{method} sip:bob@biloxi.example SIP/2.0\r\nVia: x\r\n".encode())


@pytest.mark.parametrize("payload", [
    b"SIP/2.0 200 OK\r\n",
    b"SIP/2.0 486 Busy Here\r\nCall-ID: x\r\n",
    b"FOOBAR sip:bob@biloxi.example SIP/2.0\r\n",   # extension method (upper-case token)
    b"INVITE tel:+15551234 SIP/2.0",                # no line end at all
    b"OPTIONS sip:[2001:db8::1]:5060 SIP/2.0\n",    # bare LF
])
def test_looks_like_sip_accepts(payload: bytes) -> None:
    assert looks_like_sip(payload)


@pytest.mark.parametrize("payload", [
    b"",
    b"\x80\x00\x12\x34\x00\x00\x00\xa0\xde\xad\xbe\xef" + bytes(160),  # RTP PCMU packet
    b"\x00\x01\x00\x00\x21\x12\xa4\x42" + bytes(12),                    # STUN binding request
    b"HTTP/1.1 200 OK\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\n",
    b"invite sip:bob@biloxi.example SIP/2.0\r\n",   # methods are case-sensitive upper-case
    b"INVITE sip:bob@biloxi.example\r\n",           # no version
    b"INVITE sip:bob@biloxi.example\r\nX: SIP/2.0\r\n",  # version only on a later line
    b"SIP/2.0",
    b"SIP/2.0/UDP 192.0.2.1:5060",
    b" INVITE sip:bob@biloxi.example SIP/2.0\r\n",
    b"INV1TE sip:bob@biloxi.example SIP/2.0\r\n",
    b"\r\n\r\n",                                    # keep-alive
])
def test_looks_like_sip_rejects(payload: bytes) -> None:
    assert not looks_like_sip(payload)


def test_bytes_like_payloads_are_accepted() -> None:
    data = build(body=SDP_OFFER)
    for view in (bytearray(data), memoryview(data)):
        assert looks_like_sip(view)
        msg = parse_sip(view)
        assert msg.call_id == "a84b4c76e66710@pc33.atlanta.example" and msg.body == SDP_OFFER
        assert isinstance(msg.body, bytes)


# --- start line and identity --------------------------------------------------------------------

def test_parse_request_with_sdp() -> None:
    msg = parse_sip(build(body=SDP_OFFER))
    assert msg.is_request and msg.method == "INVITE" and msg.status == 0
    assert msg.request_uri == "sip:bob@biloxi.example"
    assert msg.call_id == "a84b4c76e66710@pc33.atlanta.example"
    assert (msg.from_display, msg.from_uri, msg.from_tag) == ("Alice", "sip:alice@atlanta.example", "1928301774")
    assert (msg.to_display, msg.to_uri, msg.to_tag) == ("Bob", "sip:bob@biloxi.example", "")
    assert (msg.cseq, msg.cseq_method) == (314159, "INVITE")
    assert msg.content_type == "application/sdp"
    assert msg.body == SDP_OFFER and msg.sdp() == SDP_OFFER
    assert not msg.truncated_body
    assert [name for name, _ in msg.headers] == [
        "via", "max-forwards", "from", "to", "call-id", "cseq", "contact", "content-type", "content-length"]


def test_parse_response_takes_method_from_cseq() -> None:
    headers = [*BASE_HEADERS[:3], "To: Bob <sip:bob@biloxi.example>;tag=a6c85cf", *BASE_HEADERS[4:]]
    msg = parse_sip(build("SIP/2.0 180 Ringing", headers))
    assert not msg.is_request
    assert (msg.status, msg.reason, msg.method, msg.request_uri) == (180, "Ringing", "INVITE", "")
    assert msg.to_tag == "a6c85cf"


@pytest.mark.parametrize(("start", "status", "reason"), [
    ("SIP/2.0 200 OK", 200, "OK"),
    ("SIP/2.0 183 Session Progress", 183, "Session Progress"),
    ("SIP/2.0 200", 200, ""),                      # empty Reason-Phrase
    ("sip/2.0 404 Not Found", 404, "Not Found"),   # version literal is case-insensitive
    ("SIP/2.0 603 Declined ", 603, "Declined"),
])
def test_status_lines(start: str, status: int, reason: str) -> None:
    msg = parse_sip(build(start))
    assert (msg.status, msg.reason) == (status, reason)


@pytest.mark.parametrize(("data", "reason"), [
    (b"", "sip.empty"),
    (b"\r\n\r\n", "sip.empty"),
    (b"hello world", "sip.no_start_line"),
    (b"INVITE sip:bob@biloxi.example SIP/3.0\r\n\r\n", "sip.no_start_line"),
    (b"INVITE  sip:bob@biloxi.example\r\n\r\n", "sip.no_start_line"),
    (b"SIP/2.0 99 Too Low\r\n\r\n", "sip.bad_status_line"),
    (b"SIP/2.0 700 Too High\r\n\r\n", "sip.bad_status_line"),
    (b"SIP/2.0 2000 OK\r\n\r\n", "sip.bad_status_line"),
    (b"SIP/2.0 abc\r\n\r\n", "sip.bad_status_line"),
    (b"INV\"TE sip:bob@biloxi.example SIP/2.0\r\n\r\n", "sip.bad_method"),
    (b"INVITE bob@biloxi.example SIP/2.0\r\n\r\n", "sip.bad_request_uri"),
    (b" INVITE sip:bob@biloxi.example SIP/2.0\r\n\r\n", "sip.no_start_line"),
])
def test_bad_start_lines(data: bytes, reason: str) -> None:
    assert reason_of(data) == reason


def test_leading_crlf_before_start_line_is_ignored() -> None:
    assert parse_sip(b"\r\n\r\n" + build()).method == "INVITE"  # RFC 3261 §7.5


def test_lf_only_line_endings() -> None:
    msg = parse_sip(build(body=SDP_OFFER.replace(b"\r\n", b"\n"), eol="\n"))
    assert msg.call_id == "a84b4c76e66710@pc33.atlanta.example"
    assert msg.sdp() == SDP_OFFER.replace(b"\r\n", b"\n")


# --- header names: compact forms, case, folding -------------------------------------------------

def test_every_compact_form_expands_to_its_long_name() -> None:
    extra = {short: f"value-of-{short}" for short in COMPACT_HEADERS if short not in "iftlcv"}
    headers = [
        "v: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKcompact",
        "f: <sip:alice@atlanta.example>;tag=f1",
        "t: <sip:bob@biloxi.example>",
        "i: compact-call-id@host",
        "CSeq: 1 INVITE",
        *(f"{short}: {value}" for short, value in extra.items()),
    ]
    data = build(headers=headers, body=SDP_OFFER, content_type=None).replace(
        b"Content-Length:", b"c: application/sdp\r\nl:")
    msg = parse_sip(data)
    assert msg.call_id == "compact-call-id@host"
    assert msg.from_tag == "f1" and msg.to_uri == "sip:bob@biloxi.example"
    assert msg.via[0].branch == "z9hG4bKcompact"
    assert msg.content_type == "application/sdp" and msg.sdp() == SDP_OFFER
    for short, value in extra.items():
        long_name = COMPACT_HEADERS[short]
        assert msg.header(long_name) == value
        assert msg.header(short.upper()) == value
        assert msg.header(long_name.title()) == value
        assert (long_name, value) in msg.headers
    assert {name for name, _ in msg.headers} <= set(COMPACT_HEADERS.values()) | {"cseq"}


def test_compact_table_covers_the_registered_forms() -> None:
    assert COMPACT_HEADERS["i"] == "call-id" and COMPACT_HEADERS["m"] == "contact"
    assert COMPACT_HEADERS["o"] == "event" and COMPACT_HEADERS["u"] == "allow-events"
    assert COMPACT_HEADERS["r"] == "refer-to" and COMPACT_HEADERS["b"] == "referred-by"
    assert COMPACT_HEADERS["x"] == "session-expires" and COMPACT_HEADERS["y"] == "identity"
    assert COMPACT_HEADERS["j"] == "reject-contact" and COMPACT_HEADERS["a"] == "accept-contact"
    assert set("iftmlcvkseourbxyja") <= set(COMPACT_HEADERS)


def test_header_names_are_case_insensitive() -> None:
    headers = ["VIA: SIP/2.0/UDP h:5060;branch=z9hG4bK1", "fROM: <sip:a@h>;TAG=x", "to: <sip:b@h>",
               "CALL-ID: upper@h", "cseq: 7 INVITE", "user-Agent: odd-case"]
    msg = parse_sip(build(headers=headers))
    assert msg.call_id == "upper@h" and msg.cseq == 7 and msg.from_tag == "x"
    assert msg.header("User-Agent") == msg.header("USER-AGENT") == "odd-case"
    assert msg.header("Subject") is None


def test_header_colon_may_follow_whitespace() -> None:
    headers = [*without("Call-ID"), "Call-ID \t:   spaced@h  "]
    assert parse_sip(build(headers=headers)).call_id == "spaced@h"


def test_folded_headers_are_unfolded() -> None:
    headers = [
        *without("From"),
        # RFC 3261 §7.3.1 example
        "Subject: I know you're there,",
        "               pick up the phone",
        "\t\t\tand talk to me!",
        'From: "Alice Folded"',
        "\t<sip:alice@atlanta.example>;tag=folded",
    ]
    msg = parse_sip(build(headers=headers))
    assert msg.header("subject") == "I know you're there, pick up the phone and talk to me!"
    assert (msg.from_display, msg.from_uri, msg.from_tag) == ("Alice Folded", "sip:alice@atlanta.example", "folded")


def test_start_line_cannot_be_folded() -> None:
    data = b"INVITE sip:bob@biloxi.example SIP/2.0\r\n  more\r\n" + build().split(b"\r\n", 1)[1]
    assert reason_of(data) == "sip.bad_folding"


@pytest.mark.parametrize("line", ["No colon here", "Bad Name: x", ": empty name", "Na\x00me: x"])
def test_malformed_header_lines(line: str) -> None:
    assert reason_of(build(headers=[*BASE_HEADERS, line])) == "sip.bad_header"


def test_headers_named_keeps_every_line_in_order() -> None:
    headers = [*BASE_HEADERS, "Record-Route: <sip:p1.example;lr>", "rEcord-route: <sip:p2.example;lr>",
               "Via: SIP/2.0/TCP 198.51.100.1;branch=z9hG4bK2"]
    msg = parse_sip(build(headers=headers))
    assert msg.headers_named("record-route") == ["<sip:p1.example;lr>", "<sip:p2.example;lr>"]
    assert msg.headers_named("v") == msg.headers_named("Via")
    assert len(msg.headers_named("via")) == 2
    assert msg.headers_named("x-missing") == []


# --- From / To ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "display", "uri", "tag"), [
    ('"Alice \\"Al\\" Smith" <sip:alice@a.example>;tag=88sja8x', 'Alice "Al" Smith', "sip:alice@a.example", "88sja8x"),
    ('"back\\\\slash" <sip:b@a.example>', "back\\slash", "sip:b@a.example", ""),
    ('"a<b;c>,d" <sip:q@a.example>;tag=1', "a<b;c>,d", "sip:q@a.example", "1"),
    ("Bob <sips:bob@b.example>", "Bob", "sips:bob@b.example", ""),
    ("Bob  Smith<sip:bob@b.example>;tag=2", "Bob  Smith", "sip:bob@b.example", "2"),
    ('"asterisk"<sip:asterisk@192.168.10.2>;tag=as4376c968', "asterisk", "sip:asterisk@192.168.10.2", "as4376c968"),
    ("<sip:carol@c.example;user=phone>;tag=c1", "", "sip:carol@c.example;user=phone", "c1"),
    ("sip:dave@d.example;tag=xyz", "", "sip:dave@d.example", "xyz"),   # addr-spec: params are header params
    ("tel:+1-201-555-0123;tag=t1", "", "tel:+1-201-555-0123", "t1"),
    ("<sip:e@e.example>;TAG=Upper;other=1", "", "sip:e@e.example", "Upper"),
    ("<sip:f@f.example> ; tag = spaced", "", "sip:f@f.example", "spaced"),
    ('"Ünïcødé" <sip:u@u.example>', "Ünïcødé", "sip:u@u.example", ""),
    ("<sip:sipp@[fd17:625c:f037:2:a00:27ff:feb9:1521]:15060>;tag=1", "",
     "sip:sipp@[fd17:625c:f037:2:a00:27ff:feb9:1521]:15060", "1"),
])
def test_name_addr_forms(value: str, display: str, uri: str, tag: str) -> None:
    headers = [*without("From"), f"From: {value}"]
    msg = parse_sip(build(headers=headers))
    assert (msg.from_display, msg.from_uri, msg.from_tag) == (display, uri, tag)


@pytest.mark.parametrize("value", [
    '"unterminated <sip:x@y.example>',
    '"quoted" sip:x@y.example',
    "<sip:x@y.example",
    "<sip:x@y.example> junk",
    "Receiver sip:bob@x.example>",
    "<>",
    "<not a uri>",
    "",
    "%s%s:noone@sip.no.invalid",
])
def test_bad_name_addr_is_a_parse_error_naming_the_header(value: str) -> None:
    assert reason_of(build(headers=[*without("To"), f"To: {value}"])) == "sip.bad_to"
    assert reason_of(build(headers=[*without("From"), f"From: {value}"])) == "sip.bad_from"


# --- mandatory headers, CSeq, Call-ID --------------------------------------------------------------

@pytest.mark.parametrize(("header", "reason"), [
    ("Call-ID", "sip.missing_call_id"), ("CSeq", "sip.missing_cseq"),
    ("From", "sip.missing_from"), ("To", "sip.missing_to"),
])
def test_missing_mandatory_header(header: str, reason: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_sip(build(headers=without(header)))
    assert info.value.reason == reason
    assert header in info.value.detail


@pytest.mark.parametrize("value", ["", "two words@h", "a\tb"])
def test_bad_call_id(value: str) -> None:
    assert reason_of(build(headers=[*without("Call-ID"), f"Call-ID: {value}"])) == "sip.bad_call_id"


@pytest.mark.parametrize(("value", "reason"), [
    ("INVITE", "sip.bad_cseq"),
    ("1", "sip.bad_cseq"),
    ("-1 INVITE", "sip.bad_cseq"),
    ("1.5 INVITE", "sip.bad_cseq"),
    ("2147483648 INVITE", "sip.bad_cseq"),            # must be < 2**31 (RFC 3261 §8.1.1.5)
    ("99999999999999999999 INVITE", "sip.bad_cseq"),
    ("1 INVITE extra", "sip.bad_cseq"),
    ("1 BYE", "sip.cseq_method_mismatch"),
])
def test_bad_cseq(value: str, reason: str) -> None:
    assert reason_of(build(headers=[*without("CSeq"), f"CSeq: {value}"])) == reason


def test_cseq_limits_and_spacing() -> None:
    msg = parse_sip(build(headers=[*without("CSeq"), "CSeq:   2147483647 \t INVITE  "]))
    assert (msg.cseq, msg.cseq_method) == (2**31 - 1, "INVITE")
    ack = parse_sip(build("ACK sip:bob@biloxi.example SIP/2.0", [*without("CSeq"), "CSeq: 0 ACK"]))
    assert (ack.method, ack.cseq) == ("ACK", 0)


# --- Via ----------------------------------------------------------------------------------------

def test_via_hops_in_order() -> None:
    headers = [
        "Via: SIP/2.0/UDP first.example:5060;branch=z9hG4bK1;received=192.0.2.1;rport=5061",
        "v: SIP / 2.0 / tcp [2001:db8::9]:5070 ;branch=z9hG4bK2, SIP/2.0/TLS third.example;branch=z9hG4bK3;rport",
        *BASE_HEADERS[1:],
    ]
    msg = parse_sip(build(headers=headers))
    assert [(v.transport, v.host, v.port, v.branch) for v in msg.via] == [
        ("UDP", "first.example", 5060, "z9hG4bK1"),
        ("TCP", "[2001:db8::9]", 5070, "z9hG4bK2"),
        ("TLS", "third.example", None, "z9hG4bK3"),
    ]
    assert msg.via[0].params["received"] == "192.0.2.1" and msg.via[0].params["rport"] == "5061"
    assert msg.via[2].params["rport"] == ""


@pytest.mark.parametrize("value", [
    "SIP/2.0/UDP", "SIP2.0/UDP h:5060", "SIP/3.0/UDP h", "SIP/2.0/UDP h:99999", "SIP/2.0/UDP h:-1",
    "SIP/2.0/UDP h:::::5060", "aaaa/2.0/UDP h",
])
def test_bad_via(value: str) -> None:
    assert reason_of(build(headers=[*BASE_HEADERS[1:], f"Via: {value}"])) == "sip.bad_via"


def test_via_is_optional_for_a_passive_recorder() -> None:
    assert parse_sip(build(headers=BASE_HEADERS[1:])).via == []


# --- body and Content-Length --------------------------------------------------------------------

def test_body_is_cut_to_content_length() -> None:
    data = build(body=SDP_OFFER) + b"trailing junk from a padded datagram"
    msg = parse_sip(data)
    assert msg.body == SDP_OFFER and not msg.truncated_body


def test_short_body_is_kept_and_flagged() -> None:
    msg = parse_sip(build(body=SDP_OFFER, content_length=len(SDP_OFFER) + 100))
    assert msg.body == SDP_OFFER and msg.truncated_body
    assert msg.sdp() == SDP_OFFER


def test_missing_content_length_means_rest_of_datagram() -> None:
    data = build(body=SDP_OFFER).replace(f"Content-Length: {len(SDP_OFFER)}\r\n".encode(), b"")
    msg = parse_sip(data)
    assert msg.header("content-length") is None and msg.body == SDP_OFFER


def test_zero_content_length_drops_trailing_bytes() -> None:
    assert parse_sip(build(content_length=0) + b"garbage").body == b""


@pytest.mark.parametrize("value", ["-1", "abc", "12 34", "1e3", "99999999999"])
def test_bad_content_length(value: str) -> None:
    data = build(headers=[*BASE_HEADERS]).replace(b"Content-Length: 0", f"Content-Length: {value}".encode())
    assert reason_of(data) == "sip.bad_content_length"


def test_message_without_blank_line_is_all_headers() -> None:
    msg = parse_sip(build().rstrip(b"\r\n"))
    assert msg.body == b"" and msg.call_id == "a84b4c76e66710@pc33.atlanta.example"


def test_non_utf8_bytes_do_not_crash() -> None:
    data = build(headers=[*without("From"), "From: PLACEHOLDER <sip:alice@atlanta.example>;tag=1",
                          "Subject: PLACEHOLDER"], body=SDP_OFFER + b"a=x-bin:\xff\xfe\x00\r\n")
    data = data.replace(b"PLACEHOLDER", b"Jos\xe9 \xc3\x28 \xff", 2)
    msg = parse_sip(data)
    assert msg.from_display == "Jos\ufffd \ufffd( \ufffd"
    assert msg.header("subject") == "Jos\ufffd \ufffd( \ufffd"
    assert msg.body.endswith(b"\xff\xfe\x00\r\n")  # the body stays raw bytes


def test_utf8_display_names_are_decoded() -> None:
    data = build(headers=[*without("From"), "From: X <sip:a@b.example>;tag=1"])
    msg = parse_sip(data.replace(b"From: X", 'From: "Zoë Ærø"'.encode()))
    assert msg.from_display == "Zoë Ærø"


def test_size_limit() -> None:
    filler = "X-Filler: " + "a" * 1000
    big = build(headers=[*BASE_HEADERS, *[filler] * 300])
    assert len(big) > MAX_MESSAGE_BYTES
    assert reason_of(big) == "sip.too_large"
    assert parse_sip(build(headers=[*BASE_HEADERS, *[filler] * 200])).call_id


def test_header_count_limit() -> None:
    room = MAX_HEADERS - len(BASE_HEADERS) - 1  # Content-Length is added by build()
    assert len(parse_sip(build(headers=[*BASE_HEADERS, *["X-A: 1"] * room])).headers) == MAX_HEADERS
    assert reason_of(build(headers=[*BASE_HEADERS, *["X-A: 1"] * (room + 1)])) == "sip.too_many_headers"


# --- SDP bodies: direct and multipart ----------------------------------------------------------

ISUP = b"\x01\x00\x49\x00\x00\x03\x02\x00\x07\x04\x10\x00\x33\x63\x21\x43\x00\x00\x03"


def multipart(boundary: str, parts: list[tuple[str | None, bytes]], preamble: bytes = b"") -> bytes:
    chunks = [preamble]
    for content_type, body in parts:
        head = f"--{boundary}\r\n" + (f"Content-Type: {content_type}\r\n" if content_type else "")
        chunks.append(head.encode() + b"\r\n" + body + b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks)


@pytest.mark.parametrize("subtype", ["mixed", "alternative"])
def test_sdp_inside_multipart(subtype: str) -> None:
    body = multipart("unique-boundary-1", [
        ("application/ISUP;version=itu-t92+", ISUP),
        ("application/SDP", SDP_OFFER),
    ], preamble=b"This is a preamble.\r\n")
    msg = parse_sip(build(body=body, content_type=f'multipart/{subtype}; boundary="unique-boundary-1"'))
    assert msg.content_type == f"multipart/{subtype}"
    assert msg.sdp() == SDP_OFFER


def test_sdp_inside_nested_multipart() -> None:
    inner = multipart("inner", [(None, b"plain text, no content type"), ("application/sdp", SDP_OFFER)])
    outer = multipart("outer", [("text/plain", b"hello"), ("multipart/alternative;boundary=inner", inner)])
    msg = parse_sip(build(body=outer, content_type="multipart/mixed;boundary=outer"))
    assert msg.sdp() == SDP_OFFER


def test_sdp_lf_only_multipart() -> None:
    body = multipart("b", [("application/isup", ISUP), ("application/sdp", SDP_OFFER)]).replace(b"\r\n", b"\n")
    msg = parse_sip(build(body=body, content_type="multipart/mixed;boundary=b"))
    assert msg.sdp() == SDP_OFFER.replace(b"\r\n", b"\n")


@pytest.mark.parametrize(("content_type", "body"), [
    ("multipart/mixed;boundary=b", multipart("b", [("application/isup", ISUP), (None, b"v=0\r\n")])),
    ("multipart/mixed", multipart("b", [("application/sdp", SDP_OFFER)])),   # no boundary parameter
    ("multipart/mixed;boundary=other", multipart("b", [("application/sdp", SDP_OFFER)])),
    ("application/pidf+xml", b"<presence/>"),
    ("text/plain", SDP_OFFER),
])
def test_no_sdp(content_type: str, body: bytes) -> None:
    assert parse_sip(build(body=body, content_type=content_type)).sdp() is None


def test_no_body_no_sdp() -> None:
    msg = parse_sip(build())
    assert msg.sdp() is None and msg.content_type == ""


def test_untyped_sdp_body_is_still_found() -> None:
    assert parse_sip(build(body=SDP_OFFER, content_type=None)).sdp() == SDP_OFFER


def test_content_type_is_lower_case_without_parameters() -> None:
    msg = parse_sip(build(body=SDP_OFFER, content_type="Application/SDP ; charset=utf-8"))
    assert msg.content_type == "application/sdp" and msg.sdp() == SDP_OFFER


# --- uri_user -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("uri", "user"), [
    ("sip:alice@atlanta.example", "alice"),
    ("SIP:Alice@Atlanta.example", "Alice"),
    ("sips:bob:secret@biloxi.example:5061;transport=tls", "bob"),
    ("sip:+4930123456;npdi;rn=+4930999@gw.example;user=phone", "+4930123456"),
    ("sip:%2B15551234@gw.example", "+15551234"),
    ("sip:sipp@[fd17:625c:f037:2:a00:27ff:feb9:1521]:15060", "sipp"),
    ("tel:+1-201-555-0123;phone-context=example.com", "+1-201-555-0123"),
    ("tel:911", "911"),
    ("<sip:carol@chicago.example>", "carol"),
    ("sip:chicago.example", ""),
    ("sip:[2001:db8::1]:5060", ""),
    ("mailto:alice@atlanta.example", ""),
    ("alice@atlanta.example", ""),
    ("", ""),
])
def test_uri_user(uri: str, user: str) -> None:
    assert uri_user(uri) == user


# --- robustness ---------------------------------------------------------------------------------

def test_random_mutations_raise_only_parse_error() -> None:
    rng = random.Random(3261)
    seed = build(body=multipart("b", [("application/sdp", SDP_OFFER)]), content_type="multipart/mixed;boundary=b")
    specials = b'\r\n \t:;<>"\\,@=/\x00\xff'
    outcomes = {"parsed": 0, "rejected": 0}
    for _ in range(3000):
        data = bytearray(seed)
        for _ in range(rng.randint(1, 8)):
            choice = rng.random()
            position = rng.randrange(len(data))
            if choice < 0.4:
                data[position] = rng.choice(specials)
            elif choice < 0.7:
                del data[position:position + rng.randint(1, 20)]
            else:
                data[position:position] = bytes(rng.choice(specials) for _ in range(rng.randint(1, 10)))
        try:
            msg = parse_sip(bytes(data))
            msg.sdp()
            uri_user(msg.from_uri)
            outcomes["parsed"] += 1
        except ParseError:
            outcomes["rejected"] += 1
    assert outcomes["parsed"] > 100 and outcomes["rejected"] > 100, outcomes


def _fill_to_limit(prefix: bytes, unit: bytes) -> bytes:
    return prefix + unit * ((MAX_MESSAGE_BYTES - len(prefix) - 16) // len(unit))  # room for a suffix


@pytest.mark.parametrize("data", [
    _fill_to_limit(build().removesuffix(b"\r\n") + b"Subject: x\r\n", b" y\r\n"),    # endless folding
    _fill_to_limit(build().removesuffix(b"\r\n") + b"Subject: ", b'"\\"'),           # quotes and escapes
    _fill_to_limit(b"INVITE sip:", b"a") + b" SIP/2.0\r\n\r\n",                      # huge Request-URI
    _fill_to_limit(build().removesuffix(b"\r\n") + b"Via: SIP/2.0/UDP ", b"h") + b":1:\r\n\r\n",
    _fill_to_limit(build().removesuffix(b"\r\n") + b"From: ", b'"a\\" <') + b"\r\n\r\n",
    _fill_to_limit(b"", b"X: 1\r\n"),                                                 # header flood
    _fill_to_limit(build(body=b"--b\r\n", content_type="multipart/mixed;boundary=b"), b"--b\r\n"),
])
def test_adversarial_messages_are_handled_quickly(data: bytes) -> None:
    assert len(data) <= MAX_MESSAGE_BYTES
    started = time.perf_counter()
    with contextlib.suppress(ParseError):
        parse_sip(data).sdp()
    assert time.perf_counter() - started < 0.5


# --- the real corpus ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", corpus_files())
def test_corpus_messages_match_tshark(name: str) -> None:
    frames = corpus_sip_frames()[name]
    assert frames, f"tshark found no SIP in {name}"
    for frame in frames:
        where = f"{name} frame {frame.frame}"
        assert looks_like_sip(frame.payload), where
        msg = parse_sip(frame.payload)
        assert msg.call_id == frame.call_id, where
        if frame.method:
            assert msg.is_request and msg.method == frame.method, where
        else:
            assert not msg.is_request and str(msg.status) == frame.status, where
        assert (str(msg.cseq), msg.cseq_method) == (frame.cseq, frame.cseq_method), where
        assert (uri_user(msg.from_uri), uri_user(msg.to_uri)) == (frame.from_user, frame.to_user), where
        assert (msg.from_tag, msg.to_tag) == (frame.from_tag, frame.to_tag), where
        assert not msg.truncated_body, where
        assert msg.via, where


@pytest.mark.parametrize("name", corpus_files())
def test_corpus_first_invite_uris_match_expected(name: str) -> None:
    calls = expected_corpus()[name]["calls"]
    invites = {}
    for frame in corpus_sip_frames()[name]:
        if frame.method == "INVITE":
            invites.setdefault(frame.call_id, parse_sip(frame.payload))
    for call in calls:
        msg = invites[call["call_id"]]
        assert (msg.from_uri, msg.to_uri) == (call["from"], call["to"]), call["call_id"]


def test_corpus_covers_the_interesting_cases() -> None:
    """The corpus exercises SIP over TCP, IPv6 URIs, control characters in tags, padded values."""
    frames = [frame for file_frames in corpus_sip_frames().values() for frame in file_frames]
    assert len(frames) > 700
    assert any(b"Content-Length:   " in frame.payload for frame in frames)        # MicroSIP padding
    assert any("[" in parse_sip(frame.payload).from_uri for frame in frames)       # IPv6 URIs
    assert any(any(ord(ch) < 32 for ch in frame.to_tag) for frame in frames)       # control char in a tag
    tcp = corpus_sip_frames()["sip_over_tcp_pcma_cn.pcap"]
    assert [parse_sip(f.payload).via[0].transport for f in tcp][:1] == ["TCP"]
