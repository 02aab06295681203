"""Server CPU per join: TCP + WebSocket upgrade + subscribe, until the first count frame.

    python -m bench.handshake_cost [--sockets 10000] [--runs 5] [--kinds count,relay]
                                   [--room-size 10] [--concurrency 100] [--profile]
                                   [--gc-stats] [--app CHECKOUT] [--compare CHECKOUT]

Starts a real ``redis-server`` and one real ``app.py`` (as the harness runs it) on loopback,
then, per run and per kind, opens ``--sockets`` sockets at ``--concurrency`` handshakes in
flight, each waiting for its first ``connection_message``:

* ``count``: ``/ws/count/<room>/`` (the talk's socket: joined by the upgrade itself);
* ``relay``: ``/ws/`` and a ``subscribe`` frame right after the 101.

The figure is the server's utime + stime (``/proc/<pid>/stat``) over the storm, divided by the
sockets: what one join costs the server, whatever else shares the machine (CPU time, not wall
time). The server's RSS is read before and with all of them open (a run reuses the memory the
one before it freed, so only the first run's growth is per socket). The sockets then go (RST)
and the server settles before the next run; their leave cost is reported apart.

Socket ``i`` joins room ``i // --room-size`` (10, as the harness's idle scenario): each room
fills up in a moment and then stays still, so the figure is the handshake and the join, with
the few count frames a room of 10 is sent. ``--room-size 0`` puts every socket in one room,
the harness's join storm: every count broadcast then goes to all the sockets joined so far,
every ``--count-interval`` for as long as the storm lasts, so that figure grows with the
storm's wall time (a busy machine makes it worse) and is mostly broadcast, not handshake. The
medians of ``--runs`` runs are printed, with the load average around them.

``--profile`` runs ``app.py`` under cProfile (``python -m cProfile -o <file> app.py ...``, which
app.py leaves cleanly on SIGTERM) and prints the internal time split into Tornado, ours
(app.py, handlers/, rrr/), the standard library (C built-ins included) and other packages, with
the top functions by cumulative and by internal time. The profiler slows every call, so the CPU
figures of a profiled run are not the benchmark's, and the garbage collector's time is spread
over whatever function allocated when it ran: ``--gc-stats`` times it apart (``gc.callbacks``
in a wrapper around ``app.py``, which prints the collector's CPU seconds at exit).

``--compare <checkout>`` starts a second ``app.py`` from another tree (say, a ``git worktree``
of the commit before a change) on the same Redis and alternates the runs between the two, so
both see the same machine load: the way to tell a 5 % change from a busy neighbour.
``--app-args`` and ``--compare-args`` add options to each (``--compare .`` with two sets of
options compares two settings of one tree). ``--floor`` adds a third server to the turns: a bare
Tornado ``WebSocketHandler`` with an empty ``open()`` (``bench/tornado_floor.py``), the floor of the
stack rrr is built on, whose joins end at the 101; each tree's median is also given as a multiple
of the floor's.

The client is a bare ``asyncio.Protocol`` that writes a fixed upgrade request (and, for
``relay``, one masked ``subscribe`` frame after the 101) and looks for the count in what comes
back: it costs the shared CPUs far less than the server it measures, and needs nothing beyond
the project's own requirements. Only loopback; the client sockets come from 127.0.0.x source
addresses (8 per run, rotated); every wait is bounded by ``--timeout``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import pstats
import shlex
import signal
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.machine import ROOT, cpu_seconds, free_port, rss_bytes, wait_healthy
from rrr.backplane.embedded import EmbeddedRedis

KINDS = ("count", "relay")
SOURCES_PER_RUN = 8


@dataclass
class Storm:
    """One run of one kind: CPU seconds of the server over the joins and over the leaves."""

    kind: str
    sockets: int
    join_cpu: float
    join_wall: float
    leave_cpu: float
    rss_before: int
    rss_held: int
    failures: int = 0
    samples: list[str] = field(default_factory=list)

    @property
    def us_per_join(self) -> float:
        return self.join_cpu / self.sockets * 1e6


def text_frame(text: str, mask: bytes = b"\x5a\xa5\x3c\xc3") -> bytes:
    """One masked client text frame (RFC 6455 5.2) of under 126 bytes."""
    data = text.encode()
    assert len(data) < 126
    return bytes([0x81, 0x80 | len(data)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data))


def upgrade_request(port: int, path: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


class Joiner(asyncio.Protocol):
    """One client socket: upgrade, optionally subscribe, resolve ``counted`` on the first count (or,
    ``at_upgrade``, on the 101: the floor server sends nothing)."""

    def __init__(
        self, request: bytes, subscribe: bytes, counted: asyncio.Future[None], at_upgrade: bool = False,
    ) -> None:
        self.request = request
        self.subscribe = subscribe
        self.counted = counted
        self.at_upgrade = at_upgrade
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.upgraded = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if self.counted.done():
            return
        self.buf += data
        if not self.upgraded:
            head, sep, rest = self.buf.partition(b"\r\n\r\n")
            if not sep:
                return
            if not head.startswith(b"HTTP/1.1 101"):
                self.counted.set_exception(RuntimeError(head.split(b"\r\n", 1)[0].decode(errors="replace")))
                return
            self.upgraded = True
            self.buf = rest
            if self.at_upgrade:
                self.counted.set_result(None)
                return
            if self.subscribe and self.transport is not None:
                self.transport.write(self.subscribe)
        if b'"connection_message"' in self.buf:
            self.counted.set_result(None)
            self.buf = b""
        elif b'"type":"error"' in self.buf:
            self.counted.set_exception(RuntimeError(self.buf[:120].decode(errors="replace")))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.counted.done():
            self.counted.set_exception(exc or ConnectionError("closed before the first count"))
        self.transport = None

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


#: Runs ``app.py`` (argv[1:]) with the collector's CPU time per generation written to $RRR_GC_STATS at exit.
GC_WRAPPER = """
import atexit, gc, json, os, runpy, sys, time
spent, runs, began = [0.0, 0.0, 0.0], [0, 0, 0], [0.0]
def clock(phase, info):
    if phase == "start":
        began[0] = time.process_time()
    else:
        spent[info["generation"]] += time.process_time() - began[0]
        runs[info["generation"]] += 1
