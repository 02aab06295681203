"""Delivery of a room's messages, fast (memory backplane, in-memory sockets): in offset order, each
once, nothing lost. A subscription is told ``subscribed`` before any message of the room; ``since``
replays what was missed (``recovered``), or says it cannot (trimmed, another epoch); a live gap is
read from history while what follows waits; what was published while pub/sub was down is read back;
a Redis restarted empty tells every subscription its stream began again; a message over the limit
is skipped and is no gap. End to end on a real Redis: test_history.py, test_paced_delivery.py."""

from __future__ import annotations

import json
from typing import Any

import pytest

from rrr.backplane import keys
from rrr.protocol import Since
from support.memory_backplane import MemoryRedis
from support.memory_core import NodeFactory, eventually, quiet
from support.memory_socket import RecordingSocket

pytestmark = pytest.mark.gen_test(timeout=30)


def publish(redis: MemoryRedis, room: str, *numbers: int) -> str:
    """A backend publishes ``{"i": n}`` for each of ``numbers`` (stored and relayed); the room's epoch."""
    epoch = ""
    for n in numbers:
        epoch = redis.backend_publish(room, json.dumps({"i": n})).epoch
    return epoch


def numbers(sock: RecordingSocket, room: str = "r") -> list[int]:
    return [m["i"] for m in sock.messages(room)]


def about(sock: RecordingSocket, room: str = "r") -> list[dict[str, Any]]:
    return [f for f in sock.frames if f.get("room") == room and f["type"] in ("subscribed", "message")]


async def subscribed(
    sock: RecordingSocket, room: str = "r", sub: str = "t", since: Since | None = None,
) -> dict[str, Any]:
    msg: dict[str, Any] = {"type": "subscribe", "room": room, "sub": sub}
    if since is not None:
        msg["since"] = {"offset": since.offset, "epoch": since.epoch}
    await sock.send(**msg)
    return await eventually(lambda: next((f for f in sock.of_type("subscribed", room) if f["sub"] == sub), None),
                            what=f"subscribed to {room}")


async def test_subscribed_comes_first_then_each_live_message_once_in_order(
    nodes: NodeFactory, memory_redis: MemoryRedis,
) -> None:
    a, b = await nodes(), await nodes()
    s = a.socket()
    first = await subscribed(s)
    assert (first["offset"], first["recovered"]) == (0, False)
    publish(memory_redis, "r", 1, 2)
    await b.history.publish("r", '{"i":3}')
    await eventually(lambda: numbers(s) == [1, 2, 3], what="1, 2, 3")
    assert [f["type"] for f in about(s)] == ["subscribed", "message", "message", "message"]
    assert s.offsets("r") == [1, 2, 3]
    assert {f["epoch"] for f in s.of_type("message")} == {first["epoch"]}


async def test_a_socket_waiting_for_its_replay_gets_what_arrived_meanwhile_in_it_after_subscribed(
    nodes: NodeFactory, memory_redis: MemoryRedis,
) -> None:
    a = await nodes()
    live = a.socket()
    first = await subscribed(live)
    publish(memory_redis, "r", 1, 2)
    await eventually(lambda: numbers(live) == [1, 2], what="live 1, 2")

    reads = memory_redis.hold("history_read")
    late = a.socket()
    await late.send(type="subscribe", room="r", sub="t", since={"offset": 1, "epoch": first["epoch"]})
    await eventually(lambda: reads.waiting == 1, what="the replay's read under way")
    publish(memory_redis, "r", 3)
    await eventually(lambda: numbers(live) == [1, 2, 3], what="live 3")
    await quiet(0.05)
    assert about(late) == [], "a socket got a message of the room before its subscribed"
    reads.open()
    await eventually(lambda: numbers(late) == [2, 3], what="the replay, 3 included")
    assert [(f["type"], f.get("offset")) for f in about(late)] == [("subscribed", 3), ("message", 2), ("message", 3)]
    assert late.of_type("subscribed")[0]["recovered"] is True
    publish(memory_redis, "r", 4)
    await eventually(lambda: numbers(late) == [2, 3, 4], what="then live")


