"""Real clients of the fallback transports over loopback: an SSE stream read off its raw bytes
(chunks, ``data:``/``id:`` lines, comments), a long-polling session that keeps polling, and
one-request HTTP over plain asyncio streams (one connection per request, closed by cancelling it:
a client that goes away, with no pool to hold requests back)."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from support.clients import Client, FrameLog, connect, wait_until


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


async def _head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("the server closed the connection before answering")
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


async def _chunks(reader: asyncio.StreamReader) -> Any:
    """The chunks of a chunked body, as they come (an async iterator of bytes)."""
    while True:
        size_line = await reader.readline()
        if not size_line:
            return
        size = int(size_line.split(b";")[0].strip() or b"0", 16)
        if size == 0:
            await reader.readline()
            return
        data = await reader.readexactly(size)
        await reader.readexactly(2)
        yield data


async def request(
    url: str, method: str = "GET", body: bytes | str | None = None, headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> Response:
    """One HTTP/1.1 request on a connection of its own; the whole answer."""
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    data = body.encode() if isinstance(body, str) else (body or b"")
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        given = dict(headers or {})
        head = [f"{method} {path} HTTP/1.1", f"Host: {given.pop('Host', parts.netloc)}", "Connection: close"]
        for name, value in given.items():
            head.append(f"{name}: {value}")
        if body is not None or method == "POST":
            head.append(f"Content-Length: {len(data)}")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + data)
        status, got = await asyncio.wait_for(_head(reader), timeout)

        async def read_body() -> bytes:
            if got.get("transfer-encoding") == "chunked":
                return b"".join([c async for c in _chunks(reader)])
            if "content-length" in got:
                return await reader.readexactly(int(got["content-length"]))
            return await reader.read()

        return Response(status, got, await asyncio.wait_for(read_body(), timeout))
    finally:
        writer.close()


async def post(base: str, kind: str, session: str, frame: Any, headers: dict[str, str] | None = None,
               timeout: float = 15.0) -> Response:
    """One frame up, as the browser library sends it: ``POST <base>/<kind>/<session>/`` as JSON."""
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    body = frame if isinstance(frame, (str, bytes)) else json.dumps(frame)
    return await request(f"{base}/{kind}/{session}/", "POST", body, all_headers, timeout)


@dataclass
class Event:
    data: str
    id: str | None = None
    fields: list[str] = field(default_factory=list)  # every field name the event had


class SseClient(FrameLog):
    """An open SSE response: each event's JSON is a frame; the raw body, comments and ids are kept."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = b""  # an error answer's body
        self.raw = ""  # the stream's text, as it came (chunk framing removed)
        self.events: list[Event] = []
        self.comments: list[tuple[float, str]] = []  # (monotonic time, text)
        self.frames: list[dict[str, Any]] = []
        self.arrivals: list[float] = []  # monotonic time of each frame
        self.ended = asyncio.Event()
        self._writer: asyncio.StreamWriter | None = None
        self._reader: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, base: str, path: str = "/sse/", headers: dict[str, str] | None = None,
                   timeout: float = 10.0) -> SseClient:
        client = cls(base)
        parts = urlsplit(base + path)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        client._writer = writer
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        head = [f"GET {target} HTTP/1.1", f"Host: {parts.netloc}", "Accept: text/event-stream"]
        head += [f"{k}: {v}" for k, v in (headers or {}).items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
        client.status, client.headers = await asyncio.wait_for(_head(reader), timeout)
        if client.status != 200 or client.headers.get("transfer-encoding") != "chunked":
            if "content-length" in client.headers:
                client.body = await reader.readexactly(int(client.headers["content-length"]))
            writer.close()
            client.ended.set()
            return client
        client._reader = asyncio.ensure_future(client._read(reader))
        return client

    async def _read(self, reader: asyncio.StreamReader) -> None:
        pending = ""
        try:
            async for chunk in _chunks(reader):
                text = chunk.decode("utf-8")
                self.raw += text
                pending += text
                while "\n\n" in pending:
                    block, pending = pending.split("\n\n", 1)
                    self._block(block)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.ended.set()

    def _block(self, block: str) -> None:
        data: list[str] = []
        event = Event("")
        for line in block.split("\n"):
            if line.startswith(":"):
                self.comments.append((time.monotonic(), line))
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            event.fields.append(name)
            if name == "data":
                data.append(value)
            elif name == "id":
                event.id = value
        if not event.fields:
            return
        event.data = "\n".join(data)
        self.events.append(event)
        self.frames.append(json.loads(event.data))
        self.arrivals.append(time.monotonic())

    @property
    def session(self) -> str:
        first = self.frames[0] if self.frames else {}
        assert first.get("type") == "session", f"the stream did not start with its session: {self.frames[:1]}"
        return str(first["session"])

    async def started(self) -> SseClient:
        await wait_until(lambda: self.frames or self.ended.is_set(), what="the session event")
        return self

    async def send(self, frame: Any | None = None, **msg: Any) -> Response:
        return await post(self.base, "sse", self.session, frame if frame is not None else msg)

    def close(self) -> None:
        """The client goes away (closes its TCP connection)."""
        if self._writer is not None:
            self._writer.close()
        if self._reader is not None:
            self._reader.cancel()

    async def aclose(self) -> None:
        self.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)


