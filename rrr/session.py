"""One client socket's subscriptions, and what it may ask for.

Kept out of the handler so the handler stays a thin adapter between Tornado's
WebSocket callbacks and the hub, and so the rules read in one place.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from . import protocol
from .errors import BackplaneError
from .hub import Connection, Hub
from .policy import TokenBucket
from .protocol import ClientMessage, ProtocolError
from .wsframe import Frame

_PONG = Frame(protocol.PONG_FRAME)

log = logging.getLogger("rrr.session")


@dataclass(frozen=True)
class Limits:
    client_publish: bool = False
    publish_rate: float = 10.0
    publish_burst: float = 20.0
    max_subscriptions: int = 1000


class Session:
    # Slots, and a rate bucket only once the socket publishes: one Session lives per idle socket.
    __slots__ = ("conn", "hub", "limits", "fixed_room", "subs", "transport", "_bucket")

    def __init__(self, conn: Connection, hub: Hub, limits: Limits, room: str | None = None) -> None:
        """With ``room``, this is the talk's one-room socket: joined at once, fixed for life."""
        self.conn = conn
        self.hub = hub
        self.limits = limits
        self.fixed_room = room
        self.subs: set[tuple[str, str]] = set()
        self.transport = "unknown"
        self._bucket: TokenBucket | None = None
        hub.attach(conn)
        if room is not None:
            self.join(room, "")

    def join(self, room: str, sub: str) -> None:
        if (room, sub) in self.subs:
            return  # idempotent: a worker resubscribing after a hiccup must not double-count
        if len(self.subs) >= self.limits.max_subscriptions:
            raise ProtocolError("too_many_subscriptions", f"at most {self.limits.max_subscriptions} per socket")
        self.subs.add((room, sub))
        self.hub.add_tab(self.conn, room)

    def leave(self, room: str, sub: str) -> None:
        if (room, sub) in self.subs:
            self.subs.discard((room, sub))
            self.hub.remove_tab(self.conn, room)

    def close(self) -> None:
        for room, sub in list(self.subs):
            self.leave(room, sub)
        self._set_transport("unknown")
        self.hub.detach(self.conn)

    async def handle(self, text: str) -> None:
        """Act on one text frame; a bad frame gets an ``error`` reply and the socket stays up."""
        try:
            msg = protocol.parse_client_message(text)
        except ProtocolError as e:
            if e.code == "bad_json" and self.fixed_room is not None:
                self._send_count(self.fixed_room)
            else:
                self.reply_error(e.code, e.reason)
            return
        try:
            await self._dispatch(msg)
        except ProtocolError as e:
            self.reply_error(e.code, e.reason)

    def _send_count(self, room: str) -> None:
        """The talk's SharedWorker sends ``PING`` (not JSON) for each new tab and shows whatever
        comes back: it gets the count. Before the first count is known, that one is on its way."""
        state = self.hub.current_state(room)
        if state is not None:
            self.conn.send_frame(Frame(protocol.dumps(protocol.count_message(room, state))))

    def reply_error(self, code: str, reason: str) -> None:
        self.hub.metrics.client_errors.labels(code).inc()
        self.conn.send_frame(Frame(protocol.dumps(protocol.error_message(code, reason))))

    async def _dispatch(self, msg: ClientMessage) -> None:
        if msg.type == "ping":
            self.conn.send_frame(_PONG)
        elif msg.type == "hello":
            self._set_transport(msg.transport or "unknown")
        elif self.fixed_room is not None:
            raise ProtocolError("unsupported", "this socket follows one room; use /ws/ for more")
        elif msg.type == "subscribe":
            assert msg.room is not None and msg.sub is not None
            self.join(msg.room, msg.sub)
        elif msg.type == "unsubscribe":
            assert msg.room is not None and msg.sub is not None
            self.leave(msg.room, msg.sub)
        elif msg.type == "publish":
            await self._publish(msg)

    async def _publish(self, msg: ClientMessage) -> None:
        assert msg.room is not None and msg.data_json is not None
        if not self.limits.client_publish:
            raise ProtocolError("publish_disabled", "client publish is off on this server")
        if self._bucket is None:
            self._bucket = TokenBucket(self.limits.publish_rate, self.limits.publish_burst)
        if not self._bucket.take():
            raise ProtocolError("rate_limited", "too many publishes; slow down")
        try:
            await self.hub.publish(msg.room, msg.data_json)
        except BackplaneError:
            raise ProtocolError("unavailable", "the message bus is unavailable; try again") from None

    def _set_transport(self, transport: str) -> None:
        gauge = self.hub.metrics.transports
        if self.transport != "unknown":
            gauge.labels(self.transport).dec()
        self.transport = transport
        if transport != "unknown":
            gauge.labels(transport).inc()
