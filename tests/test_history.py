"""History and recovery: offsets and epochs, ``since`` replay, and nothing lost across a reconnect,
a pub/sub cut or a Redis restart."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import redis
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from rrr import client as rrr_client
from rrr.backplane.embedded import EmbeddedRedis
from rrr.backplane.history import digest, publish_args, read_args
from rrr.backplane.keys import history, meta
from rrr.backplane.scripts import HISTORY_PUBLISH, HISTORY_READ
from support.clients import Client, connect, wait_until
from support.redis import LyingRedis, SlowReplyProxy
from support.servers import ServerFactory, Server

pytestmark = pytest.mark.gen_test(timeout=120)

KEY = {"Authorization": "Bearer tok"}


async def api_publish(server: Server, room: str, data: Any) -> dict[str, Any]:
    r = await AsyncHTTPClient().fetch(
        server.base_url + f"/api/rooms/{room}/messages", method="POST", body=json.dumps(data), headers=KEY,
    )
    assert r.code == 202
    answer: dict[str, Any] = json.loads(r.body)
    return answer


async def api_history(server: Server, room: str, query: str, **kw: Any) -> dict[str, Any]:
    r = await AsyncHTTPClient().fetch(server.base_url + f"/api/rooms/{room}/messages?{query}", **kw)
    answer: dict[str, Any] = json.loads(r.body)
    return answer


def messages(c: Client, room: str) -> list[dict[str, Any]]:
    return [f for f in c.of_type("message") if f["room"] == room]


def offsets(c: Client, room: str) -> list[int]:
    return [f["offset"] for f in messages(c, room)]


async def subscribed(c: Client, room: str, sub: str = "tab", **since: Any) -> dict[str, Any]:
    n = len(c.frames)
    msg: dict[str, Any] = dict(type="subscribe", room=room, sub=sub)
    if since:
        msg["since"] = since
    await c.send(**msg)
    frame = await c.next("subscribed", after=n)
    assert frame["room"] == room and frame["sub"] == sub
    return frame


async def test_a_resubscribe_with_since_gets_what_it_missed_once_in_order_then_live(
    server_factory: ServerFactory, redis_url: str, clients: list[Client]
) -> None:
    server = await server_factory(api_token="tok")
    first = await connect(server.ws_url("/ws/"))
    clients.append(first)
    hello = await subscribed(first, "recover")
    assert hello["offset"] == 0 and hello["recovered"] is False
    epoch = hello["epoch"]
    for i in range(1, 6):
        await api_publish(server, "recover", {"i": i})
    await wait_until(lambda: offsets(first, "recover") == [1, 2, 3, 4, 5], what="offsets 1-5")
    assert all(m["epoch"] == epoch for m in messages(first, "recover"))
    first.close()

    # 20 more while nobody listens: half through the API, half through the backend helper.
    for i in range(6, 26):
        if i % 2:
            await api_publish(server, "recover", {"i": i})
        else:
            assert await rrr_client.apublish("recover", {"i": i}, redis_url=redis_url) == i
    again = await connect(server.ws_url("/ws/"))
    clients.append(again)
    back = await subscribed(again, "recover", offset=5, epoch=epoch)
    assert back == {"type": "subscribed", "room": "recover", "sub": "tab", "offset": 25, "epoch": epoch,
                    "recovered": True}
    await wait_until(lambda: len(messages(again, "recover")) >= 20, what="the replay")
    replay = messages(again, "recover")
    assert [m["offset"] for m in replay] == list(range(6, 26))
    assert [m["data"] for m in replay] == [{"i": i} for i in range(6, 26)]
    # subscribed came first, then the replay (addressed to the subscription), then live ones.
    kinds = [f["type"] for f in again.frames if f["type"] in ("subscribed", "message")]
    assert kinds[0] == "subscribed"
    assert all(m["sub"] == "tab" for m in replay)
    await api_publish(server, "recover", "live")
    await wait_until(lambda: offsets(again, "recover")[-1:] == [26], what="the live message")
    assert offsets(again, "recover") == list(range(6, 27))


async def test_offsets_start_at_one_and_grow_by_one_across_the_api_and_the_helper(
    server_factory: ServerFactory, redis_url: str
) -> None:
    server = await server_factory(api_token="tok")
    got = []
    for i in range(6):
        if i % 2:
            got.append((await api_publish(server, "steps", i))["offset"])
        else:
            got.append(rrr_client.publish("steps", i, redis_url=redis_url))
    assert got == [1, 2, 3, 4, 5, 6]


async def test_the_epoch_is_fixed_by_the_first_subscribe_and_kept_by_publishes(
    server_factory: ServerFactory, redis_url: str, clients: list[Client]
) -> None:
    server = await server_factory(api_token="tok")
    c = await connect(server.ws_url("/ws/"))
    clients.append(c)
    epoch = (await subscribed(c, "fixed"))["epoch"]
    published = await api_publish(server, "fixed", 1)
    assert published == {"room": "fixed", "offset": 1, "epoch": epoch}
    other = await server_factory(api_token="tok")
    d = await connect(other.ws_url("/ws/"))
    clients.append(d)
    assert (await subscribed(d, "fixed"))["epoch"] == epoch
    assert (await subscribed(d, "fixed", sub="2", offset=0, epoch=epoch))["recovered"] is True


async def test_history_is_trimmed_exactly_and_expires(
    server_factory: ServerFactory, rclient: redis.Redis, clients: list[Client]
) -> None:
    server = await server_factory(api_token="tok", history_size=10, history_ttl=60)
    for i in range(30):
        await api_publish(server, "trim", i)
    assert rclient.xlen(history("trim")) == 10
    oldest = rclient.xrange(history("trim"), count=1)
    assert oldest is not None and oldest[0][0] == "21-0"
    assert 55_000 < rclient.pttl(history("trim")) <= 60_000
    assert rclient.ttl(meta("trim")) >= 3600  # offsets outlive the messages

    c = await connect(server.ws_url("/ws/"))
    clients.append(c)
    epoch = rclient.hget(meta("trim"), "e")
    # Offset 6 is gone: nothing is replayed, and the client is told to reload.
    lost = await subscribed(c, "trim", offset=5, epoch=epoch)
    assert lost["recovered"] is False and lost["offset"] == 30
    # Offset 21 is the oldest kept: from 20 everything is there.
    kept = await subscribed(c, "trim", sub="2", offset=20, epoch=epoch)
    assert kept["recovered"] is True
    await wait_until(lambda: offsets(c, "trim") == list(range(21, 31)), what="the 10 kept")
    assert messages(c, "trim")[0]["sub"] == "2"


async def test_a_wrong_epoch_or_a_future_offset_recovers_nothing(
    server_factory: ServerFactory, clients: list[Client]
) -> None:
    server = await server_factory(api_token="tok")
    epoch = (await api_publish(server, "epochs", "one"))["epoch"]
    c = await connect(server.ws_url("/ws/"))
    clients.append(c)
    assert (await subscribed(c, "epochs", offset=0, epoch="not" + epoch))["recovered"] is False
    assert (await subscribed(c, "epochs", sub="2", offset=7, epoch=epoch))["recovered"] is False
    assert (await subscribed(c, "epochs", sub="3", offset=0, epoch=epoch))["recovered"] is True
    await wait_until(lambda: offsets(c, "epochs") == [1], what="the one stored message, once")
    await asyncio.sleep(0.3)
    assert offsets(c, "epochs") == [1]


async def test_a_malformed_since_is_refused_with_its_room_and_sub(
    server_factory: ServerFactory, clients: list[Client]
) -> None:
    server = await server_factory()
    c = await connect(server.ws_url("/ws/"))
    clients.append(c)
    for since in ({"offset": -1, "epoch": "e"}, {"offset": 1}, {"offset": "1", "epoch": "e"},
                  {"offset": 1, "epoch": "bad epoch"}, 5):
        n = len(c.frames)
        await c.send(type="subscribe", room="bad", sub="s", since=since)
        err = await c.next("error", after=n)
        assert (err["code"], err["room"], err["sub"]) == ("bad_since", "bad", "s")
    assert server.hub.local_counts("bad") == (0, 0)
    with pytest.raises(HTTPClientError) as e:
        await AsyncHTTPClient().fetch(server.base_url + "/ws/count/bad/?since=x&epoch=e")
    assert e.value.code == 400


async def test_the_talks_socket_recovers_with_a_query_and_is_unchanged_without(
    server_factory: ServerFactory, clients: list[Client]
) -> None:
    server = await server_factory(api_token="tok")
    epoch = ""
    for i in range(3):
        epoch = (await api_publish(server, "talk", i))["epoch"]
    plain = await connect(server.ws_url("/ws/count/talk/"))
    clients.append(plain)
    await plain.settles_on(1, 1)
    await api_publish(server, "talk", "live")
    await wait_until(lambda: offsets(plain, "talk") == [4], what="the live message")
    assert plain.of_type("subscribed") == []

    since = await connect(server.ws_url(f"/ws/count/talk/?since=1&epoch={epoch}"))
    clients.append(since)
    await wait_until(lambda: offsets(since, "talk") == [2, 3, 4], what="the replay")
    [hello] = since.of_type("subscribed")
    assert hello == {"type": "subscribed", "room": "talk", "sub": "", "offset": 4, "epoch": epoch, "recovered": True}
    assert since.frames.index(hello) < since.frames.index(messages(since, "talk")[0])


async def test_the_api_reads_history(server_factory: ServerFactory) -> None:
    server = await server_factory(api_token="tok")
    epoch = ""
    for i in range(1, 5):
        epoch = (await api_publish(server, "read", {"n": i}))["epoch"]
    got = await api_history(server, "read", "since=2")
    assert got == {"room": "read", "epoch": epoch, "offset": 4, "recovered": True,
                   "messages": [{"offset": 3, "data": {"n": 3}}, {"offset": 4, "data": {"n": 4}}]}
    assert (await api_history(server, "read", "since=4"))["messages"] == []
    wrong = await api_history(server, "read", f"since=1&epoch=x{epoch}")
    assert wrong["recovered"] is False and wrong["messages"] == []
    with pytest.raises(HTTPClientError) as e:
        await api_history(server, "private-read", "since=0")
    assert e.value.code == 403
    ok = await api_history(server, "private-read", "since=0", headers=KEY)
    assert ok["recovered"] is True and ok["offset"] == 0


@pytest.mark.parametrize("off", [{"history_size": 0}, {"history_ttl": 0}])
async def test_history_off_relays_without_offsets(
    server_factory: ServerFactory, rclient: redis.Redis, redis_url: str, clients: list[Client], off: dict[str, int]
) -> None:
    server = await server_factory(api_token="tok", **off)
    c = await connect(server.ws_url("/ws/"))
    clients.append(c)
    hello = await subscribed(c, "plain")
    assert hello == {"type": "subscribed", "room": "plain", "sub": "tab", "recovered": False}
    n = len(c.frames)
    r = await AsyncHTTPClient().fetch(server.base_url + "/api/rooms/plain/messages", method="POST", body="1",
                                      headers=KEY)
    assert json.loads(r.body)["room"] == "plain" and "offset" not in json.loads(r.body)
    msg = await c.next("message", after=n)
    assert msg == {"type": "message", "room": "plain", "data": 1}
    with pytest.raises(HTTPClientError) as e:
        await api_history(server, "plain", "since=0")
    assert e.value.code == 404
    # A backend's helper follows the servers (they announce their settings in Redis).
    n = len(c.frames)
    assert await rrr_client.apublish("plain", 2, redis_url=redis_url) == 0
    assert await c.next("message", after=n) == {"type": "message", "room": "plain", "data": 2}
    assert rclient.exists(history("plain"), meta("plain")) == 0


async def test_a_raw_backend_publish_is_still_relayed_live_without_offset(
    server_factory: ServerFactory, rclient: redis.Redis, clients: list[Client]
) -> None:
    server = await server_factory()
    c = await connect(server.ws_url("/ws/"))
    clients.append(c)
    await subscribed(c, "raw")
    n = len(c.frames)
    rclient.publish("rrr:room:raw", '{"from": "backend"}')
    assert await c.next("message", after=n) == {"type": "message", "room": "raw", "data": {"from": "backend"}}


async def test_a_message_published_right_after_subscribed_arrives(
    server_factory: ServerFactory, lying_redis: Any, clients: list[Client]
) -> None:
    """``subscribed`` waits for the room's channels: with every SUBSCRIBE held back 1 s by a proxy, a
    message published the moment the client sees ``subscribed`` still reaches it."""
    proxy: LyingRedis = await lying_redis()
    proxy.subscribe_delay = 1.0
    server = await server_factory(redis=proxy.url, api_token="tok")
    for room in ("slow-a", "slow-b", "slow-c"):
        c = await connect(server.ws_url("/ws/"))
        clients.append(c)
        await subscribed(c, room)
        n = len(c.frames)
        await api_publish(server, room, room)
        assert (await c.next("message", after=n))["data"] == room


async def test_pubsub_cut_again_and_again_loses_and_duplicates_nothing(
    server_factory: ServerFactory, rclient: redis.Redis, redis_url: str, clients: list[Client]
) -> None:
    server = await server_factory(api_token="tok", pubsub_keepalive=0.5)
    c = await connect(server.ws_url("/ws/"))
    clients.append(c)
    await subscribed(c, "cuts")
    sent = 0
    done = asyncio.Event()

    async def publish_all() -> None:
        nonlocal sent
        while not done.is_set():
            sent = await rrr_client.apublish("cuts", {"n": sent + 1}, redis_url=redis_url)
            await asyncio.sleep(0.01)

    task = asyncio.ensure_future(publish_all())
    try:
        for cut in range(8):
            before = server.metric("rrr_redis_reconnects_total")
            killed = rclient.client_kill_filter(_type="pubsub")
            assert killed >= 1
            await wait_until(lambda: server.metric("rrr_redis_reconnects_total") > before, timeout=30,
                             what=f"reconnect after cut {cut}")
            await asyncio.sleep(0.2)
    finally:
        done.set()
        await task
    await wait_until(lambda: len(messages(c, "cuts")) >= sent, timeout=30, what=f"all {sent} messages")
    await asyncio.sleep(0.3)
    assert offsets(c, "cuts") == list(range(1, sent + 1))
    assert server.metric("rrr_history_replayed_total") > 0  # the cuts did cost messages, and they came back


async def test_what_was_published_while_pubsub_was_down_arrives_even_if_nothing_follows(
    server_factory: ServerFactory, lying_redis: Any, rclient: redis.Redis, redis_url: str, clients: list[Client]
) -> None:
    """No later message reveals the gap here: the process reads it back because its connection came back."""
    proxy: LyingRedis = await lying_redis()
    server = await server_factory(redis=proxy.url, api_token="tok")
    c = await connect(server.ws_url("/ws/"))
    clients.append(c)
    await subscribed(c, "quiet")
    await rrr_client.apublish("quiet", "before", redis_url=redis_url)
    await wait_until(lambda: offsets(c, "quiet") == [1], what="the first message")
    proxy.subscribe_delay = 1.5  # the resubscribe takes a while: a window to publish into
    before = server.metric("rrr_redis_reconnects_total")
    assert rclient.client_kill_filter(_type="pubsub") >= 1
    await wait_until(lambda: server.metric("rrr_redis_reconnects_total") > before, timeout=30, what="a reconnect")
    for i in range(3):
        await rrr_client.apublish("quiet", f"missed {i}", redis_url=redis_url)
    await wait_until(lambda: offsets(c, "quiet") == [1, 2, 3, 4], timeout=30, what="the three missed messages")


async def test_a_live_message_after_a_gap_waits_for_the_gap_to_be_read(
    server_factory: ServerFactory, rclient: redis.Redis, clients: list[Client]
) -> None:
    """Messages stored but never heard live (here: published where nobody listens) are read back,
    in order, as soon as a later one shows the gap."""
    server = await server_factory(api_token="tok")
    c = await connect(server.ws_url("/ws/"))
    clients.append(c)
    await subscribed(c, "gap")
    await api_publish(server, "gap", 1)
    await wait_until(lambda: offsets(c, "gap") == [1], what="the first message")
    for n in (2, 3, 4):
        k, a = publish_args("gap", str(n), 100, 300, own=False)
        a[0] = "rrr:nowhere"
        rclient.eval(HISTORY_PUBLISH, len(k), *k, *a)
    await api_publish(server, "gap", 5)
    await wait_until(lambda: offsets(c, "gap") == [1, 2, 3, 4, 5], what="the gap filled, in order")
    assert [m["data"] for m in messages(c, "gap")] == [1, 2, 3, 4, 5]
    assert server.metric("rrr_history_gaps_total") == 1


async def test_redis_restarted_empty_changes_the_epoch_and_says_so(
    server_factory: ServerFactory, own_redis: EmbeddedRedis, clients: list[Client]
) -> None:
    server = await server_factory(redis=own_redis.url, api_token="tok")
    c = await connect(server.ws_url("/ws/"))
    clients.append(c)
    old = (await subscribed(c, "amnesia"))["epoch"]
    await api_publish(server, "amnesia", "before")
    await wait_until(lambda: offsets(c, "amnesia") == [1], what="the first message")

    own_redis.kill()
    own_redis.start()  # empty
    n = len(c.frames)
    reset = await c.next("subscribed", after=n, timeout=30)
    assert reset["recovered"] is False and reset["epoch"] != old and reset["sub"] == "tab"
    after = await api_publish(server, "amnesia", "after")
    assert after["epoch"] == reset["epoch"] and after["offset"] == 1
    await wait_until(lambda: [m["data"] for m in messages(c, "amnesia")] == ["before", "after"], timeout=30,
                     what="the message of the new epoch")

    late = await connect(server.ws_url("/ws/"))
    clients.append(late)
    again = await subscribed(late, "amnesia", offset=1, epoch=old)
    assert again["recovered"] is False and again["epoch"] == reset["epoch"]


# -- found by review: each of these failed before its fix ---------------------------------------


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


async def test_a_burst_of_new_rooms_leaves_presence_writes_a_connection(
    server_factory: ServerFactory, redis_server: Any, clients: list[Client]
) -> None:
    """A restart brings every socket back into its rooms at once, and each new room first reads its
    position in history. Unbounded, those reads took every pooled connection (here 4, each reply
    0.3 s late), and callers waited past ``--redis-timeout`` (1 s here) for one: half the reads
    failed and were retried, and a presence write could fail the same way (it did in the
    100,000-socket benchmark)."""
    port = int(redis_server.url.split(":")[2].split("/")[0])
    proxy = await SlowReplyProxy(port).start()
    try:
        server = await server_factory(redis=proxy.url, redis_pool_size=4)
        proxy.hold_reply_to(b"rrr:history:", 0.3, every=True)
        socks = await asyncio.gather(*(connect(server.ws_url(f"/ws/count/burst-{i}/")) for i in range(24)))
        clients += socks
        await asyncio.gather(*(c.settles_on(1, timeout=30) for c in socks))
        assert server.metric("rrr_task_errors_total", {"task": "history"}) == 0, "a read found no connection"
        assert server.metric("rrr_task_errors_total", {"task": "flush"}) == 0, "a presence write found no connection"
    finally:
        await proxy.close()


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
    # The history is lost (eviction, FLUSHDB, a failover to an empty replica).
    rclient.delete(meta("moved"), history("moved"))

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
    lacking_writes_after(rclient, "failover", 8)
    n = len(watcher.frames)
    assert rclient.client_kill_filter(_type="pubsub") >= 1  # a failover cuts every connection
    reset = await watcher.next("subscribed", after=n, timeout=30)
    # Offsets 9 and 10 named messages that are gone: the room starts a new epoch rather than give
    # those offsets to other messages under the old one. It keeps what it stored (1..8) and its top.
    assert reset["recovered"] is False and reset["epoch"] != epoch and reset["offset"] == 8

    for i in (1, 2, 3):
        published = await api_publish(server, "failover", f"new {i}")
        assert (published["offset"], published["epoch"]) == (8 + i, reset["epoch"])
    kept_now = await api_history(server, "failover", f"since=0&epoch={reset['epoch']}")
    assert kept_now["recovered"] is True and [m["data"] for m in kept_now["messages"]] == [
        *(f"old {i}" for i in range(1, 9)), "new 1", "new 2", "new 3"], kept_now
    back = await connect(server.ws_url("/ws/"))
    clients.append(back)
    answer = await subscribed(back, "failover", offset=9, epoch=epoch)  # it saw "old 9"
    await asyncio.sleep(0.3)
    got = [m["data"] for m in messages(back, "failover")]
    assert answer["recovered"] is False and got == [], (
        f"{answer} then {got}: a position in a lost run of offsets must not pass for recovered")


def lacking_writes_after(rclient: redis.Redis, room: str, top: int) -> None:
    """Make the room's history what a promoted replica that never got the writes after ``top`` holds:
    the same epoch, its entries up to ``top``, its top ``top`` (a stream rebuilt: one that had a later
    entry takes no new one below it)."""
    kept = rclient.xrange(history(room), "1-0", f"{top}-0")
    assert kept is not None
    ttl = rclient.pttl(history(room))
    with rclient.pipeline(transaction=True) as p:
        p.delete(history(room))
        for entry_id, fields in kept:
            assert entry_id is not None and fields is not None
            p.xadd(history(room), {str(k): str(v) for k, v in fields.items()}, id=entry_id)
        p.pexpire(history(room), ttl)
        p.hset(meta(room), "o", top)
        p.execute()


def store_other_at(rclient: redis.Redis, room: str, offset: int, data: str) -> None:
    """Make the entry stored at ``offset`` another message than the one delivered there, keeping the
    rest: what a new master holds after a stopped old master ran a queued publish as master at
    SIGCONT, sent it live under that offset, then was demoted and flushed it (#27)."""
    kept = rclient.xrange(history(room))
    assert kept is not None
    ttl = rclient.pttl(history(room))
    with rclient.pipeline(transaction=True) as p:
        p.delete(history(room))
        for entry_id, fields in kept:
            assert entry_id is not None and fields is not None
            value = data if entry_id == f"{offset}-0" else fields["d"]
            p.xadd(history(room), {"d": value}, id=entry_id)
        p.pexpire(history(room), ttl)
        p.execute()
    stored = rclient.xrange(history(room), f"{offset}-0", f"{offset}-0")
    assert stored is not None and stored[0][1] == {"d": data}


async def test_a_read_that_finds_another_message_at_the_offset_it_delivered_up_to_starts_a_new_epoch(
    rclient: redis.Redis,
) -> None:
    """HISTORY_READ itself, on a real Redis: the caller's ``seen`` carries the digest of what it
    delivered at its top. The same message there: nothing changes. Another one: a new epoch, and
    only that: the top, the stream and the remembered publish ids stay, so what was stored reads
    back under the new epoch, offsets go on, and a retried publish is answered with the offset that
    still names its stored entry (under the new epoch's name) instead of being stored twice."""
    room = "reused"
    sent = [json.dumps(f"x {i}") for i in (1, 2, 3)]
    args = [publish_args(room, data, 100, 300, own=True) for data in sent]
    replies = [rclient.eval(HISTORY_PUBLISH, len(k), *k, *a) for k, a in args]
    assert [r[0] for r in replies] == [1, 2, 3]
    epoch = replies[0][1]

    def read(after: int, seen: tuple[str, int, str]) -> list[Any]:
        k, a = read_args(room, after, 100, 100, 300, seen=seen)
        reply: list[Any] = rclient.eval(HISTORY_READ, len(k), *k, *a)
        return reply

    assert read(3, (epoch, 3, digest(sent[2])))[:2] == [epoch, 3]
    assert read(3, (epoch, 3, ""))[:2] == [epoch, 3]  # unknown (dropped as oversized): nothing to check
    ids = rclient.hget(meta(room), "p")
    assert ids is not None

    store_other_at(rclient, room, 3, json.dumps("y 3"))
    assert read(3, (epoch, 3, digest(json.dumps("y 3"))))[:2] == [epoch, 3]  # a process that got y 3
    assert read(2, (epoch, 2, digest(sent[1])))[:2] == [epoch, 3]  # below the reuse: still the same

    got = read(3, (epoch, 3, digest(sent[2])))
    assert got[0] != epoch, f"{got}: offset 3 was reused, yet the epoch stands"
    assert got[1:] == [3, []], f"{got}: the new epoch did not keep the room's top"
    assert rclient.hget(meta(room), "e") == got[0]
    assert rclient.hget(meta(room), "p") == ids, "the reset dropped the remembered publish ids"
    entries = rclient.xrange(history(room))
    assert entries is not None
    stored = [(i, f and f["d"]) for i, f in entries]
    assert stored == [("1-0", sent[0]), ("2-0", sent[1]), ("3-0", json.dumps("y 3"))], stored
    k, a = args[1]
    retried = rclient.eval(HISTORY_PUBLISH, len(k), *k, *a)  # its first reply was lost: sent again
    assert retried[:2] == [2, got[0]], f"{retried}: a retry after the reset was not answered with its offset"
    assert rclient.xlen(history(room)) == 3, "a retried publish was stored twice"
    k, a = publish_args(room, json.dumps("z 4"), 100, 300, own=True)
    after = rclient.eval(HISTORY_PUBLISH, len(k), *k, *a)
    assert after[:2] == [4, got[0]], f"{after}: offsets did not go on from the top under the new epoch"
    assert read(0, (got[0], 4, digest(json.dumps("z 4")))) == [got[0], 4, [
        ["1-0", ["d", sent[0]]], ["2-0", ["d", sent[1]]], ["3-0", ["d", json.dumps("y 3")]],
        ["4-0", ["d", json.dumps("z 4")]]]]


async def test_a_catch_up_that_finds_another_message_where_it_delivered_resets_instead_of_skipping(
    server_factory: ServerFactory, rclient: redis.Redis, clients: list[Client]
) -> None:
    """The soak's silent loss (#27): a process delivered X at offset 3, heard live from an old master
    that then lost it; the new master holds Y at 3. After the pub/sub cut the process catches up from
    3 and, without the digest, would skip Y for good with no word to anyone. Its sockets are told
    ``recovered: false`` under a new epoch instead (at the room's top, which stays), and get what follows."""
    server = await server_factory(api_token="tok")
    c = await connect(server.ws_url("/ws/"))
    clients.append(c)
    epoch = (await subscribed(c, "reused"))["epoch"]
    for i in (1, 2, 3):
        await api_publish(server, "reused", f"x {i}")
    await wait_until(lambda: offsets(c, "reused") == [1, 2, 3], what="x 1..3")

    store_other_at(rclient, "reused", 3, json.dumps("y 3"))
    n = len(c.frames)
    assert rclient.client_kill_filter(_type="pubsub") >= 1  # a failover cuts every connection
    reset = await c.next("subscribed", after=n, timeout=30)
    assert reset["recovered"] is False and reset["epoch"] != epoch and reset["offset"] == 3, reset

    published = await api_publish(server, "reused", "after")
    assert (published["offset"], published["epoch"]) == (4, reset["epoch"])
    await wait_until(lambda: [m["data"] for m in messages(c, "reused")][3:] == ["after"], timeout=30,
                     what="the new epoch's first message")
    assert [(m["offset"], m["epoch"]) for m in messages(c, "reused")] == [
        (1, epoch), (2, epoch), (3, epoch), (4, reset["epoch"])]


async def test_messages_acknowledged_before_a_new_epoch_stay_readable_under_it(
    server_factory: ServerFactory, rclient: redis.Redis, clients: list[Client]
) -> None:
    """The soak's deleted publishes (#27): a new master stores and acknowledges a publish (202, offset
    3) at the offset a stopped old master had already sent another message under, live, to a
    process. That process's catch-up starts a new epoch; the acknowledged message (and every one
    before it) must stay readable, now under the new epoch, by GET messages and by ``since``. The
    reset used to delete the room's stream: nobody could read them any more."""
    server = await server_factory(api_token="tok")
    c = await connect(server.ws_url("/ws/"))
    clients.append(c)
    epoch = (await subscribed(c, "acked"))["epoch"]
    acked = [await api_publish(server, "acked", f"x {i}") for i in (1, 2)]
    await api_publish(server, "acked", "X")  # the old master's, heard live, then lost with it
    await wait_until(lambda: offsets(c, "acked") == [1, 2, 3], what="x 1, x 2, X")

    # The new master never got X: its top is 2 (a stream rebuilt: one that had 3-0 takes no new
    # 3-0). A publish there is stored at 3 and acknowledged; the process heard X at 3 already, so
    # it takes the live "3 Y" for a duplicate.
    lacking_writes_after(rclient, "acked", 2)
    acked.append(await api_publish(server, "acked", "Y"))
    assert [(a["offset"], a["epoch"]) for a in acked] == [(1, epoch), (2, epoch), (3, epoch)]
    n = len(c.frames)
    assert rclient.client_kill_filter(_type="pubsub") >= 1  # a failover cuts every connection
    reset = await c.next("subscribed", after=n, timeout=30)
    assert reset["recovered"] is False and reset["epoch"] != epoch, reset

    read = await api_history(server, "acked", f"since=0&epoch={reset['epoch']}")
    assert read["epoch"] == reset["epoch"] and read["recovered"] is True and [
        (m["offset"], m["data"]) for m in read["messages"]] == [(1, "x 1"), (2, "x 2"), (3, "Y")], (
        f"{read}: acknowledged publishes were deleted by the new epoch")
    assert reset["offset"] == read["offset"] == 3
    late = await connect(server.ws_url("/ws/"))
    clients.append(late)
    answer = await subscribed(late, "acked", offset=0, epoch=reset["epoch"])
    await wait_until(lambda: [m["data"] for m in messages(late, "acked")] == ["x 1", "x 2", "Y"], timeout=30,
                     what="the kept messages replayed under the new epoch")
    assert answer["recovered"] is True and offsets(late, "acked") == [1, 2, 3]
    nxt = await api_publish(server, "acked", "next")
    assert (nxt["offset"], nxt["epoch"]) == (4, reset["epoch"])
    await wait_until(lambda: offsets(c, "acked")[-1:] == [4] and offsets(late, "acked")[-1:] == [4], timeout=30,
                     what="the next message to both sockets")


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


# -- a message bigger than the servers deliver ---------------------------------------------------


async def test_the_helper_refuses_data_over_the_servers_limit_and_sends_nothing(
    server_factory: ServerFactory, redis_url: str, rclient: redis.Redis, clients: list[Client]
) -> None:
    server = await server_factory(api_token="tok", max_message_size=4096)
    c = await connect(server.ws_url("/ws/"))
    clients.append(c)
    await subscribed(c, "cap")
    for call in (
        lambda: rrr_client.publish("cap", "x" * 4096, redis_url=redis_url),
        lambda: rrr_client.publish("cap", {"t": "é" * 2100}, redis_url=redis_url, history_size=5, history_ttl=60),
    ):
        with pytest.raises(ValueError, match="max-message-size"):
            call()
    with pytest.raises(ValueError, match="max-message-size"):
        await rrr_client.apublish("cap", "x" * 5000, redis_url=redis_url)
    assert rclient.exists(history("cap")) == 0 and rclient.hget(meta("cap"), "o") == "0"
    assert rclient.hget("rrr:config:history", "max") == "4096"  # announced beside the history settings
    # Just under it goes through (4094 characters and two quotes).
    assert rrr_client.publish("cap", "y" * 4094, redis_url=redis_url) == 1
    await wait_until(lambda: offsets(c, "cap") == [1], what="the message that fits")
    # No server announced a limit: the servers' default, 64 KiB.
    rclient.delete("rrr:config:history")
    with pytest.raises(ValueError, match="65536"):
        rrr_client.publish("cap", "z" * 65535, redis_url=redis_url)
    assert rrr_client.publish("cap", "z" * 65534, redis_url=redis_url) == 2


def store_as_an_older_helper(rclient: redis.Redis, room: str, data_json: str) -> None:
    """What a helper that knew no limit did: the history script, straight to Redis, any size."""
    k, a = publish_args(room, data_json, 100, 300, own=False)
    rclient.eval(HISTORY_PUBLISH, len(k), *k, *a)


async def test_a_message_over_the_limit_from_redis_cuts_off_no_reader_live_or_resubscribing(
    server_factory: ServerFactory, rclient: redis.Redis, clients: list[Client]
) -> None:
    """2 MB, twice the send buffer: delivered, it cut every socket of the room off, and then each one
    that resubscribed with ``since`` (the replay held it) until history dropped it."""
    server = await server_factory(api_token="tok")
    live = await connect(server.ws_url("/ws/"))
    talk = await connect(server.ws_url("/ws/count/big/"))
    clients += [live, talk]
    epoch = (await subscribed(live, "big"))["epoch"]
    await talk.settles_on(2)
    big = json.dumps("x" * 2_000_000)
    await api_publish(server, "big", "before")
    rclient.publish("rrr:room:big", big)  # a raw PUBLISH
    store_as_an_older_helper(rclient, "big", big)  # offset 2, stored
    await api_publish(server, "big", "after")
    await wait_until(lambda: [m.get("offset") for m in messages(live, "big")] == [1, 3],
                     what="the messages around the big one")
    assert [m["data"] for m in messages(live, "big")] == ["before", "after"]
    await wait_until(lambda: [m["data"] for m in talk.of_type("message")] == ["before", "after"],
                     what="the talk's socket too")
    assert not live.closed.is_set() and not talk.closed.is_set()
    assert server.metric("rrr_oversized_messages_total") == 2
    assert server.metric("rrr_slow_client_disconnects_total") == 0

    again = await connect(server.ws_url("/ws/"))
    clients.append(again)
    back = await subscribed(again, "big", offset=0, epoch=epoch)
    assert back["recovered"] is True and back["offset"] == 3
    await wait_until(lambda: offsets(again, "big") == [1, 3], what="the replay around the big one")
    await api_publish(server, "big", "live")
    await wait_until(lambda: offsets(again, "big") == [1, 3, 4], what="live after the replay")
    assert offsets(live, "big") == [1, 3, 4] and not again.closed.is_set()
    # The API's history read leaves it out too, and still says recovered.
    got = await api_history(server, "big", f"since=0&epoch={epoch}")
    assert got["recovered"] is True and [m["offset"] for m in got["messages"]] == [1, 3, 4]


async def test_a_process_catching_up_after_a_pubsub_cut_skips_a_message_over_the_limit(
    server_factory: ServerFactory, rclient: redis.Redis, clients: list[Client]
) -> None:
    """The catch-up read after a gap delivers what it finds: not the big one, and no endless re-reads
    of a "gap" where it was."""
    server = await server_factory(api_token="tok")
    c = await connect(server.ws_url("/ws/"))
    clients.append(c)
    await subscribed(c, "gap")
    await api_publish(server, "gap", 1)
    await wait_until(lambda: offsets(c, "gap") == [1], what="the first message")
    store_unheard(rclient, "gap", 1)  # offset 2, unheard: the next live message shows the gap
    k, a = publish_args("gap", json.dumps("x" * 2_000_000), 100, 300, own=False)
    a[0] = "rrr:nowhere"
    rclient.eval(HISTORY_PUBLISH, len(k), *k, *a)  # offset 3, unheard and over the limit
    await api_publish(server, "gap", 4)
    await wait_until(lambda: offsets(c, "gap") == [1, 2, 4], what="the gap read back, big one skipped")
    await api_publish(server, "gap", 5)
    await wait_until(lambda: offsets(c, "gap") == [1, 2, 4, 5], what="live again")
    assert server.metric("rrr_history_gaps_total") == 1 and not c.closed.is_set()
