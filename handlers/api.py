"""JSON API: room state, server-side publish, health and metrics."""

from __future__ import annotations

import hmac
import math
from collections.abc import Awaitable, Callable
from typing import Any

import tornado.web

from handlers.base import SecureHeaders
from rrr import protocol
from rrr.auth import needs_grant
from rrr.backplane import History, PresenceReads
from rrr.errors import BackplaneError, OutcomeUnknown
from rrr.limits import RateLimiter
from rrr.metrics import Metrics
from rrr.protocol import BROWSER_PREFIX, validate_json_payload


class JsonHandler(SecureHeaders):
    """Errors as JSON with a reason a person can act on."""

    def write(self, chunk: str | bytes | dict[str, Any]) -> None:
        """A dict goes through ``protocol.dumps``, the one encoder every frame uses, not Tornado's
        own ``json_encode``: the API and the sockets then agree byte for byte on what JSON is."""
        if isinstance(chunk, dict):
            self.set_header("Content-Type", "application/json; charset=UTF-8")
            chunk = protocol.dumps(chunk)
        super().write(chunk)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        reason = self._reason
        exc = kwargs.get("exc_info")
        if exc and isinstance(exc[1], tornado.web.HTTPError) and exc[1].log_message:
            reason = exc[1].log_message
        if status_code == 401:
            self.set_header("WWW-Authenticate", 'Bearer realm="rrr"')
        self.finish(protocol.http_error(status_code, reason))


def bearer_matches(handler: tornado.web.RequestHandler, key: str) -> bool:
    """``Authorization: Bearer <key>``, compared in constant time; never true for an empty key."""
    auth = handler.request.headers.get("Authorization", "")
    return bool(key) and auth.startswith("Bearer ") and hmac.compare_digest(auth[7:].strip().encode(), key.encode())


def require_server_key(handler: tornado.web.RequestHandler, key: str, disabled: str) -> None:
    """403 when the server has no key (``disabled`` says what is off), 401 without a Bearer
    token, 403 with a wrong one."""
    if not key:
        raise tornado.web.HTTPError(403, disabled)
    if not handler.request.headers.get("Authorization", "").startswith("Bearer "):
        raise tornado.web.HTTPError(401, "missing 'Authorization: Bearer <token>'")
    if not bearer_matches(handler, key):
        raise tornado.web.HTTPError(403, "wrong API token")


def refuse_over_rate(handler: JsonHandler, rate: RateLimiter, metrics: Metrics) -> bool:
    """Answer 429 with Retry-After (and return True) when the client address is over ``--api-rate``."""
    wait = rate.take(handler.request.remote_ip or "")
    if not wait:
        return False
    refuse_429(handler, metrics, "api_rate", wait, "too many requests from this address; see Retry-After")
    return True


def refuse_429(handler: JsonHandler, metrics: Metrics, limit: str, wait: float, reason: str) -> None:
    """429 with Retry-After (whole seconds, at least 1), counted as ``limit``."""
    metrics.limited.labels(limit).inc()
    # Not an HTTPError: send_error would clear the Retry-After header.
    handler.set_status(429)
    handler.set_header("Retry-After", str(max(1, math.ceil(wait))))
    handler.finish(protocol.http_error(429, reason))


def require_read_grant(handler: tornado.web.RequestHandler, slug: str, key: str) -> None:
    if needs_grant(slug) and not bearer_matches(handler, key):
        raise tornado.web.HTTPError(403, "private and presence rooms need 'Authorization: Bearer <--api-token>'")


class RoomHandler(JsonHandler):
    def initialize(self, reads: PresenceReads, metrics: Metrics, rate: RateLimiter, token: str) -> None:
        self.reads = reads
        self.metrics = metrics
        self.rate = rate
        self.token = token

    async def get(self, slug: str) -> None:
        require_read_grant(self, slug, self.token)
        if refuse_over_rate(self, self.rate, self.metrics):
            return
        try:
            state = await self.reads.room_state(slug)
        except BackplaneError:
            raise tornado.web.HTTPError(503, "redis unavailable") from None
        self.set_header("Cache-Control", "no-store")
        self.finish({"room": slug, "connections": state.connections, "tabs": state.tabs, "updated": state.updated})


class DisconnectHandler(JsonHandler):
    """``POST /api/users/<sub>/disconnect``: sign a user out everywhere (the server key only)."""

    def initialize(self, reads: PresenceReads, token: str, keep_for: float) -> None:
        self.reads = reads
        self.token = token
        self.keep_for = keep_for

    async def post(self, user: str) -> None:
        require_server_key(self, self.token, "the server has no --api-token")
        if not user or len(user) > 128:
            raise tornado.web.HTTPError(400, "a user id is 1 to 128 characters")
        try:
            at = await self.reads.revoke(user, self.keep_for)
        except BackplaneError:
            raise tornado.web.HTTPError(503, "redis unavailable: nothing was revoked") from None
        self.set_status(202)
        self.finish({"user": user, "revoked_at": at})


