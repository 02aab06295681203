"""Every cap and rate limit: what one socket may ask for (`Limits`, enforced by the session),
what one client address may hold and how fast it may ask (`AddressLimits`), and the buckets
they are built of (`TokenBucket`, `RateLimiter`, `HeldBytes`).

The per-address caps are the ones a client could dodge by opening more sockets or by not
using a socket at all (the JSON API). The accounting is itself bounded: an address's counts
are dropped once it holds nothing, and its rate buckets once they are full again (a full
bucket is exactly what a new one would be), so a scan from a million addresses leaves
nothing behind a few seconds later.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """What one socket may ask for (the options of the same names); `rrr.session.Session` enforces them."""

    client_publish: bool = False
    publish_rate: float = 10.0
    publish_burst: float = 20.0
    max_subscriptions: int = 1000
    max_tabs_per_room: int = 50
    max_rooms: int = 10000
    message_rate: float = 50.0
    message_burst: float = 100.0
    presence_list_rate: float = 1.0
    presence_list_burst: float = 20.0
    max_members: int = 0  # users per presence room (0: no cap)
    whispers: bool = True  # whispers (and Pusher client events): --pusher-client-events


class TokenBucket:
    """A rate limit: ``rate`` a second on average, bursts up to ``burst``."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def take(self, cost: float = 1.0) -> bool:
        """Spend ``cost`` if the bucket holds at least one token. A cost above what it holds (a
        response measured in bytes, bigger than the burst) is still allowed once and leaves the
        bucket in debt, repaid at ``rate`` before the next take: the average stays ``rate``."""
        self._refill()
        if self.tokens >= 1:
            self.tokens -= cost
            return True
        return False

    def wait(self) -> float:
        """Seconds until the next ``take`` can succeed (0 if it can now)."""
        self._refill()
        return max(0.0, (1 - self.tokens) / self.rate) if self.rate > 0 else float("inf")

    def full(self) -> bool:
        """Whether the bucket has refilled: it then holds nothing a fresh bucket would not."""
        return self.tokens + (time.monotonic() - self.stamp) * self.rate >= self.burst


# Below this many buckets a sweep is not worth its pass over the dict.
_SWEEP_FLOOR = 1024


