"""The soak's SSE and polling clients (bench/soak.py) against a real HTTP server that takes their POSTs: a room
left while a new session's subscribes are out is never subscribed on it, and a frame is POSTed only once the one
before it was answered (the browser library's order). Either race left the 30-minute run's presence-soak-0 one
member too many for ~170 s: the client had left the room, its new polling session held it (#27); a subscribe asked
again after a re-auth is not sent for a room left while the auth was out. A failed long poll
is asked again as the library asks it, and the session given up only after the library's retries or a 404."""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import tornado.httpclient
import tornado.httpserver
import tornado.web

from bench.soak import Config, PollClient, Soak, Sub
from support.processes import free_port


class Taker:
    """What the server saw, in order: ``("in", frame)`` as a POST arrives, ``("out", frame)`` as it is answered.
    A POST whose frame is in ``hold`` is answered only once ``release`` is set."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self.hold: set[str] = set()
        self.release = asyncio.Event()
        self.arrived = asyncio.Event()


def label(body: bytes) -> str:
    frame = json.loads(body)
    return f"{frame['type']} {frame.get('room', '')}".strip()


class SessionPost(tornado.web.RequestHandler):
    def initialize(self, taker: Taker) -> None:
        self.taker = taker

    async def post(self, session_id: str) -> None:
        what = label(self.request.body)
        self.taker.seen.append(("in", what))
        self.taker.arrived.set()
        if what in self.taker.hold:
            await self.taker.release.wait()
        self.taker.seen.append(("out", what))
        self.set_status(202)


class Local(Soak):
    """The soak's client code as it runs, its POSTs to the server above instead of nginx."""

    base = ""

    async def http(self, path: str, method: str = "GET", body: str | bytes | None = None,
                   headers: dict[str, str] | None = None, timeout: float = 10.0,
                   base: str | None = None) -> tornado.httpclient.HTTPResponse:
        return await super().http(path, method, body, headers, timeout, base or self.base)


def served_by(handler: type[tornado.web.RequestHandler], **kwargs: Any,
              ) -> tuple[PollClient, tornado.httpserver.HTTPServer]:
    """The soak's polling client, in session ``S...``, of a real loopback server whose ``/poll/<session>/``
    is ``handler`` (given ``kwargs``)."""
    port = free_port()
    server = tornado.httpserver.HTTPServer(tornado.web.Application([(r"/poll/([^/]+)/", handler, kwargs)]))
    server.listen(port, "127.0.0.1")
    cfg = Config(minutes=1, seed=1, smoke=True, clients=3, rooms=4, publish_rate=1, churn_rate=1,
                 fault_gap=(1, 2), webhooks_down_s=1, burst=1)
    soak = Local(cfg, Path(tempfile.mkdtemp(prefix="soak-client-")))
    soak.base = f"http://127.0.0.1:{port}"
    client = PollClient(soak, 1, None)
    client.session_id = "S" * 30
    return client, server


async def client_and_server() -> tuple[PollClient, Taker, tornado.httpserver.HTTPServer]:
    taker = Taker()
    client, server = served_by(SessionPost, taker=taker)
    for room in ("stays", "left"):
        client.subs[room] = Sub(f"{client.name}-{room}", room)
    return client, taker, server


async def left_while_held(client: PollClient, taker: Taker, server: tornado.httpserver.HTTPServer, hold: str,
                          first: Callable[[], Awaitable[Any]]) -> list[tuple[str, str]]:
    """``first`` runs, and its POST of ``hold`` is held; meanwhile a churn step leaves room "left"; then the
    POST is answered and both finish. What the server saw, in order."""
    taker.hold = {hold}
    try:
        started = asyncio.ensure_future(first())
        await asyncio.wait_for(taker.arrived.wait(), 10)
        leaving = asyncio.ensure_future(client.unsubscribe("left"))  # a churn step meanwhile
        await asyncio.sleep(0.3)
        taker.release.set()
        await asyncio.wait_for(asyncio.gather(started, leaving), 10)
        return taker.seen
    finally:
        server.stop()


