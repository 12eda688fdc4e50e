"""Tests for capture.sdp: RFC 8866 structure, RFC 3551 defaults, RFC 3264 direction/hold,
RFC 4568 crypto, and every SDP of the real corpus against tshark's view (expected.json)."""

from __future__ import annotations

import base64
import ipaddress
import random

import pytest

from capture.errors import ParseError
from capture.sdp import (
    MAX_SDP_BYTES,
    STATIC_PAYLOAD_TYPES,
    Crypto,
    MediaDescription,
    RtpMap,
    SessionDescription,
    parse_sdp,
)
from capture.sip import parse_sip
from tests.capture.test_sip import CorpusFrame, corpus_files, corpus_sip_frames, expected_corpus


def sdp(*lines: str, eol: str = "\r\n") -> bytes:
    return (eol.join(lines) + eol).encode()


HEAD = ("v=0", "o=alice 2890844526 2890844526 IN IP4 host.atlanta.example.com", "s=-", "t=0 0")


def one_media(*lines: str) -> MediaDescription:
    session = parse_sdp(sdp(*HEAD, *lines))
    assert len(session.media) == 1
    return session.media[0]


# --- structure ----------------------------------------------------------------------------------

def test_rfc3264_offer() -> None:
    # RFC 3264 §10.1, first offer
    session = parse_sdp(sdp(
        "v=0",
        "o=alice 2890844526 2890844526 IN IP4 host.atlanta.example.com",
        "s=",
        "c=IN IP4 host.atlanta.example.com",
        "t=0 0",
        "m=audio 49170 RTP/AVP 0 8 97",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:97 iLBC/8000",
        "m=video 51372 RTP/AVP 31 32",
        "a=rtpmap:31 H261/90000",
        "a=rtpmap:32 MPV/90000",
    ))
    assert session.origin == "alice 2890844526 2890844526 IN IP4 host.atlanta.example.com"
    assert session.session_name == ""
    assert session.connection == "host.atlanta.example.com"
    audio, video = session.media
    assert (audio.kind, audio.port, audio.port_count, audio.proto) == ("audio", 49170, 1, "RTP/AVP")
    assert audio.formats == ["0", "8", "97"] and audio.payload_types == [0, 8, 97]
    assert audio.rtpmap == {0: RtpMap("PCMU", 8000), 8: RtpMap("PCMA", 8000), 97: RtpMap("iLBC", 8000)}
    assert audio.connection == video.connection == "host.atlanta.example.com"
    assert audio.direction == video.direction == "sendrecv"
    assert (video.kind, video.port, video.payload_types) == ("video", 51372, [31, 32])
    assert video.rtpmap[31] == RtpMap("H261", 90000)


def test_static_payload_types_get_rfc3551_defaults() -> None:
    media = one_media("c=IN IP4 192.0.2.1", "m=audio 4000 RTP/AVP 0 8 9 18 3 13 2 19 101",
                      "a=rtpmap:101 telephone-event/8000")
    assert media.rtpmap == {
        0: RtpMap("PCMU", 8000), 8: RtpMap("PCMA", 8000), 9: RtpMap("G722", 8000),
        18: RtpMap("G729", 8000), 3: RtpMap("GSM", 8000), 13: RtpMap("CN", 8000),
        101: RtpMap("telephone-event", 8000),
    }  # 2 and 19 are reserved: no default


def test_explicit_rtpmap_wins_over_static_default_and_first_mapping_wins() -> None:
    media = one_media("m=audio 4000 RTP/AVP 0 96", "a=rtpmap:0 PCMU/16000",
                      "a=rtpmap:96 opus/48000/2", "a=rtpmap:96 speex/8000")
    assert media.rtpmap[0] == RtpMap("PCMU", 16000)
    assert media.rtpmap[96] == RtpMap("opus", 48000, 2)


