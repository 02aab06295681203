"""The example Django site with Pusher's browser SDKs, in Chromium: its /pusher/ page driven by
pusher-js 8 (the same presence room as the pages on rrr's own library: a mixed room, each side
seeing the other and the other's events), and Laravel Echo 2 (its pusher connector) against
rrr.django's Pusher auth views: ``Echo.private``, ``Echo.join`` ``here``/``joining``/``leaving``,
``whisper``/``listenForWhisper``. Both SDKs unchanged, from npm."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from rrr.backplane.embedded import EmbeddedRedis
from support.django_site import API_KEY, PASSWORD, WAIT_MS, Site, online, run_site
from support.processes import ROOT

ECHO = ROOT / "node_modules" / "laravel-echo" / "dist" / "echo.iife.js"


@pytest.fixture(scope="module")
def site(redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    yield from run_site(redis_server, tmp_path_factory.mktemp("django-pusher"))


def publish(site: Site, room: str, event: str, data: Any) -> None:
    request = urllib.request.Request(
        f"{site.rrr_url}/api/rooms/{room}/messages?event={event}", data=json.dumps(data).encode(), method="POST",
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    with urllib.request.urlopen(request, timeout=5) as r:
        assert r.status == 202


def pusher_page(page: Page, site: Site, bare: bool = False) -> None:
    page.goto(site.url + "/pusher/" + ("?bare=1" if bare else ""))
    if not bare:
        expect(page.locator("#pusher-status")).to_have_attribute("data-status", "connected", timeout=WAIT_MS)


@pytest.mark.browser
def test_pusher_js_and_rrr_js_share_one_presence_room_and_hear_each_other(site: Site, sign_in: Any) -> None:
    alice = sign_in("alice")  # rrr's own library (the items page)
    bob = sign_in("bob")
    page = bob.pages[0]
    pusher_page(page, site)  # pusher-js only
    expect(page.locator('#pusher-members li[data-user="alice"]')).to_have_count(1, timeout=WAIT_MS)
    expect(page.locator('#pusher-members li[data-user="bob"]')).to_have_text("bob (you)")
    expect(online(alice.pages[0], "bob")).to_have_count(1, timeout=WAIT_MS)

    alice.pages[0].click("#wave")  # an rrr.js whisper
    wave = page.locator(f'#pusher-events li[data-event="client-wave"][data-from="{alice.id}"]')
    expect(wave).to_have_count(1, timeout=WAIT_MS)
    page.click("#wave")  # a pusher-js client event
    heard = alice.pages[0].locator(f'#site-events li[data-event="client-wave"][data-from="{bob.id}"]')
    expect(heard).to_have_count(1, timeout=WAIT_MS)
    # Never back to the sender.
    expect(page.locator(f'#pusher-events li[data-from="{bob.id}"]')).to_have_count(0)
    expect(alice.pages[0].locator(f'#site-events li[data-from="{alice.id}"]')).to_have_count(0)
    # The backend's publish reaches both, as the event it names.
    publish(site, "presence-site", "announcement", {"from": "backend"})
    for locator in (page.locator('#pusher-events li[data-event="announcement"]'),
                    alice.pages[0].locator('#site-events li[data-event="announcement"]')):
        expect(locator).to_have_count(1, timeout=WAIT_MS)

    page.goto("about:blank")  # bob's pusher-js socket goes: alice's list loses him
    expect(online(alice.pages[0], "bob")).to_have_count(0, timeout=WAIT_MS)


ECHO_SETUP = """([key, host, port, csrf]) => {
  window.echo = new window.Echo.default({
    broadcaster: "pusher", key, wsHost: host, wsPort: Number(port), forceTLS: false, enabledTransports: ["ws"],
    cluster: "rrr", disableStats: true, authEndpoint: "/rrr/pusher/auth/",
    auth: { headers: { "X-CSRFToken": csrf } },
  });
  window.seen = { here: [], joining: [], leaving: [], whispers: [], items: [], errors: [] };
}"""

ECHO_JOIN = """(userId) => {
  window.echo.join("site")
    .here((users) => { window.seen.here = users.map((u) => u.name).sort(); })
    .joining((user) => window.seen.joining.push(user.name))
    .leaving((user) => window.seen.leaving.push(user.name))
    .listenForWhisper("typing", (e) => window.seen.whispers.push(e))
    .error((e) => window.seen.errors.push(e));
  window.echo.private(`user-${userId}`).listen(".item", (e) => window.seen.items.push(e));
}"""


@dataclass
class EchoUser:
    id: str
    context: BrowserContext


def echo_user(browser: Browser, site: Site, name: str) -> tuple[EchoUser, Page]:
    """``name`` signed in through the login form straight to the bare /pusher/ page (the site's
    origin, pusher-js loaded, nothing connected: no page of rrr's own library ever opens), with
    Laravel Echo loaded into it, joined to the site's presence room and listening on its own
    private channel."""
    context = browser.new_context()
    OPEN.append(context)
    page = context.new_page()
    page.goto(f"{site.url}/accounts/login/?next=/pusher/%3Fbare%3D1")
    page.fill("#id_username", name)
    page.fill("#id_password", PASSWORD)
    page.click("main button[type=submit]")
    expect(page.locator("#me")).to_have_text(name, timeout=WAIT_MS)
    user = EchoUser(site.ids[name], context)
    page.add_script_tag(path=str(ECHO))
    body = page.locator("body")
    args = [body.get_attribute("data-pusher-key"), body.get_attribute("data-ws-host"),
            body.get_attribute("data-ws-port"), body.get_attribute("data-csrf")]
    page.evaluate(ECHO_SETUP, args)
    page.evaluate(ECHO_JOIN, user.id)
    return user, page


OPEN: list[BrowserContext] = []


@pytest.fixture(autouse=True)
def _close_contexts() -> Iterator[None]:
    yield
    while OPEN:
        OPEN.pop().close()


def seen(page: Page, what: str) -> Any:
    return page.evaluate(f"window.seen.{what}")


@pytest.mark.browser
def test_laravel_echo_private_join_here_joining_leaving_and_whispers(site: Site, site_browser: Browser) -> None:
    # Users of an earlier test leave the room within the leave grace (--vacate-delay).
    expect_eventually(lambda: site.api("/api/rooms/presence-site/members")["total"] == 0, "an empty room")
    carol, c = echo_user(site_browser, site, "carol")
    expect_eventually(lambda: seen(c, "here") == ["carol"], "carol's here()")
    dave, d = echo_user(site_browser, site, "dave")
    expect_eventually(lambda: seen(d, "here") == ["carol", "dave"], "dave's here()")
    expect_eventually(lambda: seen(c, "joining") == ["dave"], "carol sees dave joining")
    d.evaluate('window.echo.join("site").whisper("typing", {name: "dave"})')
    expect_eventually(lambda: seen(c, "whispers") == [{"name": "dave"}], "carol hears dave typing")
    assert seen(d, "whispers") == []
    publish(site, f"private-user-{carol.id}", "item", {"title": "for carol"})
    expect_eventually(lambda: seen(c, "items") == [{"title": "for carol"}], "Echo.private's listener")
    assert seen(d, "items") == []
    # Dave's Echo may not authorize carol's private channel: the auth view refuses it.
    d.evaluate(f'window.echo.private("user-{carol.id}").error((e) => window.seen.errors.push(e))')
    expect_eventually(lambda: len(seen(d, "errors")) == 1, "dave refused carol's channel")
    d.evaluate("window.echo.leave('site')")
    expect_eventually(lambda: seen(c, "leaving") == ["dave"], "carol sees dave leaving")
    assert seen(c, "errors") == []


def expect_eventually(pred: Any, what: str, timeout: float = WAIT_MS / 1000) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
