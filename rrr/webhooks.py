"""Events out: webhooks in Pusher's format, sent by one process of the deployment.

The presence scripts record each transition where it happens (`rrr.backplane.events`); this is
the sender. Every process runs `Webhooks.run` (supervised as ``webhooks``) and asks now and then
for the sender's lease in Redis; the one that holds it moves final events to the outbox and
delivers them, and when it dies another takes over within `LEASE_TTL` plus a poll. What it sends:

* per URL of ``--webhook-url`` its own queue (a cursor on the outbox), order and retries: each
  request is ``POST <url>`` with up to ``--webhook-batch`` events, signed afresh (`time_ms`,
  signature) on every attempt; a 2xx acknowledges them all, anything else (or no answer within
  ``--webhook-timeout``) means retry: the n-th retry waits a uniformly random time between half
  and all of min(2^(n-1), 60) s. An event older than ``--webhook-retry-for`` (from when it was
  stored) is dropped and counted instead of being sent.
* the shared status (backlog, last error) goes into Redis with each lease renewal, so every
  process's ``/healthz`` reports it as information.

It has its own Redis connections (the store's) and its own HTTP client, and runs in tasks of
its own: a receiver that is slow, failing or hanging delays nothing but its own queue.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.simple_httpclient import HTTPTimeoutError, SimpleAsyncHTTPClient

from .backplane import EventStore, StoredEvent
from .errors import BackplaneError
from .metrics import Metrics
from .pusher.webhooks import signed_webhook
from .supervise import RateLimitedLog, Supervisor, cancel

log = logging.getLogger("rrr.webhooks")

#: The events rrr sends by default, by their Pusher names (``--webhook-events`` picks among them).
EVENT_NAMES = ("channel_occupied", "channel_vacated", "member_added", "member_removed")
#: Sent only when ``--webhook-events`` names them: a Pusher client event (its event, data and
#: sender), and a cache channel's subscriber that found nothing cached.
OPT_IN_NAMES = ("client_event", "cache_miss")
#: Seconds the sender's lease lasts unless renewed (every third of it), at most: another process
#: takes over within it plus one poll (half of it) of a dead sender. A shorter --presence-ttl
#: shortens it (to a third of the TTL, at least 1 s), so a dead sender is replaced before its
#: sweep's events are due.
LEASE_TTL = 5.0
#: Rooms whose events are moved per round.
ROOMS_PER_ROUND = 256
#: How often a cluster's sender looks for what a process that died between a room's script and its
#: note left behind (see `EventStore.repair`); also when it starts sending.
REPAIR_EVERY = 60.0


def lease_ttl(presence_ttl: float) -> float:
    return max(1.0, min(LEASE_TTL, presence_ttl / 3))


@dataclass(frozen=True)
class WebhookSettings:
    urls: tuple[str, ...]
    key: str
    secret: str
    names: frozenset[str]
    retry_for: float = 3600.0
    timeout: float = 5.0
    batch: int = 50
    backlog: int = 100_000


def webhook_settings(o: Mapping[str, Any]) -> WebhookSettings | None:
    """The webhooks of these options (None: ``--webhook-url`` is empty, events are off). A value rrr
    cannot use raises ValueError naming its option."""
    urls = tuple(u.strip() for u in str(o.get("webhook_url") or "").split(",") if u.strip())
    names_text = str(o.get("webhook_events") or "")
    names = frozenset(n.strip() for n in names_text.split(",") if n.strip()) or frozenset(EVENT_NAMES)
    unknown = sorted(names - set(EVENT_NAMES) - set(OPT_IN_NAMES))
    if unknown:
        raise ValueError(
            f"--webhook-events: unknown event name(s) {', '.join(unknown)} "
            f"(known: {', '.join(EVENT_NAMES + OPT_IN_NAMES)})",
        )
    for name, low in (("webhook_retry_for", 0.0), ("webhook_timeout", 0.0)):
        if not float(o.get(name, 1.0)) > low:
            raise ValueError(f"--{name.replace('_', '-')} must be more than {low:g} seconds")
    for name in ("webhook_batch", "webhook_backlog"):
        if int(o.get(name, 1)) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
    if float(o.get("vacate_delay", 0.0)) < 0:
        raise ValueError("--vacate-delay must not be negative")
    if not urls:
        return None
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"--webhook-url: {redact(url)!r} is not an http:// or https:// URL")
    secret = str(o.get("webhook_secret") or o.get("pusher_secret") or "")
    if not secret:
        raise ValueError("--webhook-url needs a key to sign with: set --webhook-secret (or the Pusher app secret)")
    key = str(o.get("webhook_key") or o.get("pusher_key") or "rrr")
    return WebhookSettings(
        urls=urls, key=key, secret=secret, names=names, retry_for=float(o.get("webhook_retry_for", 3600.0)),
        timeout=float(o.get("webhook_timeout", 5.0)), batch=int(o.get("webhook_batch", 50)),
        backlog=int(o.get("webhook_backlog", 100_000)),
    )


def retry_delay(n: int) -> float:
    """How long the n-th retry (n >= 1) waits: uniform in [half, all] of min(2^(n-1), 60) s."""
    top = min(2.0 ** (max(1, n) - 1), 60.0)
    return random.uniform(top / 2, top)


def redact(url: str) -> str:
    """A URL as logs and /healthz may show it: no userinfo, no query (either may hold a secret)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def url_key(url: str) -> str:
    """A URL's cursor name in Redis (the URL itself may hold a secret)."""
    return hashlib.sha256(url.encode()).hexdigest()[:24]


