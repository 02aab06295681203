"""Bad input gets a clear error and loses nothing; the process never crashes from what a client sends."""

import asyncio
import base64
import json
import os
import socket

import pytest
import redis
from tornado.httpclient import HTTPClientError

from support.clients import Client, connect, wait_until
from support.servers import ServerFactory

pytestmark = pytest.mark.gen_test(timeout=60)


async def test_foreign_origin_is_refused_at_the_handshake(server_factory: ServerFactory) -> None:
    server = await server_factory()
    for path in ("/ws/", "/ws/count/abc/"):
        with pytest.raises(HTTPClientError) as e:
            await connect(server.ws_url(path), origin="http://evil.example")
        assert e.value.code == 403


async def test_same_origin_and_allow_listed_origins_are_accepted(
    server_factory: ServerFactory, clients: list[Client]
) -> None:
    server = await server_factory(allowed_origins="https://app.example")
    clients.append(await connect(server.ws_url("/ws/"), origin=server.base_url))
    clients.append(await connect(server.ws_url("/ws/"), origin="https://app.example"))


async def test_bad_frames_get_error_replies_and_the_socket_stays_up(
    server_factory: ServerFactory, clients: list[Client]
) -> None:
    server = await server_factory()
    c = await connect(server.ws_url("/ws/"))
    clients.append(c)
    await c.send(type="subscribe", room="abc", sub="t")
    await c.settles_on(1, 1)
    for frame in ("not json", "[]", '{"type":"dance"}', '{"type":"subscribe","room":"bad room","sub":"1"}'):
        await c.conn.write_message(frame)
    await wait_until(lambda: len(c.of_type("error")) == 4, what="four error replies")
    assert [e["code"] for e in c.of_type("error")] == ["bad_json", "bad_message", "unknown_type", "bad_room"]
    await c.send(type="ping")
    await c.next("pong", after=0)
    assert c.last_count() == (1, 1)


async def test_binary_frames_close_with_1003(server_factory: ServerFactory) -> None:
    server = await server_factory()
    c = await connect(server.ws_url("/ws/"))
    await c.conn.write_message(b"\x00\x01", binary=True)
    await asyncio.wait_for(c.closed.wait(), 10)
    assert c.close_code == 1003


async def test_oversized_frames_close_with_1009(server_factory: ServerFactory, clients: list[Client]) -> None:
    server = await server_factory(max_message_size=1024)
    c = await connect(server.ws_url("/ws/"))
    other = await connect(server.ws_url("/ws/count/abc/"))
    clients.append(other)
    await c.send(type="subscribe", room="abc", sub="t")
    await other.settles_on(2)
    await c.conn.write_message(json.dumps({"type": "publish", "room": "abc", "data": "x" * 5000}))
    await asyncio.wait_for(c.closed.wait(), 10)
    assert c.close_code == 1009
    await other.settles_on(1)


def _raw_handshake(port: int, path: str) -> socket.socket:
    """A client that completes the upgrade and then never reads another byte."""
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    assert b" 101 " in head.split(b"\r\n")[0]
    return s


async def test_a_client_that_stops_reading_is_cut_off_and_unregistered(
    server_factory: ServerFactory, clients: list[Client]
) -> None:
    server = await server_factory(send_buffer=256 * 1024, publish_token="tok")
    watcher = await connect(server.ws_url("/ws/count/slow/"))
    clients.append(watcher)
    stuck = await asyncio.to_thread(_raw_handshake, server.port, "/ws/count/slow/")
    try:
        await watcher.settles_on(2)
        chunk = json.dumps("x" * 60000)
        # Publish straight into the core, as Redis would, until the stuck socket overflows.
        for _ in range(400):
            server.service.events.raw_message("slow", chunk)
            if server.metric("rrr_slow_client_disconnects_total"):
                break
            await asyncio.sleep(0)
        assert server.metric("rrr_slow_client_disconnects_total") == 1
        await watcher.settles_on(1)
        assert server.metric("rrr_open_sockets") == 1
        # The reading client got every message the stuck one blocked on: nothing lost.
        await wait_until(lambda: len(watcher.of_type("message")) >= 1)
    finally:
        stuck.close()


async def test_the_server_keeps_serving_after_abuse(server_factory: ServerFactory, clients: list[Client]) -> None:
    server = await server_factory(max_message_size=2048)
    for frame in (b"\xff" * 10, "{" * 3000, '{"type":"subscribe","room":"' + "x" * 100 + '","sub":1}'):
        c = await connect(server.ws_url("/ws/"))
        await c.conn.write_message(frame, binary=isinstance(frame, bytes))
        await asyncio.sleep(0.05)
        c.close()
    ok = await connect(server.ws_url("/ws/count/after/"))
    clients.append(ok)
    await ok.settles_on(1)


async def test_a_deeply_nested_redis_payload_does_not_disturb_the_subscriber(
    server_factory: ServerFactory, clients: list[Client], rclient: redis.Redis
) -> None:
    server = await server_factory()
    c = await connect(server.ws_url("/ws/count/deep/"))
    clients.append(c)
    await c.settles_on(1)
    rclient.publish("rrr:room:deep", "[" * 100000 + "]" * 100000)
    rclient.publish("rrr:room:deep", '"after"')
    assert (await c.next("message", after=0))["data"] == "after"
    assert server.metric("rrr_malformed_payloads_total") == 1
    assert server.metric("rrr_redis_reconnects_total") == 0


async def test_unhashable_message_types_get_an_error_reply(
    server_factory: ServerFactory, clients: list[Client]
) -> None:
    server = await server_factory()
    c = await connect(server.ws_url("/ws/"))
    clients.append(c)
    await c.conn.write_message('{"type":[]}')
    assert (await c.next("error", after=0))["code"] == "unknown_type"
    await c.send(type="ping")
    await c.next("pong", after=0)