async def test_a_resubscribe_with_since_gets_what_it_missed_once_in_order_then_live(
    nodes: NodeFactory, memory_redis: MemoryRedis,
) -> None:
    a = await nodes()
    s = a.socket()
    first = await subscribed(s)
    publish(memory_redis, "r", 1, 2)
    await eventually(lambda: numbers(s) == [1, 2], what="1, 2")
    s.hang_up()
    publish(memory_redis, "r", 3, 4, 5)
    back = a.socket()
    again = await subscribed(back, since=Since(2, first["epoch"]))
    assert (again["offset"], again["epoch"], again["recovered"]) == (5, first["epoch"], True)
    await eventually(lambda: numbers(back) == [3, 4, 5], what="3, 4, 5 replayed")
    assert all(r.bulk for r in back.received if r.frame["type"] == "message")
    publish(memory_redis, "r", 6)
    await eventually(lambda: numbers(back) == [3, 4, 5, 6], what="then 6 live")
    await quiet(0.05)
    assert numbers(back) == [3, 4, 5, 6]


async def test_a_since_older_than_what_history_holds_recovers_nothing(
    nodes: NodeFactory, memory_redis: MemoryRedis,
) -> None:
    a = await nodes(history_size=3)
    epoch = publish(memory_redis, "r", 1, 2, 3, 4, 5, 6)  # history holds 4, 5, 6
    s = a.socket()
    got = await subscribed(s, since=Since(2, epoch))
    assert (got["offset"], got["recovered"]) == (6, False)
    ok = await subscribed(s, sub="t2", since=Since(3, epoch))
    assert (ok["offset"], ok["recovered"]) == (6, True)
    await eventually(lambda: numbers(s) == [4, 5, 6], what="only the whole replay")
    assert {f["sub"] for f in s.of_type("message")} == {"t2"}


async def test_a_since_of_another_epoch_or_from_the_future_recovers_nothing(
    nodes: NodeFactory, memory_redis: MemoryRedis,
) -> None:
    a = await nodes()
    epoch = publish(memory_redis, "r", 1, 2)
    s = a.socket()
    other = await subscribed(s, since=Since(1, "0ther0ne"))
    assert (other["offset"], other["epoch"], other["recovered"]) == (2, epoch, False)
    ahead = await subscribed(s, sub="t2", since=Since(7, epoch))
    assert (ahead["offset"], ahead["recovered"]) == (2, False)
    await quiet(0.05)
    assert numbers(s) == []
    assert a.metric("rrr_history_resets_total") == 2


async def test_a_live_gap_is_read_from_history_and_what_follows_waits_for_it(
    nodes: NodeFactory, memory_redis: MemoryRedis,
) -> None:
    a = await nodes()
    s = a.socket()
    await subscribed(s)
    publish(memory_redis, "r", 1)
    await eventually(lambda: numbers(s) == [1], what="1")
    reads = memory_redis.hold("history_read")
    memory_redis.lose(keys.message_channel("r"))  # 2 never reaches this process live
    publish(memory_redis, "r", 2, 3)
    await eventually(lambda: reads.waiting == 1, what="the gap's read under way")
    publish(memory_redis, "r", 4)
    await quiet(0.05)
    assert numbers(s) == [1], "a message after the gap went out before the gap was filled"
    reads.open()
    await eventually(lambda: numbers(s) == [1, 2, 3, 4], what="2 from history, then 3, 4 held")
    assert a.metric("rrr_history_gaps_total") == 1
    publish(memory_redis, "r", 5)
    await eventually(lambda: numbers(s) == [1, 2, 3, 4, 5], what="then live again")


async def test_what_was_published_while_pubsub_was_down_is_read_back_even_if_nothing_follows(
    nodes: NodeFactory, memory_redis: MemoryRedis,
) -> None:
    a = await nodes()
    s = a.socket()
    await subscribed(s)
    publish(memory_redis, "r", 1)
    await eventually(lambda: numbers(s) == [1], what="1")
    held = memory_redis.hold("subscribe")
    memory_redis.cut(a.pid)
    await eventually(lambda: a.subscriber.runs == 2, what="a reconnecting")
    publish(memory_redis, "r", 2, 3)  # nobody of a hears them
    held.open()
    await eventually(lambda: numbers(s) == [1, 2, 3], what="2, 3 read back")
    publish(memory_redis, "r", 4)
    await eventually(lambda: numbers(s) == [1, 2, 3, 4], what="then live")
    await quiet(0.05)
    assert numbers(s) == [1, 2, 3, 4]


