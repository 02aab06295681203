"""A price on everything anonymous: each cap refuses with an error frame or a 429, counts the
refusal in ``rrr_limited_total``, registers nothing, and leaves the socket (and the process) up.

Caps are set tiny here so a test reaches them in a few frames; rates are set so slow that no
token comes back during a test, so the outcomes do not depend on timing.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import jwt
import pytest
import tornado.httpclient
from tornado.httpclient import HTTPClientError
from tornado.websocket import websocket_connect

from rrr.backplane.keys import history
from rrr.limits import HeldBytes, RateLimiter
from support.browsers import metric
from support.clients import Client, connect, wait_until
from support.servers import ServerFactory

gen_test = pytest.mark.gen_test(timeout=60)


async def connect_as(url: str, ip: str) -> Client:
    """A socket that claims, through the header nginx sets, to come from ``ip``."""
    request = tornado.httpclient.HTTPRequest(url, headers={"X-Real-IP": ip})
    return Client(await websocket_connect(request))


async def ping_pong(c: Client) -> None:
    """The socket is still up and answering."""
    seen = len(c.frames)
    await c.send(type="ping")
    await c.next("pong", after=seen)


def http_get(url: str) -> tuple[int, dict[str, str], Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, dict(r.headers), json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.loads(e.read())


# -- per socket ------------------------------------------------------------------------------


@gen_test
async def test_tabs_per_socket_per_room(server_factory: ServerFactory, clients: list[Client]) -> None:
    server = await server_factory(max_tabs_per_room=3)
    c = await connect(server.ws_url("/ws/"))
    clients.append(c)
    for i in range(4):
        await c.send(type="subscribe", room="r", sub=f"t{i}")
    err = await c.next("error", after=0)
    assert (err["code"], err["room"], err["sub"]) == ("too_many_tabs", "r", "t3")
    await c.settles_on(1, 3, room="r")
    assert (await asyncio.to_thread(http_get, f"{server.base_url}/api/rooms/r"))[2]["tabs"] == 3
    await c.send(type="subscribe", room="r", sub="t0")  # already held: a no-op, not a refusal
    await c.send(type="subscribe", room="other", sub="t0")  # another room has its own allowance
    await c.settles_on(1, 1, room="other")
    await c.send(type="unsubscribe", room="r", sub="t0")
    await c.send(type="subscribe", room="r", sub="t3")
    await c.settles_on(1, 3, room="r")
    await ping_pong(c)
    assert len(c.of_type("error")) == 1
    assert server.metric("rrr_limited_total", {"limit": "tabs_per_room"}) == 1


@gen_test
async def test_rooms_per_process(server_factory: ServerFactory, clients: list[Client]) -> None:
    server = await server_factory(max_rooms=2)
    c = await connect(server.ws_url("/ws/"))
    clients.append(c)
    for room in ("r1", "r2", "r3"):
        await c.send(type="subscribe", room=room, sub="t")
    err = await c.next("error", after=0)
    assert (err["code"], err["room"], err["sub"]) == ("too_many_rooms", "r3", "t")
    assert server.hub.room_count == 2
    # Joining a room the process already follows costs no room, so it is still allowed.
    talk = await connect(server.ws_url("/ws/count/r1/"))
    clients.append(talk)
    await talk.settles_on(2)
    # The talk's one-room socket has nothing to do without its room: it is told why and closed.
    refused = await connect(server.ws_url("/ws/count/r4/"))
    await asyncio.wait_for(refused.closed.wait(), 10)
    assert refused.close_code == 1008
    assert [(f["code"], f["room"]) for f in refused.of_type("error")] == [("too_many_rooms", "r4")]
    await c.send(type="unsubscribe", room="r2", sub="t")
    await wait_until(lambda: server.hub.room_count == 1, what="r2 left")
    await c.send(type="subscribe", room="r3", sub="t")
    await c.settles_on(1, 1, room="r3")
    assert server.metric("rrr_limited_total", {"limit": "rooms"}) == 2


@gen_test
async def test_a_frame_flood_is_dropped_then_closed(server_factory: ServerFactory, clients: list[Client]) -> None:
    server = await server_factory(message_rate=0.001, message_burst=5)
    c = await connect(server.ws_url("/ws/"))
    clients.append(c)
    for _ in range(4):
        await c.send(type="ping")
    await c.conn.write_message("not json")  # every frame spends a token, whatever it is
    await wait_until(lambda: len(c.frames) == 5, what="4 pongs and a bad_json error")
    await c.send(type="ping")
    err = await c.next("error", after=5)
    assert err["code"] == "rate_limited"
    assert "room" not in err
    # A run of drops is answered once; a whole burst more into the limit closes the socket.
    for _ in range(4):
        await c.send(type="ping")
    await asyncio.sleep(0.2)
    assert not c.closed.is_set() and len(c.frames) == 6
    await c.send(type="ping")
    await asyncio.wait_for(c.closed.wait(), 10)
    assert c.close_code == 1008
    assert [f["type"] for f in c.frames] == ["pong"] * 4 + ["error", "error"]
    assert server.metric("rrr_limited_total", {"limit": "message_rate"}) == 6


@gen_test
async def test_the_talks_ping_frames_are_rate_limited_too(server_factory: ServerFactory, clients: list[Client]) -> None:
    server = await server_factory(message_rate=0.001, message_burst=2)
    c = await connect(server.ws_url("/ws/count/x/"))
    clients.append(c)
    await c.settles_on(1)
    for _ in range(3):
        await c.conn.write_message("PING")
    err = await c.next("error", after=0)
    assert err["code"] == "rate_limited"
    # Before the error: the join's count, two PING replies (and maybe a coalesced broadcast).
    assert len(c.counts()) >= 3 and len(c.of_type("error")) == 1
    assert server.metric("rrr_limited_total", {"limit": "message_rate"}) == 1


@gen_test
async def test_default_rates_let_a_busy_page_through(server_factory: ServerFactory, clients: list[Client]) -> None:
    """100 frames at once (a page restoring 100 subscriptions after a reconnect) are within the burst."""
    server = await server_factory()
    c = await connect(server.ws_url("/ws/"))
    clients.append(c)
    for i in range(99):
        await c.send(type="subscribe", room=f"r{i % 3}", sub=f"t{i // 3}")
    await c.send(type="ping")
    await c.next("pong", after=0)
    await wait_until(lambda: all(c.last_count(f"r{i}") == (1, 33) for i in range(3)), what="33 tabs in 3 rooms")
    assert c.of_type("error") == []
    assert server.metric("rrr_limited_total", {"limit": "message_rate"}) == 0


# -- publish -------------------------------------------------------------------------------------


@gen_test
async def test_publish_needs_a_subscription_and_is_limited_per_address(
    server_factory: ServerFactory, clients: list[Client]
) -> None:
    server = await server_factory(client_publish=True, publish_rate_per_ip=0.001)  # one publish, then none
    a = await connect(server.ws_url("/ws/"))
    b = await connect(server.ws_url("/ws/"))
    clients += [a, b]
    await a.send(type="publish", room="r", data="not yet")
    err = await a.next("error", after=0)
    assert (err["code"], err["room"]) == ("not_subscribed", "r")
    for c in (a, b):
        await c.send(type="subscribe", room="r", sub="t")
    for c in (a, b):
        await c.settles_on(2, 2)
    await a.send(type="publish", room="r", data="first")
    assert (await b.next("message", after=0))["data"] == "first"
    # b has its own per-socket allowance, but shares the address's.
    await b.send(type="publish", room="r", data="second")
    err = await b.next("error", after=0)
    assert (err["code"], err["room"]) == ("rate_limited", "r")
    await ping_pong(b)
    assert [m["data"] for m in a.of_type("message")] == ["first"]
    assert server.metric("rrr_limited_total", {"limit": "publish_rate_per_ip"}) == 1
    await b.send(type="unsubscribe", room="r", sub="t")
    await b.send(type="publish", room="r", data="gone")
    assert (await b.next("error", after=len(b.frames)))["code"] == "not_subscribed"


async def subscribed_as(url: str, ip: str, room: str) -> Client:
    c = await connect_as(url, ip)
    await c.send(type="subscribe", room=room, sub="t")
    await c.next("connection_message", after=0)
    return c


async def publish_answer(c: Client, data: str) -> dict[str, Any] | None:
    """The error a publish got, or None once the publisher hears its own message back."""
    seen = len(c.frames)
    await c.send(type="publish", room="held", data=data)

    def answered() -> dict[str, Any] | None:
        for f in c.frames[seen:]:
            if f["type"] == "error" or (f["type"] == "message" and f["data"] == data):
                return f
        return None

    frame = await wait_until(answered, what="the publish's answer")
    return frame if frame["type"] == "error" else None


@gen_test
async def test_what_client_publishes_hold_in_history_is_capped_per_address_and_in_all(
    server_factory: ServerFactory, clients: list[Client], rclient: Any,
) -> None:
    """64 KB publishes from 40 sockets of one address added 47 MB to Redis in 5 s, each kept for the
    history's TTL. 60 KB messages here against 200 KB per address and 300 KB in all."""
    server = await server_factory(
        client_publish=True, xheaders=True, client_history_per_ip=200_000, client_history_max=300_000,
    )
    url = server.ws_url("/ws/")
    a = [await subscribed_as(url, "203.0.113.1", "held") for _ in range(4)]
    b = await subscribed_as(url, "203.0.113.2", "held")
    clients += [*a, b]
    for i in range(3):
        assert await publish_answer(a[i], f"{i}" * 60_000) is None
    refused = await publish_answer(a[3], "3" * 60_000)  # another socket, the same address
    assert refused is not None and (refused["code"], refused["room"]) == ("rate_limited", "held")
    assert "200000" in refused["reason"]
    assert await publish_answer(b, "b" * 60_000) is None  # 240 KB in all
    refused = await publish_answer(b, "c" * 60_000)
    assert refused is not None and (refused["code"], refused["room"]) == ("rate_limited", "held")
    assert server.metric("rrr_limited_total", {"limit": "client_history"}) == 2
    assert rclient.xlen(history("held")) == 4
    assert await publish_answer(b, "small") is None  # 7 bytes still fit under 300 KB
    await ping_pong(a[3])


