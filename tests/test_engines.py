"""The browser library's core promises in Firefox ESR and WebKitGTK (Chromium: tests/test_browser.py).

Each engine is driven through the same small `Tabs` interface (tests/support/engines.py: open a tab,
evaluate an expression in it, close it), so one set of tests runs per engine:

- firefox: tests/engines/firefox.mjs, npm ``puppeteer-core`` over WebDriver BiDi (no browser
  download, no geckodriver), answering one JSON command per line on stdin/stdout;
- webkit: Python ``selenium`` with ``WebKitWebDriver`` and MiniBrowser on a private Xvfb display.

All waiting happens here, by polling the page's text, against a real ``python app.py``.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from support.browsers import metric, publish, room
from support.engines import (
    MINIBROWSER, FirefoxTabs, Tabs, WebKitTabs, expect_counts, messages, open_tabs, status, text, unavailable,
    until, webdriver, xvfb_display,
)
from support.processes import AppProcess, need_binary

pytestmark = [
    pytest.mark.browser,
    # selenium's own WebKitGTK driver still builds its RemoteConnection the deprecated way
    pytest.mark.filterwarnings("ignore:setting remote_server_addr:DeprecationWarning"),
]


ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "artifacts"
TOKEN = "engines-test-token"
# The transport each engine picks on its own (nothing deleted): the server's hello label, and
# how its pages say it in #state.
EXPECTED_TRANSPORT = {"firefox": "sharedworker", "webkit": "sharedworker"}
# How a transport is forced: WebKit is started with the APIs above it turned off (MiniBrowser
# --features); in Firefox 153 the pref dom.workers.sharedWorkers.enabled=false leaves SharedWorker
# defined (the pref is gone), so its tabs delete it before any script, as tests/test_browser.py does.
WEBKIT_FEATURES = {
    "sharedworker": [],
    "leader": ["--features=-SharedWorker"],
    "direct": ["--features=-SharedWorker,-BroadcastChannel"],
}
FIREFOX_INIT = {
    "sharedworker": None, "leader": "delete window.SharedWorker;",
    "direct": "delete window.SharedWorker; delete window.BroadcastChannel;",
}
STATE_TEXT = {"sharedworker": "a SharedWorker", "leader": "a leader tab", "direct": "this tab's own socket"}


def connected(sharing: str) -> str:
    """#state once open: how the browser shares its connection, then the wire (a WebSocket here)."""
    return f"Connected via {STATE_TEXT[sharing]} over WebSocket"


@pytest.fixture
def xvfb(tmp_path: Path) -> Iterator[str]:
    """A private X display; Xvfb picks a free number itself (-displayfd)."""
    with xvfb_display(tmp_path / "xvfb.log") as display:
        yield display


# -- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture(params=["firefox", "webkit"])
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def transport() -> str:
    """The transport a test forces (by starting the browser without the APIs above it)."""
    return "sharedworker"


@pytest.fixture
def launch(
    engine: str, transport: str, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[[], Tabs]]:
    """Start a browser profile of the engine (each call a new one, with its own home), forced onto
    the test's transport; all are quit after the test."""
    started: list[Tabs] = []

    def start() -> Tabs:
        home = tmp_path / f"home-{len(started)}"
        home.mkdir()
        tabs: Tabs
        if engine == "firefox":
            firefox = need_binary("firefox-esr")
            node = need_binary("node")
            if not (ROOT / "node_modules" / "puppeteer-core").is_dir():
                unavailable("npm puppeteer-core (npm ci)")
            log = tmp_path / f"firefox-{len(started)}.log"
            tabs = FirefoxTabs(firefox, node, home, log, FIREFOX_INIT[transport])
        else:
            driver_path = need_binary("WebKitWebDriver")
            if webdriver is None:
                unavailable("Python selenium")
            if not os.path.exists(MINIBROWSER):
                unavailable(MINIBROWSER)
            tabs = WebKitTabs(driver_path, request.getfixturevalue("xvfb"), home, WEBKIT_FEATURES[transport])
        started.append(tabs)
        return tabs

    yield start
    for tabs in started:
        tabs.quit()


@pytest.fixture
def browser(launch: Callable[[], Tabs]) -> Tabs:
    return launch()


@pytest.fixture
def server(app_factory: Callable[..., AppProcess], redis_url: str) -> AppProcess:
    return app_factory(redis_url=redis_url, api_token=TOKEN)


