"""Issue 7, Must show 2 and 3, against real targets: SeaweedFS (S3, Object Lock bucket), OpenSSH
sshd (SFTP, pinned host key) and a mounted tmpfs (path).

For each kind, through the command line: a first backup copies every vault file; after new
recordings an incremental run copies only those; a run killed (SIGKILL) midway is resumed by
the next one, which copies only what the killed one had not finished (the objects it finished
are not rewritten); the target never holds key material; a restore into an empty directory
with the escrowed KEKs gives the same catalog rows and byte-identical WAVs from export-audio;
verify downloads every file and names a corrupted object, and `run --repair` mends it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from capture.fsutil import write_atomic
from recorderd.appliance import open_appliance
from recorderd.config import load
from recorderd.metrics import backup_metrics, render
from retention.backup.records import target_status
from tests.backup.conftest import (
    PASSPHRASE,
    ROOT,
    S3Server,
    SshServer,
    run,
    run_json,
    stdin,
    store_calls,
)

KILL_THROTTLE = 60_000         # bytes/s: each ~100 kB vault file takes ~1.6 s in the killed run
KILL_DEADLINE_S = 30.0


@dataclass
class Kind:
    """One target kind as the test drives and inspects it."""

    add_args: list[str]
    objects: Callable[[], dict[str, bytes]]          # every object on the target: key -> bytes
    identity: Callable[[str], Any]                   # changes when an object is written again
    corrupt: Callable[[str], None]                   # flip a byte of an object, same size
    leftovers: Callable[[], list[str]] = list        # unfinished uploads still on the target
    keys: Callable[[], set[str]] = set               # the vault objects' keys (a cheap listing)


def directory_kind(root: Path, add_args: list[str]) -> Kind:
    def objects() -> dict[str, bytes]:
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*")
                if p.is_file() and not p.name.startswith(".")}

    def identity(key: str) -> Any:
        st = (root / key).stat()
        return st.st_ino, st.st_mtime_ns

    def corrupt(key: str) -> None:
        path = root / key
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))

    def leftovers() -> list[str]:
        return [p.name for p in root.rglob(".*")]

    def keys() -> set[str]:
        return {p.relative_to(root).as_posix() for p in (root / "vault").rglob("*.rdv") if not p.name.startswith(".")}

    return Kind(add_args, objects, identity, corrupt, leftovers, keys)


def s3_kind(server: S3Server, tmp_path: Path, bucket: str) -> Kind:
    client = server.client()
    client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    secret = tmp_path / "s3-secret"
    write_atomic(secret, server.secret_key.encode() + b"\n", mode=0o600)
    prefix = "branch-7"

    def objects() -> dict[str, bytes]:
        found = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
            for obj in page.get("Contents", []):
                found[obj["Key"][len(prefix) + 1:]] = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
        return found

    def identity(key: str) -> Any:
        return client.head_object(Bucket=bucket, Key=f"{prefix}/{key}")["VersionId"]

    def corrupt(key: str) -> None:   # a new version with one byte flipped (the locked one stays)
        data = bytearray(client.get_object(Bucket=bucket, Key=f"{prefix}/{key}")["Body"].read())
        data[len(data) // 2] ^= 0xFF
        client.put_object(Bucket=bucket, Key=f"{prefix}/{key}", Body=bytes(data))

    args = ["s3", "--endpoint", server.endpoint, "--bucket", bucket, "--prefix", prefix,
            "--access-key-id", server.access_key, "--secret", f"file:{secret}", "--lock-days", "2"]
    def leftovers() -> list[str]:   # multipart uploads never completed
        return [u["Key"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]

    def keys() -> set[str]:
        listed = client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/vault/").get("Contents", [])
        return {obj["Key"][len(prefix) + 1:] for obj in listed}

    return Kind(args, objects, identity, corrupt, leftovers, keys)


def sftp_kind(server: SshServer, name: str) -> Kind:
    root = server.directory / name
    args = ["sftp", "--host", "127.0.0.1", "--port", str(server.port), "--user", server.user,
            "--directory", str(root), "--key", f"file:{server.user_key}", "--host-key-file", str(server.host_key_pub)]
    return directory_kind(root, args)


def vault_keys(kind: Kind) -> set[str]:
    return kind.keys()


def key_material(config: Path) -> list[bytes]:
    """Every KEK (raw, hex, base64) and the signing key file of the appliance."""
    import base64
    keys = Path(load(config)["storage"]["key_dir"])
    found: list[bytes] = []
    for path in keys.iterdir():
        data = path.read_bytes()
        if path.name.startswith("kek-"):
            found += [data, data.hex().encode(), base64.b64encode(data)]
        elif path.name.startswith("signing"):
            found.append(data.strip())
    assert len(found) >= 4
    return found


def rows_of(config: Path, capsys: pytest.CaptureFixture) -> list[dict[str, Any]]:
    return run_json(config, capsys, "search", "--limit", "500", "--unmask", "--order", "started_at")["rows"]


def kill_midway(config: Path, kind: Kind, before: int) -> int:
    """Start a throttled run in a process, SIGKILL it once it has copied a new file but not all;
    returns how many vault objects the target holds then."""
    proc = subprocess.Popen([str(ROOT / ".venv" / "bin" / "recorderd"), "--config", str(config), "backup", "run",
                             "--throttle", str(KILL_THROTTLE)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + KILL_DEADLINE_S
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if len(vault_keys(kind)) >= before + 1:
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read() if proc.stderr else ''}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()
    return len(vault_keys(kind))


def scenario(config: Path, kind: Kind, tmp_path: Path, capsys: pytest.CaptureFixture, *, export_all: bool = True) -> None:
    """``export_all``: compare export-audio of every recording (else of two; `recorderd verify` on
    the restored copy still authenticates every vault file against the restored catalog)."""
    calls = store_calls(config, tmp_path, 0, 3)
    added = run_json(config, capsys, "backup", "target", "add", *kind.add_args[:1], "offsite", *kind.add_args[1:])
    assert added["name"] == "offsite"
    probe = run_json(config, capsys, "backup", "target", "test", "offsite")
    assert probe["writable"] and probe["readable"], probe

    # 1. the first run copies every vault file, a catalog snapshot and the manifest
    first = run_json(config, capsys, "backup", "run")[0]
    assert (first["state"], first["files_copied"], first["files_present"]) == ("ok", 3, 0), first
    on_target = kind.objects()
    assert len([k for k in on_target if k.startswith("vault/")]) == 3
    assert first["snapshot"] in on_target and first["manifest"] in on_target
    vault = Path(load(config)["storage"]["vault_dir"])
    for key in (k for k in on_target if k.startswith("vault/")):
        assert on_target[key] == (vault / key.removeprefix("vault/")).read_bytes(), "copied as they are"

    # 2. incremental: only the new recordings
    calls += store_calls(config, tmp_path, 10, 2)
    second = run_json(config, capsys, "backup", "run")[0]
    assert (second["state"], second["files_copied"], second["files_present"]) == ("ok", 2, 3), second

    # 3. killed midway, then resumed: nothing finished is copied again
    calls += store_calls(config, tmp_path, 20, 4)
    present = kill_midway(config, kind, before=5)
    assert 5 + 1 <= present < 9, f"kill came too late or too early: {present} of 9 on the target"
    identities = {key: kind.identity(key) for key in vault_keys(kind)}
    resumed = run_json(config, capsys, "backup", "run")[0]
    assert resumed["state"] == "ok", resumed
    assert (resumed["files_copied"], resumed["files_present"]) == (9 - present, present), resumed
    assert len(resumed["resumed_after"]) == 1
    assert {key: kind.identity(key) for key in identities} == identities, "an object was uploaded twice"
    assert len(vault_keys(kind)) == 9
    assert not kind.leftovers(), "a temporary of the killed run is still there"
    history = run_json(config, capsys, "backup", "status")[0]["runs"]
    killed = next(r for r in history if r["id"] == resumed["resumed_after"][0])
    assert killed["state"] == "interrupted"

    # never key material on the target
    for blob in kind.objects().values():
        for secret in key_material(config):
            assert secret not in blob

    # 4. restore into an empty layout with the escrowed KEKs: same catalog, identical audio
    restored_dir = tmp_path / "restored"
    with stdin(PASSPHRASE + "\n"):
        restored = run_json(config, capsys, "backup", "restore", "--target", "offsite", "--to", str(restored_dir),
                            "--escrow", str(tmp_path / "escrow.json"))
    assert restored["problems"] == [] and restored["recordings"] == 9, restored
    restored_config = Path(restored["config"])
    original_rows = rows_of(config, capsys)
    assert [r["call_id"] for r in original_rows] == sorted(calls, key=lambda c: int(c.split("-")[1].split("@")[0]))
    assert rows_of(restored_config, capsys) == original_rows
    for row in original_rows if export_all else original_rows[::8]:
        ours, theirs = tmp_path / "a.wav", tmp_path / "b.wav"
        assert run(config, "export-audio", row["recording_id"], "--out", str(ours)) == 0
        assert run(restored_config, "export-audio", row["recording_id"], "--out", str(theirs)) == 0
        assert ours.read_bytes() == theirs.read_bytes(), row["recording_id"]
    assert run(restored_config, "verify") == 0
    restored_runs = run_json(restored_config, capsys, "backup", "status")[0]["runs"]
    assert restored_runs and all(r["state"] != "running" for r in restored_runs), "the snapshot's own run is over"

    # 5. verify: every file downloaded and authenticated; a corrupted object is named; --repair mends it
    assert run_json(config, capsys, "backup", "verify", "--sample", "0")[0]["ok"]
    victim = sorted(vault_keys(kind))[4]
    kind.corrupt(victim)
    report = run_json(config, capsys, "backup", "verify", "--sample", "0", expect=1)[0]
    assert [p["object"] for p in report["problems"]] == [victim], report
    assert "does not authenticate" in report["problems"][0]["problem"]
    mended = run_json(config, capsys, "backup", "run", "--repair")[0]
    assert (mended["state"], mended["files_copied"]) == ("ok", 1), mended
    assert run_json(config, capsys, "backup", "verify", "--sample", "0")[0]["ok"]

    # progress and history reach the metrics
    with open_appliance(load(config), recover=False, warnings=None) as app:
        text = render(backup_metrics(target_status(app.catalog)))
    assert 'recorderd_backup_files_copied{target="offsite"} 1' in text
    assert 'recorderd_backup_last_run_failed{target="offsite"} 0' in text
    assert 'recorderd_backup_verify_ok{target="offsite"} 1' in text
    success = float(text.split('recorderd_backup_last_success_timestamp_seconds{target="offsite"} ')[1].split()[0])
    assert abs(success - time.time()) < 120


def test_s3_seaweedfs(seaweed: S3Server, appliance: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    kind = s3_kind(seaweed, tmp_path, "recorderd-locked")
    scenario(appliance, kind, tmp_path, capsys)
    # Object Lock: the bucket has it, so every object carries COMPLIANCE retention for --lock-days
    client = seaweed.client()
    head = client.head_object(Bucket="recorderd-locked", Key="branch-7/" + sorted(vault_keys(kind))[0])
    assert head["ObjectLockMode"] == "COMPLIANCE"
    days = (head["ObjectLockRetainUntilDate"].timestamp() - time.time()) / 86400
    assert 1.9 < days <= 2.0


def test_sftp_sshd(sshd: SshServer, appliance: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    scenario(appliance, sftp_kind(sshd, tmp_path.name), tmp_path, capsys)


def test_mounted_path(tmpfs: Path, appliance: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    scenario(appliance, directory_kind(tmpfs, ["path", "--directory", str(tmpfs)]), tmp_path, capsys, export_all=False)
