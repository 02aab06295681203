"""The presence-write loop, fast (memory backplane, in-memory sockets): a room's row is written only
once its channels are confirmed and its messages caught up (a count that shows the process means
its relay works); marks are coalesced into batches; a failed write is retried with what changed
meanwhile and its new sockets still owed their count and member list; a lost lease writes every
local room again; a presence room left by its last member is written when the grace ends; shutdown
lets a write in flight land before it leaves. End to end on a real Redis: test_presence.py,
test_coalescing.py, test_redis_faults.py, test_presence_rooms.py."""

from __future__ import annotations

import asyncio

import pytest

from support.memory_backplane import MemoryRedis
from support.memory_core import NodeFactory, eventually, quiet

pytestmark = pytest.mark.gen_test(timeout=30)

ROOM = "presence-team"


async def test_a_row_is_written_only_once_the_rooms_channels_are_confirmed(
    nodes: NodeFactory, memory_redis: MemoryRedis,
) -> None:
    a = await nodes()
    held = memory_redis.hold("subscribe")
    s = a.socket()
    await s.send(type="subscribe", room="r", sub="t")
    await eventually(lambda: held.waiting == 1, what="the SUBSCRIBE on its way")
    await quiet()
    assert a.row("r") is None and s.counts() == [], "presence written before Redis confirmed the room"
    held.open()
    await eventually(lambda: a.row("r") == (1, 1) and s.last_count("r") == (1, 1), what="written once confirmed")


async def test_a_new_subscription_is_not_written_while_the_pubsub_connection_is_down(
    nodes: NodeFactory, memory_redis: MemoryRedis,
) -> None:
    a = await nodes()
    s1 = a.socket("r")
    await eventually(lambda: a.row("r") == (1, 1), what="r written")
    memory_redis.pubsub_refused = True
    memory_redis.cut(a.pid)
    await eventually(lambda: not a.subscriber.connected, what="a's pub/sub down")
    s2 = a.socket("r")
    await quiet()
    assert a.row("r") == (1, 1), "a subscription written while its process could not relay the room"
    assert s2.counts() == []
    memory_redis.pubsub_refused = False
    await eventually(lambda: a.row("r") == (2, 2) and s2.last_count("r") == (2, 2), what="written once back")
    assert s1.last_count("r") == (2, 2)


async def test_a_row_is_written_only_once_the_rooms_messages_are_caught_up(
    nodes: NodeFactory, memory_redis: MemoryRedis,
) -> None:
    a = await nodes()
    reads = memory_redis.hold("history_read")
    s = a.socket("r")
    await eventually(lambda: reads.waiting == 1 and a.subscriber.confirmed("r"), what="confirmed, reading")
    await quiet()
    assert a.row("r") is None, "presence written before the room's position was read"
    reads.open()
    await eventually(lambda: a.row("r") == (1, 1) and s.last_count("r") == (1, 1), what="written once caught up")


async def test_marks_are_coalesced_into_a_few_batches(nodes: NodeFactory, memory_redis: MemoryRedis) -> None:
    a = await nodes()
    socks = [a.socket(f"r{i}") for i in range(50)]
    await eventually(lambda: all(a.row(f"r{i}") == (1, 1) for i in range(50)), what="50 rooms written")
    writes = [w for w in memory_redis.writes if w.pid == a.pid]
    assert len(writes) <= 10, f"{len(writes)} writes for 50 rooms"
    assert sum(len(w.rows) for w in writes) == 50, "a room written twice"
    await eventually(lambda: all(s.last_count() == (1, 1) for s in socks), what="each told its count")


async def test_a_failed_write_is_retried_and_its_new_sockets_still_get_their_count_and_member_list(
    nodes: NodeFactory, memory_redis: MemoryRedis,
) -> None:
    a = await nodes()
    memory_redis.fail("set_presence")
    ada = await a.authed("ada", [ROOM])
    await ada.send(type="subscribe", room=ROOM, sub="t")
    await eventually(lambda: a.metric("rrr_redis_errors_total", {"op": "set_presence"}) == 1, what="a failed write")
    bob = await a.authed("bob", [ROOM])
    await bob.send(type="subscribe", room=ROOM, sub="t")  # changed meanwhile: in the retry too
    both = {"ada": {"info": None}, "bob": {"info": None}}
    await eventually(lambda: ada.members(ROOM) == both and bob.members(ROOM) == both, what="both lists")
    assert a.row(ROOM) == (2, 2)
    assert ada.last_count(ROOM) == (2, 2) and bob.last_count(ROOM) == (2, 2)
    assert a.service.writer.healthy


async def test_a_write_whose_reply_was_lost_is_written_again_and_changes_nothing(
    nodes: NodeFactory, memory_redis: MemoryRedis,
) -> None:
    a = await nodes()
    memory_redis.fail("set_presence", landed=True)
    s = a.socket("r")
    await eventually(lambda: memory_redis.calls["set_presence"] == 2 and a.service.writer.healthy, what="a retry")
    assert a.row("r") == (1, 1) and s.last_count("r") == (1, 1)
    assert memory_redis.seq == 1, "the retry changed the room again"


