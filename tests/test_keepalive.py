"""One ping timer per process keeps quiet sockets up and drops peers that stopped answering, and pings
no socket heard from within the interval (issue 25: a talking socket costs no ping, a dead one still
goes within two intervals)."""

import asyncio
import base64
import contextlib
import gc
import json
import os
import struct
import sys
from collections.abc import AsyncIterator
from types import FrameType
from typing import Any

import pytest

from handlers.sockets import RelaySocket
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
    """A server pinging every 0.6 s (a pong has 0.3 s), a raw peer in ``room``, and a client watching the count."""
    server = await server_factory(ping_interval=0.6)
    watcher = await connect(server.ws_url(f"/ws/count/{room}/"))
    clients.append(watcher)
    peer = await RawPeer.open(server.port, f"/ws/count/{room}/")
    await watcher.settles_on(2)
    return server, watcher, peer


async def test_an_idle_sockets_ping_is_one_send_of_prebuilt_bytes_and_no_python_around_it(
    server_factory: ServerFactory,
) -> None:
    """The keepalive pings every idle socket once per interval: on an idle socket the ping is the
    pre-built frame sent straight to the socket, without the ten Python functions of the generic
    write path (connection and stream checks, ``wsframe.write``) around the system call."""
    server = await server_factory(ping_interval=3600)  # the keepalive's own timer stays out of the way
    peer = await RawPeer.open(server.port, "/ws/count/lean/")
    try:
        await wait_until(lambda: any(isinstance(h, RelaySocket) and h.ws_connection is not None
                                     and h.request.path == "/ws/count/lean/" for h in gc.get_objects()),
                         what="the socket open")
        handler = next(h for h in gc.get_objects() if isinstance(h, RelaySocket) and h.ws_connection is not None
                       and h.request.path == "/ws/count/lean/")
        called: list[str] = []

        def profile(frame: FrameType, event: str, arg: Any) -> None:
            if event == "call":
                called.append(frame.f_code.co_qualname)

        sys.setprofile(profile)
        try:
            handler.send_ping()
        finally:
            sys.setprofile(None)
        assert called == ["RelaySocket.send_ping", "ping_now"], f"the ping ran {called}"
        while True:  # the room's count comes first
            opcode, payload = await asyncio.wait_for(peer.frame(), 10)
            if opcode == PING:
                break
        assert payload == b""
    finally:
        peer.close()


@pytest.mark.parametrize("answer", ["pong", "message"])
async def test_quiet_peers_that_answer_stay_connected_and_counted(
    server_factory: ServerFactory, clients: list[Client], answer: str
) -> None:
    server, watcher, peer = await watched_peer(server_factory, clients, "quiet")
    try:
        pings = 0
        while pings < 5:  # five rounds: far past the two it takes to drop a silent peer
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


async def test_a_socket_heard_from_within_the_interval_is_never_pinged_and_dropped_once_silent(
    server_factory: ServerFactory, clients: list[Client]
) -> None:
    """The browser library sends its own ``ping`` every 15 s, under the default 20 s interval: such a
    socket needs no ping from us. An idle peer beside it (pongs only) shows the pings were on."""
    server = await server_factory(ping_interval=0.5)
    watcher = await connect(server.ws_url("/ws/count/talk/"))
    clients.append(watcher)
    talker = await RawPeer.open(server.port, "/ws/")
    idle = await RawPeer.open(server.port, "/ws/count/talk/")
    try:
        await watcher.settles_on(2)
        got: dict[str, list[int]] = {"talker": [], "idle": []}

        async def read(name: str, peer: RawPeer) -> None:
            while True:
                try:
                    opcode, _ = await peer.frame()
                except asyncio.IncompleteReadError:
                    return
                got[name].append(opcode)
                if name == "idle" and opcode == PING:
                    peer.send(PONG)
                if opcode == CLOSE:
                    return

        readers = [asyncio.ensure_future(read("talker", talker)), asyncio.ensure_future(read("idle", idle))]
        loop = asyncio.get_running_loop()
        until = loop.time() + 3.0  # six intervals
        while loop.time() < until:
            talker.send(TEXT, json.dumps({"type": "ping"}).encode())
            await asyncio.sleep(0.1)
        assert got["talker"].count(PING) == 0, "pinged a socket that talked every 0.1 s"
        assert got["talker"].count(TEXT) >= 20, "the talker's pings were not answered"
        assert got["idle"].count(PING) >= 3, "the idle socket was not pinged: were pings on?"
        assert CLOSE not in got["idle"]
        # Silent from now on, and answering nothing: pinged once, then dropped.
        await asyncio.wait_for(readers[0], 10)
        assert got["talker"].count(PING) == 1 and got["talker"][-1] == CLOSE
        await wait_until(lambda: server.metric("rrr_ping_timeouts_total") == 1, what="the talker's timeout")
        assert CLOSE not in got["idle"]
        readers[1].cancel()
    finally:
        talker.close()
        idle.close()


class FakeSocket:
    """Stands in for a handler only to count what the Keepalive asks of it; answers every ping
    (with a pong, soon after) when given ``ka``."""

    def __init__(self, fail: str = "", ka: Keepalive | None = None) -> None:
        self.pings = 0
        self.checks = 0
        self.dropped = False
        self.fail = fail
        self.ka = ka

    def send_ping(self) -> None:
        if self.fail == "ping":
            raise OSError("ping failed")
        self.pings += 1
        if self.ka is not None:
            asyncio.get_running_loop().call_later(0.005, self.ka.answered, self)

    def check_progress(self) -> None:
        self.checks += 1

    def drop(self, reason: str) -> bool:
        if self.fail == "drop":
            raise OSError("drop failed")
        self.dropped = True
        return True


