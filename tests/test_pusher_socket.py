"""The Pusher WebSocket endpoint ``/app/<key>``, judged by pusher-js 8 (from npm, unchanged) in Node:
connection, public/private/presence channels, member events once per user, errors and close codes."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable

import pytest
import tornado.netutil
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from support.app_backend import AppBackend, Session
from support.clients import Client, connect, wait_until
from support.processes import ROOT
from support.pusher import PUSHER_KEY, PUSHER_OPTIONS
from support.pusher_js import PusherJs
from support.servers import Server, ServerFactory

pytestmark = pytest.mark.gen_test(timeout=120)

Driver = Callable[..., Awaitable[PusherJs]]


async def test_pusher_js_connects_and_gets_a_unique_socket_id(server_factory: ServerFactory, pusher_js: Driver) -> None:
    server = await server_factory(**PUSHER_OPTIONS)
    js = await pusher_js(server.port)
    a = await js.connected("a")
    b = await js.connected("b")
    assert a != b
    for sid in (a, b):
        left, _, right = sid.partition(".")
        assert left.isdigit() and right.isdigit()
    await wait_until(lambda: len(server.hub.connections) == 2, what="two sockets on the hub")


async def test_public_channel_events_from_a_native_publish_reach_pusher_js_as_events(
    server_factory: ServerFactory, pusher_js: Driver, clients: list[Client],
) -> None:
    server = await server_factory(api_token="tok", client_publish=True, **PUSHER_OPTIONS)
    js = await pusher_js(server.port)
    await js.connected("a")
    await js.subscribed("a", "orders")
    native = await connect(server.ws_url("/ws/"))
    clients.append(native)
    await native.send(type="subscribe", room="orders", sub="t")
    await native.reply("subscribed")
    await native.settles_on(2, 2, room="orders")
    await native.send(type="publish", room="orders", event="order.shipped", data={"id": 7})
    await native.send(type="publish", room="orders", data=[1, "two"])
    got = await js.event("a", "orders", "order.shipped")
    assert got["data"] == {"id": 7}
    plain = await js.event("a", "orders", "message")
    assert plain["data"] == [1, "two"]


async def test_private_channels_need_a_signature_for_this_socket(
    server_factory: ServerFactory, pusher_js: Driver,
) -> None:
    server = await server_factory(**PUSHER_OPTIONS)
    js = await pusher_js(server.port)
    await js.connected("good")
    await js.subscribed("good", "private-ledger")
    await js.connected("forger", authSecret="not-the-secret")
    js.send(op="subscribe", id="forger", channel="private-ledger")
    refused = await js.event("forger", "private-ledger", "pusher:subscription_error")
    assert refused["data"]["type"] == "AuthError" and refused["data"]["status"] == 401
    assert "Invalid signature" in refused["data"]["error"]
    await wait_until(lambda: server.hub.local_counts("private-ledger") == (1, 1), what="only the good socket in")


async def test_presence_members_are_listed_and_joins_and_leaves_come_once_per_user(
    server_factory: ServerFactory, pusher_js: Driver,
) -> None:
    server = await server_factory(**PUSHER_OPTIONS)
    js = await pusher_js(server.port)
    ada = {"user_id": "ada", "user_info": {"name": "Ada"}}
    bob = {"user_id": "bob", "user_info": {"name": "Bob"}}
    await js.connected("ada", user=ada)
    first = await js.subscribed("ada", "presence-team")
    assert first["members"] == [{"id": "ada", "info": {"name": "Ada"}}]
    await js.connected("bob1", user=bob)
    n = len(js.lines)
    listed = await js.subscribed("bob1", "presence-team")
    assert listed["members"] == [{"id": "ada", "info": {"name": "Ada"}}, {"id": "bob", "info": {"name": "Bob"}}]
    assert listed["data"]["count"] == 2 and listed["data"]["me"]["id"] == "bob"
    added = await js.event("ada", "presence-team", "pusher:member_added", after=n)
    assert added["data"] == {"id": "bob", "info": {"name": "Bob"}}
    # Bob's second connection: no member_added for anyone, and its list has both users once.
    await js.connected("bob2", user=bob)
    n = len(js.lines)
    again = await js.subscribed("bob2", "presence-team")
    assert [m["id"] for m in again["members"]] == ["ada", "bob"]
    await wait_until(lambda: server.hub.local_counts("presence-team") == (3, 3), what="three sockets in the room")
    # One of Bob's connections goes: Bob stays; the last one goes: member_removed once.
    js.send(op="disconnect", id="bob2")
    await wait_until(lambda: server.hub.local_counts("presence-team") == (2, 2), what="bob2 gone")
    js.send(op="disconnect", id="bob1")
    removed = await js.event("ada", "presence-team", "pusher:member_removed", after=n)
    assert removed["data"] == {"id": "bob", "info": {"name": "Bob"}}
    assert js.of("ada", "event", event="pusher:member_added")[1:] == []
    assert len(js.of("ada", "event", event="pusher:member_removed")) == 1


async def test_unsubscribe_leaves_the_room(server_factory: ServerFactory, pusher_js: Driver) -> None:
    server = await server_factory(**PUSHER_OPTIONS)
    js = await pusher_js(server.port)
    await js.connected("a")
    await js.subscribed("a", "news")
    await wait_until(lambda: server.hub.local_counts("news") == (1, 1), what="subscribed")
    js.send(op="unsubscribe", id="a", channel="news")
    await wait_until(lambda: server.hub.local_counts("news") == (0, 0), what="unsubscribed")


async def test_a_wrong_key_is_refused_with_4001_and_pusher_js_does_not_retry(
    server_factory: ServerFactory, pusher_js: Driver,
) -> None:
    server = await server_factory(**PUSHER_OPTIONS)
    js = await pusher_js(server.port)
    js.send(op="connect", id="x", key="not-our-key")
    error = await js.wait(lambda x: x.get("id") == "x" and x["kind"] == "error", "a pusher:error")
    assert error["error"]["code"] == 4001
    await js.wait(lambda x: x.get("id") == "x" and x["kind"] == "state" and x["current"] == "disconnected",
                  "pusher-js to give up")
    await asyncio.sleep(2)  # pusher-js would retry within a second on a code that asks for it
    assert [x["current"] for x in js.of("x", "state")] == ["disconnected"]  # and never connecting again
    assert len(server.hub.connections) == 0


async def test_an_unsupported_protocol_version_is_4007(server_factory: ServerFactory, clients: list[Client]) -> None:
    server = await server_factory(**PUSHER_OPTIONS)
    c = await connect(server.ws_url(f"/app/{PUSHER_KEY}?protocol=5"))
    clients.append(c)
    await wait_until(lambda: c.closed.is_set(), what="the close")
    assert c.close_code == 4007
    assert c.frames[0]["event"] == "pusher:error" and c.frames[0]["data"]["code"] == 4007


async def test_ping_is_answered_with_pong(server_factory: ServerFactory, clients: list[Client]) -> None:
    server = await server_factory(**PUSHER_OPTIONS)
    c = await connect(server.ws_url(f"/app/{PUSHER_KEY}?protocol=7&client=js&version=8.4.0"))
    clients.append(c)
    await wait_until(lambda: c.frames, what="connection_established")
    assert c.frames[0]["event"] == "pusher:connection_established"
    await c.conn.write_message('{"event":"pusher:ping","data":{}}')
    await wait_until(lambda: any(f.get("event") == "pusher:pong" for f in c.frames), what="pong")


async def test_the_per_address_cap_is_4100_over_capacity(server_factory: ServerFactory, clients: list[Client]) -> None:
    server = await server_factory(max_sockets_per_ip=1, **PUSHER_OPTIONS)
    url = server.ws_url(f"/app/{PUSHER_KEY}?protocol=7")
    first = await connect(url)
    clients.append(first)
    second = await connect(url)
    clients.append(second)
    await wait_until(lambda: second.closed.is_set(), what="the second socket closed")
    assert second.close_code == 4100 and second.frames[0]["data"]["code"] == 4100
    assert not first.closed.is_set()


async def test_a_drain_at_shutdown_closes_pusher_sockets_with_4200(
    server_factory: ServerFactory, clients: list[Client],
) -> None:
    server = await server_factory(**PUSHER_OPTIONS)
    c = await connect(server.ws_url(f"/app/{PUSHER_KEY}?protocol=7"))
    clients.append(c)
    await wait_until(lambda: c.frames, what="connection_established")
    await server.service.shutdown()
    await wait_until(lambda: c.closed.is_set(), what="the close")
    assert c.close_code == 4200 and c.frames[-1]["data"]["code"] == 4200


async def test_pusher_js_reconnects_after_a_server_restart(
    server_factory: ServerFactory, pusher_js: Driver, redis_url: str,
) -> None:
    first = await server_factory(**PUSHER_OPTIONS)
    js = await pusher_js(first.port)
    before = await js.connected("a")
    await js.subscribed("a", "news")
    port = first.port
    first.http.stop()
    await first.service.shutdown()
    await first.http.close_all_connections()
    await js.wait(lambda x: x.get("id") == "a" and x["kind"] == "closed" and x["code"] == 4200, "the 4200 close")
    # A new process on the same port: pusher-js comes back and subscribes again by itself.
    second = await _server_on(server_factory, port)
    after = await js.wait(lambda x: x.get("id") == "a" and x["kind"] == "state" and x["current"] == "connected"
                          and x["socket_id"] != before, "the reconnect", timeout=30)
    assert after["socket_id"] != before
    await wait_until(lambda: second.hub.local_counts("news") == (1, 1), timeout=30, what="resubscribed")


async def _server_on(server_factory: ServerFactory, port: int) -> Server:
    """A new server that also listens on ``port`` (the one a stopped server had)."""
    server = await server_factory(**PUSHER_OPTIONS)
    server.http.add_sockets(tornado.netutil.bind_sockets(port, "127.0.0.1"))
    return server


async def test_pusher_channels_count_against_the_same_caps_as_native_subscriptions(
    server_factory: ServerFactory, pusher_js: Driver,
) -> None:
    server = await server_factory(max_subscriptions=2, **PUSHER_OPTIONS)
    js = await pusher_js(server.port)
    await js.connected("a")
    await js.subscribed("a", "one")
    await js.subscribed("a", "two")
    js.send(op="subscribe", id="a", channel="three")
    refused = await js.event("a", "three", "pusher:subscription_error")
    assert refused["data"]["status"] == 429 and "at most 2 subscriptions per socket" in refused["data"]["error"]
    assert server.hub.local_counts("three") == (0, 0)
    assert server.metric("rrr_limited_total", {"limit": "subscriptions_per_socket"}) == 1


async def test_a_handshake_with_a_cookie_asks_the_connect_proxy_and_a_sign_out_closes_with_4009(
    server_factory: ServerFactory, app_backend: AppBackend, clients: list[Client],
) -> None:
    app_backend.sessions["s-ada"] = Session("ada")
    server = await server_factory(connect_proxy_url=app_backend.url("/connect"), api_token="server-key",
                                  **PUSHER_OPTIONS)
    request = HTTPRequest(server.ws_url(f"/app/{PUSHER_KEY}?protocol=7"), headers={"Cookie": "sid=s-ada"})
    c = Client(await websocket_connect(request))
    clients.append(c)
    await wait_until(lambda: c.frames, what="connection_established")
    assert [f["event"] for f in c.frames] == ["pusher:connection_established"]  # nothing of rrr's own
    (call,) = app_backend.calls_to("/connect")
    assert call.body["transport"] == "pusher"
    r = await AsyncHTTPClient().fetch(server.base_url + "/api/users/ada/disconnect", method="POST", body="",
                                      headers={"Authorization": "Bearer server-key"})
    assert r.code == 202
    await wait_until(lambda: c.closed.is_set(), what="the close")
    assert c.close_code == 4009
    assert c.frames[-1] == {"event": "pusher:error",
                            "data": {"message": "You got disconnected by the app", "code": 4009}}


async def test_the_origin_rule_of_ws_applies_and_no_origin_is_allowed(
    server_factory: ServerFactory, clients: list[Client],
) -> None:
    server = await server_factory(**PUSHER_OPTIONS)
    url = server.ws_url(f"/app/{PUSHER_KEY}?protocol=7")
    with pytest.raises(HTTPClientError) as e:
        await websocket_connect(HTTPRequest(url, headers={"Origin": "https://evil.example"}))
    assert e.value.code == 403
    c = await connect(url)  # a mobile or server client sends no Origin
    clients.append(c)
    await wait_until(lambda: c.frames, what="connection_established")
    assert c.frames[0]["event"] == "pusher:connection_established"


@pytest.mark.parametrize(("given", "missing"), [
    (["--pusher-key=k"], "--pusher-app-id, --pusher-secret missing"),
    (["RRR_PUSHER_APP_ID=1", "--pusher-secret=s"], "--pusher-key missing"),
    (["--pusher-app-id=1", "--pusher-key=k"], "--pusher-secret missing"),
])
def test_one_or_two_of_the_three_pusher_options_stop_the_start_naming_the_missing(
    given: list[str], missing: str,
) -> None:
    env = {**os.environ, "RRR_REDIS_URL": "redis://127.0.0.1:9/0"}
    env.update(a.partition("=")[::2] for a in given if a.startswith("RRR_"))
    args = [a for a in given if a.startswith("--")]
    done = subprocess.run([sys.executable, str(ROOT / "app.py"), "--port=0", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=30, env=env)
    assert done.returncode != 0
    assert missing in done.stderr and "Traceback" not in done.stderr, done.stderr


async def test_without_the_pusher_options_there_is_no_pusher_endpoint(server_factory: ServerFactory) -> None:
    server = await server_factory()
    with pytest.raises(HTTPClientError) as e:
        await websocket_connect(server.ws_url(f"/app/{PUSHER_KEY}?protocol=7"))
    assert e.value.code == 404


async def test_integer_user_ids_are_kept_as_integers_for_sockets_that_use_them(
    server_factory: ServerFactory, pusher_js: Driver,
) -> None:
    server = await server_factory(**PUSHER_OPTIONS)
    js = await pusher_js(server.port)
    await js.connected("bob", user={"user_id": 42, "user_info": {"name": "Bob"}})  # Laravel sends integers
    await js.connected("ada", user={"user_id": "ada", "user_info": {}})
    await js.subscribed("bob", "presence-mixed")
    n = len(js.lines)
    await js.subscribed("ada", "presence-mixed")
    joined = await js.event("bob", "presence-mixed", "pusher:member_added", after=n)
    assert joined["data"]["id"] == "ada"
    await js.connected("carol", user={"user_id": 43, "user_info": {}})
    n = len(js.lines)
    await js.subscribed("carol", "presence-mixed")
    to_bob = await js.event("bob", "presence-mixed", "pusher:member_added", after=n)
    to_ada = await js.event("ada", "presence-mixed", "pusher:member_added", after=n)
    assert to_bob["data"]["id"] == 43 and to_ada["data"]["id"] == "43"
    # User 42 and user "42" are one member.
    await js.connected("bob-too", user={"user_id": "42", "user_info": {"name": "Bob"}})
    n = len(js.lines)
    listed = await js.subscribed("bob-too", "presence-mixed")
    assert listed["data"]["count"] == 3
    await wait_until(lambda: server.hub.local_counts("presence-mixed") == (4, 4), what="four sockets")
    assert js.of("ada", "event", event="pusher:member_added")[2:] == []


async def test_a_channel_name_of_165_characters_is_refused_and_the_socket_stays(
    server_factory: ServerFactory, clients: list[Client],
) -> None:
    server = await server_factory(**PUSHER_OPTIONS)
    c = await connect(server.ws_url(f"/app/{PUSHER_KEY}?protocol=7"))
    clients.append(c)
    await c.conn.write_message(json.dumps({"event": "pusher:subscribe", "data": {"channel": "x" * 165}}))
    await c.conn.write_message(json.dumps({"event": "pusher:subscribe", "data": {"channel": "x" * 164}}))
    await wait_until(lambda: len(c.frames) == 3, what="an error, then the 164-character channel")
    assert c.frames[1]["event"] == "pusher:error" and "164" in c.frames[1]["data"]["message"]
    assert c.frames[2] == {"event": "pusher_internal:subscription_succeeded", "channel": "x" * 164, "data": "{}"}
