"""What a backend (Django or any Python program) imports to talk to rrr.

Importing this starts nothing and needs no Tornado: `publish` talks to Redis directly,
through the same script the server uses (store in the room's history and publish, in one
step), so a message from a backend is recoverable like any other; `token` mints a token
the server accepts. Both have asyncio twins for async views (`apublish`).

Errors are plain: `ValueError` for a bad room, a payload that is not JSON or one bigger than the
servers deliver (their ``--max-message-size``; nothing is sent), `BackplaneError` when Redis does
not answer or refuses (nothing was published), `OutcomeUnknown` when the message was on its way and
no answer came: Redis did not answer in time, or the connection broke (it may have been published).
Nothing else comes out of a Redis call, whatever the client library raises (see `_failure`).
Payloads are JSON, never pickled.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import weakref
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis.exceptions import ResponseError

from . import protocol

from .backplane import keys, scripts
from .auth import mint
from .backplane.clients import is_cluster_url, make_redis, make_sync_redis
from .errors import BackplaneError, OutcomeUnknown
from .backplane.history import cache_ms, parse_published, publish_args
from .backplane.outcome import Attempts, attempts, may_have_run, timed_out

log = logging.getLogger("rrr.client")

__all__ = [
    "BackplaneError", "OutcomeUnknown", "apublish", "check_size", "encode", "max_message_size", "publish", "token",
]

#: The servers' defaults, used when no server has announced its settings on that Redis.
HISTORY_SIZE = 100
HISTORY_TTL = 300.0
MAX_MESSAGE_SIZE = protocol.MAX_MESSAGE_SIZE
TIMEOUT = 2.0
#: How long a cache channel keeps the helper's message as its last one: the servers' default --cache-ttl.
CACHE_TTL = 1800.0


def token(
    sub: str, *, rooms: Iterable[str], publish: Iterable[str] = (), info: dict[str, Any] | None = None,
    ttl: float = 3600, secret: str,
) -> str:
    """A token rrr accepts (HS256 with ``--token-secret``): ``sub`` is the user, ``rooms`` and
    ``publish`` its grants (exact slugs, or prefixes ending in ``*``), ``info`` what other
    members of a presence room see."""
    return mint(sub, secret=secret, rooms=rooms, publish=publish, info=info, ttl=ttl)


def _default_url() -> str:
    return os.environ.get("RRR_REDIS_URL") or "redis://127.0.0.1:6379/0"


def encode(room: str, data: Any, event: str | None = None) -> str:
    """The text `publish` would send for ``data`` to ``room`` (with ``event``: `protocol.pack`ed);
    ValueError for a bad room, event name or data that is not plain JSON (what
    `rrr.django.publish_on_commit` checks at call time)."""
    if event is not None:
        protocol.check_event(event)
    if not protocol.is_valid_slug(room):
        raise ValueError(f"{protocol.ROOM_RULE}, got {room!r:.80}")
    try:
        text = protocol.dumps(data)
        text.encode("utf-8")
    except (TypeError, ValueError, UnicodeEncodeError, RecursionError) as e:
        raise ValueError(f"data must be plain JSON (dicts, lists, str, numbers, bool, None): {e}") from None
    return protocol.pack(text, event)


def check_size(text: str, limit: int) -> None:
    """ValueError if ``text`` (what `encode` returned) is over ``limit`` bytes: the servers would drop
    it (one frame that size would cut off every reader), so it is not sent at all."""
    if protocol.too_big(text, limit):
        raise ValueError(
            f"data is {len(text.encode('utf-8'))} bytes of JSON, over the servers' --max-message-size "
            f"({limit} bytes); nothing was sent"
        )


_sync_lock = threading.Lock()
_sync_clients: dict[str, Any] = {}
_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, Any]] = weakref.WeakKeyDictionary()


def _sync_client(url: str) -> Any:
    """The process's client for ``url``. A cluster's is made by reaching one of its nodes: one that
    cannot is `BackplaneError`, and the next call tries again."""
    with _sync_lock:
        client = _sync_clients.get(url)
        if client is None:
            try:
                client = make_sync_redis(url, TIMEOUT)
            except ValueError:
                raise
            except Exception as e:
                raise _failure(e, sent=False) from e
            _sync_clients[url] = client
        return client


#: Connections (per node, on a Cluster) of ``apublish``'s client for one event loop and Redis, and
#: how many of its calls run at once: a Cluster client refuses a command beyond its connections
#: (``MaxConnectionsError``) instead of waiting for one, and once it retried a publish after a broken
#: connection that refusal cannot say nothing was published. The others wait, up to `TIMEOUT`.
ASYNC_CONNECTIONS = 8
_async_limits: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Semaphore]] = (
    weakref.WeakKeyDictionary()
)


def _async_client(url: str) -> tuple[Any, asyncio.Semaphore]:
    loop = asyncio.get_running_loop()
    per_loop = _async_clients.setdefault(loop, {})
    client = per_loop.get(url)
    if client is None:
        client = per_loop[url] = make_redis(url, TIMEOUT, ASYNC_CONNECTIONS)
    limits = _async_limits.setdefault(loop, {})
    limit = limits.get(url)
    if limit is None:
        limit = limits[url] = asyncio.Semaphore(ASYNC_CONNECTIONS)
    return client, limit


def _failure(e: Exception, *, sent: bool, failed: Attempts | None = None) -> BackplaneError:
    """The error a caller gets for ``e``, raised by a Redis call: ``sent`` once a command that
    publishes may have left (before, nothing can have been published); ``failed``: the call's
    earlier attempts (`rrr.backplane.outcome.attempts`).

    Whatever the client library raises is answered: besides its `RedisError`, redis-py lets other
    exceptions out of a connection another task closed under a command (an ``AttributeError`` from
    the asyncio cluster client during a failover, a ``RedisClusterException`` when no node
    answers). Once the message may have left, only a failure known to come before it ran (a refused
    connect, a refusing answer: out of memory, READONLY, CLUSTERDOWN, a script error) says it was
    not published, and only if no earlier attempt may have run (`rrr.backplane.outcome`). A publish
    is stored once however often it is retried with its id, but a caller's publish again is a new
    message: hence `OutcomeUnknown`."""
    if isinstance(e, BackplaneError):
        return e
    what = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    if not sent and timed_out(e):
        return BackplaneError(f"redis did not answer in time; nothing was published: {what}")
    if sent and isinstance(e, ResponseError) and not may_have_run(e, failed):
        return BackplaneError(f"redis refused the message; nothing was published: {what}")
    if not sent or not may_have_run(e, failed):
        return BackplaneError(f"redis refused or is unreachable; nothing was published: {what}")
    if timed_out(e):
        return OutcomeUnknown(f"redis did not answer in time; the message may have been published: {what}")
    return OutcomeUnknown(f"the connection to redis broke; the message may have been published: {what}")


#: The fields of `keys.HISTORY_CONFIG` the helper reads (`History.announce` writes them).
_ANNOUNCED = ("size", "ttl", "max")


_warned_lock = threading.Lock()
_warned: set[tuple[int, str]] = set()


def _redacted(url: str) -> str:
    """``url`` without its password, for a log line."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.rsplit("@", 1)[1]
        user = f"{parts.username}:***@" if parts.username else ":***@"
        return urlunsplit(parts._replace(netloc=user + netloc))
    except ValueError:
        return url.split("@", 1)[-1]


