"""`recorderd web`: the console served by gunicorn over HTTPS.

Why gunicorn: waitress (the WSGI server first planned) has no TLS and cannot serve an
ssl-wrapped listening socket (its non-blocking channels see SSLWantReadError as a socket error
and drop the connection; tried), and the console must speak HTTPS itself because its cookies
are ``__Host-``/Secure and it runs without a proxy in front. gunicorn terminates TLS with
Python's ssl module (certfile/keyfile, TLS >= 1.2), is a production server, and speaks
sd_notify (READY=1) for systemd Type=notify.

Process model: one arbiter, ONE worker process with ``web.threads`` threads (gthread). One
worker because the catalog has a single writer thread per process by design; threads give the
concurrency (audio streaming, several users). The worker opens the stores itself after the
fork (no threads may cross a fork) and closes them when it exits. The arbiter restarts a worker
that dies. gunicorn's control socket is turned off (nothing but the port is exposed).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication

from recorderd.appliance import Appliance, open_appliance
from recorderd.config import load
from webadmin.app import create_app
from webadmin.context import ConsoleContext
from webadmin.tls import server_context

log = logging.getLogger("recorderd.web")

GRACEFUL_TIMEOUT_S = 20
KEEPALIVE_S = 5


def console_context(appliance: Appliance) -> ConsoleContext:
    return ConsoleContext(catalog=appliance.catalog, audit=appliance.audit, keys=appliance.keys,
                          vault_dir=appliance.vault_dir, config=appliance.config)


def gunicorn_settings(config: dict[str, dict[str, Any]], listen: str) -> dict[str, Any]:
    web = config["web"]
    return {
        "bind": [listen],
        "workers": 1,
        "worker_class": "gthread",
        "threads": web["threads"],
        "certfile": web["tls_cert"],
        "keyfile": web["tls_key"],
        "ssl_context": _ssl_context,
        "graceful_timeout": GRACEFUL_TIMEOUT_S,
        "keepalive": KEEPALIVE_S,
        "control_socket_disable": True,
        "preload_app": False,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": config["daemon"]["log_level"],
        "proc_name": "recorderd-web",
        "forwarded_allow_ips": "",          # no proxy: never trust X-Forwarded-* headers
        "limit_request_line": 8190,
        "limit_request_fields": 100,
        "worker_exit": _worker_exit,
    }


def _ssl_context(conf: Any, default_factory: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
    context = server_context()
    context.load_cert_chain(certfile=conf.certfile, keyfile=conf.keyfile)
    return context


_worker_appliance: list[Appliance] = []


def _worker_exit(_server: Any, _worker: Any) -> None:
    while _worker_appliance:
        _worker_appliance.pop().close()


class ConsoleServer(BaseApplication):
    def __init__(self, config_path: Path, listen: str) -> None:
        self.config_path = config_path
        self.listen = listen
        super().__init__()

    def load_config(self) -> None:
        for key, value in gunicorn_settings(load(self.config_path), self.listen).items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        """In the worker, after the fork: open the stores, build the app."""
        appliance = open_appliance(load(self.config_path), recover=False, warnings=None)   # the master warned
        _worker_appliance.append(appliance)
        return create_app(console_context(appliance))


def serve(config_path: Path, listen: str) -> int:
    """Run until SIGTERM/SIGINT (gunicorn's arbiter handles the signals)."""
    ConsoleServer(config_path, listen).run()
    return 0
