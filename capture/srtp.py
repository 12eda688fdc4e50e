"""SRTP/SRTCP decryption for media keyed by SDP security descriptions (RFC 3711, RFC 4568).

Each side of an SDES call puts in its own a=crypto line the key it encrypts what it SENDS
with, so a recorder needs one `SrtpReceiver` per stream direction, built from the crypto
attribute of the SDP of the side that sends the stream.

libsrtp does the cryptography (through pylibsrtp). pylibsrtp only exposes profiles for
AES-128-CM and AES-GCM; the RFC 6188 AES-256-CM suites are set up by calling libsrtp's
own crypto-policy setters on the policy pylibsrtp built (see `_apply_native_setter`).
RFC 4568 MKIs are handled here for the AES-CM suites: the MKI sits between the payload and
the authentication tag (RFC 3711 §3.1), is not authenticated, and selects the master key,
so it is checked and cut out before libsrtp sees the packet.
"""

from __future__ import annotations

import base64
import binascii
import ctypes
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass

import pylibsrtp

from capture.errors import ParseError

_REPLAY_WINDOW = 1024  # packets; mirrored traffic can arrive well out of order
_SRTCP_TAG = 10  # RFC 4568 §6.2: SRTCP always uses the 80-bit tag with the AES-CM suites
_RTP_HEADER = 12
_SRTCP_MIN = 8 + 4  # RTCP header + E flag / SRTCP index


@dataclass(frozen=True, slots=True)
class _Suite:
    key_length: int  # master key, bytes
    salt_length: int  # master salt, bytes
    profile: int  # pylibsrtp profile the policy starts from
    rtp_tag: int  # SRTP authentication tag, bytes
    rtp_setter: str | None = None  # libsrtp setter replacing the RTP crypto policy
    rtcp_setter: str | None = None
    aead: bool = False


_P = pylibsrtp.Policy
_SUITES: dict[str, _Suite] = {
    "AES_CM_128_HMAC_SHA1_80": _Suite(16, 14, _P.SRTP_PROFILE_AES128_CM_SHA1_80, 10),
    "AES_CM_128_HMAC_SHA1_32": _Suite(16, 14, _P.SRTP_PROFILE_AES128_CM_SHA1_32, 4),
    # RFC 6188: AES-256 counter mode, same 112-bit salt and HMAC-SHA1 tags. (AES-192 is left
    # out: this libsrtp's AES-192 output disagrees with an RFC 3711/6188 reference sender.)
    "AES_256_CM_HMAC_SHA1_80": _Suite(
        32, 14, _P.SRTP_PROFILE_AES128_CM_SHA1_80, 10,
        "srtp_crypto_policy_set_aes_cm_256_hmac_sha1_80", "srtp_crypto_policy_set_aes_cm_256_hmac_sha1_80",
    ),
    "AES_256_CM_HMAC_SHA1_32": _Suite(
        32, 14, _P.SRTP_PROFILE_AES128_CM_SHA1_80, 4,
        "srtp_crypto_policy_set_aes_cm_256_hmac_sha1_32", "srtp_crypto_policy_set_aes_cm_256_hmac_sha1_80",
    ),
    # RFC 7714: AES-GCM, 96-bit salt, 16-byte tag inside the cipher text.
    "AEAD_AES_128_GCM": _Suite(16, 12, _P.SRTP_PROFILE_AEAD_AES_128_GCM, 16, aead=True),
    "AEAD_AES_256_GCM": _Suite(32, 12, _P.SRTP_PROFILE_AEAD_AES_256_GCM, 16, aead=True),
}  # fmt: skip
_SUITE_ALIASES = {  # spellings used by some older endpoints
    "AES_CM_256_HMAC_SHA1_80": "AES_256_CM_HMAC_SHA1_80",
    "AES_CM_256_HMAC_SHA1_32": "AES_256_CM_HMAC_SHA1_32",
}
# RFC 4568 §6.3.x session parameters that change the packet format in ways we don't handle.
_UNSUPPORTED_SESSION_PARAMS = ("UNENCRYPTED_SRTP", "UNENCRYPTED_SRTCP", "UNAUTHENTICATED_SRTP")

_LIBSRTP_REPLAY_ERRORS = ("replay check failed (bad index)", "replay check failed (index too old)")
_LIBSRTP_AUTH_ERROR = "authentication failure"


