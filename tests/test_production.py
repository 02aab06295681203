"""Production shape: several ``app.py`` processes on one Redis behind a real nginx.

Every test runs real processes on loopback (nginx rendered by ``deploy/render.py``,
app.py, redis-server, redis-sentinel) and checks what a user would see: exact
counts on every socket, relay across processes, and the faults of deploy/README.md.
Waits poll with generous timeouts; the few deliberate pauses are the scenario
itself (a stall, an idle period), never the assertion.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import redis
import tornado.httpserver
import tornado.testing
import tornado.web
import tornado.websocket
from tornado.httpclient import HTTPClientError

from rrr.auth import mint
from rrr.backplane.embedded import EmbeddedRedis, die_with_parent
from support.clients import Client, wait_until
from support.processes import ROOT, free_port, need_binary
from support.production import (
    Cluster, Nginx, Script, SentinelGroup, abort, connect_many, http, port_open, wait_sync, ws_connect,
)


pytestmark = [pytest.mark.nginx, pytest.mark.slow]


# -- helpers ---------------------------------------------------------------------


def note(what: str, **numbers: object) -> None:
    """Timings worth reading in the output (pytest -s, or -rA): what the faults cost."""
    parts = [f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in numbers.items()]
    print(f"[production] {what}: " + ", ".join(parts))


async def settle_all(clients: list[Client], connections: int, tabs: int | None = None, timeout: float = 20.0,
                     room: str | None = None) -> None:
    """Every client's latest count frame is exactly ``connections`` (and ``tabs``)."""
    deadline = time.monotonic() + timeout
    for c in clients:
        left = max(0.5, deadline - time.monotonic())
        await c.settles_on(connections, tabs if tabs is not None else connections, room=room, timeout=left)


async def room_is(cluster: Cluster, room: str, connections: int, timeout: float = 20.0) -> None:
    async def ok() -> bool:
        r = await http(f"{cluster.nginx.base_url}/api/rooms/{room}")
        return r.code == 200 and json.loads(r.body)["connections"] == connections

    await wait_until(ok, timeout, what=f"GET /api/rooms/{room} == {connections}")


def messages(c: Client) -> list[object]:
    return [f["data"] for f in c.of_type("message")]


async def all_got(clients: list[Client], expected: Sequence[object], timeout: float = 15.0) -> None:
    await wait_until(lambda: all(messages(c) == expected for c in clients), timeout,
                     what=f"every client to receive exactly {expected}")


async def relay_ready(redis_url: str, room: str, processes: int, timeout: float = 20.0) -> None:
    """Every live process has (re)subscribed to the room's channel."""
    r = redis.Redis.from_url(redis_url)
    try:
        def subscribed() -> bool:
            try:
                return dict(r.pubsub_numsub(f"rrr:room:{room}")).get(f"rrr:room:{room}".encode(), 0) >= processes
            except redis.RedisError:
                return False
        await wait_until(subscribed, timeout, what=f"{processes} processes subscribed to rrr:room:{room}")
    finally:
        r.close()


async def open_in_rooms(cluster: Cluster, sizes: dict[str, int], into: list[Client]) -> dict[str, list[Client]]:
    by_room = {}
    for room, n in sizes.items():
        by_room[room] = await connect_many(cluster.ws_url(f"/ws/count/{room}/"), n, origin=cluster.origin, into=into)
    return by_room


# -- nginx in front of three processes --------------------------------------------


@pytest.mark.gen_test(timeout=240)
async def test_300_clients_through_nginx_see_exact_counts_and_every_message(
    redis_url: str, cluster_factory: Callable[..., Cluster], ws_clients: list[Client]
) -> None:
    cluster = cluster_factory(redis_url, n=3)
    sizes = {"r-a": 10, "r-b": 25, "r-c": 40, "r-d": 55, "r-e": 70, "r-f": 100}
    by_room = await open_in_rooms(cluster, sizes, ws_clients)
    assert len(ws_clients) == 300

    open_sockets = await cluster.open_sockets()
    assert sum(open_sockets) == 300, open_sockets
    assert all(n > 0 for n in open_sockets), f"nginx did not spread sockets over every process: {open_sockets}"

    for room, members in by_room.items():
        await settle_all(members, sizes[room], timeout=30)
        await room_is(cluster, room, sizes[room])
    # No socket ever saw a count above its room's true size (nothing double-counted on the way up).
    for room, members in by_room.items():
        seen = {f["connections"] for c in members for f in c.counts(room)}
        assert max(seen) == sizes[room] and min(seen) >= 1, (room, sorted(seen))

    # A message published on any process, or straight into Redis, reaches every subscriber on every process.
    expected: dict[str, list[object]] = {room: [] for room in sizes}
    for i, app in enumerate(cluster.apps):
        for room in sizes:
            assert await cluster.publish(app, room, {"via": i, "room": room}) >= 1
            expected[room].append({"via": i, "room": room})
    r = redis.Redis.from_url(redis_url)
    for room in sizes:
        assert r.publish(f"rrr:room:{room}", json.dumps({"via": "redis", "room": room})) == 3
        expected[room].append({"via": "redis", "room": room})
    r.close()
    for room, members in by_room.items():
        await all_got(members, expected[room])


