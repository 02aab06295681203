"""When WebSockets are blocked the page still counts and receives (issue #22), in Chromium (Playwright),
Firefox ESR (puppeteer-core) and WebKitGTK (WebKitWebDriver), through a real nginx in front of real
``app.py`` processes, with the path between them broken the ways networks break it:

- nginx refuses the upgrade on ``/ws/`` (403): the page settles on SSE;
- a middlebox accepts the upgrade and cuts the socket after 1 s, before any frame: SSE within 15 s;
- a proxy buffers ``/sse/`` (nginx gzips the event stream, holding every byte): long-polling.

And what must hold on any wire: the tabs of a browser share one stream, and a server restarting
while messages are published loses none and repeats none (recovery by offsets).
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from rrr import client as rrr_client
from support.browsers import metric, publish, room
from support.engines import (
    MINIBROWSER, ChromiumTabs, FirefoxTabs, Tabs, WebKitTabs, expect_counts, messages, open_tabs, text,
    unavailable, until, webdriver, xvfb_display,
)
from support.middlebox import Middlebox
from support.processes import AppProcess, need_binary
from support.production import Nginx, start_apps, stop_apps

pytestmark = [
    pytest.mark.browser,
    pytest.mark.nginx,
    pytest.mark.filterwarnings("ignore:setting remote_server_addr:DeprecationWarning"),
]

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "artifacts"
TOKEN = "fallback-test-token"
WIRE = {"websocket": "WebSocket", "sse": "SSE", "poll": "long-polling"}


def over(wire: str) -> str:
    """#state once the SharedWorker's wire is open."""
    return f"Connected via a SharedWorker over {WIRE[wire]}"


# -- the path between the browser and the apps ----------------------------------------------------


def patched(conf: str, location: str, old: str, new: str) -> str:
    """``conf`` with ``old`` replaced by ``new`` inside ``location`` (which must hold it)."""
    head, _, rest = conf.partition(f"location {location} {{")
    body, _, tail = rest.partition("}")
    assert old in body, f"{old!r} not in location {location}"
    return f"{head}location {location} {{{body.replace(old, new, 1)}}}{tail}"


@dataclass
class Front:
    """nginx and the app processes behind it, as a browser reaches them."""

    nginx: Nginx
    apps: list[AppProcess]
    redis_url: str
    middlebox: Middlebox | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return self.nginx.base_url

    def metric(self, name: str, labels: str = "") -> float:
        return sum(metric(a.base_url, name, labels) for a in self.apps if a.proc is not None)

    def access_log(self) -> str:
        path = self.nginx.run_dir / "logs" / "access.log"
        return path.read_text() if path.exists() else ""


@pytest.fixture
def front(tmp_path: Path, redis_url: str) -> Iterator[Callable[..., Front]]:
    """``front(*breaks, **app_options)``: one ``app.py`` behind nginx, the path broken as named:
    ``refuse-ws`` (403 on the upgrade), ``middlebox-ws`` (upgraded, then cut after 1 s with no frame),
    ``buffer-sse`` (the event stream gzipped, so nginx holds it)."""
    binary = need_binary("nginx")
    registry: list[AppProcess] = []
    made: list[Front] = []

    def start(*breaks: str, **app_options: Any) -> Front:
        apps = start_apps(tmp_path, redis_url, 1, registry, api_token=TOKEN, **app_options)
        run_dir = tmp_path / f"nginx-{len(made)}"
        run_dir.mkdir()
        nginx = Nginx(binary, run_dir, [a.port for a in apps], limit_conn=5000)
        conf = nginx.conf.read_text()
        box = None
        if "refuse-ws" in breaks:
            conf = patched(conf, "/ws/", "proxy_pass http://rrr_app;", "return 403;")
        if "middlebox-ws" in breaks:
            box = Middlebox(cut_after=1.0)
            conf = patched(conf, "/ws/", "proxy_pass http://rrr_app;", f"proxy_pass http://127.0.0.1:{box.port};")
        if "buffer-sse" in breaks:
            conf = patched(conf, "/sse/", "gzip off;",
                           "gzip on; gzip_types text/event-stream; gzip_min_length 0; gzip_buffers 16 64k;")
            conf = patched(conf, "/sse/", "proxy_buffering off;",
                           "proxy_buffering on; proxy_ignore_headers X-Accel-Buffering;")
        nginx.conf.write_text(conf)
        made.append(Front(nginx.start(), apps, redis_url, box))
        return made[-1]

    yield start
    for f in made:
        f.nginx.stop()
        if f.middlebox is not None:
            f.middlebox.close()
    stop_apps(registry)


