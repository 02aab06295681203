"""Peer (b): python-socketio on aiohttp with its ``AsyncRedisManager``.

The same job as rrr and the Channels peer, written the way the python-socketio
docs show it: the client passes its room in the connect ``auth``; the server
``enter_room``s it, INCR/DECRs a Redis counter and emits ``connection_message``
to the room. ``AsyncRedisManager`` relays every emit through Redis pub/sub so
several processes share rooms, and a backend publishes with a write-only
manager (``emit("message", ..., room=...)``). ``auth["count"] = False`` joins a
room without the counter, for the fan-out scenario's pure relay.

Run: ``python -m bench.peers.socketio_peer --port P --redis-url URL``.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import redis.asyncio as aioredis
import socketio
from aiohttp import web


def counter_key(room: str) -> str:
    return f"peer:connections:{room}"


def updated_key(room: str) -> str:
    return f"peer:updated:{room}"


def build(redis_url: str, pool_size: int) -> web.Application:
    """The aiohttp app with the Socket.IO server attached."""
    sio = socketio.AsyncServer(
        async_mode="aiohttp",
        # redis-py 8 caps a pool far below a join storm's concurrent emits ("Too many connections").
        client_manager=socketio.AsyncRedisManager(redis_url, redis_options={"max_connections": pool_size}),
        cors_allowed_origins="*",
        # Large rooms: do not let a long event-loop stall count as a dead client.
        ping_interval=25,
        ping_timeout=60,
        logger=False,
        engineio_logger=False,
    )
    counter = aioredis.Redis.from_url(redis_url, max_connections=pool_size)
    # sid -> (room, counted); kept here rather than in the Socket.IO session to avoid its extra await.
    joined: dict[str, tuple[str, bool]] = {}

    async def bump(room: str, delta: int) -> dict[str, Any]:
        now = time.time()
        pipe = counter.pipeline(transaction=True)
        pipe.incrby(counter_key(room), delta)
        pipe.set(updated_key(room), now)
        connections, _ = await pipe.execute()
        return {"type": "connection_message", "room": room, "connections": int(connections), "updated": now}

    @sio.event
    async def connect(sid: str, environ: dict[str, Any], auth: dict[str, Any] | None) -> bool:
        room = (auth or {}).get("room")
        if not isinstance(room, str) or not room:
            return False
        counted = bool((auth or {}).get("count", True))
        await sio.enter_room(sid, room)
        joined[sid] = (room, counted)
        if counted:
            await sio.emit("connection_message", await bump(room, +1), room=room)
        return True

    @sio.event
    async def disconnect(sid: str, reason: str | None = None) -> None:
        room, counted = joined.pop(sid, ("", False))
        if counted:
            await sio.emit("connection_message", await bump(room, -1), room=room)

    app = web.Application()
    sio.attach(app)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--pool-size", type=int, default=1000)
    parser.add_argument("--backlog", type=int, default=1024)
    args = parser.parse_args()
    web.run_app(
        build(args.redis_url, args.pool_size),
        host=args.host,
        port=args.port,
        backlog=args.backlog,
        access_log=None,
        print=None,
    )


if __name__ == "__main__":
    main()
