"""One client WebSocket as a bare ``asyncio.Protocol`` framed by websockets' Sans-I/O core.

Why not ``websockets.connect()``: it runs a reader task and a queue per
connection. At 10-19k sockets on a 2-core machine that driver overhead competes
with the server under test. Here bytes are parsed in ``data_received`` and each
text message goes straight to a callback: no task, no queue, per socket only
this object and the transport. Framing, masking, ping replies and the close
handshake are still websockets' own, so the client stays standards-correct,
except for one fast path: a read that holds only whole, unfragmented text frames
(what a server sends a subscriber, 100,000 times in a row in a fan-out) is split
and decoded here, in a few lines, without the generator-based parser; anything
else (a control frame, a fragment, a partial frame, bad bytes) goes to websockets.
No extensions are offered, so no server compresses: every stack sends the
same plain frames.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
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
        #: Set when we started the close handshake, so a close is not counted as a server drop.
        self.closing_by_us = False

    # -- asyncio.Protocol --------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport subclass
        self.proto.send_request(self.proto.connect())
        self._flush()

    def data_received(self, data: bytes) -> None:
        now = time.time_ns()
        texts = self._whole_texts(data)
        if texts is not None:
            for text in texts:
                self.on_text(self, text, now)
            return
        self.proto.receive_data(data)
        for event in self.proto.events_received():
            if not isinstance(event, Frame):
                if isinstance(event, Response):
                    self._handshake_done()
                continue
            opcode = event.opcode
            if opcode is Opcode.TEXT:
                if event.fin:
                    self.on_text(self, bytes(event.data).decode(), now)
                else:
                    self._fragments = [bytes(event.data)]
            elif opcode is Opcode.CONT and self._fragments is not None:
                self._fragments.append(bytes(event.data))
                if event.fin:
                    text = b"".join(self._fragments).decode()
                    self._fragments = None
                    self.on_text(self, text, now)
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

    def _whole_texts(self, data: bytes) -> list[str] | None:
        """The texts of ``data`` if it is nothing but complete, final, unmasked text frames and the
        parser stands between frames; else None (websockets parses it)."""
        if self.proto.state is not State.OPEN or self._fragments is not None or self.proto.reader.buffer:
            return None
        texts = []
        i, end = 0, len(data)
        while i < end:
            if i + 2 > end or data[i] != 0x81:
                return None
            n = data[i + 1]
            i += 2
            if n == 126:
                if i + 2 > end:
                    return None
                n = int.from_bytes(data[i:i + 2], "big")
                i += 2
            elif n >= 127:  # 127: a 64-bit length; above 127: masked, which a server must not send
                return None
            if i + n > end:
                return None
            try:
                texts.append(data[i:i + n].decode())
            except UnicodeDecodeError:
                return None
            i += n
        return texts

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
