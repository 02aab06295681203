"""Server CPU per idle socket per ping interval: what the keepalive costs (issue 25).

    python -m bench.keepalive_cost [--sockets 10000] [--servers 1] [--ping-interval 5] [--intervals 6]
                                   [--runs 3] [--talk 0] [--compare CHECKOUT] [--loop auto]

Starts a real ``redis-server`` and, per run, one ``app.py`` per tree (this checkout, and with
``--compare`` another one, say ``git archive main`` unpacked in /tmp) with ``--ping-interval``,
each with its own driver process holding ``--sockets`` count sockets (``/ws/count/<room>/``,
rooms of 10, each waited on until it shows its room's count); ``--servers N`` starts N
``app.py`` per tree, each with its own driver, for more sockets than one process's 20,000 files
allow, and the figure is then the tree's servers together. Once every socket has been
visited by the keepalive twice, the servers' CPU (utime + stime, ``/proc/<pid>/stat``) is read
over ``--intervals`` ping intervals, the same wall-clock window for every tree, so both see the
same machine; the figure is

    (CPU over the window - the process's own idle CPU rate x the window) / sockets / intervals

where the idle rate is read before any socket opens (its timers: lease, sweep), over
``--idle-seconds`` for every server at once; the figure with that idle CPU left in (what the
process costs in all, per socket) is printed beside it. The order the
trees start in alternates between runs; the medians of ``--runs`` runs are printed with the
load average around them.

The drivers are bare ``asyncio.Protocol`` sockets (uvloop when installed) that answer every
server ping with a masked pong at once, as a browser does. ``--talk S`` has each socket also
send a text frame every S seconds (spread over the sockets; the talk's worker sends ``PING``,
answered with the room's count), as the browser library's own ``{"type":"ping"}`` every 15 s
against the default ``--ping-interval`` of 20 s: then the server need not ping at all, and the
figure is what answering the client costs. Each driver counts the pings its sockets received,
so the report also says how many pings per socket per interval the server sent.

Only loopback; every wait has a deadline; every process started here is stopped by pid.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import random
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.doors import server_frames
from bench.machine import CLOCK_TICKS, ROOT, cpu_seconds, free_port, stop_process, wait_healthy

ROOM_SIZE = 10
CONNECT_CONCURRENCY = 64


# -- the driver (a process of its own: ``--drive``) ---------------------------------------------


class IdleSocket(asyncio.Protocol):
    """One count socket: the upgrade, its room's count, then a masked pong for every ping."""

    def __init__(self, path: str, port: int, want: int, stats: dict[str, int], loop: asyncio.AbstractEventLoop) -> None:
        self.path = path
        self.port = port
        self.want = want
        self.stats = stats
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.upgraded = False
        self.counted: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport subclass
        key = base64.b64encode(os.urandom(16)).decode()
        self.transport.write(
            f"GET {self.path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.upgraded:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.buf.startswith(b"HTTP/1.1 101"):
                self._fail(bytes(self.buf[:60]).decode(errors="replace"))
                return
            del self.buf[: end + 4]
            self.upgraded = True
        for opcode, payload in server_frames(self.buf):
            if opcode == 0x9:
                self.stats["pings"] += 1
                self.send(0xA, payload)
            elif opcode == 0x1:
                self.stats["texts"] += 1
                if b'"connections":%d,' % self.want in payload and not self.counted.done():
                    self.counted.set_result(None)
            elif opcode == 0x8:
                self.stats["closed_by_server"] += 1
                self._fail("closed by the server")

    def send(self, opcode: int, payload: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        mask = os.urandom(4)
        self.transport.write(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask
                             + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def _fail(self, why: str) -> None:
        if not self.counted.done():
            self.counted.set_exception(RuntimeError(f"{self.path}: {why}"))
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.stats["lost"] += 1
        self.transport = None
        if not self.counted.done():
            self.counted.set_exception(RuntimeError(f"{self.path}: connection lost ({exc})"))


async def drive(port: int, n: int, prefix: str, talk: float, timeout: float) -> None:
    """Open ``n`` sockets, print ``ready``, then hold them; SIGUSR1 prints the counters, SIGTERM ends."""
    loop = asyncio.get_running_loop()
    stats = {"pings": 0, "texts": 0, "closed_by_server": 0, "lost": 0, "talked": 0}
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    socks: list[IdleSocket] = []

    async def one(i: int) -> None:
        room, size = i // ROOM_SIZE, min(ROOM_SIZE, n - (i // ROOM_SIZE) * ROOM_SIZE)
        sock = IdleSocket(f"/ws/count/{prefix}{room}/", port, size, stats, loop)
        socks.append(sock)
        async with gate:
            await loop.create_connection(lambda: sock, "127.0.0.1", port)

    await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(n))), timeout)
    await asyncio.wait_for(asyncio.gather(*(s.counted for s in socks)), timeout)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, lambda: print(" ".join(f"{k}={v}" for k, v in stats.items()),
                                                          flush=True))
    print("ready", flush=True)

    async def chatter() -> None:
        """Each socket sends ``PING`` every ``talk`` seconds, the sockets spread over that period."""
        order = list(socks)
        random.shuffle(order)
        step = talk / len(order)
        start = loop.time()
        k = 0
        while True:
            for sock in order:
                k += 1
                delay = start + k * step - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                sock.send(0x1, b"PING")
                stats["talked"] += 1

    task = asyncio.ensure_future(chatter()) if talk > 0 else None
    await stop.wait()
    if task is not None:
        task.cancel()
    for s in socks:
        if s.transport is not None:
            s.transport.abort()


