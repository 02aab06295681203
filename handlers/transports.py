"""``/sse/`` and ``/poll/``: the fallback transports, each a door onto the same sessions as ``/ws/``
(`rrr.edge.sessions`); a request for a session another process holds is handed to it
(`rrr.edge.handoff`). docs/guides/transports.md has the contract.

Every answer here carries ``Cache-Control: no-store`` and ``X-Accel-Buffering: no`` (nginx must
not buffer a stream), follows the WebSocket handshake's Origin rule (a foreign ``Origin`` gets 403,
none is allowed), and names an allowed Origin in ``Access-Control-Allow-Origin`` so a page of
another origin may use it (no credentials); JSON POSTs get their CORS preflight.
"""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import dataclass
from typing import Any

import tornado.httputil
import tornado.web
from tornado.iostream import IOStream, StreamClosedError

from handlers.api import JsonHandler
from rrr import protocol
from rrr.auth import Identity, TokenError, needs_grant
from rrr.edge import sse
from rrr.edge.handoff import Handoff
from rrr.edge.headers import empty_in_place
from rrr.edge.origins import origin_allowed
from rrr.edge.requestlog import loggable
from rrr.edge.sessions import Answer, Sessions, SseStream, refused
from rrr.errors import BackplaneError
from rrr.proxies import HandshakeRefused
from rrr.session import Session, Shared


@dataclass(frozen=True)
class Transports:
    """What the handlers here share: the sessions, the handoff, and the rules of the edge."""

    sessions: Sessions
    handoff: Handoff
    shared: Shared
    allowed_origins: frozenset[str]
    xheaders: bool
    max_message_size: int


class NoStore(JsonHandler):
    """Every answer under ``/sse/`` and ``/poll/``, errors included (``set_default_headers`` runs again
    for them)."""

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Accel-Buffering", "no")

    def compute_etag(self) -> None:
        """None: nothing here is cached, so nothing may be answered 304."""
        return None


class TransportNotFound(NoStore):
    """Any other path under ``/sse/`` and ``/poll/``: the JSON 404, with the headers above."""

    def prepare(self) -> None:
        raise tornado.web.HTTPError(404, "no such path; see docs/guides/transports.md")


class TransportHandler(NoStore):
    def initialize(self, transports: Transports) -> None:
        self.t = transports
        # Kept: a stream or a waiting poll lets go of the request's headers (see `park`).
        self.origin = self.request.headers.get("Origin")
        self.gone = False  # the client hung up (while the connect proxy was asked, say)
        self.set_default_headers()  # now that the Origin can be judged

    def set_default_headers(self) -> None:
        super().set_default_headers()
        origin = getattr(self, "origin", None)
        if origin is not None and getattr(self, "t", None) is not None and self._origin_ok(origin):
            self.set_header("Access-Control-Allow-Origin", origin)
            self.set_header("Access-Control-Expose-Headers", "Retry-After")
            self.set_header("Vary", "Origin")

    def _host(self) -> str:
        host = self.request.host
        if self.t.xheaders:
            host = self.request.headers.get("X-Forwarded-Host", host).split(",")[0]
        return host

    def _origin_ok(self, origin: str) -> bool:
        return origin_allowed(origin, self._host(), self.t.allowed_origins, self.request.protocol)

    def prepare(self) -> None:
        origin = self.origin
        if origin is not None and not self._origin_ok(origin):
            raise tornado.web.HTTPError(
                403, "origin %s not allowed for %s://%s", loggable(origin, 100), self.request.protocol,
                loggable(self._host(), 100),
            )

    def options(self, *args: str) -> None:
        """The preflight of a page of an allowed Origin (a JSON POST is not a simple request)."""
        self.set_status(204)
        self.set_header("Access-Control-Allow-Methods", "GET, POST")
        self.set_header("Access-Control-Allow-Headers", "Content-Type")
        self.set_header("Access-Control-Max-Age", "600")
        self.finish()

    def answer(self, answer: Answer) -> None:
        self.set_status(answer.status)
        if answer.retry_after:
            self.set_header("Retry-After", str(max(1, math.ceil(answer.retry_after))))
        if answer.body:
            self.set_header("Content-Type", "application/json; charset=UTF-8")
            self.finish(answer.body)
        else:
            self.finish()

    @property
    def ip(self) -> str:
        return self.request.remote_ip or ""

    def on_connection_close(self) -> None:
        self.gone = True

    def asks_connect_proxy(self) -> bool:
        return self.t.shared.asks_connect_proxy(self.request.headers)

    async def proxied_identity(self, transport: str) -> Identity | None | Answer:
        """``--connect-proxy-url``, a handshake with a cookie or ``Authorization`` and no token: who
        the application says it is, asked as ``/ws/`` asks it (after the Origin check and the caps a
        new session meets, so an address at its cap costs the backend nothing). A refusal comes back
        as the Answer to give: 403, or 503 with ``Retry-After``, never an anonymous session for want
        of an answer. The caller judges the caps again before it counts the session: others may
        have opened while the backend was asked."""
        refusal = self.t.sessions.refusal(self.ip)
        if refusal is not None:
            return refusal
        try:
            return await self.t.shared.connect_identity(transport, self.request.headers, self.ip)
        except HandshakeRefused as e:
            return refused(e.status, e.reason, e.retry_after or 0)

    async def identify(self, transport: str) -> tuple[bool, Identity | None]:
        """Every door's handshake: who the connect proxy says this is when the request asks it
        (a cookie or ``Authorization``, no token), else anonymous. False when there is nothing more
        to do: the refusal was answered, or the client left while the backend was asked (no session
        for a page that is gone: it would wait out its expiry for nobody)."""
        if not self.asks_connect_proxy():
            return True, None
        asked = await self.proxied_identity(transport)
        if isinstance(asked, Answer):
            self.answer(asked)
            return False, None
        return not self.gone, asked

    def admitted(self) -> bool:
        """The caps a new session meets, judged (again) just before it is counted; a refusal answered."""
        refusal = self.t.sessions.refusal(self.ip)
        if refusal is not None:
            self.answer(refusal)
            return False
        return True

    def park(self) -> None:
        """While a poll waits or a stream lives, what it no longer needs goes: the request's headers
        (a browser's cookies and user agent, 1-2 KiB) and the response's, written already or set
        again (``clear``) when the answer comes. About 1 KiB per session, as a socket sheds its own
        (handlers/sockets.py); emptied with their tables, which ``clear()`` would keep (issue 25)."""
        empty_in_place(self.request.headers)
        self._headers = tornado.httputil.HTTPHeaders()


