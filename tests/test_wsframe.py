"""The fast paths write exactly the bytes Tornado would, and read every frame exactly as Tornado
does; if Tornado changes underneath, this fails loudly."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import tornado.httpserver
import tornado.testing
import tornado.web
from tornado.iostream import IOStream
from tornado.websocket import WebSocketHandler, WebSocketProtocol, WebSocketProtocol13, _WebSocketParams

from rrr.edge import wsframe
from rrr.edge.guard import make_http_server
from rrr.metrics import Metrics
from support.clients import Client, connect, wait_until
from support.servers import ServerFactory


class _Capture:
    """Stands in for an IOStream only to capture bytes Tornado's own framer writes."""

    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_frames_match_tornados_own_framing(size: int) -> None:
    payload = ("é" * size).encode()[:size]
    proto = WebSocketProtocol13.__new__(WebSocketProtocol13)
    proto.mask_outgoing = False
    proto._wire_bytes_out = 0
    proto.stream = _Capture()  # type: ignore[assignment]
    WebSocketProtocol13._write_frame(proto, True, 0x1, payload)
    assert wsframe.encode_text_frame(payload) == proto.stream.data  # type: ignore[attr-defined]


def test_the_ping_matches_tornados_own_ping() -> None:
    proto = WebSocketProtocol13.__new__(WebSocketProtocol13)
    proto.mask_outgoing = False
    proto._wire_bytes_out = 0
    proto.stream = _Capture()  # type: ignore[assignment]
    proto.write_ping(b"")
    assert wsframe.PING_WIRE == proto.stream.data  # type: ignore[attr-defined]


def test_a_frame_is_encoded_once() -> None:
    frame = wsframe.Frame('{"type":"pong"}')
    assert frame.wire is frame.wire


@pytest.mark.gen_test(timeout=30)
async def test_real_server_connections_take_the_fast_path(server_factory: ServerFactory, clients: list[Client]) -> None:
    server = await server_factory()
    c = await connect(server.ws_url("/ws/count/fast/"))
    clients.append(c)
    await c.settles_on(1)
    (handler,) = list(server.hub.connections)
    assert wsframe.fast_path_ok(
        handler.ws_connection  # type: ignore[attr-defined]
    ), "Tornado internals changed: review rrr/edge/wsframe.py"
    # ... and read frames on the read fast path.
    assert type(handler.ws_connection) is wsframe.FastReadProtocol13  # type: ignore[attr-defined]
    assert handler._fast  # type: ignore[attr-defined]
    # The server's streams are GuardedStreams (rrr/edge/guard.py): they too take the direct send.
    assert wsframe.direct_ok(handler.ws_connection.stream)  # type: ignore[attr-defined]
    # The outbox (rrr/edge/outbox.py) paces bulk frames by the bytes the stream still holds.
    assert len(handler.ws_connection.stream._write_buffer) == 0  # type: ignore[attr-defined]
    assert wsframe.buffered(handler.ws_connection) == 0  # type: ignore[attr-defined]


@pytest.mark.gen_test(timeout=30)
async def test_compressed_connections_fall_back_to_the_public_api(
    server_factory: ServerFactory, clients: list[Client]
) -> None:
    from handlers.sockets import RelaySocket

    server = await server_factory()
    original = RelaySocket.get_compression_options
    RelaySocket.get_compression_options = lambda self: {}  # type: ignore[method-assign]
    try:
        c = await connect(server.ws_url("/ws/count/deflate/"), compression_options={})
        clients.append(c)
        await c.settles_on(1)
        (handler,) = list(server.hub.connections)
        assert not handler._fast  # type: ignore[attr-defined]
        server.service.events.raw_message("deflate", '{"still":"works"}')
        await wait_until(lambda: c.of_type("message"))
        assert c.of_type("message")[0]["data"] == {"still": "works"}
    finally:
        RelaySocket.get_compression_options = original  # type: ignore[method-assign]


