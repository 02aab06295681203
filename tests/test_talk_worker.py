"""The talk's SharedWorker, as written on the slides, against ``/ws/count/<slug>/``.

The worker answers every new tab with ``sharedWebSocket.send("PING")`` and forwards whatever
comes back to every tab, which shows ``data['connections']``: a ``PING`` must get the count,
never an error, or the second and third tabs of a browser show ``undefined``.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from support.browsers import LAUNCH_ARGS, chromium_path, eventually, metric
from support.clients import Client, connect, wait_until
from support.servers import ServerFactory

try:
    from playwright.sync_api import Browser, Page, expect, sync_playwright

    HAVE_PLAYWRIGHT = True
except ImportError:  # pragma: no cover - depends on the machine
    HAVE_PLAYWRIGHT = False


# -- the socket alone -----------------------------------------------------------------------


@pytest.mark.gen_test(timeout=60)
async def test_a_non_json_frame_on_the_count_socket_gets_the_count(
    server_factory: ServerFactory, clients: list[Client]
) -> None:
    server = await server_factory()
    a = await connect(server.ws_url("/ws/count/x/"))
    b = await connect(server.ws_url("/ws/count/x/"))
    clients += [a, b]
    await a.settles_on(2)
    await b.settles_on(2)
    seen = len(a.frames)
    await a.conn.write_message("PING")
    reply = await a.next("connection_message", after=seen)
    assert reply["room"] == "x" and reply["connections"] == 2 and reply["tabs"] == 2
    assert isinstance(reply["updated"], float)
    await a.conn.write_message("not json either")
    await wait_until(lambda: len(a.frames) >= seen + 2, what="a reply to each frame")
    assert [f["type"] for f in a.frames[seen:]] == ["connection_message", "connection_message"]
    assert a.of_type("error") == [] and server.metric("rrr_client_errors_total", {"code": "bad_json"}) == 0
    # /ws/ is the library's socket: there, text that is not JSON is still an error.
    c = await connect(server.ws_url("/ws/"))
    clients.append(c)
    await c.conn.write_message("PING")
    assert (await c.next("error", after=0))["code"] == "bad_json"


# -- the slides' code in Chromium --------------------------------------------------------------


@pytest.fixture
def browser() -> Iterator[Browser]:
    path = chromium_path()
    if not HAVE_PLAYWRIGHT or path is None:
        if os.environ.get("RRR_REQUIRE_ALL") == "1":
            pytest.fail("Python Playwright and /usr/bin/chromium are required (RRR_REQUIRE_ALL=1)")
        pytest.skip("Python Playwright or /usr/bin/chromium not installed")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=LAUNCH_ARGS)
        yield b
        b.close()


@pytest.fixture
def talk_server(app_factory: Callable[..., Any], redis_url: str) -> Any:
    return app_factory(redis_url=redis_url)


def shows(pages: list[Page], count: int, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    for page in pages:
        left_ms = max(1.0, (deadline - time.monotonic()) * 1000)
        expect(page.locator("#count")).to_have_text(str(count), timeout=left_ms)
        expect(page.locator("#updated")).to_have_text(re.compile(r"^\d+(\.\d+)?$"), timeout=left_ms)


@pytest.mark.browser
def test_the_talks_shared_worker_counts_browsers_not_tabs(talk_server: Any, browser: Browser) -> None:
    url = f"{talk_server.base_url}/examples/talk/talk-{secrets.token_hex(4)}/"
    first = browser.new_context()
    tabs = []
    for _ in range(3):
        page = first.new_page()
        page.goto(url)
        tabs.append(page)
    # Tabs 2 and 3 get their number only from the reply to the worker's PING.
    shows(tabs, 1)
    eventually(lambda: metric(talk_server.base_url, "rrr_open_sockets"), 1.0, what="one socket for three tabs")

    second = browser.new_context()
    other = second.new_page()
    other.goto(url)
    shows(tabs + [other], 2)

    second.close()
    shows(tabs, 1)
    assert metric(talk_server.base_url, "rrr_client_errors_total", 'code="bad_json"') == 0
    first.close()
