"""The example Django site the other way (issue #24): ``run.py --same-origin`` puts nginx in front
of the site and rrr under one origin with the recipe users copy, deploy/nginx-same-origin.conf
(``/_rrr/`` to rrr: socket, fallbacks, browser library; the rest, the site's ``/static/`` included,
to the site), and rrr asks the site's connect view (``/rrr/connect/``, on the site's own port) who
each handshake's session cookie is (``--connect-proxy-url``). The pages have no ``getToken`` and
call no token view; Chromium signs in through the login form, with real Django sessions."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from rrr.backplane.embedded import EmbeddedRedis
from support.browsers import metric
from support.processes import ROOT
from support.django_site import (
    SITE_DIR, WAIT_MS, Site, SignIn, notification, online, run_site, subscribed_tabs, wait_for,
)

try:
    from playwright.sync_api import Browser, expect
except ImportError:  # pragma: no cover - the dev extra installs it
    pass


@pytest.fixture(scope="module")
def site(redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    yield from run_site(redis_server, tmp_path_factory.mktemp("django-same-origin"), "--same-origin")


def post(url: str, body: bytes, **headers: str) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def session_cookie(user: Any) -> str:
    (sid,) = [c["value"] for c in user.context.cookies() if c["name"] == "sessionid"]
    return str(sid)


@pytest.mark.browser
def test_same_origin_pages_need_no_token_the_connect_proxy_knows_each_session(site: Site, sign_in: SignIn) -> None:
    alice = sign_in("alice", tabs=2)
    bob = sign_in("bob")
    for page in alice.pages:
        expect(online(page, "bob")).to_have_count(1, timeout=WAIT_MS)  # presence-site, from RRR_GRANTS
        expect(online(page, "alice")).to_have_text("alice (you)")
        # One origin: the tabs share a SharedWorker.
        expect(page.locator("#live-status")).to_contain_text("sharedworker", timeout=WAIT_MS)
    expect(online(bob.pages[0], "alice")).to_have_count(1, timeout=WAIT_MS)
    wait_for(lambda: subscribed_tabs(site, f"private-user-{alice.id}") == 2, "alice's private room")

    # bob's item reaches alice's own room, which only her session's grants open.
    bob.pages[0].fill("#id_title", "Same-origin plums")
    bob.pages[0].click("#new-item button[type=submit]")
    row = bob.pages[0].locator("#items li", has_text="Same-origin plums")
    expect(row).to_have_count(1, timeout=WAIT_MS)
    item = row.get_attribute("data-item")
    assert item
    for page in alice.pages:
        expect(notification(page, item)).to_have_count(1, timeout=WAIT_MS)

    for user in (alice, bob):
        assert not [u for u in user.requests if "/rrr/token/" in u], "a page asked the token view"
        for page in user.pages:  # nobody was told no_token (the banner shows for it)
            expect(page.locator("#signed-out")).to_be_hidden()
    log = site.log.read_text(errors="replace")
    assert "/rrr/token/" not in log
    assert re.search(r'"POST /rrr/connect/ HTTP/1\.1" 200', log), "the site never heard from rrr"
    assert metric(site.rrr_url, "rrr_connect_proxy_calls_total", 'result="user"') >= 2
    assert metric(site.rrr_url, "rrr_connect_proxy_calls_total", 'result="failed"') == 0


@pytest.mark.browser
def test_one_origin_rrr_under_its_prefix_and_the_sites_own_static_files_from_django(
    site: Site, sign_in: SignIn, site_browser: Browser,
) -> None:
    """The recipe's point (issue #26): rrr's files under /_rrr/, which no site's /static/ covers."""
    alice = sign_in("alice", tabs=2)
    page = alice.pages[0]
    imports = json.loads(page.locator('script[type="importmap"]').text_content() or "{}")["imports"]
    assert imports["rrr"] == "/_rrr/static/js/rrr.js"  # {% rrr_scripts %}, from RRR_SOCKET_URL = "/_rrr/ws/"
    assert f"{site.url}/_rrr/static/js/rrr.js" in alice.requests
    assert not [u for u in alice.requests if u.startswith(f"{site.url}/static/js/")], "rrr's old path asked"
    # The tabs' SharedWorker is rrr's, from under the prefix; its socket is open and counted.
    cdp = site_browser.new_browser_cdp_session()
    workers = [t["url"] for t in cdp.send("Target.getTargets")["targetInfos"] if t["type"] == "shared_worker"]
    assert [u for u in workers if u.startswith(f"{site.url}/_rrr/static/js/worker.js")], workers
    for tab in alice.pages:
        expect(tab.locator("#live-status")).to_contain_text("sharedworker", timeout=WAIT_MS)
        expect(online(tab, "alice")).to_have_text("alice (you)", timeout=WAIT_MS)
    wait_for(lambda: subscribed_tabs(site, f"private-user-{alice.id}") == 2, "alice's private room")
    assert re.search(r"GET /_rrr/ws/ ", site.log.read_text(errors="replace")), "rrr never saw /_rrr/ws/"

    # Through nginx: /_rrr/ is rrr's own files; /static/ is the site's, every path of it.
    assert get(f"{site.url}/_rrr/static/js/rrr.js") == (200, (ROOT / "static" / "js" / "rrr.js").read_bytes())
    assert get(f"{site.url}/static/items/site.css") == (
        200, (SITE_DIR / "items" / "static" / "items" / "site.css").read_bytes())
    assert get(f"{site.url}/static/rrr/django.js") == (
        200, (ROOT / "rrr" / "django" / "static" / "rrr" / "django.js").read_bytes())  # the helper: a Django app's
    status, body = get(f"{site.url}/static/js/rrr.js")  # the site's /static/: nothing of rrr's in it
    assert status == 404 and b"connect" not in body
    # rrr itself still answers the old path (pages and import maps written for it).
    assert get(f"{site.rrr_url}/static/js/rrr.js") == (200, (ROOT / "static" / "js" / "rrr.js").read_bytes())

    # pusher-js under the same origin: /_rrr/app/<key> (its wsPath).
    page.goto(site.url + "/pusher/")
    expect(page.locator("#pusher-status")).to_have_attribute("data-status", "connected", timeout=WAIT_MS)
    expect(page.locator('#pusher-members li[data-user="alice"]')).to_have_text("alice (you)", timeout=WAIT_MS)


