"""Presence rooms' members, fast (memory backplane, in-memory sockets): a subscription is owed the
whole member list once its own write lands (not one in flight before it), every other socket gets a
diff; a user is one member however many tabs, sockets and processes; a user whose last tab goes
stays a member for the grace, so a reload is no leave and join; writes carry only what changed; a
failed read or write still ends with the list sent; reads go one at a time; a refreshed token's new
info reaches every member; a killed process's members leave once its lease is swept. End to end on
a real Redis: test_presence_rooms.py."""

from __future__ import annotations

import pytest

from support.memory_backplane import MemoryRedis
from support.memory_core import Node, NodeFactory, eventually, quiet, token
from support.memory_socket import RecordingSocket

pytestmark = pytest.mark.gen_test(timeout=30)

ROOM = "presence-team"


async def member(node: Node, user: str, name: str = "", tabs: tuple[str, ...] = ("t1",)) -> RecordingSocket:
    sock = await node.authed(user, [ROOM], info={"name": name or user.title()})
    for tab in tabs:
        await sock.send(type="subscribe", room=ROOM, sub=tab)
    return sock


def users_shown(sock: RecordingSocket) -> int | None:
    counts = sock.of_type("connection_message", ROOM)
    return counts[-1]["users"] if counts else None


async def test_a_new_member_gets_the_whole_list_and_every_other_socket_a_diff(nodes: NodeFactory) -> None:
    a, b = await nodes(), await nodes()
    ada = await member(a, "ada")
    await eventually(lambda: ada.members(ROOM) == {"ada": {"info": {"name": "Ada"}}}, what="ada's own list")
    bob = await member(b, "bob")
    both = {"ada": {"info": {"name": "Ada"}}, "bob": {"info": {"name": "Bob"}}}
    await eventually(lambda: bob.members(ROOM) == both, what="bob's whole list")
    await eventually(lambda: ada.members(ROOM) == both, what="ada's list with bob")
    assert [f["joins"] for f in ada.of_type("presence_diff", ROOM)] == [{"bob": {"info": {"name": "Bob"}}}]
    assert len(ada.of_type("presence", ROOM)) == 1, "ada was sent a second whole list"
    assert bob.of_type("presence_diff", ROOM) == []
    await eventually(lambda: users_shown(ada) == 2 and users_shown(bob) == 2, what="2 users counted")


async def test_a_member_who_joins_while_a_write_is_in_flight_is_sent_a_list_read_after_its_own_write(
    nodes: NodeFactory, memory_redis: MemoryRedis,
) -> None:
    a = await nodes()
    first = memory_redis.hold("set_presence")
    ada = await member(a, "ada")
    await eventually(lambda: first.waiting == 1, what="ada's write in flight")
    bob = await member(a, "bob")  # not in that write: owed a list only once his own lands
    first.open()
    second = memory_redis.hold("set_presence")  # bob's write waits
    await eventually(lambda: ada.members(ROOM) == {"ada": {"info": {"name": "Ada"}}}, what="ada's list")
    await eventually(lambda: second.waiting == 1, what="bob's write in flight")
    await quiet(0.05)
    assert bob.of_type("presence", ROOM) == [], "bob was sent a list read before his write landed"
    second.open()
    await eventually(lambda: set(ada.members(ROOM)) == set(bob.members(ROOM)) == {"ada", "bob"}, what="both lists")
    assert set(bob.of_type("presence", ROOM)[0]["members"]) == {"ada", "bob"}


async def test_a_user_is_one_member_across_tabs_sockets_and_processes(
    nodes: NodeFactory, memory_redis: MemoryRedis,
) -> None:
    a, b = await nodes(), await nodes(grace=0.05)
    ada1 = await member(a, "ada", tabs=("t1", "t2"))
    ada2 = await member(a, "ada")
    ada3 = await member(b, "ada")
    await eventually(lambda: memory_redis.state(ROOM).tabs == 4, what="4 tabs")
    assert memory_redis.members(ROOM) == {"ada": '{"name":"Ada"}'}
    assert sorted(memory_redis.member_fields[ROOM]) == sorted([f"{a.pid}|ada", f"{b.pid}|ada"])
    await eventually(lambda: all(users_shown(s) == 1 for s in (ada1, ada2, ada3)), what="1 user everywhere")
    ada1.hang_up()
    ada3.hang_up()
    await eventually(lambda: memory_redis.state(ROOM).tabs == 1, what="1 tab left")
    assert memory_redis.members(ROOM) == {"ada": '{"name":"Ada"}'}
    assert ada2.of_type("presence_diff", ROOM) == []


async def test_a_reload_within_the_grace_is_no_leave_and_join_and_leaving_for_good_is_a_leave(
    nodes: NodeFactory, memory_redis: MemoryRedis,
) -> None:
    a, b = await nodes(grace=0.5), await nodes()
    ada = await member(a, "ada")
    bob = await member(b, "bob")
    await eventually(lambda: set(ada.members(ROOM)) == {"ada", "bob"}, what="ada sees bob")
    await eventually(lambda: set(bob.members(ROOM)) == {"ada", "bob"}, what="bob sees ada")

    ada.hang_up()
    ada = await member(a, "ada")  # the reloaded tab, at once
    await eventually(lambda: set(ada.members(ROOM)) == {"ada", "bob"}, what="the reloaded tab's list")
    await quiet()
    assert bob.of_type("presence_diff", ROOM) == [], "a reload showed bob a leave or a join"

    carol = await member(a, "carol")  # keeps the room local on a: its row is written during ada's grace
    await eventually(lambda: a.row(ROOM) == (2, 2) and "carol" in bob.members(ROOM), what="carol in")
    diffs = len(bob.of_type("presence_diff", ROOM))
    ada.hang_up()
    await eventually(lambda: a.row(ROOM) == (1, 1), what="a's row without ada")
    assert "ada" in memory_redis.members(ROOM), "ada left Redis before her grace ended"
    assert len(bob.of_type("presence_diff", ROOM)) == diffs
    await eventually(lambda: "ada" not in bob.members(ROOM), what="bob told ada left")
    assert bob.of_type("presence_diff", ROOM)[-1]["leaves"] == {"ada": {"info": {"name": "Ada"}}}
    assert set(memory_redis.members(ROOM)) == {"bob", "carol"}
    assert not carol.closed


