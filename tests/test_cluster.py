"""rrr on a real Redis 7 Cluster (6 nodes on loopback: 3 masters, 3 replicas).

Rooms are picked so they live on every shard. Two processes agree on counts and members;
messages from the API, the backend helper, a raw classic PUBLISH and an SPUBLISH reach every
subscriber; a kill -9'd process leaves every count within TTL + TTL/3; a kill -9'd master is
replaced by its replica and rrr follows: delivery resumes and counts are exact within the
node timeout + 5 s, and every message stored in history reaches every subscriber once; a
SIGSTOPped master that publishes after its replica took over costs a ``recovered: false``, never a
silent skip, and never a message the new master acknowledged.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from rrr import client as rrr_client

from rrr.backplane import keys
from rrr.backplane.history import publish_args
from rrr.backplane.scripts import HISTORY_PUBLISH
from rrr.backplane.clients import make_redis, parse_cluster_url
from support.clients import Client, connect, signed_in, wait_until
from support.cluster import NODE_TIMEOUT_MS, RedisCluster
from support.processes import AppProcess
from support.servers import Server, ServerFactory
from support.transports import PollClient, SseClient, post, request, sessions_of


pytestmark = pytest.mark.gen_test(timeout=120)

TTL = 3.0
KEY = "cluster-key"
SECRET = "cluster-test-secret-of-decent-length"


@pytest.fixture
def cluster(redis_cluster: RedisCluster) -> RedisCluster:
    """The module's cluster, whole (every node up, every replica linked) and empty."""
    redis_cluster.wait_healthy()
    redis_cluster.flush()
    return redis_cluster


def rooms_on_every_shard(cluster: RedisCluster, prefix: str) -> list[str]:
    """One room per master (by the slot of its hash tag)."""
    by_master: dict[int, str] = {}
    i = 0
    while len(by_master) < 3:
        room = f"{prefix}{i}"
        by_master.setdefault(cluster.master_of(keys.presence(room)), room)
        i += 1
    return list(by_master.values())


def token(sub: str, rooms: list[str]) -> str:
    now = time.time()
    return jwt.encode({"sub": sub, "iat": int(now), "exp": now + 600, "rooms": rooms}, SECRET, algorithm="HS256")


async def start(server_factory: ServerFactory, cluster: RedisCluster, **options: Any) -> Server:
    return await server_factory(redis=cluster.url, ttl=TTL, api_token=KEY, token_secret=SECRET, **options)


async def one_on_each(
    server_factory: ServerFactory, cluster: RedisCluster, clients: list[Client], prefix: str,
) -> tuple[Server, Server, list[str], list[Client]]:
    """Two app processes, a room per master, and a socket on each process subscribed to all of them."""
    one, two = await start(server_factory, cluster), await start(server_factory, cluster)
    rooms = rooms_on_every_shard(cluster, prefix)
    subs = [await connect(one.ws_url("/ws/")), await connect(two.ws_url("/ws/"))]
    clients += subs
    for c in subs:
        await subscribe_all(c, rooms)
    return one, two, rooms, subs


async def subscribe_all(c: Client, rooms: list[str], subs: tuple[str, ...] = ("t",)) -> None:
    for room in rooms:
        for sub in subs:
            await c.send(type="subscribe", room=room, sub=sub)
    for room in rooms:
        for sub in subs:
            await wait_until(lambda: any(f["room"] == room and f["sub"] == sub for f in c.of_type("subscribed")),
                             what=f"subscribed to {room}/{sub}")


async def ada_and_bob_in(team: str, ada_on: Server, bob_on: Server, clients: list[Client]) -> tuple[Client, Client]:
    """ada (a socket on ``ada_on``) and bob (on ``bob_on``), each signed in with a grant to the presence room
    ``team`` and subscribed to it."""
    signed = []
    for user, server in (("ada", ada_on), ("bob", bob_on)):
        c = await signed_in(server.ws_url("/ws/"), token(user, [team]), clients)
        await subscribe_all(c, [team])
        signed.append(c)
    return signed[0], signed[1]


