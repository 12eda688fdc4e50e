"""Backup targets: what an operator configures, validated, as stored in the catalog (pure).

Three kinds: an S3-compatible bucket (endpoint, bucket, prefix, credentials, Object Lock),
an SFTP server (host, user, directory, private key, pinned host key) and a mounted path.

Secrets are never stored in the catalog. A target holds a *reference* to where its secret is
read when a run starts (:class:`SecretRef`):

* ``file:/etc/recorderd/backup/s3-secret`` — a file private to the service user (0600, owned
  by it, not a symlink; the same checks as the key directory),
* ``credential:NAME`` — a systemd credential (``LoadCredential=NAME:/path`` in the unit; read
  from ``$CREDENTIALS_DIRECTORY/NAME``, visible to that service only),
* ``env:NAME`` — an environment variable (for containers and tests).

Why not encrypt them under the KEK: the catalog and its snapshots go offsite, and the KEK's
life cycle (rotation, destruction to crypto-shred old backups) must not decide whether the
backup itself can still log in. A reference also lets the operator rotate a credential
without touching the catalog.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import asdict, dataclass
from typing import Any, Literal

KINDS = ("s3", "sftp", "path")
LOCK_MODES = ("GOVERNANCE", "COMPLIANCE")
HOST_KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
                  "rsa-sha2-512", "rsa-sha2-256", "ssh-rsa")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CREDENTIAL_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,255}$")
# S3 bucket naming rules (AWS "Bucket naming rules"): 3-63 characters, lower case, digits, dots, dashes
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_FINGERPRINT = re.compile(r"^SHA256:[A-Za-z0-9+/]{43}$")


class TargetError(ValueError):
    """A target setting is invalid; the message names the setting."""


@dataclass(frozen=True, slots=True)
class SecretRef:
    """Where a secret is read from: ``scheme`` is file, env or credential."""

    scheme: Literal["file", "env", "credential"]
    name: str

    def __str__(self) -> str:
        return f"{self.scheme}:{self.name}"

    @staticmethod
    def parse(text: str, setting: str) -> SecretRef:
        scheme, sep, name = text.partition(":")
        if not sep or not name:
            raise TargetError(f"{setting}: {text!r} is not a secret reference "
                              "(file:/path, env:NAME or credential:NAME; the secret itself is never stored)")
        if scheme == "file":
            if not name.startswith("/"):
                raise TargetError(f"{setting}: file:{name} must be an absolute path")
            return SecretRef("file", name)
        if scheme == "env":
            if not _ENV_NAME.fullmatch(name):
                raise TargetError(f"{setting}: env:{name} is not an environment variable name")
            return SecretRef("env", name)
        if scheme == "credential":
            if not _CREDENTIAL_NAME.fullmatch(name) or name in {".", ".."}:
                raise TargetError(f"{setting}: credential:{name} is not a systemd credential name")
            return SecretRef("credential", name)
        raise TargetError(f"{setting}: unknown secret scheme {scheme!r} (file, env or credential)")


@dataclass(frozen=True, slots=True)
class S3Settings:
    bucket: str
    prefix: str = ""
    endpoint: str | None = None          # None: AWS itself
    region: str = "us-east-1"
    access_key_id: str | None = None     # None: boto3's default credential chain
    secret: str | None = None            # a SecretRef, for the secret access key
    addressing: str = "path"             # most S3-compatible servers want path-style URLs
    ca_bundle: str | None = None
    lock_mode: str = "COMPLIANCE"
    lock_days: int = 0                   # 0: no explicit retention (a bucket default still applies)

    def check(self) -> None:
        if not _BUCKET.fullmatch(self.bucket):
            raise TargetError(f"bucket: {self.bucket!r} is not a valid S3 bucket name")
        check_prefix(self.prefix, "prefix")
        if self.endpoint is not None and not re.fullmatch(r"https?://[^\s/]+(/\S*)?", self.endpoint):
            raise TargetError(f"endpoint: {self.endpoint!r} is not an http(s) URL")
        if (self.access_key_id is None) != (self.secret is None):
            raise TargetError("secret: give both --access-key-id and --secret, or neither "
                              "(then boto3's default credential chain is used)")
        if self.secret is not None:
            SecretRef.parse(self.secret, "secret")
        if self.addressing not in ("path", "virtual"):
            raise TargetError(f"addressing: {self.addressing!r} is not path or virtual")
        if self.lock_mode not in LOCK_MODES:
            raise TargetError(f"lock_mode: {self.lock_mode!r} is not GOVERNANCE or COMPLIANCE")
        if not 0 <= self.lock_days <= 36500:
            raise TargetError(f"lock_days: {self.lock_days} is not between 0 and 36500")

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" + (f" at {self.endpoint}" if self.endpoint else "")


@dataclass(frozen=True, slots=True)
class SftpSettings:
    host: str
    user: str
    directory: str
    key: str                             # a SecretRef, for the private key (OpenSSH or PEM)
    host_key_type: str
    host_key_sha256: str                 # the pinned host key, "SHA256:<base64>" as ssh-keygen -l prints
    port: int = 22

    def check(self) -> None:
        if not self.host or any(c.isspace() for c in self.host):
            raise TargetError(f"host: {self.host!r} is not a host name or address")
        if not 0 < self.port < 65536:
            raise TargetError(f"port: {self.port} is not a TCP port")
        if not self.user or any(c.isspace() or c in ":@/" for c in self.user):
            raise TargetError(f"user: {self.user!r} is not a user name")
        if not self.directory.startswith("/"):
            raise TargetError(f"directory: {self.directory!r} must be an absolute path on the server")
        check_prefix(self.directory.strip("/"), "directory")
        SecretRef.parse(self.key, "key")
        if self.host_key_type not in HOST_KEY_TYPES:
            raise TargetError(f"host_key_type: {self.host_key_type!r} is not one of {', '.join(HOST_KEY_TYPES)}")
        if not _FINGERPRINT.fullmatch(self.host_key_sha256):
            raise TargetError(f"host_key_sha256: {self.host_key_sha256!r} is not a SHA256:... fingerprint")

    def describe(self) -> str:
        return f"sftp://{self.user}@{self.host}:{self.port}{self.directory}"


@dataclass(frozen=True, slots=True)
class PathSettings:
    directory: str
    require_mount: bool = True           # refuse to write when nothing is mounted there

    def check(self) -> None:
        if not self.directory.startswith("/"):
            raise TargetError(f"directory: {self.directory!r} must be an absolute path")
        check_prefix(self.directory.strip("/"), "directory")

    def describe(self) -> str:
        return f"{self.directory}" + ("" if self.require_mount else " (mount not required)")


Settings = S3Settings | SftpSettings | PathSettings
_SETTINGS_CLASS: dict[str, type[S3Settings] | type[SftpSettings] | type[PathSettings]] = {
    "s3": S3Settings, "sftp": SftpSettings, "path": PathSettings}


@dataclass(frozen=True, slots=True)
class Target:
    """A configured target as the catalog keeps it."""

    id: int
    name: str
    kind: str
    settings: Settings
    created_at: float
    created_by: str
    updated_at: float

    def describe(self) -> str:
        return self.settings.describe()

    def to_dict(self) -> dict[str, Any]:
        """For listings (--json, the console): no secret here, only references."""
        return {"name": self.name, "kind": self.kind, "where": self.describe(),
                "settings": asdict(self.settings), "created_by": self.created_by}


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise TargetError(f"name: {name!r} must be 1-40 of a-z 0-9 _ - (starting with a letter or digit)")
    return name


def check_prefix(prefix: str, setting: str) -> str:
    """A relative key prefix / directory: no empty, '.' or '..' parts, no backslashes."""
    if prefix and (any(part in ("", ".", "..") for part in prefix.strip("/").split("/")) or "\\" in prefix):
        raise TargetError(f"{setting}: {prefix!r} has an empty, '.' or '..' part")
    return prefix


def settings_from(kind: str, values: dict[str, Any]) -> Settings:
    """Validated settings of a kind from a dict (the catalog's JSON, or the command line's)."""
    if kind not in _SETTINGS_CLASS:
        raise TargetError(f"kind: {kind!r} is not one of {', '.join(KINDS)}")
    cls = _SETTINGS_CLASS[kind]
    try:
        settings = cls(**values)
    except TypeError as err:
        raise TargetError(f"{kind} target: {err}") from None
    settings.check()
    return settings


def settings_json(settings: Settings) -> str:
    return json.dumps(asdict(settings), sort_keys=True)


def settings_from_json(kind: str, text: str) -> Settings:
    try:
        values = json.loads(text)
    except ValueError:
        raise TargetError(f"{kind} target: stored settings are not JSON") from None
    if not isinstance(values, dict):
        raise TargetError(f"{kind} target: stored settings are not an object")
    return settings_from(kind, values)


def host_key_fingerprint(key_blob: bytes) -> str:
    """OpenSSH's fingerprint of a public key blob: ``SHA256:`` + unpadded base64 (ssh-keygen -l)."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(key_blob).digest()).decode().rstrip("=")


def parse_host_key_line(line: str) -> tuple[str, str]:
    """(type, fingerprint) from an OpenSSH public key line (``ssh-ed25519 AAAA... [comment]``,
    e.g. the server's /etc/ssh/ssh_host_ed25519_key.pub or a known_hosts entry without host)."""
    parts = line.split()
    if parts and parts[0] not in HOST_KEY_TYPES and len(parts) >= 3:   # known_hosts: "host type key"
        parts = parts[1:]
    if len(parts) < 2 or parts[0] not in HOST_KEY_TYPES:
        raise TargetError(f"host_key: {line[:40]!r}... is not an OpenSSH public key line "
                          f"(type one of {', '.join(HOST_KEY_TYPES)})")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        raise TargetError("host_key: the key is not base64") from None
    key_type = parts[0]
    if key_type == "ssh-rsa":   # the key blob says ssh-rsa; the signature algorithm is negotiated
        key_type = "rsa-sha2-512"
    return key_type, host_key_fingerprint(blob)