gc.callbacks.append(clock)
def report():
    with open(os.environ["RRR_GC_STATS"], "w") as f:
        json.dump({"seconds": spent, "collections": runs, "process": time.process_time()}, f)
atexit.register(report)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def start_app(
    redis_url: str, port: int, log: Path, profile: Path | None, root: Path = ROOT, gc_stats: Path | None = None,
    extra: list[str] | None = None,
) -> subprocess.Popen[bytes]:
    """``root``'s ``app.py`` with the harness's options (bench/servers.py, ``RrrKind``) and ``extra``, healthy."""
    prefix = [sys.executable] + (["-m", "cProfile", "-o", str(profile)] if profile else [])
    env = dict(os.environ)
    if gc_stats is not None:
        prefix, env["RRR_GC_STATS"] = [sys.executable, "-c", GC_WRAPPER], str(gc_stats)
    argv = prefix + [
        "app.py", "--address=127.0.0.1", f"--port={port}", f"--redis-url={redis_url}",
        "--count-interval=0.1", "--log-level=warning", "--api-rate=0", *(extra or []),
    ]
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
    wait_healthy(proc, port, log)
    return proc


def start_floor(port: int, log: Path, loop: str) -> subprocess.Popen[bytes]:
    """``bench.tornado_floor``: a bare Tornado WebSocketHandler, the floor a join of rrr's is measured against."""
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "bench.tornado_floor", f"--port={port}", f"--loop={loop}"],
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    wait_healthy(proc, port, log)
    return proc


def sources(run: int) -> list[str]:
    """Fresh 127.0.0.x source addresses for each run: no run waits on another's ports."""
    return [f"127.0.0.{20 + (SOURCES_PER_RUN * run + k) % 200}" for k in range(SOURCES_PER_RUN)]


