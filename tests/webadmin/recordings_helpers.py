"""Helpers of the recordings / playback / review tests (the shared fixtures are in conftest.py).

``small_appliance`` makes an appliance of the test module's own (`recorderd init` + `replay
--store` of generated calls with known audio), so that these tests can count recordings,
assignments and samples exactly whatever other tests add to the session's shared appliance.
``player_chromium`` is the contract's headless Chromium with Chrome's performance log switched on,
so a test can read the HTTP status of each response the audio element received.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from recorderd.appliance import Appliance, open_appliance
from recorderd.cli import main
from recorderd.config import load
from storage.audit import AuditEntry, entries
from tests.gen.callgen import CallPlan, write_capture
from tests.webadmin.conftest import AGENT_EXTENSIONS, _set_setting, chromium, client_login, csrf_of, make_user
from webadmin.app import create_app
from webadmin.authz import ConsoleUser
from webadmin.context import ConsoleContext

_AGENT_USERS: dict[tuple[str, str], str] = {}


@dataclass
class SmallAppliance:
    config_path: Path
    appliance: Appliance
    ctx: ConsoleContext
    recording_ids: list[str]           # in the order of the plans

    _clients: dict[tuple[int, str, str | None], tuple[FlaskClient, ConsoleUser]] = field(default_factory=dict)

    def client(self, app: Flask, role: str, agent_id: str | None = None) -> tuple[FlaskClient, ConsoleUser]:
        """A logged-in client of ``role`` kept for the module (logging in costs two argon2 hashes)."""
        key = (id(app), role, agent_id)
        if key not in self._clients:
            self._clients[key] = logged_in(app, self.ctx, role, agent_id)
        return self._clients[key]

    def export_audio(self, recording_id: str, out: Path) -> bytes:
        """The recording as `recorderd export-audio` writes it (run in this process)."""
        assert main(["--config", str(self.config_path), "export-audio", recording_id, "--out", str(out),
                     "--reason", "test reference"]) == 0
        return out.read_bytes()

    def app(self, **section_changes: dict[str, Any]) -> Flask:
        """A console app on these stores; ``recordings={"page_size": 2}`` changes settings."""
        config = {name: dict(values) for name, values in self.ctx.config.items()}
        for section, changes in section_changes.items():
            config[section].update(changes)
        return create_app(replace(self.ctx, config=config), testing=True)


Call = tuple[str, str, float] | tuple[str, str, float, dict[str, Any]]


def plans_for(calls: list[Call], start: float = 1_770_000_000.0) -> list[CallPlan]:
    """(caller number, callee extension, seconds[, other CallPlan fields]) → plans a minute apart."""
    plans = []
    for i, call in enumerate(calls):
        caller, callee, seconds = call[:3]
        extra: dict[str, Any] = call[3] if len(call) > 3 else {}  # type: ignore[misc]
        plans.append(CallPlan(call_id=f"rec-{i}@pbx.example", start_ts=start + 60 * i, duration_s=seconds,
                              caller_num=caller, callee_num=callee, caller_port=40000 + 2 * i,
                              callee_port=42000 + 2 * i, **extra))
    return plans


@contextmanager
def small_appliance(root: Path, calls: list[Call]) -> Iterator[SmallAppliance]:
    """An appliance in ``root`` whose agents are found by extension (AGENT_EXTENSIONS)."""
    assert main(["init", str(root / "box")]) == 0
    config_path = root / "box" / "recorderd.toml"
    text = _set_setting(config_path.read_text(), "storage", "agent_source", '"extension"')
    entries_text = ", ".join(f'"{ext}={agent}"' for ext, agent in AGENT_EXTENSIONS.items())
    config_path.write_text(_set_setting(text, "storage", "agent_extensions", f"[{entries_text}]"))
    plans = plans_for(calls)
    write_capture(str(root / "calls.pcap"), plans, seed=3)
    assert main(["--config", str(config_path), "replay", str(root / "calls.pcap"), "--store", "--tag", "small"]) == 0
    appliance = open_appliance(load(config_path), recover=False, warnings=None)
    try:
        by_call = {row.call_id: row.recording_id for row in appliance.catalog.search(None, limit=100).rows}
        ctx = ConsoleContext(catalog=appliance.catalog, audit=appliance.audit, keys=appliance.keys,
                             vault_dir=appliance.vault_dir, config=appliance.config)
        yield SmallAppliance(config_path, appliance, ctx, [by_call[plan.call_id] for plan in plans])
    finally:
        appliance.close()


def logged_in(app: Flask, ctx: ConsoleContext, role: str, agent_id: str | None = None) -> tuple[FlaskClient, ConsoleUser]:
    """A test client logged in as a fresh user of ``role`` (TOTP answered when required). An
    agent id belongs to one user: an agent is created once per agent id and catalog."""
    client = app.test_client()
    name = _AGENT_USERS.get((ctx.catalog.path, agent_id)) if agent_id else None
    if name is None:
        name, _secret = make_user(ctx, role, agent_id)
        if agent_id:
            _AGENT_USERS[(ctx.catalog.path, agent_id)] = name
    response = client_login(client, ctx, name)
    assert response.status_code == 302 and "/login" not in response.headers["Location"], response.status_code
    return client, ConsoleUser(name, role, agent_id)


def post(client: FlaskClient, path: str, data: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    """A POST with the session's CSRF token."""
    return client.post(path, data={**(data or {}), "csrf_token": csrf_of(client)}, **kwargs)


def grant_for(client: FlaskClient, recording_id: str, reason: str = "complaint 4711: amount disputed") -> int:
    """Give a reason for access; the grant (audit seq) from the redirect."""
    response = post(client, f"/recordings/{recording_id}/access", {"reason": reason})
    assert response.status_code == 302, response.get_data(as_text=True)[:300]
    location = response.headers["Location"]
    return int(location.split("grant=")[1].split("#")[0].split("&")[0])


def audit_of(ctx: ConsoleContext, **filters: Any) -> list[AuditEntry]:
    with ctx.catalog.reader() as reader:
        return entries(reader, **filters)


# ---------------------------------------------------------------------------------------------
# the browser, with the network visible


def player_chromium(profile: Path) -> AbstractContextManager[Any]:
    """Headless Chromium as in the contract (conftest's ``chromium``) that plays audio without a
    gesture (muted), plus the performance log."""
    return chromium(profile, window_size="1280,1000", performance_log=True,
                    extra_flags=("--autoplay-policy=no-user-gesture-required", "--mute-audio"))


def responses(driver: Any, url_part: str) -> list[dict[str, Any]]:
    """Network.responseReceived events for URLs containing ``url_part`` (status, headers)."""
    found = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.responseReceived":
            response = message["params"]["response"]
            if url_part in response["url"]:
                found.append(response)
    return found