async def api(server: Server, path: str, method: str = "GET", body: str | None = None) -> Any:
    r = await AsyncHTTPClient().fetch(server.base_url + path, method=method, body=body,
                                      headers={"Authorization": f"Bearer {KEY}"})
    return json.loads(r.body)


def offsets_in(c: Client, room: str) -> list[tuple[int, Any]]:
    return [(m["offset"], m["data"]) for m in c.of_type("message") if m["room"] == room and "offset" in m]


def same_items(a: list[Any], b: list[Any]) -> bool:
    return sorted(map(json.dumps, a)) == sorted(map(json.dumps, b))


def data_in(c: Client, room: str) -> list[Any]:
    return [m["data"] for m in c.of_type("message") if m["room"] == room]


async def test_two_processes_agree_on_counts_and_members_in_rooms_on_every_shard(
    cluster: RedisCluster, server_factory: ServerFactory, clients: list[Client],
) -> None:
    one, two = await start(server_factory, cluster), await start(server_factory, cluster)
    rooms = rooms_on_every_shard(cluster, "count")
    a = await connect(one.ws_url("/ws/"))
    b = [await connect(two.ws_url("/ws/")) for _ in range(2)]
    clients += [a, *b]
    await subscribe_all(a, rooms)
    for c in b:
        await subscribe_all(c, rooms, ("x", "y"))
    for room in rooms:
        for c in [a, *b]:
            await c.settles_on(3, 5, room=room)
        assert (await api(one, f"/api/rooms/{room}"))["connections"] == 3
        assert (await api(two, f"/api/rooms/{room}"))["tabs"] == 5
    a.close()
    for room in rooms:
        for c in b:
            await c.settles_on(2, 4, room=room)

    # Leaving and joining again at once (a reload) keeps the sharded subscriptions as they are.
    churn = await connect(one.ws_url("/ws/"))
    clients.append(churn)
    for pause in (0, 0.0005, 0.001, 0.002, 0.005):  # 60 frames: within --message-burst
        for room in rooms:
            await churn.send(type="subscribe", room=room, sub="c")
        await asyncio.sleep(0.02)
        for room in rooms:
            await churn.send(type="unsubscribe", room=room, sub="c")
        await asyncio.sleep(pause)
        for room in rooms:
            await churn.send(type="subscribe", room=room, sub="c")
        await asyncio.sleep(0.02)
        for room in rooms:
            await churn.send(type="unsubscribe", room=room, sub="c")
    await subscribe_all(churn, rooms, ("d",))
    for room in rooms:
        for c in b:
            await c.settles_on(3, 5, room=room)
    assert one.metric("rrr_redis_reconnects_total") == 0

    # A presence room's members, through both processes.
    team = "presence-team"
    await ada_and_bob_in(team, one, two, clients)
    for server in (one, two):
        await wait_until(
            lambda: _members_are(server, team, {"ada", "bob"}), what=f"ada and bob on {server.port}",
        )


async def _members_are(server: Server, room: str, users: set[str]) -> bool:
    body = await api(server, f"/api/rooms/{room}/members")
    members = body["members"]
    names = set(members) if isinstance(members, dict) else {m.get("user", m.get("id")) for m in members}
    return names == users


