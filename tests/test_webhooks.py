"""Events out: a backend hears, in Pusher's webhook format, when a room fills and empties and who
comes and goes in a presence room, exactly, even when a process is kill -9'd, and loses nothing while
it is down. Real rrr processes, a real Redis (and the real 6-node Redis Cluster), a real HTTP
receiver on loopback (tests/support/webhooks.py), and the real ``pusher`` SDK validating."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import jwt
import pusher
import pytest
import redis
from tornado.httpclient import AsyncHTTPClient

from rrr.backplane import keys
from rrr.webhooks import EVENT_NAMES, retry_delay, webhook_settings
from support.clients import Client, connect, wait_until
from support.cluster import NODE_TIMEOUT_MS, RedisCluster
from support.processes import ROOT, AppProcess
from support.servers import Server, ServerFactory
from support.webhooks import Receiver, refused

pytestmark = pytest.mark.gen_test(timeout=180)

KEY = "hooks-key"
SECRET = "hooks-secret-of-decent-length"
TOKENS = "hooks-token-secret-of-decent-length"
TEAM = "presence-team"
OCC, VAC, ADD, REM = EVENT_NAMES
VACATE = 2.0


def hooks(receiver: Receiver, **more: Any) -> dict[str, Any]:
    """The webhook options every process of a test gets."""
    return dict(webhook_url=receiver.url, webhook_key=KEY, webhook_secret=SECRET, token_secret=TOKENS, **more)


async def start(server_factory: ServerFactory, receiver: Receiver, **options: Any) -> Server:
    return await server_factory(**hooks(receiver, **options))


def token(sub: str, rooms: list[str]) -> str:
    return jwt.encode({"sub": sub, "exp": time.time() + 600, "rooms": rooms, "info": {"name": sub}}, TOKENS,
                      algorithm="HS256")


async def counted(base_ws: str, room: str) -> Client:
    """A socket in ``room`` (the talk's socket: joined by the upgrade itself), once counted."""
    c = await connect(f"{base_ws}/ws/count/{room}/")
    await c.next("connection_message")
    return c


async def member(base_ws: str, user: str, tabs: tuple[str, ...] = ("t1",), room: str = TEAM) -> Client:
    """``user``'s socket with ``tabs`` subscriptions to a presence room, each answered."""
    c = await connect(f"{base_ws}/ws/")
    await c.send(type="auth", token=token(user, [room]))
    await c.next("authenticated", after=0)
    for tab in tabs:
        await c.send(type="subscribe", room=room, sub=tab)
    await wait_until(lambda: {f["sub"] for f in c.of_type("subscribed") if f["room"] == room} >= set(tabs),
                     what=f"{user} subscribed")
    return c


async def get_json(url: str) -> Any:
    """A GET answered with JSON (whatever the status), or None when nothing answers."""
    try:
        r = await AsyncHTTPClient().fetch(url, raise_error=False, request_timeout=10)
    except OSError:
        return None
    return json.loads(r.body) if r.code != 599 else None


async def webhooks_status(server: Server) -> dict[str, Any]:
    return dict((await get_json(server.base_url + "/healthz"))["webhooks"])


def ws(server: Server | AppProcess) -> str:
    return f"ws://127.0.0.1:{server.port}"


def validated(receiver: Receiver) -> list[dict[str, Any]]:
    """Every request the receiver got, validated by the real ``pusher`` SDK (key, signature of the
    exact body, time_ms within 300 s of now); their payloads."""
    sdk = pusher.Pusher(app_id="1", key=KEY, secret=SECRET)
    out = []
    for r in receiver.requests:
        assert r.headers["Content-Type"] == "application/json"
        payload = sdk.validate_webhook(r.headers["X-Pusher-Key"], r.headers["X-Pusher-Signature"], r.body)
        assert payload is not None, f"the SDK refused {r.body[:200]!r}"
        out.append(payload)
    return out


async def _is(value: Any, pred: Callable[[Any], bool]) -> bool:
    """``pred`` of an awaited ``value`` (for `wait_until`)."""
    return pred(await value)


async def quiet_for(receiver: Receiver, seconds: float) -> None:
    """Nothing more arrives for ``seconds``."""
    n = len(receiver.requests)
    await asyncio.sleep(seconds)
    assert len(receiver.requests) == n, receiver.events()[-5:]


# -- rooms --------------------------------------------------------------------------------------


async def test_one_socket_joins_then_leaves_exactly_occupied_then_vacated(
    server_factory: ServerFactory, receiver: Receiver, clients: list[Client],
) -> None:
    server = await start(server_factory, receiver)
    joined = time.time()
    c = await counted(ws(server), "solo")
    clients.append(c)
    await wait_until(lambda: receiver.of("solo") == [(OCC, None)], what="occupied")
    c.close()
    left = time.time()
    await wait_until(lambda: len(receiver.of("solo")) == 2, timeout=VACATE + 5, what="vacated")
    arrived = time.time()
    assert receiver.of("solo") == [(OCC, None), (VAC, None)]
    occupied, vacated = receiver.unique_events()
    assert joined - 0.5 <= occupied["at_ms"] / 1000 <= left
    assert left - 0.5 <= vacated["at_ms"] / 1000 <= left + 0.5  # when the last one left
    assert arrived - vacated["at_ms"] / 1000 >= VACATE - 0.2  # held for --vacate-delay, then sent
    assert occupied["id"] != vacated["id"]
    await quiet_for(receiver, 1.0)
    assert [e["name"] for p in validated(receiver) for e in p["events"]] == [OCC, VAC]


async def test_a_reload_within_the_vacate_delay_sends_nothing(
    server_factory: ServerFactory, receiver: Receiver, clients: list[Client],
) -> None:
    server = await start(server_factory, receiver)
    c = await counted(ws(server), "reload")
    clients.append(c)
    await wait_until(lambda: receiver.of("reload") == [(OCC, None)], what="occupied")
    for pause in (0.05, 0.3, 0.8):  # leave and join again within 1 s: the room was empty meanwhile
        c.close()
        await wait_until(lambda: server.hub.room_count == 0, what="the room empty here")
        await asyncio.sleep(pause)
        c = await counted(ws(server), "reload")
        clients.append(c)
    await quiet_for(receiver, VACATE + 1.5)
    assert receiver.of("reload") == [(OCC, None)]
    # The vacated/occupied pairs were recorded, and dropped in pairs by the sender.
    assert server.metric("rrr_webhook_events_total", {"name": VAC}) == 0


async def test_a_thousand_sockets_joining_one_room_send_one_occupied(
    server_factory: ServerFactory, receiver: Receiver, clients: list[Client],
) -> None:
    server = await start(server_factory, receiver)
    socks = await asyncio.gather(*(connect(server.ws_url("/ws/count/crowd/")) for _ in range(1000)))
    clients += socks
    await wait_until(lambda: server.hub.local_counts("crowd") == (1000, 1000), timeout=60, what="1,000 joined")
    await wait_until(lambda: receiver.of("crowd") == [(OCC, None)], what="occupied")
    for c in socks:
        c.close()
    await wait_until(lambda: len(receiver.of("crowd")) == 2, timeout=30, what="vacated")
    await quiet_for(receiver, 1.0)
    assert receiver.of("crowd") == [(OCC, None), (VAC, None)]


# -- presence rooms -------------------------------------------------------------------------------


async def test_a_user_is_added_once_and_removed_with_their_last_tab_anywhere(
    server_factory: ServerFactory, receiver: Receiver, clients: list[Client],
) -> None:
    grace = 3.0  # --vacate-delay: the member list's leave grace too
    one = await start(server_factory, receiver, vacate_delay=grace)
    two = await start(server_factory, receiver, vacate_delay=grace)
    ada_1 = await member(ws(one), "ada", ("t1", "t2"))  # one browser, two tabs, on one process
    ada_2 = await member(ws(two), "ada", ("t3",))  # a second browser, on the other process
    bob = await member(ws(two), "bob")
    clients += [ada_1, ada_2, bob]
    await wait_until(lambda: len(receiver.of(TEAM)) == 3, what="occupied and two added")
    events = receiver.of(TEAM)
    assert events[0] == (OCC, None)  # a room's occupied comes before its first member_added
    assert sorted(events[1:]) == [(ADD, "ada"), (ADD, "bob")]

    # Ada's tabs go one by one: removed only with the last one, anywhere.
    await ada_1.send(type="unsubscribe", room=TEAM, sub="t1")
    ada_1.close()
    await quiet_for(receiver, grace + 1.0)
    watcher = await member(ws(one), "cy")
    clients.append(watcher)
    await wait_until(lambda: (ADD, "cy") in receiver.of(TEAM), what="cy added")
    ada_2.close()
    closed = time.time()
    # member_removed goes out when the member list announces the leave: after the grace, together.
    await wait_until(lambda: any("ada" in f["leaves"] for f in watcher.of_type("presence_diff")),
                     timeout=grace + 5, what="the list announces ada's leave")
    announced = time.time()
    await wait_until(lambda: (REM, "ada") in receiver.of(TEAM), timeout=5, what="ada removed")
    heard = time.time()
    assert announced - closed >= grace - 0.2 and heard - closed >= grace - 0.2
    assert abs(heard - announced) < 1.0
    removed = next(e for e in receiver.unique_events() if e["name"] == REM)
    assert closed - 0.5 <= removed["at_ms"] / 1000 <= closed + 0.5  # when her last tab left

    bob.close()
    watcher.close()
    await wait_until(lambda: receiver.of(TEAM)[-1] == (VAC, None), timeout=2 * grace + 5, what="vacated")
    events = receiver.of(TEAM)
    assert events.count((ADD, "ada")) == 1 and events.count((REM, "ada")) == 1
    assert events.index((REM, "bob")) < events.index((VAC, None))
    assert events.index((REM, "cy")) < events.index((VAC, None))
    assert [e[0] for e in events].count(OCC) == 1
    # Every request passes the Pusher SDK's own validation; each event carries id and at_ms.
    for payload in validated(receiver):
        for e in payload["events"]:
            assert set(e) == ({"name", "channel", "id", "at_ms"} | ({"user_id"} if "member" in e["name"] else set()))


# -- kill -9 ---------------------------------------------------------------------------------------


async def test_kill_9_of_the_only_process_in_a_room_reports_vacated_and_member_removed_in_time(
    server_factory: ServerFactory, app_factory: Callable[..., AppProcess], redis_url: str, receiver: Receiver,
    clients: list[Client], rclient: redis.Redis,
) -> None:
    ttl, sweep, interval = 2.0, 0.2, 0.05
    victim = await asyncio.to_thread(
        app_factory, redis_url=redis_url, presence_ttl=ttl, sweep_interval=sweep, count_interval=interval,
        **hooks(receiver),
    )
    assert victim.proc is not None
    pid = victim.proc.pid
    # The victim sends the webhooks too: its death must also hand the sending over in time.
    await wait_until(lambda: f":{pid}:" in (rclient.get(keys.SENDER) or ""), what="the victim sends")
    survivor = await start(server_factory, receiver, ttl=ttl)
    alone = await counted(ws(victim), "alone")
    cy = await member(ws(victim), "cy")
    clients += [alone, cy]
    await wait_until(lambda: receiver.of("alone") == [(OCC, None)] and receiver.of(TEAM) == [(OCC, None), (ADD, "cy")],
                     what="both rooms reported")
    killed = time.time()
    victim.kill()
    bound = ttl + sweep + interval + VACATE  # the counts' kill -9 bound, plus --vacate-delay
    await wait_until(lambda: receiver.of("alone")[-1:] == [(VAC, None)] and receiver.of(TEAM)[-1:] == [(VAC, None)],
                     timeout=bound + 10, what="vacated and removed after the kill")
    took = {e["name"] + e["channel"]: next(r.at for r in receiver.answered() if e in r.payload["events"]) - killed
            for e in receiver.unique_events() if e["name"] in (VAC, REM)}
    print(f"kill -9 to events: {took} (bound {bound:.2f} s)")
    assert all(t <= bound + 1.0 for t in took.values()), took
    assert receiver.of(TEAM) == [(OCC, None), (ADD, "cy"), (REM, "cy"), (VAC, None)]
    assert survivor.hub.room_count == 0


# -- the receiver down -------------------------------------------------------------------------------


async def test_a_receiver_down_refusing_failing_then_hanging_for_20_s_loses_nothing(
    server_factory: ServerFactory, receiver: Receiver, clients: list[Client],
) -> None:
    timeout = 2.0
    server = await start(server_factory, receiver, webhook_timeout=timeout)
    receiver.down()
    assert refused(receiver.port)
    rooms = [f"busy{i}" for i in range(4)]
    expected: dict[str, list[tuple[str, str | None]]] = {room: [] for room in rooms}

    def errors() -> float:
        return server.metric("rrr_webhook_requests_total", {"outcome": "error"})

    def timeouts() -> float:
        return server.metric("rrr_webhook_requests_total", {"outcome": "timeout"})

    # Refused, then 500s, then no answer past the timeout: each phase lasts until rrr has met it at
    # least once (the retries space out), the three together at least 20 s.
    began = time.monotonic()
    phases: list[tuple[str | None, float, Callable[[], bool]]] = [
        (None, 5.0, lambda: errors() >= 1),
        ("error", 5.0, lambda: any(r.mode == "error" for r in receiver.requests)),
        ("hang", 0.0, lambda: timeouts() >= 1 and time.monotonic() - began >= 20),
    ]
    for mode, least, met in phases:
        if mode is not None:
            receiver.up(mode)
        end = time.monotonic() + least
        while time.monotonic() < end or not met():
            socks = [await counted(ws(server), room) for room in rooms]
            clients += socks
            await asyncio.sleep(0.3)
            for c in socks:
                c.close()
            await asyncio.sleep(VACATE + 0.5)  # long enough empty: a real vacated each time
            for room in rooms:
                expected[room] += [(OCC, None), (VAC, None)]
            assert time.monotonic() - began < 90, "rrr never tried again"
    assert time.monotonic() - began >= 20
    failed = len(receiver.requests)
    assert failed > 0 and all(r.mode in ("error", "hang") for r in receiver.requests)
    refusals = errors() - sum(r.mode == "error" for r in receiver.requests)
    assert refusals >= 1
    receiver.set_mode("ok")
    await wait_until(lambda: all(receiver.of(room) == expected[room] for room in rooms), timeout=70,
                     what="every event, in order per room")
    ids = [e["id"] for e in receiver.events()]
    assert len(set(ids)) == len(receiver.unique_events()) == sum(map(len, expected.values()))
    # Each attempt was signed afresh: its own time_ms, at the time it was sent, a valid signature.
    times = [r.payload["time_ms"] for r in receiver.requests]
    assert len(set(times)) == len(times)
    assert all(abs(r.payload["time_ms"] / 1000 - r.at) < 1.0 for r in receiver.requests)
    validated(receiver)
    # Attempt n + 1 came the n-th retry's wait after attempt n failed: between half and all of
    # min(2^(n-1), 60) s (a hanging attempt failed a timeout after it was sent). The receiver saw
    # every attempt but the refused ones, which came first.
    seen = receiver.requests[: failed + 1]
    for k, (a, b) in enumerate(zip(seen, seen[1:])):
        n = int(refusals) + k + 1
        top = min(2 ** (n - 1), 60)
        spent = timeout if a.mode == "hang" else 0.0
        assert top / 2 - 0.05 <= b.at - a.at - spent <= top + 1.5, (n, b.at - a.at, a.mode)


def test_each_retry_waits_between_half_and_all_of_its_doubling_capped_at_60_s() -> None:
    for n, top in ((1, 1), (2, 2), (3, 4), (6, 32), (7, 60), (30, 60)):
        waits = [retry_delay(n) for _ in range(500)]
        assert top / 2 <= min(waits) and max(waits) <= top
        assert max(waits) - min(waits) > top / 4  # spread out, not one fixed value


async def test_events_past_retry_for_are_dropped_and_counted_and_the_backlog_is_bounded(
    server_factory: ServerFactory, receiver: Receiver, clients: list[Client], rclient: redis.Redis,
) -> None:
    server = await start(server_factory, receiver, webhook_retry_for=3.0, webhook_backlog=5)
    receiver.down()
    for i in range(4):  # 8 events: the oldest 3 go over the backlog of 5
        c = await counted(ws(server), f"old{i}")
        c.close()
    await wait_until(lambda: server.metric("rrr_webhook_dropped_total", {"reason": "backlog"}) == 3,
                     timeout=VACATE + 5, what="3 dropped over the backlog")
    assert rclient.xlen(keys.OUTBOX) == 5
    await wait_until(lambda: _is(webhooks_status(server), lambda s: s["backlog"] == 5),
                     what="/healthz shows the backlog")
    await asyncio.sleep(3.5)
    receiver.up()
    await wait_until(lambda: server.metric("rrr_webhook_dropped_total", {"reason": "expired"}) == 5,
                     timeout=30, what="5 expired")
    c = await counted(ws(server), "fresh")  # a new event still goes out, alone
    clients.append(c)
    await wait_until(lambda: receiver.of("fresh") == [(OCC, None)], what="a fresh event")
    assert [e["channel"] for e in receiver.events()] == ["fresh"]


async def test_every_url_gets_every_event_with_its_own_queue(
    server_factory: ServerFactory, receiver: Receiver, clients: list[Client],
) -> None:
    other = Receiver()
    try:
        server = await server_factory(**hooks(receiver) | {"webhook_url": f"{receiver.url},{other.url}"})
        other.set_mode("hang")  # one receiver hangs: the other's queue goes on
        for i in range(3):
            c = await counted(ws(server), f"both{i}")
            clients.append(c)
        await wait_until(lambda: len(receiver.events()) == 3, what="three events at the answering URL")
        other.set_mode("ok")
        await wait_until(lambda: len(other.unique_events()) == 3, timeout=30, what="the same three at the other")
        assert [e["id"] for e in receiver.unique_events()] == [e["id"] for e in other.unique_events()]
    finally:
        other.close()


# -- processes and Redis restarting -------------------------------------------------------------------


async def test_every_process_kill_9d_while_the_receiver_is_down_loses_nothing(
    app_factory: Callable[..., AppProcess], redis_url: str, receiver: Receiver, clients: list[Client],
) -> None:
    options = dict(redis_url=redis_url, presence_ttl=2.0, sweep_interval=0.2, count_interval=0.05, **hooks(receiver))
    first = [await asyncio.to_thread(app_factory, **options) for _ in range(2)]
    receiver.down()
    stays = [await counted(ws(first[0]), "stays"), await member(ws(first[1]), "ada")]
    clients += stays
    went = await counted(ws(first[1]), "went")
    went.close()
    await asyncio.sleep(VACATE + 1)
    for proc in first:
        proc.kill()
    again = [await asyncio.to_thread(app_factory, **options) for _ in range(2)]
    assert again
    receiver.up()
    await wait_until(lambda: receiver.of("went") == [(OCC, None), (VAC, None)], timeout=30, what="went's events")
    # What the dead processes held ends too: their sweep by the new ones reports it.
    await wait_until(lambda: receiver.of("stays") == [(OCC, None), (VAC, None)], timeout=30, what="stays' events")
    await wait_until(lambda: receiver.of(TEAM) == [(OCC, None), (ADD, "ada"), (REM, "ada"), (VAC, None)],
                     timeout=30, what="the presence room's events")
    await quiet_for(receiver, 1.0)


async def test_a_room_still_occupied_after_redis_restarted_empty_is_not_reported_again(
    server_factory: ServerFactory, own_redis: Any, receiver: Receiver, clients: list[Client],
) -> None:
    server = await start(server_factory, receiver, redis=own_redis.url, ttl=3.0)
    c = await counted(ws(server), "kept")
    ada = await member(ws(server), "ada")
    clients += [c, ada]
    await wait_until(lambda: receiver.of("kept") == [(OCC, None)] and len(receiver.of(TEAM)) == 2, what="reported")
    await asyncio.sleep(3.0)  # a renewal (every TTL/3) found the rows settled: in Redis for over a second
    own_redis.kill()
    own_redis.start()  # same port, empty: every key is gone
    await wait_until(lambda: _is(get_json(server.base_url + "/api/rooms/kept"), lambda b: (b or {}).get("connections")
                                 == 1), timeout=30, what="presence re-registered")
    await quiet_for(receiver, VACATE + 1.0)
    assert receiver.of("kept") == [(OCC, None)] and receiver.of(TEAM) == [(OCC, None), (ADD, "ada")]
    c.close()  # and what happens from now on is reported again
    await wait_until(lambda: receiver.of("kept") == [(OCC, None), (VAC, None)], timeout=VACATE + 5, what="vacated")


# -- options, metrics, /healthz ---------------------------------------------------------------------


@pytest.mark.parametrize(("args", "named"), [
    (["--webhook-url=http://127.0.0.1:9/hooks"], "--webhook-secret"),
    (["--webhook-url=http://127.0.0.1:9/hooks", "--webhook-secret=s", "--webhook-events=channel_occupied,nope"],
     "--webhook-events"),
    (["--webhook-url=ftp://127.0.0.1/x", "--webhook-secret=s"], "--webhook-url"),
    (["--webhook-url=http://127.0.0.1:9/hooks", "--webhook-secret=s", "--webhook-batch=0"], "--webhook-batch"),
])
def test_app_exits_at_start_naming_the_option(args: list[str], named: str) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "app.py"), "--port=0", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=30, env={**os.environ, "RRR_REDIS_URL": "redis://127.0.0.1:9/0"})
    assert done.returncode != 0
    assert named in done.stderr and "Traceback" not in done.stderr, done.stderr


