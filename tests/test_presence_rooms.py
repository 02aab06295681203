"""Presence rooms: who is here, not only how many. A member is a user: one entry however many
tabs, sockets and processes it is in through; it joins with its first subscription anywhere and
leaves with its last, also when its process dies."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import jwt
import pytest
import redis
from tornado.httpclient import AsyncHTTPClient

from rrr.backplane import keys
from support.clients import Client, connect, wait_until
from support.processes import AppProcess
from support.redis import LyingRedis
from support.servers import ServerFactory

pytestmark = pytest.mark.gen_test(timeout=90)

SECRET = "presence-test-secret-of-decent-length"
ROOM = "presence-team"
KEY = "server-key"


def token(sub: str, name: str) -> str:
    now = time.time()
    return jwt.encode({"sub": sub, "exp": now + 600, "rooms": [ROOM], "info": {"name": name}}, SECRET,
                      algorithm="HS256")


async def member(url: str, sub: str, name: str, tabs: tuple[str, ...] = ("t1",)) -> Client:
    c = await connect(url + "/ws/")
    await c.send(type="auth", token=token(sub, name))
    await c.next("authenticated", after=0)
    for tab in tabs:
        await c.send(type="subscribe", room=ROOM, sub=tab)
    return c


def seen(c: Client) -> dict[str, Any]:
    """The member list this socket holds: its last whole list with every diff after it applied."""
    members: dict[str, Any] = {}
    for f in c.frames:
        if f.get("room") != ROOM:
            continue
        if f["type"] == "presence":
            members = dict(f["members"])
        elif f["type"] == "presence_diff":
            for user in f["leaves"]:
                members.pop(user, None)
            members.update(f["joins"])
    return members


def sees(c: Client, members: dict[str, Any]) -> bool:
    return seen(c) == members


def users_shown(c: Client, n: int) -> bool:
    counts = c.counts(ROOM)
    return bool(counts) and counts[-1].get("users") == n


def ws_base(port: int) -> str:
    return f"ws://127.0.0.1:{port}"


async def api_members(base_url: str) -> Any:
    resp = await AsyncHTTPClient().fetch(f"{base_url}/api/rooms/{ROOM}/members",
                                         headers={"Authorization": f"Bearer {KEY}"}, raise_error=False)
    assert resp.code == 200, resp.body
    return json.loads(resp.body)


async def test_a_user_is_one_member_across_tabs_sockets_and_processes(
    server_factory: ServerFactory, clients: list[Client],
) -> None:
    one = await server_factory(token_secret=SECRET, api_token=KEY)
    two = await server_factory(token_secret=SECRET, api_token=KEY)
    ada_1 = await member(ws_base(one.port), "ada", "Ada", ("t1", "t2", "t3"))  # 3 tabs, one browser
    ada_2 = await member(ws_base(two.port), "ada", "Ada")  # a second browser, another process
    bob = await member(ws_base(two.port), "bob", "Bob")
    clients += [ada_1, ada_2, bob]
    everyone = {"ada": {"info": {"name": "Ada"}}, "bob": {"info": {"name": "Bob"}}}
    for c in (ada_1, ada_2, bob):
        await wait_until(partial(sees, c, everyone), what="both members, each once")
        await c.settles_on(3, 5, room=ROOM)
        await wait_until(partial(users_shown, c, 2), what="users 2")
    assert (await api_members(one.base_url)) == {"room": ROOM, "members": everyone, "total": 2, "more": False}

    # Ada closes one browser: still a member. Bob leaves: every socket hears it once.
    ada_2.close()
    bob.close()
    await wait_until(lambda: seen(ada_1) == {"ada": {"info": {"name": "Ada"}}}, what="bob left")
    leaves = [f for f in ada_1.of_type("presence_diff") if f["leaves"]]
    assert [list(f["leaves"]) for f in leaves] == [["bob"]]
    await ada_1.settles_on(1, 3, room=ROOM)


async def test_members_of_a_killed_process_leave_and_sigterm_removes_them_at_once(
    server_factory: ServerFactory, app_factory: Callable[..., AppProcess], redis_url: str, clients: list[Client],
    rclient: redis.Redis,
) -> None:
    ttl = 2.0
    survivor = await server_factory(ttl=ttl, token_secret=SECRET, api_token=KEY)
    victim, leaving = [
        await asyncio.to_thread(app_factory, redis_url=redis_url, presence_ttl=ttl_, count_interval=0.05,
                                token_secret=SECRET)
        for ttl_ in (ttl, 60)
    ]
    watcher = await member(ws_base(survivor.port), "ada", "Ada")
    bob = await member(ws_base(victim.port), "bob", "Bob")
    cy = await member(ws_base(leaving.port), "cy", "Cy")
    clients += [watcher, bob, cy]
    await wait_until(lambda: set(seen(watcher)) == {"ada", "bob", "cy"}, what="three members")

    victim.kill()
    await wait_until(lambda: set(seen(watcher)) == {"ada", "cy"}, timeout=ttl + 10, what="bob gone with his process")
    leaving.signal(signal.SIGTERM)
    # A TTL of 60 s cannot explain a leave within 10 s: the process removed its members itself.
    await wait_until(lambda: set(seen(watcher)) == {"ada"}, timeout=10, what="cy gone at SIGTERM")
    assert (await api_members(survivor.base_url))["members"] == {"ada": {"info": {"name": "Ada"}}}
    # The dead and the departed leave nothing behind in Redis: one field, the survivor's Ada.
    assert len(rclient.hkeys(keys.members(ROOM))) == 1


async def test_the_members_api_needs_the_server_key(server_factory: ServerFactory) -> None:
    server = await server_factory(token_secret=SECRET, api_token=KEY)
    resp = await AsyncHTTPClient().fetch(f"{server.base_url}/api/rooms/{ROOM}/members", raise_error=False)
    assert resp.code == 403
    assert (await api_members(server.base_url)) == {"room": ROOM, "members": {}, "total": 0, "more": False}


async def test_a_reload_is_no_leave_and_join_but_leaving_for_good_is(
    server_factory: ServerFactory, clients: list[Client],
) -> None:
    """A tab that reloads (its socket goes, a new one comes within a moment) stays a member
    throughout; one that does not come back leaves after the grace."""
    server = await server_factory(token_secret=SECRET, api_token=KEY)
    watcher = await member(ws_base(server.port), "ada", "Ada")
    bob = await member(ws_base(server.port), "bob", "Bob")
    clients += [watcher, bob]
    await wait_until(lambda: set(seen(watcher)) == {"ada", "bob"}, what="both members")
    before = len(watcher.frames)
    bob.close()
    await asyncio.sleep(0.3)  # the page reloads
    again = await member(ws_base(server.port), "bob", "Bob")
    clients.append(again)
    await wait_until(lambda: set(seen(again)) == {"ada", "bob"}, what="the reloaded page's list")
    await asyncio.sleep(3)  # past the grace
    flicker = [f for f in watcher.frames[before:] if f["type"] == "presence_diff"]
    assert not flicker, f"bob left and came back: {flicker}"
    again.close()
    await wait_until(lambda: set(seen(watcher)) == {"ada"}, timeout=10, what="bob gone for good")


async def test_a_refreshed_token_with_new_info_shows_every_member_the_new_info(
    server_factory: ServerFactory, clients: list[Client],
) -> None:
    """A second ``auth`` (same user, new ``info``) is a diff to everyone: the user joins again with
    the new info, and does not leave. Before, the others kept the old info for good."""
    one = await server_factory(token_secret=SECRET, api_token=KEY)
    two = await server_factory(token_secret=SECRET, api_token=KEY)
    ada = await member(ws_base(one.port), "ada", "Ada")
    bob = await member(ws_base(two.port), "bob", "Bob")
    clients += [ada, bob]
    before = {"ada": {"info": {"name": "Ada"}}, "bob": {"info": {"name": "Bob"}}}
    for c in (ada, bob):
        await wait_until(partial(sees, c, before), what="both members")
    seen_by_bob = len(bob.frames)
    sent = len(ada.frames)
    await ada.send(type="auth", token=token("ada", "Ada Lovelace"))
    await ada.next("authenticated", after=sent)
    after = {"ada": {"info": {"name": "Ada Lovelace"}}, "bob": {"info": {"name": "Bob"}}}
    for c in (ada, bob):
        await wait_until(partial(sees, c, after), what="ada's new info")
    diffs = [f for f in bob.frames[seen_by_bob:] if f["type"] == "presence_diff"]
    assert diffs == [{"type": "presence_diff", "room": ROOM, "joins": {"ada": {"info": {"name": "Ada Lovelace"}}},
                      "leaves": {}}]
    assert (await api_members(two.base_url))["members"] == after
    await bob.settles_on(2, 2, room=ROOM)


async def test_a_member_that_left_while_pubsub_was_down_leaves_the_list(
    server_factory: ServerFactory, lying_redis: Callable[[], Awaitable[LyingRedis]], rclient: redis.Redis,
    clients: list[Client],
) -> None:
    """The soak's stale member (bench/soak.py, after a pub/sub cut or a SIGSTOP): a user whose last tab
    left while pub/sub was down stayed listed for good (counts right). Its removal waited for the room's
    resubscription, and the reconnect before it made the process forget which members Redis held, so
    the next write sent the users still here and no removal: the field stayed, under a live lease."""
    proxy = await lying_redis()
    server = await server_factory(redis=proxy.url, token_secret=SECRET, api_token=KEY, vacate_delay=0.1)
    stays = await member(ws_base(server.port), "ada", "Ada")
    goes = await member(ws_base(server.port), "bob", "Bob")
    clients += [stays, goes]
    both = {"ada": {"info": {"name": "Ada"}}, "bob": {"info": {"name": "Bob"}}}
    await wait_until(partial(sees, stays, both), what="both members")

    proxy.subscribe_delay = 2.0  # the resubscription takes a while: bob leaves meanwhile
    assert rclient.client_kill_filter(_type="pubsub") >= 1
    # (The reconnect itself is quick; the room's SUBSCRIBE is confirmed only after the relay's delay.)
    await wait_until(lambda: not server.service.subscriber.synced, what="pub/sub cut, the room not resubscribed")
    goes.close()
    await wait_until(lambda: server.service.subscriber.synced, timeout=30, what="pub/sub back, the room resubscribed")
    proxy.subscribe_delay = 0.0

    only_ada = {"ada": {"info": {"name": "Ada"}}}
    await wait_until(partial(sees, stays, only_ada), timeout=20, what="bob gone from ada's list")
    assert (await api_members(server.base_url))["members"] == only_ada
    assert len(rclient.hkeys(keys.members(ROOM))) == 1


async def test_a_member_whose_removal_redis_lost_goes_at_the_next_reconnect(
    server_factory: ServerFactory, rclient: redis.Redis, clients: list[Client],
) -> None:
    """A Cluster failover can lose a removal Redis had confirmed (the replica never got it): the process
    believes the member gone and would never write it again. A reconnect (a failover moves the
    room's shard, so the subscriber reconnects) rewrites the process's members whole, and the field
    Redis kept goes."""
    server = await server_factory(token_secret=SECRET, api_token=KEY, vacate_delay=0.1)
    stays = await member(ws_base(server.port), "ada", "Ada")
    goes = await member(ws_base(server.port), "bob", "Bob")
    clients += [stays, goes]
    await wait_until(lambda: len(rclient.hkeys(keys.members(ROOM))) == 2, what="both members written")
    fields = rclient.hgetall(keys.members(ROOM))
    goes.close()
    only_ada = {"ada": {"info": {"name": "Ada"}}}
    await wait_until(partial(sees, stays, only_ada), what="bob gone")

    for field, info in fields.items():  # Redis as it was before bob's removal
        rclient.hset(keys.members(ROOM), field, info)
    assert set((await api_members(server.base_url))["members"]) == {"ada", "bob"}
    assert rclient.client_kill_filter(_type="pubsub") >= 1
    await wait_until(lambda: len(rclient.hkeys(keys.members(ROOM))) == 1, timeout=20, what="bob's field gone")
    assert (await api_members(server.base_url))["members"] == only_ada
    await wait_until(partial(sees, stays, only_ada), what="ada's list without bob")