async def test_api_helper_raw_and_sharded_publishes_reach_every_subscriber(
    cluster: RedisCluster, server_factory: ServerFactory, clients: list[Client],
) -> None:
    one, two, rooms, subs = await one_on_each(server_factory, cluster, clients, "relay")
    expected: dict[str, list[Any]] = {}
    for room in rooms:
        published = await api(one, f"/api/rooms/{room}/messages", "POST", json.dumps({"via": "api", "room": room}))
        assert published["offset"] >= 1
        offset = await asyncio.to_thread(rrr_client.publish, room, {"via": "helper"}, redis_url=cluster.url)
        assert offset == published["offset"] + 1
        assert await rrr_client.apublish(room, {"via": "async helper"}, redis_url=cluster.url) == offset + 1
        master = cluster.node(cluster.master_of(keys.presence(room)))
        # The documented raw path (classic PUBLISH, on any node) and the shard channel.
        cluster.node(cluster.masters()[0]).publish(keys.room_channel(room), json.dumps({"via": "raw"}))
        master.execute_command("SPUBLISH", keys.shard_room_channel(room), json.dumps({"via": "spublish"}))
        expected[room] = [
            {"via": "api", "room": room}, {"via": "helper"}, {"via": "async helper"}, {"via": "raw"},
            {"via": "spublish"},
        ]
    # A process with history off publishes live with SPUBLISH on the room's shard channel.
    plain = await start(server_factory, cluster, history_size=0)
    for room in rooms:
        assert await api(plain, f"/api/rooms/{room}/messages", "POST", json.dumps({"via": "plain"})) == {
            "room": room, "processes": 2,
        }
        expected[room].append({"via": "plain"})
    for c in subs:
        for room in rooms:
            # In order on each path; the classic and the sharded connections are not ordered together.
            await wait_until(lambda: same_items(data_in(c, room), expected[room]), what=f"every message in {room}")
            assert [d for d in data_in(c, room) if d in expected[room][:3]] == expected[room][:3]
        stored = [m for m in c.of_type("message") if "offset" in m]
        assert len(stored) == 3 * len(rooms)


async def test_a_burst_beyond_a_nodes_pool_waits_for_a_free_connection_instead_of_failing(
    cluster: RedisCluster,
) -> None:
    """redis-py's cluster nodes refuse a command at once (an empty ``MaxConnectionsError``) when all
    their connections are busy; rrr's client waits for one, as its classic and Sentinel pools do: a
    drain's or a worker kill's sessions all coming back at once must not fail calls never sent (#27)."""
    client = make_redis(cluster.url, timeout=5, max_connections=2)
    busy = ("local s = redis.call('TIME') repeat local n = redis.call('TIME') "
            "until (n[1] - s[1]) * 1000000 + (n[2] - s[2]) > 100000 return 1")
    try:
        # Each call holds one of the node's two connections for 0.1 s or more: eight take turns.
        replies = await asyncio.gather(
            *(client.execute_command("EVAL", busy, 1, "rrr:{burst}:k") for _ in range(8)), return_exceptions=True,
        )
        assert replies == [1] * 8
    finally:
        await client.aclose()


async def test_the_cluster_url_is_parsed() -> None:
    parsed = parse_cluster_url("redis+cluster://rrr:p%40ss@10.0.0.1:7000,[::1]:7001,host")
    assert parsed.nodes == (("10.0.0.1", 7000), ("::1", 7001), ("host", 6379))
    assert (parsed.username, parsed.password, parsed.ssl) == ("rrr", "p@ss", False)
    assert parse_cluster_url("rediss+cluster://h:1/").ssl
    for bad in ("redis+cluster://", "redis+cluster://h:1/3", "redis://h:1", "redis+cluster://h:x"):
        with pytest.raises(ValueError):
            parse_cluster_url(bad)


async def test_revocation_reaches_sockets_on_both_processes(
    cluster: RedisCluster, server_factory: ServerFactory, clients: list[Client],
) -> None:
    one, two = await start(server_factory, cluster), await start(server_factory, cluster)
    ada = [await connect(one.ws_url("/ws/")), await connect(two.ws_url("/ws/"))]
    bob = await connect(two.ws_url("/ws/"))
    clients += [*ada, bob]
    for c in ada:
        await c.send(type="auth", token=token("ada", ["private-ada-x"]))
    await bob.send(type="auth", token=token("bob", []))
    for c in [*ada, bob]:
        await c.next("authenticated", after=0)
    await api(one, "/api/users/ada/disconnect", "POST", "")
    for c in ada:
        await asyncio.wait_for(c.closed.wait(), 10)
        assert c.close_code == 4001
    assert not bob.closed.is_set()


