"""The browser side in a real Chromium against ``python app.py`` and a real redis-server.

"Reduce": however many tabs a browser opens, the server holds one socket for it.
Each browser context is one browser to the server. Transports below SharedWorker
are reached by deleting APIs with an init script (see FORCE_TRANSPORT).
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest

try:
    from playwright.sync_api import Browser, BrowserContext, Page, Playwright, WebSocket, expect, sync_playwright
    from playwright.sync_api import Error as PlaywrightError
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None  # type: ignore[assignment]

from support.browsers import (
    FORCE_TRANSPORT,
    LAUNCH_ARGS,
    ErrorLog,
    chromium_path,
    eventually,
    http_get,
    metric,
    publish,
    room,
)
from support.processes import AppProcess

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "artifacts"
TOKEN = "browser-test-token"
HEARTBEAT_S = 2.0  # HEARTBEAT_MS in static/js/protocol.js
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
    """Open, shared as ``transport`` says, over a WebSocket (what this server offers)."""
    for page in pages:
        expect(page.locator("#state")).to_have_attribute("data-status", "open", timeout=20_000)
        expect(page.locator("#state")).to_contain_text(TRANSPORT_TEXT[transport])
        expect(page.locator("#state")).to_contain_text(" over WebSocket")


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


def test_worker_that_loads_another_versions_protocol_refuses_to_serve(
    server: AppProcess, browser: Browser, slug: str
) -> None:
    """Issue defect 6: a worker.js paired with another version's protocol.js (a cache mixing two
    deploys: the worker's imports carry no ?v=) sees the link version in its own URL differ and
    fails, so the tabs use a leader instead of a worker that speaks another tab link.

    Playwright sees a SharedWorker's script request but not its imports, so the served worker.js
    imports an older protocol.js from a data: URL (the real file with LINK_VERSION lowered)."""
    js = ROOT / "static" / "js"
    protocol = (js / "protocol.js").read_text()
    version = int(re.search(r"LINK_VERSION = (\d+);", protocol).group(1))  # type: ignore[union-attr]
    stale = protocol.replace(f"LINK_VERSION = {version};", f"LINK_VERSION = {version - 1};")
    stale_url = "data:text/javascript;base64," + base64.b64encode(stale.encode()).decode()
    worker = (js / "worker.js").read_text().replace('from "./protocol.js"', f'from "{stale_url}"')
    assert stale_url in worker
    context = browser.new_context()  # not watched by ErrorLog: see the test above
    page_errors: list[str] = []
    context.on("console",  # type: ignore[call-overload]
               lambda m: m.type == "error" and page_errors.append(m.text))  # type: ignore[func-returns-value]
    context.on("weberror", lambda e: page_errors.append(str(e.error)))
    context.route(
        "**/static/js/worker.js*",
        lambda route: route.fulfill(status=200, body=worker, content_type="text/javascript"),
    )
    pages = open_tabs(context, f"{server.base_url}/count/{slug}/", 2)

    expect_counts(pages, connections=1, tabs=2)
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


@pytest.mark.parametrize("transport", ["sharedworker", "leader", "direct"])
def test_a_tab_misses_no_message_across_a_server_restart(
    server: AppProcess, redis_url: str, new_context: Callable[..., BrowserContext], errors: ErrorLog, slug: str,
    transport: str,
) -> None:
    """Recycle, with nothing lost: messages published while the server is down reach every tab once,
    in order, replayed from the room's history when the tabs come back; then live ones follow."""
    from rrr.client import publish as backend_publish

    pages = open_tabs(new_context(transport), f"{server.base_url}/count/{slug}/", 2)
    expect_counts(pages, connections=2 if transport == "direct" else 1, tabs=2)
    for n in range(1, 4):
        assert publish(server.base_url, slug, TOKEN, {"n": n}) == 202
    for page in pages:
        expect(page.locator("#messages li .text")).to_have_count(3)

    server.stop()
    for n in range(4, 9):  # straight into Redis, as a backend would, while no server is up
        assert backend_publish(slug, {"n": n}, redis_url=redis_url) == n
    server.start()
    expect_connected(pages, transport)
    assert publish(server.base_url, slug, TOKEN, {"n": 9}) == 202

    want = [f'{{"n":{n}}}' for n in range(9, 0, -1)]  # newest first, each once
    for page in pages:
        expect(page.locator("#messages li .text")).to_have_text(want, timeout=20_000)
    time.sleep(0.5)
    for page in pages:
        assert page.locator("#messages li .text").all_text_contents() == want
    # The browser logs each refused reconnect while the server is down; nothing else.
    assert [e for e in errors.errors if "ERR_CONNECTION_REFUSED" not in e] == []


def test_a_tab_that_missed_more_than_the_history_holds_is_told(
    app_factory: Callable[..., AppProcess], redis_url: str, new_context: Callable[..., BrowserContext], slug: str,
) -> None:
    """onReset: with a history of 2, five messages published while the server is down cannot all be
    recovered; the page says so instead of silently showing a gap."""
    from rrr.client import publish as backend_publish

    server = app_factory(redis_url=redis_url, publish_token=TOKEN, history_size=2)
    [page] = open_tabs(new_context(), f"{server.base_url}/count/{slug}/", 1)
    expect_counts([page], connections=1, tabs=1)
    assert publish(server.base_url, slug, TOKEN, "first") == 202
    expect(page.locator("#messages li .text")).to_have_text(["first"])
    server.stop()
    for n in range(5):
        backend_publish(slug, n, redis_url=redis_url)
    server.start()
    expect(page.locator("#messages li.notice")).to_contain_text(["could not be recovered"], timeout=30_000)
    assert publish(server.base_url, slug, TOKEN, "after") == 202
    expect(page.locator("#messages li .text").first).to_have_text("after")


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


# -- the browser issue: bfcache, leader lock, channel traffic, dead owners, names, close() ----------

RESTORED = "addEventListener('pageshow', (event) => (window.__restored = event.persisted));"

# Counts what each page's BroadcastChannels hear, by kind (leader mode).
CHANNEL_SPY = """(() => {
  const heard = (window.__heard = { total: 0, toLeader: 0, alive: 0, message: 0, other: 0 });
  const Original = window.BroadcastChannel;
  if (!Original) return;
  window.BroadcastChannel = class extends Original {
    constructor(name) {
      super(name);
      this.addEventListener("message", ({ data }) => {
        heard.total++;
        const type = data?.msg?.type;
        if (data?.to === "leader") heard.toLeader++;
        else if (type === "alive") heard.alive++;
        else if (type === "message") heard.message++;
        else if (type !== "connection_message" && type !== "state") heard.other++;
      });
    }
  };
})();"""

