"""The HTTP server's own defences: time limits on slow or silent clients, a cap on open
connections that sheds load before the process runs out of descriptors, and an accept loop
that pauses (instead of spinning and logging a traceback per attempt) when it does run out.

Tornado's accept handler only expects ``BlockingIOError`` and ``ConnectionAbortedError``: at
the descriptor limit ``accept()`` raises EMFILE while the listening socket stays readable, so
the loop calls it again at once, forever. Here the listening sockets are registered by
``GuardedHTTPServer`` itself.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import socket
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeGuard

import tornado.httpserver
import tornado.httputil
from tornado import gen
from tornado.ioloop import IOLoop
from tornado.iostream import StreamClosedError

from ..metrics import Metrics
from ..supervise import RateLimitedLog
from .wsframe import FrameStream

log = logging.getLogger("rrr.http")

# accept() errors that mean "out of a resource": retrying at once cannot succeed.
EXHAUSTED = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
ACCEPT_PAUSE = 0.5  # seconds without accepting after such an error
ACCEPTS_PER_WAKEUP = 128
LOG_EVERY = 30.0  # seconds between two log lines about the same trouble

SHED_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 30\r\n"
    b"Retry-After: 1\r\n"
    b"Connection: close\r\n"
    b"\r\n"
    b"server at its connection limit"
)


def default_max_connections(headroom_min: int = 64) -> int:
    """What --max-connections 0 means: the descriptor limit, less room for Redis, logs and listeners.

    Shedding must start before ``accept()`` fails: a 503 needs a descriptor for a moment, and
    so do Redis reconnects.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return 1 << 20
    return max(1, soft - max(headroom_min, soft // 8))


class GuardedStream(FrameStream):
    """A client connection that reports its close (for the connection count) and puts two
    clocks on each request head: ``idle`` until its first byte, ``header`` from there to the
    blank line. HTTP1Connection reads every request head with ``read_until_regex``. Once
    upgraded, it reads a WebSocket's lone pongs itself (`rrr.edge.wsframe.FrameStream`)."""

    # Slots, not instance attributes: IOStream already sets 27 attributes, and CPython (3.11)
    # keeps an instance's attributes in a compact array shared with its class only while there
    # are at most 29 of them. Three more made every stream's attributes a dict of its own,
    # 1.3 KiB more per connection, idle WebSockets included (bench/socket_memory.py).
    __slots__ = ("_server", "_idle_timeout", "_header_timeout")

    def __init__(
        self, sock: socket.socket, *, server: GuardedHTTPServer, idle_timeout: float | None,
        header_timeout: float | None, **kwargs: Any,
    ) -> None:
        super().__init__(sock, **kwargs)
        self._server = server
        self._idle_timeout = idle_timeout
        self._header_timeout = header_timeout

    def close_fd(self) -> None:
        try:
            super().close_fd()
        finally:
            self._server.released()

    def read_until_regex(self, regex: bytes, max_bytes: int | None = None) -> Awaitable[bytes]:
        """The request head, each part of the wait on its clock; when the client sent the whole head
        with its connection (the usual case) it is read here and now, with no clock and no Task."""
        try:
            first = self.read_bytes(1)
        except Exception as e:  # noqa: BLE001 - a closed stream: the caller's await raises it, as it always did
            failed: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
            failed.set_exception(e)
            return failed
        rest_max = None if max_bytes is None else max(1, max_bytes - 1)
        if not _ready(first):
            return asyncio.ensure_future(self._read_head(first, regex, rest_max))
        rest = super().read_until_regex(regex, rest_max)
        if not _ready(rest):
            return asyncio.ensure_future(self._read_rest(first.result(), rest))
        head: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        head.set_result(first.result() + rest.result())
        return head

    async def _read_head(self, first: Awaitable[bytes], regex: bytes, rest_max: int | None) -> bytes:
        got = await self._within(self._idle_timeout, first, "idle")
        return await self._read_rest(got, super().read_until_regex(regex, rest_max))

    async def _read_rest(self, first: bytes, rest: Awaitable[bytes]) -> bytes:
        return first + await self._within(self._header_timeout, rest, "header")

    async def _within(self, timeout: float | None, read: Awaitable[bytes], phase: str) -> bytes:
        # Already read (a client sends its request head with the connection, so this is the
        # usual case): no clock is needed, and none is set up and torn down again.
        if timeout is None or (isinstance(read, asyncio.Future) and read.done()):
            return await read
        try:
            return await gen.with_timeout(self.io_loop.time() + timeout, read, quiet_exceptions=StreamClosedError)
        except TimeoutError:
            self._server.timed_out(phase)
            self.close()
            raise StreamClosedError() from None


def _ready(read: Awaitable[bytes]) -> TypeGuard[asyncio.Future[bytes]]:
    """Whether ``read`` is done with bytes in hand (not an error: that is raised where it is awaited)."""
    return isinstance(read, asyncio.Future) and read.done() and not read.cancelled() and read.exception() is None


class GuardedHTTPServer(tornado.httpserver.HTTPServer):
    """An HTTPServer with its own accept loop: counts descriptors, sheds over the cap, pauses on EMFILE.

    Build it with ``make_http_server``, which sets the limits.
    """

    metrics: Metrics
    max_connections: int
    idle_timeout: float | None
    header_timeout: float | None

    def guard(self, metrics: Metrics, max_connections: int, idle_timeout: float | None,
              header_timeout: float | None) -> None:
        self.metrics = metrics
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.header_timeout = header_timeout
        self.open_connections = 0
        self._listeners: dict[int, socket.socket] = {}
        self._registered: set[int] = set()
        self._resume: object | None = None
        self._log = RateLimitedLog(log, LOG_EVERY)
        metrics.http_open_connections.set_function(lambda: self.open_connections)
        metrics.http_max_connections.set(max_connections)

    # -- listening -----------------------------------------------------------

    def add_sockets(self, sockets: Iterable[socket.socket]) -> None:
        for sock in sockets:
            self._listeners[sock.fileno()] = sock
            self._listen(sock)

    def stop(self) -> None:
        """No new connection, and each open one closes after the answer to its next request: a
        balancer's kept-alive connection would otherwise bring a draining process requests until it
        exits, and lose (502) those it sent just as the connection was closed under it."""
        self.conn_params.no_keep_alive = True  # read per request by each connection (one shared object)
        if self._resume is not None:
            IOLoop.current().remove_timeout(self._resume)
            self._resume = None
        for fd, sock in list(self._listeners.items()):
            self._unlisten(fd)
            sock.close()
        self._listeners.clear()
        super().stop()

    def _listen(self, sock: socket.socket) -> None:
        fd = sock.fileno()
        if fd not in self._registered:
            IOLoop.current().add_handler(sock, lambda _fd, _events: self._accept(sock), IOLoop.READ)
            self._registered.add(fd)

    def _unlisten(self, fd: int) -> None:
        if fd in self._registered:
            IOLoop.current().remove_handler(fd)
            self._registered.discard(fd)

    def _accept(self, sock: socket.socket) -> None:
        for _ in range(ACCEPTS_PER_WAKEUP):
            if sock.fileno() not in self._registered:
                return
            try:
                conn, address = sock.accept()
            except BlockingIOError:
                return
            except ConnectionAbortedError:
                continue
            except OSError as e:
                self._pause_accepting(e)
                return
            if self.open_connections >= self.max_connections:
                self._shed(conn)
                continue
            self._serve(conn, address)

    def _pause_accepting(self, e: OSError) -> None:
        """Out of descriptors (or memory): stop watching the listeners for a moment, or the
        still-readable socket would wake the loop for the same failure again at once."""
        name = errno.errorcode.get(e.errno or 0, str(e.errno))
        self.metrics.accept_errors.labels(name).inc()
        hint = " (out of file descriptors: lower --max-connections or raise ulimit -n)" if e.errno in EXHAUSTED else ""
        self._log.warning("accept", "accept() failed: %s%s; pausing accepts for %.1f s", e, hint, ACCEPT_PAUSE)
        for fd in list(self._registered):
            self._unlisten(fd)
        if self._resume is None:
            self._resume = IOLoop.current().call_later(ACCEPT_PAUSE, self._resume_accepting)

    def _resume_accepting(self) -> None:
        self._resume = None
        for sock in self._listeners.values():
            self._listen(sock)
            self._accept(sock)

    # -- connections ---------------------------------------------------------

    def _shed(self, conn: socket.socket) -> None:
        """A minimal 503 written straight to the new socket, which is closed at once: shedding
        costs a descriptor for microseconds, not a connection's worth of buffers and timers."""
        self.metrics.connections_shed.inc()
        self._log.warning(
            "shed", "%d connections open (--max-connections): answering new ones 503 and closing them",
            self.open_connections,
        )
        try:
            conn.setblocking(False)
            conn.send(SHED_RESPONSE)
            conn.shutdown(socket.SHUT_WR)
            # Read what the client already sent: closing over unread bytes would reset the
            # connection and could destroy the 503 before the client reads it.
            conn.recv(65536)
        except OSError:
            pass
        finally:
            conn.close()

    def _serve(self, conn: socket.socket, address: Any) -> None:
        self.open_connections += 1
        try:
            stream = GuardedStream(
                conn, server=self, idle_timeout=self.idle_timeout, header_timeout=self.header_timeout,
                max_buffer_size=self.max_buffer_size, read_chunk_size=self.read_chunk_size,
            )
        except Exception:
            self.open_connections -= 1
            conn.close()
            raise
        self.handle_stream(stream, address)

    def released(self) -> None:
        self.open_connections -= 1

    def timed_out(self, phase: str) -> None:
        self.metrics.http_timeouts.labels(phase).inc()


def make_http_server(
    app: tornado.httputil.HTTPServerConnectionDelegate | Callable[[tornado.httputil.HTTPServerRequest], None],
    metrics: Metrics, *, xheaders: bool = False, max_body_size: int | None = None,
    header_timeout: float = 10.0, body_timeout: float = 30.0, idle_timeout: float = 60.0, max_connections: int = 0,
) -> GuardedHTTPServer:
    """The HTTP server ``app.py`` runs (tests build theirs here too). A timeout of 0 turns it
    off; ``max_connections`` 0 derives the cap from the descriptor limit."""
    idle = idle_timeout or None
    header = header_timeout or None
    server = GuardedHTTPServer(
        app, xheaders=xheaders, max_body_size=max_body_size,
        # Our stream enforces the idle and header clocks; Tornado's own (which starts both at
        # once) stays as a backstop behind them.
        idle_connection_timeout=(idle or 3600) + (header or 3600) + 1,
        body_timeout=body_timeout or None,
    )
    cap = max_connections or default_max_connections()
    server.guard(metrics, cap, idle, header)
    log.info(
        "at most %d open connections (descriptor limit %d); timeouts: idle %s s, header %s s, body %s s",
        cap, resource.getrlimit(resource.RLIMIT_NOFILE)[0], idle, header, body_timeout or None,
    )
    return server
