"""Presence rooms of any size (issue 24): a subscription gets the first page of the members
(at most ``--presence-list-max``, ascending user ids) with ``total`` and ``more``, pages through
the rest with ``members`` frames, and hears diffs in pieces no bigger than a page;
``--max-members`` refuses the next user; ``GET /api/rooms/<slug>/members`` pages alike."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import jwt
import pytest
from tornado.httpclient import AsyncHTTPClient

from support.clients import Client, connect, wait_until
from support.redis import LyingRedis
from support.servers import Server, ServerFactory

pytestmark = pytest.mark.gen_test(timeout=120)

SECRET = "paging-test-secret-of-decent-length"
ROOM = "presence-big"
KEY = "server-key"


def token(user: str, rooms: tuple[str, ...] = (ROOM,)) -> str:
    claims = {"sub": user, "exp": time.time() + 600, "rooms": list(rooms), "info": {"name": f"User {user}"}}
    return jwt.encode(claims, SECRET, algorithm="HS256")


async def member(server: Server, user: str, sub: str = "t", room: str = ROOM, subscribe: bool = True) -> Client:
    c = await connect(server.ws_url("/ws/"))
    await c.send(type="auth", token=token(user, (room,)))
    await c.next("authenticated", after=0)
    if subscribe:
        await c.send(type="subscribe", room=room, sub=sub)
    return c


def first_pages(c: Client, room: str = ROOM) -> list[dict[str, Any]]:
    return [f for f in c.of_type("presence") if f["room"] == room and "sub" not in f]


def member_entries(f: dict[str, Any]) -> int:
    """How many members one presence frame carries (a page, or a diff's joins and leaves)."""
    if f["type"] == "presence":
        return len(f["members"])
    return len(f["joins"]) + len(f["leaves"])


def largest_frame(c: Client) -> int:
    return max((member_entries(f) for f in c.frames if f["type"] in ("presence", "presence_diff")), default=0)


async def page(c: Client, after: str, sub: str = "t", room: str = ROOM) -> dict[str, Any]:
    """Ask for the members after ``after``; the answer (a page with that sub, or an error naming it)."""
    n = len(c.frames)
    await c.send(type="members", room=room, sub=sub, after=after)

    def answer() -> dict[str, Any] | None:
        return next((f for f in c.frames[n:] if f.get("sub") == sub and (
            f["type"] == "presence" or (f["type"] == "error" and f.get("after") == after))), None)

    return await wait_until(answer, what=f"the page after {after!r}")


async def walk(c: Client, pause: float = 0.0) -> list[list[str]]:
    """Every page from the start, in order, as its user ids."""
    pages: list[list[str]] = []
    after = ""
    while True:
        got = await page(c, after)
        assert got["type"] == "presence", got
        users = list(got["members"])
        pages.append(users)
        if not got["more"]:
            return pages
        after = users[-1]
        await asyncio.sleep(pause)


async def test_a_subscription_gets_the_first_page_and_pages_through_the_rest_in_user_id_order(
    server_factory: ServerFactory, clients: list[Client],
) -> None:
    server = await server_factory(token_secret=SECRET, presence_list_max=3)
    # Ids whose order is not their numbers' nor JavaScript's: code points ("10" < "9", astral last).
    users = ["10", "9", "a", "b", "é", "\uffff", "\U0001f600"]
    crowd = [await member(server, u) for u in users]
    clients += crowd
    await wait_until(lambda: crowd[-1].counts(ROOM) and crowd[-1].counts(ROOM)[-1].get("users") == 7, what="7 users")
    watcher = await member(server, "0")  # sorts first: part of its own first page
    clients.append(watcher)
    everyone = sorted(users + ["0"])
    await wait_until(lambda: [f for f in first_pages(watcher) if f["total"] == 8], what="a first page of 8")
    first = first_pages(watcher)[-1]
    assert list(first["members"]) == everyone[:3] and first["more"] is True
    assert first["members"]["0"] == {"info": {"name": "User 0"}}

    pages = await walk(watcher)
    assert pages == [everyone[0:3], everyone[3:6], everyone[6:8]]
    last = await page(watcher, everyone[-1])
    assert (last["members"], last["total"], last["more"]) == ({}, 8, False)
    # An id that is not a member still says where to go on.
    assert list((await page(watcher, "a0"))["members"]) == ["b", "é", "\uffff"]

    # Eight more join at once (one round's diff): the watcher hears each, in frames of at most three.
    n = len(watcher.frames)
    late = [await member(server, f"late-{i}", subscribe=False) for i in range(8)]
    clients += late
    await asyncio.gather(*(c.send(type="subscribe", room=ROOM, sub="t") for c in late))
    joined: set[str] = set()

    def heard_all() -> bool:
        joined.update(u for f in watcher.frames[n:] if f["type"] == "presence_diff" for u in f["joins"])
        return joined >= {f"late-{i}" for i in range(8)}

    await wait_until(heard_all, what="every late member in a diff")
    for c in [watcher, *crowd, *late]:
        assert largest_frame(c) <= 3, c.frames
    assert sum(1 for f in watcher.frames[n:] if f["type"] == "presence_diff") >= 3, "eight joins, cut in threes"
    assert max(len(p) for p in await walk(late[0])) == 3


async def test_paging_walks_every_member_exactly_once_while_members_join_and_leave(
    server_factory: ServerFactory, clients: list[Client],
) -> None:
    server = await server_factory(token_secret=SECRET, presence_list_max=4, presence_list_rate=0)
    steady = [f"m{i:02d}" for i in range(24)]
    crowd = [await member(server, u) for u in steady]
    clients += crowd
    walker = await member(server, "w")
    clients.append(walker)
    await wait_until(lambda: any(f["total"] == 25 for f in first_pages(walker)), what="25 members")

    stop = asyncio.Event()
    churned: set[str] = set()

    async def churn() -> None:
        """Members come and go between the steady ones' ids ("m03x" sorts between m03 and m04),
        before and after where the walk stands."""
        rng = random.Random(24)
        held: list[Client] = []
        i = 0
        while not stop.is_set():
            user = f"{rng.choice(steady)}x{i}"
            i += 1
            churned.add(user)
            held.append(await member(server, user))
            if len(held) > 4:
                held.pop(rng.randrange(len(held))).close()
            await asyncio.sleep(0.03)
        for c in held:
            c.close()

    churner = asyncio.ensure_future(churn())
    try:
        walks = []
        for _ in range(3):
            walks.append(await walk(walker, pause=0.15))
    finally:
        stop.set()
        await churner
    assert len(churned) > 20, "members came and went during the walks"
    for pages in walks:
        seen = [u for p in pages for u in p]
        assert len(seen) == len(set(seen)), f"a member twice in one walk: {pages}"
        assert seen == sorted(seen), pages
        assert all(len(p) <= 4 for p in pages)
        assert {u for u in seen if u in steady or u == "w"} == set(steady) | {"w"}, "a steady member missed"
        assert set(seen) <= set(steady) | {"w"} | churned
    assert largest_frame(walker) <= 4


async def test_the_member_cap_refuses_the_next_user_and_counts_one_in_its_grace(
    server_factory: ServerFactory, clients: list[Client],
) -> None:
    one = await server_factory(token_secret=SECRET, max_members=3)
    two = await server_factory(token_secret=SECRET, max_members=3)
    ada, bob, cy = [await member(one, u) for u in ("ada", "bob", "cy")]
    clients += [ada, bob, cy]
    await wait_until(lambda: any(f["total"] == 3 for f in first_pages(cy)), what="three members")
    dan = await member(one, "dan")
    clients.append(dan)
    refused = await dan.next("error")
    assert (refused["code"], refused["room"], refused["sub"]) == ("too_many_members", ROOM, "t")
    assert one.metric("rrr_limited_total", {"limit": "members"}) == 1
    assert first_pages(dan) == [] and dan.of_type("presence_diff") == []
    # A member's other tab, and its other browser, are no new user.
    await ada.send(type="subscribe", room=ROOM, sub="t2")
    ada_again = await member(one, "ada")
    clients.append(ada_again)
    await ada_again.settles_on(4, 5, room=ROOM)
    assert ada.of_type("error") == [] and ada_again.of_type("error") == []

    # Another process, new to the room, reads its members before it admits anyone.
    eve = await member(two, "eve")
    clients.append(eve)
    assert (await eve.next("error"))["code"] == "too_many_members"
    assert two.metric("rrr_limited_total", {"limit": "members"}) == 1

    # Bob leaves: within his grace he still counts; after it, there is room.
    bob.close()
    await asyncio.sleep(0.5)
    fay = await member(one, "fay")
    clients.append(fay)
    assert (await fay.next("error"))["code"] == "too_many_members"
    await wait_until(lambda: any(f["type"] == "presence_diff" and "bob" in f["leaves"] for f in cy.frames),
                     timeout=15, what="bob gone after his grace")
    gus = await member(two, "gus")
    clients.append(gus)
    await wait_until(lambda: any(f["total"] == 3 and "gus" in f["members"] for f in first_pages(gus)),
                     what="gus admitted")
    assert gus.of_type("error") == []
    assert one.metric("rrr_limited_total", {"limit": "members"}) == 2


async def test_a_page_is_asked_for_through_a_subscription_and_costs_the_list_budget(
    server_factory: ServerFactory, clients: list[Client],
) -> None:
    server = await server_factory(token_secret=SECRET, presence_list_rate=0.001, presence_list_burst=4)
    ada = await member(server, "ada")
    clients.append(ada)
    await wait_until(lambda: first_pages(ada), what="ada's first page")
    await ada.send(type="subscribe", room="lobby", sub="l")
    refusals = [
        (await page(ada, "", sub="nope"), "not_subscribed"),
        (await page(ada, "", sub="l", room="lobby"), "bad_room"),
    ]
    for got, code in refusals:
        assert (got["type"], got["code"], got["after"]) == ("error", code, ""), got
    # The first page took one of four; three pages more, then refused (and told which page).
    for _ in range(3):
        assert (await page(ada, "a"))["type"] == "presence"
    limited = await page(ada, "a")
    assert (limited["type"], limited["code"], limited["room"], limited["sub"], limited["after"]) == (
        "error", "rate_limited", ROOM, "t", "a")
    assert server.metric("rrr_limited_total", {"limit": "presence_list_rate"}) == 1
    # A bad after is refused like any bad frame, and the socket stays.
    n = len(ada.frames)
    await ada.send(type="members", room=ROOM, sub="t", after=["x"])
    bad = await ada.next("error", after=n)
    assert (bad["code"], bad["sub"]) == ("bad_message", "t")
    await ada.send(type="ping")
    await ada.reply("pong")


async def test_a_page_asked_for_before_the_first_list_is_answered_from_it(
    server_factory: ServerFactory, clients: list[Client],
) -> None:
    """A process new to the room has no list yet: a page asked for at once waits for the first one
    (which counts the asking subscription), so it agrees with the first page and the diffs after it."""
    one = await server_factory(token_secret=SECRET, presence_list_max=2)
    two = await server_factory(token_secret=SECRET, presence_list_max=2)
    crowd = [await member(one, u) for u in ("b", "c", "d")]
    clients += crowd
    await wait_until(lambda: any(f["total"] == 3 for f in first_pages(crowd[-1])), what="three members")
    c = await connect(two.ws_url("/ws/"))
    clients.append(c)
    await c.send(type="auth", token=token("a"))
    await c.next("authenticated", after=0)
    await c.send(type="subscribe", room=ROOM, sub="t")
    await c.send(type="members", room=ROOM, sub="t", after="b")
    await c.send(type="members", room=ROOM, sub="t", after="")
    answers = await wait_until(lambda: (lambda a: a if len(a) == 2 else None)(
        [f for f in c.of_type("presence") if f.get("sub") == "t"]), what="both pages")
    assert [(list(f["members"]), f["total"], f["more"]) for f in answers] == [
        (["c", "d"], 4, False), (["a", "b"], 4, True)], "in the order asked, from the list counting 'a'"
    await wait_until(lambda: first_pages(c), what="the first page")
    assert list(first_pages(c)[0]["members"]) == ["a", "b"]


async def test_pages_waiting_for_a_room_s_first_list_are_capped_per_socket(
    server_factory: ServerFactory, lying_redis: Callable[[], Awaitable[LyingRedis]], clients: list[Client],
) -> None:
    """While a room has no list on this process yet (here its channels' SUBSCRIBE is held for 3 s,
    and a room is written, so read, only once they are confirmed), pages asked for wait for it:
    eight per socket, the rest refused, not held."""
    proxy = await lying_redis()
    server = await server_factory(redis=proxy.url, token_secret=SECRET, presence_list_rate=0)
    proxy.subscribe_delay = 3.0
    c = await member(server, "ada", subscribe=False)
    clients.append(c)
    await c.send(type="subscribe", room=ROOM, sub="t")
    for i in range(12):
        await c.send(type="members", room=ROOM, sub="t", after=f"p{i:02d}")
    refused = await wait_until(lambda: (lambda e: e if len(e) == 4 else None)(c.of_type("error")), what="refusals")
    assert [(e["code"], e["after"]) for e in refused] == [("rate_limited", f"p{i:02d}") for i in range(8, 12)]
    assert not c.of_type("presence"), "no list yet"
    pages = await wait_until(lambda: (lambda p: p if len(p) == 8 else None)(
        [f for f in c.of_type("presence") if f.get("sub") == "t"]), timeout=15, what="the eight pages")
    assert [(list(f["members"]), f["total"]) for f in pages] == [([], 1)] * 8  # "ada" sorts before "p00"
    assert list((await page(c, ""))["members"]) == ["ada"]


async def api_members(server: Server, query: str = "", key: str = KEY, room: str = ROOM) -> tuple[int, Any]:
    resp = await AsyncHTTPClient().fetch(f"{server.base_url}/api/rooms/{room}/members{query}",
                                         headers={"Authorization": f"Bearer {key}"}, raise_error=False)
    return resp.code, json.loads(resp.body)


async def test_the_members_api_answers_pages_with_the_total(
    server_factory: ServerFactory, clients: list[Client],
) -> None:
    server = await server_factory(token_secret=SECRET, api_token=KEY, presence_list_max=3)
    users = ["e", "a", "d", "c", "b"]
    crowd = [await member(server, u) for u in users]
    clients += crowd
    await wait_until(lambda: any(f["total"] == 5 for f in first_pages(crowd[-1])), what="five members")
    info = {"info": {"name": "User a"}}
    assert await api_members(server) == (200, {
        "room": ROOM, "members": {u: {"info": {"name": f"User {u}"}} for u in "abc"}, "total": 5, "more": True})
    status, body = await api_members(server, "?after=c")
    assert (status, list(body["members"]), body["total"], body["more"]) == (200, ["d", "e"], 5, False)
    assert (await api_members(server, "?limit=1"))[1]["members"] == {"a": info}
    status, body = await api_members(server, "?limit=100&after=a")  # capped at --presence-list-max
    assert (status, list(body["members"]), body["more"]) == (200, ["b", "c", "d"], True)
    for bad in ("?limit=0", "?limit=-1", "?limit=x", "?limit=%C2%B2", "?after=" + "u" * 129):
        status, body = await api_members(server, bad)
        assert status == 400 and body["status"] == 400, (bad, body)
    assert await api_members(server, room="lobby") == (200, {"room": "lobby", "members": {}, "total": 0,
                                                             "more": False})
    assert (await api_members(server, key="wrong"))[0] == 403
