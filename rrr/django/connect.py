"""The connect proxy's Django side: who a session cookie rrr was sent on a handshake belongs to.

rrr (``--connect-proxy-url https://…/rrr/connect/``) POSTs ``{"transport", "headers", "ip"}``
for each handshake that carries a cookie and no token, and again (plus ``"user"``) at 80 % of
the answer's lifetime. The cookie is resolved by the project's own session and authentication
middleware, the classes its ``MIDDLEWARE`` names (``process_request`` only: nothing is saved, no
cookie is set), exactly as for a page request carrying that cookie.
"""

from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from django.contrib.auth.middleware import AuthenticationMiddleware
from django.contrib.sessions.middleware import SessionMiddleware
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse
from django.http.cookie import parse_cookie
from django.utils.module_loading import import_string

from .tokens import grants_function

#: The handshake's headers rrr forwards, as the META keys a view would read them from.
_META = {"Cookie": "HTTP_COOKIE", "Authorization": "HTTP_AUTHORIZATION", "User-Agent": "HTTP_USER_AGENT",
         "X-Forwarded-For": "HTTP_X_FORWARDED_FOR"}


def _middleware(base: type) -> type:
    """The project's own class for ``base`` (it or a subclass), as ``MIDDLEWARE`` lists it."""
    for path in settings.MIDDLEWARE:
        cls = import_string(path)
        if isinstance(cls, type) and issubclass(cls, base):
            return cls
    raise ImproperlyConfigured(f"rrr.django's connect view needs {base.__module__}.{base.__name__} "
                               "(or a subclass) in MIDDLEWARE: it resolves the session cookie with it")


def handshake_request(outer: HttpRequest, headers: dict[str, str], ip: str) -> HttpRequest:
    """A request as the handshake's browser made it: its cookies, its headers, its address, on this site's host."""
    request = HttpRequest()
    request.method = "GET"
    request.path = request.path_info = "/"
    for name in ("SERVER_NAME", "SERVER_PORT", "HTTP_HOST", "wsgi.url_scheme"):
        if name in outer.META:
            request.META[name] = outer.META[name]
    for name, key in _META.items():
        if name in headers:
            request.META[key] = headers[name]
    request.META["REMOTE_ADDR"] = ip
    request.COOKIES = parse_cookie(headers.get("Cookie", ""))
    return request


def resolve(outer: HttpRequest, headers: dict[str, str], ip: str) -> dict[str, Any]:
    """rrr's answer for a handshake with these headers: the signed-in user's id, grants
    (``RRR_GRANTS``) and ``exp``, or ``{"user": None}`` for anyone else.

    ``exp`` is the session's expiry (``get_expiry_date``), but no later than ``RRR_TOKEN_TTL``
    (3600) s from now: rrr asks again at 80 % of that, so a session that ended in Django (a
    sign-out, a changed password) stops vouching for the socket within that time, and an answer
    never lies beyond rrr's ``--token-max-age``."""
    request = handshake_request(outer, headers, ip)
    noop = HttpResponse  # get_response of middleware whose response phase never runs here
    _middleware(SessionMiddleware)(noop).process_request(request)
    _middleware(AuthenticationMiddleware)(noop).process_request(request)
    user = request.user
    if not user.is_authenticated:
        return {"user": None}
    now = time.time()
    ttl = float(getattr(settings, "RRR_TOKEN_TTL", 3600))
    exp = min(request.session.get_expiry_date().timestamp(), now + ttl)
    grants = grants_function()(user)
    return {
        "user": str(user.pk), "exp": round(exp, 3), "info": grants.get("info"),
        "rooms": list(grants.get("rooms", ())), "publish": list(grants.get("publish", ())),
    }