def test_static_table() -> None:
    assert STATIC_PAYLOAD_TYPES[0] == RtpMap("PCMU", 8000)
    assert STATIC_PAYLOAD_TYPES[9] == RtpMap("G722", 8000)       # 8000 by RFC 3551 §4.5.2, not 16000
    assert STATIC_PAYLOAD_TYPES[10] == RtpMap("L16", 44100, 2)
    assert STATIC_PAYLOAD_TYPES[6] == RtpMap("DVI4", 16000)
    assert STATIC_PAYLOAD_TYPES[34] == RtpMap("H263", 90000)
    assert not {1, 2, 19, 20, 24, 27, 29, 30, 35, 96} & set(STATIC_PAYLOAD_TYPES)
    assert len(STATIC_PAYLOAD_TYPES) == 24


@pytest.mark.parametrize(("attribute", "expected"), [
    ("a=rtpmap:97 L16/8000/2", RtpMap("L16", 8000, 2)),
    ("a=rtpmap:97 G726-32/8000", RtpMap("G726-32", 8000)),
    ("a=rtpmap:97 AAL2-G726-32/8000", RtpMap("AAL2-G726-32", 8000)),
    ("a=rtpmap:97 telephone-event/8000/1", RtpMap("telephone-event", 8000)),
    ("a=rtpmap:97  AMR-WB/16000  ", RtpMap("AMR-WB", 16000)),
])
def test_rtpmap_forms(attribute: str, expected: RtpMap) -> None:
    assert one_media("m=audio 4000 RTP/AVP 97", attribute).rtpmap == {97: expected}


@pytest.mark.parametrize("attribute", [
    "a=rtpmap:97", "a=rtpmap:97 opus", "a=rtpmap:97 opus/abc", "a=rtpmap:97 /8000",
    "a=rtpmap:x opus/48000", "a=rtpmap:97 opus/0",
])
def test_malformed_rtpmap_is_ignored(attribute: str) -> None:
    assert one_media("m=audio 4000 RTP/AVP 97", attribute).rtpmap == {}


def test_fmtp_ptime_rtcp_mux() -> None:
    media = one_media("m=audio 4000 RTP/AVP 101 96", "a=fmtp:101 0-15", "a=fmtp:96 mode=30",
                      "a=ptime:30", "a=rtcp-mux")
    assert media.fmtp == {101: "0-15", 96: "mode=30"}
    assert media.ptime == 30 and media.rtcp_mux and not media.zrtp


def test_ptime_media_level_beats_session_level_and_decimals_are_accepted() -> None:
    session = parse_sdp(sdp(*HEAD, "a=ptime:40", "m=audio 4000 RTP/AVP 0", "a=ptime:20.0",
                            "m=audio 4002 RTP/AVP 0", "m=audio 4004 RTP/AVP 0", "a=ptime:abc"))
    assert [m.ptime for m in session.media] == [20, 40, 40]


def test_port_count_and_non_rtp_protocols() -> None:
    session = parse_sdp(sdp(*HEAD, "c=IN IP4 192.0.2.1", "m=video 49170/2 RTP/AVP 31",
                            "m=image 16756 udptl t38", "m=application 9 UDP/BFCP *",
                            "m=audio 0 RTP/SAVPF 111", "m=audio 5000 UDP/TLS/RTP/SAVPF 111 300 abc"))
    video, image, bfcp, rejected, webrtc = session.media
    assert (video.port, video.port_count) == (49170, 2)
    assert (image.kind, image.proto, image.formats, image.payload_types, image.rtpmap) == (
        "image", "udptl", ["t38"], [], {})
    assert bfcp.formats == ["*"] and bfcp.payload_types == []
    assert rejected.is_disabled and not webrtc.is_disabled
    assert webrtc.payload_types == [111] and webrtc.formats == ["111", "300", "abc"]


# --- connection, direction, hold ----------------------------------------------------------------

@pytest.mark.parametrize(("line", "address"), [
    ("c=IN IP4 192.0.2.10", "192.0.2.10"),
    ("c=IN IP4 224.2.36.42/127", "224.2.36.42"),
    ("c=IN IP4 224.2.1.1/127/3", "224.2.1.1"),
    ("c=IN IP6 FF15::101/3", "ff15::101"),
    ("c=IN IP6 2001:DB8:0:0:0:0:0:1", "2001:db8::1"),
    ("c=IN IP6 fd17:625c:f037:2:a00:27ff:feb9:1521", "fd17:625c:f037:2:a00:27ff:feb9:1521"),
    ("c=IN IP6 0:0::0", "::"),
    ("c=IN IP4 Media.Example.COM", "media.example.com"),
    ("c=IN IP4 0.0.0.0 ", "0.0.0.0"),
    ("c=ATM NSAP 47.0091.8100.0000.0060.3e64.fd01", None),  # not an Internet address
])
def test_connection_is_canonical(line: str, address: str | None) -> None:
    session = parse_sdp(sdp(*HEAD, line, "m=audio 4000 RTP/AVP 0"))
    assert session.connection == address and session.media[0].connection == address


