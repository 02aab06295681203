"""The fast path writes exactly the bytes Tornado would; if Tornado changes underneath, this fails loudly."""

import pytest
from tornado.websocket import WebSocketProtocol13

from rrr.edge import wsframe
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
