"""The example site's chat (issue #26, docs/guides/chat.md), end to end: the site started by its own
command (run.py, what `make example` runs) with a real rrr on the suite's real redis-server, and
Chromium signed in as two users with three tabs each (the site and rrr are two origins, so each
browser shares one socket through a leader tab).

The chat is built only on rrr's public pieces: presence rooms (who is here), whispers (typing),
messages published by Django with publish_on_commit and kept in rrr's history (a dropped connection
recovers them; a reload renders them from Django's database), a token that grants a pair room to its
two users only, and rrr's webhooks (member_added/member_removed) telling Django who is in a room, so
a message counts as unread for those who are not.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest

from rrr.backplane.embedded import EmbeddedRedis
from support.django_site import SECRET, WAIT_MS, Site, SignIn, User, run_site, subscribed_tabs, wait_for
from support.processes import ROOT, free_port

try:
    from playwright.sync_api import Browser, Page, expect
except ImportError:  # pragma: no cover - the dev extra installs it
    pass

GENERAL = "presence-chat-general"
RANDOM = "presence-chat-random"
ARTIFACTS = ROOT / "tests" / "artifacts"
DOCS = ROOT / "docs"


@pytest.fixture(scope="module")
def site(redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """``python examples/django_site/run.py``: rrr, migrate, seed_demo and runserver, on the suite's Redis."""
    yield from run_site(redis_server, tmp_path_factory.mktemp("chat-site"))


@pytest.fixture(scope="module")
def one_origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """``run.py --same-origin``: nginx in front of the site and rrr, on a Redis of its own (the two
    sites' rooms have the same names)."""
    redis_server = EmbeddedRedis(port=free_port()).start()
    try:
        yield from run_site(redis_server, tmp_path_factory.mktemp("chat-same-origin"), "--same-origin")
    finally:
        redis_server.close()


# -- how a test looks at the chat -----------------------------------------------------------------


def pair(site: Site, a: str, b: str) -> str:
    low, high = sorted((int(site.ids[a]), int(site.ids[b])))
    return f"presence-dm-{low}-{high}"


def member(page: Page, name: str) -> Any:
    return page.locator(f'#members .member[data-user="{name}"]')


def message(page: Page, text: str) -> Any:
    return page.locator("#messages li", has_text=text)


def badge(page: Page, room: str) -> Any:
    return page.locator(f'.unread[data-room="{room}"]')


def say(page: Page, text: str) -> None:
    page.fill("#text", text)
    page.press("#text", "Enter")
    expect(page.locator("#text")).to_have_value("", timeout=WAIT_MS)  # the site took it


def db(site: Site, sql: str, *args: object) -> list[tuple[Any, ...]]:
    """The site's own SQLite file, read as the site left it (what rrr's webhooks made it write)."""
    with sqlite3.connect(site.env["EXAMPLE_DB"], timeout=20) as conn:
        return list(conn.execute(sql, args))


def present(site: Site, room: str) -> set[str]:
    """Who Django thinks is in ``room``: what the member_added/member_removed webhooks left."""
    ids = {row[0] for row in db(site, "SELECT user_id FROM chat_present WHERE room = ?", room)}
    names = {v: k for k, v in site.ids.items()}
    return {names[str(i)] for i in ids}


def unread(site: Site, name: str, room: str) -> int:
    rows = db(site, "SELECT count FROM chat_unread WHERE room = ? AND user_id = ?", room, int(site.ids[name]))
    return int(rows[0][0]) if rows else 0


def chatting(sign_in: SignIn, name: str, tabs: int, path: str = "/chat/room/general/") -> User:
    """``name`` signed in with ``tabs`` live tabs on a chat page."""
    return sign_in(name, tabs=tabs, path=path)


# -- tests ----------------------------------------------------------------------------------------


