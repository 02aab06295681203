"""100,000 sockets on this box (issue 13), and 200,000 (issue 25): density, a join storm of all, a fan-out to all.

    python -m bench.hundred_k                     # the full run: 100,000 sockets, 6 app.py, 6 drivers
    python -m bench.hundred_k --sockets 200000 --hold 60   # 200,000: 12 app.py, 12 drivers, its own section
    python -m bench.hundred_k --sockets 8000 --servers 2 --drivers 2 --no-report   # a small check

One real ``redis-server``; ``--servers`` ``app.py`` processes, each on its own port (so
every process's share of the sockets is known exactly and checked against its own
``rrr_open_sockets``); ``--drivers`` load-driver processes (``bench/worker.py``, the
harness's light sockets, on uvloop: they share the servers' cores), each connecting from its own eight 127.x.y.z source
addresses, a fresh set per phase. A process may hold 20,000 files, so each server and
each driver holds at most ``--sockets / n`` (checked: at most 19,000).

Three phases on the same processes, each checked, never assumed:

1. **Density**: every socket on the count endpoint (``/ws/count/<room>/``) in rooms of
   ``--room-size``; every client must show its room's exact count, the server's stored
   count of every room must match (``GET /api/rooms/<room>``, spread over the
   processes), every process must hold exactly its share. Then ``--hold`` seconds idle:
   RSS per socket = (RSS of all server processes - RSS before) / sockets, presence
   included. Every socket is closed gracefully; every room's count must return to 0.
2. **Join storm**: every socket opens ``/ws/`` and subscribes one room (what the
   browser library does), all at once. Clock from the first connect until the last
   client's shown count became N, which must still hold after a quiet window; count
   frames received by all clients; the stored count must be N.
3. **Fan-out**: on the storm's sockets, a backend PUBLISHes ``--messages`` stamped
   messages one at a time (the next after every recipient has the previous one).
   Every client must receive each exactly once (no loss, no duplicate, nothing
   foreign); p50/p99/max and last-recipient latency, server CPU per delivered frame,
   Redis CPU.

Bounded: every wait has a deadline, a stall (no progress for ``STALL_S``) ends a
phase as a failure, and the whole run is cut at ``--max-seconds``; whatever
happens, the drivers, servers and Redis started here are stopped (by pid).
Writes ``bench/results/hundred_k.json`` and, unless ``--no-report``, the section
"100,000 sockets" of ``docs/benchmarks.md`` and ``docs/bench-100k.png`` (drawn by
``bench/hundred_k_report.py`` from that file; ``--report-only`` redraws them alone). From 150,000
sockets (or ``--page 200k``) the results go to ``bench/results/sockets_200k.json`` and the section
"200,000 sockets" with issue 25's targets, ``docs/bench-200k.png`` and ``docs/bench-200k-per-cpu.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import resource
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from rrr.client import apublish

from .drivers import DriverPool
from .hundred_k_report import PAGES, write_page
from .machine import ROOT, clean, cpu_seconds, machine_info, raise_nofile, rss_bytes, versions
from .scenarios import latency_summary
from .servers import RedisServer, RrrKind, ServerGroup, redis_binary

RESULTS = ROOT / "bench" / "results"
#: No progress for this long while something is still owed: it is not coming.
STALL_S = 15.0
#: Most sockets one process may hold here: 20,000 files less room for Redis, logs, listeners.
MAX_PER_PROCESS = 19_000
#: Sockets per process when ``--servers`` and ``--drivers`` are not given: 12 processes on 2 cores cost less CPU
#: per join than 16 (100,000 storm: 95 s with 6 + 6, 124 s with 8 + 8, measured back to back).
PER_PROCESS = 16_667


class Failed(Exception):
    """A phase could not go on (its sockets are not there): recorded as failed, with what was measured."""

    def __init__(self, message: str, partial: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.partial = partial or {}


def split(n: int, parts: int) -> list[int]:
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


def sources(phase: int, worker: int) -> list[str]:
    """Eight loopback source addresses per worker and phase: a phase never meets the last one's TIME_WAITs."""
    return [f"127.{phase}.{worker + 1}.{k + 1}" for k in range(8)]


