"""The system page (admin, auditor): capture status and drops, disk, catalog, keys, backup.

Capture figures come from the daemon's Prometheus endpoint (``daemon.metrics_listen``, on
localhost; recorderd/metrics.py): the console is another process, so it asks rather than
shares memory. A daemon that does not answer is shown as "not running". Disk figures are
statvfs(2) of the vault's and the catalog's file systems; catalog counts and key status are read
from the stores. Areas built elsewhere (backup, retention) add a section with
``register_section(title, provider)``; until a backup area registers one, the page says
"no backup configured".
"""

from __future__ import annotations

import http.client
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from flask import Blueprint, render_template
from flask.typing import ResponseReturnValue

from webadmin.app import utc_text
from webadmin.authz import define_action, register_nav, requires
from webadmin.context import ConsoleContext, current_context

bp = Blueprint("system", __name__, url_prefix="/system")

VIEW = define_action("system.view", {"auditor", "admin"}, "see capture, disk, key and backup status")
register_nav("System", "system.index", VIEW, order=90)

METRICS_TIMEOUT_S = 1.0
METRICS_MAX_BYTES = 1 << 20

Rows = list[tuple[str, str]]
SectionProvider = Callable[[ConsoleContext], Rows]
SECTIONS: dict[str, SectionProvider] = {}


def register_section(title: str, provider: SectionProvider) -> None:
    """Another area's status on the system page: ``provider(ctx)`` returns (label, value) rows."""
    SECTIONS[title] = provider


@dataclass
class Samples:
    """Prometheus text exposition, parsed: name -> [(labels, value)]."""

    by_name: dict[str, list[tuple[dict[str, str], float]]] = field(default_factory=dict)

    def total(self, name: str) -> float | None:
        found = self.by_name.get(name)
        return sum(value for _labels, value in found) if found else None

    def each(self, name: str, label: str) -> list[tuple[str, float]]:
        return [(labels.get(label, ""), value) for labels, value in self.by_name.get(name, [])]


def _labels(text: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    for part in text.split('",'):
        key, sep, value = part.partition('="')
        if sep:
            labels[key.strip().lstrip(",")] = value.rstrip('"').replace('\\"', '"').replace("\\\\", "\\")
    return labels


def parse_metrics(text: str) -> Samples:
    """The samples of a Prometheus text exposition (format 0.0.4); comments and bad lines skipped."""
    samples = Samples()
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _sep, value_text = line.rpartition(" ")
        name, brace, rest = head.partition("{")
        try:
            value = float(value_text)
        except ValueError:
            continue
        samples.by_name.setdefault(name.strip(), []).append((_labels(rest.rstrip("}")) if brace else {}, value))
    return samples


def fetch_metrics(listen: str) -> tuple[Samples | None, str]:
    """The daemon's metrics, or None and why not."""
    host, _sep, port = listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        conn = http.client.HTTPConnection(host, int(port), timeout=METRICS_TIMEOUT_S)
        try:
            conn.request("GET", "/metrics")
            reply = conn.getresponse()
            body = reply.read(METRICS_MAX_BYTES)
        finally:
            conn.close()
    except (OSError, ValueError, http.client.HTTPException) as err:
        return None, f"capture daemon not running (no answer on {listen}: {err})"
    if reply.status != 200:
        return None, f"capture daemon answered {reply.status} on {listen}"
    return parse_metrics(body.decode("utf-8", "replace")), ""


def _bytes(n: float | None) -> str:
    if n is None:
        return "unknown"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _count(value: float | None) -> str:
    return "unknown" if value is None else f"{value:,.0f}"


def capture_rows(samples: Samples) -> Rows:
    rows: Rows = [
        ("Active calls", _count(samples.total("recorderd_active_calls"))),
        ("Calls finished", _count(samples.total("recorderd_calls_total"))),
        ("Recordings written", _count(samples.total("recorderd_recordings_total"))),
        ("Recording paused (disk floor)", "yes" if samples.total("recorderd_recording_paused") else "no"),
        ("Oldest active call", f"{samples.total('recorderd_oldest_active_call_seconds') or 0:.0f} s"),
    ]
    for interface, value in samples.each("recorderd_packets_total", "interface"):
        rows.append((f"Packets on {interface or '?'}", _count(value)))
    for interface, value in samples.each("recorderd_kernel_drops_total", "interface"):
        rows.append((f"Kernel drops on {interface or '?'}", _count(value)))
    errors = samples.total("recorderd_parse_errors_total")
    rows.append(("Malformed input skipped", _count(errors or 0)))
    return rows


def disk_rows(ctx: ConsoleContext) -> Rows:
    rows: Rows = []
    for label, path in (("Vault", ctx.vault_dir), ("Catalog", Path(ctx.config["storage"]["catalog"]).parent)):
        try:
            usage = shutil.disk_usage(path)
        except OSError as err:
            rows.append((label, f"unreadable: {err}"))
            continue
        rows.append((label, f"{_bytes(usage.free)} free of {_bytes(usage.total)} "
                            f"({100 * usage.free / usage.total:.0f} % free) at {path}"))
    floor = ctx.config["daemon"]["min_free_mb"]
    rows.append(("Recording pauses below", f"{floor} MiB free (daemon.min_free_mb)"))
    return rows


def catalog_rows(ctx: ConsoleContext) -> Rows:
    with ctx.catalog.reader() as reader:
        conn = reader.conn
        grouped: list[Any] = conn.execute("SELECT state, count(*) FROM recordings GROUP BY state").fetchall()
        states: dict[str, int] = {str(state): int(n) for state, n in grouped}
        not_recorded = int(cast(int, conn.execute("SELECT count(*) FROM not_recorded").fetchall()[0][0]))
        newest = cast(float | None, conn.execute("SELECT max(started_at) FROM recordings").fetchall()[0][0])
    rows: Rows = [(f"Recordings {state}", _count(states.get(state, 0)))
                  for state in ("complete", "partial", "active", "purged")]
    rows.append(("Calls not recorded", _count(not_recorded)))
    rows.append(("Newest recording", "none" if newest is None else utc_text(newest)))
    return rows


def key_rows(ctx: ConsoleContext) -> Rows:
    counts = ctx.catalog.key_counts()
    rows: Rows = [("Active key-encryption key", ctx.keys.active_kek_id)]
    for kek in ctx.keys.kek_ids():
        state = "active" if kek == ctx.keys.active_kek_id else "retired"
        rows.append((f"KEK {kek}", f"{state}, wraps {counts.get(kek, 0):,} data key(s)"))
    rows.append(("Data keys destroyed (purged recordings)", _count(counts.get("", 0))))
    return rows


def status(ctx: ConsoleContext) -> dict[str, Any]:
    samples, capture_problem = fetch_metrics(ctx.config["daemon"]["metrics_listen"])
    sections: list[tuple[str, Rows]] = []
    for title, provider in SECTIONS.items():
        try:
            sections.append((title, provider(ctx)))
        except Exception as err:   # one broken area must not hide the rest of the page
            sections.append((title, [("Status unavailable", f"{type(err).__name__}: {err}")]))
    if not any(title.lower().startswith("backup") for title, _rows in sections):
        sections.insert(0, ("Backup", [("Last backup", "no backup configured")]))
    return {"capture": capture_rows(samples) if samples else [], "capture_problem": capture_problem,
            "disk": disk_rows(ctx), "catalog": catalog_rows(ctx), "keys": key_rows(ctx), "sections": sections}


@bp.get("")
@requires(VIEW)
def index() -> ResponseReturnValue:
    return render_template("system/index.html", **status(current_context()))
