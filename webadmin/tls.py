"""The console's TLS certificate: the configured one, or a self-signed one made at first start.

The self-signed certificate (X.509 v3, RFC 5280) has an ECDSA P-256 key, SHA-256 signature,
subjectAltName with the configured DNS names and the listen address (browsers ignore the CN),
serverAuth extended key usage, and 825 days of validity (the longest Apple platforms accept for
TLS server certificates). The key is written 0600 before the certificate, each atomically, so a
crash leaves either nothing or a usable pair. Browsers show a warning for it until the bank
installs a certificate from its own CA at ``web.tls_cert`` / ``web.tls_key``.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from capture.fsutil import write_atomic

VALIDITY_DAYS = 825


class TlsError(Exception):
    """No usable certificate; the message names the setting and the file."""


def _names(hostnames: list[str], listen_host: str) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.DNSName(h) for h in dict.fromkeys(hostnames)]
    hosts = {listen_host.strip("[]")}
    if listen_host.strip("[]") in ("0.0.0.0", "::", ""):   # nosec B104  # a comparison, not a bind
        hosts = {"127.0.0.1"}
        host = socket.gethostname()
        if host and host not in hostnames:
            names.append(x509.DNSName(host))
    for host in sorted(hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            if host not in hostnames:
                names.append(x509.DNSName(host))
    return names


def make_self_signed(cert_path: Path, key_path: Path, hostnames: list[str], listen_host: str,
                     now: datetime.datetime | None = None) -> None:
    """Write a new key and a self-signed certificate for it."""
    now = now or datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0] if hostnames else "recorderd"),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "recorderd console (self-signed)")])
    cert = (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=VALIDITY_DAYS))
            .add_extension(x509.SubjectAlternativeName(_names(hostnames, listen_host)), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, content_commitment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(key, hashes.SHA256()))
    for path in (cert_path, key_path):
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    write_atomic(key_path, key_pem, 0o600)
    write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def ensure_certificate(web: dict[str, object]) -> bool:
    """Check ``web.tls_cert``/``web.tls_key`` load as a pair; make a self-signed pair first when
    neither exists and ``web.self_signed`` allows. Returns True when one was made."""
    cert_path, key_path = Path(str(web["tls_cert"])), Path(str(web["tls_key"]))
    made = False
    if not cert_path.exists() and not key_path.exists():
        if not web["self_signed"]:
            raise TlsError(f"web.tls_cert: {cert_path} does not exist (and web.self_signed is false)")
        hostnames = [str(h) for h in web["tls_hostnames"]] if isinstance(web["tls_hostnames"], list) else []
        make_self_signed(cert_path, key_path, hostnames, str(web["listen"]).rpartition(":")[0])
        made = True
    for name, path in (("web.tls_cert", cert_path), ("web.tls_key", key_path)):
        if not path.is_file():
            raise TlsError(f"{name}: {path} does not exist (the other file of the pair does)")
    try:
        server_context().load_cert_chain(cert_path, key_path)
    except (ssl.SSLError, OSError) as err:
        raise TlsError(f"web.tls_cert/web.tls_key: {cert_path} and {key_path} are not a usable pair: {err}") from err
    return made


def server_context() -> ssl.SSLContext:
    """TLS 1.2 and newer, Python's (OpenSSL's) secure default ciphers."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context
