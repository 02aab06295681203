"""Self-healing that cannot die silently: whatever Redis (or something in its place) answers,
lease renewal, the sweep, the presence writes and the subscriber go on, and counts are exact
again within a TTL of the real Redis coming back."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from functools import partial

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPResponse

from rrr.metrics import Metrics
from rrr.supervise import Supervisor
from support.clients import Client, connect, wait_until
from support.redis import LyingRedis
from support.servers import ServerFactory

pytestmark = pytest.mark.gen_test(timeout=120)


async def get(url: str) -> HTTPResponse:
    return await AsyncHTTPClient().fetch(url, raise_error=False, request_timeout=20)


@pytest.mark.parametrize("lie", ["ok", "random"])
async def test_garbage_from_redis_never_stops_renewal_and_counts_heal(
    lying_redis: Callable[[], Awaitable[LyingRedis]], server_factory: ServerFactory, clients: list[Client],
    caplog: pytest.LogCaptureFixture, lie: str,
) -> None:
    proxy = await lying_redis()
    ttl = 2.0
    liar = await server_factory(redis=proxy.url, ttl=ttl, redis_timeout=0.5, pubsub_keepalive=0.5)
    honest = await server_factory(ttl=30)  # on the real Redis throughout: it sees what others see
    mine = [await connect(liar.ws_url("/ws/count/garbage/")) for _ in range(2)]
    watcher = await connect(honest.ws_url("/ws/count/garbage/"))
    clients += mine + [watcher]
    await watcher.settles_on(3)

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="rrr"):
        proxy.set_mode(lie)
        # Long enough for the lease to lapse: the honest process sweeps the liar's presence.
        await wait_until(lambda: watcher.last_count() == (1, 1), timeout=30, what="liar's presence swept")
        assert (await get(liar.base_url + "/healthz")).code == 503
        await asyncio.sleep(1.0)  # keep lying a while: every loop has met the garbage by now
        proxy.set_mode("real")

        # Within a TTL (plus the sweep and broadcast), both processes agree on the truth again.
        await watcher.settles_on(3, timeout=ttl + 10)
        for c in mine:
            await c.settles_on(3, timeout=ttl + 10)
    errors = liar.metric("rrr_task_errors_total", {"task": "lease"}) + liar.metric(
        "rrr_task_errors_total", {"task": "flush"}
    ) + liar.metric("rrr_task_errors_total", {"task": "subscriber"})
    assert errors > 0, "the garbage was never met, so this proved nothing"
    await wait_until(lambda: get(liar.base_url + "/healthz"), what="healthz answers")
    await wait_until(
        lambda: _code(get(liar.base_url + "/healthz"), 200), timeout=ttl + 10, what="liar healthy again"
    )
    # Logged once per failing task, not once per attempt (hundreds of attempts were made).
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) <= 12, [r.getMessage() for r in warnings]

    # The relay works again too: a message published by the liar reaches every socket of both.
    await liar.service.history.publish("garbage", json.dumps({"n": 1}))
    for c in mine + [watcher]:
        await wait_until(partial(_got, c, {"n": 1}), what="relay")


def _got(c: Client, data: object) -> bool:
    return any(m["data"] == data for m in c.of_type("message"))


async def _code(resp: Awaitable[HTTPResponse], want: int) -> bool:
    return (await resp).code == want


async def test_a_supervised_task_that_raises_is_counted_logged_once_and_restarted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Whatever escapes a loop (not only the errors it expects) restarts it; the log says so once."""
    metrics = Metrics()
    supervisor = Supervisor(metrics, backoff_cap=0.01)
    runs: list[int] = []

    async def body() -> None:
        runs.append(len(runs))
        if len(runs) < 20:
            raise ValueError(f"unexpected reply shape #{len(runs)}")
        await asyncio.sleep(3600)

    with caplog.at_level(logging.WARNING, logger="rrr"):
        supervisor.spawn("lease", body)
        await wait_until(lambda: len(runs) == 20, what="20 runs")
        await supervisor.close()
    assert metrics.registry.get_sample_value("rrr_task_errors_total", {"task": "lease"}) == 19
    lines = [r.getMessage() for r in caplog.records if r.name == "rrr.supervise"]
    assert len(lines) == 1 and "lease failed: ValueError: unexpected reply shape #1" in lines[0]
