"""Frame a message once, write the same bytes to every socket; read a small frame in one step.

Tornado's public ``write_message`` frames per call and wraps each write in a
new Task (~40 us a client); a broadcast to 10k sockets would pay that 10k
times. A server text frame is unmasked and, without compression, the same
bytes for every client, so we build it once and hand it to each ``IOStream``.

On the read side, `FastReadProtocol13` reads each small whole frame (every pong,
ping and close, most client messages) with one ``read_bytes`` instead of Tornado's
three, and without making Tornado stop and restart listening to the socket in
between (`FastReadProtocol13._receive_frame`). On a `FrameStream` (every connection
``app.py`` serves), a pong that arrives alone while the frame loop waits is read and
handled in the stream's own event callback (`FrameStream._handle_events`): the frame loop
is not woken for it at all.

This is the only module that touches Tornado internals (``stream``,
``_compressor``, ``_decompressor``, ``_fragmented_message_buffer``,
``_handle_message`` and ``_receive_frame`` on ``WebSocketProtocol13``, its
``_WebSocketParams``; ``_write_buffer``, ``_read_buffer``, ``_read_buffer_size``,
``_user_read_buffer``, ``_state``, ``_start_read``, ``_read_bytes``, ``_read_partial``,
``_read_future``, ``_handle_events``, ``_find_read_pos``, ``_read_from_buffer`` and
``_is_connreset`` on ``IOStream``).
An SSE stream (`rrr.edge.streams`) writes its events through the same stream functions
(`write`, `buffered_bytes`, `stream_flushed`), each event encoded once too (`Frame.sse`).
``tests/test_wsframe.py`` fails loudly if they change, and both paths fall back
to Tornado's own whenever the fast one does not apply.
"""

from __future__ import annotations

import struct
from asyncio import Future
from collections.abc import Awaitable
from typing import Any

from tornado.ioloop import IOLoop
from tornado.iostream import IOStream, SSLIOStream
from tornado.log import gen_log
from tornado.util import _websocket_mask
from tornado.websocket import WebSocketHandler, WebSocketProtocol, WebSocketProtocol13, _WebSocketParams

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
        isinstance(conn, WebSocketProtocol13)
        and type(conn) in (WebSocketProtocol13, FastReadProtocol13)
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


def ping_now(conn: WebSocketProtocol) -> bool:
    """The keepalive's ping, built once (`PING_WIRE`), as one ``send`` straight to the socket of
    an open connection on the fast path (`fast_path_ok`) whose `FrameStream` has nothing queued.

    The keepalive pings every idle socket once per interval, and `ping`'s way there (the
    connection's and the stream's checks, `write`) runs ten Python functions around the one
    system call; here, none: attributes are read directly. True once the ping went (or its
    tail was queued behind a partial send, in order); False when this does not apply, and
    `ping` must send it. Never raises."""
    stream = conn.stream
    if (
        stream is None
        or stream._closed
        or conn.client_terminated
        or conn.server_terminated
        or stream._write_buffer._size
        or not isinstance(stream, FrameStream)
    ):
        return False
    try:
        sent = stream.socket.send(PING_WIRE)
    except OSError:  # would block, or a dead peer: `ping`'s way meets it as usual
        return False
    if sent < len(PING_WIRE):
        try:
            stream.write(PING_WIRE[sent:])  # the rest, behind the part that went (IOStream handles errors)
        except Exception:  # noqa: BLE001 - the stream is closing: nothing more to send on it
            pass
    return True


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


# -- reading -----------------------------------------------------------------------------------

#: What one read of the frame loop takes: everything that has arrived, up to this many bytes.
READ_AHEAD = 4096
#: Frames read in one step: final (FIN), no extension bits, masked (as a client must), 0-125
#: bytes of payload, and of these opcodes: text, binary, close, ping, pong.
_FAST_OPCODES = frozenset((0x1, 0x2, 0x8, 0x9, 0xA))
_SMALL = 125
_READ = IOLoop.READ
_PONG_HEAD = _FIN | 0xA


