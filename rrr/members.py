"""Presence rooms' members: who is in each room here, what Redis must learn of it, and the lists
and diffs the room's sockets are sent.

* Users: each socket's user in a presence room and the local users (user -> tabs, info JSON). A
  user whose last tab here goes is not gone at once: for ``grace`` seconds (``--vacate-delay``)
  it is still written as a member, so a reloading tab comes back and nobody sees it leave and
  join again (nor does a webhook: member_removed is recorded when its removal is written).
* Writes: `changes` is what Redis must learn of this process's members against what it was last
  written (`written`); `rrr.writer` sends both with the room's row.
* Lists: a socket whose subscription was written (`counted`) is owed the whole list, read from
  Redis after the write; every other socket gets a diff when the list changes. Reads are
  coalesced per room: one at a time, then one more if asked, paced like the room's counts.
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


class PresenceRoom:
    __slots__ = ("user_by_conn", "users", "sent", "ready", "task", "again")

    def __init__(self) -> None:
        # Each socket's user, and the local users: user -> [tabs, info JSON].
        self.user_by_conn: dict[Connection, str] = {}
        self.users: dict[str, list[Any]] = {}
        # The member list the room's sockets were last sent.
        self.sent: dict[str, str] | None = None
        # Sockets whose subscriptions are written, so the next list read from Redis includes them:
        # each is owed a whole list.
        self.ready: list[Connection] = []
        self.task: asyncio.Future[None] | None = None
        self.again = False


class Members:
    def __init__(
        self, rooms: Mapping[str, LocalRoom], reads: PresenceReads, counts: Counts, metrics: Metrics, *,
        grace: float = 2.0,
    ) -> None:
        self._rooms = rooms
        self._reads = reads
        self._counts = counts  # a room's lists are paced as its counts are
        self.metrics = metrics
        self.grace = grace
        self._presence: dict[str, PresenceRoom] = {}  # local presence rooms
        # The members Redis holds from this process: room -> user -> info JSON.
        self._written: dict[str, dict[str, str]] = {}
        # Members whose last local tab just went: room -> user -> (until, info JSON).
        self._leaving: dict[str, dict[str, tuple[float, str]]] = {}
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
        entry = p.users.setdefault(user, [0, info_json])
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
            written = self._written.get(room, {})
            adds = {u: info for u, info in now.items() if written.get(u) != info}
            removes = [u for u in written if u not in now]
            left = self._left_at.get(room)
            if left:  # a user that left before it was ever written has no removal to time
                for user in [u for u in left if u not in written and u not in now]:
                    del left[user]
                if not left:
                    del self._left_at[room]
            if adds or removes:
                out[room] = (adds, removes)
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
        for room, (adds, removes) in changes.items():
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
        """Redis lost our rows (or may have): every member is written again."""
        self._written.clear()

    # -- lists and diffs -------------------------------------------------

    def counted(self, room: str, conns: Iterable[Connection]) -> None:
        """A write of ``room`` landed: the sockets whose subscriptions it counted first (``conns``)
        are owed the whole list, read now."""
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
        """Whole lists to the subscriptions that were owed one; a diff to every other socket."""
        owed = set(ready)
        prev = p.sent
        sent = 0
        if prev is not None:
            # A member whose info changed (a refreshed token) joins again with the new info.
            joins = {u: info for u, info in members.items() if prev.get(u) != info}
            leaves = {u: info for u, info in prev.items() if u not in members}
            if joins or leaves:
                frame = Frame(protocol.presence_diff_frame(room, joins, leaves))
                for conn in list(local.conns):
                    if conn not in owed:
                        conn.send_frame(frame)
                        sent += 1
        if owed:
            # One frame for every socket owed a list this round, and no ``sub`` in it: the same bytes
            # go to each (a join storm of N costs one encoding per round, not N copies of the list),
            # and every tab of such a socket takes it, as none of them was sent this round's diff.
            frame = Frame(protocol.presence_frame(room, protocol.members_json(members)))
            for conn in owed:
                if conn in local.conns:
                    conn.send_bulk([frame])  # as long as the room: paced by the socket's draining
                    sent += 1
        p.sent = members
        self.metrics.messages_out.inc(sent)

    def close(self) -> None:
        """Shutting down: no more reads."""
        self._closing = True
        for p in self._presence.values():
            if p.task is not None:
                p.task.cancel()
