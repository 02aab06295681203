"""History and recovery: offsets and epochs, ``since`` replay, and nothing lost across a reconnect,
a pub/sub cut or a Redis restart."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import redis
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from conftest import Client, LyingRedis, ServerFactory, Server, connect, wait_until
from rrr import client as rrr_client
from rrr.embedded import EmbeddedRedis
from rrr.history import publish_args
from rrr.keys import history, meta
from rrr.scripts import HISTORY_PUBLISH

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


async def test_history_off_relays_without_offsets(server_factory: ServerFactory, clients: list[Client]) -> None:
    server = await server_factory(api_token="tok", history_size=0)
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
