"""``GET /sse/count/<slug>/``: the talk's one-room socket as a stream. A plain ``EventSource`` shows
the live count; message events carry ``id: <offset>:<epoch>``, and the ``Last-Event-ID`` an
EventSource sends when it reconnects replays what it missed, as ``?since=&epoch=`` does."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import jwt
import pytest

from support.clients import wait_until
from support.servers import Server, ServerFactory
from support.transports import PollClient, SseClient, request

pytestmark = pytest.mark.gen_test(timeout=60)

SECRET = "count-stream-secret-of-decent-length"


async def publish(server: Server, room: str, data: Any) -> dict[str, Any]:
    r = await request(f"{server.base_url}/api/rooms/{room}/messages", "POST", json.dumps(data),
                      {"Authorization": "Bearer tok"})
    assert r.status == 202, r.body
    return dict(r.json())


@pytest.fixture
def count_stream(streams: list[SseClient | PollClient]) -> Callable[..., Awaitable[SseClient]]:
    async def open_stream(server: Server, path: str, **headers: str) -> SseClient:
        client = await SseClient.open(server.base_url, path, headers)
        streams.append(client)
        return client

    return open_stream


CountStream = Callable[..., Awaitable[SseClient]]


async def test_a_plain_stream_shows_the_live_count_and_only_messages_carry_ids(
    server_factory: ServerFactory, count_stream: CountStream,
) -> None:
    server = await server_factory(publish_token="tok")
    a = await count_stream(server, "/sse/count/talk/")
    assert a.status == 200 and a.headers["content-type"] == "text/event-stream"
    assert a.headers["cache-control"] == "no-store" and a.headers["x-accel-buffering"] == "no"
    await a.settles_on(1)
    b = await count_stream(server, "/sse/count/talk/")
    await a.settles_on(2)
    await b.settles_on(2)
    first = await publish(server, "talk", {"text": "hi"})
    await publish(server, "talk", "again")
    await wait_until(lambda: len(a.of_type("message")) == 2, what="two messages")
    for event, frame in zip(a.events, a.frames):
        if frame["type"] == "message":
            assert event.id == f"{frame['offset']}:{frame['epoch']}"
            assert event.fields == ["id", "data"]
        else:
            assert event.id is None and event.fields == ["data"], frame
    assert a.of_type("message")[0]["offset"] == first["offset"]
    assert a.of_type("session") == [] and a.of_type("subscribed") == [], "the talk's client reads counts only"
    b.close()
    await a.settles_on(1)
    assert server.metric("rrr_open_sockets") == 1


async def test_last_event_id_replays_what_the_stream_missed(
    server_factory: ServerFactory, count_stream: CountStream,
) -> None:
    server = await server_factory(publish_token="tok")
    first = await count_stream(server, "/sse/count/replay/")
    await first.settles_on(1)
    await publish(server, "replay", 1)
    await first.next("message", after=0)
    last_id = next(e.id for e in reversed(first.events) if e.id)
    first.close()
    for n in (2, 3):
        await publish(server, "replay", n)

    # What an EventSource sends by itself when it reconnects; it wins over the URL's own since.
    again = await count_stream(server, "/sse/count/replay/?since=0&epoch=stale", **{"Last-Event-ID": last_id})
    await wait_until(lambda: len(again.of_type("message")) == 2, what="the two missed messages")
    assert [m["data"] for m in again.of_type("message")] == [2, 3]
    subscribed = await again.next("subscribed", after=0)
    assert subscribed["recovered"] is True
    assert [e.id for e in again.events if e.id] == [f"{m['offset']}:{m['epoch']}" for m in again.of_type("message")]

    by_query = await count_stream(server, f"/sse/count/replay/?since={last_id.split(':')[0]}"
                                  f"&epoch={last_id.split(':')[1]}")
    await wait_until(lambda: len(by_query.of_type("message")) == 2, what="the same two, by ?since=&epoch=")
    assert [m["data"] for m in by_query.of_type("message")] == [2, 3]

    bad = await count_stream(server, "/sse/count/replay/", **{"Last-Event-ID": "seven"})
    assert bad.status == 400 and bad.headers["cache-control"] == "no-store"


async def test_the_count_stream_follows_the_origin_rule_and_private_rooms_need_a_token(
    server_factory: ServerFactory, count_stream: CountStream,
) -> None:
    server = await server_factory(token_secret=SECRET)
    assert (await count_stream(server, "/sse/count/open/", Origin="https://evil.example")).status == 403
    assert (await count_stream(server, "/sse/count/private-x/")).status == 403
    now = time.time()
    grant = jwt.encode({"sub": "u", "iat": int(now), "exp": now + 600, "rooms": ["private-x"]}, SECRET,
                       algorithm="HS256")
    s = await count_stream(server, f"/sse/count/private-x/?token={grant}")
    assert s.status == 200
    await s.settles_on(1)
    assert (await count_stream(server, "/sse/count/bad:slug/")).status == 404
