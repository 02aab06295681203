"""Presence on a Redis 7 Cluster (``--redis-url redis+cluster://...``).

The `rrr.backplane.Presence` of `rrr.backplane.presence.ClassicPresence` (the core cannot tell),
different paths underneath: no global lease set. Each of this process's rows carries its own expiry
(`rrr.backplane.cluster_scripts`); `renew` rewrites the expiry of every room this process has
a row in, one script per room, and each such call also drops the room's expired rows and
announces the corrected totals. So a killed process is out of every count within TTL +
TTL/3 (+ one count interval), without any sweep. Every script touches one room's keys.

Publishing: history messages go out with ``SPUBLISH`` from the history script (the room's
shard only); with history off, `ClusterPresence.publish` sends a room's message with
``SPUBLISH`` on its shard channel.

Events (webhooks on): the room scripts record them (``events.lua``), but cannot touch the
sender's keys (another slot), so this process notes right after each call which rooms got events
(the due set, and the doorbell), and keeps a registry of the rooms it has rows in, renewed with
its rows: when it dies, any process (`sweep`) drops its expired rows room by room, so a room
nobody else is in still reports its vacated and member_removed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

from .. import protocol
from ..errors import BackplaneError
from ..metrics import Metrics
from ..protocol import CountState
from ..supervise import RateLimitedLog
from . import EventSettings, MemberDelta, RoomReport, WriteResult, keys, scripts
from .calls import (
    BadReply, PresenceBase, count, event_args, lease_fresh, member_args, parse_members, parse_state, report_args,
    scan_reply, show,
)
from .clients import make_redis, renew_connections

log = logging.getLogger("rrr.cluster")

#: Room scripts in flight at once per batch (writes, renewals): well under the pool per node.
CONCURRENCY = 16


class ClusterPresence(PresenceBase):
    """Presence on a Redis Cluster: per-row expiry instead of a lease, one room per script."""

    def __init__(
        self, url: str, metrics: Metrics, pubsub: Any, *, ttl: float = 15.0, timeout: float = 2.0, pool_size: int = 32,
        events: EventSettings | None = None,
    ) -> None:
        # The cluster client does not wait for a free connection (it refuses): renewals run
        # CONCURRENCY at once, so give them that many. ``pubsub``: the subscriber's client, which it
        # reads the topology with. A renewal is confirmed when every shard confirmed it.
        super().__init__(metrics, pubsub, make_redis(url, timeout, max(pool_size, CONCURRENCY * 2)),
                         make_redis(url, timeout, CONCURRENCY + 2), ttl=ttl, events=events)
        # What the sender's slot has yet to learn (a failed note is retried with the next one).
        self._note_add: set[str] = set()
        self._note_remove: set[str] = set()
        self._note_due: dict[str, int] = {}
        self._note_log = RateLimitedLog(log)
        self._noting: asyncio.Future[None] | None = None
        self._rows: dict[str, tuple[int, int]] = {}  # rooms our row is in Redis with, as last written
        self._writing: set[str] = set()

    @property
    def oom(self) -> bool:
        return self._calls.oom

    async def close(self) -> None:
        if self._noting is not None:
            self._noting.cancel()
        for client in (self._redis, self._lease_redis, self._pubsub_redis):
            await client.aclose()

    def lease_fresh(self) -> bool:
        return lease_fresh(self._renewed_at, self.ttl)

    # -- the "lease": our rows' expiry -------------------------------------

    async def renew(self) -> bool:
        """Extend every row of ours; True if one was missing (a failover lost it) or had expired:
        the caller writes every local room again."""
        started = time.monotonic()
        rooms = dict(self._rows)
        # Our liveness key lives on one shard: if that shard fails, every room is renewed all the
        # same, and the renewal fails as it does when a room's shard fails.
        unmarked: BackplaneError | None = None
        try:
            await self._mark_alive()  # also proves the cluster reachable when we have no rows
        except BackplaneError as e:
            unmarked = e
        if not rooms:
            if unmarked is not None:
                raise unmarked
            self._renewed_at = started
            return False
        replies, failure = await self._each(
            list(rooms), lambda room: self._script(
                "cluster_renew", [self.process_id, self.ttl, keys.count_channel(room), *event_args(self.events)],
                lease=True, keys=keys.presence_write_keys(room),
            ),
        )
        lost = False
        dropped = 0
        for room, reply in replies.items():
            if not (isinstance(reply, list) and len(reply) == 4):
                raise BadReply(f"expected {{lost, dropped, due, replicated}} from RENEW, got {show(reply)}")
            dropped += count(reply[1], "RENEW")
            self._due(room, reply[2])
            self._settled.seen(room, reply[3] == 1)
            if reply[0] == 1 and room not in self._writing and self._rows.get(room) == rooms[room]:
                self._rows.pop(room, None)
                lost = True
        if dropped:
            self.metrics.presence_expired.inc(dropped)
        self._note_soon()
        if failure is not None:
            raise failure  # a shard did not answer: our rows there were not renewed
        if unmarked is not None:
            raise unmarked
        self._renewed_at = started
        return lost

    async def sweep(self, limit: int = 16) -> int:
        """Every write and renewal drops its room's expired rows; with events on, the rooms of a
        process that stopped renewing are swept here too (a room nobody else renews must still
        report that it emptied). Returns how many processes were swept whole."""
        if self.events is None:
            return 0
        hold = max(5000, int(self.ttl * 1000))
        dead = await self._script("ev_claim", [limit, hold], keys=[keys.EVENT_PROCS], lease=True)
        if not isinstance(dead, list):
            raise BadReply(f"expected process ids from CLAIM, got {show(dead)}")
        swept = 0
        for raw in dead:
            pid = raw.decode() if isinstance(raw, bytes) else str(raw)
            if pid != self.process_id and await self._sweep_process(pid):
                swept += 1
        if swept:
            self.metrics.presence_expired.inc(swept)
        return swept

    async def _sweep_process(self, pid: str) -> bool:
        """Drop ``pid``'s expired rows in each room it registered (their events recorded); True when
        none is left (it leaves the registry), else it is swept again when its last row expires."""
        rooms = [r.decode() for r in await self._calls.run("smembers", self._lease_redis.smembers(
            keys.event_proc_rooms(pid)))]
        replies, failure = await self._each(rooms, lambda room: self._script(
            "cluster_sweep", [pid, keys.count_channel(room), *event_args(self.events)], lease=True,
            keys=keys.presence_write_keys(room),
        ))
        done: list[str] = []
        retry_at = 0
        for room, reply in replies.items():
            if not (isinstance(reply, list) and len(reply) == 2 and isinstance(reply[0], int)):
                raise BadReply(f"expected {{until, due}} from SWEEP, got {show(reply)}")
            self._due(room, reply[1])
            if reply[0] > 0:
                retry_at = max(retry_at, int(reply[0]))
            else:
                done.append(room)
        await self._note()
        if failure is not None:
            raise failure
        await self._script(
            "ev_swept", [pid, retry_at, *done], keys=[keys.EVENT_PROCS, keys.event_proc_rooms(pid)], lease=True,
        )
        return retry_at == 0

    def _due(self, room: str, due: Any) -> None:
        """A room script's ``due``: its events may move at that Redis ms (-1: it recorded none)."""
        if not isinstance(due, int) or isinstance(due, bool):
            raise BadReply(f"expected a time from a room script, got {show(due)}")
        if due >= 0:
            self._note_due[room] = min(due, self._note_due.get(room, due))

    def _note_soon(self) -> None:
        """`_note` in a task of its own, retried while it fails: a stalled sender's slot never holds up a
        presence write or a renewal."""
        if self.events is None or (self._noting is not None and not self._noting.done()):
            return
        self._noting = asyncio.ensure_future(self._noting_until_done())

    async def _noting_until_done(self) -> None:
        failures = 0
        while self._note_add or self._note_remove or self._note_due or failures == 0:
            if await self._note():
                failures = 0
                if not (self._note_add or self._note_remove or self._note_due):
                    return
            else:
                failures += 1
                await asyncio.sleep(min(5.0, 0.1 * 2 ** failures))

    async def _note(self) -> bool:
        """Tell the sender's slot what the room scripts recorded (rooms with events, the doorbell)
        and which rooms this process has rows in, renewing its registry entry. A failure is counted
        and logged once per 30 s, and what was to be noted waits for the next call. True if noted."""
        if self.events is None:
            return True
        add, remove, due = self._note_add, self._note_remove, self._note_due
        self._note_add, self._note_remove, self._note_due = set(), set(), {}
        args: list[Any] = [
            self.process_id, int(self.ttl * 1000), len(add), len(remove), len(due), 0, *add, *remove,
        ]
        for room, at in due.items():
            args += [room, at]
        try:
            await self._script("ev_note", args, keys=[
                keys.EVENTS_DUE, keys.EVENTS_BELL, keys.MOVED, keys.EVENT_PROCS, keys.event_proc_rooms(self.process_id),
            ])
        except BackplaneError as e:
            self._note_add |= add - self._note_remove
            self._note_remove |= remove - self._note_add
            for room, at in due.items():
                self._note_due[room] = min(at, self._note_due.get(room, at))
            self.metrics.task_errors.labels("events").inc()
            self._note_log.warning("note", "noting recorded events failed (retried): %s", e)
            return False
        if self._note_log.clear("note"):
            log.info("noting recorded events works again")
        return True

    # -- rows ------------------------------------------------------------

    async def write(
        self, updates: Mapping[str, tuple[int, int]], members: Mapping[str, MemberDelta] | None = None,
        reports: Mapping[str, RoomReport] | None = None,
    ) -> WriteResult:
        result = WriteResult()
        members = members or {}
        reports = reports or {}

        def call(room: str) -> Any:
            c, t = updates[room]
            adds, removes, replace = members.get(room, ({}, [], False))
            report = reports.get(room)
            args: list[Any] = [
                self.process_id, self.ttl, keys.count_channel(room), int(room in self._rows), c, t,
                *event_args(self.events), *report_args(room in self._settled, report),
                *member_args(adds, removes, report.users_left_ago if report else None, replace),
            ]
            return self._script("cluster_write", args, keys=keys.presence_write_keys(room))

        rooms = list(updates)
        self._writing.update(rooms)
        try:
            replies, failure = await self._each(rooms, call)
        finally:
            self._writing.difference_update(rooms)
        for room, reply in replies.items():
            if not (isinstance(reply, list) and len(reply) == 4 and reply[0] in (0, 1)):
                raise BadReply(f"expected {{lost, row, due, replicated}} from WRITE, got {show(reply)}")
            if reply[0] == 1:
                result.lease_lost = True
            result.states[room] = parse_state(reply[1])
            self._due(room, reply[2])
            self._settled.written(room, updates[room], reply[3] == 1)
            if updates[room] == (0, 0):
                self._rows.pop(room, None)
                if self.events is not None:
                    self._note_add.discard(room)
                    self._note_remove.add(room)
            else:
                if self.events is not None and room not in self._rows:
                    self._note_remove.discard(room)
                    self._note_add.add(room)
                self._rows[room] = updates[room]
        self._note_soon()
        if failure is not None:
            raise failure  # the rooms that were written are known now; the caller retries them all
        return result

    async def leave(self) -> None:
        rooms = list(self._rows)
        if rooms:
            await self.write({room: (0, 0) for room in rooms})
        if self.events is not None:
            await self._note()  # what the last writes recorded, before this process leaves the registry
            await self._script(
                "ev_swept", [self.process_id, 0],
                keys=[keys.EVENT_PROCS, keys.event_proc_rooms(self.process_id)], lease=True,
            )
        try:
            await self._calls.run("probe", self._redis.delete(keys.probe_key(self.process_id)))
        except BackplaneError:
            pass
        await self._unmark_alive()
        self._renewed_at = None

    async def room_state(self, room: str) -> CountState:
        return parse_state(await self._script("cluster_count", [], keys=keys.presence_keys(room)))

    async def members(self, room: str) -> dict[str, str]:
        return parse_members(await self._script("cluster_members", [], keys=keys.presence_keys(room)))

    async def rooms(self, prefix: str = "") -> list[str]:
        found: set[str] = set()
        for node in self._redis.get_primaries():
            cursor = 0
            while True:
                reply = await self._calls.run("scan", self._redis.scan(
                    cursor, match=keys.presence_pattern(prefix), count=1000, target_nodes=node))
                cursor, names = scan_reply(reply)
                found.update(room for name in names if (room := keys.room_of(keys.PRESENCE_HASH, name)) is not None)
                if cursor == 0:
                    break
        return sorted(found)

    # -- plain commands --------------------------------------------------

    async def publish(self, channel: str, data: str) -> int:
        """A room's live message goes to its shard channel (``SPUBLISH``); our own hash-tagged
        channels likewise; anything else (control, probe) is classic ``PUBLISH``."""
        room = keys.room_of(keys.ROOM_CHANNEL, channel)
        if room is not None and protocol.is_valid_slug(room):
            channel = keys.shard_room_channel(room)
        if keys.is_shard_channel(channel):
            return count(await self._calls.run("publish", self._redis.spublish(channel, data)), "SPUBLISH")
        return count(await self._calls.run("publish", self._redis.publish(channel, data)), "PUBLISH")

    async def revoke(self, user: str, keep_for: float) -> float:
        return await self._revocations.revoke(user, keep_for)

    async def revoked_at(self, user: str) -> float | None:
        return await self._revocations.revoked_at(user)

    async def ping(self) -> bool:
        """Every master answers."""
        try:
            reply = await self._calls.run("ping", self._redis.ping(target_nodes=self._redis.PRIMARIES))
        except BackplaneError:
            return False
        return reply is True or (isinstance(reply, dict) and all(v is True for v in reply.values()))

    async def probe_write(self) -> None:
        await self._calls.run(
            "probe", self._redis.set(keys.probe_key(self.process_id), str(time.time()), ex=max(60, int(3 * self.ttl))),
        )

    # -- liveness (the handoff's) ----------------------------------------

    @property
    def tag(self) -> str:
        return keys.process_tag(self.process_id)

    async def alive(self, tag: str) -> bool:
        """Whether process ``tag``'s liveness key is there (`keys.alive`): PUBLISH cannot count an
        inbox's listeners on a cluster, this tells a gone session owner (`rrr.edge.handoff`)."""
        return count(await self._calls.run("alive", self._redis.exists(keys.alive(tag))), "EXISTS") > 0

    async def _mark_alive(self) -> None:
        """Our liveness key, renewed with our presence and expiring with it (a killed process's goes
        within the TTL)."""
        ttl_ms = max(1, int(self.ttl * 1000))
        await self._calls.run("renew", self._lease_redis.set(keys.alive(self.tag), "1", px=ttl_ms))

    async def _unmark_alive(self) -> None:
        """Clean shutdown: gone at once, so requests for our sessions are answered 404 right away."""
        try:
            await self._calls.run("leave", self._lease_redis.delete(keys.alive(self.tag)))
        except BackplaneError:
            pass  # it expires within the TTL

    # -- plumbing --------------------------------------------------------

    async def call_command(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """One plain command on the request pool (``name`` is the redis-py method), errors as ours."""
        return await self._calls.run(name, getattr(self._redis, name)(*args, **kwargs))

    async def script(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """Run one of `rrr.backplane.scripts` on the request pool (the history module's way in)."""
        return await self._script(name, args, keys=keys)

    async def _script(self, name: str, args: list[Any], lease: bool = False, keys: list[str] | None = None) -> Any:
        client = self._lease_redis if lease else self._redis
        if not self._scripts:
            texts = scripts.flagged(True) | scripts.CLUSTER | scripts.sender(True)
            self._scripts = {n: self._redis.register_script(text) for n, text in texts.items()}
        if not keys:
            raise BackplaneError(f"script {name} needs its keys on a cluster")
        return await self._calls.run(name, self._scripts[name](keys=keys, args=args, client=client))

    async def _each(self, rooms: list[str], call: Any) -> tuple[dict[str, Any], BaseException | None]:
        """``call(room)`` for every room, CONCURRENCY at once: the replies of those that succeeded,
        and the first failure (the caller takes note of the replies, then raises it: each call is
        idempotent, and the lot is retried)."""
        sem = asyncio.Semaphore(CONCURRENCY)

        async def one(room: str) -> Any:
            async with sem:
                return await call(room)

        replies = await asyncio.gather(*(one(room) for room in rooms), return_exceptions=True)
        done = {room: reply for room, reply in zip(rooms, replies) if not isinstance(reply, BaseException)}
        failed = [reply for reply in replies if isinstance(reply, BaseException)]
        return done, failed[0] if failed else None

    async def _reset_pools(self) -> None:
        """A parser that choked: drop every connection (each in use once it is released,
        `renew_connections`; the cluster client reconnects)."""
        for client in (self._redis, self._lease_redis):
            try:
                await renew_connections(client)
            except Exception:  # noqa: BLE001 - already broken; the next call reconnects
                pass
