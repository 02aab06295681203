"""A faithful single-process backplane: the Protocols of `rrr.backplane` (Presence, PresenceReads,
Subscriber, History) kept in memory, for the core's fast unit tests (tests/test_unit_*.py).

`MemoryRedis` plays the one Redis that several processes share: `MemoryRedis.backplane` gives a
process (a `rrr.service.Service`) its presence, subscriber and history on it, as
`rrr.backplane.connect` does on a real one. What Redis does in Lua is done here the same way, step
for step, and says which script it mirrors (``rrr/backplane/lua/*.lua``):

* leases in ``rrr:procs`` with expiry on an injectable clock (`ManualClock`), rows ``"<c> <t>"`` per
  process per room, member fields ``<pid>|<user>``, totals that count only live leases, the sweep of
  expired leases with announcements, and one global version sequence (``rrr:seq``);
* a room's history: its epoch, offsets from 1, the stream trimmed exactly to its size, expiries,
  and the ``seen`` rule (a top that went back, or another message at it, starts a new epoch,
  keeping the top and the stream);
* pub/sub: each process's connection (`Link`) subscribes channels by name (`rrr.backplane.keys`);
  Redis acknowledges each one on that connection, in order, and delivers what is published to the
  connections subscribed at that moment, in publish order, with the payloads the scripts publish
  (what a call published arrives after the caller read its reply, as on a real Redis).
  The subscriber reuses `rrr.backplane.pubsub`'s `Follows` and `Dispatch` (what both real
  subscribers share), so confirmations and what a message means are the real ones. Nothing is
  delivered inside a call: every event reaches the core from the connection's own task.

Faults a unit test needs, each a knob on `MemoryRedis`: `fail` (a call refused, or one that ran
but whose reply was lost: `OutcomeUnknown`), `hold` (a call waits before it runs, or its reply
waits after, until its `Gate` opens: a slow read, a write in flight; ``hold("subscribe")`` holds
every pub/sub connection's SUBSCRIBE and UNSUBSCRIBE, so Redis confirms nothing meanwhile), `cut`
(pub/sub connections broken; what they had not read is lost), ``pubsub_refused`` (new pub/sub
connections fail while commands work), `go_down`/`come_back`, `restart` (empty, like a Redis without
persistence: ``rrr:seq`` begins again), `lose` (messages no connection gets), ``oom`` (at maxmemory:
what has no ``allow-oom`` is refused). `ManualClock.advance` moves Redis's clock (leases, history and
revocations expire); the core's own timers run on the event loop.

Only the classic flavour (one Redis) is mirrored; the cluster's per-row expiry is not.

Every behaviour the unit tests prove is also tested end to end against a real redis-server (the
other test files); tests/test_unit_parity.py runs one scenario against both.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from rrr.backplane import CHUNK, Backplane, MemberDelta, Publisher, RoomReport, WriteResult, keys
from rrr.backplane.calls import parse_members, parse_state
from rrr.backplane.history import Published, Read, Seen, cache_ms, digest, meta_ttl, new_epoch
from rrr.backplane.pubsub import Dispatch, Following, Follows
from rrr.errors import BackplaneError, OutcomeUnknown
from rrr.metrics import Metrics
from rrr.protocol import MAX_MESSAGE_SIZE, CountState
from rrr.supervise import cancel

T = TypeVar("T")

#: The control channel's name as the subscriber sees it on the wire.
_CONTROL = keys.CONTROL_CHANNEL.encode()


def _retrieve(fut: asyncio.Future[Any]) -> None:
    """A call whose caller was cancelled: its outcome is nobody's, and no error to log."""
    if not fut.cancelled():
        fut.exception()