async def test_a_killed_process_leaves_every_count_within_the_ttl(
    cluster: RedisCluster, server_factory: ServerFactory, app_factory: Callable[..., AppProcess],
    clients: list[Client],
) -> None:
    survivor = await start(server_factory, cluster)
    victim = await asyncio.to_thread(app_factory, redis_url=cluster.url, presence_ttl=TTL, count_interval=0.05)
    rooms = rooms_on_every_shard(cluster, "kill")
    mine = await connect(survivor.ws_url("/ws/"))
    theirs = [await connect(f"ws://127.0.0.1:{victim.port}/ws/") for _ in range(2)]
    clients += [mine, *theirs]
    for c in [mine, *theirs]:
        await subscribe_all(c, rooms)
    for room in rooms:
        await mine.settles_on(3, 3, room=room)
    killed_at = time.monotonic()
    victim.kill()
    bound = TTL + TTL / 3 + 0.05
    for room in rooms:
        await mine.settles_on(1, 1, room=room, timeout=bound + 5)
    took = time.monotonic() - killed_at
    assert 0.5 < took < bound + 2, took
    for room in rooms:
        assert (await api(survivor, f"/api/rooms/{room}"))["connections"] == 1


async def test_a_killed_master_is_followed_and_nothing_stored_is_lost(
    cluster: RedisCluster, server_factory: ServerFactory, clients: list[Client],
) -> None:
    one, two, rooms, subs = await one_on_each(server_factory, cluster, clients, "fail")
    for room in rooms:
        for c in subs:
            await c.settles_on(2, 2, room=room)

    accepted: dict[str, list[int]] = {room: [] for room in rooms}
    stop = asyncio.Event()

    async def publish_all_along() -> None:
        i = 0
        while not stop.is_set():
            for room in rooms:
                try:
                    r = await api(one, f"/api/rooms/{room}/messages", "POST", json.dumps({"i": i}))
                    accepted[room].append(r["offset"])
                except (HTTPClientError, OSError):
                    pass  # 503/504 while the shard has no master: not stored, or not known to be
            i += 1
            await asyncio.sleep(0.15)

    publisher = asyncio.ensure_future(publish_all_along())
    victim_room = rooms[0]
    victim = cluster.master_of(keys.presence(victim_room))
    try:
        await wait_until(lambda: all(len(v) >= 3 for v in accepted.values()), what="messages before the kill")
        killed_at = time.monotonic()
        cluster.kill(victim)
        bound = NODE_TIMEOUT_MS / 1000 + 5
        # The other shards keep delivering while this one has no master, live messages too.
        await wait_until(lambda: not (one.service.subscriber.synced or two.service.subscriber.synced),
                         what="both processes noticed")
        healthy = rooms[1]
        cluster.node(cluster.master_of(keys.presence(healthy))).execute_command(
            "SPUBLISH", keys.shard_room_channel(healthy), json.dumps({"live": "during the failover"}))
        for c in subs:
            await wait_until(lambda: {"live": "during the failover"} in data_in(c, healthy),
                             timeout=NODE_TIMEOUT_MS / 1000, what="a live message on a healthy shard meanwhile")
        assert cluster.master_of(keys.presence(victim_room)) == victim  # not failed over yet
        # Someone joins the dead shard's room while it has no master: counted once it has one.
        late = await connect(two.ws_url("/ws/"))
        clients.append(late)
        await late.send(type="subscribe", room=victim_room, sub="t")

        def resumed() -> bool:
            after = [o for o in accepted[victim_room] if o > 0]
            n = len(after)
            return n > 0 and cluster.master_of(keys.presence(victim_room)) != victim and all(
                any(m.get("offset") == after[-1] for m in c.of_type("message") if m["room"] == victim_room)
                for c in subs
            ) and n >= 2

        offsets_at_kill = len(accepted[victim_room])
        await wait_until(lambda: len(accepted[victim_room]) > offsets_at_kill + 1 and resumed(),
                         timeout=bound, what="delivery on the failed-over shard")
        for c in [*subs, late]:
            await c.settles_on(3, 3, room=victim_room, timeout=max(0.1, killed_at + bound - time.monotonic()))
        for room in rooms:
            n = 3 if room == victim_room else 2
            for server in (one, two):
                state = await api(server, f"/api/rooms/{room}")
                assert (state["connections"], state["tabs"]) == (n, n), (room, state)
        took = time.monotonic() - killed_at
        assert took < bound, took
        print(f"failover followed in {took:.2f} s")
        await asyncio.sleep(0.5)
    finally:
        stop.set()
        await publisher
        cluster.restart(victim)

    # Every message the history holds reached every subscriber exactly once, in order.
    for room in rooms:
        stored = (await api(one, f"/api/rooms/{room}/messages?since=0"))["messages"]
        assert stored and len(stored) < 100
        for c in subs:
            await wait_until(
                lambda: {m["offset"] for m in stored} <= {o for o, _ in offsets_in(c, room)},
                what=f"every stored message of {room}",
            )
            got = offsets_in(c, room)
            offsets = [o for o, _ in got]
            assert offsets == sorted(set(offsets)), f"{room}: duplicated or out of order: {offsets}"
            assert {(m["offset"], json.dumps(m["data"])) for m in stored} <= {(o, json.dumps(d)) for o, d in got}


