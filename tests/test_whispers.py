"""Whispers: ephemeral events from a client to the other subscribers of a private or presence room
(typing indicators, cursors), on every process, never stored, never back to the sender, at most 10 a
second per socket; the native twin of Pusher's client events."""

from __future__ import annotations

import json
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient

from rrr.client import token
from support.clients import Client, connect, wait_until
from support.servers import Server, ServerFactory

pytestmark = pytest.mark.gen_test(timeout=120)

SECRET = "s" * 32


async def member(server: Server, user: str, room: str, clients: list[Client]) -> Client:
    c = await connect(server.ws_url("/ws/"))
    clients.append(c)
    await c.send(type="auth", token=token(user, rooms=["presence-*", "private-*"], secret=SECRET, info={"n": user}))
    await c.next("authenticated", after=0)
    await c.send(type="subscribe", room=room, sub="t")
    await c.next("subscribed", after=0)
    return c


def whispers(c: Client) -> list[dict[str, Any]]:
    return c.of_type("whisper")


async def test_a_whisper_reaches_the_others_on_every_process_with_its_user_and_is_not_stored(
    server_factory: ServerFactory, clients: list[Client],
) -> None:
    one = await server_factory(token_secret=SECRET, api_token="tok")
    two = await server_factory(token_secret=SECRET, api_token="tok")
    ada = await member(one, "ada", "presence-doc", clients)
    bob = await member(one, "bob", "presence-doc", clients)
    cy = await member(two, "cy", "presence-doc", clients)
    await ada.send(type="whisper", room="presence-doc", event="client-typing", data={"on": True})
    expected = {"type": "whisper", "room": "presence-doc", "event": "client-typing", "data": {"on": True},
                "user": "ada"}
    await wait_until(lambda: whispers(bob) == [expected] and whispers(cy) == [expected], what="bob and cy hear it")
    # Not to its sender; not stored: the room's history has nothing, a newcomer replays nothing.
    await bob.send(type="ping")
    await ada.send(type="ping")
    await wait_until(lambda: ada.of_type("pong"), what="ada's pong")
    assert whispers(ada) == []
    r = await AsyncHTTPClient().fetch(one.base_url + "/api/rooms/presence-doc/messages?since=0",
                                      headers={"Authorization": "Bearer tok"})
    assert json.loads(r.body)["messages"] == [] and json.loads(r.body)["offset"] == 0
    assert ada.of_type("message") == bob.of_type("message") == []


async def test_whispers_only_go_to_private_and_presence_rooms_the_socket_is_in(
    server_factory: ServerFactory, clients: list[Client],
) -> None:
    server = await server_factory(token_secret=SECRET)
    ada = await member(server, "ada", "private-x", clients)
    await ada.send(type="subscribe", room="lobby", sub="t")
    await ada.send(type="whisper", room="lobby", event="e", data=1)
    await ada.send(type="whisper", room="private-y", event="e", data=1)
    await wait_until(lambda: len(ada.of_type("error")) == 2, what="two refusals")
    refusals = [(e["code"], e["room"]) for e in ada.of_type("error")]
    assert refusals == [("forbidden", "lobby"), ("not_subscribed", "private-y")]


async def test_an_eleventh_whisper_in_a_second_is_refused_and_the_socket_stays(
    server_factory: ServerFactory, clients: list[Client],
) -> None:
    server = await server_factory(token_secret=SECRET)
    ada = await member(server, "ada", "private-x", clients)
    bob = await member(server, "bob", "private-x", clients)
    for i in range(11):
        await ada.send(type="whisper", room="private-x", event="cursor", data=i)
    error = await ada.next("error", after=0)
    assert error["code"] == "rate_limited" and error["room"] == "private-x"
    await wait_until(lambda: len(whispers(bob)) == 10, what="ten whispers")
    assert [w["data"] for w in whispers(bob)] == list(range(10))
    assert not ada.closed.is_set()


async def test_whispers_are_off_with_pusher_client_events_off(
    server_factory: ServerFactory, clients: list[Client],
) -> None:
    server = await server_factory(token_secret=SECRET, pusher_client_events=False)
    ada = await member(server, "ada", "private-x", clients)
    await ada.send(type="whisper", room="private-x", event="cursor", data=1)
    error = await ada.next("error", after=0)
    assert error["code"] == "forbidden" and "--pusher-client-events" in error["reason"]
