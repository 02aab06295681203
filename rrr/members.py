"""Presence rooms' members: who is in each room here, what Redis must learn of it, and the lists
and diffs the room's sockets are sent.

* Users: each socket's user in a presence room and the local users (user -> tabs, info JSON). A
  user whose last tab here goes is not gone at once: for ``grace`` seconds (``--vacate-delay``)
  it is still written as a member, so a reloading tab comes back and nobody sees it leave and
  join again (nor does a webhook: member_removed is recorded when its removal is written).
* Writes: `changes` is what Redis must learn of this process's members against what it was last
  written (`written`); `rrr.writer` sends both with the room's row.
* Lists: the room's whole list is read from Redis after a write (coalesced per room: one read at
  a time, then one more if asked, paced like the room's counts) and kept here, sorted by user id.
  A socket whose subscription was written (`counted`) is owed the first page of it (at most
  ``list_max`` members, one frame shared by every socket owed it that round); every other socket
  gets a diff when the list changes, cut into frames of at most ``list_max`` members. A
  ``members`` frame is answered with the next page from the same list, so pages and diffs agree,
  and a page costs no Redis read: a join storm of N subscriptions costs one read per round.
* The cap (``--max-members``): whether a new user fits is judged on the members this process
  knows: the last list read, plus its own users since (those in their grace included). A room
  with no list here yet is read once for all the subscriptions waiting on it (`census`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from . import protocol
from .backplane import MemberDelta, PresenceReads
from .counts import Counts
from .edge.wsframe import Frame
from .errors import BackplaneError
from .metrics import Metrics
from .rooms import Connection, LocalRoom
from .supervise import RateLimitedLog

log = logging.getLogger("rrr.hub")

#: Pages one socket may have asked for in a room before there is a list to answer from (a room new
#: to this process, or whose reads fail while Redis is down); more are refused, not held.
WAITING_PER_SOCKET = 8


class PresenceRoom:
    __slots__ = (
        "user_by_conn", "users", "sent", "order", "first", "fresh", "waiting", "asked", "ready", "task", "again",
    )

    def __init__(self) -> None:
        # Each socket's user, and the local users: user -> [tabs, info JSON].
        self.user_by_conn: dict[Connection, str] = {}
        self.users: dict[str, list[Any]] = {}
        # The member list the room's sockets were last sent (their diffs end there), its users in
        # ascending order (what pages are cut from), and its first page, encoded once.
        self.sent: dict[str, str] | None = None
        self.order: list[str] = []
        self.first: Frame | None = None
        # Local users (in their grace too) not in ``sent``: with it, the members this process knows.
        self.fresh: set[str] = set()
        # ``members`` frames that came before the first list: (socket, sub, after), answered in order.
        self.waiting: list[tuple[Connection, str, str]] = []
        self.asked: dict[Connection, int] = {}  # how many of ``waiting`` each socket asked
        # Sockets whose subscriptions are written, so the next list read from Redis includes them:
        # each is owed the first page.
        self.ready: list[Connection] = []
        self.task: asyncio.Future[None] | None = None
        self.again = False


class Members:
    def __init__(
        self, rooms: Mapping[str, LocalRoom], reads: PresenceReads, counts: Counts, metrics: Metrics, *,
        grace: float = 2.0, list_max: int = protocol.PRESENCE_LIST_MAX,
    ) -> None:
        self._rooms = rooms
        self._reads = reads
        self._counts = counts  # a room's lists are paced as its counts are
        self.metrics = metrics
        self.grace = grace
        self.list_max = max(1, list_max)  # members per frame: a page, or a piece of a diff
        self._presence: dict[str, PresenceRoom] = {}  # local presence rooms
        # The members Redis holds from this process: room -> user -> info JSON.
        self._written: dict[str, dict[str, str]] = {}
        # Rooms whose members Redis holds from us are unknown since a resync: the next write of each
        # states them all and drops every other field of ours (a removal that had not landed, or one a
        # failover lost, would otherwise stay listed for as long as our row lives).
        self._replace: set[str] = set()
        # Members whose last local tab just went: room -> user -> (until, info JSON).
        self._leaving: dict[str, dict[str, tuple[float, str]]] = {}
        # Reads of rooms with no list here yet, shared by the subscriptions the member cap holds.
        self._census: dict[str, asyncio.Future[dict[str, str]]] = {}
        # When each member's last local tab went (loop time), until its removal is written: its
        # member_removed happened then, not when the grace ended.
        self._left_at: dict[str, dict[str, float]] = {}
        self._closing = False
        self._log = RateLimitedLog(log)

    def _room(self, room: str) -> PresenceRoom | None:
        """The local presence room ``room`` (made on first use), or None if it is not local."""
        p = self._presence.get(room)
        if p is None and room in self._rooms and protocol.is_presence_room(room):
            p = self._presence[room] = PresenceRoom()
        return p

    # -- users -----------------------------------------------------------

    def join(self, room: str, conn: Connection, user: str, info_json: str) -> None:
        """One more subscription of ``conn``, authenticated as ``user``, to presence room ``room``."""
        p = self._room(room)
        if p is None:
            return
        p.user_by_conn[conn] = user
        leaving = self._leaving.get(room)
        if leaving is not None and leaving.pop(user, None) is not None and not leaving:
            del self._leaving[room]
        left = self._left_at.get(room)
        if left is not None and left.pop(user, None) is not None and not left:
            del self._left_at[room]
        entry = p.users.get(user)
        if entry is None:
            entry = p.users[user] = [0, info_json]
            if p.sent is None or user not in p.sent:
                p.fresh.add(user)
        entry[0] += 1

    def leave(self, room: str, conn: Connection, last: bool) -> float | None:
        """One subscription of ``conn`` to ``room`` less (``last``: its socket has none left there).
        If that was its user's last tab here, the seconds until the user's grace ends (the room's
        row must be written again then); else None."""
        p = self._presence.get(room)
        user = p.user_by_conn.get(conn) if p is not None else None
        if p is None or user is None:
            return None
        if last:
            del p.user_by_conn[conn]
        entry = p.users[user]
        entry[0] -= 1
        if entry[0] != 0:
            return None
        # Not gone yet: a reloading tab comes back within the grace, and then nobody sees it
        # leave and join again.
        del p.users[user]
        now = asyncio.get_running_loop().time()
        self._leaving.setdefault(room, {})[user] = (now + self.grace, entry[1])
        self._left_at.setdefault(room, {})[user] = now
        return self.grace + 0.05

    def update_info(self, room: str, conn: Connection, info_json: str) -> bool:
        """``conn``'s user in presence room ``room`` now shows ``info_json`` (its token was refreshed).
        Whether that changed it: then it is written like a join, so every member gets a diff that
        carries the user with it."""
        p = self._presence.get(room)
        user = p.user_by_conn.get(conn) if p is not None else None
        if p is None or user is None:
            return False
        entry = p.users.get(user)
        if entry is not None and entry[1] != info_json:
            entry[1] = info_json
            return True
        return False

    def room_gone(self, room: str) -> None:
        self._presence.pop(room, None)

    # -- the cap -----------------------------------------------------------

    def admits(self, room: str, user: str, most: int, census: Mapping[str, str] | None = None) -> bool | None:
        """Whether ``user`` may be a member of ``room`` under a cap of ``most`` users: yes if it is one
        already (here, in its grace, or in the last list), else if the members known number fewer.
        None when this process knows no list of the room yet: `census` reads one, and the caller
        asks again with it."""
        p = self._presence.get(room)
        leaving = self._leaving.get(room)
        if (p is not None and user in p.users) or (leaving is not None and user in leaving):
            return True
        if p is not None and p.sent is not None:
            known: Mapping[str, str] = p.sent
            extra = len(p.fresh)  # none of them is in ``sent``
        elif census is not None:
            known = census
            local = set(p.users) if p is not None else set()
            local.update(leaving or ())
            extra = sum(1 for u in local if u not in census)
        else:
            return None
        return user in known or len(known) + extra < most

    async def census(self, room: str) -> dict[str, str]:
        """The room's members as Redis has them now: one read at a time per room, shared by every
        subscription waiting on it. Raises BackplaneError."""
        fut = self._census.get(room)
        if fut is None:
            fut = self._census[room] = asyncio.ensure_future(self._reads.members(room))

            def done(f: asyncio.Future[dict[str, str]]) -> None:
                if self._census.get(room) is f:
                    del self._census[room]
                if not f.cancelled():
                    f.exception()  # each waiter hears it; nobody left waiting must not log it as lost

            fut.add_done_callback(done)
        return await asyncio.shield(fut)

    # -- writes ----------------------------------------------------------

    def changes(self, rooms: Iterable[str]) -> dict[str, MemberDelta]:
        """What Redis must learn of this process's members in ``rooms``: users to add (with their
        info) and users to remove, against what was last written."""
        out: dict[str, MemberDelta] = {}
        for room in rooms:
            if not protocol.is_presence_room(room):
                continue
            p = self._presence.get(room)
            now = {user: entry[1] for user, entry in p.users.items()} if p else {}
            if self.in_grace(room):
                now.update({user: info for user, (_, info) in self._leaving[room].items() if user not in now})
            left = self._left_at.get(room)
            if room in self._replace:
                # Every member here, and the users we know left (their removals timed); the script
                # drops any other field of ours.
                out[room] = (now, [u for u in left or () if u not in now], True)
                continue
            written = self._written.get(room, {})
            adds = {u: info for u, info in now.items() if written.get(u) != info}
            removes = [u for u in written if u not in now]
            if left:  # a user that left before it was ever written has no removal to time
                for user in [u for u in left if u not in written and u not in now]:
                    del left[user]
                if not left:
                    del self._left_at[room]
            if adds or removes:
                out[room] = (adds, removes, False)
        return out

    def in_grace(self, room: str) -> bool:
        """Whether some member of ``room`` left this process less than ``grace`` ago (expired
        entries are forgotten here)."""
        leaving = self._leaving.get(room)
        if not leaving:
            return False
        now = asyncio.get_running_loop().time()
        for user in [u for u, (deadline, _) in leaving.items() if deadline <= now]:
            del leaving[user]
        if not leaving:
            del self._leaving[room]
            return False
        return True

    def left_ago(self, room: str, users: Iterable[str]) -> dict[str, float]:
        """Seconds since each of ``users`` (removed members of ``room``) left this process."""
        left = self._left_at.get(room, {})
        now = asyncio.get_running_loop().time()
        return {user: now - left[user] for user in users if user in left}

    def written(self, changes: Mapping[str, MemberDelta]) -> None:
        """A write with these member changes landed."""
        for room, (adds, removes, replace) in changes.items():
            if replace:
                self._replace.discard(room)
                self._written[room] = {}
            written = self._written.setdefault(room, {})
            written.update(adds)
            left = self._left_at.get(room)
            for user in removes:
                written.pop(user, None)
                if left is not None:
                    left.pop(user, None)
            if left is not None and not left:
                del self._left_at[room]
            if not written:
                del self._written[room]

    def forget_written(self) -> None:
        """Redis lost our rows, or may hold other members of ours than we think (a write that had
        not landed, one a failover lost): each room's next write replaces all our members there."""
        self._replace.update(self._written)
        self._replace.update(self._presence)
        self._replace.update(self._leaving)
        self._written.clear()

    # -- lists and diffs -------------------------------------------------

    def counted(self, room: str, conns: Iterable[Connection]) -> None:
        """A write of ``room`` landed: the sockets whose subscriptions it counted first (``conns``)
        are owed the first page of the list, read now."""
        p = self._room(room)
        if p is None:
            return
        p.ready += conns
        self.refresh(room)

    def refresh(self, room: str) -> None:
        """Read the room's members again (coalesced: one read at a time, then one more if asked)."""
        if self._closing:
            return
        p = self._room(room)
        if p is None:
            return
        if p.task is not None and not p.task.done():
            p.again = True
            return
        p.task = asyncio.ensure_future(self._rounds(room, p))

    async def _rounds(self, room: str, p: PresenceRoom) -> None:
        failures = 0
        while self._presence.get(room) is p and not self._closing:
            p.again = False
            ready, p.ready = p.ready, []
            try:
                members = await self._reads.members(room)
            except BackplaneError as e:
                p.ready = ready + p.ready
                failures += 1
                self.metrics.task_errors.labels("members").inc()
                self._log.warning("members", "reading the members of %s failed: %s", room, e)
                await asyncio.sleep(min(5.0, self._counts.interval * 2 ** failures))
                continue
            except Exception as e:  # noqa: BLE001 - a task with no caller: count, log once, stop
                self.metrics.task_errors.labels("members").inc()
                self._log.warning("members", "members of %s: %s: %s", room, type(e).__name__, e)
                return
            failures = 0
            local = self._rooms.get(room)
            if self._presence.get(room) is not p or local is None:
                return
            self._send(room, p, local, members, ready)
            if not (p.again or p.ready):
                return
            await asyncio.sleep(self._counts.spacing(room))

    def _send(
        self, room: str, p: PresenceRoom, local: LocalRoom, members: dict[str, str], ready: list[Connection],
    ) -> None:
        """The first page to the subscriptions that were owed one; a diff to every other socket; then
        the pages asked for before there was a list."""
        owed = set(ready)
        prev = p.sent
        sent = 0
        if prev is None:
            changed = True
            p.order = sorted(members)
        else:
            # A member whose info changed (a refreshed token) joins again with the new info.
            joins = {u: info for u, info in members.items() if prev.get(u) != info}
            leaves = {u: info for u, info in prev.items() if u not in members}
            changed = bool(joins or leaves)
            if leaves or any(u not in prev for u in joins):
                p.order = sorted(members)
            if changed:
                frames = [Frame(text) for text in protocol.presence_diff_frames(room, joins, leaves, self.list_max)]
                for conn in list(local.conns):
                    if conn not in owed:
                        for frame in frames:
                            conn.send_frame(frame)
                        sent += len(frames)
        p.sent = members
        if changed:
            p.first = None
        if p.fresh:
            leaving = self._leaving.get(room) if self.in_grace(room) else None
            p.fresh = {
                u for u in p.fresh if u not in members and (u in p.users or (leaving is not None and u in leaving))
            }
        if owed:
            # One frame for every socket owed a first page this round, and no ``sub`` in it: the same
            # bytes go to each (a join storm of N costs one encoding per round, not N copies), and
            # every tab of such a socket takes it, as none of them was sent this round's diff.
            frame = self._first_page(room, p)
            for conn in owed:
                if conn in local.conns:
                    conn.send_bulk([frame])  # paced by the socket's draining
                    sent += 1
        waiting, p.waiting = p.waiting, []
        p.asked.clear()
        for conn, sub, after in waiting:
            if conn in local.conns:
                self._send_page(room, p, conn, sub, after)
        self.metrics.messages_out.inc(sent)

    def _first_page(self, room: str, p: PresenceRoom) -> Frame:
        if p.first is None:
            assert p.sent is not None
            sent = p.sent
            users, more = protocol.members_page(p.order, "", self.list_max)
            p.first = Frame(protocol.presence_frame(room, protocol.members_json((u, sent[u]) for u in users),
                                                    len(p.order), more))
        return p.first

    def page(self, room: str, conn: Connection, sub: str, after: str) -> bool:
        """Answer ``conn``'s ``members`` frame for its subscription ``sub``: the members after
        ``after``, from the list its diffs come from (once there is one). False: refused, as the
        socket already waits for `WAITING_PER_SOCKET` pages of a room with no list yet."""
        p = self._presence.get(room)
        if p is None:
            return True
        if p.sent is None or p.waiting:
            n = p.asked.get(conn, 0)
            if n >= WAITING_PER_SOCKET:
                return False
            p.asked[conn] = n + 1
            p.waiting.append((conn, sub, after))
            return True
        self._send_page(room, p, conn, sub, after)
        return True

    def _send_page(self, room: str, p: PresenceRoom, conn: Connection, sub: str, after: str) -> None:
        assert p.sent is not None
        sent = p.sent
        users, more = protocol.members_page(p.order, after, self.list_max)
        body = protocol.members_json((u, sent[u]) for u in users)
        conn.send_bulk([Frame(protocol.presence_frame(room, body, len(p.order), more, sub))])
        self.metrics.messages_out.inc()

    def close(self) -> None:
        """Shutting down: no more reads."""
        self._closing = True
        for p in self._presence.values():
            if p.task is not None:
                p.task.cancel()
        for fut in list(self._census.values()):
            fut.cancel()
