"""Room names are Pusher's channel names everywhere: 1 to 164 of ``[A-Za-z0-9_-=@,.;]``, on the
native socket, the count page, the API and in Redis, percent-decoded in URL paths."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest
import redis
from tornado.httpclient import AsyncHTTPClient

from rrr import client as rrr_client
from rrr.backplane import keys
from support.clients import Client, connect, wait_until
from support.servers import ServerFactory

pytestmark = pytest.mark.gen_test(timeout=120)

KEY = {"Authorization": "Bearer tok"}
WIDE = "orders=7@shop,eu.west;" + "x" * 142  # 164 characters: every new character, at the limit


async def fetch(url: str, **kw: Any) -> Any:
    return await AsyncHTTPClient().fetch(url, raise_error=False, **kw)


async def test_a_room_of_the_pusher_alphabet_at_164_characters_works_on_the_socket_the_api_and_redis(
    server_factory: ServerFactory, redis_url: str, rclient: redis.Redis, clients: list[Client],
) -> None:
    assert len(WIDE) == 164
    server = await server_factory(api_token="tok")
    c = await connect(server.ws_url("/ws/"))
    clients.append(c)
    await c.send(type="subscribe", room=WIDE, sub="t")
    frame = await c.reply("subscribed")
    assert frame["room"] == WIDE
    await c.settles_on(1, 1, room=WIDE)
    # The API, with the name percent-encoded as encodeURIComponent writes it, and as it is.
    for path in (quote(WIDE, safe=""), WIDE):
        r = await fetch(server.base_url + f"/api/rooms/{path}")
        assert r.code == 200, (path, r.body)
        assert json.loads(r.body)["room"] == WIDE and json.loads(r.body)["connections"] == 1
    r = await fetch(server.base_url + f"/api/rooms/{quote(WIDE, safe='')}/messages", method="POST",
                    body='{"n":1}', headers=KEY)
    assert r.code == 202, r.body
    await wait_until(lambda: [f["data"] for f in c.of_type("message")] == [{"n": 1}], what="the message")
    assert c.of_type("message")[0]["room"] == WIDE
    # The backend helper, and the room's keys in Redis under its own hash tag.
    assert rrr_client.publish(WIDE, {"n": 2}, redis_url=redis_url) == 2
    await wait_until(lambda: len(c.of_type("message")) == 2, what="the helper's message")
    assert rclient.exists(keys.history(WIDE)) and rclient.exists(keys.presence(WIDE))
    assert keys.history(WIDE).endswith("{" + WIDE + "}")
    # The count page renders for it too.
    page = await fetch(server.base_url + f"/count/{quote(WIDE, safe='')}/")
    assert page.code == 200 and WIDE.encode() in page.body


@pytest.mark.parametrize("name", ["x" * 165, "a:b", "a/b", "#server-to-user-1", "é"])
async def test_a_name_outside_the_grammar_is_refused_on_the_socket(
    server_factory: ServerFactory, clients: list[Client], name: str,
) -> None:
    server = await server_factory()
    c = await connect(server.ws_url("/ws/"))
    clients.append(c)
    await c.send(type="subscribe", room=name, sub="t")
    error = await c.reply("error")
    assert error["code"] == "bad_room" and "164" in error["reason"]


@pytest.mark.parametrize("path", ["x" * 165, "a%3Ab", "a%2Fb", "%23server-to-user-1", "%C3%A9", "a%ZZ", "%FF"])
async def test_a_path_that_decodes_outside_the_grammar_is_a_404_on_every_route(
    server_factory: ServerFactory, path: str,
) -> None:
    server = await server_factory(api_token="tok")
    for route in ("/api/rooms/{}", "/api/rooms/{}/members", "/api/rooms/{}/messages", "/count/{}/", "/ws/count/{}/"):
        r = await fetch(server.base_url + route.format(path), headers=KEY)
        assert r.code == 404, (route, path, r.code)
