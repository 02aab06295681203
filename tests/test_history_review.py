"""Adversarial review of issue #12 (history and recovery): each test here failed on the code as reviewed.

Real parts only: a real redis-server, real Tornado servers on loopback, real WebSocket clients; the one
proxy below is a real TCP relay in front of the real Redis that only slows a reply down.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import redis
from tornado.httpclient import AsyncHTTPClient

from conftest import Client, ServerFactory, connect, wait_until
from rrr import client as rrr_client
from rrr.history import publish_args
from rrr.keys import history, meta
from rrr.scripts import HISTORY_PUBLISH
from test_history import api_history, api_publish, messages, offsets, subscribed

pytestmark = pytest.mark.gen_test(timeout=120)


def store_unheard(rclient: redis.Redis, room: str, n: int) -> None:
    """Store ``n`` messages in ``room``'s history as its script does, published where nobody listens
    (what a process whose pub/sub is down misses)."""
    for i in range(n):
        k, a = publish_args(room, json.dumps(f"unheard {i}"), 100, 300, own=False)
        a[0] = "rrr:nowhere"
        rclient.eval(HISTORY_PUBLISH, len(k), *k, *a)


# -- anything a client can make the server hold ------------------------------------------------


async def test_reading_history_of_rooms_nobody_uses_creates_nothing_in_redis(
    server_factory: ServerFactory, rclient: redis.Redis
) -> None:
    """``GET /api/rooms/<slug>/messages`` is a read, open to anyone for public rooms. Each one of a
    room that does not exist must not make Redis hold a meta hash (an epoch) for an hour: an
    anonymous client looping over slugs would fill Redis at --api-rate per address."""
    server = await server_factory(api_token="tok")
    for i in range(20):
        answer = await api_history(server, f"ghost{i}", "since=0")
        assert answer["offset"] == 0 and answer["messages"] == []
    made = sorted(rclient.scan_iter("rrr:meta:*"))
    ttls = {k: rclient.ttl(k) for k in made[:3]}
    assert made == [], f"{len(made)} meta keys created by 20 anonymous reads, e.g. {ttls}"


# -- replies believed blindly ---------------------------------------------------------------


async def test_a_hole_in_the_stream_is_not_reported_as_recovered_by_the_api(
    server_factory: ServerFactory, rclient: redis.Redis
) -> None:
    """`Read.covers` checks the first and the last entry only: a stream missing a middle offset (an
    XDEL, a partial restore, a replica that lost an entry) passes for a complete history."""
    server = await server_factory(api_token="tok")
    for i in range(1, 6):
        await api_publish(server, "holey", i)
    assert rclient.xdel(history("holey"), "3-0") == 1
    answer = await api_history(server, "holey", "since=1")
    got = [m["offset"] for m in answer["messages"]]
    assert not (answer["recovered"] is True and got != [2, 3, 4, 5]), (
        f"recovered: true with offsets {got}: offset 3 is silently missing")


async def test_a_hole_in_the_stream_is_never_delivered_as_a_complete_catch_up(
    server_factory: ServerFactory, rclient: redis.Redis, clients: list[Client]
) -> None:
    """The same hole met by a live socket's catch-up: 2, 4, 5, 6 go out and nobody is told that 3
    is lost (no ``subscribed`` with ``recovered: false``). A subscribe with ``since`` over the very
    same stream is judged correctly (``_start`` counts the entries), so the two paths disagree."""
    server = await server_factory(api_token="tok")
    c = await connect(server.ws_url("/ws/"))
    clients.append(c)
    await subscribed(c, "holey2")
    await api_publish(server, "holey2", 1)
    await wait_until(lambda: offsets(c, "holey2") == [1], what="the first message")
    store_unheard(rclient, "holey2", 4)  # offsets 2..5, never heard live here
    assert rclient.xdel(history("holey2"), "3-0") == 1
    n = len(c.frames)
    await api_publish(server, "holey2", 6)  # shows the gap: the catch-up reads 2..6
    await wait_until(lambda: offsets(c, "holey2")[-1:] == [6] or c.of_type("subscribed")[1:],
                     what="the catch-up")
    await asyncio.sleep(0.3)
    resets = [f for f in c.frames[n:] if f.get("type") == "subscribed" and f["recovered"] is False]
    got = offsets(c, "holey2")
    assert got == list(range(1, 7)) or resets, f"offsets {got} and no reset: offset 3 was lost silently"

    # Judged right when asked with since: the same stream is not 'recovered'.
    late = await connect(server.ws_url("/ws/"))
    clients.append(late)
    epoch = rclient.hget(meta("holey2"), "e")
    assert (await subscribed(late, "holey2", offset=1, epoch=epoch))["recovered"] is False


# -- races -------------------------------------------------------------------------------------


class SlowReplyProxy:
    """A real TCP relay to the real Redis. Armed with ``hold_reply_to(marker, seconds)``, the next
    command that contains ``marker`` runs in Redis at once, but its reply reaches the app only
    ``seconds`` later (a slow network, a busy event loop): the read is *taken* at once and
    *answered* late. Everything else passes straight through."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.marker: bytes | None = None
        self.delay = 0.0
        self.held = asyncio.Event()
        self._server: asyncio.base_events.Server | None = None
        self.port = 0
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> SlowReplyProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def hold_reply_to(self, marker: bytes, seconds: float) -> None:
        self.marker, self.delay = marker, seconds
        self.held.clear()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._writers |= {writer, up_writer}
        slow_next = {"on": False}

        async def up() -> None:
            try:
                while data := await reader.read(65536):
                    if self.marker is not None and self.marker in data:
                        self.marker = None
                        slow_next["on"] = True
                    up_writer.write(data)
                    await up_writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                up_writer.close()

        async def down() -> None:
            try:
                while data := await up_reader.read(65536):
                    if slow_next["on"]:
                        slow_next["on"] = False
                        self.held.set()
                        await asyncio.sleep(self.delay)
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                writer.close()

        try:
            await asyncio.gather(up(), down())
        finally:
            self._writers -= {writer, up_writer}