STEAL_LEADER_LOCK = """async () => {
  const p = await import("/static/js/protocol.js");
  await navigator.locks.request(p.leaderLockName(p.defaultSocketUrl()), { steal: true }, () => {});
}"""


@pytest.fixture
def bfcache_browser(playwright: tuple[Playwright, str | None]) -> Iterator[Browser]:
    """Chromium with its back/forward cache on (Playwright launches it with the cache off)."""
    p, path = playwright
    browser = p.chromium.launch(
        executable_path=path, args=LAUNCH_ARGS, ignore_default_args=["--disable-back-forward-cache"]
    )
    yield browser
    browser.close()


def holds(read: Callable[[], Any], expected: Any, seconds: float, what: str) -> None:
    """``read()`` equals ``expected`` at every poll for ``seconds`` (no flip-flopping)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert (value := read()) == expected, f"{what}: {value!r} while it should stay {expected!r}"
        time.sleep(0.2)


def counts(server: AppProcess, slug: str) -> tuple[int, int]:
    data = room(server.base_url, slug)
    return int(data["connections"]), int(data["tabs"])


def expect_messages(pages: list[Page], texts: list[str]) -> None:
    for page in pages:
        expect(page.locator("#messages li .text")).to_have_text(texts, timeout=20_000)


@pytest.mark.parametrize("transport", ["sharedworker", "leader"])
def test_page_restored_from_back_forward_cache_counts_once(
    server: AppProcess, bfcache_browser: Browser, slug: str, transport: str
) -> None:
    """Issue defect 1: back from the back/forward cache, the tab is counted once and hears messages."""
    errors = ErrorLog(bfcache_browser)
    context = errors.watch(bfcache_browser.new_context())
    if FORCE_TRANSPORT[transport]:
        context.add_init_script(FORCE_TRANSPORT[transport])
    context.add_init_script(RESTORED)
    pages = open_tabs(context, f"{server.base_url}/count/{slug}/", 2)
    expect_counts(pages, connections=1, tabs=2)
    expect_connected(pages, transport)

    pages[1].goto(f"{server.base_url}/count/{slug}-away/")  # same origin: eligible for the cache
    eventually(lambda: counts(server, slug), (1, 1), what="counts while away")
    pages[1].go_back(wait_until="commit")  # a restore fires no load event
    pages[1].wait_for_function("window.__restored === true", timeout=10_000)  # restored, not reloaded

    eventually(lambda: counts(server, slug), (1, 2), what="counts after the restore")
    holds(lambda: counts(server, slug), (1, 2), seconds=10, what="counts after the restore")
    expect_counts(pages, connections=1, tabs=2)
    expect_connected(pages, transport)
    assert publish(server.base_url, slug, TOKEN, "after the restore") == 202
    expect_messages(pages, ["after the restore"])
    eventually(lambda: counts(server, f"{slug}-away"), (0, 0), what="the page left behind")
    assert errors.errors == []


def pump_until(page: Page, done: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    """Wait for ``done()`` while letting Playwright deliver page events (it does so only inside its calls)."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        page.wait_for_timeout(100)


def test_leader_that_loses_its_lock_steps_down(
    server: AppProcess, new_context: Callable[..., BrowserContext], errors: ErrorLog, slug: str
) -> None:
    """Issue defect 2: a leader whose lock is taken stops its socket and channel and follows again."""
    url = f"{server.base_url}/count/{slug}/"
    opened: list[Page] = []
    closed: list[Page] = []

    def track(page: Page) -> None:
        def on_socket(ws: WebSocket) -> None:
            opened.append(page)
            ws.on("close", lambda _: closed.append(page))

        page.on("websocket", on_socket)

    pages = open_tabs(new_context("leader"), url, 3, before=track)
    expect_counts(pages, connections=1, tabs=3)
    eventually(lambda: sockets(server), 1, what="open sockets")
    leader = opened[0]
    thief = next(p for p in pages if p is not leader)

    thief.evaluate(STEAL_LEADER_LOCK)  # takes the lock by force and lets it go at once

    # The old leader closes its socket and another tab opens one: a handover, like a leader closing.
    pump_until(thief, lambda: closed == [leader] and len(opened) == 2, what="old leader's socket closed, a new one")
    eventually(lambda: counts(server, slug), (1, 3), timeout=20, what="counts after the steal")
    eventually(lambda: sockets(server), 1, what="open sockets after the steal")
    expect_counts(pages, connections=1, tabs=3)
    expect_connected(pages, "leader")  # the old leader follows: nobody fell back to a socket of its own
    holds(lambda: counts(server, slug), (1, 3), seconds=3, what="counts after the steal")
    assert publish(server.base_url, slug, TOKEN, "one leader") == 202
    expect_messages(pages, ["one leader"])
    assert errors.errors == []


def test_leader_posts_each_frame_once_for_all_followers(
    server: AppProcess, new_context: Callable[..., BrowserContext], errors: ErrorLog, slug: str
) -> None:
    """Issue defect 3: one channel post per server frame, and no follower chatter when idle."""
    context = new_context("leader")
    context.add_init_script(CHANNEL_SPY)
    with_socket: list[Page] = []
    pages = open_tabs(
        context, f"{server.base_url}/count/{slug}/", 5,
        before=lambda page: page.on("websocket", lambda ws: with_socket.append(page)),
    )
    expect_counts(pages, connections=1, tabs=5)
    assert len(with_socket) == 1
    followers = [p for p in pages if p is not with_socket[0]]

    # Idle: followers (watched through their Web Locks) send nothing; the leader only says "alive".
    before = [p.evaluate("({...window.__heard})") for p in followers]
    time.sleep(HEARTBEAT_S * 3)
    after = [p.evaluate("({...window.__heard})") for p in followers]
    for b, a in zip(before, after):
        assert a["toLeader"] == b["toLeader"], f"followers talked to the leader while idle: {b} -> {a}"
        assert a["other"] == b["other"], f"unexpected channel traffic: {b} -> {a}"
        assert a["alive"] > b["alive"], f"the leader never said it was alive: {b} -> {a}"

    for n in range(3):
        assert publish(server.base_url, slug, TOKEN, f"m{n}") == 202
    expect_messages(pages, ["m2", "m1", "m0"])
    for page in followers:
        assert page.evaluate("window.__heard.message") == 3, "each frame reaches each follower once"
    assert with_socket[0].evaluate("window.__heard.message") == 0
    assert errors.errors == []


