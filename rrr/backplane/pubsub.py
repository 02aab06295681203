"""What both subscribers share (classic pub/sub on one Redis, sharded pub/sub on a cluster): the
rooms followed and which Redis confirmed (`Follows`), the read loop (`listen`), and what each
message means for the core (`Dispatch`: one guard around the `Events`, and the probe's round trip).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Callable, Iterable
from typing import Any

from redis.exceptions import ResponseError

from .. import protocol
from ..errors import BackplaneError
from ..metrics import Metrics
from ..protocol import CountState
from ..supervise import RateLimitedLog
from . import Events, Publisher, keys
from .history import parse_message

log = logging.getLogger("rrr.subscriber")

_CONTROL = keys.CONTROL_CHANNEL.encode()
#: What a payload that cannot be ours raises while it is read (then counted and dropped).
MALFORMED = (ValueError, UnicodeDecodeError, RecursionError)


class Follows:
    """The rooms this process follows, which of them Redis has *confirmed* (each of the room's
    channels acknowledged on the connection that is up), and the connection's ups and downs. The
    core writes a room's presence only once it is confirmed: a count that shows this process means
    its relay works too."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.wanted: set[str] = set()
        self.confirmed: set[str] = set()
        self.changed = asyncio.Event()  # wanted changed: the sync task converges the subscriptions
        self._pending: dict[bytes, str] = {}  # channel -> room, subscribed, not yet acknowledged
        self._unacked: dict[str, int] = {}  # room -> its channels not yet acknowledged
        self.connected = False
        self._connected_once = False
        self._connected_at: float | None = None
        self.ran_for = 0.0  # seconds the last connection was up
        self._wake = asyncio.Event()

    def follow(self, room: str) -> None:
        if room not in self.wanted:
            self.wanted.add(room)
            self.changed.set()

    def unfollow(self, room: str) -> None:
        # Still confirmed until the UNSUBSCRIBE goes out: a room left and joined again before the
        # sync runs (a reload) is never unsubscribed, so nothing would ever confirm it again.
        if room in self.wanted:
            self.wanted.discard(room)
            self.changed.set()

    def is_confirmed(self, room: str) -> bool:
        return self.connected and room in self.wanted and room in self.confirmed

    @property
    def synced(self) -> bool:
        """Connected, and every wanted room confirmed subscribed."""
        return self.connected and self.wanted <= self.confirmed

    def restart(self) -> None:
        """A new connection: nothing is confirmed or awaited on it yet."""
        self.confirmed = set()
        self._pending = {}
        self._unacked = {}

    def expect(self, room: str, channels: list[str]) -> None:
        """The room's channels are being subscribed: it is confirmed once each is acknowledged."""
        self._unacked[room] = len(channels)
        for channel in channels:
            self._pending[channel.encode()] = room

    def acked(self, channel: bytes) -> str | None:
        """Redis acknowledged ``channel``: the room that confirms, if it is the room's last one."""
        room = self._pending.pop(channel, None)
        if room is None:
            return None
        left = self._unacked.get(room, 1) - 1
        if left > 0:
            self._unacked[room] = left
            return None
        self._unacked.pop(room, None)
        if room in self.wanted:
            self.confirmed.add(room)
            return room
        return None

    def unexpect(self, room: str, channels: Iterable[str]) -> None:
        """No acknowledgement of the room's channels is awaited any more (they were unsubscribed)."""
        self._unacked.pop(room, None)
        for channel in channels:
            self._pending.pop(channel.encode(), None)

    def forget(self, room: str, channels: Iterable[str]) -> None:
        """The room's channels are being unsubscribed, or their connection broke: not confirmed, and
        nothing awaited."""
        self._unacked.pop(room, None)
        self.confirmed.discard(room)
        for channel in channels:
            self._pending.pop(channel.encode(), None)

    # -- the connection --------------------------------------------------

    def went_up(self, what: str) -> None:
        """The connection (and its sync task) is up: a reconnect is counted and logged."""
        self.connected = True
        self._connected_at = time.monotonic()
        if self._connected_once:
            self.metrics.redis_reconnects.inc()
            log.info("%s reconnected; resubscribing %d rooms", what, len(self.wanted))
        self._connected_once = True

    def went_down(self) -> None:
        self.ran_for = time.monotonic() - self._connected_at if self._connected_at else 0.0
        self._connected_at = None
        self.connected = False
        self.confirmed = set()

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


