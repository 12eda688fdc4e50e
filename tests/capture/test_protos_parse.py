"""The PROTOS c07-sip suite (4,527 malformed INVITEs + their teardowns) against the parsers.

Each case either parses or raises ParseError; nothing else escapes, no message takes long, and
the whole suite runs in a few seconds. Accepted messages are pushed further: header lookups,
the SDP body through parse_sdp, URI user parts, Via branches.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections import Counter
from pathlib import Path

import pytest

from capture.errors import ParseError
from capture.sdp import parse_sdp
from capture.sip import SipMessage, looks_like_sip, parse_sip, uri_user
from tests.capture.test_sip import CORPUS_DIR

CASES_DIR = CORPUS_DIR / "protos-sip" / "cases"
CASE_COUNT = 4527

# Placeholder values (README of the suite); <Content-Length> is computed per message.
FILLS = {
    b"<To>": b"bob@192.0.2.20",
    b"<From>": b"alice@192.0.2.10",
    b"<From-Address>": b"192.0.2.10",
    b"<From-IP>": b"192.0.2.10",
    b"<Local-Port>": b"5060",
    b"<CSeq>": b"1",
    b"<Teardown-Method>": b"CANCEL",
}


def split_case(raw: bytes) -> list[bytes]:
    """A case file is a sequence of "<length> <message>" records."""
    messages = []
    position = 0
    while position < len(raw):
        space = raw.index(b" ", position)
        length = int(raw[position:space])
        messages.append(raw[space + 1:space + 1 + length])
        position = space + 1 + length
    return messages


def fill(message: bytes, case: str) -> bytes:
    for placeholder, value in FILLS.items():
        message = message.replace(placeholder, value)
    message = message.replace(b"<Branch-ID>", case.encode()).replace(b"<Call-ID>", f"protos-{case}".encode())
    blank = message.find(b"\r\n\r\n")
    body_length = len(message) - (blank + 4) if blank >= 0 else 0
    return message.replace(b"<Content-Length>", str(body_length).encode())


@functools.cache
def protos_messages() -> list[tuple[str, int, bytes]]:
    """(case name, message index 0 = INVITE / 1 = teardown, filled-in bytes) for every case."""
    result = []
    for path in sorted(Path(CASES_DIR).iterdir()):
        for index, message in enumerate(split_case(path.read_bytes())):
            result.append((path.name, index, fill(message, path.name)))
    return result


def exercise(msg: SipMessage) -> None:
    """Use an accepted message the way the dialog tracker would."""
    msg.header("i")
    msg.headers_named("Via")
    _ = msg.content_type
    uri_user(msg.from_uri)
    uri_user(msg.to_uri)
    uri_user(msg.request_uri)
    for hop in msg.via:
        _ = hop.branch
    body = msg.sdp()
    if body is not None:
        with contextlib.suppress(ParseError):  # SDP errors are counted by the caller, not fatal
            for media in parse_sdp(body).media:
                _ = media.is_hold


def test_the_suite_is_complete() -> None:
    messages = protos_messages()
    assert len({case for case, _, _ in messages}) == CASE_COUNT
    assert Counter(index for _, index, _ in messages) == {0: CASE_COUNT, 1: CASE_COUNT}
    leftovers = [case for case, _, data in messages if b"<Call-ID>" in data or b"<To>" in data]
    assert leftovers == []


def test_every_case_parses_or_raises_parse_error() -> None:
    outcomes: Counter[str] = Counter()
    escaped: list[str] = []
    slowest = (0.0, "")
    started = time.perf_counter()
    for case, index, data in protos_messages():
        before = time.perf_counter()
        try:
            looks_like_sip(data)
            exercise(parse_sip(data))
            outcomes["parsed"] += 1
        except ParseError as error:
            outcomes[error.reason] += 1
        except Exception as error:  # noqa: BLE001 - the point of the test is to catch these
            escaped.append(f"{case}/{index}: {type(error).__name__}: {error}")
        slowest = max(slowest, (time.perf_counter() - before, f"{case}/{index}"))
    elapsed = time.perf_counter() - started
    assert escaped == []
    # Both outcomes are common: the suite mutates one field per case, most of them fatal.
    assert outcomes["parsed"] > 5000, outcomes
    assert sum(outcomes.values()) - outcomes["parsed"] > 1000, outcomes
    assert all(reason.startswith("sip.") for reason in outcomes if reason != "parsed"), outcomes
    assert slowest[0] < 0.25, f"slowest message {slowest[1]} took {slowest[0]:.3f} s"
    assert elapsed < 30, f"suite took {elapsed:.1f} s"


def test_baseline_case_is_a_valid_call() -> None:
    invite = parse_sip(protos_messages()[0][2])
    assert (invite.method, invite.request_uri, invite.call_id) == ("INVITE", "sip:bob@192.0.2.20", "protos-0000000@192.0.2.10")
    assert (invite.from_display, invite.from_uri, invite.from_tag) == ("0", "sip:alice@192.0.2.10", "0")
    assert (invite.to_display, uri_user(invite.to_uri), invite.cseq) == ("Receiver", "bob", 1)
    assert invite.via[0].branch == "z9hG4bK00000" + "0000000"
    body = invite.sdp()
    assert body is not None and not invite.truncated_body
    media = parse_sdp(body).media[0]
    assert (media.port, media.connection, media.rtpmap[0].encoding) == (9876, "192.0.2.10", "PCMU")
    teardown = parse_sip(protos_messages()[1][2])
    assert (teardown.method, teardown.cseq_method, teardown.call_id) == ("CANCEL", "CANCEL", "protos-0000000@192.0.2.10")


def _message(case: str, index: int = 0) -> bytes:
    for name, position, data in protos_messages():
        if (name, position) == (case, index):
            return data
    raise AssertionError(case)


@pytest.mark.parametrize(("case", "reason"), [
    ("0000206", "sip.bad_request_uri"),       # format strings as the Request-URI scheme
    ("0000473", "sip.bad_via"),               # Via port 65536
    ("0000519", "sip.bad_via"),               # "SIP2.0/UDP"
    ("0001244", "sip.missing_to"),
    ("0001436", "sip.bad_to"),                # "Receiver sip:bob@...>" without "<"
    ("0001904", "sip.bad_cseq"),              # CSeq 2**31
])
def test_known_malformations_are_named(case: str, reason: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_sip(_message(case))
    assert info.value.reason == reason

