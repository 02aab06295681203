"""Regression: the backplane's shutdown must finish when an UNSUBSCRIBE is in flight.

Found by tests/test_production.py (a process behind nginx hung forever after SIGTERM when
its sockets dropped at the same moment). On Python 3.11 ``asyncio.wait_for`` swallows a
cancellation that arrives just as the wrapped coroutine completes; redis-py sends every
command through ``wait_for``. ``RedisBackplane._sync_subscriptions`` is cancelled once by
``_subscriber_loop``'s ``finally`` while it sends the UNSUBSCRIBE that the sockets' closes
asked for; the cancel is lost, the task goes back to ``await self._subs_changed.wait()``
forever, and ``close()`` -> ``hub.shutdown()`` -> the process never exits (systemd then
SIGKILLs it after TimeoutStopSec, and its presence lingers for the TTL).

The loop below is deterministic: the same task interleaving every run, no timing involved
(0 and 1 extra loop turns between the unsubscribe and close() lose the cancel on 3.11).
Fixed by ``rrr.backplane._cancel``, which cancels again until the task is really done.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import redis

from rrr.backplane import RedisBackplane
from rrr.metrics import Metrics

pytestmark = pytest.mark.gen_test(timeout=120)


class Quiet:
    def on_room_message(self, room: str, data_json: str) -> None: ...

    def on_count(self, room: str, state: object) -> None: ...

    def on_resync(self) -> None: ...


async def test_backplane_close_finishes_with_an_unsubscribe_in_flight(redis_url):
    r = redis.Redis.from_url(redis_url)
    hung = []
    try:
        for spins in range(6):
            bp = RedisBackplane(redis_url, Metrics(), sweep_interval=0.05, timeout=1.0)
            await bp.start(Quiet())
            bp.subscribe("race")
            deadline = time.monotonic() + 10
            while dict(r.pubsub_numsub("rrr:room:race")).get(b"rrr:room:race", 0) < 1:
                assert time.monotonic() < deadline, "backplane never subscribed"
                await asyncio.sleep(0.01)
            bp.unsubscribe("race")  # what the last socket of a room closing during shutdown does
            for _ in range(spins):
                await asyncio.sleep(0)
            try:
                await asyncio.wait_for(bp.close(), 3)
            except asyncio.TimeoutError:
                hung.append(spins)
                for task in bp._tasks:  # clean up what close() could not
                    task.cancel()
                await asyncio.sleep(0.1)
                await bp._redis.aclose()
    finally:
        r.close()
    assert not hung, f"RedisBackplane.close() hung (> 3 s) after {hung} loop turns with an UNSUBSCRIBE in flight"