@pytest.mark.gen_test(timeout=120)
async def test_same_origin_foreign_origin_static_files_and_real_client_ip(
    redis_url: str, cluster_factory: Callable[..., Cluster], ws_clients: list[Client]
) -> None:
    cluster = cluster_factory(redis_url, n=2)
    front = cluster.nginx
    spoof = {"X-Real-IP": "6.6.6.6", "X-Forwarded-For": "6.6.6.6", "X-Forwarded-Host": "evil.example"}

    page = await http(f"{front.base_url}/count/viaNginx/", headers=spoof)
    assert page.code == 200 and b"viaNginx" in page.body
    scripts = re.findall(rb'src="(/static/[^"]+)"', page.body)
    assert scripts, "the page links no /static/ script"
    for src in scripts:
        asset = await http(front.base_url + src.decode())
        assert asset.code == 200 and asset.headers["Content-Type"].startswith("text/javascript"), src

    # Same origin through nginx: the browser's Origin is nginx's host:port, which nginx passes as Host.
    ok = await ws_connect(front.ws_url("/ws/count/viaNginx/"), origin=front.origin, headers=spoof)
    ws_clients.append(ok)
    await ok.settles_on(1, 1)
    # Foreign origins are refused before the upgrade: another site, another port, another host name.
    for origin in ("http://evil.example", f"http://127.0.0.1:{cluster.apps[0].port}", f"http://localhost:{front.port}"):
        with pytest.raises(HTTPClientError) as refused:
            await ws_connect(front.ws_url("/ws/count/viaNginx/"), origin=origin)
        assert refused.value.code == 403, origin

    # Control: straight to an app (with --xheaders) the spoofed header IS believed; nginx must overwrite it.
    direct = await http(f"{cluster.apps[0].base_url}/count/directHit/", headers={"X-Real-IP": "6.6.6.6"})
    assert direct.code == 200

    def logs() -> str:
        return "".join(a.log() for a in cluster.apps)

    await wait_until(lambda: "/count/directHit/ (6.6.6.6)" in logs(), 10, what="the control request in the log")
    await wait_until(lambda: "101 GET /ws/count/viaNginx/ (127.0.0.1)" in logs(), 10, what="the WS upgrade log line")
    text = logs()
    assert "GET /count/viaNginx/ (127.0.0.1)" in text
    via_nginx = [line for line in text.splitlines() if "viaNginx" in line]
    assert via_nginx and not any("6.6.6.6" in line for line in via_nginx), via_nginx
    assert "GET /static/" not in text, "static files should be served by nginx, not the app"


@pytest.mark.gen_test(timeout=60)
async def test_no_token_and_no_long_path_in_the_nginx_or_app_logs(
    redis_url: str, cluster_factory: Callable[..., Cluster], ws_clients: list[Client]
) -> None:
    """The one-room socket takes its token as ``?token=``: nginx's access log (its format) and the
    app's lines (rrr/edge/requestlog.py) show the path only, cut to 200 characters."""
    secret = "production-logs-secret-of-decent-length"
    cluster = cluster_factory(redis_url, n=1, token_secret=secret, log_level="debug")
    front = cluster.nginx
    good = mint("ada", secret=secret, rooms=["private-ada"])
    ok = await ws_connect(front.ws_url(f"/ws/count/private-ada/?token={good}"), origin=front.origin)
    ws_clients.append(ok)
    await ok.settles_on(1, 1)
    with pytest.raises(HTTPClientError) as refused:
        await ws_connect(front.ws_url(f"/ws/count/private-ada/?token={good}x"), origin=front.origin)
    assert refused.value.code == 403
    long_path = "/" + "a" * 6000
    assert (await http(f"{front.base_url}{long_path}?token={good}")).code == 404
    ok.close()  # nginx logs a WebSocket when it ends

    access = front.run_dir / "logs" / "access.log"
    await wait_until(lambda: access.exists() and access.read_text().count("\n") >= 3, 10,
                     what="three requests in nginx's access log")
    texts = {"nginx access.log": access.read_text(), "app": cluster.apps[0].log()}
    if front.error_log_path.exists():
        texts["nginx error.log"] = front.error_log_path.read_text()
    for name, text in texts.items():
        assert good not in text and "token=" not in text, f"{name}:\n{text[-3000:]}"
        longest = max(len(line) for line in text.splitlines())
        assert longest < 1000, f"{name}: a line of {longest} characters"
    assert '"GET /ws/count/private-ada/ HTTP/1.1" 101' in texts["nginx access.log"]
    assert f'"GET /{"a" * 199} HTTP/1.1" 404' in texts["nginx access.log"]


class _EchoHeaders(tornado.web.RequestHandler):
    def get(self, _: str) -> None:
        self.finish({k: v for k, v in self.request.headers.get_all()})


class _EchoHeadersSocket(tornado.websocket.WebSocketHandler):
    def check_origin(self, origin: str) -> bool:
        return True

    def open(self) -> None:
        self.write_message(json.dumps({k: v for k, v in self.request.headers.get_all()}))