class MembersHandler(JsonHandler):
    """``GET /api/rooms/<slug>/members?after=&limit=``: a page of a presence room's members (one
    entry per user, ascending user ids after ``after``), with ``total`` and ``more``. ``limit``
    defaults to, and is capped at, ``--presence-list-max``."""

    def initialize(self, reads: PresenceReads, token: str, list_max: int) -> None:
        self.reads = reads
        self.token = token
        self.list_max = list_max

    async def get(self, slug: str) -> None:
        require_read_grant(self, slug, self.token)
        after = self.get_query_argument("after", "")
        if len(after) > protocol.USER_ID_MAX:
            raise tornado.web.HTTPError(400, f"after is a user id: at most {protocol.USER_ID_MAX} characters")
        limit = self.list_max
        raw = self.get_query_argument("limit", None)
        if raw is not None:
            try:
                limit = min(protocol.parse_uint(raw), self.list_max)
            except ValueError:
                raise tornado.web.HTTPError(400, f"limit must be an integer from 1 to {self.list_max}") from None
            if limit < 1:
                raise tornado.web.HTTPError(400, f"limit must be an integer from 1 to {self.list_max}")
        try:
            members = await self.reads.members(slug) if protocol.is_presence_room(slug) else {}
        except BackplaneError:
            raise tornado.web.HTTPError(503, "redis unavailable") from None
        self.set_header("Cache-Control", "no-store")
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(protocol.members_page_json(slug, members, after, limit))


@tornado.web.stream_request_body
class PublishHandler(JsonHandler):
    """What a Django (or any) backend calls to reach every browser in a room.

    The body is streamed so the token and the declared size are judged before a byte of it is
    read: a caller without the token cannot make the server receive (let alone buffer) a body,
    and an authorised one can make it hold at most ``max_size`` bytes.
    """

    def initialize(
        self, history: History, metrics: Metrics, token: str, max_size: int, rate: RateLimiter,
        history_bytes: RateLimiter,
    ) -> None:
        self.history = history
        self.metrics = metrics
        self.token = token
        self.max_size = max_size
        self.rate = rate
        self.history_bytes = history_bytes
        self._chunks: list[bytes] = []
        self._size = 0
        self._refused = False

    def prepare(self) -> None:
        # Over-size bodies get our JSON 413 below; Tornado's own limit would answer a bare 400.
        # Whatever arrives after we have answered is discarded unread and the connection closed.
        set_max_body_size = getattr(self.request.connection, "set_max_body_size", None)
        if set_max_body_size is not None:
            set_max_body_size(1 << 62)
        if self.request.method != "POST":
            return
        require_server_key(self, self.token, "publishing is disabled: the server has no --api-token")
        declared = self.request.headers.get("Content-Length")
        if declared is not None:
            try:
                length = protocol.parse_uint(declared, 1 << 62)
            except ValueError:
                raise tornado.web.HTTPError(400, "Content-Length must be a non-negative integer") from None
            if length > self.max_size:
                raise tornado.web.HTTPError(413, f"body over {self.max_size} bytes")

    def data_received(self, chunk: bytes) -> None:
        if self._refused:
            return
        self._size += len(chunk)
        if self._size > self.max_size:
            # A chunked body has no declared length: refuse as soon as it outgrows the limit.
            self._refused = True
            self._chunks.clear()
            self.set_status(413)
            self.finish({"error": f"body over {self.max_size} bytes", "status": 413})
            return
        self._chunks.append(chunk)

    async def post(self, slug: str) -> None:
        if self._refused:
            return
        body = b"".join(self._chunks)
        self._chunks.clear()
        event = self._event()
        try:
            text = validate_json_payload(body)
        except ValueError:
            raise tornado.web.HTTPError(400, "body must be a JSON value (UTF-8, no NaN or Infinity)") from None
        try:
            published = await self.history.publish(slug, protocol.pack(text, event))
        except OutcomeUnknown:
            # The PUBLISH may have reached Redis, and no answer came (a timeout, a connection that
            # broke after it was written): it may have been delivered. A distinct status lets a
            # publisher decide instead of blindly retrying a duplicate.
            self.set_status(504)
            self.finish({
                "error": "redis did not answer: the message may or may not have been delivered",
                "status": 504,
                "outcome": "unknown",
            })
            return
        except BackplaneError:  # refused, or never sent (`rrr.backplane.outcome`)
            raise tornado.web.HTTPError(503, "redis unavailable: the message was not delivered") from None
        self.set_status(202)
        if published.offset:
            self.finish({"room": slug, "offset": published.offset, "epoch": published.epoch})
        else:  # history off: relayed, not stored
            self.finish({"room": slug, "processes": published.receivers})

    async def get(self, slug: str) -> None:
        """``GET /api/rooms/<slug>/messages?since=<n>[&epoch=<e>]``: what a client that saw offset
        ``n`` missed, if the room still has all of it (``recovered``).

        One response can be ``--history-size`` x ``--max-message-size`` (6.4 MB by default), so
        an address is limited in bytes too (``--history-read-rate``): refused once in debt, before
        Redis is asked; a response is charged in full as it goes out, so one bigger than the
        burst is still sent once, and the address then waits until it is paid for."""
        require_read_grant(self, slug, self.token)
        if not self.history.enabled:
            raise tornado.web.HTTPError(404, "history is off on this server (--history-size or --history-ttl 0)")
        epoch = self.get_query_argument("epoch", None)
        try:
            since = protocol.parse_uint(self.get_query_argument("since", "0"))
            if epoch is not None and not protocol.is_epoch(epoch):
                raise ValueError("not an epoch")
        except ValueError:
            raise tornado.web.HTTPError(400, "since must be an integer >= 0 (and epoch an epoch string)") from None
        if refuse_over_rate(self, self.rate, self.metrics) or self._over_budget(0):
            return
        try:
            read = await self.history.look(slug, since)
        except BackplaneError:
            raise tornado.web.HTTPError(503, "redis unavailable") from None
        recovered = read.covers(since, epoch)
        self.set_header("Cache-Control", "no-store")
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        entries = read.entries if recovered else []
        # A message over --max-message-size reached Redis past our checks: no socket gets it, nor does this.
        limit = self.history.max_message
        kept = [(o, d) for o, d in entries if not protocol.too_big(d, limit)]
        self.metrics.oversized_messages.inc(len(entries) - len(kept))
        messages = ",".join(_entry_json(o, d) for o, d in kept)
        body = (
            '{"room":' + protocol.dumps(slug) + ',"epoch":' + protocol.dumps(read.epoch or None) + ',"offset":'
            + str(read.top) + ',"recovered":' + ("true" if recovered else "false") + ',"messages":[' + messages + "]}"
        ).encode("utf-8")
        if self._over_budget(len(body)):  # others of this address spent it while Redis answered
            return
        self.finish(body)

    def _event(self) -> str | None:
        event = self.get_query_argument("event", None)
        if event is None:
            return None
        try:
            return protocol.check_event(event)
        except ValueError as e:
            raise tornado.web.HTTPError(400, str(e)) from None

    def _over_budget(self, size: int) -> bool:
        """Charge ``size`` bytes to the client address (0: only look whether it owes any); False if
        it may have them. Else the 429 is sent (the caller stops) and True."""
        ip = self.request.remote_ip or ""
        wait = self.history_bytes.take(ip, size) if size else self.history_bytes.wait(ip)
        if not wait:
            return False
        refuse_429(
            self, self.metrics, "history_bytes", wait, "too much history read from this address; see Retry-After",
        )
        return True


