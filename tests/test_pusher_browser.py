"""pusher-js 8 (npm, unchanged) in Chromium against ``app.py``: connect, public, private, presence
and cache channels, member events, client events (never echoed), a reconnect after the server
restarts, and 4001 for a wrong key. The page is served by a plain HTTP server on loopback (a page
Chromium deems public may not open a socket to 127.0.0.1), an origin rrr allows
(``--allowed-origins``); channel authorizations are signed by rrr's own signing module, exposed to
the page."""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import threading
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from rrr.pusher.signing import channel_auth
from support.browsers import LAUNCH_ARGS, chromium_path
from support.processes import ROOT, AppProcess
from support.pusher import PUSHER_KEY, PUSHER_OPTIONS, PUSHER_SECRET

try:
    from playwright.sync_api import Browser, Page, sync_playwright
except ImportError:  # pragma: no cover - the dev extra installs it
    sync_playwright = None  # type: ignore[assignment]

pytestmark = pytest.mark.browser

PUSHER_JS = ROOT / "node_modules" / "pusher-js" / "dist" / "web" / "pusher.min.js"
WAIT_MS = 15_000

CONNECT = """([key, port, user]) => {
  window.log = [];
  window.pusher = new Pusher(key, {
    wsHost: "127.0.0.1", wsPort: port, forceTLS: false, enabledTransports: ["ws"], cluster: "x", disableStats: true,
    channelAuthorization: { customHandler: ({ socketId, channelName }, cb) =>
      window.sign(socketId, channelName, user).then((r) => cb(null, r), (e) => cb(e, null)) },
  });
  pusher.connection.bind("state_change", ({ current }) =>
    log.push({ state: current, id: pusher.connection.socket_id }));
  pusher.connection.bind("error", (e) => log.push({ error: e?.error?.data ?? e?.data ?? null }));
}"""

SUBSCRIBE = """(channel) => {
  const ch = pusher.subscribe(channel);
  ch.bind_global((event, data) => {
    if (event === "pusher:subscription_succeeded" && ch.members) {
      const ids = []; ch.members.each((m) => ids.push(m.id)); data = { ids: ids.sort() };
    }
    log.push({ channel, event, data });
  });
}"""


