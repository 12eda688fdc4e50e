"""Vault files: one recording's raw PCM under streaming AEAD (the STREAM construction).

STREAM (Hoang, Reyhanitabar, Rogaway, Vizár, "Online Authenticated-Encryption and its
Nonce-Reuse Misuse-Resistance", CRYPTO 2015), as used by Tink's streaming AEAD and by age:
the plaintext is cut into fixed-size segments, each sealed with AES-256-GCM under
nonce = prefix || counter || last-flag. The counter in the nonce pins every segment to its
position (dropped, duplicated or reordered segments fail), and the last flag marks the end
(a file cut at a segment boundary fails). The recording id is the associated data of every
segment, so a file cannot pass for another recording's.

File layout (integers big-endian)::

    magic "RDVAULT1" (8) | version u8 = 1 | flags u8 | segment_size u32 | rate u32 |
    channels u8 | nonce_prefix (7) | key_id (16) | recording_id length u16 | recording_id |
    header tag (16)
    segment 0 | segment 1 | ... | final segment       each = GCM ciphertext || tag (16)

* header tag: GCM tag over an empty plaintext with the header bytes (everything before the
  tag) as associated data, nonce = prefix || 0xFFFFFFFF || 0x00. Counter 0xFFFFFFFF is
  reserved for it, so segments count 0 .. 0xFFFFFFFE.
* every segment but the final one holds exactly segment_size plaintext bytes and is sealed
  with last = 0; the final one holds 0 .. segment_size bytes and is sealed with last = 1.
  This writer seals each full segment as soon as it fills, so its final segment is always
  shorter than segment_size (possibly empty); a full-size final segment is accepted on read.
* key_id is `storage.keys.data_key_id(data_key)`, an HMAC of the key: with it a reader tells
  a wrong key (WrongKey) from an altered header (HeaderTampered).
* flags bit 0 (PARTIAL): the file was recovered from a crashed writer and ends early.

The file digest the catalog keeps (``vault_sha256``) is SHA-256 over the header (tag
included) and the 16-byte tag of every segment in order, not over every byte: each GCM tag is
a MAC of its segment's ciphertext under the recording's key, so with the key (``recorderd
verify`` authenticates every segment) the digest pins the exact file as well as a hash of all
of it would, at 1/4096 of the hashing. Hashing every byte (SHA-256 ~1.8 GB/s here) cost more
than the encryption (AES-GCM ~7 GB/s) and held the vault near a quarter of a plain copy's
speed. Keyless checks of offsite copies hash whole objects in the backup's own manifest.

The plaintext is raw little-endian int16 PCM, interleaved `channels` channels at `rate` Hz.
The WAV header is synthesised on read, so segment 0 never needs rewriting once sealed (a
rewrite under the same nonce would be GCM nonce reuse). The recording id is stored in the
clear: it must be an opaque id, never a phone number or a Call-ID.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from capture.fsutil import create_exclusive, fsync_dir, replace_atomic, write_all
from capture.wavfile import WAV_HEADER_BYTES
from capture.wavfile import wav_header as _canonical_wav_header
from storage.keys import data_key_id

MAGIC = b"RDVAULT1"
VERSION = 1
FLAG_PARTIAL = 0x01
KNOWN_FLAGS = FLAG_PARTIAL
TAG_BYTES = 16
NONCE_PREFIX_BYTES = 7
KEY_ID_BYTES = 16
DEFAULT_SEGMENT_SIZE = 65536
MAX_SEGMENT_SIZE = 1 << 24
MAX_RECORDING_ID_BYTES = 0xFFFF
HEADER_COUNTER = 0xFFFFFFFF  # reserved for the header tag, never a segment counter
MAX_SEGMENTS = HEADER_COUNTER  # counters 0 .. 0xFFFFFFFE
SAMPLE_BYTES = 2
FIXED = struct.Struct(">8sBBIIB7s16sH")  # the header up to the recording id (44 bytes)
MISPLACED_SLACK = 64  # counters looked for beyond the file's last position (dropped segments)
READ_BLOCK_SEGMENTS = 16  # segments per read when walking a file


# --- errors -------------------------------------------------------------------------------

class VaultError(Exception):
    """A vault file that cannot be read as it should; subclasses say exactly why."""

    def __init__(self, message: str, path: str | os.PathLike[str] | None = None) -> None:
        super().__init__(f"{path}: {message}" if path is not None else message)
        self.path = path


class NotAVault(VaultError):
    """The file does not start with the vault magic."""


class UnsupportedVault(VaultError):
    """An authentic header this code cannot read (unknown version or flags, bad parameters)."""


class WrongKey(VaultError):
    """The data key given is not the one this file was sealed with."""


class HeaderTampered(VaultError):
    """The key is right but the header bytes were changed."""


class WrongRecording(VaultError):
    """The file belongs to another recording (e.g. two recordings' files swapped)."""

    def __init__(self, expected: str, found: str, path: str | os.PathLike[str] | None = None) -> None:
        super().__init__(f"this file belongs to recording {found!r}, not {expected!r}", path)
        self.expected = expected
        self.found = found


class SegmentTampered(VaultError):
    """Segment `index` (0-based position in the file) fails authentication."""

    def __init__(self, index: int, path: str | os.PathLike[str] | None = None,
                 detail: str = "fails authentication: its bytes were altered") -> None:
        super().__init__(f"segment {index} {detail}", path)
        self.index = index


class SegmentOutOfPlace(SegmentTampered):
    """Position `index` holds the authentic segment `found_index`: segments were dropped,
    duplicated or reordered (the counter in the nonce says where each belongs)."""

    def __init__(self, index: int, found_index: int, path: str | os.PathLike[str] | None = None) -> None:
        super().__init__(index, path, f"is out of place: this position holds segment {found_index} "
                                      "(segments were dropped, duplicated or reordered)")
        self.found_index = found_index


class Truncated(VaultError):
    """The file ends early; `last_good_index` is the last segment before the cut (-1: none)."""

    def __init__(self, last_good_index: int, path: str | os.PathLike[str] | None = None,
                 detail: str = "", cut_index: int | None = None) -> None:
        what = detail or f"the file is truncated after segment {last_good_index}"
        super().__init__(what, path)
        self.last_good_index = last_good_index
        self.cut_index = cut_index


# --- records ------------------------------------------------------------------------------

@dataclass(slots=True)
class VaultHeader:
    """The clear-text header of a vault file (authenticated by its tag)."""
    version: int
    segment_size: int
    rate: int
    channels: int
    nonce_prefix: bytes
    key_id: bytes
    recording_id: str
    header_len: int
    flags: int = 0

    @property
    def partial(self) -> bool:
        """Recovered from a crashed writer: the audio ends early."""
        return bool(self.flags & FLAG_PARTIAL)

    @property
    def frame_bytes(self) -> int:
        return self.channels * SAMPLE_BYTES

    @property
    def stored_segment_size(self) -> int:
        return self.segment_size + TAG_BYTES

    def aad(self) -> bytes:
        """Associated data of every segment: the recording id."""
        return self.recording_id.encode()

    def encode(self) -> bytes:
        """Pure: the header bytes up to (not including) the header tag."""
        rid = self.recording_id.encode()
        return FIXED.pack(MAGIC, self.version, self.flags, self.segment_size, self.rate, self.channels,
                          self.nonce_prefix, self.key_id, len(rid)) + rid


@dataclass(slots=True)
class VaultInfo:
    """A finished (or verified) vault file."""
    path: Path
    size: int
    segments: int
    frames: int
    digest: str  # file_digest: SHA-256 of the header and every segment tag (see the module doc)
    partial: bool = False


# --- pure crypto --------------------------------------------------------------------------

def segment_nonce(prefix: bytes, counter: int, last: bool) -> bytes:
    """nonce = prefix (7) || counter u32 BE || last u8: 12 bytes, GCM's native size (SP 800-38D 8.2)."""
    return prefix + struct.pack(">IB", counter, 1 if last else 0)


def header_nonce(prefix: bytes) -> bytes:
    """The reserved nonce of the header tag (counter 0xFFFFFFFF, which no segment uses)."""
    return prefix + struct.pack(">IB", HEADER_COUNTER, 0)


def seal_segment(key: bytes, prefix: bytes, counter: int, last: bool, aad: bytes,
                 plaintext: bytes | bytearray | memoryview) -> bytes:
    """Pure: one stored segment, ciphertext || tag.

    AES-256-GCM through OpenSSL (the `cryptography` package): its AES-NI + PCLMUL code seals
    ~7 GB/s here against ~0.47 GB/s for pycryptodome's, which alone capped the vault at ~10 % of
    a plain copy (docs/architecture.md, "Deviations"). The bytes are the same GCM either way.
    """
    return AESGCM(key).encrypt(segment_nonce(prefix, counter, last), plaintext, aad)


def open_segment(key: bytes, prefix: bytes, counter: int, last: bool, aad: bytes,
                 stored: bytes | memoryview) -> bytes | None:
    """Pure: the authenticated plaintext of a stored segment, or None when it does not open."""
    if len(stored) < TAG_BYTES:
        return None
    try:
        return AESGCM(key).decrypt(segment_nonce(prefix, counter, last), stored, aad)
    except InvalidTag:
        return None


def header_tag(key: bytes, header_bytes: bytes, prefix: bytes) -> bytes:
    """Pure: GCM tag over an empty plaintext with the header bytes as associated data."""
    return AESGCM(key).encrypt(header_nonce(prefix), b"", header_bytes)


def wav_header(rate: int, channels: int, frames: int) -> bytes:
    """The 44-byte canonical RIFF/WAVE PCM header (16-bit) for `frames` frames.

    The same bytes as `recorderd replay --out` writes (capture.wavfile), so an exported
    vault is byte-identical to the plaintext forensic WAV.
    """
    data_size = frames * channels * SAMPLE_BYTES
    if frames < 0 or 36 + data_size > 0xFFFFFFFF:
        raise ValueError(f"{frames} frames do not fit a RIFF file (4 GiB limit)")
    return _canonical_wav_header(rate, channels, frames)


# --- header parsing and authentication ----------------------------------------------------

def pread_exact(fd: int, length: int, offset: int) -> bytes:
    """pread until `length` bytes or end of file."""
    parts: list[bytes] = []
    while length > 0:
        block = os.pread(fd, length, offset)
        if not block:
            break
        parts.append(block)
        length -= len(block)
        offset += len(block)
    return b"".join(parts)


def parse_header(data: bytes, file_size: int, path: str | os.PathLike[str] | None = None
                 ) -> tuple[VaultHeader, bytes, bytes]:
    """Pure: (header, signed bytes, tag) from the start of a file of `file_size` bytes.

    Nothing is authenticated yet; NotAVault / Truncated when the bytes cannot be a header.
    """
    if not data.startswith(MAGIC[:len(data)]) or not data:
        raise NotAVault("not a vault file (no RDVAULT1 magic)", path)
    if len(data) < FIXED.size:
        if len(data) < len(MAGIC):
            raise NotAVault(f"{file_size} bytes: too short to be a vault file", path)
        raise Truncated(-1, path, "the file ends inside the header")
    magic, version, flags, seg, rate, channels, prefix, key_id, rid_len = FIXED.unpack_from(data)
    if magic != MAGIC:
        raise NotAVault("not a vault file (no RDVAULT1 magic)", path)
    header_len = FIXED.size + rid_len + TAG_BYTES
    if file_size < header_len or len(data) < header_len:
        raise Truncated(-1, path, f"the file ends inside the header ({file_size} of {header_len} bytes)")
    rid = data[FIXED.size:FIXED.size + rid_len].decode(errors="replace")
    header = VaultHeader(version, seg, rate, channels, prefix, key_id, rid, header_len, flags)
    return header, data[:header_len - TAG_BYTES], data[header_len - TAG_BYTES:header_len]


def check_parameters(header: VaultHeader, path: str | os.PathLike[str] | None = None) -> None:
    """An authentic header's values must be ones this code reads."""
    if header.version != VERSION:
        raise UnsupportedVault(f"format version {header.version} (this code reads {VERSION})", path)
    if header.flags & ~KNOWN_FLAGS:
        raise UnsupportedVault(f"unknown header flags 0x{header.flags:02x}", path)
    if not (1 <= header.segment_size <= MAX_SEGMENT_SIZE and header.rate > 0 and header.channels > 0):
        raise UnsupportedVault(f"invalid parameters: segment_size {header.segment_size}, rate {header.rate}, "
                               f"channels {header.channels}", path)


@dataclass(slots=True)
class _SegmentFile:
    """An open vault file and the key: reads and opens its segments by position."""
    fd: int
    path: Path
    size: int
    header: VaultHeader
    key: bytes
    aad: bytes

    def positions(self) -> tuple[int, int]:
        """(whole stored segments, bytes left over) after the header."""
        return divmod(self.size - self.header.header_len, self.header.stored_segment_size)

    def read_stored(self, first: int, count: int) -> bytes:
        """The stored bytes of segments first .. first+count-1 (shorter at end of file)."""
        stored = self.header.stored_segment_size
        return pread_exact(self.fd, count * stored, self.header.header_len + first * stored)

    def opens(self, stored: bytes | memoryview, counter: int, last: bool) -> bool:
        return self.plaintext(stored, counter, last) is not None

    def plaintext(self, stored: bytes | memoryview, counter: int, last: bool) -> bytes | None:
        return open_segment(self.key, self.header.nonce_prefix, counter, last, self.aad, stored)

    def diagnose(self, index: int, stored: bytes | memoryview, detail: str | None = None) -> SegmentTampered:
        """Why position `index` fails: another position's segment (out of place), or altered."""
        found = self.find_counter(index, stored)
        if found is not None:
            return SegmentOutOfPlace(index, found, self.path)
        if detail:
            return SegmentTampered(index, self.path, detail)
        return SegmentTampered(index, self.path)

    def find_counter(self, index: int, stored: bytes | memoryview) -> int | None:
        """The counter an out-of-place segment was sealed with, searched outward from `index`.

        Only on the failure path: one trial decryption per candidate counter and flag.
        """
        full, rest = self.positions()
        limit = min(full + (1 if rest else 0) + MISPLACED_SLACK, MAX_SEGMENTS)
        for distance in range(1, max(index + 1, limit - index)):
            for counter in (index - distance, index + distance):
                if 0 <= counter < limit and any(self.opens(stored, counter, last) for last in (False, True)):
                    return counter
        return None

    def first_bad_segment(self, before: int) -> VaultError | None:
        """Walk positions 0 .. before-1 (all non-final) and return the first failure."""
        for first in range(0, before, READ_BLOCK_SEGMENTS):
            count = min(READ_BLOCK_SEGMENTS, before - first)
            block = memoryview(self.read_stored(first, count))
            stored_size = self.header.stored_segment_size
            for i in range(count):
                stored = block[i * stored_size:(i + 1) * stored_size]
                if not self.opens(stored, first + i, last=False):
                    return self.diagnose(first + i, stored)
        return None

    def locate_final(self) -> tuple[int, int]:
        """(number of segments, plaintext bytes of the final one), after authenticating it.

        Raises Truncated / SegmentTampered / SegmentOutOfPlace naming the first bad position.
        """
        full, rest = self.positions()
        try:
            return self._check_final(full, rest)
        except VaultError as problem:
            # the tail is wrong; an earlier position may be the real cause (a dropped segment)
            earlier = self.first_bad_segment(problem.last_good_index + 1 if isinstance(problem, Truncated)
                                             else getattr(problem, "index", full))
            raise (earlier or problem) from None

    def _check_final(self, full: int, rest: int) -> tuple[int, int]:
        seg = self.header.segment_size
        if full == 0 and rest == 0:
            raise Truncated(-1, self.path, "the file ends after the header: no segment at all")
        if 0 < rest < TAG_BYTES:
            raise Truncated(full - 1, self.path, f"the file ends inside segment {full} "
                            f"({rest} bytes, shorter than a tag)", cut_index=full)
        if rest == 0:  # the last stored segment is full-size: final (last=1) or cut after it
            index = full - 1
            stored = self.read_stored(index, 1)
            if self.opens(stored, index, last=True):
                return full, seg
            if self.opens(stored, index, last=False):
                raise Truncated(index, self.path, f"the final segment is missing: the file ends after segment {index}")
            raise self.diagnose(index, stored)
        stored = self.read_stored(full, 1)
        if self.opens(stored, full, last=True):
            return full + 1, rest - TAG_BYTES
        raise self.diagnose(full, stored, "(the final one) fails authentication: altered, "
                                          "or the file was cut inside it")


def _read_header(fd: int, size: int, path: Path) -> tuple[VaultHeader, bytes, bytes]:
    head = pread_exact(fd, FIXED.size, 0)
    if len(head) == FIXED.size:
        rid_len = struct.unpack_from(">H", head, FIXED.size - 2)[0]
        head += pread_exact(fd, rid_len + TAG_BYTES, FIXED.size)
    return parse_header(head, size, path)


def _probe_first_segment(segments: _SegmentFile) -> bool:
    """Does segment 0 open with this key and header? (tells an altered header from a wrong key)"""
    if not 1 <= segments.header.segment_size <= MAX_SEGMENT_SIZE:
        return False
    stored = segments.read_stored(0, 1)
    return any(segments.opens(stored, 0, last) for last in (False, True))


def authenticate_header(segments: _SegmentFile, signed: bytes, tag: bytes, expected_recording_id: str | None) -> None:
    """Check the header tag; on failure name the cause: swapped file, altered header or wrong key."""
    header, path = segments.header, segments.path
    claims_other = expected_recording_id is not None and header.recording_id != expected_recording_id
    if secrets.compare_digest(header_tag(segments.key, signed, header.nonce_prefix), tag):
        if claims_other:
            raise WrongRecording(expected_recording_id or "", header.recording_id, path)
        check_parameters(header, path)
        return
    key_matches = secrets.compare_digest(data_key_id(segments.key), header.key_id)
    if key_matches or _probe_first_segment(segments):
        raise HeaderTampered("the header was altered (its tag does not match; the key is right)", path)
    if claims_other:
        raise WrongRecording(expected_recording_id or "", header.recording_id, path)
    raise WrongKey("the data key given does not open this file", path)


def _open_segment_file(fd: int, path: Path, data_key: bytes, expected_recording_id: str | None) -> _SegmentFile:
    if len(data_key) != 32:
        raise ValueError("the data key must be 32 bytes (AES-256)")
    size = os.fstat(fd).st_size
    header, signed, tag = _read_header(fd, size, path)
    aad = (expected_recording_id if expected_recording_id is not None else header.recording_id).encode()
    segments = _SegmentFile(fd, path, size, header, bytes(data_key), aad)
    authenticate_header(segments, signed, tag, expected_recording_id)
    return segments


# --- writing ------------------------------------------------------------------------------

class VaultWriter:
    """Writes one recording incrementally while the call is live.

    Data goes to `path + ".part"` (created exclusively, mode 0600; the header is written at
    once). Every full segment is sealed and written as soon as it fills, and made durable
    every `fsync_every_segments` segments (0: only at close), so a crash loses at most the
    segment being filled; `recover_partial` turns the .part into a verified vault.
    close() seals the final segment, fsyncs, renames to `path` and fsyncs the directory.

    `partial` and `temp_path` are for recover_partial (flag the header; write elsewhere).
    After an I/O error (disk full) the writer refuses further use: abort() it, or keep the
    .part for recovery.
    """

    def __init__(self, path: str | os.PathLike[str], data_key: bytes, key_id: bytes, recording_id: str,
                 rate: int, channels: int = 2, segment_size: int = DEFAULT_SEGMENT_SIZE,
                 fsync_every_segments: int = 1, nonce_prefix: bytes | None = None, *,
                 partial: bool = False, temp_path: str | os.PathLike[str] | None = None) -> None:
        prefix = secrets.token_bytes(NONCE_PREFIX_BYTES) if nonce_prefix is None else bytes(nonce_prefix)
        self.header = self._header(data_key, key_id, recording_id, rate, channels, segment_size, prefix, partial)
        if fsync_every_segments < 0:
            raise ValueError("fsync_every_segments must be >= 0")
        self.path = Path(path)
        self.temp_path = Path(temp_path) if temp_path is not None else self.path.with_name(self.path.name + ".part")
        if self.path.exists():
            raise FileExistsError(f"{self.path}: a vault file already exists")
        self._key = bytes(data_key)
        self._aad = self.header.aad()
        self._fsync_every = fsync_every_segments
        self._buffer = bytearray()
        self._digest = hashlib.sha256()
        self._counter = 0
        self._file_size = 0
        self._error: BaseException | None = None
        self._info: VaultInfo | None = None
        self.bytes_written = 0  # plaintext PCM bytes appended so far
        self._fd: int | None = create_exclusive(self.temp_path)
        try:
            head = self.header.encode() + header_tag(self._key, self.header.encode(), prefix)
            self._digest.update(head)
            self._write(head)
            if self._fsync_every:
                os.fsync(self._fd)
                fsync_dir(self.temp_path.parent)  # the .part itself must survive a crash
        except BaseException:
            self.abort()
            raise

    @staticmethod
    def _header(data_key: bytes, key_id: bytes, recording_id: str, rate: int, channels: int,
                segment_size: int, prefix: bytes, partial: bool) -> VaultHeader:
        """Validate the parameters and build the header."""
        if len(data_key) != 32:
            raise ValueError("the data key must be 32 bytes (AES-256)")
        if bytes(key_id) != data_key_id(bytes(data_key)):
            raise ValueError("key_id must be storage.keys.data_key_id(data_key), as new_data_key() returns it")
        if len(prefix) != NONCE_PREFIX_BYTES:
            raise ValueError(f"the nonce prefix must be {NONCE_PREFIX_BYTES} bytes")
        rid = recording_id.encode()
        if not rid or len(rid) > MAX_RECORDING_ID_BYTES:
            raise ValueError("the recording id must be 1 .. 65535 UTF-8 bytes")
        if not 1 <= segment_size <= MAX_SEGMENT_SIZE:
            raise ValueError(f"segment_size must be 1 .. {MAX_SEGMENT_SIZE}")
        if not (0 < rate <= 0xFFFFFFFF and 0 < channels <= 0xFF):
            raise ValueError("rate must be a positive u32 and channels 1 .. 255")
        header_len = FIXED.size + len(rid) + TAG_BYTES
        return VaultHeader(VERSION, segment_size, rate, channels, prefix, bytes(key_id), recording_id,
                           header_len, FLAG_PARTIAL if partial else 0)

    @property
    def frames_written(self) -> int:
        return self.bytes_written // self.header.frame_bytes

    @property
    def segments_sealed(self) -> int:
        return self._counter

    def _check_usable(self) -> int:
        if self._error is not None:
            raise VaultError(f"the writer failed earlier ({self._error}); abort it", self.temp_path)
        if self._fd is None:
            raise VaultError("the writer is closed", self.path)
        return self._fd

    def _write(self, *parts: bytes) -> None:
        fd = self._check_usable()
        try:
            write_all(fd, *parts)
        except BaseException as exc:
            self._error = exc
            raise
        for part in parts:
            self._file_size += len(part)

    def _seal(self, plaintext: bytes | bytearray | memoryview, last: bool) -> bytes:
        """The next segment, sealed and counted (the caller writes it)."""
        if self._counter >= MAX_SEGMENTS:
            raise VaultError(f"a vault holds at most {MAX_SEGMENTS} segments", self.temp_path)
        stored = seal_segment(self._key, self.header.nonce_prefix, self._counter, last, self._aad, plaintext)
        self._digest.update(stored[-TAG_BYTES:])
        self._counter += 1
        return stored

    def _write_sealed(self, sealed: list[bytes]) -> None:
        """One writev for every segment an append sealed; fdatasync when a multiple of
        fsync_every_segments was crossed."""
        self._write(*sealed)
        if self._fsync_every and self._counter // self._fsync_every > (self._counter - len(sealed)) // self._fsync_every:
            os.fdatasync(self._check_usable())

    def append(self, pcm: bytes | bytearray | memoryview) -> None:
        """Add PCM bytes; every segment that fills is sealed and written at once."""
        self._check_usable()
        view = memoryview(pcm).cast("B")
        self.bytes_written += len(view)
        seg = self.header.segment_size
        sealed: list[bytes] = []
        if self._buffer:
            room = seg - len(self._buffer)
            self._buffer += view[:room]
            view = view[room:]
            if len(self._buffer) < seg:
                return
            sealed.append(self._seal(self._buffer, last=False))
            self._buffer.clear()
        while len(view) >= seg:
            sealed.append(self._seal(view[:seg], last=False))
            view = view[seg:]
        self._buffer += view
        if sealed:
            self._write_sealed(sealed)

    def close(self) -> VaultInfo:
        """Seal the final segment, fsync, rename to the final path, fsync the directory."""
        if self._info is not None:
            return self._info
        fd = self._check_usable()
        self._write(self._seal(self._buffer, last=True))
        self._buffer.clear()
        os.fsync(fd)
        os.close(fd)
        self._fd = None
        replace_atomic(self.temp_path, self.path)
        self._info = VaultInfo(self.path, self._file_size, self._counter, self.frames_written,
                               self._digest.hexdigest(), self.header.partial)
        return self._info

    def detach(self) -> None:
        """Stop writing but keep the .part for crash recovery (e.g. the disk filled up)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def abort(self) -> None:
        """Drop the recording: close and delete the .part (no-op once closed)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.temp_path)

    def __enter__(self) -> VaultWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