def test_media_connection_overrides_session_connection() -> None:
    session = parse_sdp(sdp(*HEAD, "c=IN IP4 192.0.2.1", "m=audio 4000 RTP/AVP 0",
                            "c=IN IP4 198.51.100.7", "m=video 4002 RTP/AVP 34"))
    assert session.connection == "192.0.2.1"
    assert [m.connection for m in session.media] == ["198.51.100.7", "192.0.2.1"]


def test_no_connection_anywhere() -> None:
    assert one_media("m=audio 4000 RTP/AVP 0").connection is None


@pytest.mark.parametrize(("session_attr", "media_attrs", "expected"), [
    (None, [None, None], ["sendrecv", "sendrecv"]),
    ("a=sendonly", [None, None], ["sendonly", "sendonly"]),
    ("a=sendonly", ["a=inactive", None], ["inactive", "sendonly"]),
    (None, ["a=recvonly", "a=sendrecv"], ["recvonly", "sendrecv"]),
])
def test_direction_media_level_then_session_level_then_sendrecv(
        session_attr: str | None, media_attrs: list[str | None], expected: list[str]) -> None:
    lines = [*HEAD, *([session_attr] if session_attr else [])]
    for index, attr in enumerate(media_attrs):
        lines += [f"m=audio {4000 + 2 * index} RTP/AVP 0", *([attr] if attr else [])]
    assert [m.direction for m in parse_sdp(sdp(*lines)).media] == expected


@pytest.mark.parametrize(("lines", "hold"), [
    (("c=IN IP4 192.0.2.1", "a=sendonly"), True),
    (("c=IN IP4 192.0.2.1", "a=inactive"), True),
    (("c=IN IP4 192.0.2.1", "a=recvonly"), False),
    (("c=IN IP4 192.0.2.1", "a=sendrecv"), False),
    (("c=IN IP4 0.0.0.0",), True),                  # RFC 2543 style hold
    (("c=IN IP6 ::",), True),
    (("c=IN IP6 0000::0000",), True),
])
def test_is_hold(lines: tuple[str, ...], hold: bool) -> None:
    media = parse_sdp(sdp(*HEAD, lines[0], "m=audio 4000 RTP/AVP 0", *lines[1:])).media[0]
    assert media.is_hold is hold


# --- security -----------------------------------------------------------------------------------

def test_crypto_attributes() -> None:
    media = one_media(
        "m=audio 4000 RTP/SAVP 0",
        # RFC 4568 §9.1 example, with lifetime, MKI and a session parameter
        "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^20|1:4 KDR=1",
        "a=crypto:2 F8_128_HMAC_SHA1_80 inline:MTIzNDU2Nzg5QUJDREUwMTIzNDU2Nzg5QUJjZGVm|2^20|1:4;"
        "inline:QUJjZGVmMTIzNDU2Nzg5QUJDREUwMTIzNDU2Nzg5|2^20|2:4 FEC_ORDER=FEC_SRTP",
        "a=crypto:x AES_CM_128_HMAC_SHA1_80 inline:bad-tag",   # ignored
        "a=crypto:3 AES_CM_128_HMAC_SHA1_32",                  # ignored: no key
    )
    assert media.crypto == [
        Crypto(1, "AES_CM_128_HMAC_SHA1_80", "inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^20|1:4"),
        Crypto(2, "F8_128_HMAC_SHA1_80", "inline:MTIzNDU2Nzg5QUJDREUwMTIzNDU2Nzg5QUJjZGVm|2^20|1:4;"
               "inline:QUJjZGVmMTIzNDU2Nzg5QUJDREUwMTIzNDU2Nzg5|2^20|2:4"),
    ]


