"""One ping timer per process, not one per socket.

Tornado's own keepalive (``websocket_ping_interval``) runs a Task, two coroutines, a
Future and a timer for every socket: about 1.6 KiB each, a tenth of an idle socket's
memory. Here one timer walks every socket once per interval: a socket that has sent
nothing (no pong, no message) since the previous round's ping is closed, so a dead
peer is dropped within two intervals; the others get a ping, which also keeps
proxies' idle timeouts from cutting quiet sockets.

The timer runs only while there are sockets, so nothing is left pending when an
event loop closes with no sockets on it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

# Sockets pinged per event-loop turn, so 19k sockets never hold the loop for one long stretch.
BATCH = 1000


class Pingable(Protocol):
    def send_ping(self) -> None: ...

    def close(self, code: int | None = None, reason: str | None = None) -> None: ...


class Keepalive:
    def __init__(self, interval: float, on_timeout: Callable[[], None] = lambda: None, batch: int = BATCH) -> None:
        """``interval`` <= 0 turns pings off (dead peers are then found only by TCP)."""
        self.interval = interval
        self.on_timeout = on_timeout
        self.batch = batch
        self._socks: set[Pingable] = set()
        # Pinged in the last round and silent since.
        self._unanswered: set[Pingable] = set()
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._socks)

    def add(self, sock: Pingable) -> None:
        if self.interval <= 0:
            return
        self._socks.add(sock)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.interval, self._round)

    def discard(self, sock: Pingable) -> None:
        self._socks.discard(sock)
        self._unanswered.discard(sock)

    def heard(self, sock: Pingable) -> None:
        """Any frame from the peer (a pong or a message) proves it is alive."""
        self._unanswered.discard(sock)

    def _round(self) -> None:
        self._timer = None
        for sock in list(self._unanswered):
            self.discard(sock)
            self.on_timeout()
            sock.close(reason="ping timed out")
        if not self._socks:
            return
        self._unanswered = set(self._socks)
        self._ping(list(self._socks), 0)
        self._timer = asyncio.get_running_loop().call_later(self.interval, self._round)

    def _ping(self, socks: list[Pingable], start: int) -> None:
        end = start + self.batch
        for sock in socks[start:end]:
            if sock in self._socks:
                sock.send_ping()
        if end < len(socks):
            asyncio.get_running_loop().call_soon(self._ping, socks, end)