def test_tabs_recover_when_the_shared_worker_dies(server: AppProcess, browser: Browser, slug: str) -> None:
    """Issue defect 5: the worker is terminated (CDP Target.closeTarget); tabs notice and start a new one.

    Not through new_context/errors: with ErrorLog's CDP session attached, Chromium 156 starts the
    replacement worker but it never answers (the tabs then fall back to a leader, also a recovery)."""
    context = browser.new_context()
    page_errors: list[str] = []
    context.on("console",  # type: ignore[call-overload]
               lambda m: m.type == "error" and page_errors.append(m.text))  # type: ignore[func-returns-value]
    context.on("weberror", lambda e: page_errors.append(str(e.error)))
    pages = open_tabs(context, f"{server.base_url}/count/{slug}/", 3)
    expect_counts(pages, connections=1, tabs=3)
    cdp = browser.new_browser_cdp_session()
    workers = [t for t in cdp.send("Target.getTargets")["targetInfos"] if t["type"] == "shared_worker"]
    assert len(workers) == 1
    assert "link=" in workers[0]["url"], "the worker URL carries the link version"

    assert cdp.send("Target.closeTarget", {"targetId": workers[0]["targetId"]})["success"]
    eventually(lambda: sockets(server), 0, what="open sockets once the worker is gone")
    eventually(lambda: counts(server, slug), (0, 0), what="counts once the worker is gone")

    eventually(lambda: counts(server, slug), (1, 3), timeout=30, what="counts after the worker died")
    eventually(lambda: sockets(server), 1, what="open sockets with the new worker")
    expect_connected(pages, "sharedworker")
    assert publish(server.base_url, slug, TOKEN, "new worker") == 202
    expect_messages(pages, ["new worker"])
    assert page_errors == []


def test_two_endpoints_on_one_origin_elect_two_leaders(
    server: AppProcess, new_context: Callable[..., BrowserContext], errors: ErrorLog, slug: str
) -> None:
    """Issue defect 6: the leader lock and channel names carry the endpoint, so each endpoint gets its own.

    The second endpoint is the same server under another URL (a query string): the server checks
    Origin, so a second server on another port would refuse this page."""
    page = open_tabs(new_context("leader"), f"{server.base_url}/count/{slug}/", 1)[0]
    expect_counts([page], connections=1, tabs=1)
    page.evaluate(
        """async (url) => {
            const { connect } = await import("/static/js/rrr.js");
            window.rt = connect({ url });
            window.rt.room("elsewhere");
        }""",
        f"ws://127.0.0.1:{server.port}/ws/?endpoint=2",
    )
    eventually(lambda: sockets_by(server, "leader"), 2, what="one leader socket per endpoint")
    eventually(lambda: counts(server, "elsewhere"), (1, 1), what="the second endpoint's room")
    assert counts(server, slug) == (1, 1)
    assert errors.errors == []


def held_locks(page: Page) -> list[str]:
    return [str(lock["name"]) for lock in page.evaluate("navigator.locks.query()")["held"]]


def test_worker_url_follows_the_pages_import_map(
    server: AppProcess, browser: Browser, new_context: Callable[..., BrowserContext], slug: str
) -> None:
    """Issue defect 6: rrr.js resolves worker.js through the page's import map, which maps it to its
    ?v= URL, so a page gets a worker of its own deploy; link=<LINK_VERSION> is added either way."""
    html = http_get(f"{server.base_url}/count/{slug}/").decode()
    mapped = re.search(r'"/static/js/worker.js": "(/static/js/worker.js\?v=[^"]+)"', html)
    assert mapped, "count.html maps worker.js to its versioned URL"
    context = new_context()
    pages = open_tabs(context, f"{server.base_url}/count/{slug}/", 2)
    expect_counts(pages, connections=1, tabs=2)
    expect_connected(pages, "sharedworker")
    cdp = browser.new_browser_cdp_session()
    urls = [t["url"] for t in cdp.send("Target.getTargets")["targetInfos"] if t["type"] == "shared_worker"]
    expected = f"{server.base_url}{mapped.group(1)}&link=N"
    assert [re.sub(r"link=\d+", "link=N", u) for u in urls] == [expected]


CONNECT = """async ({slug, url}) => {
  const { connect } = await import("/static/js/rrr.js");
  const rt = connect(url ? { url } : {});
  rt.room(slug);
  (window.rts ??= []).push(rt);
}"""


@pytest.mark.parametrize("transport", ["sharedworker", "leader", "direct"])
def test_connect_close_connect(
    server: AppProcess, new_context: Callable[..., BrowserContext], errors: ErrorLog, slug: str, transport: str
) -> None:
    """Issue defect 7: close() leaves, and releases the socket when nobody else uses it; connect again works."""
    context = new_context(transport)
    context.route("**/favicon.ico", lambda route: route.fulfill(status=204))
    page = context.new_page()
    page.goto(f"{server.base_url}/healthz")  # any same-origin page without a client of its own
    per_runtime = 1 if transport == "direct" else 0

    page.evaluate(CONNECT, {"slug": slug, "url": None})
    eventually(lambda: counts(server, slug), (1, 1), what="counts after connect")
    eventually(lambda: sockets(server), 1, what="open sockets after connect")
    page.evaluate("window.rts[0].close(); window.rts[0].close()")  # twice is harmless
    eventually(lambda: counts(server, slug), (0, 0), timeout=5, what="counts after close")
    eventually(lambda: sockets(server), 0, timeout=5, what="open sockets after close")
    eventually(lambda: held_locks(page), [], timeout=5, what="Web Locks held after close")
    assert page.evaluate("(() => { try { window.rts[0].room('x'); } catch { return 'refused'; } })()") == "refused"

    page.evaluate(CONNECT, {"slug": slug, "url": None})
    page.evaluate(CONNECT, {"slug": slug, "url": None})
    eventually(lambda: counts(server, slug), (1 + per_runtime, 2), what="counts with two runtimes")
    eventually(lambda: sockets(server), 1 + per_runtime, what="open sockets with two runtimes")
    page.evaluate("window.rts[1].close()")
    eventually(lambda: counts(server, slug), (1, 1), timeout=5, what="counts after closing one")
    eventually(lambda: sockets(server), 1, timeout=5, what="open sockets after closing one")
    assert publish(server.base_url, slug, TOKEN, "still here") == 202
    page.evaluate("window.rts[2].close()")
    eventually(lambda: counts(server, slug), (0, 0), timeout=5, what="counts after closing both")
    eventually(lambda: sockets(server), 0, timeout=5, what="open sockets after closing both")
    eventually(lambda: held_locks(page), [], timeout=5, what="Web Locks held after closing both")
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


DOCS = ROOT / "docs"


