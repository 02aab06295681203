"""What the fallback transports (#22) cost the server next to a WebSocket.

    python -m bench.transport_cost                       # every measure, printed as the page's section
    python -m bench.transport_cost --write               # and saved: bench/results/transports.md
    python -m bench.transport_cost --only memory --sessions 2000 --repeats 1

* **Memory**: server RSS per idle session, each subscribed to one room (rooms of 10), as
  `socket_memory` measures a socket: one fresh ``app.py`` per run, RSS before the sessions and
  after (and again after ``--hold`` s idle; the larger counts), over the number of sessions. A
  WebSocket on ``/ws/``; an SSE stream on ``/sse/`` (its subscribe POSTed); a polling session on
  ``/poll/`` (its subscribe POSTed, then always one poll waiting, as the library keeps it).
* **Fan-out CPU**: ``--members`` (5,000) in one room, over WebSocket and over SSE, spread over
  ``--drivers`` client processes; ``--messages`` published to Redis (``rrr.client.apublish``);
  the server's CPU (utime + stime) from the first publish until every member holds every message,
  over the frames delivered. Every member must get each message once, in order.
* **Join storm**: ``--storm`` (1,000) SSE sessions opened at once into one room (each subscribe
  POSTed): the time until every one shows the full count, and the count frames they got; the same
  over WebSocket for reference.
* **Handoff**: a POST and an empty-handed poll answered by the process holding the session versus
  one that lands on another process and is handed over through Redis (two ``app.py``): the
  round trip each, median of ``--handoffs``.

The clients are bare asyncio protocols (HTTP/1.1 by hand: the upgrade, chunked SSE, keep-alive
POSTs and polls), so a driver stays light next to the server it measures. One real ``redis-server``
on a free loopback port; every wait has a deadline; the processes started here are stopped by pid.
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
from pathlib import Path
from typing import Any

from .doors import Driver, answer, fan_out, masked, server_frames, status, until
from .machine import ROOT, cpu_seconds, free_port, rss_bytes, stop_process
from .servers import RedisServer, redis_binary, start_app

RESULTS = ROOT / "bench" / "results" / "transports.md"
SECTION = "## Transports: SSE and long-polling"
KINDS = ("websocket", "sse", "poll")
LABELS = {"websocket": "WebSocket (`/ws/`)", "sse": "SSE (`/sse/`)", "poll": "long-polling (`/poll/`)"}
APP_OPTIONS: dict[str, Any] = {
    # As the harness runs rrr: counts read by nobody else, no per-address API limit on loopback.
    "api_rate": 0, "count_interval": 0.1, "poll_timeout": 55, "max_connections": 60000,
    "message_rate": 0, "publish_rate_per_ip": 0,
}


# -- the clients ----------------------------------------------------------------------------------


class Member:
    """One client's view: its counts and the offsets of its messages, in arrival order."""

    def __init__(self, room: str, sub: str) -> None:
        self.room = room
        self.sub = sub
        self.connections = 0
        self.count_frames = 0
        self.offsets: list[int] = []
        self.failed: str | None = None

    def frame(self, data: Any) -> None:
        kind = data.get("type") if isinstance(data, dict) else None
        if kind == "connection_message":
            self.connections = data["connections"]
            self.count_frames += 1
        elif kind == "message":
            self.offsets.append(data["offset"])

    def subscribe_text(self) -> str:
        return json.dumps({"type": "subscribe", "room": self.room, "sub": self.sub})


