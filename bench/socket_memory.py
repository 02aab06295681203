"""Server memory per idle count socket, measured as ``bench.hundred_k``'s density phase, on one process.

    python -m bench.socket_memory                          # 5,000 sockets, 3 fresh app.py in turn
    python -m bench.socket_memory --sockets 8000 --repeats 5
    python -m bench.socket_memory --trace 25 --top 40      # also: where the bytes go (tracemalloc)
    python -m bench.socket_memory --pause 2                # the server CPU-starved as the burst starts

Why this exists next to ``hundred_k``: that run needs the whole machine for ten minutes, while a
change to what a socket keeps needs a figure in seconds, and a second one to see the noise.
The shape is the density phase's: one real ``redis-server`` on a free loopback port, one
``app.py`` started with the harness's own flags (``RrrKind.launch``), every socket on
``/ws/count/r<i>/`` in rooms of ``--room-size``, each waited on until it shows its room's
full count, then RSS per socket = (VmRSS after - VmRSS before) / sockets, read once the counts
are in and again after ``--hold`` seconds idle (the larger one counts, as there).

The client is a bare asyncio protocol doing the RFC 6455 upgrade by hand and answering pings
(masked pongs), so the driver stays light next to the server it measures; it sends the
headers the harness's client sends (no Origin, no extensions).

``--trace N`` runs ``app.py`` under ``tracemalloc`` (N frames) through this module's
``--serve`` mode, which dumps a snapshot on SIGUSR1; the snapshots before and after the sockets
are diffed and printed by file, by line and by traceback, per socket. Tracing slows the server
and costs memory of its own, so its RSS figure is not the plain one: it only attributes.
Only loopback is used; every wait has a deadline; the processes started here are stopped by pid.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import runpy
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

from .doors import server_frames
from .machine import ROOT, free_port, rss_bytes, stop_process, wait_healthy
from .servers import RedisServer, RrrKind, redis_binary

CONNECT_CONCURRENCY = 64  # handshakes in flight at once: below Tornado's listen backlog of 128


class CountClient(asyncio.Protocol):
    """One ``/ws/count/<room>/`` socket: the upgrade, then the newest ``connections`` it was sent."""

    def __init__(self, path: str, port: int, want: int, loop: asyncio.AbstractEventLoop) -> None:
        self.path = path
        self.port = port
        self.want = want
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.upgraded = False
        self.count: int | None = None
        self.opened: asyncio.Future[None] = loop.create_future()
        self.counted: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            f"GET {self.path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"User-Agent: Python/3.11 websockets/12.0\r\n\r\n".encode()
        )

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.upgraded:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end])
            del self.buf[: end + 4]
            if not head.startswith(b"HTTP/1.1 101"):
                status = head.split(b"\r\n", 1)[0].decode(errors="replace")
                self._fail(f"{self.path}: {status}")
                return
            self.upgraded = True
            if not self.opened.done():
                self.opened.set_result(None)
        for opcode, payload in server_frames(self.buf):
            if opcode == 0x1:
                count = json.loads(payload).get("connections")
                if isinstance(count, int):
                    self.count = count
                    if count == self.want and not self.counted.done():
                        self.counted.set_result(None)
            elif opcode == 0x9 and self.transport is not None:
                mask = os.urandom(4)
                self.transport.write(bytes([0x8A, 0x80 | len(payload)]) + mask
                                     + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
            elif opcode == 0x8 and self.transport is not None:
                self.transport.close()

    def _fail(self, why: str) -> None:
        for fut in (self.opened, self.counted):
            if not fut.done():
                fut.set_exception(RuntimeError(why))
                fut.exception()  # raised to whoever awaits it; no "never retrieved" noise otherwise
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(f"{self.path}: connection lost ({exc})")


async def open_sockets(port: int, n: int, room_size: int, timeout: float, prefix: str = "r") -> list[CountClient]:
    """``n`` count sockets in rooms ``<prefix><i>`` of ``room_size``; returns once every one shows its
    room's count."""
    loop = asyncio.get_running_loop()
    sizes = [min(room_size, n - start) for start in range(0, n, room_size)]
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    clients: list[CountClient] = []

    async def one(i: int) -> None:
        room = i // room_size
        client = CountClient(f"/ws/count/{prefix}{room}/", port, sizes[room], loop)
        clients.append(client)
        async with gate:
            await loop.create_connection(lambda: client, "127.0.0.1", port)
            await client.opened

    await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(n))), timeout)
    await asyncio.wait_for(asyncio.gather(*(c.counted for c in clients)), timeout)
    return clients