class FastReadProtocol13(WebSocketProtocol13):
    """Tornado's WebSocket protocol, reading a small whole frame with one ``read_bytes``.

    Tornado reads a frame in three steps (``read_bytes`` of the header, of the mask, of the
    payload), each a Future through a coroutine; and since the first step leaves the rest of
    the frame in the stream's buffer, the stream stops listening to the socket (an
    ``epoll_ctl`` and asyncio's selector bookkeeping) and starts again for the next frame.
    For an idle socket that is all the keepalive's pong costs, and most of its CPU.

    Here a read takes everything that has arrived (up to `READ_AHEAD` bytes, so the stream's
    buffer is left empty and the stream keeps listening), and a first frame that is whole,
    final, masked, has no extension bits, at most 125 bytes of payload (and no more than
    ``max_message_size``) and a known opcode, is unmasked and handed to Tornado's own
    ``_handle_message``, which does all the rest as for any frame: text decoding, the
    handler's callbacks, a pong for a ping, the close handshake. Whatever else was read (the
    next frames, a frame that is not all there yet, a bigger one, a fragment, anything odd)
    goes back to the front of the stream's buffer, in order, and the frame at its head is read
    by Tornado's own ``_receive_frame``: every decision about those is Tornado's. So is every
    frame of a compressed connection, and of a fragmented message in progress. One frame per
    call, as Tornado's: its frame loop's accounting (when to yield to other sockets) holds.
    """

    __slots__ = ()

    async def _receive_frame(self) -> None:
        stream = self.stream
        if (
            self._decompressor is not None
            or self._fragmented_message_buffer is not None
            or stream._user_read_buffer
            or type(stream._read_buffer) is not bytearray
        ):
            await super()._receive_frame()
            return
        data = await _read_ahead(stream, self)
        end = len(data)
        n = data[1] & 0x7F if end >= 2 else _SMALL + 1
        frame_end = 6 + n
        if (
            frame_end <= end
            and data[0] & 0xF0 == 0x80  # FIN, no RSV bits
            and data[1] & 0x80  # masked
            and n <= _SMALL
            and n <= self.params.max_message_size
            and data[0] & 0x0F in _FAST_OPCODES
        ):
            if frame_end < end:
                _unread(stream, data[frame_end:])
            self._wire_bytes_in += frame_end
            handled = self._handle_message(data[0] & 0x0F, _websocket_mask(data[2:6], data[6:frame_end]))
            if handled is not None:
                await handled
            return
        _unread(stream, data)
        await super()._receive_frame()


def _read_ahead(stream: IOStream, conn: FastReadProtocol13) -> Awaitable[bytes]:
    """``stream.read_bytes(READ_AHEAD, partial=True)``, without its first try at the socket when
    nothing is buffered and the stream listens for data already.

    ``read_bytes`` first tries to read the socket at once, and when the frame loop asks for the
    next frame right after the last one, that try finds nothing: a ``recv`` that fails with
    EAGAIN, a 64 KiB buffer allocated and an exception raised and caught, for every frame. The
    loop's poll is level-triggered, so bytes already waiting in the kernel are reported at its
    next turn all the same."""
    if stream._read_buffer_size or stream.closed() or stream.reading() or not (stream._state or 0) & _READ:
        return stream.read_bytes(READ_AHEAD, partial=True)
    if isinstance(stream, FrameStream) and stream.frames is not conn:
        stream.frames = conn
    future = stream._start_read()
    stream._read_bytes = READ_AHEAD
    stream._read_partial = True
    return future


