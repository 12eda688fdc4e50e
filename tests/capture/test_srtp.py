"""capture.srtp: the SDES corpus call, pylibsrtp round trips and an independent RFC 3711 sender.

The reference sender below implements RFC 3711 (key derivation §4.3, AES counter mode
§4.1.1, HMAC-SHA1 §4.2) with pycryptodome, so the AES-256 suites, which we configure
through libsrtp's own setters, are checked against code that shares nothing with libsrtp.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pylibsrtp
import pytest
from Crypto.Cipher import AES

from capture.codecs import codec_spec, make_decoder
from capture.errors import ParseError
from capture.srtp import SrtpReceiver, parse_key_params, supported_suite
from tests.capture.test_codecs import (
    RTCP_TYPES,
    Datagram,
    is_rtp_or_rtcp,
    rms,
    spectral_flatness,
    udp_datagrams,
)

SDES_CAPTURE = "srtp_sdes_two_legs_pcmu.pcap"
CRYPTO_LINE = re.compile(r"^a=crypto:\d+ (\S+) (\S+)", re.MULTILINE)
MEDIA_LINE = re.compile(r"^m=audio (\d+) ", re.MULTILINE)

CM_SUITES = {  # suite -> (master key bytes, SRTP tag bytes)
    "AES_CM_128_HMAC_SHA1_80": (16, 10),
    "AES_CM_128_HMAC_SHA1_32": (16, 4),
    "AES_256_CM_HMAC_SHA1_80": (32, 10),
    "AES_256_CM_HMAC_SHA1_32": (32, 4),
}
PROFILES = {  # suites pylibsrtp itself can protect with
    "AES_CM_128_HMAC_SHA1_80": (pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80, 30),
    "AES_CM_128_HMAC_SHA1_32": (pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32, 30),
    "AEAD_AES_128_GCM": (pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM, 28),
    "AEAD_AES_256_GCM": (pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_256_GCM, 44),
}


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def rtp_packet(seq: int, timestamp: int = 0, ssrc: int = 0x11223344, payload: bytes | None = None) -> bytes:
    body = payload if payload is not None else bytes((seq + i) & 0xFF for i in range(160))
    header = (
        bytes([0x80, 0]) + seq.to_bytes(2, "big") + timestamp.to_bytes(4, "big") + ssrc.to_bytes(4, "big")
    )
    return header + body


def rtcp_sender_report(ssrc: int = 0x11223344) -> bytes:
    return bytes([0x80, 200, 0, 6]) + ssrc.to_bytes(4, "big") + bytes(range(20))


def inline(key: bytes, *options: str) -> str:
    return "|".join(["inline:" + base64.b64encode(key).decode(), *options])


@dataclass
class ReferenceSender:
    """RFC 3711 SRTP/SRTCP sender for the AES counter-mode / HMAC-SHA1 suites."""

    master_key: bytes
    master_salt: bytes
    tag_length: int

    def _derive(self, label: int, length: int) -> bytes:
        # §4.3.1: x = (label || index DIV kdr) XOR master salt; kdr = 0. §4.3.3: AES-CM PRF.
        x = int.from_bytes(self.master_salt, "big") ^ (label << 48)
        counter = (x << 16).to_bytes(16, "big")
        return AES.new(self.master_key, AES.MODE_CTR, nonce=b"", initial_value=counter).encrypt(bytes(length))

    def _keystream_xor(self, labels: tuple[int, int], ssrc: int, index: int, data: bytes) -> bytes:
        session_key = self._derive(labels[0], len(self.master_key))
        session_salt = int.from_bytes(self._derive(labels[1], 14), "big")
        iv = ((session_salt << 16) ^ (ssrc << 64) ^ (index << 16)).to_bytes(16, "big")  # §4.1.1
        return AES.new(session_key, AES.MODE_CTR, nonce=b"", initial_value=iv).encrypt(data)

    def protect(self, packet: bytes, roc: int = 0, mki: bytes = b"") -> bytes:
        seq = int.from_bytes(packet[2:4], "big")
        ssrc = int.from_bytes(packet[8:12], "big")
        encrypted = packet[:12] + self._keystream_xor((0, 2), ssrc, (roc << 16) | seq, packet[12:])
        auth_key = self._derive(1, 20)
        tag = hmac.new(auth_key, encrypted + roc.to_bytes(4, "big"), hashlib.sha1).digest()
        return encrypted + mki + tag[: self.tag_length]  # §3.1: MKI, then the tag

    def protect_rtcp(self, packet: bytes, index: int, mki: bytes = b"") -> bytes:
        ssrc = int.from_bytes(packet[4:8], "big")
        encrypted = packet[:8] + self._keystream_xor((3, 5), ssrc, index, packet[8:])
        trailer = (0x80000000 | index).to_bytes(4, "big")  # E flag + SRTCP index (§3.4)
        tag = hmac.new(self._derive(4, 20), encrypted + trailer, hashlib.sha1).digest()
        return encrypted + trailer + mki + tag[:10]


def reference_sender(suite: str) -> tuple[ReferenceSender, str]:
    key_length, tag_length = CM_SUITES[suite]
    key, salt = os.urandom(key_length), os.urandom(14)
    return ReferenceSender(key, salt, tag_length), inline(key + salt)


def reason_of(call, *args) -> str:
    with pytest.raises(ParseError) as error:
        call(*args)
    return error.value.reason


# --------------------------------------------------------------------------------------
# The corpus SDES call
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SdesKey:
    media_port: int
    suite: str
    key_params: str


def sdes_keys(datagrams: tuple[Datagram, ...]) -> list[SdesKey]:
    """Every (m=audio port, a=crypto) pair in the SDP bodies of the capture."""
    keys = []
    for datagram in datagrams:
        text = datagram.payload.decode("latin-1")
        if "\r\n\r\nv=0" not in text:
            continue
        sdp = text.split("\r\n\r\n", 1)[1]
        for media in sdp.split("\r\nm=")[1:]:
            port = int(MEDIA_LINE.match("m=" + media).group(1))
            keys += [SdesKey(port, suite, params) for suite, params in CRYPTO_LINE.findall(media)]
    return keys


def media_flows(datagrams: tuple[Datagram, ...], rtcp: bool) -> dict[tuple, list[bytes]]:
    flows: dict[tuple, list[bytes]] = {}
    for d in datagrams:
        if is_rtp_or_rtcp(d.payload) and ((d.payload[1] & 0x7F) in RTCP_TYPES) == rtcp:
            flows.setdefault((d.src, d.sport, d.dst, d.dport), []).append(d.payload)
    return flows


def key_that_authenticates(first_packet: bytes, keys: list[SdesKey], rtcp: bool) -> list[SdesKey]:
    found = []
    for key in keys:
        receiver = SrtpReceiver(key.suite, key.key_params)
        try:
            (receiver.unprotect_rtcp if rtcp else receiver.unprotect)(first_packet)
        except ParseError as error:
            assert error.reason == "srtp.auth_failed"
            continue
        found.append(key)
    return found


def test_corpus_sdes_streams_decrypt_to_pcmu_speech() -> None:
    datagrams = udp_datagrams(SDES_CAPTURE)
    keys = list({(k.media_port, k.suite, k.key_params): k for k in sdes_keys(datagrams)}.values())
    assert len(keys) == 7 and all(supported_suite(k.suite) for k in keys)
    flows = {f: p for f, p in media_flows(datagrams, rtcp=False).items() if len(p) > 1000}
    assert len(flows) == 4

    decrypted: dict[tuple, list[bytes]] = {}
    for flow, packets in flows.items():
        matches = key_that_authenticates(packets[0], keys, rtcp=False)
        # Exactly one distinct key works, and it was offered by the sender for its own port.
        assert len({m.key_params for m in matches}) == 1, flow
        assert {m.media_port for m in matches} == {flow[1]}
        receiver = SrtpReceiver(matches[0].suite, matches[0].key_params)
        plain = [receiver.unprotect(p) for p in packets]  # every packet authenticates
        assert {p[1] & 0x7F for p in plain} == {0} and {len(p) for p in plain} == {172}
        decrypted[flow] = [p[12:] for p in plain]

        pcmu = make_decoder(codec_spec("PCMU", 8000), 8000)
        speech = np.concatenate([pcmu.decode(p) for p in decrypted[flow]])
        noise = np.concatenate([pcmu.decode(p[12:-10]) for p in packets])  # still encrypted
        assert rms(speech) > 300 and spectral_flatness(speech) < 0.1
        assert spectral_flatness(noise) > 0.5

    # The PBX relays each caller's audio unchanged onto the other leg: decrypting with
    # four different keys must give the same payloads pairwise.
    for flow, payloads in decrypted.items():
        twins = [other for other in decrypted if other != flow and set(decrypted[other]) == set(payloads)]
        assert len(twins) == 1
        twin = twins[0]
        assert flow[2] == twin[0] or twin[2] == flow[0]  # they meet at the PBX


def test_corpus_srtcp_decrypts_with_the_media_key() -> None:
    datagrams = udp_datagrams(SDES_CAPTURE)
    keys = sdes_keys(datagrams)
    flows = media_flows(datagrams, rtcp=True)
    assert len(flows) == 4
    for flow, packets in flows.items():
        matches = key_that_authenticates(packets[0], keys, rtcp=True)
        assert matches and {m.media_port for m in matches} == {flow[1] - 1}  # RTCP = RTP port + 1
        receiver = SrtpReceiver(matches[0].suite, matches[0].key_params)
        for packet in packets:
            plain = receiver.unprotect_rtcp(packet)
            assert plain[0] >> 6 == 2 and 200 <= plain[1] <= 204


# --------------------------------------------------------------------------------------
# Round trips and the independent sender
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("suite", sorted(PROFILES))
def test_round_trip_with_pylibsrtp_protect(suite: str) -> None:
    profile, key_length = PROFILES[suite]
    key = os.urandom(key_length)
    sender = pylibsrtp.Session(
        pylibsrtp.Policy(key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile)
    )
    receiver = SrtpReceiver(suite, inline(key, "2^31"))
    for seq in (65530 + i for i in range(12)):  # crosses the 16-bit sequence wrap (ROC 0 -> 1)
        packet = rtp_packet(seq & 0xFFFF, timestamp=seq * 160)
        assert receiver.unprotect(sender.protect(packet)) == packet
    report = rtcp_sender_report()
    assert receiver.unprotect_rtcp(sender.protect_rtcp(report)) == report


@pytest.mark.parametrize("suite", sorted(CM_SUITES))
def test_independent_rfc3711_sender_is_understood(suite: str) -> None:
    sender, key_params = reference_sender(suite)
    receiver = SrtpReceiver(suite, key_params)
    for roc, seq in [(0, 65534), (0, 65535), (1, 0), (1, 1), (1, 2)]:
        packet = rtp_packet(seq, timestamp=seq * 160)
        assert receiver.unprotect(sender.protect(packet, roc=roc)) == packet
    for index in (1, 2, 5):
        report = rtcp_sender_report()
        assert receiver.unprotect_rtcp(sender.protect_rtcp(report, index)) == report


def test_suite_aliases_and_support() -> None:
    for suite in [*CM_SUITES, "AEAD_AES_128_GCM", "AEAD_AES_256_GCM", "aes_cm_256_hmac_sha1_80"]:
        assert supported_suite(suite), suite
    for suite in ["F8_128_HMAC_SHA1_80", "AES_192_CM_HMAC_SHA1_80", "NULL_HMAC_SHA1_80", ""]:
        assert not supported_suite(suite)
        assert reason_of(SrtpReceiver, suite, inline(bytes(30))) == "srtp.unsupported_suite"


# --------------------------------------------------------------------------------------
# Failures: replay, tampering, wrong key, truncation
# --------------------------------------------------------------------------------------


def test_replay_tamper_wrong_key_and_truncation() -> None:
    sender, key_params = reference_sender("AES_CM_128_HMAC_SHA1_80")
    receiver = SrtpReceiver("AES_CM_128_HMAC_SHA1_80", key_params)
    first = sender.protect(rtp_packet(100))
    receiver.unprotect(first)
    assert reason_of(receiver.unprotect, first) == "srtp.replay"

    tampered = bytearray(sender.protect(rtp_packet(101)))
    tampered[20] ^= 0x01
    assert reason_of(receiver.unprotect, bytes(tampered)) == "srtp.auth_failed"
    assert receiver.unprotect(sender.protect(rtp_packet(101)))[12:] == rtp_packet(101)[12:]

    stranger = SrtpReceiver("AES_CM_128_HMAC_SHA1_80", inline(os.urandom(30)))
    assert reason_of(stranger.unprotect, sender.protect(rtp_packet(102))) == "srtp.auth_failed"
    assert reason_of(receiver.unprotect, first[:15]) == "srtp.truncated"
    assert reason_of(receiver.unprotect_rtcp, b"\x80\xc8\x00\x01") == "srtp.truncated"
    assert reason_of(receiver.unprotect, sender.protect(rtp_packet(103, payload=bytes(1600)))) == (
        "srtp.too_long"
    )


# --------------------------------------------------------------------------------------
# Key parameters: lifetime, MKI, session parameters
# --------------------------------------------------------------------------------------


def test_key_params_lifetime_and_mki_are_parsed() -> None:
    material = bytes(range(30))
    (key,) = parse_key_params("AES_CM_128_HMAC_SHA1_80", inline(material, "2^20", "1:4"))
    assert (key.master_key, key.master_salt) == (material[:16], material[16:])
    assert (key.lifetime, key.mki, key.mki_length, key.mki_bytes) == (2**20, 1, 4, b"\x00\x00\x00\x01")
    (plain,) = parse_key_params("AES_CM_128_HMAC_SHA1_32", inline(material, "1000"))
    assert (plain.lifetime, plain.mki, plain.mki_length) == (1000, None, 0)


@pytest.mark.parametrize(
    ("key_params", "reason"),
    [
        ("inline:not*base64!", "srtp.bad_key"),
        (inline(bytes(29)), "srtp.bad_key_length"),
        (inline(bytes(30), "2^x"), "srtp.bad_lifetime"),
        (inline(bytes(30), "1:0"), "srtp.bad_mki"),
        (inline(bytes(30), "300:1"), "srtp.bad_mki"),
        ("uri:http://example.com/key", "srtp.bad_key_params"),
        ("", "srtp.bad_key_params"),
        (inline(bytes(30)) + ";" + inline(bytes(30)), "srtp.bad_key_params"),
        (inline(bytes(30), "1:2") + ";" + inline(bytes(30), "2:4"), "srtp.bad_key_params"),
        (inline(bytes(30)) + " UNENCRYPTED_SRTP", "srtp.unsupported_session_param"),
        (inline(bytes(30)) + " KDR=10", "srtp.unsupported_session_param"),
    ],
)
def test_bad_key_params_are_refused(key_params: str, reason: str) -> None:
    assert reason_of(SrtpReceiver, "AES_CM_128_HMAC_SHA1_80", key_params) == reason


@pytest.mark.parametrize(
    "suite", ["AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32", "AES_256_CM_HMAC_SHA1_80"]
)
def test_mki_selects_the_key_and_is_removed(suite: str) -> None:
    one, _ = reference_sender(suite)
    two, _ = reference_sender(suite)
    key_params = ";".join(
        inline(s.master_key + s.master_salt, "2^31", f"{mki}:2") for s, mki in ((one, 1), (two, 258))
    )
    receiver = SrtpReceiver(suite, key_params + " WSH=128")
    packet = rtp_packet(7)
    assert receiver.unprotect(one.protect(packet, mki=b"\x00\x01")) == packet
    assert receiver.unprotect(two.protect(rtp_packet(8), mki=b"\x01\x02")) == rtp_packet(8)
    report = rtcp_sender_report()
    assert receiver.unprotect_rtcp(one.protect_rtcp(report, 1, mki=b"\x00\x01")) == report
    assert reason_of(receiver.unprotect, one.protect(rtp_packet(9), mki=b"\x00\x07")) == "srtp.unknown_mki"
    # Right MKI, wrong key behind it: authentication must still fail.
    assert reason_of(receiver.unprotect, one.protect(rtp_packet(10), mki=b"\x01\x02")) == "srtp.auth_failed"


def test_mki_with_gcm_is_reported_unsupported() -> None:
    key_params = inline(bytes(28), "2^31", "1:4")
    assert reason_of(SrtpReceiver, "AEAD_AES_128_GCM", key_params) == "srtp.mki_unsupported"


def test_receivers_are_independent_per_direction() -> None:
    """Two directions, two keys: each receiver only accepts its own sender (RFC 4568 §6.1)."""
    forward, forward_params = reference_sender("AES_CM_128_HMAC_SHA1_80")
    backward, backward_params = reference_sender("AES_CM_128_HMAC_SHA1_80")
    rx_forward = SrtpReceiver("AES_CM_128_HMAC_SHA1_80", forward_params)
    rx_backward = SrtpReceiver("AES_CM_128_HMAC_SHA1_80", backward_params)
    outcomes = Counter()
    for seq in range(20):
        for sender, ssrc in ((forward, 1), (backward, 2)):
            packet = sender.protect(rtp_packet(seq, ssrc=ssrc))
            for receiver in (rx_forward, rx_backward):
                try:
                    receiver.unprotect(packet)
                    outcomes[(sender is forward, receiver is rx_forward)] += 1
                except ParseError as error:
                    assert error.reason == "srtp.auth_failed"
    assert outcomes == {(True, True): 20, (False, False): 20}