class Following:
    """The half of a subscriber the core talks to, the same for classic and cluster pub/sub: which
    rooms are followed and confirmed (`Follows`) and where their events go (`Dispatch`). Each
    subscriber sets both in its ``__init__`` and keeps its own connections and probe."""

    _follows: Follows
    _dispatch: Dispatch

    def bind(self, events: Events) -> None:
        self._dispatch.events = events

    def follow(self, room: str) -> None:
        self._follows.follow(room)

    def unfollow(self, room: str) -> None:
        self._follows.unfollow(room)

    def confirmed(self, room: str) -> bool:
        return self._follows.is_confirmed(room)

    @property
    def connected(self) -> bool:
        return self._follows.connected

    @property
    def synced(self) -> bool:
        return self._follows.synced

    @property
    def ran_for(self) -> float:
        return self._follows.ran_for

    def reconnect_now(self) -> None:
        self._follows.reconnect_now()

    async def backoff(self, delay: float) -> None:
        await self._follows.backoff(delay)


class Dispatch:
    """What a message on one of our channels means, handed to the core's `Events`: a stored
    message, a backend's raw one, a room's count, a sign-out, or a probe's token coming back.
    A malformed payload is counted and dropped. Each event goes through one guard: one the core
    fails on is lost alone (``rrr_task_errors_total{task="dispatch"}``, logged once per 30 s),
    never the connection that every room's messages arrive on."""

    def __init__(
        self, metrics: Metrics, probe_channels: set[str], *, inbox: str = "", psubscribed: bool = False,
    ) -> None:
        self.metrics = metrics
        self.events: Events = Unbound()
        #: Our own channels a probe's token comes back on (the cluster's change with its masters).
        self.probe_channels = probe_channels
        #: Our own inbox (`keys.inbox_channel`): what it carries goes to the core as it came.
        self.inbox = inbox
        # Raw room messages arrive for every room (PSUBSCRIBE, on a cluster): only followed ones matter.
        self._psubscribed = psubscribed
        self._probes: dict[str, asyncio.Future[None]] = {}
        self._log = RateLimitedLog(log)

    def message(self, channel: bytes, data: Any, wanted: set[str]) -> None:
        """A message on ``channel`` (``wanted``: the rooms followed)."""
        try:
            name = channel.decode()
            if name in self.probe_channels:
                fut = self._probes.get(data.decode() if isinstance(data, bytes) else str(data))
                if fut is not None and not fut.done():
                    fut.set_result(None)
                return
            events = self.events
            if self._psubscribed:
                room = keys.room_of(keys.SHARD_ROOM_CHANNEL, name)
                if room is not None:
                    text = protocol.validate_payload(data)
                    self.metrics.relayed.inc()
                    try:
                        events.raw_message(room, text)
                    except Exception as e:  # noqa: BLE001 - the guard: see the class
                        self._failed("raw_message", e)
                    return
                room = keys.room_of(keys.ROOM_CHANNEL, name)
                if room is not None and room not in wanted:
                    return  # PSUBSCRIBE hears every room's raw publishes; only ours matter
            if not isinstance(data, bytes):
                raise ValueError("payload is not a string")
            if name == self.inbox:
                try:
                    events.inbox(data)
                except Exception as e:  # noqa: BLE001
                    self._failed("inbox", e)
                return
            if name == keys.CONTROL_CHANNEL:
                order = json.loads(protocol.validate_json_payload(data))
                if isinstance(order, dict) and isinstance(order.get("disconnect"), str):
                    try:
                        events.signed_out(order["disconnect"])
                    except Exception as e:  # noqa: BLE001
                        self._failed("signed_out", e)
                return
            room = keys.room_of(keys.COUNT_CHANNEL, name)
            if room is not None:
                state = protocol.decode_count_announcement(data)
                try:
                    events.count(room, state)
                except Exception as e:  # noqa: BLE001
                    self._failed("count", e)
                return
            room = keys.room_of(keys.MESSAGE_CHANNEL, name)
            if room is not None:
                self.metrics.relayed.inc()
                offset, epoch, text = parse_message(data)
                try:
                    events.message(room, offset, epoch, text)
                except Exception as e:  # noqa: BLE001
                    self._failed("message", e)
                return
            room = keys.room_of(keys.ROOM_CHANNEL, name)
            if room is not None:
                self.metrics.relayed.inc()
                text = protocol.validate_payload(data)
                try:
                    events.raw_message(room, text)
                except Exception as e:  # noqa: BLE001
                    self._failed("raw_message", e)
        except MALFORMED:
            self.metrics.malformed_payloads.inc()
            log.debug("dropped malformed payload on %r", channel)

    def room_confirmed(self, room: str) -> None:
        try:
            self.events.room_confirmed(room)
        except Exception as e:  # noqa: BLE001
            self._failed("room_confirmed", e)

    def control_confirmed(self) -> None:
        try:
            self.events.control_confirmed()
        except Exception as e:  # noqa: BLE001
            self._failed("control_confirmed", e)

    def connected(self) -> None:
        """Not guarded: if the core cannot take a new connection in, the connection ends (and is
        made again)."""
        self.events.connected()

    def _failed(self, event: str, e: Exception) -> None:
        self.metrics.task_errors.labels("dispatch").inc()
        self._log.warning(event, "%s failed: %s: %s", event, type(e).__name__, e)

    async def probe(self, publisher: Publisher, channels: list[str], timeout: float) -> bool:
        """A token through each of ``channels`` (our own), each back through pub/sub within ``timeout``."""
        loop = asyncio.get_running_loop()
        tokens = {secrets.token_hex(8): channel for channel in channels}
        futures: list[asyncio.Future[None]] = []
        for token in tokens:
            fut: asyncio.Future[None] = loop.create_future()
            self._probes[token] = fut
            futures.append(fut)
        try:
            await asyncio.gather(*(publisher.publish(channel, token) for token, channel in tokens.items()))
            await asyncio.wait_for(asyncio.gather(*(asyncio.shield(f) for f in futures)), timeout)
            return True
        except (BackplaneError, asyncio.TimeoutError):
            return False
        finally:
            for token in tokens:
                self._probes.pop(token, None)


