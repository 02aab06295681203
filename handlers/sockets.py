"""WebSocket endpoints: the talk's one-room socket and the multiplexed ``/ws/``."""

from __future__ import annotations

import logging
from asyncio import Future
from collections.abc import Coroutine, Iterable
from functools import partial
from typing import Any

import tornado.web
from tornado.iostream import StreamBufferFullError, StreamClosedError
from tornado.websocket import WebSocketClosedError, WebSocketHandler, WebSocketProtocol

from handlers.base import SafeLogs, SecureHeaders
from rrr import protocol
from rrr.auth import Identity, TokenError, needs_grant
from rrr.edge import wsframe
from rrr.edge.headers import empty_in_place, request_host
from rrr.edge.keepalive import Keepalive
from rrr.edge.origins import origin_allowed
from rrr.edge.outbox import Outbox, SocketSink, room_now
from rrr.edge.requestlog import loggable, loggable_path
from rrr.errors import BackplaneError
from rrr.proxies import HandshakeRefused
from rrr.session import Session, Shared

log = logging.getLogger("rrr.sockets")


class RelaySocket(SafeLogs, WebSocketHandler):
    """``WS /ws/``: one socket, many rooms, one subscription per tab."""

    # Slots: Tornado's RequestHandler and WebSocketHandler set 27 attributes on every handler,
    # and CPython (3.11) keeps an instance's attributes in a compact array shared with its
    # class only while there are at most 29. Ours on top made every socket's handler carry a
    # dict of its own (1.2 KiB per idle socket; bench/socket_memory.py).
    __slots__ = (
        "shared", "identity", "since", "keepalive", "ip", "allowed_origins", "send_buffer", "bulk_limit", "xheaders",
        "session", "_fast", "_outbox", "socket_id",
    )

    def initialize(
        self, shared: Shared, keepalive: Keepalive, allowed_origins: frozenset[str], send_buffer: int,
        bulk_limit: int, xheaders: bool,
    ) -> None:
        self.shared = shared  # the hub, caps, verifier, metrics: one object for every socket
        self.identity: Identity | None = None  # from ?token= on the one-room socket
        self.since: protocol.Since | None = None  # from ?since=&epoch= on the one-room socket
        self.keepalive = keepalive
        self.ip: str | None = None  # set once open() counts this socket against its address
        self.allowed_origins = allowed_origins
        self.send_buffer = send_buffer
        self.bulk_limit = bulk_limit
        self.xheaders = xheaders
        self.session: Session | None = None
        self._fast = False
        self._outbox: Outbox | None = None  # only while bulk frames wait for the stream (rrr/edge/outbox.py)
        self.socket_id: str | None = None  # once it whispers (a Pusher socket: from the start)

    def prepare(self) -> None:
        # Tornado skips check_origin when the Origin's host:port equals Host, whatever its
        # scheme (or when Sec-Fetch-Site says same-origin); ours compares schemes too, so it
        # judges every handshake that carries an Origin.
        origin = self.request.headers.get("Origin")
        if origin is not None and not self.check_origin(origin):
            # Logged with the request's line (rrr.edge.requestlog: at most once per 30 s), not per refusal.
            raise tornado.web.HTTPError(
                403, "origin %s not allowed for %s://%s", loggable(origin, 100), self.request.protocol,
                loggable(self._host(), 100),
            )

    def get_websocket_protocol(self) -> WebSocketProtocol | None:
        """Tornado's protocol, reading small frames (the keepalive's pongs) in one step (rrr/edge/wsframe.py)."""
        return wsframe.make_protocol(self)

    def _host(self) -> str:
        host = self.request.host
        if self.xheaders:
            host = self.request.headers.get("X-Forwarded-Host", host).split(",")[0]
        return host

    def check_origin(self, origin: str) -> bool:
        return origin_allowed(origin, self._host(), self.allowed_origins, self.request.protocol)

    def get(self, *args: str, **kwargs: str) -> Coroutine[Any, Any, None]:
        """Refuse an address over ``--max-sockets-per-ip`` before the upgrade, with a 429.

        Nothing awaits between here and ``open()``, where the socket is counted, so two
        handshakes cannot both squeeze through the last slot.

        Not a coroutine itself: it hands Tornado the upgrade's own coroutine to await. That
        coroutine runs for the socket's whole life, and a frame of ours awaiting it would be
        kept as long (about 390 bytes per idle socket)."""
        if not self.shared.addresses.may_open_socket(self.request.remote_ip or ""):
            return self._too_many_sockets()
        if self.shared.asks_connect_proxy(self.request.headers):
            return self._get_proxied("ws", *args, **kwargs)
        return super().get(*args, **kwargs)

    async def _get_proxied(self, transport: str, *args: str, **kwargs: str) -> None:
        """``--connect-proxy-url``: the handshake carries a cookie (or ``Authorization``) and no
        token, so the application is asked who it is before the upgrade (after the Origin check and
        the per-address cap, which `prepare` and `get` passed): a 403 or a 503 with ``Retry-After``
        refuses it, and a socket is never opened anonymous for want of an answer."""
        try:
            self.identity = await self.shared.connect_identity(transport, self.request.headers,
                                                               self.request.remote_ip or "")
        except HandshakeRefused as e:
            raise _Refusal(e.status, e.reason, e.retry_after) from None
        await self._upgrade(*args, **kwargs)

    def _upgrade(self, *args: str, **kwargs: str) -> Coroutine[Any, Any, None]:
        """The upgrade once the handshake's identity is known: the per-address cap judged again
        (other handshakes may have opened while this one waited), then nothing awaits until
        `open` counts the socket."""
        if not self.shared.addresses.may_open_socket(self.request.remote_ip or ""):
            return self._too_many_sockets()
        return WebSocketHandler.get(self, *args, **kwargs)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, _Refusal) and exc.retry_after is not None:
            self.set_header("Retry-After", str(exc.retry_after))
        super().write_error(status_code, **kwargs)

    async def _too_many_sockets(self) -> None:
        self.shared.metrics.limited.labels("sockets_per_ip").inc()
        self.set_status(429)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.set_header("Retry-After", "10")
        reason = f"at most {self.shared.addresses.max_sockets} sockets per client address"
        self.finish(protocol.dumps(protocol.http_error(429, reason)))

    def open(self, *args: str) -> None:
        if self._on_close_called:
            # The client hung up while get() awaited (a token's revocation check, the connect proxy): Tornado ran
            # on_close then and will not again, so nothing may be registered for this socket.
            return
        self.ip = self.request.remote_ip or ""
        self.shared.addresses.socket_opened(self.ip)
        if self.shared.hub.closing:
            self.close(1001, "server shutting down")
            return
        conn = self.ws_connection
        assert conn is not None
        # A client that stops reading may buffer at most this much before we cut it off.
        if conn.stream is not None:
            conn.stream.max_write_buffer_size = self.send_buffer
        self._fast = wsframe.fast_path_ok(conn)
        self.session = self._new_session(*args)
        self.keepalive.add(self)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("open %s from %s", loggable_path(self.request.path), self.request.remote_ip)
        # The handshake is done and nothing reads these again. Tornado's frames keep a reference
        # to the headers for the socket's whole life, so empty them in place: a browser sends
        # 1-2 KiB of them (cookies, user agent), more than the rest of an idle socket's state.
        # Emptied with their tables (``clear()`` would keep them), and the 101's headers too, which the
        # handler keeps after writing them: about 1.5 KiB more per idle socket (issue 25).
        empty_in_place(self.request.headers)
        empty_in_place(self._headers)
        # The request also holds the HTTP/1.1 connection objects of the handshake, and through
        # them its finished request loop (a Task and its coroutine), a Future, the start lines
        # and the address context: about 1.5 KiB an idle socket keeps for nothing. The stream
        # was detached from them, and after the upgrade Tornado reaches them only to write an
        # HTTP response, which a WebSocket handler no longer may.
        self.request.connection = None
        self.request.server_connection = None

    def _new_session(self, *args: str) -> Session:
        assert self.ip is not None
        return Session(self, self.shared, self.ip, identity=self.identity)

    def on_message(self, message: str | bytes) -> Any:
        if isinstance(message, bytes):
            self.close(1003, "binary frames are not supported")
            return None
        self.shared.metrics.messages_in.inc()
        self.keepalive.heard(self)
        if self.session is None:
            return None
        return self.session.handle(message)

    def on_pong(self, data: bytes) -> None:
        self.keepalive.answered(self)

    def on_ping(self, data: bytes) -> None:
        self.keepalive.heard(self)

    def on_close(self) -> None:
        self._outbox = None
        self.keepalive.discard(self)
        if self.session is not None:
            self.session.close()
            self.session = None
        if self.ip is not None:
            self.shared.addresses.socket_closed(self.ip)
            self.ip = None
        if log.isEnabledFor(logging.DEBUG):
            log.debug("close %s from %s (%s)", loggable_path(self.request.path), self.request.remote_ip,
                      self.close_code)

    def send_frame(self, frame: wsframe.Frame) -> None:
        box = self._outbox
        if box is None:
            self._send(frame)
            return
        # Behind what waits to be written, never ahead of it; the flush awaited writes it.
        box.push(frame, False)
        if box.live > self.send_buffer:
            self._cut_off(f"over {self.send_buffer} bytes queued behind a replay or member list")

    def send_bulk(self, frames: list[wsframe.Frame]) -> None:
        """A replay or a whole member list: written as the stream drains, everything after it behind it."""
        conn = self.ws_connection
        if conn is None or conn.is_closing() or not frames:
            return
        box = self._outbox
        if box is not None:
            for frame in frames:
                box.push(frame, True)
            return
        if room_now(conn, frames, self.send_buffer):
            self._send_many(frames)
            return
        box = self._outbox = Outbox()
        for frame in frames:
            box.push(frame, True)
        self._pump()

    def may_queue(self, nbytes: int) -> bool:
        """Whether a replay of ``nbytes`` may be queued: always when no bulk frames wait, else while
        all of it stays within ``bulk_limit`` (a replay's most: ``--history-size`` messages of
        ``--max-message-size``)."""
        box = self._outbox
        return box is None or box.bulk == 0 or box.bulk + nbytes <= self.bulk_limit

    def announced_subs(self, room: str) -> Iterable[str]:
        return self.session.announced_subs(room) if self.session is not None else ()

    def send_ping(self) -> None:
        """The keepalive's ping, written ahead of anything queued so a reading client answers it soon;
        on an idle socket one ``send`` of pre-built bytes (`wsframe.ping_now`)."""
        conn = self.ws_connection
        if not (self._fast and conn is not None and wsframe.ping_now(conn)):
            self._send(None)

    def check_progress(self) -> None:
        """The keepalive's check, once per interval: a cut for a queue that made no progress since the previous one."""
        box = self._outbox
        if box is not None and box.stalled():
            self._cut_off("its queue made no progress for a ping interval")

    def drop(self, reason: str) -> bool:
        """Close a peer the keepalive gave up on; False if it was closing already."""
        conn = self.ws_connection
        if conn is None or conn.is_closing():
            return False
        try:
            self.close(1000, reason)
        except StreamBufferFullError:
            # No room for a close frame behind all the peer never read: cut the TCP connection.
            if conn.stream is not None:
                conn.stream.close()
        return True

    def _send(self, frame: wsframe.Frame | None) -> None:
        """Write ``frame`` (None: a ping); never raises, and cuts off a client that stopped reading."""
        conn = self.ws_connection
        if conn is None or conn.is_closing():
            return
        try:
            if frame is None:
                wsframe.ping(conn, self._fast)
            else:
                wsframe.send(conn, frame, self._fast)
        except (WebSocketClosedError, StreamClosedError):
            pass
        except StreamBufferFullError:
            self._cut_off(f"send buffer over {self.send_buffer} bytes")

    def _send_many(self, frames: list[wsframe.Frame]) -> None:
        """`_send` for frames that go back to back (in one write on the fast path)."""
        conn = self.ws_connection
        if conn is None or conn.is_closing():
            return
        try:
            wsframe.send_many(conn, frames, self._fast)
        except (WebSocketClosedError, StreamClosedError):
            pass
        except StreamBufferFullError:
            self._cut_off(f"send buffer over {self.send_buffer} bytes")

    def _pump(self) -> None:
        """Write what the outbox holds while the stream has room; once it flushes, again."""
        box = self._outbox
        conn = self.ws_connection
        if box is None:
            return
        if conn is None or conn.is_closing():
            self._outbox = None
            return
        try:
            box.pump(SocketSink(conn, self._fast), self.send_buffer)
        except (WebSocketClosedError, StreamClosedError):
            self._outbox = None
            return
        except StreamBufferFullError:
            self._cut_off(f"send buffer over {self.send_buffer} bytes")
            return
        if not box.frames:
            self._outbox = None  # all of it is in the stream: the fast path again
            return
        if not box.waiting:
            done = wsframe.flushed(conn)
            if done is None:
                self._outbox = None
                return
            box.waiting = True
            done.add_done_callback(partial(self._flushed, box))

    def _flushed(self, box: Outbox, done: Future[None]) -> None:
        box.waiting = False
        if self._outbox is not box:
            return
        if done.cancelled() or done.exception() is not None:
            self._outbox = None  # the stream closed: on_close follows
            return
        self._pump()

    def _cut_off(self, why: str) -> None:
        """A client that does not read what it is sent: counted, logged, its TCP connection cut
        (a close frame would wait behind all it never read)."""
        self._outbox = None
        self.shared.metrics.slow_client_disconnects.inc()
        log.warning("closing slow client %s: %s", self.request.remote_ip, why)
        conn = self.ws_connection
        if conn is not None and conn.stream is not None:
            conn.stream.close()


