"""Real TCP relays on loopback in front of a real Redis: one that can start lying, one that answers
late or not at all."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import Self


class LoopbackRelay:
    """A real TCP server on loopback in front of a real Redis (``_serve`` says what it does with
    each connection); ``url`` is what an app under test is given instead of the Redis's own."""

    def __init__(self) -> None:
        self.port = 0
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    @staticmethod
    async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                   before: Callable[[bytes], Awaitable[None]] | None = None) -> None:
        """Copy ``src`` to ``dst`` until either ends; ``before`` is awaited with each chunk first."""
        try:
            while data := await src.read(65536):
                if before is not None:
                    await before(data)
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            dst.close()


class LyingRedis(LoopbackRelay):
    """A real TCP server in front of a real Redis that can start lying.

    ``mode`` "real" forwards bytes both ways; "ok" answers ``+OK`` to whatever arrives;
    "random" answers random bytes. Changing the mode cuts every open connection, so
    clients reconnect into the new behaviour. ``subscribe_delay`` holds every command
    of the SUBSCRIBE family that long before passing it on (a slow pub/sub path).
    """

    def __init__(self, upstream: str) -> None:
        super().__init__()
        self.upstream = upstream
        self.mode = "real"
        self.subscribe_delay = 0.0

    def set_mode(self, mode: str) -> None:
        assert mode in ("real", "ok", "random")
        self.mode = mode
        for w in list(self._writers):
            w.close()

    async def close(self) -> None:
        self.set_mode("real")
        await super().close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            if self.mode == "real":
                await self._forward(reader, writer)
            else:
                while data := await reader.read(65536):
                    writer.write(b"+OK\r\n" if self.mode == "ok" else os.urandom(1 + len(data) % 64))
                    await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, port = self.upstream.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        self._writers.add(up_writer)

        async def slow_subscribe(data: bytes) -> None:
            # The command's own name, ended as RESP ends it: a script's text may say "subscribes".
            if self.subscribe_delay and b"SUBSCRIBE\r\n" in data.upper():
                await asyncio.sleep(self.subscribe_delay)

        try:
            await asyncio.gather(self.pipe(reader, up_writer, slow_subscribe), self.pipe(up_reader, writer))
        finally:
            self._writers.discard(up_writer)
            up_writer.close()


# -- a Redis that answers late -----------------------------------------------------------


class SlowReplyProxy(LoopbackRelay):
    """A real TCP relay to the real Redis. Armed with ``hold_reply_to(marker, seconds)``, the next
    command that contains ``marker`` runs in Redis at once, but its reply reaches the app only
    ``seconds`` later (a slow network, a busy event loop): the read is *taken* at once and
    *answered* late; with ``every``, each such command's reply is. Armed with
    ``cut_reply_to(marker)``, the next such command runs and the connection is cut before its reply
    (a failover or a reset right after Redis did the work); with ``every``, each such command's
    connection is, and with ``refuse_after`` nobody listens any more after the cut. Armed with
    ``cut_before(marker)``, such commands never reach Redis until `disarm`. Everything else passes
    straight through."""

    def __init__(self, upstream_port: int) -> None:
        super().__init__()
        self.upstream_port = upstream_port
        self.marker: bytes | None = None
        self.delay = 0.0
        self.every = False
        self.cut = False
        self.refuse_after = False
        self.cut_first = False
        self.held = asyncio.Event()

    def hold_reply_to(self, marker: bytes, seconds: float, every: bool = False) -> None:
        self.marker, self.delay, self.every, self.cut = marker, seconds, every, False
        self.held.clear()

    def cut_reply_to(self, marker: bytes, every: bool = False, refuse_after: bool = False) -> None:
        """``refuse_after``: once it has cut, the relay stops listening (a reconnect is refused)."""
        self.marker, self.delay, self.every, self.cut = marker, 0.0, every, True
        self.refuse_after = refuse_after
        self.held.clear()

    def cut_before(self, marker: bytes) -> None:
        """Until `disarm`, each command that contains ``marker`` never reaches Redis: its connection
        is cut as it is sent (a Redis that cannot be reached for a moment)."""
        self.marker, self.every, self.cut_first = marker, True, True
        self.held.clear()

    def disarm(self) -> None:
        self.marker, self.every, self.cut, self.cut_first = None, False, False, False

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._writers |= {writer, up_writer}
        slow_next = {"replies": 0}  # replies still to hold on this connection

        async def mark(data: bytes) -> None:
            if self.marker is not None and self.marker in data:
                if self.cut_first:
                    self.held.set()
                    writer.close()
                    up_writer.close()
                    raise ConnectionResetError("the relay cut the connection before the command went on")
                if not self.every:
                    self.marker = None
                slow_next["replies"] += 1

        async def hold(data: bytes) -> None:
            if slow_next["replies"]:
                slow_next["replies"] -= 1
                self.held.set()
                if self.cut:
                    if self.refuse_after and self._server is not None:
                        self._server.close()
                    writer.close()
                    up_writer.close()
                    raise ConnectionResetError("the relay cut the connection before the reply")
                await asyncio.sleep(self.delay)

        try:
            await asyncio.gather(self.pipe(reader, up_writer, mark), self.pipe(up_reader, writer, hold))
        finally:
            self._writers -= {writer, up_writer}


# -- a Redis whose reply to one command is held or garbled -------------------------------


class TamperingProxy(LoopbackRelay):
    """A real TCP relay to the real Redis that tampers with the reply to the next command that
    contains a marker (the command itself runs in Redis): ``hold(marker)`` keeps the reply until
    `release`; ``garble(marker, junk)`` sends ``junk`` instead. Several markers may be armed at
    once, each used once. ``closed_by_app`` counts the connections the app closed."""

    def __init__(self, upstream_port: int) -> None:
        super().__init__()
        self.upstream_port = upstream_port
        self._rules: dict[bytes, bytes | None] = {}  # marker -> the junk to answer, or None: hold
        self.held = asyncio.Event()  # a held reply arrived from Redis
        self.garbled = asyncio.Event()  # junk went out instead of a reply
        self._released = asyncio.Event()
        self.closed_by_app = 0

    def hold(self, marker: bytes) -> None:
        self._rules[marker] = None

    def garble(self, marker: bytes, junk: bytes) -> None:
        self._rules[marker] = junk

    def release(self) -> None:
        self._released.set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._writers |= {writer, up_writer}
        next_replies: list[bytes | None] = []  # what to do with this connection's next replies

        async def requests() -> None:
            try:
                while data := await reader.read(65536):
                    for marker in [m for m in self._rules if m in data]:
                        next_replies.append(self._rules.pop(marker))
                    up_writer.write(data)
                    await up_writer.drain()
                self.closed_by_app += 1
            except (ConnectionError, OSError):
                pass
            finally:
                up_writer.close()

        async def replies() -> None:
            try:
                while data := await up_reader.read(65536):
                    if next_replies:
                        junk = next_replies.pop(0)
                        if junk is None:
                            self.held.set()
                            await self._released.wait()
                        else:
                            data = junk
                            self.garbled.set()
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                writer.close()

        try:
            await asyncio.gather(requests(), replies())
        finally:
            self._writers -= {writer, up_writer}
