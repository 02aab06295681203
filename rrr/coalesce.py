"""When to write presence: joins and leaves mark rooms dirty; one batch per interval is written.

The leading edge goes at once (a lone join is answered in one round trip); after that, at
most one batch per ``interval``, so a join storm of N costs O(N) work, not O(N^2). A failed
batch comes back with a capped jittered backoff, merged with whatever changed meanwhile.
This module decides only *when*; the caller decides what a room's row is and writes it.
"""

from __future__ import annotations

import asyncio

from .supervise import full_jitter


class Coalescer:
    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._dirty: set[str] = set()
        self._event = asyncio.Event()
        self._not_before = float("-inf")
        self._handed_at = float("-inf")
        self._failures = 0

    @property
    def pending(self) -> bool:
        return bool(self._dirty)

    @property
    def failing(self) -> bool:
        return self._failures > 0

    def mark(self, room: str) -> None:
        self._dirty.add(room)
        self._event.set()

    def mark_all(self, rooms: set[str] | list[str]) -> None:
        self._dirty.update(rooms)
        self._event.set()

    def drop(self) -> None:
        """Forget every pending room (shutdown: LEAVE removes them all)."""
        self._dirty.clear()

    async def next_batch(self) -> set[str]:
        """Wait until rooms are dirty and the interval allows, then hand them over."""
        loop = asyncio.get_running_loop()
        while True:
            while not self._dirty:
                self._event.clear()
                await self._event.wait()
            delay = self._not_before - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if self._dirty:
                batch, self._dirty = self._dirty, set()
                self._handed_at = self._not_before
                self._not_before = loop.time() + self.interval
                return batch

    def unused(self) -> None:
        """Nothing of the last batch was written (its rooms wait for their subscriptions):
        it does not count against the interval, so they go out the moment they are ready."""
        self._not_before = self._handed_at

    def failed(self, batch: set[str]) -> None:
        """The batch was not written: keep it, and wait longer before each retry."""
        self._failures += 1
        self._dirty |= batch
        wait = max(self.interval, full_jitter(self._failures, 0.25, 5.0))
        self._not_before = asyncio.get_running_loop().time() + wait
        self._event.set()

    def succeeded(self) -> None:
        self._failures = 0