def test_count_page_screenshots(
    server: AppProcess, new_context: Callable[..., BrowserContext], errors: ErrorLog
) -> None:
    """Desktop, phone and dark screenshots of a busy room, in tests/artifacts/; with
    RRR_UPDATE_SCREENSHOTS=1 also the README's and the site's (docs/count-page.png, -phone.png, -dark.png)."""
    url = f"{server.base_url}/count/demo/"
    ARTIFACTS.mkdir(exist_ok=True)
    desktop = new_context(viewport={"width": 1280, "height": 800})
    phone = new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True,
                        has_touch=True)
    dark = new_context(viewport={"width": 1024, "height": 760}, color_scheme="dark")
    pages = open_tabs(desktop, url, 3) + open_tabs(phone, url, 1) + open_tabs(dark, url, 1)
    pages[0].click("#add")
    expect_counts(pages, connections=3, tabs=6)
    publish(server.base_url, "demo", TOKEN, "Welcome! Every tab of this browser shares one socket.")
    publish(server.base_url, "demo", TOKEN, {"deploy": "v42", "status": "done"})
    shots = {"count-page": pages[0], "count-page-phone": pages[3], "count-page-dark": pages[4]}
    for page in shots.values():
        expect(page.locator("#messages li")).to_have_count(2)
        expect(page.locator("#updated")).to_have_text("just now")
        page.mouse.move(0, 0)  # no hover state in the picture

    update_docs = os.environ.get("RRR_UPDATE_SCREENSHOTS") == "1"
    for name, page in shots.items():
        page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
        if update_docs:
            page.screenshot(path=str(DOCS / f"{name}.png"), full_page=True)
    assert pages[3].evaluate("document.documentElement.scrollWidth") <= 390, "no sideways scrolling on a phone"
    assert errors.errors == []


# -- tokens and presence rooms -------------------------------------------------------------------

SECRET = "browser-token-secret-of-decent-length"
# A page's getToken in these tests: fetch a token from a same-origin URL the test fulfils itself.
TOKEN_HOOK = "window.rrrGetToken = () => fetch('/test-token', {cache: 'no-store'}).then((r) => r.text());"


def jwt_token(sub: str, rooms: list[str], name: str | None = None, ttl: float = 600) -> str:
    now = time.time()
    body: dict[str, Any] = {"sub": sub, "iat": int(now), "exp": now + ttl, "rooms": rooms}
    if name is not None:
        body["info"] = {"name": name}
    return jwt.encode(body, SECRET, algorithm="HS256")


@pytest.fixture
def token_server(app_factory: Callable[..., AppProcess], redis_url: str) -> AppProcess:
    return app_factory(redis_url=redis_url, publish_token=TOKEN, token_secret=SECRET)


def keyed_counts(server: AppProcess, slug: str) -> tuple[int, int]:
    """A private room's numbers: its API needs the server key."""
    request = urllib.request.Request(f"{server.base_url}/api/rooms/{slug}",
                                     headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=5) as r:
        data = json.loads(r.read())
    return int(data["connections"]), int(data["tabs"])


def test_presence_room_lists_every_member_once_in_every_tab(
    token_server: AppProcess, new_context: Callable[..., BrowserContext], errors: ErrorLog, slug: str
) -> None:
    """Two users in two browsers, the first with two tabs on its one shared socket: each tab
    shows both names once (the later tab gets its own whole list); a browser that goes is gone
    from the others' lists within 5 s. Tokens come from the URL fragment, as a person would use it."""
    presence = "presence-" + slug
    url = f"{token_server.base_url}/count/{presence}/"
    ada_context, bob_context = new_context(), new_context()
    ada = open_tabs(ada_context, url + "#token=" + jwt_token("ada", [presence], "Ada"), 1)
    bob = open_tabs(bob_context, url + "#token=" + jwt_token("bob", [presence], "Bob"), 1)
    expect(ada[0].locator("#members li")).to_have_text(["Ada", "Bob"], timeout=20_000)
    # A second tab of Ada's browser subscribes on the socket that already has the list.
    ada += open_tabs(ada_context, url + "#token=" + jwt_token("ada", [presence], "Ada"), 1)
    for page in ada + bob:
        expect(page.locator("#members li")).to_have_text(["Ada", "Bob"], timeout=20_000)
        expect(page.locator("#users")).to_have_text("2")
        expect(page.locator("#members-title")).to_contain_text("Who is here")
    expect_connected(ada + bob, "sharedworker")
    eventually(lambda: sockets(token_server), 2, what="open sockets")
    expect(ada[0].locator("#identity")).to_have_attribute("data-user", "ada")
    # The token left the address bar, so the share link never carries it.
    assert "token" not in ada[0].url and "token" not in ada[0].locator("#link").input_value()

    bob_context.close()
    for page in ada:
        expect(page.locator("#members li")).to_have_text(["Ada"], timeout=5_000)
        expect(page.locator("#users")).to_have_text("1")
    assert errors.errors == []


def test_a_presence_room_bigger_than_a_page_shows_its_first_page_and_everyone_on_demand(
    app_factory: Callable[..., AppProcess], redis_url: str, new_context: Callable[..., BrowserContext],
    errors: ErrorLog, slug: str,
) -> None:
    """Pages of two members: the last user in gets the first page (Ada, Bob), the total and "and 1
    more"; "Show everyone" walks the pages through room.members() (the SharedWorker asks the server
    for each) and lists all three. A budget of one page at a time: the walk's second page is
    refused for its rate, and the library asks again a second later."""
    server = app_factory(redis_url=redis_url, publish_token=TOKEN, token_secret=SECRET, presence_list_max=2,
                         presence_list_rate=1, presence_list_burst=1)
    presence = "presence-" + slug
    url = f"{server.base_url}/count/{presence}/#token="
    cy = open_tabs(new_context(), url + jwt_token("cy", [presence], "Cy"), 1)[0]
    bob = open_tabs(new_context(), url + jwt_token("bob", [presence], "Bob"), 1)[0]
    # Cy came first, into a room that fit one page: its view holds everyone, however many come.
    expect(cy.locator("#members li")).to_have_text(["Bob", "Cy"], timeout=20_000)
    ada = open_tabs(new_context(), url + jwt_token("ada", [presence], "Ada"), 1)[0]
    expect(ada.locator("#members li")).to_have_text(["Ada", "Bob"], timeout=20_000)
    expect(ada.locator("#users")).to_have_text("3")
    expect(ada.locator("#more-count")).to_have_text("and 1 more")
    expect(cy.locator("#members li")).to_have_text(["Ada", "Bob", "Cy"])
    expect(cy.locator("#more-members")).to_be_hidden()
    ada.locator("#all-members").click()
    expect(ada.locator("#members li")).to_have_text(["Ada", "Bob", "Cy"], timeout=10_000)
    expect(ada.locator("#more-members")).to_be_hidden()
    assert metric(server.base_url, "rrr_limited_total", 'limit="presence_list_rate"') >= 1, "a page was refused"
    expect_connected([ada, bob, cy], "sharedworker")
    # Kept current from then on: Bob leaves.
    bob.context.close()
    expect(ada.locator("#members li")).to_have_text(["Ada", "Cy"], timeout=10_000)
    expect(ada.locator("#users")).to_have_text("2")
    assert errors.errors == []