class RateLimiter:
    """Token buckets keyed by client address; ``rate <= 0`` turns the limit off."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = max(1.0, burst)
        self._buckets: dict[str, TokenBucket] = {}
        self._sweep_at = _SWEEP_FLOOR

    def take(self, key: str, cost: float = 1.0) -> float:
        """0.0 if ``key`` may go ahead now (``cost`` is spent: see `TokenBucket.take`), else the
        seconds until it may (for ``Retry-After``)."""
        if self.rate <= 0:
            return 0.0
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._sweep_at:
                self.sweep()
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst)
        if bucket.take(cost):
            return 0.0
        return bucket.wait()

    def wait(self, key: str) -> float:
        """What `take` would answer, without spending anything (nor remembering ``key``)."""
        bucket = self._buckets.get(key)
        return 0.0 if self.rate <= 0 or bucket is None else bucket.wait()

    def sweep(self) -> int:
        """Forget every bucket that has filled up again; the number still held.

        Amortised: the next sweep waits until the dict has doubled, so sweeping costs O(1)
        per new address however many addresses come and go.
        """
        self._buckets = {k: b for k, b in self._buckets.items() if not b.full()}
        self._sweep_at = max(_SWEEP_FLOOR, 2 * len(self._buckets))
        return len(self._buckets)

    def __len__(self) -> int:
        return len(self._buckets)


class HeldBytes:
    """What clients' publishes hold in Redis history, per address and in all: each message's bytes
    until its history expires (``ttl`` after it was stored). A cap of 0 is off.

    Counted as if every message stayed for the whole ``ttl`` (a room trimmed to ``--history-size``
    frees them sooner): the bound errs on the side of holding less. The ledger is bounded too:
    publishes of one address within the same 1/64 of ``ttl`` share one entry (so at most 65 per
    address, kept a slice longer than ``ttl``), entries leave as they expire, and an address
    holding nothing is forgotten."""

    SLICES = 64

    def __init__(self, per_address: int, total: int, ttl: float) -> None:
        self.per_address = per_address
        self.total_max = total
        self.ttl = ttl
        self._slice = max(ttl / self.SLICES, 0.001)
        self._entries: deque[_Held] = deque()  # by expiry
        self._newest: dict[str, _Held] = {}
        self._held: dict[str, int] = {}
        self.total = 0

    @property
    def enabled(self) -> bool:
        """History on (``ttl`` > 0) and at least one cap set."""
        return self.ttl > 0 and (self.per_address > 0 or self.total_max > 0)

    def take(self, ip: str, size: int) -> str | None:
        """Count ``size`` more bytes held for ``ip``; or, counting nothing, the reason it may not."""
        if not self.enabled:
            return None
        now = time.monotonic()
        self.expire(now)
        size = max(1, size)
        held = self._held.get(ip, 0)
        if 0 < self.per_address < held + size:
            return f"this address's publishes hold {held} bytes of history, at most {self.per_address}; try later"
        if 0 < self.total_max < self.total + size:
            return "clients' publishes hold the most history this server allows; try later"
        expiry = (math.floor(now / self._slice) + 1) * self._slice + self.ttl
        entry = self._newest.get(ip)
        if entry is not None and entry.expiry == expiry:
            entry.size += size
        else:
            entry = self._newest[ip] = _Held(expiry, ip, size)
            self._entries.append(entry)
        self._held[ip] = held + size
        self.total += size
        return None

    def expire(self, now: float | None = None) -> int:
        """Let go of what history has expired by now; the number of addresses still holding some."""
        now = time.monotonic() if now is None else now
        entries = self._entries
        while entries and entries[0].expiry <= now:
            e = entries.popleft()
            self.total -= e.size
            left = self._held[e.ip] - e.size
            if left > 0:
                self._held[e.ip] = left
            else:
                del self._held[e.ip]
                self._newest.pop(e.ip, None)
        return len(self._held)

    def held(self, ip: str) -> int:
        self.expire()
        return self._held.get(ip, 0)

    def __len__(self) -> int:
        """Entries in the ledger (at most 65 per address holding anything)."""
        return len(self._entries)


class _Held:
    __slots__ = ("expiry", "ip", "size")

    def __init__(self, expiry: float, ip: str, size: int) -> None:
        self.expiry = expiry
        self.ip = ip
        self.size = size


class AddressLimits:
    """Sockets, subscriptions and publishes per client address (``request.remote_ip``: the real
    client behind nginx when the server runs with ``--xheaders``). A cap of 0 is off, and then
    nothing at all is stored for it."""

    def __init__(
        self, *, max_sockets: int = 0, max_subscriptions: int = 0, publish_rate: float = 0.0,
        publish_burst: float = 0.0, api_rate: float = 0.0, api_burst: float = 0.0,
        history_read_rate: float = 0.0, history_read_burst: float = 0.0,
        client_history_per_ip: int = 0, client_history_max: int = 0, history_ttl: float = 0.0,
    ) -> None:
        self.max_sockets = max_sockets
        self.max_subscriptions = max_subscriptions
        self._sockets: dict[str, int] = {}
        self._subscriptions: dict[str, int] = {}
        self.publish = RateLimiter(publish_rate, publish_burst)
        self.api = RateLimiter(api_rate, api_burst)
        # Bytes, not requests: one history read of the API can be history-size x max-message-size.
        self.history_bytes = RateLimiter(history_read_rate, history_read_burst)
        # What client publishes keep in Redis (``history_ttl`` 0: history off, nothing kept).
        self.client_history = HeldBytes(client_history_per_ip, client_history_max, history_ttl)

    def may_open_socket(self, ip: str) -> bool:
        return self.max_sockets <= 0 or self._sockets.get(ip, 0) < self.max_sockets

    def socket_opened(self, ip: str) -> None:
        if self.max_sockets > 0:
            self._sockets[ip] = self._sockets.get(ip, 0) + 1

    def socket_closed(self, ip: str) -> None:
        if self.max_sockets > 0:
            _decrement(self._sockets, ip)

    def add_subscription(self, ip: str) -> bool:
        """Count one more subscription for ``ip``, or False (nothing counted) if it is at its cap."""
        if self.max_subscriptions <= 0:
            return True
        n = self._subscriptions.get(ip, 0)
        if n >= self.max_subscriptions:
            return False
        self._subscriptions[ip] = n + 1
        return True

    def remove_subscription(self, ip: str) -> None:
        if self.max_subscriptions > 0:
            _decrement(self._subscriptions, ip)

    def tracked(self) -> int:
        """Entries held for all addresses (the ``rrr_tracked_addresses`` gauge); sweeps first."""
        return (
            len(self._sockets) + len(self._subscriptions) + self.publish.sweep() + self.api.sweep()
            + self.history_bytes.sweep() + self.client_history.expire()
        )


def _decrement(counts: dict[str, int], key: str) -> None:
    n = counts.get(key, 0) - 1
    if n > 0:
        counts[key] = n
    else:
        counts.pop(key, None)
