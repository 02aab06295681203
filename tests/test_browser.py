"""The browser side in a real Chromium against ``python app.py`` and a real redis-server.

"Reduce": however many tabs a browser opens, the server holds one socket for it.
Each browser context is one browser to the server. Transports below SharedWorker
are reached by deleting APIs with an init script (see FORCE_TRANSPORT).
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

try:
    from playwright.sync_api import Browser, BrowserContext, Page, Playwright, expect, sync_playwright
    from playwright.sync_api import Error as PlaywrightError
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None  # type: ignore[assignment]

from browser_helpers import (
    FORCE_TRANSPORT,
    LAUNCH_ARGS,
    ErrorLog,
    chromium_path,
    eventually,
    metric,
    publish,
    room,
)
from conftest import AppProcess

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "artifacts"
TOKEN = "browser-test-token"
TRANSPORT_TEXT = {"sharedworker": "SharedWorker", "leader": "leader tab", "direct": "own socket"}


# -- fixtures -----------------------------------------------------------------


@pytest.fixture
def playwright() -> Iterator[tuple[Playwright, str | None]]:
    """Per test, not per session: the sync API holds an event loop as running while
    it is started, which would break the pytest-tornado tests that run after us."""
    path = chromium_path()
    missing = "Python Playwright" if sync_playwright is None else None if path else "/usr/bin/chromium"
    if missing:
        if os.environ.get("RRR_REQUIRE_ALL") == "1":
            pytest.fail(f"{missing} is required (RRR_REQUIRE_ALL=1) but not installed")
        pytest.skip(f"{missing} not installed")
    with sync_playwright() as p:
        yield p, path


@pytest.fixture
def browser(playwright: tuple[Playwright, str | None]) -> Iterator[Browser]:
    p, path = playwright
    browser = p.chromium.launch(executable_path=path, args=LAUNCH_ARGS)
    yield browser
    browser.close()


@pytest.fixture
def errors(browser: Browser) -> ErrorLog:
    return ErrorLog(browser)


@pytest.fixture
def new_context(browser: Browser, errors: ErrorLog) -> Callable[..., BrowserContext]:
    """A fresh browser profile (its own SharedWorker) forced onto ``transport``."""

    def make(transport: str = "sharedworker", **options: Any) -> BrowserContext:
        context = browser.new_context(**options)
        if FORCE_TRANSPORT[transport]:
            context.add_init_script(FORCE_TRANSPORT[transport])
        return errors.watch(context)

    return make


@pytest.fixture
def server(app_factory: Callable[..., AppProcess], redis_url: str) -> AppProcess:
    return app_factory(redis_url=redis_url, publish_token=TOKEN)


@pytest.fixture
def slug() -> str:
    return "t-" + secrets.token_hex(4)


# -- helpers ------------------------------------------------------------------


def open_tabs(context: BrowserContext, url: str, n: int, before: Callable[[Page], None] | None = None) -> list[Page]:
    pages = []
    for _ in range(n):
        page = context.new_page()
        if before:
            before(page)
        page.goto(url)
        pages.append(page)
    return pages


def expect_counts(pages: list[Page], connections: int, tabs: int, within: float = 20.0) -> None:
    """Every page shows these numbers within ``within`` seconds from now."""
    deadline = time.monotonic() + within
    for page in pages:
        left_ms = max(1.0, (deadline - time.monotonic()) * 1000)
        expect(page.locator("#count")).to_have_text(str(connections), timeout=left_ms)
        expect(page.locator("#tabs")).to_have_text(str(tabs), timeout=left_ms)


def expect_connected(pages: list[Page], transport: str) -> None:
    for page in pages:
        expect(page.locator("#state")).to_have_attribute("data-status", "open", timeout=20_000)
        expect(page.locator("#state")).to_contain_text(TRANSPORT_TEXT[transport])


def crash(page: Page) -> None:
    """Kill the tab's renderer (CDP Page.crash can hang the sync API; see browser.md)."""
    try:
        page.goto("chrome://crash", timeout=5_000)
    except PlaywrightError:
        pass


def sockets(server: AppProcess) -> float:
    return metric(server.base_url, "rrr_open_sockets")


def sockets_by(server: AppProcess, transport: str) -> float:
    return metric(server.base_url, "rrr_sockets_by_transport", f'transport="{transport}"')


