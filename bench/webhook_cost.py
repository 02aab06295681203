"""Events out (#21): what webhooks cost, and that a receiver cannot slow rrr down.

    python -m bench.webhook_cost [--sockets 10000] [--rooms 1000] [--runs 3] [--pending 20000]
                                 [--storm 1000] [--storm-runs 4] [--write]

Real ``app.py`` processes, each on a ``redis-server`` of its own (so each is its own deployment,
with its own sender), a real HTTP receiver in this process (asyncio, loopback), bare asyncio
WebSocket clients on the count socket (``/ws/count/<room>/``: joined by the upgrade itself):

1. **CPU per join, webhooks on vs off**: per run, ``--sockets`` sockets over ``--rooms`` rooms join
   (each until its first count), then all drop (RST), and the server settles after the vacate delay
   (the vacated events go out then). The server's CPU over the whole storm, joins and leaves, per
   join; with webhooks on the server also records and sends ``2 x --rooms`` events (occupied and
   vacated; each run checks the receiver got exactly those). The two servers take turns, so both
   see the same machine; medians of ``--runs``. Redis's CPU is shown too (the events are recorded
   inside the presence scripts). Target: on / off at most 1.15.
2. **Events per second delivered**: with the receiver refusing connections, ``--pending`` events are
   made (``--pending / 2`` rooms, each occupied then vacated) and wait in Redis: **Redis memory per
   pending event** is the fall of ``used_memory`` once they are delivered, divided by their number.
   Then the receiver answers, and the rate is from its first 200 to the last event (the wait for the
   sender's next retry is not the rate).
3. **A receiver that never answers**: a join storm of ``--storm`` sockets, one room each (so every
   join is an event), on a server whose receiver hangs (``--webhook-timeout`` 5 s, retried) vs one
   whose receiver answers; the time until every socket has its first count. Turns, medians of
   ``--storm-runs``; target: the ratio stays about 1 (the sending runs apart from sockets, counts and
   presence writes).

``--write`` saves the section to ``bench/results/webhooks.md``, which ``bench/report.py`` keeps on
docs/benchmarks.md. Only loopback; every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from bench.machine import ROOT, cpu_seconds, free_port
from bench.servers import start_app
from rrr.backplane import keys
from rrr.backplane.embedded import EmbeddedRedis

RESULT = ROOT / "bench" / "results" / "webhooks.md"
SECRET = "bench-webhook-secret"
VACATE = 2.0
SOURCES = 8


# -- a receiver -----------------------------------------------------------------------------------


@dataclass
class Receiver:
    """A real HTTP server on loopback: ``ok`` answers 200 at once, ``hang`` never answers, ``down``
    listens on nothing (connections refused)."""

    port: int
    mode: str = "ok"
    events: int = 0
    ids: set[str] = field(default_factory=set)
    first_ok: float | None = None
    last_ok: float | None = None
    _server: asyncio.base_events.Server | None = None

    async def up(self, mode: str = "ok") -> None:
        self.mode = mode
        if self._server is None:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, reuse_address=True)

    async def down(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length)
                if self.mode == "hang":
                    await asyncio.sleep(3600)
                events = json.loads(body)["events"]
                now = time.monotonic()
                self.first_ok = self.first_ok or now
                self.last_ok = now
                self.events += len(events)
                self.ids.update(e["id"] for e in events)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"


# -- sockets ---------------------------------------------------------------------------------------


class Joiner(asyncio.Protocol):
    """One count socket: the upgrade joins the room; ``counted`` resolves on the first count."""

    def __init__(self, request: bytes, counted: asyncio.Future[None]) -> None:
        self.request, self.counted = request, counted
        self.transport: asyncio.Transport | None = None
        self.buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if self.counted.done():
            return
        self.buf += data
        if b'"connection_message"' in self.buf:
            self.counted.set_result(None)
        elif self.buf.startswith(b"HTTP/") and not self.buf.startswith(b"HTTP/1.1 101") and b"\r\n" in self.buf:
            self.counted.set_exception(RuntimeError(self.buf.split(b"\r\n", 1)[0].decode(errors="replace")))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.counted.done():
            self.counted.set_exception(exc or ConnectionError("closed before its first count"))

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


async def join(port: int, rooms: list[str], run: int, concurrency: int = 100, timeout: float = 120.0,
               ) -> tuple[list[Joiner], float]:
    """A socket into each of ``rooms`` (in order), each until its first count; the wall time."""
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(concurrency)
    conns: list[Joiner] = []
    failed: list[str] = []

    async def one(i: int, room: str) -> None:
        key = base64.b64encode(os.urandom(16)).decode()
        request = (f"GET /ws/count/{room}/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                   f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()
        counted: asyncio.Future[None] = loop.create_future()
        joiner = Joiner(request, counted)
        source = f"127.0.0.{20 + (SOURCES * run + i % SOURCES) % 200}"
        async with gate:
            try:
                await asyncio.wait_for(loop.create_connection(lambda: joiner, "127.0.0.1", port,
                                                              local_addr=(source, 0)), timeout)
                conns.append(joiner)
                await asyncio.wait_for(counted, timeout)
            except (OSError, RuntimeError, TimeoutError) as e:
                failed.append(f"{type(e).__name__}: {e}")

    began = time.monotonic()
    await asyncio.gather(*(one(i, room) for i, room in enumerate(rooms)))
    took = time.monotonic() - began
    if failed:
        raise RuntimeError(f"{len(failed)} joins failed, e.g. {failed[:3]}")
    return conns, took


async def settle(pids: list[int], timeout: float = 60.0, quiet: float = 0.01, every: float = 0.5) -> None:
    """Until the processes spend under ``quiet`` CPU seconds per ``every`` together."""
    deadline = time.monotonic() + timeout
    before = sum(map(cpu_seconds, pids))
    while time.monotonic() < deadline:
        await asyncio.sleep(every)
        now = sum(map(cpu_seconds, pids))
        if now - before < quiet:
            return
        before = now


async def wait_for(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


# -- servers ---------------------------------------------------------------------------------------


@dataclass
class Server:
    label: str
    redis: EmbeddedRedis
    proc: subprocess.Popen[bytes]
    port: int
    receiver: Receiver | None

    @property
    def pids(self) -> tuple[int, int]:
        assert self.redis.proc is not None
        return self.proc.pid, self.redis.proc.pid


async def start(label: str, workdir: Path, receiver: Receiver | None, **options: Any) -> Server:
    server = EmbeddedRedis(port=free_port()).start()
    port = free_port()
    opts: dict[str, Any] = {"count_interval": 0.1, "api_rate": 0, "vacate_delay": VACATE, **options}
    if receiver is not None:
        opts |= {"webhook_url": receiver.url, "webhook_secret": SECRET}
    proc = await asyncio.to_thread(start_app, server.url, port, workdir / f"{label}.log", opts)
    return Server(label, server, proc, port, receiver)


def stop(servers: list[Server]) -> None:
    for s in servers:
        s.proc.send_signal(signal.SIGTERM)
    for s in servers:
        try:
            s.proc.wait(30)
        except subprocess.TimeoutExpired:
            s.proc.kill()
            s.proc.wait()
        s.redis.close()


# -- the three parts ----------------------------------------------------------------------------


async def cpu_per_join(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    receiver = Receiver(free_port())
    await receiver.up()
    servers = [await start("off", workdir, None), await start("on", workdir, receiver)]
    out: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
    try:
        for s in servers:  # warm up: first imports and connections are no join's cost
            conns, _ = await join(s.port, [f"warm-{i // 10}" for i in range(500)], 199)
            for c in conns:
                c.abort()
            await asyncio.sleep(VACATE + 0.5)
            await settle(list(s.pids))
        run = 0
        for r in range(args.runs):
            for s in servers if r % 2 == 0 else servers[::-1]:
                rooms = [f"r{r}-{i % args.rooms}" for i in range(args.sockets)]
                before = receiver.events
                app0, redis0 = map(cpu_seconds, s.pids)
                conns, took = await join(s.port, rooms, run)
                run += 1
                app1 = cpu_seconds(s.pids[0])
                for c in conns:
                    c.abort()
                await asyncio.sleep(VACATE + 0.5)
                await settle(list(s.pids))
                app2, redis2 = map(cpu_seconds, s.pids)
                if s.receiver is not None:
                    await wait_for(lambda: receiver.events - before == 2 * args.rooms, 30,
                                   f"{2 * args.rooms} events (got {receiver.events - before})")
                cell = {"join_us": (app1 - app0) / args.sockets * 1e6, "total_us": (app2 - app0) / args.sockets * 1e6,
                        "redis_us": (redis2 - redis0) / args.sockets * 1e6, "wall": took}
                out[s.label].append(cell)
                print(f"run {r + 1} webhooks {s.label:3s}: {cell['total_us']:6.0f} us server CPU per join (joins "
                      f"{cell['join_us']:.0f}), Redis {cell['redis_us']:.0f} us; storm {took:.2f} s", flush=True)
    finally:
        stop(servers)
        await receiver.down()
    return out


async def delivery(args: argparse.Namespace, workdir: Path) -> dict[str, float]:
    receiver = Receiver(free_port())
    s = await start("pending", workdir, receiver, webhook_backlog=max(100_000, args.pending * 2))
    client = redis.Redis.from_url(s.redis.url)
    try:
        rooms = [f"p-{i}" for i in range(args.pending // 2)]
        for i in range(0, len(rooms), 5000):
            conns, _ = await join(s.port, rooms[i : i + 5000], 300 + i)
            for c in conns:
                c.abort()
        await wait_for(lambda: client.xlen(keys.OUTBOX) == len(rooms) * 2, VACATE + 120, "every event in the outbox")
        await asyncio.sleep(1)
        held = int(client.info("memory")["used_memory"])
        await receiver.up()
        await wait_for(lambda: receiver.events >= len(rooms) * 2, 300, "every event delivered")
        assert len(receiver.ids) == len(rooms) * 2
        await wait_for(lambda: client.xlen(keys.OUTBOX) == 0, 30, "the outbox trimmed")
        await asyncio.sleep(1)
        after = int(client.info("memory")["used_memory"])
        assert receiver.first_ok is not None and receiver.last_ok is not None
        rate = receiver.events / max(1e-6, receiver.last_ok - receiver.first_ok)
        per_event = (held - after) / (len(rooms) * 2)
        sample = rooms[:: max(1, len(rooms) // 200)]
        per_room = statistics.mean(int(client.memory_usage(keys.reported(room)) or 0) for room in sample)
        print(f"{len(rooms) * 2} pending events: {per_event:.0f} B of Redis each (and {per_room:.0f} B per emptied "
              f"room's reported state, kept an hour); delivered at {rate:.0f} events/s", flush=True)
        return {"events": len(rooms) * 2, "bytes_per_event": per_event, "bytes_per_room": per_room, "rate": rate}
    finally:
        client.close()
        stop([s])
        await receiver.down()


async def hanging(args: argparse.Namespace, workdir: Path) -> dict[str, list[float]]:
    answering, silent = Receiver(free_port()), Receiver(free_port())
    await answering.up()
    await silent.up("hang")
    servers = [await start("answering", workdir, answering), await start("hanging", workdir, silent)]
    out: dict[str, list[float]] = {"answering": [], "hanging": []}
    try:
        for r in range(args.storm_runs):
            for s in servers if r % 2 == 0 else servers[::-1]:
                conns, took = await join(s.port, [f"h{r}-{i}" for i in range(args.storm)], 400 + r)
                out[s.label].append(took)
                print(f"storm {r + 1} receiver {s.label:9s}: {args.storm} sockets counted in {took:.2f} s", flush=True)
                for c in conns:
                    c.abort()
                await asyncio.sleep(VACATE + 0.5)
                await settle([p for x in servers for p in x.pids])
    finally:
        stop(servers)
        for receiver in (answering, silent):
            await receiver.down()
    return out


def section(args: argparse.Namespace, cpu: dict[str, Any], pending: dict[str, float],
            storms: dict[str, list[float]], load: tuple[float, float]) -> str:
    med = {k: {m: statistics.median(c[m] for c in v) for m in ("join_us", "total_us", "redis_us")}
           for k, v in cpu.items()}
    ratio = med["on"]["total_us"] / med["off"]["total_us"]
    joins = med["on"]["join_us"] / med["off"]["join_us"]
    hang = statistics.median(storms["hanging"]) / statistics.median(storms["answering"])
    runs = ", ".join(f"{c['total_us']:.0f}" for c in cpu["on"]) + " vs " + ", ".join(
        f"{c['total_us']:.0f}" for c in cpu["off"])
    return "\n".join([
        "## Events out (webhooks)",
        "",
        f"Measured apart from the harness by `python -m bench.webhook_cost --sockets {args.sockets} --rooms "
        f"{args.rooms} --runs {args.runs} --pending {args.pending} --storm {args.storm} --storm-runs "
        f"{args.storm_runs}` ({time.strftime('%Y-%m-%d')}, on this 2-core machine shared with other work: load "
        f"average {load[0]:.1f} at the start, {load[1]:.1f} at the end). Each `app.py` has a `redis-server` of "
        "its own; the receiver is a real HTTP server on loopback in the driver's process.",
        "",
        "| | |",
        "| --- | --- |",
        f"| join and leave storm, {args.sockets:,} sockets over {args.rooms:,} rooms: server CPU per join, "
        f"webhooks on / off (target ≤ 1.15) | **{ratio:.2f}x** ({med['on']['total_us']:.0f} vs "
        f"{med['off']['total_us']:.0f} µs, joins and leaves; the joins alone {joins:.2f}x; runs {runs}) |",
        f"| Redis CPU per join, on / off | {med['on']['redis_us']:.0f} vs {med['off']['redis_us']:.0f} µs (the "
        "events are recorded inside the presence scripts) |",
        f"| events per second delivered to a local receiver | {pending['rate']:,.0f} ({pending['events']:,} events, "
        "50 per request) |",
        f"| Redis memory per pending event | {pending['bytes_per_event']:.0f} B (and {pending['bytes_per_room']:.0f} "
        "B per room whose reported state is kept after it emptied, for an hour) |",
        f"| a {args.storm:,}-socket join storm (a room each), receiver never answering / answering | "
        f"**{hang:.2f}x** ({statistics.median(storms['hanging']):.2f} vs "
        f"{statistics.median(storms['answering']):.2f} s, medians of {args.storm_runs}) |",
        "",
        "With webhooks on, every transition is recorded by the presence script that causes it (a hash read and, "
        "per event, a stream append in Redis), and the one sending process moves each event to the outbox and "
        f"posts it, 50 to a request. Each run checked that the receiver got exactly the {2 * args.rooms:,} "
        "events of the storm (an occupied and a vacated per room); the pending run that every event arrived once.",
        "",
    ])


async def bench(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="rrr-webhooks-"))
    load0 = os.getloadavg()
    cpu = await cpu_per_join(args, workdir)
    pending = await delivery(args, workdir)
    storms = await hanging(args, workdir)
    load1 = os.getloadavg()
    text = section(args, cpu, pending, storms, (load0[0], load1[0]))
    print()
    print(text)
    if args.write:
        RESULT.write_text(text)
        print(f"wrote {RESULT}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sockets", type=int, default=10000, help="sockets per storm (under 19,000)")
    ap.add_argument("--rooms", type=int, default=1000, help="rooms they are spread over")
    ap.add_argument("--runs", type=int, default=3, help="storms per server; medians are reported")
    ap.add_argument("--pending", type=int, default=20000, help="events left pending for the memory and the rate")
    ap.add_argument("--storm", type=int, default=1000, help="sockets of the hanging-receiver join storm")
    ap.add_argument("--storm-runs", type=int, default=4, help="storms per server in that part")
    ap.add_argument("--write", action="store_true", help="save the section to bench/results/webhooks.md")
    args = ap.parse_args()
    if not 0 < args.sockets < 19000 or args.rooms < 1 or args.pending < 2:
        raise SystemExit("--sockets: 1 to 18,999; --rooms and --pending: at least 1 and 2")
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(1))
    asyncio.run(bench(args))


if __name__ == "__main__":
    main()
