"""The process-local hub: who is in which room here, and what they are sent.

Handlers talk to the hub; the hub asks the subscriber for rooms and marks presence
writes, which the service's flush loop writes (`rrr.coalesce` decides when). Two rates
are coalesced per process so a join storm of N costs O(N) frames, not O(N^2):

* presence writes: joins and leaves only mark a room dirty; at most one batched
  Redis call per ``count_interval`` writes every dirty room (leading edge at once,
  so a lone join is answered in one round trip);
* count broadcasts: at most one per room per ``count_interval``, trailing edge
  always sends the newest state, so the last frame a client sees is the truth. In a
  big room the spacing grows with its sockets (``count_rate``): a broadcast costs one
  frame per socket, so a fixed interval makes a storm that lasts longer the bigger the
  room cost O(N^2) frames again; paced, a room is sent at most ``count_rate`` count
  frames a second whatever its size.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from . import protocol
from .coalesce import Coalescer
from .auth import Identity
from .delivery import Delivery
from .errors import BackplaneError
from .backplane import CHUNK, History, MemberDelta, Presence, Published, Subscriber
from .metrics import Metrics
from .protocol import CountState, Since
from .supervise import RateLimitedLog
from .edge.wsframe import Frame

log = logging.getLogger("rrr.hub")


class Connection(Protocol):
    """A client socket as the hub sees it. ``send_frame`` never blocks and never raises."""

    def send_frame(self, frame: Frame) -> None: ...

    def send_bulk(self, frames: list[Frame]) -> None:
        """A replay or a whole member list: written as the socket drains, what follows behind it."""

    def may_queue(self, nbytes: int) -> bool:
        """Whether a replay of ``nbytes`` fits in what the socket may be owed at once."""

    def close(self, code: int | None = None, reason: str | None = None) -> None: ...

    def announced_subs(self, room: str) -> Iterable[str]:
        """Its subscriptions to ``room`` that are told ``subscribed``."""


class _Room:
    __slots__ = (
        "tabs_by_conn", "tabs", "state", "sent_version", "last_broadcast", "timer", "waiting", "fresh",
        "user_by_conn", "users", "members_sent", "members_owed", "members_inflight", "members_ready",
        "members_task", "members_again",
    )

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
        # Presence rooms: each socket's user, and the local users: user -> [tabs, info JSON].
        self.user_by_conn: dict[Connection, str] = {}
        self.users: dict[str, list[Any]] = {}
        # The member list the room's sockets were last sent, and the sockets owed a whole list.
        self.members_sent: dict[str, str] | None = None
        # Owed: joined, not yet written; in flight: in the write under way; ready: written, so the
        # next list read from Redis includes them.
        self.members_owed: list[Connection] = []
        self.members_inflight: list[Connection] = []
        self.members_ready: list[Connection] = []
        self.members_task: asyncio.Future[None] | None = None
        self.members_again = False


class Hub:
    """Local rooms and fan-out. Presence writes are *marked* here and written by the service's
    flush loop (`take_batch` / `apply`); nothing here awaits Redis except handler requests."""

    def __init__(
        self, presence: Presence, subscriber: Subscriber, coalescer: Coalescer, metrics: Metrics, *,
        history: History, count_interval: float = 0.1, count_rate: float = 0.0,
        member_grace: float = 2.0,
    ) -> None:
        self.presence = presence
        self.history = history
        self.subscriber = subscriber
        self.coalescer = coalescer
        self.metrics = metrics
        self.count_interval = count_interval
        self.count_rate = count_rate
        self._rooms: dict[str, _Room] = {}
        self._conns: set[Connection] = set()
        self._closing = False
        self._log = RateLimitedLog(log)
        # Presence rooms: the members Redis holds from this process (user -> info JSON).
        self._written_members: dict[str, dict[str, str]] = {}
        # Presence rooms: members whose last local tab just went, room -> user -> (until, info JSON).
        self._leaving: dict[str, dict[str, tuple[float, str]]] = {}
        self.member_grace = member_grace
        # Authenticated sockets by user, so a revocation finds them, and each one's identity.
        self._by_user: dict[str, set[Connection]] = {}
        self._identity_of: dict[Connection, Identity] = {}
        # The re-check of those sockets against sign-outs made while pub/sub was down.
        self._recheck: asyncio.Task[None] | None = None
        self._recheck_again = False
        self.delivery = Delivery(
            self.history, metrics, conns=self._room_conns, confirmed=subscriber.confirmed, on_ready=self._mark_dirty,
        )
        metrics.bind_gauges(
            lambda: len(self._conns),
            lambda: sum(r.tabs for r in self._rooms.values()),
            lambda: len(self._rooms),
        )

    @property
    def closing(self) -> bool:
        return self._closing

    # -- sockets and tabs --------------------------------------------------

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

    def signed_out(self, user: str) -> None:
        """The user's tokens were revoked: close each of its sockets here with 4001."""
        for conn in list(self._by_user.get(user, ())):
            self._sign_out(conn)

    def _sign_out(self, conn: Connection) -> None:
        self.identify(conn, None)
        conn.close(4001, "signed out")

    def control_confirmed(self) -> None:
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
        (`Presence.revoked_at`), so a process with 100,000 users costs Redis 200 calls."""
        users = list(self._by_user)
        closed = 0
        for i in range(0, len(users), CHUNK):
            chunk = users[i : i + CHUNK]
            times = await asyncio.gather(*(self.presence.revoked_at(user) for user in chunk))
            for user, at in zip(chunk, times):
                if at is None:
                    continue
                for conn in list(self._by_user.get(user, ())):
                    identity = self._identity_of.get(conn)
                    # Judged on the identity it holds now: a socket that refreshed meanwhile keeps it.
                    if identity is not None and (identity.issued_at is None or identity.issued_at < at):
                        self._sign_out(conn)
                        closed += 1
        return closed

    def _room_conns(self, room: str) -> Iterable[Connection] | None:
        r = self._rooms.get(room)
        return r.tabs_by_conn if r is not None else None

    def add_tab(
        self, conn: Connection, room: str, user: str | None = None, info_json: str = "null", sub: str = "",
        since: Since | None = None, announce: bool = True,
    ) -> None:
        """One more subscription (tab) of ``conn`` to ``room``; the socket is owed a count (and, in a
        presence room, where ``user`` is the socket's authenticated user, the member list), and
        ``subscribed`` (unless not ``announce``) with the messages after ``since``."""
        r = self._rooms.get(room)
        if r is None:
            r = self._rooms[room] = _Room()
            self.subscriber.follow(room)
        new = conn not in r.tabs_by_conn
        r.tabs_by_conn[conn] = r.tabs_by_conn.get(conn, 0) + 1
        r.tabs += 1
        r.waiting.add(conn)
        if user is not None and protocol.is_presence_room(room):
            r.user_by_conn[conn] = user
            leaving = self._leaving.get(room)
            if leaving is not None and leaving.pop(user, None) is not None and not leaving:
                del self._leaving[room]
            entry = r.users.setdefault(user, [0, info_json])
            entry[0] += 1
            r.members_owed.append(conn)
        self.delivery.subscribe(room, conn, sub, since, announce, new)
        self._mark_dirty(room)

    def remove_tab(self, conn: Connection, room: str, sub: str = "") -> None:
        r = self._rooms.get(room)
        n = r.tabs_by_conn.get(conn, 0) if r else 0
        if r is None or n == 0:
            return
        self.delivery.unsubscribe(room, conn, sub, n == 1)
        if n == 1:
            del r.tabs_by_conn[conn]
            r.waiting.discard(conn)
            r.fresh.discard(conn)
        else:
            r.tabs_by_conn[conn] = n - 1
        r.tabs -= 1
        user = r.user_by_conn.get(conn)
        if user is not None:
            if n == 1:
                del r.user_by_conn[conn]
            entry = r.users[user]
            entry[0] -= 1
            if entry[0] == 0:
                # Not gone yet: a reloading tab comes back within the grace, and then nobody
                # sees it leave and join again.
                del r.users[user]
                grace = self.member_grace
                self._leaving.setdefault(room, {})[user] = (asyncio.get_running_loop().time() + grace, entry[1])
                asyncio.get_running_loop().call_later(grace + 0.05, self._mark_dirty, room)
        if not r.tabs_by_conn:
            if r.timer:
                r.timer.cancel()
            del self._rooms[room]
            self.subscriber.unfollow(room)
            self.delivery.room_gone(room)
        self._mark_dirty(room)

    def update_info(self, conn: Connection, room: str, info_json: str) -> None:
        """``conn``'s user in presence room ``room`` now shows ``info_json`` (its token was refreshed):
        written like a join, so every member gets a diff that carries the user with it."""
        r = self._rooms.get(room)
        user = r.user_by_conn.get(conn) if r is not None else None
        if r is None or user is None:
            return
        entry = r.users.get(user)
        if entry is not None and entry[1] != info_json:
            entry[1] = info_json
            self._mark_dirty(room)

    def current_state(self, room: str) -> CountState | None:
        """The newest totals this process knows for ``room`` (None before its first write)."""
        r = self._rooms.get(room)
        return r.state if r else None

    def local_rooms(self) -> list[str]:
        return list(self._rooms)

    @property
    def room_count(self) -> int:
        """Rooms with at least one local subscriber."""
        return len(self._rooms)

    def local_counts(self, room: str) -> tuple[int, int]:
        r = self._rooms.get(room)
        return (len(r.tabs_by_conn), r.tabs) if r else (0, 0)

    # -- presence writes: marked here, written by the service's flush loop ------

    def _mark_dirty(self, room: str) -> None:
        if not self._closing:
            self.coalescer.mark(room)

    def take_batch(self, rooms: set[str]) -> tuple[dict[str, tuple[int, int]], dict[str, set[Connection]]]:
        """The rows to write for ``rooms`` now, and the sockets owed a count once written.

        A room with local subscribers is written only once its channels are confirmed
        subscribed and its messages caught up (`on_subscribed` and the delivery's readiness
        mark it again then): a count that shows this process means its relay works, and its
        subscriptions are served. A room we left is written at once.
        """
        rows: dict[str, tuple[int, int]] = {}
        owed: dict[str, set[Connection]] = {}
        for room in rooms:
            counts = self.local_counts(room)
            if counts != (0, 0) and not (self.subscriber.confirmed(room) and self.delivery.caught_up(room)):
                continue
            if counts == (0, 0) and self._in_grace(room):
                continue  # its last member may be reloading: written when the grace ends
            rows[room] = counts
            r = self._rooms.get(room)
            if r is not None and r.waiting:
                owed[room], r.waiting = r.waiting, set()
            if r is not None and r.members_owed:
                r.members_inflight += r.members_owed
                r.members_owed = []
        return rows, owed

    def member_changes(self, rooms: Mapping[str, object]) -> dict[str, MemberDelta]:
        """What Redis must learn of this process's members in ``rooms``: users to add (with their
        info) and users to remove, against what was last written."""
        out: dict[str, MemberDelta] = {}
        for room in rooms:
            if not protocol.is_presence_room(room):
                continue
            r = self._rooms.get(room)
            now = {user: entry[1] for user, entry in r.users.items()} if r else {}
            if self._in_grace(room):
                now.update({user: info for user, (_, info) in self._leaving[room].items() if user not in now})
            written = self._written_members.get(room, {})
            adds = {u: info for u, info in now.items() if written.get(u) != info}
            removes = [u for u in written if u not in now]
            if adds or removes:
                out[room] = (adds, removes)
        return out

    def _in_grace(self, room: str) -> bool:
        """Whether some member of ``room`` left this process less than ``member_grace`` ago
        (expired entries are forgotten here)."""
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

    def members_written(self, changes: Mapping[str, MemberDelta]) -> None:
        """A write with these member changes landed."""
        for room, (adds, removes) in changes.items():
            written = self._written_members.setdefault(room, {})
            written.update(adds)
            for user in removes:
                written.pop(user, None)
            if not written:
                del self._written_members[room]

    def restore(self, rows: Mapping[str, tuple[int, int]], owed: dict[str, set[Connection]]) -> None:
        """A batch failed: its rooms are dirty again, and still owe their new sockets a count."""
        self.coalescer.failed(set(rows))
        for room, conns in owed.items():
            if (r := self._rooms.get(room)) is not None:
                r.waiting |= {c for c in conns if c in r.tabs_by_conn}
        for room in rows:
            if (r := self._rooms.get(room)) is not None and r.members_inflight:
                r.members_owed = r.members_inflight + r.members_owed
                r.members_inflight = []

    def apply(self, states: Mapping[str, CountState], owed: dict[str, set[Connection]]) -> None:
        """A batch was written: take the new totals, and give new sockets their count now."""
        for room, state in states.items():
            r = self._rooms.get(room)
            sent_before = r.sent_version if r else None
            self.count(room, state)
            if r is not None and room in owed and r.sent_version == sent_before:
                self._send_initial(r, room, owed[room])
            if r is not None and protocol.is_presence_room(room):
                r.members_ready += r.members_inflight
                r.members_inflight = []
                self._refresh_members(room, r)

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

    # -- what the subscriber hears (its Listener) ------------------------------------------------

    def count(self, room: str, state: CountState) -> None:
        r = self._rooms.get(room)
        if r is None or (r.state is not None and state.version <= r.state.version):
            return
        r.fresh.clear()  # whoever was sent the old state directly must get the new one
        r.state = state
        if protocol.is_presence_room(room):
            self._refresh_members(room, r)
        if r.timer is not None:
            return
        loop = asyncio.get_running_loop()
        due = r.last_broadcast + self.spacing(state)
        if due <= loop.time():
            self._broadcast(room, r)
        else:
            r.timer = loop.call_at(due, self._timed_broadcast, room, r)

    def spacing(self, state: CountState | None) -> float:
        """Seconds between two broadcasts to a room: ``count_interval``, or in a room of more than
        ``count_rate * count_interval`` sockets (all processes together), one frame per socket
        spread over a second per ``count_rate`` frames."""
        if self.count_rate <= 0 or state is None:
            return self.count_interval
        return max(self.count_interval, state.connections / self.count_rate)

    def _timed_broadcast(self, room: str, r: _Room) -> None:
        """A timer's callback: whatever goes wrong is counted and logged once, never per call."""
        try:
            self._broadcast(room, r)
        except Exception as e:  # noqa: BLE001 - a timer callback has no caller to raise to
            r.timer = None
            self.metrics.task_errors.labels("broadcast").inc()
            self._log.warning("broadcast", "count broadcast to %s failed: %s: %s", room, type(e).__name__, e)

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

    # -- presence rooms: member lists and diffs --------------------------------------------------

    def _refresh_members(self, room: str, r: _Room) -> None:
        """Read the room's members again (coalesced: one read at a time, then one more if asked)."""
        if self._closing:
            return
        if r.members_task is not None and not r.members_task.done():
            r.members_again = True
            return
        r.members_task = asyncio.ensure_future(self._members_rounds(room, r))

    async def _members_rounds(self, room: str, r: _Room) -> None:
        failures = 0
        while self._rooms.get(room) is r and not self._closing:
            r.members_again = False
            ready, r.members_ready = r.members_ready, []
            try:
                members = await self.presence.members(room)
            except BackplaneError as e:
                r.members_ready = ready + r.members_ready
                failures += 1
                self.metrics.task_errors.labels("members").inc()
                self._log.warning("members", "reading the members of %s failed: %s", room, e)
                await asyncio.sleep(min(5.0, self.count_interval * 2 ** failures))
                continue
            except Exception as e:  # noqa: BLE001 - a task with no caller: count, log once, stop
                self.metrics.task_errors.labels("members").inc()
                self._log.warning("members", "members of %s: %s: %s", room, type(e).__name__, e)
                return
            failures = 0
            if self._rooms.get(room) is not r:
                return
            self._send_members(room, r, members, ready)
            if not (r.members_again or r.members_ready):
                return
            await asyncio.sleep(self.spacing(r.state))

    def _send_members(
        self, room: str, r: _Room, members: dict[str, str], ready: list[Connection],
    ) -> None:
        """Whole lists to the subscriptions that were owed one; a diff to every other socket."""
        owed = set(ready)
        prev = r.members_sent
        sent = 0
        if prev is not None:
            # A member whose info changed (a refreshed token) joins again with the new info.
            joins = {u: info for u, info in members.items() if prev.get(u) != info}
            leaves = {u: info for u, info in prev.items() if u not in members}
            if joins or leaves:
                frame = Frame(protocol.presence_diff_frame(room, joins, leaves))
                for conn in list(r.tabs_by_conn):
                    if conn not in owed:
                        conn.send_frame(frame)
                        sent += 1
        if owed:
            # One frame for every socket owed a list this round, and no ``sub`` in it: the same bytes
            # go to each (a join storm of N costs one encoding per round, not N copies of the list),
            # and every tab of such a socket takes it, as none of them was sent this round's diff.
            frame = Frame(protocol.presence_frame(room, protocol.members_json(members)))
            for conn in owed:
                if conn in r.tabs_by_conn:
                    conn.send_bulk([frame])  # as long as the room: paced by the socket's draining
                    sent += 1
        r.members_sent = members
        self.metrics.messages_out.inc(sent)

    @property
    def connections(self) -> set[Connection]:
        return self._conns

    async def revoked(self, identity: Identity) -> bool:
        """Whether ``identity``'s token was issued before its user's last revocation (no ``iat``: yes)."""
        at = await self.presence.revoked_at(identity.user)
        return at is not None and (identity.issued_at is None or identity.issued_at < at)

    async def revoke(self, user: str, keep_for: float) -> float:
        """Sign ``user`` out everywhere: its sockets on every process close with 4001, and its
        tokens issued until now are refused for ``keep_for`` seconds."""
        return await self.presence.revoke(user, keep_for)

    async def members(self, room: str) -> dict[str, str]:
        """A presence room's members across every live process: user -> info JSON."""
        return await self.presence.members(room)

    def raw_message(self, room: str, data_json: str) -> None:
        self.delivery.on_raw_message(room, data_json)

    def message(self, room: str, offset: int, epoch: str, data_json: str) -> None:
        self.delivery.on_message(room, offset, epoch, data_json)

    def room_confirmed(self, room: str) -> None:
        if room in self._rooms:
            self._mark_dirty(room)
            self.delivery.channels_ready(room)

    def connected(self) -> None:
        self.delivery.resync()  # what was published while pub/sub was down is read back
        self.resync()

    def resync(self) -> None:
        """Redis restarted, the subscriber reconnected or our lease was lost: forget versions,
        write every local room again (each once its channels are confirmed)."""
        for r in self._rooms.values():
            r.state = None
            r.sent_version = -1
            r.fresh.clear()
        self._written_members.clear()
        if not self._closing:
            self.coalescer.mark_all(list(self._rooms))

    # -- requests from handlers -----------------------------------------------

    async def publish(self, room: str, data_json: str) -> Published:
        """Store and relay (history on), or relay only: then ``offset`` is 0 and ``epoch`` empty."""
        return await self.history.publish(room, data_json)

    async def room_state(self, room: str) -> CountState:
        return await self.presence.room_state(room)

    def begin_shutdown(self) -> None:
        """From now on nothing is marked for writing: LEAVE removes all our presence at once."""
        self._closing = True
        self.coalescer.drop()
        self.delivery.close()
        for r in self._rooms.values():
            if r.timer:
                r.timer.cancel()
            if r.members_task is not None:
                r.members_task.cancel()
        if self._recheck is not None:
            self._recheck.cancel()

    def close_all(self, code: int = 1001, reason: str = "server shutting down") -> None:
        for conn in list(self._conns):
            conn.close(code, reason)
