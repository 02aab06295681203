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
from . import MemberDelta, WriteResult, keys, scripts
from .calls import BadReply, Calls, Revocations, count, lease_fresh, member_args, parse_members, parse_state, show
from .clients import make_redis
from .presence import new_process_id

log = logging.getLogger("rrr.cluster")

#: Room scripts in flight at once per batch (writes, renewals): well under the pool per node.
CONCURRENCY = 16


class ClusterPresence:
    """Presence on a Redis Cluster: per-row expiry instead of a lease, one room per script."""

    def __init__(
        self, url: str, metrics: Metrics, pubsub: Any, *, ttl: float = 15.0, timeout: float = 2.0, pool_size: int = 32,
    ) -> None:
        self.metrics = metrics
        self.ttl = ttl
        self.process_id = new_process_id()
        self._redis = make_redis(url, timeout, max(pool_size, CONCURRENCY * 2))
        # The cluster client does not wait for a free connection (it refuses): renewals run
        # CONCURRENCY at once, so give them that many.
        self._lease_redis = make_redis(url, timeout, CONCURRENCY + 2)
        # The subscriber's, which it reads the topology with (`rrr.backplane.connect`): closed with ours.
        self._pubsub_redis = pubsub
        self._calls = Calls(metrics, self._reset_pools)
        self._revocations = Revocations(self._redis, self._calls, self.publish)
        self._scripts: dict[str, Any] = {}
        self._renewed_at: float | None = None  # monotonic time of the last renewal every shard confirmed
        self._rows: dict[str, tuple[int, int]] = {}  # rooms our row is in Redis with, as last written
        self._writing: set[str] = set()

    @property
    def oom(self) -> bool:
        return self._calls.oom

    async def close(self) -> None:
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
        if not rooms:
            await self._calls.run("renew", self._lease_redis.ping())
            self._renewed_at = started
            return False
        replies, failure = await self._each(
            list(rooms), lambda room: self._script(
                "cluster_renew", [self.process_id, self.ttl, keys.count_channel(room)], lease=True,
                keys=keys.presence_keys(room),
            ),
        )
        lost = False
        dropped = 0
        for room, reply in replies.items():
            if not (isinstance(reply, list) and len(reply) == 2):
                raise BadReply(f"expected {{lost, dropped}} from RENEW, got {show(reply)}")
            dropped += count(reply[1], "RENEW")
            if reply[0] == 1 and room not in self._writing and self._rows.get(room) == rooms[room]:
                self._rows.pop(room, None)
                lost = True
        if dropped:
            self.metrics.presence_expired.inc(dropped)
        if failure is not None:
            raise failure  # a shard did not answer: our rows there were not renewed
        self._renewed_at = started
        return lost

    async def sweep(self, limit: int = 16) -> int:
        """Nothing to do: every write and renewal drops its room's expired rows."""
        return 0

    # -- rows ------------------------------------------------------------

    async def write(
        self, updates: Mapping[str, tuple[int, int]], members: Mapping[str, MemberDelta] | None = None,
    ) -> WriteResult:
        result = WriteResult()
        members = members or {}

        def call(room: str) -> Any:
            c, t = updates[room]
            adds, removes = members.get(room, ({}, []))
            args: list[Any] = [
                self.process_id, self.ttl, keys.count_channel(room), int(room in self._rows), c, t,
                *member_args(adds, removes),
            ]
            return self._script("cluster_write", args, keys=keys.presence_keys(room))

        rooms = list(updates)
        self._writing.update(rooms)
        try:
            replies, failure = await self._each(rooms, call)
        finally:
            self._writing.difference_update(rooms)
        for room, reply in replies.items():
            if not (isinstance(reply, list) and len(reply) == 2 and reply[0] in (0, 1)):
                raise BadReply(f"expected {{lost, row}} from WRITE, got {show(reply)}")
            if reply[0] == 1:
                result.lease_lost = True
            result.states[room] = parse_state(reply[1])
            if updates[room] == (0, 0):
                self._rows.pop(room, None)
            else:
                self._rows[room] = updates[room]
        if failure is not None:
            raise failure  # the rooms that were written are known now; the caller retries them all
        return result

    async def leave(self) -> None:
        rooms = list(self._rows)
        if rooms:
            await self.write({room: (0, 0) for room in rooms})
        try:
            await self._calls.run("probe", self._redis.delete(keys.probe_key(self.process_id)))
        except BackplaneError:
            pass
        self._renewed_at = None

    async def room_state(self, room: str) -> CountState:
        return parse_state(await self._script("cluster_count", [], keys=keys.presence_keys(room)))

    async def members(self, room: str) -> dict[str, str]:
        return parse_members(await self._script("cluster_members", [], keys=keys.presence_keys(room)))

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
            texts = scripts.flagged(True) | scripts.CLUSTER
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
        """A parser that choked: drop every connection (the cluster client reconnects)."""
        for client in (self._redis, self._lease_redis):
            try:
                for node in client.get_nodes():
                    await node.disconnect()
            except Exception:  # noqa: BLE001 - already broken; the next call reconnects
                pass