async def settle(pid: int, timeout: float, quiet: float = 0.005, every: float = 0.5) -> None:
    """Wait until the server spends under ``quiet`` CPU seconds per ``every`` (its timers only)."""
    deadline = time.monotonic() + timeout
    before = cpu_seconds(pid)
    while time.monotonic() < deadline:
        await asyncio.sleep(every)
        now = cpu_seconds(pid)
        if now - before < quiet:
            return
        before = now


async def storm(
    pid: int, port: int, kind: str, n: int, room_size: int, run: int, concurrency: int, timeout: float,
    at_upgrade: bool = False,
) -> Storm:
    """Open ``n`` sockets of ``kind``, each until its first count; then drop them all."""
    loop = asyncio.get_running_loop()
    addrs = sources(run)
    gate = asyncio.Semaphore(concurrency)
    conns: list[Joiner] = []
    errors: list[str] = []
    deadline = time.monotonic() + timeout

    async def one(i: int) -> None:
        room = f"hs{run}-{i // room_size if room_size else 0}"
        path = f"/ws/count/{room}/" if kind == "count" else "/ws/"
        sub = text_frame(json.dumps({"type": "subscribe", "room": room, "sub": "t"})) if kind == "relay" else b""
        counted: asyncio.Future[None] = loop.create_future()
        joiner = Joiner(upgrade_request(port, path), sub, counted, at_upgrade)
        async with gate:
            try:
                await asyncio.wait_for(
                    loop.create_connection(lambda: joiner, "127.0.0.1", port, local_addr=(addrs[i % len(addrs)], 0)),
                    max(1.0, deadline - time.monotonic()),
                )
                conns.append(joiner)
                await asyncio.wait_for(counted, max(1.0, deadline - time.monotonic()))
            except (OSError, RuntimeError, TimeoutError) as e:
                errors.append(f"{type(e).__name__}: {e}")

    rss0 = rss_bytes(pid)
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    await asyncio.gather(*(one(i) for i in range(n)))
    cpu1, t1 = cpu_seconds(pid), time.monotonic()
    rss1 = rss_bytes(pid)
    for conn in conns:
        conn.abort()
    await settle(pid, timeout)
    cpu2 = cpu_seconds(pid)
    return Storm(kind, n, cpu1 - cpu0, t1 - t0, cpu2 - cpu1, rss0, rss1, len(errors), errors[:3])


def split(prof: Path, top: int, root: Path = ROOT) -> str:
    """The profile's internal time by owner (``root``'s code is ours), and its top functions."""
    stats = pstats.Stats(str(prof))
    ours = (str(root / "app.py"), str(root / "handlers") + os.sep, str(root / "rrr") + os.sep)
    stdlib = sysconfig.get_paths()["stdlib"]

    def owner(filename: str) -> str:
        if filename.startswith(ours):
            return "ours"
        if f"{os.sep}tornado{os.sep}" in filename:
            return "tornado"
        if "site-packages" in filename:
            return "other packages"
        if filename == "~" or filename.startswith(stdlib) or filename.startswith("<"):
            return "stdlib"
        return "other packages"

    rows = stats.stats  # type: ignore[attr-defined]
    by_owner: dict[str, float] = {}
    table = []
    total = waiting = 0.0
    for (filename, line, func), (_cc, calls, tt, ct, _callers) in rows.items():
        if func == "<method 'poll' of 'select.epoll' objects>":
            waiting += tt  # the event loop idle in epoll_wait: no one's work
            continue
        who = owner(filename)
        by_owner[who] = by_owner.get(who, 0.0) + tt
        total += tt
        where = func if filename == "~" else f"{Path(filename).name}:{line} {func}"
        table.append((who, where, calls, tt, ct))
    out = [f"profile {prof}: {total:.2f} s of internal time, besides {waiting:.2f} s waiting in epoll "
           "(cProfile's clock is wall time: on a busy machine, time preempted lands in whatever ran)"]
    for who, tt in sorted(by_owner.items(), key=lambda kv: -kv[1]):
        out.append(f"  {who:15s} {tt:7.2f} s  {100 * tt / total:5.1f} %")
    for title, key in (("internal", 3), ("cumulative", 4)):
        out.append(f"top {top} by {title} time:")
        out.append(f"  {'owner':9s} {'calls':>9s} {'tottime':>8s} {'cumtime':>8s}  function")
        for who, where, calls, tt, ct in sorted(table, key=lambda r: -r[key])[:top]:  # type: ignore[operator]
            out.append(f"  {who[:9]:9s} {calls:9d} {tt:8.3f} {ct:8.3f}  {where}")
    for who in ("ours", "tornado"):
        out.append(f"top {top} of {who} by cumulative time:")
        mine = sorted((r for r in table if r[0] == who), key=lambda r: -r[4])[:top]
        for _, where, calls, tt, ct in mine:
            out.append(f"  {calls:9d} {tt:8.3f} {ct:8.3f}  {where}")
    return "\n".join(out)


