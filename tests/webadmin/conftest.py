"""Fixtures for the console's tests (the contract in briefs/console-contract.md).

* ``appliance_config``: one appliance for the whole session, made by `recorderd init` with
  the agent found by extension (7001 → agent-7001, 7002 → agent-7002, 7003 → agent-7003) and
  ``GENERATED_CALLS`` stored by `replay --store` (tagged "generated").
* ``appliance``: its stores, opened in this process (no recovery, no writer lock).
* ``console_app`` / ``client``: ``create_app(..., testing=True)`` on those stores and a Flask test
  client; ``login_as(client, role, agent_id=None) -> ConsoleUser`` makes a fresh user of that role
  (unique name, TOTP enrolled and answered when the role needs it) and logs the client in
  through the real login pages (CSRF included).
* ``live_server``: `recorderd web` itself (gunicorn over HTTPS, self-signed certificate) on a
  free loopback port, as a subprocess on the same appliance; its base URL. ``web_server(config,
  log_dir)`` runs one on any appliance (tests with an appliance of their own).
* ``browser``: headless Chromium driven by selenium (flags from the contract), accepting the
  self-signed certificate; ``chromium(profile, ...)`` makes one with more flags or logs;
  ``screenshot(browser, name)`` keeps a PNG in ``ARTIFACTS``; ``wait_for_js`` polls a script;
  ``browser_login`` logs the browser in through the pages (TOTP answered when enrolled).
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyotp
import pytest
from flask import Flask
from flask.testing import FlaskClient

from recorderd.appliance import Appliance, open_appliance
from recorderd.cli import main
from recorderd.config import load
from tests.gen.callgen import CallPlan, write_capture
from webadmin.app import create_app
from webadmin.authz import ConsoleUser
from webadmin.context import ConsoleContext
from webadmin.security import SESSION_COOKIE
from webadmin.users_store import UserStore, get_user

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("RECORDERD_TEST_ARTIFACTS", ROOT / "build" / "test-artifacts")) / "webadmin"
PASSWORD = "correct horse battery staple"
AGENT_EXTENSIONS = {"7001": "agent-7001", "7002": "agent-7002", "7003": "agent-7003"}
# (caller number, callee extension): the callee's extension names the agent
GENERATED_CALLS = [(f"+4930123456{i:02d}", ext) for i, ext in enumerate(["7001", "7002", "7003", "7001", "7002"])]
SERVER_START_S = 60.0
_names = itertools.count(1)


def _set_setting(text: str, section: str, key: str, value: str) -> str:
    """Replace ``key = ...`` inside ``[section]`` of a recorderd.toml."""
    pattern = re.compile(rf"(^\[{re.escape(section)}\]$.*?^){re.escape(key)} = .*?$", re.M | re.S)
    new, count = pattern.subn(lambda m: f"{m.group(1)}{key} = {value}", text, count=1)
    assert count == 1, f"{section}.{key} not found in the config"
    return new


@pytest.fixture(scope="session")
def appliance_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("console")
    assert main(["init", str(root / "box")]) == 0
    config = root / "box" / "recorderd.toml"
    text = config.read_text()
    text = _set_setting(text, "storage", "agent_source", '"extension"')
    entries = ", ".join(f'"{ext}={agent}"' for ext, agent in AGENT_EXTENSIONS.items())
    text = _set_setting(text, "storage", "agent_extensions", f"[{entries}]")
    config.write_text(text)
    capture = root / "calls.pcap"
    plans = [CallPlan(call_id=f"console-{i}@pbx.example", start_ts=1_760_000_000.0 + 60 * i, duration_s=2.0,
                      caller_num=caller, callee_num=callee, caller_port=30000 + 2 * i, callee_port=32000 + 2 * i)
             for i, (caller, callee) in enumerate(GENERATED_CALLS)]
    write_capture(str(capture), plans, seed=5)
    assert main(["--config", str(config), "replay", str(capture), "--store", "--tag", "generated"]) == 0
    return config


@pytest.fixture(scope="session")
def appliance(appliance_config: Path) -> Iterator[Appliance]:
    app = open_appliance(load(appliance_config), recover=False, warnings=None)
    try:
        yield app
    finally:
        app.close()


@pytest.fixture(scope="session")
def console_context(appliance: Appliance) -> ConsoleContext:
    return ConsoleContext(catalog=appliance.catalog, audit=appliance.audit, keys=appliance.keys,
                          vault_dir=appliance.vault_dir, config=appliance.config)


@pytest.fixture
def console_app(console_context: ConsoleContext) -> Flask:
    return create_app(console_context, testing=True)


@pytest.fixture
def client(console_app: Flask) -> FlaskClient:
    return console_app.test_client()


def unique_username(role: str) -> str:
    return f"{role}-{os.getpid()}-{next(_names)}"


def make_user(ctx: ConsoleContext, role: str, agent_id: str | None = None, *, totp: bool = False,
              username: str | None = None) -> tuple[str, str | None]:
    """A new user (unique name unless given) with ``PASSWORD``; returns (name, TOTP secret)."""
    name = username or unique_username(role)
    _user, secret = UserStore(ctx.catalog).create(name, role, PASSWORD, agent_id=agent_id, totp=totp)
    return name, secret


def current_code(ctx: ConsoleContext, username: str) -> str:
    """A TOTP code the server has not seen for this user yet (waits for the next step if needed)."""
    user = get_user(ctx.catalog, username)
    assert user is not None and user.totp_secret
    totp = pyotp.TOTP(user.totp_secret)
    deadline = time.time() + 35
    while True:
        step = int(time.time() // 30)
        if step > user.totp_last_step:
            return totp.at(step * 30)
        if step + 1 > user.totp_last_step:   # the next step is allowed one step early
            return totp.at((step + 1) * 30)
        assert time.time() < deadline, "no fresh TOTP step"
        time.sleep(1)


def form_csrf(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, "no csrf_token field in the page"
    return found.group(1)


def client_login(client: FlaskClient, ctx: ConsoleContext, username: str, password: str = PASSWORD) -> Any:
    """Log the test client in through the pages (as a new login: any earlier session's cookie is
    dropped first); returns the last response."""
    client.delete_cookie(SESSION_COOKIE)
    page = client.get("/login")
    response = client.post("/login", data={"username": username, "password": password,
                                           "csrf_token": form_csrf(page.get_data(as_text=True))})
    if response.status_code == 302 and "/login/code" in response.headers["Location"]:
        page = client.get(response.headers["Location"])
        response = client.post("/login/code", data={"code": current_code(ctx, username),
                                                     "csrf_token": form_csrf(page.get_data(as_text=True))})
    return response


LoginAs = Callable[..., ConsoleUser]


@pytest.fixture
def login_as(console_context: ConsoleContext) -> LoginAs:
    def login(client: FlaskClient, role: str, agent_id: str | None = None) -> ConsoleUser:
        name, _secret = make_user(console_context, role, agent_id)
        response = client_login(client, console_context, name)
        assert response.status_code == 302, response.get_data(as_text=True)[:500]
        assert "/login" not in response.headers["Location"]
        return ConsoleUser(name, role, agent_id)

    return login


def csrf_of(client: FlaskClient) -> str:
    """The logged-in client's CSRF token (from the meta tag every page carries)."""
    html = client.get("/account").get_data(as_text=True)
    found = re.search(r'<meta name="csrf-token" content="([^"]+)"', html)
    assert found
    return found.group(1)