def test_crypto_belongs_to_its_media_section() -> None:
    session = parse_sdp(sdp(*HEAD, "m=audio 4000 RTP/SAVP 0", "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:AAAA",
                            "m=video 4002 RTP/AVP 34"))
    assert [len(m.crypto) for m in session.media] == [1, 0]


@pytest.mark.parametrize("level", ["session", "media"])
def test_zrtp_hash(level: str) -> None:
    attribute = "a=zrtp-hash:1.10 fe30efd02423cb054e50efd0248742ac7a52c8f91bc2df881ae642c371ba46df"
    lines = [*HEAD, attribute, "m=audio 4000 RTP/AVP 0"] if level == "session" else \
        [*HEAD, "m=audio 4000 RTP/AVP 0", attribute]
    assert parse_sdp(sdp(*lines)).media[0].zrtp


# --- leniency and strictness --------------------------------------------------------------------

def test_lenient_line_handling() -> None:
    body = (b"\r\nv=0\no=- 1 1 IN IP4 192.0.2.1   \r\ns=caf\xe9\r\nthis is not sdp\r\nx=unknown type\r\n"
            b"c=IN IP4 192.0.2.1 \t\r\n\r\nt=0 0\nm=audio 4000 RTP/AVP 0  \r\na=unknown-attr:1 2\r\n"
            b"a=sendonly   \r\na=\r\na\r\n")
    session = parse_sdp(body)
    assert session.origin == "- 1 1 IN IP4 192.0.2.1"
    assert session.session_name == "caf\ufffd"
    media = session.media[0]
    assert (media.port, media.payload_types, media.connection, media.direction) == (
        4000, [0], "192.0.2.1", "sendonly")


def test_session_without_media() -> None:
    session = parse_sdp(sdp(*HEAD))
    assert session == SessionDescription(HEAD[1][2:], "-", None, [])