async def test_metrics_and_healthz_report_webhooks_as_information(
    server_factory: ServerFactory, receiver: Receiver, clients: list[Client],
) -> None:
    server = await start(server_factory, receiver, webhook_timeout=1.0)
    body = await get_json(server.base_url + "/healthz")
    assert body["status"] == "ok" and body["webhooks"] == {"backlog": 0, "last_error": None}
    text = server.metrics.render().decode()
    for series in ('rrr_webhook_events_total{name="channel_occupied"}', 'rrr_webhook_requests_total{outcome="ok"}',
                   'rrr_webhook_requests_total{outcome="timeout"}', "rrr_webhook_backlog",
                   'rrr_webhook_dropped_total{reason="expired"}', 'rrr_webhook_dropped_total{reason="backlog"}'):
        assert series in text
    receiver.set_mode("error")
    c = await counted(ws(server), "health")
    clients.append(c)
    await wait_until(lambda: _is(webhooks_status(server), lambda s: (s["last_error"] or "").endswith("HTTP 500")),
                     what="the last error shown")
    body = await get_json(server.base_url + "/healthz")  # a receiver down is not rrr unhealthy: still 200
    assert body["status"] == "ok" and body["webhooks"]["backlog"] == 1
    assert "hooks-secret" not in json.dumps(body)
    receiver.set_mode("ok")
    await wait_until(lambda: _is(webhooks_status(server), lambda s: s == {"backlog": 0, "last_error": None}),
                     timeout=10, what="the error cleared")
    assert server.metric("rrr_webhook_events_total", {"name": OCC}) == 1
    assert server.metric("rrr_webhook_requests_total", {"outcome": "ok"}) >= 1