# --------------------------------------------------------------------------------------
# Key parameters (RFC 4568 §9.2: "inline:" key||salt ["|" lifetime] ["|" MKI ":" length])
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SrtpKey:
    """One master key from an a=crypto key-params field."""

    master_key: bytes
    master_salt: bytes
    lifetime: int | None  # maximum number of packets under this key, None when not given
    mki: int | None  # master key identifier value, None when absent
    mki_length: int  # MKI field length in bytes on the wire, 0 when absent

    @property
    def mki_bytes(self) -> bytes:
        return b"" if self.mki is None else self.mki.to_bytes(self.mki_length, "big")


_LIFETIME = re.compile(r"(?:2\^)?(\d+)")
_MKI = re.compile(r"(\d+):(\d{1,3})")


def _canonical_suite(suite: str) -> str:
    name = suite.strip().upper()
    return _SUITE_ALIASES.get(name, name)


def _parse_lifetime(text: str) -> int:
    match = _LIFETIME.fullmatch(text)
    if match is None:
        raise ParseError("srtp.bad_lifetime", text)
    value = int(match.group(1))
    return 2**value if text.startswith("2^") else value


def _parse_mki(text: str) -> tuple[int, int]:
    match = _MKI.fullmatch(text)
    if match is None:
        raise ParseError("srtp.bad_mki", text)
    value, length = int(match.group(1)), int(match.group(2))
    if not 1 <= length <= 128 or value >= 1 << (8 * length):
        raise ParseError("srtp.bad_mki", f"{text}: MKI length must be 1-128 bytes and hold the value")
    return value, length


def _decode_key_salt(text: str, suite: _Suite) -> tuple[bytes, bytes]:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ParseError("srtp.bad_key", f"inline key is not base64: {exc}") from exc
    expected = suite.key_length + suite.salt_length
    if len(raw) != expected:
        raise ParseError("srtp.bad_key_length", f"{len(raw)} bytes, suite needs {expected}")
    return raw[: suite.key_length], raw[suite.key_length :]


def _parse_one_key(text: str, suite: _Suite) -> SrtpKey:
    method, _, info = text.partition(":")
    if method.lower() != "inline" or not info:
        raise ParseError("srtp.bad_key_params", f"expected inline:<key>, got {text[:40]!r}")
    key_salt, *options = info.split("|")
    lifetime: int | None = None
    mki: tuple[int, int] | None = None
    for option in options:
        if ":" in option:  # the MKI field is "value:length"; the lifetime has no colon
            mki = _parse_mki(option)
        else:
            lifetime = _parse_lifetime(option)
    master_key, master_salt = _decode_key_salt(key_salt, suite)
    return SrtpKey(master_key, master_salt, lifetime, *(mki if mki else (None, 0)))


def _check_session_params(params: list[str]) -> int:
    """Reject session parameters that change the wire format; return the replay window."""
    window = _REPLAY_WINDOW
    for param in params:
        name, _, value = param.partition("=")
        name = name.upper()
        if name in _UNSUPPORTED_SESSION_PARAMS or (name == "KDR" and value not in ("", "0")):
            raise ParseError("srtp.unsupported_session_param", param)
        if name == "WSH" and value.isdigit():  # RFC 4568 §6.3.6 window size hint
            window = max(window, min(int(value), 0x7FFF))
    return window


def parse_key_params(suite: str, key_params: str) -> list[SrtpKey]:
    """All master keys of an a=crypto key-params field (several only when each has an MKI)."""
    info = _SUITES.get(_canonical_suite(suite))
    if info is None:
        raise ParseError("srtp.unsupported_suite", suite)
    key_field = key_params.strip().split()[0] if key_params.strip() else ""
    keys = [_parse_one_key(part.strip(), info) for part in key_field.split(";") if part.strip()]
    if not keys:
        raise ParseError("srtp.bad_key_params", "no inline key")
    if len(keys) > 1 and any(k.mki is None for k in keys):
        raise ParseError("srtp.bad_key_params", "several keys need an MKI each (RFC 4568 §6.1)")
    if len({k.mki_length for k in keys}) > 1:
        raise ParseError("srtp.bad_key_params", "all MKIs must have the same length")
    return keys


# --------------------------------------------------------------------------------------
# libsrtp plumbing
# --------------------------------------------------------------------------------------


@functools.cache
def _native_setter(name: str) -> Callable[[int], None] | None:
    """A libsrtp `srtp_crypto_policy_set_*` function from the library pylibsrtp loaded."""
    try:
        library = ctypes.CDLL(pylibsrtp._binding.__file__)
        function = getattr(library, name)
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_void_p]
    function.restype = None
    return function


