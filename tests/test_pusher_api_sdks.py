"""Pusher's HTTP API judged by the real server SDKs, unchanged: the ``pusher`` Python package
(trigger, trigger_batch, channels_info, channel_info, users_info, terminate_user_connections,
authenticate, validate_webhook) and the ``pusher`` Node package (trigger, get); and the bad input
they never send: forged and stale signatures, a wrong body_md5, oversized data."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pusher
import pytest
from tornado.httpclient import AsyncHTTPClient
from tornado.websocket import websocket_connect

from rrr.pusher.signing import sign_api_request
from support.clients import Client, connect, wait_until
from support.pusher import PUSHER_APP_ID, PUSHER_KEY, PUSHER_OPTIONS, PUSHER_SECRET
from support.pusher_js import PusherJs
from support.servers import Server, ServerFactory
from support.webhooks import Receiver

pytestmark = pytest.mark.gen_test(timeout=120)

Driver = Callable[..., Awaitable[PusherJs]]
ADA = {"user_id": "ada", "user_info": {"name": "Ada"}}


def sdk(server: Server) -> pusher.Pusher:
    return pusher.Pusher(app_id=PUSHER_APP_ID, key=PUSHER_KEY, secret=PUSHER_SECRET, host="127.0.0.1",
                         port=server.port, ssl=False)


async def call(fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    """The Python SDK is synchronous: run it beside the server's loop."""
    return await asyncio.to_thread(fn, *args, **kw)


async def test_trigger_and_trigger_batch_reach_pusher_js_and_native_subscribers(
    server_factory: ServerFactory, pusher_js: Driver, clients: list[Client],
) -> None:
    server = await server_factory(**PUSHER_OPTIONS)
    js = await pusher_js(server.port)
    await js.connected("a")
    await js.subscribed("a", "orders")
    await js.subscribed("a", "orders-2")
    native = await connect(server.ws_url("/ws/"))
    clients.append(native)
    await native.send(type="subscribe", room="orders", sub="t")
    await native.next("subscribed", after=0)
    await wait_until(lambda: server.hub.local_counts("orders") == (2, 2), what="both subscribed")
    py = sdk(server)
    assert await call(py.trigger, ["orders", "orders-2"], "order.created", {"id": 1}) == {}
    assert await call(py.trigger, "orders", "note", "plain text") == {}
    got = await js.event("a", "orders", "order.created")
    assert got["data"] == {"id": 1}
    assert (await js.event("a", "orders-2", "order.created"))["data"] == {"id": 1}
    assert (await js.event("a", "orders", "note"))["data"] == "plain text"
    await wait_until(lambda: len(native.of_type("message")) == 2, what="the native subscriber's two")
    first, second = native.of_type("message")
    assert (first["event"], first["data"], first["offset"]) == ("order.created", {"id": 1}, 1)
    assert (second["event"], second["data"]) == ("note", "plain text")  # not JSON text: the string
    batch = [{"channel": "orders", "name": "b1", "data": json.dumps({"n": 1})},
             {"channel": "orders-2", "name": "b2", "data": json.dumps({"n": 2})}]
    assert await call(py.trigger_batch, batch, already_encoded=True) == {}
    assert (await js.event("a", "orders", "b1"))["data"] == {"n": 1}
    assert (await js.event("a", "orders-2", "b2"))["data"] == {"n": 2}


async def test_a_trigger_with_socket_id_skips_that_socket(server_factory: ServerFactory, pusher_js: Driver) -> None:
    server = await server_factory(**PUSHER_OPTIONS)
    js = await pusher_js(server.port)
    sender = await js.connected("sender")
    await js.connected("other")
    await js.subscribed("sender", "chat")
    await js.subscribed("other", "chat")
    await call(sdk(server).trigger, "chat", "said", {"t": "hi"}, socket_id=sender)
    await js.event("other", "chat", "said")
    await call(sdk(server).trigger, "chat", "after", {})
    await js.event("sender", "chat", "after")
    assert js.of("sender", "event", event="said") == []


