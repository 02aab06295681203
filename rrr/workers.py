"""Every core: one parent that binds the port, and N forked workers that share it.

Each worker is a whole rrr process (its own event loop, Redis connections, lease and
presence), so nothing here knows about rooms. The parent only keeps N workers alive: one
that dies abnormally is started again (with a backoff if it keeps dying), and SIGTERM or
SIGINT to the parent is passed to every worker, which drains as a single process does
(presence out at once, sockets closed with 1001); the parent exits when all have.

The fork happens before any event loop exists: a loop must never cross a fork.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Coroutine
from types import FrameType
from typing import Any

import tornado.netutil
from tornado.options import options, parse_command_line

from .config import command_line
from .embedded import EmbeddedRedis

log = logging.getLogger("rrr.workers")

#: A worker that dies sooner than this after its start counts towards the restart backoff.
EARLY_DEATH = 5.0
BACKOFF_CAP = 10.0
#: CPython's youngest-generation threshold for an rrr process (its default is 700): see `tune_gc`.
GC_YOUNG_THRESHOLD = 2000
#: Middle-generation collections before a full one is considered (CPython's default: 10).
GC_OLDEST_THRESHOLD = 100


def worker_count(requested: int) -> int:
    """``--processes``: 0 means one per CPU core this process may run on."""
    if requested > 0:
        return requested
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class Parent:
    """Forks ``n`` workers running ``run_worker(sockets)`` and keeps them alive until told to stop."""

    def __init__(self, n: int, sockets: list[socket.socket], run_worker: Callable[[list[socket.socket]], int]) -> None:
        self.n = n
        self.sockets = sockets
        self.run_worker = run_worker
        self.children: dict[int, float] = {}  # pid -> start time
        self.stopping = False
        self._early_deaths = 0

    def serve(self) -> int:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        for _ in range(self.n):
            self._spawn()
        log.info("parent %d: %d workers serving", os.getpid(), self.n)
        while self.children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            started = self.children.pop(pid, None)
            if started is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            if self.stopping:
                continue
            if code == 0:
                log.warning("worker %d exited cleanly on its own; starting another", pid)
            else:
                log.warning("worker %d died (%s); starting another", pid, _describe(code))
            self._early_deaths = self._early_deaths + 1 if time.monotonic() - started < EARLY_DEATH else 0
            if self._early_deaths:
                time.sleep(min(BACKOFF_CAP, 0.1 * 2 ** min(self._early_deaths, 10)))
            if not self.stopping:
                self._spawn()
        log.info("parent %d: every worker has exited", os.getpid())
        return 0

    def _spawn(self) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            code = 1
            try:
                code = self.run_worker(self.sockets)
            except BaseException:  # noqa: BLE001 - a worker must never fall back into the parent's loop
                log.exception("worker %d failed", os.getpid())
            finally:
                os._exit(code)
        self.children[pid] = time.monotonic()

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        """Pass the signal on: each worker drains (presence out, 1001), then the parent exits."""
        self.stopping = True
        for pid in list(self.children):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass


def tune_gc() -> None:
    """Fewer full garbage collections while sockets pile up.

    A join leaves about 120 container objects alive for the socket's life. Under CPython's
    default thresholds (700, 10, 10) a full collection, a pass over every live socket's
    objects, is considered every 70,000 allocations and runs whenever the long-lived objects
    have grown by a quarter since the last one: a join storm into a fresh process spent about
    a third of its CPU in the collector, mostly in full collections (``python -m
    bench.handshake_cost``; docs/benchmarks.md, "Handshake cost"). With 2,000 one is
    considered every 200,000 allocations (about 1,700 joins), and the quarter rule still
    bounds how many closed sockets' cycles wait for one.

    A full collection is also considered only every 100 middle ones (CPython: 10), about every
    2,000,000 allocations: in a storm the quarter rule is met at once, so the count was what
    decided, and a process taking 16,000 joins in one room ran 13 full collections for 17 % of
    its CPU; with 100 it ran one, for 6 %, and its CPU per join fell 544 -> 480 us (``python -m
    bench.handshake_cost --room-size 0 --gc-stats``). The price: cycles that outlived two
    collections (a long-lived socket's, once it closes) wait longer for theirs, at most some
    thousands of joins' worth. Only the thresholds change: what is collected, and that it is,
    stays CPython's. (Measured on 3.11; from 3.14 the collector is incremental and ignores the
    third value, so there only the first one applies.)
    """
    _, middle, _ = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, GC_OLDEST_THRESHOLD)


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def run(main: Callable[[str, list[socket.socket] | None], Coroutine[Any, Any, None]]) -> int:
    """``python app.py``: parse the options, start the embedded Redis if no URL was given, then
    run ``main`` in this process (``--processes 1``) or in N forked workers sharing one port."""
    parse_command_line(command_line(options, sys.argv, os.environ))
    logging.getLogger().setLevel(options.log_level.upper())
    tune_gc()
    embedded = None
    url = options.redis_url
    if not url:
        embedded = EmbeddedRedis().start()
        url = embedded.url
        log.info("started embedded redis-server (%s)", embedded.binary)
    try:
        n = worker_count(options.processes)
        if n == 1:
            asyncio.run(main(url, None))
            return 0
        sockets = tornado.netutil.bind_sockets(options.port, options.address, backlog=options.backlog)

        def worker(socks: list[socket.socket]) -> int:
            asyncio.run(main(url, socks))
            return 0

        return Parent(n, sockets, worker).serve()
    finally:
        # Only the parent gets here: a worker leaves through os._exit.
        if embedded is not None:
            embedded.close()
