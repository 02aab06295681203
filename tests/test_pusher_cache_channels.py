"""Cache channels: a new subscriber gets the channel's last message at once, whoever published it
(the API, the backend helper, a native client), kept ``--cache-ttl`` seconds with history on or off;
or ``pusher:cache_miss`` when there is none. Judged by pusher-js 8."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
import redis
from tornado.httpclient import AsyncHTTPClient

from rrr import client as rrr_client
from rrr.backplane import keys
from support.cluster import RedisCluster
from support.pusher import PUSHER_OPTIONS
from support.pusher_js import PusherJs
from support.servers import ServerFactory

pytestmark = pytest.mark.gen_test(timeout=120)

Driver = Callable[..., Awaitable[PusherJs]]


@pytest.mark.parametrize("history_size", [100, 0])
async def test_a_new_subscriber_gets_the_last_message_at_once_with_history_on_or_off(
    server_factory: ServerFactory, pusher_js: Driver, redis_url: str, rclient: redis.Redis, history_size: int,
) -> None:
    room = f"cache-prices-{history_size}"
    server = await server_factory(api_token="tok", history_size=history_size, **PUSHER_OPTIONS)
    r = await AsyncHTTPClient().fetch(server.base_url + f"/api/rooms/{room}/messages?event=price", method="POST",
                                      body='{"eur":1}', headers={"Authorization": "Bearer tok"})
    assert r.code == 202
    await rrr_client.apublish(room, {"eur": 2}, redis_url=redis_url, event="price")
    js = await pusher_js(server.port)
    await js.connected("a")
    n = len(js.lines)
    await js.subscribed("a", room)
    got = await js.event("a", room, "price", after=n)
    assert got["data"] == {"eur": 2}
    assert js.of("a", "event", event="pusher:cache_miss") == []
    ttl = rclient.pttl(keys.cache(room))
    assert 1_790_000 < ttl <= 1_800_000  # --cache-ttl's default, 30 minutes


async def test_an_empty_cache_channel_sends_cache_miss_and_a_short_cache_ttl_expires(
    server_factory: ServerFactory, pusher_js: Driver,
) -> None:
    server = await server_factory(api_token="tok", cache_ttl=0.5, **PUSHER_OPTIONS)
    js = await pusher_js(server.port)
    await js.connected("a")
    await js.subscribed("a", "private-cache-x")
    await js.event("a", "private-cache-x", "pusher:cache_miss")
    await AsyncHTTPClient().fetch(server.base_url + "/api/rooms/cache-short/messages", method="POST", body="1",
                                  headers={"Authorization": "Bearer tok"})
    await asyncio.sleep(1.0)
    await js.connected("b")
    await js.subscribed("b", "cache-short")
    await js.event("b", "cache-short", "pusher:cache_miss")
    assert js.of("b", "event", event="message") == []


async def test_a_channel_that_is_not_a_cache_channel_keeps_nothing(
    server_factory: ServerFactory, pusher_js: Driver, rclient: redis.Redis,
) -> None:
    server = await server_factory(api_token="tok", **PUSHER_OPTIONS)
    await AsyncHTTPClient().fetch(server.base_url + "/api/rooms/prices/messages", method="POST", body="1",
                                  headers={"Authorization": "Bearer tok"})
    js = await pusher_js(server.port)
    await js.connected("a")
    await js.subscribed("a", "prices")
    await asyncio.sleep(0.5)
    assert [x["event"] for x in js.of("a", "event")] == ["pusher:subscription_succeeded"]
    assert not rclient.exists(keys.cache("prices"))


async def test_cache_channels_on_a_redis_cluster(
    server_factory: ServerFactory, pusher_js: Driver, redis_cluster: RedisCluster,
) -> None:
    server = await server_factory(redis=redis_cluster.url, api_token="tok", **PUSHER_OPTIONS)
    for room in ("cache-a", "cache-b", "presence-cache-c"):
        r = await AsyncHTTPClient().fetch(server.base_url + f"/api/rooms/{room}/messages?event=e", method="POST",
                                          body=f'"{room}"', headers={"Authorization": "Bearer tok"})
        assert r.code == 202
    await asyncio.to_thread(rrr_client.publish, "cache-b", "helper", redis_url=redis_cluster.url, event="e")
    js = await pusher_js(server.port)
    await js.connected("a")
    for room, last in (("cache-a", "cache-a"), ("cache-b", "helper")):
        n = len(js.lines)
        await js.subscribed("a", room)
        assert (await js.event("a", room, "e", after=n))["data"] == last