@pytest.mark.gen_test(timeout=60)
async def test_frames_stay_in_order_when_sends_switch_between_direct_and_queued(
    server_factory: ServerFactory, clients: list[Client]
) -> None:
    """Big frames to a client fill the kernel buffer, so writes alternate between the socket and IOStream's queue."""
    server = await server_factory(send_buffer=64 << 20)
    c = await connect(server.ws_url("/ws/count/order/"), max_message_size=1 << 20)
    clients.append(c)
    await c.settles_on(1)
    blob = "x" * 50_000
    for i in range(200):
        server.service.events.raw_message("order", '{"i":%d,"pad":"%s"}' % (i, blob))
    await wait_until(lambda: len(c.of_type("message")) == 200, timeout=30, what="200 messages")
    assert [m["data"]["i"] for m in c.of_type("message")] == list(range(200))


def test_frames_sent_together_go_in_one_write() -> None:
    """A replay's messages (`rrr.edge.outbox` hands the stream up to 64 KiB at a time) cost one write, not one each."""

    class Stream(_Capture):
        def __init__(self) -> None:
            super().__init__()
            self.writes = 0

        def write(self, data: bytes) -> None:
            super().write(data)
            self.writes += 1

        def closed(self) -> bool:
            return False

    parts = [wsframe.Frame('{"n":1}'), wsframe.Frame('{"n":2}'), wsframe.Frame("x" * 70000)]
    proto = WebSocketProtocol13.__new__(WebSocketProtocol13)
    proto.stream = Stream()  # type: ignore[assignment]
    wsframe.send_many(proto, parts, True)
    assert proto.stream.data == b"".join(p.wire for p in parts)  # type: ignore[attr-defined]
    assert proto.stream.writes == 1  # type: ignore[attr-defined]


# -- reading: every frame exactly as Tornado reads it -------------------------------------------


class Recorder(WebSocketHandler):
    """Records what Tornado tells a handler, and echoes every message back."""

    def initialize(self, fast: bool, events: list[tuple[Any, ...]], handlers: list[Recorder]) -> None:
        self.fast = fast
        self.events = events
        handlers.append(self)

    def get_websocket_protocol(self) -> WebSocketProtocol | None:
        return wsframe.make_protocol(self) if self.fast else super().get_websocket_protocol()

    def on_message(self, message: str | bytes) -> None:
        self.events.append(("message", message))
        self.write_message(message, binary=isinstance(message, bytes))

    def on_ping(self, data: bytes) -> None:
        self.events.append(("ping", data))

    def on_pong(self, data: bytes) -> None:
        self.events.append(("pong", data))

    def on_close(self) -> None:
        self.events.append(("close", self.close_code, self.close_reason))


class Echo:
    """A Tornado server on loopback whose handler reads with Tornado's own protocol or ours;
    ``guarded``: served by rrr's own HTTP server (``app.py``'s), whose streams read lone pongs
    themselves (`wsframe.FrameStream`)."""

    def __init__(self, fast: bool, max_message: int, guarded: bool = False) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.handlers: list[Recorder] = []
        app = tornado.web.Application(
            [(r"/", Recorder, dict(fast=fast, events=self.events, handlers=self.handlers))],
            websocket_max_message_size=max_message,
        )
        sock, self.port = tornado.testing.bind_unused_port()
        self.http = make_http_server(app, Metrics()) if guarded else tornado.httpserver.HTTPServer(app)
        self.http.add_sockets([sock])

    async def close(self) -> None:
        self.http.stop()
        await self.http.close_all_connections()


@pytest.fixture
def echoes(io_loop: Any) -> Iterator[Callable[..., Echo]]:
    made: list[Echo] = []

    def start(fast: bool, max_message: int = MAX_MESSAGE, guarded: bool = False) -> Echo:
        made.append(Echo(fast, max_message, guarded))
        return made[-1]

    yield start
    for echo in made:
        io_loop.run_sync(echo.close)


MAX_MESSAGE = 1000


