"""One client WebSocket as a bare ``asyncio.Protocol`` framed by websockets' Sans-I/O core.

Why not ``websockets.connect()``: it runs a reader task and a queue per
connection. At 10-19k sockets on a 2-core machine that driver overhead competes
with the server under test. Here bytes are parsed in ``data_received`` and each
text message goes straight to a callback: no task, no queue, per socket only
this object and the transport. Framing, masking, ping replies and the close
handshake are still websockets' own, so the client stays standards-correct,
except for one fast path: once open, bytes are split into whole frames here (a few
lines, not websockets' generator-based parser), and a final unmasked text frame
outside a fragmented message (what a server sends a subscriber, 100,000 times in
a row in a fan-out) is decoded here; every other frame (control frames,
fragments, bad UTF-8) is handed to websockets whole, so its parser never stands
inside a frame when the fast path reads the next one.
No extensions are offered, so no server compresses: every stack sends the
same plain frames.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from websockets.client import ClientProtocol
from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

#: ``on_text(conn, text, received_ns)``: one complete text message, stamped when its bytes arrived.
TextHandler = Callable[["WsConnection", str, int], None]
#: ``on_open(conn)``: runs right after the 101, before any frame that came in the same read.
OpenHandler = Callable[["WsConnection"], None]


class WsConnection(asyncio.Protocol):
    """A client WebSocket. ``opened`` resolves after the 101 response; ``closed`` when TCP is gone."""

    def __init__(
        self, uri: str, on_text: TextHandler, on_open: OpenHandler | None, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.proto = ClientProtocol(parse_uri(uri), max_size=4 * 2**20)
        self.on_text = on_text
        self.on_open = on_open
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self._fragments: list[bytes] | None = None
        #: The tail of the response head read so far (to find its blank line), and a partial frame.
        self._head = b""
        self._rest = b""
        #: Set when we started the close handshake, so a close is not counted as a server drop.
        self.closing_by_us = False

    # -- asyncio.Protocol --------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport subclass
        self.proto.send_request(self.proto.connect())
        self._flush()

    def data_received(self, data: bytes) -> None:
        now = time.time_ns()
        if self.proto.state is State.CONNECTING:
            data = self._response_head(data, now)
        if data and self.proto.state in (State.OPEN, State.CLOSING):
            self._frames(data, now)
        self._flush()
        if self.proto.parser_exc is not None and self.transport is not None:
            self.transport.abort()

    def eof_received(self) -> bool:
        self.proto.receive_eof()
        self._flush()
        return False  # let asyncio close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionError("closed during the handshake"))
        if not self.closed.done():
            self.closed.set_result(None)
        self.transport = None

    # -- API ---------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self.transport is not None and self.proto.state is State.OPEN

    def send_text(self, text: str) -> None:
        if self.is_open:
            self.proto.send_text(text.encode())
            self._flush()

    async def close(self, timeout: float) -> bool:
        """Close handshake, then wait for the server to drop TCP; True if it did so in time."""
        self.closing_by_us = True
        if self.transport is None:
            return True
        if self.proto.state is State.OPEN:
            self.proto.send_close(1000)
            self._flush()
        try:
            await asyncio.wait_for(asyncio.shield(self.closed), timeout)
            return True
        except TimeoutError:
            self.abort()
            return False

    def abort(self) -> None:
        self.closing_by_us = True
        if self.transport is not None:
            self.transport.abort()

    # -- internals ---------------------------------------------------------

    def _response_head(self, data: bytes, now: int) -> bytes:
        """Give websockets the 101 response up to its blank line; return the bytes after it."""
        head = self._head + data
        end = head.find(b"\r\n\r\n")
        if end < 0:
            self._head = head[-3:]  # a blank line split over reads is still found
            self._feed(data, now)
            return b""
        cut = len(data) - (len(head) - end - 4)
        self._head = b""
        self._feed(data[:cut], now)
        return data[cut:]

    def _frames(self, data: bytes, now: int) -> None:
        buf = self._rest + data if self._rest else data
        i, end = 0, len(buf)
        while i + 2 <= end:
            first, n, masked = buf[i], buf[i + 1] & 0x7F, buf[i + 1] & 0x80
            at = i + 2 + (4 if masked else 0)
            if n == 126:
                if i + 4 > end:
                    break
                n, at = int.from_bytes(buf[i + 2:i + 4], "big"), at + 2
            elif n == 127:
                if i + 10 > end:
                    break
                n, at = int.from_bytes(buf[i + 2:i + 10], "big"), at + 8
            if at + n > end:
                break
            if first == 0x81 and not masked and self.proto.current_size is None and self._fragments is None:
                self._text(buf[at:at + n], now)
            else:
                self._feed(buf[i:at + n], now)
            i = at + n
        self._rest = buf[i:]

    def _feed(self, data: bytes, now: int) -> None:
        """Bytes for websockets' parser (the response head, or whole frames), then what it made of them."""
        self.proto.receive_data(data)
        for event in self.proto.events_received():
            if not isinstance(event, Frame):
                if isinstance(event, Response):
                    self._handshake_done()
                continue
            opcode = event.opcode
            if opcode is Opcode.TEXT:
                if event.fin:
                    self._text(bytes(event.data), now)
                else:
                    self._fragments = [bytes(event.data)]
            elif opcode is Opcode.CONT and self._fragments is not None:
                self._fragments.append(bytes(event.data))
                if event.fin:
                    data = b"".join(self._fragments)
                    self._fragments = None
                    self._text(data, now)

    def _text(self, data: bytes, now: int) -> None:
        try:
            text = data.decode()
        except UnicodeDecodeError:
            self.proto.fail(CloseCode.INVALID_DATA, "invalid UTF-8")
            return
        self.on_text(self, text, now)

    def _handshake_done(self) -> None:
        if self.opened.done():
            return
        if self.proto.handshake_exc is not None:
            self.opened.set_exception(self.proto.handshake_exc)
            if self.transport is not None:
                self.transport.abort()
        else:
            # Before the rest of this read is parsed: a server may send its first frame with the 101.
            if self.on_open is not None:
                self.on_open(self)
            self.opened.set_result(None)

    def _flush(self) -> None:
        transport = self.transport
        if transport is None:
            return
        for chunk in self.proto.data_to_send():
            if chunk:
                transport.write(chunk)
            elif transport.can_write_eof():
                transport.write_eof()


async def open_connection(
    uri: str, host: str, port: int, source_ip: str | None, on_text: TextHandler, on_open: OpenHandler | None,
    timeout: float,
) -> WsConnection:
    """Connect from ``source_ip`` (spreading sockets over 127.0.0.x lifts the ~28k port limit)."""
    loop = asyncio.get_running_loop()
    conn = WsConnection(uri, on_text, on_open, loop)
    local = (source_ip, 0) if source_ip else None

    async def go() -> None:
        await loop.create_connection(lambda: conn, host, port, local_addr=local)
        await conn.opened

    try:
        await asyncio.wait_for(go(), timeout)
    except BaseException:
        conn.abort()
        raise
    return conn