def _apply_native_setter(policy: pylibsrtp.Policy, field: str, setter_name: str) -> None:
    setter = _native_setter(setter_name)
    if setter is None:
        raise ParseError("srtp.unsupported_suite", f"libsrtp has no {setter_name}")
    ffi = pylibsrtp.ffi
    crypto_policy = ffi.addressof(getattr(policy._policy, field))  # pylibsrtp's srtp_policy_t
    setter(int(ffi.cast("uintptr_t", crypto_policy)))


def _make_session(suite: _Suite, key: SrtpKey, window: int) -> pylibsrtp.Session:
    policy = pylibsrtp.Policy(
        key=key.master_key + key.master_salt,
        ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND,  # one template for every SSRC we meet
        srtp_profile=suite.profile,
    )
    if suite.rtp_setter and suite.rtcp_setter:
        _apply_native_setter(policy, "rtp", suite.rtp_setter)
        _apply_native_setter(policy, "rtcp", suite.rtcp_setter)
    policy.window_size = window
    return pylibsrtp.Session(policy)


def supported_suite(suite: str) -> bool:
    """True when SrtpReceiver can decrypt this a=crypto suite."""
    info = _SUITES.get(_canonical_suite(suite))
    if info is None:
        return False
    setters = [s for s in (info.rtp_setter, info.rtcp_setter) if s]
    return all(_native_setter(s) is not None for s in setters)


# --------------------------------------------------------------------------------------
# Receiver
# --------------------------------------------------------------------------------------


class SrtpReceiver:
    """Decrypts and authenticates one direction of an SRTP media stream (and its SRTCP)."""

    def __init__(self, suite: str, key_params: str) -> None:
        self.suite = _canonical_suite(suite)
        if not supported_suite(self.suite):
            raise ParseError("srtp.unsupported_suite", suite)
        info = _SUITES[self.suite]
        self.keys = parse_key_params(self.suite, key_params)
        self._mki_length = self.keys[0].mki_length
        if self._mki_length and info.aead:
            raise ParseError("srtp.mki_unsupported", f"MKI with {self.suite} is not supported")
        window = _check_session_params(key_params.split()[1:])
        self._rtp_tag = info.rtp_tag
        self._rtcp_tag = info.rtp_tag if info.aead else _SRTCP_TAG
        self._sessions = {key.mki_bytes: _make_session(info, key, window) for key in self.keys}

    def unprotect(self, packet: bytes) -> bytes:
        """SRTP packet -> plain RTP packet (header + payload)."""
        if len(packet) < _RTP_HEADER + self._mki_length + self._rtp_tag:
            raise ParseError("srtp.truncated", f"{len(packet)} bytes")
        session, inner = self._session_for(bytes(packet), self._rtp_tag)
        return self._run(session.unprotect, inner)

    def unprotect_rtcp(self, packet: bytes) -> bytes:
        """SRTCP packet -> plain RTCP compound packet."""
        if len(packet) < _SRTCP_MIN + self._mki_length + self._rtcp_tag:
            raise ParseError("srtp.truncated", f"{len(packet)} bytes of SRTCP")
        session, inner = self._session_for(bytes(packet), self._rtcp_tag)
        return self._run(session.unprotect_rtcp, inner)

    def _session_for(self, packet: bytes, tag_length: int) -> tuple[pylibsrtp.Session, bytes]:
        """Pick the master key by MKI and cut the MKI out (RFC 3711 §3.1: it precedes the tag)."""
        if not self._mki_length:
            return self._sessions[b""], packet
        tag_start = len(packet) - tag_length
        mki = packet[tag_start - self._mki_length : tag_start]
        session = self._sessions.get(mki)
        if session is None:
            raise ParseError("srtp.unknown_mki", mki.hex())
        return session, packet[: tag_start - self._mki_length] + packet[tag_start:]

    @staticmethod
    def _run(operation: Callable[[bytes], bytes], packet: bytes) -> bytes:
        try:
            return bytes(operation(packet))
        except pylibsrtp.Error as exc:
            message = str(exc)
            if message == _LIBSRTP_AUTH_ERROR:
                raise ParseError("srtp.auth_failed", message) from exc
            if message in _LIBSRTP_REPLAY_ERRORS:
                raise ParseError("srtp.replay", message) from exc
            raise ParseError("srtp.failed", message) from exc
        except ValueError as exc:  # pylibsrtp refuses packets over its 1500-byte buffer
            raise ParseError("srtp.too_long", str(exc)) from exc
