"""Which pages may drive a socket: the Origin rules (pure, unit-tested without a server)."""

from __future__ import annotations

from urllib.parse import urlsplit


def parse_origins(value: str) -> frozenset[str]:
    """``--allowed-origins``: a comma list of ``scheme://host[:port]`` or ``*``; empty means same origin only."""
    return frozenset(o.strip().rstrip("/").lower() for o in value.split(",") if o.strip())


def origin_allowed(origin: str, host: str, allowed: frozenset[str], scheme: str) -> bool:
    """Same origin (the Origin's scheme, host and port equal the request's), or allow-listed.

    ``host`` is the Host header (nginx passes it through), or X-Forwarded-Host when
    a proxy rewrites Host and the app runs with --xheaders; ``scheme`` is the request's
    (``https`` behind a TLS proxy that sends X-Forwarded-Proto, with --xheaders). An http page
    must not drive a socket that belongs to the https site, nor the reverse. ``null`` (sandboxed
    frames, file: pages) and Origins with userinfo are refused even under ``*``: no browser sends
    such an Origin for a real page.
    """
    origin = origin.strip().rstrip("/").lower()
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc:
        return False
    if parts.path or parts.query or parts.fragment:
        return False
    default_port = 443 if parts.scheme == "https" else 80
    try:
        origin_port = parts.port or default_port
    except ValueError:
        return False
    if "*" in allowed or origin in allowed:
        return True
    if parts.scheme != scheme.lower():
        return False
    want = urlsplit("//" + host.strip().lower())
    try:
        want_port = want.port or default_port
    except ValueError:
        return False
    return parts.hostname == want.hostname and origin_port == want_port
