"""A session's POSTs and polls may reach any process behind a round-robin balancer: a process that
does not hold the session hands the request to the one that does, through Redis, and answers with
what the owner answered (rrr/edge/handoff.py). Two servers on one Redis here; through real nginx
round-robin in front of two ``app.py`` processes at the end."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

from rrr.backplane import keys
from support.clients import Client, connect, wait_until
from support.processes import AppProcess
from support.production import Cluster
from support.redis import SlowReplyProxy
from support.servers import Server, ServerFactory
from support.transports import PollClient, Response, SseClient, post, request, sessions_of

pytestmark = pytest.mark.gen_test(timeout=120)


async def publish(server: Server, room: str, data: Any) -> None:
    r = await request(f"{server.base_url}/api/rooms/{room}/messages", "POST", json.dumps(data),
                      {"Authorization": "Bearer tok"})
    assert r.status == 202, r.body


async def two(server_factory: ServerFactory, **options: Any) -> tuple[Server, Server]:
    options.setdefault("publish_token", "tok")
    return await server_factory(**options), await server_factory(**options)


async def test_a_post_landing_on_another_process_is_taken_by_the_owner_in_order(
    server_factory: ServerFactory, streams: list[SseClient | PollClient],
) -> None:
    owner, other = await two(server_factory, client_publish=True)
    s = await SseClient.open(owner.base_url)
    streams.append(s)
    await s.started()
    assert s.session.startswith(owner.service.process_tag)
    r = await post(other.base_url, "sse", s.session, {"type": "subscribe", "room": "hand", "sub": "t"})
    assert (r.status, r.body) == (202, b"")
    await s.next("subscribed", after=0)
    # Frames alternate between the two processes, one at a time as the library sends them: in order.
    for n in range(20):
        via = (owner, other)[n % 2]
        frame = {"type": "publish", "room": "hand", "data": n}
        assert (await post(via.base_url, "sse", s.session, frame)).status == 202
    await wait_until(lambda: len(s.of_type("message")) == 20, what="20 messages")
    assert [m["data"] for m in s.of_type("message")] == list(range(20))
    assert other.metric("rrr_handoffs_total", {"op": "post", "result": "202"}) == 11
    assert owner.metric("rrr_handoffs_total", {"op": "post", "result": "202"}) == 0
    assert other.metric("rrr_open_sockets") == 0 and owner.metric("rrr_open_sockets") == 1


async def test_a_poll_landing_on_another_process_waits_there_for_the_owners_frames(
    server_factory: ServerFactory, streams: list[SseClient | PollClient],
) -> None:
    owner, other = await two(server_factory, poll_timeout=5)
    p = await PollClient.open(owner.base_url, poll=False)
    streams.append(p)
    p.base = other.base_url  # every request from now on lands on the other process
    assert (await p.send(type="subscribe", room="hp", sub="t")).status == 202
    first = await p.poll_once()
    assert first.status == 200 and first.header("cache-control") == "no-store"
    p.take(first.json())
    assert p.of_type("subscribed") and p.seq >= 1
    waiting = asyncio.ensure_future(p.poll_once())
    await asyncio.sleep(0.5)
    assert not waiting.done()
    published = time.monotonic()
    await publish(owner, "hp", "through")
    answer = await waiting
    assert time.monotonic() - published < 1.0
    p.take(answer.json())
    assert p.frames[-1]["data"] == "through" or any(f.get("data") == "through" for f in p.frames)
    # An empty poll still waits --poll-timeout, not the handoff's own timeout.
    p.take((await p.poll_once()).json())
    started = time.monotonic()
    empty = await p.poll_once()
    assert empty.json() == {"seq": p.seq, "frames": []}
    assert 5 <= time.monotonic() - started < 7
    assert other.metric("rrr_handoffs_total", {"op": "poll", "result": "200"}) >= 3


async def test_refusals_come_back_from_the_owner_as_they_are(
    server_factory: ServerFactory, streams: list[SseClient | PollClient],
) -> None:
    owner, other = await two(server_factory, message_rate=1, message_burst=1, poll_timeout=5)
    s = await SseClient.open(owner.base_url)
    streams.append(s)
    await s.started()
    assert (await post(other.base_url, "sse", s.session, {"type": "ping"})).status == 202
    limited = await post(other.base_url, "sse", s.session, {"type": "ping"})
    assert limited.status == 429 and limited.header("retry-after") == "1"
    assert limited.json()["error"].startswith("more frames than --message-rate allows")
    # Judged where it lands, before any handoff: not one JSON frame.
    before = other.metric("rrr_handoffs_total", {"op": "post", "result": "429"})
    assert (await post(other.base_url, "sse", s.session, "[1, 2]")).status == 400
    assert other.metric("rrr_handoffs_total", {"op": "post", "result": "429"}) == before
    s.close()
    await wait_until(lambda: owner.metric("rrr_open_sockets") == 0, what="the stream's end")
    ended = await post(other.base_url, "sse", s.session, {"type": "ping"})
    assert (ended.status, ended.json()["error"]) == (404, "unknown session")
    assert other.metric("rrr_handoffs_total", {"op": "post", "result": "404"}) == 1
    p = await PollClient.open(owner.base_url, poll=False)
    streams.append(p)
    ahead = await request(f"{other.base_url}/poll/{p.session}/?seq=5")
    assert ahead.status == 400 and "past" in ahead.json()["error"]


async def test_a_session_whose_process_is_gone_is_404_at_once(
    server_factory: ServerFactory, streams: list[SseClient | PollClient],
) -> None:
    owner, other = await two(server_factory, poll_timeout=5)
    p = await PollClient.open(owner.base_url, poll=False)
    streams.append(p)
    await owner.service.shutdown()  # its pub/sub connection, with its inbox, is gone
    owner.http.stop()
    started = time.monotonic()
    assert (await post(other.base_url, "poll", p.session, {"type": "ping"})).status == 404
    gone = await request(f"{other.base_url}/poll/{p.session}/?seq=0")
    assert (gone.status, gone.json()["error"]) == (404, "unknown session")
    assert time.monotonic() - started < 1.0
    assert other.metric("rrr_handoffs_total", {"op": "post", "result": "gone"}) == 1
    assert other.metric("rrr_handoffs_total", {"op": "poll", "result": "gone"}) == 1


async def test_on_one_redis_a_process_is_there_while_its_inbox_has_a_listener(server_factory: ServerFactory) -> None:
    """What the backplane's ``alive`` answers on one Redis (PUBSUB NUMSUB of the inbox); a cluster's
    liveness key is tests/test_cluster.py's."""
    owner, other = await two(server_factory)
    tag = owner.service.process_tag
    await wait_until(lambda: other.service.presence.alive(tag), what="the owner's inbox listened to")
    assert not await other.service.presence.alive("Nobody00")
    await owner.service.shutdown()
    owner.http.stop()
    assert not await other.service.presence.alive(tag)