def frame(opcode: int, payload: bytes = b"", fin: bool = True, masked: bool = True, rsv: int = 0,
          length: int | None = None) -> bytes:
    """A client frame, masked unless told otherwise; ``length`` forces the 16-bit length form."""
    head = bytes([(0x80 if fin else 0) | rsv | opcode])
    n = len(payload)
    bit = 0x80 if masked else 0
    if n < 126 and length is None:
        head += bytes([bit | n])
    else:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def close_frame(code: int | None = 1000, reason: bytes = b"") -> bytes:
    return frame(0x8, (struct.pack("!H", code) if code is not None else b"") + reason)


# Each scenario: the chunks a client writes (a short pause after each), ending the way it ends.
# The same masks go to both servers (the frames are built once), so the bytes compare too.
SCENARIOS: dict[str, list[bytes]] = {
    "pongs, empty and not": [frame(0xA), frame(0xA, b"abc"), close_frame()],
    "a ping from the client is answered with its payload": [frame(0x9, b"are you there"), close_frame()],
    "text of 0, 1 and 125 bytes, UTF-8": [frame(0x1), frame(0x1, b"a"), frame(0x1, "é".encode() * 62 + b"x"),
                                          close_frame()],
    "binary of 125 bytes": [frame(0x2, bytes(range(125))), close_frame()],
    "126 bytes and more: Tornado's path": [frame(0x1, b"y" * 126), frame(0x1, b"z" * 900),
                                           frame(0x1, b"w" * 10, length=16), close_frame()],
    "many frames in one write": [b"".join([frame(0xA), frame(0x1, b"one"), frame(0x9, b"p"), frame(0x1, b"x" * 300),
                                           frame(0x1, b"two"), frame(0xA, b"q"), close_frame()])],
    "a frame a byte at a time": [bytes([b]) for b in frame(0x1, b"slowly")] + [close_frame()],
    "a frame cut after its mask": [(f := frame(0x1, b"split payload"))[:6], f[6:], close_frame()],
    "two frames cut across each other": [(g := frame(0x1, b"first") + frame(0x1, b"second"))[:9], g[9:],
                                         close_frame()],
    "a fragmented message with a ping inside": [frame(0x1, b"frag", fin=False), frame(0x9, b"mid"),
                                                frame(0x0, b"men", fin=False), frame(0x0, b"ted"),
                                                frame(0x1, b"after"), close_frame()],
    "close with a code and a reason": [close_frame(4001, b"bye now")],
    "close without a code": [close_frame(None)],
    "frames after the close are ignored": [close_frame(1000) + frame(0x1, b"too late")],
    "an unmasked frame": [frame(0x1, b"bare", masked=False), close_frame()],
    "an extension bit": [frame(0x1, b"rsv", rsv=0x40)],
    "bad UTF-8": [frame(0x1, b"\xff\xfe")],
    "an unknown opcode": [frame(0x3, b"?")],
    "a continuation with nothing to continue": [frame(0x0, b"orphan")],
    "a control frame of 126 bytes": [frame(0x9, b"p" * 126)],
    "a fragmented control frame": [frame(0x9, b"p", fin=False)],
    "over max_message_size": [frame(0x1, b"m" * (MAX_MESSAGE + 1))],
}
#: Against servers whose max_message_size is under 125 bytes: the fast path must not take what they refuse.
SMALL_LIMIT = 100
SMALL_LIMIT_SCENARIOS: dict[str, list[bytes]] = {
    "at max_message_size": [frame(0x1, b"m" * SMALL_LIMIT), close_frame()],
    "over max_message_size, small": [frame(0x1, b"m" * (SMALL_LIMIT + 1))],
    "a pong over max_message_size": [frame(0xA, b"p" * (SMALL_LIMIT + 1))],
}