# ---------------------------------------------------------------------------------------------
# the real server and the browser


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_https(url: str, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"recorderd web exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url + "/login", context=insecure, timeout=2) as reply:  # noqa: S310
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"recorderd web did not answer on {url} within {timeout_s} s")


@contextmanager
def web_server(config: Path, log_dir: Path, timeout_s: float = SERVER_START_S) -> Iterator[str]:
    """`recorderd web --config CONFIG` on a free loopback port (its output in LOG_DIR/web.log);
    its base URL while the block runs, stopped after. When it does not come up within
    ``timeout_s`` the failure is the tail of its log."""
    port = free_port()
    log = log_dir / "web.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "recorderd", "--config", str(config), "web",
             "--listen", f"127.0.0.1:{port}"], stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    url = f"https://127.0.0.1:{port}"
    try:
        try:
            wait_for_https(url, process, timeout_s)
        except AssertionError:
            raise AssertionError(log.read_text()[-3000:]) from None
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@pytest.fixture(scope="session")
def live_server(appliance_config: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with web_server(appliance_config, tmp_path_factory.mktemp("web-log")) as url:
        yield url


@contextmanager
def chromium(profile: Path, *, window_size: str = "1280,900", extra_flags: tuple[str, ...] = (),
             performance_log: bool = False) -> Iterator[Any]:
    """Headless Chromium with the contract's flags (plus ``extra_flags``), its profile in
    ``profile`` (removed after); the browser console log kept, Chrome's performance log too
    when asked (the HTTP responses it received)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--ignore-certificate-errors", f"--window-size={window_size}",
                 *extra_flags, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"} if performance_log
                           else {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    with chromium(tmp_path / "chromium-profile") as driver:
        yield driver


def wait_for_js(driver: Any, script: str, timeout_s: float = 15.0) -> Any:
    """Poll a JavaScript expression until it is truthy; its value."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = driver.execute_script(f"return ({script});")
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for: {script}"
        time.sleep(0.1)


def browser_login(driver: Any, server: str, ctx: ConsoleContext, username: str) -> None:
    """Log the browser in through the pages as ``username`` (with ``PASSWORD``) as a new login
    (earlier cookies dropped), answering the code page when the user has TOTP enrolled."""
    from selenium.webdriver.common.by import By

    user = get_user(ctx.catalog, username)
    assert user is not None, username
    driver.delete_all_cookies()
    driver.get(f"{server}/login")
    driver.find_element(By.ID, "username").send_keys(username)
    driver.find_element(By.ID, "password").send_keys(PASSWORD)
    driver.find_element(By.ID, "login-submit").click()
    if user.totp_secret:
        wait_for_js(driver, "document.getElementById('code')")
        driver.find_element(By.ID, "code").send_keys(current_code(ctx, username))
        driver.find_element(By.ID, "code-submit").click()
    wait_for_js(driver, "!location.pathname.startsWith('/login')")


def screenshot(driver: Any, name: str) -> Path:
    """Keep a screenshot as a test artefact (build/test-artifacts/webadmin/NAME.png)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def console_errors(driver: Any) -> list[str]:
    """Browser console entries at SEVERE level (CSP violations land here)."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
