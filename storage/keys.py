"""Keys: per-recording data keys, key-encryption keys (KEKs), the signing key, escrow.

Every recording is encrypted under its own random 32-byte data key. The data key is stored
only *wrapped* (AES-256-GCM under a KEK) in the catalog; destroying the wrapped key, or the
KEK, makes every copy of the recording unreadable (crypto-shredding). KEKs and the Ed25519
signing key live in a key directory that only its owner may read:

    <dir>/                  mode 0700 (or stricter), owned by the running uid
      kek-<id>.key          32 raw bytes, mode 0600 (or stricter)
      active-kek            the id of the KEK that wraps new data keys
      signing-ed25519.pem   PKCS#8 private key (audit checkpoints, export bundles)

KEK ids look like ``20250101T120000Z-1a2b3c4d`` (creation time in UTC, then random), so they
sort by age and never contain path characters.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import stat
import struct
import unicodedata
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from Crypto.Cipher import AES  # nosec B413  # pycryptodome (maintained, pinned in pyproject.toml), not the abandoned PyCrypto it shares the Crypto namespace with
from Crypto.Protocol.KDF import scrypt  # nosec B413  # pycryptodome (maintained, pinned in pyproject.toml), not the abandoned PyCrypto it shares the Crypto namespace with
from Crypto.PublicKey import ECC  # nosec B413  # pycryptodome (maintained, pinned in pyproject.toml), not the abandoned PyCrypto it shares the Crypto namespace with
from Crypto.Signature import eddsa  # nosec B413  # pycryptodome (maintained, pinned in pyproject.toml), not the abandoned PyCrypto it shares the Crypto namespace with

from capture.fsutil import write_atomic

DATA_KEY_BYTES = 32
KEY_ID_BYTES = 16
KEK_BYTES = 32
GCM_NONCE_BYTES = 12
GCM_TAG_BYTES = 16

ACTIVE_FILE = "active-kek"
SIGNING_FILE = "signing-ed25519.pem"
KEK_FILE = re.compile(r"^kek-(?P<id>\d{8}T\d{6}Z-[0-9a-f]{8})\.key$")

WRAP_VERSION = 1
WRAPPED_BYTES = 1 + GCM_NONCE_BYTES + DATA_KEY_BYTES + GCM_TAG_BYTES
WRAP_AAD_LABEL = b"recorderd data key v1\x00"
KEY_ID_LABEL = b"recorderd vault key id v1"

ESCROW_FORMAT = "recorderd-kek-escrow"
ESCROW_VERSION = 1
# scrypt cost (RFC 7914): N=2^17, r=8 needs 128 MiB and about half a second; limits on
# import stop a crafted envelope from asking for gigabytes.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 17, 8, 1
SCRYPT_MAX_N, SCRYPT_MAX_R, SCRYPT_MAX_P = 1 << 20, 16, 4


class KeyDirError(Exception):
    """The key directory (or a file in it) is missing, unreadable or too open."""

    def __init__(self, path: Path | str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = Path(path)
        self.problem = problem


class UnwrapError(ValueError):
    """A wrapped data key does not open: wrong KEK, wrong recording id or an altered blob."""


# --- data keys --------------------------------------------------------------------------

def data_key_id(data_key: bytes) -> bytes:
    """The 16-byte id of a data key: HMAC-SHA256(key, label), truncated.

    A pseudo-random function of the key, so it reveals nothing about it, yet a reader can
    tell "this is not the key of this vault" (WrongKey) from "the header was altered"
    (HeaderTampered) by recomputing it.
    """
    _check_data_key(data_key)
    return hmac.new(data_key, KEY_ID_LABEL, hashlib.sha256).digest()[:KEY_ID_BYTES]


def new_data_key() -> tuple[bytes, bytes]:
    """A fresh data key from the OS RNG and its key id (see `data_key_id`)."""
    key = secrets.token_bytes(DATA_KEY_BYTES)
    return key, data_key_id(key)


def _check_data_key(data_key: bytes) -> None:
    if not isinstance(data_key, bytes | bytearray) or len(data_key) != DATA_KEY_BYTES:
        raise ValueError(f"a data key is {DATA_KEY_BYTES} bytes")


def wrap_aad(kek_id: str, recording_id: str) -> bytes:
    """Associated data of a wrapped key: label || len(kek_id) u8 || kek_id || recording_id.

    The length prefix keeps (kek_id, recording_id) pairs unambiguous.
    """
    kek = kek_id.encode()
    return WRAP_AAD_LABEL + struct.pack("B", len(kek)) + kek + recording_id.encode()


def seal_data_key(kek: bytes, kek_id: str, data_key: bytes, recording_id: str, nonce: bytes) -> bytes:
    """Pure: the wrapped-key blob, version u8 || nonce (12) || ciphertext (32) || tag (16)."""
    _check_data_key(data_key)
    cipher = AES.new(kek, AES.MODE_GCM, nonce=nonce)
    cipher.update(wrap_aad(kek_id, recording_id))
    ciphertext, tag = cipher.encrypt_and_digest(bytes(data_key))
    return bytes([WRAP_VERSION]) + nonce + ciphertext + tag


def open_data_key(kek: bytes, kek_id: str, blob: bytes, recording_id: str) -> bytes:
    """Pure: the data key inside `blob`, or UnwrapError saying why not."""
    if len(blob) != WRAPPED_BYTES or blob[0] != WRAP_VERSION:
        raise UnwrapError(f"not a wrapped data key (expected {WRAPPED_BYTES} bytes, version {WRAP_VERSION})")
    nonce = blob[1:1 + GCM_NONCE_BYTES]
    ciphertext = blob[1 + GCM_NONCE_BYTES:1 + GCM_NONCE_BYTES + DATA_KEY_BYTES]
    tag = blob[-GCM_TAG_BYTES:]
    cipher = AES.new(kek, AES.MODE_GCM, nonce=nonce)
    cipher.update(wrap_aad(kek_id, recording_id))
    try:
        return cipher.decrypt_and_verify(ciphertext, tag)
    except ValueError:
        raise UnwrapError(
            f"the wrapped data key does not open under KEK {kek_id} for recording {recording_id!r} "
            "(wrong KEK, wrong recording id, or the blob was altered)") from None


# --- signatures -------------------------------------------------------------------------

def verify_signature(public_key: bytes, data: bytes, signature: bytes) -> bool:
    """True when `signature` is a valid Ed25519 (RFC 8032) signature of `data` by `public_key` (raw 32 bytes)."""
    try:
        key = eddsa.import_public_key(bytes(public_key))
        eddsa.new(key, "rfc8032").verify(data, signature)
    except ValueError:
        return False
    return True


# --- escrow -----------------------------------------------------------------------------

def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: Any, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (TypeError, ValueError):
        raise ValueError(f"escrow: {what} is not base64") from None


def _passphrase_bytes(passphrase: str) -> bytes:
    """NFC-normalised UTF-8, so the same typed passphrase gives the same bytes everywhere."""
    return unicodedata.normalize("NFC", passphrase).encode()


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def seal_escrow(keks: dict[str, bytes], active: str, passphrase: str, salt: bytes, nonce: bytes,
                n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> bytes:
    """Pure: the escrow envelope (JSON) holding `keks`, sealed under scrypt(passphrase)."""
    if not passphrase:
        raise ValueError("escrow: the passphrase is empty")
    head = {"format": ESCROW_FORMAT, "version": ESCROW_VERSION,
            "kdf": {"name": "scrypt", "salt": _b64(salt), "n": n, "r": r, "p": p},
            "cipher": "AES-256-GCM", "nonce": _b64(nonce)}
    key = scrypt(_passphrase_bytes(passphrase), salt, 32, N=n, r=r, p=p)
    cipher = AES.new(key, AES.MODE_GCM, nonce=nonce)
    cipher.update(_canonical(head))  # the envelope's own fields are authenticated too
    body = _canonical({"active": active, "keks": {kid: kek.hex() for kid, kek in sorted(keks.items())}})
    ciphertext, tag = cipher.encrypt_and_digest(body)
    return json.dumps({**head, "ciphertext": _b64(ciphertext + tag)}, indent=1).encode() + b"\n"


def _escrow_int(kdf: dict[str, Any], name: str) -> int:
    value = kdf.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"escrow: scrypt parameter {name} is not an integer")
    return value


def _escrow_head(envelope: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Validate the envelope's structure; returns (head, kdf)."""
    if not isinstance(envelope, dict) or envelope.get("format") != ESCROW_FORMAT:
        raise ValueError("escrow: not a recorderd KEK escrow envelope")
    if envelope.get("version") != ESCROW_VERSION:
        raise ValueError(f"escrow: unsupported version {envelope.get('version')!r}")
    kdf = envelope.get("kdf")
    if not isinstance(kdf, dict) or kdf.get("name") != "scrypt":
        raise ValueError("escrow: unsupported key derivation")
    n, r, p = (_escrow_int(kdf, name) for name in ("n", "r", "p"))
    if not (1 < n <= SCRYPT_MAX_N and n & (n - 1) == 0 and 0 < r <= SCRYPT_MAX_R and 0 < p <= SCRYPT_MAX_P):
        raise ValueError(f"escrow: scrypt parameters out of range (n={n}, r={r}, p={p})")
    head = {k: envelope[k] for k in ("format", "version", "kdf", "cipher", "nonce") if k in envelope}
    return head, kdf