class CountSocket(RelaySocket):
    """``WS /ws/count/<slug>/``: the talk's socket, one room for its whole life."""

    def get(self, *args: str, **kwargs: str) -> Coroutine[Any, Any, None]:
        """``?token=<jwt>``: a private or presence room without a token that grants it is 403,
        before the upgrade.

        Without a token nothing here waits, so the upgrade's coroutine is returned, not awaited
        (see `RelaySocket.get`); a token's revocation check waits on Redis first."""
        room = args[0]
        try:
            self.since = protocol.since_from_query(self.get_query_argument("since", None),
                                                   self.get_query_argument("epoch", None))
        except ValueError as e:
            raise tornado.web.HTTPError(400, str(e)) from None
        token = self.get_query_argument("token", None)
        if token:
            try:
                self.identity = self.shared.verifier.verify(token)
            except TokenError as e:
                if self.shared.verifier.refetch_may_help(e):  # a key id the key set lacks: fetch it first
                    return self._get_with_fresh_keys(token, *args, **kwargs)
                self._refuse_bad_token(room, e)
        elif self.shared.asks_connect_proxy(self.request.headers):
            # The per-address cap first: no backend call for an address already at its cap.
            if not self.shared.addresses.may_open_socket(self.request.remote_ip or ""):
                return self._too_many_sockets()
            return self._get_proxied("ws_count", *args, **kwargs)
        return self._get_as_identified(*args, **kwargs)

    def _upgrade(self, *args: str, **kwargs: str) -> Coroutine[Any, Any, None]:
        self._check_grant(args[0])
        return RelaySocket._upgrade(self, *args, **kwargs)

    def _get_as_identified(self, *args: str, **kwargs: str) -> Coroutine[Any, Any, None]:
        if self.identity is not None:
            return self._get_unless_revoked(self.identity, *args, **kwargs)
        return self._upgrade(*args, **kwargs)

    async def _get_with_fresh_keys(self, token: str, *args: str, **kwargs: str) -> None:
        try:
            self.identity = await self.shared.verifier.verify_async(token)
        except TokenError as e:
            self._refuse_bad_token(args[0], e)
        await self._get_as_identified(*args, **kwargs)

    @staticmethod
    def _refuse_bad_token(room: str, error: TokenError) -> None:
        """403 where the room needs a grant; a public room opens without the identity."""
        if needs_grant(room):
            raise tornado.web.HTTPError(403, f"bad token: {error.reason}") from None

    async def _get_unless_revoked(self, identity: Identity, *args: str, **kwargs: str) -> None:
        try:
            revoked = await self.shared.revoked(identity)
        except BackplaneError:
            raise tornado.web.HTTPError(503, "cannot check the token now; try again") from None
        if revoked:
            raise tornado.web.HTTPError(403, "this user's tokens issued before its last sign-out are revoked")
        await self._upgrade(*args, **kwargs)

    def _check_grant(self, room: str) -> None:
        if needs_grant(room) and not (self.identity is not None and self.identity.may_read(room)):
            raise tornado.web.HTTPError(403, "this room needs a token that grants it (?token=<jwt>)")

    def _new_session(self, *args: str) -> Session:
        assert self.ip is not None
        return Session(self, self.shared, self.ip, room=args[0], identity=self.identity, since=self.since)


