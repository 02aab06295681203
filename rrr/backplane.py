"""The Redis backplane: presence leases, counts, publish, and one subscriber per process.

The hub only sees the small `Backplane` interface; this module is the one place
that imports redis. Presence is written by Lua scripts (`rrr.scripts`) so each
change is atomic, idempotent and announced in version order.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import secrets
import socket
import time
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import protocol, scripts
from .connect import make_redis
from .errors import BackplaneError, OutcomeUnknown
from .metrics import Metrics
from .protocol import CountState

log = logging.getLogger("rrr.backplane")

CONTROL_CHANNEL = "rrr:ctl"
_ROOM = protocol.ROOM_CHANNEL_PREFIX.encode()
_COUNT = protocol.COUNT_CHANNEL_PREFIX.encode()
#: Rooms per SET_PRESENCE call: one round trip for a whole batch, yet short scripts.
_PRESENCE_CHUNK = 500


class Listener(Protocol):
    """What the backplane calls back into (the hub)."""

    def on_room_message(self, room: str, data_json: str) -> None: ...

    def on_count(self, room: str, state: CountState) -> None: ...

    def on_resync(self) -> None:
        """Redis came back or lost our lease: re-register all local presence."""

    def on_subscribed(self, room: str) -> None:
        """The room's count channel is now subscribed: recount once to catch up."""


class Backplane(Protocol):
    """The small interface the hub depends on."""

    process_id: str

    async def start(self, listener: Listener) -> None: ...

    async def close(self) -> None: ...

    async def set_presence(self, updates: Mapping[str, tuple[int, int]]) -> dict[str, CountState]: ...

    async def leave(self) -> None: ...

    async def room_state(self, room: str) -> CountState: ...

    async def publish(self, room: str, data_json: str) -> int: ...

    def subscribe(self, room: str) -> None: ...

    def unsubscribe(self, room: str) -> None: ...

    async def ping(self) -> bool: ...


def full_jitter(attempt: int, base: float, cap: float) -> float:
    """AWS-style full-jitter backoff, so a fleet reconnecting to a restarted Redis spreads out."""
    return random.uniform(0, min(cap, base * (2 ** min(attempt, 30))))


def _state(row: list[Any]) -> CountState:
    c, t, u, v = row
    return CountState(int(c), int(t), float(u) if u else None, int(v or 0))