class FrameStream(IOStream):
    """An IOStream that reads a lone pong itself, without waking the WebSocket's frame loop.

    An idle socket's only traffic is the keepalive's ping and the pong that answers it. Read
    the usual way, the pong completes the frame loop's pending read: a Future resolved, a
    Task woken, the five coroutines from ``RequestHandler._execute`` down to
    `FastReadProtocol13._receive_frame` resumed and suspended again, a new read set up, a
    64 KiB buffer allocated to ``recv`` six bytes into, and the stream's bookkeeping of what
    to listen for; together about half of what an idle socket costs the server per ping
    interval. Here, when the socket is readable while the frame loop waits on its read
    (`_read_ahead`'s, with nothing buffered) on an uncompressed connection, the event is
    taken with one small ``recv``; if that is exactly one whole, masked pong, within
    ``max_message_size``, it goes straight to Tornado's own ``_handle_message`` (``on_pong``,
    as the frame loop would call it), and the frame loop's read, and what the stream listens
    for, stay as they were. Anything else (more than one frame, a part of one, any other
    frame) goes into the stream's buffer and completes the pending read, as Tornado's own
    read would, and the frame loop reads it as ever. Errors and the end of the stream close
    it as Tornado's read does. A handler whose ``on_pong`` is a coroutine is not awaited here
    (rrr's are plain methods).
    """

    # A slot, not an attribute: see `rrr.edge.guard.GuardedStream` on why streams keep theirs in slots.
    __slots__ = ("frames",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: The WebSocket protocol reading this stream, once its frame loop has waited on it.
        self.frames: FastReadProtocol13 | None = None

    def _handle_events(self, fd: Any, events: int) -> None:
        conn = self.frames
        if (
            events != _READ
            or conn is None
            or self._read_future is None
            or self._read_buffer_size
            or self._read_bytes != READ_AHEAD
            or not self._read_partial
            or self._user_read_buffer
            or conn.stream is not self
            or conn.client_terminated
            or conn._decompressor is not None
            or conn._fragmented_message_buffer is not None
        ):
            super()._handle_events(fd, events)
            return
        try:
            data = self.socket.recv(READ_AHEAD)
        except BlockingIOError:
            return  # nothing after all: the read stays pending
        except OSError as e:  # as Tornado's read: a reset closes quietly, anything else is logged first
            if not self._is_connreset(e):
                gen_log.warning("error on read: %s" % e)
            self.close(exc_info=e)
            return
        if not data:
            self.close()  # the peer closed: the pending read fails with StreamClosedError, as ever
            return
        end = len(data)
        n = data[1] & 0x7F if end >= 2 else _SMALL + 1
        if (
            data[0] == _PONG_HEAD  # FIN, no RSV bits, a pong
            and data[1] & 0x80  # masked
            and n <= _SMALL
            and end == 6 + n  # one whole frame and nothing after it
            and n <= conn.params.max_message_size
        ):
            conn._wire_bytes_in += end
            conn._handle_message(0xA, _websocket_mask(data[2:6], data[6:end]))
            return
        self._read_buffer += data
        self._read_buffer_size += end
        pos = self._find_read_pos()
        if pos is not None:
            self._read_from_buffer(pos)
        # What to listen for next, as after any event; no event left to handle (the read is done).
        super()._handle_events(fd, 0)

    def close_fd(self) -> None:
        self.frames = None
        super().close_fd()


def _unread(stream: IOStream, data: bytes) -> None:
    """Put ``data`` back at the front of ``stream``'s read buffer: the next read starts with it."""
    stream._read_buffer[:0] = data
    stream._read_buffer_size += len(data)


def make_protocol(handler: WebSocketHandler) -> WebSocketProtocol | None:
    """``WebSocketHandler.get_websocket_protocol``, with a `FastReadProtocol13`."""
    if handler.request.headers.get("Sec-WebSocket-Version") != "13":
        return None
    params = _WebSocketParams(
        ping_interval=handler.ping_interval,
        ping_timeout=handler.ping_timeout,
        max_message_size=handler.max_message_size,
        compression_options=handler.get_compression_options(),
    )
    return FastReadProtocol13(handler, False, params)