async def test_an_owner_that_never_answers_gets_the_client_a_503(
    server_factory: ServerFactory, redis_url: str,
) -> None:
    """A listener on the inbox that answers nothing (a stalled process): the asker gives up after its
    timeout (twice --redis-timeout, plus 5 s for a token's key set), so the library opens a new session."""
    other = await server_factory(redis_timeout=0.5)
    listener = redis.Redis.from_url(redis_url).pubsub()
    listener.subscribe(keys.inbox_channel("Stalled0"))
    try:
        started = time.monotonic()
        r = await post(other.base_url, "sse", "Stalled0" + "A" * 22, {"type": "ping"}, timeout=20)
        assert r.status == 503 and r.header("retry-after") == "1"
        assert "did not answer" in r.json()["error"]
        assert 6 <= time.monotonic() - started < 9
        assert other.metric("rrr_handoffs_total", {"op": "post", "result": "timeout"}) == 1
    finally:
        listener.close()


async def test_a_malformed_inbox_message_is_counted_and_dropped(
    server_factory: ServerFactory, redis_url: str, streams: list[SseClient | PollClient],
) -> None:
    server = await server_factory()
    inbox = keys.inbox_channel(server.service.process_tag)
    r = redis.Redis.from_url(redis_url)
    junk = [b"\xff\xfe", b"Q 1 tag post sse", b"A x 200 0\n", b"Q 1 Tag12345 post sse ../../etc -\n{}",
            b"Q 1 Tag12345 poll sse " + b"A" * 30 + b" 0\n", b"Q -1 Tag12345 post sse " + b"A" * 30 + b" -\n{}"]
    for payload in junk:
        r.publish(inbox, payload)
    r.close()
    await wait_until(lambda: server.metric("rrr_malformed_payloads_total") == len(junk), what="each counted")
    s = await SseClient.open(server.base_url)
    streams.append(s)
    await s.started()
    assert (await s.send(type="ping")).status == 202
    await s.next("pong", after=0)