# --- reading ------------------------------------------------------------------------------

class VaultReader:
    """Random access to one vault file; every byte returned has been authenticated.

    Opening authenticates the header and the final segment (so truncation shows at once);
    reads decrypt only the segments they need. `expected_recording_id` (from the catalog)
    catches a file swapped for another recording's.
    """

    def __init__(self, path: str | os.PathLike[str], data_key: bytes, expected_recording_id: str | None = None) -> None:
        self.path = Path(path)
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise VaultError("no such vault file", self.path) from None
        self._fd: int | None = fd
        try:
            self._file = _open_segment_file(fd, self.path, data_key, expected_recording_id)
            self.segments, final_len = self._file.locate_final()
        except BaseException:
            self.close()
            raise
        self.header = self._file.header
        self.pcm_size = (self.segments - 1) * self.header.segment_size + final_len
        self.frames = self.pcm_size // self.header.frame_bytes
        self._cache: tuple[int, bytes] | None = None  # the last single segment decrypted

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> VaultReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _plaintext_len(self, index: int) -> int:
        seg = self.header.segment_size
        return seg if index < self.segments - 1 else self.pcm_size - index * seg

    def _require_open(self) -> None:
        if self._fd is None:  # the descriptor number may already belong to another file
            raise VaultError("the reader is closed", self.path)

    def _decrypt_segments(self, first: int, count: int) -> bytes:
        """Plaintext of segments first .. first+count-1, each authenticated at its position."""
        self._require_open()
        if count == 1 and self._cache is not None and self._cache[0] == first:
            return self._cache[1]
        stored_size = self.header.stored_segment_size
        block = memoryview(self._file.read_stored(first, count))
        pieces = []
        for i in range(count):
            index = first + i
            stored = block[i * stored_size:(i + 1) * stored_size]
            plain = self._file.plaintext(stored, index, index == self.segments - 1)
            if plain is None or len(plain) != self._plaintext_len(index):
                raise self._file.diagnose(index, stored)
            pieces.append(plain)
        out = pieces[0] if count == 1 else b"".join(pieces)
        if count == 1:
            self._cache = (first, out)
        return out

    def read_pcm(self, offset: int, length: int) -> bytes:
        """PCM bytes [offset, offset+length) (shorter at the end); decrypts only what it needs."""
        if offset < 0 or length < 0:
            raise ValueError("offset and length must be >= 0")
        end = min(offset + length, self.pcm_size)
        if offset >= end:
            return b""
        seg = self.header.segment_size
        first, last = offset // seg, (end - 1) // seg
        plain = self._decrypt_segments(first, last - first + 1)
        return plain[offset - first * seg:end - first * seg]

    def iter_pcm(self, chunk: int = 1 << 20) -> Iterator[bytes]:
        """All the PCM, in pieces of about `chunk` bytes (whole segments)."""
        per_read = max(1, chunk // self.header.segment_size)
        for first in range(0, self.segments, per_read):
            yield self._decrypt_segments(first, min(per_read, self.segments - first))

    # WAV view (for export and HTTP Range playback)
    def wav_size(self) -> int:
        return WAV_HEADER_BYTES + self.frames * self.header.frame_bytes

    def wav_header(self) -> bytes:
        return wav_header(self.header.rate, self.header.channels, self.frames)

    def read_wav(self, offset: int, length: int) -> bytes:
        """Bytes [offset, offset+length) of the WAV file this recording is (header + whole frames)."""
        if offset < 0 or length < 0:
            raise ValueError("offset and length must be >= 0")
        end = min(offset + length, self.wav_size())
        parts = []
        if offset < WAV_HEADER_BYTES:
            parts.append(self.wav_header()[offset:min(end, WAV_HEADER_BYTES)])
        start = max(offset, WAV_HEADER_BYTES)
        if end > start:
            parts.append(self.read_pcm(start - WAV_HEADER_BYTES, end - start))
        return b"".join(parts)

    def verify(self) -> VaultInfo:
        """Authenticate every segment in order (raising the first failure) and hash the file."""
        self._require_open()
        digest = hashlib.sha256(pread_exact(self._file.fd, self.header.header_len, 0))
        stored_size = self.header.stored_segment_size
        for first in range(0, self.segments, READ_BLOCK_SEGMENTS):
            count = min(READ_BLOCK_SEGMENTS, self.segments - first)
            block = memoryview(self._file.read_stored(first, count))
            for i in range(count):
                index = first + i
                stored = block[i * stored_size:(i + 1) * stored_size]
                if not self._file.opens(stored, index, index == self.segments - 1):
                    raise self._file.diagnose(index, stored)
                digest.update(stored[-TAG_BYTES:])
        return VaultInfo(self.path, self._file.size, self.segments, self.frames, digest.hexdigest(),
                         self.header.partial)


# --- crash recovery -----------------------------------------------------------------------

@dataclass(slots=True)
class _Salvage:
    """What a .part holds: the leading run of authentic segments (position, last flag)."""
    segments: list[tuple[int, bool]]
    complete: bool  # the run ends with the final segment, at the very end of the file


def _authentic_prefix(segments: _SegmentFile) -> _Salvage:
    """Walk a .part from the start while segments authenticate at their positions.

    A crashed writer leaves full segments sealed with last=0, maybe a torn one after them;
    a crash during close may leave a complete file (final segment, last=1) not yet renamed.
    """
    full, rest = segments.positions()
    count = full + (1 if rest else 0)
    run: list[tuple[int, bool]] = []
    for index in range(count):
        stored = segments.read_stored(index, 1)
        if segments.opens(stored, index, last=False):
            run.append((index, False))
        elif segments.opens(stored, index, last=True):
            run.append((index, True))
            return _Salvage(run, complete=index == count - 1)
        else:
            break
    return _Salvage(run, complete=False)


def recover_partial(part_path: str | os.PathLike[str], data_key: bytes,
                    final_path: str | os.PathLike[str]) -> tuple[VaultInfo, int]:
    """Turn a crashed writer's .part into a verified vault at `final_path`; returns (info, frames).

    When the .part is complete (the crash came between close's fsync and its rename) it is
    renamed as it is. Otherwise the plaintext of every authentic segment of its leading run is
    *re-encrypted under a fresh nonce prefix* with the PARTIAL flag set (info.partial): a fresh
    prefix makes every nonce new, whatever the crashed writer had sealed before dying
    (re-sealing segment k with last=1 under the old prefix would be safe only if the writer
    never used (k, last=1), which a torn close makes uncertain). The .part is removed once the
    result is durable, and running it again after a crash midway is safe.

    A .part cut inside its header holds no audio: Truncated / NotAVault is raised and the
    caller may delete it.
    """
    part, final = Path(part_path), Path(final_path)
    fd = os.open(part, os.O_RDONLY | os.O_CLOEXEC)
    try:
        segments = _open_segment_file(fd, part, data_key, None)
        if final.exists():
            info = _earlier_recovery(final, data_key, segments.header.recording_id)
        else:
            salvage = _authentic_prefix(segments)
            if salvage.complete:
                os.close(fd)
                fd = -1
                replace_atomic(part, final)
                info = VaultReader(final, data_key).verify()
                return info, info.frames
            info = _reseal(segments, salvage, data_key, final)
    finally:
        if fd >= 0:
            os.close(fd)
    os.unlink(part)
    fsync_dir(part.parent)
    return info, info.frames


def _earlier_recovery(final: Path, data_key: bytes, recording_id: str) -> VaultInfo:
    """`final` exists: accept it only as this recording's vault (an interrupted earlier recovery)."""
    try:
        return VaultReader(final, data_key, recording_id).verify()
    except VaultError as exc:
        raise VaultError(f"refusing to replace an existing file that is not this recording's vault ({exc})",
                         final) from None


def _reseal(segments: _SegmentFile, salvage: _Salvage, data_key: bytes, final: Path) -> VaultInfo:
    """Write the salvaged plaintext to a new vault (fresh nonce prefix, PARTIAL flag)."""
    header = segments.header
    temp = final.with_name(final.name + ".recover")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temp)  # left by an earlier, interrupted recovery
    writer = VaultWriter(final, data_key, header.key_id, header.recording_id, header.rate, header.channels,
                         header.segment_size, fsync_every_segments=0, partial=True, temp_path=temp)
    with writer:
        for index, last in salvage.segments:
            stored = segments.read_stored(index, 1)
            plain = segments.plaintext(stored, index, last)
            if plain is None:
                raise SegmentTampered(index, segments.path, "changed while being recovered")
            writer.append(plain)
    return writer.close()