@pytest.mark.gen_test(timeout=60)
async def test_nginx_sends_the_app_the_headers_it_relies_on(nginx_factory: Callable[..., Nginx]) -> None:
    """What the upstream really receives, spoofed headers and all (an echo server stands in for app.py)."""
    app = tornado.web.Application([(r"/ws/echo", _EchoHeadersSocket), (r"/(.*)", _EchoHeaders)])
    sock, port = tornado.testing.bind_unused_port()
    server = tornado.httpserver.HTTPServer(app, xheaders=False)
    server.add_sockets([sock])
    try:
        front = nginx_factory([port])
        host = f"127.0.0.1:{front.port}"
        spoof = {"X-Real-IP": "6.6.6.6", "X-Forwarded-For": "6.6.6.6, 7.7.7.7", "X-Forwarded-Host": "evil.example",
                 "X-Forwarded-Proto": "https"}
        r = await http(f"{front.base_url}/page", headers=spoof)
        seen = json.loads(r.body)
        assert seen["Host"] == host, "Host must keep the port, or same-origin checks fail behind nginx"
        assert seen["X-Forwarded-Host"] == host
        assert seen["X-Real-Ip"] == "127.0.0.1"
        assert seen["X-Forwarded-For"] == "127.0.0.1", "overwritten, not appended to the client's value"
        assert seen["X-Forwarded-Proto"] == "http"
        assert seen.get("Connection", "") in ("", "keep-alive"), seen.get("Connection")

        ws = await ws_connect(front.ws_url("/ws/echo"), origin=front.origin, headers=spoof)
        try:
            upgrade = (await wait_until(lambda: ws.frames, 10, what="the echoed upgrade headers"))[0]
        finally:
            ws.close()
            await asyncio.wait([ws._reader], timeout=5)
        assert upgrade["Host"] == host and upgrade["Origin"] == front.origin
        assert upgrade["X-Real-Ip"] == upgrade["X-Forwarded-For"] == "127.0.0.1"
        assert upgrade["Upgrade"].lower() == "websocket" and upgrade["Connection"].lower() == "upgrade"
    finally:
        server.stop()


@pytest.mark.gen_test(timeout=60)
async def test_limit_conn_caps_websockets_per_client_ip(
    redis_url: str, cluster_factory: Callable[..., Cluster], ws_clients: list[Client]
) -> None:
    cluster = cluster_factory(redis_url, n=1, nginx={"limit_conn": 5})
    url = cluster.ws_url("/ws/count/capped/")
    five = await connect_many(url, 5, origin=cluster.origin, into=ws_clients)
    await settle_all(five, 5)
    with pytest.raises(HTTPClientError) as refused:
        await ws_connect(url, origin=cluster.origin)
    assert refused.value.code == 429
    five[0].close()
    await settle_all(five[1:], 4)

    async def one_more() -> Client | None:
        try:
            return await ws_connect(url, origin=cluster.origin)
        except HTTPClientError:
            return None  # nginx may not have seen the close yet

    again = await wait_until(one_more, 10, what="a free slot after one socket closed")
    ws_clients.append(again)
    await again.settles_on(5, 5)


# -- faults of one app process ------------------------------------------------------


@pytest.mark.gen_test(timeout=120)
async def test_kill_9_one_of_three_survivors_converge_within_the_ttl(
    redis_url: str, cluster_factory: Callable[..., Cluster], ws_clients: list[Client]
) -> None:
    ttl = 2.0
    cluster = cluster_factory(redis_url, n=3, presence_ttl=ttl)
    room, total = "killed", 30
    members = await connect_many(cluster.ws_url(f"/ws/count/{room}/"), total, origin=cluster.origin, into=ws_clients)
    await settle_all(members, total)
    held = await cluster.open_sockets()
    assert sum(held) == total and all(n > 0 for n in held), held
    victim, lost = cluster.apps[0], int(held[0])
    survivors_count = total - lost
    marks = {id(c): len(c.frames) for c in members}

    killed_at = time.monotonic()
    victim.kill()  # SIGKILL: no chance to remove its presence; only its lease expiry can
    await wait_until(lambda: sum(c.closed.is_set() for c in members) == lost, 10,
                     what=f"the victim's {lost} clients to be disconnected by nginx")
    survivors = [c for c in members if not c.closed.is_set()]
    assert len(survivors) == survivors_count
    await settle_all(survivors, survivors_count, timeout=ttl + 10)
    converged = time.monotonic() - killed_at
    await room_is(cluster, room, survivors_count)
    # Bound: the lease runs out within TTL, the next sweep (every count interval) announces it.
    note("kill -9", ttl=ttl, converged_s=converged, held=held)
    assert converged <= ttl + 2.0, f"took {converged:.2f} s with presence-ttl {ttl}"
    # Never negative, never a partial drop below the truth, never above the old total.
    seen = [f["connections"] for c in survivors for f in c.frames[marks[id(c)]:]
            if f.get("type") == "connection_message"]
    assert all(survivors_count <= n <= total for n in seen), sorted(set(seen))
    assert (await cluster.open_sockets()) == held[1:]


