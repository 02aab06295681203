"""A socket's session, fast (memory backplane, in-memory sockets): the caps (tabs per room,
subscriptions per socket and per address, rooms per process, member lists a second), the frame
rate limit, the publish rules (a subscription first, client publish or a grant, a rate, Redis
refusing), tokens (grants, refreshes, revocations, and expiry dropping exactly the subscriptions
that needed the token), and the talk's one-room socket. Each refusal is an ``error`` frame naming
what was refused, and registers nothing. End to end on a real Redis: test_caps.py,
test_identity.py, test_rooms_socket.py, test_count_socket.py."""

from __future__ import annotations

import pytest

from rrr.limits import AddressLimits, Limits
from support.memory_backplane import MemoryRedis
from support.memory_core import NodeFactory, eventually, quiet, token
from support.memory_socket import RecordingSocket

pytestmark = pytest.mark.gen_test(timeout=30)


def last_error(sock: RecordingSocket) -> dict[str, object]:
    errors = sock.of_type("error")
    assert errors, f"no error frame in {sock.frames}"
    return errors[-1]


async def test_a_socket_holds_at_most_max_tabs_per_room_tabs_in_one_room(
    nodes: NodeFactory, memory_redis: MemoryRedis,
) -> None:
    a = await nodes(limits=Limits(max_tabs_per_room=2))
    s = a.socket()
    for sub in ("t1", "t2", "t3"):
        await s.send(type="subscribe", room="r", sub=sub)
    error = last_error(s)
    assert (error["code"], error["room"], error["sub"]) == ("too_many_tabs", "r", "t3")
    await s.send(type="subscribe", room="r2", sub="t3")
    await eventually(lambda: a.row("r") == (1, 2) and a.row("r2") == (1, 1), what="2 tabs in r, 1 in r2")
    assert a.metric("rrr_limited_total", {"limit": "tabs_per_room"}) == 1
    assert len(s.of_type("error")) == 1


async def test_a_socket_holds_at_most_max_subscriptions_and_an_unsubscribe_frees_one(nodes: NodeFactory) -> None:
    a = await nodes(limits=Limits(max_subscriptions=3))
    s = a.socket()
    for room in ("r1", "r2", "r3", "r4"):
        await s.send(type="subscribe", room=room, sub="t")
    assert s.errors() == ["too_many_subscriptions"] and last_error(s)["room"] == "r4"
    await s.send(type="unsubscribe", room="r1", sub="t")
    await s.send(type="subscribe", room="r4", sub="t")
    await eventually(lambda: a.row("r4") == (1, 1), what="r4 once r1 was let go")
    assert s.errors() == ["too_many_subscriptions"]


async def test_a_process_follows_at_most_max_rooms_and_a_room_it_follows_stays_open(nodes: NodeFactory) -> None:
    a = await nodes(limits=Limits(max_rooms=2))
    s1, s2 = a.socket(), a.socket()
    for room in ("r1", "r2", "r3"):
        await s1.send(type="subscribe", room=room, sub="t")
    assert s1.errors() == ["too_many_rooms"]
    await s2.send(type="subscribe", room="r1", sub="t")
    await eventually(lambda: a.row("r1") == (2, 2), what="a second socket in r1")
    assert s2.errors() == [] and sorted(a.hub.local_rooms()) == ["r1", "r2"]


async def test_subscriptions_per_address_count_every_socket_of_the_address(nodes: NodeFactory) -> None:
    a = await nodes(addresses=AddressLimits(max_subscriptions=3))
    s1, s2 = a.socket(ip="198.51.100.7"), a.socket(ip="198.51.100.7")
    other = a.socket(ip="203.0.113.9")
    await s1.send(type="subscribe", room="r", sub="t1")
    await s1.send(type="subscribe", room="r", sub="t2")
    await s2.send(type="subscribe", room="r", sub="t1")
    await s2.send(type="subscribe", room="r2", sub="t1")
    assert s2.errors() == ["too_many_subscriptions"]
    await other.send(type="subscribe", room="r2", sub="t1")
    assert other.errors() == []
    s1.hang_up()
    await eventually(lambda: s1.gone.is_set(), what="s1's close handled")
    await s2.send(type="subscribe", room="r2", sub="t1")
    await eventually(lambda: a.row("r2") == (2, 2), what="s2 in r2 once s1's were let go")