@pytest.fixture
def browser() -> Iterator[Browser]:
    path = chromium_path()
    missing = "Python Playwright" if sync_playwright is None else None if path else "/usr/bin/chromium"
    if missing:
        if os.environ.get("RRR_REQUIRE_ALL") == "1":
            pytest.fail(f"{missing} is required (RRR_REQUIRE_ALL=1) but not installed")
        pytest.skip(f"{missing} not installed")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=LAUNCH_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The page and pusher-js's browser build, served from a directory by the standard library."""
    root = tmp_path_factory.mktemp("pusher-page")
    (root / "index.html").write_text('<!doctype html><script src="/pusher.min.js"></script>')
    shutil.copy(PUSHER_JS, root / "pusher.min.js")
    handler = functools.partial(Quiet, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def server(app_factory: Callable[..., AppProcess], redis_url: str, origin: str) -> AppProcess:
    return app_factory(redis_url=redis_url, allowed_origins=origin, api_token="tok", **PUSHER_OPTIONS)


def sign(socket_id: str, channel: str, user: Any) -> dict[str, str]:
    """What an app's authorization endpoint answers (a presence channel: as ``user``)."""
    if channel.startswith("presence-"):
        data = json.dumps(user)
        return {"auth": channel_auth(PUSHER_KEY, PUSHER_SECRET, socket_id, channel, data), "channel_data": data}
    return {"auth": channel_auth(PUSHER_KEY, PUSHER_SECRET, socket_id, channel)}


def open_page(browser: Browser, origin: str, server: AppProcess, user: Any = None, key: str = PUSHER_KEY) -> Page:
    page = browser.new_context().new_page()
    page.expose_function("sign", sign)
    page.goto(origin + "/")
    page.evaluate(CONNECT, [key, server.port, user])
    return page


def connected(page: Page) -> str:
    page.wait_for_function("log.some((e) => e.state === 'connected')", timeout=WAIT_MS)
    return str(page.evaluate("pusher.connection.socket_id"))


def subscribed(page: Page, channel: str) -> Any:
    page.evaluate(SUBSCRIBE, channel)
    return got(page, channel, "pusher:subscription_succeeded")


def got(page: Page, channel: str, event: str, n: int = 1) -> Any:
    page.wait_for_function(
        "([c, e, n]) => log.filter((x) => x.channel === c && x.event === e).length >= n", arg=[channel, event, n],
        timeout=WAIT_MS)
    return page.evaluate("([c, e]) => log.filter((x) => x.channel === c && x.event === e).map((x) => x.data)",
                         [channel, event])[n - 1]


def publish(server: AppProcess, room: str, event: str, data: Any) -> None:
    request = urllib.request.Request(f"{server.base_url}/api/rooms/{room}/messages?event={event}",
                                     data=json.dumps(data).encode(), method="POST",
                                     headers={"Authorization": "Bearer tok"})
    with urllib.request.urlopen(request, timeout=5) as r:
        assert r.status == 202


def test_pusher_js_in_chromium_public_private_presence_cache_and_client_events(
    browser: Browser, origin: str, server: AppProcess,
) -> None:
    ada = open_page(browser, origin, server, {"user_id": "ada", "user_info": {"n": 1}})
    bob = open_page(browser, origin, server, {"user_id": "bob", "user_info": {"n": 2}})
    assert connected(ada) != connected(bob)
    for page in (ada, bob):
        subscribed(page, "news")
        subscribed(page, "private-ledger")
    publish(server, "news", "headline", {"t": "hi"})
    publish(server, "private-ledger", "entry", [1, 2])
    for page in (ada, bob):
        assert got(page, "news", "headline") == {"t": "hi"}
        assert got(page, "private-ledger", "entry") == [1, 2]
    assert subscribed(ada, "presence-team") == {"ids": ["ada"]}
    assert subscribed(bob, "presence-team") == {"ids": ["ada", "bob"]}
    assert got(ada, "presence-team", "pusher:member_added") == {"id": "bob", "info": {"n": 2}}
    bob.evaluate("pusher.channel('presence-team').trigger('client-typing', {on: true})")
    assert got(ada, "presence-team", "client-typing") == {"on": True}
    bob.wait_for_timeout(300)
    assert bob.evaluate("log.filter((x) => x.event === 'client-typing').length") == 0  # not echoed
    # A cache channel: a miss, then the last event for whoever subscribes after it.
    subscribed(ada, "cache-price")
    got(ada, "cache-price", "pusher:cache_miss")
    publish(server, "cache-price", "price", {"eur": 3})
    subscribed(bob, "cache-price")
    assert got(bob, "cache-price", "price") == {"eur": 3}
    bob.close()
    assert got(ada, "presence-team", "pusher:member_removed") == {"id": "bob", "info": {"n": 2}}


def test_pusher_js_in_chromium_gets_4001_for_a_wrong_key_and_reconnects_after_a_restart(
    browser: Browser, origin: str, server: AppProcess,
) -> None:
    wrong = open_page(browser, origin, server, key="not-our-key")
    wrong.wait_for_function("log.some((e) => e.error && e.error.code === 4001)", timeout=WAIT_MS)
    wrong.wait_for_function("log.some((e) => e.state === 'disconnected')", timeout=WAIT_MS)
    page = open_page(browser, origin, server)
    before = connected(page)
    subscribed(page, "news")
    server.stop()  # SIGTERM: every socket closed with 4200, reconnect at once
    page.wait_for_function("log.some((e) => e.error && e.error.code === 4200)", timeout=WAIT_MS)
    server.start()
    page.wait_for_function("([id]) => log.some((e) => e.state === 'connected' && e.id !== id)", arg=[before],
                           timeout=30_000)
    got(page, "news", "pusher:subscription_succeeded", 2)  # resubscribed by itself
    publish(server, "news", "back", {"ok": True})
    assert got(page, "news", "back") == {"ok": True}
