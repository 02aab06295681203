"""The events in Redis, as the sender sees them (`rrr.backplane.EventStore`).

The presence scripts record each room's events in the room's own stream (``events.lua``: exact,
atomic with the change that causes them) and mark the room due in the sender's sorted set. The
one process holding the sender's lease moves them from there, room by room and in order, to the
outbox (``outbox.lua``): a vacated waits there for the vacate delay, and goes with a following
occupied if one came before then (a reload). Every URL reads the outbox from its own cursor, so
each has its own queue, order and retries; the outbox keeps only what some URL still needs, and at
most ``backlog`` events (the oldest go).

On one Redis a move is one script for many rooms. On a cluster the room's stream and the outbox
are in different slots: the events are taken (the room's slot), pushed (the sender's slot, which
remembers the last id it pushed per room, so a sender that died before the next step pushes
nothing twice) and acknowledged (the room's slot), then the room's mark is tidied. A room
recorded by a process that died before it could mark it due (or register it) is found again by
`repair` (a SCAN of each master for room streams and rooms reported occupied, now and then).

On a cluster an event leaves its room's shard only once a replica has it: the take runs on a
connection of its own to the room's master, followed there by ``WAIT 1`` (which waits for that
connection's writes, and the take writes). So a master that dies can never have sent an event its
replica lacks: a failover that loses the last writes loses the change and its events together,
and the process that made the change writes its row again (its renewal finds it missing), which
records them again. A master without a connected replica has nothing to fail over to: its events
move at once.

Its own Redis clients: a slow sender never takes a connection the core needs, and the doorbell
(``XREAD BLOCK``) holds one of its own.
"""

from __future__ import annotations

import asyncio
import secrets
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from redis.exceptions import ResponseError

from ..errors import BackplaneError
from ..metrics import Metrics
from . import EventSettings, Moved, StoredEvent, keys, scripts
from .calls import BadReply, Calls, event_args, ms, show
from .clients import is_cluster_url, make_redis, renew_connections

log = logging.getLogger("rrr.events")

#: Rooms per move script on one Redis, and events per room per move.
ROOMS_PER_MOVE = 64
EVENTS_PER_ROOM = 200
#: Rooms moved at once on a cluster (each is three round trips).
CONCURRENCY = 16
#: Milliseconds a take waits for a replica (``WAIT``); a room whose events no replica has yet is
#: looked at again after `UNREPLICATED_RETRY` s. Seconds the replica count of a master is trusted.
WAIT_MS = 100
UNREPLICATED_RETRY = 0.1
REPLICAS_FOR = 5.0


