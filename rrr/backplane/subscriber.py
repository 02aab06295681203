"""One Redis pub/sub connection per process: the rooms with local sockets, and a probe.

`Subscriber.run` owns one connection for its life and raises when it breaks; the
supervisor runs it again after a backoff, which `reconnect_now` cuts short when the
command connection sees Redis answer again. It knows which rooms Redis has *confirmed*
(each of the room's channels acknowledged), so the hub writes a room's presence only once
its messages can arrive: a count that shows this process means its relay works too.

`probe` proves the connection delivers, not merely that it is open: a message published
on this process's own channel must come back through it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from redis.exceptions import ResponseError

from .. import protocol
from ..errors import BackplaneError
from ..metrics import Metrics
from ..protocol import CountState
from ..supervise import RateLimitedLog, cancel
from . import history, keys

log = logging.getLogger("rrr.subscriber")

_CONTROL = keys.CONTROL_CHANNEL.encode()


class Listener(Protocol):
    """Where the subscriber delivers what it hears (the hub). Called from the subscriber's own
    task, never from inside a call the listener made."""

    def on_room_message(self, room: str, data_json: str) -> None:
        """A raw ``PUBLISH rrr:room:<slug>`` from a backend: live only, no offset."""

    def on_history_message(self, room: str, offset: int, epoch: str, data_json: str) -> None:
        """A message stored in the room's history (published by its script)."""

    def on_count(self, room: str, state: CountState) -> None: ...

    def on_subscribed(self, room: str) -> None:
        """Every channel of the room is confirmed: its presence may be written, and its history
        read, now."""

    def on_connected(self) -> None:
        """A new connection (after a restart or a cut): whatever was missed, write every room again."""

    def on_disconnect_user(self, user: str) -> None:
        """Every process was told to close the sockets of ``user`` (its tokens were revoked)."""

    def on_control_subscribed(self) -> None:
        """Redis confirmed the control channel on a new connection: from now on every sign-out
        arrives as a message, and any made while the connection was down is only in Redis."""


class Publisher(Protocol):
    async def publish(self, channel: str, data: str) -> int: ...