@gen_test
async def test_what_client_publishes_held_is_let_go_as_history_expires(
    server_factory: ServerFactory, clients: list[Client],
) -> None:
    server = await server_factory(client_publish=True, history_ttl=1.0, client_history_per_ip=100_000)
    c = await subscribed_as(server.ws_url("/ws/"), "ignored", "held")
    clients.append(c)
    assert await publish_answer(c, "x" * 60_000) is None
    assert await publish_answer(c, "y" * 60_000) is not None
    assert server.metric("rrr_tracked_addresses") >= 1
    # A second later Redis has let the first go, and so has the ledger.
    await wait_until(lambda: server.metric("rrr_tracked_addresses") == 0, what="the address forgotten")
    assert await publish_answer(c, "z" * 60_000) is None
    assert server.metric("rrr_limited_total", {"limit": "client_history"}) == 1


# -- per client address ------------------------------------------------------------------------------


def test_sockets_per_address_use_the_real_ip_behind_a_proxy(
    app_factory: Callable[..., Any], redis_url: str, io_loop: Any
) -> None:
    """Through env and argv as in production: ``RRR_``-style options reach make_app."""
    server = app_factory(redis_url=redis_url, xheaders=True, max_sockets_per_ip=2)
    ws = f"ws://127.0.0.1:{server.port}/ws/count/ip/"

    async def scenario() -> None:
        a = await connect_as(ws, "203.0.113.7")
        b = await connect_as(ws, "203.0.113.7")
        with pytest.raises(HTTPClientError) as refused:
            await connect_as(ws, "203.0.113.7")
        assert refused.value.code == 429
        assert refused.value.response is not None
        assert refused.value.response.headers["Retry-After"].isdigit()
        assert json.loads(refused.value.response.body)["status"] == 429
        other = await connect_as(ws, "203.0.113.8")  # someone else behind the same proxy
        await other.settles_on(3)
        a.close()
        await b.settles_on(2)
        again = await connect_as(ws, "203.0.113.7")
        await again.settles_on(3)
        for c in (b, other, again):
            c.close()

    io_loop.run_sync(scenario, timeout=60)
    assert metric(server.base_url, "rrr_limited_total", 'limit="sockets_per_ip"') == 1
    deadline_ok = wait_sync(lambda: metric(server.base_url, "rrr_tracked_addresses") == 0)
    assert deadline_ok, "per-address counts are dropped once an address has no sockets"