@pytest.mark.browser
def test_two_users_three_tabs_each_see_who_is_here_typing_and_every_message_once_also_after_a_reload(
    site: Site, sign_in: SignIn
) -> None:
    alice = chatting(sign_in, "alice", 3)
    bob = chatting(sign_in, "bob", 3)
    tabs = alice.pages + bob.pages
    for page in tabs:  # the room's presence list: one entry per user, however many tabs
        expect(member(page, "alice")).to_have_count(1, timeout=WAIT_MS)
        expect(member(page, "bob")).to_have_count(1, timeout=WAIT_MS)
    expect(member(alice.pages[0], "alice")).to_have_text("alice (you)")
    assert "leader" in bob.pages[2].locator("#live-status").inner_text()  # one socket per browser
    wait_for(lambda: subscribed_tabs(site, GENERAL) == 6, "six tabs subscribed to the room")

    # Typing in one of alice's tabs shows in each of bob's (a whisper in the presence room).
    alice.pages[1].fill("#text", "Hel")
    alice.pages[1].type("#text", "lo")
    for page in bob.pages:
        expect(page.locator("#typing")).to_have_text("alice is typing…", timeout=WAIT_MS)
        expect(page.locator("#typing")).to_have_attribute("data-users", alice.id)
    assert bob.pages[0].locator("#typing").inner_text() == "alice is typing…"

    say(alice.pages[1], "Hello from alice")
    for page in tabs:
        expect(message(page, "Hello from alice")).to_have_count(1, timeout=WAIT_MS)
    for page in bob.pages:  # her message ends her typing
        expect(page.locator("#typing")).to_have_text("", timeout=WAIT_MS)
    say(bob.pages[2], "Hi alice, bob here")
    for page in tabs:
        expect(message(page, "Hi alice, bob here")).to_have_count(1, timeout=WAIT_MS)
        expect(page.locator("#messages li")).to_have_count(2)
    expect(message(alice.pages[0], "Hi alice, bob here").locator(".who")).to_have_text("bob")

    # A reload renders the history from the site, in order, and the tab is live again.
    bob.pages[0].reload()
    expect(bob.pages[0].locator("#messages li")).to_have_count(2, timeout=WAIT_MS)
    expect(bob.pages[0].locator("#messages li p")).to_have_text(["Hello from alice", "Hi alice, bob here"])
    expect(bob.pages[0].locator("#live-status")).to_have_attribute("data-status", "open", timeout=WAIT_MS)
    expect(member(bob.pages[0], "alice")).to_have_count(1, timeout=WAIT_MS)
    say(alice.pages[0], "Still there?")
    for page in tabs:
        expect(message(page, "Still there?")).to_have_count(1, timeout=WAIT_MS)
        expect(page.locator("#messages li")).to_have_count(3)

    # A tab gone quiet: bob's typing shows in alice's tabs, and stops by itself once he stops.
    bob.pages[1].type("#text", "typing, then not")
    for page in alice.pages:
        expect(page.locator("#typing")).to_have_text("bob is typing…", timeout=WAIT_MS)
    for page in alice.pages:
        expect(page.locator("#typing")).to_have_text("", timeout=WAIT_MS)

    # Whoever leaves the room leaves its presence list.
    for page in bob.pages:
        page.goto(site.url + "/chat/room/random/")
    for page in alice.pages:
        expect(member(page, "bob")).to_have_count(0, timeout=WAIT_MS)


@pytest.mark.browser
def test_a_message_sent_while_a_tab_was_cut_off_is_recovered_from_rrr_history_once(
    site: Site, sign_in: SignIn
) -> None:
    room = pair(site, "alice", "bob")
    alice = chatting(sign_in, "alice", 1, "/chat/with/bob/")
    bob = chatting(sign_in, "bob", 1, "/chat/with/alice/")
    page = bob.pages[0]
    wait_for(lambda: bool(page.evaluate("(room) => window.__subscribed.includes(room)", room)),
             "bob's page told it is subscribed to the room")
    page.evaluate("window.__blocked = true; window.__sockets.forEach((s) => s.close())")
    expect(page.locator("#live-status")).not_to_have_attribute("data-status", "open", timeout=WAIT_MS)
    wait_for(lambda: subscribed_tabs(site, room) == 1, "bob gone from rrr")  # so nothing reaches him live
    say(alice.pages[0], "While you were away")
    page.evaluate("window.__blocked = false")
    deadline = time.monotonic() + WAIT_MS / 1000
    while page.locator("#live-status").get_attribute("data-status") != "open":
        assert time.monotonic() < deadline, "the page did not reconnect"
        page.evaluate("(b => b.hidden || b.click())(document.getElementById('retry-now'))")
        time.sleep(0.1)
    expect(message(page, "While you were away")).to_have_count(1, timeout=WAIT_MS)
    # Recovered by rrr (resubscribed with `since`), not by asking the site again.
    assert page.locator("#history-reset").is_hidden()
    say(alice.pages[0], "And now live")
    expect(message(page, "And now live")).to_have_count(1, timeout=WAIT_MS)
    assert message(page, "While you were away").count() == 1


