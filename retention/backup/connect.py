"""Open a configured target as a :class:`Remote` (the one place that knows every kind)."""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from retention.backup.mounted import PathRemote
from retention.backup.remote import Remote, RemoteError, RemoteOptions
from retention.backup.secrets import SecretError
from retention.backup.targets import PathSettings, S3Settings, SftpSettings, Target


class TargetUnusable(RemoteError):
    """The target cannot be opened (unreachable, refused, secret unreadable, host key wrong)."""


def open_remote(target: Target, options: RemoteOptions, environ: dict[str, str] | None = None) -> Remote:
    """Connect (and for SFTP check the pinned host key, for S3 read the Object Lock state)."""
    settings = target.settings
    # boto3 and paramiko load only for the kind in use: every `recorderd` command imports this
    # module, and the two cost ~0.3 s of start-up
    try:
        if isinstance(settings, S3Settings):
            from retention.backup.s3 import S3Remote
            return S3Remote(target.name, settings, options, environ)
        if isinstance(settings, SftpSettings):
            from retention.backup.sftp import SftpRemote
            return SftpRemote(target.name, settings, options, environ)
        if isinstance(settings, PathSettings):
            return PathRemote(target.name, settings, options)
    except SecretError as err:
        raise TargetUnusable(f"target {target.name}: {err}") from None
    raise TargetUnusable(f"target {target.name}: unknown kind {target.kind!r}")


def remote_options(backup: dict[str, Any]) -> RemoteOptions:
    """From the validated ``[backup]`` settings (recorderd/config.py)."""
    return RemoteOptions(timeout_s=float(backup["timeout_s"]), part_size=int(backup["part_size_mib"]) << 20)


def probe_target(remote: Remote, label: str) -> dict[str, Any]:
    """Write, read back and delete a small object under ``probe/``: what worked, what did not.
    A probe that cannot be deleted (Object Lock retention) is a note, not a problem."""
    key = f"probe/{socket.gethostname()}-{os.getpid()}-{time.time_ns()}.txt"
    data = f"recorderd backup probe ({label})\n".encode()
    result: dict[str, Any] = {"where": remote.where, "object_lock": remote.object_lock, "writable": False,
                              "readable": False, "problems": []}
    try:
        remote.put_bytes(key, data)
        result["writable"] = True
        result["readable"] = remote.get_bytes(key, 4096) == data
        if not result["readable"]:
            result["problems"].append(f"{key}: read back other bytes than written")
    except RemoteError as err:
        result["problems"].append(str(err))
        return result
    try:
        remote.delete(key)
    except RemoteError as err:
        result["notes"] = f"the probe {key} could not be deleted (Object Lock retention?): {err}"
    return result