async def test_kill_9_of_a_sessions_process_the_counts_converge_and_its_sessions_are_404(
    app_factory: Callable[..., AppProcess], redis_url: str, streams: list[SseClient | PollClient],
    clients: list[Client],
) -> None:
    """The presence of a killed process's sessions goes with its lease, as its sockets' does; a
    request for one of them that reaches a survivor is answered 404 (the library opens a new one)."""
    ttl = 2.0
    victim = app_factory(redis_url=redis_url, presence_ttl=ttl, poll_timeout=5)
    survivor = app_factory(redis_url=redis_url, presence_ttl=ttl, poll_timeout=5)
    s, p, watcher = await sessions_of(victim.base_url, survivor.base_url, "k9", streams, clients)
    killed_at = time.monotonic()
    victim.kill()
    await watcher.settles_on(1, timeout=ttl + 10)
    converged = time.monotonic() - killed_at
    assert converged <= ttl + 2.0, f"took {converged:.2f} s with presence-ttl {ttl}"
    assert (await post(survivor.base_url, "sse", s.session, {"type": "ping"})).status == 404
    assert (await request(f"{survivor.base_url}/poll/{p.session}/?seq={p.seq}")).status == 404


async def relayed_pair(
    app_factory: Callable[..., AppProcess], redis_url: str, **options: Any,
) -> tuple[AppProcess, SlowReplyProxy, AppProcess, SlowReplyProxy]:
    """Two app.py processes on one Redis, each through its own relay (so one's publishes can be made to fail)."""
    port = int(redis_url.split(":")[2].split("/")[0])
    made: list[Any] = []
    for _ in range(2):
        proxy = await SlowReplyProxy(port).start()
        # Started off this loop: the relay runs on it, and app.py's start waits for /healthz.
        made += [await asyncio.to_thread(app_factory, redis_url=proxy.url, **options), proxy]
    return made[0], made[1], made[2], made[3]


async def stop_relayed(*made: AppProcess | SlowReplyProxy) -> None:
    """The apps first (off this loop: their shutdown still talks to Redis through the relays), then the relays."""
    for thing in made:
        if isinstance(thing, AppProcess):
            await asyncio.to_thread(thing.stop)
    for thing in made:
        if isinstance(thing, SlowReplyProxy):
            await thing.close()


