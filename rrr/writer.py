"""The presence-write loop: this process's rows (and members) in Redis, written in batches.

Subscriptions and leaves only *mark* a room (`Coalescer`); the loop (`Writer.run`, supervised as
``flush``) writes every marked room in one batched call. The leading edge goes at once (a lone
subscription is answered in one round trip); after that, at most one batch per ``interval``, so
a join storm of N costs O(N) work, not O(N^2). A failed batch comes back with a capped jittered
backoff, merged with whatever changed meanwhile.

The readiness gate: a room with local subscriptions is written only once its channels are
confirmed subscribed and its messages caught up (delivery marks it again then), so a count that
shows this process means its relay works, and its subscriptions are served. A room we left is
written at once, unless a member's grace holds it (`rrr.members`).

A socket whose subscription is marked is *owed* the count: the batch that writes its room takes
it along, and once the write lands it is sent the new count at once (`rrr.counts`) and, in a
presence room, the first page of its members (`rrr.members`). A failed batch keeps it owed.

With events on, each row write tells its room's events what only this process knows
(`rrr.backplane.RoomReport`): when its last local subscription and each removed member left (the
vacated and member_removed happened then, not when the write landed).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

from . import protocol
from .backplane import Presence, RoomReport, Subscriber
from .counts import Counts
from .delivery import Delivery
from .errors import BackplaneError
from .members import Members
from .protocol import CountState
from .rooms import Connection, LocalRoom
from .supervise import Supervisor, full_jitter


class Coalescer:
    """When to write: the marked rooms, handed over as one batch per ``interval``. Anyone that
    changes what a room's row should be (or whether it may be written) marks it."""
    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._dirty: set[str] = set()
        self._event = asyncio.Event()
        self._not_before = float("-inf")
        self._handed_at = float("-inf")
        self._failures = 0
        self._closed = False

    @property
    def pending(self) -> bool:
        return bool(self._dirty)

    @property
    def failing(self) -> bool:
        return self._failures > 0

    def mark(self, room: str) -> None:
        if not self._closed:
            self._dirty.add(room)
            self._event.set()

    def mark_all(self, rooms: set[str] | list[str]) -> None:
        if not self._closed:
            self._dirty.update(rooms)
            self._event.set()

    def close(self) -> None:
        """Forget every pending room and take no more (shutdown: LEAVE removes them all)."""
        self._closed = True
        self._dirty.clear()

    async def next_batch(self) -> set[str]:
        """Wait until rooms are dirty and the interval allows, then hand them over."""
        loop = asyncio.get_running_loop()
        while True:
            while not self._dirty:
                self._event.clear()
                await self._event.wait()
            delay = self._not_before - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if self._dirty:
                batch, self._dirty = self._dirty, set()
                self._handed_at = self._not_before
                self._not_before = loop.time() + self.interval
                return batch

    def unused(self) -> None:
        """Nothing of the last batch was written (its rooms wait for their subscriptions):
        it does not count against the interval, so they go out the moment they are ready."""
        self._not_before = self._handed_at

    def failed(self, batch: set[str]) -> None:
        """The batch was not written: keep it, and wait longer before each retry."""
        self._failures += 1
        self._dirty |= batch
        wait = max(self.interval, full_jitter(self._failures, 0.25, 5.0))
        self._not_before = asyncio.get_running_loop().time() + wait
        self._event.set()

    def succeeded(self) -> None:
        self._failures = 0


