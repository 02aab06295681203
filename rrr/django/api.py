"""Calls to the rrr service's HTTP API with its server key (``RRR_API_TOKEN`` = its ``--api-token``)."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from rrr.errors import BackplaneError


def api_url() -> str:
    """``RRR_API_URL``, else the origin of ``RRR_SOCKET_URL`` with ``http(s)``. A socket URL that
    is a path (rrr under the site's own origin) names no host to call from the server: then
    ``RRR_API_URL`` is needed (rrr's own address, e.g. ``http://127.0.0.1:8888``)."""
    explicit = getattr(settings, "RRR_API_URL", "")
    if explicit:
        return str(explicit).rstrip("/")
    socket_url = getattr(settings, "RRR_SOCKET_URL", "")
    if not socket_url:
        raise ImproperlyConfigured("set RRR_SOCKET_URL (or RRR_API_URL) to reach the rrr service")
    if socket_url.startswith("/"):
        raise ImproperlyConfigured(f"RRR_SOCKET_URL is a path ({socket_url!r}): set RRR_API_URL to rrr's own "
                                   "address (e.g. http://127.0.0.1:8888) for calls from the server")
    parts = urllib.parse.urlsplit(socket_url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return f"{scheme}://{parts.netloc}"


def disconnect_user(user: Any, *, timeout: float = 5.0) -> float:
    """Sign ``user`` (or a user id) out of rrr everywhere: its sockets close with 4001 and its
    tokens issued until now are refused. Returns the service's ``revoked_at``. Raises
    `BackplaneError` when the service cannot be reached or refuses. End the user's Django sessions
    first, or the browser library fetches a fresh token and is back at once."""
    key = getattr(settings, "RRR_API_TOKEN", "")
    if not key:
        raise ImproperlyConfigured("RRR_API_TOKEN is not set (the rrr service's --api-token)")
    sub = str(getattr(user, "pk", user))
    request = urllib.request.Request(
        f"{api_url()}/api/users/{urllib.parse.quote(sub, safe='')}/disconnect",
        data=b"", method="POST", headers={"Authorization": f"Bearer {key}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return float(json.loads(response.read())["revoked_at"])
    except urllib.error.HTTPError as e:
        raise BackplaneError(f"rrr refused the sign-out of {sub!r}: {e.code} {e.read()[:200]!r}") from e
    except (OSError, ValueError, KeyError) as e:
        raise BackplaneError(f"rrr did not sign {sub!r} out: {e}") from e
