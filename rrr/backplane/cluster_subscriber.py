"""Pub/sub on a Redis 7 Cluster (``--redis-url redis+cluster://...``).

Same interface as `rrr.backplane.subscriber.Subscriber` (the core cannot tell): one sharded
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

from ..errors import BackplaneError
from ..metrics import Metrics
from ..protocol import validate_json_payload
from ..supervise import cancel, full_jitter
from . import keys
from .connect import make_node_redis, parse_cluster_url
from .subscriber import Publisher, Subscriber, log as sub_log


def _shard_channels(room: str) -> list[str]:
    return [keys.shard_room_channel(room), keys.count_channel(room), keys.message_channel(room)]


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


class ClusterSubscriber(Subscriber):
    """`Subscriber` on a Redis Cluster: sharded pub/sub per master, plus one classic connection.

    A master's connection that breaks is repaired alone: its rooms are unconfirmed, the topology
    is read again until a master serves their slots (after a failover: the promoted replica),
    they are subscribed there, and the listener is told to resync as after any reconnect. The
    other masters' rooms keep being delivered meanwhile. The classic connection (on a replica
    when there is one) is repaired the same way.
    """

    def __init__(
        self, metrics: Metrics, *, url: str, timeout: float = 2.0, keepalive: float = 5.0, process_id: str = "",
    ) -> None:
        super().__init__(metrics, keepalive=keepalive, process_id=process_id)
        self._pid = process_id or secrets.token_hex(8)
        self._cluster_url = parse_cluster_url(url)
        self._timeout = timeout
        self._links: dict[str, _Link] = {}
        self._shard_probes: dict[str, str] = {}  # node name -> our probe channel in its slots
        self._probe_names: set[str] = set()
        self._active: set[str] = set()  # rooms with an SSUBSCRIBE sent on a live link
        # Shard channels we SUNSUBSCRIBEd ourselves, by how many replies are still to come (a room
        # left and joined again quickly gets its sunsubscribe reply after it is wanted again).
        self._dropping: dict[bytes, int] = {}
        self._broken = asyncio.Event()
        self._stopping = False

    async def stop(self) -> None:
        """End the sync and reader tasks before whoever runs us cancels `run` (see `Subscriber.stop`)."""
        self._stopping = True
        for link in list(self._links.values()):
            if link.reader is not None:
                await cancel(link.reader)
        await super().stop()

    async def run(self) -> None:
        cluster = self._redis
        syncer: asyncio.Task[None] | None = None
        self._links = {}
        try:
            await cluster.nodes_manager.initialize()  # the topology as it is now
            primaries = list(cluster.get_primaries())
            if not primaries:
                raise ConnectionError("the cluster has no masters")
            self._confirmed = set()
            self._pending = {}
            self._unacked = {}
            self._active = set()
            self._dropping = {}
            self._broken.clear()
            await self._open_classic(cluster)
            for node in primaries:
                await self._open_shard(cluster, node)
            syncer = self._syncer = asyncio.create_task(self._sync_shards(cluster), name="rrr-cluster-sync")
            self._went_up("redis cluster pub/sub")
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
            self._went_down()
            if syncer is not None:
                await cancel(syncer)
            for link in list(self._links.values()):
                await link.close()
            self._links = {}

    def _start_reader(self, link: _Link) -> None:
        link.reader = asyncio.create_task(self._listen(link.pubsub), name=f"rrr-cluster-read-{link.name}")
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
                await link.pubsub.subscribe(self.probe_channel, keys.CONTROL_CHANNEL)
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
        self._probe_names = set(self._shard_probes.values())
        self._start_reader(link)

    async def _drop_link(self, link: _Link) -> None:
        """Forget a link and unconfirm its rooms (the syncer subscribes them again elsewhere)."""
        self._links.pop(link.name, None)
        self._shard_probes.pop(link.name, None)
        self._probe_names = set(self._shard_probes.values())
        for room in link.rooms:
            self._active.discard(room)
            self._confirmed.discard(room)
            self._unacked.pop(room, None)
            for channel in _shard_channels(room):
                self._pending.pop(channel.encode(), None)
        if link.reader is not None and link.reader.done() and not link.reader.cancelled():
            e = link.reader.exception()
            if e is not None:
                self.metrics.task_errors.labels("subscriber").inc()
                self._dispatch_log.warning("link", "cluster pub/sub to %s broke: %s: %s", link.name,
                                           type(e).__name__, e)
        await link.close()

    async def _repair(self, cluster: Any) -> None:
        """Some link broke: drop it, read the topology again until every master is linked, then have
        the lost rooms subscribed again and the listener resync (as after a reconnect)."""
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
                self._dispatch_log.warning("repair", "cluster pub/sub repair: %s: %s", type(e).__name__, e)
                await self.backoff(full_jitter(attempt, 0.1, 2.0))
                attempt += 1
                continue
            if not any(link.broken for link in self._links.values()):
                break
        self.metrics.redis_reconnects.inc()
        sub_log.info("redis cluster pub/sub repaired; resubscribing %d rooms", len(self._wanted - self._active))
        self._changed.set()
        if self._listener:
            self._listener.on_connected()  # whatever was missed, read back; presence written again
            for room in list(self._confirmed):
                self._notify("on_subscribed", room)  # still subscribed: catch up at once

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
        self._changed.set()
        while True:
            await self._changed.wait()
            self._changed.clear()
            for room in self._wanted - self._active:
                channels = _shard_channels(room)
                try:
                    node = cluster.get_node_from_key(channels[0])
                except RedisError:
                    continue  # slot not covered right now: the repair will wake us
                link = self._links.get(node.name)
                if link is None or link.broken:
                    continue
                self._unacked[room] = len(channels)
                for channel in channels:
                    self._pending[channel.encode()] = room
                link.rooms.add(room)
                self._active.add(room)
                try:
                    await link.pubsub.ssubscribe(*channels)  # one room, one slot: one command
                except (RedisError, OSError) as e:
                    if link.reader is not None:
                        link.reader.cancel()  # the link is broken: repaired with its rooms
                    self._dispatch_log.warning("ssubscribe", "SSUBSCRIBE on %s failed: %s", link.name, e)
            for room in self._active - self._wanted:
                channels = _shard_channels(room)
                self._unacked.pop(room, None)
                self._active.discard(room)
                self._confirmed.discard(room)
                for channel in channels:
                    self._pending.pop(channel.encode(), None)
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

    def _on_reply(self, kind: Any, channel: bytes, data: Any) -> None:
        if kind in ("message", "pmessage", "smessage"):
            self._dispatch(channel, data)
        elif kind == "ssubscribe":
            self._confirm(channel)
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

    def _dispatch(self, channel: bytes, data: Any) -> None:
        try:
            name = channel.decode()
        except UnicodeDecodeError:
            self.metrics.malformed_payloads.inc()
            return
        if name in self._probe_names:
            fut = self._probes.get(data.decode() if isinstance(data, bytes) else str(data))
            if fut is not None and not fut.done():
                fut.set_result(None)
            return
        room = keys.room_of(keys.SHARD_ROOM_CHANNEL, name)
        if room is not None:
            try:
                payload = validate_json_payload(data)
            except (ValueError, UnicodeDecodeError, RecursionError):
                self.metrics.malformed_payloads.inc()
                return
            self.metrics.relayed.inc()
            self._notify("on_room_message", room, payload)
            return
        room = keys.room_of(keys.ROOM_CHANNEL, name)
        if room is not None and room not in self._wanted:
            return  # PSUBSCRIBE hears every room's raw publishes; only ours matter
        super()._dispatch(channel, data)

    async def probe(self, publisher: Publisher, timeout: float) -> bool:
        """A token through every connection: the classic one and each master's sharded one."""
        if not self.connected:
            return False
        channels = [self.probe_channel, *self._shard_probes.values()]
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


def slot_of(name: str) -> int:
    """The cluster slot of a key or channel name (tests use it to spread rooms over shards)."""
    return int(key_slot(name.encode()))