async def test_channels_info_channel_info_and_users_info_count_pusher_and_native_alike(
    server_factory: ServerFactory, pusher_js: Driver, clients: list[Client],
) -> None:
    server = await server_factory(token_secret="s" * 32, **PUSHER_OPTIONS)
    js = await pusher_js(server.port)
    await js.connected("ada", user=ADA)
    await js.connected("ada2", user=ADA)
    await js.subscribed("ada", "presence-team")
    await js.subscribed("ada2", "presence-team")
    await js.subscribed("ada", "news")
    from rrr.client import token
    native = await connect(server.ws_url("/ws/"))
    clients.append(native)
    await native.send(type="auth", token=token("bob", rooms=["presence-team"], secret="s" * 32))
    for sub in ("t1", "t2"):
        await native.send(type="subscribe", room="presence-team", sub=sub)
    await wait_until(lambda: server.hub.local_counts("presence-team") == (3, 4), what="4 subscriptions")
    py = sdk(server)

    async def settled() -> bool:
        info = await call(py.channel_info, "presence-team", ["user_count", "subscription_count"])
        return bool(info == {"occupied": True, "user_count": 2, "subscription_count": 4})

    await wait_until(settled, what="the room's counts in Redis")
    assert await call(py.channel_info, "nobody-here") == {"occupied": False}
    channels = await call(py.channels_info)
    assert channels == {"channels": {"news": {}, "presence-team": {}}}
    assert await call(py.channels_info, "presence-", ["user_count"]) == {
        "channels": {"presence-team": {"user_count": 2}}}
    assert await call(py.users_info, "presence-team") == {"users": [{"id": "ada"}, {"id": "bob"}]}
    # The Node SDK's get.
    got = await js.server("get", {"path": "/channels/presence-team", "params": {"info": "user_count"}})
    assert got["status"] == 200 and json.loads(got["body"]) == {"occupied": True, "user_count": 2}
    # Pusher's 400s for what cannot apply.
    with pytest.raises(pusher.errors.PusherBadRequest):
        await call(py.channels_info, None, ["user_count"])
    with pytest.raises(pusher.errors.PusherBadRequest):
        await call(py.users_info, "news")


async def test_the_node_sdk_triggers_with_info(server_factory: ServerFactory, pusher_js: Driver) -> None:
    server = await server_factory(**PUSHER_OPTIONS)
    js = await pusher_js(server.port)
    await js.connected("a")
    await js.subscribed("a", "orders")
    await wait_until(lambda: server.hub.local_counts("orders") == (1, 1), what="subscribed")

    async def counted() -> bool:
        r = await js.server("trigger", "orders", "e", {"n": 1}, {"info": "subscription_count"})
        return r["status"] == 200 and json.loads(r["body"]) == {"channels": {"orders": {"subscription_count": 1}}}

    await wait_until(counted, what="the Node SDK's trigger with info")
    got = await js.event("a", "orders", "e")
    assert got["data"] == {"n": 1}


async def test_terminate_user_connections_closes_every_socket_of_the_user_with_4009(
    server_factory: ServerFactory, pusher_js: Driver,
) -> None:
    server = await server_factory(**PUSHER_OPTIONS)
    js = await pusher_js(server.port)
    for who in ("ada", "ada-phone"):
        await js.connected(who, user=ADA)
        js.send(op="signin", id=who)
        await js.wait(lambda x, w=who: x.get("id") == w and x["kind"] == "frame"
                      and x["event"] == "pusher:signin_success", f"{who} signed in")
    await js.connected("bob", user={"user_id": "bob", "user_info": {}})
    await call(sdk(server).terminate_user_connections, "ada")  # the Python SDK: /users/ada/terminate_connections
    for who in ("ada", "ada-phone"):
        closed = await js.wait(lambda x, w=who: x.get("id") == w and x["kind"] == "closed",
                               f"{who} closed")
        assert closed["code"] == 4009
    assert js.of("bob", "closed") == []
    # The Node SDK's path: /apps/<id>/users/<id>/terminate_connections.
    await js.connected("bob2", user={"user_id": "bob", "user_info": {}})
    js.send(op="signin", id="bob2")
    await js.wait(lambda x: x.get("id") == "bob2" and x["kind"] == "frame" and x["event"] == "pusher:signin_success",
                  "bob signed in")
    r = await js.server("terminateUserConnections", "bob")
    assert r["status"] == 200, r
    closed = await js.wait(lambda x: x.get("id") == "bob2" and x["kind"] == "closed", "bob closed")
    assert closed["code"] == 4009