@dataclass
class App:
    label: str
    proc: subprocess.Popen[bytes]
    port: int
    idle: float = 0.0  # CPU seconds per second with no sockets


async def bench(args: argparse.Namespace) -> None:
    kinds = [k for k in args.kinds.split(",") if k]
    if unknown := set(kinds) - set(KINDS):
        raise SystemExit(f"unknown kinds {sorted(unknown)}: pick from {', '.join(KINDS)}")
    roots = [("this", Path(args.app).resolve())] + ([("compare", Path(args.compare).resolve())] if args.compare else [])
    server = EmbeddedRedis(port=free_port()).start()
    workdir = Path(tempfile.mkdtemp(prefix="rrr-handshake-"))
    prof = workdir / "app.prof" if args.profile else None
    apps: list[App] = []
    results: list[tuple[str, Storm]] = []
    load0 = os.getloadavg()
    try:
        for label, root in roots:
            port = free_port()
            profile = prof if label == "this" else None  # only this tree is profiled
            gc_stats = workdir / f"{label}.gc.json" if args.gc_stats else None
            extra = shlex.split(args.app_args if label == "this" else args.compare_args)
            apps.append(App(label, start_app(server.url, port, workdir / f"{label}.log", profile, root, gc_stats,
                                             extra), port))
        if args.floor:
            port = free_port()
            apps.append(App("floor", start_floor(port, workdir / "floor.log", args.floor), port))
        for app in apps:
            idle0 = cpu_seconds(app.proc.pid)
            await asyncio.sleep(2)
            app.idle = (cpu_seconds(app.proc.pid) - idle0) / 2
            # Warm up: first imports, code paths and Redis connections are not a join's cost.
            await storm(app.proc.pid, app.port, kinds[0], min(500, args.sockets), args.room_size, 199,
                        args.concurrency, args.timeout, app.label == "floor")
        run = 0
        for r in range(args.runs):
            for kind in kinds:
                # With --compare the two servers take turns: both see the same machine, on average.
                for app in apps if r % 2 == 0 else apps[::-1]:
                    s = await storm(app.proc.pid, app.port, kind, args.sockets, args.room_size, run,
                                    args.concurrency, args.timeout, app.label == "floor")
                    run += 1
                    results.append((app.label, s))
                    note = f"  {s.failures} failed: {'; '.join(s.samples)}" if s.failures else ""
                    print(f"run {r + 1} {kind:5s} {app.label if len(apps) > 1 else ''}: {s.us_per_join:6.0f} us "
                          f"CPU per join ({s.join_cpu:.2f} s CPU, {s.join_wall:.2f} s wall, "
                          f"{s.sockets / s.join_wall:.0f} joins/s); leave {s.leave_cpu / s.sockets * 1e6:.0f} us; "
                          f"RSS {s.rss_before / 2**20:.0f} -> {s.rss_held / 2**20:.0f} MiB{note}", flush=True)
    finally:
        for app in apps:
            app.proc.send_signal(signal.SIGTERM)
        for app in apps:
            try:
                app.proc.wait(60)
            except subprocess.TimeoutExpired:
                app.proc.kill()
                app.proc.wait()
        server.close()
    load1 = os.getloadavg()
    shape = f"rooms of {args.room_size}" if args.room_size else "one room"
    idle = ", ".join(f"{a.label} {a.idle * 1e3:.1f}" for a in apps)
    print(f"\n{args.sockets} sockets per run, {shape}, {args.concurrency} handshakes in flight; "
          f"server idle ({idle}) ms CPU/s; load average {load0[0]:.2f} before, {load1[0]:.2f} after "
          f"({os.cpu_count()} CPUs){'; UNDER cProfile' if prof else ''}")
    floor = {kind: statistics.median(s.us_per_join for who, s in results if who == "floor" and s.kind == kind)
             for kind in kinds} if args.floor else {}
    for label, root in roots + ([("floor", ROOT / "bench" / "tornado_floor.py")] if args.floor else []):
        first = next(s for who, s in results if who == label)
        head = f"{label}: {root}\n  " if len(apps) > 1 else ""
        print(f"{head}RSS with the sockets held: "
              f"{max(s.rss_held for who, s in results if who == label) / 2**20:.0f} MiB at most; its first run "
              f"grew it by {(first.rss_held - first.rss_before) / first.sockets / 1024:.1f} KiB per socket")
        for kind in kinds:
            mine = [s for who, s in results if s.kind == kind and who == label]
            per = [s.us_per_join for s in mine]
            leave = [s.leave_cpu / s.sockets * 1e6 for s in mine]
            rate = [s.sockets / s.join_wall for s in mine]
            against = f"; {statistics.median(per) / floor[kind]:.2f}x the floor" if floor and label != "floor" else ""
            print(f"  {kind:5s}: median {statistics.median(per):.0f} us CPU per join "
                  f"(runs: {', '.join(f'{x:.0f}' for x in per)}); median {statistics.median(rate):.0f} joins/s "
                  f"(runs: {', '.join(f'{x:.0f}' for x in rate)}); median leave {statistics.median(leave):.0f} us; "
                  f"{sum(s.failures for s in mine)} failed joins{against}")
    if args.gc_stats:
        for label, _ in roots:
            st = json.loads((workdir / f"{label}.gc.json").read_text())
            total = sum(st["seconds"])
            print(f"{label}: garbage collector {total:.2f} s of the process's {st['process']:.2f} s CPU "
                  f"({100 * total / st['process']:.0f} %, start-up and every run included); by generation "
                  f"{', '.join(f'{x:.2f} s' for x in st['seconds'])}, collections {st['collections']}")
    if prof is not None:
        print()
        print(split(prof, args.top, roots[0][1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sockets", type=int, default=10000, help="joins per run (each a socket; under 20,000)")
    ap.add_argument("--runs", type=int, default=5, help="runs per kind; the median is reported")
    ap.add_argument("--kinds", default="count,relay", help="count (/ws/count/<room>/), relay (/ws/ + subscribe)")
    ap.add_argument("--room-size", type=int, default=10, help="sockets per room, in order (0: all in one room)")
    ap.add_argument("--concurrency", type=int, default=100, help="handshakes in flight (the harness: 100)")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds a run may take")
    ap.add_argument("--profile", action="store_true", help="run app.py under cProfile and print the split")
    ap.add_argument("--gc-stats", action="store_true", help="time the garbage collector in each app.py")
    ap.add_argument("--app", metavar="CHECKOUT", default=str(ROOT), help="the tree whose app.py is measured")
    ap.add_argument("--compare", metavar="CHECKOUT", help="another tree's app.py, measured in turns with this one")
    ap.add_argument("--top", type=int, default=25, help="functions listed per profile table")
    ap.add_argument("--app-args", default="", help="more app.py options for this tree, e.g. '--write-interval=0'")
    ap.add_argument("--compare-args", default="", help="more app.py options for the --compare tree")
    ap.add_argument("--floor", nargs="?", const="auto", default="", metavar="LOOP",
                    help="also measure a bare Tornado WebSocketHandler (bench/tornado_floor.py) in the same runs, "
                    "on LOOP (auto, uvloop, asyncio; default auto); its joins end at the 101")
    args = ap.parse_args()
    if not 0 < args.sockets < 19000:
        raise SystemExit("--sockets: 1 to 18,999 (each process may hold 20,000 files)")
    # A SIGTERM (or Ctrl-C) still stops app.py and redis-server: the finally blocks run.
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(1))
    asyncio.run(bench(args))


if __name__ == "__main__":
    main()
