"""The Django side (issue #14), end to end: the example site (examples/django_site) started by its
own command (run.py, what `make example` runs) with a real rrr (app.py) on the suite's real
redis-server, and Chromium signed in as its users.

The site and rrr are different origins (two ports), as a Django site and its rrr service usually
are: the pages load the browser library from rrr (CORS) and, since a SharedWorker must be of the
page's origin, share one socket per browser through a leader tab.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import jwt
import pytest

from rrr.backplane.embedded import EmbeddedRedis
from support.django_site import (
    SECRET, SITE_DIR, WAIT_MS, Site, notification, online, run_site, subscribed_tabs,
    wait_for,
)
from support.processes import ROOT

try:
    from playwright.sync_api import expect
except ImportError:  # pragma: no cover - the dev extra installs it
    pass

# A raw socket from a page (the site's Origin): auth with a token, optionally subscribe to a room,
# and answer with the server's reply to the last step.
RAW_SOCKET = """
async ([url, token, room]) => new Promise((resolve, reject) => {
  const ws = new WebSocket(url);
  const done = (value) => { ws.close(); resolve(value); };
  setTimeout(() => done({type: "timeout"}), 10000);
  ws.onerror = () => reject(new Error("socket error"));
  ws.onopen = () => ws.send(JSON.stringify({type: "auth", token}));
  ws.onmessage = ({data}) => {
    const msg = JSON.parse(data);
    if (msg.type === "error" && (!room || msg.room === room || !msg.room)) return done(msg);
    if (msg.type === "authenticated") {
      if (!room) return done(msg);
      ws.send(JSON.stringify({type: "subscribe", room, sub: "probe"}));
    }
    if (room && msg.room === room && msg.type !== "error") return done(msg);
  };
})
"""


@pytest.fixture(scope="module")
def site(redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """``python examples/django_site/run.py``: rrr, migrate, seed_demo and runserver, on the suite's Redis."""
    yield from run_site(redis_server, tmp_path_factory.mktemp("django-site"))


# -- tests ----------------------------------------------------------------------------------


@pytest.mark.browser
def test_two_users_see_each_other_online_by_name_and_a_leave_within_5_s(site: Site, sign_in: Any) -> None:
    alice = sign_in("alice")
    bob = sign_in("bob", tabs=2)
    for page in alice.pages:
        expect(online(page, "bob")).to_have_count(1, timeout=WAIT_MS)  # one entry for bob's two tabs
        expect(online(page, "alice")).to_have_text("alice (you)")
    for page in bob.pages:
        expect(online(page, "alice")).to_have_count(1, timeout=WAIT_MS)
        # the talk's counter: browsers on this page, not tabs (bob's two tabs are one browser)
        expect(page.locator("#viewers")).to_have_text("2", timeout=WAIT_MS)
    expect(alice.pages[0].locator("#viewers")).to_have_text("2", timeout=WAIT_MS)
    # one socket per browser: the library's leader tab shares it (the site and rrr are two origins)
    assert "leader" in bob.pages[0].locator("#live-status").inner_text()

    bob.context.close()
    closed = time.monotonic()
    expect(online(alice.pages[0], "bob")).to_have_count(0, timeout=5_000)
    assert time.monotonic() - closed < 5
    expect(alice.pages[0].locator("#viewers")).to_have_text("1", timeout=WAIT_MS)
    bob.pages.clear()


@pytest.mark.browser
def test_a_new_item_notifies_the_other_users_tabs_once_and_not_its_author(site: Site, sign_in: Any) -> None:
    alice = sign_in("alice", tabs=2)
    bob = sign_in("bob", tabs=2)
    # Both users' private rooms hold both tabs (registered in rrr) before anything is published.
    wait_for(lambda: subscribed_tabs(site, f"private-user-{alice.id}") == 2, "alice's private room")
    wait_for(lambda: subscribed_tabs(site, f"private-user-{bob.id}") == 2, "bob's private room")

    writer, watcher = alice.pages
    writer.fill("#id_title", "Fresh apples")
    writer.click("#new-item button[type=submit]")
    row = writer.locator("#items li", has_text="Fresh apples")
    expect(row).to_have_count(1, timeout=WAIT_MS)
    item = row.get_attribute("data-item")
    assert item
    for page in bob.pages:
        expect(notification(page, item)).to_have_count(1, timeout=WAIT_MS)
        expect(notification(page, item)).to_contain_text("alice added Fresh apples")

    # A later item by carol reaches both users after anything about alice's item could have.
    later = site.manage("create_item", "carol", "Pears").split()[-1]
    for page in [watcher, *bob.pages]:
        expect(notification(page, later)).to_have_count(1, timeout=WAIT_MS)
    for page in bob.pages:
        assert notification(page, item).count() == 1, "shown once"
    assert notification(watcher, item).count() == 0, "the author's own tab heard of its item"
    assert notification(writer, item).count() == 0


