"""Asking the application: who a handshake is (the connect proxy) and whether a socket may join a
room its grants do not cover (the subscribe proxy).

When rrr and the site share an origin, the browser sends the site's session cookie on every
handshake; instead of the page fetching a token, rrr asks the backend who that cookie is. The
backend's answer is judged by the same rules as a token's claims (`rrr.auth.identity_from_claims`:
``sub`` of at most 128 characters, ``info`` of at most 1 KiB, at most 100 grants of each kind, an
``exp`` that is required, finite, in the future and within ``--token-max-age``), so a proxied
socket gets exactly what a token with those claims would get, and nothing a token could not.

Every door calls the same two things (`rrr.session.Shared` holds the proxies):

* at the handshake, once the Origin and the per-address socket cap have passed:
  ``if shared.asks_connect_proxy(headers): identity = await shared.connect_identity(transport,
  headers, ip)`` (a `HandshakeRefused` says the status, 403 or 503, and a 503's ``Retry-After``),
  then the per-address cap once more (nothing may await between that check and counting the
  socket), then ``Session(..., identity=identity)``;
* nothing at refresh: a `Session` given a `ProxiedIdentity` asks again itself, at 80 % of its
  lifetime (`ConnectProxy.refresh`), and drops what needed it when the backend no longer vouches.

No answer is cached: each handshake asks, each refresh asks again. The calls go over kept-alive
connections (`rrr.pooled_http`: no new connection per handshake), at most `MAX_CLIENTS` at once
(more wait their turn, within the same timeout), answers over `MAX_ANSWER` bytes are cut off and
count as no answer, redirects are not followed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import socket
import time
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import urlsplit

from tornado.httputil import HTTPHeaders
from tornado.netutil import DefaultLoopResolver, Resolver

from .auth import Identity, TokenError, identity_from_claims, info_from_claim, needs_grant
from .metrics import Metrics
from .pooled_http import PooledPoster
from .supervise import RateLimitedLog

log = logging.getLogger("rrr.proxies")

#: The ``transport`` a door names in its call.
TRANSPORTS = ("ws", "ws_count", "sse", "poll", "pusher")
#: The handshake's headers the connect proxy is sent, each only when present.
FORWARDED = ("Cookie", "Authorization", "User-Agent", "X-Forwarded-For")
#: The largest answer read from either proxy; a longer one is cut off and counts as no answer.
MAX_ANSWER = 64 * 1024
#: Calls in flight at once per proxy and process; more wait (within their timeout) for a turn.
MAX_CLIENTS = 100
#: A proxied identity is asked for again once this share of its lifetime has passed.
REFRESH_AT = 0.8
#: A refresh that got no answer is tried again this often (sooner near ``exp``) until ``exp``.
RETRY_EVERY = 5.0
#: Seconds a 503 from an unanswered connect proxy asks the client to wait (``Retry-After``).
RETRY_AFTER = 5


class HandshakeRefused(Exception):
    """A handshake the connect proxy's answer refuses: 403 (the backend said 401 or 403), or 503
    with ``retry_after`` (no usable answer: never an anonymous socket instead)."""

    def __init__(self, status: int, reason: str, retry_after: int | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.retry_after = retry_after


class ProxyUnavailable(Exception):
    """The proxy gave no usable answer (none in time, a 5xx, a redirect, an answer we refuse)."""


class ProxyRefused(Exception):
    """The backend refused: 401/403 from the connect proxy, 403 or ``allow: false`` from the subscribe proxy."""


def check_url(url: str, option: str) -> str:
    """``url`` if rrr can POST to it (``http://`` or ``https://`` with a host), else ValueError naming ``option``."""
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError for a port out of range
    except ValueError:
        raise ValueError(f"{option}: {url[:200]!r} is not a URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{option} must be an http:// or https:// URL, not {url[:200]!r}")
    return url


def shown(url: str) -> str:
    """The URL for the log: no userinfo, no query."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"


@dataclass(frozen=True)
class ProxiedIdentity(Identity):
    """An identity the connect proxy vouched for. ``issued_at`` is when the handshake's call was
    made (a sign-out after it closes the socket, as for a token issued then), kept across refreshes;
    ``asked_at`` is when the call that gave this answer was made, from which its lifetime counts."""

    call: bytes = field(default=b"", repr=False)  # the handshake's body, sent again (plus "user") to refresh
    asked_at: float = 0.0

    @property
    def refresh_at(self) -> float:
        """When to ask again: at `REFRESH_AT` of the lifetime the answer gave."""
        return self.asked_at + REFRESH_AT * max(0.0, self.expires - self.asked_at)


class _Resolver(Resolver):
    """An address (``127.0.0.1``, ``::1``) as it is; a name as Tornado resolves it. asyncio's
    getaddrinfo sends even a numeric host to a thread and back, once per call."""

    def initialize(self) -> None:
        self._names = DefaultLoopResolver()

    async def resolve(
        self, host: str, port: int, family: socket.AddressFamily = socket.AF_UNSPEC,
    ) -> list[tuple[int, Any]]:
        try:
            ip = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            return await self._names.resolve(host, port, family)
        if ip.version == 6:
            return [(socket.AF_INET6, (str(ip), port, 0, 0))]
        return [(socket.AF_INET, (str(ip), port))]


class _Poster:
    """POSTs of JSON to one URL: the HTTP part both proxies share."""

    def __init__(self, url: str, timeout: float, name: str) -> None:
        self.url = url
        self.timeout = timeout
        self.name = name
        self._client: PooledPoster | None = None
        self.log = RateLimitedLog(log)

    async def post(self, body: bytes) -> tuple[int, bytes]:
        """The status and body of the answer; ProxyUnavailable when there is none."""
        if self._client is None:  # made on the loop that uses it (a worker's, after the fork)
            self._client = PooledPoster(
                self.url, timeout=self.timeout, max_calls=MAX_CLIENTS, max_answer=MAX_ANSWER, resolver=_Resolver(),
                headers={"Content-Type": "application/json", "Accept": "application/json", "User-Agent": "rrr"},
            )
        try:
            return await self._client.post(body)
        except Exception as e:  # noqa: BLE001 - refused, reset, timed out, too long: all no answer
            raise self.unavailable(f"no answer ({type(e).__name__}: {str(e)[:120]})") from None

    def unavailable(self, why: str) -> ProxyUnavailable:
        """Logged at most once per 30 s per kind (the kind is the first word or two of ``why``)."""
        self.log.warning(f"{self.name} {why.split(' (')[0][:40]}", "%s %s: %s", self.name, shown(self.url), why)
        return ProxyUnavailable(why)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def _answer_object(poster: _Poster, code: int, body: bytes) -> dict[str, Any]:
    try:
        answer = json.loads(body)
    except (ValueError, RecursionError):
        raise poster.unavailable(f"answered {code} with a body that is not JSON") from None
    if not isinstance(answer, dict):
        raise poster.unavailable(f"answered {code} with JSON that is not an object")
    return answer


class ConnectProxy:
    """``--connect-proxy-url``: who a handshake's cookie (or ``Authorization``) is, asked of the backend."""

    def __init__(self, url: str, timeout: float, max_age: float, metrics: Metrics | None = None) -> None:
        self.poster = _Poster(check_url(url, "--connect-proxy-url"), timeout, "connect proxy")
        self.max_age = max_age
        self.metrics = metrics
        self._tasks: set[asyncio.Task[None]] = set()

    @staticmethod
    def asks(headers: HTTPHeaders) -> bool:
        """Whether a handshake with these headers is asked about: one with a ``Cookie`` or an
        ``Authorization`` header. Without either it is anonymous, and nobody is asked."""
        return bool(headers.get("Cookie") or headers.get("Authorization"))

    @staticmethod
    def body(transport: str, headers: HTTPHeaders, ip: str) -> bytes:
        """The call: ``{"transport", "headers", "ip"}``, ``headers`` holding exactly those of
        `FORWARDED` that the handshake has (several of one name joined as HTTP joins them)."""
        assert transport in TRANSPORTS, transport
        sent: dict[str, str] = {}
        for name in FORWARDED:
            values = headers.get_list(name)
            if values:
                sent[name] = ("; " if name == "Cookie" else ", ").join(values)
        return json.dumps({"transport": transport, "headers": sent, "ip": ip}, separators=(",", ":")).encode()

    async def resolve(self, transport: str, headers: HTTPHeaders, ip: str) -> ProxiedIdentity | None:
        """The handshake's identity, or None for anonymous (``{"user": null}`` or 204);
        HandshakeRefused: 403 for a 401 or 403, 503 for anything else."""
        call = self.body(transport, headers, ip)
        asked_at = time.time()
        try:
            return await self._ask(call, asked_at, asked_at)
        except ProxyRefused as e:
            raise HandshakeRefused(403, f"the application refused this handshake ({e})") from None
        except ProxyUnavailable as e:
            raise HandshakeRefused(503, f"cannot ask the application who this is now: {e}", RETRY_AFTER) from None

    async def refresh(self, identity: ProxiedIdentity) -> ProxiedIdentity | None:
        """The same call again, plus ``"user"``: a fresh identity (a later ``exp``), or None when the
        backend no longer vouches (``{"user": null}``, 204, 401, 403); ProxyUnavailable otherwise."""
        call = identity.call[:-1] + b',"user":' + json.dumps(identity.user).encode() + b"}"
        try:
            return await self._ask(call, time.time(), identity.issued_at, identity.call)
        except ProxyRefused:
            return None

    async def _ask(
        self, call: bytes, asked_at: float, issued_at: float | None, kept: bytes | None = None,
    ) -> ProxiedIdentity | None:
        try:
            code, body = await self.poster.post(call)
            identity = self._judge(code, body, asked_at, issued_at, kept or call)
        except ProxyRefused:
            self._count("refused")
            raise
        except ProxyUnavailable:
            self._count("failed")
            raise
        self._count("anonymous" if identity is None else "user")
        return identity

    def _judge(
        self, code: int, body: bytes, asked_at: float, issued_at: float | None, call: bytes,
    ) -> ProxiedIdentity | None:
        if code == 204:
            return None
        if code in (401, 403):
            raise ProxyRefused(f"it answered {code}")
        if code != 200:
            redirect = " (redirects are not followed)" if 300 <= code < 400 else ""
            raise self.poster.unavailable(f"answered {code}{redirect}")
        answer = _answer_object(self.poster, code, body)
        user = answer.get("user")
        if user is None:
            return None
        claims = {"sub": user, "exp": answer.get("exp"), "info": answer.get("info"), "rooms": answer.get("rooms"),
                  "publish": answer.get("publish")}
        try:
            judged = identity_from_claims(claims, time.time(), self.max_age)
        except TokenError as e:
            raise self.poster.unavailable(f"answered a user rrr refuses: {e.reason}") from None
        kept = {f.name: getattr(judged, f.name) for f in fields(Identity)}
        kept["issued_at"] = issued_at
        return ProxiedIdentity(**kept, call=call, asked_at=asked_at)

    def _count(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.connect_proxy_calls.labels(result).inc()

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run a refresh with no one to await it, held until done (the loop keeps only weak references)."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.poster.log.warning("refresh", "refreshing a proxied identity failed: %r", task.exception())


def parse_prefixes(value: str) -> tuple[str, ...]:
    """``--subscribe-proxy-rooms``: a comma list of room-name prefixes, each of a private or
    presence room (a public room needs nobody's permission); ValueError naming the option."""
    prefixes = tuple(p.strip() for p in value.split(",") if p.strip())
    bad = [p for p in prefixes if not needs_grant(p + "x")]
    if bad:
        raise ValueError(f"--subscribe-proxy-rooms: {bad[0][:80]!r} is no prefix of private-… or presence-… rooms "
                         "(public rooms need nobody's permission)")
    return prefixes


class SubscribeProxy:
    """``--subscribe-proxy-url``: may this socket join this room, which its grants do not cover?"""

    def __init__(self, url: str, prefixes: tuple[str, ...], timeout: float, metrics: Metrics | None = None) -> None:
        self.poster = _Poster(check_url(url, "--subscribe-proxy-url"), timeout, "subscribe proxy")
        self.prefixes = prefixes
        self.metrics = metrics

    def covers(self, room: str) -> bool:
        return any(room.startswith(p) for p in self.prefixes)

    async def ask(self, user: str | None, room: str, info_json: str) -> str:
        """The ``info`` the room shows for this subscription (JSON text: the answer's, else
        ``info_json``, the socket's own); ProxyRefused (403, ``allow: false``) or ProxyUnavailable."""
        call = (f'{{"user":{json.dumps(user)},"room":{json.dumps(room)},"info":{info_json}}}').encode()
        try:
            shown_info = await self._ask(call, info_json)
        except ProxyRefused:
            self._count("denied")
            raise
        except ProxyUnavailable:
            self._count("failed")
            raise
        self._count("allowed")
        return shown_info

    async def _ask(self, call: bytes, info_json: str) -> str:
        code, body = await self.poster.post(call)
        if code == 403:
            raise ProxyRefused("it answered 403")
        if code != 200:
            redirect = " (redirects are not followed)" if 300 <= code < 400 else ""
            raise self.poster.unavailable(f"answered {code}{redirect}")
        answer = _answer_object(self.poster, code, body)
        allow = answer.get("allow")
        if allow is False:
            raise ProxyRefused("allow: false")
        if allow is not True:
            raise self.poster.unavailable("answered 200 without \"allow\": true or false")
        if answer.get("info") is None:
            return info_json
        try:
            return info_from_claim(answer["info"])[1]
        except TokenError as e:
            raise self.poster.unavailable(f"answered an info rrr refuses: {e.reason}") from None

    def _count(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.subscribe_proxy_calls.labels(result).inc()


def proxies_from_options(
    o: Mapping[str, Any], metrics: Metrics | None = None,
) -> tuple[ConnectProxy | None, SubscribeProxy | None]:
    """The proxies the ``--connect-proxy-*`` and ``--subscribe-proxy-*`` options in ``o`` describe
    (None where the URL is empty); ValueError, naming the option, for one rrr cannot use."""
    for name in ("connect_proxy_timeout", "subscribe_proxy_timeout"):
        if not o[name] > 0:
            raise ValueError(f"--{name.replace('_', '-')} must be more than 0 seconds")
    connect = None
    if o["connect_proxy_url"]:
        connect = ConnectProxy(o["connect_proxy_url"], o["connect_proxy_timeout"], o["token_max_age"], metrics)
    subscribe = None
    prefixes = parse_prefixes(o["subscribe_proxy_rooms"])
    if o["subscribe_proxy_url"]:
        if not prefixes:
            raise ValueError("--subscribe-proxy-url needs --subscribe-proxy-rooms: the prefixes of the rooms to "
                             "ask about")
        subscribe = SubscribeProxy(o["subscribe_proxy_url"], prefixes, o["subscribe_proxy_timeout"], metrics)
    elif prefixes:
        raise ValueError("--subscribe-proxy-rooms needs --subscribe-proxy-url: whom to ask about those rooms")
    return connect, subscribe