def per_port(per_worker: list[int], n_ports: int) -> list[int]:
    """A worker sends its i-th socket to ``ports[i % n_ports]``: how many each port gets in all."""
    out = [0] * n_ports
    for k in per_worker:
        for j, share in enumerate(split(k, n_ports)):
            out[j] += share
    return out


def mib(b: float) -> float:
    return b / 2**20


class Run:
    """The processes of one run and the readings taken from them."""

    def __init__(self, args: argparse.Namespace, redis: RedisServer, servers: ServerGroup,
                 drivers: DriverPool, logdir: Path) -> None:
        self.args = args
        self.redis = redis
        self.servers = servers
        self.drivers = drivers
        self.n: int = args.sockets
        self.count_interval: float = args.count_interval
        self.logdir = logdir
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))
        self.r = aioredis.Redis.from_url(redis.url)

    async def close(self) -> None:
        await self.http.close()
        await self.r.aclose()

    @property
    def stall_s(self) -> float:
        """No frame for this long while a count is owed: nothing is coming (counts go out once an interval)."""
        return max(STALL_S, 3 * self.count_interval)

    # -- readings ------------------------------------------------------------------------------

    def redis_cpu(self) -> float:
        assert self.redis.proc is not None
        return cpu_seconds(self.redis.proc.pid)

    def redis_rss(self) -> int:
        assert self.redis.proc is not None
        return rss_bytes(self.redis.proc.pid)

    async def redis_used_memory(self) -> int:
        return int((await self.r.info("memory"))["used_memory"])

    async def metric(self, port: int, name: str) -> float:
        async with self.http.get(f"http://127.0.0.1:{port}/metrics") as resp:
            text = await resp.text()
        m = re.search(rf"^{name} (\S+)$", text, re.M)
        if m is None:
            raise RuntimeError(f"no {name} in /metrics of :{port}")
        return float(m.group(1))

    async def check_shares(self, want: list[int], what: str) -> list[str]:
        """Every process holds exactly its share of the sockets (its own ``rrr_open_sockets``)."""
        deadline = time.monotonic() + 10
        while True:
            got = [int(await self.metric(p, "rrr_open_sockets")) for p in self.servers.ports]
            if got == want or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        return [] if got == want else [f"{what}: processes hold {got} sockets, not {want}"]

    async def check_rooms(self, expected: dict[str, int], what: str, timeout: float = 20.0) -> list[str]:
        """Every room's stored count (``GET /api/rooms/<room>``, spread over the processes) is exact."""
        ports = self.servers.ports
        todo = dict(expected)
        deadline = time.monotonic() + timeout
        wrong: dict[str, tuple[int | None, int]] = {}
        while todo:
            wrong = {}
            sem = asyncio.Semaphore(64)

            async def one(i: int, room: str, want: int) -> None:
                async with sem, self.http.get(f"http://127.0.0.1:{ports[i % len(ports)]}/api/rooms/{room}") as resp:
                    got = int((await resp.json())["connections"]) if resp.status == 200 else None
                if got != want:
                    wrong[room] = (got, want)

            await asyncio.gather(*(one(i, r, w) for i, (r, w) in enumerate(todo.items())))
            if not wrong or time.monotonic() > deadline:
                break
            todo = {r: expected[r] for r in wrong}  # presence is written coalesced: ask again
            await asyncio.sleep(0.5)
        if not wrong:
            return []
        sample = ", ".join(f"{r}={g} not {w}" for r, (g, w) in list(wrong.items())[:3])
        return [f"{what}: stored count wrong in {len(wrong)} of {len(expected)} rooms ({sample})"]

    async def state(self, expected: dict[str, int] | None = None) -> dict[str, Any]:
        return await self.drivers.state(expected)

    async def settle(self, expected: dict[str, int], timeout: float) -> tuple[bool, dict[str, Any]]:
        """Until every socket shows its room's count; then a quiet window, and it must still hold."""
        total = sum(expected.values())
        deadline = time.monotonic() + timeout
        st = await self.state(expected)
        frames, changed = st["frames"], time.monotonic()
        while not (st["count_ok"] == total and st["live"] == total):
            now = time.monotonic()
            if now > deadline or now - changed > self.stall_s:
                return False, st
            await asyncio.sleep(0.25)
            st = await self.state(expected)
            if st["frames"] != frames:
                frames, changed = st["frames"], time.monotonic()
        await asyncio.sleep(max(1.0, 2 * self.count_interval))
        st = await self.state(expected)
        return st["count_ok"] == total and st["live"] == total, st

    def open_args(self, phase: int, specs: list[list[list[Any]]], relay: bool, wait_joined: float,
                  ports: list[int] | None = None) -> list[dict[str, Any]]:
        """One ``open`` per worker; its sockets alternate over ``ports`` (default: every process)."""
        ports = ports or self.servers.ports
        in_flight = max(1, self.args.in_flight * len(ports) // len(self.servers.ports) // len(self.drivers))
        return [{"kind": "rrr", "relay": relay, "host": "127.0.0.1", "ports": ports,
                 "sources": sources(phase, w.index), "specs": s, "in_flight": in_flight,
                 "timeout": 60.0, "wait_joined": wait_joined}
                for w, s in zip(self.drivers.workers, specs, strict=True)]

    async def close_all(self, rooms: dict[str, int], what: str) -> tuple[list[str], float]:
        """Close every socket gracefully; every room and every process must come back to 0."""
        in_flight = max(1, self.args.in_flight // len(self.drivers))
        t0 = time.monotonic()
        replies = await self.drivers.call("close", {"timeout": 30.0, "in_flight": in_flight},
                                          timeout=self.args.phase_timeout)
        elapsed = time.monotonic() - t0
        failures = []
        if timeouts := sum(r["timeouts"] for r in replies):
            failures.append(f"{what}: {timeouts} sockets not closed by the server within 30 s of our close")
        failures += await self.check_shares([0] * len(self.servers.ports), what)
        failures += await self.check_rooms({r: 0 for r in rooms}, what)
        await self.drivers.call("reset")
        return failures, elapsed


def health(st: dict[str, Any], what: str) -> list[str]:
    out = []
    if st["dropped"]:
        out.append(f"{what}: {st['dropped']} sockets dropped by the server")
    if st["errors"]:
        out.append(f"{what}: {st['errors']} errors: " + "; ".join(st["error_samples"][:3]))
    return out


def count_failure(st: dict[str, Any], total: int, what: str) -> str:
    sample = ", ".join(f"{room} shows {got} not {want}" for room, got, want in st["bad_sample"][:3])
    return f"{what}: {st['count_ok']} of {total} sockets show the true count ({st['live']} live; {sample})"


# -- phase 1: density --------------------------------------------------------------------------


async def density(run: Run) -> dict[str, Any]:
    n, a = run.n, run.args
    w = len(run.drivers)
    rooms = [f"r{i}" for i in range(math.ceil(n / a.room_size))]
    sizes = {r: min(a.room_size, n - i * a.room_size) for i, r in enumerate(rooms)}
    ports = run.servers.ports
    if a.spread:
        # As a load balancer would: a room's members alternate over every process.
        calls = [(ports, [[[r, sizes[r]] for r in rooms[k::w]] for k in range(w)])]
        shares = per_port([sum(x for _, x in s) for s in calls[0][1]], len(ports))
    else:
        # Each room on one process (sticky routing), rooms dealt round the processes.
        calls = [([port], [[[r, sizes[r]] for r in rooms[j::len(ports)][k::w]] for k in range(w)])
                 for j, port in enumerate(ports)]
        shares = [sum(sizes[r] for r in rooms[j::len(ports)]) for j in range(len(ports))]
    out: dict[str, Any] = {"rooms": len(rooms), "room_size": a.room_size, "spread": a.spread,
                           "per_process": shares, "failures": []}
    fail: list[str] = out["failures"]
    base_rss = [rss_bytes(p) for p in run.servers.pids]
    base_redis_rss, base_redis_mem = run.redis_rss(), await run.redis_used_memory()
    cpu0, rcpu0 = run.servers.cpu(), run.redis_cpu()
    t0 = time.monotonic()
    replies = await asyncio.gather(*(
        run.drivers.call("open", run.open_args(1, specs, False, a.phase_timeout, on), timeout=a.phase_timeout)
        for on, specs in calls))
    opened = [r for rs in replies for r in rs]
    failed = sum(r["failed"] for r in opened)
    t_first = min(r["t_first_ns"] for r in opened)
    out["connect_s"] = round(time.monotonic() - t0, 2)
    if failed:
        fail.append(f"density: {failed} of {n} sockets failed to connect")
    ok, st = await run.settle(sizes, a.phase_timeout)
    if not ok:
        fail.append(count_failure(st, n, "density, after opening"))
    out["ready_s"] = round((st["last_ok_ns"] - t_first) / 1e9, 2) if st["last_ok_ns"] else None
    out["open_server_cpu_s"] = round(run.servers.cpu() - cpu0, 2)
    out["open_redis_cpu_s"] = round(run.redis_cpu() - rcpu0, 2)
    fail += await run.check_shares(shares, "density")
    out["rooms_per_process"] = [int(await run.metric(p, "rrr_rooms")) for p in ports]
    t_check = time.monotonic()
    fail += await run.check_rooms(sizes, "density")
    out["room_check_s"] = round(time.monotonic() - t_check, 1)
    rss_open = [rss_bytes(p) for p in run.servers.pids]
    cpu1, rcpu1 = run.servers.cpu(), run.redis_cpu()
    await asyncio.sleep(a.hold)
    cpu2, rcpu2 = run.servers.cpu(), run.redis_cpu()
    rss_held = [rss_bytes(p) for p in run.servers.pids]
    st = await run.state(sizes)
    if st["count_ok"] != n:
        fail.append(count_failure(st, n, "density, after the hold"))
    fail += health(st, "density")
    rss = max(sum(rss_open), sum(rss_held))
    out.update({
        "rss_base_mib": round(mib(sum(base_rss)), 1),
        "rss_mib": round(mib(rss), 1),
        "rss_per_process_mib": [round(mib(x), 1) for x in rss_held],
        "rss_per_socket_kib": round((rss - sum(base_rss)) / n / 1024, 2),
        "redis_rss_per_socket_kib": round((run.redis_rss() - base_redis_rss) / n / 1024, 3),
        "redis_used_memory_per_socket_b": round((await run.redis_used_memory() - base_redis_mem) / n, 1),
        "idle_server_cpu_pct": round(100 * (cpu2 - cpu1) / a.hold, 1),
        "idle_redis_cpu_pct": round(100 * (rcpu2 - rcpu1) / a.hold, 1),
        "hold_s": a.hold,
    })
    close_failures, out["close_s"] = await run.close_all(sizes, "density, closing")
    fail += close_failures
    return out


# -- phase 2: join storm -----------------------------------------------------------------------


async def storm(run: Run, room: str) -> dict[str, Any]:
    n, a = run.n, run.args
    expected = {room: n}
    per_worker = split(n, len(run.drivers))
    specs = [[[room, k]] for k in per_worker]
    shares = per_port(per_worker, len(run.servers.ports))
    out: dict[str, Any] = {"per_process": shares, "failures": []}
    fail: list[str] = out["failures"]
    cpu0, rcpu0 = run.servers.cpu(), run.redis_cpu()
    st0 = await run.state()
    t0_ns = time.time_ns()
    t0 = time.monotonic()
    opening = asyncio.create_task(run.drivers.call("open", run.open_args(2, specs, True, 0.0),
                                                   timeout=a.storm_timeout + 60))
    timeline: list[list[float]] = []
    progress, changed = (-1, -1), t0
    converged = False
    while True:
        # Each poll walks every client in every driver, on the cores the storm needs; when the last
        # client began to show N is stamped by the driver itself (``last_ok_ns``), not by the poll.
        await asyncio.sleep(1.0)
        st = await run.state(expected)
        now = time.monotonic()
        timeline.append([round(now - t0, 2), st["live"], st["count_ok"]])
        if st["count_ok"] == n:
            converged = True
            break
        if (st["frames"], st["live"]) != progress:
            progress, changed = (st["frames"], st["live"]), now
        elif now - changed > run.stall_s:
            fail.append(count_failure(st, n, f"storm: no progress for {run.stall_s:.0f} s"))
            break
        if now - t0 > a.storm_timeout:
            fail.append(count_failure(st, n, f"storm: not converged after {a.storm_timeout:.0f} s"))
            break
    cpu1, rcpu1 = run.servers.cpu(), run.redis_cpu()
    out["timeline"] = timeline
    if not converged:
        opening.cancel()
        raise Failed("; ".join(fail), {
            "timeline": timeline, "count_frames": st["count_frames"] - st0["count_frames"],
            "live_at_stop": st["live"], "showing_n_at_stop": st["count_ok"],
            "server_cpu_s": round(cpu1 - cpu0, 2), "redis_cpu_s": round(rcpu1 - rcpu0, 2),
            "driver_cpu_s": round(st["cpu_s"] - st0["cpu_s"], 1), "per_process": shares})
    opened = await asyncio.wait_for(opening, 30)
    failed = sum(r["failed"] for r in opened)
    if failed:
        fail.append(f"storm: {failed} of {n} sockets failed to connect")
    out["connect_s"] = round((max(r["t_opened_ns"] for r in opened) - t0_ns) / 1e9, 2)
    out["all_show_n_s"] = round((st["last_ok_ns"] - t0_ns) / 1e9, 2)
    out["count_frames"] = st["count_frames"] - st0["count_frames"]
    out["frames_per_client"] = round(out["count_frames"] / n, 2)
    out["server_cpu_s"] = round(cpu1 - cpu0, 2)
    out["redis_cpu_s"] = round(rcpu1 - rcpu0, 2)
    out["driver_cpu_s"] = round(st["cpu_s"] - st0["cpu_s"], 1)
    out["server_cpu_us_per_join"] = round(1e6 * (cpu1 - cpu0) / n)
    ok, st = await run.settle(expected, 30)
    if not ok:
        fail.append(count_failure(st, n, "storm: regressed after the quiet window"))
    fail += health(st, "storm")
    fail += await run.check_shares(shares, "storm")
    fail += await run.check_rooms(expected, "storm")
    out["rss_mib"] = round(mib(run.servers.rss()), 1)
    return out


async def aclose_clients() -> None:
    """``apublish`` keeps one Redis client per loop and offers no close: close ours before the loop ends."""
    from rrr import client

    for c in client._async_clients.pop(asyncio.get_running_loop(), {}).values():
        await c.aclose()


# -- phase 3: fan-out --------------------------------------------------------------------------


def cdf(values_us: list[int], points: int = 200) -> list[list[float]]:
    """(fraction of recipients, latency ms) at ``points`` quantiles: small enough for the JSON."""
    xs = sorted(values_us)
    if not xs:
        return []
    return [[round(q / points, 4), xs[min(len(xs) - 1, int(q / points * len(xs)))] / 1000]
            for q in range(points + 1)]


async def fanout(run: Run, room: str) -> dict[str, Any]:
    n, a = run.n, run.args
    out: dict[str, Any] = {"messages": [], "failures": []}
    fail: list[str] = out["failures"]

    async def publish(data: Any) -> None:
        # The documented backend path: stored in the room's history and published in one script.
        await apublish(room, data, redis_url=run.redis.url)

    try:
        # Warm-up: every member has one message, so every subscription is live end to end.
        t0 = time.monotonic()
        k = 0
        while True:
            await publish({"warm": k})
            k += 1
            await asyncio.sleep(2.0)
            st = await run.state()
            if st["warm"] >= n or time.monotonic() - t0 > a.phase_timeout:
                break
        out["warm_s"] = round(time.monotonic() - t0, 1)
        if st["warm"] < n:
            raise Failed(f"fan-out: only {st['warm']} of {n} members got a warm-up message")
        await asyncio.sleep(2.0)
        for i in range(a.messages):
            tag = f"fan{i}-{uuid.uuid4().hex[:8]}"
            await run.drivers.call("messages_begin", {"run": tag})
            cpu0, rcpu0 = run.servers.cpu(), run.redis_cpu()
            t_pub = time.time_ns()
            await publish({"run": tag, "seq": 0, "t": t_pub})
            last, seen = time.monotonic(), -1
            deadline = time.monotonic() + a.phase_timeout
            while True:
                await asyncio.sleep(0.1)
                st = await run.state()
                if st["receipts"] >= n:
                    break
                if st["receipts"] != seen:
                    last, seen = time.monotonic(), st["receipts"]
                if time.monotonic() - last > STALL_S or time.monotonic() > deadline:
                    break
            cpu1, rcpu1 = run.servers.cpu(), run.redis_cpu()
            reports = await run.drivers.call("messages_report", {"n_seqs": 1, "room": room})
            lat = [x for r in reports for xs in r["latency_us"].values() for x in xs]
            members = sum(r["members"] for r in reports)
            receipts = sum(r["receipts"] for r in reports)
            bad = {key: sum(r[key] for r in reports) for key in ("missing", "duplicates", "disorder", "foreign")}
            if members != n or receipts != n or any(bad.values()):
                fail.append(f"fan-out message {i}: {receipts} receipts by {members} members of {n}, {bad}")
            summary = latency_summary({"0": lat})
            out["messages"].append({
                "p50_ms": summary.get("p50_ms"), "p99_ms": summary.get("p99_ms"),
                "last_recipient_ms": summary.get("max_ms"), "frames": receipts,
                "server_cpu_s": round(cpu1 - cpu0, 2),
                "server_cpu_us_per_frame": round(1e6 * (cpu1 - cpu0) / receipts, 2) if receipts else None,
                "redis_cpu_ms": round(1000 * (rcpu1 - rcpu0), 1),
                "cdf": cdf(lat),
            })
            await asyncio.sleep(2.0)
    finally:
        await aclose_clients()
    fail += health(await run.state(), "fan-out")
    return out


# -- the run -----------------------------------------------------------------------------------


def server_warnings(logdir: Path, limit: int = 12) -> dict[str, int]:
    """The servers' warnings (log level warning and up), counted by their text without the timestamp."""
    seen: dict[str, int] = {}
    for log in sorted(logdir.glob("100k*.log")):
        for line in log.read_text(errors="replace").splitlines():
            m = re.match(r"\[[WE] \d+ [\d:]+ [^\]]*\] (.*)", line)
            if m:
                text = re.sub(r"\d+", "#", m.group(1))[:160]
                seen[text] = seen.get(text, 0) + 1
    return dict(sorted(seen.items(), key=lambda kv: -kv[1])[:limit])


async def sample_load(samples: list[list[float]], t0: float) -> None:
    while True:
        with open("/proc/meminfo") as f:
            avail = next(int(x.split()[1]) for x in f if x.startswith("MemAvailable:"))
        samples.append([round(time.monotonic() - t0, 1), round(os.getloadavg()[0], 2), round(avail / 2**20, 2)])
        await asyncio.sleep(5)


async def wait_quiet(limit: float, max_wait: float) -> dict[str, Any]:
    """Poll the 1-minute load average every 60 s until it is under ``limit`` (at most ``max_wait`` s)."""
    t0 = time.monotonic()
    while os.getloadavg()[0] >= limit and time.monotonic() - t0 < max_wait:
        print(f"load {os.getloadavg()[0]:.2f} >= {limit}: waiting", flush=True)
        await asyncio.sleep(60)
    return {"waited_s": round(time.monotonic() - t0), "quiet": os.getloadavg()[0] < limit,
            "load1_at_start": round(os.getloadavg()[0], 2)}


async def step(name: str, body: Any, results: dict[str, Any], save: Any) -> bool:
    """Run one phase into ``results[name]``; False if it could not finish (``Failed``)."""
    load = round(os.getloadavg()[0], 2)
    print(f"[{time.strftime('%H:%M:%S')}] {name} (load {load})", flush=True)
    t0 = time.monotonic()
    finished = True
    try:
        results[name] = await body
    except Failed as e:
        results[name] = {**e.partial, "failures": [str(e)]}
        finished = False
    finally:
        results.setdefault(name, {})
        results[name].update(load1_at_start=load, elapsed_s=round(time.monotonic() - t0, 1))
        save()
    print(f"    {json.dumps({k: v for k, v in results[name].items() if k not in ('timeline', 'messages')})}",
          flush=True)
    for m in results[name].get("messages", []):
        print(f"    message: p50 {m['p50_ms']} ms, p99 {m['p99_ms']} ms, last {m['last_recipient_ms']} ms, "
              f"{m['server_cpu_us_per_frame']} us/frame", flush=True)
    return finished


async def storm_and_fanout(run: Run, results: dict[str, Any], save: Any, suffix: str, chosen: list[str]) -> bool:
    room = "storm"
    results["count_interval" + suffix] = run.count_interval
    ok = True
    if "storm" in chosen:
        ok = await step("storm" + suffix, storm(run, room), results, save)
        if ok and "fanout" in chosen:
            ok = await step("fanout" + suffix, fanout(run, room), results, save)
    if ok and "storm" in chosen:
        fail, t_close = await run.close_all({room: 0}, "end, closing")
        results["storm" + suffix]["failures"] += fail
        results["storm" + suffix]["close_s"] = round(t_close, 1)
        save()
    return ok


async def phases(run: Run, results: dict[str, Any], save: Any) -> None:
    a = run.args
    chosen = a.phases.split(",")
    if "density" in chosen and not await step("density", density(run), results, save):
        raise Failed("density phase could not finish")
    if await storm_and_fanout(run, results, save, "", chosen) or not a.then_count_interval:
        return
    # The storm (or the fan-out on it) could not finish at this count interval: the same again on fresh
    # processes at a longer one, recorded apart (storm_b, fanout_b), so the fan-out is still measured.
    print(f"[{time.strftime('%H:%M:%S')}] again with --count-interval {a.then_count_interval:g}", flush=True)
    await run.drivers.call("reset")
    run.servers.stop()
    await run.redis.flush()
    run.count_interval = a.then_count_interval
    kind = RrrKind(a.rrr_python, count_interval=run.count_interval)
    run.servers = await ServerGroup.start(kind, a.servers, run.redis.url, run.logdir, "100k-b")
    await storm_and_fanout(run, results, save, "_b", chosen)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    n = args.sockets
    for what, k in (("server", args.servers), ("driver", args.drivers)):
        if math.ceil(n / k) > MAX_PER_PROCESS:
            raise SystemExit(f"{n} sockets over {k} {what} processes is over {MAX_PER_PROCESS} per process")
    nofile = raise_nofile()
    results: dict[str, Any] = {
        "meta": {
            "command": "python -m bench.hundred_k " + " ".join(sys.argv[1:]),
            "sockets": n, "servers": args.servers, "drivers": args.drivers,
            "count_interval": args.count_interval, "messages": args.messages, "phases": args.phases,
            "hold_s": args.hold, "out": args.out,
            "machine": {**machine_info(), "nofile": list(nofile)},
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        },
    }
    if args.wait_quiet:
        results["meta"]["wait"] = await wait_quiet(args.wait_quiet, args.wait_max)
        results["meta"]["phases_started"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    results["meta"]["loadavg_start"] = [round(x, 2) for x in os.getloadavg()]
    out_file = Path(args.out)
    samples: list[list[float]] = []
    t_run = time.monotonic()

    def save() -> None:
        results["meta"]["elapsed_s"] = round(time.monotonic() - t_run, 1)
        results["meta"]["load_samples"] = samples
        out_file.parent.mkdir(parents=True, exist_ok=True)
        out_file.write_text(json.dumps(clean(results), indent=1))

    stamp = time.strftime("%Y%m%d-%H%M%S")
    logdir = RESULTS / "logs" / f"hundred_k-{stamp}"
    logdir.mkdir(parents=True, exist_ok=True)
    sampler = asyncio.create_task(sample_load(samples, t_run))
    redis = RedisServer(redis_binary(args.redis_server), logdir)
    servers: ServerGroup | None = None
    drivers: DriverPool | None = None
    run: Run | None = None
    failures: list[str] = []
    try:
        await redis.start()
        kind = RrrKind(args.rrr_python, count_interval=args.count_interval)
        servers = await ServerGroup.start(kind, args.servers, redis.url, logdir, "100k")
        drivers = await DriverPool.start(args.drivers, uvloop=True)
        run = Run(args, redis, servers, drivers, logdir)
        results["meta"]["redis_version"] = str((await run.r.info("server"))["redis_version"])
        vs = versions(args.rrr_python, results["meta"]["redis_version"])
        results["meta"]["rrr_commit"] = vs.get("rrr commit")
        results["meta"]["versions"] = {k: v for k, v in vs.items() if v != "missing"}
        await asyncio.wait_for(phases(run, results, save), args.max_seconds)
    except TimeoutError:
        failures.append(f"the run exceeded its {args.max_seconds:.0f} s bound and was stopped")
    except Failed as e:
        failures.append(f"stopped: {e}")
    finally:
        if run is not None:
            servers = run.servers  # a second round runs on servers of its own
        if servers is not None:
            dead = [p.returncode for p in servers.procs if p.poll() is not None]
            if dead:
                failures.append(f"a server process exited during the run (codes {dead})")
        if drivers is not None:
            try:
                await asyncio.wait_for(drivers.call("reset"), 60)
            except Exception as e:  # noqa: BLE001 - cleaning up: note it, go on stopping
                failures.append(f"driver reset: {type(e).__name__}: {e}")
            await drivers.close()
        if run is not None:
            await run.close()
        if servers is not None:
            servers.stop()
        redis.stop()
        sampler.cancel()
        for phase in ("density", "storm", "fanout", "storm_b", "fanout_b"):
            failures += results.get(phase, {}).get("failures", [])
        results["failures"] = failures
        results["ok"] = not failures and all(p in results for p in args.phases.split(","))
        results["ok_b"] = all(p + "_b" in results and not results[p + "_b"]["failures"]
                              for p in ("storm", "fanout")) if "storm_b" in results else None
        results["meta"]["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        results["meta"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        results["meta"]["server_warnings"] = server_warnings(logdir)
        results["meta"]["peak_rss_harness_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        save()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description="100,000 sockets on this box: density, join storm, fan-out")
    parser.add_argument("--sockets", type=int, default=100_000)
    # Default: as many of each as sockets / 16,667 (6 for 100,000, 12 for 200,000).
    parser.add_argument("--servers", type=int, default=None, help="app.py processes, one port each")
    parser.add_argument("--drivers", type=int, default=None, help="load-driver processes")
    parser.add_argument("--room-size", type=int, default=10, help="room size in the density phase")
    parser.add_argument("--spread", action="store_true",
                        help="density: a room's members alternate over every process (default: each room on one)")
    parser.add_argument("--hold", type=float, default=10.0, help="seconds held idle in the density phase")
    parser.add_argument("--messages", type=int, default=3, help="fan-out messages, one at a time")
    parser.add_argument("--count-interval", type=float, default=0.1, help="app.py --count-interval")
    parser.add_argument("--in-flight", type=int, default=2000,
                        help="handshakes in flight over all drivers (100,000 browsers would not queue at all)")
    parser.add_argument("--phase-timeout", type=float, default=240.0, help="bound on each wait of a phase (s)")
    parser.add_argument("--storm-timeout", type=float, default=300.0, help="bound on the join storm (s)")
    parser.add_argument("--then-count-interval", type=float, default=0.0,
                        help="if the storm or fan-out cannot finish, both again on fresh processes at this interval")
    parser.add_argument("--phases", default="density,storm,fanout",
                        help="comma list of density,storm,fanout (fanout needs storm)")
    parser.add_argument("--max-seconds", type=float, default=840.0, help="bound on the whole run (s)")
    parser.add_argument("--wait-quiet", type=float, default=0.0,
                        help="first wait (polling every 60 s) until the 1-minute load is under this")
    parser.add_argument("--wait-max", type=float, default=2700.0, help="longest wait for --wait-quiet (s)")
    parser.add_argument("--rrr-python", default=os.environ.get("RRR_PYTHON", sys.executable))
    parser.add_argument("--redis-server", default=os.environ.get("REDIS_SERVER"))
    parser.add_argument("--page", choices=sorted(PAGES), default=None,
                        help="the page's section the results are for (default: 200k from 150,000 sockets, else 100k)")
    parser.add_argument("--out", default=None, help="results JSON (default: the page's results file)")
    parser.add_argument("--no-report", action="store_true", help="do not touch docs/benchmarks.md")
    parser.add_argument("--report-only", action="store_true", help="only redraw the page from --out")
    args = parser.parse_args()
    page = PAGES[args.page or ("200k" if args.sockets >= 150_000 else "100k")]
    args.out = args.out or str(page.results)
    args.servers = args.servers or math.ceil(args.sockets / PER_PROCESS)
    args.drivers = args.drivers or math.ceil(args.sockets / PER_PROCESS)
    if args.report_only:
        print(write_page(json.loads(Path(args.out).read_text()), page))
        return
    results = asyncio.run(main_async(args))
    print(f"results: {args.out}; {'ok' if results['ok'] else 'FAILED: ' + '; '.join(results['failures'])}")
    if not args.no_report:
        main_results = results if Path(args.out).resolve() == page.results else (
            json.loads(page.results.read_text()) if page.results.exists() else None)
        if main_results is not None:
            print(f"report: {write_page(main_results, page)}")
    sys.exit(0 if results["ok"] else 1)


if __name__ == "__main__":
    main()
