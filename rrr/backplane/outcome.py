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

#: The failed attempts of the Redis call running in this context (None: nobody is asking).
_FAILED: ContextVar[list[BaseException] | None] = ContextVar("rrr_redis_failed_attempts", default=None)


@contextmanager
def attempts() -> Iterator[list[BaseException]]:
    """Collect the failed attempts of the Redis call awaited inside (a coroutine made before but
    first awaited inside runs in this context too)."""
    failed: list[BaseException] = []
    outer = _FAILED.get()
    _FAILED.set(failed)
    try:
        yield failed
    finally:
        # Not ``reset(token)``: a coroutine closed unfinished (GeneratorExit) ends in another context.
        _FAILED.set(outer)


def note(error: BaseException) -> None:
    """One attempt of the current call failed with ``error`` (called by the clients' retry hooks)."""
    failed = _FAILED.get()
    if failed is not None:
        failed.append(error)


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


def may_have_run(e: BaseException, failed: list[BaseException] | tuple[BaseException, ...] = ()) -> bool:
    """Whether a call that failed with ``e``, after the attempts ``failed`` (`attempts`), may have run."""
    return attempt_may_have_run(e) or any(attempt_may_have_run(x) for x in failed)


def timed_out(e: BaseException) -> bool:
    return isinstance(e, (RedisTimeoutError, asyncio.TimeoutError))