@pytest.mark.gen_test(timeout=120)
async def test_kill_9_of_a_clients_process_it_resumes_on_the_survivor_with_every_message_once(
    redis_url: str, cluster_factory: Callable[..., Cluster], ws_clients: list[Client]
) -> None:
    """Recycle through nginx: while messages are published on the other process, the client's own
    process is killed; it reconnects (to the survivor) with ``since`` and has each message once, in order."""
    cluster = cluster_factory(redis_url, n=2)
    room = "resume"

    async def subscribe(c: Client, **since: object) -> dict[str, object]:
        n = len(c.frames)
        await c.send(type="subscribe", room=room, sub="tab", **({"since": since} if since else {}))
        return await c.next("subscribed", after=n)

    def offsets(c: Client) -> list[int]:
        return [f["offset"] for f in c.of_type("message")]

    first = await ws_connect(cluster.ws_url("/ws/"), origin=cluster.origin)
    ws_clients.append(first)
    epoch = (await subscribe(first))["epoch"]
    held = await cluster.open_sockets()
    victim, survivor = (cluster.apps[0], cluster.apps[1]) if held[0] == 1 else (cluster.apps[1], cluster.apps[0])
    published = 0
    for _ in range(5):
        published = await cluster.publish(survivor, room, {"n": published + 1})
    await wait_until(lambda: offsets(first) == [1, 2, 3, 4, 5], what="offsets 1-5 before the kill")

    done = asyncio.Event()

    async def keep_publishing() -> None:
        nonlocal published
        while not done.is_set():
            published = await cluster.publish(survivor, room, {"n": published + 1})
            await asyncio.sleep(0.02)

    task = asyncio.ensure_future(keep_publishing())
    try:
        await asyncio.sleep(0.3)
        victim.kill()
        await wait_until(lambda: first.closed.is_set(), 10, what="nginx to drop the victim's client")
        seen = offsets(first)
        again = await ws_connect(cluster.ws_url("/ws/"), origin=cluster.origin)
        ws_clients.append(again)
        back = await subscribe(again, offset=seen[-1], epoch=epoch)
        assert back["recovered"] is True and back["epoch"] == epoch
        await asyncio.sleep(0.5)
    finally:
        done.set()
        await task
    await wait_until(lambda: offsets(again)[-1:] == [published], 15, what=f"offset {published} after the resume")
    assert seen + offsets(again) == list(range(1, published + 1))
    got = first.of_type("message") + again.of_type("message")
    assert [f["data"]["n"] for f in got] == list(range(1, published + 1))
    note("resume after kill -9", before=len(seen), replayed=sum("sub" in f for f in again.of_type("message")),
         total=published)


@pytest.mark.gen_test(timeout=120)
async def test_sigterm_one_process_closes_1001_drops_counts_at_once_and_clients_reconnect(
    redis_url: str, cluster_factory: Callable[..., Cluster], ws_clients: list[Client]
) -> None:
    ttl = 30.0  # far longer than the test's bound: the drop must come from the clean shutdown
    cluster = cluster_factory(redis_url, n=3, presence_ttl=ttl)
    room, total = "drained", 30
    url = cluster.ws_url(f"/ws/count/{room}/")
    members = await connect_many(url, total, origin=cluster.origin, into=ws_clients)
    await settle_all(members, total)
    held = await cluster.open_sockets()
    assert all(n > 0 for n in held), held
    leaving, lost = cluster.apps[0], int(held[0])

    t0 = time.monotonic()
    leaving.signal(signal.SIGTERM)
    await wait_until(lambda: sum(c.closed.is_set() for c in members) == lost, 10, what="the drained clients to close")
    closed = [c for c in members if c.closed.is_set()]
    survivors = [c for c in members if not c.closed.is_set()]
    assert {c.close_code for c in closed} == {1001}, Counter(c.close_code for c in closed)
    await settle_all(survivors, total - lost, timeout=10)
    dropped_after = time.monotonic() - t0
    note("SIGTERM", ttl=ttl, dropped_s=dropped_after, held=held)
    assert dropped_after < 5.0 < ttl, f"count dropped after {dropped_after:.2f} s"
    # It exits by itself, cleanly (no second signal: it is already on its way out).
    assert await asyncio.to_thread(leaving.proc.wait, 15) == 0, leaving.log()[-2000:]  # type: ignore[union-attr]
    leaving.proc = None

    # The page reconnects: through nginx, the drained clients land on the two survivors.
    again = await connect_many(url, lost, origin=cluster.origin, into=ws_clients)
    await settle_all(survivors + again, total, timeout=20)
    await room_is(cluster, room, total)
    assert sum(await cluster.open_sockets()) == total


# -- faults of Redis ------------------------------------------------------------------


