"""One ping timer per process keeps quiet sockets up and drops peers that stopped answering."""

import asyncio
import base64
import json
import os
import struct

import pytest

from conftest import connect, wait_until

pytestmark = pytest.mark.gen_test(timeout=60)

PING, PONG, TEXT, CLOSE = 0x9, 0xA, 0x1, 0x8


class RawPeer:
    """A WebSocket client written by hand, so the test decides whether pings get answers."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, path: str) -> "RawPeer":
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        assert b" 101 " in head.split(b"\r\n")[0]
        return cls(reader, writer)

    async def frame(self) -> tuple[int, bytes]:
        """The next server frame as (opcode, payload); server frames are never masked."""
        b0, b1 = await self.reader.readexactly(2)
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
        return b0 & 0x0F, await self.reader.readexactly(n)

    def send(self, opcode: int, payload: bytes = b"") -> None:
        assert len(payload) < 126
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.writer.write(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked)

    def close(self) -> None:
        self.writer.close()


async def watched_peer(server_factory, clients, room):
    """A server pinging every 0.3 s, a raw peer in ``room``, and a normal client watching the count."""
    server = await server_factory(ping_interval=0.3)
    watcher = await connect(server.ws_url(f"/ws/count/{room}/"))
    clients.append(watcher)
    peer = await RawPeer.open(server.port, f"/ws/count/{room}/")
    await watcher.settles_on(2)
    return server, watcher, peer


@pytest.mark.parametrize("answer", ["pong", "message"])
async def test_quiet_peers_that_answer_stay_connected_and_counted(server_factory, clients, answer):
    server, watcher, peer = await watched_peer(server_factory, clients, "quiet")
    try:
        pings = 0
        while pings < 6:  # six rounds: far past the two it takes to drop a silent peer
            opcode, _ = await asyncio.wait_for(peer.frame(), 10)
            assert opcode != CLOSE, "a peer that answers was closed"
            if opcode == PING:
                pings += 1
                if answer == "pong":
                    peer.send(PONG)
                else:
                    peer.send(TEXT, json.dumps({"type": "ping"}).encode())
        assert server.metric("rrr_ping_timeouts_total") == 0
        assert server.metric("rrr_open_sockets") == 2
        await watcher.settles_on(2)
        # One timer for the process, not Tornado's ping Task per socket.
        assert not [t for t in asyncio.all_tasks() if "periodic_ping" in repr(t.get_coro())]
    finally:
        peer.close()


async def test_a_peer_that_stops_answering_is_closed_and_leaves_the_count(server_factory, clients):
    server, watcher, peer = await watched_peer(server_factory, clients, "silent")
    try:
        seen = []
        while not seen or seen[-1][0] != CLOSE:
            seen.append(await asyncio.wait_for(peer.frame(), 10))
        assert PING in [op for op, _ in seen]
        code, reason = struct.unpack("!H", seen[-1][1][:2])[0], seen[-1][1][2:]
        assert (code, reason) == (1000, b"ping timed out")
        peer.send(CLOSE, seen[-1][1][:2])
        await watcher.settles_on(1)
        await wait_until(lambda: server.metric("rrr_open_sockets") == 1, what="the silent socket to go")
        assert server.metric("rrr_ping_timeouts_total") == 1
        # The watcher's client answers pings on its own, so it was never in danger.
        assert not watcher.closed.is_set()
    finally:
        peer.close()


async def test_ping_interval_zero_turns_pings_off(server_factory, clients):
    server = await server_factory(ping_interval=0)
    peer = await RawPeer.open(server.port, "/ws/count/nopings/")
    try:
        deadline = asyncio.get_running_loop().time() + 1.5
        while (left := deadline - asyncio.get_running_loop().time()) > 0:
            try:
                opcode, _ = await asyncio.wait_for(peer.frame(), left)
            except asyncio.TimeoutError:
                break
            assert opcode == TEXT, f"unexpected opcode {opcode:#x} with pings off"
        assert server.metric("rrr_open_sockets") == 1
    finally:
        peer.close()
