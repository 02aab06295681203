"""What both presences (classic and cluster) share: what each holds (`PresenceBase`), Redis calls
with their errors as ours, replies checked before they are believed, the member part of a row
write's arguments, and the batched revocation checks.

Every reply is checked: a Redis (or something answering in its place) that sends the wrong
shape raises `BadReply`, a `BackplaneError`, never a ``TypeError`` deep in a loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from redis.exceptions import OutOfMemoryError, RedisError

from ..errors import BackplaneError, OutcomeUnknown
from ..metrics import Metrics
from ..protocol import CountState, validate_json_payload
from . import CHUNK, EventSettings, RoomReport, keys
from .outcome import attempts, may_have_run, timed_out


class BadReply(BackplaneError):
    """Redis answered, but not what the call can answer: something else is on that port."""


class Calls:
    """Every Redis call of a presence goes through `run`: failures counted per operation
    (``rrr_redis_errors_total{op}``) and raised as ours, and `oom` kept up to date."""

    def __init__(self, metrics: Metrics, reset: Callable[[], Awaitable[None]]) -> None:
        self.metrics = metrics
        # A parser that choked may leave a connection mid-reply: ``reset`` drops every connection
        # once it is free (lazily: not those other calls are still waiting on).
        self._reset = reset
        self.oom = False  # the last write Redis was asked for was refused at maxmemory

    async def run(self, op: str, coro: Awaitable[Any]) -> Any:
        """``coro``'s reply. A failure is `BackplaneError` when the command is known not to have run
        (refused, never sent), else `OutcomeUnknown` (`rrr.backplane.outcome`): a publish that got
        it may have been delivered."""
        with attempts() as failed:
            try:
                reply = await coro
            except Exception as e:  # noqa: BLE001 - a garbled reply can break the parser in any way
                self.metrics.redis_errors.labels(op).inc()
                if isinstance(e, OutOfMemoryError):
                    self.oom = True
                    raise BackplaneError(f"redis {op} refused: out of memory ({e})") from e
                unreadable = not isinstance(e, (RedisError, OSError))
                if unreadable:
                    await self._reset()
                    what = f"redis {op}: unreadable reply ({type(e).__name__}: {e})"
                elif timed_out(e):
                    what = f"redis {op} timed out: {e}"
                else:
                    what = f"redis {op} failed: {e}"
                if may_have_run(e, failed):  # an unreadable reply too: the command was written
                    raise OutcomeUnknown(what) from e
                raise BackplaneError(what) from e
        if op == "probe":
            self.oom = False
        return reply


# -- replies ---------------------------------------------------------------------------------


def parse_state(row: Any) -> CountState:
    """One ``{connections, tabs, updated, version, users}`` row of a script's reply."""
    if not isinstance(row, list) or len(row) != 5:
        raise BadReply(f"expected a 5-item count row, got {show(row)}")
    c, t, u, v, users = row
    if not (is_count(c) and is_count(t) and (v is None or is_count(v)) and is_count(users)):
        raise BadReply(f"expected counts in a count row, got {show(row)}")
    try:
        updated = float(u) if u else None
    except (TypeError, ValueError):
        raise BadReply(f"expected a timestamp in a count row, got {show(row)}") from None
    return CountState(c, t, updated, v or 0, users)


def parse_members(reply: Any) -> dict[str, str]:
    """A MEMBERS script's flat ``user, info JSON, ...``: user -> info JSON."""
    if not isinstance(reply, list) or len(reply) % 2:
        raise BadReply(f"expected user, info pairs from MEMBERS, got {show(reply)}")
    try:
        out = {reply[i].decode(): reply[i + 1].decode() for i in range(0, len(reply), 2)}
    except (AttributeError, UnicodeDecodeError):
        raise BadReply(f"expected strings from MEMBERS, got {show(reply)}") from None
    try:
        for info in out.values():
            validate_json_payload(info)  # only our own writes are there, but nothing is believed blindly
    except ValueError:
        raise BadReply("a member's info in Redis is not JSON") from None
    return out