class PollClient(FrameLog):
    """A long-polling session that polls again as soon as an answer comes, as the library does: the
    frames it takes (each once, by number), and every poll it made."""

    def __init__(self, base: str, session: str, headers: dict[str, str]) -> None:
        self.base = base
        self.session = session
        self.headers = headers
        self.seq = 0
        self.frames: list[dict[str, Any]] = []
        self.answers: list[tuple[int, int, float]] = []  # (seq asked, status, seconds it took)
        self.gone = asyncio.Event()
        self.stopped = False
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, base: str, headers: dict[str, str] | None = None, poll: bool = True) -> PollClient:
        r = await request(f"{base}/poll/", headers=headers)
        assert r.status == 200, f"GET /poll/: {r.status} {r.body!r}"
        body = r.json()
        client = cls(base, body["session"], dict(headers or {}))
        client.take(body)
        if poll:
            client.start()
        return client

    def take(self, body: dict[str, Any]) -> None:
        """What the library's pollBatch does: frames numbered ``seq - len + 1`` .. ``seq``, each taken once."""
        first = body["seq"] - len(body["frames"]) + 1
        for i, frame in enumerate(body["frames"]):
            if first + i > self.seq:
                self.frames.append(frame)
        self.seq = max(self.seq, body["seq"])

    async def poll_once(self, seq: int | None = None, timeout: float = 70.0) -> Response:
        asked = self.seq if seq is None else seq
        started = time.monotonic()
        r = await request(f"{self.base}/poll/{self.session}/?seq={asked}", headers=self.headers, timeout=timeout)
        self.answers.append((asked, r.status, time.monotonic() - started))
        return r

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while not self.stopped:
            try:
                r = await self.poll_once()
            except (ConnectionError, OSError, asyncio.TimeoutError):
                await asyncio.sleep(0.2)
                continue
            if self.stopped:
                return
            if r.status == 404:
                self.gone.set()
                return
            if r.status == 200:
                self.take(r.json())
            else:
                await asyncio.sleep(0.2)

    async def send(self, frame: Any | None = None, **msg: Any) -> Response:
        return await post(self.base, "poll", self.session, frame if frame is not None else msg)

    def close(self) -> None:
        """Stop polling (the tab closed): the session lingers on the server until it expires. The
        flag as well as the cancel: on Python 3.11 ``asyncio.wait_for`` swallows a cancel that lands
        as its answer comes (a poll answered in the same loop turn as the test's other client), and
        the loop polled on, so the session never expired."""
        self.stopped = True
        if self._task is not None:
            self._task.cancel()

    async def aclose(self) -> None:
        self.close()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)


async def sessions_of(victim: str, watched_from: str, room: str, streams: list[SseClient | PollClient],
                      clients: list[Client]) -> tuple[SseClient, PollClient, Client]:
    """An SSE and a polling session on the server at ``victim``, both subscribed to ``room``, and a
    count watcher of it on ``watched_from`` that saw all three there (the set-up of a kill test)."""
    s = await SseClient.open(victim)
    streams.append(s)
    await s.started()
    p = await PollClient.open(victim)
    streams.append(p)
    for c in (s, p):
        assert (await c.send(type="subscribe", room=room, sub="t")).status == 202
    watcher = await connect(watched_from.replace("http", "ws") + f"/ws/count/{room}/")
    clients.append(watcher)
    await watcher.settles_on(3)
    return s, p, watcher