class RedisBackplane:
    """Presence leases, counts and pub/sub on one Redis, for one process."""

    def __init__(
        self,
        url: str,
        metrics: Metrics,
        *,
        presence_ttl: float = 15.0,
        sweep_interval: float = 0.1,
        timeout: float = 2.0,
        keepalive: float = 5.0,
        backoff_cap: float = 5.0,
    ) -> None:
        self.url = url
        self.metrics = metrics
        self.presence_ttl = presence_ttl
        self.sweep_interval = sweep_interval
        self.keepalive = keepalive
        self.backoff_cap = backoff_cap
        self.process_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._redis = make_redis(url, timeout)
        self._set_presence = self._redis.register_script(scripts.SET_PRESENCE)
        self._renew = self._redis.register_script(scripts.RENEW)
        self._sweep = self._redis.register_script(scripts.SWEEP)
        self._leave = self._redis.register_script(scripts.LEAVE)
        self._count = self._redis.register_script(scripts.COUNT)
        self._listener: Listener | None = None
        self._wanted: set[str] = set()
        self._subs_changed = asyncio.Event()
        self._renew_now = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._syncer: asyncio.Task[None] | None = None
        self._leaving = False
        self._renewed_once = False
        self.connected = False

    # -- lifecycle -------------------------------------------------------

    async def start(self, listener: Listener) -> None:
        self._listener = listener
        self._tasks = [
            asyncio.create_task(self._subscriber_loop(), name="rrr-subscriber"),
            asyncio.create_task(self._maintenance_loop(), name="rrr-maintenance"),
        ]

    async def close(self) -> None:
        # The subscriber's own cleanup can be interrupted by our re-cancels: end its child first.
        for task in [t for t in (self._syncer,) if t] + self._tasks:
            await _cancel(task)
        self._tasks = []
        await self._redis.aclose()

    # -- presence --------------------------------------------------------

    async def set_presence(self, updates: Mapping[str, tuple[int, int]]) -> dict[str, CountState]:
        """Write this process's counts for ``updates`` and return each room's new totals."""
        out: dict[str, CountState] = {}
        rooms = list(updates)
        for i in range(0, len(rooms), _PRESENCE_CHUNK):
            chunk = rooms[i : i + _PRESENCE_CHUNK]
            args: list[Any] = [self.process_id, self.presence_ttl]
            for room in chunk:
                c, t = updates[room]
                args += [room, c, t]
            reply = await self._call("set_presence", self._set_presence(args=args))
            if not reply[0] and self._listener:
                # Our lease was gone (Redis restarted, or we stalled past the TTL and were
                # swept): the script took a new one; every other room must be rewritten.
                self._listener.on_resync()
            out.update(zip(chunk, map(_state, reply[1:])))
        return out

    async def leave(self) -> None:
        """Remove this process's presence at once (clean shutdown: no TTL wait)."""
        self._leaving = True
        await self._call("leave", self._leave(args=[self.process_id]))

    async def room_state(self, room: str) -> CountState:
        return _state(await self._call("count", self._count(args=[room])))

    async def publish(self, room: str, data_json: str) -> int:
        return int(await self._call("publish", self._redis.publish(protocol.room_channel(room), data_json)))

    async def ping(self) -> bool:
        try:
            return bool(await self._call("ping", self._redis.ping()))
        except BackplaneError:
            return False

    async def _call(self, op: str, coro: Any) -> Any:
        try:
            return await coro
        except (RedisError, OSError, asyncio.TimeoutError) as e:
            self.metrics.redis_errors.labels(op).inc()
            if isinstance(e, (asyncio.TimeoutError, RedisTimeoutError)):
                raise OutcomeUnknown(f"redis {op} timed out: {e}") from e
            raise BackplaneError(f"redis {op} failed: {e}") from e

    # -- subscriptions ---------------------------------------------------

    def subscribe(self, room: str) -> None:
        if room not in self._wanted:
            self._wanted.add(room)
            self._subs_changed.set()

    def unsubscribe(self, room: str) -> None:
        if room in self._wanted:
            self._wanted.discard(room)
            self._subs_changed.set()

    async def _subscriber_loop(self) -> None:
        """Own the process's single pub/sub connection; reconnect with capped full-jitter backoff."""
        attempt = 0
        first = True
        while True:
            pubsub = self._redis.pubsub()
            syncer: asyncio.Task[None] | None = None
            try:
                await pubsub.subscribe(CONTROL_CHANNEL)
                active: set[str] = set()
                syncer = self._syncer = asyncio.create_task(self._sync_subscriptions(pubsub, active))
                self.connected = True
                if not first:
                    self.metrics.redis_reconnects.inc()
                    log.info("redis pub/sub reconnected; resubscribing %d rooms", len(self._wanted))
                first = False
                attempt = 0
                # Whatever happened while we were away (restart, lost keys, missed
                # announcements), the hub re-registers presence and re-reads counts.
                self._renew_now.set()
                if self._listener:
                    self._listener.on_resync()
                await self._read(pubsub, syncer)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - any failure means: reconnect
                if self.connected or attempt == 0:
                    log.warning("redis pub/sub connection lost: %s", e)
                self.connected = False
                delay = full_jitter(attempt, 0.1, self.backoff_cap)
                attempt += 1
                await asyncio.sleep(delay)
            finally:
                self.connected = False
                if syncer:
                    await _cancel(syncer)
                try:
                    await pubsub.aclose()
                except Exception:  # noqa: BLE001 - the connection is already broken
                    pass

    async def _sync_subscriptions(self, pubsub: Any, active: set[str]) -> None:
        """Converge SUBSCRIBEs to the wanted rooms, batched, one command at a time, in order."""
        self._subs_changed.set()
        while True:
            await self._subs_changed.wait()
            self._subs_changed.clear()
            add = self._wanted - active
            drop = active - self._wanted
            if add:
                await pubsub.subscribe(*_channels(add))
                active |= add
            if drop:
                await pubsub.unsubscribe(*_channels(drop))
                active -= drop

    async def _read(self, pubsub: Any, syncer: asyncio.Task[None]) -> None:
        loop = asyncio.get_running_loop()
        last_seen = loop.time()
        last_ping = last_seen
        while True:
            if syncer.done():
                syncer.result()  # re-raise a failed SUBSCRIBE: reconnect
            msg = await pubsub.get_message(timeout=1.0)
            now = loop.time()
            if msg is not None:
                last_seen = now
                kind = msg["type"]
                if kind in ("message", b"message"):
                    self._dispatch(msg["channel"], msg["data"])
                elif kind in ("subscribe", b"subscribe") and msg["channel"].startswith(_COUNT) and self._listener:
                    # Announcements made between our first write and this SUBSCRIBE were missed.
                    self._listener.on_subscribed(msg["channel"][len(_COUNT) :].decode())
                continue
            if now - last_seen > 3 * self.keepalive:
                raise ConnectionError("redis pub/sub silent for %.0f s" % (now - last_seen))
            if now - last_ping > self.keepalive:
                last_ping = now
                await pubsub.ping()

    def _dispatch(self, channel: bytes, data: bytes) -> None:
        listener = self._listener
        if listener is None:
            return
        try:
            if channel.startswith(_COUNT):
                room = channel[len(_COUNT) :].decode()
                listener.on_count(room, protocol.decode_count_announcement(data))
            elif channel.startswith(_ROOM):
                self.metrics.relayed.inc()
                room = channel[len(_ROOM) :].decode()
                listener.on_room_message(room, protocol.validate_json_payload(data))
        except (ValueError, UnicodeDecodeError, RecursionError):
            self.metrics.malformed_payloads.inc()
            log.debug("dropped malformed payload on %r", channel)

    # -- leases ----------------------------------------------------------

    async def _maintenance_loop(self) -> None:
        """Renew our lease every TTL/3 and sweep dead processes every sweep interval."""
        renew_every = max(self.presence_ttl / 3, 0.05)
        next_renew = 0.0
        failing = False
        while True:
            try:
                now = time.monotonic()
                if self._leaving:
                    return
                if now >= next_renew or self._renew_now.is_set():
                    self._renew_now.clear()
                    lost = await self._call("renew", self._renew(args=[self.process_id, self.presence_ttl]))
                    next_renew = now + renew_every
                    if lost and self._listener:
                        if self._renewed_once:
                            log.info("presence lease was missing; re-registering local presence")
                        self._listener.on_resync()
                    self._renewed_once = True
                swept = await self._call("sweep", self._sweep(args=[16]))
                if swept:
                    self.metrics.presence_expired.inc(int(swept))
                    log.info("swept presence of %d dead process(es)", swept)
                if failing:
                    log.info("redis is answering again")
                failing = False
            except BackplaneError as e:
                if not failing:
                    log.warning("presence maintenance failing: %s", e)
                failing = True
                next_renew = 0.0
            try:
                await asyncio.wait_for(self._renew_now.wait(), self.sweep_interval)
            except asyncio.TimeoutError:
                pass


async def _cancel(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` and wait for it, cancelling again if a cancel was swallowed.

    On Python 3.11 ``asyncio.wait_for`` (which redis-py wraps every command in) drops
    a cancel that lands just as the command completes; one ``cancel()`` is then not
    enough and a shutdown would hang (tests/test_shutdown_race.py).
    """
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=0.1)
    if not task.cancelled() and task.exception() is not None:
        log.debug("task %s ended with %r", task.get_name(), task.exception())


def _channels(rooms: Iterable[str]) -> list[str]:
    out: list[str] = []
    for room in rooms:
        out += [protocol.room_channel(room), protocol.count_channel(room)]
    return out