async def test_member_writes_carry_only_what_changed(nodes: NodeFactory, memory_redis: MemoryRedis) -> None:
    a = await nodes(grace=0.05)
    ada = await member(a, "ada")
    await eventually(lambda: a.row(ROOM) == (1, 1), what="ada written")
    await ada.send(type="subscribe", room=ROOM, sub="t2")
    bob = await member(a, "bob")
    await eventually(lambda: a.row(ROOM) == (2, 3), what="ada's second tab and bob written")
    bob.hang_up()
    await eventually(lambda: memory_redis.members(ROOM) == {"ada": '{"name":"Ada"}'}, what="bob removed")
    member_writes = [w.members[ROOM] for w in memory_redis.writes if w.pid == a.pid and ROOM in w.members]
    assert member_writes == [
        ({"ada": '{"name":"Ada"}'}, [], False),
        ({"bob": '{"name":"Bob"}'}, [], False),
        ({}, ["bob"], False),
    ]


async def test_a_failed_member_list_read_is_retried_and_the_list_still_sent_whole(
    nodes: NodeFactory, memory_redis: MemoryRedis,
) -> None:
    a = await nodes()
    # Two: the read that carries ada's owed list fails, whichever of her write's reply and its
    # announcement asked for a read first.
    memory_redis.fail("members", times=2)
    ada = await member(a, "ada")
    await eventually(lambda: ada.members(ROOM) == {"ada": {"info": {"name": "Ada"}}}, what="ada's whole list")
    assert a.metric("rrr_task_errors_total", {"task": "members"}) == 2
    assert a.metric("rrr_redis_errors_total", {"op": "members"}) == 2


async def test_member_list_reads_go_one_at_a_time_and_end_on_the_truth(
    nodes: NodeFactory, memory_redis: MemoryRedis,
) -> None:
    a = await nodes()
    ada = await member(a, "ada")
    await eventually(lambda: "ada" in ada.members(ROOM), what="ada's list")
    reads = memory_redis.hold("members")
    before = memory_redis.calls["members"]

    def join(user: str) -> None:  # another process's write, announced
        memory_redis.set_presence("peer", 15, {ROOM: (1, 1)}, {ROOM: ({user: "null"}, [], False)})

    join("user0")
    await eventually(lambda: reads.waiting == 1, what="a read of the list under way")
    for i in range(1, 5):
        join(f"user{i}")
    await quiet()
    assert reads.waiting == 1, f"{reads.waiting} reads of one room's members at once"
    reads.open()
    await eventually(lambda: len(ada.members(ROOM)) == 6, what="ada sees all 6")
    await quiet()
    assert memory_redis.calls["members"] - before == 2, "not one read, then one more for what came meanwhile"


async def test_a_refreshed_token_with_new_info_shows_every_member_the_new_info(
    nodes: NodeFactory, memory_redis: MemoryRedis,
) -> None:
    a, b = await nodes(), await nodes()
    ada = await member(a, "ada", "Ada")
    bob = await member(b, "bob")
    await eventually(lambda: bob.members(ROOM).get("ada") == {"info": {"name": "Ada"}}, what="bob sees Ada")
    await ada.send(type="auth", token=token("ada", rooms=[ROOM], info={"name": "Ada Lovelace"}))
    await eventually(lambda: bob.members(ROOM).get("ada") == {"info": {"name": "Ada Lovelace"}},
                     what="bob sees the new name")
    assert bob.of_type("presence_diff", ROOM)[-1]["leaves"] == {}
    assert memory_redis.members(ROOM)["ada"] == '{"name":"Ada Lovelace"}'


async def test_a_killed_processs_members_leave_once_its_lease_is_swept(
    nodes: NodeFactory, memory_redis: MemoryRedis,
) -> None:
    a, b = await nodes(), await nodes()
    bob = await member(a, "bob")
    await member(b, "ada")
    await eventually(lambda: set(bob.members(ROOM)) == {"ada", "bob"}, what="bob sees ada")
    await b.kill()
    await quiet()
    assert set(bob.members(ROOM)) == {"ada", "bob"}
    memory_redis.clock.advance(10)
    await a.presence.renew()  # as a's lease loop does (b's is dead)
    memory_redis.clock.advance(6)  # past b's lease, 15 s after its last renewal; a's holds
    await eventually(lambda: set(bob.members(ROOM)) == {"bob"}, what="bob told ada left")
    assert bob.of_type("presence_diff", ROOM)[-1]["leaves"] == {"ada": {"info": {"name": "Ada"}}}
    await eventually(lambda: users_shown(bob) == 1, what="1 user counted")