class OriginCheck(SecureHeaders):
    """``GET /ws/origin``: whether the sockets would take a page of this Origin. A browser shows a
    script only 1006 for a refused handshake; the library asks here after a wire failed to open, and
    names ``--allowed-origins`` in the page's console when the answer is no.

    Readable from any origin, without credentials: it answers only for the Origin the browser puts on
    the request (or, on a same-origin GET, which carries none, the page's ``?origin=``), which anyone
    can learn by opening a socket with that Origin (a script outside a browser sends any Origin it
    likes). It reads no cookie, stores nothing and never lists the allowed Origins."""

    def initialize(self, allowed_origins: frozenset[str], xheaders: bool) -> None:
        self.allowed_origins = allowed_origins
        self.xheaders = xheaders

    def get(self) -> None:
        origin = self.request.headers.get("Origin") or self.get_query_argument("origin", "")
        self.set_header("Access-Control-Allow-Origin", "*")
        self.set_header("Cache-Control", "no-store")
        self.set_header("Content-Type", "application/json")
        if not origin or len(origin) > 300:
            self.set_status(400)
            self.finish({"error": "no Origin to judge (or longer than 300 characters)", "status": 400})
            return
        host = request_host(self.request.headers, self.request.host, self.xheaders)
        allowed = origin_allowed(origin, host, self.allowed_origins, self.request.protocol)
        self.finish({"origin": origin, "allowed": allowed, "option": "--allowed-origins"})


