"""Every log line about an HTTP request, in one place: what it may show, and how often.

Tornado's own lines quoted ``request.uri`` in full: ``/ws/count/<slug>/?token=<jwt>`` put a
credential in the access log at INFO (101), WARNING (403) and ERROR (503), and a 404 for a
60 KB URL was logged twice, 120 KB per request. Here a request is shown as its method, its
path (never the query string, at most `PATH_MAX` characters, non-printable characters
escaped) and its client address; the access log (Tornado's ``log_function``) and the
handlers' ``log_exception`` both go through `RequestLog`.

Refusals (4xx) and failures (5xx) are logged like the process's other troubles: at most one
line per kind per 30 s, saying how many more there were, a kind being the status and the
handler that answered it (a bounded set). Successful requests are logged one line each at
INFO, as before.
"""

from __future__ import annotations

import logging
import re
import weakref
from types import TracebackType

import tornado.httputil
import tornado.web

from ..protocol import BROWSER_PREFIX
from ..supervise import RateLimitedLog

access_log = logging.getLogger("tornado.access")
app_log = logging.getLogger("tornado.application")
gen_log = logging.getLogger("tornado.general")

#: The most characters of a path a log line shows.
PATH_MAX = 200
#: The most characters of a method (Tornado takes any token up to the header limit) or a reason.
METHOD_MAX = 16
REASON_MAX = 200
LOG_EVERY = 30.0


def loggable(text: str, limit: int) -> str:
    """``text`` with anything unprintable escaped, cut to ``limit`` characters ("..." marks a cut)."""
    shown = text.encode("unicode_escape").decode("ascii")
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


#: An SSE or polling session's id in a path: whoever holds it speaks for the session (its identity
#: included), so a log shows only its first 8 characters (the tag of the process that holds it).
_SESSION_IN_PATH = re.compile(rf"^((?:{re.escape(BROWSER_PREFIX)})?/(?:sse|poll)/[A-Za-z0-9_-]{{8}})[A-Za-z0-9_-]+")


def loggable_path(path: str) -> str:
    """A path as a log line may show it: no query string, no session id, at most `PATH_MAX` characters."""
    return loggable(_SESSION_IN_PATH.sub(r"\1...", path.partition("?")[0]), PATH_MAX)


def summary(request: tornado.httputil.HTTPServerRequest) -> str:
    """``GET /path (client address)``: what Tornado's ``_request_summary`` said, less the query."""
    return f"{loggable(request.method or '', METHOD_MAX)} {loggable_path(request.path or '')} ({request.remote_ip})"


class RequestLog:
    """The application's ``log_function`` (one line per finished request) and what handlers'
    ``log_exception`` calls. An HTTPError's message is kept until its request's line is written,
    so a refusal is one line, with its reason, not two."""

    def __init__(self, every: float = LOG_EVERY) -> None:
        self._refusals = RateLimitedLog(access_log, every)
        self._errors = RateLimitedLog(app_log, every)
        self._reasons: weakref.WeakKeyDictionary[tornado.web.RequestHandler, str] = weakref.WeakKeyDictionary()

    def __call__(self, handler: tornado.web.RequestHandler) -> None:
        status = handler.get_status()
        took = 1000.0 * handler.request.request_time()
        reason = self._reasons.pop(handler, "") if self._reasons else ""
        if status < 400:
            # Built only when it is written: at --log-level warning (production) every request paid for
            # a summary nobody saw, every WebSocket handshake included.
            if access_log.isEnabledFor(logging.INFO):
                access_log.info("%d %s %.2fms", status, summary(handler.request), took)
            return
        level = logging.WARNING if status < 500 else logging.ERROR
        self._refusals.log(
            level, f"{status} {type(handler).__name__}", "%d %s %.2fms%s", status, summary(handler.request), took,
            f": {reason}" if reason else "",
        )

    def exception(
        self, handler: tornado.web.RequestHandler, typ: type[BaseException] | None, value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if isinstance(value, tornado.web.HTTPError):
            message = value.get_message()
            if message:
                self._reasons[handler] = loggable(message, REASON_MAX)
            return
        self._errors.log(
            logging.ERROR, f"{type(handler).__name__} {typ.__name__ if typ else ''}",
            "Uncaught exception %s", summary(handler.request), exc_info=value,
        )


#: What a handler built outside `make_app` (no ``request_log`` setting) logs through.
default = RequestLog()


def request_log(handler: tornado.web.RequestHandler) -> RequestLog:
    found = handler.settings.get("request_log")
    return found if isinstance(found, RequestLog) else default


class MalformedRequests(logging.Filter):
    """Tornado's "Malformed HTTP message from <address>: <error>" (``tornado.general``, INFO) quotes
    what it could not parse, a header value of up to 64 KB included (an ``Authorization`` with a
    stray control character is a credential), once per request. Kept: its first words, at most
    once per 30 s."""

    MESSAGE = "Malformed HTTP message from %s: %s"

    def __init__(self, every: float = LOG_EVERY) -> None:
        super().__init__()
        self._limit = RateLimitedLog(gen_log, every)  # its clock and counts only: the record goes on

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg != self.MESSAGE or not isinstance(record.args, tuple) or len(record.args) != 2:
            return True
        context, error = record.args
        words = re.split(r"[:'\"%]", str(error), maxsplit=1)[0].strip()
        suffix = self._limit.due("malformed")
        if suffix is None:
            return False
        record.msg = self.MESSAGE + suffix.replace("%", "%%")
        record.args = (context, loggable(words, 80))
        return True


def install_filters() -> None:
    """Once per process (``make_app`` calls it; again is a no-op)."""
    if not any(isinstance(f, MalformedRequests) for f in gen_log.filters):
        gen_log.addFilter(MalformedRequests())