@pytest.mark.gen_test(timeout=180)
async def test_redis_killed_and_restarted_empty_counts_and_relay_are_rebuilt(
    own_redis: EmbeddedRedis, cluster_factory: Callable[..., Cluster], ws_clients: list[Client]
) -> None:
    cluster = cluster_factory(own_redis.url, n=3, presence_ttl=5, redis_timeout=0.5)
    sizes = {"rb-1": 7, "rb-2": 11, "rb-3": 19}
    by_room = await open_in_rooms(cluster, sizes, ws_clients)
    for room, members in by_room.items():
        await settle_all(members, sizes[room])

    own_redis.kill()
    for app in cluster.apps:
        await wait_until(lambda app=app: _status(app.base_url + "/healthz", 503), 15,  # type: ignore[misc]
                         what=f"{app.port} /healthz 503")
    page = await http(f"{cluster.nginx.base_url}/count/rb-1/")
    assert page.code == 200  # pages are still served without Redis
    assert all(a.proc.poll() is None  # type: ignore[union-attr]
               for a in cluster.apps), "a process died when Redis went away"

    restarted_at = time.monotonic()
    await asyncio.to_thread(own_redis.start)  # same port, empty: no persistence
    for app in cluster.apps:
        await wait_until(lambda app=app: _status(app.base_url + "/healthz", 200), 20,  # type: ignore[misc]
                         what=f"{app.port} /healthz 200")
    for room, members in by_room.items():
        await room_is(cluster, room, sizes[room], timeout=20)
        await settle_all(members, sizes[room], timeout=20)
        await relay_ready(own_redis.url, room, 3)
    recovered = time.monotonic() - restarted_at
    for i, app in enumerate(cluster.apps):
        for room in sizes:
            assert await cluster.publish(app, room, {"after": i}) >= 1
    for room, members in by_room.items():
        await all_got(members, [{"after": i} for i in range(3)])
    note("redis restart", recovered_s=recovered)
    assert recovered < 15, f"counts and relay took {recovered:.1f} s to come back"
    assert all(a.proc.poll() is None for a in cluster.apps)  # type: ignore[union-attr]


async def _status(url: str, code: int) -> bool:
    try:
        return (await http(url, timeout=3)).code == code
    except Exception:  # noqa: BLE001 - a timeout is not the status we want
        return False


@pytest.mark.gen_test(timeout=180)
async def test_redis_stalled_5s_pages_and_pings_keep_flowing(
    own_redis: EmbeddedRedis, cluster_factory: Callable[..., Cluster], ws_clients: list[Client]
) -> None:
    cluster = cluster_factory(own_redis.url, n=3, redis_timeout=1.0)
    room, total = "stall", 12
    members = await connect_many(cluster.ws_url(f"/ws/count/{room}/"), total, origin=cluster.origin, into=ws_clients)
    await settle_all(members, total)

    os.kill(own_redis.proc.pid, signal.SIGSTOP)  # type: ignore[union-attr]
    stalled_at = time.monotonic()
    worst = {"page": 0.0, "pong": 0.0, "health": 0.0}
    probes = 0
    joined: list[Client] = []
    try:
        while time.monotonic() - stalled_at < 5.0:
            for target in [cluster.nginx.base_url] + [a.base_url for a in cluster.apps]:
                t = time.monotonic()
                r = await http(f"{target}/count/{room}/", timeout=2)
                assert r.code == 200, f"{target}: HTTP {r.code} during the stall"
                worst["page"] = max(worst["page"], time.monotonic() - t)
            for c in members[:3]:
                t = time.monotonic()
                mark = len(c.frames)
                await c.send(type="ping")
                await c.next("pong", timeout=2, after=mark)
                worst["pong"] = max(worst["pong"], time.monotonic() - t)
            if not joined:  # a socket opened mid-stall is accepted and counted once Redis is back
                joined.append(await ws_connect(cluster.ws_url(f"/ws/count/{room}/"), origin=cluster.origin))
                ws_clients.extend(joined)
            probes += 1
        # /healthz must answer (503) rather than hang: bounded by the Redis timeout and one retry.
        t = time.monotonic()
        health = await asyncio.gather(*(http(app.base_url + "/healthz", timeout=8) for app in cluster.apps))
        worst["health"] = time.monotonic() - t
        assert [r.code for r in health] == [503] * len(cluster.apps)
    finally:
        os.kill(own_redis.proc.pid, signal.SIGCONT)  # type: ignore[union-attr]
    note("redis stall", probes=probes, **{f"worst_{k}_s": v for k, v in worst.items()})
    assert probes >= 3
    assert worst["page"] < 1.0 and worst["pong"] < 1.0, worst
    assert worst["health"] < 5.0, worst

    for app in cluster.apps:
        await wait_until(lambda app=app: _status(app.base_url + "/healthz", 200), 20,  # type: ignore[misc]
                         what=f"{app.port} healthy")
    await settle_all(members + joined, total + 1, timeout=20)
    await room_is(cluster, room, total + 1)
    await relay_ready(own_redis.url, room, 3)
    for i, app in enumerate(cluster.apps):
        assert await cluster.publish(app, room, {"resumed": i}) >= 1
    await all_got(members + joined, [{"resumed": i} for i in range(3)])
    assert all(a.proc.poll() is None for a in cluster.apps)  # type: ignore[union-attr]


