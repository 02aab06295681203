"""Build the Redis client from ``--redis-url``.

Plain Redis (one server)::

    redis://[[user]:password@]host:port/db      rediss://... (TLS)      unix:///path/redis.sock?db=0

Redis Sentinel (the client asks the sentinels for the current master and follows failover)::

    redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service_name[/db][?option=value&...]
    rediss+sentinel://...                        TLS to the sentinels and to the data nodes

* ``host:port`` pairs are the sentinels (default port 26379; IPv6 as ``[::1]:26379``).
* ``user``/``password`` authenticate to the Redis master (the app's ACL user), not to the sentinels.
* ``service_name`` is the name in ``sentinel monitor <service_name> ...``; ``db`` defaults to 0.
* options: ``sentinel_username`` and ``sentinel_password`` when the sentinels themselves require
  AUTH (``requirepass`` in sentinel.conf); ``min_other_sentinels`` (default 0) to ignore a sentinel
  that sees fewer peers than that (a partitioned one).

Example: ``redis+sentinel://rrr:s3cret@10.0.0.1:26379,10.0.0.2:26379,10.0.0.3:26379/rrr/0``.

Redis Cluster (Redis 7; the backplane then takes its cluster code paths, `rrr.backplane.cluster_presence`
and `rrr.backplane.cluster_subscriber`)::

    redis+cluster://[[user]:password@]host:port[,host:port...][/]      rediss+cluster://... (TLS)

* ``host:port`` pairs are startup nodes (any few; default port 6379): the client learns the rest
  of the cluster from them and follows ``MOVED`` and failovers.

Both kinds of client time out every call after ``timeout`` seconds and retry a failed
call once: a stalled Redis must never hang the event loop. Their pools are sized on
purpose (``max_connections``) and block for a free connection (up to ``timeout``)
instead of failing with "Too many connections" under a burst of requests. With Sentinel, a connection
that finds the old master gone (or demoted: READONLY) is dropped, and the next
connection asks the sentinels again, so the backplane's reconnect loop lands on the
new master after a failover.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote

import redis
import redis.asyncio as aioredis
import redis.sentinel
from redis.asyncio.retry import Retry
from redis.exceptions import ClusterDownError, MaxConnectionsError, SlotNotCoveredError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.asyncio.connection import BlockingConnectionPool
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialBackoff
from redis.retry import Retry as SyncRetry

from .outcome import note

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
DEFAULT_SENTINEL_PORT = 26379
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
DEFAULT_CLUSTER_PORT = 6379
_SENTINEL_OPTIONS = frozenset({"sentinel_username", "sentinel_password", "min_other_sentinels"})


@dataclass(frozen=True)
class SentinelURL:
    """A parsed ``redis+sentinel://`` URL."""

    sentinels: tuple[tuple[str, int], ...]
    service_name: str
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ssl: bool = False
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)
    min_other_sentinels: int = 0


def is_sentinel_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() in SENTINEL_SCHEMES


def _host_port(item: str, url: str, default_port: int = DEFAULT_SENTINEL_PORT) -> tuple[str, int]:
    item = item.strip()
    if item.startswith("["):  # [v6]:port
        host, sep, rest = item[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"bad sentinel address {item!r} in {url!r}")
        port_text = rest[1:]
    else:
        host, _, port_text = item.partition(":")
    if not host:
        raise ValueError(f"empty sentinel host in {url!r}")
    try:
        port = int(port_text) if port_text else default_port
    except ValueError:
        raise ValueError(f"bad sentinel port {port_text!r} in {url!r}") from None
    if not 0 < port < 65536:
        raise ValueError(f"bad sentinel port {port} in {url!r}")
    return host, port


def _credentials(netloc: str) -> tuple[str, str | None, str | None]:
    """``[[user]:password@]hosts`` -> hosts, user, password (URL-unquoted)."""
    userinfo, at, hosts = netloc.rpartition("@")
    if not at:
        return netloc, None, None
    if not userinfo:
        return hosts, None, None
    user, colon, pw = userinfo.partition(":")
    if not colon:  # redis://secret@host is commonly meant as a password, as redis-py reads it
        return hosts, None, unquote(user)
    return hosts, unquote(user) or None, unquote(pw)


