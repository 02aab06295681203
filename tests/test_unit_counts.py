"""Count frames, fast (memory backplane, in-memory sockets): a storm of changes is sent paced, and
the last frame is the truth (the trailing edge); a big room's broadcasts are spaced by
``count_rate``; a new socket gets the count at once, not at the next paced broadcast, and that
broadcast skips it; an announcement older than what was shown is dropped, unless Redis restarted
empty and the versions began again. End to end on a real Redis: test_coalescing.py,
test_rooms_socket.py, test_redis_faults.py."""

from __future__ import annotations

import asyncio

import pytest

from support.memory_backplane import MemoryRedis
from support.memory_core import NodeFactory, eventually, quiet
from support.memory_socket import RecordingSocket

pytestmark = pytest.mark.gen_test(timeout=30)


def peer_row(redis: MemoryRedis, connections: int, room: str = "r", pid: str = "peer") -> None:
    """Another process writes its row (``connections`` sockets, a tab each): announced, as its script does."""
    redis.set_presence(pid, 15, {room: (connections, connections)}, {})


def count_frames(sock: RecordingSocket, room: str = "r") -> list[tuple[int, int, float, int]]:
    """``(connections, tabs, when, arrival)`` of each count frame."""
    return [
        (r.frame["connections"], r.frame["tabs"], r.at, r.seq) for r in sock.received
        if r.frame["type"] == "connection_message" and r.frame["room"] == room
    ]


async def test_a_storm_of_changes_is_sent_paced_and_ends_on_the_truth(
    nodes: NodeFactory, memory_redis: MemoryRedis,
) -> None:
    a = await nodes(count_interval=0.1)
    w = a.socket("r")
    await eventually(lambda: w.last_count("r") == (1, 1), what="w counted")
    before = len(w.counts("r"))
    for n in range(1, 101):  # a hundred changes announced at once
        peer_row(memory_redis, n)
    await eventually(lambda: w.last_count("r") == (101, 101), what="the truth, 101")
    await quiet(0.3)
    after = w.counts("r")[before:]
    assert after[-1] == (101, 101)
    assert len(after) <= 2, f"{len(after)} count frames for 100 changes within one interval"


async def test_a_big_rooms_broadcasts_are_spaced_by_count_rate(
    nodes: NodeFactory, memory_redis: MemoryRedis,
) -> None:
    a = await nodes(count_interval=0.02, count_rate=100)  # 20 sockets in the room: 0.2 s apart
    w = a.socket("r")
    await eventually(lambda: w.last_count("r") == (1, 1), what="w counted")
    loop = asyncio.get_running_loop()
    end = loop.time() + 0.7
    n = 19
    while loop.time() < end:  # a change every 10 ms
        n = 39 - n  # 19, 20, 19, ...
        peer_row(memory_redis, n)
        await asyncio.sleep(0.01)
    await eventually(lambda: w.last_count("r") == (n + 1, n + 1), what="the truth")
    storm = [f for f in count_frames(w) if f[0] >= 20]
    assert len(storm) >= 2
    gaps = [later[2] - earlier[2] for earlier, later in zip(storm, storm[1:])]
    assert min(gaps) >= 0.19, f"broadcasts {min(gaps):.3f} s apart in a room of 20 at --count-rate 100"


async def test_a_new_socket_gets_the_count_at_once_and_the_paced_broadcast_skips_it(
    nodes: NodeFactory, memory_redis: MemoryRedis,
) -> None:
    a = await nodes(count_interval=0.02, count_rate=8)  # 2 sockets: broadcasts 0.25 s apart
    w = a.socket("r")
    await eventually(lambda: w.last_count("r") == (1, 1), what="w counted")
    s = a.socket("r")
    await eventually(lambda: s.last_count("r") == (2, 2), what="s counted")
    await eventually(lambda: w.last_count("r") == (2, 2), what="w told 2 by the paced broadcast")
    first_to_s = count_frames(s)[0]
    to_w = next(f for f in count_frames(w) if f[0] == 2)
    assert first_to_s[3] < to_w[3], "the new socket waited for the paced broadcast"
    await quiet(0.1)
    assert s.counts("r") == [(2, 2)], "the broadcast sent the new socket its count again"


async def test_an_announcement_older_than_what_was_shown_is_dropped(
    nodes: NodeFactory, memory_redis: MemoryRedis,
) -> None:
    a = await nodes()
    w = a.socket("r")
    await eventually(lambda: w.last_count("r") == (1, 1), what="w counted")
    replies = memory_redis.hold("set_presence:reply")
    s = a.socket("r")  # a's write runs (2 sockets, announced); its reply comes late
    await eventually(lambda: w.last_count("r") == (2, 2), what="w told 2 by the announcement")
    peer_row(memory_redis, 1)  # then another process: 3, a newer version
    await eventually(lambda: w.last_count("r") == (3, 3), what="w told 3")
    replies.open()  # a's own reply, with the older 2
    await eventually(lambda: s.last_count("r") == (3, 3), what="s counted")
    await quiet()
    assert w.last_count("r") == (3, 3), "an older count was shown after a newer one"
    state = a.hub.current_state("r")
    assert state is not None and state.connections == 3


async def test_after_redis_restarted_empty_the_new_lower_versions_are_shown(
    nodes: NodeFactory, memory_redis: MemoryRedis,
) -> None:
    a = await nodes()
    w = a.socket("r")
    for n in range(1, 11):  # the version sequence moves on
        peer_row(memory_redis, n)
    memory_redis.leave("peer")
    await eventually(lambda: w.last_count("r") == (1, 1) and memory_redis.seq > 10, what="w counted")
    memory_redis.restart()
    await eventually(lambda: a.subscriber.runs == 2 and a.row("r") == (1, 1), what="a written again")
    assert memory_redis.seq < 10
    a.socket("r")
    await eventually(lambda: w.last_count("r") == (2, 2), what="w told 2 after the restart")
