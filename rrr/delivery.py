"""Delivery of a room's messages to this process's sockets: in offset order, each once, nothing lost.

Each room with local subscribers has a `RoomStream`: the room's epoch and the last offset
delivered here (``top``). A message that arrives live is delivered only if it is the next
offset; anything else (a gap, a new epoch, a pub/sub connection that came back) makes the
stream *stale*: live messages are held while the missing ones are read from history, then
both go out in order. So a pub/sub blip or a failover costs a delay, never a message.

A new subscription is *pending* until this process receives the room's messages (its
channels confirmed, its position read). Then, in one synchronous step, it is queued
``subscribed`` and (with ``since``) every message after its offset up to ``top``, which the
socket writes as it drains (`rrr.edge.outbox`); live messages after ``top`` follow behind them. A
socket none of whose subscriptions to the room has been served yet gets no live messages of it,
so its first frame about the room is ``subscribed``.

Raw ``PUBLISH rrr:room:<slug>`` messages carry no offset: they are relayed live, best effort.

A message over ``--max-message-size`` (only a raw PUBLISH or an older helper can store one) is
dropped, live and in replays alike, counted and logged: one frame bigger than a socket's send buffer
would cut every reader off, again at each resubscribe. Its offset still counts as delivered, so it is
no gap, and the subscriptions around it stay ``recovered``; clients skip the missing offset.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from . import protocol
from .backplane import History, Read, Subscriber
from .backplane.history import digest
from .edge.wsframe import Frame
from .errors import BackplaneError
from .metrics import Metrics
from .protocol import Since
from .rooms import Connection, LocalRoom
from .supervise import RateLimitedLog

log = logging.getLogger("rrr.delivery")


def _message(room: str, payload: str, offset: int | None = None, epoch: str | None = None,
             sub: str | None = None) -> Frame:
    """A ``message`` (or ``whisper``) frame that keeps its payload beside it (`Frame.payload`)."""
    p = protocol.unpack(payload)
    return Frame(protocol.message_frame(room, p, offset, epoch, sub), (room, p))


class Marks(Protocol):
    """Where a room whose presence may now be written is marked (`rrr.writer.Coalescer`)."""

    def mark(self, room: str) -> None: ...


@dataclass(eq=False)
class Pending:
    conn: Connection
    sub: str
    since: Since | None
    announce: bool  # send ``subscribed`` (the talk's one-room socket without ``since`` is not)
    checked: bool = False  # a history read finished after it was queued
    cancelled: bool = False


@dataclass(eq=False)
class RoomStream:
    epoch: str | None = None
    top: int = 0
    # The data delivered here at ``top`` ("": none, or dropped as oversized). A catch-up sends its
    # digest: a room whose history holds another message there reused the offset (a stopped old
    # master's publish heard live, the new master's stored) and starts a new epoch.
    last: str = ""
    stale: bool = True  # history must be read before live messages go out again
    held: list[tuple[int, str, str]] = field(default_factory=list)  # live while stale: (offset, epoch, data)
    pending: dict[tuple[Connection, str], Pending] = field(default_factory=dict)
    unserved: set[Connection] = field(default_factory=set)  # no subscription served yet: no live frames
    # Delivered during a replay read, at most as many as history holds (a room publishing faster
    # than that during one read has trimmed them from history too: the replay is honest, not whole).
    recent: list[tuple[int, str]] | None = None
    # Caught up since the room became local or since pub/sub last broke: its presence may be written.
    caught_up: bool = False
    generation: int = 0  # one more on every pub/sub break: a read begun before it proves nothing
    task: asyncio.Future[None] | None = None


class Delivery:
    """The streams of every local room. The hub tells it who subscribes and unsubscribes, the
    subscriber what it hears; it sends message and ``subscribed`` frames to the room's sockets (read
    from the local rooms), and reads history itself. Once a room has caught up it is marked for its
    presence to be written (`caught_up` is the writer's gate)."""

    def __init__(
        self, history: History, metrics: Metrics, rooms: Mapping[str, LocalRoom], subscriber: Subscriber,
        marks: Marks,
    ) -> None:
        self.history = history
        self.metrics = metrics
        self._rooms = rooms
        self._subscriber = subscriber  # a room's history is read once its channels are confirmed
        self._marks = marks  # marked from our own task, never inside a call of the hub's
        self._streams: dict[str, RoomStream] = {}
        self._closing = False
        self._log = RateLimitedLog(log)
        # Live messages held while a room catches up: past this many, the history (which holds
        # as many) is read instead.
        self.hold_max = max(1, history.size)

    # -- the hub's calls --------------------------------------------------------------------

    def subscribe(self, room: str, conn: Connection, sub: str, since: Since | None, announce: bool, new: bool) -> None:
        """A subscription registered; ``new``: its socket had no other in the room."""
        s = self._streams.get(room)
        if s is None:
            s = self._streams[room] = RoomStream()
        if new:
            s.unserved.add(conn)
        s.pending[(conn, sub)] = Pending(conn, sub, since, announce)
        self._run(room, s)

    def unsubscribe(self, room: str, conn: Connection, sub: str, last: bool) -> None:
        """A subscription ended; ``last``: its socket has none left in the room."""
        s = self._streams.get(room)
        if s is None:
            return
        p = s.pending.pop((conn, sub), None)
        if p is not None:
            p.cancelled = True
        if last:
            s.unserved.discard(conn)

    def room_gone(self, room: str) -> None:
        s = self._streams.pop(room, None)
        if s is not None and s.task is not None:
            s.task.cancel()

    def caught_up(self, room: str) -> bool:
        """The room has caught up since it became local here or since pub/sub last broke, so its
        subscriptions are served: presence may show this process in the room (a count that shows it
        means it delivers). A gap later does not undo it: messages are then held, not lost."""
        s = self._streams.get(room)
        return s is not None and s.caught_up

    def channels_ready(self, room: str) -> None:
        """The room's channels are confirmed subscribed: catch up and serve who waits."""
        s = self._streams.get(room)
        if s is not None:
            self._run(room, s)

    def resync(self) -> None:
        """The pub/sub connection broke: whatever was published meanwhile must be read back."""
        for s in self._streams.values():
            s.stale = True
            s.held.clear()
            s.generation += 1
            s.caught_up = False

    def close(self) -> None:
        self._closing = True
        for s in self._streams.values():
            if s.task is not None:
                s.task.cancel()

    # -- what the subscriber hears --------------------------------------------------------------

    def raw_message(self, room: str, data_json: str) -> None:
        if not self._fits(room, data_json):
            return
        s = self._streams.get(room)
        self._fan_out(room, s, _message(room, data_json))

    def message(self, room: str, offset: int, epoch: str, data_json: str) -> None:
        s = self._streams.get(room)
        if s is None:
            return
        if data_json and not self._fits(room, data_json):
            data_json = ""  # dropped, its offset kept in order (and nothing big held meanwhile)
        if not self.history.enabled:
            if data_json:
                self._fan_out(room, s, _message(room, data_json, offset, epoch))
            return
        if not s.stale and epoch == s.epoch and offset > s.top + 1:
            s.stale = True  # a gap: read what is missing, hold what follows
            self.metrics.history_gaps.inc()
        elif not s.stale and epoch != s.epoch:
            s.stale = True  # the room started a new epoch (its history lost, or its offsets went back)
        if s.stale:
            if len(s.held) < self.hold_max:
                s.held.append((offset, epoch, data_json))
            else:
                s.held.clear()  # all of it is in history: the catch-up reads it instead
            self._run(room, s)
            return
        if offset <= s.top:
            return  # already delivered (a replay read overtook it)
        self._deliver(room, s, offset, data_json)

    # -- internals ----------------------------------------------------------------------------

    def _fan_out(self, room: str, s: RoomStream | None, frame: Frame) -> None:
        local = self._rooms.get(room)
        if local is None:
            return
        targets = list(local.conns)
        if s is not None and s.unserved:
            targets = [conn for conn in targets if conn not in s.unserved]
        exclude = frame.payload[1].exclude if frame.payload is not None else None
        if exclude is not None:  # a whisper (or an API trigger) never reaches its sender
            targets = [conn for conn in targets if getattr(conn, "socket_id", None) != exclude]
        for conn in targets:
            conn.send_frame(frame)
        self.metrics.messages_out.inc(len(targets))

    def _fits(self, room: str, data_json: str) -> bool:
        """Whether a message may go to sockets: not one dropped already (``""``), nor one over
        ``--max-message-size`` (then counted and logged, at most once per 30 s)."""
        if not data_json:
            return False
        limit = self.history.max_message
        if not protocol.too_big(data_json, limit):
            return True
        self.metrics.oversized_messages.inc()
        self._log.warning(
            "oversized", "dropped a message of %d characters in %s: over --max-message-size (%d bytes)",
            len(data_json), room, limit,
        )
        return False

    def _deliver(self, room: str, s: RoomStream, offset: int, data_json: str) -> None:
        assert s.epoch is not None
        s.top = offset
        if not self._fits(room, data_json):
            data_json = ""
        s.last = data_json
        if s.recent is not None and len(s.recent) < self.hold_max:
            s.recent.append((offset, data_json))
        if data_json:
            self._fan_out(room, s, _message(room, data_json, offset, s.epoch))

    def _run(self, room: str, s: RoomStream) -> None:
        if self._closing or (s.task is not None and not s.task.done()):
            return
        if not self._subscriber.confirmed(room):
            return  # channels_ready() starts it
        if not (s.stale or s.pending):
            return
        s.task = asyncio.ensure_future(self._rounds(room, s))

    async def _rounds(self, room: str, s: RoomStream) -> None:
        """Catch the stream up, then serve pending subscriptions, until neither is needed."""
        failures = 0
        while self._streams.get(room) is s and not self._closing and self._subscriber.confirmed(room):
            try:
                if s.stale:
                    await self._catch_up(room, s)
                elif s.pending:
                    await self._serve(room, s)
                else:
                    return
                failures = 0
            except BackplaneError as e:
                failures += 1
                self.metrics.task_errors.labels("history").inc()
                self._log.warning("history", "history of %s: %s (retrying)", room, e)
                await asyncio.sleep(min(5.0, 0.05 * 2 ** failures))
            except Exception as e:  # noqa: BLE001 - a task with no caller: count, log once, retry
                failures += 1
                self.metrics.task_errors.labels("history").inc()
                self._log.warning("history", "history of %s: %s: %s", room, type(e).__name__, e)
                await asyncio.sleep(min(5.0, 0.05 * 2 ** failures))

    async def _catch_up(self, room: str, s: RoomStream) -> None:
        if not self.history.enabled:
            s.stale = False
            s.held.clear()
            self._ready(room, s)
            return
        known = s.epoch is not None
        generation = s.generation
        # Whatever was held before the read began was stored before it: the read must show it.
        before = len(s.held)
        read = await self.history.read(
            room, s.top if known else None, seen=(s.epoch, s.top, digest(s.last)) if s.epoch is not None else None,
        )
        if self._streams.get(room) is not s or s.generation != generation:
            return  # pub/sub broke meanwhile: still stale, read again once it is back
        if not known:
            s.epoch, s.top, s.last = read.epoch, read.top, ""
        elif read.covers(s.top, s.epoch):
            self._replay(room, s, read.entries)
        elif s.top == 0 and read.covers(0):
            # Nothing was ever delivered here in the old epoch (a room whose meta expired unused):
            # nobody lost anything; take the new epoch and what it holds.
            s.epoch = read.epoch
            self._replay(room, s, read.entries)
        else:
            # Lost (Redis restarted empty, a failover lost the last writes) or trimmed past us:
            # the room's sockets must reload.
            s.epoch, s.top, s.last = read.epoch, read.top, ""
            self._reset(room, s)
        held, s.held = s.held, []
        s.stale = False
        for i, (offset, epoch, data) in enumerate(held):
            if i < before and (epoch != s.epoch or offset > read.top):
                # Heard before the read, yet not in history: not a message our script stored.
                self.metrics.malformed_payloads.inc()
                continue
            self.message(room, offset, epoch, data)
        if not s.stale:
            self._ready(room, s)

    def _ready(self, room: str, s: RoomStream) -> None:
        if not s.caught_up:
            s.caught_up = True
            self._marks.mark(room)

    def _replay(self, room: str, s: RoomStream, entries: list[tuple[int, str]]) -> None:
        for offset, data in entries:
            if offset > s.top:
                self._deliver(room, s, offset, data)
                self.metrics.history_replayed.inc()

    def _reset(self, room: str, s: RoomStream) -> None:
        """Tell every served subscription its stream began again (``recovered: false``)."""
        self.metrics.history_resets.inc()
        local = self._rooms.get(room)
        frames = 0
        for conn in list(local.conns) if local is not None else []:
            if conn in s.unserved:
                continue
            for sub in conn.announced_subs(room):
                if (conn, sub) in s.pending:
                    continue  # its own subscribed is still to come
                conn.send_frame(Frame(protocol.dumps(protocol.subscribed_message(room, sub, s.top, s.epoch, False))))
                frames += 1
        self.metrics.messages_out.inc(frames)

    async def _serve(self, room: str, s: RoomStream) -> None:
        batch = list(s.pending.values())
        s.pending.clear()
        read: Read | None = None
        recent: list[tuple[int, str]] = []
        behind = [p.since.offset for p in batch if p.since is not None and p.since.epoch == s.epoch
                  and p.since.offset < s.top]
        if behind and self.history.enabled:
            s.recent = []
            try:
                read = await self.history.read(room, min(behind))
            except BaseException:
                s.pending = {(p.conn, p.sub): p for p in batch if not p.cancelled} | s.pending
                raise
            finally:
                recent, s.recent = s.recent or [], None
            if self._streams.get(room) is not s:
                return
            if s.stale or read.epoch != s.epoch:
                s.stale = True
                s.pending = {(p.conn, p.sub): p for p in batch if not p.cancelled} | s.pending
                return
        entries = _merge(read.entries if read else [], recent)
        for p in batch:
            if p.cancelled:
                continue
            if p.since is not None and not p.checked and (p.since.epoch != s.epoch or p.since.offset > s.top):
                # The client saw further than this process has, or knows another epoch (this process
                # may be the one behind): read history before judging it.
                p.checked = True
                s.pending[(p.conn, p.sub)] = p
                s.stale = True
                continue
            self._start(room, s, p, entries)

    def _start(self, room: str, s: RoomStream, p: Pending, entries: list[tuple[int, str]]) -> None:
        """``subscribed``, then the replay, queued in one synchronous step: no live frame can come between."""
        enabled = self.history.enabled
        replay: list[tuple[int, str]] = []
        since = p.since
        recovered = False
        if enabled and since is not None and since.epoch == s.epoch:
            if since.offset == s.top:
                recovered = True
            elif since.offset < s.top:
                replay = [(o, d) for o, d in entries if since.offset < o <= s.top]
                recovered = len(replay) == s.top - since.offset and (not replay or replay[0][0] == since.offset + 1)
                if not recovered:
                    replay = []
        messages = [
            _message(room, data, offset, s.epoch, p.sub)
            for offset, data in replay if self._fits(room, data)
        ]
        if messages and not p.conn.may_queue(sum(len(m.wire) for m in messages)):
            # The socket is still owed a whole history's worth of other replays: it reloads instead.
            replay, messages, recovered = [], [], False
        if since is not None and not recovered:
            self.metrics.history_resets.inc()
        frames = []
        if p.announce:
            frames.append(Frame(protocol.dumps(protocol.subscribed_message(
                room, p.sub, s.top if enabled else None, s.epoch if enabled else None, recovered,
            ))))
        frames += messages
        if frames:
            p.conn.send_bulk(frames)
        self.metrics.history_replayed.inc(len(replay))
        self.metrics.messages_out.inc(len(frames))
        s.unserved.discard(p.conn)


def _merge(entries: list[tuple[int, str]], recent: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """History read from Redis, then what arrived live during the read, in offset order, once each."""
    out = list(entries)
    last = out[-1][0] if out else 0
    for offset, data in recent:
        if offset > last:
            out.append((offset, data))
            last = offset
    return out