async def close_sockets(clients: list[CountClient]) -> None:
    for c in clients:
        if c.transport is not None:
            c.transport.close()
    await asyncio.sleep(0.5)


class App:
    """One ``app.py`` with the harness's flags; under tracemalloc with ``trace`` frames."""

    def __init__(self, redis_url: str, trace: int, logdir: Path) -> None:
        self.port = free_port()
        spec = RrrKind(sys.executable).launch(self.port, redis_url)
        argv = spec.argv
        self.snapdir = Path(tempfile.mkdtemp(prefix="rrr-snap-", dir=logdir))
        env = dict(os.environ, **spec.env)
        if trace:
            argv = [argv[0], "-m", "bench.socket_memory", "--serve", str(trace), *argv[1:]]
            env["RRR_SNAPSHOT_DIR"] = str(self.snapdir)
            env["PYTHONPATH"] = str(ROOT)
        self.log = logdir / f"app-{self.port}.log"
        self.proc = subprocess.Popen(argv, cwd=spec.cwd, env=env, stdout=self.log.open("ab"),
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.snapshots = 0

    async def ready(self) -> None:
        await asyncio.to_thread(wait_healthy, self.proc, self.port, self.log)

    def rss(self) -> int:
        return rss_bytes(self.proc.pid)

    async def snapshot(self) -> tracemalloc.Snapshot:
        """Have the traced process dump a snapshot (SIGUSR1) and load it."""
        path = self.snapdir / f"snap-{self.snapshots}.pickle"
        self.snapshots += 1
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 120
        while not path.exists():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"no snapshot from app.py; see {self.log}")
            await asyncio.sleep(0.2)
        return tracemalloc.Snapshot.load(str(path))

    def stop(self) -> None:
        stop_process(self.proc)


def short(filename: str) -> str:
    for marker in ("site-packages/", "/lib/python3."):
        if marker in filename:
            return filename.split(marker, 1)[1].split("/", 1)[-1] if marker.startswith("/lib") else \
                filename.split(marker, 1)[1]
    return os.path.relpath(filename, ROOT) if filename.startswith(str(ROOT)) else filename


def report_trace(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, n: int, top: int) -> None:
    """The growth between two snapshots, per socket: by file, by line, by traceback."""
    total = sum(s.size_diff for s in after.compare_to(before, "filename"))
    print(f"\ntracemalloc: +{total / n:,.0f} B per socket traced in all ({n} sockets)")
    print("\nby file (B/socket, blocks/socket):")
    for s in after.compare_to(before, "filename")[:top]:
        if abs(s.size_diff) / n >= 8:
            print(f"  {s.size_diff / n:8.0f} {s.count_diff / n:6.2f}  {short(s.traceback[0].filename)}")
    print("\nby line:")
    for s in after.compare_to(before, "lineno")[:top]:
        if abs(s.size_diff) / n >= 8:
            f = s.traceback[0]
            print(f"  {s.size_diff / n:8.0f} {s.count_diff / n:6.2f}  {short(f.filename)}:{f.lineno}")
    print("\nby traceback (innermost last, our code and Tornado's):")
    for s in after.compare_to(before, "traceback")[:top]:
        if abs(s.size_diff) / n < 16:
            continue
        frames = [f"{short(f.filename)}:{f.lineno}" for f in s.traceback]
        print(f"  {s.size_diff / n:8.0f} {s.count_diff / n:6.2f}  " + " <- ".join(reversed(frames[-1:]))
              + "\n            " + " > ".join(frames[-8:]))