def test_token_is_refreshed_before_it_expires_through_the_shared_worker(
    token_server: AppProcess, new_context: Callable[..., BrowserContext], errors: ErrorLog, slug: str
) -> None:
    """Tokens live 6 s; the worker asks a tab for a fresh one at 80 % of each one's life,
    so the private subscription outlives the first token and the server keeps the socket
    authenticated with later and later exps."""
    private = "private-" + slug
    minted: list[float] = []

    def mint(route: Any) -> None:
        token = jwt_token("ada", [private], "Ada", ttl=6)
        minted.append(float(jwt.decode(token, SECRET, algorithms=["HS256"])["exp"]))
        route.fulfill(status=200, content_type="text/plain", body=token)

    context = new_context()
    context.route("**/test-token", mint)
    context.add_init_script(TOKEN_HOOK)
    pages = open_tabs(context, f"{token_server.base_url}/count/{private}/", 2)
    expect_connected(pages, "sharedworker")
    expect_counts(pages, connections=1, tabs=2)
    first_exp = minted[0]

    # Well past the first token's exp (and the second's): still subscribed, never told token_expired.
    # (pump_until, not sleep: the route above is only served while Playwright runs.)
    pump_until(pages[0], lambda: time.time() > first_exp + 7, timeout=30, what="past the second token's exp")
    assert keyed_counts(token_server, private) == (1, 2)
    expect_counts(pages, connections=1, tabs=2, within=1)
    assert len(minted) >= 3, f"refreshed at 80 % of each 6 s life: {len(minted)} tokens"
    # The server's latest `authenticated` reply (shown by each tab) carries a fresh exp.
    for page in pages:
        pump_until(page, lambda: int(page.locator("#identity").get_attribute("data-exp") or 0) == int(minted[-1]),
                   what="the exp of the last authenticated reply is the last token's")
        assert int(page.locator("#identity").get_attribute("data-exp") or 0) > first_exp + 6
        expect(page.locator("#messages")).not_to_contain_text("token_expired")
    assert errors.errors == []


JOIN_WITH_FAILING_TOKEN = """async ({priv, pub}) => {
  const { connect } = await import("/static/js/rrr.js");
  const seen = window.seen = { errors: [], tabs: [], messages: [] };
  const rt = connect({ getToken: () => Promise.reject(new Error("signed out")) });
  rt.room(priv, { onError: (e) => seen.errors.push(e), onCount: () => seen.errors.push("counted") });
  rt.room(pub, { onCount: (c) => seen.tabs.push(c.tabs), onMessage: (d) => seen.messages.push(d),
                 onError: (e) => seen.errors.push(e) });
}"""


@pytest.mark.parametrize("transport", ["sharedworker", "leader"])
def test_get_token_rejecting_fails_the_private_room_only(
    token_server: AppProcess, new_context: Callable[..., BrowserContext], errors: ErrorLog, slug: str, transport: str
) -> None:
    private, public = "private-" + slug, "pub-" + slug
    context = new_context(transport)
    context.route("**/favicon.ico", lambda route: route.fulfill(status=204))
    page = context.new_page()
    page.goto(f"{token_server.base_url}/healthz")  # a same-origin page without a client of its own
    page.evaluate(JOIN_WITH_FAILING_TOKEN, {"priv": private, "pub": public})

    pump_until(page, lambda: page.evaluate("window.seen.errors.length") > 0, what="an error for the private room")
    seen = page.evaluate("window.seen")
    assert [e["code"] for e in seen["errors"]] == ["no_token"], seen
    assert "signed out" in seen["errors"][0]["reason"]
    assert keyed_counts(token_server, private) == (0, 0)

    # The public room keeps counting (another tab joins it) and hearing messages.
    other = context.new_page()
    other.goto(f"{token_server.base_url}/healthz")
    other.evaluate(CONNECT, {"slug": public, "url": None})
    eventually(lambda: counts(token_server, public), (1, 2), what="public room counts")
    pump_until(page, lambda: page.evaluate("window.seen.tabs.at(-1)") == 2, what="the public count")
    assert publish(token_server.base_url, public, TOKEN, "still counting") == 202
    pump_until(page, lambda: "still counting" in page.evaluate("window.seen.messages"), what="the message")
    assert [e["code"] for e in page.evaluate("window.seen.errors")] == ["no_token"]
    assert errors.errors == []


@pytest.mark.parametrize("transport", ["leader", "direct"])
def test_presence_room_comes_back_after_server_restart_authenticated_first(
    token_server: AppProcess, new_context: Callable[..., BrowserContext], errors: ErrorLog, slug: str, transport: str
) -> None:
    """After a reconnect the owner sends `auth` before it subscribes the presence room again, so
    the server never refuses it (no `forbidden`), and every tab gets its whole list back."""
    presence = "presence-" + slug
    url = f"{token_server.base_url}/count/{presence}/#token=" + jwt_token("ada", [presence], "Ada")
    pages = open_tabs(new_context(transport), url, 2)
    for page in pages:
        expect(page.locator("#members li")).to_have_text(["Ada"], timeout=20_000)

    token_server.stop()
    for page in pages:
        expect(page.locator("#state")).to_have_attribute("data-status", re.compile("reconnecting|connecting"))
    token_server.start()

    expect_connected(pages, transport)
    for page in pages:
        expect(page.locator("#members li")).to_have_text(["Ada"], timeout=40_000)
    connections = 2 if transport == "direct" else 1
    eventually(lambda: keyed_counts(token_server, presence), (connections, 2), timeout=20, what="counts after restart")
    for page in pages:
        expect(page.locator("#messages")).not_to_contain_text("forbidden")
        expect(page.locator("#messages")).not_to_contain_text("no_token")
    assert [e for e in errors.errors if "ERR_CONNECTION_REFUSED" not in e] == []  # refused while it was down