async def test_only_the_events_asked_for_go_out_at_most_a_batch_a_request(
    server_factory: ServerFactory, receiver: Receiver, clients: list[Client],
) -> None:
    server = await start(server_factory, receiver, webhook_events="channel_vacated,member_removed", webhook_batch=2)
    receiver.down()
    socks = [await counted(ws(server), f"few{i}") for i in range(5)]
    ada = await member(ws(server), "ada")
    for c in [*socks, ada]:
        c.close()
    await asyncio.sleep(VACATE + 1)
    receiver.up()
    await wait_until(lambda: len(receiver.unique_events()) == 7, timeout=30, what="5 vacated, ada removed, 1 vacated")
    await quiet_for(receiver, 1.0)
    assert {e["name"] for e in receiver.unique_events()} == {VAC, REM}
    assert receiver.of(TEAM) == [(REM, "ada"), (VAC, None)]
    assert max(len(r.payload["events"]) for r in receiver.answered()) == 2


def test_the_key_and_secret_default_to_the_pusher_apps_and_the_key_else_to_rrr() -> None:
    url = {"webhook_url": "http://127.0.0.1:9/hooks"}
    pusher_app = {"pusher_key": "app-key", "pusher_secret": "app-secret"}
    own = webhook_settings(url | {"webhook_secret": "own"})
    assert own is not None and (own.key, own.secret, own.names) == ("rrr", "own", frozenset(EVENT_NAMES))
    from_app = webhook_settings(url | pusher_app)
    assert from_app is not None and (from_app.key, from_app.secret) == ("app-key", "app-secret")
    explicit = webhook_settings(url | pusher_app | {"webhook_key": "k", "webhook_secret": "s"})
    assert explicit is not None and (explicit.key, explicit.secret) == ("k", "s")
    assert webhook_settings({"webhook_url": ""}) is None
    with pytest.raises(ValueError, match="--webhook-secret"):
        webhook_settings(url | {"pusher_key": "app-key"})