class WsMember(Member, asyncio.Protocol):
    """``/ws/``: the upgrade by hand, one subscribe, server frames parsed as they come."""

    def __init__(self, port: int, room: str, sub: str) -> None:
        super().__init__(room, sub)
        self.port = port
        self.buf = bytearray()
        self.upgraded = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(
            f"GET /ws/ HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())

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
            assert self.transport is not None
            self.transport.write(masked(0x1, self.subscribe_text().encode()))
        for opcode, payload in server_frames(self.buf):
            if opcode == 0x1:
                self.frame(json.loads(payload))
            elif opcode == 0x9 and self.transport is not None:
                self.transport.write(masked(0xA, payload))

    def connection_lost(self, exc: Exception | None) -> None:
        self.failed = self.failed or "closed"


class Http:
    """Keep-alive HTTP/1.1 connections for small requests (POSTs, session opens), used in turn."""

    def __init__(self, port: int, size: int) -> None:
        self.port = port
        self.size = size
        self._free: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
        self._made = 0

    async def request(self, method: str, path: str, body: str = "") -> tuple[int, bytes]:
        if self._free.empty() and self._made < self.size:
            self._made += 1
            self._free.put_nowait(await asyncio.open_connection("127.0.0.1", self.port))
        reader, writer = await self._free.get()
        try:
            data = body.encode()
            head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
            if method == "POST":
                head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
            writer.write((head + "\r\n").encode() + data)
            status, length = await read_head(reader)
            return status, await reader.readexactly(length)
        finally:
            self._free.put_nowait((reader, writer))

    def close(self) -> None:
        while not self._free.empty():
            self._free.get_nowait()[1].close()


async def read_head(reader: asyncio.StreamReader) -> tuple[int, int]:
    """The status and Content-Length of a response (every answer here has one)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.lower() == "content-length":
            length = int(value)
    return int(lines[0].split()[1]), length


class SseMember(Member, asyncio.Protocol):
    """``/sse/``: the stream read off its chunks; its subscribe POSTed once the session event came."""

    def __init__(self, port: int, room: str, sub: str, http: Http, pending: set[asyncio.Task[Any]]) -> None:
        super().__init__(room, sub)
        self.port = port
        self.http = http
        self.pending = pending
        self.raw = bytearray()
        self.text = ""
        self.headed = False
        self.session: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(f"GET /sse/ HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nAccept: text/event-stream\r\n\r\n"
                        .encode())

    def data_received(self, data: bytes) -> None:
        raw = self.raw
        raw += data
        if not self.headed:
            end = raw.find(b"\r\n\r\n")
            if end < 0:
                return
            if b" 200 " not in raw[:end]:
                self.failed = bytes(raw[:40]).decode(errors="replace")
                return
            del raw[: end + 4]
            self.headed = True
        got = []
        while True:
            line_end = raw.find(b"\r\n")
            if line_end < 0:
                break
            size = int(raw[:line_end], 16)
            if len(raw) < line_end + 2 + size + 2:
                break
            got.append(bytes(raw[line_end + 2: line_end + 2 + size]))
            del raw[: line_end + 2 + size + 2]
        if not got:
            return
        self.text += b"".join(got).decode()
        *events, self.text = self.text.split("\n\n")
        for event in events:
            if event.startswith(":"):
                continue
            data = json.loads(event[6:])
            if self.session is None:
                self.session = data["session"]
                task = asyncio.ensure_future(self.http.request("POST", f"/sse/{self.session}/", self.subscribe_text()))
                self.pending.add(task)
                task.add_done_callback(self.pending.discard)
            else:
                self.frame(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.failed = self.failed or "closed"


class PollMember(Member):
    """``/poll/``: a session, its subscribe POSTed, then a poll always waiting on a connection of its own."""

    def __init__(self, port: int, room: str, sub: str, http: Http) -> None:
        super().__init__(room, sub)
        self.port = port
        self.http = http
        self.seq = 0
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        status, body = await self.http.request("GET", "/poll/")
        session = json.loads(body)["session"]
        status, _ = await self.http.request("POST", f"/poll/{session}/", self.subscribe_text())
        if status != 202:
            self.failed = f"subscribe {status}"
            return
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            while True:
                writer.write(f"GET /poll/{session}/?seq={self.seq} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n\r\n"
                             .encode())
                status, length = await read_head(reader)
                answer = json.loads(await reader.readexactly(length))
                if status != 200:
                    self.failed = f"poll {status}"
                    return
                first = answer["seq"] - len(answer["frames"]) + 1
                for i, frame in enumerate(answer["frames"]):
                    if first + i > self.seq:
                        self.frame(frame)
                self.seq = max(self.seq, answer["seq"])
        finally:
            writer.close()


# -- a driver process: its members, on command ------------------------------------------------------


async def drive() -> None:
    """``--drive``: JSON commands on stdin, one answer each on stdout. ``open`` {kind, port, rooms:
    [[room, want], ...], sub}: the members, answered once each shows its room's ``want``; ``wait``
    {messages}: answered once each holds that many (or at the deadline); ``quit``."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 24)  # an open names every member: 10,000 of them are 250 KB
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    members: list[Member] = []
    wants: list[int] = []
    keep: list[Any] = []
    pending: set[asyncio.Task[Any]] = set()

    while line := await reader.readline():
        cmd = json.loads(line)
        if cmd["cmd"] == "open":
            started = time.monotonic()
            port, kind = cmd["port"], cmd["kind"]
            http = Http(port, 16)
            keep.append(http)
            sem = asyncio.Semaphore(cmd.get("concurrency", 64))

            async def one(room: str, sub: str) -> None:
                async with sem:
                    m: Member
                    if kind == "websocket":
                        _, m = await loop.create_connection(lambda: WsMember(port, room, sub), "127.0.0.1", port)
                    elif kind == "sse":
                        _, m = await loop.create_connection(
                            lambda: SseMember(port, room, sub, http, pending), "127.0.0.1", port)
                    else:
                        p = PollMember(port, room, sub, http)
                        p.task = asyncio.ensure_future(p.run())
                        m = p
                    members.append(m)

            rooms = cmd["rooms"]
            await asyncio.gather(*(one(room, f"{cmd['sub']}{i}") for i, (room, _) in enumerate(rooms)))
            wants.extend(want for _, want in rooms)
            ok = await until(lambda: all(m.connections == w for m, w in zip(members, wants)), cmd.get("within", 120))
            answer({"ready": ok, "s": time.monotonic() - started,
                    "count_frames": sum(m.count_frames for m in members),
                    "failed": sorted({m.failed for m in members if m.failed})[:5]})
        elif cmd["cmd"] == "wait":
            n = cmd["messages"]
            ok = await until(lambda: all(len(m.offsets) >= n for m in members), cmd.get("within", 120))
            exact = sum(1 for m in members if len(m.offsets) == n and m.offsets == sorted(set(m.offsets)))
            answer({"done": ok, "exact": exact, "members": len(members),
                    "frames": sum(len(m.offsets) for m in members)})
        elif cmd["cmd"] == "status":
            answer(status(members))
        elif cmd["cmd"] == "quit":
            break
    answer({"bye": True})


# -- the measures ----------------------------------------------------------------------------------------


class Bench:
    def __init__(self, redis: RedisServer, tmp: Path) -> None:
        self.redis = redis
        self.tmp = tmp
        self.logs = tmp / "logs"
        self.logs.mkdir(exist_ok=True)

    def app(self, **options: Any) -> tuple[subprocess.Popen[bytes], int]:
        port = free_port()
        proc = start_app(self.redis.url, port, self.logs / f"app-{port}.log", {**APP_OPTIONS, **options})
        return proc, port

    def drivers(self, n: int) -> list[Driver]:
        return [Driver("bench.transport_cost", self.logs / f"driver-{i}.log") for i in range(n)]

    def memory(self, kind: str, sessions: int, hold: float) -> float:
        """KiB of server RSS per idle session of ``kind``."""
        asyncio.run(self.redis.flush())
        proc, port = self.app()
        (driver,) = self.drivers(1)
        try:
            time.sleep(1)
            before = rss_bytes(proc.pid)
            rooms = [[f"m{i // 10}", min(10, sessions - (i // 10) * 10)] for i in range(sessions)]
            driver.send(cmd="open", kind=kind, port=port, rooms=rooms, sub="s", within=180)
            ready = driver.answer()
            if not ready["ready"]:
                raise RuntimeError(f"{kind}: the sessions never all showed their counts: {ready}")
            after = rss_bytes(proc.pid)
            time.sleep(hold)
            held = rss_bytes(proc.pid)
            return (max(after, held) - before) / sessions / 1024
        finally:
            driver.close()
            stop_process(proc)

    def fanout(self, kind: str, members: int, messages: int, drivers: int) -> dict[str, Any]:
        """Server CPU per delivered frame: ``members`` in one room, ``messages`` published."""
        asyncio.run(self.redis.flush())
        proc, port = self.app()
        group = self.drivers(drivers)
        try:
            return fan_out(group, kind, proc.pid, port, self.redis.url, members, messages)
        finally:
            for d in group:
                d.close()
            stop_process(proc)

    def storm(self, kind: str, n: int) -> dict[str, Any]:
        asyncio.run(self.redis.flush())
        proc, port = self.app()
        (driver,) = self.drivers(1)
        try:
            cpu0 = cpu_seconds(proc.pid)
            driver.send(cmd="open", kind=kind, port=port, rooms=[["storm", n]] * n, sub="s", within=120,
                        concurrency=n)
            ready = driver.answer()
            return {"s": ready["s"], "count_frames": ready["count_frames"], "ok": ready["ready"],
                    "server_cpu_s": cpu_seconds(proc.pid) - cpu0}
        finally:
            driver.close()
            stop_process(proc)

    def handoff(self, rounds: int) -> dict[str, Any]:
        """A POST, and a poll with a frame waiting, at the owner vs handed over by the other process."""
        asyncio.run(self.redis.flush())
        owner, owner_port = self.app()
        other, other_port = self.app()
        try:
            return asyncio.run(_handoff_rounds(owner_port, other_port, rounds))
        finally:
            stop_process(owner)
            stop_process(other)


async def _handoff_rounds(owner: int, other: int, rounds: int) -> dict[str, Any]:
    at_owner, elsewhere = Http(owner, 1), Http(other, 1)
    try:
        _, body = await at_owner.request("GET", "/poll/")
        session = json.loads(body)["session"]
        times: dict[str, list[float]] = {"post_owner": [], "post_handed": [], "poll_owner": [], "poll_handed": []}
        seq = 0
        for i in range(rounds):
            for name, http in (("owner", at_owner), ("handed", elsewhere)):
                started = time.perf_counter()
                status, _ = await http.request("POST", f"/poll/{session}/", '{"type":"ping"}')
                times[f"post_{name}"].append(time.perf_counter() - started)
                assert status == 202, status
                started = time.perf_counter()
                status, answer = await http.request("GET", f"/poll/{session}/?seq={seq}")
                times[f"poll_{name}"].append(time.perf_counter() - started)
                assert status == 200, status
                seq = json.loads(answer)["seq"]
        return {k: 1000 * statistics.median(v) for k, v in times.items()}
    finally:
        at_owner.close()
        elsewhere.close()


# -- the page's section ----------------------------------------------------------------------------------


def section(res: dict[str, Any]) -> str:
    meta = res["meta"]
    lines = [SECTION, "",
             f"Measured apart from the harness by `python -m bench.transport_cost` ({meta['when']}, this 2-core "
             f"machine shared with other test suites; load average {meta['load']} at the start). One `app.py` per "
             "measure, one real `redis-server`; clients are bare asyncio protocols in separate processes.", ""]
    mem = res.get("memory")
    if mem:
        ws = mem["websocket"]
        lines += [f"**Server memory per idle session** ({meta['sessions']:,} sessions, each subscribed to one room of "
                  f"10; RSS after the sessions and after {meta['hold']:g} s idle, the larger, over the sessions; "
                  f"median of {meta['repeats']}; target: at most 1.5× a WebSocket's):", "",
                  "| transport | KiB per session | vs WebSocket | |", "| --- | --- | --- | --- |"]
        for kind in KINDS:
            ratio = mem[kind] / ws
            verdict = "" if kind == "websocket" else ("met" if ratio <= 1.5 else "**not met**")
            lines.append(f"| {LABELS[kind]} | {mem[kind]:.1f} | {ratio:.2f}× | {verdict} |")
        lines.append("")
    fan = res.get("fanout")
    if fan:
        ws = fan["websocket"]["us_per_frame"]
        lines += [f"**Server CPU per delivered frame in a fan-out to {meta['members']:,} members** ({meta['messages']} "
                  f"messages published to Redis, the members over {meta['drivers']} client processes; each member got "
                  "each message once, in order; median of the runs; target: at most 1.5× a WebSocket's):", "",
                  "| transport | µs per frame | vs WebSocket | frames | every member exact | |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for kind in ("websocket", "sse"):
            f = fan[kind]
            ratio = f["us_per_frame"] / ws
            verdict = "" if kind == "websocket" else ("met" if ratio <= 1.5 else "**not met**")
            lines.append(f"| {LABELS[kind]} | {f['us_per_frame']:.1f} | {ratio:.2f}× | {f['frames']:,} | "
                         f"{'yes' if f['ok'] else '**no**'} | {verdict} |")
        lines.append("")
    storm = res.get("storm")
    if storm:
        lines += [f"**A join storm of {meta['storm']:,} sessions into one room** (all opened at once; done when every "
                  "client shows the full count):", "",
                  "| transport | every client shows it after | count frames (per session) | server CPU |",
                  "| --- | --- | --- | --- |"]
        for kind in ("sse", "websocket"):
            s = storm[kind]
            lines.append(f"| {LABELS[kind]} | {s['s']:.2f} s | {s['count_frames']:,} "
                         f"({s['count_frames'] / meta['storm']:.1f}) | {s['server_cpu_s']:.2f} s |")
        lines.append("")
    hand = res.get("handoff")
    if hand:
        lines += [f"**The handoff** (two `app.py` on one Redis; a polling session held by one; median of "
                  f"{meta['handoffs']} round trips, each a request on a kept-alive connection):", "",
                  "| request | at the process holding the session | landing on the other (handed over through Redis) |",
                  "| --- | --- | --- |",
                  f"| `POST` a frame (`ping`) | {hand['post_owner']:.2f} ms | {hand['post_handed']:.2f} ms |",
                  f"| `GET` a poll with a frame waiting | {hand['poll_owner']:.2f} ms | {hand['poll_handed']:.2f} ms |",
                  ""]
    lines += [
        "Why the handoff goes through Redis rather than over HTTP between processes: `--processes N` workers share "
        "one port, so a process has no address of its own to be reached at; and keeping polling sessions' frames in "
        "Redis would cost a write per frame per session (5,000 writes for one message to 5,000 polling members), "
        "where the handoff costs two small publishes per request that lands elsewhere and nothing otherwise "
        "(rrr/edge/handoff.py).", ""]
    return "\n".join(lines)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    res: dict[str, Any] = {"meta": {
        "when": time.strftime("%Y-%m-%d"), "load": f"{os.getloadavg()[0]:.1f}", "sessions": args.sessions,
        "hold": args.hold, "repeats": args.repeats, "members": args.members, "messages": args.messages,
        "drivers": args.drivers, "storm": args.storm, "handoffs": args.handoffs,
    }}
    with tempfile.TemporaryDirectory(prefix="rrr-transports-") as tmp:
        redis = RedisServer(redis_binary(args.redis_server), Path(tmp))
        asyncio.run(redis.start())
        bench = Bench(redis, Path(tmp))
        try:
            if args.only in ("all", "memory"):
                runs = {k: [bench.memory(k, args.sessions, args.hold) for _ in range(args.repeats)] for k in KINDS}
                print("memory KiB/session", runs, file=sys.stderr)
                res["memory"] = {k: statistics.median(v) for k, v in runs.items()}
            if args.only in ("all", "fanout"):
                fan: dict[str, Any] = {}
                for kind in ("websocket", "sse"):
                    cells = [bench.fanout(kind, args.members, args.messages, args.drivers) for _ in range(args.repeats)]
                    print("fanout", kind, cells, file=sys.stderr)
                    best = sorted(cells, key=lambda c: c["us_per_frame"])[len(cells) // 2]
                    fan[kind] = {**best, "ok": all(c["ok"] for c in cells)}
                res["fanout"] = fan
            if args.only in ("all", "storm"):
                res["storm"] = {kind: bench.storm(kind, args.storm) for kind in ("sse", "websocket")}
                print("storm", res["storm"], file=sys.stderr)
            if args.only in ("all", "handoff"):
                res["handoff"] = bench.handoff(args.handoffs)
                print("handoff", res["handoff"], file=sys.stderr)
        finally:
            redis.stop()
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--drive", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--only", choices=["all", "memory", "fanout", "storm", "handoff"], default="all")
    p.add_argument("--sessions", type=int, default=3000, help="idle sessions per memory run")
    p.add_argument("--hold", type=float, default=10.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--members", type=int, default=5000)
    p.add_argument("--messages", type=int, default=40)
    p.add_argument("--drivers", type=int, default=2)
    p.add_argument("--storm", type=int, default=1000)
    p.add_argument("--handoffs", type=int, default=200)
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