def test_signed_out_user_is_told_and_does_not_loop_on_its_old_token(
    token_server: AppProcess, new_context: Callable[..., BrowserContext], errors: ErrorLog, slug: str
) -> None:
    """Signing the user out closes its socket with 4001: each tab hears `signed_out`; the owner
    reconnects and asks getToken again, which here still has only the revoked token, so the
    presence room ends at `no_token` on one open socket instead of a reconnect loop."""
    presence = "presence-" + slug
    url = f"{token_server.base_url}/count/{presence}/#token=" + jwt_token("ada", [presence], "Ada")
    pages = open_tabs(new_context(), url, 2)
    for page in pages:
        expect(page.locator("#members li")).to_have_text(["Ada"], timeout=20_000)
    time.sleep(1.1)  # the revocation refuses tokens issued (iat, whole seconds) before it

    request = urllib.request.Request(f"{token_server.base_url}/api/users/ada/disconnect", data=b"",
                                     headers={"Authorization": f"Bearer {TOKEN}"}, method="POST")
    with urllib.request.urlopen(request, timeout=5) as r:
        assert r.status == 202
    for page in pages:
        expect(page.locator("#messages")).to_contain_text("signed_out", timeout=20_000)
        expect(page.locator("#messages")).to_contain_text("no_token", timeout=20_000)
        expect(page.locator("#members li")).to_have_count(0)
    eventually(lambda: keyed_counts(token_server, presence), (0, 0), what="presence room after sign-out")
    expect_connected(pages, "sharedworker")
    holds(lambda: sockets(token_server), 1, seconds=4, what="one socket, no reconnect loop")
    for page in pages:
        expect(page.locator("#messages li")).to_have_count(2)  # signed_out and no_token, once each
    assert errors.errors == []


# -- the count page for people ------------------------------------------------------------------


@pytest.mark.parametrize("width, root_font", [(320, None), (390, "32px")])
def test_count_page_never_scrolls_sideways(
    server: AppProcess, new_context: Callable[..., BrowserContext], slug: str, width: int, root_font: str | None
) -> None:
    """From 320 px up, and on a phone with its text at 200 %, nothing sticks out sideways."""
    page = new_context(viewport={"width": width, "height": 700}, is_mobile=True).new_page()
    page.goto(f"{server.base_url}/count/{slug}/")
    expect_counts([page], connections=1, tabs=1)
    if root_font:  # CSSOM writes are not inline styles: the CSP lets them through
        page.evaluate("(size) => { document.documentElement.style.fontSize = size; }", root_font)
    page.click("#add")
    expect_counts([page], connections=1, tabs=2)
    # Against the width asked for: a mobile viewport widens innerWidth to fit the overflow.
    wide = page.evaluate("[document.documentElement.scrollWidth, innerWidth]")
    assert wide[0] <= wide[1] == width, f"page is {wide[0]} px wide in a {wide[1]} px viewport (asked for {width})"


def test_count_page_labels_agree_with_the_numbers_and_the_title_counts(
    server: AppProcess, new_context: Callable[..., BrowserContext], slug: str
) -> None:
    url = f"{server.base_url}/count/{slug}/"
    page = open_tabs(new_context(), url, 1)[0]
    expect_counts([page], connections=1, tabs=1)
    expect(page.locator("#count-label")).to_have_text("browser connected")
    expect(page.locator("#tabs-label")).to_have_text("tab open")
    expect(page).to_have_title(f"1 · {slug} · Reduce, Reuse, Recycle")

    page.click("#add")
    other = open_tabs(new_context(), url, 1)[0]
    expect_counts([page, other], connections=2, tabs=3)
    for p in (page, other):
        expect(p.locator("#count-label")).to_have_text("browsers connected")
        expect(p.locator("#tabs-label")).to_have_text("tabs open")
        expect(p).to_have_title(f"2 · {slug} · Reduce, Reuse, Recycle")


LIVE_REGION_WRITES = """() => {
  window.liveWrites = 0;
  new MutationObserver((records) => { window.liveWrites += records.length; })
    .observe(document.getElementById('state'), {childList: true, characterData: true, subtree: true});
}"""


def test_count_page_status_is_announced_only_when_the_state_changes(
    server: AppProcess, new_context: Callable[..., BrowserContext], slug: str
) -> None:
    """#state is a live region (role=status): each write may be read out, so while connected it
    is not written at all, and a countdown to the next try stays out of it."""
    page = open_tabs(new_context(), f"{server.base_url}/count/{slug}/", 1)[0]
    expect_connected([page], "sharedworker")
    assert page.locator("#state").get_attribute("role") == "status"
    page.evaluate(LIVE_REGION_WRITES)
    page.wait_for_timeout(5_000)
    assert page.evaluate("window.liveWrites") == 0, "the live region was rewritten while nothing changed"

    server.stop()
    expect(page.locator("#state")).not_to_have_attribute("data-status", "open", timeout=20_000)
    assert page.evaluate("window.liveWrites") > 0, "a state change reached the live region"
    expect(page.locator("#count")).to_have_class(re.compile(r"\bstale\b"))  # dimmed between tries too
    for _ in range(6):
        assert not re.search(r"\d", page.locator("#state").inner_text()), "no countdown in the live region"
        page.wait_for_timeout(500)
    server.start()
    expect_connected([page], "sharedworker")


def test_count_page_dims_stale_numbers_while_offline(
    server: AppProcess, new_context: Callable[..., BrowserContext], slug: str
) -> None:
    context = new_context()
    page = open_tabs(context, f"{server.base_url}/count/{slug}/", 1)[0]
    expect_counts([page], connections=1, tabs=1)
    opacity = "(e) => Number(getComputedStyle(e).opacity)"
    assert page.locator("#count").evaluate(opacity) == 1

    context.set_offline(True)
    expect(page.locator("#state")).to_have_attribute("data-status", "offline")
    for number in ("#count", "#tabs"):
        expect(page.locator(number)).to_have_class(re.compile(r"\bstale\b"))
        assert page.locator(number).evaluate(opacity) < 0.6
    context.set_offline(False)
    expect_connected([page], "sharedworker")
    expect(page.locator("#count")).not_to_have_class(re.compile(r"\bstale\b"))
    assert page.locator("#count").evaluate(opacity) == 1


def test_count_page_without_javascript_says_so(
    server: AppProcess, new_context: Callable[..., BrowserContext], slug: str
) -> None:
    page = new_context(java_script_enabled=False).new_page()
    page.goto(f"{server.base_url}/count/{slug}/")
    expect(page.locator(".noscript")).to_be_visible()
    expect(page.locator(".noscript")).to_contain_text("needs JavaScript")
    for gone in ("#count", "#tabs", "#state", "#copy", "#add"):  # no dead numbers (bars) or buttons
        expect(page.locator(gone)).to_be_hidden()

    # With JavaScript, before the first count, the placeholders are a muted ellipsis, not a dash.
    page = new_context().new_page()
    page.route(re.compile(r"/count-page\.js"), lambda route: route.abort())  # the page's module never runs
    page.goto(f"{server.base_url}/count/{slug}/")
    expect(page.locator(".noscript")).to_be_hidden()
    expect(page.locator("#count")).to_have_text("…")
    expect(page.locator("#count")).to_have_css("font-weight", "400")


