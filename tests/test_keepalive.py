"""One ping timer per process keeps quiet sockets up and drops peers that stopped answering."""

import asyncio
import base64
import contextlib
import json
import os
import struct
from collections.abc import AsyncIterator

import pytest

from rrr.edge.keepalive import Keepalive
from support.clients import Client, connect, wait_until
from support.servers import Server, ServerFactory

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


async def watched_peer(
    server_factory: ServerFactory, clients: list[Client], room: str
) -> tuple[Server, Client, RawPeer]:
    """A server pinging every 0.3 s, a raw peer in ``room``, and a normal client watching the count."""
    server = await server_factory(ping_interval=0.3)
    watcher = await connect(server.ws_url(f"/ws/count/{room}/"))
    clients.append(watcher)
    peer = await RawPeer.open(server.port, f"/ws/count/{room}/")
    await watcher.settles_on(2)
    return server, watcher, peer


@pytest.mark.parametrize("answer", ["pong", "message"])
async def test_quiet_peers_that_answer_stay_connected_and_counted(
    server_factory: ServerFactory, clients: list[Client], answer: str
) -> None:
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


async def test_a_peer_that_stops_answering_is_closed_and_leaves_the_count(
    server_factory: ServerFactory, clients: list[Client]
) -> None:
    server, watcher, peer = await watched_peer(server_factory, clients, "silent")
    try:
        seen: list[tuple[int, bytes]] = []
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


async def test_ping_interval_zero_turns_pings_off(server_factory: ServerFactory, clients: list[Client]) -> None:
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


class FakeSocket:
    """Stands in for a handler only to count what the Keepalive asks of it."""

    def __init__(self, fail: str = "") -> None:
        self.pings = 0
        self.dropped = False
        self.fail = fail

    def send_ping(self) -> None:
        if self.fail == "ping":
            raise OSError("ping failed")
        self.pings += 1

    def drop(self, reason: str) -> bool:
        if self.fail == "drop":
            raise OSError("drop failed")
        self.dropped = True
        return True


@contextlib.asynccontextmanager
async def answering(ka: Keepalive, socks: list[FakeSocket]) -> AsyncIterator[None]:
    """Peers that answer every 10 ms, far more often than the 0.2 s rounds ping them."""

    async def answer() -> None:
        while True:
            for sock in socks:
                ka.heard(sock)
            await asyncio.sleep(0.01)

    task = asyncio.ensure_future(answer())
    try:
        yield
    finally:
        task.cancel()


async def test_every_socket_is_pinged_across_slices_and_the_silent_are_dropped() -> None:
    ka = Keepalive(0.2, slices=4)
    alive, silent = [FakeSocket() for _ in range(5)], [FakeSocket() for _ in range(3)]
    for sock in alive + silent:
        ka.add(sock)
    async with answering(ka, alive):
        await wait_until(lambda: all(sock.dropped for sock in silent), what="the silent sockets dropped")
        await wait_until(lambda: all(sock.pings >= 3 for sock in alive), what="three rounds of pings")
    assert not any(sock.dropped for sock in alive)
    assert len(ka) == 5


async def test_a_socket_that_raises_does_not_stop_the_rounds_for_the_others() -> None:
    timeouts = []
    ka = Keepalive(0.2, on_timeout=lambda: timeouts.append(1), slices=4)
    bad_ping, bad_drop, good = FakeSocket("ping"), FakeSocket("drop"), FakeSocket()
    for sock in (bad_ping, bad_drop, good):
        ka.add(sock)
    async with answering(ka, [good]):
        await wait_until(lambda: good.pings >= 4, what="rounds to go on past the failing sockets")
    assert bad_ping.dropped, "a socket whose ping failed never answered, so it is dropped"
    assert len(ka) == 1 and ka.running
    assert timeouts == [1]  # bad_drop's failed drop is logged, not counted


async def test_the_timer_stops_with_the_last_socket_and_starts_with_the_next() -> None:
    ka = Keepalive(0.2, slices=4)
    sock = FakeSocket()
    ka.add(sock)
    assert ka.running
    await wait_until(lambda: sock.dropped, what="the silent socket dropped")
    await wait_until(lambda: not ka.running, what="the timer to stop")
    ka.add(FakeSocket())
    assert ka.running


async def test_pings_are_spread_over_the_interval_not_sent_all_at_once() -> None:
    ka = Keepalive(1.0, slices=10)
    socks = [FakeSocket() for _ in range(1000)]
    for sock in socks:
        ka.add(sock)
    async with answering(ka, socks):
        await wait_until(lambda: any(sock.pings for sock in socks), what="the first tick")
        first = sum(1 for sock in socks if sock.pings)
        # One tick visits one slice: about a tenth, never all (objects of one size must not share a slice).
        assert 30 <= first <= 250, first
        await wait_until(lambda: all(sock.pings for sock in socks), timeout=5, what="every socket within an interval")