async def upgraded(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw socket to the Echo on ``port``, upgraded by hand (101 read), so a test writes the frames' bytes itself."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert b" 101 " in head.split(b"\r\n")[0]
    return reader, writer


async def exchange(port: int, chunks: list[bytes]) -> bytes:
    """Upgrade, write ``chunks`` with a pause after each, then everything the server sends until it closes."""
    reader, writer = await upgraded(port)
    try:
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
            await asyncio.sleep(0.02)
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


# 0x8A is Tornado's pong, 0x88 its close, 0x81/0x82 the echoed messages.
EXPECTED = {
    "a ping from the client is answered with its payload": b"\x8a\x0dare you there",
    "close with a code and a reason": b"\x88\x02\x0f\xa1",
    "over max_message_size, small": b"\x88\x11\x03\xf1message too big",
    "text of 0, 1 and 125 bytes, UTF-8": b"\x81\x00\x81\x01a\x81\x7d",
}


async def compare(tornados: Echo, ours: Echo, scenarios: dict[str, list[bytes]]) -> None:
    for name, chunks in scenarios.items():
        for echo in (tornados, ours):
            echo.events.clear()
        sent_by_tornado = await exchange(tornados.port, chunks)
        sent_by_ours = await exchange(ours.port, chunks)
        await wait_until(lambda: len(ours.events) == len(tornados.events) and ours.events[-1:] == tornados.events[-1:],
                         what=f"{name}: the same callbacks")  # on_close runs once the connection is gone
        assert sent_by_ours == sent_by_tornado, name
        assert ours.events == tornados.events, name
        if name in EXPECTED:
            assert sent_by_ours.startswith(EXPECTED[name]), (name, sent_by_ours)
    assert len(ours.handlers) == len(scenarios)
    assert all(type(h.ws_connection) is wsframe.FastReadProtocol13 for h in ours.handlers if h.ws_connection)


@pytest.mark.gen_test(timeout=120)
async def test_the_read_fast_path_handles_every_frame_exactly_as_tornado_does(echoes: Callable[..., Echo]) -> None:
    await compare(echoes(False), echoes(True), SCENARIOS)


@pytest.mark.gen_test(timeout=60)
async def test_the_read_fast_path_leaves_a_small_max_message_size_to_tornado(echoes: Callable[..., Echo]) -> None:
    await compare(echoes(False, SMALL_LIMIT), echoes(True, SMALL_LIMIT), SMALL_LIMIT_SCENARIOS)


@pytest.mark.gen_test(timeout=120)
async def test_rrrs_own_streams_handle_every_frame_exactly_as_tornado_does(echoes: Callable[..., Echo]) -> None:
    """A lone pong read by the stream itself, and everything else it hands on, as Tornado's own."""
    lone = [frame(0xA), frame(0xA, b"abc"), frame(0xA, b"p" * 125)]
    scenarios = dict(SCENARIOS, **{"lone pongs, then a message": [*lone, frame(0x1, b"after"), close_frame()],
                                   "a pong and a message in one write": [frame(0xA) + frame(0x1, b"x"), close_frame()],
                                   "a pong cut in two": [(h := frame(0xA, b"cut"))[:3], h[3:], close_frame()]})
    await compare(echoes(False), echoes(True, guarded=True), scenarios)
    await compare(echoes(False, SMALL_LIMIT), echoes(True, SMALL_LIMIT, guarded=True), SMALL_LIMIT_SCENARIOS)


@pytest.mark.gen_test(timeout=60)
async def test_a_lone_pong_is_handled_by_the_stream_without_waking_the_frame_loop(
    echoes: Callable[..., Echo],
) -> None:
    """On rrr's own server, an idle socket's pong completes no read: the frame loop's read stays
    pending (the same Future throughout), and no new read is started for the next frame."""
    echo = echoes(True, guarded=True)
    _reader, writer = await upgraded(echo.port)
    try:
        await wait_until(lambda: echo.handlers and echo.handlers[0].ws_connection is not None, what="open")
        stream = echo.handlers[0].ws_connection.stream  # type: ignore[union-attr]
        assert isinstance(stream, wsframe.FrameStream)
        await wait_until(lambda: stream._read_future is not None, what="the frame loop waiting")
        waiting = stream._read_future
        assert waiting is not None
        reads = 0
        start_read = stream._start_read

        def counted_read() -> Any:
            nonlocal reads
            reads += 1
            return start_read()

        stream._start_read = counted_read  # type: ignore[method-assign]
        for i in range(10):
            writer.write(frame(0xA, b"%d" % i))
            await wait_until(lambda: len(echo.events) == i + 1, what=f"pong {i}")
        assert echo.events == [("pong", b"%d" % i) for i in range(10)]
        assert reads == 0, f"{reads} reads started for 10 lone pongs"
        assert stream._read_future is waiting and not waiting.done(), "a pong completed the frame loop's read"
        writer.write(frame(0x1, b"then a message"))  # the frame loop still reads everything else
        await wait_until(lambda: len(echo.events) == 11, what="the message")
        assert echo.events[-1] == ("message", "then a message")
        assert waiting.done() and reads == 1
    finally:
        writer.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_pong_is_read_with_one_read_and_one_recv(echoes: Callable[..., Echo]) -> None:
    """Tornado reads a frame's header, its mask and its payload with a read each, and tries the
    socket again (EAGAIN) as it asks for the next frame; the fast path reads a small frame whole,
    once, from the one ``recv`` that got it."""
    echo = echoes(True)
    _reader, writer = await upgraded(echo.port)
    try:
        await wait_until(lambda: echo.handlers and echo.handlers[0].ws_connection is not None, what="open")
        stream = echo.handlers[0].ws_connection.stream  # type: ignore[union-attr]
        assert stream is not None
        calls = {"reads": 0, "recvs": 0}
        start_read, read_from_fd = stream._start_read, stream.read_from_fd

        def counted_read() -> Any:
            calls["reads"] += 1
            return start_read()

        def counted_recv(buf: Any) -> Any:
            calls["recvs"] += 1
            return read_from_fd(buf)

        stream._start_read = counted_read  # type: ignore[method-assign]
        stream.read_from_fd = counted_recv  # type: ignore[method-assign]
        for i in range(10):
            writer.write(frame(0xA, b"%d" % i))
            await wait_until(lambda: len(echo.events) == i + 1, what=f"pong {i}")
        assert [e[0] for e in echo.events] == ["pong"] * 10
        # One of each per pong (the read pending when the counting began may count once more).
        assert calls["reads"] <= 11 and calls["recvs"] <= 11, f"{calls} for 10 pongs"
    finally:
        writer.close()


def test_tornado_still_has_what_the_read_fast_path_uses() -> None:
    """``FastReadProtocol13`` reads the stream's buffer and hands frames to Tornado's own handling."""
    stream = IOStream(socket.socket())
    try:
        assert type(stream._read_buffer) is bytearray
        assert stream._read_buffer_size == 0 and stream._user_read_buffer is False
    finally:
        stream.close()
    for name in ("_receive_frame", "_handle_message", "_receive_frame_loop"):
        assert callable(getattr(WebSocketProtocol13, name, None)), f"Tornado changed: WebSocketProtocol13.{name}"
    stream = IOStream(socket.socket())
    try:
        for name in ("_read_future", "_read_bytes", "_read_partial", "_handle_events", "_find_read_pos",
                     "_read_from_buffer", "_is_connreset", "close_fd", "_closed"):
            assert hasattr(stream, name), f"Tornado changed: IOStream.{name}"
        assert stream._write_buffer._size == 0, "Tornado changed: IOStream._write_buffer._size"
    finally:
        stream.close()
    proto = WebSocketProtocol13(None, False, _WebSocketParams())  # type: ignore[arg-type]
    for name in ("_decompressor", "_fragmented_message_buffer", "_wire_bytes_in", "params", "client_terminated",
                 "server_terminated"):
        assert hasattr(proto, name), f"Tornado changed: WebSocketProtocol13.{name}"