@pytest.mark.parametrize("path", ["/count/bad!slug/", "/count/" + "x" * 165 + "/", "/no/such/page"])
def test_a_person_gets_a_404_page_with_a_way_home(
    server: AppProcess, new_context: Callable[..., BrowserContext], errors: ErrorLog, path: str
) -> None:
    page = new_context().new_page()
    response = page.goto(server.base_url + path)
    assert response is not None and response.status == 404
    assert response.headers["content-type"].startswith("text/html")
    assert "Content-Security-Policy" in {k.title(): v for k, v in response.headers.items()}
    expect(page.locator("h1")).to_have_text("Page not found")
    expect(page).to_have_title(re.compile("Page not found"))
    assert page.evaluate("getComputedStyle(document.documentElement).backgroundColor") != "rgba(0, 0, 0, 0)"
    page.click("text=Open a new room")
    expect(page).to_have_url(re.compile(r"/count/[A-Za-z0-9]{6}/$"))
    # Only the document's own status is logged: the stylesheet loaded under the CSP, nothing was refused.
    assert errors.errors == ["console: Failed to load resource: the server responded with a status of 404 (Not Found)"]

    # Scripts, the API and the sockets keep the JSON body.
    for json_path, accept in ((path, "application/json"), ("/api/nope", "text/html"), ("/ws/nope", "text/html")):
        req = urllib.request.Request(server.base_url + json_path, headers={"Accept": accept})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=5)
        assert e.value.code == 404 and e.value.headers["Content-Type"].startswith("application/json"), json_path
        assert "rooms are 1 to 164 of" in json.loads(e.value.read())["error"]


CONTRAST = """([ring, under]) => {
  const rgba = (c) => {  // rgb(a)(0-255 …) or color(srgb 0-1 … / a), as color-mix() computes
    const [r, g, b, a = 1] = c.replace("color(srgb", "").match(/[\\d.]+/g).map(Number);
    const k = c.startsWith("color(") ? 255 : 1;
    return [r * k, g * k, b * k, a];
  };
  const [r, g, b, a] = rgba(ring), base = rgba(under);
  const mixed = [r, g, b].map((v, i) => v * a + base[i] * (1 - a));  // a translucent ring over its background
  const lum = (c) => c.map((v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; })
    .reduce((sum, v, i) => sum + v * [0.2126, 0.7152, 0.0722][i], 0);
  const [hi, lo] = [lum(mixed), lum(base.slice(0, 3))].sort((x, y) => y - x);
  return (hi + 0.05) / (lo + 0.05);
}"""


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_count_page_focus_ring_contrast_and_reachable_messages(
    server: AppProcess, new_context: Callable[..., BrowserContext], slug: str, scheme: str
) -> None:
    page = new_context(color_scheme=scheme).new_page()
    page.goto(f"{server.base_url}/count/{slug}/")
    expect_counts([page], connections=1, tabs=1)
    page.locator("#link").focus()
    page.keyboard.press("Tab")
    expect(page.locator("#copy")).to_be_focused()
    style = page.locator("#copy").evaluate(
        "(e) => [getComputedStyle(e).outlineColor, getComputedStyle(e).outlineStyle]"
    )
    assert style[1] == "solid"
    under = page.evaluate("getComputedStyle(document.documentElement).backgroundColor")  # the header has no card
    assert page.evaluate(CONTRAST, [style[0], under]) >= 3, f"focus ring {style[0]} on {under}"

    # The scrollable message list is a labelled tab stop (keyboard users can scroll it).
    messages = page.get_by_role("list", name="Messages")
    expect(messages).to_have_attribute("tabindex", "0")
    page.click("#add")  # enables #remove, the last tab stop before the list
    page.locator("#remove").focus()
    page.keyboard.press("Tab")
    expect(messages).to_be_focused()
    ring = messages.evaluate("(e) => getComputedStyle(e).outlineColor")
    card = page.locator(".panel").evaluate("(e) => getComputedStyle(e).backgroundColor")
    assert page.evaluate(CONTRAST, [ring, card]) >= 3, f"focus ring {ring} on {card}"


# -- retry now, focus, unsent text, copying on phones -----------------------------------------------

GO_OFFLINE = "window.dispatchEvent(new Event('offline'))"  # what the page hears when the network goes


@pytest.mark.parametrize("transport", ["sharedworker", "leader", "direct"])
def test_retry_now_reconnects_without_waiting(
    server: AppProcess, new_context: Callable[..., BrowserContext], errors: ErrorLog, slug: str, transport: str
) -> None:
    """The page heard `offline` while the network is in fact fine (the browser's idea of the network
    can be wrong): the owner waits for an `online` event that never comes. "Retry now" (shown only
    while reconnecting or offline) makes it connect at once through rt.retryNow(), whoever owns the
    socket, and hands the focus to the status line when it goes away."""
    pages = open_tabs(new_context(transport), f"{server.base_url}/count/{slug}/", 2)
    connections = 2 if transport == "direct" else 1
    expect_counts(pages, connections=connections, tabs=2)
    expect_connected(pages, transport)
    retry = pages[1].locator("#retry")
    expect(retry).to_be_hidden()

    pages[1].evaluate(GO_OFFLINE)
    expect(pages[1].locator("#state")).to_have_attribute("data-status", "offline")
    expect(retry).to_be_visible()
    expect(retry).to_have_accessible_name("Retry now")
    expect(pages[1].locator("#count")).to_have_class(re.compile(r"\bstale\b"))
    eventually(lambda: counts(server, slug), (connections - 1, 1 if transport == "direct" else 0),
               what="counts while the owner thinks it is offline")

    retry.focus()
    pages[1].keyboard.press("Enter")
    expect_connected(pages, transport)
    expect_counts(pages, connections=connections, tabs=2)
    expect(retry).to_be_hidden()
    expect(pages[1].locator("#state")).to_be_focused()  # not dropped to <body>
    assert errors.errors == []


def test_retry_now_shows_while_reconnecting(
    server: AppProcess, new_context: Callable[..., BrowserContext], slug: str
) -> None:
    page = open_tabs(new_context(), f"{server.base_url}/count/{slug}/", 1)[0]
    expect_counts([page], connections=1, tabs=1)
    server.stop()
    expect(page.locator("#retry")).to_be_visible(timeout=20_000)
    expect(page.locator("#state")).to_have_attribute("data-status", "reconnecting")
    server.start()
    # The backoff's own try may reconnect first and hide the button (page.click would then wait for
    # it to show again, for good): dispatched, the click lands either way, and either way it comes back.
    page.locator("#retry").dispatch_event("click")
    expect_counts([page], connections=1, tabs=1, within=40)
    expect(page.locator("#retry")).to_be_hidden()