async def test_a_catch_up_read_answered_after_a_second_pubsub_cut_does_not_drop_what_was_held(
    server_factory: ServerFactory, redis_server: Any, redis_url: str, rclient: redis.Redis, clients: list[Client]
) -> None:
    """A catch-up read is in flight; meanwhile live messages are held, then pub/sub breaks again:
    `Delivery.resync` sets ``stale`` and clears ``held``. When the old read answers, `_catch_up`
    sets ``stale = False`` (overwriting the resync) with a top from *before* those messages, and
    the channels_ready of the reconnect found the task still running. The messages published
    during the read are neither held nor read again: the socket does not get them until some
    later publish happens to show the gap (here: never)."""
    port = int(redis_server.url.split(":")[2].split("/")[0])
    proxy = await SlowReplyProxy(port).start()
    try:
        server = await server_factory(redis=proxy.url, api_token="tok", redis_timeout=8.0, backoff_cap=0.2)
        c = await connect(server.ws_url("/ws/"))
        clients.append(c)
        await subscribed(c, "inflight")
        await rrr_client.apublish("inflight", "one", redis_url=redis_url)
        await wait_until(lambda: offsets(c, "inflight") == [1], what="the first message")

        # Cut 1: the reconnect makes the room stale; its catch-up read is answered 3 s late.
        proxy.hold_reply_to(history("inflight").encode(), 3.0)
        before = server.metric("rrr_redis_reconnects_total")
        assert rclient.client_kill_filter(_type="pubsub") >= 1
        await wait_until(lambda: server.metric("rrr_redis_reconnects_total") > before, what="reconnect 1")
        await wait_until(proxy.held.is_set, what="the catch-up read, taken, its answer held")

        # While it is held: two messages arrive live (held, as the room is stale)...
        await rrr_client.apublish("inflight", "two", redis_url=redis_url)
        await rrr_client.apublish("inflight", "three", redis_url=redis_url)
        await asyncio.sleep(0.3)
        # ...then cut 2, and the reconnect completes before the old read answers.
        before = server.metric("rrr_redis_reconnects_total")
        assert rclient.client_kill_filter(_type="pubsub") >= 1
        await wait_until(lambda: server.metric("rrr_redis_reconnects_total") > before, what="reconnect 2")
        await wait_until(lambda: server.service.subscriber.confirmed("inflight"), what="room confirmed again")

        # Nothing else is published: 2 and 3 are stored and must still arrive.
        await wait_until(lambda: offsets(c, "inflight") == [1, 2, 3], timeout=10,
                         what=f"offsets 2 and 3 (got {offsets(c, 'inflight')})")
    finally:
        await proxy.close()


