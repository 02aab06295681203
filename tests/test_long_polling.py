"""``GET /poll/``, ``GET /poll/<session>/?seq=<n>`` and ``POST /poll/<session>/``: the protocol of
``/ws/`` for proxies that buffer streams (docs/guides/transports.md). Frames are numbered from 1 and
sent again until a later poll acknowledges them; a poll with nothing to take waits
``--poll-timeout``; a session nobody polls ends."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import jwt
import pytest

from support.clients import wait_until
from support.servers import Server, ServerFactory
from support.transports import PollClient, Response, SseClient, post, request

pytestmark = pytest.mark.gen_test(timeout=120)

SECRET = "poll-test-secret-of-a-decent-length"
ROOT = Path(__file__).resolve().parent.parent


async def publish(server: Server, room: str, data: Any) -> None:
    r = await request(f"{server.base_url}/api/rooms/{room}/messages", "POST", json.dumps(data),
                      {"Authorization": "Bearer tok"})
    assert r.status == 202, r.body


@pytest.fixture
def session(streams: list[SseClient | PollClient]) -> Callable[..., Awaitable[PollClient]]:
    """``await session(server, poll=True)``: a polling session (polling on its own unless ``poll``
    is False); it stops polling after the test."""

    async def open_session(server: Server, poll: bool = True, **headers: str) -> PollClient:
        client = await PollClient.open(server.base_url, headers, poll=poll)
        streams.append(client)
        return client

    return open_session


Session = Callable[..., Awaitable[PollClient]]


async def test_a_session_opens_at_once_and_its_frames_are_numbered_from_1(
    server_factory: ServerFactory, session: Session,
) -> None:
    server = await server_factory(publish_token="tok", poll_timeout=5)
    r = await request(f"{server.base_url}/poll/")
    assert r.status == 200 and r.header("cache-control") == "no-store" and r.header("x-accel-buffering") == "no"
    body = r.json()
    assert set(body) == {"session", "seq", "frames"} and (body["seq"], body["frames"]) == (0, [])
    assert re.match(r"^[A-Za-z0-9_-]{22,256}$", body["session"])
    sid = body["session"]

    assert (await post(server.base_url, "poll", sid, {"type": "subscribe", "room": "p1", "sub": "t"})).status == 202

    async def unacknowledged(until: str) -> Response:
        """Poll with nothing acknowledged (``seq=0``) until a frame of type ``until`` is among those owed."""
        deadline = time.monotonic() + 10
        while True:
            r = await request(f"{server.base_url}/poll/{sid}/?seq=0")
            if any(f["type"] == until for f in r.json()["frames"]) or time.monotonic() > deadline:
                return r
    await unacknowledged("subscribed")  # a message published before it is not the subscription's
    await publish(server, "p1", "hello")
    first = await unacknowledged("message")
    assert first.status == 200 and first.header("cache-control") == "no-store"
    batch = first.json()
    types = [f["type"] for f in batch["frames"]]
    assert types[0] == "subscribed" and "message" in types and "connection_message" in types
    assert batch["seq"] == len(batch["frames"]), "numbered from 1: the last one's number is how many came"
    # The frames are the frame JSON values themselves, as on /ws/.
    message = next(f for f in batch["frames"] if f["type"] == "message")
    assert message == {"type": "message", "room": "p1", "offset": 1, "epoch": message["epoch"], "data": "hello"}


async def test_an_empty_poll_waits_the_poll_timeout_and_a_frame_is_answered_at_once(
    server_factory: ServerFactory, session: Session,
) -> None:
    server = await server_factory(publish_token="tok", poll_timeout=1.5)
    p = await session(server, poll=False)
    started = time.monotonic()
    empty = await p.poll_once()
    waited = time.monotonic() - started
    assert empty.status == 200 and empty.json() == {"seq": 0, "frames": []}
    assert 1.5 <= waited < 2.5, f"answered after {waited:.2f} s, not after --poll-timeout (1.5 s)"

    waiting = asyncio.ensure_future(p.poll_once())
    await asyncio.sleep(0.5)
    assert not waiting.done()
    sent = time.monotonic()
    assert (await p.send(type="ping")).status == 202
    answer = await waiting
    assert time.monotonic() - sent < 0.5
    assert answer.json() == {"seq": 1, "frames": [{"type": "pong"}]}


async def test_frames_not_acknowledged_are_sent_again_with_their_numbers(
    server_factory: ServerFactory, session: Session,
) -> None:
    """A lost answer loses nothing: the next poll with the same seq gets the same frames again."""
    server = await server_factory(poll_timeout=5)
    p = await session(server, poll=False)
    for _ in range(3):
        await p.send(type="ping")
    first = (await p.poll_once(seq=0)).json()
    assert first == {"seq": 3, "frames": [{"type": "pong"}] * 3}
    again = (await p.poll_once(seq=0)).json()  # the first answer was "lost"
    assert again == first
    await p.send(type="ping")
    later = (await p.poll_once(seq=2)).json()  # took up to 2: 3 and the new 4 come
    assert later == {"seq": 4, "frames": [{"type": "pong"}] * 2}
    ahead = await p.poll_once(seq=9)
    assert ahead.status == 400 and "past" in ahead.json()["error"]
    for bad in ("", "-1", "x", "1.5", "²"):
        r = await request(f"{server.base_url}/poll/{p.session}/?seq={bad}")
        assert r.status == 400, bad
    assert (await request(f"{server.base_url}/poll/{p.session}/")).status == 400


async def test_a_newer_poll_replaces_an_older_one(server_factory: ServerFactory, session: Session) -> None:
    server = await server_factory(poll_timeout=10)
    p = await session(server, poll=False)
    older = asyncio.ensure_future(p.poll_once(seq=0))
    await asyncio.sleep(0.3)
    newer = asyncio.ensure_future(p.poll_once(seq=0))
    answered = await asyncio.wait_for(older, 3)  # long before the 10 s
    assert answered.json() == {"seq": 0, "frames": []}
    assert not newer.done()
    await p.send(type="ping")
    assert (await asyncio.wait_for(newer, 3)).json() == {"seq": 1, "frames": [{"type": "pong"}]}


async def test_a_polling_session_is_a_socket_and_hears_what_the_room_hears(
    server_factory: ServerFactory, session: Session,
) -> None:
    server = await server_factory(publish_token="tok", poll_timeout=5)
    a = await session(server)
    b = await session(server)
    await a.send(type="hello", transport="leader")
    for c, tab in ((a, "t1"), (b, "t1"), (b, "t2")):
        assert (await c.send(type="subscribe", room="pr", sub=tab)).status == 202
    await a.settles_on(2, 3)
    await b.settles_on(2, 3)
    for n in range(5):
        await publish(server, "pr", n)
    await wait_until(lambda: len(a.of_type("message")) == 5 and len(b.of_type("message")) == 5, what="5 messages")
    assert [m["data"] for m in a.of_type("message")] == list(range(5))
    assert server.metric("rrr_open_sockets") == 2
    assert server.metric("rrr_open_sessions", {"transport": "poll"}) == 2
    assert server.metric("rrr_sockets_by_transport", {"transport": "leader"}) == 1
    assert (await b.send(type="unsubscribe", room="pr", sub="t2")).status == 202
    await a.settles_on(2, 2)


async def test_a_session_nobody_polls_ends_after_the_poll_timeout_and_10_s(
    server_factory: ServerFactory, session: Session,
) -> None:
    server = await server_factory(poll_timeout=1)
    p = await session(server)
    watcher = await session(server)
    await p.send(type="subscribe", room="abandoned", sub="t")
    await watcher.send(type="subscribe", room="abandoned", sub="w")
    await watcher.settles_on(2, 2)
    p.close()  # the tab closed: no more polls
    stopped = time.monotonic()
    await watcher.settles_on(1, 1, timeout=20)
    gone_after = time.monotonic() - stopped
    assert 10 <= gone_after < 14, f"the session ended {gone_after:.1f} s after its last poll, not 1 + 10 s"
    assert (await p.poll_once()).status == 404
    assert (await p.send(type="ping")).status == 404
    assert server.metric("rrr_open_sessions", {"transport": "poll"}) == 1


async def test_past_the_send_buffer_unacknowledged_frames_go_and_close_1008_comes_last(
    server_factory: ServerFactory, session: Session,
) -> None:
    server = await server_factory(publish_token="tok", poll_timeout=5, send_buffer=20_000)
    p = await session(server, poll=False)
    await p.send(type="subscribe", room="heavy", sub="t")
    taken = (await p.poll_once()).json()
    p.take(taken)
    for n in range(6):  # never acknowledged: 6 x 5 KB > 20 KB
        await publish(server, "heavy", {"n": n, "pad": "x" * 5000})
    await wait_until(lambda: server.metric("rrr_slow_client_disconnects_total") == 1, what="the cut")
    last = (await p.poll_once()).json()
    assert last["frames"] == [{"type": "close", "code": 1008, "reason": "over 20000 bytes not acknowledged"}]
    assert server.metric("rrr_open_sockets") == 0
    p.take(last)
    assert (await p.poll_once()).status == 404, "its close frame was taken: the session is gone"


async def test_sign_out_and_drain_end_a_polling_session_with_its_close_frame(
    server_factory: ServerFactory, session: Session,
) -> None:
    server = await server_factory(token_secret=SECRET, api_token="tok", poll_timeout=5)
    now = time.time()
    grant = jwt.encode({"sub": "bo", "iat": int(now), "exp": now + 600}, SECRET, algorithm="HS256")
    signed_out, drained = await session(server, poll=False), await session(server)
    await signed_out.send(type="auth", token=grant)
    signed_out.take((await signed_out.poll_once()).json())
    assert signed_out.of_type("authenticated")
    r = await request(f"{server.base_url}/api/users/bo/disconnect", "POST", "", {"Authorization": "Bearer tok"})
    assert r.status == 202
    # Ended at once: no longer a connection, though it lingers until its close frame is taken.
    await wait_until(lambda: server.metric("rrr_open_sessions", {"transport": "poll"}) == 1, what="it ended")
    assert server.metric("rrr_open_sockets") == 1
    last = (await signed_out.poll_once()).json()
    assert last["frames"][-1] == {"type": "close", "code": 4001, "reason": "signed out"}
    signed_out.take(last)
    assert (await signed_out.poll_once()).status == 404, "gone once its close frame was taken"

    await server.service.shutdown()
    await drained.next("close", after=0)
    assert drained.frames[-1] == {"type": "close", "code": 1001, "reason": "server shutting down"}
    # A session opened while the server drains learns it at once, as a socket would.
    opened = (await request(f"{server.base_url}/poll/")).json()
    assert opened["seq"] == 1
    assert opened["frames"] == [{"type": "close", "code": 1001, "reason": "server shutting down"}]


async def test_posts_to_a_polling_session_follow_the_same_rules(
    server_factory: ServerFactory, session: Session,
) -> None:
    server = await server_factory(poll_timeout=5)
    p = await session(server, poll=False)
    assert (await post(server.base_url, "poll", p.session, "[]")).status == 400
    assert (await post(server.base_url, "poll", p.session, {"type": "ping"}, {"Content-Type": "text/plain"})
            ).status == 415
    assert (await post(server.base_url, "poll", p.session, {"type": "ping"}, {"Origin": "https://evil.example"})
            ).status == 403
    assert (await post(server.base_url, "sse", p.session, {"type": "ping"})).status == 404  # not an SSE session
    unknown = await request(f"{server.base_url}/poll/{p.session[:-3]}xyz/?seq=0")
    assert (unknown.status, unknown.json()["error"]) == (404, "unknown session")
    assert (await request(f"{server.base_url}/poll/elsewhere/x/")).status == 404
    assert (await request(f"{server.base_url}/sse/x/y/")).header("cache-control") == "no-store"


async def test_sessions_are_capped_per_process(server_factory: ServerFactory, session: Session) -> None:
    """At most --max-connections sessions (a polling one holds no connection between its polls)."""
    server = await server_factory(max_connections=3, poll_timeout=5)
    for _ in range(3):
        await session(server, poll=False)
    refused = await request(f"{server.base_url}/poll/")
    assert refused.status == 503 and refused.header("retry-after") == "1"
    assert "maximum of 3 sessions" in refused.json()["error"]
    assert (await SseClient.open(server.base_url)).status == 503


def test_a_poll_timeout_the_library_cannot_wait_for_stops_rrr_at_start(tmp_path: Path) -> None:
    for value in ("60", "0"):
        r = subprocess.run([sys.executable, "app.py", f"--poll-timeout={value}", "--port=0"], cwd=ROOT,
                           capture_output=True, text=True, timeout=30, env={**os.environ, "RRR_REDIS_URL": ""})
        assert r.returncode != 0
        assert "rrr: --poll-timeout must be above 0 and under 60 s" in r.stderr, r.stderr[-500:]
