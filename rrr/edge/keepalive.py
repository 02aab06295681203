"""One ping timer per process, not one per socket.

Tornado's own keepalive (``websocket_ping_interval``) runs a Task, two coroutines, a
Future and a timer for every socket: about 1.6 KiB each, a tenth of an idle socket's
memory. Here one timer ticks ``SLICES`` times per interval and visits one slice of the
sockets per tick, so every socket is visited once per interval and the pings (and the
pongs they bring back, which cost far more to read) are spread evenly, never 19k at
once in the middle of a broadcast. At its visit a socket that has sent nothing (no
pong, no message) since the previous visit's ping is dropped, so a dead peer goes
within two intervals; the others get a ping, which also keeps proxies' idle timeouts
from cutting quiet sockets.

The timer runs only while there are sockets, so nothing is left pending when an
event loop closes with no sockets on it. A socket that raises is logged and skipped:
one bad socket must not stop the rounds for all the others.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger("rrr.keepalive")

SLICES = 20


class Pingable(Protocol):
    def send_ping(self) -> None: ...

    def drop(self, reason: str) -> bool:
        """Close a peer we gave up on; False if it was already closing."""
        ...


class Keepalive:
    def __init__(
        self, interval: float, on_timeout: Callable[[], None] = lambda: None, slices: int = SLICES
    ) -> None:
        """``interval`` <= 0 turns pings off (dead peers are then found only by TCP)."""
        self.interval = interval
        self.on_timeout = on_timeout
        # A socket's slice is fixed by its hash, so its visits are exactly one interval apart.
        self._slices: list[set[Pingable]] = [set() for _ in range(slices)]
        # Pinged and silent since.
        self._unanswered: set[Pingable] = set()
        self._next = 0
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return sum(len(s) for s in self._slices)

    @property
    def running(self) -> bool:
        return self._timer is not None

    def add(self, sock: Pingable) -> None:
        if self.interval <= 0:
            return
        self._slice(sock).add(sock)
        if self._timer is None:
            self._schedule()

    def discard(self, sock: Pingable) -> None:
        self._slice(sock).discard(sock)
        self._unanswered.discard(sock)

    def heard(self, sock: Pingable) -> None:
        """Any frame from the peer (a pong, a ping or a message) proves it is alive."""
        self._unanswered.discard(sock)

    def _slice(self, sock: Pingable) -> set[Pingable]:
        # Objects of one size sit at addresses a fixed stride apart, so their hashes form an
        # arithmetic progression; Fibonacci hashing spreads those evenly over the slices.
        mixed = ((hash(sock) * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF) >> 32
        return self._slices[mixed % len(self._slices)]

    def _schedule(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self.interval / len(self._slices), self._tick)

    def _tick(self) -> None:
        due = self._slices[self._next]
        self._next = (self._next + 1) % len(self._slices)
        for sock in list(due):
            if sock in self._unanswered:
                self.discard(sock)
                if _guarded(sock.drop, "ping timed out"):
                    self.on_timeout()
            else:
                self._unanswered.add(sock)
                _guarded(sock.send_ping)
        if any(self._slices):
            self._schedule()
        else:
            self._timer = None


def _guarded(fn: Callable[..., object], *args: object) -> object:
    try:
        return fn(*args)
    except Exception:
        log.exception("keepalive: %s failed", getattr(fn, "__qualname__", fn))
        return None