def wait_sync(pred: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@gen_test
async def test_without_xheaders_a_client_cannot_pick_its_address(
    server_factory: ServerFactory, clients: list[Client]
) -> None:
    server = await server_factory(max_sockets_per_ip=1)
    clients.append(await connect_as(server.ws_url("/ws/"), "198.51.100.1"))
    with pytest.raises(HTTPClientError) as refused:
        await connect_as(server.ws_url("/ws/"), "198.51.100.2")
    assert refused.value.code == 429
    assert server.metric("rrr_open_sockets") == 1


@gen_test
async def test_subscriptions_per_address(server_factory: ServerFactory, clients: list[Client]) -> None:
    server = await server_factory(max_subscriptions_per_ip=3)
    a = await connect(server.ws_url("/ws/"))
    b = await connect(server.ws_url("/ws/count/r/"))  # the talk's socket holds one too
    clients += [a, b]
    for sub in ("t1", "t2"):
        await a.send(type="subscribe", room="r", sub=sub)
    await b.settles_on(2, 3)
    await a.send(type="subscribe", room="s", sub="t3")
    err = await a.next("error", after=0)
    assert (err["code"], err["room"], err["sub"]) == ("too_many_subscriptions", "s", "t3")
    assert server.metric("rrr_tracked_addresses") == 1
    b.close()
    await a.settles_on(1, 2, room="r")
    await a.send(type="subscribe", room="s", sub="t3")
    await a.settles_on(1, 1, room="s")
    assert server.metric("rrr_limited_total", {"limit": "subscriptions_per_ip"}) == 1
    a.close()
    await wait_until(lambda: server.metric("rrr_tracked_addresses") == 0, what="the address forgotten")


# -- presence member lists ---------------------------------------------------------------------------

SECRET = "caps-test-secret-of-decent-length"
TEAM = "presence-caps"


async def presence_member(server_url: str, user: str, info: dict[str, Any], subscribe: bool = True) -> Client:
    c = await connect(server_url)
    claims = {"sub": user, "exp": time.time() + 600, "rooms": [TEAM], "info": info}
    await c.send(type="auth", token=jwt.encode(claims, SECRET, algorithm="HS256"))
    await c.next("authenticated", after=0)
    if subscribe:
        await c.send(type="subscribe", room=TEAM, sub="t")
    return c


def lists(c: Client) -> list[dict[str, Any]]:
    return [f for f in c.of_type("presence") if f["room"] == TEAM]


@gen_test
async def test_resubscribing_to_a_presence_room_in_a_loop_is_refused_past_a_budget_of_member_lists(
    server_factory: ServerFactory, clients: list[Client],
) -> None:
    """Each presence subscription is sent the room's whole member list: unsubscribing and
    subscribing again within the frame rate turned a few bytes up into a list down each time."""
    server = await server_factory(token_secret=SECRET, presence_list_rate=0.001, presence_list_burst=5)
    url = server.ws_url("/ws/")
    crowd = [await presence_member(url, f"user-{i}", {"bio": "b" * 900}) for i in range(8)]
    clients += crowd
    await wait_until(lambda: any(len(f["members"]) == 8 for f in lists(crowd[-1])), what="8 members listed")
    one_list = max(len(json.dumps(f)) for f in lists(crowd[-1]))
    loop = await presence_member(url, "looper", {"bio": "l"}, subscribe=False)
    clients.append(loop)
    for i in range(30):  # each time, the list (or the refusal), then off and on again
        n = len(loop.frames)
        await loop.send(type="subscribe", room=TEAM, sub=f"s{i}")
        await wait_until(lambda: any(f["type"] in ("presence", "error") for f in loop.frames[n:]), what="an answer")
        await loop.send(type="unsubscribe", room=TEAM, sub=f"s{i}")
    refused = loop.of_type("error")
    assert {e["code"] for e in refused} == {"rate_limited"}
    assert [(e["room"], e["sub"]) for e in refused] == [(TEAM, f"s{i}") for i in range(5, 30)]
    assert server.metric("rrr_limited_total", {"limit": "presence_list_rate"}) == 25
    await ping_pong(loop)  # the socket is up
    assert len(lists(loop)) == 5
    # Bytes down: five lists, and a few hundred bytes for each other frame (refusals, counts).
    down = sum(len(json.dumps(f)) for f in loop.frames)
    assert down < 5 * (one_list + 100) + 400 * (len(loop.frames) - 5), down
    # Other rooms and other sockets are untouched: a fresh socket subscribes and gets its list.
    await loop.send(type="subscribe", room="lobby", sub="t")
    await loop.settles_on(1, 1, room="lobby")
    newcomer = await presence_member(url, "newcomer", {"bio": "n"})
    clients.append(newcomer)
    await wait_until(lambda: any("newcomer" in f["members"] for f in lists(newcomer)), what="the newcomer's list")
    assert newcomer.of_type("error") == []


@gen_test
async def test_the_default_member_list_budget_lets_tabs_reload(
    server_factory: ServerFactory, clients: list[Client],
) -> None:
    """A page with 5 tabs in a presence room, every tab reloaded three times in quick succession
    over the one shared socket: 15 subscriptions at once, none refused."""
    server = await server_factory(token_secret=SECRET)
    c = await presence_member(server.ws_url("/ws/"), "ada", {"name": "Ada"}, subscribe=False)
    clients.append(c)
    for _ in range(3):
        for tab in range(5):
            await c.send(type="unsubscribe", room=TEAM, sub=f"tab-{tab}")
            await c.send(type="subscribe", room=TEAM, sub=f"tab-{tab}")
    await c.settles_on(1, 5, room=TEAM)
    await wait_until(lambda: lists(c), what="the member list")
    assert c.of_type("error") == []
    assert server.metric("rrr_limited_total", {"limit": "presence_list_rate"}) == 0


# -- the JSON API --------------------------------------------------------------------------------------


@gen_test
async def test_room_api_is_rate_limited_per_address(server_factory: ServerFactory) -> None:
    server = await server_factory(api_rate=0.001, api_burst=3)
    url = f"{server.base_url}/api/rooms/r"
    for _ in range(3):
        assert (await asyncio.to_thread(http_get, url))[0] == 200
    status, headers, body = await asyncio.to_thread(http_get, url)
    assert status == 429
    assert headers["Content-Type"].startswith("application/json")
    assert int(headers["Retry-After"]) >= 1
    assert body["status"] == 429 and "error" in body
    assert (await asyncio.to_thread(http_get, f"{server.base_url}/healthz"))[0] == 200
    assert server.metric("rrr_limited_total", {"limit": "api_rate"}) == 1
    assert server.metric("rrr_tracked_addresses") == 1


def http_get_as(url: str, ip: str) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers={"X-Real-IP": ip})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