async def test_a_since_of_the_rooms_current_epoch_is_not_refused_because_this_process_lags(
    server_factory: ServerFactory, rclient: redis.Redis, clients: list[Client]
) -> None:
    """The room's history is lost without a Redis restart (its keys evicted or deleted), so no
    pub/sub cut tells process A. Process B fixes the new epoch; a client of B, knowing offset 0 of
    that epoch, moves to A: A compares its ``since`` with the epoch *A* last saw and answers
    ``recovered: false`` with that dead epoch, though nothing was lost. A ``since`` ahead of A's top
    is re-read before it is judged (``checked``); a ``since`` of another epoch is not."""
    a = await server_factory(api_token="tok")
    b = await server_factory(api_token="tok")
    on_a = await connect(a.ws_url("/ws/"))
    clients.append(on_a)
    old = (await subscribed(on_a, "moved"))["epoch"]
    rclient.delete(meta("moved"), history("moved"))  # the history is lost (eviction, FLUSHDB, a failover to an empty replica)

    on_b = await connect(b.ws_url("/ws/"))
    clients.append(on_b)
    seen = await subscribed(on_b, "moved")
    assert seen["epoch"] != old and rclient.hget(meta("moved"), "e") == seen["epoch"]

    mover = await connect(a.ws_url("/ws/"))
    clients.append(mover)
    back = await subscribed(mover, "moved", offset=seen["offset"], epoch=seen["epoch"])
    assert back["epoch"] == seen["epoch"] and back["recovered"] is True, (
        f"told {back} though the room's epoch is {seen['epoch']} and nothing was published")


async def test_a_second_subscription_still_pending_is_not_sent_a_reset_before_its_own_subscribed(
    server_factory: ServerFactory, redis_server: Any, redis_url: str, rclient: redis.Redis, clients: list[Client]
) -> None:
    """A socket follows the room with sub ``a``; it subscribes ``b`` with a ``since`` that history
    still covers, while a catch-up of the room finds it was trimmed past ``a``. `_reset` tells every
    subscription of every socket not waiting (`Session.announced_subs` includes ``b``, still
    pending) ``recovered: false``; then ``b`` is served for real: a second ``subscribed``, this time
    ``recovered: true``, followed by a replay of offsets at or below the ``offset`` the first one
    told it to restart from. One subscription, two contradictory answers, and messages it was told
    are behind it."""
    port = int(redis_server.url.split(":")[2].split("/")[0])
    proxy = await SlowReplyProxy(port).start()
    try:
        server = await server_factory(redis=proxy.url, api_token="tok", history_size=5, redis_timeout=8.0)
        c = await connect(server.ws_url("/ws/"))
        clients.append(c)
        epoch = (await subscribed(c, "trim", sub="a"))["epoch"]
        await rrr_client.apublish("trim", "one", redis_url=redis_url)
        await wait_until(lambda: offsets(c, "trim") == [1], what="the first message")
        store_unheard(rclient, "trim", 10)  # 2..11, never heard here; the stream keeps 7..11
        proxy.hold_reply_to(history("trim").encode(), 1.5)
        n = len(c.frames)
        await rrr_client.apublish("trim", "twelve", redis_url=redis_url)  # the gap: a catch-up read
        await wait_until(proxy.held.is_set, what="the catch-up read, its answer held")
        # b knew offset 9 (from another process, say): 10..12 are all stored, so b can recover.
        await c.send(type="subscribe", room="trim", sub="b", since={"offset": 9, "epoch": epoch})
        await wait_until(lambda: [f for f in c.frames[n:] if f.get("type") == "subscribed" and f["sub"] == "b"]
                         and offsets(c, "trim")[-1:] == [12], timeout=15, what="b served")
        await asyncio.sleep(0.5)
        to_b = [f for f in c.frames[n:] if f.get("sub") == "b"]
        kinds = [(f["type"], f.get("recovered", f.get("offset"))) for f in to_b]
        assert kinds == [("subscribed", True), ("message", 10), ("message", 11), ("message", 12)], (
            f"frames to b: {kinds}")
    finally:
        await proxy.close()