async def a_post_taken_its_answer_cut(
    owner: AppProcess, owner_relay: SlowReplyProxy, other: AppProcess, streams: list[SseClient | PollClient],
) -> tuple[SseClient, asyncio.Future[Response]]:
    """An SSE session on ``owner``, and a ping POSTed for it to ``other``: handed over and taken by the
    owner, whose answer to ``other`` never reaches Redis until ``owner_relay.disarm()``. The POST's answer
    is still out."""
    s = await SseClient.open(owner.base_url)
    streams.append(s)
    await s.started()
    owner_relay.cut_before(keys.inbox_channel(await tag_of(other)).encode())
    answer = asyncio.ensure_future(post(other.base_url, "sse", s.session, {"type": "ping"}, timeout=20))
    await asyncio.wait_for(owner_relay.held.wait(), 10)  # the owner took the frame; its answer was cut
    return s, answer


async def test_a_handed_over_poll_whose_client_left_and_whose_answer_cannot_go_lets_its_session_end(
    app_factory: Callable[..., AppProcess], redis_url: str, streams: list[SseClient | PollClient],
    clients: list[Client],
) -> None:
    """The soak's suspect (#27): a session abandoned with a poll parked on its owner for another process
    whose client hung up, and the owner's answer publish failing. The owner's waiter goes after
    --poll-timeout all the same, and the session nobody polls ends --poll-timeout + 10 s later."""
    owner, owner_relay, other, other_relay = await relayed_pair(
        app_factory, redis_url, poll_timeout=2, presence_ttl=2, redis_timeout=1)
    try:
        p = await PollClient.open(owner.base_url, poll=False)
        streams.append(p)
        assert (await p.send(type="subscribe", room="left-behind", sub="t")).status == 202
        p.take((await p.poll_once()).json())
        assert p.of_type("subscribed")
        watcher = await connect(other.base_url.replace("http", "ws") + "/ws/count/left-behind/")
        clients.append(watcher)
        await watcher.settles_on(2)
        while (answer := (await p.poll_once()).json())["frames"]:  # up to date: the next poll waits
            p.take(answer)
        # Every answer the owner publishes to the other process's inbox: run, and its connection cut.
        owner_relay.cut_reply_to(keys.inbox_channel(await tag_of(other)).encode(), every=True)
        other_relay.hold_reply_to(keys.inbox_channel(p.session[:8]).encode(), 0.0)  # marks the handoff's publish
        p.base = other.base_url
        parked = asyncio.ensure_future(p.poll_once())
        await wait_until(other_relay.held.is_set, what="the poll handed over to the owner")
        assert not parked.done()  # it waits there: nothing is new
        parked.cancel()  # the client hangs up and polls no more: the session is abandoned
        await asyncio.gather(parked, return_exceptions=True)
        await wait_until(lambda: "could not answer a handed-over request" in owner.log(), timeout=20,
                         what="the owner's answer publish failing")
        # Gone within --poll-timeout + 10 s + --presence-ttl of its last poll (with room to spare).
        await watcher.settles_on(1, timeout=2 + 10 + 2 + 20)
        metrics = (await request(f"{other.base_url}/metrics")).body.decode()
        assert 'rrr_handoffs_total{op="poll",result="abandoned"} 1.0' in metrics  # the client's hang-up
        assert (await request(f"{owner.base_url}/poll/{p.session}/?seq={p.seq}")).status == 404
    finally:
        await stop_relayed(owner, owner_relay, other, other_relay)


async def test_a_stream_that_dies_while_its_posts_cannot_be_handed_over_ends_its_session(
    app_factory: Callable[..., AppProcess], redis_url: str, streams: list[SseClient | PollClient],
    clients: list[Client],
) -> None:
    """An SSE session's POST lands on the other process, whose handoff publish fails (503); the client
    then drops the stream and opens a new one, as the library does. The old session goes with its stream."""
    owner, owner_relay, other, other_relay = await relayed_pair(
        app_factory, redis_url, poll_timeout=2, presence_ttl=2, redis_timeout=1)
    try:
        s = await SseClient.open(owner.base_url)
        streams.append(s)
        await s.started()
        assert (await post(owner.base_url, "sse", s.session, {"type": "subscribe", "room": "dropped",
                                                              "sub": "t"})).status == 202
        await s.next("subscribed", after=0)
        watcher = await connect(other.base_url.replace("http", "ws") + "/ws/count/dropped/")
        clients.append(watcher)
        await watcher.settles_on(2)
        other_relay.hold_reply_to(keys.inbox_channel(await tag_of(owner)).encode(), 5, every=True)
        r = await post(other.base_url, "sse", s.session, {"type": "ping"}, timeout=20)
        assert r.status == 503, (r.status, r.body)
        s.close()
        await watcher.settles_on(1, timeout=30)
        assert (await post(owner.base_url, "sse", s.session, {"type": "ping"})).status == 404
    finally:
        await stop_relayed(owner, owner_relay, other, other_relay)


