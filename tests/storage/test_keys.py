"""storage.keys: the key directory's permission checks, wrapping, signing, escrow.

Signatures are also checked with the openssl command line (an auditor's open tool).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from storage.keys import (
    ACTIVE_FILE,
    SIGNING_FILE,
    KeyDirError,
    KeyStore,
    UnwrapError,
    data_key_id,
    new_data_key,
    verify_signature,
)

RID = "rec-20250101-000001"


@pytest.fixture()
def store(tmp_path: Path) -> KeyStore:
    return KeyStore.create(tmp_path / "keys")


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def make_foreign_owned(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Give `path` another owner: chown when we are root, else pretend to run as another uid."""
    if os.geteuid() == 0:
        os.chown(path, 65534, 65534)
    else:
        uid = os.geteuid()
        monkeypatch.setattr(os, "geteuid", lambda: uid + 1)


# --- creation and permission checks -------------------------------------------------------

def test_create_lays_out_a_private_directory(tmp_path: Path) -> None:
    store = KeyStore.create(tmp_path / "etc" / "keys")
    directory = tmp_path / "etc" / "keys"
    assert mode_of(directory) == 0o700
    files = sorted(p.name for p in directory.iterdir())
    assert files == sorted([ACTIVE_FILE, SIGNING_FILE, f"kek-{store.active_kek_id}.key"])
    assert all(mode_of(directory / name) == 0o600 for name in files)
    assert len((directory / f"kek-{store.active_kek_id}.key").read_bytes()) == 32
    reopened = KeyStore(directory)
    assert reopened.active_kek_id == store.active_kek_id == reopened.kek_ids()[0]
    assert reopened.signing_public_key() == store.signing_public_key()
    with pytest.raises(KeyDirError, match="already exists"):
        KeyStore.create(directory)


@pytest.mark.parametrize("dir_mode", [0o750, 0o705, 0o777, 0o711])
def test_refuses_an_open_directory(store: KeyStore, dir_mode: int) -> None:
    os.chmod(store.directory, dir_mode)
    with pytest.raises(KeyDirError, match=f"mode {dir_mode:04o} is too open") as caught:
        KeyStore(store.directory)
    assert caught.value.path == store.directory


def test_accepts_stricter_modes(store: KeyStore) -> None:
    kek_file = store.directory / f"kek-{store.active_kek_id}.key"
    os.chmod(kek_file, 0o400)
    os.chmod(store.directory, 0o700)
    assert KeyStore(store.directory).active_kek_id == store.active_kek_id


@pytest.mark.parametrize("file_mode", [0o644, 0o640, 0o604, 0o700, 0o660])
def test_refuses_an_open_key_file(store: KeyStore, file_mode: int) -> None:
    kek_file = store.directory / f"kek-{store.active_kek_id}.key"
    os.chmod(kek_file, file_mode)
    with pytest.raises(KeyDirError, match="too open") as caught:
        KeyStore(store.directory)
    assert caught.value.path == kek_file


def test_refuses_any_readable_stray_file(store: KeyStore) -> None:
    stray = store.directory / "copy-of-kek.bak"
    stray.write_bytes(b"x" * 32)
    os.chmod(stray, 0o644)
    with pytest.raises(KeyDirError, match="copy-of-kek.bak"):
        KeyStore(store.directory)


def test_refuses_foreign_ownership(store: KeyStore, monkeypatch: pytest.MonkeyPatch) -> None:
    make_foreign_owned(store.directory / SIGNING_FILE, monkeypatch)
    with pytest.raises(KeyDirError, match="owned by uid"):
        KeyStore(store.directory)


