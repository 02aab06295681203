"""Security headers on every response, and the count page still working under its strict CSP
in a real Chromium (the inline import map runs by its nonce; nothing else inline exists)."""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPResponse

from support.browsers import LAUNCH_ARGS, ErrorLog, chromium_path, room

try:
    from playwright.sync_api import Browser, expect, sync_playwright

    HAVE_PLAYWRIGHT = True
except ImportError:  # pragma: no cover - depends on the machine
    HAVE_PLAYWRIGHT = False

ROUTES = [
    ("GET", "/", 302),
    ("GET", "/count/abc/", 200),
    ("GET", "/api/rooms/abc", 200),
    ("GET", "/healthz", 200),
    ("GET", "/metrics", 200),
    ("GET", "/static/js/rrr.js", 200),
    ("GET", "/static/js/worker.js", 200),
    ("GET", "/nope", 404),
    ("POST", "/api/rooms/abc/messages", 401),
    ("DELETE", "/api/rooms/abc", 405),
]


def directives(csp: str) -> dict[str, str]:
    return dict((d.split(" ", 1) + [""])[:2] for d in (p.strip() for p in csp.split(";")) if d)


async def fetch(client: AsyncHTTPClient, url: str, method: str) -> HTTPResponse:
    body = "{}" if method == "POST" else None
    return await client.fetch(url, method=method, body=body, raise_error=False, follow_redirects=False)


@pytest.mark.gen_test(timeout=30)
async def test_every_response_carries_the_security_headers(http_client: AsyncHTTPClient, base_url: str) -> None:
    host = base_url.split("://", 1)[1]
    for method, path, code in ROUTES:
        r = await fetch(http_client, base_url + path, method)
        assert r.code == code, (method, path, r.code)
        assert r.headers["X-Content-Type-Options"] == "nosniff", path
        assert r.headers["X-Frame-Options"] == "DENY", path
        assert r.headers["Referrer-Policy"] == "same-origin", path
        csp = directives(r.headers["Content-Security-Policy"])
        assert csp["default-src"] == "'self'", path
        assert csp["connect-src"] == f"'self' ws://{host}", path
        assert csp["style-src"] == "'self'" and csp["img-src"] == "'self' data:", path
        assert csp["frame-ancestors"] == "'none'" and csp["base-uri"] == "'none'", path
        assert csp["form-action"] == "'self'", path
        assert "unsafe" not in r.headers["Content-Security-Policy"], path


@pytest.mark.gen_test(timeout=30)
async def test_the_page_inline_script_runs_by_a_fresh_nonce_and_nothing_else_is_inline(
    http_client: AsyncHTTPClient, base_url: str,
) -> None:
    nonces = []
    for _ in range(2):
        r = await fetch(http_client, base_url + "/count/abc/", "GET")
        html = r.body.decode()
        script_src = directives(r.headers["Content-Security-Policy"])["script-src"]
        match = re.fullmatch(r"'self' 'nonce-([A-Za-z0-9_-]{16,})'", script_src)
        assert match, script_src
        nonce = match.group(1)
        nonces.append(nonce)
        inline = re.findall(r"<script(?![^>]*\bsrc=)([^>]*)>", html)
        assert inline == [f' type="importmap" nonce="{nonce}"'], inline
        assert not re.search(r"\son[a-z]+\s*=", html), "inline event handler"
        assert not re.search(r"\sstyle\s*=", html) and "<style" not in html, "inline style"
        assert "javascript:" not in html
    assert nonces[0] != nonces[1]


# -- Chromium --------------------------------------------------------------------------


@pytest.fixture
def chromium() -> Iterator[Browser]:
    path = chromium_path()
    missing = None if HAVE_PLAYWRIGHT else "Python Playwright"
    missing = missing or (None if path else "/usr/bin/chromium")
    if missing:
        if os.environ.get("RRR_REQUIRE_ALL") == "1":
            pytest.fail(f"{missing} is required (RRR_REQUIRE_ALL=1) but not installed")
        pytest.skip(f"{missing} not installed")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, args=LAUNCH_ARGS)
        yield browser
        browser.close()


# Recorded from the first moment of every document, before any of the page's own scripts.
RECORD_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__cspViolations.push(`${e.violatedDirective} ${e.blockedURI} ${e.sourceFile}:${e.lineNumber}`);
});
"""


@pytest.mark.browser
def test_the_count_page_works_under_its_csp_without_a_violation(
    chromium: Browser, app_factory: Callable[..., Any], redis_url: str,
) -> None:
    server = app_factory(redis_url=redis_url)
    slug = "csp-" + secrets.token_hex(4)
    errors = ErrorLog(chromium)
    context = errors.watch(chromium.new_context())
    context.add_init_script(RECORD_VIOLATIONS)
    page = context.new_page()
    response = page.goto(f"{server.base_url}/count/{slug}/")
    assert response is not None and "nonce-" in response.headers["content-security-policy"]
    expect(page.locator("#count")).to_have_text("1", timeout=20000)
    expect(page.locator("#tabs")).to_have_text("1", timeout=20000)
    assert room(server.base_url, slug)["connections"] == 1
    page.locator("#add").click()  # the page's own scripts keep working
    expect(page.locator("#tabs")).to_have_text("2", timeout=20000)
    assert page.evaluate("window.__cspViolations") == []
    assert [e for e in errors.errors if "Content Security Policy" in e or "Refused" in e] == []
    assert errors.errors == []
    context.close()