@pytest.mark.gen_test(timeout=180)
async def test_sentinel_failover_service_recovers_with_exact_counts(
    sentinel_group: SentinelGroup, cluster_factory: Callable[..., Cluster], ws_clients: list[Client]
) -> None:
    group = sentinel_group
    assert group.master_addr() == ("127.0.0.1", group.master_port)
    cluster = cluster_factory(group.url, n=2, redis_timeout=0.5)
    sizes = {"sf-1": 9, "sf-2": 14}
    by_room = await open_in_rooms(cluster, sizes, ws_clients)
    for room, members in by_room.items():
        await settle_all(members, sizes[room])
    assert all(n > 0 for n in await cluster.open_sockets())
    for i, app in enumerate(cluster.apps):
        assert await cluster.publish(app, "sf-1", {"before": i}) >= 1
    await all_got(by_room["sf-1"], [{"before": i} for i in range(2)])

    killed_at = time.monotonic()
    group.kill("master")
    await wait_until(lambda: _sentinel_moved(group), 60, what="the sentinels to promote the replica")
    promoted = time.monotonic() - killed_at
    for app in cluster.apps:
        await wait_until(lambda app=app: _status(app.base_url + "/healthz", 200), 30,  # type: ignore[misc]
                         what=f"{app.port} healthy")
    new_master = f"redis://127.0.0.1:{group.replica_port}/0"
    for room, members in by_room.items():
        await room_is(cluster, room, sizes[room], timeout=30)
        await settle_all(members, sizes[room], timeout=30)
        await relay_ready(new_master, room, 2, timeout=30)
    recovered = time.monotonic() - killed_at
    for i, app in enumerate(cluster.apps):
        for room in sizes:
            assert await cluster.publish(app, room, {"after": i}) >= 1
    await all_got(by_room["sf-1"], [{"before": i} for i in range(2)] + [{"after": i} for i in range(2)])
    await all_got(by_room["sf-2"], [{"after": i} for i in range(2)])
    # A join after the failover is counted on the new master too.
    late = await ws_connect(cluster.ws_url("/ws/count/sf-2/"), origin=cluster.origin)
    ws_clients.append(late)
    await settle_all(by_room["sf-2"] + [late], sizes["sf-2"] + 1)
    note("sentinel failover", promoted_s=promoted, recovered_s=recovered)


def _sentinel_moved(group: SentinelGroup) -> bool:
    try:
        return group.master_addr() == ("127.0.0.1", group.replica_port)
    except redis.RedisError:
        return False


# -- idle sockets and churn ----------------------------------------------------------------


@pytest.mark.gen_test(timeout=120)
async def test_idle_socket_survives_3x_proxy_read_timeout_because_of_pings(
    redis_url: str, cluster_factory: Callable[..., Cluster], ws_clients: list[Client]
) -> None:
    read_timeout = 2.0
    pinged = cluster_factory(redis_url, n=1, ping_interval=1, nginx={"proxy_read_timeout": "2s", "ping_interval": 1})
    # Control: the same proxy in front of an app that pings too rarely; nginx must cut it. Without
    # this, a broken proxy_read_timeout (or none at all) would pass the test just the same.
    silent = cluster_factory(redis_url, n=1, ping_interval=60, nginx={"proxy_read_timeout": "2s", "ping_interval": 1})
    idle = await ws_connect(pinged.ws_url("/ws/count/idle/"), origin=pinged.origin)
    cut = await ws_connect(silent.ws_url("/ws/count/idle/"), origin=silent.origin)
    ws_clients += [idle, cut]
    await idle.settles_on(2, 2)
    await cut.settles_on(2, 2)
    opened = time.monotonic()
    await wait_until(lambda: cut.closed.is_set(), 3 * read_timeout + 5, what="nginx to cut the unpinged socket")
    cut_after = time.monotonic() - opened
    assert cut_after >= read_timeout - 1.0, f"cut after {cut_after:.2f} s: not the read timeout"
    # The pinged socket stays up through three whole read timeouts of silence from the page.
    while time.monotonic() - opened < 3 * read_timeout + 0.5:
        assert not idle.closed.is_set(), f"idle socket closed after {time.monotonic() - opened:.1f} s"
        await asyncio.sleep(0.1)
    mark = len(idle.frames)
    await idle.send(type="ping")
    await idle.next("pong", timeout=5, after=mark)
    await idle.settles_on(1, 1)  # the cut socket's presence is gone
    note("idle", read_timeout_s=read_timeout, control_cut_after_s=cut_after)