def test_refuses_symlinks_and_missing_pieces(store: KeyStore, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.key"
    outside.write_bytes(b"k" * 32)
    os.chmod(outside, 0o600)
    link = store.directory / "kek-20990101T000000Z-deadbeef.key"
    link.symlink_to(outside)
    with pytest.raises(KeyDirError, match="symbolic link"):
        KeyStore(store.directory)
    link.unlink()
    (store.directory / ACTIVE_FILE).unlink()
    with pytest.raises(KeyDirError, match="missing"):
        KeyStore(store.directory)
    with pytest.raises(KeyDirError, match="missing"):
        KeyStore(tmp_path / "nowhere")


def test_refuses_a_bad_kek_file(store: KeyStore) -> None:
    kek_file = store.directory / f"kek-{store.active_kek_id}.key"
    kek_file.write_bytes(b"short")
    with pytest.raises(KeyDirError, match="32 bytes"):
        KeyStore(store.directory)


# --- data keys and wrapping -----------------------------------------------------------------

def test_new_data_keys() -> None:
    keys = [new_data_key() for _ in range(20)]
    assert len({key for key, _ in keys}) == 20
    for key, key_id in keys:
        assert len(key) == 32 and len(key_id) == 16 and key_id == data_key_id(key)


def test_wrap_unwrap_round_trip_and_failures(store: KeyStore, tmp_path: Path) -> None:
    data_key, _ = new_data_key()
    kek_id, blob = store.wrap(data_key, RID)
    assert kek_id == store.active_kek_id and data_key not in blob
    assert store.unwrap(kek_id, blob, RID) == data_key
    assert store.wrap(data_key, RID)[1] != blob  # a fresh nonce every time
    with pytest.raises(UnwrapError, match="wrong recording id"):
        store.unwrap(kek_id, blob, "rec-other")
    other = KeyStore.create(tmp_path / "other-keys")
    with pytest.raises(KeyDirError, match="no KEK"):
        other.unwrap(kek_id, blob, RID)
    second = store.new_kek()
    with pytest.raises(UnwrapError, match="wrong KEK"):
        store.unwrap(second, blob, RID)  # a KEK that exists but did not wrap it
    for position in range(len(blob)):
        altered = bytearray(blob)
        altered[position] ^= 0x01
        with pytest.raises(UnwrapError):
            store.unwrap(kek_id, bytes(altered), RID)


def test_rotation_keeps_old_keks_and_rewraps(store: KeyStore) -> None:
    data_key, _ = new_data_key()
    old_id, blob = store.wrap(data_key, RID)
    new_id = store.new_kek()
    assert new_id != old_id and store.active_kek_id == new_id
    assert store.kek_ids() == sorted([old_id, new_id])
    assert mode_of(store.directory / f"kek-{new_id}.key") == 0o600
    rewrapped_id, rewrapped = store.wrap(store.unwrap(old_id, blob, RID), RID)
    assert rewrapped_id == new_id
    reopened = KeyStore(store.directory)
    assert reopened.active_kek_id == new_id
    assert reopened.unwrap(new_id, rewrapped, RID) == reopened.unwrap(old_id, blob, RID) == data_key


def test_a_store_opened_earlier_finds_keks_made_and_forgets_keks_destroyed_since(store: KeyStore) -> None:
    """The console keeps one KeyStore for days: rotation or retention in another process makes
    and destroys KEKs meanwhile."""
    long_running = KeyStore(store.directory)
    data_key, _ = new_data_key()
    old_id = store.active_kek_id
    new_id = store.new_kek()
    _, blob = store.wrap(data_key, RID, new_id)
    assert long_running.unwrap(new_id, blob, RID) == data_key   # reloaded on the unknown id
    assert long_running.active_kek_id == new_id
    (store.directory / f"kek-{new_id}.key").unlink()            # crypto-shredded elsewhere
    (store.directory / "active-kek").write_text(old_id)
    long_running.reload()
    assert new_id not in long_running.kek_ids()
    with pytest.raises(KeyDirError, match="no KEK with id"):
        long_running.unwrap(new_id, blob, RID)


# --- signing ------------------------------------------------------------------------------

def test_sign_and_verify(store: KeyStore, tmp_path: Path) -> None:
    data = b"audit checkpoint 42"
    signature = store.sign(data)
    public = store.signing_public_key()
    assert len(public) == 32 and len(signature) == 64
    assert verify_signature(public, data, signature)
    assert not verify_signature(public, data + b"!", signature)
    assert not verify_signature(public, data, bytes([signature[0] ^ 1]) + signature[1:])
    other = KeyStore.create(tmp_path / "other")
    assert not verify_signature(other.signing_public_key(), data, signature)
    assert not verify_signature(b"short", data, signature)


def test_openssl_verifies_our_signature(store: KeyStore, tmp_path: Path) -> None:
    data, signature = b"export bundle tag manifest", store.sign(b"export bundle tag manifest")
    (tmp_path / "pub.pem").write_text(store.public_key_pem())
    (tmp_path / "data").write_bytes(data)
    (tmp_path / "sig").write_bytes(signature)
    command = ["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(tmp_path / "pub.pem"), "-rawin",
               "-in", str(tmp_path / "data"), "-sigfile", str(tmp_path / "sig")]
    assert subprocess.run(command, capture_output=True).returncode == 0
    (tmp_path / "data").write_bytes(data + b"x")
    assert subprocess.run(command, capture_output=True).returncode != 0


# --- escrow -------------------------------------------------------------------------------

def test_escrow_round_trip_and_refusals(store: KeyStore) -> None:
    store.new_kek()
    keks = {kek_id: (store.directory / f"kek-{kek_id}.key").read_bytes() for kek_id in store.kek_ids()}
    blob = store.export_escrow("correct horse battery staple")
    for kek in keks.values():
        assert kek.hex().encode() not in blob and kek not in blob
    assert KeyStore.import_escrow(blob, "correct horse battery staple") == keks
    with pytest.raises(ValueError, match="wrong passphrase"):
        KeyStore.import_escrow(blob, "correct horse battery stapler")
    envelope = json.loads(blob)
    envelope["nonce"] = envelope["nonce"][::-1]
    with pytest.raises(ValueError, match="wrong passphrase, or the envelope was altered"):
        KeyStore.import_escrow(json.dumps(envelope).encode(), "correct horse battery staple")
    envelope = json.loads(blob)
    envelope["kdf"]["n"] = 1 << 30
    with pytest.raises(ValueError, match="out of range"):
        KeyStore.import_escrow(json.dumps(envelope).encode(), "correct horse battery staple")
    with pytest.raises(ValueError, match="not JSON"):
        KeyStore.import_escrow(b"\x00garbage", "x")
    with pytest.raises(ValueError, match="empty"):
        store.export_escrow("")
