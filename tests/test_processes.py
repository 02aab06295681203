"""Every core: ``--processes N`` forks N full rrr workers sharing one port; a worker that dies is
replaced, and SIGTERM to the parent drains them all (presence out at once, 1001)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from rrr.backplane import keys
from support.clients import Client, connect, wait_until
from support.processes import AppProcess, need_binary

pytestmark = pytest.mark.gen_test(timeout=120)


def children(pid: int) -> set[int]:
    return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


def room(base_url: str, slug: str) -> tuple[int, int]:
    with urllib.request.urlopen(f"{base_url}/api/rooms/{slug}", timeout=5) as r:
        body = json.loads(r.read())
    return body["connections"], body["tabs"]


async def test_workers_share_the_port_are_replaced_and_drain_on_sigterm(
    app_factory: Callable[..., AppProcess], redis_url: str, clients: list[Client], rclient: redis.Redis,
) -> None:
    ttl = 2.0
    parent = await asyncio.to_thread(app_factory, redis_url=redis_url, processes=2, presence_ttl=ttl,
                                     count_interval=0.05, sweep_interval=0.2)
    assert parent.proc is not None
    pid = parent.proc.pid
    await wait_until(lambda: len(children(pid)) == 2 and rclient.zcard(keys.PROCS) == 2,
                     what="two workers, each with its own lease")
    # The workers accept from one listening socket: whichever wakes first takes a connection, so
    # sockets are opened 8 at a time until both have taken some (not an even split).
    socks: list[Client] = []
    served_by: set[int] = set()
    while served_by != children(pid) and len(socks) < 64:
        batch = [await connect(f"ws://127.0.0.1:{parent.port}/ws/count/cores/") for _ in range(8)]
        socks += batch
        clients += batch
        await wait_until(lambda: room(parent.base_url, "cores") == (len(socks), len(socks)),
                         what=f"{len(socks)} sockets counted across workers")
        fields: list[str] = rclient.hkeys(keys.presence("cores"))  # type: ignore[assignment]
        served_by = {int(f.split(":")[1]) for f in fields if not f.startswith("@")}
    assert served_by == children(pid), f"both workers took connections ({len(socks)} opened)"

    victim = min(children(pid))
    os.kill(victim, signal.SIGKILL)
    await wait_until(lambda: victim not in children(pid) and len(children(pid)) == 2,
                     what="the dead worker replaced")
    # Its sockets went with it; its presence expires and is swept by the others.
    await wait_until(lambda: sum(c.closed.is_set() for c in socks) > 0, what="the victim's sockets closed")
    alive = [c for c in socks if not c.closed.is_set()]
    await wait_until(lambda: room(parent.base_url, "cores") == (len(alive), len(alive)), timeout=ttl + 15,
                     what="counts exact after the death")
    await wait_until(lambda: rclient.zcard(keys.PROCS) == 2, timeout=ttl + 15, what="the dead lease swept")

    parent.signal(signal.SIGTERM)
    for c in alive:
        await asyncio.wait_for(c.closed.wait(), 15)
        assert c.close_code == 1001
    assert await asyncio.to_thread(parent.proc.wait, 15) == 0
    assert rclient.zcard(keys.PROCS) == 0 and not rclient.exists(keys.presence("cores"))


def gone(pid: int) -> bool:
    """Exited (reaped, or a zombie nobody reaped yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


async def test_each_worker_slot_backs_off_on_its_own(
    app_factory: Callable[..., AppProcess], redis_url: str,
) -> None:
    """One slot's worker keeps dying young, so that slot waits longer and longer (here 6.4 s) before
    its next start; the other slot's worker, which had served for a while, dies meanwhile and is
    replaced at once. The parent used to sleep out the first slot's backoff before it even looked
    at the second death: no worker at all for that long."""
    started = time.monotonic()
    parent = await asyncio.to_thread(app_factory, redis_url=redis_url, processes=2)
    assert parent.proc is not None
    pid = parent.proc.pid
    await wait_until(lambda: len(children(pid)) == 2, what="two workers")
    steady, victim = max(children(pid)), min(children(pid))
    await asyncio.sleep(max(0.0, started + 6 - time.monotonic()))  # both have served over 5 s
    for _ in range(6):  # a worker that served a while dies, then its slot's next five die young
        os.kill(victim, signal.SIGKILL)
        victim = await wait_until(lambda: next(iter(children(pid) - {steady, victim}), None), timeout=30,
                                  what="the dying slot refilled")
    os.kill(victim, signal.SIGKILL)  # its sixth young death in a row: that slot waits 6.4 s
    os.kill(steady, signal.SIGKILL)  # and the other slot's worker, which had served a while, dies
    replaced = await wait_until(lambda: children(pid) - {steady, victim}, timeout=3,
                                what="the steady worker replaced while the other slot backs off")
    assert len(replaced) == 1, replaced
    await wait_until(lambda: len(children(pid) - {steady, victim}) == 2, timeout=30,
                     what="the backing-off slot refilled too")
    log = parent.log()
    assert "starting another in 6.4 s" in log and f"worker {steady} died (signal SIGKILL) after" in log, log


async def test_the_workers_drain_and_exit_when_the_parent_is_killed(
    app_factory: Callable[..., AppProcess], redis_url: str, clients: list[Client], rclient: redis.Redis,
) -> None:
    """``kill -9`` of the parent left its workers serving as orphans, holding the port: a restart
    failed with EADDRINUSE. Now they drain (presence out, sockets closed with 1001) and exit."""
    parent = await asyncio.to_thread(app_factory, redis_url=redis_url, processes=2, presence_ttl=60)
    assert parent.proc is not None
    pid = parent.proc.pid
    await wait_until(lambda: len(children(pid)) == 2 and rclient.zcard(keys.PROCS) == 2, what="two workers")
    workers = children(pid)
    socks = [await connect(f"ws://127.0.0.1:{parent.port}/ws/count/orphans/") for _ in range(4)]
    clients += socks
    await wait_until(lambda: room(parent.base_url, "orphans") == (4, 4), what="4 sockets counted")

    await asyncio.to_thread(parent.kill)  # SIGKILL: no handler runs in the parent
    try:
        await wait_until(lambda: all(gone(w) for w in workers), timeout=15, what="every worker exited")
    finally:
        for w in workers:  # orphans would hold the port for the rest of the session
            if not gone(w):
                os.kill(w, signal.SIGKILL)
    for c in socks:
        await asyncio.wait_for(c.closed.wait(), 10)
        assert c.close_code == 1001
    # Presence removed by the drain itself, not left to expire (--presence-ttl is 60 s here).
    assert rclient.zcard(keys.PROCS) == 0 and not rclient.exists(keys.presence("orphans"))
    again = await asyncio.to_thread(app_factory, redis_url=redis_url, port=parent.port, processes=2)
    assert room(again.base_url, "orphans") == (0, 0)


@pytest.mark.parametrize("processes", [1, 2])
async def test_the_listening_socket_queues_backlog_connections(
    app_factory: Callable[..., AppProcess], redis_url: str, processes: int,
) -> None:
    """A reconnect storm's SYNs wait in the kernel's queue instead of being dropped (Tornado's own
    default is 128; the sockets are bound in app.py alone or by the parent of ``--processes``)."""
    ss = need_binary("ss")
    app = await asyncio.to_thread(app_factory, redis_url=redis_url, processes=processes, backlog=777)
    out = subprocess.run([ss, "-ltnH", f"sport = :{app.port}"], capture_output=True, text=True, check=True).stdout
    # A listening socket's Send-Q is its backlog.
    assert [line.split()[2] for line in out.splitlines()] == ["777"], out
