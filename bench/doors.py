"""What the door tools share, and the doors side by side at scale (issue 25).

    python -m bench.doors --sockets 20000 --runs 3          # 20,000 idle of each door, 2 app.py per door
    python -m bench.doors --sockets 2000 --servers 1 --window 20 --runs 1   # a small check

The shared part, used by ``transport_cost.py`` (SSE and long-polling, #22) and ``pusher_cost.py``
(the Pusher door, #23): a client's masked frame, the server frames parsed off a buffer, a bounded
wait, and the ``--drive`` child process each tool's clients live in, spoken to in JSON lines.

The idle run: ``--sockets`` idle native WebSockets (``/ws/``, one ``subscribe``), as many SSE
sessions (``/sse/``, the subscribe POSTed) and as many Pusher sockets (``/app/<key>``, one
``pusher:subscribe``), each in a room of 10, all held at once: ``--servers`` ``app.py`` per door
(one process may hold 20,000 files, so 20,000 sockets need two), one driver process per server
(the clients of ``transport_cost`` and ``pusher_cost``, which answer pings). Once every client
shows its room (a native and an SSE client its room's count, a Pusher client its
``subscription_succeeded``, and every server's ``rrr_subscriptions`` its share), one
``--ping-interval`` to settle, then every server's CPU over the same ``--window``: per door, RSS
per socket (the larger of after opening and after the window, less before) and CPU per socket,
less each process's own rate read before any socket opened. After the window every server must
still hold exactly its share (``rrr_open_sockets``) and no client may have lost its connection.
Every run starts fresh processes; ``--runs`` of them, the median of each figure and every run kept.
``--write`` saves ``bench/results/doors.md`` (and ``.json``), which ``report.py`` keeps on the page.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .machine import ROOT, cpu_seconds, free_port, raise_nofile, rss_bytes, stop_process
from .servers import RedisServer, redis_binary, start_app

RESULTS = ROOT / "bench" / "results" / "doors.md"
SECTION = "## The doors at scale"
PUSHER_KEY = "bench-key"
#: As the harness runs rrr (counts read by nobody else, no per-address limits on loopback), with a Pusher app.
APP_OPTIONS: dict[str, Any] = {
    "api_rate": 0, "count_interval": 0.1, "max_connections": 60000, "message_rate": 0, "publish_rate_per_ip": 0,
    "pusher_app_id": "1", "pusher_key": PUSHER_KEY, "pusher_secret": "bench-secret",
}
#: door -> (the tool whose ``--drive`` clients speak it, the kind that driver calls it)
DOORS = {"native": ("bench.transport_cost", "websocket"), "sse": ("bench.transport_cost", "sse"),
         "pusher": ("bench.pusher_cost", "pusher")}
LABELS = {"native": "native WebSocket (`/ws/`)", "sse": "SSE (`/sse/`)", "pusher": "Pusher (`/app/<key>`)"}


# -- shared by the door tools ---------------------------------------------------------------------------------


def masked(opcode: int, payload: bytes) -> bytes:
    """One client frame (RFC 6455: a client masks everything it sends)."""
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def server_frames(buf: bytearray) -> Iterator[tuple[int, bytes]]:
    """The whole (unmasked, unfragmented) server frames at the front of ``buf``, taken off it as they are read."""
    while len(buf) >= 2:
        n = buf[1] & 0x7F
        at = 2
        if n == 126:
            if len(buf) < 4:
                return
            n, at = int.from_bytes(buf[2:4], "big"), 4
        elif n == 127:
            if len(buf) < 10:
                return
            n, at = int.from_bytes(buf[2:10], "big"), 10
        if len(buf) < at + n:
            return
        opcode, payload = buf[0] & 0x0F, bytes(buf[at: at + n])
        del buf[: at + n]
        yield opcode, payload


async def until(done: Callable[[], bool], within: float) -> bool:
    deadline = time.monotonic() + within
    while not done():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def answer(obj: dict[str, Any]) -> None:
    """A driver's reply: one JSON line on stdout."""
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def status(members: list[Any]) -> dict[str, Any]:
    """A driver's ``status``: how many clients it holds and how many lost their connection (``failed``)."""
    failed = [m.failed for m in members if m.failed]
    return {"members": len(members), "failed": len(failed), "samples": sorted(set(failed))[:5]}


