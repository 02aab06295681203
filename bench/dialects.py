"""How the load driver speaks to each server kind: the one client abstraction.

A dialect turns "join room R" into a URL and opening frames, and turns every
text frame the server sends into one of four neutral events. Scenarios and the
worker only ever see these events, so they cannot treat one server differently
from another by accident.

* ``COUNT``   - a presence update; value: the room's ``connections``.
* ``MESSAGE`` - a published room message; value: its ``data``.
* ``JOINED``  - the server acknowledged the join (value: None).
* ``ERROR``   - the server refused something; value: a short description.

Two join modes: ``relay=False`` is the talk's count socket (joins and is
counted); ``relay=True`` subscribes for published messages, the fan-out path.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from typing import Any, Protocol

COUNT = "count"
MESSAGE = "message"
JOINED = "joined"
ERROR = "error"

Event = tuple[str, Any]


class Sender(Protocol):
    def send_text(self, text: str) -> None: ...


class Dialect(ABC):
    name: str

    @abstractmethod
    def path(self, room: str, relay: bool) -> str:
        """Request path (with query) of the socket that joins ``room``."""

    def on_open(self, conn: Sender, room: str, relay: bool) -> bool:
        """Send whatever the protocol needs after the 101; True if being open already means joined."""
        return False

    @abstractmethod
    def parse(self, conn: Sender, text: str) -> Event | None:
        """Classify one server frame; may answer protocol-level frames (pings) on ``conn``."""


def _app_frame(obj: Any) -> Event | None:
    """rrr and the Channels peer share the frame shapes of the talk's client."""
    if not isinstance(obj, dict):
        return (ERROR, f"unexpected frame {str(obj)[:80]}")
    kind = obj.get("type")
    if kind == "connection_message":
        return (COUNT, obj.get("connections"))
    if kind == "message":
        return (MESSAGE, obj.get("data"))
    if kind == "error":
        return (ERROR, f"{obj.get('code')}: {obj.get('reason')}")
    return None


class RrrDialect(Dialect):
    """rrr: ``/ws/count/<room>/`` for counts; ``/ws/`` + ``subscribe`` for the relay."""

    name = "rrr"

    def path(self, room: str, relay: bool) -> str:
        return "/ws/" if relay else f"/ws/count/{room}/"

    def on_open(self, conn: Sender, room: str, relay: bool) -> bool:
        if relay:
            conn.send_text(json.dumps({"type": "subscribe", "room": room, "sub": "bench"}))
        # Either way rrr answers the join with the room's count: that frame is the acknowledgement.
        return False

    def parse(self, conn: Sender, text: str) -> Event | None:
        return _app_frame(json.loads(text))


class ChannelsDialect(Dialect):
    """The talk's consumers: the count socket, or a relay-only socket; joined once accepted."""

    name = "channels"

    def path(self, room: str, relay: bool) -> str:
        return f"/ws/relay/{room}/" if relay else f"/ws/count/{room}/"

    def on_open(self, conn: Sender, room: str, relay: bool) -> bool:
        # The consumer group_adds before it accepts, so an open socket is a member.
        return relay

    def parse(self, conn: Sender, text: str) -> Event | None:
        return _app_frame(json.loads(text))


class SocketIODialect(Dialect):
    """Engine.IO 4 / Socket.IO 5 over a WebSocket-only transport, as the JS client does after upgrade.

    Packets: ``0{..}`` engine open, ``2``/``3`` ping/pong, ``40{..}`` namespace
    connect (we send our auth, the server acks), ``42[event, data]`` events,
    ``44{..}`` connect error, ``41`` server disconnect.
    """

    name = "socketio"

    def __init__(self) -> None:
        # A dialect is shared by all sockets of a worker; the per-socket auth is keyed by socket.
        self._auth: dict[int, str] = {}

    def path(self, room: str, relay: bool) -> str:
        return "/socket.io/?EIO=4&transport=websocket"

    def on_open(self, conn: Sender, room: str, relay: bool) -> bool:
        self._auth[id(conn)] = json.dumps({"room": room, "count": not relay})
        return False

    def parse(self, conn: Sender, text: str) -> Event | None:
        head = text[:1]
        if head == "2":
            conn.send_text("3")
            return None
        if head == "0":
            conn.send_text("40" + self._auth.pop(id(conn), "{}"))
            return None
        if head != "4":
            return None
        kind = text[1:2]
        if kind == "2":
            event, data = json.loads(text[2:])[:2]
            if event == "connection_message":
                return (COUNT, data.get("connections"))
            if event == "message":
                return (MESSAGE, data.get("data"))
            return None
        if kind == "0":
            return (JOINED, None)
        if kind == "4":
            return (ERROR, f"connect refused: {text[2:80]}")
        if kind == "1":
            return (ERROR, "disconnected by server")
        return None


DIALECTS: dict[str, type[Dialect]] = {d.name: d for d in (RrrDialect, ChannelsDialect, SocketIODialect)}
