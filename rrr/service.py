"""One rrr process, assembled: the backplane (`rrr.backplane.connect`), the core built on it (the
local rooms, hub, delivery, counts, members, writer), what the subscriber hears wired to the part
it concerns (`CoreEvents`), and the supervised loops that keep it all true.

Four long-lived tasks, each supervised (`rrr.supervise`): any exception is counted,
logged once (rate-limited) and the task restarts; nothing a Redis reply holds can stop
lease renewal for good.

* ``lease``: renews this process's lease every TTL/3 and sweeps dead processes every
  ``sweep_interval``. When Redis answers again after failing, it tells the subscriber to
  reconnect at once instead of sleeping out its backoff.
* ``subscriber``: the one pub/sub connection (`rrr.backplane.subscriber`).
* ``flush``: writes the marked rooms, in batches (`rrr.writer`), each room once its channels
  are confirmed subscribed and its messages caught up, so a count that shows this process
  again after a Redis restart means its relay works too.
* ``history`` (history on): keeps the epochs of local rooms alive (`rrr.backplane.history`); the
  catch-up of each room's messages after a gap runs in `rrr.delivery`, per room.
* ``webhooks`` (``--webhook-url`` set): asks for the sender's lease, and while it holds it moves
  and delivers the events the presence scripts record (`rrr.webhooks`).

`health` is what ``/healthz`` reports: each check by name.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from . import protocol
from .backplane import Backplane, EventSettings, History, Presence, Subscriber, connect, keys
from .backplane.history import meta_ttl
from .counts import Counts
from .delivery import Delivery
from .errors import BackplaneError
from .hub import Hub
from .members import Members
from .metrics import Metrics
from .protocol import CountState
from .rooms import Rooms
from .supervise import Supervisor, full_jitter
from .webhooks import WebhookSettings, Webhooks, lease_ttl
from .writer import Coalescer, Writer

log = logging.getLogger("rrr.service")


@dataclass(frozen=True)
class Settings:
    redis_url: str
    presence_ttl: float = 15.0
    count_interval: float = 0.1
    write_interval: float = 0.01
    count_rate: float = 20_000.0
    sweep_interval: float = 1.0
    redis_timeout: float = 2.0
    redis_pool_size: int = 32
    history_size: int = 100
    history_ttl: float = 300.0
    max_message_size: int = 65536
    presence_list_max: int = 1000
    pubsub_keepalive: float = 5.0
    backoff_cap: float = 5.0
    #: Seconds a room or a member must stay gone before it is reported gone; also the member
    #: list's leave grace.
    vacate_delay: float = 2.0
    webhooks: WebhookSettings | None = None
    cache_ttl: float = 1800.0  # --cache-ttl: a cache channel's last message is kept this long


class Service:
    def __init__(
        self, settings: Settings, metrics: Metrics | None = None, backplane: Backplane | None = None,
    ) -> None:
        self.settings = s = settings
        self.metrics = metrics = metrics or Metrics()
        events = (
            EventSettings(s.vacate_delay, s.webhooks.backlog, s.webhooks.retry_for) if s.webhooks is not None else None
        )
        bp = backplane or connect(
            s.redis_url, metrics, ttl=s.presence_ttl, timeout=s.redis_timeout, pool_size=s.redis_pool_size,
            keepalive=s.pubsub_keepalive, history_size=s.history_size, history_ttl=s.history_ttl,
            max_message=s.max_message_size, events=events, cache_ttl=s.cache_ttl,
        )
        self.presence: Presence = bp.presence
        self.subscriber: Subscriber = bp.subscriber
        self.history: History = bp.history
        self.supervisor = Supervisor(metrics, backoff_cap=s.backoff_cap)
        # The core: the local rooms (written by the hub alone, read by the others), and what each
        # part keeps of them.
        self.rooms: Rooms = {}
        # Presence writes are batched by their own period, not the broadcast's: a join waits for its
        # write before it is counted, so a storm's joins per second followed --count-interval.
        coalescer = Coalescer(s.write_interval)
        self.counts = Counts(self.rooms, metrics, interval=s.count_interval, rate=s.count_rate)
        self.members = Members(
            self.rooms, self.presence, self.counts, metrics, grace=s.vacate_delay, list_max=s.presence_list_max,
        )
        self.delivery = Delivery(self.history, metrics, self.rooms, self.subscriber, coalescer)
        self.webhooks: Webhooks | None = None
        if s.webhooks is not None and bp.events is not None:
            self.webhooks = Webhooks(
                s.webhooks, bp.events, metrics, self.supervisor, lease=lease_ttl(s.presence_ttl),
            )
        self.writer = Writer(
            self.rooms, coalescer, self.presence, self.subscriber, self.delivery, self.members, self.counts,
            self.supervisor, events=self.webhooks is not None,
        )
        self.hub = Hub(
            self.rooms, self.subscriber, self.delivery, self.members, self.counts, self.writer, self.presence, metrics,
        )
        self.events = CoreEvents(self.rooms, self.hub, self.delivery, self.counts, self.members, self.writer)
        self._renew_now = asyncio.Event()
        self._renewed_once = False  # the first renewal always finds no lease: not news
        self._health: asyncio.Future[dict[str, bool]] | None = None
        #: Awaited first at shutdown, while everything still runs: requests this process answers
        #: for another's sessions (a handed-over POST waits for its owner's answer on our inbox).
        self.settles: list[Callable[[], Awaitable[None]]] = []
        #: Awaited at shutdown once every socket was told 1001, before Redis is let go: what the
        #: edge still owes other processes (a polling session's last answer, handed back through Redis).
        self.drains: list[Callable[[], Awaitable[None]]] = []
        self._shutting_down = False
        metrics.redis_oom.set_function(lambda: float(self.presence.oom))

    @property
    def process_id(self) -> str:
        return self.presence.process_id

    @property
    def process_tag(self) -> str:
        """What this process's session ids start with, and its inbox is named by (`keys.process_tag`)."""
        return keys.process_tag(self.presence.process_id)

    async def start(self) -> None:
        try:
            await self.history.announce()  # before we serve: a backend's next publish follows us
        except BackplaneError:
            pass  # Redis is down: announced with the first renewal that reaches it
        self.subscriber.bind(self.events)
        self.supervisor.spawn("subscriber", self._subscribe)
        self.supervisor.spawn("lease", self._maintain, backoff_cap=min(self.settings.backoff_cap, 1.0))
        self.supervisor.spawn("flush", self.writer.run)
        if self.history.enabled:
            self.supervisor.spawn("history", self._keep_epochs)
        if self.webhooks is not None:
            self.supervisor.spawn("webhooks", self.webhooks.run)
        # Serve only once ready, unless Redis is down: then start anyway and heal when it is back.
        deadline = time.monotonic() + 2 * self.settings.redis_timeout + 1
        while not (self.presence.lease_fresh() and self.subscriber.synced) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if not self.subscriber.synced:
            log.warning("starting without Redis; presence and relay begin once it answers")

    # -- the loops -------------------------------------------------------

    async def _subscribe(self) -> None:
        """Run the subscriber's connection again whenever it breaks, after a backoff that the lease
        loop cuts short once Redis answers again (the supervisor's own backoff could not be woken)."""
        attempt = 0
        while True:
            try:
                await self.subscriber.run()
            except Exception as e:  # noqa: BLE001 - a garbled reply can break redis-py's parser any way
                self.supervisor.report("subscriber", e)
            if self.subscriber.ran_for > 10:
                attempt = 0
            await self.subscriber.backoff(full_jitter(attempt, 0.1, self.settings.backoff_cap))
            attempt += 1

    async def _maintain(self) -> None:
        s = self.settings
        renew_every = max(s.presence_ttl / 3, 0.05)
        loop = asyncio.get_running_loop()
        next_renew = next_sweep = loop.time()
        while not self.hub.closing:
            now = loop.time()
            try:
                if now >= next_renew or self._renew_now.is_set():
                    self._renew_now.clear()
                    lost = await self.presence.renew()
                    next_renew = now + renew_every
                    if not self.subscriber.connected:
                        self.subscriber.reconnect_now()  # Redis answers: no need to sleep out a backoff
                    self.supervisor.recovered("lease")
                    if lost and self._renewed_once:
                        log.info("presence lease was missing; re-registering local presence")
                    if lost:
                        self.writer.resync()
                        await self.history.announce()  # Redis lost it too (or this is our start)
                    self._renewed_once = True
                if now >= next_sweep:
                    next_sweep = now + s.sweep_interval
                    swept = await self.presence.sweep()
                    if swept:
                        log.info("swept presence of %d dead process(es)", swept)
            except BackplaneError as e:
                self.supervisor.report("lease", e)
                next_renew = now + full_jitter(1, 0.25, min(1.0, renew_every))
            wait = max(0.0, min(next_renew, next_sweep) - loop.time())
            try:
                await asyncio.wait_for(self._renew_now.wait(), wait)
            except asyncio.TimeoutError:
                pass

    async def _keep_epochs(self) -> None:
        """A room with subscribers keeps its epoch however long nobody publishes to it: each local
        room's meta is touched a few times per its TTL (an hour or more: a trickle of calls)."""
        every = meta_ttl(self.history.ttl) / 4
        while not self.hub.closing:
            await asyncio.sleep(every)
            for room in self.hub.local_rooms():
                if self.hub.closing:
                    return
                await self.history.touch([room])

    # -- health ----------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """What ``/healthz`` reports besides its checks, as information: never a failure (a webhook
        receiver being down is not rrr being unhealthy)."""
        return {"webhooks": self.webhooks.status()} if self.webhooks is not None else {}

    async def health(self) -> dict[str, bool]:
        """Each readiness check by name. Concurrent callers share one run (a flood costs one probe)."""
        if self._health is None or self._health.done():
            self._health = asyncio.ensure_future(self._check())
        return await asyncio.shield(self._health)

    async def _check(self) -> dict[str, bool]:
        timeout = self.settings.redis_timeout

        async def memory() -> bool:
            try:
                await self.presence.probe_write()
            except BackplaneError:
                pass
            return not self.presence.oom

        redis_ok, relay_ok, memory_ok = await asyncio.gather(
            self.presence.ping(),
            self.subscriber.probe(self.presence, timeout),
            memory(),
        )
        checks = {
            "redis": redis_ok,
            "lease": self.presence.lease_fresh(),
            "presence_write": self.writer.healthy,
            "subscriber": relay_ok and self.subscriber.synced,
            "memory": memory_ok,
        }
        for name, ok in checks.items():
            self.metrics.health.labels(name).set(1.0 if ok else 0.0)
        return checks

    # -- shutdown --------------------------------------------------------

    async def shutdown(self, code: int = 1001, reason: str = "server shutting down") -> None:
        """Let requests in flight for other processes finish (`settles`: milliseconds, unless an owner
        is stalled), remove our presence (counts drop at once), then close every socket with 1001."""
        if self._shutting_down or self.hub.closing:
            return
        self._shutting_down = True
        await self._each("settle", self.settles, 2 * self.settings.redis_timeout + 6)
        # From now on nothing is marked for writing: LEAVE removes all our presence at once.
        self.hub.close()
        self.writer.close()
        self.delivery.close()
        self.counts.close()
        self.members.close()
        # A write still in flight must land before LEAVE, or it would re-add us.
        await self.writer.settle(self.settings.redis_timeout + 1)
        await self.subscriber.stop()
        # The subscriber's connection (our inbox) listens until we have left: other processes hand us
        # requests until then (on a Cluster while our liveness key stands, which LEAVE deletes last),
        # and one handed over with nobody listening waited out the handoff's timeout (#27's drains).
        await self.supervisor.close(keep=frozenset({"subscriber"}))
        try:
            await self.presence.leave()
        except BackplaneError as e:
            log.warning("could not remove presence on shutdown (it will expire): %s", e)
        if self.webhooks is not None:
            await self.webhooks.close()  # after LEAVE, whose events another process then sends
        self.hub.close_all(code, reason)
        await self._each("drain", self.drains, self.settings.redis_timeout + 1)
        await self.supervisor.close()
        await self.presence.close()

    @staticmethod
    async def _each(what: str, steps: list[Callable[[], Awaitable[None]]], timeout: float) -> None:
        for step in steps:
            try:
                await asyncio.wait_for(step(), timeout)
            except Exception as e:  # noqa: BLE001 - shutdown goes on whatever one step met
                log.warning("shutdown: %s %s did not finish: %s: %s", what, getattr(step, "__qualname__", step),
                            type(e).__name__, e)


class CoreEvents:
    """What the subscriber hears, to the part of the core it concerns (the `rrr.backplane.Events`
    the service binds): messages to delivery, counts to their sockets (and a presence room's member
    list read again), confirmations to the writer and delivery, sign-outs to the hub."""

    def __init__(
        self, rooms: Rooms, hub: Hub, delivery: Delivery, counts: Counts, members: Members, writer: Writer,
    ) -> None:
        self._rooms = rooms
        self._hub = hub
        self._delivery = delivery
        self._counts = counts
        self._members = members
        self._writer = writer
        #: Where this process's inbox goes (the edge's `rrr.edge.handoff.Handoff` once it exists).
        self.on_inbox: Callable[[bytes], None] = _ignore

    def message(self, room: str, offset: int, epoch: str, data_json: str) -> None:
        self._delivery.message(room, offset, epoch, data_json)

    def raw_message(self, room: str, data_json: str) -> None:
        self._delivery.raw_message(room, data_json)

    def count(self, room: str, state: CountState) -> None:
        if self._counts.show(room, state) and protocol.is_presence_room(room):
            self._members.refresh(room)

    def room_confirmed(self, room: str) -> None:
        if room in self._rooms:
            self._writer.mark(room)
            self._delivery.channels_ready(room)

    def connected(self) -> None:
        self._delivery.resync()  # what was published while pub/sub was down is read back
        self._writer.resync()

    def signed_out(self, user: str) -> None:
        self._hub.sign_out(user)

    def control_confirmed(self) -> None:
        self._hub.recheck_revocations()

    def inbox(self, data: bytes) -> None:
        self.on_inbox(data)


def _ignore(data: bytes) -> None:
    """An inbox message before the edge listens: nobody can have sent it a session's request yet."""
