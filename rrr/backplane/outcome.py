"""Whether a Redis call that failed may still have run: the one rule both the server's calls
(`rrr.backplane.calls.Calls.run`) and the backend helper (`rrr.client`) answer a failed publish by.

"Not delivered" is a promise: a publisher that hears it publishes again, and if the first one ran,
the room gets the message twice. So a failure says nothing was done only when that is known: the
connection was never made, no connection was free, or Redis answered and refused (out of memory,
NOREPLICAS, READONLY, CLUSTERDOWN, a script error). Once the command may have been written, a
broken connection, a timeout or a reply nobody could read says nothing about it: Redis runs what
it read even when the client is gone (a stopped master resumed runs it, seen in the soak, #27).

redis-py retries after a broken connection and raises only the last attempt's error: a refused
connect or CLUSTERDOWN may follow an attempt that was written and cut. The clients
(`rrr.backplane.clients`) therefore note every failed attempt of the call running in the current
context (`attempts`), and the earlier ones count too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from redis.exceptions import (
    AuthenticationError, AuthorizationError, BusyLoadingError, InvalidResponse, MaxClientsReachedError,
    MaxConnectionsError, RedisClusterException, RedisError, ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError


class Attempts:
    """What the failed attempts of one call say: whether one of them may have run. A flag, not the
    errors: a task started during the call inherits it, and must not pile errors up in it."""

    __slots__ = ("may_have_run",)

    def __init__(self) -> None:
        self.may_have_run = False


#: The attempts of the Redis call running in this context (None: nobody is asking).
_ATTEMPTS: ContextVar[Attempts | None] = ContextVar("rrr_redis_attempts", default=None)


@contextmanager
def attempts() -> Iterator[Attempts]:
    """Collect the failed attempts of the Redis call awaited inside (a coroutine made before but
    first awaited inside runs in this context too)."""
    seen = Attempts()
    outer = _ATTEMPTS.get()
    _ATTEMPTS.set(seen)
    try:
        yield seen
    finally:
        # Not ``reset(token)``: a coroutine closed unfinished (GeneratorExit) ends in another context.
        _ATTEMPTS.set(outer)


def note(error: BaseException) -> None:
    """One attempt of the current call failed with ``error`` (called by the clients' retry hooks)."""
    seen = _ATTEMPTS.get()
    if seen is not None and not seen.may_have_run and attempt_may_have_run(error):
        seen.may_have_run = True


#: Nothing left the client: no connection to the server, or none free. Each is a `ConnectionError`.
_NOT_CONNECTED = (MaxConnectionsError, MaxClientsReachedError, AuthenticationError, AuthorizationError,
                  BusyLoadingError)


def _never_connected(e: BaseException) -> bool:
    """A connect that failed (refused, unreachable, timed out) or a pool with no free connection:
    redis-py says so only in the message (``Error 111 connecting to ...``, ``Timeout connecting to
    server``, ``No connection available.``)."""
    text = str(e)
    return " connecting to " in text or text.startswith("Timeout connecting to") or text == "No connection available."


def attempt_may_have_run(e: BaseException) -> bool:
    """Whether the one attempt that failed with ``e`` may have run in Redis."""
    if isinstance(e, ResponseError):
        return False  # Redis answered, and refused it
    if isinstance(e, _NOT_CONNECTED):
        return False
    if isinstance(e, (RedisConnectionError, RedisTimeoutError, asyncio.TimeoutError, OSError)):
        return not _never_connected(e)
    if isinstance(e, InvalidResponse):
        return True  # a reply came, unreadable: the command was written
    if isinstance(e, (RedisClusterException, RedisError)):
        return False  # no node, no slot, a bad argument: refused before anything was sent
    return True  # anything else out of a connection (a closed transport, a reply a callback choked on)


def may_have_run(e: BaseException, earlier: Attempts | None = None) -> bool:
    """Whether a call that failed with ``e``, after the attempts ``earlier`` (`attempts`), may have run."""
    return attempt_may_have_run(e) or (earlier is not None and earlier.may_have_run)


def timed_out(e: BaseException) -> bool:
    return isinstance(e, (RedisTimeoutError, asyncio.TimeoutError))
