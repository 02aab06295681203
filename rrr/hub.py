"""The process-local hub: who is in which room here, and what they are sent.

Handlers talk to the hub; the hub talks to the backplane. Two rates are
coalesced per process so a join storm of N costs O(N) frames, not O(N^2):

* presence writes: joins and leaves only mark a room dirty; at most one batched
  Redis call per ``count_interval`` writes every dirty room (leading edge at once,
  so a lone join is answered in one round trip);
* count broadcasts: at most one per room per ``count_interval``, trailing edge
  always sends the newest state, so the last frame a client sees is the truth.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from . import protocol
from .backplane import Backplane, full_jitter
from .errors import BackplaneError
from .metrics import Metrics
from .protocol import CountState
from .wsframe import Frame

log = logging.getLogger("rrr.hub")


class Connection(Protocol):
    """A client socket as the hub sees it. ``send_frame`` never blocks and never raises."""

    def send_frame(self, frame: Frame) -> None: ...

    def close(self, code: int | None = None, reason: str | None = None) -> None: ...


class _Room:
    __slots__ = ("tabs_by_conn", "tabs", "state", "sent_version", "last_broadcast", "timer", "waiting", "fresh")

    def __init__(self) -> None:
        self.tabs_by_conn: dict[Connection, int] = {}
        self.tabs = 0
        self.state: CountState | None = None
        self.sent_version = -1
        self.last_broadcast = float("-inf")
        self.timer: asyncio.TimerHandle | None = None
        # Sockets that subscribed and are owed the count "at once" once their join is written.
        self.waiting: set[Connection] = set()
        # Sockets already sent ``state`` directly, so the broadcast of that version skips them.
        self.fresh: set[Connection] = set()


class Hub:
    def __init__(self, backplane: Backplane, metrics: Metrics, *, count_interval: float = 0.1) -> None:
        self.backplane = backplane
        self.metrics = metrics
        self.count_interval = count_interval
        self._rooms: dict[str, _Room] = {}
        self._conns: set[Connection] = set()
        self._dirty: set[str] = set()
        self._flushing = False
        self._flush_task: asyncio.Future[None] | None = None
        self._flush_timer: asyncio.TimerHandle | None = None
        self._last_flush = float("-inf")
        self._flush_failures = 0
        self._closing = False
        metrics.bind_gauges(
            lambda: len(self._conns),
            lambda: sum(r.tabs for r in self._rooms.values()),
            lambda: len(self._rooms),
        )

    async def start(self) -> None:
        await self.backplane.start(self)

    @property
    def closing(self) -> bool:
        return self._closing

    # -- sockets and tabs --------------------------------------------------

    def attach(self, conn: Connection) -> None:
        self._conns.add(conn)

    def detach(self, conn: Connection) -> None:
        self._conns.discard(conn)

    def add_tab(self, conn: Connection, room: str) -> None:
        """One more subscription (tab) of ``conn`` to ``room``; the socket is owed a count."""
        r = self._rooms.get(room)
        if r is None:
            r = self._rooms[room] = _Room()
            self.backplane.subscribe(room)
        r.tabs_by_conn[conn] = r.tabs_by_conn.get(conn, 0) + 1
        r.tabs += 1
        r.waiting.add(conn)
        self._mark_dirty(room)

    def remove_tab(self, conn: Connection, room: str) -> None:
        r = self._rooms.get(room)
        n = r.tabs_by_conn.get(conn, 0) if r else 0
        if r is None or n == 0:
            return
        if n == 1:
            del r.tabs_by_conn[conn]
            r.waiting.discard(conn)
            r.fresh.discard(conn)
        else:
            r.tabs_by_conn[conn] = n - 1
        r.tabs -= 1
        if not r.tabs_by_conn:
            if r.timer:
                r.timer.cancel()
            del self._rooms[room]
            self.backplane.unsubscribe(room)
        self._mark_dirty(room)

    def current_state(self, room: str) -> CountState | None:
        """The newest totals this process knows for ``room`` (None before its first write)."""
        r = self._rooms.get(room)
        return r.state if r else None

    @property
    def room_count(self) -> int:
        """Rooms with at least one local subscriber."""
        return len(self._rooms)

    def local_counts(self, room: str) -> tuple[int, int]:
        r = self._rooms.get(room)
        return (len(r.tabs_by_conn), r.tabs) if r else (0, 0)

    # -- presence writes, coalesced ---------------------------------------

    def _mark_dirty(self, room: str) -> None:
        self._dirty.add(room)
        self._schedule_flush()

    def _schedule_flush(self, delay: float | None = None) -> None:
        if self._closing or self._flushing or self._flush_timer is not None or not self._dirty:
            return
        loop = asyncio.get_running_loop()
        if delay is None:
            delay = self._last_flush + self.count_interval - loop.time()
        if delay <= 0:
            self._start_flush()
        else:
            self._flush_timer = loop.call_later(delay, self._start_flush)

    def _start_flush(self) -> None:
        self._flush_timer = None
        self._flushing = True
        self._flush_task = asyncio.ensure_future(self._flush())

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        self._last_flush = loop.time()
        dirty, self._dirty = self._dirty, set()
        owed = {room: r.waiting for room in dirty if (r := self._rooms.get(room)) and r.waiting}
        for room in owed:
            self._rooms[room].waiting = set()
        retry: float | None = None
        try:
            states = await self.backplane.set_presence({room: self.local_counts(room) for room in dirty})
        except BackplaneError as e:
            self._flush_failures += 1
            retry = max(self.count_interval, full_jitter(self._flush_failures, 0.25, 5.0))
            if self._flush_failures == 1:
                log.warning("presence write failed, will retry: %s", e)
            self._dirty |= dirty
            for room, conns in owed.items():
                if (r := self._rooms.get(room)) is not None:
                    r.waiting |= {c for c in conns if c in r.tabs_by_conn}
        else:
            self._flush_failures = 0
            for room, state in states.items():
                r = self._rooms.get(room)
                sent_before = r.sent_version if r else None
                self.on_count(room, state)
                if r is not None and room in owed and r.sent_version == sent_before:
                    self._send_initial(r, room, owed[room])
        finally:
            self._flushing = False
        self._schedule_flush(retry)

    def _send_initial(self, r: _Room, room: str, conns: set[Connection]) -> None:
        """Give new subscribers the latest count now; the throttled broadcast then skips them."""
        if r.state is None:
            return
        frame = Frame(protocol.dumps(protocol.count_message(room, r.state)))
        sent = 0
        for conn in conns:
            if conn in r.tabs_by_conn:
                conn.send_frame(frame)
                r.fresh.add(conn)
                sent += 1
        self.metrics.messages_out.inc(sent)

    # -- backplane callbacks ------------------------------------------------

    def on_count(self, room: str, state: CountState) -> None:
        r = self._rooms.get(room)
        if r is None or (r.state is not None and state.version <= r.state.version):
            return
        r.fresh.clear()  # whoever was sent the old state directly must get the new one
        r.state = state
        if r.timer is not None:
            return
        loop = asyncio.get_running_loop()
        due = r.last_broadcast + self.count_interval
        if due <= loop.time():
            self._broadcast(room, r)
        else:
            r.timer = loop.call_at(due, self._broadcast, room, r)

    def _broadcast(self, room: str, r: _Room) -> None:
        r.timer = None
        state = r.state
        if state is None or state.version <= r.sent_version or self._rooms.get(room) is not r:
            return
        frame = Frame(protocol.dumps(protocol.count_message(room, state)))
        skip = r.fresh
        r.fresh = set()
        sent = 0
        for conn in list(r.tabs_by_conn):
            if conn not in skip:
                conn.send_frame(frame)
                sent += 1
        r.sent_version = state.version
        r.last_broadcast = asyncio.get_running_loop().time()
        self.metrics.count_broadcasts.inc()
        self.metrics.messages_out.inc(sent)

    def on_room_message(self, room: str, data_json: str) -> None:
        r = self._rooms.get(room)
        if r is None:
            return
        frame = Frame(protocol.relay_frame(room, data_json))  # encoded once, whatever the room size
        conns = list(r.tabs_by_conn)
        for conn in conns:
            conn.send_frame(frame)
        self.metrics.messages_out.inc(len(conns))

    def on_subscribed(self, room: str) -> None:
        if room in self._rooms:
            self._mark_dirty(room)

    def on_resync(self) -> None:
        """Redis restarted or lost our lease: forget versions, rewrite every local room."""
        for room, r in self._rooms.items():
            r.state = None
            r.sent_version = -1
            r.fresh.clear()
            self._dirty.add(room)
        self._schedule_flush(0)

    # -- requests from handlers -----------------------------------------------

    async def publish(self, room: str, data_json: str) -> int:
        return await self.backplane.publish(room, data_json)

    async def room_state(self, room: str) -> CountState:
        return await self.backplane.room_state(room)

    async def healthy(self) -> bool:
        return await self.backplane.ping()

    async def shutdown(self, code: int = 1001, reason: str = "server shutting down") -> None:
        """Remove our presence first (counts drop at once), then close every socket with 1001."""
        self._closing = True
        if self._flush_timer:
            self._flush_timer.cancel()
        for r in self._rooms.values():
            if r.timer:
                r.timer.cancel()
        if self._flush_task is not None:
            # A write still in flight must land before LEAVE, or it would re-add us.
            await asyncio.gather(self._flush_task, return_exceptions=True)
        try:
            await self.backplane.leave()
        except BackplaneError as e:
            log.warning("could not remove presence on shutdown (it will expire): %s", e)
        for conn in list(self._conns):
            conn.close(code, reason)
        await self.backplane.close()