# Sockets a page opens go to a closed port while window.__holdSockets is true (from the page's start).
HOLD_SOCKETS = """
(() => {
  const Native = window.WebSocket;
  window.__holdSockets = true;
  window.WebSocket = class extends Native {
    constructor(url, ...rest) { super(window.__holdSockets ? "ws://127.0.0.1:9/held" : url, ...rest); }
  };
})();
"""


@pytest.mark.browser
def test_a_message_saved_after_the_page_was_rendered_but_before_it_was_live_is_caught_up_from_the_site(
    site: Site, sign_in: SignIn
) -> None:
    alice = chatting(sign_in, "alice", 1)
    dave = chatting(sign_in, "dave", 1)
    page = dave.pages[0]
    page.add_init_script(HOLD_SOCKETS)
    page.reload()  # rendered from the database, but its socket cannot open yet
    expect(page.locator("#live-status")).not_to_have_attribute("data-status", "open", timeout=WAIT_MS)
    say(alice.pages[0], "Sent while dave's page was loading")
    assert message(page, "Sent while dave's page was loading").count() == 0
    page.evaluate("window.__holdSockets = false")
    deadline = time.monotonic() + WAIT_MS / 1000
    while page.locator("#live-status").get_attribute("data-status") != "open":
        assert time.monotonic() < deadline, "the page did not connect"
        page.evaluate("(b => b.hidden || b.click())(document.getElementById('retry-now'))")
        time.sleep(0.1)
    # rrr has nothing to replay (the page never had a position); the site has the message.
    expect(message(page, "Sent while dave's page was loading")).to_have_count(1, timeout=WAIT_MS)
    say(alice.pages[0], "And live after that")
    expect(message(page, "And live after that")).to_have_count(1, timeout=WAIT_MS)
    assert message(page, "Sent while dave's page was loading").count() == 1


@pytest.mark.browser
def test_the_pair_room_of_two_users_is_theirs_alone(site: Site, sign_in: SignIn) -> None:
    room = pair(site, "alice", "bob")
    alice = chatting(sign_in, "alice", 1, "/chat/with/bob/")
    bob = chatting(sign_in, "bob", 1, "/chat/with/alice/")
    for page in (alice.pages[0], bob.pages[0]):
        assert page.locator("main").get_attribute("data-room") == room  # the same room, whoever opens it
        expect(member(page, "alice")).to_have_count(1, timeout=WAIT_MS)
        expect(member(page, "bob")).to_have_count(1, timeout=WAIT_MS)
    bob.pages[0].type("#text", "psst")
    expect(alice.pages[0].locator("#typing")).to_have_text("bob is typing…", timeout=WAIT_MS)
    say(bob.pages[0], "Just between us")
    expect(message(alice.pages[0], "Just between us")).to_have_count(1, timeout=WAIT_MS)
    expect(alice.pages[0].locator("#typing")).to_have_text("", timeout=WAIT_MS)
    # A whisper that claims another name shows the name rrr's member list gives its sender.
    bob.pages[0].evaluate(
        """async (room) => {
          const { connect } = await import("rrr/django");
          const rt = connect();
          const handle = rt.room(room, {});
          while (!handle.position()) await new Promise((r) => setTimeout(r, 50));
          handle.whisper("client-typing", { on: true, name: "carol" });
          setTimeout(() => rt.close(), 1000);
        }""",
        room,
    )
    expect(alice.pages[0].locator("#typing")).to_have_text("bob is typing…", timeout=WAIT_MS)

    carol = chatting(sign_in, "carol", 1)
    page = carol.pages[0]
    # rrr refuses her the room through the browser library itself (her token does not grant it) ...
    refused = page.evaluate(
        """async (room) => {
          const { connect } = await import("rrr/django");
          const rt = connect();
          const code = await new Promise((resolve) => {
            rt.room(room, { onError: ({ code }) => resolve(code), onMessage: () => resolve("message") });
            setTimeout(() => resolve("timeout"), 10000);
          });
          rt.close();
          return code;
        }""",
        room,
    )
    assert refused == "forbidden"
    claims = jwt.decode(carol.token(), SECRET, algorithms=["HS256"])  # the token names her own pairs only
    assert room not in claims["rooms"]
    assert pair(site, "alice", "carol") in claims["rooms"] and pair(site, "bob", "carol") in claims["rooms"]
    # ... and the site refuses her its history and posting to it; the URL can only name her own pairs.
    status = page.evaluate(
        """async ([room, csrf]) => [
          (await fetch(`/chat/messages/${room}/?after=0`)).status,
          (await fetch(`/chat/send/${room}/`, {method: "POST", headers: {"X-CSRFToken": csrf},
                                               body: new URLSearchParams({text: "let me in"})})).status,
        ]""",
        [room, page.locator("#send [name=csrfmiddlewaretoken]").input_value()],
    )
    assert status == [403, 403]
    assert not db(site, "SELECT 1 FROM chat_message WHERE text = 'let me in'")
    page.goto(site.url + "/chat/with/alice/")
    assert page.locator("main").get_attribute("data-room") == pair(site, "alice", "carol")
    expect(page.locator("#messages li")).to_have_count(0)
    assert message(alice.pages[0], "Just between us").count() == 1