async def test_health_says_presence_writes_fail_until_one_lands(
    nodes: NodeFactory, memory_redis: MemoryRedis,
) -> None:
    a = await nodes()
    checks = ("redis", "lease", "presence_write", "subscriber", "memory")
    assert await a.service.health() == dict.fromkeys(checks, True)
    first = memory_redis.hold("set_presence")
    a.socket("r")
    await eventually(lambda: first.waiting == 1, what="a write in flight")
    memory_redis.fail("set_presence")
    first.open()
    retry = memory_redis.hold("set_presence")
    await eventually(lambda: retry.waiting == 1, what="it failed; its retry in flight")
    assert a.metric("rrr_redis_errors_total", {"op": "set_presence"}) == 1
    assert (await a.service.health())["presence_write"] is False
    retry.open()
    await eventually(lambda: a.row("r") == (1, 1), what="written")
    assert (await a.service.health())["presence_write"] is True


async def test_a_lost_lease_writes_every_local_room_again(nodes: NodeFactory, memory_redis: MemoryRedis) -> None:
    a = await nodes(presence_ttl=120)  # its own renewals are 40 s apart: not within this test
    s1, s2 = a.socket("r1"), a.socket("r2")
    await eventually(lambda: a.row("r1") == (1, 1) and a.row("r2") == (1, 1), what="both written")
    memory_redis.clock.advance(121)  # a stalled past its lease: its own sweep removes it
    await eventually(lambda: memory_redis.rows("r1") == {} and memory_redis.rows("r2") == {}, what="a swept")
    s3 = a.socket("r1")  # the next write finds the lease gone
    await eventually(lambda: a.row("r1") == (2, 2), what="r1 written")
    await eventually(lambda: a.row("r2") == (1, 1), what="r2 written again")
    await eventually(lambda: s2.last_count("r2") == (1, 1) and s3.last_count("r1") == (2, 2), what="counts true")
    assert s1.last_count("r1") == (2, 2)


async def test_a_presence_room_left_by_its_last_member_is_written_when_the_grace_ends(
    nodes: NodeFactory, memory_redis: MemoryRedis,
) -> None:
    a, b = await nodes(grace=0.6), await nodes()
    ada = await a.authed("ada", [ROOM])
    await ada.send(type="subscribe", room=ROOM, sub="t")
    bob = await b.authed("bob", [ROOM])
    await bob.send(type="subscribe", room=ROOM, sub="t")
    await eventually(lambda: set(bob.members(ROOM)) == {"ada", "bob"}, what="bob sees ada")
    ada.hang_up()
    await eventually(lambda: a.hub.local_rooms() == [], what="the room gone from a")
    await quiet(0.1)
    assert a.row(ROOM) == (1, 1) and "ada" in memory_redis.members(ROOM), "ada gone before her grace ended"
    await eventually(lambda: a.row(ROOM) is None, what="a's row removed after the grace")
    assert memory_redis.members(ROOM) == {"bob": "null"}
    await eventually(lambda: set(bob.members(ROOM)) == {"bob"}, what="bob told ada left")


async def test_shutdown_lets_a_write_in_flight_land_before_it_leaves(
    nodes: NodeFactory, memory_redis: MemoryRedis,
) -> None:
    a = await nodes()
    writes = memory_redis.hold("set_presence")
    a.socket("r")
    await eventually(lambda: writes.waiting == 1, what="a write in flight")
    stopping = asyncio.ensure_future(a.stop())
    await quiet(0.1)
    writes.open()
    await stopping
    await eventually(lambda: writes.passed == 1, what="the write landed")
    await quiet(0.05)
    assert memory_redis.rows("r") == {} and a.pid not in memory_redis.procs, "the write landed after LEAVE"


async def test_the_write_period_follows_write_interval_not_count_interval(
    nodes: NodeFactory, memory_redis: MemoryRedis,
) -> None:
    """A new socket is counted once its row is written, so the write period paces a join storm: it is
    ``--write-interval``, not the broadcasts' ``--count-interval``."""
    loop = asyncio.get_running_loop()
    for write, count in ((0.4, 0.02), (0.02, 10.0)):
        a = await nodes(write_interval=write, count_interval=count)
        a.socket(f"first-{write}")  # the leading edge: written at once
        await eventually(lambda: a.row(f"first-{write}") == (1, 1), what="the first write")
        start = loop.time()
        b = a.socket(f"second-{write}")  # marked now: waits for the next batch
        await eventually(lambda: a.row(f"second-{write}") == (1, 1), timeout=8, what="the second write")
        waited = loop.time() - start
        if write > count:
            assert waited >= write - 0.1, f"written {waited:.3f} s after, under --write-interval {write}"
        else:
            assert waited < 5.0, f"written {waited:.3f} s after: paced by --count-interval {count}"
        await eventually(lambda: b.last_count(f"second-{write}") == (1, 1), what="counted once written")
