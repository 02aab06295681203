"""A dead, restarted or stalled Redis: the process stays up, tells the truth, and recovers by itself."""

import asyncio
import datetime
import json
import os
import signal
from typing import Any

import pytest
import redis
from tornado.httpclient import AsyncHTTPClient, HTTPResponse

from rrr.backplane.clients import make_redis
from rrr.backplane.cluster_presence import ClusterPresence
from rrr.backplane.embedded import EmbeddedRedis
from rrr.backplane.keys import history
from rrr.backplane.presence import ClassicPresence
from rrr.errors import BackplaneError
from rrr.metrics import Metrics
from support.clients import Client, connect, wait_until
from support.cluster import RedisCluster
from support.redis import SlowReplyProxy, TamperingProxy
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


# -- a reply nobody can read cuts no other call ------------------------------------------------


def port_of(url: str) -> int:
    return int(url.split(":")[2].split("/")[0])


#: An XRANGE reply whose one entry is no entry: redis-py's reply callback raises ``TypeError``.
NOT_AN_ENTRY = b"*1\r\n:1\r\n"


async def test_an_unreadable_reply_cuts_no_call_in_flight_and_its_connection_is_not_reused(
    redis_server: EmbeddedRedis, rclient: redis.Redis,
) -> None:
    """A reply the parser chokes on renews the pool's connections, but not under a call another
    task is still waiting on: that call gets its real answer, and its connection is renewed once
    released. Cutting it (the reset did) failed that call or, redis-py retrying it, ran it twice
    (the INCR here; a publish in the 30-minute soak, #27)."""
    proxy = await TamperingProxy(port_of(redis_server.url)).start()
    presence = ClassicPresence(proxy.url, Metrics(), make_redis(proxy.url, 10, 1, retries=0), timeout=10)
    try:
        proxy.hold(b"in-flight")
        waiting = asyncio.ensure_future(presence.call_command("incr", "in-flight"))
        await wait_until(proxy.held.is_set, what="the first call's reply, held")

        proxy.garble(b"choking", NOT_AN_ENTRY)
        with pytest.raises(BackplaneError, match="unreadable reply"):
            await presence.call_command("xrange", "choking")
        await wait_until(lambda: proxy.closed_by_app >= 1, what="the choked connection closed")

        proxy.release()
        assert await waiting == 1
        await wait_until(lambda: proxy.closed_by_app == 2, what="the waiting call's connection renewed once free")
        assert await presence.call_command("get", "in-flight") == b"1"
    finally:
        await presence.close()
        await proxy.close()


async def test_on_a_cluster_an_unreadable_reply_cuts_no_call_in_flight(redis_cluster: RedisCluster) -> None:
    """The same on a cluster: an XREAD waiting in Redis on one connection, a reply the client cannot
    read on another (a score redis-py's reply callback cannot cast: read as a date; a relay cannot
    stand in for one node of a cluster, whose clients learn the nodes' own addresses). The XREAD
    still gets what is added after."""
    redis_cluster.wait_healthy()
    redis_cluster.flush()
    presence = ClusterPresence(redis_cluster.url, Metrics(), make_redis(redis_cluster.url, 10, 1, retries=0),
                               timeout=10)
    stream, scores = "rrr:{same}:stream", "rrr:{same}:scores"
    r = redis.Redis(port=redis_cluster.master_of(stream))  # both keys' master
    try:
        r.zadd(scores, {"a": 1.5})
        waiting = asyncio.ensure_future(presence.call_command("xread", {stream: "$"}, block=8000))
        await wait_until(lambda: r.info("clients")["blocked_clients"] == 1, what="the XREAD waiting in Redis")
        with pytest.raises(BackplaneError, match="unreadable reply"):
            await presence.call_command("zrangebyscore", scores, "-inf", "+inf", withscores=True,
                                        score_cast_func=datetime.date.fromisoformat)
        r.xadd(stream, {"f": "added after the reset"})
        reply = await waiting  # [[stream, [(id, fields)]]], or [] when the 8 s block ran out
        assert [fields for _, fields in (reply[0][1] if reply else [])] == [{b"f": b"added after the reset"}], reply
    finally:
        r.close()
        await presence.close()


