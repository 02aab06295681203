"""What every HTTP response shares: security headers, the Host allow-list in front of all routes,
and log lines that show no query string (`rrr.edge.requestlog`)."""

from __future__ import annotations

from types import TracebackType
from typing import Any

import tornado.httputil
import tornado.routing
import tornado.web

from rrr.edge.headers import host_allowed, request_host, security_headers
from rrr.edge.requestlog import request_log
from rrr.protocol import BROWSER_PREFIX, ROOM_PATH_PATTERN, is_valid_slug


class SafeLogs(tornado.web.RequestHandler):
    """Tornado's ``log_exception`` quotes the whole URI (a ``?token=`` with it) once more per error;
    every handler here, sockets included, logs through `rrr.edge.requestlog.RequestLog` instead."""

    def log_exception(
        self, typ: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None,
    ) -> None:
        request_log(self).exception(self, typ, value, tb)


class SecureHeaders(SafeLogs):
    """Sets the security headers in ``set_default_headers``, so error pages (which clear the
    headers and set the defaults again) carry them too. A page that renders an inline script
    sets ``csp_nonce`` in ``initialize`` and passes it to its template."""

    csp_nonce: str | None = None

    def set_default_headers(self) -> None:
        host = request_host(self.request.headers, self.request.host, bool(self.settings.get("xheaders")))
        for name, value in security_headers(self.request.protocol, host, self.csp_nonce).items():
            self.set_header(name, value)


class SecureStaticFileHandler(SecureHeaders, tornado.web.StaticFileHandler):
    """Static files too: the SharedWorker's script brings the policy its socket runs under.

    Readable from any origin (``Access-Control-Allow-Origin: *``): they are public, and a page of
    another origin (a Django site, docs/guides/django.md) loads the browser library from
    here as module scripts, which browsers fetch in CORS mode. No credentials are ever allowed."""

    def set_extra_headers(self, path: str) -> None:
        self.set_header("Access-Control-Allow-Origin", "*")


class HostRefused(SecureHeaders):
    """The answer to a Host we do not serve: 400 on every route and method, before any upgrade."""

    def prepare(self) -> None:
        self.set_status(400)
        path = self.request.path.removeprefix(BROWSER_PREFIX)
        if path.startswith(("/sse/", "/poll/")):  # every answer there (docs/guides/transports.md)
            self.set_header("Cache-Control", "no-store")
            self.set_header("X-Accel-Buffering", "no")
        self.finish({"error": "this server does not answer for that Host", "status": 400})


class DisallowedHost(tornado.routing.Matcher):
    """Matches the requests whose Host (X-Forwarded-Host with --xheaders) is not allow-listed,
    so one rule in front of all the others refuses them whatever their path."""

    def __init__(self, allowed: frozenset[str], xheaders: bool) -> None:
        self.allowed = allowed
        self.xheaders = xheaders

    def match(self, request: tornado.httputil.HTTPServerRequest) -> dict[str, Any] | None:
        host = request_host(request.headers, request.host, self.xheaders)
        return None if host_allowed(host, self.allowed) else {}


def guard_hosts(app: tornado.web.Application, allowed: frozenset[str], xheaders: bool) -> None:
    """Put the Host check in front of every route, static files included (Tornado adds those
    ahead of the application's own rules, so a rule in the handler list would come too late)."""
    if allowed:
        app.default_router.rules.insert(0, tornado.routing.Rule(DisallowedHost(allowed, xheaders), HostRefused))


class RoomPath(tornado.routing.PathMatches):
    """A route whose groups are room names: matched percent-encoded or not (``/api/rooms/a%40b``
    is room ``a@b``), and only if every group decodes to a valid room; anything else falls
    through to the 404 before any handler (or upgrade) runs."""

    def match(self, request: tornado.httputil.HTTPServerRequest) -> dict[str, Any] | None:
        found = super().match(request)
        if found is None:
            return None
        for arg in found.get("path_args", ()):
            try:
                room = arg.decode("utf-8") if isinstance(arg, bytes) else arg
            except UnicodeDecodeError:
                return None
            if not is_valid_slug(room):
                return None
        return found


def room_route(pattern: str, handler: type[tornado.web.RequestHandler], kwargs: dict[str, Any] | None = None,
               ) -> tornado.routing.Rule:
    """A `RoomPath` rule; ``{room}`` in ``pattern`` stands for one room name."""
    return tornado.routing.Rule(RoomPath(pattern.replace("{room}", f"({ROOM_PATH_PATTERN})")), handler, kwargs)