async def test_with_no_webhook_url_nothing_is_recorded(
    server_factory: ServerFactory, clients: list[Client], rclient: redis.Redis,
) -> None:
    server = await server_factory()
    c = await counted(ws(server), "silent")
    c.close()
    await wait_until(lambda: server.hub.room_count == 0, what="left")
    await asyncio.sleep(0.3)
    assert not [k for k in rclient.keys("*") if "events" in k or "reported" in k or "webhooks" in k]
    assert "webhooks" not in await get_json(server.base_url + "/healthz")


# -- Redis Cluster -----------------------------------------------------------------------------------


@pytest.fixture
def cluster(redis_cluster: RedisCluster) -> RedisCluster:
    """The module's 6-node cluster, whole and empty."""
    redis_cluster.wait_healthy()
    redis_cluster.flush()
    return redis_cluster


async def test_on_a_redis_cluster_events_come_from_rooms_on_every_shard_a_kill_9_included(
    cluster: RedisCluster, server_factory: ServerFactory, app_factory: Callable[..., AppProcess], receiver: Receiver,
    clients: list[Client],
) -> None:
    ttl = 3.0
    one = await start(server_factory, receiver, redis=cluster.url, ttl=ttl)
    two = await start(server_factory, receiver, redis=cluster.url, ttl=ttl)
    rooms = cluster.rooms_on_every_master("shard", keys.presence)
    teams = cluster.rooms_on_every_master("presence-shard", keys.presence)
    socks = [await counted(ws(one), room) for room in rooms]
    members = [await member(ws(one), "ada", room=team) for team in teams]
    members += [await member(ws(two), "bob", ("a", "b"), room=team) for team in teams]
    clients += socks + members
    for room in rooms:
        await wait_until(lambda: receiver.of(room) == [(OCC, None)], what=f"{room} occupied")
    for team in teams:
        await wait_until(lambda: len(receiver.of(team)) == 3, what=f"{team}'s events")
        assert receiver.of(team)[0] == (OCC, None) and sorted(receiver.of(team)[1:]) == [(ADD, "ada"), (ADD, "bob")]
    for c in socks + members:
        c.close()
    for room in rooms:
        await wait_until(lambda: receiver.of(room) == [(OCC, None), (VAC, None)], timeout=VACATE + 10,
                         what=f"{room} vacated")
    for team in teams:
        await wait_until(lambda: receiver.of(team)[-1:] == [(VAC, None)], timeout=VACATE + 10, what=f"{team} vacated")
        assert sorted(receiver.of(team)[3:5]) == [(REM, "ada"), (REM, "bob")]

    # A process alone in a room on each shard dies: nobody else renews those rooms, and still their
    # vacated and member_removed come (its registry is swept), within the cluster's kill -9 bound.
    victim = await asyncio.to_thread(app_factory, redis_url=cluster.url, presence_ttl=ttl, count_interval=0.05,
                                     sweep_interval=0.2, **hooks(receiver))
    lonely = cluster.rooms_on_every_master("lonely", keys.presence)
    held = [await counted(ws(victim), room) for room in lonely] + [await member(ws(victim), "cy", room=teams[0])]
    clients += held
    for room in lonely:
        await wait_until(lambda: receiver.of(room) == [(OCC, None)], what=f"{room} occupied")
    await wait_until(lambda: receiver.of(teams[0])[-2:] == [(OCC, None), (ADD, "cy")], what="cy added")
    killed = time.time()
    victim.kill()
    bound = ttl + ttl / 3 + 0.2 + VACATE
    for room in [*lonely, teams[0]]:
        await wait_until(lambda: receiver.of(room)[-1:] == [(VAC, None)], timeout=bound + 10, what=f"{room} vacated")
    assert receiver.of(teams[0])[-3:] == [(ADD, "cy"), (REM, "cy"), (VAC, None)]
    took = max(r.at for r in receiver.answered()) - killed
    print(f"cluster kill -9 to the last vacated: {took:.2f} s (bound {bound:.2f} s)")
    assert took <= bound + 1.5, took
    validated(receiver)