async def test_a_sessions_requests_landing_on_the_other_process_are_handed_over_on_a_cluster(
    server_factory: ServerFactory, cluster: RedisCluster, streams: list[SseClient | PollClient],
) -> None:
    """The handoff's inbox is classic pub/sub, which a cluster spreads to every node (docs/guides/transports.md)."""
    owner, other = await start(server_factory, cluster, poll_timeout=5), await start(server_factory, cluster)
    s = await SseClient.open(owner.base_url)
    streams.append(s)
    await s.started()
    for room in rooms_on_every_shard(cluster, "handed"):
        assert (await post(other.base_url, "sse", s.session, {"type": "subscribe", "room": room, "sub": "t"})
                ).status == 202
    await wait_until(lambda: len(s.of_type("subscribed")) == 3, what="three subscriptions through the other")
    p = await PollClient.open(owner.base_url, poll=False)
    streams.append(p)
    p.base = other.base_url
    assert (await p.send(type="ping")).status == 202
    assert (await p.poll_once()).json() == {"seq": 1, "frames": [{"type": "pong"}]}
    assert other.metric("rrr_handoffs_total", {"op": "post", "result": "202"}) == 4
    assert other.metric("rrr_handoffs_total", {"op": "poll", "result": "200"}) == 1


async def test_a_killed_processs_sessions_are_404_through_the_survivor_once_its_presence_expired(
    cluster: RedisCluster, app_factory: Callable[..., AppProcess], streams: list[SseClient | PollClient],
    clients: list[Client],
) -> None:
    """On a cluster PUBLISH cannot tell that nobody listens on a killed process's inbox; its liveness
    key, gone within the presence TTL, does: the survivor answers 404 at once (the library opens a
    new session) instead of a 503 after the handoff's timeout."""
    victim = await asyncio.to_thread(app_factory, redis_url=cluster.url, presence_ttl=TTL, poll_timeout=5)
    survivor = await asyncio.to_thread(app_factory, redis_url=cluster.url, presence_ttl=TTL, poll_timeout=5)
    s, p, watcher = await sessions_of(victim.base_url, survivor.base_url, "k9", streams, clients)
    alive = keys.alive(p.session[:8])
    shard = cluster.node(cluster.master_of(alive))
    victim.kill()
    await watcher.settles_on(1, timeout=TTL + 20)
    await wait_until(lambda: not shard.exists(alive), timeout=TTL + 20, what="the victim's liveness key expired")
    # Generous timeouts: without the liveness key these wait out the handoff (about 9 s, 14 s) for a 503.
    posted = await post(survivor.base_url, "sse", s.session, {"type": "ping"}, timeout=60)
    assert (posted.status, posted.json()["error"]) == (404, "unknown session")
    polled = await request(f"{survivor.base_url}/poll/{p.session}/?seq={p.seq}", timeout=60)
    assert (polled.status, polled.json()["error"]) == (404, "unknown session")