async def test_an_answer_a_redis_blip_kept_from_the_asker_is_sent_again_and_the_post_is_202(
    app_factory: Callable[..., AppProcess], redis_url: str, streams: list[SseClient | PollClient],
) -> None:
    """The soak's drains (#27): the owner took a handed-over POST's frame, but Redis would not take its
    answer for a moment; the asker answered 503 after its timeout, the client opened a new session and the
    old one counted in its rooms until it expired. The owner now sends its answer again while it is awaited."""
    owner, owner_relay, other, other_relay = await relayed_pair(
        app_factory, redis_url, poll_timeout=2, presence_ttl=2, redis_timeout=1)
    try:
        s, answer = await a_post_taken_its_answer_cut(owner, owner_relay, other, streams)
        await asyncio.sleep(1.5)  # longer than the client's own retry of a broken connection
        owner_relay.disarm()
        r = await answer
        assert r.status == 202, (r.status, r.body)
        await s.next("pong", after=0)
    finally:
        await stop_relayed(owner, owner_relay, other, other_relay)


async def test_a_post_a_draining_process_handed_over_still_gets_the_owners_202(
    app_factory: Callable[..., AppProcess], redis_url: str, streams: list[SseClient | PollClient],
) -> None:
    """The soak's drains (#27): a balancer's POST in flight to a process told SIGTERM, for a session
    another process holds. The owner took the frame; the draining process keeps listening on its inbox
    until the answer comes, and passes the 202 on (it was cut, and the client opened a new session
    while the one it left counted in its rooms until it expired)."""
    owner, owner_relay, draining, draining_relay = await relayed_pair(
        app_factory, redis_url, poll_timeout=2, presence_ttl=2, redis_timeout=1)
    try:
        s, answer = await a_post_taken_its_answer_cut(owner, owner_relay, draining, streams)
        draining.signal(signal.SIGTERM)
        await asyncio.sleep(1.0)  # the drain is under way
        owner_relay.disarm()
        r = await answer
        assert r.status == 202, (r.status, r.body)
        await s.next("pong", after=0)
        assert await asyncio.to_thread(draining.exited) == 0  # a clean drain
    finally:
        await stop_relayed(owner, owner_relay, draining, draining_relay)


async def test_a_poll_a_draining_process_handed_over_is_answered_at_once_with_nothing_new(
    app_factory: Callable[..., AppProcess], redis_url: str, streams: list[SseClient | PollClient],
) -> None:
    """A poll parked on a process told SIGTERM, for another's session, gets the answer a quiet
    --poll-timeout gets (nothing new, the same seq) at once, not a cut connection; the session goes on
    where it is held, nothing lost."""
    owner, owner_relay, draining, draining_relay = await relayed_pair(
        app_factory, redis_url, poll_timeout=30, presence_ttl=2, redis_timeout=1, client_publish=True)
    try:
        p = await PollClient.open(owner.base_url, poll=False)
        streams.append(p)
        assert (await p.send(type="ping")).status == 202
        p.take((await p.poll_once(timeout=10)).json())  # at once: the pong was waiting
        assert p.of_type("pong")  # and nothing more is: the next poll parks
        draining_relay.hold_reply_to(keys.inbox_channel(p.session[:8]).encode(), 0.0)  # marks the handoff
        p.base = draining.base_url
        parked = asyncio.ensure_future(p.poll_once())
        await wait_until(draining_relay.held.is_set, what="the poll handed over to the owner")
        seq = p.seq
        started = time.monotonic()
        draining.signal(signal.SIGTERM)
        r = await asyncio.wait_for(parked, 20)
        assert (r.status, r.json()) == (200, {"seq": seq, "frames": []}), (r.status, r.body)
        assert time.monotonic() - started < 10  # not the 30 s --poll-timeout
        p.base = owner.base_url
        assert (await p.send(type="ping")).status == 202
        p.take((await p.poll_once(timeout=10)).json())
        assert len(p.of_type("pong")) == 2
        assert await asyncio.to_thread(draining.exited) == 0  # a clean drain
    finally:
        await stop_relayed(owner, owner_relay, draining, draining_relay)


