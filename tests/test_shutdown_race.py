"""Regression: a process's shutdown must finish when an UNSUBSCRIBE is in flight.

Found by tests/test_production.py (a process behind nginx hung forever after SIGTERM when
its sockets dropped at the same moment). On Python 3.11 ``asyncio.wait_for`` swallows a
cancellation that arrives just as the wrapped coroutine completes; redis-py sends every
command through ``wait_for``. The subscriber's sync task is cancelled once by ``run``'s
``finally`` while it sends the UNSUBSCRIBE that the sockets' closes asked for; the cancel is
lost, the task goes back to waiting for changes forever, and the supervisor's ``close()`` ->
``Service.shutdown()`` -> the process never exits (systemd then SIGKILLs it after
TimeoutStopSec, and its presence lingers for the TTL).

The loop below is deterministic: the same task interleaving every run, no timing involved
(0 and 1 extra loop turns between the unsubscribe and close() lose the cancel on 3.11).
Fixed by ``rrr.supervise.cancel``, which cancels again until the task is really done.

The core's side is a complete `Events` (mypy checks it): a partial stub made the subscriber
fail and reconnect on every SUBSCRIBE, so the race was rarely reached and the test passed
with its fix reverted.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import redis

from rrr.backplane.clients import make_redis
from rrr.metrics import Metrics
from rrr.protocol import CountState
from rrr.backplane import Events
from rrr.backplane.subscriber import ClassicSubscriber
from rrr.supervise import Supervisor

pytestmark = pytest.mark.gen_test(timeout=120)


class Quiet:
    """Hears everything, does nothing."""

    def __init__(self) -> None:
        self.subscribed: list[str] = []

    def message(self, room: str, offset: int, epoch: str, data_json: str) -> None: ...

    def raw_message(self, room: str, data_json: str) -> None: ...

    def count(self, room: str, state: CountState) -> None: ...

    def room_confirmed(self, room: str) -> None:
        self.subscribed.append(room)

    def connected(self) -> None: ...

    def signed_out(self, user: str) -> None: ...

    def control_confirmed(self) -> None: ...


async def test_shutdown_finishes_with_an_unsubscribe_in_flight(redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url)
    hung = []
    try:
        for spins in range(6):
            metrics = Metrics()
            quiet = Quiet()
            events: Events = quiet
            client = make_redis(redis_url, 1.0)
            subscriber = ClassicSubscriber(client, metrics, process_id=f"race-{spins}")
            subscriber.bind(events)
            supervisor = Supervisor(metrics)
            supervisor.spawn("subscriber", subscriber.run)
            subscriber.follow("race")
            deadline = time.monotonic() + 10
            while "race" not in quiet.subscribed:
                assert time.monotonic() < deadline, "subscriber never confirmed the room"
                await asyncio.sleep(0.01)
            subscriber.unfollow("race")  # what the last socket of a room closing during shutdown does
            for _ in range(spins):
                await asyncio.sleep(0)
            try:
                await asyncio.wait_for(subscriber.stop(), 3)  # as Service.shutdown does
                await asyncio.wait_for(supervisor.close(), 3)
            except asyncio.TimeoutError:
                hung.append(spins)
            assert metrics.registry.get_sample_value("rrr_task_errors_total", {"task": "subscriber"}) is None
            await client.aclose()
    finally:
        r.close()
    assert not hung, f"shutdown hung (> 3 s) after {hung} loop turns with an UNSUBSCRIBE in flight"