# -- the engines ---------------------------------------------------------------------------------


@pytest.fixture(params=["chromium", "firefox", "webkit"])
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def xvfb(tmp_path: Path) -> Iterator[str]:
    with xvfb_display(tmp_path / "xvfb.log") as display:
        yield display


@pytest.fixture
def browser(engine: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Tabs]:
    """A fresh profile of the engine: nothing remembered about which transport worked."""
    home = tmp_path / "home"
    home.mkdir()
    tabs: Tabs
    if engine == "chromium":
        tabs = ChromiumTabs()
    elif engine == "firefox":
        firefox, node = need_binary("firefox-esr"), need_binary("node")
        if not (ROOT / "node_modules" / "puppeteer-core").is_dir():
            unavailable("npm puppeteer-core (npm ci)")
        tabs = FirefoxTabs(firefox, node, home, tmp_path / "firefox.log", None)
    else:
        driver = need_binary("WebKitWebDriver")
        if webdriver is None:
            unavailable("Python selenium")
        if not os.path.exists(MINIBROWSER):
            unavailable(MINIBROWSER)
        tabs = WebKitTabs(driver, request.getfixturevalue("xvfb"), home, [])
    yield tabs
    tabs.quit()


@pytest.fixture
def slug() -> str:
    return "f-" + secrets.token_hex(4)


def page_errors(tabs: Tabs) -> list[str]:
    """Errors other than the failed connections a blocked path is expected to cause."""
    expected = ("WebSocket", "ws://", "/ws/", "/sse/", "EventSource", "event-stream", "net::ERR", "can't establish")
    return [e for e in tabs.errors() if not any(word in e for word in expected)]


def state(tabs: Tabs, tab: int) -> Any:
    return text(tabs, tab, "#state")


def settles_on(tabs: Tabs, tab: int, wire: str, within: float) -> float:
    """Seconds until the tab's #state says it is connected over ``wire`` (counted from now)."""
    started = time.monotonic()
    until(lambda: state(tabs, tab), over(wire), within, f"tab {tab} connected over {WIRE[wire]}")
    return time.monotonic() - started


def record(engine: str, name: str, seen: dict[str, Any]) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"fallback-{engine}-{name}.json").write_text(json.dumps(seen) + "\n")


# -- the tests ---------------------------------------------------------------------------------------


def test_with_the_upgrade_refused_the_page_counts_and_hears_messages_over_sse(
    browser: Tabs, front: Callable[..., Front], engine: str, slug: str,
) -> None:
    f = front("refuse-ws")
    opened = time.monotonic()
    tab = browser.open(f"{f.base_url}/count/{slug}/")
    until(lambda: (state(browser, tab), text(browser, tab, "#count")), (over("sse"), "1"), 15,
          "counts over SSE within 15 s of the page opening")
    took = time.monotonic() - opened
    assert " 403 " in f.access_log() and "GET /ws/" in f.access_log(), "the upgrade was refused"
    assert f.metric("rrr_open_sessions", 'transport="sse"') == 1
    assert publish(f.base_url, slug, TOKEN, {"over": "sse"}) == 202
    until(lambda: messages(browser, tab), ['message:{"over":"sse"}'], 10, "the message")
    assert room(f.base_url, slug)["connections"] == 1
    assert page_errors(browser) == []
    record(engine, "refused", {"browser": browser.version, "counts_over_sse_after_s": round(took, 2)})


def test_a_middlebox_that_kills_the_upgraded_socket_moves_the_page_to_sse_within_15_s(
    browser: Tabs, front: Callable[..., Front], engine: str, slug: str,
) -> None:
    f = front("middlebox-ws")
    opened = time.monotonic()
    tab = browser.open(f"{f.base_url}/count/{slug}/")
    until(lambda: (state(browser, tab), text(browser, tab, "#count")), (over("sse"), "1"), 15,
          "settled on SSE within 15 s")
    took = time.monotonic() - opened
    assert f.middlebox is not None and f.middlebox.upgrades >= 1, "the upgrade was accepted"
    assert f.middlebox.held and min(f.middlebox.held) >= 1.0, "and the open socket cut a second later"
    assert publish(f.base_url, slug, TOKEN, "after the middlebox") == 202
    until(lambda: messages(browser, tab), ["message:after the middlebox"], 10, "the message")
    assert page_errors(browser) == []
    record(engine, "middlebox", {"browser": browser.version, "sse_after_s": round(took, 2),
                                 "upgrades_cut": f.middlebox.upgrades})