class _Refusal(tornado.web.HTTPError):
    """A handshake refused for the connect proxy's sake; a 503 carries ``Retry-After``."""

    def __init__(self, status: int, reason: str, retry_after: int | None) -> None:
        super().__init__(status, "%s", reason)
        self.retry_after = retry_after


# What Tornado 6 sets on every WebSocket handler: RequestHandler.__init__ and clear(),
# WebSocketHandler.__init__, RequestHandler._execute, WebSocketHandler.get, and _detach_stream
# (the seven HTTP methods it disables once the socket is upgraded).
TORNADO_HANDLER_ATTRIBUTES = (
    "application", "request", "_headers_written", "_finished", "_auto_finish", "_prepared_future", "ui",
    "_headers", "_write_buffer", "_status_code", "_reason", "ws_connection", "close_code", "close_reason",
    "_on_close_called", "_transforms", "path_args", "path_kwargs", "open_args", "open_kwargs",
    "write", "redirect", "set_header", "set_cookie", "set_status", "flush", "finish",
)


def share_attribute_names(cls: type[RelaySocket]) -> None:
    """Enter every attribute name Tornado gives a handler of ``cls`` in the class's shared table now.

    CPython 3.11 keeps an instance's attributes in a compact array indexed by a table of names
    the class shares, and that table takes new names only while it has room, which each new
    instance also uses up. In a burst of handshakes dozens of handlers exist before the first
    reaches ``_execute`` and the upgrade, so the names Tornado sets there never got in, and
    every handler for the rest of the process had a dict of its own (830 bytes instead of about
    250). Naming them all on one throwaway instance, before any socket, prevents that."""
    probe = cls.__new__(cls)
    for name in TORNADO_HANDLER_ATTRIBUTES:
        setattr(probe, name, None)


for _cls in (RelaySocket, CountSocket):
    share_attribute_names(_cls)
