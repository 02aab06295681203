"""Real WebSocket clients that remember every frame, and the one way tests wait for a condition."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import tornado.httpclient
from tornado.websocket import WebSocketClientConnection, websocket_connect


async def wait_until(pred: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``pred`` (sync or async) until truthy; behaviour tests use generous timeouts."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


class FrameLog:
    """Every frame a client got, and the ways tests read them (a WebSocket, an SSE stream, polls)."""

    frames: list[dict[str, Any]]

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [f for f in self.frames if f.get("type") == kind]

    def counts(self, room: str | None = None) -> list[dict[str, Any]]:
        return [f for f in self.of_type("connection_message") if room is None or f["room"] == room]

    def last_count(self, room: str | None = None) -> tuple[int, int] | None:
        counts = self.counts(room)
        return (counts[-1]["connections"], counts[-1]["tabs"]) if counts else None

    async def next(self, kind: str, timeout: float = 10.0, after: int | None = None) -> dict[str, Any]:
        """The first frame of ``kind`` at or after index ``after`` (default: any not yet seen)."""
        start = len(self.frames) if after is None else after

        def found() -> dict[str, Any] | None:
            return next((f for f in self.frames[start:] if f.get("type") == kind), None)

        return await wait_until(found, timeout, what=f"a {kind!r} frame")

    async def settles_on(self, connections: int, tabs: int | None = None, room: str | None = None,
                         timeout: float = 10.0) -> None:
        def ok() -> bool:
            last = self.last_count(room)
            return last is not None and last[0] == connections and (tabs is None or last[1] == tabs)

        await wait_until(ok, timeout, what=f"count {connections}/{tabs} (last {self.last_count(room)})")


class Client(FrameLog):
    """A real WebSocket client that remembers every frame it got."""

    def __init__(self, conn: WebSocketClientConnection) -> None:
        self.conn = conn
        self.frames: list[dict[str, Any]] = []
        self.sent_at = 0
        self.closed = asyncio.Event()
        self._new = asyncio.Event()
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        while True:
            raw = await self.conn.read_message()
            if raw is None:
                self.closed.set()
                self._new.set()
                return
            self.frames.append(json.loads(raw))
            self._new.set()

    @property
    def close_code(self) -> int | None:
        return self.conn.close_code

    def send(self, **msg: Any) -> Awaitable[None]:
        self.sent_at = len(self.frames)
        return self.conn.write_message(json.dumps(msg))

    async def reply(self, kind: str, timeout: float = 10.0) -> dict[str, Any]:
        """The first ``kind`` frame since the last ``send``. ``next`` after ``await send`` can miss
        it: awaiting the write runs the loop, and a fast answer (a second tab's subscribe is
        answered without Redis) is read before ``next`` takes its starting point."""
        return await self.next(kind, timeout, after=self.sent_at)

    def close(self, code: int | None = None) -> None:
        self.conn.close(code)


async def connect(url: str, origin: str | None = None, **kwargs: Any) -> Client:
    headers = {"Origin": origin} if origin else {}
    request = tornado.httpclient.HTTPRequest(url, headers=headers)
    return Client(await websocket_connect(request, **kwargs))


async def signed_in(url: str, token: str, clients: list[Client]) -> Client:
    """A socket at ``url`` (kept in ``clients``, the fixture that closes them) that sent ``auth`` with ``token``
    and was answered ``authenticated``: a user who may join what the token grants."""
    c = await connect(url)
    clients.append(c)
    await c.send(type="auth", token=token)
    await c.next("authenticated", after=0)
    return c
