"""A presence room of N users joining at once (issue 24): real WebSocket clients in driver
processes, each client keeping what the browser library's onPresence keeps of the room.

Shared by ``tests/test_presence_storm.py`` (converges, bounded frames and server memory) and
``bench/identity_cost.py --storm`` (how long, how many bytes, how much memory).

Each client models ``static/js/protocol.js``'s view: its first page; when more members followed
that page, only the members up to its last one (``until``), else everyone; diffs applied within
that range; the room's total from the first page, then from the counts' ``users`` (and, for a
view that holds everyone, its own size). A client has converged when its total is N and its view
holds exactly the members of its range. Every 50th client keeps its view member by member and
must hold exactly the right users; the others count (a frame is parsed once per driver: each
round's frames are the same bytes to every client).
"""

from __future__ import annotations

import asyncio
import bisect
import json
import multiprocessing
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import jwt
from tornado.httpclient import HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

SECRET = "storm-secret-of-a-decent-length-for-hs256"
ROOM = "presence-storm"


def claims(user: str) -> dict[str, Any]:
    return {"sub": user, "exp": time.time() + 3600, "rooms": [ROOM], "info": {"name": f"User {user}"}}


def server_options() -> dict[str, Any]:
    """What the server under the storm is started with: the member list's defaults (pages of
    1,000, the default send buffer); no frame rate (each client sends two frames at once, and
    4 drivers' worth of them arrive as one burst per process) and no pings (a driver busy with
    2,500 clients may answer one late, which would measure the driver)."""
    return {"token_secret": SECRET, "message_rate": 0, "ping_interval": 0}


@dataclass
class Result:
    """One driver's clients: how many converged, the presence frames and bytes they received, the
    most members any one frame carried, what the exactly kept views got wrong, errors by code."""

    converged: int
    clients: int
    at: float
    frames: int
    wire_bytes: int
    largest: int
    wrong: list[str]
    errors: dict[str, int]


class _View:
    __slots__ = ("until", "size", "total", "first", "exact")

    def __init__(self, exact: bool) -> None:
        self.until: str | None = None
        self.size = 0
        self.total = -1
        self.first = False
        self.exact: dict[str, Any] | None = {} if exact else None


class _Parsed:
    """A frame parsed once per driver: a page's users (sorted) or a diff's joins and leaves."""

    __slots__ = ("users", "leaves", "total", "more", "entries")

    def __init__(self, text: str) -> None:
        f = json.loads(text)
        if f["type"] == "presence":
            self.users = sorted(f["members"])
            self.leaves: list[str] = []
            self.total = int(f["total"])
            self.more = bool(f["more"])
        else:
            self.users = sorted(f["joins"])
            self.leaves = sorted(f["leaves"])
            self.total = -1
            self.more = False
        self.entries = len(self.users) + len(self.leaves)


def _wire_size(text: str) -> int:
    n = len(text.encode("utf-8")) if not text.isascii() else len(text)
    return n + (2 if n < 126 else 4 if n <= 0xFFFF else 10)