@pytest.mark.gen_test(timeout=180)
async def test_churn_100_opens_and_100_closes_a_second_leaves_exact_counts_and_no_leftovers(
    redis_url: str, cluster_factory: Callable[..., Cluster], ws_clients: list[Client]
) -> None:
    cluster = cluster_factory(redis_url, n=3)
    rooms = [f"churn-{i}" for i in range(20)]
    rng = random.Random(4)
    room_of: dict[int, str] = {}
    live: list[Client] = []
    opening: set[asyncio.Task[None]] = set()
    failures: list[BaseException] = []
    stats: Counter[str] = Counter()

    async def open_one(room: str) -> None:
        try:
            c = await ws_connect(cluster.ws_url(f"/ws/count/{room}/"), origin=cluster.origin)
        except Exception as e:  # noqa: BLE001 - counted and asserted below
            failures.append(e)
            return
        ws_clients.append(c)
        room_of[id(c)] = room
        live.append(c)
        stats["opened"] += 1

    for _ in range(60):  # a base population to close from
        await open_one(rng.choice(rooms))
    rate, duration = 100, 5.0
    start = time.monotonic()
    tick = 0
    while (elapsed := time.monotonic() - start) < duration:
        due = int(elapsed * rate)
        while tick < due:
            tick += 1
            if len(opening) < 50:  # bounded: never more than 50 handshakes in flight
                task = asyncio.ensure_future(open_one(rng.choice(rooms)))
                opening.add(task)
                task.add_done_callback(opening.discard)
            if live:
                victim = live.pop(rng.randrange(len(live)))
                if tick % 3 == 0:
                    abort(victim)  # no close frame: a crashed tab
                    stats["aborted"] += 1
                else:
                    victim.close()
                    stats["closed"] += 1
        await asyncio.sleep(0.01)
    if opening:
        await asyncio.wait(set(opening), timeout=30)
    churn_s = time.monotonic() - start
    assert not failures, f"{len(failures)} opens failed, first: {failures[0]!r}"
    assert stats["opened"] - 60 >= 0.8 * rate * duration, stats
    assert stats["closed"] + stats["aborted"] >= 0.8 * rate * duration, stats

    expected = Counter(room_of[id(c)] for c in live)
    for room in rooms:
        await room_is(cluster, room, expected[room], timeout=30)
    for room in rooms:
        members = [c for c in live if room_of[id(c)] == room]
        await settle_all(members, expected[room], timeout=30)
    assert sum(await cluster.open_sockets()) == len(live)

    for c in live:
        c.close()
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        def leftovers() -> list[str]:
            keys = list(r.scan_iter("rrr:presence:*")) + list(r.scan_iter("rrr:proc:*:rooms"))
            return keys

        await wait_until(lambda: not leftovers(), 30, what="no rrr:presence:* or rrr:proc:*:rooms keys")
        assert r.zcard("rrr:procs") == 3  # the three live leases, nothing else
    finally:
        r.close()
    for room in rooms:
        await room_is(cluster, room, 0)
    await wait_until(lambda: _all_zero(cluster), 10, what="rrr_open_sockets == 0 on every process")
    note("churn", seconds=churn_s, **stats, live_at_end=len(live))


async def _all_zero(cluster: Cluster) -> bool:
    return sum(await cluster.open_sockets()) == 0


# -- the deploy files themselves --------------------------------------------------------------


@pytest.mark.gen_test(timeout=120)
async def test_deploy_redis_conf_acl_user_is_enough_for_the_app(
    tmp_path: Path, cluster_factory: Callable[..., Cluster], ws_clients: list[Client]
) -> None:
    """Redis from deploy/redis.conf (passwords filled in), the app as its ``rrr`` ACL user."""
    binary = need_binary("redis-server")
    conf = (ROOT / "deploy" / "redis.conf").read_text()
    assert "maxmemory-policy noeviction" in conf and 'save ""' in conf and "appendonly no" in conf
    conf = conf.replace("CHANGE-ME-rrr-password", "rrr-test-pw").replace("CHANGE-ME-admin-password", "admin-test-pw")
    (tmp_path / "redis.conf").write_text(conf)
    port = free_port()
    data = tmp_path / "redis-data"
    data.mkdir()
    log = open(tmp_path / "redis.log", "ab")
    proc = subprocess.Popen(
        [binary, str(tmp_path / "redis.conf"), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data)],
        stdout=log, stderr=log, preexec_fn=die_with_parent,
    )
    log.close()
    admin = redis.Redis(port=port, username="admin", password="admin-test-pw", socket_timeout=2)
    try:
        await asyncio.to_thread(wait_sync, admin.ping, 10, "redis from deploy/redis.conf")
        anonymous = redis.Redis(port=port, socket_timeout=2)
        with pytest.raises(redis.AuthenticationError):
            anonymous.ping()
        anonymous.close()
        app_user = redis.Redis(port=port, username="rrr", password="rrr-test-pw", socket_timeout=2)
        for forbidden in (lambda: app_user.flushall(), lambda: app_user.get("not-ours"), lambda: app_user.keys("*"),
                          lambda: app_user.config_get("*")):
            with pytest.raises(redis.exceptions.NoPermissionError):
                forbidden()
        app_user.close()
        admin.acl_log_reset()  # from here on, any entry is the app being refused

        url = f"redis://rrr:rrr-test-pw@127.0.0.1:{port}/0"
        cluster = cluster_factory(url, n=2)
        members = await connect_many(cluster.ws_url("/ws/count/acl/"), 6, origin=cluster.origin, into=ws_clients)
        await settle_all(members, 6)
        await room_is(cluster, "acl", 6)
        for i, app in enumerate(cluster.apps):
            assert await cluster.publish(app, "acl", {"acl": i}) >= 1
        await all_got(members, [{"acl": 0}, {"acl": 1}])
        # The clean shutdown path (LEAVE script) runs under the ACL too.
        held = await cluster.open_sockets()
        assert await asyncio.to_thread(cluster.apps[0].stop) == 0
        await wait_until(lambda: sum(c.closed.is_set() for c in members) == held[0], 10, what="drained sockets")
        survivors = [c for c in members if not c.closed.is_set()]
        await settle_all(survivors, len(survivors))
        assert admin.acl_log() == [], "the app ran a command its ACL user may not"
        assert all(a.proc.poll() is None for a in cluster.apps[1:])  # type: ignore[union-attr]
    finally:
        admin.close()
        proc.terminate()
        await asyncio.to_thread(proc.wait, 10)


