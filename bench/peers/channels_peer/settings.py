"""Minimal Django settings for the Channels peer.

Only what Channels needs: no database, no sessions, no auth middleware, no
debug (DEBUG keeps every query and slows everything). The channel layer is the
Redis one the talk used, with capacity raised so a 10k-member group or a join
storm does not silently drop messages (the default capacity is 100 per channel
key, and channels_redis keys all of one process's channels together).

``socket_timeout: None`` is the documented fix every Channels user on redis-py
8 needs: its new 5 s default read timeout kills the layer's blocking BZPOPMIN,
which tears down every idle consumer (channels_redis issue #422).
"""

from __future__ import annotations

import os

SECRET_KEY = "bench-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = ["daphne", "channels"]
ROOT_URLCONF = "bench.peers.channels_peer.urls"
ASGI_APPLICATION = "bench.peers.channels_peer.asgi.application"
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True
LOGGING_CONFIG = None

REDIS_URL = os.environ.get("PEER_REDIS_URL", "redis://127.0.0.1:6379/0")
#: Messages one channel key may hold. All of a process's consumers share one
#: key, so this must exceed (members in the process) x (messages in flight).
LAYER_CAPACITY = int(os.environ.get("PEER_LAYER_CAPACITY", "1000000"))
#: Redis connections the layer's pool may open (each is an fd next to the sockets).
LAYER_POOL_SIZE = int(os.environ.get("PEER_POOL_SIZE", "1000"))

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            "hosts": [{"address": REDIS_URL, "max_connections": LAYER_POOL_SIZE, "socket_timeout": None}],
            "capacity": LAYER_CAPACITY,
            "expiry": 60,
            "group_expiry": 86400,
        },
    }
}
