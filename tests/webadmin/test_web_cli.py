"""`recorderd user ...` and `recorderd web`: the first admin, user administration from the shell,
and the real server over HTTPS (gunicorn, self-signed certificate made at first start)."""

from __future__ import annotations

import io
import json
import re
import socket
import ssl
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from recorderd.cli import main
from recorderd.config import load
from storage.audit import iter_entries
from webadmin.tls import server_context
from webadmin.users_store import TOTP_ISSUER


def run(config: Path, *argv: str, stdin: str | None = None, monkeypatch: pytest.MonkeyPatch | None = None) -> int:
    if stdin is not None and monkeypatch is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    return main(["--config", str(config), *argv])


@pytest.fixture
def box(tmp_path: Path) -> Path:
    assert main(["init", str(tmp_path / "box"), "--web-port", "18999"]) == 0
    return tmp_path / "box" / "recorderd.toml"


def test_first_admin_from_the_command_line(box: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert load(box)["web"]["listen"] == "127.0.0.1:18999"
    assert run(box, "user", "list", "--json") == 0
    assert json.loads(capsys.readouterr().out) == [], "no default account"
    # the password comes only from stdin
    assert run(box, "user", "add", "root", "--role", "admin") == 2
    assert run(box, "user", "add", "root", "--role", "admin", "--password-stdin",
               stdin="an admin password\n", monkeypatch=monkeypatch) == 0
    out = capsys.readouterr().out
    uri = re.search(r"^otpauth://totp/\S+$", out, re.M)
    assert uri and f"issuer={TOTP_ISSUER}" in uri.group(0) and "secret=" in uri.group(0)
    assert run(box, "user", "add", "ann", "--role", "agent", "--agent-id", "7001", "--password-stdin",
               stdin="an agent password\n", monkeypatch=monkeypatch) == 0
    assert "otpauth://" not in capsys.readouterr().out, "TOTP is optional for agents"
    assert run(box, "user", "add", "ann", "--role", "qa", "--password-stdin",
               stdin="another password\n", monkeypatch=monkeypatch) == 1
    assert "exists already" in capsys.readouterr().err
    assert run(box, "user", "add", "bob", "--role", "qa", "--password-stdin", stdin="short\n",
               monkeypatch=monkeypatch) == 1
    assert run(box, "user", "add", "bob", "--role", "boss", "--password-stdin", stdin="x" * 20 + "\n",
               monkeypatch=monkeypatch) == 2
    assert run(box, "user", "set-role", "ann", "auditor") == 0
    assert "otpauth://totp/" in capsys.readouterr().out, "auditors need a second factor: one is made"
    assert run(box, "user", "disable", "ann") == 0
    assert run(box, "user", "disable", "nobody") == 1
    capsys.readouterr()
    assert run(box, "user", "list", "--json") == 0
    users = {u["username"]: u for u in json.loads(capsys.readouterr().out)}
    assert set(users) == {"root", "ann"}
    assert users["ann"]["role"] == "auditor" and users["ann"]["disabled"] and users["ann"]["totp"]
    assert "password_hash" not in users["ann"] and "totp_secret" not in users["ann"]
    from recorderd.appliance import open_appliance
    with open_appliance(load(box), recover=False, warnings=None) as app, app.catalog.reader() as reader:
        changes = [(e.object, e.outcome, e.reason) for e in iter_entries(reader, action="user.manage")]
    assert changes == [("user:root", "ok", "created with role admin"), ("user:ann", "ok", "created with role agent"),
                       ("user:ann", "failed", "created with role qa: user 'ann' exists already"),
                       ("user:bob", "failed", "created with role qa: the password must have at least 12 characters"),
                       ("user:ann", "ok", "role set to auditor"), ("user:ann", "ok", "disabled"),
                       ("user:nobody", "failed", "disabled: no user 'nobody'")]


def test_web_refuses_a_bad_listen_or_a_missing_certificate(box: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(box, "web", "--listen", "localhost") == 2
    assert "web.listen" in capsys.readouterr().err
    box.write_text(box.read_text().replace("self_signed = true", "self_signed = false"))
    assert run(box, "web") == 2
    assert "web.tls_cert" in capsys.readouterr().err


# -- the real server ---------------------------------------------------------------------------------

def _host_port(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("https://").split(":")
    return host, int(port)


def _tls_client(maximum: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if maximum is not None:
        context.maximum_version = maximum
    return context


def _get(url: str, path: str) -> tuple[str, dict[str, str], bytes]:
    host, port = _host_port(url)
    with socket.create_connection((host, port), timeout=10) as raw, \
            _tls_client().wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    head, _sep, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _sep, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return lines[0], headers, body


def test_the_server_speaks_https_only_with_a_fresh_self_signed_certificate(live_server: str,
                                                                           appliance_config: Path) -> None:
    status, headers, body = _get(live_server, "/login")
    assert status == "HTTP/1.1 200 OK"
    assert headers["strict-transport-security"].startswith("max-age=")
    assert "script-src 'self'" in headers["content-security-policy"]
    assert b'name="csrf_token"' in body
    web = load(appliance_config)["web"]
    cert_path, key_path = Path(web["tls_cert"]), Path(web["tls_key"])
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    # the certificate served is that file
    host, port = _host_port(live_server)
    served = ssl.get_server_certificate((host, port))
    assert ssl.PEM_cert_to_DER_cert(served) == ssl.PEM_cert_to_DER_cert(cert_path.read_text())


def test_plain_http_is_refused_and_tls_is_1_2_or_newer(live_server: str) -> None:
    host, port = _host_port(live_server)
    with socket.create_connection((host, port), timeout=10) as raw:
        raw.sendall(b"GET /login HTTP/1.1\r\nHost: localhost\r\n\r\n")
        reply: Any = raw.recv(4096)
    assert b"csrf_token" not in reply, "no page over plain HTTP"
    for newest, expected in ((ssl.TLSVersion.TLSv1_2, "TLSv1.2"), (None, "TLSv1.3")):
        with socket.create_connection((host, port), timeout=10) as raw, \
                _tls_client(newest).wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.version() == expected
    # older versions: the server's context refuses them (this client's OpenSSL cannot even offer them)
    assert server_context().minimum_version == ssl.TLSVersion.TLSv1_2
