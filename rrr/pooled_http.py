"""POSTs to one URL over HTTP/1.1 connections that stay open between calls.

The connect proxy is asked once per handshake. Tornado's HTTP client opens a new connection per
request (its client side has no keep-alive): a TCP handshake each time (and a TLS one for
``https://``), and a socket left in TIME_WAIT per call, which caps a sustained rate of calls to a
remote application at about 470 a second (28,000 ephemeral ports over 60 s). Here a call takes an
idle connection if there is one, and gives it back once its answer was read whole, unless the
answer said ``Connection: close`` or the server ended it.

An application server closes idle connections on its own clock (gunicorn after 2 s): a kept
connection with anything to read (its end, or a stray answer) is seen before it is used (a peek
says so) and dropped; a call on one closed just as the call went out (no answer at all) is asked
again once, on a new connection. A call is a question (who is this cookie, may it join this room):
asking it twice is harmless.

The HTTP itself is Tornado's (`tornado.http1connection`), as its own client uses it: the answer's
size limit, chunked bodies, header parsing. Nothing here follows a redirect or decompresses.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import ssl
from urllib.parse import unquote, urlsplit

from tornado import httputil
from tornado.http1connection import HTTP1Connection, HTTP1ConnectionParameters
from tornado.iostream import IOStream, StreamClosedError
from tornado.netutil import Resolver
from tornado.tcpclient import TCPClient


class Unanswered(ConnectionError):
    """Nothing of an answer came: the connection was closed (or refused) first."""


class _Answer(httputil.HTTPMessageDelegate):
    """What one call got: its status, headers and body."""

    def __init__(self) -> None:
        self.code = 0
        self.version = ""
        self.headers = httputil.HTTPHeaders()
        self.chunks: list[bytes] = []

    def headers_received(
        self, start_line: httputil.RequestStartLine | httputil.ResponseStartLine, headers: httputil.HTTPHeaders,
    ) -> None:
        assert isinstance(start_line, httputil.ResponseStartLine)
        self.code = start_line.code
        self.version = start_line.version
        self.headers = headers

    def data_received(self, chunk: bytes) -> None:
        self.chunks.append(chunk)

    def finish(self) -> None:
        pass

    def on_connection_close(self) -> None:
        pass

    @property
    def keeps_alive(self) -> bool:
        tokens = {t.strip().lower() for t in self.headers.get("Connection", "").split(",")}
        if self.version == "HTTP/1.1":
            return "close" not in tokens
        return "keep-alive" in tokens


def _still_idle(stream: IOStream) -> bool:
    """Whether a kept connection can carry the next call: open, and nothing to read on it. An idle
    HTTP/1.1 connection has nothing to say; an end (EOF, a TLS close), an error or a stray answer (a
    408 some servers send before they close) each mean it cannot, and are never read as a call's answer."""
    if stream.closed():
        return False
    try:
        stream.socket.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return True  # nothing to read: still open, still quiet
    except OSError:
        return False
    return False


class PooledPoster:
    """POSTs of a body to ``url``, at most ``max_calls`` at once (more wait their turn within the
    same ``timeout``), each answer at most ``max_answer`` bytes. `post` raises `OSError`,
    `asyncio.TimeoutError` or `tornado.httputil.HTTPInputError` when there is no answer."""

    def __init__(
        self, url: str, *, timeout: float, max_calls: int, max_answer: int, resolver: Resolver | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        parts = urlsplit(url)
        self.timeout = timeout
        self._host = parts.hostname or ""
        self._tls = parts.scheme == "https"
        self._port = parts.port or (443 if self._tls else 80)
        self._target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._headers = {"Host": parts.netloc.rpartition("@")[2], **(headers or {})}
        if parts.username is not None:
            userinfo = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            self._headers["Authorization"] = "Basic " + base64.b64encode(userinfo.encode()).decode()
        self._params = HTTP1ConnectionParameters(
            max_body_size=max_answer, header_timeout=timeout, body_timeout=timeout, decompress=False,
        )
        self._tcp = TCPClient(resolver=resolver)
        self._turns = asyncio.Semaphore(max_calls)
        self._idle: list[IOStream] = []
        self._max_idle = max_calls
        #: Connections opened so far (what the tests and the benchmark read).
        self.opened = 0

    async def post(self, body: bytes) -> tuple[int, bytes]:
        """The answer's status and body."""
        async with asyncio.timeout(self.timeout):
            async with self._turns:
                stream, reused = await self._take()
                try:
                    return await self._call(stream, body)
                except Unanswered:
                    if not reused:
                        raise
                # The server closed it as the call went out (nothing of an answer came): once more, anew.
                stream, _ = await self._take(fresh=True)
                return await self._call(stream, body)

    async def _take(self, fresh: bool = False) -> tuple[IOStream, bool]:
        while self._idle and not fresh:
            stream = self._idle.pop()
            if _still_idle(stream):
                return stream, True
            stream.close()
        ssl_options: ssl.SSLContext | None = ssl.create_default_context() if self._tls else None
        stream = await self._tcp.connect(self._host, self._port, ssl_options=ssl_options)
        stream.set_nodelay(True)
        self.opened += 1
        return stream, False

    async def _call(self, stream: IOStream, body: bytes) -> tuple[int, bytes]:
        conn = HTTP1Connection(stream, True, self._params)
        answer = _Answer()
        kept = False
        try:
            headers = httputil.HTTPHeaders({**self._headers, "Content-Length": str(len(body))})
            try:
                await conn.write_headers(httputil.RequestStartLine("POST", self._target, "HTTP/1.1"), headers, body)
                conn.finish()
                whole = await conn.read_response(answer)
            except StreamClosedError as e:
                whole = False
                if not answer.code:
                    raise Unanswered(f"the connection closed before an answer: {e}") from None
            if not answer.code:
                raise Unanswered("the connection closed before an answer")
            if not whole:  # Tornado read part of it: malformed, or longer than max_answer
                raise httputil.HTTPInputError("the answer was malformed or longer than the limit")
            kept = answer.keeps_alive and not stream.closed()
        finally:
            if kept and len(self._idle) < self._max_idle:
                self._idle.append(conn.detach())
            else:
                stream.close()
        return answer.code, b"".join(answer.chunks)

    def close(self) -> None:
        for stream in self._idle:
            stream.close()
        self._idle.clear()
        self._tcp.close()
