"""The benchmark scenarios. Each one measures *and* checks.

A scenario gets a ``Cell`` (a fresh server group of one kind, the shared Redis,
the driver processes) and a size, and returns an ``Outcome``: figures plus a
list of failures. A failure is anything a user would call a bug - a socket that
never connected or was dropped, a count that ends wrong on a client or in the
server, a message lost, duplicated or reordered, an error frame - and it is
reported as such, never folded into a slow number. Figures are still recorded
for failed runs (the report shows them as FAIL).

Every scenario is written once against the neutral driver events, so rrr and
the peers go through exactly the same steps.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from .drivers import DriverPool
from .machine import cpu_seconds, rss_bytes
from .servers import Publisher, RedisServer, ServerGroup


@dataclass(frozen=True)
class Profile:
    """Sizes and bounds of one benchmark run. Every loop below is bounded by these."""

    name: str
    repeats: int
    idle_sizes: tuple[int, ...]
    idle_hold_s: float
    storm_sizes: tuple[int, ...]
    storm_timeout_s: float
    fanout_sizes: tuple[int, ...]
    fan_paced_msgs: int
    fan_paced_rate: float  # frames/s offered in the paced phase (the interval grows with the room)
    fan_burst_frames: int  # frames per burst phase (messages = this / members, clamped to 5..50)
    churn_durations: tuple[float, ...]
    storm_2p_sizes: tuple[int, ...]
    fanout_2p_sizes: tuple[int, ...]
    workers: int = 2
    in_flight: int = 100  # handshakes in flight over all workers (under every server's listen backlog)
    idle_room_size: int = 10
    connect_timeout_s: float = 30.0
    settle_timeout_s: float = 60.0
    fan_delivery_timeout_s: float = 120.0
    churn_rooms: int = 50
    churn_loops: int = 32  # concurrent open/close loops per worker
    churn_pool: tuple[int, int] = (100, 400)  # live sockets per worker kept between these
    churn_max_ops: int = 200_000  # per worker, a hard bound besides the duration


@dataclass
class Cell:
    kind_name: str
    servers: ServerGroup
    redis: RedisServer
    drivers: DriverPool
    profile: Profile
    count_interval: float = 0.1

    @property
    def redis_pid(self) -> int:
        assert self.redis.proc is not None
        return self.redis.proc.pid

    def redis_cpu(self) -> float:
        return cpu_seconds(self.redis_pid)

    def redis_rss(self) -> int:
        return rss_bytes(self.redis_pid)


@dataclass
class Outcome:
    metrics: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    #: Gave up waiting (too slow at this size): larger sizes of the scenario are skipped for this server.
    timed_out: bool = False
    info: dict[str, Any] = field(default_factory=dict)


Scenario = Callable[[Cell, float], Awaitable[Outcome]]


# -- shared steps ---------------------------------------------------------

#: No frame for this long while a count is still wrong: nothing is coming to fix it.
QUIET_S = 2.0


def split(n: int, parts: int) -> list[int]:
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


def ms(ns: float) -> float:
    return ns / 1e6


async def open_sockets(cell: Cell, specs: list[list[list[Any]]], relay: bool, wait_joined: float) -> dict[str, Any]:
    """Open ``specs[w]`` (``[[room, n], ...]``) on worker w; return totals and the latest timestamps."""
    p = cell.profile
    per_worker = max(1, p.in_flight // len(cell.drivers))
    replies = await cell.drivers.call("open", [
        {"kind": cell.kind_name, "relay": relay, "host": "127.0.0.1", "ports": cell.servers.ports,
         "sources": w.sources, "specs": s, "in_flight": per_worker, "timeout": p.connect_timeout_s,
         "wait_joined": wait_joined}
        for w, s in zip(cell.drivers.workers, specs, strict=True)
    ])
    total: dict[str, Any] = {}
    for r in replies:
        for k, v in r.items():
            total[k] = max(total.get(k, 0), v) if k.endswith("_ns") else total.get(k, 0) + v
    total["t_first_ns"] = min(r["t_first_ns"] for r in replies)
    return total


async def settle_counts(cell: Cell, expected: dict[str, int], timeout: float) -> tuple[bool, dict[str, Any]]:
    """Wait until every live socket shows its room's expected count, then stay quiet and check again.

    Gives up early once no frame has arrived for ``QUIET_S`` while some count is still
    wrong: nothing is coming to fix it. The final quiet window (5 count
    intervals, at least 0.5 s) catches a stale count that arrives after the right
    one - the race a plain INCR + broadcast has.
    """
    total = sum(expected.values())
    deadline = time.monotonic() + timeout
    st = await cell.drivers.state(expected)
    frames, changed = st["frames"], time.monotonic()
    while not (st["count_ok"] == total and st["live"] == total):
        now = time.monotonic()
        if now > deadline or now - changed > QUIET_S:
            return False, st
        await asyncio.sleep(0.1)
        st = await cell.drivers.state(expected)
        if st["frames"] != frames:
            frames, changed = st["frames"], time.monotonic()
    await asyncio.sleep(max(0.5, 5 * cell.count_interval))
    st = await cell.drivers.state(expected)
    return st["count_ok"] == total and st["live"] == total, st


def count_failure(st: dict[str, Any], total: int, what: str) -> str:
    sample = ", ".join(f"{room} shows {got} not {want}" for room, got, want in st["bad_sample"][:3])
    return f"{what}: {st['count_ok']} of {total} sockets show the true count ({st['live']} live; {sample})"


def health_failures(st: dict[str, Any]) -> list[str]:
    out = []
    if st["dropped"]:
        out.append(f"{st['dropped']} sockets dropped by the server")
    if st["errors"]:
        out.append(f"{st['errors']} errors: " + "; ".join(st["error_samples"][:3]))
    return out


async def check_server_counts(cell: Cell, expected: dict[str, int], timeout: float = 3.0) -> list[str]:
    """The server's own stored count per room must reach ``expected`` (rrr writes presence coalesced)."""
    kind = cell.servers.kind
    deadline = time.monotonic() + timeout
    while True:
        got = await kind.server_counts(expected.keys(), cell.redis.url, cell.servers.ports)
        wrong = {r: (got.get(r), n) for r, n in expected.items() if got.get(r) != n}
        if not wrong or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.25)
    if not wrong:
        return []
    sample = ", ".join(f"{r}={g} not {n}" for r, (g, n) in list(wrong.items())[:3])
    return [f"server count wrong in {len(wrong)} of {len(expected)} rooms ({sample})"]


