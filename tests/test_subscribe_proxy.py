"""``--subscribe-proxy-url``: a subscription to a room of ``--subscribe-proxy-rooms`` that the
socket's grants do not cover is asked of the application (a real HTTP server on loopback,
`support.app_backend`): allowed, it is registered (a presence room shows the info the answer
gave); refused, it is ``forbidden``; unanswered, ``unavailable``; and nothing is registered or
counted before the answer."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import jwt
import pytest
from tornado.httpclient import AsyncHTTPClient

from support.app_backend import HANG, AppBackend
from support.clients import Client, connect, wait_until
from support.servers import Server, ServerFactory

pytestmark = pytest.mark.gen_test(timeout=60)

SECRET = "subscribe-proxy-test-secret-of-length"


def token(sub: str, rooms: list[str] | None = None, info: dict[str, Any] | None = None) -> str:
    claims: dict[str, Any] = {"sub": sub, "iat": time.time(), "exp": time.time() + 600, "rooms": rooms or []}
    if info is not None:
        claims["info"] = info
    return jwt.encode(claims, SECRET, algorithm="HS256")


async def proxied_server(server_factory: ServerFactory, backend: AppBackend, **options: Any) -> Server:
    options.setdefault("subscribe_proxy_timeout", 1.0)
    return await server_factory(
        subscribe_proxy_url=backend.url("/subscribe"), subscribe_proxy_rooms="private-doc-,presence-doc-",
        token_secret=SECRET, api_token="server-key", **options,
    )


async def socket(server: Server, clients: list[Client], user: str | None = None,
                 info: dict[str, Any] | None = None, rooms: list[str] | None = None) -> Client:
    c = await connect(server.ws_url("/ws/"))
    clients.append(c)
    if user is not None:
        await c.send(type="auth", token=token(user, rooms, info))
        await c.next("authenticated", after=0)
    return c


def errors(c: Client, code: str) -> list[dict[str, Any]]:
    return [e for e in c.of_type("error") if e["code"] == code]


async def test_an_allowed_subscription_is_registered_and_a_presence_room_shows_the_answers_info(
    server_factory: ServerFactory, app_backend: AppBackend, clients: list[Client],
) -> None:
    app_backend.allowed[("ada", "presence-doc-7")] = {"name": "Ada", "role": "editor"}
    app_backend.allowed[("ada", "private-doc-7")] = None
    app_backend.allowed[(None, "private-doc-7")] = None
    server = await proxied_server(server_factory, app_backend)
    ada = await socket(server, clients, "ada", info={"name": "Ada L."})
    await ada.send(type="subscribe", room="presence-doc-7", sub="t1")
    presence = await ada.next("presence", after=0)
    assert presence["members"] == {"ada": {"info": {"name": "Ada", "role": "editor"}}}
    assert app_backend.calls_to("/subscribe")[0].body == {
        "user": "ada", "room": "presence-doc-7", "info": {"name": "Ada L."}}

    await ada.send(type="subscribe", room="private-doc-7", sub="t1")
    await ada.settles_on(1, 1, room="private-doc-7")
    anonymous = await socket(server, clients)
    await anonymous.send(type="subscribe", room="private-doc-7", sub="t1")
    await anonymous.settles_on(2, 2, room="private-doc-7")
    assert app_backend.calls_to("/subscribe")[-1].body == {"user": None, "room": "private-doc-7", "info": None}

    # Messages reach them; the same (room, sub) again is a no-op, not another call.
    calls = len(app_backend.calls_to("/subscribe"))
    await anonymous.send(type="subscribe", room="private-doc-7", sub="t1")
    await AsyncHTTPClient().fetch(server.base_url + "/api/rooms/private-doc-7/messages", method="POST",
                                  body='{"v": 1}', headers={"Authorization": "Bearer server-key"})
    for c in (ada, anonymous):
        await wait_until(lambda c=c: any(m["data"] == {"v": 1} for m in c.of_type("message")),  # type: ignore[misc]
                         what="the message")
    assert len(app_backend.calls_to("/subscribe")) == calls
    assert server.metric("rrr_subscribe_proxy_calls_total", {"result": "allowed"}) == 3


async def test_rooms_the_grants_cover_or_outside_the_prefixes_are_never_asked_about(
    server_factory: ServerFactory, app_backend: AppBackend, clients: list[Client],
) -> None:
    server = await proxied_server(server_factory, app_backend)
    ada = await socket(server, clients, "ada", rooms=["private-doc-1"])
    await ada.send(type="subscribe", room="private-doc-1", sub="a")  # granted by the token
    await ada.send(type="subscribe", room="private-other", sub="a")  # not the proxy's room
    await ada.send(type="subscribe", room="lobby", sub="a")  # public
    await ada.settles_on(1, 1, room="private-doc-1")
    await ada.settles_on(1, 1, room="lobby")
    refused = await wait_until(lambda: errors(ada, "forbidden"), what="forbidden")
    assert refused[0]["room"] == "private-other"
    assert app_backend.calls_to("/subscribe") == []


@pytest.mark.parametrize("answer", [(403, None), (200, {"allow": False})], ids=["403", "allow false"])
async def test_a_denied_subscription_is_forbidden_and_nothing_is_registered(
    server_factory: ServerFactory, app_backend: AppBackend, clients: list[Client], answer: tuple[int, Any],
) -> None:
    app_backend.answer["/subscribe"] = answer
    server = await proxied_server(server_factory, app_backend)
    c = await socket(server, clients, "ada")
    await c.send(type="subscribe", room="presence-doc-9", sub="t1")
    refused = await wait_until(lambda: errors(c, "forbidden"), what="forbidden")
    assert (refused[0]["room"], refused[0]["sub"]) == ("presence-doc-9", "t1")
    await asyncio.sleep(0.3)
    assert server.hub.local_counts("presence-doc-9") == (0, 0)
    assert not c.of_type("presence") and not c.counts("presence-doc-9")
    assert server.metric("rrr_subscribe_proxy_calls_total", {"result": "denied"}) == 1


@pytest.mark.parametrize("answer", ["500", "junk", "no allow", "info too big", "hang", "down"])
async def test_a_backend_that_fails_gives_unavailable_with_room_and_sub(
    server_factory: ServerFactory, app_backend: AppBackend, clients: list[Client], answer: str,
) -> None:
    answers: dict[str, tuple[int, Any]] = {
        "500": (500, None), "junk": (200, b"<html>"), "no allow": (200, {"info": {}}),
        "info too big": (200, {"allow": True, "info": {"x": "y" * 1100}}), "hang": (HANG, None),
    }
    if answer == "down":
        app_backend.close()
    else:
        app_backend.answer["/subscribe"] = answers[answer]
    server = await proxied_server(server_factory, app_backend, subscribe_proxy_timeout=0.5)
    c = await socket(server, clients, "ada")
    await c.send(type="subscribe", room="private-doc-3", sub="t1")
    await c.send(type="subscribe", room="lobby", sub="t1")  # after the answer: frames stay in order
    failed = await wait_until(lambda: errors(c, "unavailable"), what="unavailable")
    assert (failed[0]["room"], failed[0]["sub"]) == ("private-doc-3", "t1")
    await c.settles_on(1, 1, room="lobby")
    assert server.hub.local_counts("private-doc-3") == (0, 0)
    assert not c.closed.is_set()


async def test_nothing_is_counted_before_the_answer(
    server_factory: ServerFactory, app_backend: AppBackend, clients: list[Client],
) -> None:
    """While the backend holds its answer the room has no subscriber, here or in Redis; a socket
    that leaves meanwhile registers nothing when the answer comes."""
    app_backend.answer["/subscribe"] = (HANG, None)
    server = await proxied_server(server_factory, app_backend, subscribe_proxy_timeout=3.0)
    c = await socket(server, clients, "ada")
    await c.send(type="subscribe", room="presence-doc-5", sub="t1")
    await wait_until(app_backend.held.is_set, what="the call held")
    assert server.hub.local_counts("presence-doc-5") == (0, 0)
    room = await AsyncHTTPClient().fetch(server.base_url + "/api/rooms/presence-doc-5",
                                         headers={"Authorization": "Bearer server-key"})
    assert b'"connections": 0' in room.body or b'"connections":0' in room.body
    assert not c.of_type("presence")

    app_backend.answer["/subscribe"] = (200, {"allow": True})
    app_backend.release()  # the held call answers 500: unavailable, nothing registered
    await wait_until(lambda: errors(c, "unavailable"), what="unavailable")
    assert server.hub.local_counts("presence-doc-5") == (0, 0)
    await c.send(type="subscribe", room="presence-doc-5", sub="t1")  # asked again: allowed now
    await c.settles_on(1, 1, room="presence-doc-5")
    assert (await c.next("presence", after=0))["members"] == {"ada": {"info": None}}

    # Gone while the backend was asked: the answer registers nothing.
    def slowly(body: dict[str, Any]) -> tuple[int, Any]:
        time.sleep(0.5)
        return 200, {"allow": True}

    app_backend.answer["/subscribe"] = slowly
    gone = await socket(server, clients, "bob")
    await gone.send(type="subscribe", room="private-doc-5", sub="t1")
    await wait_until(lambda: len(app_backend.calls_to("/subscribe")) == 3, what="bob's call")
    gone.close()
    await asyncio.sleep(1.0)
    assert server.hub.local_counts("private-doc-5") == (0, 0)