async def measure(args: argparse.Namespace, redis: RedisServer, logdir: Path) -> dict[str, float]:
    await redis.flush()
    app = App(redis.url, args.trace, logdir)
    try:
        await app.ready()
        await asyncio.sleep(args.settle)
        before = await app.snapshot() if args.trace else None
        base = app.rss()
        t0 = time.monotonic()
        if args.pause:
            # As a process starved of CPU when the burst starts: it then finds a backlog of
            # handshakes at once, which changes what CPython shares between its handlers.
            app.proc.send_signal(signal.SIGSTOP)
            asyncio.get_running_loop().call_later(args.pause, app.proc.send_signal, signal.SIGCONT)
        clients = await open_sockets(app.port, args.sockets, args.room_size, args.timeout)
        opened_s = time.monotonic() - t0
        await asyncio.sleep(args.settle)
        rss_open = app.rss()
        await asyncio.sleep(args.hold)
        rss_held = app.rss()
        lost = sum(1 for c in clients if c.transport is None or c.transport.is_closing())
        if lost:
            raise RuntimeError(f"{lost} sockets closed during the hold")
        if args.trace:
            assert before is not None
            report_trace(before, await app.snapshot(), args.sockets, args.top)
        await close_sockets(clients)
        n = args.sockets
        return {
            "base_mib": base / 2**20, "open_s": opened_s,
            "open_kib": (rss_open - base) / n / 1024, "held_kib": (rss_held - base) / n / 1024,
            "kib": (max(rss_open, rss_held) - base) / n / 1024,
        }
    finally:
        app.stop()


def serve(frames: int, argv: list[str]) -> None:
    """``--serve N app.py ...``: run app.py under tracemalloc; SIGUSR1 dumps a snapshot."""
    tracemalloc.start(frames)
    outdir = Path(os.environ["RRR_SNAPSHOT_DIR"])
    taken = 0

    def dump(_signum: int, _frame: Any) -> None:
        nonlocal taken
        path = outdir / f"snap-{taken}.pickle"
        taken += 1
        tracemalloc.take_snapshot().dump(str(path) + ".tmp")
        os.replace(str(path) + ".tmp", path)

    signal.signal(signal.SIGUSR1, dump)
    sys.argv = argv
    runpy.run_path(argv[0], run_name="__main__")


async def amain(args: argparse.Namespace) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, args.sockets + 1024)), hard))
    logdir = Path(tempfile.mkdtemp(prefix="rrr-socket-memory-"))
    redis = RedisServer(redis_binary(), logdir)
    await redis.start()
    results = []
    try:
        for i in range(args.repeats):
            r = await measure(args, redis, logdir)
            results.append(r)
            print(f"run {i + 1}: {r['kib']:.2f} KiB/socket (at open {r['open_kib']:.2f}, after {args.hold:g} s "
                  f"{r['held_kib']:.2f}; base {r['base_mib']:.1f} MiB; opened in {r['open_s']:.1f} s)", flush=True)
    finally:
        redis.stop()
    kib = [r["kib"] for r in results]
    spread = f" (min {min(kib):.2f}, max {max(kib):.2f})" if len(kib) > 1 else ""
    print(f"{args.sockets} sockets, rooms of {args.room_size}, {len(kib)} run(s): "
          f"median {statistics.median(kib):.2f} KiB/socket{spread}")


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--serve":
        serve(int(sys.argv[2]), sys.argv[3:])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sockets", type=int, default=5000)
    ap.add_argument("--room-size", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3, help="fresh app.py processes measured in turn")
    ap.add_argument("--hold", type=float, default=10.0, help="seconds idle before the second reading")
    ap.add_argument("--settle", type=float, default=1.0, help="seconds before each reading")
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--pause", type=float, default=0.0,
                    help="seconds app.py is stopped (SIGSTOP) as the sockets start connecting")
    ap.add_argument("--trace", type=int, default=0, help="tracemalloc frames in app.py (0: off)")
    ap.add_argument("--top", type=int, default=30)
    asyncio.run(amain(ap.parse_args()))


if __name__ == "__main__":
    main()
