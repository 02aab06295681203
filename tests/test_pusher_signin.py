"""Pusher user authentication (``pusher:signin``), judged by pusher-js 8 with the Node server SDK's
``authenticateUser``: the socket becomes the user (its ``#server-to-user-<id>`` channel, a presence
channel's member without channel_data), a sign-out reaches it (4009), a forged sign-in is 4009."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from tornado.httpclient import AsyncHTTPClient

from support.clients import wait_until
from support.pusher import PUSHER_OPTIONS
from support.pusher_js import PusherJs
from support.servers import ServerFactory

pytestmark = pytest.mark.gen_test(timeout=120)

Driver = Callable[..., Awaitable[PusherJs]]
ADA = {"user_id": "ada", "user_info": {"name": "Ada"}}


async def test_a_signed_in_socket_is_its_user_and_a_sign_out_closes_it_with_4009(
    server_factory: ServerFactory, pusher_js: Driver,
) -> None:
    server = await server_factory(api_token="tok", **PUSHER_OPTIONS)
    js = await pusher_js(server.port)
    await js.connected("ada", user=ADA)
    await js.connected("other", user={"user_id": "bob", "user_info": {}})
    js.send(op="signin", id="ada")
    await js.wait(lambda x: x.get("id") == "ada" and x["kind"] == "frame" and x["event"] == "pusher:signin_success",
                  "signin_success")
    # pusher-js subscribes to its own #server-to-user- channel once signed in.
    await wait_until(lambda: server.hub.local_counts("#server-to-user-ada") == (1, 1), what="the user channel")
    r = await AsyncHTTPClient().fetch(server.base_url + "/api/users/ada/disconnect", method="POST", body="",
                                      headers={"Authorization": "Bearer tok"})
    assert r.code == 202
    closed = await js.wait(lambda x: x.get("id") == "ada" and x["kind"] == "closed", "ada's socket closed")
    assert closed["code"] == 4009
    error = js.of("ada", "error")[-1]
    assert error["error"]["code"] == 4009
    assert js.of("other", "closed") == []  # another user's socket stays


async def test_a_forged_sign_in_closes_the_socket_with_4009(server_factory: ServerFactory, pusher_js: Driver) -> None:
    server = await server_factory(**PUSHER_OPTIONS)
    js = await pusher_js(server.port)
    await js.connected("eve", user=ADA, authSecret="not-the-secret")
    js.send(op="signin", id="eve")
    closed = await js.wait(lambda x: x.get("id") == "eve" and x["kind"] == "closed", "eve's socket closed")
    assert closed["code"] == 4009
    assert "Invalid signature" in js.of("eve", "error")[-1]["error"]["message"]
    assert server.hub.local_counts("#server-to-user-ada") == (0, 0)


async def test_a_presence_channel_without_channel_data_takes_the_signed_in_user(
    server_factory: ServerFactory, pusher_js: Driver,
) -> None:
    server = await server_factory(**PUSHER_OPTIONS)
    js = await pusher_js(server.port)
    await js.connected("ada", user=ADA, presenceFromSignin=True)
    js.send(op="signin", id="ada")
    await js.wait(lambda x: x.get("id") == "ada" and x["kind"] == "frame" and x["event"] == "pusher:signin_success",
                  "signin_success")
    listed = await js.subscribed("ada", "presence-room")
    assert listed["members"] == [{"id": "ada", "info": {"name": "Ada"}}]