def open_escrow(blob: bytes, passphrase: str) -> dict[str, bytes]:
    """Pure: the KEKs inside an escrow envelope; ValueError naming what is wrong."""
    try:
        envelope = json.loads(blob)
    except (ValueError, UnicodeDecodeError):
        raise ValueError("escrow: not JSON") from None
    head, kdf = _escrow_head(envelope)
    salt = _unb64(kdf.get("salt"), "salt")
    nonce = _unb64(envelope.get("nonce"), "nonce")
    sealed = _unb64(envelope.get("ciphertext"), "ciphertext")
    if len(sealed) < GCM_TAG_BYTES or not nonce:
        raise ValueError("escrow: ciphertext or nonce too short")
    key = scrypt(_passphrase_bytes(passphrase), salt, 32, N=kdf["n"], r=kdf["r"], p=kdf["p"])
    cipher = AES.new(key, AES.MODE_GCM, nonce=nonce)
    cipher.update(_canonical(head))
    try:
        body = cipher.decrypt_and_verify(sealed[:-GCM_TAG_BYTES], sealed[-GCM_TAG_BYTES:])
    except ValueError:
        raise ValueError("escrow: wrong passphrase, or the envelope was altered") from None
    return _escrow_keks(body)


def _escrow_keks(body: bytes) -> dict[str, bytes]:
    """The authenticated inner document: {"active": id, "keks": {id: hex}}."""
    try:
        keks = json.loads(body)["keks"]
        found = {str(kid): bytes.fromhex(kek) for kid, kek in keks.items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ValueError("escrow: the sealed document is malformed") from None
    if any(len(kek) != KEK_BYTES for kek in found.values()):
        raise ValueError(f"escrow: a KEK is not {KEK_BYTES} bytes")
    return found


# --- the key directory ------------------------------------------------------------------

def _too_open(mode: int, allowed: int) -> bool:
    return bool(stat.S_IMODE(mode) & ~allowed)


def check_entry(path: Path, is_dir: bool) -> os.stat_result:
    """lstat `path` and refuse it unless it is ours, of the right type and not group/other accessible."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise KeyDirError(path, "missing") from None
    except PermissionError:
        raise KeyDirError(path, "permission denied (run as the key directory's owner)") from None
    if stat.S_ISLNK(st.st_mode):
        raise KeyDirError(path, "is a symbolic link; refusing it")
    if is_dir and not stat.S_ISDIR(st.st_mode):
        raise KeyDirError(path, "is not a directory")
    if not is_dir and not stat.S_ISREG(st.st_mode):
        raise KeyDirError(path, "is not a regular file")
    if st.st_uid != os.geteuid():
        raise KeyDirError(path, f"owned by uid {st.st_uid}, not by the running uid {os.geteuid()}")
    allowed = 0o700 if is_dir else 0o600
    if _too_open(st.st_mode, allowed):
        raise KeyDirError(path, f"mode {stat.S_IMODE(st.st_mode):04o} is too open (need {allowed:04o} or stricter)")
    return st


def check_key_dir(directory: Path) -> list[Path]:
    """Refuse a key directory that is not private; returns its files (all checked)."""
    check_entry(directory, is_dir=True)
    try:
        entries = sorted(directory.iterdir())
    except PermissionError:
        raise KeyDirError(directory, "permission denied (run as the key directory's owner)") from None
    for entry in entries:
        check_entry(entry, is_dir=False)
    return entries


def read_private(path: Path) -> bytes:
    """Read a checked key file; a read failure becomes KeyDirError naming it."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise KeyDirError(path, f"cannot read ({exc.strerror})") from None


def new_kek_id(now: datetime | None = None) -> str:
    """A KEK id: creation time (UTC) and 32 random bits."""
    when = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    return f"{when}-{secrets.token_hex(4)}"


class KeyStore:
    """The KEKs and the signing key of one key directory (checked when opened)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        files = check_key_dir(self.directory)
        self._keks = self._load_keks(files)
        self.active_kek_id = self._load_active()
        self._signing_key = self._load_signing_key()

    # loading
    def _load_keks(self, files: list[Path]) -> dict[str, bytes]:
        keks: dict[str, bytes] = {}
        for path in files:
            match = KEK_FILE.match(path.name)
            if not match:
                continue
            kek = read_private(path)
            if len(kek) != KEK_BYTES:
                raise KeyDirError(path, f"a KEK file holds {KEK_BYTES} bytes, this one {len(kek)}")
            keks[match["id"]] = kek
        return keks

    def _load_active(self) -> str:
        path = self.directory / ACTIVE_FILE
        if not path.exists():
            raise KeyDirError(path, "missing (which KEK is active?)")
        kek_id = read_private(path).decode(errors="replace").strip()
        if kek_id not in self._keks:
            raise KeyDirError(path, f"names KEK {kek_id!r}, which is not in the directory")
        return kek_id

    def _load_signing_key(self) -> ECC.EccKey:
        path = self.directory / SIGNING_FILE
        if not path.exists():
            raise KeyDirError(path, "missing (the Ed25519 signing key)")
        try:
            key = ECC.import_key(read_private(path))
        except (ValueError, IndexError, TypeError):
            raise KeyDirError(path, "not a valid private key") from None
        if key.curve != "Ed25519" or not key.has_private():
            raise KeyDirError(path, "not an Ed25519 private key")
        return key

    # creation
    @classmethod
    def create(cls, directory: Path) -> KeyStore:
        """Make the key directory (0700) with a first KEK and an Ed25519 signing key."""
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:
            if not directory.is_dir() or any(directory.iterdir()):
                raise KeyDirError(directory, "already exists and is not an empty directory") from None
        os.chmod(directory, 0o700)  # mkdir's mode is filtered by the umask
        signing = ECC.generate(curve="ed25519")
        write_atomic(directory / SIGNING_FILE, signing.export_key(format="PEM").encode(), mode=0o600)
        cls._write_kek(directory, new_kek_id(), secrets.token_bytes(KEK_BYTES))
        return cls(directory)

    @staticmethod
    def _write_kek(directory: Path, kek_id: str, kek: bytes) -> None:
        """The KEK file first (durable), then the active pointer: a crash leaves at most an unused KEK."""
        write_atomic(directory / f"kek-{kek_id}.key", kek, mode=0o600)
        write_atomic(directory / ACTIVE_FILE, kek_id.encode() + b"\n", mode=0o600)

    def new_kek(self) -> str:
        """A new random KEK, which becomes the active one; returns its id."""
        kek_id = new_kek_id()
        while kek_id in self._keks:
            kek_id = new_kek_id()
        kek = secrets.token_bytes(KEK_BYTES)
        self._write_kek(self.directory, kek_id, kek)
        self._keks[kek_id] = kek
        self.active_kek_id = kek_id
        return kek_id

    def kek_ids(self) -> list[str]:
        """Every KEK id, oldest first."""
        return sorted(self._keks)

    def reload(self) -> None:
        """Read the key directory again: KEKs made (rotation, retention's month KEKs) or
        destroyed (crypto-shredding) by another process since this store was opened."""
        self._keks = self._load_keks(check_key_dir(self.directory))
        self.active_kek_id = self._load_active()

    def _kek(self, kek_id: str) -> bytes:
        if kek_id not in self._keks:
            self.reload()   # a long-running console or daemon meets a KEK made after it started
        if kek_id not in self._keks:
            raise KeyDirError(self.directory / f"kek-{kek_id}.key", f"no KEK with id {kek_id!r} in the key directory")
        return self._keks[kek_id]

    # wrapping
    def wrap(self, data_key: bytes, recording_id: str, kek_id: str | None = None) -> tuple[str, bytes]:
        """Wrap `data_key` for `recording_id` under a KEK (the active one by default)."""
        kek_id = kek_id or self.active_kek_id
        blob = seal_data_key(self._kek(kek_id), kek_id, data_key, recording_id, secrets.token_bytes(GCM_NONCE_BYTES))
        return kek_id, blob

    def unwrap(self, kek_id: str, blob: bytes, recording_id: str) -> bytes:
        """The data key in `blob`: KeyDirError if the KEK is not here, UnwrapError if it does not open."""
        return open_data_key(self._kek(kek_id), kek_id, blob, recording_id)

    # signing
    def signing_public_key(self) -> bytes:
        """The raw 32-byte Ed25519 public key."""
        return self._signing_key.public_key().export_key(format="raw")

    def public_key_pem(self) -> str:
        """The public key as PEM SubjectPublicKeyInfo (readable by `openssl pkey -pubin`)."""
        return self._signing_key.public_key().export_key(format="PEM") + "\n"

    def sign(self, data: bytes) -> bytes:
        """A 64-byte Ed25519 signature (RFC 8032, pure EdDSA) of `data`."""
        return eddsa.new(self._signing_key, "rfc8032").sign(data)

    # escrow
    def export_escrow(self, passphrase: str) -> bytes:
        """Every KEK, sealed under scrypt(passphrase) + AES-256-GCM, as a JSON envelope."""
        return seal_escrow(self._keks, self.active_kek_id, passphrase,
                           salt=secrets.token_bytes(16), nonce=secrets.token_bytes(GCM_NONCE_BYTES))

    @staticmethod
    def import_escrow(blob: bytes, passphrase: str) -> dict[str, bytes]:
        """The KEKs of an escrow envelope, by id; ValueError on a wrong passphrase or bad envelope."""
        return open_escrow(blob, passphrase)