@contextlib.asynccontextmanager
async def talking(ka: Keepalive, socks: list[FakeSocket]) -> AsyncIterator[None]:
    """Peers that send a frame every 10 ms, far more often than the keepalive visits them."""

    async def talk() -> None:
        while True:
            for sock in socks:
                ka.heard(sock)
            await asyncio.sleep(0.01)

    task = asyncio.ensure_future(talk())
    try:
        yield
    finally:
        task.cancel()


async def test_every_idle_socket_is_pinged_across_slices_and_the_silent_are_dropped() -> None:
    ka = Keepalive(0.2, slices=4)
    alive = [FakeSocket() for _ in range(5)]
    for sock in alive:
        sock.ka = ka
    silent = [FakeSocket() for _ in range(3)]
    for sock in alive + silent:
        ka.add(sock)
    await wait_until(lambda: all(sock.dropped for sock in silent), what="the silent sockets dropped")
    await wait_until(lambda: all(sock.pings >= 3 for sock in alive), what="three rounds of pings")
    assert not any(sock.dropped for sock in alive)
    assert len(ka) == 5
    assert all(sock.checks >= 2 for sock in alive), "progress not checked"


async def test_talking_sockets_are_checked_but_never_pinged() -> None:
    ka = Keepalive(0.2, slices=4)
    socks = [FakeSocket() for _ in range(5)]
    for sock in socks:
        ka.add(sock)
    async with talking(ka, socks):
        await wait_until(lambda: all(sock.checks >= 4 for sock in socks), what="four rounds")
    assert [sock.pings for sock in socks] == [0] * 5
    assert not any(sock.dropped for sock in socks)


async def test_a_socket_that_raises_does_not_stop_the_rounds_for_the_others() -> None:
    timeouts = []
    ka = Keepalive(0.2, on_timeout=lambda: timeouts.append(1), slices=4)
    bad_ping, bad_drop, good = FakeSocket("ping"), FakeSocket("drop"), FakeSocket(ka=ka)
    for sock in (bad_ping, bad_drop, good):
        ka.add(sock)
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
    socks = [FakeSocket(ka=ka) for _ in range(1000)]
    for sock in socks:
        ka.add(sock)
    await wait_until(lambda: any(sock.pings for sock in socks), what="the first tick")
    first = sum(1 for sock in socks if sock.pings)
    # One tick visits one slice: about a tenth, never all (objects of one size must not share a slice).
    assert 30 <= first <= 250, first
    await wait_until(lambda: all(sock.pings for sock in socks), timeout=5, what="every socket within an interval")


# -- the rules, visit by visit ---------------------------------------------------------------------
# One slice, ticked by hand: every tick visits every socket, and two ticks are one interval. (The
# interval is an hour, so the keepalive's own timer never fires during the test.)


def stepped() -> Keepalive:
    return Keepalive(3600, slices=1)


def visits(ka: Keepalive, sock: FakeSocket, ticks: int, answer: bool = False) -> list[str]:
    """What each of ``ticks`` visits did to ``sock``: "ping", "drop" or "" (answering each ping at once)."""
    seen = []
    for _ in range(ticks):
        pings, dropped = sock.pings, sock.dropped
        ka._tick()
        seen.append("drop" if sock.dropped and not dropped else "ping" if sock.pings > pings else "")
        if answer and sock.pings > pings:
            ka.answered(sock)
    return seen


async def test_an_idle_socket_is_pinged_once_an_interval_and_its_pong_changes_nothing() -> None:
    ka = stepped()
    sock = FakeSocket()
    ka.add(sock)
    # Its handshake counts as a frame: no ping within the interval after it.
    assert visits(ka, sock, 2, answer=True) == ["", ""]
    visits(ka, sock, 2, answer=True)
    checks = sock.checks
    assert visits(ka, sock, 12, answer=True) in (["ping", ""] * 6, ["", "ping"] * 6)
    assert sock.checks - checks == 6  # its progress, once an interval


async def test_a_socket_is_never_pinged_within_an_interval_of_its_last_frame_and_dropped_within_two() -> None:
    """Whatever the round its last frame falls in: no ping for the two visits after it (they come
    within an interval of it), a ping at the third, and, unanswered, a drop at the fourth (within
    two intervals)."""
    for phase in range(2):
        ka = stepped()
        sock = FakeSocket()
        ka.add(sock)
        visits(ka, sock, 3 + phase, answer=True)  # idle for a while, its pings answered
        for _ in range(5):  # talking: a frame before every visit
            ka.heard(sock)
            assert visits(ka, sock, 1) == [""]
        ka.heard(sock)  # its last frame
        assert visits(ka, sock, 4) == ["", "", "ping", "drop"], f"phase {phase}"
        assert len(ka) == 0


async def test_a_ping_left_unanswered_for_half_an_interval_drops_the_socket() -> None:
    ka = stepped()
    sock = FakeSocket()
    ka.add(sock)
    seen = visits(ka, sock, 4)
    assert seen[seen.index("ping") + 1] == "drop"


async def test_a_frame_after_a_ping_answers_it_and_puts_the_next_one_off() -> None:
    ka = stepped()
    sock = FakeSocket()
    ka.add(sock)
    while not sock.pings:
        ka._tick()
    ka.heard(sock)  # a message, not a pong
    assert visits(ka, sock, 4) == ["", "", "ping", "drop"]


async def test_a_discarded_socket_is_forgotten_whatever_it_sends_later() -> None:
    ka = stepped()
    sock = FakeSocket()
    ka.add(sock)
    ka.heard(sock)
    ka.discard(sock)
    ka.heard(sock)
    ka.answered(sock)
    assert not (ka._heard or ka._recent or ka._due or ka._pinged), "a closed socket is still held"