class Subscriber:
    def __init__(self, metrics: Metrics, *, keepalive: float = 5.0, process_id: str = "") -> None:
        self.metrics = metrics
        self.keepalive = keepalive
        self.probe_channel = keys.probe_channel(process_id or secrets.token_hex(8))
        self._listener: Listener | None = None
        self._redis: Any = None
        self._wanted: set[str] = set()
        self._confirmed: set[str] = set()
        self._pending: dict[bytes, str] = {}  # channel -> room, sent SUBSCRIBE not yet acknowledged
        self._unacked: dict[str, int] = {}  # room -> its channels not yet acknowledged
        self._changed = asyncio.Event()
        self._wake = asyncio.Event()
        self._probes: dict[str, asyncio.Future[None]] = {}
        self._syncer: asyncio.Task[None] | None = None
        self._connected_once = False
        self._connected_at: float | None = None
        self._ran_for = 0.0
        self.connected = False
        self._dispatch_log = RateLimitedLog(log)

    def bind(self, redis: Any, listener: Listener) -> None:
        self._redis = redis
        self._listener = listener

    # -- what the hub asks for -------------------------------------------

    def subscribe(self, room: str) -> None:
        if room not in self._wanted:
            self._wanted.add(room)
            self._changed.set()

    def unsubscribe(self, room: str) -> None:
        # Still confirmed until the UNSUBSCRIBE goes out: a room left and joined again before the
        # sync runs (a reload) is never unsubscribed, so nothing would ever confirm it again.
        if room in self._wanted:
            self._wanted.discard(room)
            self._changed.set()

    def confirmed(self, room: str) -> bool:
        return self.connected and room in self._wanted and room in self._confirmed

    @property
    def synced(self) -> bool:
        """Connected, and every wanted room confirmed subscribed."""
        return self.connected and self._wanted <= self._confirmed

    @property
    def ran_for(self) -> float:
        """Seconds the last connection was up (0 if it never came up)."""
        return self._ran_for

    def reconnect_now(self) -> None:
        """Redis answers again: skip what is left of the reconnect backoff."""
        self._wake.set()

    async def backoff(self, delay: float) -> None:
        """Wait ``delay`` or until `reconnect_now`."""
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), delay)
        except asyncio.TimeoutError:
            pass

    async def probe(self, publisher: Publisher, timeout: float) -> bool:
        """Publish a token on our own channel and wait for it to come back through pub/sub."""
        if not self.connected:
            return False
        token = secrets.token_hex(8)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._probes[token] = fut
        try:
            await publisher.publish(self.probe_channel, token)
            await asyncio.wait_for(asyncio.shield(fut), timeout)
            return True
        except (BackplaneError, asyncio.TimeoutError):
            return False
        finally:
            self._probes.pop(token, None)

    # -- the connection --------------------------------------------------

    async def run(self) -> None:
        """Hold one pub/sub connection until it breaks (then raise: the supervisor restarts us)."""
        pubsub = self._redis.pubsub()
        syncer: asyncio.Task[None] | None = None
        try:
            await pubsub.subscribe(self.probe_channel, keys.CONTROL_CHANNEL)
            self._confirmed = set()
            self._pending = {}
            self._unacked = {}
            syncer = self._syncer = asyncio.create_task(self._sync(pubsub, set()), name="rrr-subscriber-sync")
            self._went_up("redis pub/sub")
            await self._read(pubsub, syncer)
        finally:
            self._went_down()
            if syncer is not None:
                await cancel(syncer)
            try:
                await pubsub.aclose()
            except Exception:  # noqa: BLE001 - the connection is already broken
                pass

    def _went_up(self, what: str) -> None:
        """The connection (and the sync task) is up: counted, and the listener resyncs (what was
        published while it was down is read back)."""
        self.connected = True
        self._connected_at = time.monotonic()
        if self._connected_once:
            self.metrics.redis_reconnects.inc()
            log.info("%s reconnected; resubscribing %d rooms", what, len(self._wanted))
        self._connected_once = True
        if self._listener:
            self._listener.on_connected()

    def _went_down(self) -> None:
        self._ran_for = time.monotonic() - self._connected_at if self._connected_at else 0.0
        self._connected_at = None
        self.connected = False
        self._confirmed = set()

    async def stop(self) -> None:
        """End the sync task before whoever runs us cancels `run`: a cancel that interrupted
        run's own cleanup would leave that child pending."""
        if self._syncer is not None:
            await cancel(self._syncer)

    async def _sync(self, pubsub: Any, active: set[str]) -> None:
        """Converge SUBSCRIBEs to the wanted rooms, batched, one command at a time, in order."""
        self._changed.set()
        while True:
            await self._changed.wait()
            self._changed.clear()
            add = self._wanted - active
            drop = active - self._wanted
            if add:
                for room in add:
                    channels = _channels((room,))
                    self._unacked[room] = len(channels)
                    for channel in channels:
                        self._pending[channel.encode()] = room
                await pubsub.subscribe(*_channels(add))
                active |= add
            if drop:
                self._confirmed -= drop
                await pubsub.unsubscribe(*_channels(drop))
                active -= drop
                for room in drop:
                    self._unacked.pop(room, None)
                    for channel in _channels((room,)):
                        self._pending.pop(channel.encode(), None)

    async def _read(self, pubsub: Any, syncer: asyncio.Task[None]) -> None:
        def sync_alive() -> None:
            if syncer.done():
                syncer.result()  # re-raise a failed SUBSCRIBE: reconnect
                raise ConnectionError("subscription sync ended")

        await self._listen(pubsub, sync_alive)

    async def _listen(self, pubsub: Any, check: Callable[[], None] = lambda: None) -> None:
        """Hand every message of ``pubsub`` to `_handle` until the connection breaks or stays silent
        (3 keepalives without a reply to our pings; a stall of our own does not count); ``check``
        runs before each read and may raise to end it. Shared by the sharded subscriber's links."""
        loop = asyncio.get_running_loop()
        last_seen = last_ping = loop.time()
        while True:
            check()
            asked = loop.time()
            try:
                msg = await pubsub.get_message(timeout=1.0)
            except ResponseError as e:  # MOVED for an SSUBSCRIBE, or a node that stopped serving
                raise ConnectionError(f"redis pub/sub: {e}") from e
            now = loop.time()
            if msg is not None:
                last_seen = now
                self._handle(msg)
                continue
            if starved(asked, now):
                last_seen = now
            if now - last_seen > 3 * self.keepalive:
                raise ConnectionError("redis pub/sub silent for %.0f s" % (now - last_seen))
            if now - last_ping > self.keepalive:
                last_ping = now
                await pubsub.ping()

    def _handle(self, msg: Any) -> None:
        if not isinstance(msg, dict):
            raise ConnectionError(f"unexpected pub/sub reply {msg!r:.80}")
        kind, channel, data = msg.get("type"), msg.get("channel"), msg.get("data")
        if isinstance(kind, bytes):
            kind = kind.decode("latin-1")
        if not isinstance(channel, bytes):
            return  # pong replies carry no channel
        if kind == "subscribe" and channel == _CONTROL:
            self._notify("on_control_subscribed")
        self._on_reply(kind, channel, data)

    def _on_reply(self, kind: Any, channel: bytes, data: Any) -> None:
        """One pub/sub reply that names a channel: a message, or a subscription's confirmation."""
        if kind == "message":
            self._dispatch(channel, data)
        elif kind == "subscribe":
            self._confirm(channel)

    def _confirm(self, channel: bytes) -> None:
        room = self._pending.pop(channel, None)
        if room is None:
            return
        left = self._unacked.get(room, 1) - 1
        if left > 0:
            self._unacked[room] = left
            return
        self._unacked.pop(room, None)
        if room in self._wanted:
            self._confirmed.add(room)
            self._notify("on_subscribed", room)

    def _dispatch(self, channel: bytes, data: Any) -> None:
        try:
            name = channel.decode()
            if name == self.probe_channel:
                fut = self._probes.get(data.decode() if isinstance(data, bytes) else str(data))
                if fut is not None and not fut.done():
                    fut.set_result(None)
                return
            if not isinstance(data, bytes):
                raise ValueError("payload is not a string")
            if name == keys.CONTROL_CHANNEL:
                order = json.loads(protocol.validate_json_payload(data))
                if isinstance(order, dict) and isinstance(order.get("disconnect"), str):
                    self._notify("on_disconnect_user", order["disconnect"])
                return
            room = keys.room_of(keys.COUNT_CHANNEL, name)
            if room is not None:
                self._notify("on_count", room, protocol.decode_count_announcement(data))
                return
            room = keys.room_of(keys.MESSAGE_CHANNEL, name)
            if room is not None:
                self.metrics.relayed.inc()
                self._notify("on_history_message", room, *history.parse_message(data))
                return
            room = keys.room_of(keys.ROOM_CHANNEL, name)
            if room is not None:
                self.metrics.relayed.inc()
                self._notify("on_room_message", room, protocol.validate_json_payload(data))
        except (ValueError, UnicodeDecodeError, RecursionError):
            self.metrics.malformed_payloads.inc()
            log.debug("dropped malformed payload on %r", channel)

    def _notify(self, method: str, *args: Any) -> None:
        """Hand an event to the listener; a listener that raises loses that event, not the connection."""
        if self._listener is None:
            return
        try:
            getattr(self._listener, method)(*args)
        except Exception as e:  # noqa: BLE001 - a bug there must not cut pub/sub for every room
            self.metrics.task_errors.labels("dispatch").inc()
            self._dispatch_log.warning(method, "%s failed: %s: %s", method, type(e).__name__, e)


def starved(asked: float, now: float, timeout: float = 1.0) -> bool:
    """A read with ``timeout`` that came back this late was not Redis being silent: this process
    could not run (a CPU-starved box, a long callback). Silence is then judged afresh, or a healthy
    connection would be dropped, and every room resubscribed, at the worst moment."""
    return now - asked > timeout + 0.25


def _channels(rooms: Iterable[str]) -> list[str]:
    out: list[str] = []
    for room in rooms:
        out += [keys.room_channel(room), keys.count_channel(room), keys.message_channel(room)]
    return out