@pytest.mark.browser
def test_an_item_rolled_back_notifies_nobody(site: Site, sign_in: Any) -> None:
    bob = sign_in("bob")
    wait_for(lambda: subscribed_tabs(site, f"private-user-{bob.id}") == 1, "bob's private room")
    assert "rolled back" in site.manage("create_item", "alice", "Never was", "--rollback")
    kept = site.manage("create_item", "alice", "Was").split()[-1]
    page = bob.pages[0]
    expect(notification(page, kept)).to_have_count(1, timeout=WAIT_MS)
    # Published in order, the rolled-back one would have come first. (SQLite hands its id to the
    # next row, so the two are told apart by title.)
    assert page.locator("#notifications li", has_text="Never was").count() == 0
    assert page.locator("#notifications li").count() == 1
    page.reload()
    expect(page.locator("#items li", has_text="Was")).to_have_count(1)
    assert page.locator("#items li", has_text="Never was").count() == 0


@pytest.mark.browser
def test_a_notification_sent_while_offline_is_recovered_on_reconnect_and_shown_once(site: Site, sign_in: Any) -> None:
    bob = sign_in("bob")
    page = bob.pages[0]
    room = f"private-user-{bob.id}"
    wait_for(lambda: subscribed_tabs(site, room) == 1, "bob's private room")
    # rrr counts a subscription once its row is written, which can be before the page is told it
    # is subscribed: cut off before that, the page would not know the room's position to recover from.
    wait_for(lambda: bool(page.evaluate("(room) => window.__subscribed.includes(room)", room)),
             "the page told it is subscribed to bob's private room")
    page.evaluate("window.__blocked = true; window.__sockets.forEach((s) => s.close())")
    expect(page.locator("#live-status")).not_to_have_attribute("data-status", "open", timeout=WAIT_MS)
    wait_for(lambda: subscribed_tabs(site, room) == 0, "bob gone from rrr")  # so nothing reaches him live
    missed = site.manage("create_item", "carol", "While you were away").split()[-1]
    page.evaluate("window.__blocked = false")
    # The page's "Retry now" (rt.retryNow()) skips the backoff the blocked tries built up.
    deadline = time.monotonic() + WAIT_MS / 1000
    while page.locator("#live-status").get_attribute("data-status") != "open":
        assert time.monotonic() < deadline, "the page did not reconnect"
        page.evaluate("(b => b.hidden || b.click())(document.getElementById('retry-now'))")
        time.sleep(0.1)
    expect(notification(page, missed)).to_have_count(1, timeout=WAIT_MS)
    later = site.manage("create_item", "carol", "After").split()[-1]
    expect(notification(page, later)).to_have_count(1, timeout=WAIT_MS)
    assert notification(page, missed).count() == 1
    assert page.locator("#notifications-reset").is_hidden()


@pytest.mark.browser
def test_the_token_view_refuses_anonymous_users_and_grants_only_the_users_rooms(site: Site, sign_in: Any) -> None:
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(site.url + "/rrr/token/", timeout=5)
    assert refused.value.code == 403

    alice = sign_in("alice")
    token = alice.token()
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["sub"] == alice.id
    # rrr.django's default grants, then the chat's rooms (examples/django_site/chat/rooms.py)
    assert claims["rooms"][:2] == [f"private-user-{alice.id}", "presence-site"]
    assert all(room.startswith(("presence-chat-", "presence-dm-")) for room in claims["rooms"][2:])
    assert claims["info"] == {"name": "alice"}

    page = alice.pages[0]
    bobs = page.evaluate(RAW_SOCKET, [site.socket_url, token, f"private-user-{site.ids['bob']}"])
    assert bobs["type"] == "error" and bobs["code"] == "forbidden", bobs
    own = page.evaluate(RAW_SOCKET, [site.socket_url, token, f"private-user-{alice.id}"])
    assert own["type"] != "error" and own["type"] != "timeout", own