async def test_a_processs_liveness_key_is_renewed_while_it_lives_and_deleted_when_it_stops(
    cluster: RedisCluster, app_factory: Callable[..., AppProcess], streams: list[SseClient | PollClient],
) -> None:
    app = await asyncio.to_thread(app_factory, redis_url=cluster.url, presence_ttl=TTL)
    p = await PollClient.open(app.base_url, poll=False)
    streams.append(p)
    alive = keys.alive(p.session[:8])
    shard = cluster.node(cluster.master_of(alive))
    first = shard.pttl(alive)
    assert 0 < first <= TTL * 1000
    await wait_until(lambda: shard.pttl(alive) > first, timeout=TTL + 10, what="the key renewed")
    assert await asyncio.to_thread(app.stop) == 0
    assert shard.exists(alive) == 0


async def test_a_member_whose_removal_the_cluster_lost_goes_after_a_reconnect(
    cluster: RedisCluster, server_factory: ServerFactory, clients: list[Client],
) -> None:
    """A failover can lose a removal the old master confirmed (the soak saw a member listed for good
    after a master's SIGSTOP): the subscriber's reconnect makes the process rewrite its members in the
    room whole, and the field the shard kept goes."""
    server = await start(server_factory, cluster, vacate_delay=0.1)
    team = "presence-lost"
    _ada, bob = await ada_and_bob_in(team, server, server, clients)
    shard = cluster.node(cluster.master_of(keys.members(team)))
    await wait_until(lambda: len(shard.hkeys(keys.members(team))) == 2, what="both members written")
    fields = shard.hgetall(keys.members(team))
    bob.close()

    async def listed() -> set[str]:
        return set((await api(server, f"/api/rooms/{team}/members"))["members"])

    await wait_until(lambda: len(shard.hkeys(keys.members(team))) == 1, what="bob removed")
    for field, info in fields.items():  # the shard as it was before bob's removal
        shard.hset(keys.members(team), field, info)
    assert await listed() == {"ada", "bob"}
    for port in cluster.masters():
        cluster.node(port).client_kill_filter(_type="pubsub")
    await wait_until(lambda: len(shard.hkeys(keys.members(team))) == 1, timeout=30, what="bob's field gone")
    assert await listed() == {"ada"}