def test_a_proxy_that_buffers_the_event_stream_moves_the_page_to_long_polling(
    browser: Tabs, front: Callable[..., Front], engine: str, slug: str,
) -> None:
    f = front("refuse-ws", "buffer-sse", poll_timeout=5)
    opened = time.monotonic()
    tab = browser.open(f"{f.base_url}/count/{slug}/")
    until(lambda: (state(browser, tab), text(browser, tab, "#count")), (over("poll"), "1"), 30,
          "settled on long-polling")
    took = time.monotonic() - opened
    until(lambda: f.metric("rrr_open_sessions", 'transport="sse"'), 0, 10, "the silent stream given up")
    assert f.metric("rrr_open_sessions", 'transport="poll"') == 1
    assert publish(f.base_url, slug, TOKEN, "by polling") == 202
    until(lambda: messages(browser, tab), ["message:by polling"], 10, "the message")
    time.sleep(6)  # past --poll-timeout: the empty polls come back and the page stays connected
    assert state(browser, tab) == over("poll")
    assert publish(f.base_url, slug, TOKEN, "after an empty poll") == 202
    until(lambda: messages(browser, tab), ["message:after an empty poll", "message:by polling"], 10, "messages")
    assert page_errors(browser) == []
    record(engine, "buffered", {"browser": browser.version, "polling_after_s": round(took, 2)})


def test_three_tabs_hold_one_stream(browser: Tabs, front: Callable[..., Front], engine: str, slug: str) -> None:
    f = front("refuse-ws")
    pages = open_tabs(browser, f"{f.base_url}/count/{slug}/", 3)
    expect_counts(browser, pages, connections=1, n=3, within=30)
    for tab in pages:
        until(lambda: state(browser, tab), over("sse"), 10, f"tab {tab} over SSE")
    assert f.metric("rrr_open_sockets") == 1
    assert f.metric("rrr_open_sessions", 'transport="sse"') == 1
    assert room(f.base_url, slug) | {"updated": None} == {"room": slug, "connections": 1, "tabs": 3, "updated": None}
    assert publish(f.base_url, slug, TOKEN, "to three tabs") == 202
    for tab in pages:
        until(lambda: messages(browser, tab), ["message:to three tabs"], 10, f"tab {tab} message")
    browser.close(pages.pop())
    expect_counts(browser, pages, connections=1, n=2)
    assert f.metric("rrr_open_sessions", 'transport="sse"') == 1
    assert page_errors(browser) == []


@pytest.mark.parametrize("wire", ["sse", "poll"])
def test_a_server_restart_while_messages_are_published_loses_and_repeats_nothing(
    browser: Tabs, front: Callable[..., Front], engine: str, slug: str, wire: str,
) -> None:
    f = front("refuse-ws", *(["buffer-sse"] if wire == "poll" else []), poll_timeout=5)
    pages = open_tabs(browser, f"{f.base_url}/count/{slug}/", 2)
    for tab in pages:
        until(lambda: state(browser, tab), over(wire), 30, f"tab {tab} over {WIRE[wire]}")
    expect_counts(browser, pages, connections=1, n=2)

    # A backend publishes straight to Redis (rrr.client), every 100 ms, through the restart.
    total = 30
    published: list[int] = []

    def backend() -> None:
        for n in range(total):
            rrr_client.publish(slug, n, redis_url=f.redis_url)
            published.append(n)
            time.sleep(0.1)

    publisher = threading.Thread(target=backend)
    publisher.start()
    try:
        until(lambda: len(published) >= 8, True, 10, "a few messages before the restart")
        app = f.apps[0]
        app.stop()
        time.sleep(0.5)
        app.start()
    finally:
        publisher.join(30)
    assert published == list(range(total))

    expected = [f"message:{n}" for n in reversed(range(total))]  # newest first
    for tab in pages:
        until(lambda: messages(browser, tab), expected, 40, f"tab {tab}: every message once, in order")
        until(lambda: state(browser, tab), over(wire), 20, f"tab {tab} back over {WIRE[wire]}")
    expect_counts(browser, pages, connections=1, n=2)
    assert f.metric("rrr_open_sessions", f'transport="{wire}"') == 1
    assert page_errors(browser) == []