async def test_a_cluster_masters_failover_loses_no_event_redis_acknowledged(
    cluster: RedisCluster, server_factory: ServerFactory, receiver: Receiver, clients: list[Client],
) -> None:
    server = await start(server_factory, receiver, redis=cluster.url, ttl=3.0)
    receiver.down()
    rooms = cluster.rooms_on_every_master("fail", keys.presence)
    expected: dict[str, list[tuple[str, str | None]]] = {room: [] for room in rooms}
    for _ in range(2):
        socks = [await counted(ws(server), room) for room in rooms]
        for c in socks:
            c.close()
        await asyncio.sleep(VACATE + 0.5)
        for room in rooms:
            expected[room] += [(OCC, None), (VAC, None)]
    stored = sum(map(len, expected.values()))
    outbox = cluster.node(cluster.master_of(keys.OUTBOX))
    await wait_until(lambda: outbox.xlen(keys.OUTBOX) == stored, timeout=15, what="every event in the outbox")
    outbox.close()
    # Acknowledged by Redis: a replica of the outbox's master has them all. Then that master dies.
    assert cluster.replicated(keys.OUTBOX)
    victim = cluster.master_of(keys.OUTBOX)
    cluster.kill(victim)
    try:
        # Rooms fill meanwhile: what happens during the failover is recorded once it is over.
        late = [await counted(ws(server), room) for room in rooms]
        clients += late
        for room in rooms:
            expected[room].append((OCC, None))
        await wait_until(lambda: cluster.master_of(keys.OUTBOX) != victim, timeout=NODE_TIMEOUT_MS / 1000 + 15,
                         what="the replica took over")
        receiver.up()
        await wait_until(lambda: all(receiver.of(room) == expected[room] for room in rooms), timeout=60,
                         what="every event, in order per room")
    finally:
        cluster.restart(victim)
    assert len({e["id"] for e in receiver.events()}) == sum(map(len, expected.values()))