@gen_test
async def test_history_reads_are_limited_in_bytes_per_address(server_factory: ServerFactory) -> None:
    """Each read of a room's history can be hundreds of kilobytes: the request rate alone let one
    address pull hundreds of megabytes a second. 5 messages of 30 KB against a burst of 100 KB: one
    response bigger than the whole burst is still sent, then the address owes it."""
    server = await server_factory(api_token="tok", xheaders=True, history_read_rate=1000, history_read_burst=100_000)
    for i in range(5):
        request = tornado.httpclient.HTTPRequest(
            f"{server.base_url}/api/rooms/big/messages", method="POST", body=json.dumps(f"{i}" * 30_000),
            headers={"Authorization": "Bearer tok"},
        )
        assert (await tornado.httpclient.AsyncHTTPClient().fetch(request)).code == 202
    url = f"{server.base_url}/api/rooms/big/messages?since=0"
    status, _, body = await asyncio.to_thread(http_get_as, url, "203.0.113.9")
    assert status == 200 and len(body) > 150_000 and len(json.loads(body)["messages"]) == 5
    for tail in ("?since=0", "?since=5"):  # in debt: even a small read waits
        status, headers, body = await asyncio.to_thread(http_get_as, url.split("?")[0] + tail, "203.0.113.9")
        assert status == 429, (tail, status)
        assert int(headers["Retry-After"]) >= 40  # about 50 KB owed at 1 KB/s
        assert json.loads(body)["status"] == 429
    assert server.metric("rrr_limited_total", {"limit": "history_bytes"}) == 2
    # Another address is not held back, and the room API (small answers) is not either.
    assert (await asyncio.to_thread(http_get_as, url, "203.0.113.10"))[0] == 200
    assert (await asyncio.to_thread(http_get_as, f"{server.base_url}/api/rooms/big", "203.0.113.9"))[0] == 200
    assert server.metric("rrr_tracked_addresses") >= 2