def parse_sentinel_url(url: str) -> SentinelURL:
    """Parse ``redis+sentinel://[[user]:password@]h1:p1,h2:p2/service[/db][?opts]``; ValueError if malformed."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in SENTINEL_SCHEMES:
        raise ValueError(f"not a sentinel URL (want redis+sentinel://...): {url!r}")
    rest, _, query = rest.partition("?")
    rest = rest.split("#", 1)[0]
    netloc, _, path = rest.partition("/")
    hosts, username, password = _credentials(netloc)
    sentinels = tuple(_host_port(item, url) for item in hosts.split(",") if item.strip())
    if not sentinels:
        raise ValueError(f"no sentinel addresses in {url!r}")
    parts = [unquote(p) for p in path.split("/") if p]
    if not parts or len(parts) > 2:
        raise ValueError(f"sentinel URL needs /service_name[/db]: {url!r}")
    service = parts[0]
    try:
        db = int(parts[1]) if len(parts) == 2 else 0
    except ValueError:
        raise ValueError(f"bad db {parts[1]!r} in {url!r}") from None
    opts = dict(parse_qsl(query, keep_blank_values=True))
    unknown = set(opts) - _SENTINEL_OPTIONS - {"db"}
    if unknown:
        raise ValueError(f"unknown sentinel URL option(s) {sorted(unknown)} in {url!r}")
    if "db" in opts:
        db = int(opts["db"])
    return SentinelURL(
        sentinels=sentinels,
        service_name=service,
        db=db,
        username=username,
        password=password,
        ssl=scheme.lower() == "rediss+sentinel",
        sentinel_username=opts.get("sentinel_username") or None,
        sentinel_password=opts.get("sentinel_password") or None,
        min_other_sentinels=int(opts.get("min_other_sentinels", 0)),
    )


class SentinelRedis(aioredis.Redis):
    """The master client ``master_for`` returns, which also closes the sentinel connections."""

    # Not ``sentinel``: that name is the SENTINEL command method of every Redis client.
    sentinel_manager: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        try:
            await super().aclose(close_connection_pool)
        finally:
            if self.sentinel_manager is not None:
                await self.sentinel_manager.aclose()


class BlockingSentinelConnectionPool(SentinelConnectionPool, BlockingConnectionPool):
    """Sentinel's master discovery with the blocking pool's wait for a free connection."""


class NotingRetry(Retry):
    """redis-py's retry, which also notes each failed attempt for `rrr.backplane.outcome` (redis-py
    raises only the last one's error, and an earlier one may have run)."""

    async def call_with_retry(self, do: Any, fail: Any, is_retryable: Any = None,
                              with_failure_count: bool = False) -> Any:
        async def noted(error: Exception, *count: int) -> Any:
            note(error)
            return await fail(error, *count)

        return await super().call_with_retry(do, noted, is_retryable, with_failure_count)


class SyncNotingRetry(SyncRetry):
    """`NotingRetry` for the blocking clients (`make_sync_redis`)."""

    def call_with_retry(self, do: Any, fail: Any, is_retryable: Any = None, with_failure_count: bool = False) -> Any:
        def noted(error: Exception, *count: int) -> Any:
            note(error)
            return fail(error, *count)

        return super().call_with_retry(do, noted, is_retryable, with_failure_count)


def _retry(retries: int = 1) -> Retry:
    """One retry, on connection errors only: a command that timed out may still run when a
    stalled Redis resumes, and retrying it would deliver a PUBLISH twice."""
    return NotingRetry(ExponentialBackoff(cap=0.2, base=0.02), retries, supported_errors=(RedisConnectionError,))