class _Streaming(TransportHandler):
    """An open ``text/event-stream`` response, as long as its session lives."""

    conn: SseStream | None = None

    def open_stream(self, event_ids: bool = False) -> SseStream:
        """Registered before a byte goes out: a POST naming it may come as soon as its event is read."""
        sessions = self.t.sessions
        stream = getattr(self.request.connection, "stream", None)
        assert isinstance(stream, IOStream)
        # Tornado frames a response without a length in chunks for an HTTP/1.1 request (tests check it).
        conn = self.conn = SseStream(
            stream, chunked=self.request.version == "HTTP/1.1", metrics=sessions.metrics,
            send_buffer=sessions.send_buffer, bulk_limit=sessions.bulk_limit, keepalive=sessions.sse_keepalive,
            ip=self.ip, session_id=sessions.new_id(), event_ids=event_ids,
        )
        sessions.add(conn)
        self.set_header("Content-Type", "text/event-stream")
        return conn

    async def serve(self, conn: SseStream, flushing: Any) -> None:
        """Until the stream ends; then the session goes, as a closed socket's does."""
        try:
            try:
                await flushing
            except StreamClosedError:
                return
            self.park()  # the response's headers are written
            await conn.done
        finally:
            if conn.session is not None:
                conn.session.close()
            self.t.sessions.forget(conn)

    def on_connection_close(self) -> None:
        super().on_connection_close()
        if self.conn is not None:
            self.conn.release()


class SseHandler(_Streaming):
    """``GET /sse/``: a session event, then every frame of ``/ws/`` as one event."""

    async def get(self) -> None:
        go_on, identity = await self.identify("sse")
        if not (go_on and self.admitted()):
            return
        conn = self.open_stream()
        self.write(sse.event(protocol.dumps(protocol.session_message(conn.id))))
        flushing = self.flush()  # the headers and the session event are in the stream now
        # Identified at the handshake: told `authenticated` next, as a socket on /ws/ is.
        conn.session = Session(conn, self.t.shared, self.ip, identity=identity)
        if self.t.shared.hub.closing:
            conn.close(1001, "server shutting down")
        await self.serve(conn, flushing)


