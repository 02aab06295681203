"""A publish is stored and sent once even when its reply is lost: the connection breaks after Redis
ran the script (a Cluster failover, a reset, a proxy), redis-py retries it on the new connection,
and without the publish's id the retry stored the message again at the next offset, so every
subscriber got it twice (found by the soak, bench/soak.py, around failovers)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis
from tornado.httpclient import AsyncHTTPClient

from rrr import client as rrr_client
from rrr.backplane import keys
from support.clients import Client, connect, wait_until
from support.redis import SlowReplyProxy
from support.servers import ServerFactory


def redis_port(redis_server: Any) -> int:
    return int(redis_server.url.split(":")[2].split("/")[0])


@pytest.mark.gen_test(timeout=60)
async def test_the_helpers_publish_whose_reply_was_cut_off_is_stored_once(
    redis_server: Any, redis_url: str, rclient: redis.Redis,
) -> None:
    proxy = await SlowReplyProxy(redis_port(redis_server)).start()
    try:
        await rrr_client.apublish("warm-up", 0, redis_url=proxy.url)  # the script is loaded: the next run runs
        proxy.cut_reply_to(b"cut-once")
        offset = await rrr_client.apublish("cut-once", {"n": 1}, redis_url=proxy.url)
        assert proxy.held.is_set(), "the reply was cut off"
        assert offset == 1
        assert rclient.xlen(keys.history("cut-once")) == 1
        assert await rrr_client.apublish("cut-once", {"n": 2}, redis_url=proxy.url) == 2
    finally:
        await proxy.close()


@pytest.mark.gen_test(timeout=60)
async def test_an_api_publish_whose_reply_was_cut_off_reaches_a_socket_once(
    server_factory: ServerFactory, redis_server: Any, redis_url: str, rclient: redis.Redis, clients: list[Client],
) -> None:
    proxy = await SlowReplyProxy(redis_port(redis_server)).start()
    try:
        server = await server_factory(redis=proxy.url, api_token="tok")
        c = await connect(server.ws_url("/ws/"))
        clients.append(c)
        await c.send(type="subscribe", room="cut-api", sub="s")
        await c.reply("subscribed")
        proxy.cut_reply_to(b"cut-api")
        for n in (1, 2, 3):
            r = await AsyncHTTPClient().fetch(
                server.base_url + "/api/rooms/cut-api/messages", method="POST", body=json.dumps(n),
                headers={"Authorization": "Bearer tok"},
            )
            assert r.code == 202 and json.loads(r.body)["offset"] == n
        assert proxy.held.is_set(), "the reply was cut off"
        # A copy of the first would come before the last: once the last is in, the list is whole.
        await wait_until(lambda: any(m["data"] == 3 for m in c.of_type("message")), what="the last message")
        assert [(m["data"], m["offset"]) for m in c.of_type("message")] == [(1, 1), (2, 2), (3, 3)]
        assert rclient.xlen(keys.history("cut-api")) == 3
    finally:
        await proxy.close()
