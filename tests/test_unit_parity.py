"""The memory backplane (tests/support/memory_backplane.py) keeps faith with the real one: the same
scenario, run against a real redis-server (`rrr.backplane.connect`) and against `MemoryRedis`, gives
the same transcript, call by call: lease renewals, row and member writes and the totals they return,
reads, a sweep of a dead process and what it announces, sign-outs, raw relays, and history (offsets,
trimming, ``covers``, looks, the ``seen`` rule and its digest), and every event the subscriber hears, in order."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from rrr.backplane import Backplane, WriteResult, connect, keys
from rrr.backplane.history import Read, digest
from rrr.metrics import Metrics
from rrr.protocol import CountState
from support.memory_backplane import MemoryRedis
from support.memory_core import eventually
from support.memory_socket import RecordingEvents

pytestmark = pytest.mark.gen_test(timeout=60)

TTL = 1.0  # leases, in seconds of Redis's clock (real time on the real one)


class Epochs:
    """Epochs are random: each is named by the order it first appeared in."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {"": ""}

    def __call__(self, epoch: str) -> str:
        return self.names.setdefault(epoch, f"E{len(self.names)}")


def state(s: CountState) -> tuple[Any, ...]:
    return (s.connections, s.tabs, s.version, s.users, s.updated is not None)


def written(r: WriteResult) -> tuple[Any, ...]:
    return (r.lease_lost, {room: state(s) for room, s in r.states.items()})


async def scenario(a: Backplane, b: Backplane, elapse: Callable[[float], Awaitable[None]]) -> list[Any]:
    """Two processes on one Redis; ``a`` listens. Returns what every call answered and what ``a`` heard."""
    out: list[Any] = []
    epochs = Epochs()

    def read(r: Read, after: int) -> tuple[Any, ...]:
        return (epochs(r.epoch), r.top, r.entries, r.covers(after))

    heard = RecordingEvents()
    a.subscriber.bind(heard)
    run = asyncio.ensure_future(a.subscriber.run())
    try:
        await eventually(lambda: a.subscriber.connected, what="a's pub/sub")
        a.subscriber.follow("r")
        a.subscriber.follow("presence-p")
        await eventually(lambda: a.subscriber.synced and heard.of("control_confirmed"), what="a's rooms confirmed")
        out.append(("probe", await a.subscriber.probe(a.presence, 2.0)))

        out.append(("renew a", await a.presence.renew(), "renew b", await b.presence.renew()))
        out.append(("a writes", written(await a.presence.write(
            {"r": (1, 2), "presence-p": (1, 1)}, {"presence-p": ({"ada": '{"n":1}'}, [], False)}))))
        out.append(("b writes", written(await b.presence.write(
            {"r": (2, 3), "presence-p": (2, 2)}, {"presence-p": ({"ada": '{"n":2}', "bob": "null"}, [], False)}))))
        out.append(("unchanged", written(await a.presence.write({"r": (1, 2)}, {}))))
        out.append(("same member", written(await a.presence.write(
            {"presence-p": (1, 1)}, {"presence-p": ({"ada": '{"n":1}'}, [], False)}))))
        out.append(("totals", state(await b.presence.room_state("r")), state(await b.presence.room_state("q"))))
        out.append(("members", await b.presence.members("presence-p")))
        out.append(("a leaves r", written(await a.presence.write({"r": (0, 0)}))))
        out.append(("bob goes", written(await b.presence.write(
            {"presence-p": (1, 1)}, {"presence-p": ({}, ["bob"], False)}))))
        # After a resync b states its members whole: ada's field of b goes, cy comes.
        out.append(("b replaces", written(await b.presence.write(
            {"presence-p": (1, 1)}, {"presence-p": ({"cy": "null"}, [], True)}))))
        out.append(("members replaced", await b.presence.members("presence-p")))
        out.append(("b leaves r", written(await b.presence.write({"r": (0, 0)}))))

        # b stops renewing; a renews; b's lease runs out.
        await elapse(0.6 * TTL)
        out.append(("renew a", await a.presence.renew()))
        await elapse(0.6 * TTL)
        out.append(("b not counted", state(await a.presence.room_state("presence-p")),
                    await a.presence.members("presence-p")))
        out.append(("sweep", await a.presence.sweep(), await a.presence.sweep()))
        out.append(("b writes again", written(await b.presence.write({"presence-p": (1, 1)}))))
        out.append(("renew b", await b.presence.renew()))
        await b.presence.leave()
        out.append(("after leave", state(await a.presence.room_state("presence-p")),
                    await a.presence.members("presence-p")))

        at = await b.presence.revoke("ada", 60)
        out.append(("revoked", await a.presence.revoked_at("ada") == at, await a.presence.revoked_at("bob")))
        out.append(("raw", await b.presence.publish(keys.room_channel("r"), '{"raw":1}')))

        published = [await b.history.publish("r", json.dumps({"i": i})) for i in range(1, 6)]
        out.append(("published", [(p.offset, epochs(p.epoch), p.receivers) for p in published]))
        out.append(("position", read(await a.history.read("r", None), 5)))
        out.append(("after 1", read(await a.history.read("r", 1), 1)))
        out.append(("after 2", read(await a.history.read("r", 2), 2)))
        out.append(("look q", read(await a.history.look("q", 0), 0), "read q", read(await a.history.read("q", 0), 0)))
        out.append(("look r", read(await a.history.look("r", 4), 4)))
        out.append(("went back", read(await a.history.read("r", 5, seen=(published[0].epoch, 9, "")), 5)))
        again = await b.history.publish("r", '{"i":6}')
        out.append(("new epoch", again.offset, epochs(again.epoch)))
        seventh = await b.history.publish("r", '{"i":7}')
        out.append(("seventh", seventh.offset, epochs(seventh.epoch)))
        out.append(("digest unknown", read(await a.history.read("r", 7, seen=(again.epoch, 7, "")), 7)))
        out.append(("same at top", read(await a.history.read("r", 6, seen=(again.epoch, 7, digest('{"i":7}'))), 6)))
        out.append(("other at top", read(await a.history.read("r", 6, seen=(again.epoch, 7, digest('{"i":8}'))), 6)))
        out.append(("after reuse", read(await a.history.read("r", 4), 4)))
        eighth = await b.history.publish("r", '{"i":8}')
        out.append(("eighth", eighth.offset, epochs(eighth.epoch)))

        await eventually(lambda: any(e[0] == "message" and e[4] == '{"i":8}' for e in heard.heard), what="all heard")
        for event in heard.heard:
            kind = event[0]
            if kind == "count":
                out.append(("heard count", event[1], state(event[2])))
            elif kind == "message":
                out.append(("heard message", event[1], event[2], epochs(event[3]), event[4]))
            elif kind != "room_confirmed":  # in the order the sync happened to subscribe them
                out.append(("heard", *event))
        out.append(("confirmed", sorted(e[0] for e in heard.of("room_confirmed"))))
    finally:
        await a.subscriber.stop()
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
    return out