def is_count(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def flag(reply: Any, what: str) -> bool:
    if reply not in (0, 1) or isinstance(reply, bool):
        raise BadReply(f"expected 0 or 1 from {what}, got {show(reply)}")
    return bool(reply)


def count(reply: Any, what: str) -> int:
    if not is_count(reply):
        raise BadReply(f"expected a count from {what}, got {show(reply)}")
    return int(reply)


def show(x: Any) -> str:
    text = repr(x)
    return text if len(text) <= 80 else text[:77] + "..."


# -- a row write's arguments -------------------------------------------------------------------


def member_args(
    adds: dict[str, str], removes: list[str], left: Mapping[str, float] | None = None, replace: bool = False,
) -> list[Any]:
    """What both row writes take after a room's counts: the number of adds A and of removes R, A
    pairs (user, info JSON), R pairs (user, ms since it left: ``left``, seconds) (``rows.lua``'s
    ``apply_members`` reads them). ``replace``: R is sent as ``-(R + 1)``, and every other member
    field of this process in the room goes too (see `rrr.backplane.MemberDelta`)."""
    args: list[Any] = [len(adds), -(len(removes) + 1) if replace else len(removes)]
    for user, info in adds.items():
        args += [user, info]
    for user in removes:
        args += [user, ms(left.get(user, 0.0) if left else 0.0)]
    return args


def report_args(quiet: bool, report: RoomReport | None) -> list[Any]:
    """A room's quiet flag and ms since its last local subscription left (``events.lua``'s
    ``ev_context``). Quiet: the room's reported state was settled in Redis (see `Settled`)."""
    return [int(quiet), ms(report.left_ago) if report is not None else 0]


class Settled:
    """The rooms whose reported state this process knows to be settled in Redis: one a master's
    failover cannot have lost. A rewrite of such a room's row is *quiet* (``events.lua``): if Redis
    then has no reported state for it at all, Redis lost everything (restarted empty), and the room
    is not reported again. A row a failover lost before its state settled is written again loudly,
    and its events come again.

    On one Redis (`ClassicPresence`) a row is settled when a lease renewal found the lease (so the
    dataset) intact at least `AFTER` s after the row was first written. On a cluster, when a write or
    renewal of the room shows its state's ``r``: the sender took the room's events out only once a
    replica had them (``ev_take`` then ``WAIT``; ``ev_ack`` sets ``r``), so a replica has the state."""

    AFTER = 1.0

    def __init__(self) -> None:
        self.rooms: set[str] = set()
        self._written: dict[str, float] = {}

    def __contains__(self, room: str) -> bool:
        return room in self.rooms

    def written(self, room: str, row: tuple[int, int], state_replicated: bool | None = None) -> None:
        """A write of ``room``'s row landed (with, on a cluster, whether its state shows ``r``)."""
        if row == (0, 0):
            self.rooms.discard(room)
            self._written.pop(room, None)
            return
        self._written.setdefault(room, time.monotonic())
        if state_replicated:
            self.rooms.add(room)

    def renewed(self, started: float) -> None:
        """One Redis: a renewal begun at ``started`` (monotonic) found the lease intact."""
        self.rooms.update(room for room, at in self._written.items() if at <= started - self.AFTER)

    def seen(self, room: str, state_replicated: bool) -> None:
        """A cluster: a renewal of ``room`` showed whether its state has ``r``."""
        if state_replicated and room in self._written:
            self.rooms.add(room)


def event_args(settings: EventSettings | None) -> list[Any]:
    """The four values ``events.lua``'s ``ev_setup`` reads: on, a fresh nonce (new epochs of event
    ids are made from it: random per call, so ids are unique across rooms and Redis restarts), the
    vacate delay in ms, the cap of a room's stream."""
    if settings is None:
        return [0, "", 0, 0]
    return [1, secrets.token_hex(8), ms(settings.vacate_delay), max(1, settings.backlog)]


def ms(seconds: float) -> int:
    return max(0, int(seconds * 1000))


# -- sign-outs -------------------------------------------------------------------------------------


class Revocations:
    """Sign-outs in Redis: a user's revocation time (one key, any slot) and the order on the control
    channel that every process closes the user's sockets on."""

    def __init__(self, redis: Any, calls: Calls, publisher: Callable[[str, str], Awaitable[int]]) -> None:
        self._redis = redis
        self._calls = calls
        self._publish = publisher
        # Checks waiting for the next batch: user -> the callers waiting for it.
        self._asked: dict[str, list[asyncio.Future[float | None]]] = {}
        self._task: asyncio.Future[None] | None = None

    async def revoke(self, user: str, keep_for: float) -> float:
        """Refuse every token of ``user`` issued until now, on every process, for ``keep_for`` seconds
        (as long as such a token could still be valid), and tell every process to close its sockets."""
        at = time.time()
        await self._calls.run("revoke", self._redis.set(keys.revoked(user), repr(at), ex=max(1, int(keep_for) + 1)))
        await self._publish(keys.CONTROL_CHANNEL, json.dumps({"disconnect": user, "at": at}))
        return at

    async def revoked_at(self, user: str) -> float | None:
        """When ``user``'s tokens were last revoked, if that still matters.

        Every check asked for in one turn of the loop goes in one pipelined round trip: a storm of
        N sockets authenticating at once costs a few round trips, not N connections from the pool
        (which made some of them time out, 'unavailable', in a 5,000-user storm)."""
        fut: asyncio.Future[float | None] = asyncio.get_running_loop().create_future()
        self._asked.setdefault(user, []).append(fut)
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._check())
        return await fut

    async def _check(self) -> None:
        await asyncio.sleep(0)  # let this turn's other checks join the batch
        while self._asked:
            asked, self._asked = self._asked, {}
            users = list(asked)
            for i in range(0, len(users), CHUNK):
                chunk = users[i : i + CHUNK]
                try:
                    pipe = self._redis.pipeline(transaction=False)
                    for user in chunk:
                        pipe.get(keys.revoked(user))
                    replies = await self._calls.run("revoked", pipe.execute())
                    if not isinstance(replies, list) or len(replies) != len(chunk):
                        raise BadReply(f"expected {len(chunk)} replies to the revocation checks, got {show(replies)}")
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
                        error = BadReply(f"expected a time for a revocation, got {show(raw)}")
                    for fut in asked[user]:
                        if fut.done():
                            continue
                        if error is not None:
                            fut.set_exception(error)
                        else:
                            fut.set_result(result)


