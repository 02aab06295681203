"""A request for a session another process holds, handed to that process through Redis.

Behind a round-robin balancer (no sticky sessions) a session's POSTs and polls reach any process,
but its state (its `Session`, its stream, its unacknowledged frames) lives in the one that opened
it. A session id starts with its process's tag (`rrr.edge.sessions.Sessions.new_id`), and every
process listens on an inbox named by its tag (`rrr.backplane.keys.inbox_channel`, on the one
pub/sub connection it already holds). A process that gets a request for another's session:

1. publishes it on the owner's inbox: ``Q <id> <its own tag> <post|poll> <sse|poll> <session> <seq|->``,
   a line break, then the POST's frame as it came;
2. the owner does exactly what it does for a request of its own (`Sessions.post`: the frame is
   taken, or refused with 429/404; `Sessions.poll`: answered now, or once a frame comes, or after
   ``--poll-timeout``) and publishes the answer on the asker's inbox: ``A <id> <status>
   <retry-after>``, a line break, the body;
3. the asker answers its client with it: 202 only once the owner took the frame.

So frames are kept once, in the owner's memory, and a poll costs Redis two small publishes only
when it lands elsewhere. PUBLISH says how many heard it: none means the owner is gone (stopped,
killed), and the asker answers 404 at once, so the library opens a new session. On a Redis
Cluster that number counts only one node's listeners, so there the asker first checks the owner's
liveness key (`rrr.backplane.keys.alive`, set with the presence TTL at each renewal, deleted when
the process leaves): missing, the answer is 404 at once too (a killed owner's key is gone within
``--presence-ttl``); one EXISTS per handed-over request, on a cluster only.
An owner that does not answer in time (a stalled process, a lost message) gets the client a 503:
for a POST the library then opens a new session (a 5xx leaves it unknown whether the frame was
taken), a poll it asks again.

The alternatives weighed (docs/guides/transports.md): proxying over HTTP between processes needs an
address per process, which ``--processes`` workers sharing one port do not have; keeping every
polling session's frames in Redis would cost a Redis write per frame per session (a fan-out to
5,000 polling members, 5,000 writes per message) where this costs nothing until a request lands
elsewhere. Measured in docs/benchmarks.md ("Transports").
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
from collections.abc import Awaitable, Callable
from functools import partial

from .. import protocol
from ..backplane import Publisher, keys
from ..errors import BackplaneError
from ..metrics import Metrics
from ..supervise import RateLimitedLog
from .sessions import POLL, SSE, UNKNOWN, Answer, Sessions, refused

log = logging.getLogger("rrr.handoff")


def _nothing_new(seq: int) -> Answer:
    """What a poll gets when nothing came within ``--poll-timeout``: it asks again after ``seq``."""
    return Answer(200, protocol.poll_batch(seq, []))


def _ignore() -> None:
    pass


_TAG_RE = re.compile(r"^[A-Za-z0-9_-]{8}\Z")
_KINDS = frozenset({SSE, POLL})


class Handoff:
    """This process's end of the handoff: it hands requests on, serves those handed to it, and
    matches the answers to what it is waiting for (see the module's comment)."""

    def __init__(
        self, sessions: Sessions, publisher: Publisher, metrics: Metrics, *, timeout: float,
        counts_receivers: bool = True,
    ) -> None:
        """``timeout``: how long a POST waits for the owner (a poll: ``--poll-timeout`` more);
        ``counts_receivers``: whether PUBLISH's count of listeners can be believed (not on a cluster)."""
        self.sessions = sessions
        self.publisher = publisher
        self.metrics = metrics
        self.timeout = timeout
        self.counts_receivers = counts_receivers
        self.tag = sessions.tag
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Answer]] = {}
        self._polls: dict[int, int] = {}  # a handed-over poll's request id -> the seq it asked after
        self._idle = asyncio.Event()  # set while nothing is handed over from here
        self._idle.set()
        self._tasks: set[asyncio.Task[None]] = set()
        #: Set by `settle` at shutdown: polls handed over from here are answered at once.
        self.settling = False
        self._log = RateLimitedLog(log)

    # -- what handlers ask --------------------------------------------------------

    async def post(self, kind: str, session_id: str, text: str) -> Answer:
        if self.sessions.is_local(session_id):
            return await self.sessions.post(kind, session_id, text)
        return await self._forward("post", kind, session_id, "-", text, self.timeout)

    def poll(self, session_id: str, seq: int) -> tuple[asyncio.Future[Answer], Callable[[], None]]:
        """A long poll: its answer, and what to call if its client goes away first."""
        if not self.sessions.is_local(session_id) and self.settling:
            nothing: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
            nothing.set_result(_nothing_new(seq))
            return nothing, _ignore
        if not self.sessions.is_local(session_id):
            task = asyncio.ensure_future(
                self._forward("poll", POLL, session_id, str(seq), "", self.sessions.poll_timeout + self.timeout),
            )

            def forget() -> None:
                task.cancel()

            return task, forget
        answer: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()

        def waiter(result: Answer) -> None:
            if not answer.done():
                answer.set_result(result)

        held = self.sessions.poll(session_id, seq, waiter)

        def cancel() -> None:
            if held is not None:
                held.unwait(waiter)
            answer.cancel()

        return answer, cancel

    async def _forward(self, op: str, kind: str, session_id: str, arg: str, body: str, timeout: float) -> Answer:
        rid = next(self._ids)
        answer: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._pending[rid] = answer
        if op == "poll":
            self._polls[rid] = int(arg)
        self._idle.clear()
        result = "timeout"
        try:
            if not self.counts_receivers and not await self._owner_alive(session_id):
                result = "gone"
                return UNKNOWN
            try:
                heard = await self.publisher.publish(
                    keys.inbox_channel(self.sessions.owner(session_id)),
                    f"Q {rid} {self.tag} {op} {kind} {session_id} {arg}\n{body}",
                )
            except BackplaneError:
                result = "unavailable"
                return refused(503, "the message bus is unavailable; try again", 1)
            if heard == 0 and self.counts_receivers:
                result = "gone"
                return UNKNOWN
            try:
                got = await asyncio.wait_for(answer, timeout)
            except asyncio.TimeoutError:
                return refused(503, "the process holding this session did not answer", 1)
            except asyncio.CancelledError:
                result = "abandoned"  # the client went away while its poll waited
                raise
            result = str(got.status)
            return got
        finally:
            self._pending.pop(rid, None)
            self._polls.pop(rid, None)
            if not self._pending:
                self._idle.set()
            self.metrics.handoffs.labels(op, result).inc()

    async def _owner_alive(self, session_id: str) -> bool:
        """Where PUBLISH cannot say whether anyone heard (a cluster): whether the owner's liveness key
        is there (`keys.alive`), asked before anything is handed over, so a frame is never both taken
        and answered 404. If Redis cannot say, the request is handed over as before (and may time out)."""
        try:
            return await self.publisher.alive(self.sessions.owner(session_id))
        except BackplaneError:
            return True

    # -- the inbox ------------------------------------------------------------------

    def inbox(self, data: bytes) -> None:
        """One message on our inbox: a request for one of our sessions, or an answer we wait for.
        Only processes write there, yet what Redis hands us is checked before it is believed: a
        malformed one is counted and dropped."""
        try:
            head, _, body = data.partition(b"\n")
            fields = head.decode("ascii").split(" ")
            if fields[0] == "A" and len(fields) == 4:
                rid, status, retry = int(fields[1]), int(fields[2]), float(fields[3])
                pending = self._pending.get(rid)
                if pending is not None and not pending.done():
                    pending.set_result(Answer(status, body.decode("utf-8"), retry))
                return
            if fields[0] != "Q" or len(fields) != 7:
                raise ValueError("not a request or an answer")
            _, rid_text, asker, op, kind, session_id, arg = fields
            rid = protocol.parse_uint(rid_text)
            if not (_TAG_RE.match(asker) and kind in _KINDS and protocol.is_session_id(session_id)):
                raise ValueError("malformed request")
            reply = partial(self._reply, asker, rid)
            if op == "post":
                self._spawn(self._serve_post(reply, kind, session_id, body.decode("utf-8")))
            elif op == "poll" and kind == POLL:
                self.sessions.poll(session_id, protocol.parse_uint(arg), reply)
            else:
                raise ValueError(f"unknown request {op!r}")
        except (ValueError, UnicodeDecodeError):
            self.metrics.malformed_payloads.inc()
            self._log.warning("inbox", "dropped a malformed message on this process's inbox")

    async def _serve_post(self, reply: Callable[[Answer], None], kind: str, session_id: str, text: str) -> None:
        reply(await self.sessions.post(kind, session_id, text))

    def _reply(self, asker: str, rid: int, answer: Answer) -> None:
        message = f"A {rid} {answer.status} {answer.retry_after:g}\n{answer.body}"
        self._spawn(self._publish(keys.inbox_channel(asker), message))

    async def _publish(self, channel: str, message: str) -> None:
        """An answer is sent again until the asker stops waiting for it (``timeout``): a POST's frame
        was taken, and an answer lost to a Redis blip would get its client a 503, after which the
        library opens a new session and this one counts in its rooms until it expires (#27). A second
        copy of an answer is harmless: the asker takes the first and drops any other."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        pause = 0.05
        while True:
            try:
                await self.publisher.publish(channel, message)
                return
            except BackplaneError as e:
                if loop.time() + pause >= deadline:
                    # The asker times out and answers its client 503; the client asks again.
                    self.metrics.task_errors.labels("handoff").inc()
                    self._log.warning("publish", "could not answer a handed-over request: %s", e)
                    return
            await asyncio.sleep(pause)
            pause = min(pause * 2, 1.0)

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (e := task.exception()) is not None:
            self.metrics.task_errors.labels("handoff").inc()
            self._log.warning("task", "serving a handed-over request failed: %s: %s", type(e).__name__, e)

    async def settle(self) -> None:
        """At shutdown, first, while this process still listens on its inbox: every poll handed over
        from here is answered now with nothing new (its client polls again, and reaches a process that
        stays), and every POST handed over from here waits for its owner's answer (within its own
        timeout). A balancer's requests in flight to a draining process are otherwise cut (a 502) or
        answered 5xx, though the owner took the frame; the library then opens a new session, and the
        one it left counts in its rooms until it expires (the soak's drains, #27)."""
        self.settling = True
        for rid, seq in list(self._polls.items()):
            pending = self._pending.get(rid)
            if pending is not None and not pending.done():
                pending.set_result(_nothing_new(seq))
        await self._idle.wait()

    async def drain(self) -> None:
        """At shutdown, once every session was told 1001: the answers still owed to other processes'
        polls go out (a waiting poll is answered at the end of the loop turn its close came in)."""
        for _ in range(3):
            await asyncio.sleep(0)
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