# -- a publish says 503 only when nothing was sent ----------------------------------------------


async def post(server: Any, room: str, body: str) -> tuple[int, dict[str, Any]]:
    r = await AsyncHTTPClient().fetch(
        server.base_url + f"/api/rooms/{room}/messages", method="POST", body=body,
        headers={"Authorization": "Bearer tok"}, raise_error=False, request_timeout=30,
    )
    return r.code, json.loads(r.body)


async def test_a_publish_whose_connection_broke_after_it_was_written_is_504_outcome_unknown(
    server_factory: ServerFactory, redis_server: EmbeddedRedis, rclient: redis.Redis, clients: list[Client],
) -> None:
    """The relay passes the publish on, Redis runs it, and the connection is cut before the reply
    (each attempt's: redis-py retries once). The message was delivered: "not delivered" (503) would
    be false, and a publisher that believed it would send it twice."""
    proxy = await SlowReplyProxy(port_of(redis_server.url)).start()
    try:
        server = await server_factory(redis=proxy.url, api_token="tok", redis_timeout=5.0)
        c = await connect(server.ws_url("/ws/"))
        clients.append(c)
        await c.send(type="subscribe", room="cut", sub="tab")
        await c.next("subscribed")
        assert (await post(server, "warm-up", '{"n": 0}'))[0] == 202  # the script is loaded: the next one runs
        proxy.cut_reply_to(history("cut").encode(), every=True)
        n = len(c.frames)
        code, body = await post(server, "cut", '{"n": 1}')
        assert (code, body.get("outcome")) == (504, "unknown"), (code, body)
        assert "may" in body["error"]
        message = await c.next("message", after=n)  # it was delivered
        assert (message["room"], message["data"]) == ("cut", {"n": 1})
        assert rclient.xlen(history("cut")) == 1
    finally:
        await proxy.close()


async def test_a_publish_cut_after_it_was_written_then_refused_on_reconnect_is_504(
    server_factory: ServerFactory, own_redis: EmbeddedRedis, clients: list[Client],
) -> None:
    """The first attempt is written and its connection cut, and redis-py's retry finds nobody
    listening any more: the last error is a refused connect, yet the first attempt ran."""
    proxy = await SlowReplyProxy(port_of(own_redis.url)).start()
    try:
        server = await server_factory(redis=proxy.url, api_token="tok", redis_timeout=5.0)
        r = redis.Redis.from_url(own_redis.url)
        assert (await post(server, "warm-up", '{"n": 0}'))[0] == 202  # the script is loaded: the next one runs
        proxy.cut_reply_to(history("gone").encode(), refuse_after=True)
        code, body = await post(server, "gone", '{"n": 1}')
        assert proxy.held.is_set()
        assert (code, body.get("outcome")) == (504, "unknown"), (code, body)
        assert r.xlen(history("gone")) == 1  # it ran
        r.close()
    finally:
        await proxy.close()


async def test_a_publish_to_a_redis_nobody_listens_on_is_503_not_delivered(
    server_factory: ServerFactory, redis_server: EmbeddedRedis,
) -> None:
    """Every connection refused: nothing was sent, so "not delivered" is the truth."""
    proxy = await SlowReplyProxy(port_of(redis_server.url)).start()
    try:
        server = await server_factory(redis=proxy.url, api_token="tok", redis_timeout=5.0)
        assert (await post(server, "warm", '{"n": 0}'))[0] == 202
    finally:
        await proxy.close()  # every connection cut, and nobody listens on that port any more
    code, body = await post(server, "refused", '{"n": 1}')
    assert code == 503 and "outcome" not in body and "not delivered" in body["error"], (code, body)
