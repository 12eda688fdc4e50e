"""What a backup must refuse, with an error that names the problem: a wrong pinned SSH host key,
an unmounted path, a secret file others can read, a wrong S3 secret, a damaged local vault file,
a restore without the KEKs it needs or into a non-empty directory."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from capture.fsutil import write_atomic
from recorderd.cli import main
from recorderd.config import load
from tests.backup.conftest import PASSPHRASE, S3Server, SshServer, run, run_json, stdin, store_calls


def test_a_wrong_pinned_host_key_is_refused_before_login(sshd: SshServer, appliance: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    store_calls(appliance, tmp_path, 0, 1)
    target_dir = sshd.directory / f"mitm-{tmp_path.name}"
    base = ["backup", "target", "add", "sftp", "--host", "127.0.0.1", "--port", str(sshd.port), "--user", sshd.user,
            "--directory", str(target_dir), "--key", f"file:{sshd.user_key}"]
    assert run(appliance, *base[:4], "mitm", *base[4:], "--host-key-file", str(sshd.other_host_key_pub)) == 0
    capsys.readouterr()
    probe = run_json(appliance, capsys, "backup", "target", "test", "mitm", expect=1)
    real = subprocess.run(["ssh-keygen", "-lf", str(sshd.host_key_pub)], capture_output=True, text=True,
                          check=True).stdout.split()[1]
    pinned = subprocess.run(["ssh-keygen", "-lf", str(sshd.other_host_key_pub)], capture_output=True, text=True,
                            check=True).stdout.split()[1]
    assert not probe["reachable"]
    assert "host key mismatch" in probe["problems"][0]
    assert real in probe["problems"][0] and pinned in probe["problems"][0]
    result = run_json(appliance, capsys, "backup", "run", "--target", "mitm", expect=1)[0]
    assert result["state"] == "failed" and "host key mismatch" in result["error"]
    assert not target_dir.exists(), "nothing may be written to a server whose key does not match"
    # scan shows the server's real fingerprint (to compare out of band before pinning)
    capsys.readouterr()
    assert run(appliance, "backup", "target", "scan", "--host", "127.0.0.1", "--port", str(sshd.port)) == 0
    assert real in capsys.readouterr().out
    # pinned by fingerprint, the right key works
    assert run(appliance, *base[:4], "good", *base[4:], "--host-key-sha256", real) == 0
    capsys.readouterr()
    assert run_json(appliance, capsys, "backup", "run", "--target", "good")[0]["files_copied"] == 1


def test_an_unmounted_path_and_an_open_secret_file_are_refused(appliance: Path, tmp_path: Path, seaweed: S3Server,
                                                              capsys: pytest.CaptureFixture) -> None:
    plain = tmp_path / "not-a-mount"
    plain.mkdir()
    assert run(appliance, "backup", "target", "add", "path", "disk", "--directory", str(plain)) == 0
    capsys.readouterr()
    probe = run_json(appliance, capsys, "backup", "target", "test", "disk", expect=1)
    assert "nothing is mounted" in probe["problems"][0]

    secret = tmp_path / "s3-secret"
    secret.write_text(seaweed.secret_key)
    os.chmod(secret, 0o644)
    seaweed.client().create_bucket(Bucket="recorderd-plain")
    add = ["backup", "target", "add", "s3", "open", "--endpoint", seaweed.endpoint, "--bucket", "recorderd-plain",
           "--access-key-id", seaweed.access_key, "--secret", f"file:{secret}"]
    assert run(appliance, *add) == 0
    capsys.readouterr()
    probe = run_json(appliance, capsys, "backup", "target", "test", "open", expect=1)
    assert "mode 0644 is too open" in probe["problems"][0] and str(secret) in probe["problems"][0]
    os.chmod(secret, 0o600)
    assert run_json(appliance, capsys, "backup", "target", "test", "open")["object_lock"].startswith("none")
    write_atomic(secret, b"not-the-secret", mode=0o600)
    probe = run_json(appliance, capsys, "backup", "target", "test", "open", expect=1)
    assert "403" in probe["problems"][0] and "check the access key id and the secret" in probe["problems"][0]
    # the catalog holds the reference, never the secret
    listing = run_json(appliance, capsys, "backup", "target", "list")
    assert next(t for t in listing if t["name"] == "open")["settings"]["secret"] == f"file:{secret}"
    assert seaweed.secret_key.encode() not in Path(load(appliance)["storage"]["catalog"]).read_bytes()


def test_a_damaged_local_vault_file_is_not_copied(tmpfs: Path, appliance: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    store_calls(appliance, tmp_path, 0, 3)
    vault = Path(load(appliance)["storage"]["vault_dir"])
    damaged = sorted(vault.rglob("*.rdv"))[1]
    data = bytearray(damaged.read_bytes())
    data[-100] ^= 0x01
    damaged.write_bytes(bytes(data))
    assert run(appliance, "backup", "target", "add", "path", "usb", "--directory", str(tmpfs)) == 0
    capsys.readouterr()
    result = run_json(appliance, capsys, "backup", "run", expect=1)[0]
    assert (result["state"], result["files_copied"], result["files_failed"]) == ("failed", 2, 1)
    relative = damaged.relative_to(vault).as_posix()
    assert result["failures"][0].startswith(f"vault/{relative}: ") and "does not authenticate" in result["failures"][0]
    assert not (tmpfs / "vault" / relative).exists()
    status = run_json(appliance, capsys, "backup", "status")[0]
    assert status["failures"][0]["object"] == f"vault/{relative}"


def test_restore_refuses_without_the_keks_or_into_a_used_directory(tmpfs: Path, appliance: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    store_calls(appliance, tmp_path, 0, 1)
    assert run(appliance, "backup", "target", "add", "path", "usb", "--directory", str(tmpfs)) == 0
    assert run(appliance, "backup", "run") == 0
    other = tmp_path / "other"
    assert main(["init", str(other / "box")]) == 0
    with stdin(PASSPHRASE + "\n"):
        assert run(other / "box" / "recorderd.toml", "keys", "export-escrow", "--out", str(other / "escrow.json")) == 0
    capsys.readouterr()
    with stdin(PASSPHRASE + "\n"):
        code = run(appliance, "backup", "restore", "--target", "usb", "--to", str(tmp_path / "r1"),
                   "--escrow", str(other / "escrow.json"))
    assert code == 2 and "the backup needs KEK(s)" in capsys.readouterr().err
    assert not (tmp_path / "r1").exists()
    with stdin(PASSPHRASE + "\n"):   # what the KEKs at hand open is restored; the rest is named
        partial = run_json(appliance, capsys, "backup", "restore", "--target", "usb", "--to", str(tmp_path / "r1"),
                           "--escrow", str(other / "escrow.json"), "--skip-missing-keks")
    assert partial["problems"] == [] and len(partial["skipped"]) == 1 and "is not available" in partial["skipped"][0]
    assert not list((tmp_path / "r1" / "vault").rglob("*.rdv"))
    used = tmp_path / "used"
    used.mkdir()
    (used / "something").write_text("x")
    with stdin(PASSPHRASE + "\n"):
        code = run(appliance, "backup", "restore", "--target", "usb", "--to", str(used), "--escrow",
                   str(tmp_path / "escrow.json"))
    assert code == 2 and "is not empty" in capsys.readouterr().err
    with stdin("wrong passphrase!!\n"):
        code = run(appliance, "backup", "restore", "--target", "usb", "--to", str(tmp_path / "r2"), "--escrow",
                   str(tmp_path / "escrow.json"))
    assert code == 2 and "wrong passphrase" in capsys.readouterr().err