async def test_send_to_user_reaches_the_signed_in_users_sockets(
    server_factory: ServerFactory, pusher_js: Driver,
) -> None:
    server = await server_factory(**PUSHER_OPTIONS)
    js = await pusher_js(server.port)
    await js.connected("ada", user=ADA)
    js.send(op="signin", id="ada")
    await wait_until(lambda: server.hub.local_counts("#server-to-user-ada") == (1, 1), what="the user channel")
    await call(sdk(server).send_to_user, "ada", "notice", {"text": "hello"})
    got = await js.wait(lambda x: x.get("id") == "ada" and x["kind"] == "user_event" and x["event"] == "notice",
                        "the user event")
    assert got["data"] == {"text": "hello"}


async def test_the_python_sdks_authenticate_signs_what_the_server_accepts(
    server_factory: ServerFactory, clients: list[Client],
) -> None:
    server = await server_factory(**PUSHER_OPTIONS)
    c = Client(await websocket_connect(server.ws_url(f"/app/{PUSHER_KEY}?protocol=7")))
    clients.append(c)
    await wait_until(lambda: c.frames, what="connection_established")
    socket_id = json.loads(c.frames[0]["data"])["socket_id"]
    py = sdk(server)
    for channel, custom in (("private-x", None), ("presence-x", {"user_id": 7, "user_info": {"n": "seven"}})):
        signed = py.authenticate(channel, socket_id, custom)
        await c.conn.write_message(json.dumps({"event": "pusher:subscribe", "data": {"channel": channel, **signed}}))
    await wait_until(lambda: len([f for f in c.frames if f["event"].endswith("subscription_succeeded")]) == 2,
                     what="both subscriptions")
    presence = next(f for f in c.frames if f.get("channel") == "presence-x")
    # The integer id is kept as given (the hash's keys are strings, as JSON's are).
    assert json.loads(presence["data"]) == {"presence": {"ids": [7], "hash": {"7": {"n": "seven"}}, "count": 1}}
    # A signature for another socket id is refused.
    other = py.authenticate("private-y", "1.1", None)
    await c.conn.write_message(json.dumps({"event": "pusher:subscribe", "data": {"channel": "private-y", **other}}))
    await wait_until(lambda: any(f["event"] == "pusher:subscription_error" for f in c.frames), what="the refusal")


async def test_validate_webhook_accepts_what_rrr_sends_for_pusher_sockets(
    server_factory: ServerFactory, pusher_js: Driver, receiver: Receiver,
) -> None:
    server = await server_factory(webhook_url=receiver.url, vacate_delay=0.2, **PUSHER_OPTIONS)
    js = await pusher_js(server.port)
    await js.connected("a")
    await js.subscribed("a", "news")
    await wait_until(lambda: receiver.requests, what="a webhook")
    r = receiver.requests[0]
    assert r.headers["X-Pusher-Key"] == PUSHER_KEY
    payload = sdk(server).validate_webhook(r.headers["X-Pusher-Key"], r.headers["X-Pusher-Signature"], r.body)
    assert payload is not None
    assert [(e["name"], e["channel"]) for e in payload["events"]] == [("channel_occupied", "news")]


# -- bad input -----------------------------------------------------------------------------------


async def fetch(server: Server, method: str, path: str, query: str, body: bytes = b"") -> tuple[int, str]:
    r = await AsyncHTTPClient().fetch(server.base_url + path + "?" + query, method=method,
                                      body=body if method == "POST" else None, raise_error=False,
                                      headers={"Content-Type": "application/json"})
    return r.code, r.body.decode()


