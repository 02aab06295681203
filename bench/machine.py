"""What the bench tools share about this machine and this checkout: /proc readings, free loopback ports,
waiting for a process to listen or answer /healthz, stopping one by pid, the open-files limit, the machine's
and the stacks' versions, JSON without NaN.

The bottom of bench/'s imports, so every tool can use it and no tool needs another tool to get it: the
standard library only (the ``*_cost`` tools run in the project's venv, which has no aiohttp) and no other
bench module.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import math
import os
import platform
import resource
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PEER_PACKAGES = ("websockets", "aiohttp", "redis", "Django", "channels", "channels-redis", "daphne", "Twisted",
                 "python-socketio", "python-engineio", "matplotlib")


# -- /proc ---------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    """VmRSS of ``pid``: resident memory, what the machine actually pays per connection."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float, log: Path) -> None:
    """Until 127.0.0.1:port accepts; fail early (with the log tail) if the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"server exited with {proc.returncode} before listening:\n{tail}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise RuntimeError(f"nothing listening on {port} after {timeout:.0f} s")


def wait_healthy(proc: subprocess.Popen[bytes], port: int, log: Path, timeout: float = 30.0) -> None:
    """Until ``app.py`` (``proc``) answers ``/healthz`` on ``port`` with 200 (urllib: the project's
    venv, where some tools run, has no aiohttp); raises with its log if it exits or never does."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"app.py exited {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"app.py did not become healthy:\n{log.read_text()}")
        time.sleep(0.05)


def stop_process(proc: subprocess.Popen[bytes], grace: float = 5.0) -> bool:
    """SIGTERM, then SIGKILL after ``grace`` seconds; only this one process, by pid. True if it had to kill."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return True
    return False


# -- the machine and its software -----------------------------------------


def raise_nofile() -> tuple[int, int]:
    """Soft fd limit up to the hard one; children (servers, workers) inherit it."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "nofile": list(resource.getrlimit(resource.RLIMIT_NOFILE)),
    }


def versions(rrr_python: str, redis_version: str) -> dict[str, str]:
    out: dict[str, str] = {"redis-server": redis_version}
    for name in PEER_PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "missing"
    probe = ("import json, importlib.metadata as m, platform; "
             "print(json.dumps({'rrr python': platform.python_version(), "
             "'tornado (rrr)': m.version('tornado'), 'redis-py (rrr)': m.version('redis')}))")
    try:
        out.update(json.loads(subprocess.run([rrr_python, "-c", probe], capture_output=True, text=True,
                                             check=True, timeout=30).stdout))
    except (subprocess.SubprocessError, ValueError, OSError) as e:
        out["tornado (rrr)"] = f"unknown ({e})"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, timeout=10, check=False).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "app.py", "rrr", "handlers"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10, check=False).stdout.strip()
        out["rrr commit"] = (commit or "none") + (" + uncommitted changes" if dirty else "")
    except (subprocess.SubprocessError, OSError):
        pass
    return out


def clean(value: Any) -> Any:
    """NaN is not JSON: store it as null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean(v) for v in value]
    return value