async def test_a_failover_that_loses_a_rooms_last_writes_reports_them_again_and_never_twice(
    cluster: RedisCluster, server_factory: ServerFactory, receiver: Receiver, clients: list[Client],
) -> None:
    """A room's first join lands on its master while the replica lags far behind (stopped, with 32 MB
    of replication stream ahead of the join), then the master dies: the occupied it recorded is lost
    with the row. It was not sent meanwhile (an event leaves its shard once a replica has it), and it
    comes once the process, finding its row gone, writes it again (a row no renewal had seen settled
    is written loudly)."""
    server = await start(server_factory, receiver, redis=cluster.url, ttl=3.0)
    outbox = cluster.master_of(keys.OUTBOX)
    room = next(r for r in (f"lossy{i}" for i in range(1000)) if cluster.master_of(keys.presence(r)) != outbox)
    victim = cluster.master_of(keys.presence(room))
    replica = cluster.replica_of(victim)
    cluster.pause(replica)
    try:
        master = cluster.node(victim)
        master.set(f"lag:{{{room}}}", b"x" * (32 << 20))  # more than the kernel buffers between them
        master.close()
        c = await counted(ws(server), room)
        clients.append(c)
        await asyncio.sleep(2.5)  # renewals (every TTL/3) found the row on the master meanwhile
        assert receiver.of(room) == []  # recorded on the master, but its replica lacks it: not sent
        cluster.kill(victim)
    finally:
        cluster.pause(replica, False)
    try:
        await wait_until(lambda: cluster.master_of(keys.presence(room)) == replica, timeout=NODE_TIMEOUT_MS / 1000 + 20,
                         what="the replica took over")
        await wait_until(lambda: receiver.of(room) == [(OCC, None)], timeout=20, what="the occupied, recorded again")
        c.close()
        await wait_until(lambda: receiver.of(room) == [(OCC, None), (VAC, None)], timeout=VACATE + 10,
                         what="then its vacated")
        await quiet_for(receiver, 1.0)
    finally:
        cluster.restart(victim)