async def _drive(port: int, users: list[str], everyone: list[str], ready: Any, go: Any, out: Any, finish: Any,
                 deadline_s: float) -> None:
    gate = asyncio.Semaphore(50)  # the handshakes are not the storm: paced, so the backlog never overflows

    async def opened() -> WebSocketClientConnection:
        async with gate:
            return await websocket_connect(
                HTTPRequest(f"ws://127.0.0.1:{port}/ws/", connect_timeout=120, request_timeout=120),
            )

    sockets = list(await asyncio.gather(*(opened() for _ in users)))
    n = len(everyone)
    views = [_View(exact=int(u) % 50 == 0) for u in users]
    cache: OrderedDict[tuple[int, str, str], _Parsed] = OrderedDict()
    stats = {"frames": 0, "bytes": 0, "largest": 0}
    errors: dict[str, int] = {}

    def parsed(text: str) -> _Parsed:
        key = (len(text), text[:200], text[-200:])
        p = cache.get(key)
        if p is None:
            p = cache[key] = _Parsed(text)
            if len(cache) > 512:
                cache.popitem(last=False)
        return p

    def on_frame(v: _View, text: str) -> None:
        if text.startswith('{"type":"presence",') or text.startswith('{"type":"presence_diff",'):
            stats["frames"] += 1
            stats["bytes"] += _wire_size(text)
            p = parsed(text)
            stats["largest"] = max(stats["largest"], p.entries)
            if text.startswith('{"type":"presence",'):
                v.first = True
                v.until = p.users[-1] if p.more and p.users else None
                v.size = len(p.users)
                v.total = p.total
                if v.exact is not None:
                    v.exact = dict.fromkeys(p.users)
                return
            if not v.first:
                return  # before its first page a view has nothing to apply a diff to
            if v.until is None:
                joins, leaves = p.users, p.leaves
            else:
                joins = p.users[: bisect.bisect_right(p.users, v.until)]
                leaves = p.leaves[: bisect.bisect_right(p.leaves, v.until)]
            if v.exact is not None:
                for u in leaves:
                    v.exact.pop(u, None)
                v.exact.update(dict.fromkeys(joins))
                v.size = len(v.exact)
            else:
                v.size += len(joins) - len(leaves)  # a storm only joins, each user once
            if v.until is None:
                v.total = v.size
        elif text.startswith('{"type":"connection_message",'):
            stats["bytes"] += _wire_size(text)
            users_now = json.loads(text).get("users")
            if isinstance(users_now, int) and v.first:
                v.total = users_now
        elif text.startswith('{"type":"error",'):
            code = json.loads(text)["code"]
            errors[code] = errors.get(code, 0) + 1

    async def read(v: _View, ws: WebSocketClientConnection) -> None:
        while (raw := await ws.read_message()) is not None:
            on_frame(v, raw if isinstance(raw, str) else raw.decode())

    def expected(v: _View) -> int:
        return n if v.until is None else bisect.bisect_right(everyone, v.until)

    def converged(v: _View) -> bool:
        return v.first and v.total == n and v.size == expected(v)

    readers = [asyncio.ensure_future(read(v, ws)) for v, ws in zip(views, sockets)]
    ready.put(len(sockets))
    await asyncio.to_thread(go.wait)
    for user, ws in zip(users, sockets):
        await ws.write_message(json.dumps({"type": "auth", "token": jwt.encode(claims(user), SECRET)}))
        await ws.write_message(json.dumps({"type": "subscribe", "room": ROOM, "sub": "t"}))
    deadline = time.monotonic() + deadline_s
    while not all(converged(v) for v in views):
        if time.monotonic() > deadline or all(r.done() for r in readers):
            break
        await asyncio.sleep(0.1)
    at = time.time()
    wrong = []
    for user, v in zip(users, views):
        if v.exact is None:
            continue
        want = set(everyone if v.until is None else everyone[: bisect.bisect_right(everyone, v.until)])
        if set(v.exact) != want:
            wrong.append(f"{user}: {len(want - set(v.exact))} missing, {len(set(v.exact) - want)} extra")
    out.put(Result(sum(converged(v) for v in views), len(views), at, stats["frames"], stats["bytes"],
                   stats["largest"], wrong[:5], errors))
    await asyncio.to_thread(finish.wait)  # leaving before every driver is done would be leaves in its room
    for r in readers:
        r.cancel()
    for ws in sockets:
        ws.close()


def _driver(port: int, users: list[str], everyone: list[str], ready: Any, go: Any, out: Any, finish: Any,
            deadline_s: float) -> None:
    asyncio.run(_drive(port, users, everyone, ready, go, out, finish, deadline_s))


@dataclass
class Storm:
    members: int
    seconds: float
    converged: int
    frames: int
    wire_bytes: int
    largest: int
    wrong: list[str]
    errors: dict[str, int]


def storm(port: int, n: int, drivers: int = 4, deadline_s: float = 600.0) -> Storm:
    """``n`` users (ids "0".."n-1", one socket each, spread over ``drivers`` processes) join the
    presence room on the server at ``port`` at once; returns when every driver is done (all its
    clients converged, or ``deadline_s`` passed)."""
    everyone = sorted(str(i) for i in range(n))
    ctx = multiprocessing.get_context("spawn")
    ready, go, out, finish = ctx.Queue(), ctx.Event(), ctx.Queue(), ctx.Event()
    share = -(-n // drivers)
    procs = [
        ctx.Process(target=_driver, args=(port, [str(u) for u in range(i, min(n, i + share))], everyone,
                                          ready, go, out, finish, deadline_s))
        for i in range(0, n, share)
    ]
    try:
        for p in procs:
            p.start()
        connected = sum(ready.get(timeout=600) for _ in procs)  # their handshakes are not the storm
        assert connected == n, f"{connected} of {n} sockets connected"
        started = time.time()
        go.set()
        results: list[Result] = [out.get(timeout=deadline_s + 300) for _ in procs]
        finish.set()
        errors: dict[str, int] = {}
        for r in results:
            for code, k in r.errors.items():
                errors[code] = errors.get(code, 0) + k
        return Storm(
            members=n, seconds=max(r.at for r in results) - started, converged=sum(r.converged for r in results),
            frames=sum(r.frames for r in results), wire_bytes=sum(r.wire_bytes for r in results),
            largest=max(r.largest for r in results), wrong=[w for r in results for w in r.wrong], errors=errors,
        )
    finally:
        finish.set()
        for p in procs:
            if p.pid is None:
                continue  # never started
            p.join(30)
            if p.is_alive():
                p.kill()
                p.join(5)


def peak_rss(pid: int) -> int:
    """VmHWM of ``pid``: the most resident memory it has held since it started, in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0