@pytest.fixture
def slug() -> str:
    return "e-" + secrets.token_hex(4)


# -- helpers --------------------------------------------------------------------------------------


def sockets(server: AppProcess) -> float:
    return metric(server.base_url, "rrr_open_sockets")


def sockets_by(server: AppProcess, transport: str) -> float:
    return metric(server.base_url, "rrr_sockets_by_transport", f'transport="{transport}"')


# -- the behaviours, once per engine ----------------------------------------------------------------


def test_tabs_share_one_socket_get_each_message_once_and_follow_a_close(
    browser: Tabs, server: AppProcess, engine: str, slug: str
) -> None:
    pages = open_tabs(browser, f"{server.base_url}/count/{slug}/", 3)

    # (1) Reduce: three tabs, one socket, and every tab says 1 / 3.
    expect_counts(browser, pages, connections=1, n=3)
    until(lambda: sockets(server), 1, 10, "open sockets")
    assert room(server.base_url, slug) | {"updated": None} == {
        "room": slug, "connections": 1, "tabs": 3, "updated": None,
    }
    # (4) The transport the engine picked by itself.
    for tab in pages:
        until(lambda: status(browser, tab), "open", 10, f"tab {tab} status")
        assert text(browser, tab, "#state") == connected(EXPECTED_TRANSPORT[engine])
    until(lambda: sockets_by(server, EXPECTED_TRANSPORT[engine]), 1, 10, "hello transport")
    seen = {"browser": browser.version, "transport": EXPECTED_TRANSPORT[engine], "state": text(browser, 0, "#state")}

    # (3) An API message reaches every tab once, as text.
    assert publish(server.base_url, slug, TOKEN, "<b>not bold</b>") == 202
    assert publish(server.base_url, slug, TOKEN, {"n": 1}) == 202
    for tab in pages:
        until(lambda: messages(browser, tab), ['message:{"n":1}', "message:<b>not bold</b>"], 10, f"tab {tab} messages")
        assert browser.eval(tab, "document.querySelectorAll('#messages b').length") == 0

    # (2) Closing a tab: the others follow to 1 / 2, still on one socket.
    closed_at = time.monotonic()
    browser.close(pages.pop())
    expect_counts(browser, pages, connections=1, n=2)
    seen["close_seen_after_s"] = round(time.monotonic() - closed_at, 2)
    assert room(server.base_url, slug)["tabs"] == 2
    assert sockets(server) == 1
    for tab in pages:  # nothing arrived twice, nothing went wrong meanwhile
        assert messages(browser, tab) == ['message:{"n":1}', "message:<b>not bold</b>"]
    assert browser.errors() == []
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"engine-{engine}.json").write_text(json.dumps(seen) + "\n")


def test_tabs_come_back_after_server_restart(browser: Tabs, server: AppProcess, engine: str, slug: str) -> None:
    pages = open_tabs(browser, f"{server.base_url}/count/{slug}/", 3)
    expect_counts(browser, pages, connections=1, n=3)

    server.stop()
    for tab in pages:
        until(lambda: status(browser, tab) in ("reconnecting", "connecting"), True, 20, f"tab {tab} notices")
    server.start()

    # The pages keep showing the last numbers while they reconnect, so ask the server, then prove
    # each tab is subscribed again with a message.
    until(lambda: room(server.base_url, slug)["tabs"], 3, 40, "tabs subscribed again")
    until(lambda: sockets(server), 1, 10, "open sockets after restart")
    for tab in pages:
        until(lambda: text(browser, tab, "#state"), connected(EXPECTED_TRANSPORT[engine]), 10, "state")
    assert publish(server.base_url, slug, TOKEN, "after the restart") == 202
    for tab in pages:
        until(lambda: messages(browser, tab), ["message:after the restart"], 10, f"tab {tab} messages")
    expect_counts(browser, pages, connections=1, n=3)
    assert room(server.base_url, slug)["connections"] == 1
    assert browser.errors() == []


