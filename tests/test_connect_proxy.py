"""``--connect-proxy-url``: a handshake that carries no token but a cookie (or ``Authorization``)
is identified by asking the application, before the upgrade. The application is a real HTTP
server on loopback (`support.app_backend`) that knows sessions by their ``sid`` cookie, keeps
every call, and can be made to refuse, fail, hang or answer junk.

What it answers gives the socket exactly what a token with those claims would: on ``/ws/`` (and
after the session on ``/sse/`` and ``/poll/``) the socket is told ``authenticated``; a 401 or 403
refuses the handshake with 403; no usable answer refuses it with 503 and ``Retry-After``, and never
opens an anonymous socket instead. At 80 % of the answer's lifetime rrr asks again; a refusal then
ends the subscriptions that needed it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from rrr.backplane.embedded import EmbeddedRedis
from support.app_backend import DROP, HANG, AppBackend, Session
from support.clients import Client, FrameLog, wait_until
from support.processes import ROOT
from support.redis import SlowReplyProxy
from support.servers import Server, ServerFactory
from support.transports import PollClient, SseClient, request
from rrr.backplane import keys
from rrr.client import token

pytestmark = pytest.mark.gen_test(timeout=90)

ADA = Session("ada", info={"name": "Ada"}, rooms=["private-ada-*", "presence-team"], publish=["private-ada-x"])


async def proxied_server(server_factory: ServerFactory, backend: AppBackend, **options: Any) -> Server:
    options.setdefault("connect_proxy_timeout", 1.0)
    return await server_factory(connect_proxy_url=backend.url("/connect"), api_token="server-key", **options)


async def open_ws(server: Server, path: str = "/ws/", **headers: str) -> Client:
    """A WebSocket with these headers (and a browser's ``User-Agent`` unless they name one)."""
    headers.setdefault("User-Agent", "Browser/1.0")
    return Client(await websocket_connect(HTTPRequest(server.ws_url(path), headers=headers)))


async def refusal(server: Server, path: str = "/ws/", **headers: str) -> tuple[int, str | None]:
    """The status and ``Retry-After`` of a handshake that must be refused."""
    with pytest.raises(HTTPClientError) as e:
        c = await open_ws(server, path, **headers)
        c.close()
    response = e.value.response
    return e.value.code, response.headers.get("Retry-After") if response is not None else None


def errors(c: FrameLog, code: str) -> list[dict[str, Any]]:
    return [e for e in c.of_type("error") if e["code"] == code]


# -- who the cookie is -------------------------------------------------------------------------


async def test_a_cookie_the_backend_knows_gets_its_user_and_grants(
    server_factory: ServerFactory, app_backend: AppBackend, clients: list[Client],
) -> None:
    app_backend.sessions["s-ada"] = ADA
    server = await proxied_server(server_factory, app_backend)
    c = await open_ws(server, Cookie="theme=dark; sid=s-ada", **{"X-Forwarded-For": "203.0.113.9"})
    clients.append(c)
    auth = await c.next("authenticated", after=0)
    assert auth["user"] == "ada" and auth["exp"] > time.time() + 500
    (call,) = app_backend.calls_to("/connect")
    assert call.body == {
        "transport": "ws",
        "headers": {"Cookie": "theme=dark; sid=s-ada", "User-Agent": "Browser/1.0", "X-Forwarded-For": "203.0.113.9"},
        "ip": "127.0.0.1",
    }

    for room in ("private-ada-inbox", "presence-team", "lobby", "private-bob-inbox"):
        await c.send(type="subscribe", room=room, sub="t1")
    await c.settles_on(1, 1, room="private-ada-inbox")
    await c.settles_on(1, 1, room="lobby")
    presence = await c.next("presence", after=0)
    assert presence["members"] == {"ada": {"info": {"name": "Ada"}}}
    refused = await wait_until(lambda: errors(c, "forbidden"), what="bob's room refused")
    assert refused[0]["room"] == "private-bob-inbox"
    assert server.hub.local_counts("private-bob-inbox") == (0, 0)

    await c.send(type="subscribe", room="private-ada-x", sub="t1")  # the publish grant: read and publish
    await c.settles_on(1, 1, room="private-ada-x")
    await c.send(type="publish", room="private-ada-x", data={"from": "ada"})
    await wait_until(lambda: any(m["data"] == {"from": "ada"} for m in c.of_type("message")), what="published")

    # The one-room socket is asked as "ws_count", and its room is judged by the answer's grants.
    one = await open_ws(server, "/ws/count/private-ada-x/", Cookie="sid=s-ada")
    clients.append(one)
    await one.settles_on(2, 2)
    assert app_backend.calls_to("/connect")[-1].body == {
        "transport": "ws_count", "headers": {"Cookie": "sid=s-ada", "User-Agent": "Browser/1.0"}, "ip": "127.0.0.1",
    }
    assert not one.of_type("authenticated"), "the talk's socket is sent counts only"
    assert (await refusal(server, "/ws/count/private-bob/", Cookie="sid=s-ada"))[0] == 403


async def test_an_unknown_cookie_is_anonymous_and_no_cookie_is_asked_about_at_all(
    server_factory: ServerFactory, app_backend: AppBackend, clients: list[Client],
) -> None:
    server = await proxied_server(server_factory, app_backend)
    for answer in (None, (204, None)):  # {"user": null}, then 204
        if answer is not None:
            app_backend.answer["/connect"] = answer
        c = await open_ws(server, Cookie="sid=nobody-knows")
        clients.append(c)
        await c.send(type="subscribe", room="private-ada-inbox", sub="a")
        await c.send(type="subscribe", room="lobby", sub="a")
        await wait_until(lambda c=c: errors(c, "forbidden"), what="forbidden")  # type: ignore[misc]
        assert not c.of_type("authenticated")
    await wait_until(lambda: server.hub.local_counts("lobby") == (2, 2), what="both anonymous sockets counted")
    assert len(app_backend.calls_to("/connect")) == 2

    bare = await open_ws(server)  # neither Cookie nor Authorization
    clients.append(bare)
    await bare.send(type="ping")
    await bare.reply("pong")
    assert len(app_backend.calls_to("/connect")) == 2, "a handshake without either header asked the backend"

    del app_backend.answer["/connect"]
    bearer = await open_ws(server, Authorization="Bearer app-session-token")
    clients.append(bearer)
    await bearer.send(type="ping")
    await bearer.reply("pong")
    assert app_backend.calls_to("/connect")[-1].body["headers"] == {
        "Authorization": "Bearer app-session-token", "User-Agent": "Browser/1.0"}


async def test_each_handshake_asks_again_nothing_is_cached(
    server_factory: ServerFactory, app_backend: AppBackend, clients: list[Client],
) -> None:
    app_backend.sessions["s-ada"] = ADA
    server = await proxied_server(server_factory, app_backend)
    first = await open_ws(server, Cookie="sid=s-ada")
    clients.append(first)
    await first.next("authenticated")
    del app_backend.sessions["s-ada"]  # signed out of the application
    second = await open_ws(server, Cookie="sid=s-ada")
    clients.append(second)
    await second.send(type="subscribe", room="private-ada-inbox", sub="a")
    await wait_until(lambda: errors(second, "forbidden"), what="the second socket is anonymous")
    assert not second.of_type("authenticated")
    assert len(app_backend.calls_to("/connect")) == 2


async def test_handshakes_are_asked_over_one_kept_alive_connection(
    server_factory: ServerFactory, app_backend: AppBackend, clients: list[Client],
) -> None:
    """No new connection per handshake (a TCP, or TLS, handshake each, and a port in TIME_WAIT)."""
    app_backend.sessions["s-ada"] = ADA
    server = await proxied_server(server_factory, app_backend)
    for _ in range(10):
        c = await open_ws(server, Cookie="sid=s-ada")
        clients.append(c)
        await c.next("authenticated", after=0)
    assert len(app_backend.calls_to("/connect")) == 10
    assert app_backend.connections == 1


async def test_a_kept_connection_the_application_ended_is_replaced_without_failing_a_handshake(
    server_factory: ServerFactory, app_backend: AppBackend, clients: list[Client],
) -> None:
    """Application servers close idle connections on their own clock (gunicorn after 2 s): one closed
    while idle is seen and dropped before it is used; one closed just as a call went out on it (no answer
    at all) is asked again once, on a new connection."""
    app_backend.sessions["s-ada"] = ADA
    app_backend.idle_timeout = 0.3
    server = await proxied_server(server_factory, app_backend)

    async def handshake() -> None:
        c = await open_ws(server, Cookie="sid=s-ada")
        clients.append(c)
        await c.next("authenticated", after=0)

    await handshake()
    await wait_until(lambda: not app_backend._open, what="the backend closing the idle connection")
    await handshake()
    assert app_backend.connections == 2

    app_backend.idle_timeout = None
    dropped: list[dict[str, Any]] = []

    def drop_once(body: dict[str, Any]) -> tuple[int, Any]:
        if not dropped:
            dropped.append(body)
            return DROP, None
        return 200, ADA.answer()

    app_backend.answer["/connect"] = drop_once
    await handshake()  # on the kept connection: dropped, then asked again on a new one
    assert dropped and app_backend.connections == 3
    assert len(app_backend.calls_to("/connect")) == 4


async def test_a_token_on_the_one_room_socket_is_not_asked_about(
    server_factory: ServerFactory, app_backend: AppBackend, clients: list[Client],
) -> None:
    """A handshake that carries a token is judged by it; its cookie is nobody's business."""
    server = await proxied_server(server_factory, app_backend, token_secret="proxy-test-secret-of-decent-length")
    t = token("bob", rooms=["private-bob"], secret="proxy-test-secret-of-decent-length")
    c = await open_ws(server, f"/ws/count/private-bob/?token={t}", Cookie="sid=s-ada")
    clients.append(c)
    await c.settles_on(1)
    assert app_backend.calls_to("/connect") == []


# -- refusals and failures -------------------------------------------------------------------------


@pytest.mark.parametrize("status", [403, 401])
async def test_a_403_or_401_refuses_the_handshake(
    server_factory: ServerFactory, app_backend: AppBackend, status: int,
) -> None:
    app_backend.answer["/connect"] = (status, {"error": "banned"})
    server = await proxied_server(server_factory, app_backend)
    for path in ("/ws/", "/ws/count/lobby/"):
        assert await refusal(server, path, Cookie="sid=banned") == (403, None)
    assert len(app_backend.calls_to("/connect")) == 2
    assert server.hub.connections == set()
    assert server.metric("rrr_connect_proxy_calls_total", {"result": "refused"}) == 2


def junk_answers() -> dict[str, tuple[int, Any]]:
    now = time.time()
    user = {"user": "ada", "rooms": ["private-ada"]}
    return {
        "500": (500, {"error": "boom"}),
        "502 without a body": (502, None),
        "a redirect": (302, None),
        "not JSON": (200, b"<html>login</html>"),
        "a JSON list": (200, b"[]"),
        "no exp": (200, user),
        "a past exp": (200, {**user, "exp": now - 1}),
        "exp NaN": (200, b'{"user": "ada", "exp": NaN}'),
        "exp beyond --token-max-age": (200, {**user, "exp": now + 48 * 3600}),
        "a user of 129 characters": (200, {"user": "x" * 129, "exp": now + 600}),
        "a user that is a number": (200, {"user": 42, "exp": now + 600}),
        "info over 1 KiB": (200, {**user, "exp": now + 600, "info": {"bio": "x" * 1100}}),
        "101 grants": (200, {**user, "exp": now + 600, "rooms": [f"private-{i}" for i in range(101)]}),
        "an answer over 64 KiB": (200, {**user, "exp": now + 600, "pad": "x" * 70_000}),
    }


async def test_a_backend_that_fails_or_answers_junk_gives_503_and_never_an_anonymous_socket(
    server_factory: ServerFactory, app_backend: AppBackend,
) -> None:
    server = await proxied_server(server_factory, app_backend)
    for name, answer in junk_answers().items():
        app_backend.answer["/connect"] = answer
        for path in ("/ws/", "/ws/count/lobby/"):
            assert await refusal(server, path, Cookie="sid=s-ada") == (503, "5"), name
        assert server.hub.connections == set(), name
    assert server.hub.local_counts("lobby") == (0, 0)
    assert server.metric("rrr_connect_proxy_calls_total", {"result": "failed"}) == 2 * len(junk_answers())


async def test_a_backend_that_hangs_or_is_down_gives_503_within_the_timeout(
    server_factory: ServerFactory, app_backend: AppBackend,
) -> None:
    app_backend.answer["/connect"] = (HANG, None)
    server = await proxied_server(server_factory, app_backend, connect_proxy_timeout=0.5)
    started = time.monotonic()
    assert await refusal(server, Cookie="sid=s-ada") == (503, "5")
    assert time.monotonic() - started < 10
    assert app_backend.held.is_set()
    assert server.hub.connections == set()

    app_backend.close()  # nothing listens there any more
    assert await refusal(server, "/ws/count/lobby/", Cookie="sid=s-ada") == (503, "5")
    assert server.hub.connections == set()


async def test_a_foreign_origin_and_an_address_at_its_cap_never_reach_the_backend(
    server_factory: ServerFactory, app_backend: AppBackend, clients: list[Client],
) -> None:
    app_backend.sessions["s-ada"] = ADA
    server = await proxied_server(server_factory, app_backend, max_sockets_per_ip=1)
    assert (await refusal(server, Cookie="sid=s-ada", Origin="https://evil.example"))[0] == 403
    assert app_backend.calls_to("/connect") == []

    c = await open_ws(server, Cookie="sid=s-ada")
    clients.append(c)
    await c.next("authenticated")
    for path in ("/ws/", "/ws/count/lobby/"):
        assert (await refusal(server, path, Cookie="sid=s-ada"))[0] == 429
    assert len(app_backend.calls_to("/connect")) == 1


async def test_handshakes_waiting_on_the_backend_hold_their_addresses_sockets(
    server_factory: ServerFactory, app_backend: AppBackend,
) -> None:
    """An address may keep no more calls waiting than it may open sockets: the third handshake of
    an address capped at two is refused (429) while two wait, and the backend never hears of it."""
    app_backend.answer["/connect"] = (HANG, None)
    server = await proxied_server(server_factory, app_backend, max_sockets_per_ip=2, connect_proxy_timeout=3.0)
    waiting = [asyncio.ensure_future(refusal(server, Cookie=f"sid={i}")) for i in range(2)]
    await wait_until(lambda: len(app_backend.calls_to("/connect")) == 2, what="two calls waiting")
    assert (await refusal(server, Cookie="sid=third"))[0] == 429
    assert [await w for w in waiting] == [(503, "5"), (503, "5")]
    assert len(app_backend.calls_to("/connect")) == 2


async def test_a_page_gone_while_the_backend_is_asked_leaves_no_socket_behind(
    server_factory: ServerFactory, app_backend: AppBackend, clients: list[Client],
) -> None:
    app_backend.sessions["s-ada"] = ADA
    slow = app_backend.sessions["s-ada"].answer

    def slowly(body: dict[str, Any]) -> tuple[int, Any]:
        time.sleep(0.5)
        return 200, slow()

    app_backend.answer["/connect"] = slowly
    server = await proxied_server(server_factory, app_backend)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(
        f"GET /ws/count/private-ada-x/ HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        "Cookie: sid=s-ada\r\n\r\n".encode()
    )
    await writer.drain()
    await wait_until(lambda: app_backend.calls_to("/connect"), what="the call")
    writer.close()
    await asyncio.sleep(1.0)  # the answer came, the upgrade went its way
    c = await open_ws(server, "/ws/count/private-ada-x/", Cookie="sid=s-ada")
    clients.append(c)
    await c.settles_on(1, 1)
    assert len(server.hub.connections) == 1


# -- refresh -----------------------------------------------------------------------------------------


async def test_refresh_at_80_percent_of_the_lifetime_extends_the_identity(
    server_factory: ServerFactory, app_backend: AppBackend, clients: list[Client],
) -> None:
    app_backend.sessions["s-ada"] = Session("ada", ttl=10, rooms=["private-ada-x"])
    server = await proxied_server(server_factory, app_backend)
    c = await open_ws(server, Cookie="sid=s-ada")
    clients.append(c)
    first = await c.next("authenticated", after=0)
    await c.send(type="subscribe", room="private-ada-x", sub="a")
    await c.settles_on(1, 1, room="private-ada-x")
    (handshake,) = app_backend.calls_to("/connect")
    app_backend.sessions["s-ada"] = Session("ada", ttl=600, rooms=["private-ada-x"])

    await wait_until(lambda: len(app_backend.calls_to("/connect")) == 2, timeout=20, what="the refresh")
    refresh = app_backend.calls_to("/connect")[1]
    assert refresh.body == {**handshake.body, "user": "ada"}
    lifetime = first["exp"] - handshake.at
    assert handshake.at + 0.8 * lifetime - 0.5 <= refresh.at < first["exp"], (refresh.at - handshake.at, lifetime)
    await wait_until(lambda: len(c.of_type("authenticated")) == 2, what="authenticated again")
    second = c.of_type("authenticated")[1]
    assert second["user"] == "ada" and second["exp"] > first["exp"] + 500
    await asyncio.sleep(max(0.0, first["exp"] - time.time()) + 1.0)  # past the first answer's exp
    assert not errors(c, "token_expired")
    assert server.hub.local_counts("private-ada-x") == (1, 1)


@pytest.mark.parametrize("refusal_answer", [(403, None), (401, None), (204, None), (200, {"user": None})],
                         ids=["403", "401", "204", "user null"])
async def test_a_refusal_on_refresh_drops_the_gated_subscriptions_only(
    server_factory: ServerFactory, app_backend: AppBackend, clients: list[Client], refusal_answer: tuple[int, Any],
) -> None:
    app_backend.sessions["s-ada"] = Session("ada", ttl=4, rooms=["private-ada-x", "presence-team"])
    server = await proxied_server(server_factory, app_backend)
    c = await open_ws(server, Cookie="sid=s-ada")
    clients.append(c)
    await c.next("authenticated", after=0)
    for room in ("private-ada-x", "presence-team", "lobby"):
        await c.send(type="subscribe", room=room, sub="a")
    await c.settles_on(1, 1, room="presence-team")
    await c.settles_on(1, 1, room="lobby")
    app_backend.answer["/connect"] = refusal_answer

    await wait_until(lambda: len(errors(c, "token_expired")) == 2, timeout=20, what="token_expired twice")
    assert sorted((e["room"], e["sub"]) for e in errors(c, "token_expired")) == [
        ("presence-team", "a"), ("private-ada-x", "a")]
    assert app_backend.calls_to("/connect")[1].body["user"] == "ada"
    await wait_until(lambda: server.hub.local_counts("private-ada-x") == (0, 0), what="the private room left")
    assert server.hub.local_counts("lobby") == (1, 1)
    assert not c.closed.is_set()
    n = len(c.frames)
    await c.send(type="subscribe", room="private-ada-x", sub="b")  # nobody now
    assert (await c.next("error", after=n))["code"] == "forbidden"


async def test_no_answer_on_refresh_is_asked_again_until_exp_then_drops_the_gated_subscriptions(
    server_factory: ServerFactory, app_backend: AppBackend, clients: list[Client],
) -> None:
    app_backend.sessions["s-ada"] = Session("ada", ttl=5, rooms=["private-ada-x"])
    server = await proxied_server(server_factory, app_backend)
    c = await open_ws(server, Cookie="sid=s-ada")
    clients.append(c)
    auth = await c.next("authenticated", after=0)
    await c.send(type="subscribe", room="private-ada-x", sub="a")
    await c.send(type="subscribe", room="lobby", sub="a")
    await c.settles_on(1, 1, room="private-ada-x")
    app_backend.answer["/connect"] = (500, {"error": "boom"})

    await wait_until(lambda: errors(c, "token_expired"), timeout=20, what="token_expired")
    assert time.time() >= auth["exp"] - 0.05, "dropped before exp while the backend failed"
    assert len(app_backend.calls_to("/connect")) >= 3, "asked once, and again, before giving up at exp"
    assert server.hub.local_counts("lobby") == (1, 1)
    assert not c.closed.is_set()


async def test_an_answer_after_failures_before_exp_still_extends(
    server_factory: ServerFactory, app_backend: AppBackend, clients: list[Client],
) -> None:
    app_backend.sessions["s-ada"] = Session("ada", ttl=6, rooms=["private-ada-x"])
    server = await proxied_server(server_factory, app_backend)
    c = await open_ws(server, Cookie="sid=s-ada")
    clients.append(c)
    await c.next("authenticated", after=0)
    await c.send(type="subscribe", room="private-ada-x", sub="a")
    await c.settles_on(1, 1, room="private-ada-x")
    failures = 0

    def fail_once(body: dict[str, Any]) -> tuple[int, Any]:
        nonlocal failures
        if failures == 0:
            failures += 1
            return 503, None
        return 200, Session("ada", ttl=600, rooms=["private-ada-x"]).answer()

    app_backend.answer["/connect"] = fail_once
    await wait_until(lambda: len(c.of_type("authenticated")) == 2, timeout=20, what="extended after a failure")
    await asyncio.sleep(3)
    assert not errors(c, "token_expired")
    assert server.hub.local_counts("private-ada-x") == (1, 1)


# -- sign-outs -------------------------------------------------------------------------------------


async def test_a_sign_out_closes_a_proxied_socket_and_one_made_during_the_call_refuses_it(
    server_factory: ServerFactory, app_backend: AppBackend, clients: list[Client],
) -> None:
    app_backend.sessions["s-ada"] = ADA
    server = await proxied_server(server_factory, app_backend)
    c = await open_ws(server, Cookie="sid=s-ada")
    clients.append(c)
    await c.next("authenticated", after=0)
    http = AsyncHTTPClient()
    signed_out = await http.fetch(server.base_url + "/api/users/ada/disconnect", method="POST", body="",
                                  headers={"Authorization": "Bearer server-key"})
    assert signed_out.code == 202
    await asyncio.wait_for(c.closed.wait(), 10)
    assert c.close_code == 4001

    # The backend still vouches for the session, but answers only after the next sign-out was made.
    def answer_after_a_sign_out(body: dict[str, Any]) -> tuple[int, Any]:
        asyncio.run_coroutine_threadsafe(sign_out(), loop).result(10)
        return 200, ADA.answer()

    async def sign_out() -> None:
        await http.fetch(server.base_url + "/api/users/ada/disconnect", method="POST", body="",
                         headers={"Authorization": "Bearer server-key"})

    loop = asyncio.get_running_loop()
    await asyncio.sleep(0.01)  # the revocation is kept to the microsecond: the next call starts after it
    app_backend.answer["/connect"] = answer_after_a_sign_out
    assert (await refusal(server, Cookie="sid=s-ada"))[0] == 403
    assert server.hub.connections == set()

    del app_backend.answer["/connect"]  # asked after the sign-out: fine, as a token issued after it
    again = await open_ws(server, Cookie="sid=s-ada")
    clients.append(again)
    await again.next("authenticated", after=0)


async def test_redis_unable_to_check_sign_outs_gives_503(
    redis_server: EmbeddedRedis, server_factory: ServerFactory, app_backend: AppBackend,
) -> None:
    port = int(redis_server.url.split(":")[2].split("/")[0])
    proxy = await SlowReplyProxy(port).start()
    try:
        app_backend.sessions["s-ada"] = ADA
        server = await proxied_server(server_factory, app_backend, redis=proxy.url)
        proxy.hold_reply_to(keys.revoked("ada").encode(), 1.5)  # over --redis-timeout (1 s here)
        assert await refusal(server, Cookie="sid=s-ada") == (503, "5")
        assert server.hub.connections == set()
        await asyncio.sleep(1.0)  # the held reply goes its way before the relay closes
    finally:
        await proxy.close()


# -- the fallback transports: /sse/ and /poll/ are asked as /ws/ is -------------------------------------

DOORS = ["sse", "poll"]
Streams = list[SseClient | PollClient]


async def open_door(server: Server, door: str, streams: Streams, **headers: str) -> SseClient | PollClient:
    """A session over ``/sse/`` or ``/poll/`` with these headers (and a browser's ``User-Agent``)."""
    headers.setdefault("User-Agent", "Browser/1.0")
    client: SseClient | PollClient
    if door == "sse":
        client = await SseClient.open(server.base_url, "/sse/", headers)
        streams.append(client)
        assert client.status == 200, (client.status, client.body)
        await client.started()
    else:
        client = await PollClient.open(server.base_url, headers)
        streams.append(client)
    return client


async def door_refusal(server: Server, path: str, **headers: str) -> tuple[int, str | None]:
    """The status and ``Retry-After`` of a ``/sse/`` or ``/poll/`` handshake that must be refused."""
    headers.setdefault("User-Agent", "Browser/1.0")
    if path.startswith("/sse/"):
        c = await SseClient.open(server.base_url, path, headers)
        c.close()
        return c.status, c.headers.get("retry-after")
    r = await request(server.base_url + path, headers=headers)
    return r.status, r.header("Retry-After")


@pytest.mark.parametrize("door", DOORS)
async def test_a_cookie_the_backend_knows_gets_its_user_and_grants_over_sse_and_polling(
    server_factory: ServerFactory, app_backend: AppBackend, streams: Streams, door: str,
) -> None:
    app_backend.sessions["s-ada"] = ADA
    server = await proxied_server(server_factory, app_backend)
    c = await open_door(server, door, streams, Cookie="theme=dark; sid=s-ada", **{"X-Forwarded-For": "203.0.113.9"})
    auth = await c.next("authenticated", after=0)
    assert auth["user"] == "ada" and auth["exp"] > time.time() + 500
    first = c.frames[1] if door == "sse" else c.frames[0]  # the stream's first event is its session
    assert first["type"] == "authenticated", c.frames[:2]
    (call,) = app_backend.calls_to("/connect")
    assert call.body == {
        "transport": door,
        "headers": {"Cookie": "theme=dark; sid=s-ada", "User-Agent": "Browser/1.0", "X-Forwarded-For": "203.0.113.9"},
        "ip": "127.0.0.1",
    }
    for room in ("private-ada-inbox", "presence-team", "private-bob-inbox"):
        assert (await c.send(type="subscribe", room=room, sub="t1")).status == 202
    await c.settles_on(1, 1, room="private-ada-inbox")
    assert (await c.next("presence", after=0))["members"] == {"ada": {"info": {"name": "Ada"}}}
    refused = await wait_until(lambda: errors(c, "forbidden"), what="bob's room refused")
    assert refused[0]["room"] == "private-bob-inbox"
    assert server.hub.local_counts("private-bob-inbox") == (0, 0)
    assert server.metric("rrr_connect_proxy_calls_total", {"result": "user"}) == 1


async def test_the_one_room_stream_is_asked_as_sse_and_judged_by_the_answers_grants(
    server_factory: ServerFactory, app_backend: AppBackend, streams: Streams,
) -> None:
    app_backend.sessions["s-ada"] = ADA
    server = await proxied_server(server_factory, app_backend)
    one = await SseClient.open(server.base_url, "/sse/count/private-ada-x/", {"Cookie": "sid=s-ada"})
    streams.append(one)
    assert one.status == 200, one.body
    await one.settles_on(1, 1)
    assert app_backend.calls_to("/connect")[-1].body == {
        "transport": "sse", "headers": {"Cookie": "sid=s-ada"}, "ip": "127.0.0.1",
    }
    assert not one.of_type("authenticated"), "the talk's stream is sent counts only"
    assert (await door_refusal(server, "/sse/count/private-bob/", Cookie="sid=s-ada"))[0] == 403
    assert (await door_refusal(server, "/sse/count/private-ada-x/", Cookie="sid=nobody"))[0] == 403
    assert len(app_backend.calls_to("/connect")) == 3


@pytest.mark.parametrize("door", DOORS)
async def test_an_unknown_cookie_is_anonymous_over_sse_and_polling(
    server_factory: ServerFactory, app_backend: AppBackend, streams: Streams, door: str,
) -> None:
    server = await proxied_server(server_factory, app_backend)
    c = await open_door(server, door, streams, Cookie="sid=nobody-knows")
    await c.send(type="subscribe", room="private-ada-inbox", sub="a")
    await c.send(type="subscribe", room="lobby", sub="a")
    await wait_until(lambda: errors(c, "forbidden"), what="forbidden")
    await c.settles_on(1, 1, room="lobby")
    assert not c.of_type("authenticated")
    assert app_backend.calls_to("/connect")[-1].body["transport"] == door
    bare = await open_door(server, door, streams)  # neither Cookie nor Authorization: not asked
    await bare.send(type="ping")
    await bare.next("pong", after=0)
    assert len(app_backend.calls_to("/connect")) == 1


@pytest.mark.parametrize("status", [403, 401])
async def test_a_403_or_401_refuses_sse_and_polling_with_403(
    server_factory: ServerFactory, app_backend: AppBackend, status: int,
) -> None:
    app_backend.answer["/connect"] = (status, {"error": "banned"})
    server = await proxied_server(server_factory, app_backend)
    for path in ("/sse/", "/poll/", "/sse/count/lobby/"):
        assert await door_refusal(server, path, Cookie="sid=banned") == (403, None), path
    assert [c.body["transport"] for c in app_backend.calls_to("/connect")] == ["sse", "poll", "sse"]
    assert server.hub.connections == set()
    assert server.metric("rrr_open_sessions", {"transport": "sse"}) == 0
    assert server.metric("rrr_open_sessions", {"transport": "poll"}) == 0


async def test_a_backend_that_fails_hangs_or_is_down_gives_sse_and_polling_503_and_never_an_anonymous_session(
    server_factory: ServerFactory, app_backend: AppBackend,
) -> None:
    server = await proxied_server(server_factory, app_backend, connect_proxy_timeout=0.5)
    paths = ("/sse/", "/poll/", "/sse/count/lobby/")
    for answer in ((500, {"error": "boom"}), (200, b"<html>login</html>"), (HANG, None)):
        app_backend.answer["/connect"] = answer
        for path in paths:
            assert await door_refusal(server, path, Cookie="sid=s-ada") == (503, "5"), (answer, path)
        assert server.hub.connections == set(), answer
    assert app_backend.held.is_set()
    app_backend.close()  # nothing listens there any more
    for path in paths:
        assert await door_refusal(server, path, Cookie="sid=s-ada") == (503, "5"), path
    assert server.hub.connections == set()
    assert server.hub.local_counts("lobby") == (0, 0)
    assert server.metric("rrr_connect_proxy_calls_total", {"result": "failed"}) == 4 * len(paths)


async def test_sse_and_polling_at_the_address_cap_never_reach_the_backend(
    server_factory: ServerFactory, app_backend: AppBackend, streams: Streams,
) -> None:
    app_backend.sessions["s-ada"] = ADA
    server = await proxied_server(server_factory, app_backend, max_sockets_per_ip=1)
    assert (await door_refusal(server, "/sse/", Cookie="sid=s-ada", Origin="https://evil.example"))[0] == 403
    assert (await door_refusal(server, "/poll/", Cookie="sid=s-ada", Origin="https://evil.example"))[0] == 403
    assert app_backend.calls_to("/connect") == []
    c = await open_door(server, "sse", streams, Cookie="sid=s-ada")
    await c.next("authenticated", after=0)
    for path in ("/sse/", "/poll/", "/sse/count/lobby/"):
        assert (await door_refusal(server, path, Cookie="sid=s-ada")) == (429, "10"), path
    assert len(app_backend.calls_to("/connect")) == 1


@pytest.mark.parametrize("door", DOORS)
async def test_refresh_at_80_percent_of_the_lifetime_extends_a_session_over_sse_and_polling(
    server_factory: ServerFactory, app_backend: AppBackend, streams: Streams, door: str,
) -> None:
    app_backend.sessions["s-ada"] = Session("ada", ttl=10, rooms=["private-ada-x"])
    server = await proxied_server(server_factory, app_backend)
    c = await open_door(server, door, streams, Cookie="sid=s-ada")
    first = await c.next("authenticated", after=0)
    await c.send(type="subscribe", room="private-ada-x", sub="a")
    await c.settles_on(1, 1, room="private-ada-x")
    (handshake,) = app_backend.calls_to("/connect")
    app_backend.sessions["s-ada"] = Session("ada", ttl=600, rooms=["private-ada-x"])

    await wait_until(lambda: len(app_backend.calls_to("/connect")) == 2, timeout=20, what="the refresh")
    refresh = app_backend.calls_to("/connect")[1]
    assert refresh.body == {**handshake.body, "user": "ada"}
    lifetime = first["exp"] - handshake.at
    assert handshake.at + 0.8 * lifetime - 0.5 <= refresh.at < first["exp"], (refresh.at - handshake.at, lifetime)
    await wait_until(lambda: len(c.of_type("authenticated")) == 2, what="authenticated again")
    assert c.of_type("authenticated")[1]["exp"] > first["exp"] + 500
    await asyncio.sleep(max(0.0, first["exp"] - time.time()) + 1.0)  # past the first answer's exp
    assert not errors(c, "token_expired")
    assert server.hub.local_counts("private-ada-x") == (1, 1)


# -- options ------------------------------------------------------------------------------------------


def test_the_proxies_options_are_checked_at_start() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RRR_")}
    cases = {
        "--connect-proxy-url=ftp://127.0.0.1/connect": "rrr: --connect-proxy-url must be an http:// or https:// URL",
        "--connect-proxy-timeout=0": "rrr: --connect-proxy-timeout must be more than 0 seconds",
        "--subscribe-proxy-url=http://127.0.0.1/subscribe": "rrr: --subscribe-proxy-url needs --subscribe-proxy-rooms",
        "--subscribe-proxy-rooms=chat-": "rrr: --subscribe-proxy-rooms: 'chat-' is no prefix of private-",
    }
    for flag, says in cases.items():
        done = subprocess.run([sys.executable, str(ROOT / "app.py"), "--port", "0", flag], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=30)
        assert done.returncode != 0, flag
        assert done.stderr.strip().startswith(says), (flag, done.stderr)