@pytest.mark.browser
def test_unread_counts_follow_who_rrr_webhooks_say_is_in_the_room(site: Site, sign_in: SignIn) -> None:
    alice = chatting(sign_in, "alice", 1)
    bob = chatting(sign_in, "bob", 3)
    # rrr told the site (member_added) that both are in the room, and nobody else is.
    wait_for(lambda: present(site, GENERAL) == {"alice", "bob"}, "the site told both are in #general", 30)
    carol_before, bob_before = unread(site, "carol", GENERAL), unread(site, "bob", GENERAL)

    say(alice.pages[0], "Everyone here?")
    for page in bob.pages:
        expect(message(page, "Everyone here?")).to_have_count(1, timeout=WAIT_MS)
    wait_for(lambda: unread(site, "carol", GENERAL) == carol_before + 1, "carol (away) has one more unread")
    assert unread(site, "bob", GENERAL) == bob_before == 0, "bob is in the room: nothing unread"

    # Bob's tabs all go to his room with alice: rrr's member_removed tells the site he left #general.
    for page in bob.pages:
        page.goto(site.url + "/chat/with/alice/")
        expect(page.locator("#live-status")).to_have_attribute("data-status", "open", timeout=WAIT_MS)
    wait_for(lambda: present(site, GENERAL) == {"alice"}, "the site told bob left #general", 30)
    for page in bob.pages:
        expect(badge(page, GENERAL)).to_be_hidden()
    say(alice.pages[0], "Bob, look at #general")
    for page in bob.pages:
        expect(badge(page, GENERAL)).to_have_text("1", timeout=WAIT_MS)
    say(alice.pages[0], "Twice")
    for page in bob.pages:
        expect(badge(page, GENERAL)).to_have_text("2", timeout=WAIT_MS)
    assert unread(site, "bob", GENERAL) == 2
    assert present(site, pair(site, "alice", "bob")) == {"bob"}

    # Alice writes in their pair room, where bob is: no badge for it.
    alice.pages[0].goto(site.url + "/chat/with/bob/")
    say(alice.pages[0], "Here too")
    for page in bob.pages:
        expect(message(page, "Here too")).to_have_count(1, timeout=WAIT_MS)
    assert unread(site, "bob", pair(site, "alice", "bob")) == 0
    assert badge(bob.pages[0], pair(site, "alice", "bob")).is_hidden()

    # One of bob's tabs opens #general: it is read, in every tab of his.
    bob.pages[0].goto(site.url + "/chat/room/general/")
    expect(message(bob.pages[0], "Twice")).to_have_count(1, timeout=WAIT_MS)
    for page in bob.pages[1:]:
        expect(badge(page, GENERAL)).to_be_hidden(timeout=WAIT_MS)
    wait_for(lambda: "bob" in present(site, GENERAL), "the site told bob is back in #general", 30)
    assert unread(site, "bob", GENERAL) == 0