class Writer:
    """The batches: which rooms may be written now (the gate), the sockets each write counts for
    the first time, and what the results mean for the rooms' sockets."""

    def __init__(
        self, rooms: Mapping[str, LocalRoom], coalescer: Coalescer, presence: Presence, subscriber: Subscriber,
        delivery: Delivery, members: Members, counts: Counts, supervisor: Supervisor, *, events: bool = False,
    ) -> None:
        self._rooms = rooms
        self.coalescer = coalescer
        self._presence = presence
        self._subscriber = subscriber
        self._delivery = delivery
        self._members = members
        self._counts = counts
        self._supervisor = supervisor
        # Sockets whose subscription is marked, not yet written: each is owed the count once it is.
        self._owed: dict[str, set[Connection]] = {}
        self._closing = False
        # Events on: when each room's last local subscription left (until its row's removal lands).
        self._events = events
        self._left_at: dict[str, float] = {}
        self._write_ok = True
        self._writing = False
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def healthy(self) -> bool:
        """The last write landed, and no batch is failing."""
        return self._write_ok and not self.coalescer.failing

    def owe(self, room: str, conn: Connection) -> None:
        """A new subscription of ``conn`` to ``room``: written with the room's next batch, then
        ``conn`` is sent the count (and in a presence room the member list)."""
        self._owed.setdefault(room, set()).add(conn)
        self._left_at.pop(room, None)
        self.coalescer.mark(room)

    def mark(self, room: str) -> None:
        """``room``'s row changed, or it may be written now."""
        if self._events and room not in self._rooms:
            self._left_at.setdefault(room, asyncio.get_running_loop().time())
        self.coalescer.mark(room)

    def mark_later(self, room: str, delay: float) -> None:
        asyncio.get_running_loop().call_later(delay, self.coalescer.mark, room)

    def resync(self) -> None:
        """Redis restarted, the subscriber reconnected or our lease was lost: forget versions and
        what was written, write every local room again (each once its relay works)."""
        self._counts.forget()
        self._members.forget_written()
        self.coalescer.mark_all(list(self._rooms))

    def close(self) -> None:
        """From now on nothing is marked for writing: LEAVE removes all our presence at once."""
        self._closing = True
        self.coalescer.close()

    async def settle(self, timeout: float) -> None:
        """Wait (up to ``timeout``) for a write in flight to land: one that landed after LEAVE would
        add us again."""
        deadline = time.monotonic() + timeout
        while self._writing and time.monotonic() < deadline:
            try:
                await asyncio.wait_for(self._idle.wait(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                break

    async def run(self) -> None:
        while not self._closing:
            batch = await self.coalescer.next_batch()
            if self._closing:
                return
            rows, owed = self._take(batch)
            if not rows:
                self.coalescer.unused()
                continue
            members = self._members.changes(rows)
            reports = self._reports(rows, members) if self._events else None
            self._writing = True
            self._idle.clear()
            try:
                result = await self._presence.write(rows, members, reports)
            except BaseException as e:
                self._write_ok = False
                self._restore(rows, owed)  # retried after the coalescer's backoff
                if not isinstance(e, BackplaneError):
                    raise
                self._supervisor.report("flush", e)
                continue
            finally:
                self._writing = False
                self._idle.set()
            self._write_ok = True
            if self._events:
                self._landed(rows)
            self._members.written(members)
            self.coalescer.succeeded()
            self._supervisor.recovered("flush")
            if result.lease_lost:
                self.resync()
            self._apply(result.states, owed)

    def _take(self, rooms: set[str]) -> tuple[dict[str, tuple[int, int]], dict[str, set[Connection]]]:
        """The rows to write for ``rooms`` now, and the sockets owed a count once written."""
        rows: dict[str, tuple[int, int]] = {}
        owed: dict[str, set[Connection]] = {}
        for room in rooms:
            local = self._rooms.get(room)
            if local is not None and not (self._subscriber.confirmed(room) and self._delivery.caught_up(room)):
                continue  # the gate: written once its relay works
            if local is None and self._members.in_grace(room):
                continue  # its last member may be reloading: written when the grace ends
            rows[room] = local.counts if local is not None else (0, 0)
            conns = self._owed.pop(room, None)
            if local is not None and conns:
                owed[room] = conns
        return rows, owed

    def _reports(self, rows: Mapping[str, tuple[int, int]], members: Mapping[str, Any]) -> dict[str, RoomReport]:
        """What each room's events need to know of this write (see the module's docstring)."""
        now = asyncio.get_running_loop().time()
        out: dict[str, RoomReport] = {}
        for room, row in rows.items():
            left = self._left_at.get(room) if row == (0, 0) else None
            removes = members[room][1] if room in members else ()
            out[room] = RoomReport(
                left_ago=now - left if left is not None else 0.0,
                users_left_ago=self._members.left_ago(room, removes) if removes else {},
            )
        return out

    def _landed(self, rows: Mapping[str, tuple[int, int]]) -> None:
        for room, row in rows.items():
            if row == (0, 0):
                self._left_at.pop(room, None)

    def _restore(self, rows: Mapping[str, tuple[int, int]], owed: dict[str, set[Connection]]) -> None:
        """A batch failed: its rooms are marked again, and still owe their new sockets a count."""
        self.coalescer.failed(set(rows))
        for room, conns in owed.items():
            if (local := self._rooms.get(room)) is not None:
                self._owed.setdefault(room, set()).update(c for c in conns if c in local.conns)

    def _apply(self, states: Mapping[str, CountState], owed: dict[str, set[Connection]]) -> None:
        """A batch was written: each room's new totals to its sockets, the new sockets' first count
        now, and in a presence room their member lists."""
        for room, state in states.items():
            conns = owed.get(room)
            self._counts.written(room, state, conns)
            if protocol.is_presence_room(room) and room in self._rooms:
                self._members.counted(room, conns or ())
