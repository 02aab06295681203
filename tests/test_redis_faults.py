"""A dead, restarted or stalled Redis: the process stays up, tells the truth, and recovers by itself."""

import asyncio
import json
import os
import signal

import pytest
import redis
from tornado.httpclient import AsyncHTTPClient, HTTPResponse

from rrr.backplane.embedded import EmbeddedRedis
from support.clients import Client, connect, wait_until
from support.servers import ServerFactory

pytestmark = pytest.mark.gen_test(timeout=120)


async def get(url: str) -> HTTPResponse:
    return await AsyncHTTPClient().fetch(url, raise_error=False, request_timeout=20)


async def test_redis_restarted_empty_rebuilds_counts_and_relay(
    server_factory: ServerFactory, own_redis: EmbeddedRedis, clients: list[Client]
) -> None:
    one = await server_factory(redis=own_redis.url)
    two = await server_factory(redis=own_redis.url)
    a = [await connect(one.ws_url("/ws/count/phoenix/")) for _ in range(2)]
    b = await connect(two.ws_url("/ws/"))
    clients += a + [b]
    await b.send(type="subscribe", room="phoenix", sub="1")
    await b.send(type="subscribe", room="phoenix", sub="2")
    for c in a + [b]:
        await c.settles_on(3, 4)

    own_redis.kill()
    await wait_until(lambda: get(one.base_url + "/healthz"), what="healthz answers")
    assert (await get(one.base_url + "/healthz")).code == 503
    assert (await get(one.base_url + "/api/rooms/phoenix")).code == 503
    # A client arriving while Redis is down is registered once it is back.
    late = await connect(two.ws_url("/ws/count/phoenix/"))
    clients.append(late)

    own_redis.start()  # same port, empty: every key is gone
    await wait_until(lambda: one.metric("rrr_redis_reconnects_total") >= 1, timeout=30, what="reconnect")
    for c in a + [b, late]:
        await c.settles_on(4, 5, timeout=30)
    assert (await get(one.base_url + "/healthz")).code == 200
    api = json.loads((await get(two.base_url + "/api/rooms/phoenix")).body)
    assert (api["connections"], api["tabs"]) == (4, 5)

    r = redis.Redis.from_url(own_redis.url)
    await wait_until(lambda: r.publish("rrr:room:phoenix", '"back"') == 2, timeout=30, what="both resubscribed")
    r.close()
    for c in a + [b, late]:
        await wait_until(lambda c=c: any(m["data"] == "back" for m in c.of_type("message")))  # type: ignore[misc]


async def test_a_stalled_redis_never_hangs_the_event_loop(
    server_factory: ServerFactory, own_redis: EmbeddedRedis, clients: list[Client]
) -> None:
    server = await server_factory(redis=own_redis.url, redis_timeout=0.5)
    c = await connect(server.ws_url("/ws/"))
    clients.append(c)
    await c.send(type="subscribe", room="stall", sub="1")
    await c.settles_on(1, 1)
    os.kill(own_redis.proc.pid, signal.SIGSTOP)  # type: ignore[union-attr]
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        health = await get(server.base_url + "/healthz")
        assert health.code == 503
        assert loop.time() - started < 10
        page = await get(server.base_url + "/count/stall/")
        assert page.code == 200
        n = len(c.frames)
        await c.send(type="ping")
        await c.next("pong", after=n, timeout=5)
        # A join during the stall is not lost: it is written when Redis answers again.
        await c.send(type="subscribe", room="stall", sub="2")
    finally:
        os.kill(own_redis.proc.pid, signal.SIGCONT)  # type: ignore[union-attr]
    await c.settles_on(1, 2, timeout=30)
    assert (await get(server.base_url + "/healthz")).code == 200


async def test_at_maxmemory_a_subscription_to_a_new_room_gets_subscribed_and_its_count(
    server_factory: ServerFactory, own_redis: EmbeddedRedis, clients: list[Client],
) -> None:
    """Reading a new room's position fixes its epoch (a small write): at maxmemory it must still
    run, or the subscription waits for ``subscribed`` (and its count) until memory is freed."""
    r = redis.Redis.from_url(own_redis.url)
    version = r.info("server")["redis_version"]
    if int(version.split(".")[0]) < 7:
        pytest.skip(f"redis-server {version} takes no script flags (allow-oom needs 7.0)")
    server = await server_factory(redis=own_redis.url, api_token="tok")
    c = await connect(server.ws_url("/ws/"))
    clients.append(c)
    try:
        r.config_set("maxmemory-policy", "noeviction")
        r.config_set("maxmemory", 1)  # far below what it holds: every write without allow-oom is refused
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            r.set("filler", "x")
        await c.send(type="subscribe", room="fresh", sub="tab")

        def subscribed() -> dict[str, object] | None:
            return next((f for f in c.of_type("subscribed") if f["room"] == "fresh"), None)

        frame = await wait_until(subscribed, timeout=10, what="subscribed to a new room at maxmemory")
        assert frame["offset"] == 0 and isinstance(frame["epoch"], str) and frame["epoch"]
        await c.settles_on(1, 1, room="fresh")
        # What clients send is still not stored at maxmemory.
        r_pub = await AsyncHTTPClient().fetch(
            server.base_url + "/api/rooms/fresh/messages", method="POST", body='{"n": 1}',
            headers={"Authorization": "Bearer tok"}, raise_error=False, request_timeout=20,
        )
        assert r_pub.code == 503
    finally:
        r.config_set("maxmemory", 0)
        r.close()