async def close_and_check_zero(cell: Cell, rooms: list[str]) -> list[str]:
    """Close every socket gracefully; each room's server count must return to 0."""
    per_worker = max(1, cell.profile.in_flight // len(cell.drivers))
    replies = await cell.drivers.call("close", {"timeout": 10.0, "in_flight": per_worker})
    failures = []
    timeouts = sum(r["timeouts"] for r in replies)
    if timeouts:
        failures.append(f"{timeouts} sockets not closed by the server within 10 s of our close frame")
    failures += await check_server_counts(cell, {r: 0 for r in rooms})
    return failures


# -- 1. idle hold ----------------------------------------------------------


async def idle_hold(cell: Cell, size: float) -> Outcome:
    """Hold ``n`` open sockets in rooms of 10; memory per socket and idle CPU.

    Rooms of 10 keep every stack's join broadcast small, so this measures the
    cost of *holding* a socket, not of announcing it.
    """
    n = int(size)
    p = cell.profile
    out = Outcome()
    rooms = [f"idle-{i}" for i in range(math.ceil(n / p.idle_room_size))]
    sizes = {r: min(p.idle_room_size, n - i * p.idle_room_size) for i, r in enumerate(rooms)}
    w = len(cell.drivers)
    specs = [[[r, sizes[r]] for r in rooms[k::w]] for k in range(w)]
    base_rss, base_redis = cell.servers.rss(), cell.redis_rss()

    opened = await open_sockets(cell, specs, relay=False, wait_joined=p.settle_timeout_s)
    if opened["failed"]:
        out.failures.append(f"{opened['failed']} of {n} sockets failed to connect")
    ok, st = await settle_counts(cell, sizes, p.settle_timeout_s)
    if not ok:
        out.failures.append(count_failure(st, n, "after opening"))
    ready_s = (st["last_ok_ns"] - opened["t_first_ns"]) / 1e9 if st["last_ok_ns"] else float("nan")
    out.failures += await check_server_counts(cell, sizes)
    rss, redis_rss = cell.servers.rss(), cell.redis_rss()

    cpu0 = cell.servers.cpu()
    await asyncio.sleep(p.idle_hold_s)
    idle_cpu = cell.servers.cpu() - cpu0
    rss_held = cell.servers.rss()
    st = await cell.drivers.state(sizes)
    if st["count_ok"] != n:
        out.failures.append(count_failure(st, n, "after the hold"))
    out.failures += health_failures(st)

    out.metrics = {
        "connect_s": (opened["t_opened_ns"] - opened["t_first_ns"]) / 1e9,
        "ready_s": ready_s,
        "opens_per_s": n / ready_s if ready_s > 0 else float("nan"),
        "rss_mib": max(rss, rss_held) / 2**20,
        "rss_per_conn_kib": (max(rss, rss_held) - base_rss) / n / 1024,
        "redis_rss_per_conn_kib": (redis_rss - base_redis) / n / 1024,
        "idle_cpu_pct": 100 * idle_cpu / p.idle_hold_s,
    }
    out.failures += await close_and_check_zero(cell, rooms)
    return out


# -- 2. join storm ---------------------------------------------------------


async def join_storm(cell: Cell, size: float) -> Outcome:
    """``n`` sockets join one room at once; time until every one shows ``n``, frames it took."""
    n = int(size)
    p = cell.profile
    out = Outcome()
    room = "storm"
    expected = {room: n}
    specs = [[[room, k]] for k in split(n, len(cell.drivers))]
    cpu0, rcpu0 = cell.servers.cpu(), cell.redis_cpu()
    t0 = time.time_ns()
    opening = asyncio.create_task(open_sockets(cell, specs, relay=False, wait_joined=0))
    deadline = time.monotonic() + p.storm_timeout_s
    converged = False
    frames, changed = -1, time.monotonic()
    while True:
        await asyncio.sleep(0.1)
        st = await cell.drivers.state(expected)
        now = time.monotonic()
        if st["count_ok"] == n:
            converged = True
            break
        if st["frames"] != frames:
            frames, changed = st["frames"], now
        elif opening.done() and now - changed > QUIET_S:
            break  # quiet, and still wrong: nothing is coming to fix it
        if now > deadline:
            out.timed_out = True
            break
    opened = await opening if converged or opening.done() else None
    if opened is None:
        opening.cancel()  # the workers' open stops when the cell resets them
    cpu1, rcpu1 = cell.servers.cpu(), cell.redis_cpu()
    if not converged:
        st = await cell.drivers.state(expected)
        why = f"still changing after {p.storm_timeout_s:.0f} s" if out.timed_out else "settled wrong"
        out.failures.append(count_failure(st, n, why))
    else:
        # Every client showed n once; a stale count arriving after that is still a failure.
        converged, st = await settle_counts(cell, expected, p.settle_timeout_s)
        if not converged:
            out.failures.append(count_failure(st, n, "regressed after the quiet window"))
        out.failures += await check_server_counts(cell, expected)
    if opened is not None and opened["failed"]:
        out.failures.append(f"{opened['failed']} of {n} sockets failed to connect")
    out.failures += health_failures(st)
    out.metrics = {
        "all_show_n_s": (st["last_ok_ns"] - t0) / 1e9 if converged else float("nan"),
        "connect_s": (opened["t_opened_ns"] - t0) / 1e9 if opened else float("nan"),
        "count_frames": st["count_frames"],
        "frames_per_client": st["count_frames"] / n,
        "server_cpu_s": cpu1 - cpu0,
        "redis_cpu_s": rcpu1 - rcpu0,
    }
    if not out.timed_out:
        out.failures += await close_and_check_zero(cell, [room])
    return out


# -- 3. fan-out ------------------------------------------------------------


def latency_summary(lat_by_seq: dict[str, list[int]]) -> dict[str, float]:
    """p50/p99/max over every receipt, and the time to the last recipient of each message."""
    everything = sorted(x for v in lat_by_seq.values() for x in v)
    last = sorted(max(v) for v in lat_by_seq.values() if v)
    if not everything:
        return {}

    def pct(xs: list[int], q: float) -> float:
        return xs[min(len(xs) - 1, int(q * len(xs)))] / 1000  # us -> ms

    return {
        "p50_ms": pct(everything, 0.50),
        "p99_ms": pct(everything, 0.99),
        "max_ms": everything[-1] / 1000,
        "last_recipient_p50_ms": statistics.median(last) / 1000,
        "last_recipient_max_ms": last[-1] / 1000,
    }


async def publish_phase(
    cell: Cell, pub: Publisher, room: str, members: int, n_msgs: int, interval: float, phase: str, out: Outcome
) -> dict[str, float]:
    """Publish ``n_msgs`` stamped messages, wait for every delivery, check each socket got each once, in order."""
    p = cell.profile
    run = f"{phase}-{uuid.uuid4().hex[:8]}"
    await cell.drivers.call("messages_begin", {"run": run})
    st0 = await cell.drivers.state()
    cpu0, rcpu0 = cell.servers.cpu(), cell.redis_cpu()
    first_t = time.time_ns()
    for seq in range(n_msgs):
        await pub.publish(room, {"run": run, "seq": seq, "t": time.time_ns()})
        if interval:
            await asyncio.sleep(interval)
    want = members * n_msgs
    deadline = time.monotonic() + p.fan_delivery_timeout_s
    last_progress, last_seen = time.monotonic(), -1
    while True:
        st = await cell.drivers.state()
        got = st["receipts"]
        if got >= want:
            break
        if got != last_seen:
            last_progress, last_seen = time.monotonic(), got
        if time.monotonic() > deadline or time.monotonic() - last_progress > 10:
            out.timed_out = out.timed_out or time.monotonic() > deadline
            break
        await asyncio.sleep(0.05)
    cpu1, rcpu1 = cell.servers.cpu(), cell.redis_cpu()
    reports = await cell.drivers.call("messages_report", {"n_seqs": n_msgs, "room": room})
    lat: dict[str, list[int]] = {}
    for r in reports:
        for seq, xs in r["latency_us"].items():
            lat.setdefault(seq, []).extend(xs)
    receipts = sum(r["receipts"] for r in reports)
    for key, label in (("missing", "lost"), ("duplicates", "duplicated"), ("disorder", "out of order")):
        bad = sum(r[key] for r in reports)
        if bad:
            out.failures.append(f"{phase}: {bad} of {want} deliveries {label}")
    span_s = (max(r["last_rx_ns"] for r in reports) - first_t) / 1e9
    metrics = latency_summary(lat)
    metrics.update({
        "frames": receipts,
        "frames_per_s": receipts / span_s if span_s > 0 else float("nan"),
        "server_cpu_us_per_frame": 1e6 * (cpu1 - cpu0) / receipts if receipts else float("nan"),
        "redis_cpu_us_per_frame": 1e6 * (rcpu1 - rcpu0) / receipts if receipts else float("nan"),
        "driver_cpu_s": st["cpu_s"] - st0["cpu_s"],
    })
    return metrics


async def fanout(cell: Cell, size: float) -> Outcome:
    """One room of ``m`` subscribers; a backend publishes stamped messages.

    Paced phase: messages spaced so the offered load stays moderate -> delivery
    latency. Burst phase: messages back to back -> delivered frames/s and
    server CPU per delivered frame. Each stack publishes its documented way
    (rrr: Redis PUBLISH; Channels: group_send; Socket.IO: write-only manager).
    """
    m = int(size)
    p = cell.profile
    out = Outcome()
    room = "fan"
    specs = [[[room, k]] for k in split(m, len(cell.drivers))]
    t0 = time.monotonic()
    opened = await open_sockets(cell, specs, relay=True, wait_joined=p.settle_timeout_s)
    out.info["join_s"] = round(time.monotonic() - t0, 3)
    if opened["failed"] or opened["joined"] < m:
        out.failures.append(f"{opened['opened']} of {m} connected, {opened['joined']} joined")
    pub = await cell.servers.kind.publisher(cell.redis.url)
    try:
        # Warm-up until every member has one message: proves each subscription is live end to end.
        deadline = time.monotonic() + p.settle_timeout_s
        k = 0
        while True:
            await pub.publish(room, {"warm": k})
            k += 1
            await asyncio.sleep(max(0.2, m / p.fan_paced_rate))
            st = await cell.drivers.state()
            if st["warm"] >= m or time.monotonic() > deadline:
                break
        out.info["warm_s"] = round(time.monotonic() - t0 - out.info["join_s"], 3)
        if st["warm"] < m:
            out.failures.append(f"only {st['warm']} of {m} members got a warm-up message")
            out.timed_out = True
            return out
        interval = max(0.02, m / p.fan_paced_rate)
        paced = await publish_phase(cell, pub, room, m, p.fan_paced_msgs, interval, "paced", out)
        n_burst = max(5, min(50, p.fan_burst_frames // m))
        t1 = time.monotonic()
        burst = await publish_phase(cell, pub, room, m, n_burst, 0.0, "burst", out)
        out.info["paced_s"] = round(t1 - t0 - out.info["join_s"] - out.info["warm_s"], 3)
        out.info["burst_s"] = round(time.monotonic() - t1, 3)
    finally:
        await pub.close()
    out.failures += health_failures(await cell.drivers.state())
    out.metrics = {
        **{k: v for k, v in paced.items() if k.endswith("_ms")},
        "paced_interval_ms": interval * 1000,
        "burst_msgs": n_burst,
        "burst_frames_per_s": burst["frames_per_s"],
        "burst_last_recipient_max_ms": burst.get("last_recipient_max_ms", float("nan")),
        "server_cpu_us_per_frame": burst["server_cpu_us_per_frame"],
        "redis_cpu_us_per_frame": burst["redis_cpu_us_per_frame"],
        "driver_cpu_s": paced["driver_cpu_s"] + burst["driver_cpu_s"],
    }
    return out


# -- 4. churn --------------------------------------------------------------


async def churn(cell: Cell, size: float) -> Outcome:
    """Open and close sockets over many rooms for ``size`` seconds; then every count must be exact."""
    duration = float(size)
    p = cell.profile
    out = Outcome()
    rooms = [f"churn-{i}" for i in range(p.churn_rooms)]
    cpu0, rcpu0 = cell.servers.cpu(), cell.redis_cpu()
    replies = await cell.drivers.call("churn", [
        {"kind": cell.kind_name, "host": "127.0.0.1", "ports": cell.servers.ports, "sources": w.sources,
         "rooms": rooms, "duration": duration, "max_ops": p.churn_max_ops, "loops": p.churn_loops,
         "pool_min": p.churn_pool[0], "pool_max": p.churn_pool[1], "timeout": 10.0, "seed": 7}
        for w in cell.drivers.workers
    ], timeout=duration + 120)
    t_end = time.time_ns()
    cpu1, rcpu1 = cell.servers.cpu(), cell.redis_cpu()
    expected = {r: 0 for r in rooms}
    for reply in replies:
        for room, k in reply["live_by_room"].items():
            expected[room] += k
    totals = {k: sum(r[k] for r in replies) for k in
              ("opens", "closes", "open_failures", "join_timeouts", "close_timeouts")}
    for key, label in (("open_failures", "opens failed"), ("join_timeouts", "joins never acknowledged"),
                       ("close_timeouts", "closes not completed by the server")):
        if totals[key]:
            out.failures.append(f"{totals[key]} {label}")
    live_expected = {r: k for r, k in expected.items() if k}
    ok, st = await settle_counts(cell, live_expected, p.settle_timeout_s)
    if not ok:
        out.failures.append(count_failure(st, sum(live_expected.values()), "after churn"))
    out.failures += await check_server_counts(cell, expected)
    out.failures += health_failures(st)
    elapsed = max(r["elapsed_s"] for r in replies)
    ops = totals["opens"] + totals["closes"]
    join_ms = sorted(x for r in replies for x in r["join_ms"])
    out.metrics = {
        "ops_per_s": ops / elapsed,
        "join_p50_ms": join_ms[len(join_ms) // 2] if join_ms else float("nan"),
        "join_p99_ms": join_ms[int(0.99 * len(join_ms))] if join_ms else float("nan"),
        "opens": totals["opens"],
        "closes": totals["closes"],
        "live_at_end": sum(expected.values()),
        "converge_s": max(0.0, (st["last_ok_ns"] - t_end) / 1e9) if ok else float("nan"),
        "server_cpu_ms_per_op": 1000 * (cpu1 - cpu0) / ops if ops else float("nan"),
        "redis_cpu_ms_per_op": 1000 * (rcpu1 - rcpu0) / ops if ops else float("nan"),
    }
    out.failures += await close_and_check_zero(cell, rooms)
    return out


@dataclass(frozen=True)
class ScenarioSpec:
    name: str
    title: str
    run: Scenario
    sizes: Callable[[Profile], tuple[float, ...]]
    procs: int
    size_label: str


SCENARIOS: dict[str, ScenarioSpec] = {s.name: s for s in (
    ScenarioSpec("idle", "Idle hold", idle_hold, lambda p: p.idle_sizes, 1, "connections"),
    ScenarioSpec("join_storm", "Join storm", join_storm, lambda p: p.storm_sizes, 1, "clients"),
    ScenarioSpec("fanout", "Fan-out", fanout, lambda p: p.fanout_sizes, 1, "members"),
    ScenarioSpec("churn", "Churn", churn, lambda p: p.churn_durations, 1, "seconds"),
    ScenarioSpec("join_storm_2p", "Join storm, 2 server processes", join_storm, lambda p: p.storm_2p_sizes, 2,
                 "clients"),
    ScenarioSpec("fanout_2p", "Fan-out, 2 server processes", fanout, lambda p: p.fanout_2p_sizes, 2, "members"),
)}
