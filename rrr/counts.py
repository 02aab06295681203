"""Count frames: each local room's newest totals, and when its sockets are sent them.

Count broadcasts are coalesced per process, so a join storm of N costs O(N) frames, not O(N^2):
at most one per room per ``count_interval``, trailing edge always sends the newest state, so the
last frame a client sees is the truth. In a big room the spacing grows with its sockets
(``count_rate``): a broadcast costs one frame per socket, so a fixed interval makes a storm that
lasts longer the bigger the room cost O(N^2) frames again; paced, a room is sent at most
``count_rate`` count frames a second whatever its size.

A new socket is not left waiting for the next broadcast: once its subscription is written
(`rrr.writer`), it is sent the count at once (`Counts.written`), and that broadcast skips it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping

from . import protocol
from .edge.wsframe import Frame
from .metrics import Metrics
from .protocol import CountState
from .rooms import Connection, LocalRoom
from .supervise import RateLimitedLog

log = logging.getLogger("rrr.hub")


class RoomCount:
    __slots__ = ("state", "sent_version", "last_broadcast", "timer", "fresh")

    def __init__(self) -> None:
        self.state: CountState | None = None
        self.sent_version = -1
        self.last_broadcast = float("-inf")
        self.timer: asyncio.TimerHandle | None = None
        # Sockets already sent ``state`` directly, so the broadcast of that version skips them.
        self.fresh: set[Connection] = set()


class Counts:
    def __init__(
        self, rooms: Mapping[str, LocalRoom], metrics: Metrics, *, interval: float = 0.1, rate: float = 0.0,
    ) -> None:
        self._rooms = rooms
        self.metrics = metrics
        self.interval = interval
        self.rate = rate
        self._counts: dict[str, RoomCount] = {}  # local rooms that were told a count
        self._log = RateLimitedLog(log)

    def current(self, room: str) -> CountState | None:
        """The newest totals this process knows for ``room`` (None before its first write)."""
        c = self._counts.get(room)
        return c.state if c else None

    def spacing(self, room: str) -> float:
        """Seconds between two broadcasts to ``room``: ``count_interval``, or in a room of more than
        ``count_rate * count_interval`` sockets (all processes together), one frame per socket
        spread over a second per ``count_rate`` frames."""
        state = self.current(room)
        if self.rate <= 0 or state is None:
            return self.interval
        return max(self.interval, state.connections / self.rate)

    def show(self, room: str, state: CountState) -> bool:
        """``state`` was announced (or written by us): broadcast it, paced, if it is newer than what
        the room's sockets were sent. Whether it was news (a local room, a newer version)."""
        if room not in self._rooms:
            return False
        c = self._counts.get(room)
        if c is None:
            c = self._counts[room] = RoomCount()
        elif c.state is not None and state.version <= c.state.version:
            return False
        c.fresh.clear()  # whoever was sent the old state directly must get the new one
        c.state = state
        if c.timer is not None:
            return True
        loop = asyncio.get_running_loop()
        due = c.last_broadcast + self.spacing(room)
        if due <= loop.time():
            self._broadcast(room, c)
        else:
            c.timer = loop.call_at(due, self._timed_broadcast, room, c)
        return True

    def written(self, room: str, state: CountState, owed: Iterable[Connection] | None) -> bool:
        """Our write of ``room`` landed with ``state``: shown (`show`), and the sockets whose
        subscriptions it counted for the first time (``owed``) get it now unless it was just
        broadcast to them all. Whether it was news."""
        c = self._counts.get(room)
        sent_before = c.sent_version if c else -1
        news = self.show(room, state)
        c = self._counts.get(room)
        if c is not None and owed and c.sent_version == sent_before:
            self._send_first(room, c, owed)
        return news

    def _send_first(self, room: str, c: RoomCount, conns: Iterable[Connection]) -> None:
        """Give new subscribers the latest count now; the throttled broadcast then skips them."""
        local = self._rooms.get(room)
        if c.state is None or local is None:
            return
        frame = Frame(protocol.dumps(protocol.count_message(room, c.state)))
        sent = 0
        for conn in conns:
            if conn in local.conns:
                conn.send_frame(frame)
                c.fresh.add(conn)
                sent += 1
        self.metrics.messages_out.inc(sent)

    def _timed_broadcast(self, room: str, c: RoomCount) -> None:
        """A timer's callback: whatever goes wrong is counted and logged once, never per call."""
        try:
            self._broadcast(room, c)
        except Exception as e:  # noqa: BLE001 - a timer callback has no caller to raise to
            c.timer = None
            self.metrics.task_errors.labels("broadcast").inc()
            self._log.warning("broadcast", "count broadcast to %s failed: %s: %s", room, type(e).__name__, e)

    def _broadcast(self, room: str, c: RoomCount) -> None:
        c.timer = None
        state = c.state
        local = self._rooms.get(room)
        if state is None or state.version <= c.sent_version or self._counts.get(room) is not c or local is None:
            return
        frame = Frame(protocol.dumps(protocol.count_message(room, state)))
        skip = c.fresh
        c.fresh = set()
        sent = 0
        for conn in list(local.conns):
            if conn not in skip:
                conn.send_frame(frame)
                sent += 1
        c.sent_version = state.version
        c.last_broadcast = asyncio.get_running_loop().time()
        self.metrics.count_broadcasts.inc()
        self.metrics.messages_out.inc(sent)

    def left(self, room: str, conn: Connection) -> None:
        """``conn`` has no subscription to ``room`` any more: if it comes back, the broadcast is its."""
        c = self._counts.get(room)
        if c is not None:
            c.fresh.discard(conn)

    def room_gone(self, room: str) -> None:
        c = self._counts.pop(room, None)
        if c is not None and c.timer:
            c.timer.cancel()

    def forget(self) -> None:
        """Redis restarted, the subscriber reconnected or our lease was lost: the versions known
        mean nothing now."""
        for c in self._counts.values():
            c.state = None
            c.sent_version = -1
            c.fresh.clear()

    def close(self) -> None:
        for c in self._counts.values():
            if c.timer:
                c.timer.cancel()
