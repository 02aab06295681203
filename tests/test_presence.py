"""Presence that stays true across processes: agreement, relay, kill -9, SIGTERM."""

import asyncio
import json
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from tornado.httpclient import AsyncHTTPClient

from support.clients import Client, connect, wait_until
from support.processes import AppProcess
from support.servers import ServerFactory

from rrr.backplane import keys

pytestmark = pytest.mark.gen_test(timeout=90)


async def room_api(base_url: str, room: str) -> dict[str, Any]:
    resp = await AsyncHTTPClient().fetch(f"{base_url}/api/rooms/{room}")
    return json.loads(resp.body)


def never_negative(*clients: Client) -> None:
    for c in clients:
        for f in c.counts():
            assert f["connections"] >= 0 and f["tabs"] >= 0, f


async def test_two_instances_agree_on_counts(server_factory: ServerFactory, clients: list[Client]) -> None:
    one, two = await server_factory(), await server_factory()
    a = [await connect(one.ws_url("/ws/count/shared/")) for _ in range(3)]
    b = [await connect(two.ws_url("/ws/")) for _ in range(2)]
    clients += a + b
    for i, c in enumerate(b):
        await c.send(type="subscribe", room="shared", sub="x")
        await c.send(type="subscribe", room="shared", sub="y")
    for c in a + b:
        await c.settles_on(5, 7)
    assert await room_api(one.base_url, "shared") == await room_api(two.base_url, "shared")
    a[0].close()
    for c in a[1:] + b:
        await c.settles_on(4, 6)
    never_negative(*a, *b)


async def test_instances_relay_each_others_messages(server_factory: ServerFactory, clients: list[Client]) -> None:
    one, two = await server_factory(client_publish=True), await server_factory(publish_token="tok")
    a = await connect(one.ws_url("/ws/"))
    b = await connect(two.ws_url("/ws/count/relay/"))
    clients += [a, b]
    await a.send(type="subscribe", room="relay", sub="t")
    await b.settles_on(2)
    await a.send(type="publish", room="relay", data="from one")
    assert (await b.next("message", after=0))["data"] == "from one"
    await AsyncHTTPClient().fetch(two.base_url + "/api/rooms/relay/messages", method="POST", body='"from two"',
                                  headers={"Authorization": "Bearer tok"})
    await wait_until(lambda: [m["data"] for m in a.of_type("message")] == ["from one", "from two"])


async def test_any_backend_publishing_to_redis_reaches_the_room(
    server_factory: ServerFactory, clients: list[Client], rclient: redis.Redis
) -> None:
    server = await server_factory()
    c = await connect(server.ws_url("/ws/count/django/"))
    clients.append(c)
    await c.settles_on(1)
    assert rclient.publish("rrr:room:django", json.dumps({"from": "django"})) == 1
    assert (await c.next("message", after=0))["data"] == {"from": "django"}


async def test_malformed_redis_payloads_are_dropped_and_counted(
    server_factory: ServerFactory, clients: list[Client], rclient: redis.Redis
) -> None:
    server = await server_factory()
    c = await connect(server.ws_url("/ws/count/junk/"))
    clients.append(c)
    await c.settles_on(1)
    rclient.publish("rrr:room:junk", b"\x80\x04\x95 pickled")
    rclient.publish(keys.count_channel("junk"), "{not json")
    rclient.publish("rrr:room:junk", '"fine"')
    assert (await c.next("message", after=0))["data"] == "fine"
    assert server.metric("rrr_malformed_payloads_total") == 2
    assert c.last_count() == (1, 1)


async def test_a_killed_process_vanishes_within_the_ttl(
    server_factory: ServerFactory, app_factory: Callable[..., AppProcess], redis_url: str, clients: list[Client]
) -> None:
    ttl = 2.0
    survivor = await server_factory(ttl=ttl)
    victim = await asyncio.to_thread(app_factory, redis_url=redis_url, presence_ttl=ttl, count_interval=0.05)
    mine = [await connect(survivor.ws_url("/ws/count/kill/")) for _ in range(2)]
    theirs = [await connect(f"ws://127.0.0.1:{victim.port}/ws/count/kill/") for _ in range(3)]
    clients += mine + theirs
    for c in mine:
        await c.settles_on(5)
    killed_at = time.monotonic()
    victim.kill()
    for c in mine:
        await c.settles_on(2, 2, timeout=ttl + 10)
    took = time.monotonic() - killed_at
    assert took > 0.5, "counts dropped before the lease could expire: something else removed them"
    assert (await room_api(survivor.base_url, "kill"))["connections"] == 2
    assert survivor.metric("rrr_presence_expired_total") == 1
    never_negative(*mine)


async def test_sigterm_removes_presence_at_once_and_closes_with_1001(
    server_factory: ServerFactory, app_factory: Callable[..., AppProcess], redis_url: str, clients: list[Client],
    rclient: redis.Redis,
) -> None:
    survivor = await server_factory(ttl=60)
    leaving = await asyncio.to_thread(app_factory, redis_url=redis_url, presence_ttl=60, count_interval=0.05)
    mine = await connect(survivor.ws_url("/ws/count/term/"))
    theirs = [await connect(f"ws://127.0.0.1:{leaving.port}/ws/count/term/") for _ in range(2)]
    clients.append(mine)
    await mine.settles_on(3)
    leaving.signal(signal.SIGTERM)
    # A TTL of 60 s cannot explain a drop within 10 s: the process removed its own presence.
    await mine.settles_on(1, timeout=10)
    for c in theirs:
        await asyncio.wait_for(c.closed.wait(), 10)
        assert c.close_code == 1001
    assert await asyncio.to_thread(leaving.proc.wait, 10) == 0  # type: ignore[union-attr]
    assert not [p for p in rclient.zrange("rrr:procs", 0, -1)
                if str(leaving.proc.pid) in p.split(":")[1:2]]  # type: ignore[arg-type, union-attr]


async def test_a_live_process_whose_lease_lapsed_comes_back(
    server_factory: ServerFactory, clients: list[Client], rclient: redis.Redis
) -> None:
    """A process stalled past its TTL is swept by others; when it answers again it re-registers, announced."""
    server = await server_factory(ttl=1.0)
    watcher_host = await server_factory(ttl=30)
    mine = [await connect(server.ws_url("/ws/count/lapse/")) for _ in range(2)]
    watcher = await connect(watcher_host.ws_url("/ws/count/lapse/"))
    clients += mine + [watcher]
    await watcher.settles_on(3)
    pid = server.service.presence.process_id
    rclient.zadd("rrr:procs", {pid: 0})  # as if its renewals had stalled past the TTL
    await wait_until(lambda: any(f["connections"] == 1 for f in watcher.counts()), what="lapsed process counted out")
    await watcher.settles_on(3, timeout=15)
    assert rclient.hget(keys.presence("lapse"), pid) == "2 2"