@pytest.mark.parametrize(("body", "reason"), [
    (b"", "sdp.no_version"),
    (b"\x00\xff\xfe garbage \x01", "sdp.no_version"),
    (b"<html><body>not sdp</body></html>", "sdp.no_version"),
    (b"o=- 1 1 IN IP4 192.0.2.1\r\nv=0\r\n", "sdp.no_version"),
    (b"v=1\r\n", "sdp.bad_version"),
    (sdp(*HEAD, "m=audio abc RTP/AVP 0"), "sdp.bad_port"),
    (sdp(*HEAD, "m=audio -1 RTP/AVP 0"), "sdp.bad_port"),
    (sdp(*HEAD, "m=audio 70000 RTP/AVP 0"), "sdp.bad_port"),
    (sdp(*HEAD, "m=audio 4000/0 RTP/AVP 0"), "sdp.bad_port"),
    (sdp(*HEAD, "m=audio 4000/x RTP/AVP 0"), "sdp.bad_port"),
    (sdp(*HEAD, "m=audio 4000"), "sdp.bad_media"),
    (sdp(*HEAD, "m="), "sdp.bad_media"),
    (sdp(*HEAD, "c=IN IP4"), "sdp.bad_connection"),
    (sdp(*HEAD, "c=IN IP4 999.1.1.1"), "sdp.bad_connection"),
    (sdp(*HEAD, "c=IN IP4 <From-IP>"), "sdp.bad_connection"),
    (sdp(*HEAD, "m=audio 4000 RTP/AVP 0", "c=IN IP6 fe80::1::2"), "sdp.bad_connection"),
    (b"v=0\r\n" + b"a=x\r\n" * (MAX_SDP_BYTES // 5), "sdp.too_large"),
])
def test_parse_errors(body: bytes, reason: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_sdp(body)
    assert info.value.reason == reason


def test_random_mutations_raise_only_parse_error() -> None:
    rng = random.Random(8866)
    seed = sdp(*HEAD, "c=IN IP4 192.0.2.1", "m=audio 4000 RTP/SAVP 0 8 101", "a=rtpmap:101 telephone-event/8000",
               "a=fmtp:101 0-15", "a=ptime:20", "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:AAAA|2^20",
               "a=sendonly", "m=video 4002/2 RTP/AVP 34", "c=IN IP6 2001:db8::1/2")
    specials = b"\r\n =:/.0123456789a\x00\xff"
    outcomes = {"parsed": 0, "rejected": 0}
    for _ in range(3000):
        data = bytearray(seed)
        for _ in range(rng.randint(1, 6)):
            position = rng.randrange(len(data))
            if rng.random() < 0.5:
                data[position] = rng.choice(specials)
            else:
                del data[position:position + rng.randint(1, 12)]
        try:
            for media in parse_sdp(bytes(data)).media:
                _ = media.is_hold
            outcomes["parsed"] += 1
        except ParseError:
            outcomes["rejected"] += 1
    assert outcomes["parsed"] > 100 and outcomes["rejected"] > 100, outcomes


# --- the real corpus against tshark -------------------------------------------------------------

def _frame(name: str, number: int) -> CorpusFrame:
    for frame in corpus_sip_frames()[name]:
        if frame.frame == number:
            return frame
    raise AssertionError(f"{name}: tshark frame {number} is not a SIP frame")


def _media_line(media: MediaDescription) -> str:
    port = str(media.port) if media.port_count == 1 else f"{media.port}/{media.port_count}"
    return " ".join([media.kind, port, media.proto, *media.formats])


def _first_connection(session: SessionDescription) -> str | None:
    if session.connection is not None:
        return session.connection
    return next((m.connection for m in session.media if m.connection is not None), None)


def _session_of(frame: CorpusFrame) -> SessionDescription:
    body = parse_sip(frame.payload).sdp()
    assert body is not None, f"{frame.file} frame {frame.frame}: no SDP found"
    return parse_sdp(body)


@pytest.mark.parametrize("name", corpus_files())
def test_corpus_sdp_matches_expected(name: str) -> None:
    """m= lines, c= address and direction of every SDP tshark listed in expected.json."""
    checked = 0
    for call in expected_corpus()[name]["calls"]:
        for entry in call["sdp"]:
            frame = _frame(name, entry["frame"])
            where = f"{name} frame {entry['frame']}"
            msg = parse_sip(frame.payload)
            assert (msg.method if msg.is_request else str(msg.status)) == entry["kind"], where
            session = _session_of(frame)
            assert [_media_line(m) for m in session.media] == entry["media"], where
            expected_address = str(ipaddress.ip_address(entry["connection"]))
            assert _first_connection(session) == expected_address, where
            directions = [m.direction for m in session.media]
            attrs = entry["attrs"]  # direction attributes in body order, session and media level
            if not attrs:
                assert set(directions) == {"sendrecv"}, where
            elif len(attrs) == len(directions):
                assert directions == attrs, where
            else:
                assert len(attrs) == 1 and set(directions) == set(attrs), where
            checked += 1
    assert checked == sum(len(call["sdp"]) for call in expected_corpus()[name]["calls"])


@pytest.mark.parametrize("name", corpus_files())
def test_corpus_rtpmap_and_crypto_match_tshark(name: str) -> None:
    """Every a=rtpmap and a=crypto tshark dissected is in our model with the same values."""
    for frame in corpus_sip_frames()[name]:
        if not frame.media_attrs:
            continue
        where = f"{name} frame {frame.frame}"
        session = _session_of(frame)
        ours = {(pt, mapping) for m in session.media for pt, mapping in m.rtpmap.items()}
        for attr in frame.media_attrs:
            if attr.startswith("rtpmap:"):
                pt, _, mapping = attr[len("rtpmap:"):].partition(" ")
                encoding, rate, *channels = mapping.split("/")
                assert (int(pt), RtpMap(encoding, int(rate), int(channels[0]) if channels else 1)) in ours, where
        crypto = [c for m in session.media for c in m.crypto]
        assert [str(c.tag) for c in crypto] == frame.crypto_tags, where
        assert [c.suite for c in crypto] == frame.crypto_suites, where
        # tshark decodes the master key only for the AES_CM_128 suites it knows
        our_keys = {base64.b64decode(c.key_params.removeprefix("inline:").split("|")[0])[:16] for c in crypto}
        assert {bytes.fromhex(key_hex) for key_hex in frame.crypto_keys} <= our_keys, where


def test_corpus_every_sdp_body_parses() -> None:
    bodies = 0
    for frames in corpus_sip_frames().values():
        for frame in frames:
            body = parse_sip(frame.payload).sdp()
            if body is not None:
                assert parse_sdp(body).media, f"{frame.file} frame {frame.frame}"
                bodies += 1
    assert bodies > 190


def _invite_rtpmaps(name: str) -> list[tuple[RtpMap, int | None]]:
    """(rtpmap of PT 99 or the first PT, ptime) of each answer (200 to INVITE) in a file."""
    result = []
    for frame in corpus_sip_frames()[name]:
        if frame.status == "200" and frame.cseq_method == "INVITE":
            media = _session_of(frame).media[0]
            result.append((media.rtpmap[media.payload_types[0]], media.ptime))
    return result


@pytest.mark.parametrize(("name", "expected"), [
    ("speex_3rates_sipp_fs.pcap", [(RtpMap("speex", rate), 20) for rate in (8000, 16000, 32000)]),
    ("l16_4variants_sipp_fs.pcap", [(RtpMap("L16", 8000, 2), 20), (RtpMap("L16", 16000, 2), 20),
                                    (RtpMap("L16", 11025), 32), (RtpMap("L16", 48000), 20)]),
    ("g726_8variants_sipp_fs.pcap", [(RtpMap(f"{prefix}G726-{rate}", 8000), 20)
                                     for prefix in ("", "AAL2-") for rate in (16, 24, 32, 40)]),
    ("dvi4_2rates_sipp_fs.pcap", [(RtpMap("DVI4", 8000), 20), (RtpMap("DVI4", 16000), 20)]),
    ("g722_sipp_fs.pcap", [(RtpMap("G722", 8000), 20)]),
    ("opus_sipp_fs.pcap", [(RtpMap("opus", 48000, 2), 20)]),  # always "/2" in SDP (RFC 7587 §7)
])
def test_corpus_codec_variants_from_manifest(name: str, expected: list[tuple[RtpMap, int]]) -> None:
    assert _invite_rtpmaps(name) == expected


def test_corpus_srtp_offer() -> None:
    session = _session_of(_frame("srtp_sdes_two_legs_pcmu.pcap", 55))
    media = session.media[0]
    assert media.proto == "RTP/SAVP" and media.connection == "192.168.20.132"
    assert media.rtpmap[123] == RtpMap("opus", 48000, 2) and media.rtpmap[0] == RtpMap("PCMU", 8000)
    assert [(c.tag, c.suite) for c in media.crypto] == [
        (1, "AES_256_CM_HMAC_SHA1_80"), (2, "AES_256_CM_HMAC_SHA1_32"),
        (3, "AES_CM_128_HMAC_SHA1_80"), (4, "AES_CM_128_HMAC_SHA1_32")]
    key_lengths = [len(base64.b64decode(c.key_params.removeprefix("inline:"))) for c in media.crypto]
    assert key_lengths == [46, 46, 30, 30]  # key + salt, RFC 6188 §7 and RFC 4568 §6.2


def test_corpus_hold_reinvites() -> None:
    """hold_refer_erspan: sendonly with c=0.0.0.0 puts the call on hold; the 200 answers recvonly."""
    holds = {}
    for frame in corpus_sip_frames()["hold_refer_erspan_sip_only.pcapng"]:
        if frame.frame in (45, 49, 99, 128):
            holds[frame.frame] = _session_of(frame).media[0]
    assert holds[45].is_hold and holds[45].connection == "0.0.0.0" and holds[45].direction == "sendonly"
    assert not holds[49].is_hold and holds[49].direction == "recvonly"
    assert holds[99].is_hold and holds[99].connection == "192.168.1.53"    # sendonly, address kept
    assert not holds[128].is_hold                                           # resumed


def test_corpus_ipv6_connection() -> None:
    media = _session_of(_frame("ipv6_sll_frag_prack_sip_only.pcap", 6)).media[0]
    assert media.connection == "fd17:625c:f037:2:a00:27ff:feb9:4222"
    assert (media.port, media.payload_types) == (25062, [100, 121])