def _entry_json(offset: int, payload: str) -> str:
    """One stored message of ``GET /api/rooms/<slug>/messages``: its ``event`` when it has one."""
    p = protocol.unpack(payload)
    event = "" if p.event is None else ',"event":' + protocol.dumps(p.event)
    return '{"offset":%d%s,"data":%s}' % (offset, event, p.data_json)


class HealthHandler(JsonHandler):
    """Readiness: 200 only when every check passes; the body names each one, and adds what ``info``
    gives as information that never fails it (``webhooks``)."""

    def initialize(
        self, health: Callable[[], Awaitable[dict[str, bool]]], info: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.health = health
        self.info = info

    async def get(self) -> None:
        checks = await self.health()
        ok = all(checks.values())
        failing = [name for name, passed in checks.items() if not passed]
        self.set_header("Cache-Control", "no-store")
        self.set_status(200 if ok else 503)
        self.finish({
            "status": "ok" if ok else "failing: " + ", ".join(failing),
            "redis": checks.get("redis", False),
            "checks": checks,
            **(self.info() if self.info is not None else {}),
        })


class MetricsHandler(SecureHeaders):
    def initialize(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def get(self) -> None:
        self.set_header("Content-Type", self.metrics.content_type)
        self.finish(self.metrics.render())


class NotFoundHandler(JsonHandler):
    """Every unknown path, including a route with a bad slug, before any upgrade. A person's
    browser (it asks for ``text/html``) gets an HTML page with a link home; the API, the sockets,
    upgrades and any client that asks for JSON or does not ask for HTML (scripts, curl) keep the
    JSON body."""

    def prepare(self) -> None:
        raise tornado.web.HTTPError(404, "no such page; rooms are 1 to 164 of A-Z a-z 0-9 _ - = @ , . ;")

    def wants_html(self) -> bool:
        headers = self.request.headers
        accept = headers.get("Accept", "").lower()
        return (
            not self.request.path.removeprefix(BROWSER_PREFIX).startswith(("/api/", "/ws/"))
            and "upgrade" not in headers
            and "text/html" in accept
            and "application/json" not in accept
        )

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        if status_code == 404 and self.wants_html():
            self.render("404.html", path=self.request.path)
            return
        super().write_error(status_code, **kwargs)