def _check_announced(reply: Any, url: str) -> None:
    """Warn (once per process and Redis URL) when no rrr server has announced itself on that Redis.

    Every server writes `keys.HISTORY_CONFIG` when it starts; without it the message goes into a
    Redis no rrr reads, with no error anywhere (a Django site's ``RRR_REDIS_URL`` pointing at
    the developer's own Redis while rrr runs its embedded one). The publish still goes through:
    a server started later, or a deployment that does not keep the key, must not lose messages."""
    if isinstance(reply, list) and any(field is not None for field in reply):
        return
    key = (os.getpid(), url)
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    log.warning(
        "no rrr server has announced itself on %s (no %s key there): nothing may read what is published "
        "there; is it the Redis rrr runs on (its --redis-url; Django: RRR_REDIS_URL)? Publishing anyway",
        _redacted(url), keys.HISTORY_CONFIG,
    )


def _settings_of(reply: Any, size: int | None, ttl: float | None) -> tuple[int, float, int]:
    """The history settings to publish with (the caller's, else the servers' (`History.announce`),
    else the servers' defaults), and the largest message the servers deliver."""
    got_size, got_ttl, got_max = reply if isinstance(reply, list) and len(reply) == 3 else (None, None, None)
    try:
        announced = (int(got_size), int(got_ttl) / 1000) if got_size is not None and got_ttl is not None else None
    except (TypeError, ValueError):
        announced = None
    if announced is None:
        announced = (HISTORY_SIZE, HISTORY_TTL)
    try:
        limit = int(got_max) if got_max is not None else MAX_MESSAGE_SIZE
    except (TypeError, ValueError):
        limit = MAX_MESSAGE_SIZE
    return (announced[0] if size is None else size), (announced[1] if ttl is None else ttl), limit


