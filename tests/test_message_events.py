"""A message may carry an event name (what Pusher clients hear it as): on ``publish``, through
``?event=`` on the API and ``event=`` on the backend helper; it travels through Redis and history
and reaches every subscriber's ``message`` frame as ``"event"``."""

from __future__ import annotations

import json

import pytest
from tornado.httpclient import AsyncHTTPClient

from rrr import client as rrr_client
from rrr import protocol
from support.clients import Client, connect, wait_until
from support.servers import ServerFactory

pytestmark = pytest.mark.gen_test(timeout=120)

KEY = {"Authorization": "Bearer tok"}


def test_a_payload_packs_its_event_in_front_of_its_data_and_unpacks_to_both() -> None:
    packed = protocol.pack('{"a":1}', "order.shipped")
    assert packed == '#{"e":"order.shipped"}{"a":1}'
    assert protocol.validate_payload(packed) == packed
    assert protocol.unpack(packed) == protocol.Payload('{"a":1}', "order.shipped")
    assert protocol.pack("[1]") == "[1]" and protocol.unpack("[1]") == protocol.Payload("[1]")


@pytest.mark.parametrize("bad", [
    '#{"e":"x"}', '#{"e":"x"}nope', '#{"e":7}1', '#{"e":"pusher:x"}1', '#{"z":1}1', '#[1]1', "#", '#{"e":"x"',
])
def test_a_malformed_payload_header_is_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        protocol.validate_payload(bad)


async def test_an_event_name_reaches_subscribers_and_history_from_every_publisher(
    server_factory: ServerFactory, redis_url: str, clients: list[Client],
) -> None:
    server = await server_factory(api_token="tok", client_publish=True)
    c = await connect(server.ws_url("/ws/"))
    clients.append(c)
    await c.send(type="subscribe", room="shop", sub="t")
    await c.reply("subscribed")
    await c.send(type="publish", room="shop", event="cart.updated", data={"n": 1})
    r = await AsyncHTTPClient().fetch(server.base_url + "/api/rooms/shop/messages?event=order.shipped",
                                      method="POST", body='{"n":2}', headers=KEY)
    assert r.code == 202
    await rrr_client.apublish("shop", {"n": 3}, redis_url=redis_url, event="stock.low")
    await rrr_client.apublish("shop", {"n": 4}, redis_url=redis_url)
    await wait_until(lambda: len(c.of_type("message")) == 4, what="four messages")
    got = [(f.get("event"), f["data"], f["offset"]) for f in c.of_type("message")]
    assert got == [("cart.updated", {"n": 1}, 1), ("order.shipped", {"n": 2}, 2), ("stock.low", {"n": 3}, 3),
                   (None, {"n": 4}, 4)]
    r = await AsyncHTTPClient().fetch(server.base_url + "/api/rooms/shop/messages?since=0")
    stored = json.loads(r.body)["messages"]
    assert stored == [
        {"offset": 1, "event": "cart.updated", "data": {"n": 1}},
        {"offset": 2, "event": "order.shipped", "data": {"n": 2}},
        {"offset": 3, "event": "stock.low", "data": {"n": 3}}, {"offset": 4, "data": {"n": 4}},
    ]
    # A replay carries the event too.
    d = await connect(server.ws_url("/ws/"))
    clients.append(d)
    epoch = c.of_type("message")[0]["epoch"]
    await d.send(type="subscribe", room="shop", sub="r", since={"offset": 0, "epoch": epoch})
    await wait_until(lambda: len(d.of_type("message")) == 4, what="the replay")
    assert [f.get("event") for f in d.of_type("message")] == ["cart.updated", "order.shipped", "stock.low", None]


async def test_an_event_name_is_carried_with_history_off_too(
    server_factory: ServerFactory, clients: list[Client],
) -> None:
    server = await server_factory(api_token="tok", history_size=0)
    c = await connect(server.ws_url("/ws/"))
    clients.append(c)
    await c.send(type="subscribe", room="live", sub="t")
    await c.reply("subscribed")
    await AsyncHTTPClient().fetch(server.base_url + "/api/rooms/live/messages?event=ping.me", method="POST",
                                  body='"hi"', headers=KEY)
    frame = await c.next("message", after=0)
    assert (frame["event"], frame["data"]) == ("ping.me", "hi") and "offset" not in frame


async def test_a_reserved_or_overlong_event_name_is_refused_and_nothing_is_sent(
    server_factory: ServerFactory, redis_url: str, clients: list[Client],
) -> None:
    server = await server_factory(api_token="tok", client_publish=True)
    c = await connect(server.ws_url("/ws/"))
    clients.append(c)
    await c.send(type="subscribe", room="shop", sub="t")
    await c.reply("subscribed")
    await c.send(type="publish", room="shop", event="pusher_internal:member_added", data=1)
    error = await c.reply("error")
    assert error["code"] == "bad_message" and "reserved" in error["reason"]
    for event in ("pusher:x", "e" * 201, ""):
        r = await AsyncHTTPClient().fetch(
            server.base_url + "/api/rooms/shop/messages?event=" + event, method="POST", body="1", headers=KEY,
            raise_error=False,
        )
        assert r.code == 400, event
        with pytest.raises(ValueError):
            rrr_client.publish("shop", 1, redis_url=redis_url, event=event)
    r = await AsyncHTTPClient().fetch(server.base_url + "/api/rooms/shop/messages?since=0")
    assert json.loads(r.body)["messages"] == []
    assert c.of_type("message") == []
