"""The backplane on a Redis 7 Cluster (``--redis-url redis+cluster://...``).

Same interfaces as `rrr.presence.Presence` and `rrr.subscriber.Subscriber` (the hub and the
service cannot tell), different paths underneath:

* `ClusterPresence`: no global lease set. Each of this process's rows carries its own expiry
  (`rrr.cluster_scripts`); `renew` rewrites the expiry of every room this process has a row
  in, one script per room, and each such call also drops the room's expired rows and
  announces the corrected totals. So a killed process is out of every count within TTL +
  TTL/3 (+ one count interval), without any sweep. Every script touches one room's keys.
* `ClusterSubscriber`: one sharded pub/sub connection per master, ``SSUBSCRIBE``ing each
  room's channels (count, history messages, the room's shard channel) on the master that
  owns the room's slot, plus one classic connection (on a replica when there is one) for
  ``PSUBSCRIBE rrr:room:*`` (backends' raw ``PUBLISH``, which a cluster broadcasts to every
  node: the slow path), the control channel and the probe. When one of these connections
  breaks (a master died), a ``SSUBSCRIBE`` meets ``MOVED`` or a ``sunsubscribe`` push says a
  slot moved, only that connection is repaired: the topology is read again until a master
  serves its slots (after a failover: the promoted replica) and its rooms are subscribed
  there; the others keep delivering. As after any reconnect, the hub then writes every room's
  presence again and reads back from history what it missed.

Publishing: history messages go out with ``SPUBLISH`` from the history script (the room's
shard only); with history off, `ClusterPresence.publish` sends a room's message with
``SPUBLISH`` on its shard channel.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Mapping
from typing import Any

from redis.crc import key_slot
from redis.exceptions import RedisError

from . import keys, protocol
from .cluster_scripts import ALL as CLUSTER_SCRIPTS
from .connect import make_node_redis, make_redis, parse_cluster_url
from .errors import BackplaneError
from .metrics import Metrics
from .presence import BadReply, MemberDelta, Presence, WriteResult, _count, _show, parse_state
from .protocol import CountState, validate_json_payload
from .scripts import ALL as SCRIPTS, FLAGS, NO_FLAGS
from .subscriber import Publisher, Subscriber, log as sub_log
from .supervise import cancel, full_jitter

log = logging.getLogger("rrr.cluster")

#: Room scripts in flight at once per batch (writes, renewals): well under the pool per node.
CONCURRENCY = 16


class ClusterPresence(Presence):
    """`Presence` on a Redis Cluster: per-row expiry instead of a lease, one room per script."""

    def __init__(
        self, url: str, metrics: Metrics, *, ttl: float = 15.0, timeout: float = 2.0, pool_size: int = 32,
    ) -> None:
        super().__init__(url, metrics, ttl=ttl, timeout=timeout, pool_size=max(pool_size, CONCURRENCY * 2))
        # The cluster client does not wait for a free connection (it refuses): renewals run
        # CONCURRENCY at once, so give them that many.
        self._unused = self._lease_redis
        self._lease_redis = make_redis(url, timeout, CONCURRENCY + 2)
        self._flags = True  # a cluster is Redis 7
        self._rows: dict[str, tuple[int, int]] = {}  # rooms our row is in Redis with, as last written
        self._writing: set[str] = set()

    async def close(self) -> None:
        await super().close()
        await self._unused.aclose()

    # -- the "lease": our rows' expiry -------------------------------------

    async def renew(self) -> bool:
        """Extend every row of ours; True if one was missing (a failover lost it) or had expired:
        the caller writes every local room again."""
        started = time.monotonic()
        rooms = dict(self._rows)
        if not rooms:
            await self._call("renew", self._lease_redis.ping())
            self._renewed_at = started
            return False
        replies, failure = await self._each(
            list(rooms), lambda room: self._script(
                "cluster_renew", [self.process_id, self.ttl, keys.count_channel(room)], lease=True,
                keys=_room_keys(room),
            ),
        )
        lost = False
        dropped = 0
        for room, reply in replies.items():
            if not (isinstance(reply, list) and len(reply) == 2):
                raise BadReply(f"expected {{lost, dropped}} from RENEW, got {_show(reply)}")
            dropped += _count(reply[1], "RENEW")
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
                len(adds), len(removes),
            ]
            for user, info in adds.items():
                args += [user, info]
            args += removes
            return self._script("cluster_write", args, keys=_room_keys(room))

        rooms = list(updates)
        self._writing.update(rooms)
        try:
            replies, failure = await self._each(rooms, call)
        finally:
            self._writing.difference_update(rooms)
        for room, reply in replies.items():
            if not (isinstance(reply, list) and len(reply) == 2 and reply[0] in (0, 1)):
                raise BadReply(f"expected {{lost, row}} from WRITE, got {_show(reply)}")
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
            await self._call("probe", self._redis.delete(keys.probe_key(self.process_id)))
        except BackplaneError:
            pass
        self._renewed_at = None

    async def room_state(self, room: str) -> CountState:
        return parse_state(await self._script("cluster_count", [], keys=_room_keys(room)))

    async def members(self, room: str) -> dict[str, str]:
        reply = await self._script("cluster_members", [], keys=_room_keys(room))
        if not isinstance(reply, list) or len(reply) % 2:
            raise BadReply(f"expected user, info pairs from MEMBERS, got {_show(reply)}")
        try:
            out = {reply[i].decode(): reply[i + 1].decode() for i in range(0, len(reply), 2)}
            for info in out.values():
                validate_json_payload(info)
        except (AttributeError, UnicodeDecodeError, ValueError):
            raise BadReply("a member in Redis is not a string of JSON") from None
        return out

    # -- plain commands --------------------------------------------------

    async def publish(self, channel: str, data: str) -> int:
        """A room's live message goes to its shard channel (``SPUBLISH``); our own hash-tagged
        channels likewise; anything else (control, probe) is classic ``PUBLISH``."""
        room = keys.room_of_room_channel(channel)
        if room is not None and protocol.is_valid_slug(room):
            channel = keys.shard_room_channel(room)
        if keys.is_shard_channel(channel):
            return _count(await self._call("publish", self._redis.spublish(channel, data)), "SPUBLISH")
        return _count(await self._call("publish", self._redis.publish(channel, data)), "PUBLISH")

    async def ping(self) -> bool:
        """Every master answers."""
        try:
            reply = await self._call("ping", self._redis.ping(target_nodes=self._redis.PRIMARIES))
        except BackplaneError:
            return False
        return reply is True or (isinstance(reply, dict) and all(v is True for v in reply.values()))

    async def probe_write(self) -> None:
        await self._call(
            "probe", self._redis.set(keys.probe_key(self.process_id), str(time.time()), ex=max(60, int(3 * self.ttl))),
        )

    # -- plumbing --------------------------------------------------------

    async def _script(self, name: str, args: list[Any], lease: bool = False, keys: list[str] | None = None) -> Any:
        client = self._lease_redis if lease else self._redis
        if not self._scripts:
            texts = {n: (FLAGS if n not in NO_FLAGS else "") + text for n, text in SCRIPTS.items()}
            texts.update(CLUSTER_SCRIPTS)
            self._scripts = {n: self._redis.register_script(text) for n, text in texts.items()}
        if not keys:
            raise BackplaneError(f"script {name} needs its keys on a cluster")
        return await self._call(name, self._scripts[name](keys=keys, args=args, client=client))

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


def _room_keys(room: str) -> list[str]:
    return [keys.presence(room), keys.members(room)]


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
        room = keys.room_of_shard_room_channel(name)
        if room is not None:
            try:
                payload = validate_json_payload(data)
            except (ValueError, UnicodeDecodeError, RecursionError):
                self.metrics.malformed_payloads.inc()
                return
            self.metrics.relayed.inc()
            self._notify("on_room_message", room, payload)
            return
        room = keys.room_of_room_channel(name)
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
