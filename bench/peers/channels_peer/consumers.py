"""The talk's ``CountConsumer``, filled in the way its slides sketch it.

On connect: INCR the room's counter, SET its ``updated`` time, join the group,
``group_send`` a ``connection_message`` with ``connections`` and ``updated``,
accept. On disconnect: DECR, leave, ``group_send`` again. The one change from
the slides is what any competent user does first: the slides call the
*blocking* ``redis.Redis`` inside an async consumer, which would stall daphne's
event loop on every join; here it is ``redis.asyncio`` with one shared pool,
and INCR + SET go in one MULTI so ``connections`` and ``updated`` match.
Counters are per room (the slides had one global key) since rooms exist.

``RelayConsumer`` is the pub/sub half for the fan-out scenario: it only joins
the group; a backend process publishes with ``channel_layer.group_send``.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis.asyncio as aioredis
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

_redis: aioredis.Redis | None = None


def redis_client() -> aioredis.Redis:
    """One pooled async client per process (created lazily inside daphne's loop)."""
    global _redis
    if _redis is None:
        _redis = aioredis.Redis.from_url(settings.REDIS_URL, max_connections=settings.LAYER_POOL_SIZE)
    return _redis


def counter_key(room: str) -> str:
    return f"peer:connections:{room}"


def updated_key(room: str) -> str:
    return f"peer:updated:{room}"


async def bump(room: str, delta: int) -> tuple[int, float]:
    """INCR/DECR the room's counter and stamp ``updated``, atomically; return both."""
    now = time.time()
    pipe = redis_client().pipeline(transaction=True)
    pipe.incrby(counter_key(room), delta)
    pipe.set(updated_key(room), now)
    connections, _ = await pipe.execute()
    return int(connections), now


class CountConsumer(AsyncWebsocketConsumer):
    """``/ws/count/<room>/``: the talk's live connection counter."""

    room_name: str
    room_group_name: str

    async def connect(self) -> None:
        self.room_name = self.scope["url_route"]["kwargs"]["room_name"]
        self.room_group_name = f"count_{self.room_name}"
        connections, updated = await bump(self.room_name, +1)
        await self.channel_layer.group_add(self.room_group_name, self.channel_name)
        await self.channel_layer.group_send(
            self.room_group_name,
            {"type": "connection_message", "updated": updated, "connections": connections},
        )
        await self.accept()

    async def disconnect(self, close_code: int) -> None:
        connections, updated = await bump(self.room_name, -1)
        await self.channel_layer.group_discard(self.room_group_name, self.channel_name)
        await self.channel_layer.group_send(
            self.room_group_name,
            {"type": "connection_message", "updated": updated, "connections": connections},
        )

    async def connection_message(self, event: dict[str, Any]) -> None:
        await self.send(
            text_data=json.dumps(
                {
                    "type": "connection_message",
                    "room": self.room_name,
                    "connections": event["connections"],
                    "updated": event["updated"],
                }
            )
        )


class RelayConsumer(AsyncWebsocketConsumer):
    """``/ws/relay/<room>/``: group membership only, for published messages."""

    room_name: str
    room_group_name: str

    async def connect(self) -> None:
        self.room_name = self.scope["url_route"]["kwargs"]["room_name"]
        self.room_group_name = relay_group(self.room_name)
        await self.channel_layer.group_add(self.room_group_name, self.channel_name)
        await self.accept()

    async def disconnect(self, close_code: int) -> None:
        await self.channel_layer.group_discard(self.room_group_name, self.channel_name)

    async def room_message(self, event: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps({"type": "message", "room": self.room_name, "data": event["data"]}))


def relay_group(room: str) -> str:
    """The group a backend ``group_send``s to; shared with the benchmark's publisher."""
    return f"relay_{room}"
