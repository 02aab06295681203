"""Pub/sub on a Redis 7 Cluster (``--redis-url redis+cluster://...``).

The `rrr.backplane.Subscriber` of `rrr.backplane.subscriber.ClassicSubscriber` (the core cannot
tell), built of the same parts (`rrr.backplane.pubsub`): one sharded
pub/sub connection per master, ``SSUBSCRIBE``ing each room's channels (count, history
messages, the room's shard channel) on the master that owns the room's slot, plus one classic
connection (on a replica when there is one) for ``PSUBSCRIBE rrr:room:*`` (backends' raw
``PUBLISH``, which a cluster broadcasts to every node: the slow path), the control channel and
the probe. When one of these connections breaks (a master died), a ``SSUBSCRIBE`` meets
``MOVED`` or a ``sunsubscribe`` push says a slot moved, only that connection is repaired: the
topology is read again until a master serves its slots (after a failover: the promoted
replica) and its rooms are subscribed there; the others keep delivering. As after any
reconnect, the core then writes every room's presence again and reads back from history what
it missed.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

from redis.crc import key_slot
from redis.exceptions import RedisError

from ..metrics import Metrics
from ..supervise import RateLimitedLog, cancel, full_jitter
from . import Publisher, keys
from .clients import make_node_redis, parse_cluster_url
from .pubsub import Dispatch, Following, Follows, listen, log


class _Link:
    """One pub/sub connection: the classic one, or a master's sharded one."""

    def __init__(self, name: str, client: Any, pubsub: Any) -> None:
        self.name = name
        self.client = client
        self.pubsub = pubsub
        self.rooms: set[str] = set()  # rooms SSUBSCRIBEd here
        self.reader: asyncio.Task[None] | None = None

    @property
    def broken(self) -> bool:
        return self.reader is None or self.reader.done()

    async def close(self) -> None:
        if self.reader is not None:
            await cancel(self.reader)
        try:
            await self.client.aclose()
        except Exception:  # noqa: BLE001 - the connection may be broken already
            pass


CLASSIC = "classic"