async def test_presence_subscriptions_spend_a_budget_of_member_lists(nodes: NodeFactory) -> None:
    a = await nodes(limits=Limits(presence_list_rate=0.001, presence_list_burst=2))
    s = await a.authed("ada", ["presence-*"])
    for sub in ("t1", "t2", "t3"):
        await s.send(type="subscribe", room="presence-p", sub=sub)
    error = last_error(s)
    assert (error["code"], error["sub"]) == ("rate_limited", "t3")
    await s.send(type="subscribe", room="r", sub="t1")  # not a presence room: no list, no budget
    assert len(s.of_type("error")) == 1


async def test_a_frame_flood_is_dropped_answered_once_then_closed(nodes: NodeFactory) -> None:
    a = await nodes(limits=Limits(message_rate=0.001, message_burst=5))
    s = a.socket()
    for _ in range(5):
        await s.send(type="ping")
    assert len(s.of_type("pong")) == 5
    for _ in range(5):
        await s.send(type="ping")
    assert len(s.of_type("pong")) == 5 and s.errors() == ["rate_limited"] and not s.closed
    await s.send(type="ping")
    assert s.close_code == 1008
    assert a.metric("rrr_limited_total", {"limit": "message_rate"}) == 6


async def test_publish_needs_client_publish_or_a_grant_and_then_a_subscription(
    nodes: NodeFactory, memory_redis: MemoryRedis,
) -> None:
    off, on = await nodes(), await nodes(limits=Limits(client_publish=True))
    s = off.socket()
    await s.send(type="subscribe", room="r", sub="t")
    await s.send(type="publish", room="r", data={"i": 1})
    assert s.errors() == ["publish_disabled"]
    p = on.socket()
    await p.send(type="publish", room="r", data={"i": 1})
    assert p.errors() == ["not_subscribed"] and last_error(p)["room"] == "r"
    await p.send(type="subscribe", room="r", sub="t")
    await eventually(lambda: p.of_type("subscribed") and s.of_type("subscribed"), what="both subscribed")
    await p.send(type="publish", room="r", data={"i": 2})
    await eventually(lambda: s.messages("r") == [{"i": 2}] and p.messages("r") == [{"i": 2}], what="2 delivered")
    assert memory_redis.metas["r"].o == 1, "a refused publish was stored"


async def test_private_rooms_need_a_grant_to_read_and_a_publish_grant_to_publish(nodes: NodeFactory) -> None:
    a = await nodes(limits=Limits(client_publish=True))
    anon = a.socket()
    await anon.send(type="subscribe", room="private-x", sub="t")
    assert anon.errors() == ["forbidden"]
    reader = await a.authed("ada", ["private-x"])
    await reader.send(type="subscribe", room="private-x", sub="t")
    await reader.send(type="publish", room="private-x", data={"i": 1})
    assert reader.errors() == ["forbidden"]
    writer = await a.authed("bob", [], publish=["private-*"])
    await writer.send(type="subscribe", room="private-x", sub="t")
    await eventually(lambda: reader.of_type("subscribed") and writer.of_type("subscribed"), what="both subscribed")
    await writer.send(type="publish", room="private-x", data={"i": 2})
    await eventually(lambda: reader.messages("private-x") == [{"i": 2}], what="the granted publish delivered")
    assert writer.errors() == []


async def test_publishes_are_rate_limited_per_socket_and_a_refused_one_is_unavailable(
    nodes: NodeFactory, memory_redis: MemoryRedis,
) -> None:
    a = await nodes(limits=Limits(client_publish=True, publish_rate=0.001, publish_burst=2))
    s = a.socket()
    await s.send(type="subscribe", room="r", sub="t")
    await eventually(lambda: s.of_type("subscribed"), what="subscribed")
    memory_redis.fail("history_publish")
    await s.send(type="publish", room="r", data={"i": 1})
    assert s.errors() == ["unavailable"]
    await s.send(type="publish", room="r", data={"i": 2})
    await s.send(type="publish", room="r", data={"i": 3})
    assert s.errors() == ["unavailable", "rate_limited"]
    await eventually(lambda: s.messages("r") == [{"i": 2}], what="2 delivered")