@pytest.mark.browser
def test_on_one_origin_behind_nginx_the_same_chat_runs_through_a_sharedworker_and_the_connect_proxy(
    one_origin: Site, site_browser: Browser
) -> None:
    site = one_origin
    sign_in = SignIn(site_browser, site)
    try:
        alice = chatting(sign_in, "alice", 2, "/chat/with/bob/")
        bob = chatting(sign_in, "bob", 1, "/chat/with/alice/")
        for page in alice.pages + bob.pages:
            expect(page.locator("#live-status")).to_contain_text("sharedworker", timeout=WAIT_MS)
            expect(member(page, "alice")).to_have_count(1, timeout=WAIT_MS)  # granted by the connect view
            expect(member(page, "bob")).to_have_count(1, timeout=WAIT_MS)
        bob.pages[0].type("#text", "one origin")
        for page in alice.pages:
            expect(page.locator("#typing")).to_have_text("bob is typing…", timeout=WAIT_MS)
        say(bob.pages[0], "Same chat, one origin")
        for page in alice.pages + bob.pages:
            expect(message(page, "Same chat, one origin")).to_have_count(1, timeout=WAIT_MS)
        alice.pages[1].reload()
        expect(message(alice.pages[1], "Same chat, one origin")).to_have_count(1, timeout=WAIT_MS)
    finally:
        sign_in.close()


# -- the picture in docs/guides/chat.md -----------------------------------------------------------


@pytest.mark.browser
def test_chat_page_screenshot(site: Site, sign_in: SignIn) -> None:
    """Bob's chat page mid-conversation (alice typing, an unread badge), in tests/artifacts/chat.png;
    with RRR_UPDATE_SCREENSHOTS=1 also docs/chat.png. (#random is this test's alone: the picture holds
    only its conversation.)"""
    alice = chatting(sign_in, "alice", 1, "/chat/room/random/")
    bob = chatting(sign_in, "bob", 1, "/chat/room/random/")
    shot = bob.pages[0]
    assert shot.locator("main").get_attribute("data-room") == RANDOM
    shot.set_viewport_size({"width": 1100, "height": 560})
    lines = [(alice, "Our website should have its own chat too."), (bob, "Like AOL Instant Messenger?"),
             (alice, "Yes: who is online, typing, history. rrr already has all of it."),
             (bob, "Presence rooms, whispers, and publish_on_commit. Ship it!")]
    for user, text in lines:
        say(user.pages[0], text)
        expect(message(shot, text)).to_have_count(1, timeout=WAIT_MS)
    # A message in #general, where bob is not: his badge for it.
    post = """async ([room, text]) => (await fetch(`/chat/send/${room}/`, {method: "POST",
        headers: {"X-CSRFToken": document.querySelector("#send [name=csrfmiddlewaretoken]").value,
                  Accept: "application/json"},
        body: new URLSearchParams({text})})).status"""
    wait_for(lambda: "bob" not in present(site, GENERAL), "bob away from #general", 30)
    before = unread(site, "bob", GENERAL)
    assert alice.pages[0].evaluate(post, [GENERAL, "Lunch at noon?"]) == 201
    expect(badge(shot, GENERAL)).to_have_text(str(before + 1), timeout=WAIT_MS)
    for name in ("alice", "bob"):
        expect(member(shot, name)).to_have_count(1, timeout=WAIT_MS)
    expect(shot.locator('#people li[data-user="alice"] .dot.online')).to_have_count(1, timeout=WAIT_MS)
    alice.pages[0].type("#text", "Tomorrow")
    expect(shot.locator("#typing")).to_have_text("alice is typing…", timeout=WAIT_MS)
    shot.mouse.move(0, 0)
    ARTIFACTS.mkdir(exist_ok=True)
    shot.screenshot(path=str(ARTIFACTS / "chat.png"))
    if os.environ.get("RRR_UPDATE_SCREENSHOTS") == "1":
        shot.screenshot(path=str(DOCS / "chat.png"))