@pytest.mark.parametrize("transport", ["leader"])
def test_leader_tab_owns_the_socket_without_shared_worker(
    browser: Tabs, server: AppProcess, engine: str, transport: str, slug: str
) -> None:
    url = f"{server.base_url}/count/{slug}/"
    leader = browser.open(url)  # alone, so it is elected; the others follow it
    expect_counts(browser, [leader], connections=1, n=1)
    assert browser.eval(leader, "typeof SharedWorker") == "undefined"
    followers = open_tabs(browser, url, 2)

    expect_counts(browser, [leader, *followers], connections=1, n=3)
    for tab in [leader, *followers]:
        until(lambda: text(browser, tab, "#state"), connected("leader"), 10, f"tab {tab} state")
    until(lambda: sockets(server), 1, 10, "open sockets")
    until(lambda: sockets_by(server, "leader"), 1, 10, "hello transport=leader")

    browser.close(leader)  # a follower takes over: a new socket, the same numbers less one tab
    expect_counts(browser, followers, connections=1, n=2)
    until(lambda: sockets(server), 1, 10, "open sockets after the takeover")
    assert publish(server.base_url, slug, TOKEN, "new leader") == 202
    for tab in followers:
        until(lambda: messages(browser, tab), ["message:new leader"], 10, f"tab {tab} messages")
        assert text(browser, tab, "#state") == connected("leader")
    assert browser.errors() == []


# -- more of the promises, once per engine ------------------------------------------------------------


def counts(server: AppProcess, slug: str) -> tuple[int, int]:
    data = room(server.base_url, slug)
    return int(data["connections"]), int(data["tabs"])


def holds(read: Callable[[], Any], expected: Any, seconds: float, what: str) -> None:
    """``read()`` equals ``expected`` at every poll for ``seconds`` (no flip-flopping)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert (value := read()) == expected, f"{what}: {value!r} while it should stay {expected!r}"
        time.sleep(0.2)


def record(engine: str, name: str, seen: dict[str, Any]) -> None:
    """What a test observed, for the engine table of docs/reference/browser.md:
    tests/artifacts/engine-<engine>-<name>.json."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"engine-{engine}-{name}.json").write_text(json.dumps(seen) + "\n")


def test_page_restored_with_back_counts_once_and_hears_messages(
    browser: Tabs, server: AppProcess, engine: str, slug: str
) -> None:
    """Issue defect 1. WebKit keeps the page in its back/forward cache (and releases its Web Locks
    there); the restored page must be counted exactly once, steadily, and get messages. Firefox
    loads the page anew on Back; the same promise holds."""
    url = f"{server.base_url}/count/{slug}/"
    pages = open_tabs(browser, url, 2)
    expect_counts(browser, pages, connections=1, n=2)
    browser.eval(pages[1], "(window.__before_away = true)")  # survives only a restore, not a reload

    browser.goto(pages[1], f"{server.base_url}/count/{slug}-away/")  # same origin: eligible for the cache
    until(lambda: counts(server, slug), (1, 1), 10, "counts while away")
    browser.back(pages[1])
    until(lambda: browser.eval(pages[1], "location.pathname"), f"/count/{slug}/", 10, "back on the room")
    restored = browser.eval(pages[1], "window.__before_away === true")
    if engine == "webkit":
        assert restored, "WebKit restores the page from its back/forward cache (where defect 1 showed)"

    until(lambda: counts(server, slug), (1, 2), 20, "counts after Back")
    holds(lambda: counts(server, slug), (1, 2), seconds=6, what="counts after Back")  # the defect flipped every ~2 s
    expect_counts(browser, pages, connections=1, n=2)
    for tab in pages:
        until(lambda: status(browser, tab), "open", 10, f"tab {tab} status")
    assert publish(server.base_url, slug, TOKEN, "after Back") == 202
    for tab in pages:
        until(lambda: messages(browser, tab)[:1], ["message:after Back"], 10, f"tab {tab} messages")
    until(lambda: counts(server, f"{slug}-away"), (0, 0), 10, "the page left behind")
    assert sockets(server) == 1
    assert browser.errors() == []
    record(engine, "bfcache", {"restored_from_cache": restored})


# Firefox: no way found to crash one tab from puppeteer over BiDi (about:crashcontent is refused to a
# content navigation, and same-site tabs share content processes, so killing one takes several tabs).
@pytest.mark.parametrize("engine", ["webkit"])
def test_crashed_tab_is_dropped(browser: Tabs, server: AppProcess, engine: str, slug: str) -> None:
    pages = open_tabs(browser, f"{server.base_url}/count/{slug}/", 3)
    expect_counts(browser, pages, connections=1, n=3)
    crashed = pages.pop()
    browser.crash(crashed)  # SIGKILL of the tab's web process
    # WebKitWebDriver ends its session once a page crashes, so the server tells what the tabs would show.
    until(lambda: counts(server, slug), (1, 2), 10, "counts after the crash")
    holds(lambda: (counts(server, slug), sockets(server)), ((1, 2), 1), seconds=3, what="counts and sockets")


