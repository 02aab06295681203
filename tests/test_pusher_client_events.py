"""Pusher client events (``client-*``), judged by pusher-js 8: only on private and presence
channels, never back to the sender, ``user_id`` on presence channels, at most 10 a second per socket
(over it ``pusher:error`` 4301, the socket stays), never stored; rrr's own whispers and Pusher client
events are one kind, so each side hears the other."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

import pytest
from tornado.httpclient import AsyncHTTPClient

from rrr.client import token
from support.clients import Client, connect, wait_until
from support.pusher import PUSHER_OPTIONS
from support.pusher_js import PusherJs
from support.servers import ServerFactory

pytestmark = pytest.mark.gen_test(timeout=120)

Driver = Callable[..., Awaitable[PusherJs]]
SECRET = "s" * 32
ADA = {"user_id": "ada", "user_info": {"name": "Ada"}}
BOB = {"user_id": 42, "user_info": {"name": "Bob"}}  # an integer id, as Laravel sends


async def test_a_client_event_reaches_the_others_not_its_sender_with_the_user_id_on_presence(
    server_factory: ServerFactory, pusher_js: Driver, clients: list[Client],
) -> None:
    server = await server_factory(token_secret=SECRET, api_token="tok", **PUSHER_OPTIONS)
    js = await pusher_js(server.port)
    await js.connected("ada", user=ADA)
    await js.connected("bob", user=BOB)
    await js.subscribed("ada", "presence-doc")
    await js.subscribed("bob", "presence-doc")
    native = await connect(server.ws_url("/ws/"))
    clients.append(native)
    await native.send(type="auth", token=token("cy", rooms=["presence-doc"], secret=SECRET))
    await native.send(type="subscribe", room="presence-doc", sub="t")
    await native.next("subscribed", after=0)
    await wait_until(lambda: server.hub.local_counts("presence-doc") == (3, 3), what="three in the room")

    n = len(js.lines)
    js.send(op="trigger", id="ada", channel="presence-doc", event="client-typing", data={"on": True})
    got = await js.event("bob", "presence-doc", "client-typing", after=n)
    assert got["data"] == {"on": True}
    assert js.of("bob", "frame", event="client-typing")[0]["user_id"] == "ada"
    whisper = await native.next("whisper", after=0)
    assert whisper == {"type": "whisper", "room": "presence-doc", "event": "client-typing", "data": {"on": True},
                       "user": "ada"}
    # The native whisper reaches both Pusher clients as the event, from cy.
    await native.send(type="whisper", room="presence-doc", event="client-cursor", data=[3, 4])
    for who in ("ada", "bob"):
        heard = await js.event(who, "presence-doc", "client-cursor", after=n)
        assert heard["data"] == [3, 4] and js.of(who, "frame", event="client-cursor")[0]["user_id"] == "cy"
    assert js.of("ada", "event", event="client-typing") == []  # never back to its sender
    assert native.of_type("whisper") == [whisper]
    r = await AsyncHTTPClient().fetch(server.base_url + "/api/rooms/presence-doc/messages?since=0",
                                      headers={"Authorization": "Bearer tok"})
    assert json.loads(r.body)["messages"] == []  # never stored


async def test_a_client_event_on_a_public_channel_is_refused_and_the_socket_stays(
    server_factory: ServerFactory, pusher_js: Driver,
) -> None:
    server = await server_factory(**PUSHER_OPTIONS)
    js = await pusher_js(server.port)
    await js.connected("a")
    await js.connected("b")
    await js.subscribed("a", "lobby")
    await js.subscribed("b", "lobby")
    js.send(op="trigger", id="a", channel="lobby", event="client-hi", data={})
    error = await js.wait(lambda x: x.get("id") == "a" and x["kind"] == "error", "a pusher:error")
    assert "only allowed on private and presence channels" in error["error"]["message"]
    assert js.of("b", "event", event="client-hi") == []
    await js.subscribed("a", "lobby-2")  # still connected


async def test_an_eleventh_client_event_in_a_second_gets_4301_and_the_socket_stays(
    server_factory: ServerFactory, pusher_js: Driver,
) -> None:
    server = await server_factory(**PUSHER_OPTIONS)
    js = await pusher_js(server.port)
    await js.connected("a")
    await js.connected("b")
    await js.subscribed("a", "private-x")
    await js.subscribed("b", "private-x")
    for i in range(11):
        js.send(op="trigger", id="a", channel="private-x", event="client-n", data={"i": i})
    error = await js.wait(lambda x: x.get("id") == "a" and x["kind"] == "error", "the 4301")
    assert error["error"]["code"] == 4301
    await wait_until(lambda: len(js.of("b", "event", event="client-n")) == 10, what="ten events")
    assert [x["data"]["i"] for x in js.of("b", "event", event="client-n")] == list(range(10))
    assert js.of("a", "state", current="disconnected") == []
    await js.subscribed("a", "private-y")


async def test_client_events_are_refused_with_pusher_client_events_off(
    server_factory: ServerFactory, pusher_js: Driver,
) -> None:
    server = await server_factory(pusher_client_events=False, **PUSHER_OPTIONS)
    js = await pusher_js(server.port)
    await js.connected("a")
    await js.subscribed("a", "private-x")
    js.send(op="trigger", id="a", channel="private-x", event="client-n", data={})
    error = await js.wait(lambda x: x.get("id") == "a" and x["kind"] == "error", "a pusher:error")
    assert "disabled" in error["error"]["message"]
