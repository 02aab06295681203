"""The process-local hub: the sockets here, who they are, and which rooms they subscribe to.

A subscription goes one way through the core: the session asks the hub, which writes the local
rooms (`rrr.rooms`) and tells each part what concerns it, in one synchronous step: the
subscriber follows a room new here, members learn a presence room's user, delivery queues the
subscription to be served (``subscribed``, a replay), and the writer marks the room, owing the
socket its count. Nothing here awaits Redis but the re-check of sign-outs.
"""

from __future__ import annotations

import asyncio
import logging

from . import protocol
from .auth import Identity, issued_before
from .backplane import CHUNK, PresenceReads, Subscriber
from .counts import Counts
from .delivery import Delivery
from .errors import BackplaneError
from .members import Members
from .metrics import Metrics
from .protocol import CountState, Since
from .rooms import Connection, LocalRoom, Rooms
from .supervise import RateLimitedLog
from .writer import Writer

log = logging.getLogger("rrr.hub")


class Hub:
    """Sockets and users, and the local rooms' only writer."""

    def __init__(
        self, rooms: Rooms, subscriber: Subscriber, delivery: Delivery, members: Members, counts: Counts,
        writer: Writer, reads: PresenceReads, metrics: Metrics,
    ) -> None:
        self._rooms = rooms
        self._subscriber = subscriber
        self._delivery = delivery
        self._members = members
        self._counts = counts
        self._writer = writer
        self._reads = reads
        self.metrics = metrics
        self._conns: set[Connection] = set()
        self._closing = False
        self._log = RateLimitedLog(log)
        # Authenticated sockets by user, so a revocation finds them, and each one's identity.
        self._by_user: dict[str, set[Connection]] = {}
        self._identity_of: dict[Connection, Identity] = {}
        # The re-check of those sockets against sign-outs made while pub/sub was down.
        self._recheck: asyncio.Task[None] | None = None
        self._recheck_again = False
        metrics.bind_gauges(
            lambda: len(self._conns),
            lambda: sum(r.tabs for r in self._rooms.values()),
            lambda: len(self._rooms),
        )

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def connections(self) -> set[Connection]:
        return self._conns

    # -- sockets and users -------------------------------------------------

    def attach(self, conn: Connection) -> None:
        self._conns.add(conn)

    def detach(self, conn: Connection) -> None:
        self._conns.discard(conn)
        self.identify(conn, None)

    def identify(self, conn: Connection, identity: Identity | None) -> None:
        """``conn`` is now authenticated as ``identity`` (None: as nobody)."""
        old = self._identity_of.pop(conn, None)
        if old is not None and (conns := self._by_user.get(old.user)) is not None:
            conns.discard(conn)
            if not conns:
                del self._by_user[old.user]
        if identity is not None:
            self._identity_of[conn] = identity
            self._by_user.setdefault(identity.user, set()).add(conn)

    def sign_out(self, user: str) -> None:
        """The user's tokens were revoked: close each of its sockets here with 4001."""
        for conn in list(self._by_user.get(user, ())):
            self._sign_out(conn)

    def _sign_out(self, conn: Connection) -> None:
        self.identify(conn, None)
        conn.close(4001, "signed out")

    def recheck_revocations(self) -> None:
        """A sign-out published while our pub/sub connection was down never reached us; the
        revocation itself is in Redis. Now that the control channel is confirmed (later sign-outs
        arrive as messages), every authenticated socket here is checked against it, off the
        subscriber's task."""
        if self._closing:
            return
        if self._recheck is not None and not self._recheck.done():
            self._recheck_again = True  # a reconnect during the check: sign-outs may have been missed since
            return
        self._recheck = asyncio.ensure_future(self._recheck_rounds())

    async def _recheck_rounds(self) -> None:
        """Re-check until one full round succeeds after the last reconnect; a Redis failure is
        counted, logged once per 30 s, and retried after a capped backoff."""
        failures = 0
        while not self._closing:
            self._recheck_again = False
            try:
                closed = await self._close_revoked()
            except BackplaneError as e:
                failures += 1
                self.metrics.task_errors.labels("revocations").inc()
                self._log.warning("revocations", "re-checking sockets against sign-outs failed: %s", e)
                await asyncio.sleep(min(5.0, 0.1 * 2 ** failures))
                continue
            except Exception as e:  # noqa: BLE001 - a task with no caller: count, log once, stop
                self.metrics.task_errors.labels("revocations").inc()
                self._log.warning("revocations", "re-checking sockets against sign-outs: %s: %s",
                                  type(e).__name__, e)
                return
            failures = 0
            self._log.clear("revocations")
            if closed:
                log.info("closed %d socket(s) signed out while pub/sub was down", closed)
            if not self._recheck_again:
                return

    async def _close_revoked(self) -> int:
        """Close (4001) each authenticated socket whose token is older than its user's last
        sign-out. The checks go 500 users at a time, each batch one pipelined round trip
        (`PresenceReads.revoked_at`), so a process with 100,000 users costs Redis 200 calls."""
        users = list(self._by_user)
        closed = 0
        for i in range(0, len(users), CHUNK):
            chunk = users[i : i + CHUNK]
            times = await asyncio.gather(*(self._reads.revoked_at(user) for user in chunk))
            for user, at in zip(chunk, times):
                if at is None:
                    continue
                for conn in list(self._by_user.get(user, ())):
                    identity = self._identity_of.get(conn)
                    # Judged on the identity it holds now: a socket that refreshed meanwhile keeps it.
                    if identity is not None and issued_before(identity, at):
                        self._sign_out(conn)
                        closed += 1
        return closed

    # -- subscriptions: the local rooms ------------------------------------------------------

    def subscribe(
        self, conn: Connection, room: str, user: str | None = None, info_json: str = "null", sub: str = "",
        since: Since | None = None, announce: bool = True,
    ) -> None:
        """One more subscription (tab) of ``conn`` to ``room``; the socket is owed a count (and, in a
        presence room, where ``user`` is the socket's authenticated user, the member list), and
        ``subscribed`` (unless not ``announce``) with the messages after ``since``."""
        r = self._rooms.get(room)
        if r is None:
            r = self._rooms[room] = LocalRoom()
            self._subscriber.follow(room)
        tabs = r.conns.get(conn, 0)
        r.conns[conn] = tabs + 1
        r.tabs += 1
        if user is not None and protocol.is_presence_room(room):
            self._members.join(room, conn, user, info_json)
        self._delivery.subscribe(room, conn, sub, since, announce, tabs == 0)
        self._writer.owe(room, conn)

    def unsubscribe(self, conn: Connection, room: str, sub: str = "") -> None:
        r = self._rooms.get(room)
        tabs = r.conns.get(conn, 0) if r else 0
        if r is None or tabs == 0:
            return
        last = tabs == 1
        self._delivery.unsubscribe(room, conn, sub, last)
        if last:
            del r.conns[conn]
            self._counts.left(room, conn)
        else:
            r.conns[conn] = tabs - 1
        r.tabs -= 1
        if protocol.is_presence_room(room) and (grace := self._members.leave(room, conn, last)) is not None:
            self._writer.mark_later(room, grace)  # its user is still a member until then
        if not r.conns:
            del self._rooms[room]
            self._subscriber.unfollow(room)
            self._delivery.room_gone(room)
            self._counts.room_gone(room)
            self._members.room_gone(room)
        self._writer.mark(room)

    def update_info(self, conn: Connection, room: str, info_json: str) -> None:
        """``conn``'s user in presence room ``room`` now shows ``info_json`` (its token was refreshed):
        written like a join, so every member gets a diff that carries the user with it."""
        if self._members.update_info(room, conn, info_json):
            self._writer.mark(room)

    # -- presence rooms' members ---------------------------------------------

    def admits(self, room: str, user: str, most: int, census: dict[str, str] | None = None) -> bool | None:
        """Whether ``user`` may be a member of presence room ``room`` under a cap of ``most`` users
        (None: no list of the room is known here yet; `census` reads one)."""
        return self._members.admits(room, user, most, census)

    async def census(self, room: str) -> dict[str, str]:
        return await self._members.census(room)

    def members_page(self, conn: Connection, room: str, sub: str, after: str) -> bool:
        """``conn`` asked its subscription ``sub`` for the members of ``room`` after ``after``
        (False: refused, too many such pages wait for the room's first list here)."""
        return self._members.page(room, conn, sub, after)

    def current_state(self, room: str) -> CountState | None:
        """The newest totals this process knows for ``room`` (None before its first write)."""
        return self._counts.current(room)

    def local_rooms(self) -> list[str]:
        return list(self._rooms)

    @property
    def room_count(self) -> int:
        """Rooms with at least one local subscriber."""
        return len(self._rooms)

    def local_counts(self, room: str) -> tuple[int, int]:
        r = self._rooms.get(room)
        return r.counts if r else (0, 0)

    # -- shutdown ----------------------------------------------------------

    def close(self) -> None:
        """From now on sockets are refused and no sign-outs re-checked."""
        self._closing = True
        if self._recheck is not None:
            self._recheck.cancel()

    def close_all(self, code: int = 1001, reason: str = "server shutting down") -> None:
        for conn in list(self._conns):
            conn.close(code, reason)
