"""``WS /app/<key>``: the Pusher protocol's door, a `RelaySocket` whose frames `rrr.pusher.door` translates."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from tornado.iostream import StreamBufferFullError

from handlers.sockets import RelaySocket, share_attribute_names
from rrr.edge import wsframe
from rrr.pusher import protocol as pp
from rrr.pusher.door import SUBSCRIBED, Door, PusherApp, event_frames
from rrr.session import Session

#: How the core's own close codes reach a Pusher client: a shutdown's drain (1001) is 4200
#: (reconnect at once, to another process), a sign-out or terminate_connections (4001) is 4009
#: (not authorized: pusher-js does not reconnect), a keepalive's give-up (1000) is 4201.
_CLOSES = {
    1001: (pp.RECONNECT_NOW, "Server is shutting down: reconnect"),
    4001: (pp.CONNECTION_UNAUTHORIZED, "You got disconnected by the app"),
}


class PusherSocket(RelaySocket):
    """One Pusher client (pusher-js, Laravel Echo, the mobile SDKs). Everything but the wire format
    is `RelaySocket`'s: the Origin rule, the per-address cap, the connect proxy, the send buffer,
    the keepalive, the session with its caps."""

    __slots__ = ("app", "door", "_refusal")

    def initialize(self, pusher: PusherApp, **kwargs: Any) -> None:  # type: ignore[override]
        super().initialize(**kwargs)
        self.app = pusher
        self.door: Door | None = None
        self._refusal: pp.PusherError | None = None  # sent once upgraded, then closed with its code

    def get(self, *args: str, **kwargs: str) -> Coroutine[Any, Any, None]:
        """An unknown key or protocol, or an address at ``--max-sockets-per-ip``, is still
        upgraded: a Pusher client learns why only from a ``pusher:error`` and its close code (4001,
        4007, 4100), and backs off or gives up by it. Such a socket is closed in `open` before it
        is counted or given a session."""
        if args[0] != self.app.key:
            self._refusal = pp.app_does_not_exist(args[0])
        else:
            try:
                pp.check_protocol(self.get_query_argument("protocol", None))
            except pp.PusherError as e:
                self._refusal = e
        if self._refusal is None and not self.shared.addresses.may_open_socket(self.request.remote_ip or ""):
            self.shared.metrics.limited.labels("sockets_per_ip").inc()
            self._refusal = pp.over_capacity()
        if self._refusal is None and self.shared.asks_connect_proxy(self.request.headers):
            return self._get_proxied("pusher", *args, **kwargs)
        return super(RelaySocket, self).get(*args, **kwargs)  # WebSocketHandler.get: the upgrade

    def open(self, *args: str) -> None:
        refusal = self._refusal
        if refusal is not None:
            self._send(wsframe.Frame(refusal.frame()))
            super(RelaySocket, self).close(refusal.code, refusal.message[:120])
            return
        super().open(*args)  # closes with 1001 (4200 here) while the server shuts down

    def _new_session(self, *args: str) -> Session:
        session = super()._new_session(*args)
        socket_id = self.socket_id = self.shared.socket_ids.new()
        self.door = Door(self.app, session, socket_id)
        self._send(wsframe.Frame(pp.connection_established_frame(socket_id)))
        return session

    def on_message(self, message: str | bytes) -> Any:
        if isinstance(message, bytes):
            self.close(1003, "binary frames are not supported")
            return None
        self.shared.metrics.messages_in.inc()
        self.keepalive.heard(self)
        door = self.door
        if door is None:
            return None
        replies, waits = door.handle(message)
        for frame in replies:
            super().send_frame(frame)
        return waits

    def send_frame(self, frame: wsframe.Frame) -> None:
        door = self.door
        if door is None:
            return
        payload = frame.payload
        if payload is not None:
            # A room message, the fan-out's hot path: the Pusher frame made once for every socket.
            if door.channels.get(payload[0]) != SUBSCRIBED:
                return
            alt = frame.alt if frame.alt is not None else event_frames(frame)
            if len(alt) == 1 and self._outbox is None:
                self._send(alt[0])
                return
            for out in alt:
                super().send_frame(out)
            return
        for out in door.outgoing(frame):
            super().send_frame(out)

    def send_bulk(self, frames: list[wsframe.Frame]) -> None:
        door = self.door
        if door is None:
            return
        out = [f for frame in frames for f in door.outgoing(frame)]
        if out:
            super().send_bulk(out)

    def on_close(self) -> None:
        super().on_close()
        self.door = None

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        mapped = _CLOSES.get(code or 0)
        if mapped is not None:
            code, reason = mapped
            self._send(wsframe.Frame(pp.error_frame(code, reason)))
        super().close(code, reason)

    def drop(self, reason: str) -> bool:
        """The keepalive gave up: 4201, so the client reconnects at once."""
        conn = self.ws_connection
        if conn is None or conn.is_closing():
            return False
        error = pp.pong_not_received()
        self._send(wsframe.Frame(error.frame()))
        try:
            super().close(error.code, error.message)
        except StreamBufferFullError:
            if conn.stream is not None:
                conn.stream.close()
        return True


share_attribute_names(PusherSocket)
