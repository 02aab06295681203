"""Build the Redis client from ``--redis-url``."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff


def make_redis(url: str, timeout: float) -> aioredis.Redis:
    """A client whose every call gives up after ``timeout``: a stalled Redis must never hang the loop."""
    return aioredis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 1),
        decode_responses=False,
        client_name="rrr",
    )