def new_process_id() -> str:
    """``host:pid:random``: unique per process start, readable in Redis."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class PresenceBase(ABC):
    """What a presence holds whatever Redis it is on. Each presence opens its own two clients (their
    pools sized for how its client waits, or not, for a connection) and says how it publishes and how
    it starts its connections afresh after a garbled reply."""

    def __init__(
        self, metrics: Metrics, pubsub: Any, redis: Any, lease_redis: Any, *, ttl: float,
        events: EventSettings | None,
    ) -> None:
        self.metrics = metrics
        self.ttl = ttl
        self.events = events  # the scripts record events (webhooks on)
        self.process_id = new_process_id()
        self._settled = Settled()
        self._redis = redis  # request traffic: room reads, writes, publishes
        # Renewal and sweep: never behind request traffic in the pool.
        self._lease_redis = lease_redis
        # The subscriber's (`rrr.backplane.connect`): closed with ours.
        self._pubsub_redis = pubsub
        self._calls = Calls(metrics, self._reset_pools)
        self._revocations = Revocations(self._redis, self._calls, self.publish)
        self._scripts: dict[str, Any] = {}
        self._renewed_at: float | None = None  # monotonic time of the last renewal Redis confirmed

    @abstractmethod
    async def publish(self, channel: str, data: str) -> int:
        """A plain publish (sign-outs go out on the control channel with it)."""

    @abstractmethod
    async def _reset_pools(self) -> None:
        """Start every connection afresh (`Calls` after a reply that broke the parser)."""


def lease_fresh(renewed_at: float | None, ttl: float) -> bool:
    """Renewed (at monotonic ``renewed_at``) recently enough that no sweeper can have taken the lease
    (two renewals of slack)."""
    return renewed_at is not None and time.monotonic() - renewed_at < 2 * ttl / 3 + 1


def scan_reply(reply: Any) -> tuple[int, list[str]]:
    """SCAN's ``(cursor, keys)``, the keys as text; `BadReply` for anything else."""
    if not (isinstance(reply, (list, tuple)) and len(reply) == 2 and isinstance(reply[1], list)):
        raise BadReply(f"expected a cursor and keys from SCAN, got {reply!r:.80}")
    try:
        return int(reply[0]), [k.decode() if isinstance(k, bytes) else str(k) for k in reply[1]]
    except (ValueError, UnicodeDecodeError):
        raise BadReply(f"expected a cursor and keys from SCAN, got {reply!r:.80}") from None