class RedisEventStore:
    def __init__(
        self, url: str, metrics: Metrics, process_id: str, settings: EventSettings, *, timeout: float = 2.0,
    ) -> None:
        self.metrics = metrics
        self.process_id = process_id
        self.settings = settings
        self.cluster = is_cluster_url(url)
        self.timeout = timeout
        self._redis = make_redis(url, timeout, CONCURRENCY + 4)
        # The doorbell's blocking read waits up to ``_block`` on a connection of its own.
        self._block = max(0.05, min(1.0, timeout / 2))
        self._bell_redis = make_redis(url, timeout, 1)
        # From the start: the bell's one entry wakes the first read at once, harmlessly.
        self._bell_id = b"0-0"
        # Ids of the events this process puts in the outbox itself (`direct`): unique across processes.
        self._nonce = secrets.token_hex(6)
        self._direct = 0
        self._calls = Calls(metrics, self._reset)
        self._scripts: dict[str, Any] = {}
        # A cluster's takes: a client per master (``WAIT`` must follow the take on its connection),
        # and how many replicas each master has connected (as of when).
        self._url = url
        self._nodes: dict[str, Any] = {}
        self._replicas: dict[str, tuple[float, int]] = {}

    async def close(self) -> None:
        for client in (self._redis, self._bell_redis, *self._nodes.values()):
            await client.aclose()

    # -- the lease and the status every process reads ---------------------------------------

    async def lease(self, ttl: float, take: bool, error: str | None) -> tuple[bool, int, str]:
        args: list[Any] = [self.process_id, ms(ttl), int(take)]
        if error is not None:
            args.append(error)
        reply = await self._script("ev_lease", [keys.SENDER, keys.SENDER_STATUS, keys.OUTBOX], args)
        if not (isinstance(reply, list) and len(reply) == 3 and reply[0] in (0, 1)):
            raise BadReply(f"expected {{held, backlog, error}} from LEASE, got {show(reply)}")
        try:
            backlog = int(reply[1])
            error = reply[2].decode() if isinstance(reply[2], bytes) else str(reply[2])
        except (TypeError, ValueError, UnicodeDecodeError):
            raise BadReply(f"expected a backlog and an error from LEASE, got {show(reply)}") from None
        return bool(reply[0]), backlog, error

    async def release(self) -> None:
        await self._script("ev_release", [keys.SENDER], [self.process_id])

    # -- moving events to the outbox ------------------------------------------------------------

    async def due(self, limit: int) -> tuple[list[str], float | None]:
        reply = await self._script("ev_due", [keys.EVENTS_DUE], [limit])
        if not (isinstance(reply, list) and len(reply) >= 2 and all(isinstance(x, int) for x in reply[:2])):
            raise BadReply(f"expected {{now, next, rooms...}} from DUE, got {show(reply)}")
        now, next_due = reply[0], reply[1]
        rooms = [_text(r) for r in reply[2:]]
        return rooms, (max(0, next_due - now) / 1000 if next_due >= 0 else None)

    async def move(self, rooms: list[str], names: frozenset[str]) -> Moved:
        moved = Moved()
        wanted = "," + ",".join(sorted(names)) + ","
        if not self.cluster:
            for i in range(0, len(rooms), ROOMS_PER_MOVE):
                chunk = rooms[i : i + ROOMS_PER_MOVE]
                room_keys: list[str] = []
                for room in chunk:
                    room_keys += [keys.events(room), keys.reported(room)]
                reply = await self._script(
                    "ev_move", [keys.OUTBOX, keys.EVENTS_DUE, *room_keys],
                    [EVENTS_PER_ROOM, ms(self.settings.vacate_delay), self.settings.backlog, wanted, *chunk],
                )
                self._moved(reply, moved)
            return moved
        sem = asyncio.Semaphore(CONCURRENCY)

        async def one(room: str) -> None:
            async with sem:
                await self._move_cluster(room, wanted, moved)

        results = await asyncio.gather(*(one(room) for room in rooms), return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return moved

    async def _move_cluster(self, room: str, wanted: str, moved: Moved) -> None:
        delay = ms(self.settings.vacate_delay)
        taken = await self._take(room, delay)
        if taken is None:  # no replica has them yet: not now
            await self._note_due(room, UNREPLICATED_RETRY)
            return
        if not (isinstance(taken, list) and len(taken) >= 2 and isinstance(taken[0], int)):
            raise BadReply(f"expected {{dropped, rest, entries...}} from TAKE, got {show(taken)}")
        moved.dropped += taken[0]
        entries = [_entry(e) for e in taken[2:]]
        ids: list[str] = []
        if entries:
            args: list[Any] = [room, self.settings.backlog, wanted]
            for sid, flat in entries:
                args += [sid, *flat]
                ids.append(sid)
            pushed = await self._script("ev_push", [keys.OUTBOX, keys.EVENTS_DUE, keys.MOVED], args)
            self._moved(pushed, moved, counts=1)
        rest = await self._script("ev_ack", [keys.events(room), keys.reported(room)], [delay, *ids])
        if not isinstance(rest, int):
            raise BadReply(f"expected a time from ACK, got {show(rest)}")
        note: list[Any] = [self.process_id, 0, 0, 0, int(rest >= 0), int(bool(ids))]
        if rest >= 0:
            note += [room, rest]
        if ids:
            note += [room, ids[-1]]
        if rest >= 0 or ids:
            await self._script("ev_note", [
                keys.EVENTS_DUE, keys.EVENTS_BELL, keys.MOVED, keys.EVENT_PROCS, keys.event_proc_rooms(self.process_id),
            ], note)

    async def _take(self, room: str, delay: int) -> Any:
        """``ev_take`` on the room's master, then ``WAIT 1`` on the same connection: the reply, or
        None while that master has a replica connected that does not have the events yet."""
        from .clients import make_node_redis, parse_cluster_url

        await self._load()
        events_key = keys.events(room)
        node = self._redis.get_node_from_key(events_key)
        client = self._nodes.get(node.name)
        if client is None:
            client = self._nodes[node.name] = make_node_redis(parse_cluster_url(self._url), node.host, node.port,
                                                              self.timeout)
        keep = ms(self.settings.retry_for + 3600)

        async def run() -> list[Any]:
            async with client.pipeline(transaction=False) as pipe:
                await self._scripts["ev_take"](
                    keys=[events_key, keys.reported(room)], args=[EVENTS_PER_ROOM, delay, keep], client=pipe,
                )
                pipe.execute_command("WAIT", 1, WAIT_MS)
                return list(await pipe.execute())

        try:
            taken, acked = await self._calls.run("ev_take", run())
        except BackplaneError:
            # The master died, or the slot moved (a failover): the cluster client's own call to the
            # slot makes it learn the topology again, so the next take goes where the slot is now.
            try:
                await self._calls.run("exists", self._redis.exists(events_key))
            except BackplaneError:
                pass
            raise
        if isinstance(acked, int) and acked >= 1:
            return taken
        return taken if await self._replica_count(node.name, client) == 0 else None

    async def _replica_count(self, name: str, client: Any) -> int:
        now = asyncio.get_running_loop().time()
        known = self._replicas.get(name)
        if known is not None and now - known[0] < REPLICAS_FOR:
            return known[1]
        role = await self._calls.run("role", client.execute_command("ROLE"))
        count = len(role[2]) if isinstance(role, (list, tuple)) and len(role) == 3 and isinstance(role[2], list) else 0
        self._replicas[name] = (now, count)
        return count

    async def _note_due(self, room: str, after: float) -> None:
        """Mark ``room`` due again in ``after`` seconds (the sender's clock is Redis's: the due set's
        own TIME, in the script)."""
        await self._script("ev_later", [keys.EVENTS_DUE], [room, ms(after)])

    @staticmethod
    def _moved(reply: Any, moved: Moved, counts: int = 2) -> None:
        """A move's reply: ``counts`` drop counts, then the names of the events moved."""
        if not (isinstance(reply, list) and len(reply) >= counts and all(isinstance(x, int) for x in reply[:counts])):
            raise BadReply(f"expected drop counts and names from a move, got {show(reply)}")
        moved.dropped += sum(reply[:counts])
        moved.names += [_text(n) for n in reply[counts:]]

    async def repair(self) -> int:
        """On a cluster, what a process that died between a room's script and its note to the
        sender's slot left behind: each master is SCANned for room streams (events the due set does
        not know: marked due now) and rooms reported occupied (which may not be in its registry of
        rooms: each is swept, ``cluster_sweep``, so a room whose rows all expired reports it). Returns
        how many rooms it looked at."""
        if not self.cluster:
            return 0
        streams = await self._scan(keys.events("")[:-2] + "*}", keys.EVENTS_STREAM)
        occupied = await self._scan(keys.reported("")[:-2] + "*}", keys.REPORTED_STATE)
        due: dict[str, int] = {room: 0 for room in streams}
        sem = asyncio.Semaphore(CONCURRENCY)

        async def sweep(room: str) -> None:
            async with sem:
                reply = await self._script("cluster_sweep", keys.presence_write_keys(room),
                                           ["", keys.count_channel(room), *event_args(self.settings)])
            if not (isinstance(reply, list) and len(reply) == 2 and isinstance(reply[1], int)):
                raise BadReply(f"expected {{until, due}} from SWEEP, got {show(reply)}")
            if reply[1] >= 0:
                due[room] = min(reply[1], due.get(room, reply[1]))

        results = await asyncio.gather(*(sweep(room) for room in occupied), return_exceptions=True)
        if due:
            note: list[Any] = [self.process_id, 0, 0, 0, len(due), 0]
            for room, at in due.items():
                note += [room, at]
            await self._script("ev_note", [
                keys.EVENTS_DUE, keys.EVENTS_BELL, keys.MOVED, keys.EVENT_PROCS, keys.event_proc_rooms(self.process_id),
            ], note)
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return len(set(streams) | set(occupied))

    async def _scan(self, pattern: str, named: keys.Named) -> list[str]:
        """The rooms of every master's keys matching ``pattern`` (read as ``named``)."""
        found: list[str] = []
        for node in self._redis.get_primaries():
            cursor = 0
            while True:
                reply = await self._calls.run("scan", self._redis.scan(cursor, match=pattern, count=1000,
                                                                       target_nodes=node))
                if not (isinstance(reply, (list, tuple)) and len(reply) == 2):
                    raise BadReply(f"expected a cursor and keys from SCAN, got {show(reply)}")
                position = reply[0]
                if isinstance(position, dict):  # the cluster client gives each node's cursor
                    position = next(iter(position.values()), 0)
                cursor = int(position)
                for key in reply[1]:
                    room = keys.room_of(named, _text(key))
                    if room is not None:
                        found.append(room)
                if cursor == 0:
                    break
        return found

    async def ring(self, timeout: float) -> None:
        """The doorbell: a blocking read on its own connection, at most ``timeout`` (and at most half
        the Redis timeout, so the read never looks like a stalled Redis)."""
        block = ms(max(0.001, min(timeout, self._block)))
        reply = await self._calls.run("bell", self._bell_redis.xread({keys.EVENTS_BELL: self._bell_id}, block=block))
        if reply:
            try:
                entries = reply[0][1] if isinstance(reply, list) else next(iter(reply.values()))[0]
                self._bell_id = entries[-1][0]
            except (IndexError, KeyError, TypeError, StopIteration):
                raise BadReply(f"expected stream entries from the doorbell, got {show(reply)}") from None

    # -- the outbox, per URL --------------------------------------------------------------------

    async def read(self, url_key: str, limit: int) -> list[StoredEvent]:
        reply = await self._script("ev_read", [keys.OUTBOX, keys.CURSORS], [url_key, limit])
        if not isinstance(reply, list) or not reply:
            raise BadReply(f"expected a cursor and entries from READ, got {show(reply)}")
        out = []
        for raw in reply[1:]:
            sid, flat = _entry(raw)
            f = dict(zip(flat[::2], flat[1::2]))
            try:
                out.append(StoredEvent(
                    sid=sid, name=f["n"], room=f["c"], user=f.get("u", ""), at_ms=int(f["a"]), id=f["i"],
                    stored_ms=int(f["s"]), event=f.get("e", ""), data=f.get("d", ""), socket_id=f.get("x", ""),
                ))
            except (KeyError, ValueError):
                raise BadReply(f"expected an event in the outbox, got {show(flat)}") from None
        return out

    async def direct(self, name: str, room: str, fields: Mapping[str, str]) -> None:
        self._direct += 1
        flat = ["n", name, "c", room]
        for k, v in fields.items():
            flat += [k, v]
        await self._script("ev_direct", [keys.OUTBOX], [self.settings.backlog, f"{self._nonce}-{self._direct}", *flat])

    async def acked(self, url_key: str, sid: str, url_keys: list[str]) -> int:
        reply = await self._script("ev_acked", [keys.OUTBOX, keys.CURSORS], [url_key, sid, *url_keys])
        if not isinstance(reply, int):
            raise BadReply(f"expected the outbox's length from ACKED, got {show(reply)}")
        return reply

    # -- plumbing --------------------------------------------------------------------------------

    async def _script(self, name: str, script_keys: list[str], args: Sequence[Any]) -> Any:
        await self._load()
        return await self._calls.run(name, self._scripts[name](keys=script_keys, args=list(args), client=self._redis))

    async def _load(self) -> None:
        if not self._scripts:
            flags = True if self.cluster else await self._flags_supported()
            texts = scripts.sender(flags)
            if self.cluster:
                texts["cluster_sweep"] = scripts.CLUSTER["cluster_sweep"]
            self._scripts = {n: self._redis.register_script(text) for n, text in texts.items()}

    async def _flags_supported(self) -> bool:
        try:
            await self._calls.run("script_load", self._redis.script_load(scripts.FLAGS + "return 1"))
        except BackplaneError as e:
            if isinstance(e.__cause__, ResponseError):
                return False
            raise
        return True

    async def _reset(self) -> None:
        """A parser that choked: drop every connection (each in use once it is released)."""
        for client in (self._redis, self._bell_redis):
            try:
                await renew_connections(client)
            except Exception:  # noqa: BLE001 - already broken; the next call reconnects
                pass


def _text(x: Any) -> str:
    if isinstance(x, bytes):
        try:
            return x.decode()
        except UnicodeDecodeError:
            raise BadReply(f"expected text, got {show(x)}") from None
    if isinstance(x, str):
        return x
    raise BadReply(f"expected text, got {show(x)}")


def _entry(raw: Any) -> tuple[str, list[str]]:
    """A stream entry ``[id, [field, value, ...]]`` as text."""
    if not (isinstance(raw, (list, tuple)) and len(raw) == 2 and isinstance(raw[1], (list, tuple))
            and len(raw[1]) % 2 == 0):
        raise BadReply(f"expected a stream entry, got {show(raw)}")
    return _text(raw[0]), [_text(x) for x in raw[1]]
