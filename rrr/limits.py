"""What one client address may hold and how fast it may ask.

The per-socket caps live in the session; these are the ones a client could dodge by
opening more sockets or by not using a socket at all (the JSON API). The accounting is
itself bounded: an address's counts are dropped once it holds nothing, and its rate
buckets once they are full again (a full bucket is exactly what a new one would be), so
a scan from a million addresses leaves nothing behind a few seconds later.
"""

from __future__ import annotations

from .policy import TokenBucket

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


class AddressLimits:
    """Sockets, subscriptions and publishes per client address (``request.remote_ip``: the real
    client behind nginx when the server runs with ``--xheaders``). A cap of 0 is off, and then
    nothing at all is stored for it."""

    def __init__(
        self, *, max_sockets: int = 0, max_subscriptions: int = 0, publish_rate: float = 0.0,
        publish_burst: float = 0.0, api_rate: float = 0.0, api_burst: float = 0.0,
        history_read_rate: float = 0.0, history_read_burst: float = 0.0,
    ) -> None:
        self.max_sockets = max_sockets
        self.max_subscriptions = max_subscriptions
        self._sockets: dict[str, int] = {}
        self._subscriptions: dict[str, int] = {}
        self.publish = RateLimiter(publish_rate, publish_burst)
        self.api = RateLimiter(api_rate, api_burst)
        # Bytes, not requests: one history read of the API can be history-size x max-message-size.
        self.history_bytes = RateLimiter(history_read_rate, history_read_burst)

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
            + self.history_bytes.sweep()
        )


def _decrement(counts: dict[str, int], key: str) -> None:
    n = counts.get(key, 0) - 1
    if n > 0:
        counts[key] = n
    else:
        counts.pop(key, None)