async def test_the_memory_backplane_answers_and_announces_as_a_real_redis_does(redis_url: str) -> None:
    real = [connect(redis_url, Metrics(), ttl=TTL, history_size=3, history_ttl=60.0) for _ in range(2)]
    try:
        on_redis = await scenario(real[0], real[1], asyncio.sleep)
    finally:
        for bp in real:
            await bp.presence.close()

    memory = MemoryRedis()

    async def elapse(seconds: float) -> None:
        memory.clock.advance(seconds)

    in_memory = await scenario(
        memory.backplane(ttl=TTL, history_size=3, history_ttl=60.0),
        memory.backplane(ttl=TTL, history_size=3, history_ttl=60.0), elapse,
    )

    for step, (got, want) in enumerate(zip(in_memory, on_redis)):
        assert got == want, f"step {step}: memory {got!r} != redis {want!r}"
    assert len(in_memory) == len(on_redis)
    steps = {s[0]: s for s in on_redis}
    # A top that went back starts a new epoch, and only that: the top and the stored messages stay,
    # offsets go on from the top.
    epoch = steps["new epoch"][2]
    assert steps["went back"][1] == (epoch, 5, [], True) and epoch != steps["published"][1][0][1]
    assert steps["new epoch"][1] == 6 and steps["seventh"][1:] == (7, epoch)
    # Another message at the offset a process delivered up to starts a new epoch; the same one does not.
    assert steps["digest unknown"][1][:2] == steps["same at top"][1][:2] == (epoch, 7)
    other = steps["other at top"][1]
    assert other[0] not in ("", epoch) and other[1:] == (7, [(7, '{"i":7}')], True), other
    assert steps["after reuse"][1] == (other[0], 7, [(5, '{"i": 5}'), (6, '{"i":6}'), (7, '{"i":7}')], True)
    assert steps["eighth"][1:] == (8, other[0])
