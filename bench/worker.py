"""A load-driver process: holds thousands of client sockets and answers commands.

Started by ``drivers.DriverPool`` as ``python -m bench.worker``; reads one JSON
command per line on stdin and writes one JSON reply per line on stdout, each
tagged with the command's ``id``. Commands run as concurrent tasks, so the
orchestrator can poll ``state`` while an ``open`` is still in progress.

The worker records, never judges: counts each socket shows and when it last
changed, every published message's receipt time, duplicates and gaps. The
orchestrator compares that with what should have happened.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import json
import os
import random
import resource
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from .dialects import COUNT, DIALECTS, ERROR, JOINED, MESSAGE, Dialect
from .wsconn import WsConnection, open_connection

MAX_ERROR_SAMPLES = 8


class Client:
    """One driver socket and what it has seen."""

    __slots__ = ("room", "conn", "joined", "count", "count_ns", "seen", "last_seq", "warm")

    def __init__(self, room: str) -> None:
        self.room = room
        self.conn: WsConnection | None = None
        self.joined = False
        self.count: int | None = None
        self.count_ns = 0  # when ``count`` last changed: the moment the socket started showing it
        self.seen = 0  # bitmask of message seqs received in the current run
        self.last_seq = -1
        self.warm = False

    @property
    def dropped(self) -> bool:
        """Closed by the server (or the network), not by us."""
        conn = self.conn
        return conn is not None and conn.closed.done() and not conn.closing_by_us


class Worker:
    def __init__(self, index: int) -> None:
        self.index = index
        self.clients: list[Client] = []
        self.dialect: Dialect | None = None
        #: Bumped by ``reset``: an ``open`` or ``churn`` still running from an abandoned cell stops,
        #: and a socket it manages to connect anyway is dropped, so nothing leaks into the next cell.
        self.generation = 0
        self.reset_counters()
        self.begin_messages("")

    # -- frame accounting --------------------------------------------------

    def reset_counters(self) -> None:
        self.frames = 0
        self.count_frames = 0
        self.errors = 0
        self.error_samples: list[str] = []

    def begin_messages(self, run: str) -> None:
        self.run = run
        self.latencies: dict[int, list[int]] = defaultdict(list)
        self.receipts = 0
        self.duplicates = 0
        self.disorder = 0
        self.foreign = 0
        self.last_rx_ns = 0
        for c in self.clients:
            c.seen = 0
            c.last_seq = -1

    def _note_error(self, text: str) -> None:
        self.errors += 1
        if len(self.error_samples) < MAX_ERROR_SAMPLES:
            self.error_samples.append(text)

    def on_text(self, client: Client, conn: WsConnection, text: str, now: int) -> None:
        self.frames += 1
        assert self.dialect is not None
        try:
            event = self.dialect.parse(conn, text)
        except (ValueError, TypeError, AttributeError) as e:
            self._note_error(f"unparsable frame {text[:60]!r}: {e}")
            return
        if event is None:
            return
        tag, value = event
        if tag == COUNT:
            self.count_frames += 1
            client.joined = True
            if value != client.count:
                client.count = value
                client.count_ns = now
        elif tag == MESSAGE:
            self.on_message(client, value, now)
        elif tag == JOINED:
            client.joined = True
        elif tag == ERROR:
            self._note_error(str(value))

    def on_message(self, client: Client, data: Any, now: int) -> None:
        if not isinstance(data, dict):
            self.foreign += 1
            return
        if "warm" in data:
            client.warm = True
            return
        if data.get("run") != self.run:
            self.foreign += 1
            return
        seq = data["seq"]
        bit = 1 << seq
        if client.seen & bit:
            self.duplicates += 1
            return
        client.seen |= bit
        if seq < client.last_seq:
            self.disorder += 1
        else:
            client.last_seq = seq
        self.latencies[seq].append((now - data["t"]) // 1000)
        self.receipts += 1
        if now > self.last_rx_ns:
            self.last_rx_ns = now

    # -- connecting --------------------------------------------------------

    def _use_dialect(self, kind: str) -> Dialect:
        if self.dialect is None or self.dialect.name != kind:
            self.dialect = DIALECTS[kind]()
        return self.dialect

    async def _connect(self, client: Client, relay: bool, host: str, port: int, src: str, timeout: float) -> None:
        dialect = self.dialect
        assert dialect is not None
        generation = self.generation
        uri = f"ws://{host}:{port}{dialect.path(client.room, relay)}"

        def on_text(conn: WsConnection, text: str, now: int) -> None:
            self.on_text(client, conn, text, now)

        def on_open(conn: WsConnection) -> None:
            client.conn = conn
            if dialect.on_open(conn, client.room, relay):
                client.joined = True

        conn = await open_connection(uri, host, port, src, on_text, on_open, timeout)
        if generation != self.generation:
            conn.abort()
            raise ConnectionAbortedError("worker was reset")

    async def cmd_open(self, a: dict[str, Any]) -> dict[str, Any]:
        """Open sockets: ``specs`` is ``[[room, n], ...]``; sockets alternate over ``ports``."""
        self._use_dialect(a["kind"])
        relay: bool = a.get("relay", False)
        ports: list[int] = a["ports"]
        srcs: list[str] = a["sources"]
        fresh = [Client(room) for room, n in a["specs"] for _ in range(n)]
        self.clients.extend(fresh)
        failed = 0
        t_first = time.time_ns()

        generation = self.generation

        async def one(i: int, client: Client) -> None:
            nonlocal failed
            if generation != self.generation:
                return
            try:
                await self._connect(client, relay, a["host"], ports[i % len(ports)], srcs[i % len(srcs)], a["timeout"])
            except Exception as e:  # noqa: BLE001 - every failure is reported, none is fatal
                if generation != self.generation:
                    return  # a connect left over from a cell that was cut short; not the new cell's error
                failed += 1
                self._note_error(f"connect: {type(e).__name__}: {e}"[:160])

        await run_bounded((functools.partial(one, i, c) for i, c in enumerate(fresh)), a["in_flight"])
        t_opened = time.time_ns()
        joined_wait: float = a.get("wait_joined", 0.0)
        deadline = time.monotonic() + joined_wait
        while joined_wait and time.monotonic() < deadline:
            if all(c.joined or c.conn is None for c in fresh):
                break
            await asyncio.sleep(0.02)
        return {
            "opened": len(fresh) - failed,
            "failed": failed,
            "joined": sum(c.joined for c in fresh),
            "t_first_ns": t_first,
            "t_opened_ns": t_opened,
            "t_joined_ns": time.time_ns(),
        }

    # -- observing ---------------------------------------------------------

    def cmd_state(self, a: dict[str, Any]) -> dict[str, Any]:
        """Where every socket stands; with ``expected`` ({room: n}), how many show the truth."""
        expected: dict[str, int] | None = a.get("expected")
        live = [c for c in self.clients if c.conn is not None and not c.conn.closed.done()]
        ok = bad = 0
        last_ok_ns = 0
        bad_sample: list[list[Any]] = []
        if expected is not None:
            for c in live:
                want = expected.get(c.room)
                if c.count == want:
                    ok += 1
                    if c.count_ns > last_ok_ns:
                        last_ok_ns = c.count_ns
                else:
                    bad += 1
                    if len(bad_sample) < 5:
                        bad_sample.append([c.room, c.count, want])
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "clients": len(self.clients),
            "live": len(live),
            "dropped": sum(c.dropped for c in self.clients),
            "joined": sum(c.joined for c in live),
            "warm": sum(c.warm for c in live),
            "count_ok": ok,
            "count_bad": bad,
            "bad_sample": bad_sample,
            "last_ok_ns": last_ok_ns,
            "frames": self.frames,
            "count_frames": self.count_frames,
            "errors": self.errors,
            "error_samples": self.error_samples,
            "receipts": self.receipts,
            "last_rx_ns": self.last_rx_ns,
            "cpu_s": usage.ru_utime + usage.ru_stime,
        }

    def cmd_messages_report(self, a: dict[str, Any]) -> dict[str, Any]:
        """Per-run delivery in ``room``: latencies (us) by seq, and per-socket gaps against ``n_seqs`` sent."""
        n: int = a["n_seqs"]
        members = [c for c in self.clients if c.conn is not None and c.room == a["room"]]
        missing = sum(n - c.seen.bit_count() for c in members)
        return {
            "members": len(members),
            "receipts": self.receipts,
            "missing": missing,
            "duplicates": self.duplicates,
            "disorder": self.disorder,
            "foreign": self.foreign,
            "last_rx_ns": self.last_rx_ns,
            "latency_us": {str(k): v for k, v in self.latencies.items()},
        }

    # -- closing and churn -------------------------------------------------

    async def cmd_close(self, a: dict[str, Any]) -> dict[str, Any]:
        """Close every socket (close handshake, then wait for the server to drop TCP)."""
        todo = [c for c in self.clients if c.conn is not None and not c.conn.closed.done()]
        timeouts = 0

        async def one(c: Client) -> None:
            nonlocal timeouts
            assert c.conn is not None
            if not await c.conn.close(a["timeout"]):
                timeouts += 1

        t0 = time.monotonic()
        await run_bounded((functools.partial(one, c) for c in todo), a["in_flight"])
        # What we closed ourselves is done with (nothing dropped by a server is forgotten): later polls,
        # every 0.5 s in a benchmark, need not walk it (a storm after the 100,000-socket density phase
        # walked the density phase's closed sockets too, each time).
        self.clients = [c for c in self.clients
                        if not (c.conn is not None and c.conn.closing_by_us and c.conn.closed.done())]
        return {"closed": len(todo), "timeouts": timeouts, "elapsed_s": time.monotonic() - t0}

    async def cmd_churn(self, a: dict[str, Any]) -> dict[str, Any]:
        """Open and close sockets over many rooms until ``duration`` or ``max_ops``, ``loops`` at a time.

        Each open waits for the server's first count (the join took); each close
        waits for the server to drop TCP. The live pool stays between
        ``pool_min`` and ``pool_max``. Returns who is still live, by room.
        """
        self._use_dialect(a["kind"])
        rooms: list[str] = a["rooms"]
        ports: list[int] = a["ports"]
        srcs: list[str] = a["sources"]
        rng = random.Random(a.get("seed", 0) + self.index)
        live: list[Client] = []
        stats = {"opens": 0, "closes": 0, "open_failures": 0, "join_timeouts": 0, "close_timeouts": 0}
        deadline = time.monotonic() + a["duration"]
        generation = self.generation
        budget = [a["max_ops"]]
        counter = [0]

        join_ms: list[float] = []

        async def open_one() -> None:
            client = Client(rng.choice(rooms))
            i = counter[0]
            counter[0] += 1
            self.clients.append(client)
            t_open = time.monotonic()
            try:
                await self._connect(client, False, a["host"], ports[i % len(ports)], srcs[i % len(srcs)], a["timeout"])
            except Exception as e:  # noqa: BLE001
                stats["open_failures"] += 1
                self._note_error(f"churn connect: {type(e).__name__}: {e}"[:160])
                return
            until = time.monotonic() + a["timeout"]
            while not client.joined and time.monotonic() < until:
                await asyncio.sleep(0.005)
            if client.joined:
                join_ms.append(round(1000 * (time.monotonic() - t_open), 2))
            else:
                stats["join_timeouts"] += 1
            stats["opens"] += 1
            live.append(client)

        async def close_one() -> None:
            k = rng.randrange(len(live))
            live[k], live[-1] = live[-1], live[k]
            client = live.pop()
            assert client.conn is not None
            if not await client.conn.close(a["timeout"]):
                stats["close_timeouts"] += 1
            stats["closes"] += 1

        async def loop() -> None:
            while time.monotonic() < deadline and budget[0] > 0 and generation == self.generation:
                budget[0] -= 1
                n = len(live)
                if n < a["pool_min"] or (n < a["pool_max"] and rng.random() < 0.5):
                    await open_one()
                else:
                    await close_one()

        t0 = time.monotonic()
        await asyncio.gather(*(loop() for _ in range(a["loops"])))
        by_room: dict[str, int] = defaultdict(int)
        for c in live:
            if c.conn is not None and not c.conn.closed.done():
                by_room[c.room] += 1
        return {**stats, "elapsed_s": time.monotonic() - t0, "live_by_room": by_room, "join_ms": join_ms}

    def cmd_reset(self, a: dict[str, Any]) -> dict[str, Any]:
        """Drop every socket without ceremony (between cells, after the server is gone)."""
        self.generation += 1
        for c in self.clients:
            if c.conn is not None:
                c.conn.abort()
        self.clients = []
        self.reset_counters()
        self.begin_messages("")
        return {}

    def cmd_reset_counters(self, a: dict[str, Any]) -> dict[str, Any]:
        self.reset_counters()
        return {}

    def cmd_messages_begin(self, a: dict[str, Any]) -> dict[str, Any]:
        self.begin_messages(a["run"])
        return {}


async def run_bounded(jobs: Iterator[Callable[[], Awaitable[None]]], limit: int) -> None:
    """Run ``jobs`` with at most ``limit`` in flight (a fixed pool of runners, not one task per job)."""

    async def runner() -> None:
        for job in jobs:
            await job()

    await asyncio.gather(*(runner() for _ in range(max(1, limit))))


async def serve(index: int) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**26)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    worker = Worker(index)
    out = sys.stdout.buffer
    tasks: set[asyncio.Task[None]] = set()

    def reply(msg: dict[str, Any]) -> None:
        out.write(json.dumps(msg, separators=(",", ":")).encode() + b"\n")
        out.flush()

    async def handle(msg: dict[str, Any]) -> None:
        try:
            method = getattr(worker, "cmd_" + msg["cmd"])
            result = method(msg.get("args", {}))
            if asyncio.iscoroutine(result):
                result = await result
            reply({"id": msg["id"], "ok": True, "result": result})
        except Exception as e:  # noqa: BLE001 - reported to the orchestrator, which fails the cell
            reply({"id": msg["id"], "ok": False, "error": f"{type(e).__name__}: {e}"})

    while line := await reader.readline():
        msg = json.loads(line)
        if msg["cmd"] == "quit":
            worker.cmd_reset({})
            break
        task = asyncio.create_task(handle(msg))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


def main() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    index = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    # As rrr.workers.tune_gc, for the same reason: thousands of long-lived sockets make CPython's
    # full collections dear. A 50,000-socket storm after a density phase (3 servers, 3 drivers):
    # driver CPU 19.3-20.6 -> 14.7-16.1 s, every client showing N 2-3 s sooner, in turns.
    gc.set_threshold(2000, 10, 100)
    if os.environ.get("BENCH_UVLOOP") == "1":  # bench.drivers.DriverPool.start(uvloop=True)
        import uvloop

        uvloop.run(serve(index))
    else:
        asyncio.run(serve(index))


if __name__ == "__main__":
    main()