def drive_main(argv: list[str]) -> None:
    port, n, prefix, talk, timeout = int(argv[0]), int(argv[1]), argv[2], float(argv[3]), float(argv[4])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop
    except ImportError:
        asyncio.run(drive(port, n, prefix, talk, timeout))
    else:
        uvloop.run(drive(port, n, prefix, talk, timeout))


# -- the orchestrator ------------------------------------------------------------------------


@dataclass
class Tree:
    label: str
    root: Path
    results: list[dict[str, float]] = field(default_factory=list)


@dataclass
class Running:
    tree: Tree
    app: subprocess.Popen[bytes]
    driver: subprocess.Popen[bytes] | None = None
    idle_rate: float = 0.0
    lines: list[str] = field(default_factory=list)


def start_app(root: Path, redis_url: str, port: int, args: argparse.Namespace, log: Path) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "app.py", "--address=127.0.0.1", f"--port={port}", f"--redis-url={redis_url}",
            f"--ping-interval={args.ping_interval}", "--count-interval=0.1", "--log-level=warning", "--api-rate=0"]
    env = dict(os.environ)
    if args.loop:
        env["RRR_LOOP"] = args.loop
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
    wait_healthy(proc, port, log)
    return proc


def system_seconds(pid: int) -> float:
    """stime of ``pid``: the kernel's share of its CPU (the ping's ``send``, the pong's ``recv``)."""
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[12]) / CLOCK_TICKS


def counters(driver: subprocess.Popen[bytes]) -> dict[str, int]:
    """The driver's counters, asked for with SIGUSR1 and read from its stdout."""
    assert driver.stdout is not None
    driver.send_signal(signal.SIGUSR1)
    line = driver.stdout.readline().decode()
    return {k: int(v) for k, v in (part.split("=") for part in line.split())}