async def test_on_a_cluster_rooms_still_occupied_after_redis_lost_everything_are_not_reported_again(
    cluster: RedisCluster, server_factory: ServerFactory, receiver: Receiver, clients: list[Client],
) -> None:
    server = await start(server_factory, receiver, redis=cluster.url, ttl=3.0)
    rooms = cluster.rooms_on_every_master("kept", keys.presence)
    socks = [await counted(ws(server), room) for room in rooms]
    ada = await member(ws(server), "ada")
    clients += [*socks, ada]
    for room in rooms:
        await wait_until(lambda: receiver.of(room) == [(OCC, None)], what=f"{room} occupied")
    await wait_until(lambda: receiver.of(TEAM) == [(OCC, None), (ADD, "ada")], what="ada added")
    await asyncio.sleep(1.5)  # a renewal (every TTL/3) saw each room's state on a replica
    cluster.flush()  # every master loses everything, as if restarted empty
    await wait_until(lambda: all(_has_row(cluster, room) for room in [*rooms, TEAM]), timeout=20,
                     what="presence re-registered")
    await quiet_for(receiver, VACATE + 1.0)
    assert all(receiver.of(room) == [(OCC, None)] for room in rooms)
    assert receiver.of(TEAM) == [(OCC, None), (ADD, "ada")]
    socks[0].close()
    await wait_until(lambda: receiver.of(rooms[0]) == [(OCC, None), (VAC, None)], timeout=VACATE + 5,
                     what="what happens from now on is reported")