@pytest.mark.browser
def test_the_connect_view_resolves_only_the_cookie_it_is_given(site: Site, sign_in: SignIn) -> None:
    alice = sign_in("alice")
    sid = session_cookie(alice)
    view = site.django_url + "/rrr/connect/"
    call = {"transport": "ws", "headers": {"Cookie": f"theme=dark; sessionid={sid}", "User-Agent": "x"},
            "ip": "203.0.113.7"}
    before = time.time()
    status, answer = post(view, json.dumps(call).encode())
    assert status == 200, answer
    assert answer["user"] == alice.id
    # rrr.django's default grants, then the chat's rooms (examples/django_site/chat/rooms.py)
    assert answer["rooms"][:2] == [f"private-user-{alice.id}", "presence-site"]
    assert all(room.startswith(("presence-chat-", "presence-dm-")) for room in answer["rooms"][2:])
    assert answer["publish"] == [] and answer["info"] == {"name": "alice"}
    assert before < answer["exp"] <= time.time() + 3600 + 1  # the session's expiry, capped at RRR_TOKEN_TTL
    status, again = post(view, json.dumps({**call, "user": alice.id}).encode())  # rrr's refresh
    assert status == 200 and again["user"] == alice.id

    # Its own request's cookies are never looked at: only the one in the body.
    status, answer = post(view, json.dumps({"transport": "ws", "headers": {}, "ip": "x"}).encode(),
                          Cookie=f"sessionid={sid}")
    assert (status, answer) == (200, {"user": None})
    assert post(view, json.dumps({"headers": {"Cookie": "sessionid=forged"}}).encode())[1] == {"user": None}
    assert post(view, b"not json")[0] == 400
    assert post(view, json.dumps({"headers": ["Cookie"]}).encode())[0] == 400
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(view, timeout=10)
    assert e.value.code == 405
    # Browsers never reach it through nginx (rrr calls the site's own port).
    assert post(site.url + "/rrr/connect/", json.dumps(call).encode())[0] == 404

    # Signed out of the site: anonymous from then on, for that cookie.
    alice.pages[0].click("header form button[type=submit]")
    expect(alice.pages[0].locator("#id_username")).to_be_visible(timeout=WAIT_MS)
    assert post(view, json.dumps(call).encode()) == (200, {"user": None})


@pytest.mark.browser
def test_signing_a_user_out_everywhere_closes_their_proxied_sockets_and_they_come_back_as_nobody(
    site: Site, sign_in: SignIn,
) -> None:
    alice = sign_in("alice")
    dave = sign_in("dave", tabs=2)
    expect(online(alice.pages[0], "dave")).to_have_count(1, timeout=WAIT_MS)

    admin = sign_in("admin")
    page = admin.pages[0]
    page.goto(site.url + "/admin/auth/user/")
    page.locator("tr", has=page.locator("a", has_text="dave")).locator("input[name=_selected_action]").check()
    page.select_option("select[name=action]", "sign_out_everywhere")
    page.click("button[name=index]")
    expect(page.locator(".messagelist")).to_contain_text("Signed out everywhere: dave", timeout=WAIT_MS)

    for tab in dave.pages:
        # signed_out: the SharedWorker's socket was closed with 4001 (the library tells every tab)
        expect(tab.locator("#signed-out")).to_be_visible(timeout=WAIT_MS)
        expect(tab.locator("#signed-out")).to_have_attribute("data-code", "signed_out")
    expect(online(alice.pages[0], "dave")).to_have_count(0, timeout=WAIT_MS)
    # The owner reconnects with the same cookie: the site no longer knows it, so rrr holds an
    # anonymous socket whose private and presence rooms are refused.
    wait_for(lambda: subscribed_tabs(site, f"private-user-{dave.id}") == 0, "dave's room empty")
    time.sleep(1.0)
    assert subscribed_tabs(site, f"private-user-{dave.id}") == 0
    expect(online(alice.pages[0], "dave")).to_have_count(0)