def max_message_size(redis_url: str | None = None) -> int:
    """The largest message data (bytes of JSON) the servers on ``redis_url`` deliver: the
    ``--max-message-size`` they announced there, else their default. `BackplaneError` when Redis
    does not answer."""
    client = _sync_client(redis_url or _default_url())
    try:
        return _settings_of(client.hmget(keys.HISTORY_CONFIG, *_ANNOUNCED), None, None)[2]
    except Exception as e:
        raise _failure(e, sent=False) from e


def publish(
    room: str, data: Any, *, redis_url: str | None = None, history_size: int | None = None,
    history_ttl: float | None = None, event: str | None = None,
) -> int:
    """Send ``data`` (any JSON value) to every socket in ``room``, stored in its history; returns the
    message's offset (0 when history is off: then it is relayed live only, not stored). ``event``:
    the name Pusher clients hear it as (default ``message``), also on rrr's ``message`` frame.

    ``redis_url``: the server's ``--redis-url`` (default ``$RRR_REDIS_URL``). History is kept as the
    servers on that Redis keep it (their ``--history-size``/``--history-ttl``, which they announce
    there); ``history_size``/``history_ttl`` override that (0: off). Data over the servers'
    ``--max-message-size`` (announced there too) raises ValueError, and nothing is sent. With no
    server announced there, a WARNING on the ``rrr.client`` logger (once per process and URL) says
    so, and the message goes out all the same."""
    text = encode(room, data, event)
    url = redis_url or _default_url()
    client = _sync_client(url)
    try:
        # The servers' settings, read each time: a deployment may turn history off or on, or change
        # its limit.
        announced = client.hmget(keys.HISTORY_CONFIG, *_ANNOUNCED)
    except Exception as e:
        raise _failure(e, sent=False) from e
    _check_announced(announced, url)
    size, ttl, limit = _settings_of(announced, history_size, history_ttl)
    check_size(text, limit)
    with attempts() as failed:
        try:
            if size <= 0 or ttl <= 0:
                if ms := cache_ms(room, CACHE_TTL):
                    client.set(keys.cache(room), text, px=ms)
                client.publish(keys.room_channel(room), text)
                return 0
            k, a = publish_args(room, text, size, ttl, own=False, sharded=is_cluster_url(url), cache_ttl=CACHE_TTL)
            reply = client.register_script(scripts.HISTORY_PUBLISH)(keys=k, args=a)
        except Exception as e:
            raise _failure(e, sent=True, failed=failed) from e
    return parse_published(reply).offset


async def apublish(
    room: str, data: Any, *, redis_url: str | None = None, history_size: int | None = None,
    history_ttl: float | None = None, event: str | None = None,
) -> int:
    """`publish` for async code (one client per event loop; at most `ASYNC_CONNECTIONS` calls at once,
    the others wait their turn up to `TIMEOUT`, then `BackplaneError`)."""
    text = encode(room, data, event)
    url = redis_url or _default_url()
    client, limit = _async_client(url)
    try:
        async with asyncio.timeout(TIMEOUT):
            await limit.acquire()
    except TimeoutError:
        raise BackplaneError(
            f"the helper's {ASYNC_CONNECTIONS} connections to redis stayed busy for {TIMEOUT} s; nothing was published"
        ) from None
    try:
        return await _apublish(client, url, room, text, history_size, history_ttl)
    finally:
        limit.release()


async def _apublish(
    client: Any, url: str, room: str, text: str, history_size: int | None, history_ttl: float | None,
) -> int:
    try:
        announced = await client.hmget(keys.HISTORY_CONFIG, *_ANNOUNCED)
    except Exception as e:
        raise _failure(e, sent=False) from e
    _check_announced(announced, url)
    size, ttl, limit = _settings_of(announced, history_size, history_ttl)
    check_size(text, limit)
    with attempts() as failed:
        try:
            if size <= 0 or ttl <= 0:
                if ms := cache_ms(room, CACHE_TTL):
                    await client.set(keys.cache(room), text, px=ms)
                await client.publish(keys.room_channel(room), text)
                return 0
            k, a = publish_args(room, text, size, ttl, own=False, sharded=is_cluster_url(url), cache_ttl=CACHE_TTL)
            reply = await client.register_script(scripts.HISTORY_PUBLISH)(keys=k, args=a)
        except Exception as e:
            raise _failure(e, sent=True, failed=failed) from e
    return parse_published(reply).offset