def one_run(trees: list[Tree], redis_url: str, args: argparse.Namespace, run: int, workdir: Path) -> None:
    running: list[Running] = []
    try:
        for tree in trees:
            for k in range(args.servers):
                port = free_port()
                app = start_app(tree.root, redis_url, port, args, workdir / f"{tree.label}-{run}-{k}.log")
                running.append(Running(tree, app))
                running[-1].lines.append(str(port))
        # Every server's idle rate over the same --idle-seconds, after its start has settled: two
        # seconds right after a start caught its last start-up work (5 ms/s against a steady 1).
        time.sleep(2)
        c0s = [cpu_seconds(r.app.pid) for r in running]
        t0 = time.monotonic()
        time.sleep(args.idle_seconds)
        idle_wall = time.monotonic() - t0
        for r, c0 in zip(running, c0s, strict=True):
            r.idle_rate = (cpu_seconds(r.app.pid) - c0) / idle_wall
        for k, r in enumerate(running):
            r.driver = subprocess.Popen(
                [sys.executable, "-m", "bench.keepalive_cost", "--drive", r.lines[0], str(args.sockets),
                 f"{r.tree.label}{run}-{k}-", str(args.talk), str(args.timeout)],
                cwd=ROOT, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
            )
        for r in running:
            assert r.driver is not None and r.driver.stdout is not None
            line = r.driver.stdout.readline().decode().strip()
            if line != "ready":
                raise RuntimeError(f"{r.tree.label}'s driver did not get its sockets open: {line!r}")
        # Two whole rounds of the keepalive (and of --talk) before the window: every socket in its steady state.
        time.sleep(2 * max(args.ping_interval, args.talk) + 1)
        window = args.intervals * args.ping_interval
        before = [(cpu_seconds(r.app.pid), counters(r.driver)) for r in running if r.driver is not None]
        sys0 = [system_seconds(r.app.pid) for r in running]
        t0 = time.monotonic()
        time.sleep(window)
        wall = time.monotonic() - t0
        after = [(cpu_seconds(r.app.pid), counters(r.driver)) for r in running if r.driver is not None]
        sys1 = [system_seconds(r.app.pid) for r in running]
        intervals = wall / args.ping_interval
        for tree in trees:
            # A tree's servers together: their CPU over the window less their idle rates, over all their sockets.
            mine = [(r, b, a) for r, b, a in zip(running, before, after, strict=True) if r.tree is tree]
            system = sum(s1 - s0 for r, s0, s1 in zip(running, sys0, sys1, strict=True) if r.tree is tree)
            sockets = args.sockets * len(mine)
            cpu = sum(a[0] - b[0] - r.idle_rate * wall for r, b, a in mine)
            gross = sum(a[0] - b[0] for _, b, a in mine)
            result = {
                "us": cpu / sockets / intervals * 1e6,
                "gross_us": gross / sockets / intervals * 1e6,
                "sys_us": system / sockets / intervals * 1e6,
                "pings": sum(a[1]["pings"] - b[1]["pings"] for _, b, a in mine) / sockets / intervals,
                "talked": sum(a[1]["talked"] - b[1]["talked"] for _, b, a in mine) / sockets / intervals,
                "dropped": sum(a[1]["closed_by_server"] + a[1]["lost"] for _, _, a in mine),
                "core": sum(a[0] - b[0] for _, b, a in mine) / wall,
                "idle_ms": sum(r.idle_rate for r, _, _ in mine) * 1e3,
            }
            tree.results.append(result)
            print(f"run {run + 1} {tree.label:8s}: {result['us']:6.1f} us CPU per socket per interval "
                  f"({result['gross_us']:.1f} with the process's own idle CPU, {result['sys_us']:.1f} of it in the "
                  f"kernel) "
                  f"({100 * result['core']:.1f} % of a core over {wall:.0f} s for {sockets} sockets in "
                  f"{len(mine)} server(s); idle {result['idle_ms']:.1f} ms/s); "
                  f"{result['pings']:.2f} pings and {result['talked']:.2f} client frames per socket per interval; "
                  f"{result['dropped']:.0f} sockets dropped", flush=True)
    finally:
        for r in running:
            if r.driver is not None:
                stop_process(r.driver)
            stop_process(r.app)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--drive":
        drive_main(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sockets", type=int, default=10000, help="idle sockets per server (one driver each)")
    ap.add_argument("--servers", type=int, default=1,
                    help="app.py processes per tree, each with --sockets sockets and its own driver (the file limit)")
    ap.add_argument("--ping-interval", type=float, default=5.0, help="app.py's --ping-interval (s)")
    ap.add_argument("--intervals", type=int, default=6, help="ping intervals the CPU is read over")
    ap.add_argument("--runs", type=int, default=3, help="fresh servers per run; the median is reported")
    ap.add_argument("--talk", type=float, default=0.0,
                    help="each socket also sends a text frame every this many seconds (0: never)")
    ap.add_argument("--compare", metavar="CHECKOUT", help="another tree's app.py, measured in the same windows")
    ap.add_argument("--loop", default="", help="RRR_LOOP for every app.py (asyncio, uvloop, auto; unset: default)")
    ap.add_argument("--timeout", type=float, default=180.0, help="seconds a driver may take to open its sockets")
    ap.add_argument("--idle-seconds", type=float, default=10.0,
                    help="seconds each server's own idle CPU is read over, before its sockets open")
    args = ap.parse_args()
    if not 0 < args.sockets < 19000:
        raise SystemExit("--sockets: 1 to 18,999 (each process may hold 20,000 files)")
    from rrr.backplane.embedded import EmbeddedRedis

    trees = [Tree("this", ROOT)] + ([Tree("compare", Path(args.compare).resolve())] if args.compare else [])
    workdir = Path(tempfile.mkdtemp(prefix="rrr-keepalive-"))
    server = EmbeddedRedis(port=free_port()).start()
    load0 = os.getloadavg()
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(1))
    try:
        for run in range(args.runs):
            # The tree started (and driven) first alternates, so neither always has the warmer machine.
            one_run(trees if run % 2 == 0 else trees[::-1], server.url, args, run, workdir)
    finally:
        server.close()
    load1 = os.getloadavg()
    print(f"\n{args.sockets} idle count sockets per server, {args.servers} server(s) per tree, "
          f"--ping-interval {args.ping_interval:g}, "
          f"{args.intervals} intervals per window, {args.runs} runs"
          f"{f', each socket talking every {args.talk:g} s' if args.talk else ''}; load average "
          f"{load0[0]:.2f} before, {load1[0]:.2f} after ({os.cpu_count()} CPUs); logs in {workdir}")
    for tree in trees:
        us = [r["us"] for r in tree.results]
        gross = [r["gross_us"] for r in tree.results]
        idle = [r["idle_ms"] for r in tree.results]
        system = [r["sys_us"] for r in tree.results]
        pings = statistics.median(r["pings"] for r in tree.results)
        print(f"  {tree.label} ({tree.root}): median {statistics.median(us):.1f} us CPU per socket per interval "
              f"(runs: {', '.join(f'{x:.1f}' for x in us)}); with the process's own idle CPU "
              f"{statistics.median(gross):.1f} (runs: {', '.join(f'{x:.1f}' for x in gross)}), in the kernel "
              f"{statistics.median(system):.1f} (runs: {', '.join(f'{x:.1f}' for x in system)}); idle before the "
              f"sockets {statistics.median(idle):.2f} ms/s; {pings:.2f} pings per socket per interval; "
              f"{sum(r['dropped'] for r in tree.results):.0f} sockets dropped")


if __name__ == "__main__":
    main()
