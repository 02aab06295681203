"""The backend helper (`rrr.client`) answers a failed publish with its own two errors and says what
happened: `BackplaneError` when nothing was published, `OutcomeUnknown` when the message was on its
way and no answer came. Nothing else comes out of it, whatever redis-py raises.

Found by the soak (bench/soak.py): during a Cluster master's failover ``apublish`` let redis-py's
``AttributeError: 'NoneType' object has no attribute 'writelines'`` out (redis-py 8.1: a connection
another task closed while this one was reconnecting it). A cluster none of whose nodes answers made
both publishes raise redis-py's ``RedisClusterUnreachableError``, which is no `RedisError`; and a
publish whose connection broke after Redis stored it was told "nothing was published".
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from rrr import client as rrr_client
from rrr.backplane import keys
from rrr.errors import BackplaneError, OutcomeUnknown
from support.clients import wait_until
from support.cluster import NODE_TIMEOUT_MS, RedisCluster
from support.redis import SlowReplyProxy


def redis_port(redis_server: Any) -> int:
    return int(redis_server.url.split(":")[2].split("/")[0])


def outcome(e: BaseException, raw: dict[str, str]) -> str:
    """``BackplaneError``/``OutcomeUnknown``, or the type of anything else (a failure; its first
    traceback goes in ``raw``)."""
    if isinstance(e, (BackplaneError, OutcomeUnknown)):
        return type(e).__name__
    kind = f"{type(e).__module__}.{type(e).__qualname__}"
    raw.setdefault(kind, "".join(traceback.format_exception(e)))
    return kind


@pytest.mark.gen_test(timeout=60)
async def test_a_publish_whose_connection_breaks_after_redis_stored_it_is_outcome_unknown(
    redis_server: Any, redis_url: str, rclient: redis.Redis,
) -> None:
    """The relay cuts every connection right after Redis ran the publish: the first run stored it,
    redis-py's retry is answered by the publish's id (stored once) and cut as well."""
    proxy = await SlowReplyProxy(redis_port(redis_server)).start()
    try:
        await rrr_client.apublish("warm-up", 0, redis_url=proxy.url)  # the script is loaded: the next run runs
        proxy.cut_reply_to(b"cut-async", every=True)
        with pytest.raises(OutcomeUnknown, match="may have been published") as got:
            await rrr_client.apublish("cut-async", {"n": 1}, redis_url=proxy.url)
        assert isinstance(got.value.__cause__, redis.ConnectionError), repr(got.value.__cause__)
        assert rclient.xlen(keys.history("cut-async")) == 1

        await asyncio.to_thread(rrr_client.publish, "warm-up", 0, redis_url=proxy.url)
        proxy.cut_reply_to(b"cut-sync", every=True)
        with pytest.raises(OutcomeUnknown, match="may have been published"):
            await asyncio.to_thread(rrr_client.publish, "cut-sync", {"n": 1}, redis_url=proxy.url)
        assert rclient.xlen(keys.history("cut-sync")) == 1

        proxy.cut_reply_to(b"nothing-matches")
        assert await rrr_client.apublish("cut-async", {"n": 2}, redis_url=proxy.url) == 2
    finally:
        await proxy.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_publish_cut_after_it_was_written_and_refused_on_reconnect_is_outcome_unknown(
    redis_server: Any, rclient: redis.Redis,
) -> None:
    """redis-py's retry finds nobody listening: the last error is a refused connect, yet the first
    attempt ran (redis-py raises only the last attempt's error; the clients note every one)."""
    for room, publish in (("cut-async", rrr_client.apublish),
                          ("cut-sync", lambda *a, **kw: asyncio.to_thread(rrr_client.publish, *a, **kw))):
        proxy = await SlowReplyProxy(redis_port(redis_server)).start()
        try:
            await publish("warm-up", 0, redis_url=proxy.url)  # the script is loaded: the next run runs
            proxy.cut_reply_to(keys.history(room).encode(), refuse_after=True)
            with pytest.raises(OutcomeUnknown, match="may have been published") as got:
                await publish(room, {"n": 1}, redis_url=proxy.url)
            assert "connecting to" in str(got.value), got.value  # the last attempt's error: refused
            assert rclient.xlen(keys.history(room)) == 1
        finally:
            await proxy.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_publish_whose_connect_is_refused_is_a_backplane_error(redis_server: Any) -> None:
    """Nothing can have been sent: "nothing was published" is the truth, for both helpers."""
    proxy = await SlowReplyProxy(redis_port(redis_server)).start()
    url = proxy.url
    await rrr_client.apublish("warm-up", 0, redis_url=url)
    await asyncio.to_thread(rrr_client.publish, "warm-up", 0, redis_url=url)
    await proxy.close()  # every connection cut, and nobody listens there any more
    for call in (lambda: rrr_client.apublish("refused", {"n": 1}, redis_url=url),
                 lambda: asyncio.to_thread(rrr_client.publish, "refused", {"n": 1}, redis_url=url)):
        with pytest.raises(BackplaneError, match="nothing was published") as got:
            await call()
        assert not isinstance(got.value, OutcomeUnknown), got.value


@pytest.fixture
def nobody_listening() -> Iterator[int]:
    """A loopback port bound by no listener for the test: a connection to it is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])


@pytest.mark.gen_test(timeout=60)
async def test_a_cluster_none_of_whose_nodes_answers_is_a_backplane_error(nobody_listening: int) -> None:
    url = f"redis+cluster://127.0.0.1:{nobody_listening}"
    with pytest.raises(BackplaneError, match="nothing was published") as got:
        await rrr_client.apublish("nobody-home", {"n": 1}, redis_url=url)
    assert not isinstance(got.value, OutcomeUnknown)
    assert isinstance(got.value.__cause__, redis.exceptions.RedisClusterException), repr(got.value.__cause__)
    for call in (lambda: rrr_client.publish("nobody-home", {"n": 1}, redis_url=url),
                 lambda: rrr_client.max_message_size(url)):
        with pytest.raises(BackplaneError) as got:
            await asyncio.to_thread(call)
        assert not isinstance(got.value, OutcomeUnknown)


@pytest.mark.gen_test(timeout=180)
async def test_publishes_through_a_master_failover_get_an_offset_or_an_rrr_error(
    redis_cluster: RedisCluster,
) -> None:
    """Many publishes at once, async and from threads, while a master is killed -9 and its replica
    takes over: each gets its offset, `BackplaneError` or `OutcomeUnknown`, and nothing else."""
    cluster = redis_cluster
    cluster.wait_healthy()
    cluster.flush()
    rooms = [f"failover-{i}" for i in range(12)]
    seen: Counter[str] = Counter()
    causes: Counter[str] = Counter()
    raw: dict[str, str] = {}
    published_at: list[float] = []
    stop = threading.Event()

    def note(e: Exception | None) -> None:
        if e is None:
            seen["published"] += 1
            published_at.append(time.monotonic())
        else:
            seen[outcome(e, raw)] += 1
            causes[type(e.__cause__).__name__] += 1

    async def publish_async(room: str) -> None:
        while not stop.is_set():
            try:
                await rrr_client.apublish(room, {"t": time.time()}, redis_url=cluster.url)
                note(None)
            except Exception as e:
                note(e)
            await asyncio.sleep(0.001)

    def publish_sync(room: str) -> None:
        while not stop.is_set():
            try:
                rrr_client.publish(room, {"t": time.time()}, redis_url=cluster.url)
                note(None)
            except Exception as e:
                note(e)
            time.sleep(0.001)

    victim = cluster.master_of(keys.history(rooms[0]))
    tasks = [asyncio.ensure_future(publish_async(room)) for room in rooms for _ in range(2)]
    threads = [asyncio.ensure_future(asyncio.to_thread(publish_sync, room)) for room in rooms[:4]]
    try:
        await wait_until(lambda: seen["published"] > 200, what="publishes before the kill")
        cluster.kill(victim)
        killed_at = time.monotonic()
        await wait_until(lambda: cluster.master_of(keys.history(rooms[0])) != victim,
                         timeout=NODE_TIMEOUT_MS / 1000 * 10, what="the replica taking over")
        failed_over_at = time.monotonic()
        await wait_until(lambda: len([t for t in published_at if t > failed_over_at + 1]) > 200,
                         timeout=30, what="publishes after the failover")
    finally:
        stop.set()
        await asyncio.gather(*tasks, *threads)
        cluster.restart(victim)
    print(f"killed {victim}, replaced after {failed_over_at - killed_at:.1f} s:", dict(seen), "caused by", dict(causes))
    assert not raw, f"raw exceptions came out: {dict(seen)}; the first of each:\n" + "\n".join(raw.values())
    assert sum(causes.values()), f"the failover failed no publish: {seen}"
    await asyncio.to_thread(cluster.wait_healthy, 60)
