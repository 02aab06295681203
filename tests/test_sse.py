"""``GET /sse/`` and ``POST /sse/<session>/``: the multiplexed protocol of ``/ws/`` over server-sent
events, for networks that refuse WebSockets (docs/guides/transports.md). A session is a socket to the
core: counts, caps, tokens, sign-outs, drains and history behave as on ``/ws/``."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import re
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import jwt
import pytest

from handlers.transports import _Streaming
from support.clients import wait_until
from support.servers import Server, ServerFactory
from support.transports import PollClient, SseClient, post, request

pytestmark = pytest.mark.gen_test(timeout=90)

SECRET = "sse-test-secret-of-a-decent-length"
SESSION_RE = re.compile(r"^[A-Za-z0-9_-]{22,256}$")


def token(sub: str, **claims: Any) -> str:
    now = time.time()
    return jwt.encode({"sub": sub, "iat": int(now), "exp": now + 600, **claims}, SECRET, algorithm="HS256")


async def publish(server: Server, room: str, data: Any, key: str = "tok") -> None:
    r = await request(f"{server.base_url}/api/rooms/{room}/messages", "POST", json.dumps(data),
                      {"Authorization": f"Bearer {key}"})
    assert r.status == 202, r.body


@pytest.fixture
def stream(streams: list[SseClient | PollClient]) -> Callable[..., Awaitable[SseClient]]:
    """``await stream(server, path="/sse/", **headers)``: an open SSE stream, closed after the test."""

    async def open_stream(server: Server, path: str = "/sse/", **headers: str) -> SseClient:
        client = await SseClient.open(server.base_url, path, headers)
        streams.append(client)
        return await client.started()

    return open_stream


Stream = Callable[..., Awaitable[SseClient]]


async def test_a_stream_starts_with_its_session_and_carries_each_frame_as_a_data_event(
    server_factory: ServerFactory, stream: Stream,
) -> None:
    server = await server_factory(publish_token="tok")
    s = await stream(server)
    assert s.status == 200
    assert s.headers["content-type"] == "text/event-stream"
    assert s.headers["cache-control"] == "no-store" and s.headers["x-accel-buffering"] == "no"
    assert s.frames[0] == {"type": "session", "session": s.session}
    assert SESSION_RE.match(s.session)
    assert len(s.session) >= 8 + 22, "the owner's tag, then 128 random bits"

    for frame in ({"type": "hello", "transport": "sharedworker"}, {"type": "subscribe", "room": "sse1", "sub": "t1"}):
        r = await s.send(frame)
        assert (r.status, r.body) == (202, b"")
    subscribed = await s.next("subscribed", after=0)
    assert (subscribed["room"], subscribed["sub"], subscribed["recovered"]) == ("sse1", "t1", False)
    await s.settles_on(1, 1)
    await publish(server, "sse1", {"n": 1})
    message = await s.next("message", after=0)
    assert message["data"] == {"n": 1} and message["offset"] == 1
    # Every event is data lines alone: EventSource.onmessage sees them all.
    assert all(e.fields == ["data"] for e in s.events)
    assert all(line.startswith("data: ") for line in s.raw.split("\n") if line)
    assert server.metric("rrr_sockets_by_transport", {"transport": "sharedworker"}) == 1


async def test_ping_is_answered_with_pong_on_the_stream_and_no_log_line_shows_the_session(
    server_factory: ServerFactory, stream: Stream, caplog: pytest.LogCaptureFixture,
) -> None:
    server = await server_factory()
    with caplog.at_level(logging.INFO, logger="tornado.access"):
        s = await stream(server)
        assert (await s.send(type="ping")).status == 202
        await s.next("pong", after=1)
        assert (await s.send("junk")).status == 400  # refusals are logged too
    lines = "\n".join(r.getMessage() for r in caplog.records)
    assert f"202 POST /sse/{s.session[:8]}.../" in lines and "400 POST" in lines
    assert s.session not in lines


async def test_a_message_whose_json_holds_line_breaks_arrives_as_the_same_json(
    server_factory: ServerFactory, stream: Stream,
) -> None:
    """SSE ends a line at CR or LF: such a frame goes as several data lines, which join to the same JSON."""
    server = await server_factory(publish_token="tok")
    s = await stream(server)
    await s.send(type="subscribe", room="lines", sub="t")
    await s.next("subscribed", after=0)
    r = await request(f"{server.base_url}/api/rooms/lines/messages", "POST", '{"a":\r\n[1,\r2,\n3]}',
                      {"Authorization": "Bearer tok"})
    assert r.status == 202
    message = await s.next("message", after=0)
    assert message["data"] == {"a": [1, 2, 3]}
    assert s.events[-1].fields == ["data", "data", "data", "data"]


async def test_a_silent_stream_gets_a_keepalive_comment_each_interval_and_a_busy_one_none(
    server_factory: ServerFactory, stream: Stream,
) -> None:
    server = await server_factory(sse_keepalive=0.5)
    s = await stream(server)
    opened = time.monotonic()
    await wait_until(lambda: len(s.comments) >= 3, what="three keepalive comments")
    assert all(text == ": keepalive" for _, text in s.comments)
    times = [t for t, _ in s.comments[:3]]
    assert times[0] - opened < 1.0
    # Between comments, as this client got them: the server spaces them 0.5 s apart, and a late
    # delivery of one (a loaded machine) shortens the gap after it by as much.
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert all(0.4 <= gap < 1.0 for gap in gaps), gaps
    # Frames every 0.2 s: the stream is never silent for 0.5 s, so no comment goes out.
    before = len(s.comments)
    for _ in range(10):
        await s.send(type="ping")
        await asyncio.sleep(0.2)
    assert len(s.comments) == before, "a keepalive went out on a stream that was not silent"


async def test_a_frame_post_is_202_when_taken_and_refused_alone_otherwise(
    server_factory: ServerFactory, stream: Stream,
) -> None:
    """400 not one JSON frame, 415 another Content-Type, 413 over --max-message-size, 404 a session
    gone or never made; a refused POST changes nothing (the next subscribe is the first one)."""
    server = await server_factory(max_message_size=1000)
    s = await stream(server)
    base, sid = server.base_url, s.session
    subscribe = {"type": "subscribe", "room": "refused", "sub": "t"}
    answers = {
        "not JSON": await post(base, "sse", sid, "{subscribe"),
        "two frames": await post(base, "sse", sid, json.dumps(subscribe) * 2),
        "a list of frames": await post(base, "sse", sid, [subscribe]),
        "a string": await post(base, "sse", sid, '"subscribe"'),
        "not UTF-8": await post(base, "sse", sid, b'{"type": "\xff"}'),
        "text/plain": await post(base, "sse", sid, subscribe, {"Content-Type": "text/plain"}),
        "no Content-Type": await request(f"{base}/sse/{sid}/", "POST", json.dumps(subscribe)),
        "over the size": await post(base, "sse", sid, {**subscribe, "pad": "x" * 1000}),
    }
    statuses = {name: r.status for name, r in answers.items()}
    assert statuses == {
        "not JSON": 400, "two frames": 400, "a list of frames": 400, "a string": 400, "not UTF-8": 400,
        "text/plain": 415, "no Content-Type": 415, "over the size": 413,
    }
    for name, r in answers.items():
        assert r.header("cache-control") == "no-store" and r.header("x-accel-buffering") == "no", name
        assert isinstance(r.json()["error"], str), name
    assert s.of_type("subscribed") == [] and server.metric("rrr_subscriptions") == 0

    assert (await post(base, "sse", sid, subscribe, {"Content-Type": "application/json; charset=utf-8"})).status == 202
    await s.next("subscribed", after=0)
    gone = await post(base, "sse", sid[:-4] + ("AAAA" if not sid.endswith("AAAA") else "BBBB"), subscribe)
    assert (gone.status, gone.json()["error"]) == (404, "unknown session")
    short = await post(base, "sse", "not-a-session", subscribe)
    assert (short.status, short.json()["error"]) == (404, "unknown session")
    as_poll = await post(base, "poll", sid, subscribe)  # an SSE session is no polling session
    assert as_poll.status == 404


async def test_over_the_frame_rate_a_post_is_429_with_retry_after_and_nothing_is_done(
    server_factory: ServerFactory, stream: Stream,
) -> None:
    server = await server_factory(message_rate=1, message_burst=2)
    s = await stream(server)
    assert [(await s.send(type="ping")).status for _ in range(2)] == [202, 202]
    refused = await s.send(type="subscribe", room="rated", sub="t")
    assert refused.status == 429 and refused.header("retry-after") == "1"
    assert refused.json()["error"].startswith("more frames than --message-rate allows")
    await asyncio.sleep(0.3)
    assert s.of_type("subscribed") == [] and s.of_type("error") == []
    assert server.metric("rrr_limited_total", {"limit": "message_rate"}) == 1
    await asyncio.sleep(float(refused.header("retry-after") or 1))
    assert (await s.send(type="subscribe", room="rated", sub="t")).status == 202  # the same frame, later
    await s.next("subscribed", after=0)
    assert s.frames[-1]["type"] != "close"


async def test_a_foreign_origin_gets_403_and_an_allowed_one_its_cors_answers(
    server_factory: ServerFactory, stream: Stream,
) -> None:
    """The WebSocket handshake's Origin rule; an allowed page of another origin (no credentials)
    may read the answers and send its JSON POSTs after their preflight."""
    server = await server_factory(allowed_origins="https://site.example")
    base = server.base_url
    foreign = {"Origin": "https://evil.example"}
    blocked = await SseClient.open(base, "/sse/", foreign)
    assert blocked.status == 403 and blocked.headers["cache-control"] == "no-store"
    assert (await request(f"{base}/poll/", headers=foreign)).status == 403
    assert (await request(f"{base}/sse/", "OPTIONS", headers={**foreign, "Access-Control-Request-Method": "POST"})
            ).status == 403

    same = await stream(server, Origin=base)  # same origin
    assert same.status == 200
    assert (await post(base, "sse", same.session, {"type": "ping"}, foreign)).status == 403
    assert (await post(base, "sse", same.session, {"type": "ping"}, {"Origin": base})).status == 202

    site = {"Origin": "https://site.example"}
    allowed = await stream(server, **site)
    assert allowed.headers["access-control-allow-origin"] == "https://site.example"
    preflight = await request(f"{base}/sse/{allowed.session}/", "OPTIONS", headers={
        **site, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"})
    assert preflight.status == 204
    assert preflight.header("access-control-allow-origin") == "https://site.example"
    assert "POST" in (preflight.header("access-control-allow-methods") or "")
    assert (preflight.header("access-control-allow-headers") or "").lower() == "content-type"
    assert preflight.header("cache-control") == "no-store"
    answered = await post(base, "sse", allowed.session, {"type": "ping"}, site)
    assert answered.status == 202 and answered.header("access-control-allow-origin") == "https://site.example"
    refused = await post(base, "sse", allowed.session, "junk", site)  # errors are readable too
    assert refused.status == 400 and refused.header("access-control-allow-origin") == "https://site.example"
    assert "Retry-After" in (refused.header("access-control-expose-headers") or "")
    assert "access-control-allow-credentials" not in refused.headers


async def test_the_session_ends_with_its_stream_and_counts_as_a_connection_until_then(
    server_factory: ServerFactory, stream: Stream,
) -> None:
    server = await server_factory()
    a = await stream(server)
    b = await stream(server)
    for s, tabs in ((a, ("t1", "t2")), (b, ("t1",))):
        for tab in tabs:
            assert (await s.send(type="subscribe", room="both", sub=tab)).status == 202
    await b.settles_on(2, 3)
    assert server.metric("rrr_open_sockets") == 2
    assert server.metric("rrr_open_sessions", {"transport": "sse"}) == 2
    a.close()
    await b.settles_on(1, 1)
    assert server.metric("rrr_open_sessions", {"transport": "sse"}) == 1
    assert (await post(server.base_url, "sse", a.session, {"type": "ping"})).status == 404


async def test_every_answer_under_sse_and_poll_says_no_store_and_no_buffering(server_factory: ServerFactory) -> None:
    """Refusals of every kind included: a foreign Host, a method, a path that is not a route."""
    server = await server_factory(allowed_hosts="rrr.example")
    base = server.base_url
    answers = {
        "foreign Host": await request(f"{base}/sse/"),
        "another method": await request(f"{base}/sse/", "PUT", "", {"Host": "rrr.example"}),
        "no such path": await request(f"{base}/poll/a/b/c", headers={"Host": "rrr.example"}),
        "a poll of nothing": await request(f"{base}/poll/{'A' * 30}/?seq=0", headers={"Host": "rrr.example"}),
    }
    assert {k: r.status for k, r in answers.items()} == {
        "foreign Host": 400, "another method": 405, "no such path": 404, "a poll of nothing": 404}
    for name, r in answers.items():
        assert (r.header("cache-control"), r.header("x-accel-buffering")) == ("no-store", "no"), name


async def test_caps_apply_to_sessions_as_to_sockets(server_factory: ServerFactory, stream: Stream) -> None:
    server = await server_factory(max_sockets_per_ip=2, max_tabs_per_room=1)
    s = await stream(server)
    await stream(server)
    refused = await SseClient.open(server.base_url, "/sse/")
    assert refused.status == 429 and refused.headers["retry-after"] == "10"
    assert (await request(f"{server.base_url}/poll/")).status == 429
    assert server.metric("rrr_limited_total", {"limit": "sockets_per_ip"}) == 2
    await s.send(type="subscribe", room="capped", sub="t1")
    await s.send(type="subscribe", room="capped", sub="t2")
    error = await s.next("error", after=0)
    assert (error["code"], error["room"], error["sub"]) == ("too_many_tabs", "capped", "t2")


async def test_tokens_presence_and_sign_out_end_the_stream_with_close_4001(
    server_factory: ServerFactory, stream: Stream,
) -> None:
    server = await server_factory(token_secret=SECRET, api_token="tok")
    s = await stream(server)
    await s.send(type="auth", token=token("ada", rooms=["presence-team"], info={"name": "Ada"}))
    assert (await s.next("authenticated", after=0))["user"] == "ada"
    await s.send(type="subscribe", room="presence-team", sub="t")
    listed = await s.next("presence", after=0)
    assert listed["members"] == {"ada": {"info": {"name": "Ada"}}}
    r = await request(f"{server.base_url}/api/users/ada/disconnect", "POST", "", {"Authorization": "Bearer tok"})
    assert r.status == 202
    await wait_until(lambda: s.ended.is_set(), what="the stream to end")
    assert s.frames[-1] == {"type": "close", "code": 4001, "reason": "signed out"}
    assert server.metric("rrr_open_sockets") == 0


async def test_a_draining_server_ends_the_stream_with_close_1001(server_factory: ServerFactory, stream: Stream) -> None:
    server = await server_factory()
    s = await stream(server)
    await s.send(type="subscribe", room="drain", sub="t")
    await s.next("subscribed", after=0)
    await server.service.shutdown()
    await wait_until(lambda: s.ended.is_set(), what="the stream to end")
    assert s.frames[-1] == {"type": "close", "code": 1001, "reason": "server shutting down"}


async def test_history_recovery_over_a_new_stream(server_factory: ServerFactory, stream: Stream) -> None:
    """What a stream missed between its end and the next comes back with since, as over /ws/."""
    server = await server_factory(publish_token="tok")
    first = await stream(server)
    await first.send(type="subscribe", room="recover", sub="t")
    await first.next("subscribed", after=0)  # the POST is answered before the subscription is made
    await publish(server, "recover", "one")
    seen = await first.next("message", after=0)
    first.close()
    await publish(server, "recover", "two")
    await publish(server, "recover", "three")
    second = await stream(server)
    await second.send(type="subscribe", room="recover", sub="t",
                      since={"offset": seen["offset"], "epoch": seen["epoch"]})
    await wait_until(lambda: len(second.of_type("message")) == 2, what="the two missed messages")
    assert [m["data"] for m in second.of_type("message")] == ["two", "three"]
    assert (await second.next("subscribed", after=0))["recovered"] is True


async def test_a_client_that_stops_reading_is_cut_off_past_the_send_buffer(server_factory: ServerFactory) -> None:
    server = await server_factory(publish_token="tok", send_buffer=64 * 1024)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(f"GET /sse/ HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    assert b" 200 " in head.split(b"\r\n")[0]
    first = (await reader.readuntil(b"\n\n")).decode()
    session = re.search(r'"session":"([^"]+)"', first).group(1)  # type: ignore[union-attr]
    subscribe = {"type": "subscribe", "room": "slow", "sub": "t"}
    assert (await post(server.base_url, "sse", session, subscribe)).status == 202
    await wait_until(lambda: server.metric("rrr_subscriptions") == 1, what="the subscription")
    # The client reads nothing more; the kernel's buffers fill, then ours.
    big = "x" * 16000
    for _ in range(400):
        await publish(server, "slow", big)
        if server.metric("rrr_slow_client_disconnects_total"):
            break
    await wait_until(lambda: server.metric("rrr_slow_client_disconnects_total") == 1, what="the cut")
    await wait_until(lambda: server.metric("rrr_open_sockets") == 0, what="the session gone")
    writer.close()


async def test_a_held_stream_keeps_no_table_of_its_requests_headers(
    server_factory: ServerFactory, stream: Stream,
) -> None:
    server = await server_factory(publish_token="tok")
    browser = {"Cookie": "session=" + "x" * 600, "User-Agent": "Mozilla/5.0 " + "y" * 120,
               "Accept-Language": "en-GB,en;q=0.9", "Cache-Control": "no-cache", "Pragma": "no-cache"}
    s = await stream(server, **browser)
    gc.collect()
    held = [h for h in gc.get_objects() if isinstance(h, _Streaming) and h.request.path == "/sse/"
            and not h._finished]
    assert len(held) == 1
    headers = held[0].request.headers
    tables = [sys.getsizeof(d) for d in vars(headers).values() if isinstance(d, dict)]
    assert len(headers) == 0 and tables and all(size == sys.getsizeof({}) for size in tables), (
        f"a held stream's emptied request headers keep tables: {tables} bytes")
    # Still a stream that works.
    assert (await s.send({"type": "subscribe", "room": "held", "sub": "s1"})).status == 202
    await s.settles_on(1, 1)
    await publish(server, "held", {"n": 1})
    assert (await s.next("message", after=0))["data"] == {"n": 1}