def signed(method: str, path: str, body: bytes = b"", *, secret: str = PUSHER_SECRET, ts: int | None = None,
           params: dict[str, str] | None = None) -> str:
    return sign_api_request(method, path, params or {}, body, key=PUSHER_KEY, secret=secret,
                            timestamp=int(time.time()) if ts is None else ts)


async def test_forged_stale_and_tampered_requests_are_refused_and_publish_nothing(
    server_factory: ServerFactory, clients: list[Client],
) -> None:
    server = await server_factory(**PUSHER_OPTIONS)
    c = Client(await websocket_connect(server.ws_url(f"/app/{PUSHER_KEY}?protocol=7")))
    clients.append(c)
    await c.conn.write_message('{"event":"pusher:subscribe","data":{"channel":"x"}}')
    await wait_until(lambda: len(c.frames) == 2, what="subscribed")
    path = f"/apps/{PUSHER_APP_ID}/events"
    body = json.dumps({"name": "e", "channel": "x", "data": "{}"}).encode()
    code, text = await fetch(server, "POST", path, signed("POST", path, body, secret="forged"), body)
    assert code == 401 and "signature" in text.lower()
    code, text = await fetch(server, "POST", path, signed("POST", path, body, ts=int(time.time()) - 601), body)
    assert code == 401 and "timestamp" in text.lower()
    code, text = await fetch(server, "POST", path, signed("POST", path, body), body + b" ")
    assert code == 401 and "body_md5" in text
    too_long = json.dumps({"name": "e", "channel": "x" * 165, "data": "{}"}).encode()
    code, text = await fetch(server, "POST", path, signed("POST", path, too_long), too_long)
    assert code == 400 and "164" in text
    huge = json.dumps({"name": "e", "channel": "x", "data": "x" * 10241}).encode()
    code, text = await fetch(server, "POST", path, signed("POST", path, huge), huge)
    assert code == 413 and "exceeds the allowed maximum" in text
    wrong_app = "/apps/999/events"
    code, _ = await fetch(server, "POST", wrong_app, signed("POST", wrong_app, body), body)
    assert code == 404
    code, _ = await fetch(server, "POST", path, signed("POST", path, body), body)
    assert code == 200
    await wait_until(lambda: len(c.frames) == 3, what="the one good event")
    assert [f["event"] for f in c.frames] == ["pusher:connection_established",
                                              "pusher_internal:subscription_succeeded", "e"]


async def test_encrypted_channels_relay_ciphertext_only_pusher_js_can_read(
    server_factory: ServerFactory, pusher_js: Driver, clients: list[Client],
) -> None:
    from rrr.client import token
    server = await server_factory(token_secret="s" * 32, client_publish=True, **PUSHER_OPTIONS)
    js = await pusher_js(server.port)
    await js.connected("a")
    await js.subscribed("a", "private-encrypted-vault")
    native = await connect(server.ws_url("/ws/"))
    clients.append(native)
    grant = token("ops", rooms=["private-encrypted-vault"], publish=["private-encrypted-vault"], secret="s" * 32)
    await native.send(type="auth", token=grant)
    await native.send(type="subscribe", room="private-encrypted-vault", sub="t")
    await native.next("subscribed", after=0)
    r = await js.server("trigger", "private-encrypted-vault", "secret", {"code": 42})
    assert r["status"] == 200
    got = await js.event("a", "private-encrypted-vault", "secret")
    assert got["data"] == {"code": 42}  # decrypted by pusher-js with the shared secret
    relayed = await native.next("message", after=0)
    assert set(relayed["data"]) == {"nonce", "ciphertext"} and "42" not in json.dumps(relayed["data"])
    # A native publish without an event name is plaintext pusher-js could not decrypt: not relayed there.
    await native.send(type="publish", room="private-encrypted-vault", data={"plain": True})
    await wait_until(lambda: len(native.of_type("message")) == 2, what="the native publish")
    await asyncio.sleep(0.3)
    assert js.of("a", "event", event="message") == []
