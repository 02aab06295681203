"""Redis bytes per anonymous socket at its caps: ``python -m bench.redis_cost``.

Before the caps, one socket could subscribe one room under 1,000 sub ids, and 100 sockets x
1,000 rooms made 100,000 Redis keys. This opens ``--sockets`` sockets from loopback to one real
``app.py`` on a real ``redis-server`` (both started here, both stopped at the end), and has every
socket do the worst an anonymous client may: subscribe as many *new* rooms as the caps allow
(distinct rooms cost Redis a presence hash and two pub/sub channels each; more tabs of a room
cost it nothing more), and stop once the process refuses new rooms (``too_many_rooms``): from
then on no subscription can cost Redis another byte. Each socket paces itself under
``--message-rate`` so the rate limit does not close it. Then it reads ``INFO memory
used_memory``, ``DBSIZE`` and the pub/sub channel count against the idle baseline, and prints
the bytes per socket. Bounded in sockets and in time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
from tornado.websocket import WebSocketClientConnection, websocket_connect

from bench.machine import free_port
from bench.servers import start_app
from rrr.backplane.embedded import EmbeddedRedis


def redis_usage(r: redis.Redis) -> dict[str, int]:
    return {
        "used_memory": int(r.info("memory")["used_memory"]),
        "keys": int(r.dbsize()),
        "channels": len(r.pubsub_channels("rrr:*")),
    }


async def attacker(
    url: str, index: int, subs: int, rate: float, burst: int, deadline: float,
) -> tuple[dict[str, int], WebSocketClientConnection]:
    """One socket subscribing ``subs`` new rooms as fast as --message-rate lets it; its tally and
    the socket, left open so its rooms are still held when Redis is measured."""
    conn: WebSocketClientConnection = await websocket_connect(url)
    tally = {"accepted": 0, "refused": 0, "closed": 0, "sent": 0}
    replies = 0

    async def read() -> None:
        nonlocal replies
        while True:
            raw = await conn.read_message()
            if raw is None:
                tally["closed"] = 1
                return
            frame = json.loads(raw)
            if frame["type"] == "error":
                tally["refused"] += 1
                replies += 1
                if frame["code"] == "too_many_rooms":
                    full.set()
            elif frame["type"] == "connection_message" and frame["room"] not in seen:
                seen.add(frame["room"])
                tally["accepted"] += 1
                replies += 1

    seen: set[str] = set()
    full = asyncio.Event()  # the process holds --max-rooms: no new room can cost Redis anything now
    sent = 0
    reader = asyncio.ensure_future(read())
    start = time.monotonic()
    for j in range(subs):
        # Stay under the token bucket: the burst at once, then a little under the rate.
        due = start + max(0, j - burst + 10) / (rate * 0.9)
        if due > time.monotonic():
            await asyncio.sleep(due - time.monotonic())
        if time.monotonic() > deadline or reader.done() or full.is_set():
            break
        await conn.write_message(json.dumps({"type": "subscribe", "room": f"a{index}-{j}", "sub": "t"}))
        sent += 1
    while replies < sent and not reader.done() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    tally["sent"] = sent
    return tally, conn


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    server = EmbeddedRedis(port=free_port()).start()
    r = redis.Redis.from_url(server.url)
    port = free_port()
    work = Path(tempfile.mkdtemp(prefix="rrr-redis-cost-"))
    options = {"max_rooms": args.max_rooms, "max_subscriptions": args.subs, "message_rate": args.rate,
               "message_burst": args.burst}
    app = start_app(server.url, port, work / "app.log", options)
    try:
        base = redis_usage(r)
        deadline = time.monotonic() + args.timeout
        url = f"ws://127.0.0.1:{port}/ws/"
        t0 = time.monotonic()
        results = await asyncio.gather(
            *(attacker(url, i, args.subs, args.rate, args.burst, deadline) for i in range(args.sockets))
        )
        tallies = [t for t, _ in results]
        accepted = sum(t["accepted"] for t in tallies)
        # Presence writes are batched per --count-interval: wait until Redis holds every accepted room.
        while time.monotonic() < deadline:
            now = redis_usage(r)
            if now["channels"] - base["channels"] >= 2 * min(accepted, args.max_rooms):
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)
        after = redis_usage(r)
        elapsed = time.monotonic() - t0
        for _, conn in results:
            conn.close()
    finally:
        app.terminate()
        app.wait(15)
        r.close()
        server.close()
    delta = after["used_memory"] - base["used_memory"]
    rooms = after["channels"] - base["channels"]
    return {
        "sockets": args.sockets,
        "subscribe_frames": sum(t["sent"] for t in tallies),
        "accepted": accepted,
        "refused": sum(t["refused"] for t in tallies),
        "closed_by_server": sum(t["closed"] for t in tallies),
        "keys_added": after["keys"] - base["keys"],
        "channels_added": rooms,
        "used_memory_delta": delta,
        "bytes_per_socket": delta / args.sockets,
        "bytes_per_room": delta / max(1, rooms // 2),
        "bytes_per_socket_without_max_rooms": delta / max(1, rooms // 2) * args.subs,
        "seconds": elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sockets", type=int, default=200, help="attacking sockets (default 200)")
    parser.add_argument("--subs", type=int, default=1000, help="--max-subscriptions, tried per socket (1000)")
    parser.add_argument("--max-rooms", type=int, default=10000, help="the app's --max-rooms (default 10000)")
    parser.add_argument("--rate", type=float, default=50.0, help="the app's --message-rate (50)")
    parser.add_argument("--burst", type=int, default=100, help="the app's --message-burst (100)")
    parser.add_argument("--timeout", type=float, default=90.0, help="give up after this many seconds (90)")
    args = parser.parse_args()
    if args.sockets > 2000 or args.subs > 5000:
        parser.error("bounded on purpose: at most 2000 sockets and 5000 subscriptions each")
    result = asyncio.run(measure(args))
    for key, value in result.items():
        print(f"{key:>36}: {value:,.1f}" if isinstance(value, float) else f"{key:>36}: {value:,}")


if __name__ == "__main__":
    main()