class ManualClock:
    """Redis's ``TIME`` (unix seconds), moved only by `advance`: leases, history and revocations
    expire when a test says so, never because a machine was slow."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start

    def __call__(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds


class Gate:
    """Where held calls wait: closed until `open` (then everything held goes on, in order)."""

    def __init__(self) -> None:
        self._open = asyncio.Event()
        self.waiting = 0  # calls held here now
        self.passed = 0  # calls that waited here and went on

    @property
    def closed(self) -> bool:
        return not self._open.is_set()

    def open(self) -> None:
        self._open.set()

    async def wait(self) -> None:
        self.waiting += 1
        try:
            await self._open.wait()
        finally:
            self.waiting -= 1
        self.passed += 1


class OutOfMemory(BackplaneError):
    """Redis refused a write at maxmemory (redis-py's OutOfMemoryError)."""


@dataclass
class Fault:
    times: int
    landed: bool  # the call ran; its reply was lost (a timeout): OutcomeUnknown


@dataclass
class Meta:
    """``rrr:meta:{room}``: epoch ``e``, top offset ``o``, the size ``n`` and TTL ``t`` (ms) it is kept at."""

    e: str | None = None
    o: int = 0
    n: str | None = None
    t: str | None = None
    expires: float | None = None


@dataclass
class Stream:
    """``rrr:history:{room}``: entries ``(offset, data)``, oldest first."""

    entries: list[tuple[int, str]] = field(default_factory=list)
    expires: float | None = None


@dataclass(frozen=True)
class WriteCall:
    """One SET_PRESENCE call as Redis received it (`MemoryRedis.writes`)."""

    pid: str
    rows: dict[str, tuple[int, int]]
    members: dict[str, MemberDelta]


class MemoryRedis:
    """The shared "Redis": every process's presence, history and pub/sub, on one `clock`."""

    def __init__(self, clock: ManualClock | None = None) -> None:
        self.clock = clock or ManualClock()
        self.is_down = False
        self.pubsub_refused = False  # new pub/sub connections fail (commands still work)
        self.oom = False  # at maxmemory: writes without allow-oom are refused (scripts.NO_FLAGS)
        self._faults: dict[str, list[Fault]] = {}
        self._holds: dict[str, Gate] = {}
        self._links: dict[Link, None] = {}
        self._subscribed: dict[str, dict[Link, None]] = {}
        self._lose: dict[str, int] = {}
        self._unsent: deque[Outgoing] = deque()  # calls that ran, in order, whose messages wait for their reply
        self._publishing: Outgoing | None = None  # the call running now
        self._pids = itertools.count(1)
        #: Every call by op name (the labels of ``rrr_redis_errors_total``), and each SET_PRESENCE.
        self.calls: Counter[str] = Counter()
        self.writes: list[WriteCall] = []
        self._flush()

    def _flush(self) -> None:
        self.procs: dict[str, float] = {}  # rrr:procs: pid -> lease expiry
        self.seq = 0  # rrr:seq
        self.presence: dict[str, dict[str, str]] = {}  # rrr:presence:{room}: pid -> "c n", @v, @u
        self.member_fields: dict[str, dict[str, str]] = {}  # rrr:members:{room}: "pid|user" -> info
        self.proc_rooms: dict[str, dict[str, None]] = {}  # rrr:proc:<pid>:rooms
        self.probes: dict[str, str] = {}  # rrr:probe
        self.revocations: dict[str, tuple[str, float]] = {}  # rrr:revoked:<user>: (value, expiry)
        self.metas: dict[str, Meta] = {}
        self.streams: dict[str, Stream] = {}
        self.caches: dict[str, tuple[str, float]] = {}  # a cache channel's last message, until when
        self.config: dict[str, str] = {}  # rrr:config:history

    # -- a process's backplane ----------------------------------------------------------------

    def backplane(
        self, metrics: Metrics | None = None, *, ttl: float = 15.0, history_size: int = 100,
        history_ttl: float = 300.0, max_message: int = MAX_MESSAGE_SIZE,
    ) -> Backplane:
        """What `rrr.backplane.connect` returns for one process, on this Redis."""
        metrics = metrics or Metrics()
        presence = MemoryPresence(self, metrics, ttl=ttl)
        history = MemoryHistory(self, presence, history_size, history_ttl, max_message=max_message)
        return Backplane(presence, MemorySubscriber(self, metrics, presence.process_id), history)

    def new_process_id(self) -> str:
        return f"mem:{next(self._pids)}:{secrets.token_hex(4)}"

    # -- faults ---------------------------------------------------------------------------------

    def fail(self, op: str, times: int = 1, *, landed: bool = False) -> None:
        """The next ``times`` calls of ``op`` fail: refused (nothing done), or ``landed`` (done, but
        the reply never came: `OutcomeUnknown`). ``op`` is the call's name in
        ``rrr_redis_errors_total``: a script's name (``set_presence``, ``renew``, ``sweep``,
        ``leave``, ``count``, ``members``, ``history_publish``, ``history_read``), ``publish``,
        ``revoke``, ``revoked``, ``ping``, ``probe``, ``hset``."""
        self._faults.setdefault(op, []).append(Fault(times, landed))

    def hold(self, op: str) -> Gate:
        """Calls of ``op`` wait until the returned gate opens before they run (``<op>:reply``: they
        run at once, and their reply waits); ``subscribe``: every pub/sub connection's SUBSCRIBE and
        UNSUBSCRIBE waits, so Redis confirms nothing meanwhile (a slow pub/sub path)."""
        gate = self._holds.get(op)
        if gate is None or not gate.closed:
            gate = self._holds[op] = Gate()
        return gate

    def release_all(self) -> None:
        for gate in self._holds.values():
            gate.open()

    def lose(self, channel: str, n: int = 1) -> None:
        """The next ``n`` messages published on ``channel`` reach no connection (they are still
        stored, when a script stores them)."""
        self._lose[channel] = self._lose.get(channel, 0) + n

    def cut(self, pid: str | None = None) -> None:
        """Break the pub/sub connections (of process ``pid``, or all): what they had not read is lost."""
        for link in list(self._links):
            if pid is None or link.pid == pid:
                link.close()

    def go_down(self) -> None:
        """Redis stops answering: every call fails, every pub/sub connection breaks."""
        self.is_down = True
        self.cut()

    def come_back(self, *, empty: bool = False) -> None:
        self.is_down = False
        if empty:
            self._flush()

    def restart(self) -> None:
        """Redis restarted without persistence: connections broken, everything gone (``rrr:seq`` too)."""
        self.cut()
        self._flush()

    async def _call(self, op: str, run: Callable[[], T]) -> T:
        """One command or script: sent (a yield), run in Redis at once and atomically, as Lua runs,
        and answered (another yield), so no caller is ever answered inside its own call. Once sent
        it runs even if its caller is cancelled meanwhile (a command on the wire is not taken back).

        What it published reaches the pub/sub connections once its caller has read the reply, as a
        real Redis on the same machine behaves: a new socket, sent its first count once its write's
        reply is read, never had that write's announcement first in 20 tries on a real redis-server.
        Unless its reply is held (``<op>:reply``): then the messages go out meanwhile."""
        self.calls[op] += 1
        await asyncio.sleep(0)
        if self.is_down:
            raise BackplaneError(f"redis {op} failed: Connection refused (memory Redis is down)")
        out = Outgoing(self)
        sent = asyncio.ensure_future(self._execute(op, run, out))
        sent.add_done_callback(_retrieve)
        loop = asyncio.get_running_loop()
        try:
            result = await asyncio.shield(sent)
        except asyncio.CancelledError:
            sent.add_done_callback(lambda _: out.deliver())
            raise
        except BaseException:
            loop.call_soon(out.deliver)  # a call that ran but whose reply was lost published anyway
            raise
        loop.call_soon(out.deliver)
        return result

    async def _execute(self, op: str, run: Callable[[], T], out: Outgoing) -> T:
        gate = self._holds.get(op)
        if gate is not None and gate.closed:
            await gate.wait()
        if self.is_down:
            raise BackplaneError(f"redis {op} failed: Connection reset (memory Redis went down)")
        fault = None
        faults = self._faults.get(op)
        if faults:
            fault = faults[0]
            fault.times -= 1
            if fault.times <= 0:
                faults.pop(0)
        if fault is not None and not fault.landed:
            raise BackplaneError(f"redis {op} failed: injected fault")
        self._unsent.append(out)
        self._publishing = out
        try:
            result = run()
        finally:
            self._publishing = None
        await asyncio.sleep(0)
        reply = self._holds.get(op + ":reply")
        if reply is not None and reply.closed:
            out.deliver()
            await reply.wait()
        if fault is not None:
            raise OutcomeUnknown(f"redis {op} timed out: injected fault")
        return result

    # -- pub/sub --------------------------------------------------------------------------------

    def connect_pubsub(self, pid: str) -> Link:
        if self.is_down or self.pubsub_refused:
            raise ConnectionError("memory Redis refused the pub/sub connection")
        link = Link(self, pid)
        self._links[link] = None
        return link

    def _unlink(self, link: Link) -> None:
        self._links.pop(link, None)
        for channel in link.channels:
            subs = self._subscribed.get(channel)
            if subs is not None:
                subs.pop(link, None)
                if not subs:
                    del self._subscribed[channel]
        link.channels.clear()

    def publish(self, channel: str, data: str) -> int:
        """PUBLISH (from a script, a process, or a backend): every connection subscribed now gets
        it, after everything published before it. Returns how many received it."""
        subs = list(self._subscribed.get(channel, ()))
        lost = self._lose.get(channel, 0)
        if lost:
            self._lose[channel] = lost - 1
            return len(subs)
        if self._publishing is not None:
            self._publishing.messages.append((subs, channel, data))  # goes out with the call's reply
            return len(subs)
        self._deliver_until(None)
        for link in subs:
            link.deliver(channel, data)
        return len(subs)

    def _deliver_until(self, last: Outgoing | None) -> None:
        """Deliver what calls published, in the order they ran, up to ``last`` (None: all)."""
        while self._unsent:
            out = self._unsent.popleft()
            for subs, channel, data in out.messages:
                for link in subs:
                    link.deliver(channel, data)
            out.messages.clear()
            if out is last:
                return

    def subscribers(self, channel: str) -> int:
        """PUBSUB NUMSUB of one channel."""
        return len(self._subscribed.get(channel, ()))

    def follows(self, pid: str, room: str) -> bool:
        """Whether process ``pid``'s connection is subscribed to every channel of ``room``."""
        return any(link.pid == pid and set(keys.room_channels(room)) <= link.channels for link in self._links)

    # -- lease.lua: clock, recount, announce ------------------------------------------------------

    def _alive(self, pid: str, t: float, cache: dict[str, bool]) -> bool:
        ok = cache.get(pid)
        if ok is None:
            exp = self.procs.get(pid)
            ok = cache[pid] = exp is not None and exp > t
        return ok

    def _live_members(self, room: str, t: float, cache: dict[str, bool]) -> tuple[dict[str, str], int]:
        out: dict[str, str] = {}
        n = 0
        for f, info in self.member_fields.get(room, {}).items():
            bar = f.find("|")
            if bar >= 0 and self._alive(f[:bar], t, cache):
                user = f[bar + 1:]
                if user not in out:
                    n += 1
                out[user] = info
        return out, n

    def _recount(self, room: str, t: float) -> tuple[int, int, str | None, int, int, int]:
        c = n = v = owners = 0
        u: str | None = None
        cache: dict[str, bool] = {}
        for f, val in self.presence.get(room, {}).items():
            if f == "@u":
                u = val
            elif f == "@v":
                v = int(val)
            else:
                owners += 1
                if self._alive(f, t, cache):
                    a, _, b = val.partition(" ")
                    c += int(a)
                    n += int(b)
        _, users = self._live_members(room, t, cache)
        return c, n, u, v, owners, users

    def _changed(self, room: str, t: float) -> list[Any]:
        self.seq += 1
        v = self.seq
        u = "%.6f" % t
        self.presence.setdefault(room, {}).update({"@v": str(v), "@u": u})
        c, n, _, _, owners, users = self._recount(room, t)
        if owners == 0:
            del self.presence[room]
        self.publish(keys.count_channel(room), '{"c":%d,"t":%d,"u":%s,"v":%d,"n":%d}' % (c, n, u, v, users))
        return [c, n, u.encode(), v, users]

    def _drop_member_fields(self, room: str, pid: str) -> int:
        fields = self.member_fields.get(room)
        if not fields:
            return 0
        prefix = pid + "|"
        gone = [f for f in fields if f.startswith(prefix)]
        for f in gone:
            del fields[f]
        if not fields:
            del self.member_fields[room]
        return len(gone)

    def _hdel(self, room: str, pid: str) -> bool:
        row = self.presence.get(room)
        if row is None or pid not in row:
            return False
        del row[pid]
        if not row:
            del self.presence[room]
        return True

    def _drop_process(self, pid: str, t: float) -> int:
        rooms = list(self.proc_rooms.pop(pid, {}))
        for room in rooms:
            gone = self._drop_member_fields(room, pid)
            if self._hdel(room, pid) or gone > 0:
                self._changed(room, t)
        self.probes.pop(pid, None)
        return len(rooms)

    # -- rows.lua ---------------------------------------------------------------------------------

    def _apply_members(
        self, room: str, pid: str, adds: Mapping[str, str], removes: Iterable[str], replace: bool = False,
    ) -> bool:
        dirty = False
        for user, info in adds.items():
            f = pid + "|" + user
            fields = self.member_fields.setdefault(room, {})
            if fields.get(f) != info:
                fields[f] = info
                dirty = True
        for user in removes:
            fields = self.member_fields.get(room, {})
            if fields.pop(pid + "|" + user, None) is not None:
                dirty = True
            if not fields:
                self.member_fields.pop(room, None)
        if replace:
            fields = self.member_fields.get(room, {})
            keep = {pid + "|" + user for user in adds}
            for f in [f for f in fields if f.startswith(pid + "|") and f not in keep]:
                del fields[f]
                dirty = True
            if not fields:
                self.member_fields.pop(room, None)
        return dirty

    def _put_row(self, room: str, pid: str, cur: str | None, c: int, n: int) -> bool:
        if c == 0 and n == 0:
            dirty = self._drop_member_fields(room, pid) > 0
            if cur is not None:
                self._hdel(room, pid)
                dirty = True
            return dirty
        val = f"{c} {n}"
        if cur != val:
            self.presence.setdefault(room, {})[pid] = val
        return cur != val

    # -- the presence scripts ---------------------------------------------------------------------

    def set_presence(
        self, pid: str, ttl: float, rows: Mapping[str, tuple[int, int]], members: Mapping[str, MemberDelta],
    ) -> list[Any]:
        """set_presence.lua: ``[lease ok 0/1, {c, t, u, v, users} per room]``."""
        self.writes.append(WriteCall(pid, dict(rows), {r: (dict(a), list(d), x) for r, (a, d, x) in members.items()}))
        t = self.clock()
        exp = self.procs.get(pid)
        ok = exp is not None and exp > t
        if not ok:
            if exp is not None:
                del self.procs[pid]
                self._drop_process(pid, t)
            self.procs[pid] = t + ttl
        out: list[Any] = [1 if ok else 0]
        for room, (c, n) in rows.items():
            adds, removes, replace = members.get(room, ({}, [], False))
            dirty = self._apply_members(room, pid, adds, removes, replace)
            cur = self.presence.get(room, {}).get(pid)
            if c == 0 and n == 0:
                rooms = self.proc_rooms.get(pid)
                if rooms is not None:
                    rooms.pop(room, None)
                    if not rooms:
                        del self.proc_rooms[pid]
            else:
                self.proc_rooms.setdefault(pid, {})[room] = None
            if self._put_row(room, pid, cur, c, n):
                dirty = True
            if dirty:
                out.append(self._changed(room, t))
            else:
                rc, rn, u, v, _, users = self._recount(room, t)
                out.append([rc, rn, u.encode() if u else None, v, users])
        return out

    def renew(self, pid: str, ttl: float) -> int:
        """renew.lua: 1 if the lease was missing or expired."""
        t = self.clock()
        exp = self.procs.get(pid)
        if exp is not None and exp > t:
            self.procs[pid] = t + ttl
            return 0
        if exp is not None:
            del self.procs[pid]
            self._drop_process(pid, t)
        self.procs[pid] = t + ttl
        return 1

    def sweep(self, limit: int = 16) -> int:
        """sweep.lua: claims up to ``limit`` expired leases (ZRANGEBYSCORE -inf now) and drops them."""
        t = self.clock()
        dead = sorted((exp, pid) for pid, exp in self.procs.items() if exp <= t)[:limit]
        for _, pid in dead:
            if self.procs.pop(pid, None) is not None:
                self._drop_process(pid, t)
        return len(dead)

    def leave(self, pid: str) -> int:
        """leave.lua."""
        t = self.clock()
        self.procs.pop(pid, None)
        return self._drop_process(pid, t)

    def count(self, room: str) -> CountState:
        """count.lua: the room's totals, read only."""
        c, n, u, v, _, users = self._recount(room, self.clock())
        return parse_state([c, n, u.encode() if u else None, v, users])

    def members(self, room: str) -> dict[str, str]:
        """members.lua: the members through live processes."""
        live, _ = self._live_members(room, self.clock(), {})
        flat: list[Any] = []
        for user, info in live.items():
            flat += [user.encode(), info.encode()]
        return parse_members(flat)

    # -- sign-outs (rrr.backplane.calls.Revocations) --------------------------------------------------

    def revoke(self, user: str, keep_for: float) -> float:
        """`rrr.backplane.calls.Revocations.revoke` in one step (a test's own sign-out)."""
        at = time.time()
        self.set_revoked(user, at, keep_for)
        self.publish(keys.CONTROL_CHANNEL, json.dumps({"disconnect": user, "at": at}))
        return at

    def set_revoked(self, user: str, at: float, keep_for: float) -> None:
        """``SET rrr:revoked:<user> <at> EX <keep_for + 1>``."""
        self.revocations[user] = (repr(at), self.clock() + max(1, int(keep_for) + 1))

    def revoked_at(self, user: str) -> float | None:
        held = self.revocations.get(user)
        if held is None:
            return None
        if self.clock() >= held[1]:
            del self.revocations[user]
            return None
        return float(held[0])

    # -- history.lua, history_publish.lua, history_read.lua -----------------------------------------

    def _meta(self, room: str) -> Meta | None:
        m = self.metas.get(room)
        if m is not None and m.expires is not None and self.clock() >= m.expires:
            del self.metas[room]
            return None
        return m

    def _stream(self, room: str) -> Stream | None:
        s = self.streams.get(room)
        if s is not None and s.expires is not None and self.clock() >= s.expires:
            del self.streams[room]
            return None
        return s

    def _epoch_of(self, room: str, epoch: str) -> tuple[Meta, str]:
        m = self._meta(room)
        if m is None or m.e is None:
            if m is None:
                m = self.metas[room] = Meta()
            m.e, m.o = epoch, 0
            self.streams.pop(room, None)
        return m, m.e

    def _settings(self, m: Meta, own: bool, size: str, ttl: str) -> tuple[int, int]:
        if own:
            if m.n != size or m.t != ttl:
                m.n, m.t = size, ttl
            return int(size), int(ttl)
        return int(m.n if m.n is not None else size), int(m.t if m.t is not None else ttl)

    def _keep(self, m: Meta, meta_ttl_s: int, ttl_ms: int) -> None:
        if m.o > 0:
            m.expires = self.clock() + meta_ttl_s
        else:
            m.expires = self.clock() + max(1000, ttl_ms) / 1000

    def history_publish(
        self, room: str, data: str, size: int, ttl: float, *, own: bool, sharded: bool = False,
    ) -> Published:
        """history_publish.lua: the next offset, the stream trimmed exactly to ``size``, published as
        ``<offset> <epoch> <data>`` on the room's message channel."""
        m, epoch = self._epoch_of(room, new_epoch())
        n, t_ms = self._settings(m, own, str(size), str(int(ttl * 1000)))
        m.o += 1
        top = m.o
        if n > 0:
            s = self._stream(room) or self.streams.setdefault(room, Stream())
            s.entries.append((top, data))
            del s.entries[:-n]
            s.expires = self.clock() + t_ms / 1000
        m.expires = self.clock() + meta_ttl(ttl)
        receivers = self.publish(keys.message_channel(room), f"{top} {epoch} {data}")
        return Published(top, epoch, receivers)

    def history_read(
        self, room: str, after: int | None, limit: int, size: int, ttl: float, *, own: bool = True,
        seen: Seen | None = None,
    ) -> Read:
        """history_read.lua: the position (an epoch fixed now if none, unless a look), and at most
        ``limit`` entries after ``after``."""
        seen_epoch, seen_top, seen_digest = seen or ("", 0, "")
        m = self._meta(room)
        if not own and m is None:
            return Read("", 0, [])
        if own:
            fresh = new_epoch()  # ARGV[3]: the epoch a room without one gets, and one whose top went back
            m, epoch = self._epoch_of(room, fresh)
            reused = False
            if epoch == seen_epoch and seen_top > 0 and m.o >= seen_top and seen_digest:
                s = self._stream(room)
                at = [d for o, d in (s.entries if s else []) if o == seen_top]
                reused = bool(at) and digest(at[0]) != seen_digest
            if epoch == seen_epoch and (m.o < seen_top or reused):
                epoch = m.e = fresh  # only the epoch: the top and what is stored stay
            self._settings(m, True, str(size), str(int(ttl * 1000)))
            self._keep(m, meta_ttl(ttl), int(ttl * 1000))
        else:
            assert m is not None
            epoch = m.e or ""
        top = m.o
        entries: list[tuple[int, str]] = []
        if after is not None and 0 <= after < top:
            s = self._stream(room)
            entries = [(o, d) for o, d in (s.entries if s else []) if o > after][:limit]
        return Read(epoch, top, entries)

    def backend_publish(self, room: str, data: str, size: int = 100, ttl: float = 300.0) -> Published:
        """What a backend's helper (`rrr.client.publish`) does: the same script, with the servers'
        settings where a server set the room up (``own`` 0)."""
        return self.history_publish(room, data, size, ttl, own=False)

    def refuse_at_maxmemory(self) -> None:
        """What Redis answers a write without ``allow-oom`` at maxmemory."""
        if self.oom:
            raise OutOfMemory("command not allowed when used memory > 'maxmemory'")

    def drop_history(self, room: str) -> None:
        """The room's history and epoch are gone (a failover lost them, or they expired)."""
        self.metas.pop(room, None)
        self.streams.pop(room, None)

    # -- what tests read --------------------------------------------------------------------------

    def rows(self, room: str) -> dict[str, tuple[int, int]]:
        """The room's rows by process (dead ones included until swept)."""
        out = {}
        for f, val in self.presence.get(room, {}).items():
            if not f.startswith("@"):
                a, _, b = val.partition(" ")
                out[f] = (int(a), int(b))
        return out

    def state(self, room: str) -> CountState:
        return self.count(room)


class Outgoing:
    """What one call published while it ran, delivered once its reply is on its way (`MemoryRedis._call`)."""

    def __init__(self, redis: MemoryRedis) -> None:
        self.redis = redis
        self.messages: list[tuple[list[Link], str, str]] = []  # (connections subscribed then, channel, data)

    def deliver(self) -> None:
        if self in self.redis._unsent:
            self.redis._deliver_until(self)


class Link:
    """One process's pub/sub connection to `MemoryRedis`: SUBSCRIBE and UNSUBSCRIBE run in Redis in
    the order sent (each acknowledged on the connection), and what arrives is read in order."""

    def __init__(self, redis: MemoryRedis, pid: str) -> None:
        self.redis = redis
        self.pid = pid
        self.channels: set[str] = set()
        self.open = True
        self._inbox: asyncio.Queue[tuple[str, bytes, Any] | None] = asyncio.Queue()
        self._commands: asyncio.Queue[tuple[str, tuple[str, ...]]] = asyncio.Queue()
        self._runner = asyncio.ensure_future(self._run_commands())

    def subscribe(self, *channels: str) -> None:
        self._send("subscribe", channels)

    def unsubscribe(self, *channels: str) -> None:
        self._send("unsubscribe", channels)

    def _send(self, kind: str, channels: tuple[str, ...]) -> None:
        if not self.open:
            raise ConnectionError("memory pub/sub connection is closed")
        self._commands.put_nowait((kind, channels))

    async def _run_commands(self) -> None:
        while True:
            kind, channels = await self._commands.get()
            gate = self.redis._holds.get("subscribe")
            if gate is not None and gate.closed:
                await gate.wait()
            if not self.open:
                return
            for channel in channels:
                if kind == "subscribe":
                    self.channels.add(channel)
                    self.redis._subscribed.setdefault(channel, {})[self] = None
                else:
                    self.channels.discard(channel)
                    subs = self.redis._subscribed.get(channel)
                    if subs is not None:
                        subs.pop(self, None)
                        if not subs:
                            del self.redis._subscribed[channel]
                self._inbox.put_nowait((kind, channel.encode(), len(self.channels)))

    def deliver(self, channel: str, data: str) -> None:
        if self.open:
            self._inbox.put_nowait(("message", channel.encode(), data.encode()))

    async def get(self) -> tuple[str, bytes, Any]:
        """The next reply that names a channel; ConnectionError once the connection is broken."""
        item = await self._inbox.get()
        if item is None:
            raise ConnectionError("memory pub/sub connection broken")
        return item

    def close(self) -> None:
        """Broken or closed: what it had not read is lost, and Redis forgets its subscriptions."""
        if not self.open:
            return
        self.open = False
        self.redis._unlink(self)
        while not self._inbox.empty():
            self._inbox.get_nowait()
        self._inbox.put_nowait(None)
        self._runner.cancel()


# -- the Protocols ---------------------------------------------------------------------------------


class MemoryPresence:
    """`rrr.backplane.Presence` on `MemoryRedis` (mirrors `rrr.backplane.presence.ClassicPresence`)."""

    def __init__(self, redis: MemoryRedis, metrics: Metrics, *, ttl: float = 15.0) -> None:
        self.redis = redis
        self.metrics = metrics
        self.ttl = ttl
        self.process_id = redis.new_process_id()
        self._oom = False
        self._renewed_at: float | None = None  # on the Redis clock: a stalled process is one whose clock moved

    async def _run(self, op: str, run: Callable[[], T]) -> T:
        """One call, its failure counted (``rrr_redis_errors_total{op}``), as `rrr.backplane.calls.Calls.run`."""
        try:
            result = await self.redis._call(op, run)
        except OutOfMemory as e:
            self._oom = True
            self.metrics.redis_errors.labels(op).inc()
            raise BackplaneError(f"redis {op} refused: out of memory ({e})") from e
        except BackplaneError:
            self.metrics.redis_errors.labels(op).inc()
            raise
        if op == "probe":
            self._oom = False
        return result

    @property
    def oom(self) -> bool:
        return self._oom

    def lease_fresh(self) -> bool:
        return self._renewed_at is not None and self.redis.clock() - self._renewed_at < 2 * self.ttl / 3 + 1

    async def renew(self) -> bool:
        started = self.redis.clock()
        lost = await self._run("renew", lambda: self.redis.renew(self.process_id, self.ttl))
        self._renewed_at = started
        return bool(lost)

    async def sweep(self) -> int:
        swept = await self._run("sweep", lambda: self.redis.sweep(16))
        if swept:
            self.metrics.presence_expired.inc(swept)
        return swept

    async def write(
        self, updates: Mapping[str, tuple[int, int]], members: Mapping[str, MemberDelta] | None = None,
        reports: Mapping[str, RoomReport] | None = None,
    ) -> WriteResult:
        # No events here (this backplane's `events` is None, as with webhooks off): the reports,
        # which only time a room's events, have nothing to time.
        result = WriteResult()
        rooms = list(updates)
        members = members or {}
        for i in range(0, len(rooms), CHUNK):
            chunk = rooms[i : i + CHUNK]
            rows = {room: updates[room] for room in chunk}
            delta = {room: members[room] for room in chunk if room in members}
            reply = await self._run(
                "set_presence", lambda: self.redis.set_presence(self.process_id, self.ttl, rows, delta),
            )
            if not reply[0]:
                result.lease_lost = True
            result.states.update(zip(chunk, map(parse_state, reply[1:])))
        return result

    async def leave(self) -> None:
        await self._run("leave", lambda: self.redis.leave(self.process_id))
        self._renewed_at = None

    async def room_state(self, room: str) -> CountState:
        return await self._run("count", lambda: self.redis.count(room))

    async def members(self, room: str) -> dict[str, str]:
        return await self._run("members", lambda: self.redis.members(room))

    async def rooms(self, prefix: str = "") -> list[str]:
        return await self._run("scan", lambda: sorted(r for r in self.redis.presence if r.startswith(prefix)))

    async def publish(self, channel: str, data: str) -> int:
        return await self._run("publish", lambda: self.redis.publish(channel, data))

    async def alive(self, tag: str) -> bool:
        return await self._run("alive", lambda: self.redis.subscribers(keys.inbox_channel(tag)) > 0)

    async def revoke(self, user: str, keep_for: float) -> float:
        at = time.time()
        await self._run("revoke", lambda: self.redis.set_revoked(user, at, keep_for))
        await self.publish(keys.CONTROL_CHANNEL, json.dumps({"disconnect": user, "at": at}))
        return at

    async def revoked_at(self, user: str) -> float | None:
        return await self._run("revoked", lambda: self.redis.revoked_at(user))

    async def ping(self) -> bool:
        try:
            return await self._run("ping", lambda: True)
        except BackplaneError:
            return False

    async def probe_write(self) -> None:
        def probe() -> None:
            self.redis.refuse_at_maxmemory()
            self.redis.probes[self.process_id] = str(time.time())

        await self._run("probe", probe)

    async def close(self) -> None:
        pass


class MemorySubscriber(Following):
    """`rrr.backplane.Subscriber` on `MemoryRedis` (mirrors `rrr.backplane.subscriber.ClassicSubscriber`,
    with its `Follows` and `Dispatch`): one connection per `run`, rooms' channels converged by a sync
    task, each room confirmed once Redis acknowledged all its channels."""

    def __init__(self, redis: MemoryRedis, metrics: Metrics, process_id: str) -> None:
        self.redis = redis
        self.process_id = process_id
        self.probe_channel = keys.probe_channel(process_id)
        self.inbox_channel = keys.inbox_channel(keys.process_tag(process_id))
        self._follows = Follows(metrics)
        self._dispatch = Dispatch(metrics, {self.probe_channel}, inbox=self.inbox_channel)
        self._syncer: asyncio.Task[None] | None = None
        self.runs = 0  # connections made

    @property
    def wanted(self) -> set[str]:
        return self._follows.wanted

    async def probe(self, publisher: Publisher, timeout: float) -> bool:
        if not self.connected:
            return False
        return await self._dispatch.probe(publisher, [self.probe_channel], timeout)

    async def run(self) -> None:
        await asyncio.sleep(0)  # connecting takes a round trip
        link = self.redis.connect_pubsub(self.process_id)
        self.runs += 1
        syncer: asyncio.Task[None] | None = None
        try:
            link.subscribe(self.probe_channel, keys.CONTROL_CHANNEL, self.inbox_channel)
            self._follows.restart()
            syncer = self._syncer = asyncio.create_task(self._sync(link, set()), name="rrr-memory-sync")
            self._follows.went_up("memory pub/sub")
            self._dispatch.connected()
            await self._read(link, syncer)
        finally:
            self._follows.went_down()
            if syncer is not None:
                await cancel(syncer)
            link.close()

    async def stop(self) -> None:
        if self._syncer is not None:
            await cancel(self._syncer)

    async def _sync(self, link: Link, active: set[str]) -> None:
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
                link.subscribe(*(channel for room in add for channel in keys.room_channels(room)))
                active |= add
            if drop:
                follows.confirmed -= drop
                link.unsubscribe(*(channel for room in drop for channel in keys.room_channels(room)))
                active -= drop
                for room in drop:
                    follows.unexpect(room, keys.room_channels(room))

    async def _read(self, link: Link, syncer: asyncio.Task[None]) -> None:
        while True:
            if syncer.done():
                syncer.result()
                raise ConnectionError("subscription sync ended")
            kind, channel, data = await link.get()
            if kind == "subscribe" and channel == _CONTROL:
                self._dispatch.control_confirmed()
            if kind == "message":
                self._dispatch.message(channel, data, self._follows.wanted)
            elif kind == "subscribe":
                room = self._follows.acked(channel)
                if room is not None:
                    self._dispatch.room_confirmed(room)


class MemoryHistory:
    """`rrr.backplane.History` on `MemoryRedis` (mirrors `rrr.backplane.history.RedisHistory`)."""

    def __init__(
        self, redis: MemoryRedis, presence: MemoryPresence, size: int, ttl: float, *,
        max_message: int = MAX_MESSAGE_SIZE,
    ) -> None:
        self.redis = redis
        self._presence = presence
        self.size = max(0, size)
        self.ttl = max(0.0, ttl)
        self.max_message = max(1, max_message)
        self.cache_ttl = 1800.0

    @property
    def enabled(self) -> bool:
        return self.size > 0 and self.ttl > 0

    async def publish(self, room: str, data_json: str) -> Published:
        ms = cache_ms(room, self.cache_ttl)
        if ms:
            self.redis.caches[room] = (data_json, self.redis.clock() + ms / 1000)
        if not self.enabled:
            return Published(0, "", await self._presence.publish(keys.room_channel(room), data_json))

        def run() -> Published:
            self.redis.refuse_at_maxmemory()  # stores what clients send: no allow-oom (scripts.NO_FLAGS)
            return self.redis.history_publish(room, data_json, self.size, self.ttl, own=True)

        return await self._presence._run("history_publish", run)

    async def relay(self, room: str, payload: str) -> int:
        return await self._presence.publish(keys.room_channel(room), payload)

    async def cached(self, room: str) -> str | None:
        kept = self.redis.caches.get(room)
        return kept[0] if kept is not None and kept[1] > self.redis.clock() else None

    async def read(self, room: str, after: int | None, *, seen: Seen | None = None) -> Read:
        return await self._presence._run(
            "history_read", lambda: self.redis.history_read(room, after, self.size, self.size, self.ttl, seen=seen),
        )

    async def look(self, room: str, after: int) -> Read:
        return await self._presence._run(
            "history_read", lambda: self.redis.history_read(room, after, self.size, self.size, self.ttl, own=False),
        )

    async def announce(self) -> None:
        def run() -> None:
            self.redis.config.update(size=str(self.size), ttl=str(int(self.ttl * 1000)), max=str(self.max_message))

        await self._presence._run("hset", run)

    async def touch(self, rooms: Iterable[str]) -> None:
        for room in rooms:
            await self.read(room, None)