def test_offline_then_online(browser: Tabs, server: AppProcess, engine: str, slug: str) -> None:
    pages = open_tabs(browser, f"{server.base_url}/count/{slug}/", 2)
    expect_counts(browser, pages, connections=1, n=2)

    how = browser.set_offline(True)
    for tab in pages:
        until(lambda: status(browser, tab), "offline", 10, f"tab {tab} status")
        assert browser.eval(tab, "document.getElementById('retry').offsetParent !== null"), "Retry now shows"
    until(lambda: sockets(server), 0, 10, "open sockets while offline")

    browser.set_offline(False)
    expect_counts(browser, pages, connections=1, n=2)
    for tab in pages:
        until(lambda: status(browser, tab), "open", 20, f"tab {tab} status")
    until(lambda: counts(server, slug), (1, 2), 10, "counts when back online")
    assert publish(server.base_url, slug, TOKEN, "back online") == 202
    for tab in pages:
        until(lambda: messages(browser, tab), ["message:back online"], 10, f"tab {tab} messages")
    assert browser.errors() == []
    record(engine, "offline", {"offline_by": how})


def test_two_profiles_are_two_connections(
    launch: Callable[[], Tabs], server: AppProcess, engine: str, slug: str
) -> None:
    url = f"{server.base_url}/count/{slug}/"
    first, second = launch(), launch()
    a = open_tabs(first, url, 2)
    b = open_tabs(second, url, 1)
    expect_counts(first, a, connections=2, n=3)
    expect_counts(second, b, connections=2, n=3)
    until(lambda: sockets(server), 2, 10, "open sockets")
    assert first.errors() == [] and second.errors() == []


@pytest.mark.parametrize("transport", ["direct"])
def test_without_shared_worker_or_broadcast_channel_each_tab_has_its_own_socket(
    browser: Tabs, server: AppProcess, engine: str, transport: str, slug: str
) -> None:
    pages = open_tabs(browser, f"{server.base_url}/count/{slug}/", 3)
    assert browser.eval(pages[0], "[typeof SharedWorker, typeof BroadcastChannel]") == ["undefined", "undefined"]
    expect_counts(browser, pages, connections=3, n=3)
    for tab in pages:
        until(lambda: text(browser, tab, "#state"), connected("direct"), 10, f"tab {tab} state")
    until(lambda: sockets_by(server, "direct"), 3, 10, "hello transport=direct")
    assert publish(server.base_url, slug, TOKEN, "to each socket") == 202
    for tab in pages:
        until(lambda: messages(browser, tab), ["message:to each socket"], 10, f"tab {tab} messages")
    browser.close(pages.pop())
    expect_counts(browser, pages, connections=2, n=2, within=5)
    assert browser.errors() == []


def test_error_for_one_subscription_shows_only_in_its_tab(
    browser: Tabs, app_factory: Callable[..., AppProcess], redis_url: str, engine: str, slug: str
) -> None:
    """Issue defect 4: the server refuses the third tab's subscription on the shared socket
    (too_many_tabs, naming room and sub); only that tab says so."""
    server = app_factory(redis_url=redis_url, api_token=TOKEN, max_tabs_per_room=2)
    url = f"{server.base_url}/count/{slug}/"
    pages = open_tabs(browser, url, 2)
    expect_counts(browser, pages, connections=1, n=2)
    third = browser.open(url)
    until(lambda: [m for m in messages(browser, third) if m.startswith("notice:")][:1],
          ["notice:at most 2 tabs per room per socket (too_many_tabs)"], 20, "the refused tab's notice")
    assert publish(server.base_url, slug, TOKEN, "after the refusal") == 202
    for tab in pages:  # the message came after the error: had the error reached them, it would be there
        until(lambda: messages(browser, tab), ["message:after the refusal"], 10, f"tab {tab} messages")
    assert counts(server, slug) == (1, 2)
    assert browser.errors() == []