# -- Reduce: one socket per browser -----------------------------------------------


def test_tabs_of_one_browser_share_one_socket(
    server: AppProcess, new_context: Callable[..., BrowserContext], errors: ErrorLog, slug: str
) -> None:
    url = f"{server.base_url}/count/{slug}/"
    pages = open_tabs(new_context(), url, 5)

    expect_counts(pages, connections=1, tabs=5)
    expect_connected(pages, "sharedworker")
    eventually(lambda: sockets(server), 1, what="open sockets")
    eventually(lambda: sockets_by(server, "sharedworker"), 1, what="hello transport=sharedworker")
    assert room(server.base_url, slug) | {"updated": None} == {
        "room": slug, "connections": 1, "tabs": 5, "updated": None,
    }
    expect(pages[0].locator("#updated")).to_have_text(re.compile(r"^(just now|\d+ s ago)$"))
    expect(pages[0].locator("#slug")).to_have_text(slug)
    expect(pages[0].locator("#publish")).to_have_count(0)  # server runs without --client-publish

    pages.pop().close()
    pages.pop().close()
    expect_counts(pages, connections=1, tabs=3, within=5)

    # "+ Add" / "- Remove" subscribe and leave within the page, like the talk's iframes.
    pages[0].click("#add")
    pages[0].click("#add")
    expect_counts(pages, connections=1, tabs=5)
    pages[0].click("#remove")
    expect_counts(pages, connections=1, tabs=4)
    assert sockets(server) == 1
    assert errors.errors == []


def test_two_browsers_are_two_connections(
    server: AppProcess, new_context: Callable[..., BrowserContext], errors: ErrorLog, slug: str
) -> None:
    url = f"{server.base_url}/count/{slug}/"
    pages = open_tabs(new_context(), url, 2) + open_tabs(new_context(), url, 1)

    expect_counts(pages, connections=2, tabs=3)
    eventually(lambda: sockets(server), 2, what="open sockets")
    assert errors.errors == []


@pytest.mark.parametrize("how", ["close", "crash"])
def test_leader_tab_owns_the_socket_without_shared_worker(
    server: AppProcess, new_context: Callable[..., BrowserContext], errors: ErrorLog, slug: str, how: str
) -> None:
    url = f"{server.base_url}/count/{slug}/"
    with_socket: list[Page] = []
    pages = open_tabs(
        new_context("leader"), url, 3,
        before=lambda page: page.on("websocket", lambda ws: with_socket.append(page)),
    )

    expect_counts(pages, connections=1, tabs=3)
    expect_connected(pages, "leader")
    eventually(lambda: sockets(server), 1, what="open sockets")
    eventually(lambda: sockets_by(server, "leader"), 1, what="hello transport=leader")
    assert len(with_socket) == 1, "exactly one tab (the leader) opens a socket"

    leader = with_socket[0]
    followers = [p for p in pages if p is not leader]
    if how == "close":
        leader.close()
    else:
        crash(leader)

    expect_counts(followers, connections=1, tabs=2, within=5)
    expect_connected(followers, "leader")
    new_leaders = [p for p in with_socket[1:] if p is not leader]
    assert len(new_leaders) == 1 and new_leaders[0] in followers
    eventually(lambda: sockets(server), 1, what="open sockets after takeover")
    assert errors.errors == []


def test_shared_worker_that_fails_to_load_falls_back_to_a_leader(
    server: AppProcess, browser: Browser, slug: str
) -> None:
    # Not through new_context/errors: with CDP attached to the failing worker,
    # Chromium gives the next tabs no error event (seen on Chromium 156).
    context = browser.new_context()
    page_errors: list[str] = []
    context.on("console",  # type: ignore[call-overload]
               lambda m: m.type == "error" and page_errors.append(m.text))  # type: ignore[func-returns-value]
    context.on("weberror", lambda e: page_errors.append(str(e.error)))
    context.route("**/static/js/worker.js*", lambda route: route.fulfill(status=404, body="gone"))
    pages = open_tabs(context, f"{server.base_url}/count/{slug}/", 3)

    expect_counts(pages, connections=1, tabs=3)
    expect_connected(pages, "leader")
    assert page_errors == []


