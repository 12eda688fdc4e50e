"""Must show 3 (headers): every response carries the security headers; the CSP allows no inline
script; no template or static file needs inline script/style or a remote asset."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from webadmin.authz import NAV

WEBADMIN = Path(__file__).resolve().parents[2] / "webadmin"
REQUIRED = {
    "Strict-Transport-Security": re.compile(r"^max-age=31536000; includeSubDomains$"),
    "X-Content-Type-Options": re.compile(r"^nosniff$"),
    "Referrer-Policy": re.compile(r"^no-referrer$"),
    "X-Frame-Options": re.compile(r"^DENY$"),
}


def csp_directives(value: str) -> dict[str, list[str]]:
    return {parts[0]: parts[1:] for parts in (d.split() for d in value.split(";") if d.strip())}


def check_headers(response: Any, what: str) -> None:
    for name, pattern in REQUIRED.items():
        assert pattern.match(response.headers.get(name, "")), f"{what}: {name} = {response.headers.get(name)!r}"
    csp = csp_directives(response.headers["Content-Security-Policy"])
    assert csp["script-src"] == ["'self'"], what
    assert csp["frame-ancestors"] == ["'none'"], what
    assert csp["default-src"] == ["'none'"] and csp["object-src"] == ["'none'"] and csp["base-uri"] == ["'none'"]
    assert not any("unsafe" in source or source == "*" or source.startswith("http")
                   for sources in csp.values() for source in sources), what


def test_headers_on_every_kind_of_response(console_app: Flask, client: FlaskClient, login_as: Any) -> None:
    anonymous = console_app.test_client()
    check_headers(anonymous.get("/login"), "login page")
    check_headers(anonymous.get("/", headers={"Accept": "text/html"}), "redirect to login")
    check_headers(anonymous.post("/logout"), "401")
    check_headers(anonymous.get("/static/app.css"), "static file")
    check_headers(anonymous.get("/no/such/page"), "404")
    login_as(client, "agent")
    check_headers(client.get("/users"), "403")
    check_headers(client.post("/logout"), "CSRF refusal")
    admin = console_app.test_client()
    login_as(admin, "admin")
    for item in NAV:
        path = console_app.url_map.bind("localhost").build(item.endpoint)
        response = admin.get(path)
        assert response.status_code == 200, path
        check_headers(response, path)
        assert response.headers["Cache-Control"] == "no-store", f"{path}: personal data must not be cached"


def _files(*suffixes: str) -> list[Path]:
    return sorted(p for p in WEBADMIN.rglob("*") if p.suffix in suffixes)


@pytest.mark.parametrize("template", _files(".html"), ids=lambda p: str(p.relative_to(WEBADMIN)))
def test_templates_have_no_inline_script_or_style(template: Path) -> None:
    text = template.read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", text), "inline <script>: put it in static/js/"
    assert not re.search(r"\son[a-z]+\s*=", text, re.I), "inline event handler: attach it from static/js/"
    assert not re.search(r"\sstyle\s*=", text, re.I), "inline style attribute: CSP style-src 'self' blocks it"
    assert "<style" not in text, "inline <style>: put it in static/app.css"
    assert "javascript:" not in text.lower()


@pytest.mark.parametrize("asset", _files(".html", ".css", ".js"), ids=lambda p: str(p.relative_to(WEBADMIN)))
def test_every_asset_is_local(asset: Path) -> None:
    remote = re.findall(r"(?:src|href)\s*=\s*[\"'](?:https?:)?//|url\(\s*[\"']?(?:https?:)?//|@import\s+[\"']?https?:",
                        asset.read_text())
    assert not remote, f"{asset.name} loads something from another site: {remote}"
