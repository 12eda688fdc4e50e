"""Prometheus metrics: text exposition format 0.0.4 over HTTP on a localhost port.

The daemon supplies a `collect` callable returning the current figures (active and total calls,
packets, kernel drops, parse errors by reason, disk free bytes, oldest unfinalised call age);
`MetricsServer` renders them on every GET /metrics. Bind it to a loopback address: the
endpoint has no authentication.

Format reference: Prometheus "Exposition formats", text format version 0.0.4.
"""

from __future__ import annotations

import logging
import math
import re
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal
from urllib.parse import urlsplit

from retention.backup.records import TargetStatus

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
METRICS_PATH = "/metrics"
_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")

MetricType = Literal["counter", "gauge"]
Sample = tuple[dict[str, str], float]


@dataclass(slots=True)
class Metric:
    """One metric family: a name, its HELP text, its TYPE and its samples (labels, value)."""
    name: str
    help: str
    type: MetricType
    samples: list[Sample] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not _METRIC_NAME.fullmatch(self.name):
            raise ValueError(f"invalid metric name {self.name!r}")
        if self.type not in ("counter", "gauge"):
            raise ValueError(f"{self.name}: type must be counter or gauge, not {self.type!r}")
        for labels, _ in self.samples:
            for label in labels:
                # label names starting with __ are reserved for Prometheus itself
                if not _LABEL_NAME.fullmatch(label) or label.startswith("__"):
                    raise ValueError(f"{self.name}: invalid label name {label!r}")


def escape_help(text: str) -> str:
    """HELP lines escape backslash and line feed."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def escape_label_value(text: str) -> str:
    """Label values escape backslash, double quote and line feed."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def format_value(value: float) -> str:
    """Integers as integers, floats in Python's shortest round-trip form; NaN, +Inf, -Inf as
    the format spells them."""
    if isinstance(value, int):
        return str(int(value))
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _sample_line(name: str, labels: dict[str, str], value: float) -> str:
    if not labels:
        return f"{name} {format_value(value)}\n"
    inner = ",".join(f'{key}="{escape_label_value(str(val))}"' for key, val in labels.items())
    return f"{name}{{{inner}}} {format_value(value)}\n"


def render(metrics: list[Metric]) -> str:
    """The exposition text: per family a HELP line, a TYPE line and its samples."""
    seen: set[str] = set()
    lines: list[str] = []
    for metric in metrics:
        if metric.name in seen:
            raise ValueError(f"metric {metric.name} appears twice")  # the format forbids it
        seen.add(metric.name)
        lines.append(f"# HELP {metric.name} {escape_help(metric.help)}\n")
        lines.append(f"# TYPE {metric.name} {metric.type}\n")
        lines.extend(_sample_line(metric.name, labels, value) for labels, value in metric.samples)
    return "".join(lines)


class _Handler(BaseHTTPRequestHandler):
    """GET /metrics only; anything else is 404 (other path) or 405 (other method)."""
    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = 30  # seconds an idle keep-alive connection may hold its thread

    def do_GET(self) -> None:
        if urlsplit(self.path).path != METRICS_PATH:
            self._reply(HTTPStatus.NOT_FOUND, "text/plain; charset=utf-8", b"not found\n")
            return
        try:
            body = render(self.server.collect()).encode("utf-8")
        except Exception:
            log.exception("collecting metrics failed")
            self._reply(HTTPStatus.INTERNAL_SERVER_ERROR, "text/plain; charset=utf-8", b"collect failed\n")
            return
        self._reply(HTTPStatus.OK, CONTENT_TYPE, body)

    def _method_not_allowed(self) -> None:
        self._reply(HTTPStatus.METHOD_NOT_ALLOWED, "text/plain; charset=utf-8", b"only GET\n",
                    allow="GET")

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _method_not_allowed

    def _reply(self, status: HTTPStatus, content_type: str, body: bytes, allow: str | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if allow:
            self.send_header("Allow", allow)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (base signature)
        log.debug("metrics %s: " + format, self.address_string(), *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], collect: Callable[[], list[Metric]]) -> None:
        # http.server binds AF_INET by default; an IPv6 literal (e.g. "::1") needs AF_INET6.
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.collect = collect
        super().__init__(address, _Handler)


class MetricsServer:
    """Serves render(collect()) at http://host:port/metrics from a daemon thread."""

    def __init__(self, host: str, port: int, collect: Callable[[], list[Metric]]) -> None:
        self.host = host.strip("[]")  # "[::1]" as written in a host:port setting
        self._requested_port = port
        self.collect = collect
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port once started (port 0 asks the kernel to choose one)."""
        if self._server is None:
            return self._requested_port
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Bind (OSError if the address is taken) and serve in a daemon thread."""
        if self._server is not None:
            raise RuntimeError("MetricsServer already started")
        self._server = _Server((self.host, self._requested_port), self.collect)
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-http",
                                        kwargs={"poll_interval": 0.2}, daemon=True)
        self._thread.start()
        log.info("metrics on http://%s:%d%s", self.host, self.port, METRICS_PATH)

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()
        self._server = None
        self._thread = None


def backup_metrics(statuses: Sequence[TargetStatus]) -> list[Metric]:
    """Offsite backup, per target, from the catalog's run history (runs happen in their own
    process, started by the timer, so the daemon reports what they recorded). Alert on
    ``time() - recorderd_backup_last_success_timestamp_seconds`` and on the failed flags."""
    def per_target(value: Callable[[TargetStatus], float | None]) -> list[Sample]:
        found = [(s.target.name, value(s)) for s in statuses]
        return [({"target": name}, v) for name, v in found if v is not None]

    def run_figure(field_name: str) -> Callable[[TargetStatus], float | None]:
        return lambda s: float(getattr(s.last_run, field_name)) if s.last_run else None

    return [
        Metric("recorderd_backup_last_success_timestamp_seconds",
               "end of the newest backup run that copied everything (0: never)", "gauge",
               per_target(lambda s: s.last_success.finished_at or 0.0 if s.last_success else 0.0)),
        Metric("recorderd_backup_running", "1 while a backup run is in progress", "gauge",
               per_target(lambda s: 1 if s.last_run and s.last_run.state == "running" else 0)),
        Metric("recorderd_backup_last_run_failed", "1 when the newest finished backup run failed or was interrupted",
               "gauge", per_target(lambda s: 1 if s.last_run and s.last_run.state in ("failed", "interrupted") else 0)),
        Metric("recorderd_backup_files_planned", "vault files the newest backup run has to copy", "gauge",
               per_target(run_figure("files_planned"))),
        Metric("recorderd_backup_files_copied", "vault files the newest backup run copied so far", "gauge",
               per_target(run_figure("files_done"))),
        Metric("recorderd_backup_bytes_copied", "bytes the newest backup run copied so far", "gauge",
               per_target(run_figure("bytes_done"))),
        Metric("recorderd_backup_files_failed", "vault files the newest backup run could not copy", "gauge",
               per_target(run_figure("files_failed"))),
        Metric("recorderd_backup_verify_ok", "1 when the newest backup verify found no problem, 0 otherwise",
               "gauge", per_target(lambda s: (1 if s.last_verify.state == "ok" else 0) if s.last_verify else None)),
    ]
