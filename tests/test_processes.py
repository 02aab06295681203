"""Every core: ``--processes N`` forks N full rrr workers sharing one port; a worker that dies is
replaced, and SIGTERM to the parent drains them all (presence out at once, 1001)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from conftest import AppProcess, Client, connect, need_binary, wait_until
from rrr import keys

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
    socks = [await connect(f"ws://127.0.0.1:{parent.port}/ws/count/cores/") for _ in range(8)]
    clients += socks
    await wait_until(lambda: room(parent.base_url, "cores") == (8, 8), what="8 sockets counted across workers")
    fields: list[str] = rclient.hkeys(keys.presence("cores"))  # type: ignore[assignment]
    served_by = {int(f.split(":")[1]) for f in fields if not f.startswith("@")}
    assert served_by == children(pid), "both workers took connections"

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
