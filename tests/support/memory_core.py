"""The core of one rrr process, assembled as `rrr.service.Service` assembles it, on the memory
backplane (`support.memory_backplane`), with in-memory sockets (`support.memory_socket`): what the
unit tests drive. Several nodes on one `MemoryRedis` are processes sharing one Redis.

Nothing here replaces a part of the core: a node is a real `Service` (its hub, delivery, counts,
members, writer and supervised loops) and each socket has a real `Session`, built with the caps
and the token verifier a test gives, as ``app.make_app`` builds them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import jwt

from rrr.auth import Verifier
from rrr.hub import Hub
from rrr.limits import AddressLimits, Limits
from rrr.metrics import Metrics
from rrr.protocol import Since
from rrr.service import Service, Settings
from rrr.session import Session, Shared
from support.memory_backplane import MemoryHistory, MemoryPresence, MemoryRedis, MemorySubscriber
from support.memory_socket import RecordingSocket

SECRET = "unit-test-secret-of-a-decent-length"

#: Test-sized intervals: a count or a write goes within a few hundredths of a second.
SETTINGS = Settings(
    redis_url="memory://", count_interval=0.02, sweep_interval=0.05, redis_timeout=1.0, backoff_cap=0.05,
)


def token(sub: str, *, rooms: list[str] | None = None, ttl: float = 600, iat: float | None = None,
          **claims: Any) -> str:
    """An HS256 token the node's verifier accepts (``exp`` may be a fraction of a second away)."""
    now = time.time()
    body: dict[str, Any] = {"sub": sub, "iat": now if iat is None else iat, "exp": now + ttl, "rooms": rooms or []}
    body.update(claims)
    return jwt.encode(body, SECRET, algorithm="HS256")


async def eventually(pred: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Wait until ``pred()`` is truthy, looking every few milliseconds; fail after a generous ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.005)


async def quiet(seconds: float = 0.15) -> None:
    """Let the loop run for a while: what must not happen has had every chance to."""
    await asyncio.sleep(seconds)


@dataclass
class Node:
    """One process: a `Service` on the memory backplane, and its sockets."""

    redis: MemoryRedis
    service: Service
    shared: Shared
    sockets: list[RecordingSocket] = field(default_factory=list)

    @property
    def hub(self) -> Hub:
        return self.service.hub

    @property
    def pid(self) -> str:
        return self.service.process_id

    @property
    def presence(self) -> MemoryPresence:
        assert isinstance(self.service.presence, MemoryPresence)
        return self.service.presence

    @property
    def subscriber(self) -> MemorySubscriber:
        assert isinstance(self.service.subscriber, MemorySubscriber)
        return self.service.subscriber

    @property
    def history(self) -> MemoryHistory:
        assert isinstance(self.service.history, MemoryHistory)
        return self.service.history

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        value = self.service.metrics.registry.get_sample_value(name, labels or {})
        return 0.0 if value is None else value

    def socket(
        self, room: str | None = None, *, ip: str = "192.0.2.1", token: str | None = None, since: Since | None = None,
        name: str = "", bulk_limit: int = 100 * 65536,
    ) -> RecordingSocket:
        """A socket opened on this process: ``/ws/`` (no ``room``) or the talk's ``/ws/count/<room>/``
        (with ``?token=`` and ``?since=``), opened as the handler opens it."""
        sock = RecordingSocket(name or f"s{len(self.sockets) + 1}", bulk_limit=bulk_limit)
        self.sockets.append(sock)
        if self.hub.closing:
            sock.close(1001, "server shutting down")
            return sock
        identity = self.shared.verifier.verify(token) if token is not None else None
        self.shared.addresses.socket_opened(ip)

        def on_close() -> None:
            if sock.session is not None:
                sock.session.close()
                sock.session = None
            self.shared.addresses.socket_closed(ip)

        sock.on_close = on_close
        sock.session = Session(sock, self.shared, ip, room=room, identity=identity, since=since)
        return sock

    async def authed(self, user: str, rooms: list[str], **claims: Any) -> RecordingSocket:
        """A ``/ws/`` socket authenticated as ``user`` with grants to ``rooms``."""
        sock = self.socket(name=user)
        await sock.send(type="auth", token=token(user, rooms=rooms, **claims))
        assert sock.of_type("authenticated"), sock.frames
        return sock

    def follows(self, room: str) -> bool:
        """Redis holds this process's subscription to every channel of ``room``."""
        return self.redis.follows(self.pid, room)

    def row(self, room: str) -> tuple[int, int] | None:
        """This process's row in ``room`` as Redis holds it."""
        return self.redis.rows(room).get(self.pid)

    async def kill(self) -> None:
        """``kill -9``: nothing of it runs any more and nothing is removed (its lease expires); its
        sockets see their connection drop."""
        s = self.service
        s.hub.close()
        s.writer.close()
        s.delivery.close()
        s.counts.close()
        s.members.close()
        await s.subscriber.stop()
        await s.supervisor.close()
        for sock in self.sockets:
            sock.lost()

    async def stop(self) -> None:
        """SIGTERM: `Service.shutdown`."""
        await self.service.shutdown()


NodeFactory = Callable[..., Awaitable[Node]]


async def start_node(
    redis: MemoryRedis, *, limits: Limits | None = None, addresses: AddressLimits | None = None,
    grace: float = 0.3, **settings: Any,
) -> Node:
    """A started process on ``redis`` (`SETTINGS`, with ``settings`` replacing any of them); a member's
    grace of ``grace`` seconds (the service's is 2 s)."""
    s = replace(SETTINGS, **settings)
    metrics = Metrics()
    backplane = redis.backplane(
        metrics, ttl=s.presence_ttl, history_size=s.history_size, history_ttl=s.history_ttl,
        max_message=s.max_message_size,
    )
    service = Service(s, metrics, backplane=backplane)
    service.members.grace = grace
    shared = Shared(
        hub=service.hub, limits=limits or Limits(), addresses=addresses or AddressLimits(),
        verifier=Verifier(secret=SECRET), metrics=metrics, history=service.history, reads=service.presence,
    )
    await service.start()
    return Node(redis, service, shared)
