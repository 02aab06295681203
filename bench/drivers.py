"""The orchestrator's handle on the load-driver processes (``bench.worker``).

Several processes, because one Python event loop tops out well below what a
10k-member fan-out delivers; each one gets its own 127.0.0.x source addresses.
``call`` sends one command to every worker and gathers the replies.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SOURCES_PER_WORKER = 8


class WorkerError(RuntimeError):
    """A worker answered a command with an error (a harness bug, not a server result)."""


def source_ips(index: int) -> list[str]:
    """Distinct loopback source addresses per worker: 127.0.0.10 + 8*index ..."""
    base = 10 + SOURCES_PER_WORKER * index
    return [f"127.0.0.{base + k}" for k in range(SOURCES_PER_WORKER)]


class DriverProcess:
    def __init__(self, index: int, proc: asyncio.subprocess.Process) -> None:
        self.index = index
        self.proc = proc
        self.sources = source_ips(index)
        self._ids = itertools.count()
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            msg = json.loads(line)
            fut = self._waiting.pop(msg["id"], None)
            if fut is None or fut.done():
                continue
            if msg["ok"]:
                fut.set_result(msg["result"])
            else:
                fut.set_exception(WorkerError(f"worker {self.index}: {msg['error']}"))
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(WorkerError(f"worker {self.index} exited"))

    async def call(self, cmd: str, args: dict[str, Any] | None = None, timeout: float = 600.0) -> Any:
        assert self.proc.stdin is not None
        msg_id = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[msg_id] = fut
        self.proc.stdin.write(json.dumps({"id": msg_id, "cmd": cmd, "args": args or {}}).encode() + b"\n")
        await self.proc.stdin.drain()
        return await asyncio.wait_for(fut, timeout)


class DriverPool:
    """``n`` worker processes, started once per benchmark run and reset between cells."""

    def __init__(self, workers: list[DriverProcess]) -> None:
        self.workers = workers

    @classmethod
    async def start(cls, n: int, python: str = sys.executable, uvloop: bool = False) -> DriverPool:
        """``uvloop``: the workers run on uvloop (about half the client CPU per socket), so a
        benchmark whose clients share the server's cores leaves the server more of them."""
        workers = []
        env = {**os.environ, "BENCH_UVLOOP": "1" if uvloop else "0"}
        for i in range(n):
            proc = await asyncio.create_subprocess_exec(
                python, "-m", "bench.worker", str(i),
                cwd=ROOT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                limit=2**30, env=env,
            )
            workers.append(DriverProcess(i, proc))
        return cls(workers)

    def __len__(self) -> int:
        return len(self.workers)

    async def call(self, cmd: str, per_worker: list[dict[str, Any]] | dict[str, Any] | None = None,
                   timeout: float = 600.0) -> list[Any]:
        """Send ``cmd`` to every worker (the same args, or one dict each); return replies in order."""
        if isinstance(per_worker, list):
            args_list = per_worker
        else:
            args_list = [dict(per_worker or {}) for _ in self.workers]
        return list(await asyncio.gather(
            *(w.call(cmd, a, timeout) for w, a in zip(self.workers, args_list, strict=True))
        ))

    async def state(self, expected: dict[str, int] | None = None) -> dict[str, Any]:
        """Every worker's ``state`` summed (max for timestamps, concatenated samples)."""
        parts = await self.call("state", {"expected": expected})
        total: dict[str, Any] = {}
        for p in parts:
            for k, v in p.items():
                if k.endswith("_ns"):
                    total[k] = max(total.get(k, 0), v)
                elif isinstance(v, list):
                    total.setdefault(k, []).extend(v)
                else:
                    total[k] = total.get(k, 0) + v
        return total

    async def close(self) -> None:
        for w in self.workers:
            if w.proc.returncode is None and w.proc.stdin is not None:
                try:
                    w.proc.stdin.write(b'{"id":-1,"cmd":"quit"}\n')
                    await w.proc.stdin.drain()
                except (BrokenPipeError, ConnectionResetError):
                    pass
        for w in self.workers:
            try:
                await asyncio.wait_for(w.proc.wait(), 10)
            except TimeoutError:
                w.proc.kill()
                await w.proc.wait()