def resp(*args: Any) -> bytes:
    """One command as a client sends it (RESP array of bulk strings)."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


async def test_a_stopped_master_that_publishes_after_its_replica_took_over_makes_a_new_epoch_not_a_silent_skip(
    cluster: RedisCluster, server_factory: ServerFactory, clients: list[Client],
) -> None:
    """The soak's silent loss (#27), on a real cluster. A master is SIGSTOPped with a publish of X
    unread in its socket (what a client that gave up on it leaves behind); its replica takes over
    and stores Y at the same offset. At SIGCONT the old master runs X as master and SPUBLISHes it to
    the process still linked to it, then steps down and flushes X. The process then catches up from
    the offset X had: the room holds Y there. Its socket must get Y or ``recovered: false``, never
    neither; and Y, whose publish the new master acknowledged, stays readable under a new epoch."""
    room = "stalled"
    # A long keepalive: the link to the stopped master must still be up when it wakes.
    server = await start(server_factory, cluster, pubsub_keepalive=30.0)
    c = await connect(server.ws_url("/ws/"))
    clients.append(c)
    await subscribe_all(c, [room])
    epoch = c.of_type("subscribed")[-1]["epoch"]
    for i in (1, 2, 3):
        await api(server, f"/api/rooms/{room}/messages", "POST", json.dumps(f"before {i}"))
    await wait_until(lambda: [o for o, _ in offsets_in(c, room)] == [1, 2, 3], what="1..3")
    assert cluster.replicated(keys.meta(room))
    master = cluster.master_of(keys.meta(room))
    replica = cluster.replica_of(master)

    k, a = publish_args(room, json.dumps("X"), 100, 300.0, own=False, sharded=True)
    queued = resp("EVAL", HISTORY_PUBLISH, len(k), *k, *a)
    raw = socket.create_connection(("127.0.0.1", master), timeout=30)
    loop = asyncio.get_running_loop()
    try:
        raw.sendall(resp("PING"))
        assert raw.recv(100) == b"+PONG\r\n"  # accepted: its socket is one the master already watches
        cluster.pause(master)
        try:
            raw.sendall(queued)  # unread until SIGCONT: read before the failover's bus messages
            promoted = cluster.node(replica)
            promoted.execute_command("CLUSTER", "FAILOVER", "TAKEOVER")
            await wait_until(lambda: cluster.info(replica, "replication").get("role") == "master",
                             timeout=30, what="the replica promoted")
            k, a = publish_args(room, json.dumps("Y"), 100, 300.0, own=False, sharded=True)
            y = promoted.eval(HISTORY_PUBLISH, len(k), *k, *a)
            assert y[0] == 4 and y[1].decode() == epoch, y
        finally:
            cluster.pause(master, False)
        # The old master's answer to X: it ran as master, at the same offset as Y.
        ran = await loop.run_in_executor(None, raw.recv, 200)
        assert ran.startswith(b"*3\r\n:4\r\n"), f"the old master did not run X as master: {ran!r}"
    finally:
        raw.close()

    await wait_until(lambda: ("X" in data_in(c, room)), timeout=30, what="X, live from the old master")
    await loop.run_in_executor(None, cluster.wait_healthy, 60.0)
    z = None
    for _ in range(100):  # the process's cluster client finds the new master
        try:
            z = await api(server, f"/api/rooms/{room}/messages", "POST", json.dumps("Z"))
            break
        except HTTPClientError:
            await asyncio.sleep(0.3)
    assert z is not None
    # Offsets go on whatever the epoch: Y has 4, so Z has 5.
    assert z["offset"] == 5, z

    def resets() -> list[dict[str, Any]]:
        return [f for f in c.frames if f.get("room") == room and f["type"] == "subscribed"
                and f["recovered"] is False and f["epoch"] != epoch]

    # Z live, or (stored before the catch-up started the new epoch) covered by the reset.
    await wait_until(lambda: "Z" in data_in(c, room) or any(f["offset"] >= 5 for f in resets()), timeout=30,
                     what="Z")
    frames = [f for f in c.frames if f.get("room") == room and f["type"] in ("message", "subscribed")]
    reset = resets()
    assert "Y" in data_in(c, room) or reset, (
        f"Y (stored at 4 of {epoch}) never delivered and no recovered: false: {frames}")
    if reset:
        # Y was acknowledged (its offset answered): the new epoch keeps it, and everything before it.
        new = reset[-1]["epoch"]
        assert z["epoch"] in (epoch, new) and "Y" not in data_in(c, room)
        read = await api(server, f"/api/rooms/{room}/messages?since=0&epoch={new}")
        assert read["recovered"] is True and [(m["offset"], m["data"]) for m in read["messages"]] == [
            (1, "before 1"), (2, "before 2"), (3, "before 3"), (4, "Y"), (5, "Z")], read
    print("delivered:", [(f["type"], f.get("offset"), f.get("data", f.get("recovered"))) for f in frames])