class Driver:
    """A ``python -m <module> --drive`` child process and the commands it answers."""

    def __init__(self, module: str, log: Path) -> None:
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, "--drive"], cwd=ROOT, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=open(log, "ab"), text=True,
        )

    def send(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def answer(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"driver exited {self.proc.poll()}: {self.log.read_text()[-2000:]}")
        return dict(json.loads(line))

    def close(self) -> None:
        try:
            self.send(cmd="quit")
            self.proc.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        m = re.search(rf"^{name} (\S+)$", r.read().decode(), re.M)
    if m is None:
        raise RuntimeError(f"no {name} in /metrics of :{port}")
    return float(m.group(1))


def fan_out(group: list[Driver], kind: str, pid: int, port: int, redis_url: str, members: int, messages: int,
            joined: Callable[[], bool] = lambda: True) -> dict[str, Any]:
    """Server CPU per delivered frame: ``members`` in one room over ``group``, ``messages`` published.

    Shared by ``transport_cost`` and ``pusher_cost`` so the doors are measured the same way; ``joined`` is an
    extra check that every member is in the room (the Pusher drivers cannot see their own count).
    """
    from rrr.client import apublish

    for i, (driver, n) in enumerate(zip(group, split(members, len(group)))):
        driver.send(cmd="open", kind=kind, port=port, rooms=[["fan", members]] * n, sub=f"d{i}-",
                    within=300, concurrency=32)
    ready = [d.answer() for d in group]
    if not all(r["ready"] for r in ready) or not joined():
        raise RuntimeError(f"{kind}: not every member joined: {ready}")
    time.sleep(2)  # the join's last counts and writes settle

    async def publish_all() -> None:
        for n in range(messages):
            await apublish("fan", {"n": n, "pad": "x" * 64}, redis_url=redis_url)
            await asyncio.sleep(0.02)

    cpu0 = cpu_seconds(pid)
    started = time.monotonic()
    asyncio.run(publish_all())
    for d in group:
        d.send(cmd="wait", messages=messages, within=300)
    done = [d.answer() for d in group]
    took = time.monotonic() - started
    cpu = cpu_seconds(pid) - cpu0
    frames = sum(d["frames"] for d in done)
    exact = sum(d["exact"] for d in done)
    return {"cpu_s": cpu, "frames": frames, "us_per_frame": 1e6 * cpu / frames if frames else float("nan"),
            "exact": exact, "members": members, "ok": exact == members and frames == members * messages,
            "s": took}


# -- the doors side by side, idle ---------------------------------------------------------------------------


def split(n: int, parts: int) -> list[int]:
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


def idle_run(redis: RedisServer, logs: Path, doors: list[str], sockets: int, servers: int, settle: float,
             window: float, ping_interval: float) -> dict[str, Any]:
    """One run: every door's sockets held at once on fresh processes, CPU read over the same window."""
    asyncio.run(redis.flush())
    options = {**APP_OPTIONS, "ping_interval": ping_interval}
    procs: dict[str, list[tuple[subprocess.Popen[bytes], int]]] = {}
    drivers: list[Driver] = []
    try:
        for door in doors:
            procs[door] = []
            for _ in range(servers):
                port = free_port()
                procs[door].append((start_app(redis.url, port, logs / f"{door}-{port}.log", options), port))
        time.sleep(1)
        pids = {door: [p.pid for p, _ in ps] for door, ps in procs.items()}
        base_rss = {door: sum(rss_bytes(pid) for pid in ps) for door, ps in pids.items()}
        c0 = {door: sum(cpu_seconds(pid) for pid in ps) for door, ps in pids.items()}
        time.sleep(5)
        base_rate = {door: (sum(cpu_seconds(pid) for pid in ps) - c0[door]) / 5 for door, ps in pids.items()}
        t0 = time.monotonic()
        opened: list[tuple[str, int, Driver, int]] = []
        for door in doors:
            module, kind = DOORS[door]
            for (proc, port), share in zip(procs[door], split(sockets, servers), strict=True):
                driver = Driver(module, logs / f"driver-{door}-{port}.log")
                drivers.append(driver)
                # Rooms of this server alone: a room shared with another process would count both's members.
                rooms = [[f"{door}-{port}-{i // 10}", min(10, share - (i // 10) * 10)] for i in range(share)]
                driver.send(cmd="open", kind=kind, port=port, rooms=rooms, sub="s", within=600)
                opened.append((door, port, driver, share))
        failures: list[str] = []
        for door, port, driver, share in opened:
            ready = driver.answer()
            if not ready["ready"]:
                failures.append(f"{door} :{port}: not every client showed its room: {ready}")
        open_s = time.monotonic() - t0
        for door, port, _driver, share in opened:
            deadline = time.monotonic() + 60
            while (got := int(metric(port, "rrr_subscriptions"))) != share and time.monotonic() < deadline:
                time.sleep(0.5)
            if got != share:
                failures.append(f"{door} :{port}: {got} subscriptions, not {share}")
        if failures:
            raise RuntimeError("; ".join(failures))
        rss_open = {door: sum(rss_bytes(pid) for pid in ps) for door, ps in pids.items()}
        time.sleep(settle)
        load0 = os.getloadavg()
        c1 = {door: sum(cpu_seconds(pid) for pid in ps) for door, ps in pids.items()}
        t1 = time.monotonic()
        time.sleep(window)
        c2 = {door: sum(cpu_seconds(pid) for pid in ps) for door, ps in pids.items()}
        took = time.monotonic() - t1
        rss_held = {door: sum(rss_bytes(pid) for pid in ps) for door, ps in pids.items()}
        for door, port, driver, share in opened:
            held = int(metric(port, "rrr_open_sockets"))
            driver.send(cmd="status")
            st = driver.answer()
            if held != share or st["members"] != share or st["failed"]:
                failures.append(f"{door} :{port}: after the window the server holds {held} of {share}; the driver "
                                f"{st['members']} clients, {st['failed']} lost {st['samples']}")
        out: dict[str, Any] = {"open_s": round(open_s, 1), "window_s": round(took, 1),
                               "load_window_start": [round(x, 2) for x in load0],
                               "load_window_end": [round(x, 2) for x in os.getloadavg()], "failures": failures,
                               "doors": {}}
        for door in doors:
            cpu = c2[door] - c1[door] - base_rate[door] * took
            out["doors"][door] = {
                "kib_per_socket": round((max(rss_open[door], rss_held[door]) - base_rss[door]) / sockets / 1024, 2),
                "cpu_pct": round(100 * cpu / took, 2),
                "us_per_socket_per_s": round(1e6 * cpu / took / sockets, 3),
                "us_per_socket_per_ping": round(1e6 * cpu / took / sockets * ping_interval, 2),
                "base_cpu_pct": round(100 * base_rate[door], 2),
            }
        return out
    finally:
        for d in drivers:
            d.close()
        for ps in procs.values():
            for proc, _ in ps:
                stop_process(proc)


def median_of(runs: list[dict[str, Any]], door: str, key: str) -> float:
    return float(statistics.median(r["doors"][door][key] for r in runs))


def section(res: dict[str, Any]) -> str:
    meta, runs = res["meta"], res["runs"]
    doors = meta["doors"]
    n, per = meta["sockets"], meta["sockets"] // meta["servers"]
    base = "native"
    lines = [
        SECTION, "",
        f"`{meta['command']}` ({meta['started']} to {meta['finished']}, this 2-core machine shared with other "
        f"helpers' work; `uptime` before: load average {meta['load_before']}, after: {meta['load_after']}). "
        f"{n:,} idle sockets of each door held at the same time ({len(doors) * n:,} in all), each in a room of 10: "
        f"{meta['servers']} `app.py` per door ({per:,} sockets each: one process may hold 20,000 files), one "
        "driver process per server (the bare asyncio clients of `bench/transport_cost.py` and "
        "`bench/pusher_cost.py`, answering every ping), one `redis-server`. Once every client showed its room and "
        f"every server its subscriptions, {meta['settle']:g} s to settle, then every server's CPU over the same "
        f"{meta['window']:g} s at `--ping-interval {meta['ping_interval']:g}` (SSE streams get a keepalive comment "
        "after 15 s of silence, `--sse-keepalive`), less each process's own rate before any socket opened. RSS per "
        "socket: the servers' RSS after opening or after the window, the larger, less before, over the sockets "
        "(presence included). After the window every server still held exactly its share and no client had lost "
        f"its connection{'' if not any(r['failures'] for r in runs) else ' (except as listed below)'}. "
        f"Median of {len(runs)} runs, fresh processes each; every run below.", "",
        "| door | KiB per socket | vs native | server CPU, all its sockets | µs per socket per ping interval "
        "| vs native |",
        "|---|---|---|---|---|---|",
    ]
    for door in doors:
        kib, cpu = median_of(runs, door, "kib_per_socket"), median_of(runs, door, "cpu_pct")
        us = median_of(runs, door, "us_per_socket_per_ping")
        lines.append(f"| {LABELS[door]} | {kib:.2f} | {kib / median_of(runs, base, 'kib_per_socket'):.2f}× | "
                     f"{cpu:.1f} % of a core | {us:.1f} µs | "
                     f"{us / median_of(runs, base, 'us_per_socket_per_ping'):.2f}× |")
    lines += ["", "| run | window load average (1, 5, 15 min) start → end | opened in | " + " | ".join(
        f"{door}: KiB, CPU %" for door in doors) + " | checks |", "|---|---|---|" + "---|" * len(doors) + "---|"]
    for k, r in enumerate(runs, 1):
        cells = " | ".join(f"{r['doors'][d]['kib_per_socket']:.2f}, {r['doors'][d]['cpu_pct']:.1f}" for d in doors)
        lines.append(f"| {k} | {r['load_window_start']} → {r['load_window_end']} | {r['open_s']:.0f} s | {cells} | "
                     f"{'all passed' if not r['failures'] else '; '.join(r['failures'])[:300]} |")
    lines += ["", (
        "The three doors share rrr's sessions, hub and presence; what differs is the wire: a Pusher socket is"
        ' the native handler with a socket id and a channel table; an SSE session is an HTTP response held '
        "open plus a session record (its subscribe came in a POST). A WebSocket here answers the keepalive's "
        'pings and sends nothing else, so it is pinged once an interval; an SSE stream is never pinged, its '
        'idle cost is the keepalive comment written to a silent stream every `--sse-keepalive` (15 s).'
    ), ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sockets", type=int, default=20_000, help="idle sockets of each door")
    p.add_argument("--servers", type=int, default=2, help="app.py processes per door")
    p.add_argument("--doors", default="native,sse,pusher")
    p.add_argument("--ping-interval", type=float, default=20.0, help="app.py --ping-interval")
    p.add_argument("--settle", type=float, default=None, help="s after every client is in (default: one ping interval)")
    p.add_argument("--window", type=float, default=60.0, help="s over which the servers' CPU is read")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--redis-server", default=None)
    p.add_argument("--write", action="store_true", help=f"save the section to {RESULTS.relative_to(ROOT)}")
    args = p.parse_args()
    doors = args.doors.split(",")
    if args.sockets / args.servers > 19_000:
        raise SystemExit("over 19,000 sockets per process: one process may hold 20,000 files")
    raise_nofile()
    res: dict[str, Any] = {"meta": {
        "command": "python -m bench.doors " + " ".join(sys.argv[1:]), "started": time.strftime("%Y-%m-%d %H:%M UTC"),
        "load_before": [round(x, 2) for x in os.getloadavg()], "doors": doors, "sockets": args.sockets,
        "servers": args.servers, "ping_interval": args.ping_interval, "window": args.window,
        "settle": args.settle if args.settle is not None else args.ping_interval}, "runs": []}
    with tempfile.TemporaryDirectory(prefix="rrr-doors-") as tmp:
        logs = Path(tmp) / "logs"
        logs.mkdir()
        redis = RedisServer(redis_binary(args.redis_server), Path(tmp))
        asyncio.run(redis.start())
        try:
            for k in range(args.runs):
                run = idle_run(redis, logs, doors, args.sockets, args.servers, res["meta"]["settle"], args.window,
                               args.ping_interval)
                print(f"run {k + 1}", json.dumps(run), file=sys.stderr, flush=True)
                res["runs"].append(run)
        finally:
            redis.stop()
    res["meta"]["finished"] = time.strftime("%H:%M UTC")
    res["meta"]["load_after"] = [round(x, 2) for x in os.getloadavg()]
    text = section(res)
    print(text)
    if args.write:
        RESULTS.write_text(text + "\n")
        RESULTS.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
