"""Bulk deliveries (a replay, a whole member list) go out as the socket drains: a client that reads
gets all of it however much more than ``--send-buffer`` it is, in order, with live messages behind
it; a client that stops reading is still cut off, judged by its progress, not by what it is owed."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient

from support.clients import Client, connect, wait_until
from support.servers import Server, ServerFactory

pytestmark = pytest.mark.gen_test(timeout=120)

KEY = {"Authorization": "Bearer tok"}
PAD = "x" * 60_000  # a 60 KB message: 100 of them are 6 MB, the most history holds by default


async def publish(server: Server, room: str, i: int) -> dict[str, Any]:
    r = await AsyncHTTPClient().fetch(
        server.base_url + f"/api/rooms/{room}/messages", method="POST", body=json.dumps({"i": i, "pad": PAD}),
        headers=KEY,
    )
    answer: dict[str, Any] = json.loads(r.body)
    return answer


def numbers(c: Client, room: str) -> list[int]:
    return [f["data"]["i"] for f in c.of_type("message") if f["room"] == room]


def client_frame(text: str) -> bytes:
    """A masked text frame, as a browser sends it."""
    payload = text.encode()
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([0x81, 0x80 | n]) if n < 126 else bytes([0x81, 0x80 | 126]) + struct.pack("!H", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def stuck_client(port: int, *frames: dict[str, Any], small_window: bool = True) -> socket.socket:
    """A client that opens ``/ws/``, sends ``frames`` and then reads nothing more (with a small
    receive window, so the kernel takes little off the server's hands)."""
    s = socket.create_connection(("127.0.0.1", port))
    if small_window:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(
        f"GET /ws/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    assert b" 101 " in head.split(b"\r\n")[0]
    for frame in frames:
        s.sendall(client_frame(json.dumps(frame)))
    return s


async def history_of(server: Server, room: str, n: int) -> str:
    """Publish ``n`` 60 KB messages to ``room`` (numbered 1..n); returns its epoch."""
    epoch = ""
    for i in range(1, n + 1):
        epoch = (await publish(server, room, i))["epoch"]
    return epoch


async def test_a_replay_many_times_the_send_buffer_reaches_a_client_that_reads_it_all_in_order(
    server_factory: ServerFactory, clients: list[Client],
) -> None:
    """Before: the replay was one write, so 6 MB owed to a reading client counted as a slow client
    and it was cut after the first few messages (and again after each reconnect)."""
    server = await server_factory(api_token="tok", send_buffer=256 * 1024)
    epoch = await history_of(server, "big-replay", 100)
    c = await connect(server.ws_url("/ws/"))
    clients.append(c)
    await c.send(type="subscribe", room="big-replay", sub="tab", since={"offset": 0, "epoch": epoch})
    back = await c.next("subscribed", after=0)
    assert back["recovered"] is True and back["offset"] == 100
    await wait_until(lambda: len(numbers(c, "big-replay")) >= 100 or c.closed.is_set(), timeout=60,
                     what="the whole replay")
    assert not c.closed.is_set(), f"cut off after {len(numbers(c, 'big-replay'))} of 100 messages"
    assert numbers(c, "big-replay") == list(range(1, 101))
    assert all(f["sub"] == "tab" and f["data"]["pad"] == PAD for f in c.of_type("message"))
    assert server.metric("rrr_slow_client_disconnects_total") == 0
    # Live messages follow the replay, in order, on the same socket.
    await publish(server, "big-replay", 101)
    await wait_until(lambda: numbers(c, "big-replay")[-1:] == [101], what="the live message after the replay")
    assert numbers(c, "big-replay") == list(range(1, 102))


async def test_live_messages_published_during_a_replay_queue_behind_it(
    server_factory: ServerFactory, clients: list[Client],
) -> None:
    server = await server_factory(api_token="tok", send_buffer=256 * 1024)
    epoch = await history_of(server, "behind", 100)
    c = await connect(server.ws_url("/ws/"))
    clients.append(c)
    await c.send(type="subscribe", room="behind", sub="tab", since={"offset": 0, "epoch": epoch})
    await c.next("subscribed", after=0)
    for i in range(101, 121):  # while the replay is still on its way
        await publish(server, "behind", i)
    await wait_until(lambda: len(numbers(c, "behind")) >= 120 or c.closed.is_set(), timeout=60, what="120 messages")
    assert not c.closed.is_set(), f"cut off after {len(numbers(c, 'behind'))} of 120 messages"
    assert numbers(c, "behind") == list(range(1, 121))
    kinds = [f["type"] for f in c.frames if f.get("room") == "behind" and f["type"] in ("subscribed", "message")]
    assert kinds[0] == "subscribed"


async def test_a_client_that_stops_reading_is_still_cut_off_when_live_frames_pile_up_behind_its_replay(
    server_factory: ServerFactory, clients: list[Client],
) -> None:
    server = await server_factory(api_token="tok", send_buffer=256 * 1024)
    epoch = await history_of(server, "stuck", 100)
    watcher = await connect(server.ws_url("/ws/"))
    clients.append(watcher)
    await watcher.send(type="subscribe", room="stuck", sub="w")
    await watcher.next("subscribed", after=0)
    stuck = await asyncio.to_thread(
        stuck_client, server.port,
        {"type": "subscribe", "room": "stuck", "sub": "s", "since": {"offset": 0, "epoch": epoch}},
    )
    try:
        await watcher.settles_on(2, room="stuck")
        i = 100
        while not server.metric("rrr_slow_client_disconnects_total") and i < 150:
            i += 1
            await publish(server, "stuck", i)
        assert server.metric("rrr_slow_client_disconnects_total") == 1
        await watcher.settles_on(1, room="stuck")
        # The reading client got every live message the stuck one was owed: nothing lost.
        await wait_until(lambda: numbers(watcher, "stuck") == list(range(101, i + 1)), what="every live message")
    finally:
        stuck.close()


async def test_a_client_owed_a_replay_that_keeps_talking_but_never_reads_is_cut_off(
    server_factory: ServerFactory, clients: list[Client],
) -> None:
    """It answers nothing the keepalive could miss (it sends a frame every 0.1 s), yet its queue
    makes no progress through two ping intervals: cut, as a slow client."""
    server = await server_factory(api_token="tok", send_buffer=256 * 1024, ping_interval=0.5)
    epoch = await history_of(server, "talker", 100)
    stuck = await asyncio.to_thread(
        stuck_client, server.port,
        {"type": "subscribe", "room": "talker", "sub": "s", "since": {"offset": 0, "epoch": epoch}},
    )
    try:
        await wait_until(lambda: server.hub.local_counts("talker") == (1, 1), what="the stuck client subscribed")
        for _ in range(100):
            if server.metric("rrr_slow_client_disconnects_total"):
                break
            try:
                stuck.send(client_frame('{"type":"hello","transport":"websocket"}'))
            except OSError:
                break
            await asyncio.sleep(0.1)
        await wait_until(lambda: server.metric("rrr_slow_client_disconnects_total") == 1, what="cut as slow")
        await wait_until(lambda: server.hub.local_counts("talker") == (0, 0), what="unregistered")
        assert server.metric("rrr_ping_timeouts_total") == 0
    finally:
        stuck.close()


def text_frames(s: socket.socket, until: Any) -> list[dict[str, Any]]:
    """Read the server's text frames from ``s`` (pings skipped) until ``until(frame)`` is true."""
    s.settimeout(30)
    f = s.makefile("rb")
    out: list[dict[str, Any]] = []
    while True:
        b0, b1 = f.read(2)
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", f.read(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", f.read(8))
        payload = f.read(n)
        if b0 & 0x0F == 0x1:
            out.append(json.loads(payload))
            if until(out[-1]):
                return out


async def test_a_socket_owed_a_whole_history_of_replays_is_told_to_reload_the_next_one(
    server_factory: ServerFactory,
) -> None:
    """What a socket may be owed at once is bounded: one history's worth (``--history-size`` x
    ``--max-message-size``, 6.4 MB). A second replay that would pass it while the first still waits
    is not queued: its subscription gets ``recovered: false`` (reload), as for a trimmed history."""
    server = await server_factory(api_token="tok", send_buffer=256 * 1024)
    epoch = await history_of(server, "owed", 100)
    since = {"offset": 0, "epoch": epoch}
    stuck = await asyncio.to_thread(
        stuck_client, server.port, {"type": "subscribe", "room": "owed", "sub": "a", "since": since},
        {"type": "subscribe", "room": "owed", "sub": "b", "since": since}, small_window=False,
    )
    try:
        await wait_until(lambda: server.metric("rrr_history_resets_total") == 1, what="b told to reload")
        # Now it reads: the first replay whole, then the second subscription's answer.
        frames = await asyncio.to_thread(text_frames, stuck, lambda f: f.get("sub") == "b")
        got = [f for f in frames if f["type"] in ("subscribed", "message")]
        assert got[0] == {"type": "subscribed", "room": "owed", "sub": "a", "offset": 100, "epoch": epoch,
                          "recovered": True}
        assert [(f["sub"], f["data"]["i"]) for f in got[1:-1]] == [("a", i) for i in range(1, 101)]
        assert got[-1]["type"] == "subscribed" and got[-1]["recovered"] is False
        assert server.metric("rrr_slow_client_disconnects_total") == 0
    finally:
        stuck.close()
