"""``WS /ws/``: one socket, many rooms; a subscription is a tab."""

import json

import pytest
import redis
from tornado.httpclient import AsyncHTTPClient

from support.clients import Client, connect
from support.servers import ServerFactory

pytestmark = pytest.mark.gen_test(timeout=60)


async def test_tabs_count_subscriptions_and_connections_count_sockets(
    server_factory: ServerFactory, clients: list[Client]
) -> None:
    server = await server_factory()
    worker = await connect(server.ws_url("/ws/"))
    other = await connect(server.ws_url("/ws/"))
    clients += [worker, other]
    for tab in ("t1", "t2", "t3"):
        await worker.send(type="subscribe", room="abc", sub=tab)
    await worker.settles_on(1, 3)
    await other.send(type="subscribe", room="abc", sub="only")
    await other.settles_on(2, 4)
    await worker.settles_on(2, 4)
    await worker.send(type="unsubscribe", room="abc", sub="t2")
    await other.settles_on(2, 3)
    for tab in ("t1", "t3"):
        await worker.send(type="unsubscribe", room="abc", sub=tab)
    await other.settles_on(1, 1)


async def test_one_socket_carries_many_rooms(server_factory: ServerFactory, clients: list[Client]) -> None:
    server = await server_factory(publish_token="tok")
    c = await connect(server.ws_url("/ws/"))
    clients.append(c)
    for room in ("r1", "r2", "r3"):
        await c.send(type="subscribe", room=room, sub="tab")
    for room in ("r1", "r2", "r3"):
        await c.settles_on(1, 1, room=room)
    await AsyncHTTPClient().fetch(server.base_url + "/api/rooms/r2/messages", method="POST", body='"to r2"',
                                  headers={"Authorization": "Bearer tok"})
    msg = await c.next("message", after=0)
    assert msg == {"type": "message", "room": "r2", "offset": 1, "epoch": msg["epoch"], "data": "to r2"}


async def test_subscribing_twice_is_idempotent(server_factory: ServerFactory, clients: list[Client]) -> None:
    server = await server_factory()
    c = await connect(server.ws_url("/ws/"))
    clients.append(c)
    await c.send(type="subscribe", room="abc", sub="t1")
    await c.settles_on(1, 1)
    await c.send(type="subscribe", room="abc", sub="t1")
    await c.send(type="ping")
    await c.next("pong", after=0)
    await c.settles_on(1, 1)
    assert server.metric("rrr_subscriptions") == 1


async def test_every_subscribe_gets_the_current_count(server_factory: ServerFactory, clients: list[Client]) -> None:
    """A worker adding a second tab to a room it already follows still hears the count at once."""
    server = await server_factory()
    c = await connect(server.ws_url("/ws/"))
    clients.append(c)
    await c.send(type="subscribe", room="abc", sub="t1")
    await c.settles_on(1, 1)
    n = len(c.frames)
    await c.send(type="subscribe", room="abc", sub="t2")
    frame = await c.next("connection_message", after=n)
    assert (frame["connections"], frame["tabs"]) == (1, 2)


async def test_closing_the_socket_drops_all_its_tabs(
    server_factory: ServerFactory, clients: list[Client], rclient: redis.Redis
) -> None:
    server = await server_factory()
    a = await connect(server.ws_url("/ws/"))
    b = await connect(server.ws_url("/ws/"))
    clients += [a, b]
    for tab in ("t1", "t2"):
        await a.send(type="subscribe", room="abc", sub=tab)
    await b.send(type="subscribe", room="abc", sub="t")
    await b.settles_on(2, 3)
    a.close()
    await b.settles_on(1, 1)
    b.close()

    async def gone() -> bool:
        resp = await AsyncHTTPClient().fetch(server.base_url + "/api/rooms/abc")
        return json.loads(resp.body)["tabs"] == 0 and not rclient.keys("rrr:presence:*")

    from support.clients import wait_until
    await wait_until(gone, what="room emptied in Redis")


async def test_client_publish_is_off_by_default(server_factory: ServerFactory, clients: list[Client]) -> None:
    server = await server_factory()
    c = await connect(server.ws_url("/ws/"))
    clients.append(c)
    await c.send(type="publish", room="abc", data={"x": 1})
    assert (await c.next("error", after=0))["code"] == "publish_disabled"


async def test_client_publish_when_on_reaches_every_subscriber(
    server_factory: ServerFactory, clients: list[Client]
) -> None:
    server = await server_factory(client_publish=True)
    a = await connect(server.ws_url("/ws/"))
    b = await connect(server.ws_url("/ws/count/abc/"))
    clients += [a, b]
    await a.send(type="subscribe", room="abc", sub="t")
    await a.settles_on(2)
    await a.send(type="publish", room="abc", data={"hello": ["wörld", 1.5, None]})
    for c in (a, b):
        assert (await c.next("message", after=0))["data"] == {"hello": ["wörld", 1.5, None]}


async def test_client_publish_is_rate_limited(server_factory: ServerFactory, clients: list[Client]) -> None:
    server = await server_factory(client_publish=True, publish_rate=1.0)
    c = await connect(server.ws_url("/ws/"))
    clients.append(c)
    await c.send(type="subscribe", room="abc", sub="t")  # publishing needs a subscription
    for i in range(5):
        await c.send(type="publish", room="abc", data=i)
    err = await c.next("error", after=0)
    assert err["code"] == "rate_limited"
    await c.send(type="ping")
    await c.next("pong", after=0)


async def test_hello_records_the_transport(server_factory: ServerFactory, clients: list[Client]) -> None:
    server = await server_factory()
    c = await connect(server.ws_url("/ws/"))
    clients.append(c)
    await c.send(type="hello", transport="sharedworker")
    await c.send(type="ping")
    await c.next("pong", after=0)
    assert server.metric("rrr_sockets_by_transport", {"transport": "sharedworker"}) == 1
    c.close()
    from support.clients import wait_until
    await wait_until(lambda: server.metric("rrr_sockets_by_transport", {"transport": "sharedworker"}) == 0)


async def test_a_room_left_and_joined_again_at_once_is_still_followed(
    server_factory: ServerFactory, clients: list[Client]
) -> None:
    """A reload: the last tab leaves and a new one joins before the subscriber's sync runs. The room
    was never unsubscribed, so it must still count as subscribed (before the fix nothing ever
    confirmed it again: no count, no ``subscribed``, no messages)."""
    server = await server_factory()
    c = await connect(server.ws_url("/ws/"))
    clients.append(c)
    await c.send(type="subscribe", room="reload", sub="a")
    await c.next("subscribed", after=0)
    [sock] = list(server.hub.connections)
    session = sock.session  # type: ignore[attr-defined]
    n = len(c.frames)
    session.unsubscribe("reload", "a")  # both in one turn of the loop, as two frames read together are
    session.subscribe("reload", "b")
    hello = await c.next("subscribed", after=n)
    assert hello["sub"] == "b"
    await c.settles_on(1, 1, room="reload")
