"""One ping timer per process, not one per socket, and no ping a socket does not need.

Tornado's own keepalive (``websocket_ping_interval``) runs a Task, two coroutines, a
Future and a timer for every socket: about 1.6 KiB each, a tenth of an idle socket's
memory. Here one timer ticks and visits one slice of the sockets per tick, so every socket
is visited twice per interval, its visits exactly half an interval apart (its slice is
fixed by its hash), and the pings (and the pongs they bring back, which cost far more to
read) are spread evenly, never 19k at once in the middle of a broadcast.

What a visit does, by what the socket sent (``heard``: any frame but a pong; ``answered``:
a pong):

* heard from within the interval: nothing. A socket that talks (the browser library sends
  its own ``ping`` every 15 s, under the default 20 s interval) is alive, and its frames
  are answered, which keeps proxies' idle timeouts from cutting it: a ping would cost it and
  us a frame each way for nothing.
* pinged at its previous visit and silent since (not even a pong): dropped.
* silent for an interval after it last talked: pinged at once.
* otherwise (an idle socket, which only answers pings): pinged every other visit, once per
  interval, which also keeps proxies' idle timeouts from cutting it. A pong proves the peer
  alive but does not put off the next ping, or the server would send an idle socket
  nothing for longer than an interval. (Which of its two visits pings is fixed by its
  slice and the round, so this costs no memory per socket; one that fell silent and was
  pinged at the other visit may get its next ping half an interval later, once.)

A new socket counts as heard from at its handshake.

So a ping goes only to a socket not heard from for an interval, the answer has half an
interval to come, and a dead peer goes within two intervals of its last frame. At every
other visit of each socket (once per interval) it is also asked to check its own progress
(`Pingable.check_progress`: a queue that wrote nothing since the previous check means a
client that does not read). An idle socket costs no memory here between a ping and its pong;
one that talks is in one of three sets while it does.

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

    def check_progress(self) -> None:
        """Once per interval: cut off a client whose queue made no progress since the previous check."""
        ...

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
        # A socket's slice is fixed by its hash, so its visits are exactly half an interval apart.
        self._slices: list[set[Pingable]] = [set() for _ in range(slices)]
        # Heard from since its previous visit.
        self._heard: set[Pingable] = set()
        # Heard from in the half interval before its previous visit (and not since).
        self._recent: set[Pingable] = set()
        # Silent for an interval after it last talked at its next visit: pinged then, whatever the round.
        self._due: set[Pingable] = set()
        # Pinged at its previous visit and silent since.
        self._pinged: set[Pingable] = set()
        self._next = 0
        self._round = 0  # passes over all the slices: two per interval
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
        self._heard.add(sock)  # its handshake: no ping for an interval
        if self._timer is None:
            self._schedule()

    def discard(self, sock: Pingable) -> None:
        self._slice(sock).discard(sock)
        self._heard.discard(sock)
        self._recent.discard(sock)
        self._due.discard(sock)
        self._pinged.discard(sock)

    def heard(self, sock: Pingable) -> None:
        """A frame from the peer (a message or a ping): alive, and no ping needed for an interval."""
        if sock in self._slice(sock):  # never a socket already discarded: it would be kept for good
            self._heard.add(sock)

    def answered(self, sock: Pingable) -> None:
        """A pong: alive; the next ping goes at its usual time."""
        self._pinged.discard(sock)

    def _slice(self, sock: Pingable) -> set[Pingable]:
        # Objects of one size sit at addresses a fixed stride apart, so their hashes form an
        # arithmetic progression; Fibonacci hashing spreads those evenly over the slices.
        mixed = ((hash(sock) * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF) >> 32
        return self._slices[mixed % len(self._slices)]

    def _schedule(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self.interval / (2 * len(self._slices)), self._tick)

    def _tick(self) -> None:
        index = self._next
        due = self._slices[index]
        # A socket's visits alternate between the ping round (idle sockets pinged, progress
        # checked) and the check round; slices alternate too, so every tick pings about as many.
        ping_round = (self._round + index) % 2 == 0
        self._next = (index + 1) % len(self._slices)
        if self._next == 0:
            self._round += 1
        heard, recent, overdue, pinged = self._heard, self._recent, self._due, self._pinged
        for sock in list(due):
            if sock in heard:  # heard within the last half interval
                heard.discard(sock)
                pinged.discard(sock)
                overdue.discard(sock)
                recent.add(sock)
                ping = False
            elif sock in pinged:  # silent since the ping at its previous visit
                self.discard(sock)
                if _guarded(sock.drop, "ping timed out"):
                    self.on_timeout()
                continue
            elif sock in recent:  # heard in the half interval before
                recent.discard(sock)
                overdue.add(sock)
                ping = False
            elif sock in overdue:  # an interval of silence since it last talked
                overdue.discard(sock)
                ping = True
            else:  # idle: one ping per interval
                ping = ping_round
            # Guarded inline rather than through `_guarded`: this runs for every socket twice per interval.
            if ping_round:
                try:
                    sock.check_progress()
                except Exception:
                    log.exception("keepalive: %s failed", "check_progress")
            if ping:
                pinged.add(sock)
                try:
                    sock.send_ping()
                except Exception:
                    log.exception("keepalive: %s failed", "send_ping")
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
