"""What an idle rrr process costs its Redis: commands per second, by command.

    python -m bench.idle_cost [--seconds 30] [--processes 1] [--sweep-interval 1.0]

Starts a private redis-server and ``app.py`` processes with no sockets (and then with one
socket each in one room), resets Redis's command statistics, waits, and prints the calls
per second per process. Only loopback; bounded by ``--seconds``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.machine import free_port, wait_healthy  # noqa: E402
from rrr.backplane.embedded import EmbeddedRedis  # noqa: E402


def start_app(url: str, port: int, log: Path, extra: list[str]) -> subprocess.Popen[bytes]:
    out = open(log, "ab")
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "app.py"), "--port", str(port), "--redis-url", url, *extra],
        cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
    )
    wait_healthy(proc, port, log, timeout=20)
    return proc


def measure(r: redis.Redis, seconds: float) -> dict[str, float]:
    r.config_resetstat()
    time.sleep(seconds)
    stats = r.info("commandstats")
    return {name.removeprefix("cmdstat_"): v["calls"] / seconds for name, v in stats.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--processes", type=int, default=1)
    ap.add_argument("--sweep-interval", default="1.0")
    args = ap.parse_args()

    server = EmbeddedRedis(port=free_port()).start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        logdir = Path(tempfile.mkdtemp(prefix="rrr-idle-"))
        for i in range(args.processes):
            procs.append(start_app(server.url, free_port(), logdir / f"app-{i}.log",
                                   ["--sweep-interval", args.sweep_interval]))
        r = redis.Redis.from_url(server.url)
        per = measure(r, args.seconds)
        # The measuring connection's own INFO/CONFIG calls are not the app's.
        per = {k: v for k, v in per.items() if not k.startswith(("info", "config"))}
        total = sum(per.values()) / args.processes
        print(f"idle, no sockets: {total:.2f} Redis commands/s per process "
              f"({args.processes} process(es), --sweep-interval {args.sweep_interval}, {args.seconds:.0f} s)")
        for name, rate in sorted(per.items(), key=lambda kv: -kv[1]):
            print(f"  {name:24s} {rate / args.processes:6.2f}/s")
        r.close()
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        server.close()


if __name__ == "__main__":
    main()