def _has_row(cluster: RedisCluster, room: str) -> bool:
    node = cluster.node(cluster.master_of(keys.presence(room)))
    try:
        fields: list[Any] = list(node.hkeys(keys.presence(room)))
        return any(not (f.decode() if isinstance(f, bytes) else str(f)).startswith("@") for f in fields)
    finally:
        node.close()


async def test_on_a_cluster_what_a_process_dying_before_its_note_left_behind_is_found_again(
    cluster: RedisCluster, server_factory: ServerFactory, app_factory: Callable[..., AppProcess], receiver: Receiver,
    clients: list[Client], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A room's script records its occupied in the room's slot; the process then tells the sender's
    slot (another shard) that the room has events and is one of its rooms. It dies in between: the
    periodic repair finds the room's events, and once its row expired, that it emptied."""
    ttl = 3.0
    victim = await asyncio.to_thread(app_factory, redis_url=cluster.url, presence_ttl=ttl, count_interval=0.05,
                                     sweep_interval=0.2, **hooks(receiver))
    outbox = cluster.master_of(keys.OUTBOX)
    room = next(r for r in (f"orphan{i}" for i in range(1000)) if cluster.master_of(keys.presence(r)) != outbox)
    cluster.pause(outbox)  # the sender's slot answers nothing (for less than the cluster's node timeout)
    try:
        c = await counted(ws(victim), room)  # its count comes at once: the note waits apart
        clients.append(c)
        await asyncio.sleep(0.3)
        victim.kill()
    finally:
        cluster.pause(outbox, False)
    monkeypatch.setattr("rrr.webhooks.REPAIR_EVERY", 1.0)
    await start(server_factory, receiver, redis=cluster.url, ttl=ttl)
    await wait_until(lambda: receiver.of(room) == [(OCC, None)], timeout=15, what="the orphaned occupied")
    await wait_until(lambda: receiver.of(room) == [(OCC, None), (VAC, None)], timeout=ttl + VACATE + 10,
                     what="and, its row expired, its vacated")
