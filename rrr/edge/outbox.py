"""What a socket is owed beyond what its stream should hold: bulk deliveries, paced by its draining.

A replay can be ``--history-size`` messages of ``--max-message-size`` each (6.4 MB by default), a
member list as long as its room. Written in one go, that much counted against ``--send-buffer``
as if the client had stopped reading, and a client that was reading was cut off after the first
few messages, again on every reconnect. So a bulk delivery is queued here and handed to the stream
only while the stream holds less than ``WATERMARK`` (whole frames, up to about that much per
write); each time the stream has flushed, more follows. Whatever the socket is sent while
something waits here (live messages, counts, replies) queues behind it, so order holds.

Slowness is judged by progress, not by what a client is owed:

* frames queued behind bulk ones are capped by ``--send-buffer``, as the stream's own buffer is
  without a queue: a client that stops reading while messages keep coming is cut off as before;
* at each of the keepalive's visits a queue that wrote nothing since the previous visit (one ping
  interval) means a client that does not read: cut off, even if it keeps sending frames (a silent
  one is dropped by the keepalive anyway).

An idle socket has no queue (the handler's slot holds None), and a socket whose queue empties
drops it again, so the fan-out's one write per socket is unchanged for everyone else.
"""

from __future__ import annotations

from collections import deque
from typing import Protocol

from tornado.websocket import WebSocketProtocol

from . import wsframe
from .wsframe import Frame

#: Bytes the stream may hold before queued frames wait for it to drain: enough to keep the kernel's
#: buffer fed between two flushes, small beside ``--send-buffer``.
WATERMARK = 64 * 1024


def watermark(limit: int) -> int:
    """The watermark for a stream capped at ``limit`` bytes: room for a frame above it."""
    return max(1, min(WATERMARK, limit // 2))


def room_now(conn: WebSocketProtocol, frames: list[Frame], limit: int) -> bool:
    """Whether ``frames`` may go straight to the stream, with no queue: all of them stay under the
    watermark (a short replay, a small member list, a lone ``subscribed``)."""
    return fits(wsframe.buffered(conn), frames, limit)


def fits(held: int, frames: list[Frame], limit: int) -> bool:
    """`room_now` for a stream that holds ``held`` bytes."""
    room = watermark(limit) - held
    for frame in frames:
        room -= len(frame.wire)
        if room < 0:
            return False
    return True


class Sink(Protocol):
    """Where an outbox's frames go: a WebSocket's stream (`SocketSink`), or an SSE stream's."""

    def buffered(self) -> int:
        """Bytes written that the stream still holds."""

    def write_many(self, frames: list[Frame]) -> None:
        """Write ``frames`` back to back; raises what `wsframe.send` raises."""


class SocketSink:
    """A WebSocket's stream as an outbox's `Sink`."""

    __slots__ = ("conn", "fast")

    def __init__(self, conn: WebSocketProtocol, fast: bool) -> None:
        self.conn = conn
        self.fast = fast

    def buffered(self) -> int:
        return wsframe.buffered(self.conn)

    def write_many(self, frames: list[Frame]) -> None:
        wsframe.send_many(self.conn, frames, self.fast)


class Outbox:
    """Frames waiting for one socket's stream to drain, in the order they were sent."""

    __slots__ = ("frames", "bulk", "live", "written", "seen", "waiting")

    def __init__(self) -> None:
        self.frames: deque[tuple[Frame, bool]] = deque()
        self.bulk = 0  # bytes of bulk frames (replays, member lists) queued
        self.live = 0  # bytes of every other frame queued behind them
        self.written = 0  # frames handed to the stream: the queue's progress
        self.seen = -1  # ``written`` at the keepalive's previous visit
        self.waiting = False  # a flush of the stream is awaited (set while anything is queued)

    def push(self, frame: Frame, bulk: bool) -> None:
        self.frames.append((frame, bulk))
        if bulk:
            self.bulk += len(frame.wire)
        else:
            self.live += len(frame.wire)

    def pump(self, sink: Sink, limit: int) -> None:
        """Hand frames to the stream while it holds less than the watermark, several in one write
        (each must fit under ``limit``, the stream's cap, unless the stream is empty). Raises what
        `wsframe.send` raises."""
        mark = watermark(limit)
        frames = self.frames
        while frames:
            held = sink.buffered()
            batch: list[Frame] = []
            size = 0
            while frames and held + size < mark:
                frame, bulk = frames[0]
                n = len(frame.wire)
                if held + size + n > limit and (held or batch):
                    break
                frames.popleft()
                if bulk:
                    self.bulk -= n
                else:
                    self.live -= n
                batch.append(frame)
                size += n
            if not batch:
                return
            self.written += len(batch)
            sink.write_many(batch)

    def stalled(self) -> bool:
        """At a keepalive visit: whether nothing was written since the previous visit."""
        stalled = self.written == self.seen
        self.seen = self.written
        return stalled