async def test_redis_restarted_empty_tells_every_subscription_its_stream_began_again(
    nodes: NodeFactory, memory_redis: MemoryRedis,
) -> None:
    a = await nodes()
    s = a.socket()
    first = await subscribed(s)
    await s.send(type="subscribe", room="r", sub="t2")
    publish(memory_redis, "r", 1, 2)
    await eventually(lambda: numbers(s) == [1, 2], what="1, 2")
    memory_redis.restart()
    await eventually(lambda: len(s.of_type("subscribed")) == 4, what="both subscriptions told again")
    resets = s.of_type("subscribed")[2:]
    assert {f["sub"] for f in resets} == {"t", "t2"}
    assert all(f["recovered"] is False and f["offset"] == 0 and f["epoch"] != first["epoch"] for f in resets)
    publish(memory_redis, "r", 3)
    await eventually(lambda: numbers(s) == [1, 2, 3], what="3 in the new epoch")
    assert s.of_type("message")[-1]["epoch"] == resets[0]["epoch"] and s.offsets()[-1] == 1


async def test_a_message_over_the_limit_is_skipped_live_and_in_replays_and_is_no_gap(
    nodes: NodeFactory, memory_redis: MemoryRedis,
) -> None:
    a = await nodes(max_message_size=100)
    s = a.socket()
    first = await subscribed(s)
    publish(memory_redis, "r", 1)
    memory_redis.backend_publish("r", json.dumps({"i": 2, "pad": "x" * 200}))  # an older helper's, stored
    publish(memory_redis, "r", 3)
    await eventually(lambda: numbers(s) == [1, 3], what="1, 3 live")
    assert s.offsets() == [1, 3]
    assert a.metric("rrr_history_gaps_total") == 0
    back = a.socket()
    again = await subscribed(back, since=Since(0, first["epoch"]))
    assert again["recovered"] is True
    await eventually(lambda: numbers(back) == [1, 3], what="1, 3 replayed")
    assert a.metric("rrr_oversized_messages_total") == 2


async def test_a_failed_history_read_is_retried_until_the_subscription_is_served(
    nodes: NodeFactory, memory_redis: MemoryRedis,
) -> None:
    a = await nodes()
    memory_redis.fail("history_read", times=2)
    s = a.socket()
    got = await subscribed(s)
    assert got["recovered"] is False
    assert a.metric("rrr_task_errors_total", {"task": "history"}) == 2
    await eventually(lambda: a.row("r") == (1, 1), what="written once caught up")


async def test_with_history_off_messages_are_relayed_live_without_offsets(
    nodes: NodeFactory, memory_redis: MemoryRedis,
) -> None:
    a, b = await nodes(history_size=0), await nodes(history_size=0)
    s = a.socket()
    got = await subscribed(s)
    assert "offset" not in got and got["recovered"] is False
    await b.history.publish("r", '{"i":1}')
    memory_redis.publish(keys.room_channel("r"), '{"i":2}')  # a backend's raw PUBLISH
    await eventually(lambda: numbers(s) == [1, 2], what="1, 2 relayed")
    assert all("offset" not in f for f in s.of_type("message"))
    assert memory_redis.metas == {}


async def test_a_socket_still_owed_a_replay_is_told_to_reload_rather_than_owed_another(
    nodes: NodeFactory, memory_redis: MemoryRedis,
) -> None:
    a = await nodes()
    s = a.socket(bulk_limit=2000)  # what it may be owed at once (--history-size x --max-message-size)
    first = await subscribed(s)
    for i in range(1, 6):
        memory_redis.backend_publish("r", json.dumps({"i": i, "pad": "x" * 300}))
    await eventually(lambda: numbers(s) == [1, 2, 3, 4, 5], what="1..5 live")
    s.stall()  # the client stops reading
    await s.send(type="subscribe", room="r", sub="t2", since={"offset": 0, "epoch": first["epoch"]})
    await s.send(type="subscribe", room="r", sub="t3", since={"offset": 0, "epoch": first["epoch"]})
    await eventually(lambda: len([f for f in s.waiting if f["type"] == "subscribed"]) == 2, what="both served")
    memory_redis.backend_publish("r", json.dumps({"i": 6}))
    await eventually(lambda: any(f.get("data") == {"i": 6} for f in s.waiting), what="6 behind them")
    assert numbers(s) == [1, 2, 3, 4, 5], "a frame went past what the socket had not read"
    s.drain()
    told = {f["sub"]: f["recovered"] for f in s.of_type("subscribed")}
    assert told == {"t": False, "t2": True, "t3": False}
    assert numbers(s) == [1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 6], "not the one replay, then live in order"
