"""What a Pusher socket (#23) costs the server next to a native one.

    python -m bench.pusher_cost                        # every measure, printed as the page's section
    python -m bench.pusher_cost --write                # and saved: bench/results/pusher.md (and .json)
    python -m bench.pusher_cost --only storm --storm 10000

* **Memory**: server RSS per idle socket, each subscribed to one room (rooms of 10), as
  `socket_memory` measures a socket: one fresh ``app.py`` per run, RSS before the sockets and after
  (and again after ``--hold`` s idle; the larger counts), over the sockets. A native socket on
  ``/ws/`` (one ``subscribe``) vs a Pusher socket on ``/app/<key>`` (one ``pusher:subscribe``).
* **Fan-out CPU**: ``--members`` (5,000) in one room, native or Pusher, over ``--drivers`` client
  processes; ``--messages`` published to Redis (``rrr.client.apublish``); the server's CPU (utime +
  stime) from the first publish until every member holds every message, over the frames delivered.
  Every member must get each message once, in order. Target: a Pusher socket at most 1.2x native.
* **Join storm**: ``--storm`` (10,000) Pusher sockets opened at once into one room: the time until
  every client has its ``pusher_internal:subscription_succeeded`` and the room's count in Redis
  (``GET /api/rooms/storm``) shows them all, and the server's CPU meanwhile.

The clients are bare asyncio protocols (the RFC 6455 upgrade and framing by hand), so a driver
stays light next to the server it measures. One real ``redis-server`` on a free loopback port;
every wait has a deadline; the processes started here are stopped by pid.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from .doors import Driver, answer, fan_out, masked, server_frames, status, until
from .machine import ROOT, cpu_seconds, free_port, rss_bytes, stop_process
from .servers import RedisServer, redis_binary, start_app

RESULTS = ROOT / "bench" / "results" / "pusher.md"
SECTION = "## Pusher sockets"
KINDS = ("native", "pusher")
LABELS = {"native": "native (`/ws/`)", "pusher": "Pusher (`/app/<key>`)"}
KEY = "bench-key"
APP_OPTIONS: dict[str, Any] = {
    # As the harness runs rrr: counts read by nobody else, no per-address limits on loopback.
    "api_rate": 0, "count_interval": 0.1, "max_connections": 60000, "message_rate": 0, "publish_rate_per_ip": 0,
    "pusher_app_id": "1", "pusher_key": KEY, "pusher_secret": "bench-secret",
}


class Member(asyncio.Protocol):
    """One socket, native or Pusher: the upgrade by hand, one subscription, server frames as they come.
    ``ready``: a native member's count shows ``want``, a Pusher member has its subscription_succeeded.
    ``got``: the ``n`` of each message, in arrival order."""

    def __init__(self, kind: str, port: int, room: str, sub: str, want: int) -> None:
        self.kind = kind
        self.port = port
        self.room = room
        self.sub = sub
        self.want = want
        self.ready = False
        self.got: list[int] = []
        self.failed: str | None = None
        self.buf = bytearray()
        self.upgraded = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        path = "/ws/" if self.kind == "native" else f"/app/{KEY}?protocol=7&client=bench&version=1"
        transport.write(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())

    def subscribe_text(self) -> str:
        if self.kind == "native":
            return json.dumps({"type": "subscribe", "room": self.room, "sub": self.sub})
        return json.dumps({"event": "pusher:subscribe", "data": {"channel": self.room}})

    def frame(self, data: dict[str, Any]) -> None:
        if self.kind == "native":
            kind = data.get("type")
            if kind == "connection_message":
                self.ready = data["connections"] >= self.want
            elif kind == "message":
                self.got.append(data["data"]["n"])
            return
        event = data.get("event")
        if event == "pusher_internal:subscription_succeeded":
            self.ready = True
        elif event == "pusher:connection_established":
            assert self.transport is not None
            self.transport.write(masked(0x1, self.subscribe_text().encode()))
        elif event == "message":
            self.got.append(json.loads(data["data"])["n"])

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.upgraded:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if b" 101 " not in self.buf[:end]:
                self.failed = bytes(self.buf[:40]).decode(errors="replace")
                return
            del self.buf[: end + 4]
            self.upgraded = True
            if self.kind == "native":
                assert self.transport is not None
                self.transport.write(masked(0x1, self.subscribe_text().encode()))
        for opcode, payload in server_frames(self.buf):
            if opcode == 0x1:
                self.frame(json.loads(payload))
            elif opcode == 0x9 and self.transport is not None:
                self.transport.write(masked(0xA, payload))
            elif opcode == 0x8:
                self.failed = f"closed {int.from_bytes(payload[:2], 'big') if len(payload) >= 2 else ''}"

    def connection_lost(self, exc: Exception | None) -> None:
        self.failed = self.failed or "closed"


# -- a driver process: its members, on command ------------------------------------------------------


async def drive() -> None:
    """``--drive``: JSON commands on stdin, one answer each on stdout. ``open`` {kind, port, room, n,
    want, sub}: ``n`` members, answered once each is ready; ``wait`` {messages}: answered once each
    holds that many (or at the deadline); ``quit``."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 24)  # an open names every member: 10,000 of them are 250 KB
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    members: list[Member] = []

    while line := await reader.readline():
        cmd = json.loads(line)
        if cmd["cmd"] == "open":
            started = time.monotonic()
            sem = asyncio.Semaphore(cmd.get("concurrency", 64))
            rooms: list[list[Any]] = cmd["rooms"]

            async def one(room: str, want: int, sub: str) -> None:
                async with sem:
                    _, m = await loop.create_connection(
                        lambda: Member(cmd["kind"], cmd["port"], room, sub, want), "127.0.0.1", cmd["port"])
                    members.append(m)

            await asyncio.gather(*(one(room, want, f"{cmd['sub']}{i}") for i, (room, want) in enumerate(rooms)))
            ok = await until(lambda: all(m.ready for m in members), cmd.get("within", 120))
            answer({"ready": ok, "s": time.monotonic() - started,
                    "failed": sorted({m.failed for m in members if m.failed})[:5]})
        elif cmd["cmd"] == "wait":
            n = cmd["messages"]
            ok = await until(lambda: all(len(m.got) >= n for m in members), cmd.get("within", 120))
            exact = sum(1 for m in members if m.got == list(range(n)))
            answer({"done": ok, "exact": exact, "members": len(members), "frames": sum(len(m.got) for m in members)})
        elif cmd["cmd"] == "status":
            answer(status(members))
        elif cmd["cmd"] == "quit":
            break
    answer({"bye": True})