def test_without_shared_worker_or_locks_each_tab_has_its_own_socket(
    server: AppProcess, new_context: Callable[..., BrowserContext], errors: ErrorLog, slug: str
) -> None:
    url = f"{server.base_url}/count/{slug}/"
    pages = open_tabs(new_context("direct"), url, 3)

    expect_counts(pages, connections=3, tabs=3)
    expect_connected(pages, "direct")
    eventually(lambda: sockets_by(server, "direct"), 3, what="hello transport=direct")
    pages.pop().close()
    expect_counts(pages, connections=2, tabs=2, within=5)
    assert errors.errors == []


def test_navigating_away_and_back(
    server: AppProcess, new_context: Callable[..., BrowserContext], errors: ErrorLog, slug: str
) -> None:
    pages = open_tabs(new_context(), f"{server.base_url}/count/{slug}/", 2)
    expect_counts(pages, connections=1, tabs=2)

    pages[1].goto("about:blank")
    expect_counts(pages[:1], connections=1, tabs=1, within=5)
    pages[1].go_back()  # from the back/forward cache or loaded anew: either way it counts again
    expect_counts(pages, connections=1, tabs=2)
    assert errors.errors == []


# -- dead tabs ------------------------------------------------------------------------


@pytest.mark.parametrize("watch", ["lock", "heartbeat"])
def test_crashed_tab_is_dropped(
    server: AppProcess, new_context: Callable[..., BrowserContext], slug: str, watch: str
) -> None:
    context = new_context()
    if watch == "heartbeat":  # as on plain http: no Web Locks in the page, only heartbeats
        context.add_init_script("delete Navigator.prototype.locks;")
    pages = open_tabs(context, f"{server.base_url}/count/{slug}/", 3)
    expect_counts(pages, connections=1, tabs=3)
    assert pages[0].evaluate("'locks' in navigator") is (watch == "lock")

    crash(pages.pop())

    expect_counts(pages, connections=1, tabs=2, within=10)
    assert room(server.base_url, slug)["tabs"] == 2


# -- Recycle: reconnect by itself ----------------------------------------------------------


@pytest.mark.parametrize("transport", ["sharedworker", "leader", "direct"])
def test_tabs_reconnect_after_server_restart(
    server: AppProcess, new_context: Callable[..., BrowserContext], slug: str, transport: str
) -> None:
    pages = open_tabs(new_context(transport), f"{server.base_url}/count/{slug}/", 3)
    connections = 3 if transport == "direct" else 1
    expect_counts(pages, connections=connections, tabs=3)

    server.stop()
    for page in pages:
        expect(page.locator("#state")).to_have_attribute("data-status", re.compile("reconnecting|connecting"))
    server.start()

    expect_counts(pages, connections=connections, tabs=3, within=40)
    expect_connected(pages, transport)
    eventually(lambda: sockets(server), connections, what="open sockets after restart")


@pytest.mark.slow
def test_silent_server_is_detected_and_left(
    server: AppProcess, new_context: Callable[..., BrowserContext], slug: str
) -> None:
    """A frozen server answers no ping: within ~2 ping periods (15 s) the socket is recycled."""
    pages = open_tabs(new_context(), f"{server.base_url}/count/{slug}/", 2)
    expect_counts(pages, connections=1, tabs=2)

    server.signal(signal.SIGSTOP)
    try:
        for page in pages:
            expect(page.locator("#state")).not_to_have_attribute("data-status", "open", timeout=45_000)
    finally:
        server.signal(signal.SIGCONT)

    expect_counts(pages, connections=1, tabs=2, within=40)
    expect_connected(pages, "sharedworker")
    eventually(lambda: sockets(server), 1, what="open sockets after the freeze")


def test_offline_then_online(
    server: AppProcess, new_context: Callable[..., BrowserContext], errors: ErrorLog, slug: str
) -> None:
    context = new_context()
    pages = open_tabs(context, f"{server.base_url}/count/{slug}/", 2)
    expect_counts(pages, connections=1, tabs=2)

    context.set_offline(True)
    for page in pages:
        expect(page.locator("#state")).to_have_attribute("data-status", "offline")
        expect(page.locator("#state")).to_contain_text("Offline")
    eventually(lambda: sockets(server), 0, what="open sockets while offline")

    context.set_offline(False)
    expect_counts(pages, connections=1, tabs=2)
    expect_connected(pages, "sharedworker")
    assert errors.errors == []


# -- messages -----------------------------------------------------------------------------