class ClusterSubscriber(Following):
    """Pub/sub on a Redis Cluster: sharded pub/sub per master, plus one classic connection.

    A master's connection that breaks is repaired alone: its rooms are unconfirmed, the topology
    is read again until a master serves their slots (after a failover: the promoted replica),
    they are subscribed there, and the core is told to resync as after any reconnect. The
    other masters' rooms keep being delivered meanwhile. The classic connection (on a replica
    when there is one) is repaired the same way.
    """

    def __init__(
        self, redis: Any, metrics: Metrics, *, url: str, timeout: float = 2.0, keepalive: float = 5.0,
        process_id: str = "",
    ) -> None:
        self.metrics = metrics
        self.keepalive = keepalive
        self._pid = process_id or secrets.token_hex(8)
        self.probe_channel = keys.probe_channel(self._pid)
        self.inbox_channel = keys.inbox_channel(keys.process_tag(self._pid))
        self._redis = redis  # the cluster client the topology is read with
        self._follows = Follows(metrics)
        self._dispatch = Dispatch(metrics, {self.probe_channel}, inbox=self.inbox_channel, psubscribed=True)
        self._log = RateLimitedLog(log)
        self._syncer: asyncio.Task[None] | None = None
        self._cluster_url = parse_cluster_url(url)
        self._timeout = timeout
        self._links: dict[str, _Link] = {}
        self._shard_probes: dict[str, str] = {}  # node name -> our probe channel in its slots
        self._active: set[str] = set()  # rooms with an SSUBSCRIBE sent on a live link
        # Shard channels we SUNSUBSCRIBEd ourselves, by how many replies are still to come (a room
        # left and joined again quickly gets its sunsubscribe reply after it is wanted again).
        self._dropping: dict[bytes, int] = {}
        self._broken = asyncio.Event()
        self._stopping = False

    # -- what the core asks for (the rest is `Following`'s) ----------------

    async def probe(self, publisher: Publisher, timeout: float) -> bool:
        """A token through every connection: the classic one and each master's sharded one."""
        if not self.connected:
            return False
        return await self._dispatch.probe(publisher, [self.probe_channel, *self._shard_probes.values()], timeout)

    # -- the connections -------------------------------------------------

    async def stop(self) -> None:
        """End the sync and reader tasks before whoever runs us cancels `run`: a cancel that
        interrupted run's own cleanup would leave those children pending."""
        self._stopping = True
        for link in list(self._links.values()):
            if link.reader is not None:
                await cancel(link.reader)
        if self._syncer is not None:
            await cancel(self._syncer)

    async def run(self) -> None:
        cluster = self._redis
        syncer: asyncio.Task[None] | None = None
        self._links = {}
        try:
            await cluster.nodes_manager.initialize()  # the topology as it is now
            primaries = list(cluster.get_primaries())
            if not primaries:
                raise ConnectionError("the cluster has no masters")
            self._follows.restart()
            self._active = set()
            self._dropping = {}
            self._broken.clear()
            await self._open_classic(cluster)
            for node in primaries:
                await self._open_shard(cluster, node)
            syncer = self._syncer = asyncio.create_task(self._sync_shards(cluster), name="rrr-cluster-sync")
            self._follows.went_up("redis cluster pub/sub")
            self._dispatch.connected()  # what was published while it was down is read back
            while True:
                waiter = asyncio.ensure_future(self._broken.wait())
                try:
                    await asyncio.wait([syncer, waiter], return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
                if syncer.done():
                    syncer.result()
                    raise ConnectionError("cluster subscription sync ended")
                if self._stopping:
                    raise ConnectionError("cluster pub/sub stopped")
                await self._repair(cluster)
        finally:
            self._follows.went_down()
            if syncer is not None:
                await cancel(syncer)
            for link in list(self._links.values()):
                await link.close()
            self._links = {}

    def _start_reader(self, link: _Link) -> None:
        link.reader = asyncio.create_task(
            listen(link.pubsub, self.keepalive, self._dispatch, self._reply), name=f"rrr-cluster-read-{link.name}",
        )
        link.reader.add_done_callback(lambda _: self._broken.set())

    async def _open_classic(self, cluster: Any) -> None:
        """The classic connection, on a replica if there is one (classic pub/sub reaches every node,
        and a master's death then costs only its own shard's link), else on a master."""
        candidates = list(cluster.get_replicas()) + list(cluster.get_primaries())
        failure: BaseException | None = None
        for node in candidates:
            client = make_node_redis(self._cluster_url, node.host, node.port, self._timeout)
            link = _Link(CLASSIC, client, client.pubsub())
            try:
                await link.pubsub.psubscribe(keys.ROOM_CHANNEL_PATTERN)
                await link.pubsub.subscribe(self.probe_channel, keys.CONTROL_CHANNEL, self.inbox_channel)
            except (RedisError, OSError) as e:
                failure = e
                await link.close()
                continue
            self._links[CLASSIC] = link
            self._start_reader(link)
            return
        raise ConnectionError(f"no cluster node took the classic pub/sub connection: {failure}")

    async def _open_shard(self, cluster: Any, node: Any) -> None:
        """A sharded connection to master ``node``, subscribed to our probe channel in its slots."""
        client = make_node_redis(self._cluster_url, node.host, node.port, self._timeout)
        link = _Link(node.name, client, client.pubsub())
        channel = self._probe_channel_on(cluster, node)
        try:
            await link.pubsub.ssubscribe(channel)
        except BaseException:
            await link.close()
            raise
        self._links[node.name] = link
        self._shard_probes[node.name] = channel
        self._dispatch.probe_channels = {self.probe_channel, *self._shard_probes.values()}
        self._start_reader(link)

    async def _drop_link(self, link: _Link) -> None:
        """Forget a link and unconfirm its rooms (the syncer subscribes them again elsewhere)."""
        self._links.pop(link.name, None)
        self._shard_probes.pop(link.name, None)
        self._dispatch.probe_channels = {self.probe_channel, *self._shard_probes.values()}
        for room in link.rooms:
            self._active.discard(room)
            self._follows.forget(room, keys.shard_channels(room))
        if link.reader is not None and link.reader.done() and not link.reader.cancelled():
            e = link.reader.exception()
            if e is not None:
                self.metrics.task_errors.labels("subscriber").inc()
                self._log.warning("link", "cluster pub/sub to %s broke: %s: %s", link.name, type(e).__name__, e)
        await link.close()

    async def _repair(self, cluster: Any) -> None:
        """Some link broke: drop it, read the topology again until every master is linked, then have
        the lost rooms subscribed again and the core resync (as after a reconnect)."""
        attempt = 0
        while True:
            self._broken.clear()
            for link in [lk for lk in self._links.values() if lk.broken]:
                await self._drop_link(link)
            try:
                await cluster.nodes_manager.initialize()
                if CLASSIC not in self._links:
                    await self._open_classic(cluster)
                primaries = {node.name: node for node in cluster.get_primaries()}
                for name in [n for n in self._links if n != CLASSIC and n not in primaries]:
                    await self._drop_link(self._links[name])  # no longer a master
                for name, node in primaries.items():
                    if name not in self._links:
                        await self._open_shard(cluster, node)
            except (RedisError, OSError, ConnectionError, asyncio.TimeoutError) as e:
                self._log.warning("repair", "cluster pub/sub repair: %s: %s", type(e).__name__, e)
                await self.backoff(full_jitter(attempt, 0.1, 2.0))
                attempt += 1
                continue
            if not any(link.broken for link in self._links.values()):
                break
        self.metrics.redis_reconnects.inc()
        log.info("redis cluster pub/sub repaired; resubscribing %d rooms", len(self._follows.wanted - self._active))
        self._follows.changed.set()
        self._dispatch.connected()  # whatever was missed, read back; presence written again
        for room in list(self._follows.confirmed):
            self._dispatch.room_confirmed(room)  # still subscribed: catch up at once

    def _probe_channel_on(self, cluster: Any, node: Any) -> str:
        """Our probe channel whose slot ``node`` serves (a hash tag found by trying a few)."""
        for i in range(100000):
            channel = keys.shard_probe_channel(self._pid, str(i))
            if cluster.get_node_from_key(channel).name == node.name:
                return channel
        raise ConnectionError(f"no slot of {node.name} found")

    async def _sync_shards(self, cluster: Any) -> None:
        """Converge SSUBSCRIBEs to the wanted rooms, each on the master of its slot. A room whose
        master has no live link waits for the repair (which wakes us again)."""
        follows = self._follows
        follows.changed.set()
        while True:
            await follows.changed.wait()
            follows.changed.clear()
            for room in follows.wanted - self._active:
                channels = keys.shard_channels(room)
                try:
                    node = cluster.get_node_from_key(channels[0])
                except RedisError:
                    continue  # slot not covered right now: the repair will wake us
                link = self._links.get(node.name)
                if link is None or link.broken:
                    continue
                follows.expect(room, channels)
                link.rooms.add(room)
                self._active.add(room)
                try:
                    await link.pubsub.ssubscribe(*channels)  # one room, one slot: one command
                except (RedisError, OSError) as e:
                    if link.reader is not None:
                        link.reader.cancel()  # the link is broken: repaired with its rooms
                    self._log.warning("ssubscribe", "SSUBSCRIBE on %s failed: %s", link.name, e)
            for room in self._active - follows.wanted:
                channels = keys.shard_channels(room)
                self._active.discard(room)
                follows.forget(room, channels)
                link = next((lk for lk in self._links.values() if room in lk.rooms), None)
                if link is None:
                    continue
                link.rooms.discard(room)
                for channel in channels:
                    self._dropping[channel.encode()] = self._dropping.get(channel.encode(), 0) + 1
                try:
                    await link.pubsub.sunsubscribe(*channels)
                except (RedisError, OSError):
                    if link.reader is not None:
                        link.reader.cancel()

    def _reply(self, kind: Any, channel: bytes, data: Any) -> None:
        """One pub/sub reply that names a channel, on any of the links."""
        if kind in ("message", "pmessage", "smessage"):
            self._dispatch.message(channel, data, self._follows.wanted)
        elif kind == "ssubscribe":
            room = self._follows.acked(channel)
            if room is not None:
                self._dispatch.room_confirmed(room)
        elif kind == "sunsubscribe":
            left = self._dropping.get(channel, 0)
            if left > 1:
                self._dropping[channel] = left - 1
                return
            if left == 1:
                del self._dropping[channel]
                return
            # Not ours: the slot moved (a resharding, or this node is no longer its master).
            raise ConnectionError(f"cluster moved shard channel {channel!r:.80}")


def slot_of(name: str) -> int:
    """The cluster slot of a key or channel name (tests use it to spread rooms over shards)."""
    return int(key_slot(name.encode()))