class SseCountHandler(_Streaming):
    """``GET /sse/count/<slug>/``: the frames of ``/ws/count/<slug>/`` as events, message events with
    ``id: <offset>:<epoch>``; ``Last-Event-ID`` (what an EventSource sends when it reconnects) or
    ``?since=&epoch=`` replays what was missed; ``?token=``, or else the connect proxy, as on the
    socket. The proxy is told ``"transport": "sse"``: the contract's values are ``ws``, ``ws_count``,
    ``sse``, ``poll`` and ``pusher``, and an application that checks them knows no other."""

    async def get(self, room: str) -> None:
        try:
            since = protocol.since_from_query(self.get_query_argument("since", None),
                                              self.get_query_argument("epoch", None))
            last = self.request.headers.get("Last-Event-ID")
            if last:  # newer than the URL's since: where the stream that reconnects stopped
                since = protocol.since_from_event_id(last)
        except ValueError as e:
            raise tornado.web.HTTPError(400, str(e)) from None
        identity: Identity | None = None
        token = self.get_query_argument("token", None)
        if token:
            identity = await self._token_identity(room, token)
        else:
            go_on, identity = await self.identify("sse")
            if not go_on:
                return
        if needs_grant(room) and not (identity is not None and identity.may_read(room)):
            raise tornado.web.HTTPError(403, "this room needs a token that grants it (?token=<jwt>)")
        if not self.admitted():
            return
        conn = self.open_stream(event_ids=True)
        flushing = self.flush()
        conn.session = Session(conn, self.t.shared, self.ip, room=room, identity=identity, since=since)
        if self.t.shared.hub.closing:
            conn.close(1001, "server shutting down")
        await self.serve(conn, flushing)

    async def _token_identity(self, room: str, token: str) -> Identity | None:
        """``?token=<jwt>``: a bad one is 403 where the room needs a grant (a public room opens without it)."""
        try:
            identity = await self.t.shared.verifier.verify_async(token)
        except TokenError as e:
            if needs_grant(room):
                raise tornado.web.HTTPError(403, f"bad token: {e.reason}") from None
            return None
        try:
            revoked = await self.t.shared.revoked(identity)
        except BackplaneError:
            raise tornado.web.HTTPError(503, "cannot check the token now; try again") from None
        if revoked:
            raise tornado.web.HTTPError(403, "this user's tokens issued before its last sign-out are revoked")
        return identity


class PollOpenHandler(TransportHandler):
    """``GET /poll/``: a new session, answered at once: ``{"session", "seq": 0, "frames": []}``."""

    async def get(self) -> None:
        go_on, identity = await self.identify("poll")
        if not (go_on and self.admitted()):
            return
        # Identified at the handshake: its first frame is `authenticated`, as on /ws/.
        held = self.t.sessions.open_poll(self.ip, identity)
        # Nothing is queued yet, unless the server is draining (then its close frame, 1001).
        self.answer(Answer(200, protocol.poll_opening(held.id, held.seq, [f.text for _, f, _ in held.frames])))


class SessionHandler(TransportHandler):
    """``POST /sse/<session>/`` and ``POST /poll/<session>/``: one client frame; ``GET
    /poll/<session>/?seq=<n>``: the session's frames after ``n``."""

    def initialize(self, transports: Transports, kind: str) -> None:  # type: ignore[override]
        super().initialize(transports)
        self.kind = kind
        self._cancel: Any = None

    def prepare(self) -> None:
        super().prepare()
        if self.request.method != "POST":
            return
        ctype = self.request.headers.get("Content-Type", "")
        if ctype.split(";", 1)[0].strip().lower() != "application/json":
            raise tornado.web.HTTPError(415, "a frame is POSTed as Content-Type: application/json")
        declared = self.request.headers.get("Content-Length")
        limit = self.t.max_message_size
        if declared is not None:
            try:
                length = protocol.parse_uint(declared, 1 << 62)
            except ValueError:
                raise tornado.web.HTTPError(400, "Content-Length must be a non-negative integer") from None
            if length > limit:
                raise tornado.web.HTTPError(413, f"a frame is at most {limit} bytes (--max-message-size)")

    async def post(self, session_id: str) -> None:
        body = self.request.body
        if len(body) > self.t.max_message_size:
            raise tornado.web.HTTPError(413, f"a frame is at most {self.t.max_message_size} bytes (--max-message-size)")
        try:
            text = body.decode("utf-8")
            frame = json.loads(text)
        except (UnicodeDecodeError, ValueError, RecursionError):
            frame = None
        if not isinstance(frame, dict):
            raise tornado.web.HTTPError(400, "the body must be exactly one frame: one JSON object, as on /ws/")
        if not protocol.is_session_id(session_id):
            self.answer(Answer(404, protocol.dumps(protocol.http_error(404, "unknown session"))))
            return
        self.answer(await self.t.handoff.post(self.kind, session_id, text))

    async def get(self, session_id: str) -> None:
        if self.kind != "poll":
            raise tornado.web.HTTPError(405, "a stream's frames come on its GET /sse/ response")
        try:
            seq = protocol.parse_uint(self.get_query_argument("seq"))
        except (ValueError, tornado.web.MissingArgumentError):
            raise tornado.web.HTTPError(400, "a poll says what it took: ?seq=<number of the last frame>") from None
        if not protocol.is_session_id(session_id):
            self.answer(Answer(404, protocol.dumps(protocol.http_error(404, "unknown session"))))
            return
        answer, self._cancel = self.t.handoff.poll(session_id, seq)
        if not answer.done():
            self.park()  # a poll may wait --poll-timeout
        try:
            result = await answer
        except asyncio.CancelledError:  # its client went away (on_connection_close)
            return
        finally:
            self._cancel = None
        self.clear()  # the default headers again
        self.answer(result)

    def on_connection_close(self) -> None:
        super().on_connection_close()
        cancel, self._cancel = self._cancel, None
        if cancel is not None:
            cancel()