def test_api_message_reaches_every_tab_once(
    server: AppProcess, new_context: Callable[..., BrowserContext], errors: ErrorLog, slug: str
) -> None:
    url = f"{server.base_url}/count/{slug}/"
    pages = open_tabs(new_context(), url, 2) + open_tabs(new_context("leader"), url, 2)
    expect_counts(pages, connections=2, tabs=4)

    assert publish(server.base_url, slug, TOKEN, "<b>not bold</b>") == 202
    assert publish(server.base_url, slug, TOKEN, {"n": 1}) == 202

    for page in pages:
        texts = page.locator("#messages li .text")
        expect(texts).to_have_text(['{"n":1}', "<b>not bold</b>"])  # newest first, each once
        expect(page.locator("#messages b")).to_have_count(0)  # rendered as text, never HTML
    assert errors.errors == []


def test_tab_publishes_when_the_server_allows_it(
    app_factory: Callable[..., AppProcess], redis_url: str, new_context: Callable[..., BrowserContext],
    errors: ErrorLog, slug: str
) -> None:
    server = app_factory(redis_url=redis_url, publish_token=TOKEN, client_publish=True)
    pages = open_tabs(new_context(), f"{server.base_url}/count/{slug}/", 2)
    expect_counts(pages, connections=1, tabs=2)

    pages[0].fill("#publish-text", "hello from a tab")
    pages[0].press("#publish-text", "Enter")

    for page in pages:
        expect(page.locator("#messages li .text")).to_have_text(["hello from a tab"])
    assert errors.errors == []


# -- the shared module, run where it runs ---------------------------------------------------


def test_protocol_module(server: AppProcess, new_context: Callable[..., BrowserContext]) -> None:
    page = new_context().new_page()
    page.goto(f"{server.base_url}/count/protocol/")
    result = page.evaluate(
        """async () => {
            const p = await import("/static/js/protocol.js");
            const delays = [0, 1, 2, 6, 20, 1000].map((n) => p.backoffDelay(n, () => 0.999999));
            return {
                delays,
                zero: p.backoffDelay(5, () => 0),
                url: p.defaultSocketUrl({protocol: "https:", host: "example.org:8443"}),
                plain: p.defaultSocketUrl({protocol: "http:", host: "h"}),
                named: p.socketUrlFromWorkerName(p.workerName("ws://x/ws/")),
                parsed: [p.parseServerFrame('{"type":"pong"}'), p.parseServerFrame("nope"),
                         p.parseServerFrame('{"type":"message","room":"../x","data":1}'),
                         p.parseServerFrame('{"type":"surprise"}')],
                ids: new Set(Array.from({length: 100}, p.randomId)).size,
            };
        }"""
    )
    assert result["delays"] == [499, 999, 1999, 29999, 29999, 29999]  # doubling from 0.5 s, capped at 30 s
    assert result["zero"] == 0
    assert result["url"] == "wss://example.org:8443/ws/"
    assert result["plain"] == "ws://h/ws/"
    assert result["named"] == "ws://x/ws/"
    assert result["parsed"] == [{"type": "pong"}, None, None, None]
    assert result["ids"] == 100


# -- screenshots for people ---------------------------------------------------------------------


def test_count_page_screenshots(
    server: AppProcess, new_context: Callable[..., BrowserContext], errors: ErrorLog
) -> None:
    url = f"{server.base_url}/count/demo/"
    ARTIFACTS.mkdir(exist_ok=True)
    desktop = new_context(viewport={"width": 1280, "height": 800})
    phone = new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True)
    pages = open_tabs(desktop, url, 3) + open_tabs(phone, url, 1)
    pages[0].click("#add")
    expect_counts(pages, connections=2, tabs=5)
    publish(server.base_url, "demo", TOKEN, "Welcome! Every tab of this browser shares one socket.")
    publish(server.base_url, "demo", TOKEN, {"deploy": "v42", "status": "done"})
    for page in (pages[0], pages[-1]):
        expect(page.locator("#messages li")).to_have_count(2)

    pages[0].screenshot(path=str(ARTIFACTS / "count-desktop.png"), full_page=True)
    pages[-1].screenshot(path=str(ARTIFACTS / "count-phone.png"), full_page=True)
    assert pages[-1].evaluate("document.documentElement.scrollWidth") <= 390, "no sideways scrolling on a phone"
    assert errors.errors == []
