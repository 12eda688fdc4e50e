"""storage.vault: round trips, random access, the file format, tampering, no plaintext, crashes.

The format checks recompute the header tag and segment 0 with AES-GCM directly from the
layout in the module docstring, so a change of nonce layout or associated data fails here.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import random
import signal
import stat
import struct
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile
from Crypto.Cipher import AES

from capture.fsutil import write_all, write_atomic
from capture.wavfile import wav_header as capture_wav_header
from storage.keys import data_key_id, new_data_key
from storage.vault import (
    FIXED,
    HeaderTampered,
    NotAVault,
    SegmentOutOfPlace,
    SegmentTampered,
    Truncated,
    VaultError,
    VaultInfo,
    VaultReader,
    VaultWriter,
    WrongKey,
    WrongRecording,
    recover_partial,
    wav_header,
)

ROOT = Path(__file__).resolve().parents[2]
SEG = 1024  # small segments: many of them, fast tests
TAG = 16
RID = "rec-20250101-000001"
PHONE = b"+4915112345678"
CALL_ID = b"a84b4c76e66710@pc33.atlanta.example.com"


@pytest.fixture()
def key() -> tuple[bytes, bytes]:
    return new_data_key()


def pcm_bytes(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


def write_vault(path: Path, key: tuple[bytes, bytes], pcm: bytes, seg: int = SEG, rid: str = RID,
                seed: int = 0, **kw: object) -> VaultInfo:
    """Append `pcm` in random-size pieces (some exactly on segment boundaries) and close."""
    rng = random.Random(seed)
    writer = VaultWriter(path, key[0], key[1], rid, 8000, 2, segment_size=seg, **kw)  # type: ignore[arg-type]
    pos = 0
    while pos < len(pcm):
        step = rng.choice([1, 3, seg - 1, seg, seg + 1, 3 * seg, rng.randint(1, 4 * seg)])
        writer.append(pcm[pos:pos + step])
        pos += step
    return writer.close()


def stored_layout(path: Path, seg: int = SEG) -> tuple[bytes, list[bytes]]:
    """(header bytes, the stored segments) of a well-formed vault file written by VaultWriter."""
    data = path.read_bytes()
    rid_len = struct.unpack_from(">H", data, FIXED.size - 2)[0]
    header_len = FIXED.size + rid_len + TAG
    body = data[header_len:]
    stored = seg + TAG
    return data[:header_len], [body[i:i + stored] for i in range(0, len(body), stored)]


def rebuild(path: Path, header: bytes, segments: list[bytes]) -> None:
    path.write_bytes(header + b"".join(segments))


def segment_named(exc: VaultError) -> int:
    """The first bad segment an error points at."""
    if isinstance(exc, Truncated):
        return exc.last_good_index + 1
    assert isinstance(exc, SegmentTampered), exc
    return exc.index


# --- round trips ------------------------------------------------------------------------

def skeleton_digest(data: bytes, header_len: int, stored_size: int) -> str:
    """The documented file digest, computed independently: SHA-256(header || every segment's tag)."""
    digest = hashlib.sha256(data[:header_len])
    for start in range(header_len, len(data), stored_size):
        digest.update(data[start:start + stored_size][-16:])
    return digest.hexdigest()


@pytest.mark.parametrize("size", [0, 1, 4, SEG - 1, SEG, SEG + 1, 3 * SEG, 7 * SEG + 5])
def test_round_trip_small_segments(tmp_path: Path, key: tuple[bytes, bytes], size: int) -> None:
    pcm = pcm_bytes(size, seed=size)
    info = write_vault(tmp_path / "a.vault", key, pcm, seed=size)
    assert info.segments == size // SEG + 1  # full segments sealed as they fill, then the final one
    assert info.frames == size // 4 and not info.partial
    assert info.size == (tmp_path / "a.vault").stat().st_size
    with VaultReader(tmp_path / "a.vault", key[0], RID) as reader:
        assert info.digest == skeleton_digest((tmp_path / "a.vault").read_bytes(), reader.header.header_len,
                                              reader.header.stored_segment_size)
        assert reader.pcm_size == size and reader.frames == size // 4
        assert reader.read_pcm(0, size + 10) == pcm
        assert b"".join(reader.iter_pcm(chunk=3 * SEG)) == pcm
        assert reader.verify() == info


@pytest.mark.parametrize("size", [0, 65536, 65537, 5 * 65536 + 4])
def test_round_trip_default_segments(tmp_path: Path, key: tuple[bytes, bytes], size: int) -> None:
    pcm = pcm_bytes(size, seed=size)
    info = write_vault(tmp_path / "a.vault", key, pcm, seg=65536)
    assert info.segments == size // 65536 + 1
    with VaultReader(tmp_path / "a.vault", key[0], RID) as reader:
        assert reader.header.segment_size == 65536
        assert b"".join(reader.iter_pcm()) == pcm
        assert reader.verify().digest == info.digest


def test_random_access_equals_plaintext_slices(tmp_path: Path, key: tuple[bytes, bytes]) -> None:
    pcm = pcm_bytes(20 * SEG + 12, seed=5)
    write_vault(tmp_path / "a.vault", key, pcm)
    rng = random.Random(7)
    with VaultReader(tmp_path / "a.vault", key[0]) as reader:
        for _ in range(300):
            offset = rng.randint(0, len(pcm) + 50)
            length = rng.choice([0, 1, 2, SEG - 1, SEG, SEG + 1, rng.randint(0, 6 * SEG)])
            assert reader.read_pcm(offset, length) == pcm[offset:offset + length], (offset, length)
        with pytest.raises(ValueError):
            reader.read_pcm(-1, 10)
    with pytest.raises(VaultError, match="closed"):
        reader.read_pcm(0, 10)


def test_wav_view_is_the_replay_wav(tmp_path: Path, key: tuple[bytes, bytes]) -> None:
    """read_wav serves the bytes of the same WAV `replay --out` writes; soundfile reads it back."""
    samples = (np.sin(np.arange(8000 * 3) * 2 * np.pi * 440 / 8000) * 8000).astype("<i2")
    stereo = np.stack([samples, samples[::-1]], axis=1)
    pcm = stereo.tobytes()
    write_vault(tmp_path / "a.vault", key, pcm, seg=65536)
    whole = capture_wav_header(8000, 2, len(stereo)) + pcm
    rng = random.Random(3)
    with VaultReader(tmp_path / "a.vault", key[0]) as reader:
        assert reader.wav_size() == len(whole)
        assert reader.read_wav(0, reader.wav_size()) == whole
        for _ in range(100):
            offset, length = rng.randint(0, len(whole)), rng.randint(0, 100_000)
            assert reader.read_wav(offset, length) == whole[offset:offset + length]
        assert reader.read_wav(10, 40) == whole[10:50]  # straddles header and PCM
    data, rate = soundfile.read(io.BytesIO(whole), dtype="int16")
    assert rate == 8000 and np.array_equal(data, stereo)


def test_wav_header_is_canonical_and_bounded() -> None:
    header = wav_header(16000, 2, 10)
    assert len(header) == 44 and header[:4] == b"RIFF" and header[8:16] == b"WAVEfmt "
    assert struct.unpack_from("<I", header, 40)[0] == 40
    with pytest.raises(ValueError):
        wav_header(8000, 2, 1 << 30)


# --- the format as specified --------------------------------------------------------------

def test_layout_matches_the_specification(tmp_path: Path, key: tuple[bytes, bytes]) -> None:
    data_key, key_id = key
    prefix = bytes.fromhex("01020304050607")
    pcm = pcm_bytes(SEG + 100)
    write_vault(tmp_path / "a.vault", key, pcm, nonce_prefix=prefix)
    raw = (tmp_path / "a.vault").read_bytes()
    rid = RID.encode()
    fixed = b"RDVAULT1" + bytes([1, 0]) + struct.pack(">II", SEG, 8000) + bytes([2]) + prefix + key_id
    assert raw.startswith(fixed + struct.pack(">H", len(rid)) + rid)
    header_len = len(fixed) + 2 + len(rid) + TAG
    header_tag = AES.new(data_key, AES.MODE_GCM, nonce=prefix + b"\xff\xff\xff\xff\x00")
    header_tag.update(raw[:header_len - TAG])
    assert raw[header_len - TAG:header_len] == header_tag.digest()
    seg0 = AES.new(data_key, AES.MODE_GCM, nonce=prefix + b"\x00\x00\x00\x00\x00")
    seg0.update(rid)
    assert raw[header_len:header_len + SEG + TAG] == b"".join(seg0.encrypt_and_digest(pcm[:SEG]))
    final = AES.new(data_key, AES.MODE_GCM, nonce=prefix + b"\x00\x00\x00\x01\x01")
    final.update(rid)
    assert raw[header_len + SEG + TAG:] == b"".join(final.encrypt_and_digest(pcm[SEG:]))
    assert key_id == data_key_id(data_key)


def test_writer_checks_and_hygiene(tmp_path: Path, key: tuple[bytes, bytes]) -> None:
    with pytest.raises(ValueError, match="key_id"):
        VaultWriter(tmp_path / "x.vault", key[0], b"\x00" * 16, RID, 8000)
    with pytest.raises(ValueError, match="nonce prefix"):
        VaultWriter(tmp_path / "x.vault", key[0], key[1], RID, 8000, nonce_prefix=b"short")
    writer = VaultWriter(tmp_path / "x.vault", key[0], key[1], RID, 8000)
    part = tmp_path / "x.vault.part"
    assert stat.S_IMODE(part.stat().st_mode) == 0o600
    with pytest.raises(FileExistsError):  # a live (or crashed) .part is never clobbered
        VaultWriter(tmp_path / "x.vault", key[0], key[1], RID, 8000)
    writer.append(b"\x01\x00" * 10)
    assert writer.frames_written == 5 and writer.bytes_written == 20
    writer.abort()
    assert not part.exists() and not (tmp_path / "x.vault").exists()
    with pytest.raises(RuntimeError), VaultWriter(tmp_path / "y.vault", key[0], key[1], RID, 8000) as w:
        w.append(b"\x00" * 8)
        raise RuntimeError("call dropped")
    assert list(tmp_path.iterdir()) == []
    write_vault(tmp_path / "z.vault", key, b"")
    with pytest.raises(FileExistsError):
        VaultWriter(tmp_path / "z.vault", key[0], key[1], RID, 8000)


def test_each_file_gets_a_fresh_nonce_prefix(tmp_path: Path, key: tuple[bytes, bytes]) -> None:
    prefixes = set()
    for i in range(5):
        write_vault(tmp_path / f"{i}.vault", key, b"")
        with VaultReader(tmp_path / f"{i}.vault", key[0]) as reader:
            prefixes.add(reader.header.nonce_prefix)
    assert len(prefixes) == 5


# --- tampering ----------------------------------------------------------------------------

def open_and_verify(path: Path, data_key: bytes, rid: str | None = RID) -> VaultInfo:
    with VaultReader(path, data_key, rid) as reader:
        return reader.verify()


def test_every_header_byte_flip_is_named(tmp_path: Path, key: tuple[bytes, bytes]) -> None:
    original = tmp_path / "orig.vault"
    write_vault(original, key, pcm_bytes(100 * SEG))  # > 65 KB: a flipped id length still fits the file
    header, _ = stored_layout(original)
    raw = original.read_bytes()
    target = tmp_path / "t.vault"
    for position in range(len(header)):
        for mask in (0x01, 0x80):
            flipped = bytearray(raw)
            flipped[position] ^= mask
            target.write_bytes(flipped)
            expected = NotAVault if position < 8 else HeaderTampered
            with pytest.raises(expected):
                open_and_verify(target, key[0], RID)
            with pytest.raises(expected):  # without the catalog's recording id too
                open_and_verify(target, key[0], None)


def test_every_segment_byte_region_flip_names_the_segment(tmp_path: Path, key: tuple[bytes, bytes]) -> None:
    pcm = pcm_bytes(6 * SEG + 40)
    original = tmp_path / "orig.vault"
    write_vault(original, key, pcm)
    header, segments = stored_layout(original)
    target = tmp_path / "t.vault"
    for index, segment in enumerate(segments):
        for where in (0, len(segment) // 2, len(segment) - TAG, len(segment) - 1):  # ciphertext and tag
            changed = list(segments)
            damaged = bytearray(segment)
            damaged[where] ^= 0x04
            changed[index] = bytes(damaged)
            rebuild(target, header, changed)
            with pytest.raises(SegmentTampered) as caught:
                open_and_verify(target, key[0])
            assert caught.value.index == index and not isinstance(caught.value, SegmentOutOfPlace)
            assert f"segment {index}" in str(caught.value)
            if index < len(segments) - 1:  # the rest of the recording stays readable
                with VaultReader(target, key[0], RID) as reader:
                    with pytest.raises(SegmentTampered):
                        reader.read_pcm(index * SEG, 1)
                    other = (index + 1) * SEG
                    assert reader.read_pcm(other, 10) == pcm[other:other + 10]


def test_truncation_names_the_first_missing_segment(tmp_path: Path, key: tuple[bytes, bytes]) -> None:
    original = tmp_path / "orig.vault"
    write_vault(original, key, pcm_bytes(4 * SEG + 100))
    header, _ = stored_layout(original)
    header_len = len(header)
    raw = original.read_bytes()
    target = tmp_path / "t.vault"
    stored = SEG + TAG
    cuts = list(range(header_len, len(raw), 97)) + [header_len + k * stored for k in range(5)] + [len(raw) - 1]
    for cut in cuts:
        target.write_bytes(raw[:cut])
        with pytest.raises((Truncated, SegmentTampered)) as caught:
            open_and_verify(target, key[0])
        assert segment_named(caught.value) == (cut - header_len) // stored, cut
    # the final segment dropped whole: the last good one is named
    target.write_bytes(raw[:header_len + 4 * stored])
    with pytest.raises(Truncated, match="final segment is missing") as caught:
        open_and_verify(target, key[0])
    assert caught.value.last_good_index == 3
    target.write_bytes(raw[:header_len])
    with pytest.raises(Truncated, match="no segment"):
        open_and_verify(target, key[0])
    target.write_bytes(raw[:30])
    with pytest.raises(Truncated, match="inside the header"):
        open_and_verify(target, key[0])


@pytest.mark.parametrize("case", ["drop", "swap", "duplicate", "duplicate_final", "drop_first"])
def test_dropped_reordered_duplicated_segments(tmp_path: Path, key: tuple[bytes, bytes], case: str) -> None:
    original = tmp_path / "orig.vault"
    write_vault(original, key, pcm_bytes(6 * SEG + 8))
    header, segs = stored_layout(original)  # 7 segments: 0..5 full, 6 final
    edits = {
        "drop": (segs[:2] + segs[3:], 2, 3),
        "drop_first": (segs[1:], 0, 1),
        "swap": (segs[:3] + [segs[4], segs[3]] + segs[5:], 3, 4),
        "duplicate": (segs[:4] + [segs[3]] + segs[4:], 4, 3),
        "duplicate_final": (segs + [segs[6]], 6, None),
    }
    changed, position, found = edits[case]
    target = tmp_path / "t.vault"
    rebuild(target, header, changed)
    with pytest.raises(SegmentTampered) as caught:
        open_and_verify(target, key[0])
    assert caught.value.index == position
    if found is not None:
        assert isinstance(caught.value, SegmentOutOfPlace) and caught.value.found_index == found
        assert "dropped, duplicated or reordered" in str(caught.value)


def test_swapped_recordings_and_wrong_key(tmp_path: Path) -> None:
    key_a, key_b = new_data_key(), new_data_key()
    write_vault(tmp_path / "a.vault", key_a, pcm_bytes(3 * SEG), rid="rec-A")
    write_vault(tmp_path / "b.vault", key_b, pcm_bytes(3 * SEG), rid="rec-B")
    (tmp_path / "a.vault").rename(tmp_path / "tmp")
    (tmp_path / "b.vault").rename(tmp_path / "a.vault")  # the swap
    with pytest.raises(WrongRecording) as caught:
        VaultReader(tmp_path / "a.vault", key_a[0], "rec-A")
    assert (caught.value.expected, caught.value.found) == ("rec-A", "rec-B")
    with pytest.raises(WrongKey, match="does not open"):
        VaultReader(tmp_path / "a.vault", key_a[0])
    # the right key but the catalog row of another recording
    with pytest.raises(WrongRecording):
        VaultReader(tmp_path / "a.vault", key_b[0], "rec-A")
    # the header rewritten to claim the other recording: the tag catches it
    raw = bytearray((tmp_path / "a.vault").read_bytes())
    raw[raw.index(b"rec-B") + 4] = ord("A")
    (tmp_path / "forged.vault").write_bytes(raw)
    with pytest.raises(WrongKey):
        VaultReader(tmp_path / "forged.vault", key_a[0], "rec-A")
    with pytest.raises(HeaderTampered):
        VaultReader(tmp_path / "forged.vault", key_b[0], "rec-A")


def test_not_a_vault(tmp_path: Path, key: tuple[bytes, bytes]) -> None:
    for name, content in [("empty", b""), ("wav", capture_wav_header(8000, 2, 0)), ("short", b"RDV")]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(NotAVault):
            VaultReader(tmp_path / name, key[0])
    with pytest.raises(VaultError, match="no such"):
        VaultReader(tmp_path / "missing", key[0])


# --- no plaintext on disk -------------------------------------------------------------------

def byte_entropy(data: bytes) -> float:
    counts = Counter(data)
    return -sum(c / len(data) * math.log2(c / len(data)) for c in counts.values())


def revealing_pcm(size: int) -> bytes:
    """PCM that is full of what must not leak: a WAV header, SIP text, a number, a Call-ID."""
    sip = (b"INVITE sip:" + PHONE + b"@bank.example SIP/2.0\r\nCall-ID: " + CALL_ID +
           b"\r\nFrom: <sip:" + PHONE + b"@pbx>\r\n\r\n")
    tone = (np.sin(np.arange(4000) * 2 * np.pi * 440 / 8000) * 3000).astype("<i2").tobytes()
    block = capture_wav_header(8000, 2, 1000) + sip + tone
    return (block * (size // len(block) + 1))[:size]


@pytest.mark.parametrize("seg", [SEG, 65536])
def test_no_plaintext_on_disk(tmp_path: Path, key: tuple[bytes, bytes], seg: int) -> None:
    pcm = revealing_pcm(1 << 20)
    assert PHONE in pcm and CALL_ID in pcm and byte_entropy(pcm) < 6.5  # the test means something
    writer = VaultWriter(tmp_path / "a.vault", key[0], key[1], RID, 8000, segment_size=seg, fsync_every_segments=0)
    writer.append(pcm[: len(pcm) // 2])
    files = [(tmp_path / "a.vault.part").read_bytes()]  # while the call is live
    writer.append(pcm[len(pcm) // 2:])
    writer.close()
    files.append((tmp_path / "a.vault").read_bytes())
    for data in files:
        for needle in (b"RIFF", b"WAVE", PHONE, PHONE[1:], CALL_ID, b"Call-ID", b"INVITE", b"sip:"):
            assert needle not in data, needle
        assert byte_entropy(data) > 7.9


# --- crash-safe file helpers -------------------------------------------------------------

def test_write_atomic_replaces_whole_files_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "catalog.json"
    write_atomic(target, b"first")
    write_atomic(target, b"second", mode=0o640)
    assert target.read_bytes() == b"second" and stat.S_IMODE(target.stat().st_mode) == 0o640

    def disk_full(fd: int, buffers: object) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "writev", disk_full)
    with pytest.raises(OSError, match="No space"):
        write_atomic(target, b"third")
    assert target.read_bytes() == b"second" and sorted(tmp_path.iterdir()) == [target]  # no temp left


def test_write_all_survives_short_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_writev = os.writev

    def at_most_seven_bytes(fd: int, buffers: list[memoryview]) -> int:
        return real_writev(fd, [bytes(b"".join(bytes(b) for b in buffers)[:7])])

    monkeypatch.setattr(os, "writev", at_most_seven_bytes)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    write_all(fd, b"0123456789", b"", bytearray(b"abcdefghij"), memoryview(b"XYZ"))
    os.close(fd)
    assert (tmp_path / "f").read_bytes() == b"0123456789abcdefghijXYZ"


# --- crash recovery -----------------------------------------------------------------------

def test_recover_keeps_every_complete_segment(tmp_path: Path, key: tuple[bytes, bytes]) -> None:
    pcm = pcm_bytes(10 * SEG)
    writer = VaultWriter(tmp_path / "a.vault", key[0], key[1], RID, 8000, segment_size=SEG)
    writer.append(pcm[:5 * SEG + 300])  # 5 segments sealed, 300 bytes pending: lost in a crash
    part = tmp_path / "a.vault.part"
    crashed = part.read_bytes()
    writer.abort()
    part.write_bytes(crashed + b"\x00" * 7)  # and a few bytes of a torn write
    old_prefix = crashed[19:26]
    info, frames = recover_partial(part, key[0], tmp_path / "a.vault")
    assert info.partial and frames == 5 * SEG // 4 and not part.exists()
    with VaultReader(tmp_path / "a.vault", key[0], RID) as reader:
        assert reader.header.partial and reader.header.nonce_prefix != old_prefix  # fresh nonces
        assert reader.read_pcm(0, len(pcm)) == pcm[:5 * SEG]
        assert reader.verify() == info


def test_recover_a_complete_part_renames_it(tmp_path: Path, key: tuple[bytes, bytes]) -> None:
    """Crash between close's fsync and its rename: the .part is whole; nothing is lost."""
    info = write_vault(tmp_path / "a.vault", key, pcm_bytes(3 * SEG + 10))
    (tmp_path / "a.vault").rename(tmp_path / "a.vault.part")
    recovered, frames = recover_partial(tmp_path / "a.vault.part", key[0], tmp_path / "a.vault")
    assert recovered == info and frames == (3 * SEG + 10) // 4 and not recovered.partial


def test_recover_a_torn_final_segment(tmp_path: Path, key: tuple[bytes, bytes]) -> None:
    pcm = pcm_bytes(3 * SEG + 10)
    write_vault(tmp_path / "a.vault", key, pcm)
    raw = (tmp_path / "a.vault").read_bytes()
    (tmp_path / "a.vault").unlink()
    (tmp_path / "a.vault.part").write_bytes(raw[:-5])
    info, frames = recover_partial(tmp_path / "a.vault.part", key[0], tmp_path / "a.vault")
    assert info.partial and frames == 3 * SEG // 4
    with VaultReader(tmp_path / "a.vault", key[0], RID) as reader:
        assert b"".join(reader.iter_pcm()) == pcm[:3 * SEG]


def test_recover_twice_and_refuse_a_foreign_final(tmp_path: Path, key: tuple[bytes, bytes]) -> None:
    writer = VaultWriter(tmp_path / "a.vault", key[0], key[1], RID, 8000, segment_size=SEG)
    writer.append(pcm_bytes(2 * SEG))
    crashed = (tmp_path / "a.vault.part").read_bytes()
    writer.abort()
    part = tmp_path / "a.vault.part"
    part.write_bytes(crashed)
    first, _ = recover_partial(part, key[0], tmp_path / "a.vault")
    part.write_bytes(crashed)  # as if the first recovery died before removing the .part
    again, _ = recover_partial(part, key[0], tmp_path / "a.vault")
    assert again == first and not part.exists()
    write_vault(tmp_path / "other.vault", new_data_key(), b"x" * 8, rid="rec-other")
    part.write_bytes(crashed)
    with pytest.raises(VaultError, match="refusing to replace"):
        recover_partial(part, key[0], tmp_path / "other.vault")
    assert part.exists()
    part.write_bytes(crashed[:20])
    with pytest.raises(Truncated):
        recover_partial(part, key[0], tmp_path / "b.vault")


CHILD = r"""
import sys, random, time
from storage.vault import VaultWriter
key, key_id = bytes.fromhex(sys.argv[1]), bytes.fromhex(sys.argv[2])
stream = random.Random(int(sys.argv[4])).randbytes(1 << 20)
writer = VaultWriter(sys.argv[3], key, key_id, "rec-crash", 8000, segment_size=4096)
print("ready", flush=True)
rng, pos = random.Random(int(sys.argv[4]) + 1), 0
while pos < len(stream):
    step = rng.randint(1, 9000)
    writer.append(stream[pos:pos + step])
    pos += step
time.sleep(60)
"""


def test_writer_killed_at_random_points_recovers(tmp_path: Path, key: tuple[bytes, bytes]) -> None:
    rng = random.Random(2024)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    stored = 4096 + TAG
    kill_points = set()
    for round_ in range(15):
        final = tmp_path / f"r{round_}.vault"
        seed = rng.randint(0, 1 << 30)
        child = subprocess.Popen([sys.executable, "-c", CHILD, key[0].hex(), key[1].hex(), str(final), str(seed)],
                                 stdout=subprocess.PIPE, env=env, cwd=ROOT)
        assert child.stdout is not None and child.stdout.readline() == b"ready\n"
        time.sleep(rng.uniform(0, 0.12))
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        child.stdout.close()
        part = final.with_name(final.name + ".part")
        header_len = FIXED.size + len("rec-crash") + TAG
        complete = (part.stat().st_size - header_len) // stored
        kill_points.add(complete)
        info, frames = recover_partial(part, key[0], final)
        assert info.partial and frames == complete * 4096 // 4, round_
        stream = random.Random(seed).randbytes(1 << 20)
        with VaultReader(final, key[0], "rec-crash") as reader:
            assert reader.verify() == info
            assert b"".join(reader.iter_pcm()) == stream[:complete * 4096]
    assert len(kill_points) > 5, kill_points  # the kills did land at different points
