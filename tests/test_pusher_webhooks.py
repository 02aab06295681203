"""Pusher's ``client_event`` and ``cache_miss`` webhooks, sent only when ``--webhook-events`` names
them, validated by the ``pusher`` Python SDK's ``validate_webhook``."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pusher
import pytest

from support.clients import wait_until
from support.pusher import PUSHER_APP_ID, PUSHER_KEY, PUSHER_OPTIONS, PUSHER_SECRET
from support.pusher_js import PusherJs
from support.servers import ServerFactory
from support.webhooks import Receiver

pytestmark = pytest.mark.gen_test(timeout=120)

Driver = Callable[..., Awaitable[PusherJs]]


def events(receiver: Receiver) -> list[dict[str, Any]]:
    sdk = pusher.Pusher(app_id=PUSHER_APP_ID, key=PUSHER_KEY, secret=PUSHER_SECRET)
    out: list[dict[str, Any]] = []
    for r in receiver.requests:
        payload = sdk.validate_webhook(r.headers["X-Pusher-Key"], r.headers["X-Pusher-Signature"], r.body)
        assert payload is not None
        out += payload["events"]
    return out


def named(receiver: Receiver, name: str) -> list[dict[str, Any]]:
    return [{k: v for k, v in e.items() if k not in ("id", "at_ms")} for e in events(receiver) if e["name"] == name]


async def test_client_events_and_cache_misses_are_sent_when_asked_for(
    server_factory: ServerFactory, pusher_js: Driver, receiver: Receiver,
) -> None:
    server = await server_factory(webhook_url=receiver.url, webhook_events="client_event,cache_miss",
                                  **PUSHER_OPTIONS)
    js = await pusher_js(server.port)
    ada = await js.connected("ada", user={"user_id": "ada", "user_info": {}})
    await js.connected("bob", user={"user_id": "bob", "user_info": {}})
    for who in ("ada", "bob"):
        await js.subscribed(who, "presence-doc")
    js.send(op="trigger", id="ada", channel="presence-doc", event="client-typing", data={"on": True})
    await js.event("bob", "presence-doc", "client-typing")
    await wait_until(lambda: named(receiver, "client_event"), what="the client_event webhook")
    assert named(receiver, "client_event") == [{
        "name": "client_event", "channel": "presence-doc", "event": "client-typing", "data": '{"on":true}',
        "socket_id": ada, "user_id": "ada",
    }]
    await js.subscribed("ada", "cache-prices")
    await js.event("ada", "cache-prices", "pusher:cache_miss")
    await wait_until(lambda: named(receiver, "cache_miss"), what="the cache_miss webhook")
    assert named(receiver, "cache_miss") == [{"name": "cache_miss", "channel": "cache-prices"}]
    assert {e["name"] for e in events(receiver)} == {"client_event", "cache_miss"}


async def test_by_default_neither_is_sent(server_factory: ServerFactory, pusher_js: Driver, receiver: Receiver) -> None:
    server = await server_factory(webhook_url=receiver.url, vacate_delay=0.2, **PUSHER_OPTIONS)
    js = await pusher_js(server.port)
    await js.connected("a")
    await js.connected("b")
    for who in ("a", "b"):
        await js.subscribed(who, "private-x")
    js.send(op="trigger", id="a", channel="private-x", event="client-n", data={})
    await js.event("b", "private-x", "client-n")
    await js.subscribed("a", "cache-y")
    await js.event("a", "cache-y", "pusher:cache_miss")
    await wait_until(lambda: {e["name"] for e in events(receiver)} >= {"channel_occupied"}, what="occupied webhooks")
    await asyncio.sleep(1.5)  # a direct event goes out within a second
    assert not named(receiver, "client_event") and not named(receiver, "cache_miss")