def test_a_button_that_disables_itself_hands_the_focus_on(
    server: AppProcess, new_context: Callable[..., BrowserContext], slug: str
) -> None:
    page = open_tabs(new_context(), f"{server.base_url}/count/{slug}/", 1)[0]
    expect_counts([page], connections=1, tabs=1)
    page.locator("#add").focus()
    page.keyboard.press("Enter")
    expect_counts([page], connections=1, tabs=2)
    page.keyboard.press("Tab")
    expect(page.locator("#remove")).to_be_focused()
    page.keyboard.press("Enter")  # the last extra goes: "- Remove" disables itself
    expect_counts([page], connections=1, tabs=1)
    expect(page.locator("#remove")).to_be_disabled()
    expect(page.locator("#add")).to_be_focused()
    assert page.evaluate("document.activeElement.id") == "add"


def test_text_typed_while_offline_is_kept_until_sent(
    app_factory: Callable[..., AppProcess], redis_url: str, new_context: Callable[..., BrowserContext],
    errors: ErrorLog, slug: str
) -> None:
    server = app_factory(redis_url=redis_url, publish_token=TOKEN, client_publish=True)
    context = new_context()
    page = open_tabs(context, f"{server.base_url}/count/{slug}/", 1)[0]
    expect_counts([page], connections=1, tabs=1)

    context.set_offline(True)
    expect(page.locator("#state")).to_have_attribute("data-status", "offline")
    page.fill("#publish-text", "written on the train")
    page.press("#publish-text", "Enter")
    expect(page.locator("#messages li.notice .text")).to_contain_text(["not sent"])
    expect(page.locator("#publish-text")).to_have_value("written on the train")  # not thrown away

    context.set_offline(False)
    expect_connected([page], "sharedworker")
    page.press("#publish-text", "Enter")
    expect(page.locator("#messages li.message .text")).to_have_text(["written on the train"])
    expect(page.locator("#publish-text")).to_have_value("")
    assert errors.errors == []


COPY_SPY = """() => {
  window.copied = [];
  document.addEventListener('copy', () => {
    const input = document.activeElement;
    window.copied.push(input.value.slice(input.selectionStart, input.selectionEnd));
  });
}"""


@pytest.mark.parametrize("clipboard", ["granted", "refused"])
def test_copy_link_works_on_a_phone(
    server: AppProcess, new_context: Callable[..., BrowserContext], errors: ErrorLog, slug: str, clipboard: str
) -> None:
    """A phone (touch, coarse pointer): copying works with the async clipboard, and without it
    (refused) through the selection; it never tells a phone user to press Ctrl+C."""
    context = new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    if clipboard == "granted":
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.base_url)
    page = context.new_page()
    url = f"{server.base_url}/count/{slug}/"
    page.goto(url)
    expect_counts([page], connections=1, tabs=1)
    assert page.evaluate("matchMedia('(pointer: coarse)').matches")
    page.evaluate(COPY_SPY)
    if clipboard == "refused":  # as on a browser without the async clipboard or its permission
        page.evaluate("() => { navigator.clipboard.writeText = () => Promise.reject(new DOMException('no')); }")

    page.tap("#copy")
    expect(page.locator("#copy")).to_have_text("Copied!")
    expect(page.locator("#copy")).not_to_contain_text("Ctrl")
    if clipboard == "granted":
        assert page.evaluate("navigator.clipboard.readText()") == url
    else:
        assert page.evaluate("window.copied") == [url]
    expect(page.locator("#copy")).to_have_text("Copy link", timeout=5_000)
    assert errors.errors == []


# -- accessibility: axe-core ------------------------------------------------------------------

AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"  # test-only npm devDependency, never served
AXE_RUN = """async () => {
  const result = await axe.run(document, { runOnly: { type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa",
                                                                      "wcag22aa", "best-practice"] } });
  return result.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help,
    nodes: v.nodes.map((n) => n.target.join(" ") + ": " + n.failureSummary) }));
}"""


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_count_page_has_no_axe_violations(
    app_factory: Callable[..., AppProcess], redis_url: str, new_context: Callable[..., BrowserContext],
    slug: str, scheme: str
) -> None:
    """axe-core finds nothing on the count page, light and dark, with messages, a notice, the
    publish form and (offline) the stale numbers and the Retry now button showing."""
    if not AXE.is_file():
        if os.environ.get("RRR_REQUIRE_ALL") == "1":
            pytest.fail("npm axe-core is required (RRR_REQUIRE_ALL=1): npm ci")
        pytest.skip("npm axe-core not installed (npm ci)")
    server = app_factory(redis_url=redis_url, publish_token=TOKEN, client_publish=True)
    # The page's CSP admits only its own nonced scripts: the test's injected axe needs it bypassed.
    context = new_context(color_scheme=scheme, bypass_csp=True)
    page = open_tabs(context, f"{server.base_url}/count/{slug}/", 1)[0]
    expect_counts([page], connections=1, tabs=1)
    page.click("#add")
    context.set_offline(True)
    expect(page.locator("#retry")).to_be_visible()
    page.fill("#publish-text", "typed offline")
    page.press("#publish-text", "Enter")
    expect(page.locator("#messages li.notice")).to_have_count(1)
    page.add_script_tag(path=str(AXE))

    seen = {"offline": page.evaluate(AXE_RUN)}
    context.set_offline(False)
    expect_connected([page], "sharedworker")
    for text in ("Hello from the API", {"deploy": "v42"}):
        publish(server.base_url, slug, TOKEN, text)
    expect(page.locator("#messages li")).to_have_count(3)
    page.locator("#messages").focus()
    seen["online"] = page.evaluate(AXE_RUN)
    assert seen == {"offline": [], "online": []}, json.dumps(seen, indent=1)


def test_server_error_for_one_subscription_shows_only_in_its_tab(
    app_factory: Callable[..., AppProcess], redis_url: str, new_context: Callable[..., BrowserContext],
    errors: ErrorLog, slug: str
) -> None:
    """Issue defect 4, from the server: the third tab's subscription on the shared socket is refused
    (too_many_tabs, naming room and sub); only that tab shows it (tests/test_engines.py: Firefox, WebKit)."""
    server = app_factory(redis_url=redis_url, publish_token=TOKEN, max_tabs_per_room=2)
    context = new_context()
    url = f"{server.base_url}/count/{slug}/"
    pages = open_tabs(context, url, 2)
    expect_counts(pages, connections=1, tabs=2)
    third = open_tabs(context, url, 1)[0]
    expect(third.locator("#messages li.notice .text")).to_have_text(
        ["at most 2 tabs per room per socket (too_many_tabs)"], timeout=20_000)
    assert publish(server.base_url, slug, TOKEN, "after the refusal") == 202
    expect_messages(pages, ["after the refusal"])  # and nothing else: the error came before it
    assert counts(server, slug) == (1, 2)
    assert errors.errors == []
