"""JSON API: room state, server-side publish, health and metrics."""

from __future__ import annotations

import hmac
import math
from collections.abc import Awaitable, Callable
from typing import Any

import tornado.web

from rrr import protocol
from rrr.errors import BackplaneError
from rrr.hub import Hub
from rrr.limits import RateLimiter
from rrr.protocol import validate_json_payload


class JsonHandler(tornado.web.RequestHandler):
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


class RoomHandler(JsonHandler):
    def initialize(self, hub: Hub, rate: RateLimiter) -> None:
        self.hub = hub
        self.rate = rate

    async def get(self, slug: str) -> None:
        wait = self.rate.take(self.request.remote_ip or "")
        if wait:
            self.hub.metrics.limited.labels("api_rate").inc()
            # Not an HTTPError: send_error would clear the Retry-After header.
            self.set_status(429)
            self.set_header("Retry-After", str(max(1, math.ceil(wait))))
            self.finish(protocol.http_error(429, "too many requests from this address; see Retry-After"))
            return
        try:
            state = await self.hub.room_state(slug)
        except BackplaneError:
            raise tornado.web.HTTPError(503, "redis unavailable") from None
        self.set_header("Cache-Control", "no-store")
        self.finish({"room": slug, "connections": state.connections, "tabs": state.tabs, "updated": state.updated})


class PublishHandler(JsonHandler):
    """What a Django (or any) backend calls to reach every browser in a room."""

    def initialize(self, hub: Hub, token: str, max_size: int) -> None:
        self.hub = hub
        self.token = token
        self.max_size = max_size

    async def post(self, slug: str) -> None:
        if not self.token:
            raise tornado.web.HTTPError(403, "publishing is disabled: the server has no --publish-token")
        auth = self.request.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            raise tornado.web.HTTPError(401, "missing 'Authorization: Bearer <token>'")
        if not hmac.compare_digest(auth[7:].strip().encode(), self.token.encode()):
            raise tornado.web.HTTPError(403, "wrong publish token")
        body = self.request.body
        if len(body) > self.max_size:
            raise tornado.web.HTTPError(413, f"body over {self.max_size} bytes")
        try:
            text = validate_json_payload(body)
        except ValueError:
            raise tornado.web.HTTPError(400, "body must be a JSON value (UTF-8, no NaN or Infinity)") from None
        try:
            processes = await self.hub.publish(slug, text)
        except BackplaneError:
            raise tornado.web.HTTPError(503, "redis unavailable") from None
        self.set_status(202)
        self.finish({"room": slug, "processes": processes})


class HealthHandler(JsonHandler):
    """Readiness: 200 only when every check passes; the body names each one."""

    def initialize(self, health: Callable[[], Awaitable[dict[str, bool]]]) -> None:
        self.health = health

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
        })


class MetricsHandler(tornado.web.RequestHandler):
    def initialize(self, hub: Hub) -> None:
        self.metrics = hub.metrics

    def get(self) -> None:
        self.set_header("Content-Type", self.metrics.content_type)
        self.finish(self.metrics.render())


class NotFoundHandler(JsonHandler):
    """Every unknown path, including a route with a bad slug, before any upgrade."""

    def prepare(self) -> None:
        raise tornado.web.HTTPError(404, "no such page; room slugs are [A-Za-z0-9_-]{1,64}")