async def test_offsets_that_went_back_in_the_same_epoch_are_not_recovered_from(
    server_factory: ServerFactory, rclient: redis.Redis, clients: list[Client]
) -> None:
    """A failover to an asynchronous replica that had not yet received the last writes (the issue's
    centrifugal/centrifugo#1189): the room's meta comes back with the same epoch and a lower top,
    the stream without the last entries. The process sees it (its catch-up after the cut finds the
    top below what it delivered, and resets its sockets) but leaves the epoch as it is, so the next
    publishes reuse offsets 9 and 10 for other messages under the same epoch. A client that saw the
    old 9 then asks ``since 9`` and is told ``recovered: true``: it never gets the new 9."""
    server = await server_factory(api_token="tok")
    watcher = await connect(server.ws_url("/ws/"))
    clients.append(watcher)
    epoch = (await subscribed(watcher, "failover"))["epoch"]
    leaver = await connect(server.ws_url("/ws/"))
    await subscribed(leaver, "failover")
    for i in range(1, 10):
        await api_publish(server, "failover", f"old {i}")
    await wait_until(lambda: offsets(leaver, "failover") == list(range(1, 10)), what="1..9 to the leaver")
    leaver.close()
    await api_publish(server, "failover", "old 10")
    await wait_until(lambda: offsets(watcher, "failover")[-1:] == [10], what="10 to the watcher")

    # The promoted replica lacks the last two writes: same epoch, top 8, entries 1..8.
    kept = rclient.xrange(history("failover"), "1-0", "8-0")
    ttl = rclient.pttl(history("failover"))
    with rclient.pipeline(transaction=True) as p:
        p.delete(history("failover"))
        for entry_id, fields in kept:
            p.xadd(history("failover"), fields, id=entry_id)
        p.pexpire(history("failover"), ttl)
        p.hset(meta("failover"), "o", 8)
        p.execute()
    n = len(watcher.frames)
    assert rclient.client_kill_filter(_type="pubsub") >= 1  # a failover cuts every connection
    reset = await watcher.next("subscribed", after=n, timeout=30)
    assert reset["recovered"] is False and reset["offset"] == 8

    for i in (9, 10, 11):
        assert (await api_publish(server, "failover", f"new {i}"))["offset"] == i
    back = await connect(server.ws_url("/ws/"))
    clients.append(back)
    answer = await subscribed(back, "failover", offset=9, epoch=epoch)  # it saw "old 9"
    await asyncio.sleep(0.3)
    got = [m["data"] for m in messages(back, "failover")]
    assert answer["recovered"] is False or "new 9" in got, (
        f"{answer} then {got}: 'new 9' is lost, and nothing says so")


@pytest.mark.parametrize("stray", ["foreign epoch", "offset ahead of the stored top"])
async def test_one_message_of_a_foreign_epoch_does_not_make_the_process_read_history_forever(
    server_factory: ServerFactory, rclient: redis.Redis, clients: list[Client], stray: str
) -> None:
    """A message on ``rrr:msg:{room}`` whose epoch is not the room's (one published just before the
    history was lost and heard after the process read the new epoch; or any stray publisher) makes
    the stream stale and is held; the catch-up finds the room's epoch unchanged (covered, nothing to
    deliver) and hands the held message to `on_message` again, which makes the stream stale again
    and holds it again: `_rounds` loops on HISTORY_READ, one per round trip, forever."""
    server = await server_factory(api_token="tok")
    c = await connect(server.ws_url("/ws/"))
    clients.append(c)
    epoch = (await subscribed(c, "stray"))["epoch"]
    await api_publish(server, "stray", 1)
    await wait_until(lambda: offsets(c, "stray") == [1], what="the first message")
    foreign = "f0f0f0f0" if epoch != "f0f0f0f0" else "0f0f0f0f"
    if stray == "foreign epoch":
        rclient.publish("rrr:msg:{stray}", f'7 {foreign} "stray"')
    else:  # same epoch, an offset no publish made: a gap no read can fill
        rclient.publish("rrr:msg:{stray}", f'7 {epoch} "stray"')
    await asyncio.sleep(0.3)

    def evalshas() -> int:
        return int(rclient.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))

    before = evalshas()
    await asyncio.sleep(1.0)
    calls = evalshas() - before
    assert calls < 20, f"{calls} script calls in one idle second: the room's history is read in a loop"
    await api_publish(server, "stray", 2)  # and the room still works
    await wait_until(lambda: offsets(c, "stray")[-1:] == [2], what="the next message")


async def test_subscribing_to_rooms_nobody_publishes_to_does_not_leave_an_hour_of_keys_per_room(
    server_factory: ServerFactory, rclient: redis.Redis, clients: list[Client]
) -> None:
    """One anonymous socket subscribes and unsubscribes fresh public slugs (50 frames a second is
    its allowance): each one leaves a meta hash (epoch, top 0, size, TTL) that Redis holds for
    ``meta_ttl`` (at least an hour) though the room never had a message and nobody is in it. At
    the default rate that is ~90,000 keys an hour per socket, from any number of sockets."""
    server = await server_factory(api_token="tok")
    c = await connect(server.ws_url("/ws/"))
    clients.append(c)
    for i in range(30):
        await subscribed(c, f"drive-by-{i}", sub=f"s{i}")
        await c.send(type="unsubscribe", room=f"drive-by-{i}", sub=f"s{i}")
    await wait_until(lambda: server.hub.room_count == 0, what="every room left")
    left = {k: rclient.ttl(k) for k in rclient.scan_iter("rrr:meta:{drive-by-*")}
    assert not [k for k, ttl in left.items() if ttl > 300], (
        f"{len(left)} rooms nobody is in and nobody published to keep a meta for "
        f"{max(left.values(), default=0)} s")
