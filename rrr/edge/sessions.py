"""SSE streams and long-polling sessions: each a `rrr.rooms.Connection` with a `rrr.session.Session`
behind it, exactly like a WebSocket, so counts, tabs, caps, tokens, presence, history, sign-outs and
drains need no copy per transport. What differs is only how frames reach the browser:

* `SseStream`: an open ``text/event-stream`` response. Each frame is one event written straight
  to the connection's stream (encoded once per frame, `rrr.edge.wsframe.Frame.sse`); replays and
  member lists go through an `Outbox` as the stream drains, as on a socket; a client that stops
  reading is cut off past ``--send-buffer``; a comment goes out whenever the stream was silent for
  ``--sse-keepalive`` seconds. The session ends when the stream closes.
* `PollSession`: frames numbered from 1 and kept until a later poll's ``seq`` acknowledges them, so
  a lost answer loses nothing. A poll with nothing to take waits up to ``--poll-timeout``; a newer
  poll answers the older one (empty) and takes its place; frames that arrive meanwhile are
  answered at once (together with those of the same loop turn). Unacknowledged frames are bounded
  by ``--send-buffer``: past it they are dropped and the session closed (1008) like a slow socket.
  A session nobody polls for ``--poll-timeout`` + 10 s ends.

When the server ends a session (4001, 1001, 1008, ...) its last frame is ``{"type": "close", ...}``.

`Sessions` holds this process's sessions by id. An id is the process's tag (`Service.process_tag`)
and 128 random bits, so a request for it that reaches another process is handed here
(`rrr.edge.handoff`).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial

from tornado.iostream import IOStream, StreamBufferFullError, StreamClosedError

from .. import protocol
from ..auth import Identity
from ..metrics import Metrics
from ..session import Session, Shared
from . import sse, wsframe
from .outbox import Outbox, fits
from .wsframe import Frame

log = logging.getLogger("rrr.sessions")

#: The ``transport`` label of ``rrr_open_sessions``: what ``/sse/`` and ``/poll/`` open.
SSE = "sse"
POLL = "poll"
#: A polling session nobody polls for ``--poll-timeout`` plus this long ends.
POLL_GRACE = 10.0
#: A long poll's answer holds at most about this many bytes of frames (at least one frame): a big
#: replay goes out over several polls.
MAX_POLL_ANSWER = 1 << 20


@dataclass(frozen=True)
class Answer:
    """What a request for a session gets: its status, JSON body, and ``Retry-After`` (0: none)."""

    status: int
    body: str = ""
    retry_after: float = 0.0


ACCEPTED = Answer(202)
UNKNOWN = Answer(404, protocol.dumps(protocol.http_error(404, "unknown session")))


def refused(status: int, reason: str, retry_after: float = 0.0) -> Answer:
    return Answer(status, protocol.dumps(protocol.http_error(status, reason)), retry_after)


def close_frame(code: int, reason: str) -> Frame:
    return Frame(protocol.dumps(protocol.close_message(code, reason)))


class SseStream:
    """An SSE response as a `Connection`: see the module's comment. The handler that opened it waits
    on ``done``, which is resolved when the stream ends (the client went, or we ended it)."""

    __slots__ = (
        "kind", "id", "stream", "chunked", "event_ids", "metrics", "send_buffer", "bulk_limit", "session",
        "done", "ip", "_outbox", "_last", "_keepalive", "_timer", "socket_id",
    )

    def __init__(
        self, stream: IOStream, *, chunked: bool, metrics: Metrics, send_buffer: int, bulk_limit: int,
        keepalive: float, ip: str, session_id: str = "", event_ids: bool = False,
    ) -> None:
        """``event_ids``: message events carry ``id: <offset>:<epoch>`` (``/sse/count/<slug>/``)."""
        self.kind = SSE
        self.id = session_id
        self.socket_id: str | None = None  # once it whispers (rrr.session.Session.socket_id)
        self.stream = stream
        self.chunked = chunked
        self.event_ids = event_ids
        self.metrics = metrics
        self.send_buffer = send_buffer
        self.bulk_limit = bulk_limit
        self.session: Session | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._outbox: Outbox | None = None
        self._last = time.monotonic()
        self._keepalive = keepalive
        self._timer: asyncio.TimerHandle | None = None
        self.ip = ip
        # A client that stops reading may hold at most this much before it is cut off.
        stream.max_write_buffer_size = send_buffer
        if keepalive > 0:
            self._timer = asyncio.get_running_loop().call_later(keepalive, self._tick)

    @property
    def ended(self) -> bool:
        return self.done.done()

    # -- Connection ------------------------------------------------------

    def send_frame(self, frame: Frame) -> None:
        if self.done.done():
            return
        box = self._outbox
        if box is None:
            self._write(self._encode(frame))
            return
        box.push(frame, False)
        if box.live > self.send_buffer:
            self._cut_off(f"over {self.send_buffer} bytes queued behind a replay or member list")

    def send_bulk(self, frames: list[Frame]) -> None:
        if self.done.done() or not frames:
            return
        box = self._outbox
        if box is not None:
            for frame in frames:
                box.push(frame, True)
            return
        if fits(self.buffered(), frames, self.send_buffer):
            self.write_many(frames)
            return
        box = self._outbox = Outbox()
        for frame in frames:
            box.push(frame, True)
        self._pump()

    def may_queue(self, nbytes: int) -> bool:
        box = self._outbox
        return box is None or box.bulk == 0 or box.bulk + nbytes <= self.bulk_limit

    def announced_subs(self, room: str) -> Iterable[str]:
        return self.session.announced_subs(room) if self.session is not None else ()

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        """The server ends the stream: its last event is the ``close`` frame (not on the one-room
        ``/sse/count/`` stream, whose talk client reads ``connections`` from every event), then
        the response ends and the session with it."""
        if self.done.done():
            return
        if not self.event_ids:
            frame = close_frame(code or 1000, reason or "")
            # Past the cap if need be: one small frame more, so a client that reads learns why.
            self.stream.max_write_buffer_size = None
            self._outbox = None
            self._write(self._encode(frame))
        self._end()

    # -- the outbox's sink ----------------------------------------------

    def buffered(self) -> int:
        return wsframe.buffered_bytes(self.stream)

    def write_many(self, frames: list[Frame]) -> None:
        """Raises StreamBufferFullError past the cap (the outbox's caller cuts the client off)."""
        data = b"".join(self._encode(frame) for frame in frames)
        self._last = time.monotonic()
        wsframe.write(self.stream, data)

    # -- writing ---------------------------------------------------------

    def _encode(self, frame: Frame) -> bytes:
        if self.event_ids:
            data = sse.event(frame.text, protocol.message_event_id(frame.text))
            return sse.chunk(data) if self.chunked else data
        return frame.sse if self.chunked else sse.event(frame.text)

    def _write(self, data: bytes) -> None:
        """Never raises; cuts off a client that stopped reading."""
        self._last = time.monotonic()
        try:
            wsframe.write(self.stream, data)
        except StreamClosedError:
            self._end()
        except StreamBufferFullError:
            self._cut_off(f"send buffer over {self.send_buffer} bytes")

    def _tick(self) -> None:
        """The keepalive comment, once the stream has been silent for ``--sse-keepalive`` seconds."""
        self._timer = None
        if self.done.done():
            return
        box = self._outbox
        if box is not None and box.stalled():
            self._cut_off("its replay made no progress between two keepalives")
            return
        silent = time.monotonic() - self._last
        if silent >= self._keepalive - 0.001:
            self._write(sse.chunk(sse.KEEPALIVE) if self.chunked else sse.KEEPALIVE)
            silent = 0.0
        if not self.done.done():
            self._timer = asyncio.get_running_loop().call_later(self._keepalive - silent, self._tick)

    def _pump(self) -> None:
        box = self._outbox
        if box is None:
            return
        if self.done.done() or self.stream.closed():
            self._outbox = None
            return
        try:
            box.pump(self, self.send_buffer)
        except StreamClosedError:
            self._outbox = None
            return
        except StreamBufferFullError:
            self._cut_off(f"send buffer over {self.send_buffer} bytes")
            return
        if not box.frames:
            self._outbox = None
            return
        if not box.waiting:
            done = wsframe.stream_flushed(self.stream)
            if done is None:
                self._outbox = None
                return
            box.waiting = True
            done.add_done_callback(partial(self._flushed, box))

    def _flushed(self, box: Outbox, done: asyncio.Future[None]) -> None:
        box.waiting = False
        if self._outbox is not box:
            return
        if done.cancelled() or done.exception() is not None:
            self._outbox = None
            return
        self._pump()

    def _cut_off(self, why: str) -> None:
        """A client that does not read what it is sent: counted, logged, its TCP connection cut."""
        self._outbox = None
        self.metrics.slow_client_disconnects.inc()
        log.warning("closing slow SSE client %s: %s", self.ip, why)
        self.stream.close()
        self._end()

    def _end(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.done.done():
            self.done.set_result(None)

    def release(self) -> None:
        """The response is over: the connection may serve other requests, with no cap of ours."""
        self._end()
        self._outbox = None
        if not self.stream.closed():
            self.stream.max_write_buffer_size = None


#: What answers a waiting poll: called once, with the poll's answer.
Waiter = Callable[[Answer], None]


class PollSession:
    """A long-polling session as a `Connection`: see the module's comment."""

    __slots__ = (
        "kind", "id", "ip", "session", "sessions", "frames", "seq", "live", "bulk", "ended", "waiter",
        "_wait_seq", "_wait_timer", "_expiry", "_wake", "socket_id",
    )

    def __init__(self, sessions: Sessions, session_id: str, ip: str) -> None:
        self.kind = POLL
        self.id = session_id
        self.socket_id: str | None = None  # once it whispers (rrr.session.Session.socket_id)
        self.ip = ip
        self.sessions = sessions
        self.session: Session | None = None
        # (number, frame, bulk) not yet acknowledged. A list: an empty deque costs 600 bytes an idle
        # session would keep for nothing, and what is acknowledged goes in one slice.
        self.frames: list[tuple[int, Frame, bool]] = []
        self.seq = 0  # the number of the last frame queued
        self.live = 0  # bytes of frames queued (what --send-buffer bounds)
        self.bulk = 0  # bytes of replays and member lists queued (what may_queue bounds)
        self.ended = False
        self.waiter: Waiter | None = None
        self._wait_seq = 0
        self._wait_timer: asyncio.TimerHandle | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self._wake: asyncio.Handle | None = None
        self._touch()

    # -- Connection ------------------------------------------------------

    def send_frame(self, frame: Frame) -> None:
        if self.ended:
            return
        self._push(frame, False)
        if self.live > self.sessions.send_buffer:
            self._overflow()
            return
        self._answer_soon()

    def send_bulk(self, frames: list[Frame]) -> None:
        if self.ended:
            return
        for frame in frames:
            self._push(frame, True)
        self._answer_soon()

    def may_queue(self, nbytes: int) -> bool:
        return self.bulk == 0 or self.bulk + nbytes <= self.sessions.bulk_limit

    def announced_subs(self, room: str) -> Iterable[str]:
        return self.session.announced_subs(room) if self.session is not None else ()

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        """The server ends the session: the ``close`` frame is its last, answered to the waiting
        poll (or the next one); its subscriptions leave now, as a closed socket's do."""
        if self.ended:
            return
        self.ended = True
        self.seq += 1
        self.frames.append((self.seq, close_frame(code or 1000, reason or ""), False))
        self._answer_soon()
        self.sessions.ended(self)
        session = self.session
        if session is not None:
            session.close()

    # -- polls -----------------------------------------------------------

    def poll(self, seq: int, waiter: Waiter) -> None:
        """A poll that took every frame up to ``seq``: answered now if there are later frames, else
        once one comes or after ``--poll-timeout``. An older poll still waiting is answered first."""
        if seq > self.seq:
            waiter(refused(400, f"seq {seq} is past this session's last frame ({self.seq})"))
            return
        self._touch()
        frames = self.frames
        taken = 0
        for n, frame, bulk in frames:
            if n > seq:
                break
            taken += 1
            if bulk:
                self.bulk -= len(frame.text)
            else:
                self.live -= len(frame.text)
        if taken:
            del frames[:taken]
        self._release_waiter(self._wait_seq)
        if frames:
            waiter(self._batch())
            return
        if self.ended:
            waiter(UNKNOWN)  # its close frame was taken: nothing of it is left
            self.sessions.forget(self)
            return
        self.waiter = waiter
        self._wait_seq = seq
        self._wait_timer = asyncio.get_running_loop().call_later(
            self.sessions.poll_timeout, self._release_waiter, seq,
        )

    def unwait(self, waiter: Waiter) -> None:
        """The client of a waiting poll went away: nothing is answered to it."""
        if self.waiter is waiter:
            self.waiter = None
            if self._wait_timer is not None:
                self._wait_timer.cancel()
                self._wait_timer = None

    def _release_waiter(self, seq: int) -> None:
        """Answer the waiting poll with nothing new (its time is up, or a newer poll came)."""
        waiter = self.waiter
        if waiter is not None:
            self.unwait(waiter)
            waiter(Answer(200, protocol.poll_batch(seq, [])))

    def _answer_soon(self) -> None:
        """Answer the waiting poll at the end of this loop turn, with every frame queued by then."""
        if self.waiter is not None and self._wake is None:
            self._wake = asyncio.get_running_loop().call_soon(self._answer)

    def _answer(self) -> None:
        self._wake = None
        waiter = self.waiter
        if waiter is None or not self.frames:
            return
        self.unwait(waiter)
        waiter(self._batch())

    def _batch(self) -> Answer:
        texts: list[str] = []
        size = 0
        last = self.seq
        for n, frame, _ in self.frames:
            if texts and size + len(frame.text) > MAX_POLL_ANSWER:
                break
            texts.append(frame.text)
            size += len(frame.text)
            last = n
        return Answer(200, protocol.poll_batch(last, texts))

    def _push(self, frame: Frame, bulk: bool) -> None:
        self.seq += 1
        self.frames.append((self.seq, frame, bulk))
        if bulk:
            self.bulk += len(frame.text)
        else:
            self.live += len(frame.text)

    def _overflow(self) -> None:
        """More than ``--send-buffer`` unacknowledged: the client does not poll, or loses every
        answer. What it was owed is dropped, and its last frame says why (1008), as a slow socket
        is cut off; the library reconnects and recovers the messages from history."""
        self.sessions.metrics.slow_client_disconnects.inc()
        log.warning("closing slow polling client %s: over %d bytes not acknowledged", self.ip,
                    self.sessions.send_buffer)
        self.frames.clear()
        self.live = self.bulk = 0
        self.close(1008, f"over {self.sessions.send_buffer} bytes not acknowledged")

    # -- expiry ----------------------------------------------------------

    def _touch(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        self._expiry = asyncio.get_running_loop().call_later(
            self.sessions.poll_timeout + POLL_GRACE, self._expire,
        )

    def _expire(self) -> None:
        """Nobody polled for ``--poll-timeout`` + 10 s (the tab closed, the network went)."""
        self._expiry = None
        if self.waiter is not None:  # cannot happen (a poll waits --poll-timeout at most): look again later
            self._touch()
            return
        self.ended = True
        if self.session is not None:
            self.session.close()
        self.sessions.forget(self)

    def release(self) -> None:
        for handle in (self._expiry, self._wait_timer, self._wake):
            if handle is not None:
                handle.cancel()
        self._expiry = self._wait_timer = self._wake = None
        self.waiter = None
        self.frames.clear()


Held = SseStream | PollSession


class Sessions:
    """This process's SSE and polling sessions by id, their caps, and what every one shares."""

    def __init__(
        self, shared: Shared, tag: str, *, send_buffer: int, bulk_limit: int, poll_timeout: float,
        sse_keepalive: float, max_sessions: int,
    ) -> None:
        self.shared = shared
        self.metrics = shared.metrics
        self.tag = tag
        self.send_buffer = send_buffer
        self.bulk_limit = bulk_limit
        self.poll_timeout = poll_timeout
        self.sse_keepalive = sse_keepalive
        self.max_sessions = max_sessions
        self._held: dict[str, Held] = {}
        self._live: set[str] = set()  # the ids of sessions not ended yet
        self._counts = {SSE: 0, POLL: 0}
        for kind in (SSE, POLL):
            self.metrics.sessions.labels(kind).set_function(partial(self._counts.__getitem__, kind))

    def __len__(self) -> int:
        return len(self._held)

    def new_id(self) -> str:
        """This process's tag, then 128 random bits: any process knows where the session lives."""
        return self.tag + secrets.token_urlsafe(16)

    def is_local(self, session_id: str) -> bool:
        return session_id.startswith(self.tag)

    @staticmethod
    def owner(session_id: str) -> str:
        """The tag of the process that holds ``session_id``."""
        return session_id[:8]

    def refusal(self, ip: str) -> Answer | None:
        """Why a new session from ``ip`` is refused (the caps a new socket meets), or None."""
        if not self.shared.addresses.may_open_socket(ip):
            self.metrics.limited.labels("sockets_per_ip").inc()
            return refused(429, f"at most {self.shared.addresses.max_sockets} sockets per client address", 10)
        if len(self._held) >= self.max_sessions:
            return refused(503, f"this server holds its maximum of {self.max_sessions} sessions; try later", 1)
        return None

    def add(self, held: Held) -> None:
        self._held[held.id] = held
        self._live.add(held.id)
        self._counts[held.kind] += 1
        self.shared.addresses.socket_opened(held.ip)

    def ended(self, held: Held) -> None:
        """``held`` no longer counts as a connection (``rrr_open_sessions``, its address's sockets);
        a polling session stays here until its close frame is taken or it expires."""
        if held.id in self._live and self._held.get(held.id) is held:
            self._live.discard(held.id)
            self._counts[held.kind] -= 1
            self.shared.addresses.socket_closed(held.ip)

    def get(self, session_id: str, kind: str) -> Held | None:
        held = self._held.get(session_id)
        return held if held is not None and held.kind == kind else None

    def forget(self, held: Held) -> None:
        self.ended(held)
        if self._held.get(held.id) is held:
            del self._held[held.id]
        held.release()

    def open_poll(self, ip: str, identity: Identity | None = None) -> PollSession:
        """``identity``: the connect proxy's answer at the handshake (the session is told `authenticated`)."""
        held = PollSession(self, self.new_id(), ip)
        self.add(held)
        held.session = Session(held, self.shared, ip, identity=identity)
        if self.shared.hub.closing:
            held.close(1001, "server shutting down")
        return held

    # -- requests (from a handler here, or handed over from another process) ----------

    async def post(self, kind: str, session_id: str, text: str) -> Answer:
        """One client frame, exactly as on ``/ws/``: 202 once done (its replies come down the
        stream or the polls), 429 over the frame rate (nothing done), 404 for a session gone."""
        held = self.get(session_id, kind)
        if held is None or held.ended or held.session is None:
            return UNKNOWN
        wait = held.session.admit()
        if wait:
            return refused(429, "more frames than --message-rate allows; send it again after Retry-After", wait)
        self.metrics.messages_in.inc()
        work = held.session.act(text)
        if work is not None:
            await work  # auth and publish: the next frame is taken once this one is done, as on a socket
        return ACCEPTED

    def poll(self, session_id: str, seq: int, waiter: Waiter) -> PollSession | None:
        """A poll of ``session_id``; None (and 404 answered) if there is no such session."""
        held = self.get(session_id, POLL)
        if not isinstance(held, PollSession):
            waiter(UNKNOWN)
            return None
        held.poll(seq, waiter)
        return held