def room_tabs(port: int, room: str) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/rooms/{room}", timeout=5) as r:
        return int(json.loads(r.read())["tabs"])


def wait_tabs(port: int, room: str, n: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while room_tabs(port, room) != n:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


# -- the measures ----------------------------------------------------------------------------------------


class Bench:
    def __init__(self, redis: RedisServer, tmp: Path) -> None:
        self.redis = redis
        self.logs = tmp / "logs"
        self.logs.mkdir(exist_ok=True)

    def app(self) -> tuple[subprocess.Popen[bytes], int]:
        port = free_port()
        return start_app(self.redis.url, port, self.logs / f"app-{port}.log", APP_OPTIONS), port

    def drivers(self, n: int) -> list[Driver]:
        return [Driver("bench.pusher_cost", self.logs / f"driver-{i}.log") for i in range(n)]

    def memory(self, kind: str, sockets: int, hold: float) -> float:
        """KiB of server RSS per idle socket of ``kind``, each in a room of 10."""
        asyncio.run(self.redis.flush())
        proc, port = self.app()
        (driver,) = self.drivers(1)
        try:
            time.sleep(1)
            before = rss_bytes(proc.pid)
            rooms = [[f"m{i // 10}", min(10, sockets - (i // 10) * 10)] for i in range(sockets)]
            driver.send(cmd="open", kind=kind, port=port, rooms=rooms, sub="s", within=180)
            ready = driver.answer()
            if not ready["ready"] or not wait_tabs(port, "m0", 10, 60):
                raise RuntimeError(f"{kind}: the sockets never all subscribed: {ready}")
            after = rss_bytes(proc.pid)
            time.sleep(hold)
            held = rss_bytes(proc.pid)
            return (max(after, held) - before) / sockets / 1024
        finally:
            driver.close()
            stop_process(proc)

    def fanout(self, kind: str, members: int, messages: int, drivers: int) -> dict[str, Any]:
        """Server CPU per delivered frame: ``members`` in one room, ``messages`` published."""
        asyncio.run(self.redis.flush())
        proc, port = self.app()
        group = self.drivers(drivers)
        try:
            return fan_out(group, kind, proc.pid, port, self.redis.url, members, messages,
                           joined=lambda: wait_tabs(port, "fan", members, 120))
        finally:
            for d in group:
                d.close()
            stop_process(proc)

    def storm(self, n: int, drivers: int) -> dict[str, Any]:
        """``n`` Pusher sockets opened at once into one room."""
        asyncio.run(self.redis.flush())
        proc, port = self.app()
        group = self.drivers(drivers)
        try:
            cpu0 = cpu_seconds(proc.pid)
            started = time.monotonic()
            share = [n // drivers + (1 if i < n % drivers else 0) for i in range(drivers)]
            for i, (driver, k) in enumerate(zip(group, share)):
                driver.send(cmd="open", kind="pusher", port=port, rooms=[["storm", n]] * k, sub=f"d{i}-", within=300,
                            concurrency=k)
            ready = [d.answer() for d in group]
            subscribed = time.monotonic() - started
            counted = wait_tabs(port, "storm", n, 300)
            return {"subscribed_s": subscribed, "counted_s": time.monotonic() - started,
                    "ok": all(r["ready"] for r in ready) and counted, "server_cpu_s": cpu_seconds(proc.pid) - cpu0,
                    "failed": [f for r in ready for f in r["failed"]][:5]}
        finally:
            for d in group:
                d.close()
            stop_process(proc)


# -- the page's section ----------------------------------------------------------------------------------


def section(res: dict[str, Any]) -> str:
    meta = res["meta"]
    lines = [SECTION, "",
             f"Measured apart from the harness by `python -m bench.pusher_cost` ({meta['when']}, this 2-core machine "
             f"shared with other test suites; load average {meta['load']} at the start). One `app.py` per measure, one "
             "real `redis-server`; clients are bare asyncio protocols in separate processes.", ""]
    mem = res.get("memory")
    if mem:
        base = mem["native"]
        lines += [f"**Server memory per idle socket** ({meta['sockets']:,} sockets, each subscribed to one room of 10; "
                  f"RSS after the sockets and after {meta['hold']:g} s idle, the larger, over the sockets; median of "
                  f"{meta['repeats']}; target: a Pusher socket at most 1.2× a native one):", "",
                  "| socket | KiB per socket | vs native | |", "| --- | --- | --- | --- |"]
        for kind in KINDS:
            ratio = mem[kind] / base
            verdict = "" if kind == "native" else ("met" if ratio <= 1.2 else "**not met**")
            lines.append(f"| {LABELS[kind]} | {mem[kind]:.2f} | {ratio:.2f}× | {verdict} |")
        lines.append("")
    fan = res.get("fanout")
    if fan:
        base = fan["native"]["us_per_frame"]
        lines += [f"**Server CPU per delivered frame in a fan-out to {meta['members']:,} members** ({meta['messages']} "
                  f"messages published to Redis, the members over {meta['drivers']} client processes; each member got "
                  "each message once, in order; median of the runs; target: at most 1.2× native):", "",
                  "| socket | µs per frame | vs native | frames | every member exact | |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for kind in KINDS:
            f = fan[kind]
            ratio = f["us_per_frame"] / base
            verdict = "" if kind == "native" else ("met" if ratio <= 1.2 else "**not met**")
            lines.append(f"| {LABELS[kind]} | {f['us_per_frame']:.2f} | {ratio:.2f}× | {f['frames']:,} | "
                         f"{'yes' if f['ok'] else '**no**'} | {verdict} |")
        lines.append("")
    storm = res.get("storm")
    if storm:
        lines += [f"**A join storm of {meta['storm']:,} Pusher sockets into one room** (all opened at once by "
                  f"{meta['storm_drivers']} light client processes; `subscription_succeeded` for every socket, then "
                  "the room's count in Redis showing them all):", "",
                  "| every socket subscribed after | the count shows them all after | server CPU | all there |",
                  "| --- | --- | --- | --- |",
                  f"| {storm['subscribed_s']:.2f} s | {storm['counted_s']:.2f} s | {storm['server_cpu_s']:.2f} s | "
                  f"{'yes' if storm['ok'] else '**no**'} |", ""]
    lines += [
        "Why a Pusher socket costs about what a native one does: it is one (the same handler, session, hub and "
        "subscriptions); its door adds a socket id and a channel table, and a room message becomes one Pusher frame "
        "per process, made once for every Pusher socket it goes to (`rrr/pusher/door.py`).", ""]
    return "\n".join(lines)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    res: dict[str, Any] = {"meta": {
        "when": time.strftime("%Y-%m-%d"), "load": f"{os.getloadavg()[0]:.1f}", "sockets": args.sockets,
        "hold": args.hold, "repeats": args.repeats, "members": args.members, "messages": args.messages,
        "drivers": args.drivers, "storm": args.storm, "storm_drivers": args.storm_drivers,
    }}
    with tempfile.TemporaryDirectory(prefix="rrr-pusher-") as tmp:
        redis = RedisServer(redis_binary(args.redis_server), Path(tmp))
        asyncio.run(redis.start())
        bench = Bench(redis, Path(tmp))
        try:
            if args.only in ("all", "memory"):
                runs = {k: [bench.memory(k, args.sockets, args.hold) for _ in range(args.repeats)] for k in KINDS}
                print("memory KiB/socket", runs, file=sys.stderr)
                res["memory"] = {k: statistics.median(v) for k, v in runs.items()}
            if args.only in ("all", "fanout"):
                fan: dict[str, Any] = {}
                for kind in KINDS:
                    cells = [bench.fanout(kind, args.members, args.messages, args.drivers) for _ in range(args.repeats)]
                    print("fanout", kind, cells, file=sys.stderr)
                    best = sorted(cells, key=lambda c: c["us_per_frame"])[len(cells) // 2]
                    fan[kind] = {**best, "ok": all(c["ok"] for c in cells)}
                res["fanout"] = fan
            if args.only in ("all", "storm"):
                res["storm"] = bench.storm(args.storm, args.storm_drivers)
                print("storm", res["storm"], file=sys.stderr)
        finally:
            redis.stop()
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--drive", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--only", choices=["all", "memory", "fanout", "storm"], default="all")
    p.add_argument("--sockets", type=int, default=3000, help="idle sockets per memory run")
    p.add_argument("--hold", type=float, default=10.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--members", type=int, default=5000)
    p.add_argument("--messages", type=int, default=40)
    p.add_argument("--drivers", type=int, default=2)
    p.add_argument("--storm", type=int, default=10000)
    p.add_argument("--storm-drivers", type=int, default=2)
    p.add_argument("--redis-server", default=None)
    p.add_argument("--write", action="store_true", help=f"save the section to {RESULTS.relative_to(ROOT)}")
    args = p.parse_args()
    if args.drive:
        asyncio.run(drive())
        return
    res = measure(args)
    text = section(res)
    print(text)
    if args.write:
        RESULTS.write_text(text + "\n")
        (RESULTS.with_suffix(".json")).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
