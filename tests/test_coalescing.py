"""A join storm costs O(N) count frames, not O(N^2), and always ends on the true count."""

import asyncio

import pytest

from support.clients import Client, connect, wait_until
from support.servers import ServerFactory

pytestmark = pytest.mark.gen_test(timeout=120)


@pytest.mark.parametrize("n", [100, 300])
async def test_a_join_storm_delivers_linear_count_messages(
    server_factory: ServerFactory, clients: list[Client], n: int
) -> None:
    server = await server_factory(count_interval=0.1)
    joined = await asyncio.gather(*[connect(server.ws_url("/ws/count/storm/")) for _ in range(n)])
    clients += joined
    await wait_until(lambda: all(c.last_count() == (n, n) for c in joined), timeout=60,
                     what=f"all {n} clients showing {n}")
    frames = sum(len(c.counts()) for c in joined)
    # Naive broadcast-on-join would send n*(n+1)/2 frames (5,050 for 100, 45,150 for 300).
    assert frames <= 6 * n, f"{frames} count frames for {n} joins"
    assert server.metric("rrr_count_broadcasts_total") < n


async def test_a_burst_of_changes_ends_on_the_truth(server_factory: ServerFactory, clients: list[Client]) -> None:
    server = await server_factory(count_interval=0.2)
    watcher = await connect(server.ws_url("/ws/"))
    clients.append(watcher)
    await watcher.send(type="subscribe", room="burst", sub="w")
    await watcher.settles_on(1, 1)
    burst = await asyncio.gather(*[connect(server.ws_url("/ws/count/burst/")) for _ in range(40)])
    for c in burst[:25]:
        c.close()
    clients += burst[25:]
    await watcher.settles_on(16, 16, timeout=30)
    before = len(watcher.counts())
    await asyncio.sleep(1)
    assert len(watcher.counts()) == before, "a settled room keeps sending counts"


async def test_a_big_room_is_sent_counts_paced_by_its_size(
    server_factory: ServerFactory, clients: list[Client]
) -> None:
    # 60 sockets at --count-rate 30: one broadcast every 2 s, not every --count-interval (0.05 s).
    server = await server_factory(count_interval=0.05, count_rate=30)
    room = await asyncio.gather(*[connect(server.ws_url("/ws/count/big/")) for _ in range(60)])
    clients += room
    watcher = room[0]
    await wait_until(lambda: all(c.last_count() == (60, 60) for c in room), timeout=60, what="all showing 60")
    before = len(watcher.counts())
    broadcasts = server.metric("rrr_count_broadcasts_total")
    # Churn for 4 s: a join and a leave every 0.1 s (80 changes; unpaced, about 80 broadcasts).
    loop = asyncio.get_running_loop()
    end = loop.time() + 4.0
    while loop.time() < end:
        extra = await connect(server.ws_url("/ws/count/big/"))
        await asyncio.sleep(0.05)
        extra.close()
        await asyncio.sleep(0.05)
    await watcher.settles_on(60, 60, timeout=30)
    paced = server.metric("rrr_count_broadcasts_total") - broadcasts
    assert paced <= 5, f"{paced} broadcasts in 4 s of churn, spaced at least 2 s apart"
    assert len(watcher.counts()) - before <= 5
    await wait_until(lambda: all(c.last_count() == (60, 60) for c in room), timeout=30,
                     what="every member ending on the truth")
