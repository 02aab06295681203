"""Frame a message once, write the same bytes to every socket.

Tornado's public ``write_message`` frames per call and wraps each write in a
new Task (~40 us a client); a broadcast to 10k sockets would pay that 10k
times. A server text frame is unmasked and, without compression, the same
bytes for every client, so we build it once and hand it to each ``IOStream``.

This is the only module that touches Tornado internals (``stream`` and
``_compressor`` on ``WebSocketProtocol13``, ``_write_buffer`` on ``IOStream``).
An SSE stream (`rrr.edge.streams`) writes its events through the same stream functions
(`write`, `buffered_bytes`, `stream_flushed`), each event encoded once too (`Frame.sse`).
``tests/test_wsframe.py`` fails loudly if they change, and `send` falls back to
the public API whenever the fast path does not apply.
"""

from __future__ import annotations

import struct
from asyncio import Future
from typing import Any

from tornado.iostream import IOStream, SSLIOStream
from tornado.websocket import WebSocketProtocol, WebSocketProtocol13

from ..protocol import Payload
from . import sse

_FIN = 0x80
_TEXT = 0x1
_PING = 0x9


def encode_frame(opcode: int, payload: bytes) -> bytes:
    """RFC 6455 section 5.2: a final, unmasked frame of ``opcode`` carrying ``payload``."""
    head = _FIN | opcode
    n = len(payload)
    if n < 126:
        return struct.pack("!BB", head, n) + payload
    if n <= 0xFFFF:
        return struct.pack("!BBH", head, 126, n) + payload
    return struct.pack("!BBQ", head, 127, n) + payload


def encode_text_frame(payload: bytes) -> bytes:
    return encode_frame(_TEXT, payload)


PING_WIRE = encode_frame(_PING, b"")


class Frame:
    """A text message, with each wire encoding it is sent in computed at most once.

    ``payload``: a room message's (or whisper's) room and `rrr.protocol.Payload`, so a door that
    speaks another protocol (Pusher's) need not parse the frame back; ``alt``: that door's own
    frames for it, made once for every socket the frame goes to."""

    __slots__ = ("text", "_wire", "_sse", "payload", "alt")

    def __init__(self, text: str, payload: tuple[str, Payload] | None = None) -> None:
        self.text = text
        self._wire: bytes | None = None
        self._sse: bytes | None = None
        self.payload = payload
        self.alt: list[Frame] | None = None

    @property
    def wire(self) -> bytes:
        if self._wire is None:
            self._wire = encode_text_frame(self.text.encode("utf-8"))
        return self._wire

    @property
    def sse(self) -> bytes:
        """The frame as one SSE event in one HTTP/1.1 chunk: what every SSE stream is written."""
        if self._sse is None:
            self._sse = sse.chunk(sse.event(self.text))
        return self._sse


def fast_path_ok(conn: WebSocketProtocol) -> bool:
    """True when raw frame bytes are what Tornado itself would write for this connection."""
    return (
        type(conn) is WebSocketProtocol13
        and not conn.mask_outgoing
        and getattr(conn, "_compressor", None) is None
        and getattr(conn, "stream", None) is not None
    )


def direct_ok(stream: Any) -> bool:
    """Whether ``stream`` is a plain TCP IOStream (ours, `rrr.edge.guard.GuardedStream`, is one),
    whose socket we may ``send`` to ourselves; TLS streams always go through ``IOStream.write``."""
    return isinstance(stream, IOStream) and not isinstance(stream, SSLIOStream)


def _retrieve(fut: Any) -> None:
    if not fut.cancelled():
        fut.exception()  # a closed socket is expected here; don't log it as unhandled


def _write(conn: WebSocketProtocol, data: bytes) -> None:
    write(conn.stream, data)


def write(stream: IOStream | None, data: bytes) -> None:
    """Send straight to the socket when nothing is queued, else queue behind what is.

    Most sockets in a broadcast have an empty buffer and room in the kernel's, so
    one ``send`` finishes the job without IOStream's per-write Future and buffer
    bookkeeping. Ordering holds because we only bypass an empty queue; anything
    unsent, and every error, goes through ``IOStream.write``, which buffers, applies
    ``max_write_buffer_size`` and closes the stream on a dead peer as usual.
    """
    if stream is None or stream.closed():
        return
    if direct_ok(stream) and not stream.writing():
        try:
            sent = stream.socket.send(data)
        except OSError:  # would block, or a dead peer: IOStream.write handles both
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    # IOStream.write's future is silenced by Tornado itself when the stream closes.
    stream.write(data)


def buffered(conn: WebSocketProtocol) -> int:
    """Bytes written to ``conn`` that its stream still holds (the kernel has not taken them yet)."""
    return buffered_bytes(conn.stream)


def buffered_bytes(stream: IOStream | None) -> int:
    buffer = stream._write_buffer if stream is not None else None  # None once the stream closed
    return len(buffer) if buffer is not None else 0


def flushed(conn: WebSocketProtocol) -> Future[None] | None:
    """A Future done once everything written to ``conn`` so far has reached the kernel (or the
    stream closed: then it holds StreamClosedError); None if the stream is closed already."""
    return stream_flushed(conn.stream)


def stream_flushed(stream: IOStream | None) -> Future[None] | None:
    if stream is None or stream.closed():
        return None
    # An empty write waits behind every byte before it and, adding none, never hits the buffer cap.
    return stream.write(b"")


def ping(conn: WebSocketProtocol, fast: bool) -> None:
    """Queue an empty ping on ``conn``; same errors as `send`."""
    if fast:
        _write(conn, PING_WIRE)
    else:
        conn.write_ping(b"")


def send_many(conn: WebSocketProtocol, frames: list[Frame], fast: bool) -> None:
    """Queue ``frames`` on ``conn`` back to back: on the fast path in one write, so a replay's
    messages cost one system call, not one each. Same errors as `send`."""
    if fast:
        _write(conn, frames[0].wire if len(frames) == 1 else b"".join(frame.wire for frame in frames))
    else:
        for frame in frames:
            conn.write_message(frame.text).add_done_callback(_retrieve)


def send(conn: WebSocketProtocol, frame: Frame, fast: bool) -> None:
    """Queue ``frame`` on ``conn``. Raises tornado's StreamBufferFullError if the client stopped reading."""
    if fast:
        _write(conn, frame.wire)
    else:
        conn.write_message(frame.text).add_done_callback(_retrieve)