@gen_test
async def test_a_repaid_history_budget_is_forgotten(server_factory: ServerFactory) -> None:
    server = await server_factory(api_token="tok", api_rate=0, history_read_rate=1_000_000, history_read_burst=10_000)
    request = tornado.httpclient.HTTPRequest(
        f"{server.base_url}/api/rooms/owed/messages", method="POST", body=json.dumps("x" * 30_000),
        headers={"Authorization": "Bearer tok"},
    )
    assert (await tornado.httpclient.AsyncHTTPClient().fetch(request)).code == 202
    status, _, body = await asyncio.to_thread(http_get, f"{server.base_url}/api/rooms/owed/messages?since=0")
    assert status == 200 and len(body["messages"]) == 1  # 30 KB against a 10 KB burst: 20 KB owed
    await wait_until(lambda: server.metric("rrr_tracked_addresses") == 0, what="the address forgotten once repaid")


@gen_test
async def test_a_refilled_bucket_is_forgotten(server_factory: ServerFactory) -> None:
    server = await server_factory(api_rate=50, api_burst=2)
    for _ in range(3):
        await asyncio.to_thread(http_get, f"{server.base_url}/api/rooms/r")
    await wait_until(lambda: server.metric("rrr_tracked_addresses") == 0, what="the address forgotten")