@pytest.mark.gen_test(timeout=120)
async def test_run_cluster_script_serves_and_stops_everything_on_sigterm(
    redis_url: str, tmp_path: Path, script_runner: Callable[..., Script], ws_clients: list[Client]
) -> None:
    need_binary("nginx")
    ports = [free_port(), free_port()]
    listen = free_port()
    env = dict(os.environ, RRR_REDIS_URL=redis_url, RRR_PORTS=",".join(map(str, ports)),
               NGINX_LISTEN=f"127.0.0.1:{listen}", RUN_DIR=str(tmp_path / "run"), PYTHON=sys.executable,
               RRR_PRESENCE_TTL="30")
    script = script_runner(["bash", str(ROOT / "deploy" / "run-cluster.sh")], env, ROOT)
    base = f"http://127.0.0.1:{listen}"
    await wait_until(lambda: _status(base + "/healthz", 200), 40, what=f"run-cluster.sh to serve\n{script.log()}")
    members = await connect_many(f"ws://127.0.0.1:{listen}/ws/count/scripted/", 4, origin=base, into=ws_clients)
    await settle_all(members, 4)
    assert all(port_open(p) for p in ports)

    script.proc.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(script.proc.wait, 30)
    assert code == 0, script.log()
    await wait_until(lambda: all(c.closed.is_set() for c in members), 10, what="every socket closed")
    assert {c.close_code for c in members} == {1001}, "apps stop before nginx, so pages see 'going away'"
    assert not any(port_open(p) for p in ports + [listen]), "a process outlived run-cluster.sh"
    # Each app removed its presence on the way out (TTL is 30 s, so this is the clean path).
    r = redis.Redis.from_url(redis_url)
    try:
        assert list(r.scan_iter("rrr:presence:*")) == []
    finally:
        r.close()
    assert "run-cluster: stopped" in script.log()


@pytest.mark.gen_test(timeout=180)
async def test_sigterm_exits_promptly_even_when_every_socket_drops_at_the_same_moment(
    redis_url: str, cluster_factory: Callable[..., Cluster], ws_clients: list[Client]
) -> None:
    """A deploy that restarts nginx and the apps together: sockets vanish while the apps shut down.

    The sockets' closes make the backplane UNSUBSCRIBE just as shutdown cancels its tasks;
    each process must still exit within seconds. Before 4e785e4 a cancel swallowed by
    Python 3.11's wait_for (inside redis-py) left a task running and the process hung here
    about one shutdown in ten to fifty (deterministic version: tests/test_shutdown_race.py).
    """
    cluster = cluster_factory(redis_url, n=3, presence_ttl=30)
    rooms = {f"down-{i}": 5 for i in range(6)}
    for round_ in range(3):
        if round_:
            await asyncio.to_thread(lambda: [a.start(timeout=30) for a in cluster.apps])
            await asyncio.to_thread(cluster.nginx.start)
        by_room = await open_in_rooms(cluster, rooms, ws_clients)
        for room, members in by_room.items():
            await settle_all(members, rooms[room])
        procs = [a.proc for a in cluster.apps]
        # fast shutdown: every socket drops now
        cluster.nginx.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        for p in procs:
            p.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        started = time.monotonic()
        for app, p in zip(cluster.apps, procs):
            left = max(0.1, 10 - (time.monotonic() - started))
            try:
                code = await asyncio.to_thread(p.wait, left)  # type: ignore[union-attr]
            except subprocess.TimeoutExpired:
                pytest.fail(f"round {round_}: app on port {app.port} still running 10 s after SIGTERM "
                            f"(hung in shutdown):\n{app.log()[-2000:]}")
            assert code == 0, app.log()[-2000:]
            app.proc = None
        await asyncio.to_thread(cluster.nginx.proc.wait, 10)  # type: ignore[union-attr]
        cluster.nginx.proc = None
        # Everything was removed on the way out (clean path: the TTL is 30 s).
        r = redis.Redis.from_url(redis_url)
        try:
            assert list(r.scan_iter("rrr:presence:*")) == [] and r.zcard("rrr:procs") == 0
        finally:
            r.close()
