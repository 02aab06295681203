"""The hub, fast (no Redis, no sockets: the memory backplane and in-memory sockets): a room becomes
local with its first subscription and is followed, counted by sockets and tabs, and let go with its
last; a sign-out closes the user's sockets on every process, also one made while a process's pub/sub
was down; shutdown removes presence before it closes every socket with 1001.
End to end on a real Redis: test_rooms_socket.py, test_presence.py, test_identity.py."""

from __future__ import annotations

import asyncio

import pytest

from rrr.backplane import keys
from support.memory_backplane import MemoryRedis
from support.memory_core import NodeFactory, eventually, quiet

pytestmark = pytest.mark.gen_test(timeout=30)


async def test_a_room_is_followed_from_its_first_subscription_to_its_last(
    nodes: NodeFactory, memory_redis: MemoryRedis,
) -> None:
    a = await nodes()
    s1, s2 = a.socket(), a.socket()
    await s1.send(type="subscribe", room="r", sub="t1")
    await eventually(lambda: a.follows("r") and a.row("r") == (1, 1), what="r followed and written")
    assert a.hub.local_rooms() == ["r"]
    await s1.send(type="subscribe", room="r", sub="t2")
    await s2.send(type="subscribe", room="r", sub="t1")
    await eventually(lambda: a.row("r") == (2, 3), what="2 sockets, 3 tabs")
    await eventually(lambda: s1.last_count("r") == (2, 3) and s2.last_count("r") == (2, 3), what="both told 2/3")

    await s1.send(type="unsubscribe", room="r", sub="t1")
    await eventually(lambda: a.row("r") == (2, 2), what="one tab less")
    await s1.send(type="unsubscribe", room="r", sub="t2")
    await eventually(lambda: a.row("r") == (1, 1), what="one socket less")
    assert a.follows("r")
    await s2.send(type="unsubscribe", room="r", sub="t1")
    await eventually(lambda: a.row("r") is None, what="the row removed")
    assert a.hub.local_rooms() == []
    await eventually(lambda: not a.follows("r"), what="r no longer followed")
    assert memory_redis.subscribers(keys.message_channel("r")) == 0
    assert memory_redis.state("r").connections == 0


async def test_a_room_left_and_joined_again_at_once_stays_followed_and_counted(nodes: NodeFactory) -> None:
    a = await nodes()
    s1 = a.socket()
    await s1.send(type="subscribe", room="r", sub="t1")
    await eventually(lambda: s1.last_count("r") == (1, 1), what="counted")
    s1.hang_up()
    s2 = a.socket("r")  # a reload: the room is left and joined again before anything ran
    await eventually(lambda: a.row("r") == (1, 1) and s2.last_count("r") == (1, 1), what="the reload counted")
    assert a.subscriber.confirmed("r") and a.follows("r")


async def test_closing_a_socket_drops_every_tab_it_held(nodes: NodeFactory) -> None:
    a = await nodes()
    s1, s2 = a.socket(), a.socket()
    for room in ("r1", "r2", "r3"):
        await s1.send(type="subscribe", room=room, sub="a")
        await s1.send(type="subscribe", room=room, sub="b")
    await s2.send(type="subscribe", room="r1", sub="a")
    await eventually(lambda: [a.row(r) for r in ("r1", "r2", "r3")] == [(2, 3), (1, 2), (1, 2)], what="rows")
    s1.hang_up()
    await eventually(lambda: [a.row(r) for r in ("r1", "r2", "r3")] == [(1, 1), None, None], what="s1's tabs gone")
    assert a.hub.local_rooms() == ["r1"]
    assert a.metric("rrr_subscriptions") == 1


async def test_a_sign_out_closes_the_users_sockets_on_every_process_and_no_one_else(
    nodes: NodeFactory, memory_redis: MemoryRedis,
) -> None:
    a, b = await nodes(), await nodes()
    ada1, ada2 = await a.authed("ada", ["private-ada"]), await a.authed("ada", ["private-ada"])
    ada3 = await b.authed("ada", ["private-ada"])
    bob = await a.authed("bob", [])
    for s in (ada1, ada3, bob):
        await s.send(type="subscribe", room="r", sub="t")
    await eventually(lambda: memory_redis.state("r").connections == 3, what="3 sockets in r")

    await b.presence.revoke("ada", 600)

    await eventually(lambda: all(s.close_code == 4001 for s in (ada1, ada2, ada3)), what="ada closed everywhere")
    assert ada1.close_reason == "signed out"
    await eventually(lambda: bob.last_count("r") == (1, 1), what="bob told he is alone in r")
    assert memory_redis.state("r").connections == 1
    assert not bob.closed


async def test_a_sign_out_made_while_pubsub_was_down_closes_the_socket_once_it_is_back(
    nodes: NodeFactory, memory_redis: MemoryRedis,
) -> None:
    a = await nodes()
    ada = await a.authed("ada", [])
    bob = await a.authed("bob", [])
    held = memory_redis.hold("subscribe")  # the next connection's subscriptions are slow to confirm
    memory_redis.cut(a.pid)
    await eventually(lambda: a.subscriber.runs == 2, what="a reconnecting")

    memory_redis.revoke("ada", 600)  # nobody of a hears this one
    await quiet()
    assert not ada.closed

    held.open()
    await eventually(lambda: ada.close_code == 4001, what="ada closed after the control channel came back")
    assert not bob.closed


async def test_the_inbox_is_heard_until_the_process_has_left(nodes: NodeFactory, memory_redis: MemoryRedis) -> None:
    """Other processes hand a stopping process requests for its sessions until it has left (on a Cluster
    while its liveness key stands, which LEAVE deletes last). Its inbox stopped before LEAVE, and a poll
    handed over in between waited out the handoff's timeout (#27's drains): it listens until LEAVE is done."""
    a = await nodes()
    inbox = keys.inbox_channel(a.service.process_tag)
    await eventually(lambda: memory_redis.subscribers(inbox) == 1, what="a's inbox listened to")
    leaving = memory_redis.hold("leave")
    stopping = asyncio.ensure_future(a.stop())
    await eventually(lambda: leaving.waiting == 1, what="a's LEAVE under way")
    assert memory_redis.subscribers(inbox) == 1, "nobody listens on the inbox while the process leaves"
    leaving.open()
    await stopping
    assert memory_redis.subscribers(inbox) == 0


async def test_shutdown_removes_presence_then_closes_every_socket_with_1001(
    nodes: NodeFactory, memory_redis: MemoryRedis,
) -> None:
    a, b = await nodes(), await nodes()
    watcher = b.socket("r")
    here = [a.socket("r"), a.socket("r2")]
    await eventually(lambda: watcher.last_count("r") == (2, 2), what="watcher sees a's socket")
    seen_at_close: list[object] = []
    handler_close = here[0].on_close
    assert handler_close is not None

    def on_close() -> None:  # a's row in r, as it stood when the socket's close reached the server
        seen_at_close.append(memory_redis.rows("r").get(a.pid))
        handler_close()

    here[0].on_close = on_close

    await a.stop()

    assert [s.close_code for s in here] == [1001, 1001]
    assert a.pid not in memory_redis.procs and memory_redis.rows("r2") == {}
    await eventually(lambda: seen_at_close, what="the socket's close handled")
    assert seen_at_close == [None], "a socket was closed while its process still showed in the room"
    await eventually(lambda: watcher.last_count("r") == (1, 1), what="watcher sees a gone at once")
    late = a.socket("r")
    assert late.close_code == 1001