def test_rate_limiter_state_stays_bounded_under_an_address_scan() -> None:
    limiter = RateLimiter(rate=1e9, burst=1)  # every bucket is full again a nanosecond later
    largest = 0
    for i in range(20000):
        assert limiter.take(f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}") == 0.0
        largest = max(largest, len(limiter))
    assert largest <= 1025
    assert limiter.sweep() == 0
    slow = RateLimiter(rate=0.001, burst=1)
    assert slow.take("a") == 0.0 and slow.take("a") > 100 and slow.take("b") == 0.0
    assert len(slow) == 2
    assert RateLimiter(rate=0, burst=0).take("a") == 0.0  # off


def test_the_ledger_of_held_bytes_stays_bounded() -> None:
    held = HeldBytes(per_address=10**12, total=10**12, ttl=0.5)
    for _ in range(50_000):  # one address publishing as fast as it can: one entry per slice of time
        assert held.take("203.0.113.1", 10) is None
    assert len(held) <= HeldBytes.SLICES + 2 and 0 < held.held("203.0.113.1") <= 500_000
    for i in range(5000):  # an address scan
        assert held.take(f"10.0.{i >> 8}.{i & 255}", 1) is None
    time.sleep(0.6)
    assert held.expire() == 0 and len(held) == 0 and held.total == 0


def test_held_bytes_refuse_per_address_and_in_all_and_count_nothing_refused() -> None:
    held = HeldBytes(per_address=100, total=150, ttl=60)
    assert held.take("a", 100) is None
    assert held.take("a", 1) is not None
    assert held.take("b", 51) is not None  # 151 in all
    assert held.take("b", 50) is None
    assert (held.held("a"), held.held("b"), held.total) == (100, 50, 150)
    assert HeldBytes(per_address=100, total=150, ttl=0).take("a", 10**9) is None  # history off: nothing held
