"""One Redis pub/sub connection per process (classic: one Redis, or a Sentinel-managed one): the
rooms with local subscriptions, and a probe.

`ClassicSubscriber.run` owns one connection for its life and raises when it breaks; the
service runs it again after a backoff, which `reconnect_now` cuts short when the command
connection sees Redis answer again. It knows which rooms Redis has *confirmed* (each of the
room's channels acknowledged), so the core writes a room's presence only once its messages can
arrive: a count that shows this process means its relay works too.

`probe` proves the connection delivers, not merely that it is open: a message published
on this process's own channel must come back through it.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

from ..metrics import Metrics
from ..supervise import cancel
from . import Publisher, keys
from .pubsub import Dispatch, Following, Follows, listen


class ClassicSubscriber(Following):
    def __init__(self, redis: Any, metrics: Metrics, *, keepalive: float = 5.0, process_id: str = "") -> None:
        self.keepalive = keepalive
        pid = process_id or secrets.token_hex(8)
        self.probe_channel = keys.probe_channel(pid)
        self.inbox_channel = keys.inbox_channel(keys.process_tag(pid))
        self._redis = redis
        self._follows = Follows(metrics)
        self._dispatch = Dispatch(metrics, {self.probe_channel}, inbox=self.inbox_channel)
        self._syncer: asyncio.Task[None] | None = None

    # -- what the core asks for (the rest is `Following`'s) ----------------

    async def probe(self, publisher: Publisher, timeout: float) -> bool:
        """Publish a token on our own channel and wait for it to come back through pub/sub."""
        if not self.connected:
            return False
        return await self._dispatch.probe(publisher, [self.probe_channel], timeout)

    # -- the connection --------------------------------------------------

    async def run(self) -> None:
        """Hold one pub/sub connection until it breaks (then raise: the service runs us again)."""
        pubsub = self._redis.pubsub()
        syncer: asyncio.Task[None] | None = None
        try:
            await pubsub.subscribe(self.probe_channel, keys.CONTROL_CHANNEL, self.inbox_channel)
            self._follows.restart()
            syncer = self._syncer = asyncio.create_task(self._sync(pubsub, set()), name="rrr-subscriber-sync")
            self._follows.went_up("redis pub/sub")
            self._dispatch.connected()  # what was published while it was down is read back
            await self._read(pubsub, syncer)
        finally:
            self._follows.went_down()
            if syncer is not None:
                await cancel(syncer)
            try:
                await pubsub.aclose()
            except Exception:  # noqa: BLE001 - the connection is already broken
                pass

    async def stop(self) -> None:
        """End the sync task before whoever runs us cancels `run`: a cancel that interrupted
        run's own cleanup would leave that child pending."""
        if self._syncer is not None:
            await cancel(self._syncer)

    async def _sync(self, pubsub: Any, active: set[str]) -> None:
        """Converge SUBSCRIBEs to the followed rooms, batched, one command at a time, in order."""
        follows = self._follows
        follows.changed.set()
        while True:
            await follows.changed.wait()
            follows.changed.clear()
            add = follows.wanted - active
            drop = active - follows.wanted
            if add:
                for room in add:
                    follows.expect(room, keys.room_channels(room))
                await pubsub.subscribe(*(channel for room in add for channel in keys.room_channels(room)))
                active |= add
            if drop:
                follows.confirmed -= drop
                await pubsub.unsubscribe(*(channel for room in drop for channel in keys.room_channels(room)))
                active -= drop
                for room in drop:
                    follows.unexpect(room, keys.room_channels(room))

    async def _read(self, pubsub: Any, syncer: asyncio.Task[None]) -> None:
        def sync_alive() -> None:
            if syncer.done():
                syncer.result()  # re-raise a failed SUBSCRIBE: reconnect
                raise ConnectionError("subscription sync ended")

        await listen(pubsub, self.keepalive, self._dispatch, self._reply, sync_alive)

    def _reply(self, kind: Any, channel: bytes, data: Any) -> None:
        """One pub/sub reply that names a channel: a message, or a subscription's confirmation."""
        if kind == "message":
            self._dispatch.message(channel, data, self._follows.wanted)
        elif kind == "subscribe":
            room = self._follows.acked(channel)
            if room is not None:
                self._dispatch.room_confirmed(room)