def make_sentinel_redis(
    parsed: SentinelURL, timeout: float, max_connections: int = 32, retries: int = 1,
) -> SentinelRedis:
    """A client for the current master of ``parsed.service_name``, found through the sentinels."""
    sentinel_kwargs: dict[str, Any] = dict(
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        username=parsed.sentinel_username,
        password=parsed.sentinel_password,
        ssl=parsed.ssl,
    )
    sentinel = Sentinel(
        list(parsed.sentinels),
        min_other_sentinels=parsed.min_other_sentinels,
        sentinel_kwargs=sentinel_kwargs,
    )
    client = sentinel.master_for(
        parsed.service_name,
        redis_class=SentinelRedis,
        connection_pool_class=BlockingSentinelConnectionPool,
        max_connections=max_connections,
        timeout=timeout,
        db=parsed.db,
        username=parsed.username,
        password=parsed.password,
        ssl=parsed.ssl,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=_retry(retries),
        decode_responses=False,
        client_name="rrr",
    )
    client.sentinel_manager = sentinel
    return client


@dataclass(frozen=True)
class ClusterURL:
    """A parsed ``redis+cluster://`` URL."""

    nodes: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ssl: bool = False


def is_cluster_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() in CLUSTER_SCHEMES


def parse_cluster_url(url: str) -> ClusterURL:
    """Parse ``redis+cluster://[[user]:password@]h1:p1[,h2:p2...][/]``; ValueError if malformed."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in CLUSTER_SCHEMES:
        raise ValueError(f"not a cluster URL (want redis+cluster://...): {url!r}")
    rest = rest.split("#", 1)[0]
    rest, _, query = rest.partition("?")
    if query:
        raise ValueError(f"cluster URLs take no options: {url!r}")
    netloc, _, path = rest.partition("/")
    if path.strip("/") not in ("", "0"):
        raise ValueError(f"a cluster has only db 0: {url!r}")
    hosts, username, password = _credentials(netloc)
    nodes = tuple(_host_port(item, url, DEFAULT_CLUSTER_PORT) for item in hosts.split(",") if item.strip())
    if not nodes:
        raise ValueError(f"no cluster node addresses in {url!r}")
    return ClusterURL(nodes=nodes, username=username, password=password, ssl=scheme.lower() == "rediss+cluster")


class ClusterRedis(aioredis.RedisCluster):
    """redis-py's cluster client, retrying after a connection error or a topology change but never
    after a timeout: a command that timed out may still run, and a retried publish would be
    delivered twice (the same rule as `_retry`)."""

    ERRORS_ALLOW_RETRY = (RedisConnectionError, ClusterDownError, SlotNotCoveredError)  # type: ignore[assignment]

    #: How long a command waits for a free connection of its node (set by `make_cluster_redis`).
    pool_timeout = 0.0

    async def _execute_command(self, target_node: Any, *args: Any, **kwargs: Any) -> Any:
        """One attempt (on one node); a failed one is noted for `rrr.backplane.outcome`.

        redis-py's cluster nodes fail a command at once (``MaxConnectionsError``, with no message)
        when all their connections are busy; the classic and Sentinel pools wait for one. A burst
        (a drain's or a worker kill's sessions coming back at once, #27) must not fail calls that
        were never sent, so this waits too, up to ``pool_timeout``: nothing was sent, so asking again
        is safe."""
        deadline: float | None = None
        pause = 0.001
        while True:
            try:
                return await super()._execute_command(target_node, *args, **kwargs)
            except MaxConnectionsError as e:
                loop = asyncio.get_running_loop()
                deadline = loop.time() + self.pool_timeout if deadline is None else deadline
                if loop.time() + pause > deadline:
                    note(e)
                    raise MaxConnectionsError(
                        f"no free connection to {target_node.name} within {self.pool_timeout:g} s") from e
                await asyncio.sleep(pause)  # redis-py's node pool has no waiters to wake: look again soon
                pause = min(pause * 2, 0.025)
            except Exception as e:
                note(e)
                raise


def make_cluster_redis(
    parsed: ClusterURL, timeout: float, max_connections: int = 32, retries: int = 1,
) -> ClusterRedis:
    """A Redis Cluster client: routes each command by slot, follows ``MOVED`` and failovers.

    ``max_connections`` is per node. ``retries`` counts the cluster client's own attempts after a
    connection error or a topology change (it re-reads the slots first); 0 for pub/sub's topology.
    """
    from redis.asyncio.cluster import ClusterNode

    client = ClusterRedis(
        startup_nodes=[ClusterNode(h, p) for h, p in parsed.nodes],
        username=parsed.username,
        password=parsed.password,
        ssl=parsed.ssl,
        max_connections=max_connections,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), max(retries, 0) * 3),
        decode_responses=False,
        client_name="rrr",
    )
    client.pool_timeout = timeout
    return client


def make_node_redis(parsed: ClusterURL, host: str, port: int, timeout: float) -> aioredis.Redis:
    """A client for one node of a cluster (a pub/sub connection of its own): never retried, so a
    connection that broke is noticed, not silently replaced."""
    return aioredis.Redis(
        host=host, port=port, username=parsed.username, password=parsed.password, ssl=parsed.ssl,
        socket_timeout=timeout, socket_connect_timeout=timeout, retry=_retry(0), decode_responses=False,
        client_name="rrr", single_connection_client=False,
    )


def make_redis(url: str, timeout: float, max_connections: int = 32, retries: int = 1) -> Any:
    """A client whose every call gives up after ``timeout``: a stalled Redis must never hang the loop.

    At most ``max_connections`` at once; a caller beyond that waits up to ``timeout`` for one.
    ``retries=0`` for a pub/sub connection: one that reconnected by itself would have lost
    messages and announcements without anyone knowing.
    """
    if is_sentinel_url(url):
        return make_sentinel_redis(parse_sentinel_url(url), timeout, max_connections, retries)
    if is_cluster_url(url):
        return make_cluster_redis(parse_cluster_url(url), timeout, max_connections, retries)
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=_retry(retries),
        decode_responses=False,
        client_name="rrr",
    )
    return aioredis.Redis.from_pool(pool)


def make_sync_redis(url: str, timeout: float) -> Any:
    """A blocking client for backends (`rrr.client`), with the same URLs, timeouts and retry rule."""
    retry = SyncNotingRetry(ExponentialBackoff(cap=0.2, base=0.02), 1, supported_errors=(RedisConnectionError,))
    if is_sentinel_url(url):
        parsed = parse_sentinel_url(url)
        sentinel = redis.sentinel.Sentinel(
            list(parsed.sentinels),
            min_other_sentinels=parsed.min_other_sentinels,
            sentinel_kwargs=dict(
                socket_timeout=timeout, socket_connect_timeout=timeout, username=parsed.sentinel_username,
                password=parsed.sentinel_password, ssl=parsed.ssl,
            ),
        )
        return sentinel.master_for(
            parsed.service_name, db=parsed.db, username=parsed.username, password=parsed.password, ssl=parsed.ssl,
            socket_timeout=timeout, socket_connect_timeout=timeout, retry=retry, client_name="rrr-client",
        )
    if is_cluster_url(url):
        from redis.cluster import ClusterNode as SyncClusterNode, RedisCluster as SyncRedisCluster

        class SyncClusterRedis(SyncRedisCluster):
            ERRORS_ALLOW_RETRY = ClusterRedis.ERRORS_ALLOW_RETRY  # type: ignore[assignment]  # not after a timeout

            def _execute_command(self, target_node: Any, *args: Any, **kwargs: Any) -> Any:
                try:
                    return super()._execute_command(target_node, *args, **kwargs)
                except Exception as e:
                    note(e)  # one failed attempt, for `rrr.backplane.outcome`
                    raise

        c = parse_cluster_url(url)
        return SyncClusterRedis(
            startup_nodes=[SyncClusterNode(h, p) for h, p in c.nodes], username=c.username, password=c.password,
            ssl=c.ssl, socket_timeout=timeout, socket_connect_timeout=timeout, client_name="rrr-client",
        )
    return redis.Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=retry, client_name="rrr-client",
    )


async def renew_connections(client: Any) -> None:
    """Start every connection of ``client`` afresh, without cutting a command another task has in
    flight: the free ones close now, those in use when they are released (redis-py's reconnect
    mark). Closing those too (``disconnect()``) cut the commands other tasks were waiting on, which
    failed in turn and reset again (the soak, #27)."""
    if isinstance(client, aioredis.RedisCluster):
        for node in client.get_nodes():
            node.update_active_connections_for_reconnect()
            await node.disconnect_free_connections()
        return
    pool = client.connection_pool
    await pool.update_active_connections_for_reconnect()
    await pool.disconnect(inuse_connections=False)