@pytest.mark.browser
def test_signing_a_user_out_from_the_admin_closes_their_sockets_and_refuses_their_token(
    site: Site, sign_in: Any
) -> None:
    alice = sign_in("alice")
    dave = sign_in("dave", tabs=2)
    expect(online(alice.pages[0], "dave")).to_have_count(1, timeout=WAIT_MS)
    old_token = dave.token()
    assert alice.pages[0].evaluate(RAW_SOCKET, [site.socket_url, old_token, None])["type"] == "authenticated"

    admin = sign_in("admin")
    page = admin.pages[0]
    page.goto(site.url + "/admin/auth/user/")
    page.locator("tr", has=page.locator("a", has_text="dave")).locator("input[name=_selected_action]").check()
    page.select_option("select[name=action]", "sign_out_everywhere")
    page.click("button[name=index]")
    expect(page.locator(".messagelist")).to_contain_text("Signed out everywhere: dave", timeout=WAIT_MS)

    for tab in dave.pages:
        expect(tab.locator("#signed-out")).to_be_visible(timeout=WAIT_MS)
        expect(tab.locator("#signed-out")).to_have_attribute("data-code", "signed_out")
    closes = [code for tab in dave.pages for code in tab.evaluate("window.__closes")]
    assert 4001 in closes, closes
    expect(online(alice.pages[0], "dave")).to_have_count(0, timeout=WAIT_MS)

    refused = alice.pages[0].evaluate(RAW_SOCKET, [site.socket_url, old_token, None])
    assert refused["type"] == "error" and refused["code"] == "bad_token", refused
    # alice's own token still works on the same path, and dave's session is over
    assert alice.pages[0].evaluate(RAW_SOCKET, [site.socket_url, alice.token(), None])["type"] == "authenticated"
    assert dave.pages[0].evaluate("fetch('/rrr/token/').then((r) => r.status)") == 403


def test_the_example_sites_own_tests_pass(site: Site) -> None:
    """``manage.py test items chat`` (Django's runner, its own test database) on the suite's Redis."""
    env = {k: v for k, v in site.env.items() if k != "EXAMPLE_DB"}
    done = subprocess.run(
        [sys.executable, str(SITE_DIR / "manage.py"), "test", "items", "chat", "-v", "2"], cwd=SITE_DIR, env=env,
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Ran " in done.stderr and "OK" in done.stderr


def test_rrr_client_and_rrr_django_import_without_django_configured() -> None:
    """A backend imports `rrr.client` with no Django and no Tornado set up; `rrr.django` itself
    imports Django only when used."""
    code = (
        "import sys; sys.modules['django'] = None; sys.modules['tornado.web'] = None\n"
        "import rrr.client, rrr.django\n"
        "assert callable(rrr.client.publish) and callable(rrr.django.publish_on_commit)\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


def test_rrr_serves_the_browser_library_to_other_origins_without_credentials(site: Site) -> None:
    """A page of the site's origin loads rrr.js (and what it imports) from rrr as module scripts,
    which browsers fetch in CORS mode; the site's own pages point there."""
    request = urllib.request.Request(site.rrr_url + "/static/js/rrr.js", headers={"Origin": site.url})
    with urllib.request.urlopen(request, timeout=5) as r:
        assert r.headers["Access-Control-Allow-Origin"] == "*"
        assert r.headers.get("Access-Control-Allow-Credentials") is None
    with urllib.request.urlopen(site.url + "/accounts/login/", timeout=5) as r:
        assert b"importmap" not in r.read()  # not for anonymous pages


def test_rrrs_webhooks_reach_the_site_a_users_last_seen_and_a_pages_open_since(site: Site) -> None:
    """run.py points rrr's --webhook-url at the site's /rrr/webhook/: a user whose last tab leaves
    the site gets a "last seen" (member_removed), a page someone opens is "open since" then
    (channel_occupied) until it is left (channel_vacated), all through the real view and signals."""
    import asyncio
    import concurrent.futures

    from support.clients import connect

    carol = site.ids["carol"]
    token = jwt.encode({"sub": carol, "exp": time.time() + 600, "rooms": ["presence-site"],
                        "info": {"name": "carol"}}, SECRET, algorithm="HS256")
    read = ("import json; from items.models import LastSeen, Occupancy; "
            f"print(json.dumps([list(LastSeen.objects.filter(user_id={carol}).values_list('at', flat=True)), "
            "list(Occupancy.objects.filter(room='page-item-4242').values_list('since', flat=True))], default=str))")

    def state() -> tuple[list[str], list[str]]:
        seen, since = json.loads(site.manage("shell", "-c", read).strip().splitlines()[-1])
        return seen, since

    async def visit() -> float:
        tab = await connect(site.socket_url, origin=site.url)
        page = await connect(site.socket_url.replace("/ws/", "/ws/count/page-item-4242/"), origin=site.url)
        await tab.send(type="auth", token=token)
        await tab.next("authenticated", after=0)
        await tab.send(type="subscribe", room="presence-site", sub="t")
        await tab.reply("presence")
        await page.next("connection_message", after=0)
        opened = time.time()
        wait_for(lambda: state()[1] != [], "the page open since then", timeout=30)
        tab.close()
        page.close()
        return opened

    assert state() == ([], [])
    left = time.time()
    # In a thread of its own: the browser tests' Playwright runs an event loop in this one.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        opened = pool.submit(lambda: asyncio.run(visit())).result(timeout=120)
    wait_for(lambda: state()[0] != [] and state()[1] == [], "carol last seen, the page no longer open", timeout=30)
    seen = state()[0][0]
    assert opened - 2 < datetime.fromisoformat(seen).timestamp() < time.time(), (seen, left)
