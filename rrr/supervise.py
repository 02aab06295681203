"""Long-lived tasks that cannot die silently.

A loop that renews a lease or owns the pub/sub connection must outlive anything a
broken Redis (or whatever answers in its place) can throw at it. A supervised task that
raises is counted (``rrr_task_errors_total{task}``), logged with its cause at most once
per ``log_every`` seconds per task, and restarted after a capped full-jitter backoff.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable

from .metrics import Metrics

log = logging.getLogger("rrr.supervise")


def full_jitter(attempt: int, base: float, cap: float) -> float:
    """AWS-style full-jitter backoff, so a fleet reconnecting to a restarted Redis spreads out."""
    return random.uniform(0, min(cap, base * (2 ** min(attempt, 30))))


class RateLimitedLog:
    """One line per key per ``every`` seconds, saying how many were held back since."""

    def __init__(self, logger: logging.Logger, every: float = 30.0) -> None:
        self.logger = logger
        self.every = every
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def warning(self, key: str, msg: str, *args: object) -> bool:
        return self.log(logging.WARNING, key, msg, *args)

    def log(self, level: int, key: str, msg: str, *args: object, exc_info: BaseException | None = None) -> bool:
        """Log at ``level`` (with ``exc_info``'s traceback) unless ``key`` was logged less than
        ``every`` s ago; True if logged."""
        suffix = self.due(key)
        if suffix is None:
            return False
        self.logger.log(level, msg + suffix, *args, exc_info=exc_info)
        return True

    def due(self, key: str) -> str | None:
        """None while ``key`` is held back (and counted); else what its line should end with."""
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.every:
            self._held[key] = self._held.get(key, 0) + 1
            return None
        held = self._held.pop(key, 0)
        self._last[key] = now
        return f" ({held} more like it in the last {now - last:.0f} s)" if held and last is not None else ""

    def clear(self, key: str) -> bool:
        """The condition ended: the next occurrence is news again, logged at once. True if it
        had been logged (so its end is news too)."""
        self._held.pop(key, None)
        return self._last.pop(key, None) is not None


class Supervisor:
    """Runs named tasks, restarting any that raises."""

    def __init__(self, metrics: Metrics, *, backoff_cap: float = 5.0, log_every: float = 30.0) -> None:
        self.metrics = metrics
        self.backoff_cap = backoff_cap
        self.log = RateLimitedLog(log, log_every)
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def spawn(self, name: str, body: Callable[[], Awaitable[None]], *, backoff_cap: float | None = None) -> None:
        """Run ``body()`` until it returns; if it raises, report and run it again after a backoff."""
        cap = self.backoff_cap if backoff_cap is None else backoff_cap
        self._tasks[name] = asyncio.create_task(self._run(name, body, cap), name=f"rrr-{name}")

    def report(self, name: str, exc: BaseException) -> None:
        """Count a failure of ``name`` and log it, rate-limited; the caller goes on."""
        self.metrics.task_errors.labels(name).inc()
        self.log.warning(name, "%s failed: %s: %s", name, type(exc).__name__, _cause(exc))

    def recovered(self, name: str) -> None:
        if self.log.clear(name):
            log.info("%s is working again", name)

    async def _run(self, name: str, body: Callable[[], Awaitable[None]], cap: float) -> None:
        attempt = 0
        while True:
            started = time.monotonic()
            try:
                await body()
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - the point: nothing may end this loop
                self.report(name, e)
                if time.monotonic() - started > 30:
                    attempt = 0  # it ran fine for a while: start the backoff over
                await asyncio.sleep(full_jitter(attempt, 0.05, cap))
                attempt += 1

    async def close(self, keep: frozenset[str] = frozenset()) -> None:
        """Cancel every task but those named in ``keep`` (a later `close` ends them), and wait for each."""
        for name, task in list(self._tasks.items()):
            if name not in keep:
                await cancel(task)
                del self._tasks[name]


def _cause(exc: BaseException) -> str:
    text = str(exc)
    cause = exc.__cause__
    if cause is not None and str(cause) not in text:
        text += f" (caused by {type(cause).__name__}: {cause})"
    return text[:300]


async def cancel(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` and wait for it, cancelling again if a cancel was swallowed.

    On Python 3.11 ``asyncio.wait_for`` (which redis-py wraps every command in) drops
    a cancel that lands just as the command completes; one ``cancel()`` is then not
    enough and a shutdown would hang (tests/test_shutdown_race.py).
    """
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=0.1)
    if not task.cancelled() and task.exception() is not None:
        log.debug("task %s ended with %r", task.get_name(), task.exception())