def posted(seen: list[tuple[str, str]]) -> list[str]:
    return [what for way, what in seen if way == "in"]


def test_a_room_left_while_a_new_sessions_subscribes_are_out_is_not_subscribed_on_it() -> None:
    async def run() -> list[tuple[str, str]]:
        client, taker, server = await client_and_server()
        return await left_while_held(client, taker, server, "subscribe stays", client.opening)

    seen = posted(asyncio.run(run()))
    assert seen == ["subscribe stays", "unsubscribe left"], seen


def test_a_frame_is_posted_only_once_the_one_before_it_was_answered() -> None:
    async def run() -> list[tuple[str, str]]:
        client, taker, server = await client_and_server()
        client.connected = True
        return await left_while_held(client, taker, server, "subscribe left",
                                     lambda: client.send(client.subscribe_frame(client.subs["left"])))

    seen = asyncio.run(run())
    # Behind a round-robin balancer the second POST may be taken first (the first handed over through Redis):
    # only one out at a time keeps the server's order the client's.
    assert seen == [("in", "subscribe left"), ("out", "subscribe left"), ("in", "unsubscribe left"),
                    ("out", "unsubscribe left")], seen


def test_a_subscribe_retried_after_a_reauth_is_not_sent_for_a_room_left_while_the_auth_was_out() -> None:
    async def run() -> list[tuple[str, str]]:
        client, taker, server = await client_and_server()
        client.user = "ada"
        client.soak.tokens = {"ada": "token"}
        client.connected = True
        return await left_while_held(client, taker, server, "auth",
                                     lambda: client.retry_subscribe(client.subs["left"], reauth=True))

    seen = posted(asyncio.run(run()))
    assert seen == ["auth", "unsubscribe left"], seen


class Polls:
    """A session's polls as the server saw them (their ``seq``), answered in the order ``answers`` says: a status,
    or ``close`` for a 200 whose frame ends the session; past the list, 503."""

    def __init__(self, answers: list[int | str]) -> None:
        self.answers = list(answers)
        self.seqs: list[int] = []


class SessionPoll(tornado.web.RequestHandler):
    def initialize(self, polls: Polls) -> None:
        self.polls = polls

    def get(self, session_id: str) -> None:
        seq = int(self.get_query_argument("seq"))
        self.polls.seqs.append(seq)
        answer = self.polls.answers.pop(0) if self.polls.answers else 503
        if answer == "close":
            self.write({"seq": seq + 1, "frames": [{"type": "close", "code": 1001, "reason": "draining"}]})
            return
        self.set_status(int(answer))
        self.write({"error": "the process holding this session did not answer"})


async def poll_against(answers: list[int | str]) -> list[int]:
    """The seqs of every poll the soak's client asked of its session before it gave the session up."""
    polls = Polls(answers)
    client, server = served_by(SessionPoll, polls=polls)
    try:
        await asyncio.wait_for(client._poll(7), 60)
    finally:
        server.stop()
    return polls.seqs


def test_a_failed_poll_is_asked_again_with_the_same_seq_as_the_library_does() -> None:
    # A poll handed over through Redis can fail once (the owner's answer lost while a master is stalled: 503 after
    # --poll-timeout + 2 x --redis-timeout + 5 s). The session is still there; giving it up left it, and its
    # subscriptions, counted until it expired --poll-timeout + 10 s later (the 30-minute run's counts one too
    # many ~45 s after two Redis stalls).
    seqs = asyncio.run(poll_against([503, "close"]))
    assert seqs == [7, 7], seqs


def test_a_session_is_given_up_after_the_librarys_retries() -> None:
    seqs = asyncio.run(poll_against([503, 502, 503, "close"]))
    assert seqs == [7, 7, 7], seqs


def test_a_gone_session_is_given_up_at_once() -> None:
    seqs = asyncio.run(poll_against([404, "close"]))
    assert seqs == [7], seqs
