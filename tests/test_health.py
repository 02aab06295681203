"""Readiness that tells the truth: /healthz is 200 only when this process can count and relay.

Each check is named in the body. The promise tested throughout: a message published after
/healthz turned 200 (again) is delivered.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis
from tornado.httpclient import AsyncHTTPClient, HTTPResponse
from tornado.simple_httpclient import SimpleAsyncHTTPClient

from rrr.backplane import keys
from rrr.backplane.embedded import EmbeddedRedis
from support.clients import Client, connect, wait_until
from support.redis import LyingRedis
from support.servers import ServerFactory

pytestmark = pytest.mark.gen_test(timeout=180)

CHECKS = {"redis", "lease", "presence_write", "subscriber", "memory"}


async def get(url: str) -> HTTPResponse:
    return await AsyncHTTPClient().fetch(url, raise_error=False, request_timeout=20)


async def health(base_url: str) -> tuple[int, dict[str, Any]]:
    resp = await get(base_url + "/healthz")
    return resp.code, json.loads(resp.body)


async def delivered(c: Client, marker: str, timeout: float = 10.0) -> None:
    await wait_until(lambda: any(m["data"] == marker for m in c.of_type("message")), timeout, what=marker)


async def test_healthz_names_each_check(server_factory: ServerFactory) -> None:
    server = await server_factory()
    code, body = await health(server.base_url)
    assert code == 200
    assert body["status"] == "ok" and body["redis"] is True
    assert body["checks"] == {name: True for name in CHECKS}
    assert server.metric("rrr_health_check", {"check": "subscriber"}) == 1


async def test_after_a_redis_restart_healthy_means_delivering(
    server_factory: ServerFactory, own_redis: EmbeddedRedis, clients: list[Client],
) -> None:
    server = await server_factory(redis=own_redis.url)
    c = await connect(server.ws_url("/ws/count/phoenix/"))
    clients.append(c)
    await c.settles_on(1)

    own_redis.kill()
    code, body = await health(server.base_url)
    assert code == 503 and body["checks"]["redis"] is False and body["checks"]["subscriber"] is False
    own_redis.start()  # empty: every key is gone

    # The first moment the process says it is healthy, a message published reaches the socket.
    await wait_until(lambda: _healthy(server.base_url), timeout=30, what="healthy again")
    r = redis.Redis.from_url(own_redis.url)
    try:
        assert r.publish("rrr:room:phoenix", '"first"') == 1
        await delivered(c, "first")
    finally:
        r.close()


async def test_a_count_that_shows_the_process_means_its_relay_works(
    lying_redis: Callable[[], Awaitable[LyingRedis]], server_factory: ServerFactory, redis_url: str,
    clients: list[Client],
) -> None:
    """Presence is written only once the room's channels are subscribed: whoever sees the
    count sees a process that will deliver. Here every SUBSCRIBE takes a second to reach Redis."""
    proxy = await lying_redis()
    server = await server_factory(redis=proxy.url)
    proxy.subscribe_delay = 1.0
    c = await connect(server.ws_url("/ws/count/slowsub/"))
    clients.append(c)
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        await wait_until(lambda: r.hlen(keys.presence("slowsub")) > 0, timeout=30, what="presence written")
        assert r.publish(keys.room_channel("slowsub"), '"counted"') == 1
        await delivered(c, "counted")
        await c.settles_on(1)
    finally:
        r.close()


async def test_pubsub_cut_again_and_again_healthy_always_means_delivering(
    server_factory: ServerFactory, redis_url: str, clients: list[Client],
) -> None:
    server = await server_factory(backoff_cap=0.5)
    c = await connect(server.ws_url("/ws/count/cut/"))
    clients.append(c)
    await c.settles_on(1)
    r = redis.Redis.from_url(redis_url)
    try:
        for i in range(8):
            r.client_kill_filter(_type="pubsub")
            await wait_until(lambda: _healthy(server.base_url), timeout=30, what=f"healthy after cut {i}")
            assert r.publish("rrr:room:cut", json.dumps(f"after cut {i}")) == 1
            await delivered(c, f"after cut {i}")
    finally:
        r.close()
    assert server.metric("rrr_redis_reconnects_total") >= 8


async def test_redis_at_maxmemory_is_reported_and_presence_keeps_working(
    server_factory: ServerFactory, own_redis: EmbeddedRedis, clients: list[Client],
) -> None:
    r = redis.Redis.from_url(own_redis.url)
    version = r.info("server")["redis_version"]
    if int(version.split(".")[0]) < 7:
        pytest.skip(f"redis-server {version} takes no script flags (allow-oom needs 7.0)")
    ttl = 2.0
    server = await server_factory(redis=own_redis.url, ttl=ttl)
    first = await connect(server.ws_url("/ws/count/full/"))
    clients.append(first)
    await first.settles_on(1)
    try:
        r.config_set("maxmemory", r.info("memory")["used_memory"] + (1 << 20))
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            for i in range(100_000):
                r.set(f"filler:{i}", "x" * 1024)
        # Well below what it holds: every write Redis does not allow at maxmemory is refused.
        r.config_set("maxmemory", r.info("memory")["used_memory"] // 2)
        code, body = await health(server.base_url)
        assert code == 503 and body["checks"]["memory"] is False
        assert server.metric("rrr_redis_oom") == 1
        # Joins, leaves and renewals still work while Redis refuses other writes.
        second = await connect(server.ws_url("/ws/count/full/"))
        clients.append(second)
        await first.settles_on(2)
        await asyncio.sleep(2 * ttl)  # several renewals, each at maxmemory
        second.close()
        await first.settles_on(1)
        assert server.metric("rrr_task_errors_total", {"task": "lease"}) == 0
    finally:
        r.config_set("maxmemory", 0)
        r.close()
    await wait_until(lambda: _healthy(server.base_url), what="healthy with room to write")
    assert server.metric("rrr_redis_oom") == 0


async def test_a_get_flood_cannot_starve_the_lease_or_publishes(
    server_factory: ServerFactory, clients: list[Client],
) -> None:
    """A small pool under 300 concurrent reads: callers wait their turn instead of failing."""
    # api_rate 0: this is about the Redis pool, not the per-address rate limit (tests/test_caps.py).
    server = await server_factory(redis_pool_size=4, publish_token="secret", ttl=3.0, api_rate=0)
    c = await connect(server.ws_url("/ws/count/flood/"))
    clients.append(c)
    await c.settles_on(1)
    flood = SimpleAsyncHTTPClient(force_instance=True, max_clients=300)
    try:
        reads = [
            flood.fetch(server.base_url + "/api/rooms/flood", raise_error=False, request_timeout=60)
            for _ in range(300)
        ]
        publish = flood.fetch(
            server.base_url + "/api/rooms/flood/messages", method="POST", body='"through"',
            headers={"Authorization": "Bearer secret"}, raise_error=False, request_timeout=60,
        )
        answers = await asyncio.gather(*reads, publish)
    finally:
        flood.close()
    codes = sorted({a.code for a in answers[:-1]})
    assert codes == [200], f"reads answered {codes}"
    assert answers[-1].code == 202
    await delivered(c, "through")
    assert server.metric("rrr_task_errors_total", {"task": "lease"}) == 0
    assert server.service.presence.lease_fresh()


async def test_a_stalled_redis_fails_health_and_it_returns(
    server_factory: ServerFactory, own_redis: EmbeddedRedis, clients: list[Client],
) -> None:
    server = await server_factory(redis=own_redis.url, redis_timeout=0.5)
    c = await connect(server.ws_url("/ws/count/stall/"))
    clients.append(c)
    await c.settles_on(1)
    assert own_redis.proc is not None
    os.kill(own_redis.proc.pid, signal.SIGSTOP)
    try:
        code, body = await health(server.base_url)
        assert code == 503 and body["checks"]["redis"] is False
    finally:
        os.kill(own_redis.proc.pid, signal.SIGCONT)
    await wait_until(lambda: _healthy(server.base_url), timeout=30, what="healthy after SIGCONT")


async def _healthy(base_url: str) -> bool:
    code, _ = await health(base_url)
    return code == 200


async def test_a_starved_process_does_not_take_its_own_stall_for_a_silent_redis(
    server_factory: ServerFactory, clients: list[Client]
) -> None:
    """A process that could not run for longer than the pub/sub silence limit (a CPU-starved box)
    must not drop a healthy connection and resubscribe every room (the 100,000-socket run did, 15
    times): its own stall says nothing about Redis."""
    server = await server_factory(pubsub_keepalive=0.3)  # silent after 0.9 s
    c = await connect(server.ws_url("/ws/"))
    clients.append(c)
    await c.send(type="subscribe", room="starved", sub="a")
    await c.next("subscribed", after=0)
    for _ in range(3):
        time.sleep(1.5)  # the whole event loop stalls, as under starvation
        await asyncio.sleep(0.5)
    assert server.metric("rrr_redis_reconnects_total") == 0