async def test_at_maxmemory_a_publish_is_refused_while_subscriptions_are_still_served_and_counted(
    nodes: NodeFactory, memory_redis: MemoryRedis,
) -> None:
    a = await nodes(limits=Limits(client_publish=True))
    memory_redis.oom = True
    s = a.socket()
    await s.send(type="subscribe", room="r", sub="t")
    await eventually(lambda: s.of_type("subscribed") and s.last_count("r") == (1, 1), what="served and counted")
    await s.send(type="publish", room="r", data={"i": 1})
    assert s.errors() == ["unavailable"]
    assert (await a.service.health())["memory"] is False
    memory_redis.oom = False
    assert (await a.service.health())["memory"] is True
    await s.send(type="publish", room="r", data={"i": 2})
    await eventually(lambda: s.messages("r") == [{"i": 2}], what="2 delivered")


async def test_an_expired_token_drops_exactly_the_subscriptions_that_needed_it(
    nodes: NodeFactory, memory_redis: MemoryRedis,
) -> None:
    a = await nodes(grace=0.05)
    s = a.socket()
    await s.send(type="auth", token=token("ada", rooms=["private-a", "presence-p"], ttl=0.4))
    for room in ("private-a", "presence-p", "r"):
        await s.send(type="subscribe", room=room, sub="t")
    assert sorted(a.hub.local_rooms()) == ["presence-p", "private-a", "r"]
    await eventually(lambda: len(s.of_type("error")) == 2, what="two subscriptions told the token expired")
    assert a.hub.local_rooms() == ["r"]
    assert {(e["code"], e["room"], e["sub"]) for e in s.of_type("error")} == {
        ("token_expired", "private-a", "t"), ("token_expired", "presence-p", "t"),
    }
    await eventually(lambda: a.row("private-a") is None and a.row("presence-p") is None, what="both let go")
    assert a.row("r") == (1, 1) and not s.closed
    assert memory_redis.members("presence-p") == {}
    await s.send(type="subscribe", room="private-a", sub="t")
    assert s.errors()[-1] == "forbidden"


async def test_a_refreshed_token_keeps_every_subscription(nodes: NodeFactory) -> None:
    a = await nodes()
    s = a.socket()
    await s.send(type="auth", token=token("ada", rooms=["private-a"], ttl=0.5))
    await s.send(type="subscribe", room="private-a", sub="t")
    await s.send(type="auth", token=token("ada", rooms=["private-a"], ttl=600))
    await quiet(0.6)
    assert s.errors() == [] and a.hub.local_rooms() == ["private-a"]
    assert len(s.of_type("authenticated")) == 2


async def test_a_bad_token_another_user_or_a_revoked_token_changes_nothing(
    nodes: NodeFactory, memory_redis: MemoryRedis,
) -> None:
    a = await nodes()
    s = await a.authed("ada", ["private-a"], iat=1_000)
    await s.send(type="auth", token="not-a-jwt")
    await s.send(type="auth", token=token("bob", rooms=["private-a"]))
    await a.presence.revoke("carol", 600)
    carol = a.socket()
    await carol.send(type="auth", token=token("carol", rooms=["private-a"], iat=1_000))
    assert s.errors() == ["bad_token", "bad_token"] and carol.errors() == ["bad_token"]
    await s.send(type="subscribe", room="private-a", sub="t")  # still ada
    await eventually(lambda: a.row("private-a") == (1, 1), what="ada in private-a")
    assert len(s.of_type("authenticated")) == 1


async def test_subscribing_twice_with_one_sub_is_one_tab(nodes: NodeFactory) -> None:
    a = await nodes()
    s = a.socket()
    await s.send(type="subscribe", room="r", sub="t")
    await s.send(type="subscribe", room="r", sub="t")
    await eventually(lambda: a.row("r") == (1, 1) and s.last_count("r") == (1, 1), what="one tab")
    assert len(s.of_type("subscribed")) == 1


async def test_the_talks_one_room_socket_joins_at_once_and_answers_its_ping_with_the_count(
    nodes: NodeFactory,
) -> None:
    a = await nodes()
    s = a.socket("r")
    await eventually(lambda: s.last_count("r") == (1, 1), what="counted")
    assert s.of_type("subscribed") == []
    await s.send_text("PING")  # the talk's worker, for each new tab
    assert s.counts("r")[-1] == (1, 1) and len(s.counts("r")) >= 2
    await s.send(type="subscribe", room="r2", sub="t")
    assert s.errors() == ["unsupported"]
    closed = a.socket("presence-p")
    assert closed.errors() == ["forbidden"] and closed.close_code == 1008