@pytest.mark.nginx
async def test_posts_and_polls_behind_nginx_round_robin_reach_the_owner(
    cluster_factory: Callable[..., Cluster], redis_url: str, streams: list[SseClient | PollClient],
) -> None:
    """Two app.py processes behind real nginx, balanced round-robin: one session's requests land on
    both, and each is taken by the process that holds the session."""
    cluster = cluster_factory(redis_url, n=2, nginx={"balance": "round-robin"}, poll_timeout=3,
                              client_publish=True)
    base = cluster.nginx.base_url
    s = await SseClient.open(base)
    streams.append(s)
    await s.started()
    tags = [await tag_of(a) for a in cluster.apps]
    owner = next(a for a, tag in zip(cluster.apps, tags) if s.session.startswith(tag))
    elsewhere = next(a for a in cluster.apps if a is not owner)
    assert (await post(base, "sse", s.session, {"type": "subscribe", "room": "rr", "sub": "t"})).status == 202
    await s.next("subscribed", after=0)  # what is published before it is not the subscription's
    for n in range(10):
        assert (await post(base, "sse", s.session, {"type": "publish", "room": "rr", "data": n})).status == 202
    await wait_until(lambda: len(s.of_type("message")) == 10, what="10 messages through nginx")
    assert [m["data"] for m in s.of_type("message")] == list(range(10))
    handed = await handoffs(elsewhere, "post")
    assert 4 <= handed <= 7, f"round-robin sends about half of the 11 POSTs to the other process, not {handed}"
    assert await handoffs(owner, "post") == 0

    p = await PollClient.open(base)
    streams.append(p)
    assert (await p.send(type="subscribe", room="rr", sub="p")).status == 202
    await p.next("subscribed", after=0)
    for n in range(6):
        await p.send(type="publish", room="rr", data=f"p{n}")
    await wait_until(lambda: len(p.of_type("message")) == 6, what="6 messages by polling through nginx")
    assert [m["data"] for m in p.of_type("message")] == [f"p{n}" for n in range(6)]
    assert sum([await handoffs(a, "poll") for a in cluster.apps]) >= 2
    # Whoever holds a session id speaks for the session: no log line shows one, only its owner's tag.
    logs = cluster.logs() + (cluster.nginx.run_dir / "logs" / "access.log").read_text()
    for session in (s.session, p.session):
        assert session not in logs
        assert f"/{session[:8]}.../" in logs


async def tag_of(app: AppProcess) -> str:
    """A process's tag: what the ids of the sessions it opens start with (ask it for one)."""
    r = await request(f"{app.base_url}/poll/")
    return str(r.json()["session"])[:8]


async def handoffs(app: AppProcess, op: str) -> float:
    r = await request(f"{app.base_url}/metrics")
    total = 0.0
    for line in r.body.decode().splitlines():
        if line.startswith(f'rrr_handoffs_total{{op="{op}"'):
            total += float(line.rsplit(" ", 1)[1])
    return total
