"""`recorderd web`: the console (gunicorn over HTTPS; recorderd/webserver.py)."""

from __future__ import annotations

import argparse
import hashlib
import re
import ssl
import sys
from pathlib import Path

from recorderd.appliance import cli_actor
from recorderd.commands.common import UsageError
from recorderd.commands.store import ROLE, appliance_from
from recorderd.config import ConfigError, load
from webadmin.tls import TlsError, ensure_certificate
from webadmin.users_store import list_users

LISTEN = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[^\s:\[\]]+):(\d{1,5})$")


def register(sub: argparse._SubParsersAction) -> None:
    web = sub.add_parser("web", help="the web console over HTTPS (a self-signed certificate at first start "
                                     "unless web.tls_cert is configured)")
    web.add_argument("--listen", help="HOST:PORT to serve on (default: web.listen)")
    web.set_defaults(run=cmd_web)


def check_listen(listen: str) -> str:
    match = LISTEN.match(listen)
    if not match or not 1 <= int(match.group(2)) <= 65535:
        raise UsageError(f"web.listen: {listen!r} is not HOST:PORT (e.g. 127.0.0.1:8443 or [::1]:8443)")
    return listen


def certificate_fingerprint(path: Path) -> str:
    der = ssl.PEM_cert_to_DER_cert(path.read_text())
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def cmd_web(args: argparse.Namespace) -> int:
    from recorderd.webserver import serve  # gunicorn is only loaded by this command

    config_path = Path(args.config)
    try:
        config = load(config_path)
    except ConfigError as err:
        raise UsageError(str(err)) from err
    listen = check_listen(args.listen or config["web"]["listen"])
    config["web"]["listen"] = listen
    try:
        made = ensure_certificate(config["web"])
    except TlsError as err:
        raise UsageError(str(err)) from err
    cert = Path(config["web"]["tls_cert"])
    if made:
        print(f"recorderd web: made a self-signed certificate {cert}", file=sys.stderr)
    print(f"recorderd web: https://{listen}/ certificate SHA-256 {certificate_fingerprint(cert)}", file=sys.stderr)
    with appliance_from(args, recover=False) as app:   # the stores open (checked) before serving
        admins = [u for u in list_users(app.catalog, "admin") if not u.disabled]
        app.audit.append(cli_actor(), ROLE, "web.start", listen, "ok",
                         detail={"self_signed_made": made, "admins": len(admins)})
    if not admins:
        print("recorderd web: no admin can log in yet: add one with "
              "`recorderd user add NAME --role admin --password-stdin`", file=sys.stderr)
    return serve(config_path, listen)
