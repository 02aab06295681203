"""Pure rules for HTTP requests: which Host names we answer for, and the security headers
every response carries. Kept apart from the handlers so they can be unit-tested without a server."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

# A DNS name or IPv4 address, or a bracketed IPv6 literal, with an optional port. Anything else
# (spaces, '/', '@', quotes, ';') is refused: such a Host never names us, and it must never be
# copied into a header such as the Content-Security-Policy.
_HOST_RE = re.compile(r"^(?:[a-z0-9_](?:[a-z0-9_.-]{0,252})|\[[0-9a-f:.]+\])(?::[0-9]{1,5})?$")

REFERRER_POLICY = "same-origin"


def empty_in_place(headers: Any) -> None:
    """Let go of a header object's contents and of the tables that held them, keeping the object.

    A Tornado ``HTTPHeaders`` is a ``MutableMapping``: its ``clear()`` pops entry after entry, and a
    dict that shrinks by popping keeps the table it had at its largest (about 1 KiB for a browser's
    request headers, 1.2 KiB for a 101's). Coroutine frames that live as long as a socket hold the
    object itself, so it cannot be swapped for a new one; its own dicts are emptied instead, which
    gives their tables back. The object stays a valid, empty mapping."""
    for value in vars(headers).values():
        if isinstance(value, dict):
            value.clear()


def parse_hosts(value: str) -> frozenset[str]:
    """``--allowed-hosts``: a comma list of names without ports (IPv6 as ``[::1]`` or ``::1``),
    ``.example.com`` for it and its subdomains, or ``*``."""
    return frozenset(h.strip().lower().rstrip(".") for h in value.split(",")) - {""}


def request_host(headers: Mapping[str, str], host: str, xheaders: bool) -> str:
    """The host the client asked for: the Host header, or the first X-Forwarded-Host behind a proxy.

    Only with ``--xheaders``: otherwise anyone could claim any host by sending the header.
    """
    if xheaders:
        forwarded = headers.get("X-Forwarded-Host", "").split(",")[0].strip()
        if forwarded:
            return forwarded
    return host


def valid_host(host: str) -> bool:
    return bool(_HOST_RE.match(host.strip().lower()))


def split_host(host: str) -> str:
    """The name without the port (and without the brackets of an IPv6 literal)."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.index("]")] if "]" in host else host
    return host.rsplit(":", 1)[0].rstrip(".") if ":" in host else host.rstrip(".")


def host_allowed(host: str, allowed: frozenset[str]) -> bool:
    """Django's ALLOWED_HOSTS rule: empty allows any, ``*`` any well-formed host,
    ``.example.com`` example.com and every subdomain, else an exact name (ports ignored)."""
    if not allowed:
        return True
    if not valid_host(host):
        return False
    if "*" in allowed:
        return True
    name = split_host(host)
    for pattern in allowed:
        if pattern.startswith("."):
            if name == pattern[1:] or name.endswith(pattern):
                return True
        elif name == pattern.strip("[]"):
            return True
    return False


def content_security_policy(scheme: str, host: str, nonce: str | None = None) -> str:
    """Only our own scripts, styles and socket: nothing injected into a page could load or send.

    ``connect-src`` names the socket's origin explicitly: older browsers do not let ``'self'``
    cover ``ws:``/``wss:``. A malformed Host is left out rather than copied into the header.
    """
    script = "script-src 'self'" + (f" 'nonce-{nonce}'" if nonce else "")
    connect = "connect-src 'self'"
    if valid_host(host):
        connect += f" {'wss' if scheme == 'https' else 'ws'}://{host.strip().lower()}"
    return "; ".join([
        "default-src 'self'",
        script,
        connect,
        "style-src 'self'",
        "img-src 'self' data:",
        "object-src 'none'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'self'",
    ])


def security_headers(scheme: str, host: str, nonce: str | None = None) -> dict[str, str]:
    return {
        "Content-Security-Policy": content_security_policy(scheme, host, nonce),
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": REFERRER_POLICY,
    }
