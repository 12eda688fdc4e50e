"""Must show 2 (login part): headless Chromium logs in with password + TOTP over real HTTPS
against `recorderd web` (gunicorn, self-signed certificate), opens the admin pages, and the
browser reports no console errors — the pages work under the CSP, which the browser does
enforce (an injected inline script is refused). Screenshots go to build/test-artifacts/webadmin/.
"""

from __future__ import annotations

import time
from typing import Any

import pyotp
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from tests.webadmin.conftest import PASSWORD, console_errors, make_user, screenshot
from webadmin.context import ConsoleContext

WAIT_S = 30   # generous: the test machine is shared


def wait_for(driver: Any, css: str) -> Any:
    return WebDriverWait(driver, WAIT_S).until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, css)))


def fresh_code(secret: str) -> str:
    """A code from a time step no earlier login of this (new) user used: simply the current one."""
    return pyotp.TOTP(secret).now()


def test_admin_logs_in_with_totp_in_chromium(browser: Any, live_server: str, console_context: ConsoleContext) -> None:
    username, secret = make_user(console_context, "admin")
    assert secret
    browser.get(f"{live_server}/")
    wait_for(browser, "#login-form")
    assert browser.current_url.startswith(f"{live_server}/login")
    browser.find_element(By.ID, "username").send_keys(username)
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    screenshot(browser, "01-login")
    browser.find_element(By.ID, "login-submit").click()
    wait_for(browser, "#code-form")
    browser.find_element(By.ID, "code").send_keys(fresh_code(secret))
    screenshot(browser, "02-second-factor")
    browser.find_element(By.ID, "code-submit").click()
    wait_for(browser, "#home-pages")
    assert f"Welcome, {username}" in browser.page_source
    # base.js (script-src 'self') ran
    WebDriverWait(browser, WAIT_S).until(lambda d: d.execute_script("return document.documentElement.dataset.js") == "ready")
    screenshot(browser, "03-home")
    cookies = {c["name"]: c for c in browser.get_cookies()}
    session = cookies["__Host-recorderd-session"]
    assert session["secure"] and session["httpOnly"] and session["sameSite"] == "Strict"
    assert browser.execute_script("return document.cookie") == "", "no cookie is readable from script"

    for path, marker, text, shot in (("/users", "#users-table", username, "04-users"),
                                     ("/audit", "#chain-status", "Chain verified", "05-audit"),
                                     ("/system", "#key-facts", "Active key-encryption key", "06-system")):
        browser.get(f"{live_server}{path}")
        assert text in wait_for(browser, marker).text or text in browser.page_source, path
        screenshot(browser, shot)
    assert console_errors(browser) == [], "the pages must work under the CSP without errors"

    # the browser enforces the policy: an inline script put into the page does not run
    browser.execute_script("const s = document.createElement('script'); s.textContent = 'window.inlineRan = true;';"
                           "document.body.appendChild(s);")
    time.sleep(0.3)
    assert browser.execute_script("return window.inlineRan === true") is False
    assert any("Content Security Policy" in message for message in console_errors(browser))

    browser.find_element(By.CSS_SELECTOR, "form[action='/logout'] button").click()
    wait_for(browser, "#login-form")
    browser.get(f"{live_server}/users")
    wait_for(browser, "#login-form")
    screenshot(browser, "07-logged-out")
