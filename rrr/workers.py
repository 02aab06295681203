"""Every core: one parent that binds the port, and N forked workers that share it.

Each worker is a whole rrr process (its own event loop, Redis connections, lease and
presence), so nothing here knows about rooms. The parent only keeps N workers alive: one
that dies is started again, at once if it had lived 5 s, else after a backoff of its own slot
that grows while it keeps dying young. SIGTERM or SIGINT to the parent is passed to every
worker, which drains as a single process does (presence out at once, sockets closed with
1001); the parent exits when all have. A parent that dies (``kill -9``) takes its workers
with it: each drains the same way within a second or so, and frees the port.

The fork happens before any event loop exists: a loop must never cross a fork. Each process
then makes its own, of the kind ``--loop`` names (`loop_factory`: uvloop when installed).
"""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from types import FrameType
from typing import Any

import tornado.netutil
from tornado.options import options, parse_command_line

from .config import command_line
from .backplane.embedded import EmbeddedRedis, die_with_parent

log = logging.getLogger("rrr.workers")

#: A worker that dies sooner than this after its start counts towards its slot's restart backoff;
#: one that lived longer is replaced at once.
EARLY_DEATH = 5.0
BACKOFF_CAP = 10.0
#: CPython's youngest-generation threshold for an rrr process (its default is 700): see `tune_gc`.
GC_YOUNG_THRESHOLD = 2000
#: Middle-generation collections before a full one is considered (CPython's default: 10).
GC_OLDEST_THRESHOLD = 100


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """``--loop``: what makes each process's event loop; None for asyncio's own.

    ``auto`` (the default) is uvloop when it is installed (a runtime dependency; `pip install`
    without it still runs): Tornado, redis-py and everything else here run on it unchanged, and it
    cuts the CPU of the loop's own work (waiting on sockets, running callbacks), which an idle
    socket's keepalive and every join pay (docs/benchmarks.md, "Keepalive" and "Handshake cost").
    ``asyncio`` opts out; ``uvloop`` insists, and stops the start if it is missing."""
    if choice not in ("auto", "uvloop", "asyncio"):
        raise ValueError(f"--loop must be auto, uvloop or asyncio, not {choice!r}")
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ValueError("--loop uvloop: uvloop is not installed (pip install uvloop)") from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """``uvloop`` or ``asyncio``, for the start-up line."""
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` on a new event loop of the kind ``--loop`` names (made here, after any fork)."""
    with asyncio.Runner(loop_factory=loop_factory(options.loop)) as runner:
        runner.run(main)


def worker_count(requested: int) -> int:
    """``--processes``: 0 means one per CPU core this process may run on."""
    if requested > 0:
        return requested
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@dataclass
class Slot:
    """One of the N places a worker runs in, with a restart backoff of its own."""

    pid: int | None = None
    started: float = 0.0
    early_deaths: int = 0  # deaths in a row, each sooner than EARLY_DEATH after its start
    next_start: float = 0.0  # monotonic time before which this slot is not refilled


class Parent:
    """Forks ``n`` workers running ``run_worker(sockets)`` and keeps them alive until told to stop.

    Each slot backs off on its own: a worker that keeps dying young is restarted later and later
    (up to BACKOFF_CAP), and that never delays another slot. The parent once slept out one
    slot's backoff while a second dead worker waited, so the service ran on one worker for 12 s.
    The parent never sleeps: it waits for SIGCHLD (blocked, and taken with ``sigtimedwait``, so a
    death between two looks is not missed) or for the next slot to be due."""

    def __init__(self, n: int, sockets: list[socket.socket], run_worker: Callable[[list[socket.socket]], int]) -> None:
        self.n = n
        self.sockets = sockets
        self.run_worker = run_worker
        self.slots = [Slot() for _ in range(n)]
        self.stopping = False
        self._stop_signal: int = signal.SIGTERM
        self._told: set[int] = set()  # workers the stop signal was passed to

    @property
    def children(self) -> list[int]:
        return [slot.pid for slot in self.slots if slot.pid is not None]

    def serve(self) -> int:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
        try:
            for slot in self.slots:
                self._spawn(slot)
            log.info("parent %d: %d workers serving", os.getpid(), self.n)
            while True:
                self._reap()
                if self.stopping and not self.children:
                    break
                if self.stopping:
                    self._pass_on()  # a worker forked as the signal came in is told too
                else:
                    self._refill()
                signal.sigtimedwait([signal.SIGCHLD], self._next_wait())
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
        log.info("parent %d: every worker has exited", os.getpid())
        return 0

    def _reap(self) -> None:
        """Collect every worker that has exited, and set when its slot may be refilled."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            slot = next((s for s in self.slots if s.pid == pid), None)
            if slot is None:
                continue  # not a worker (the embedded redis-server is our child too)
            slot.pid = None
            if self.stopping:
                continue
            now = time.monotonic()
            lived = now - slot.started
            code = os.waitstatus_to_exitcode(status)
            how = "exited cleanly on its own" if code == 0 else f"died ({_describe(code)})"
            if lived >= EARLY_DEATH:
                slot.early_deaths = 0
                slot.next_start = now
                log.warning("worker %d %s after %.0f s; starting another", pid, how, lived)
                continue
            slot.early_deaths += 1
            delay = min(BACKOFF_CAP, 0.1 * 2 ** min(slot.early_deaths, 10))
            slot.next_start = now + delay
            log.warning("worker %d %s %.1f s after its start (%d in a row); starting another in %.1f s",
                        pid, how, lived, slot.early_deaths, delay)

    def _refill(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            if slot.pid is None and slot.next_start <= now:
                self._spawn(slot)

    def _next_wait(self) -> float:
        """Until the next empty slot is due (at most 1 s, so a stop is never waited on for long)."""
        now = time.monotonic()
        due = [slot.next_start - now for slot in self.slots if slot.pid is None and not self.stopping]
        return max(0.0, min([1.0, *due]))

    def _spawn(self, slot: Slot) -> None:
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the worker
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            die_with_parent()  # SIGTERM, which the worker drains on, when the parent dies
            if os.getppid() != parent:
                os._exit(1)  # it died before prctl took
            code = 1
            try:
                code = self.run_worker(self.sockets)
            except BaseException:  # noqa: BLE001 - a worker must never fall back into the parent's loop
                log.exception("worker %d failed", os.getpid())
            finally:
                os._exit(code)
        slot.pid = pid
        slot.started = time.monotonic()

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        """Pass the signal on: each worker drains (presence out, 1001), then the parent exits."""
        self.stopping = True
        self._stop_signal = signum
        self._pass_on()

    def _pass_on(self) -> None:
        for pid in self.children:
            if pid in self._told:
                continue
            self._told.add(pid)
            try:
                os.kill(pid, self._stop_signal)
            except ProcessLookupError:
                pass


async def orphan_watch(parent: int, every: float = 1.0) -> None:
    """A worker whose parent is gone drains as on SIGTERM (presence out, sockets closed with 1001).

    The parent's death sends SIGTERM on Linux (``PR_SET_PDEATHSIG``); this is for where it does not.
    Without either, a ``kill -9``'d parent left its workers serving, holding the port, so a restart
    failed with EADDRINUSE."""
    while os.getppid() == parent:
        await asyncio.sleep(every)
    log.warning("worker %d: parent %d is gone; shutting down", os.getpid(), parent)
    os.kill(os.getpid(), signal.SIGTERM)


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


def listen(port: int, address: str, backlog: int) -> list[socket.socket]:
    """The listening sockets, or SystemExit with one line naming the option to change (a busy
    port was a 22-line traceback, after the embedded Redis had started)."""
    try:
        return tornado.netutil.bind_sockets(port, address, backlog=backlog)
    except OSError as e:
        where = f"{address}:{port}"
        if e.errno == errno.EADDRINUSE:
            raise SystemExit(
                f"rrr: port {port} on {address} is in use (another rrr?): choose another with --port"
            ) from None
        if e.errno == errno.EACCES:
            raise SystemExit(f"rrr: not allowed to listen on {where} ({e.strerror}): choose a port above 1023 "
                             "with --port") from None
        if e.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT) or isinstance(e, socket.gaierror):
            raise SystemExit(f"rrr: cannot listen on address {address!r} ({e.strerror}): choose another with "
                             "--address") from None
        raise SystemExit(f"rrr: cannot listen on {where} ({e.strerror or e}): check --address and --port") from None


def run(main: Callable[[str, list[socket.socket] | None], Coroutine[Any, Any, None]]) -> int:
    """``python app.py``: parse the options, start the embedded Redis if no URL was given, then
    run ``main`` in this process (``--processes 1``) or in N forked workers sharing one port."""
    parse_command_line(command_line(options, sys.argv, os.environ))
    logging.getLogger().setLevel(options.log_level.upper())
    tune_gc()
    # First, before Redis starts or a worker forks: a port we cannot have is one line, not a traceback.
    sockets = listen(options.port, options.address, options.backlog)
    embedded = None
    url = options.redis_url
    if not url:
        embedded = EmbeddedRedis().start()
        url = embedded.url
        log.info("started embedded redis-server (%s)", embedded.binary)
    try:
        n = worker_count(options.processes)
        if n == 1:
            run_loop(main(url, sockets))
            return 0

        parent = os.getpid()

        async def serve(socks: list[socket.socket]) -> None:
            watch = asyncio.create_task(orphan_watch(parent))
            try:
                await main(url, socks)
            finally:
                watch.cancel()

        def worker(socks: list[socket.socket]) -> int:
            run_loop(serve(socks))
            return 0

        return Parent(n, sockets, worker).serve()
    finally:
        # Only the parent gets here: a worker leaves through os._exit.
        if embedded is not None:
            embedded.close()