class Webhooks:
    """The sender: the lease, the moves to the outbox, one delivery task per URL."""

    def __init__(
        self, settings: WebhookSettings, store: EventStore, metrics: Metrics, supervisor: Supervisor, *,
        lease: float = LEASE_TTL,
    ) -> None:
        self.settings = settings
        self.lease_ttl = lease
        self.store = store
        self.metrics = metrics
        self.supervisor = supervisor
        self.holding = False
        # The shared status, as last read from Redis (every process shows it in /healthz).
        self.backlog = 0
        self.last_error: str | None = None
        # This process's deliveries when it holds the lease: the last error of each URL still failing.
        self._errors: dict[str, str] = {}
        self._wake: dict[str, asyncio.Event] = {url: asyncio.Event() for url in settings.urls}
        self._http: SimpleAsyncHTTPClient | None = None
        self._closing = False
        self._log = RateLimitedLog(log)
        metrics.webhook_backlog.set_function(lambda: float(self.backlog))

    def wants(self, name: str) -> bool:
        return name in self.settings.names

    async def record(self, name: str, room: str, fields: Mapping[str, str]) -> None:
        """An event no presence change makes (``client_event``, ``cache_miss``), from any process,
        when ``--webhook-events`` asks for it: into the outbox, delivered as the others are. Redis
        failing loses it (logged at most once per 30 s): it happened, and nobody waits on it."""
        if name not in self.settings.names:
            return
        try:
            await self.store.direct(name, room, fields)
        except BackplaneError as e:
            self.metrics.webhook_dropped.labels("unrecorded").inc()
            self._log.warning("direct", "could not record a %s webhook for %s: %s", name, room, e)
            return
        self.metrics.webhook_events.labels(name).inc()

    def status(self) -> dict[str, Any]:
        """What ``/healthz`` reports (information, not a check)."""
        return {"backlog": self.backlog, "last_error": self.last_error}

    # -- the lease -------------------------------------------------------------------------------

    async def _lease(self, take: bool) -> bool:
        own = next(reversed(self._errors.values()), "") if self.holding else None
        held, backlog, error = await self.store.lease(self.lease_ttl, take, own)
        self.backlog, self.last_error = backlog, (error or None)
        return held

    async def run(self) -> None:
        """Every process: take the lease when it is free, and send while it is ours."""
        while not self._closing:
            try:
                held = await self._lease(take=True)
            except BackplaneError as e:
                self.supervisor.report("webhooks", e)
                held = False
            if held and not self._closing:
                log.info("sending webhooks from this process")
                self.holding = True
                try:
                    await self._send()
                finally:
                    self.holding = False
                    self._errors.clear()
                if not self._closing:
                    log.info("no longer sending webhooks from this process")
            await asyncio.sleep(self.lease_ttl / 2 * random.uniform(0.75, 1.25))

    async def _send(self) -> None:
        """Move and deliver until the lease is lost (or the process closes)."""
        tasks = [asyncio.ensure_future(self._guarded(self._move))]
        tasks += [asyncio.ensure_future(self._guarded(self._deliver, url)) for url in self.settings.urls]
        try:
            await self._keep_lease()
        finally:
            for task in tasks:
                await cancel(task)

    async def _guarded(self, body: Any, *args: Any) -> None:
        """Run a loop of the sender again whatever it raises (counted, logged once per 30 s): a bug
        or a reply of the wrong shape must not stop the sending while the lease is held."""
        while True:
            try:
                await body(*args)
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - the point: nothing may end this loop
                self.supervisor.report("webhooks", e)
                await asyncio.sleep(1.0)

    async def _keep_lease(self) -> None:
        """Renew every third of the lease; return when it is lost, or may have expired unseen."""
        loop = asyncio.get_running_loop()
        renewed = loop.time()
        while not self._closing:
            await asyncio.sleep(self.lease_ttl / 3)
            try:
                if not await self._lease(take=False):
                    return
                renewed = loop.time()
            except BackplaneError as e:
                self.supervisor.report("webhooks", e)
                if loop.time() - renewed > self.lease_ttl * 2 / 3:
                    return

    async def close(self) -> None:
        """Shutting down: give the lease up, so another process sends at once."""
        self._closing = True
        if self._http is not None:
            self._http.close()
        try:
            await self.store.release()
        except BackplaneError as e:
            log.info("could not give up the webhook sender's lease (it expires): %s", e)
        await self.store.close()

    # -- moving final events to the outbox ---------------------------------------------------------

    async def _move(self) -> None:
        failures = 0
        loop = asyncio.get_running_loop()
        next_repair = loop.time()
        while True:
            try:
                rooms, wait = await self.store.due(ROOMS_PER_ROUND)
                if rooms:
                    moved = await self.store.move(rooms, self.settings.names)
                    for name in moved.names:
                        self.metrics.webhook_events.labels(name).inc()
                    if moved.dropped:
                        self.metrics.webhook_dropped.labels("backlog").inc(moved.dropped)
                    if moved.names:
                        for event in self._wake.values():
                            event.set()
                    else:
                        await asyncio.sleep(0.01)  # nothing could move yet (a vacated waiting)
                    failures = 0
                    continue
                if loop.time() >= next_repair:
                    next_repair = loop.time() + REPAIR_EVERY
                    await self.store.repair()
                failures = 0
                self.supervisor.recovered("webhooks")
                await self.store.ring(1.0 if wait is None else min(wait, 1.0))
            except BackplaneError as e:
                failures += 1
                self.supervisor.report("webhooks", e)
                await asyncio.sleep(min(5.0, 0.1 * 2 ** failures))

    # -- one URL's queue ---------------------------------------------------------------------------

    async def _deliver(self, url: str) -> None:
        """The URL's queue: the next batch after its cursor, sent until acknowledged or expired."""
        key = url_key(url)
        keys = [url_key(u) for u in self.settings.urls]
        wake = self._wake[url]
        attempt = 0
        expired: set[str] = set()  # ids already counted as expired (a failed batch is read again)
        unacked: str | None = None  # a batch the receiver took whose cursor is not yet in Redis
        while True:
            try:
                if unacked is not None:
                    self.backlog = await self.store.acked(key, unacked, keys)
                    unacked = None
                wake.clear()
                events = await self.store.read(key, self.settings.batch)
            except BackplaneError as e:
                self.supervisor.report("webhooks", e)
                await asyncio.sleep(1.0)
                continue
            if not events:
                try:
                    await asyncio.wait_for(wake.wait(), 1.0)
                except asyncio.TimeoutError:
                    pass
                continue
            now_ms = time.time() * 1000
            fresh: list[StoredEvent] = []
            for event in events:
                if now_ms - event.stored_ms > self.settings.retry_for * 1000:
                    if event.id not in expired:
                        expired.add(event.id)
                        self.metrics.webhook_dropped.labels("expired").inc()
                else:
                    fresh.append(event)
            if fresh and not await self._post(url, fresh):
                attempt += 1
                await asyncio.sleep(retry_delay(attempt))
                continue
            attempt = 0
            expired.clear()
            unacked = events[-1].sid

    async def _post(self, url: str, events: list[StoredEvent]) -> bool:
        """One attempt: a fresh ``time_ms`` and signature. True when the receiver answered 2xx."""
        s = self.settings
        body, headers = signed_webhook(s.key, s.secret, [e.payload() for e in events], time.time() * 1000)
        if self._http is None:
            self._http = SimpleAsyncHTTPClient(force_instance=True, max_clients=len(s.urls) + 1)
        request = HTTPRequest(
            url, method="POST", body=body, headers=headers, connect_timeout=s.timeout, request_timeout=s.timeout,
            follow_redirects=False, decompress_response=False,
        )
        try:
            response = await self._http.fetch(request, raise_error=False)
        except HTTPTimeoutError:
            return self._failed(url, "timeout", f"no answer within {s.timeout:g} s")
        except (HTTPClientError, OSError) as e:
            return self._failed(url, "error", f"{type(e).__name__}: {e}")
        except Exception as e:  # noqa: BLE001 - whatever a receiver does, the queue goes on
            return self._failed(url, "error", f"{type(e).__name__}: {e}")
        if 200 <= response.code < 300:
            self.metrics.webhook_requests.labels("ok").inc()
            if self._errors.pop(url, None) is not None:
                log.info("webhook receiver %s answers again", redact(url))
            self.supervisor.log.clear(f"webhook {url}")
            return True
        return self._failed(url, "error", f"HTTP {response.code}")

    def _failed(self, url: str, outcome: str, why: str) -> bool:
        self.metrics.webhook_requests.labels(outcome).inc()
        text = f"{redact(url)}: {why}"[:300]
        self._errors.pop(url, None)
        self._errors[url] = text  # the newest last: the one the status reports
        self.supervisor.log.warning(f"webhook {url}", "webhook to %s failed (retried): %s", redact(url), why)
        return False