class Unbound:
    """The `Events` of a subscriber not yet bound to the core: everything heard is let go."""

    def message(self, room: str, offset: int, epoch: str, data_json: str) -> None: ...

    def raw_message(self, room: str, data_json: str) -> None: ...

    def count(self, room: str, state: CountState) -> None: ...

    def room_confirmed(self, room: str) -> None: ...

    def connected(self) -> None: ...

    def signed_out(self, user: str) -> None: ...

    def control_confirmed(self) -> None: ...

    def inbox(self, data: bytes) -> None: ...


async def listen(
    pubsub: Any, keepalive: float, dispatch: Dispatch, reply: Callable[[Any, bytes, Any], None],
    check: Callable[[], None] = lambda: None,
) -> None:
    """Hand every reply of ``pubsub`` that names a channel to ``reply(kind, channel, data)`` until
    the connection breaks or stays silent (3 keepalives without a reply to our pings; a stall of
    our own does not count); ``check`` runs before each read and may raise to end it. Redis's
    confirmation of the control channel is told to the core here, whichever link carries it."""
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
            if not isinstance(msg, dict):
                raise ConnectionError(f"unexpected pub/sub reply {msg!r:.80}")
            kind, channel = msg.get("type"), msg.get("channel")
            if isinstance(kind, bytes):
                kind = kind.decode("latin-1")
            if not isinstance(channel, bytes):
                continue  # pong replies carry no channel
            if kind == "subscribe" and channel == _CONTROL:
                dispatch.control_confirmed()
            reply(kind, channel, msg.get("data"))
            continue
        if starved(asked, now):
            last_seen = now
        if now - last_seen > 3 * keepalive:
            raise ConnectionError("redis pub/sub silent for %.0f s" % (now - last_seen))
        if now - last_ping > keepalive:
            last_ping = now
            await pubsub.ping()


def starved(asked: float, now: float, timeout: float = 1.0) -> bool:
    """A read with ``timeout`` that came back this late was not Redis being silent: this process
    could not run (a CPU-starved box, a long callback). Silence is then judged afresh, or a healthy
    connection would be dropped, and every room resubscribed, at the worst moment."""
    return now - asked > timeout + 0.25
