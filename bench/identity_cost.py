"""What identity costs: token verification per subscribe, and Redis bytes per presence member.

    python -m bench.identity_cost [--members 500] [--verifications 2000]

* Verification: ``Verifier.verify`` on HS256, RS256 and ES256 tokens minted with PyJWT, in this
  process, per call (what a socket's ``auth`` costs the server; a subscribe then costs a set
  lookup, no crypto).
* Members: one real ``app.py`` on a real ``redis-server`` (both started here), ``--members``
  sockets from loopback, each authenticated as a different user with a small ``info``, all in one
  presence room; ``INFO memory used_memory`` against the baseline, per member. Bounded in sockets
  and time; only loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

import jwt
import redis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from tornado.httpclient import HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from bench.machine import free_port
from bench.servers import start_app
from rrr.backplane import keys
from rrr.auth import Verifier
from rrr.backplane.embedded import EmbeddedRedis

SECRET = "bench-secret-of-a-decent-length-for-hs256"
ROOM = "presence-bench"


def claims(sub: str) -> dict[str, Any]:
    return {"sub": sub, "exp": time.time() + 3600, "rooms": [ROOM], "info": {"name": f"User {sub}"}}


def verification_costs(n: int) -> dict[str, float]:
    """Microseconds per verify, by algorithm."""
    rsa_key: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key: Any = ec.generate_private_key(ec.SECP256R1())

    def pem(key: Any) -> str:
        return key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()

    cases = {
        "HS256": (Verifier(secret=SECRET), jwt.encode(claims("1"), SECRET, algorithm="HS256")),
        "RS256": (Verifier(public_key=pem(rsa_key)), jwt.encode(claims("1"), rsa_key, algorithm="RS256")),
        "ES256": (Verifier(public_key=pem(ec_key)), jwt.encode(claims("1"), ec_key, algorithm="ES256")),
    }
    return {
        alg: timeit.timeit(lambda v=v, t=t: v.verify(t), number=n) / n * 1e6  # type: ignore[misc]
        for alg, (v, t) in cases.items()
    }


async def member_bytes(n: int) -> dict[str, float]:
    server = EmbeddedRedis(port=free_port()).start()
    port = free_port()
    log = Path(tempfile.mkdtemp(prefix="rrr-identity-")) / "app.log"
    app = start_app(server.url, port, log, {"token_secret": SECRET, "max_sockets_per_ip": 0})
    r = redis.Redis.from_url(server.url)
    sockets: list[WebSocketClientConnection] = []
    try:
        before = int(r.info("memory")["used_memory"])
        for i in range(n):
            ws = await websocket_connect(f"ws://127.0.0.1:{port}/ws/")
            sockets.append(ws)
            await ws.write_message(json.dumps({"type": "auth", "token": jwt.encode(claims(str(i)), SECRET)}))
            await ws.write_message(json.dumps({"type": "subscribe", "room": ROOM, "sub": "t"}))
        deadline = time.monotonic() + 120
        while r.hlen(keys.members(ROOM)) < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {r.hlen(keys.members(ROOM))} of {n} members written")
            await asyncio.sleep(0.2)
        after = int(r.info("memory")["used_memory"])
        return {"members": n, "bytes_per_member": (after - before) / n,
                "members_hash_bytes": float(r.memory_usage(keys.members(ROOM)) or 0) / n}
    finally:
        for ws in sockets:
            ws.close()
        app.terminate()
        app.wait(10)
        r.close()
        server.close()


async def _drive(port: int, users: range, n: int, ready: Any, go: Any, out: Any, finish: Any) -> None:
    """One driver process: its share of the users connect, wait for ``go``, then each
    authenticates and subscribes; report when every one of them holds the whole list of ``n``.

    A whole list of a big room is counted, not parsed (``n`` lists of ``n`` members would be N² of
    JSON to decode and hold in the drivers, which would measure the drivers): each member entry has
    exactly one ``{"info":``. Every 50th client parses and keeps its view exactly, as a check."""
    gate = asyncio.Semaphore(50)  # the handshakes are not the storm: paced, so the backlog never overflows

    async def opened() -> WebSocketClientConnection:
        async with gate:
            return await websocket_connect(
                HTTPRequest(f"ws://127.0.0.1:{port}/ws/", connect_timeout=60, request_timeout=60),
            )

    sockets = list(await asyncio.gather(*(opened() for _ in users)))
    exact = {i for i in range(len(sockets)) if (users[i] % 50) == 0}
    views: dict[int, dict[str, Any]] = {i: {} for i in exact}
    sizes = [0] * len(sockets)
    frames = [0]
    errors: dict[str, int] = {}

    async def read(i: int, ws: WebSocketClientConnection) -> None:
        while (raw := await ws.read_message()) is not None:
            text = raw if isinstance(raw, str) else raw.decode()
            if text.startswith('{"type":"presence",'):
                frames[0] += 1
                if i in exact:
                    views[i] = dict(json.loads(text)["members"])
                    sizes[i] = len(views[i])
                else:
                    sizes[i] = text.count('{"info":')
            elif text.startswith('{"type":"error",'):
                code = json.loads(text)["code"]
                errors[code] = errors.get(code, 0) + 1
            elif text.startswith('{"type":"presence_diff",'):
                frames[0] += 1
                f = json.loads(text)
                if i in exact:
                    for user in f["leaves"]:
                        views[i].pop(user, None)
                    views[i].update(f["joins"])
                    sizes[i] = len(views[i])
                else:
                    sizes[i] += len(f["joins"]) - len(f["leaves"])

    readers = [asyncio.ensure_future(read(i, ws)) for i, ws in enumerate(sockets)]
    ready.put(len(sockets))
    await asyncio.to_thread(go.wait)
    for user, ws in zip(users, sockets):
        await ws.write_message(json.dumps({"type": "auth", "token": jwt.encode(claims(str(user)), SECRET)}))
        await ws.write_message(json.dumps({"type": "subscribe", "room": ROOM, "sub": "t"}))
    deadline = time.monotonic() + 600
    while not all(size == n for size in sizes):
        if time.monotonic() > deadline or all(r.done() for r in readers):
            break
        await asyncio.sleep(0.05)
    want = {str(u) for u in range(n)}
    wrong = [(len(want - set(v)), len(set(v) - want)) for v in views.values() if set(v) != want]
    off = sorted(size for size in sizes if size != n)
    out.put((time.time(), -1 if wrong else sum(size == n for size in sizes), frames[0],
             f"exact views wrong (missing, extra): {wrong[:5]} of {len(views)}; counts off: {len(off)} {off[:5]}; "
             f"errors: {errors}"))
    await asyncio.to_thread(finish.wait)  # leaving before every driver is done would be leaves in its room
    for r in readers:
        r.cancel()
    for ws in sockets:
        ws.close()


def _driver(port: int, first: int, last: int, n: int, ready: Any, go: Any, out: Any, finish: Any) -> None:
    asyncio.run(_drive(port, range(first, last), n, ready, go, out, finish))


def presence_storm(n: int, drivers: int) -> dict[str, float]:
    """``n`` users join one presence room at once (each its own socket, spread over ``drivers``
    processes): time until every client holds the whole list of ``n``, and the presence frames."""
    server = EmbeddedRedis(port=free_port()).start()
    port = free_port()
    log = Path(tempfile.mkdtemp(prefix="rrr-storm-")) / "app.log"
    # Pings off: a driver parsing N whole lists (N x N members) may answer a ping later than
    # --ping-interval and be dropped, which would measure the driver, not the server.
    # A client's send buffer must hold a whole list of n members and what follows it.
    app = start_app(server.url, port, log, {"token_secret": SECRET, "message_rate": 0, "ping_interval": 0,
                                            "send_buffer": max(1 << 20, 200 * n)})
    ctx = multiprocessing.get_context("spawn")
    ready, go, out, finish = ctx.Queue(), ctx.Event(), ctx.Queue(), ctx.Event()
    share = -(-n // drivers)
    procs = [ctx.Process(target=_driver, args=(port, i, min(n, i + share), n, ready, go, out, finish))
             for i in range(0, n, share)]
    try:
        for p in procs:
            p.start()
        connected = sum(ready.get(timeout=600) for _ in procs)  # their handshakes are not the storm
        assert connected == n, f"{connected} of {n} sockets connected"
        started = time.time()
        go.set()
        results = [out.get(timeout=900) for _ in procs]
        finish.set()
        if any(r[1] < 0 for r in results):
            raise RuntimeError("a client that checks its list exactly holds the wrong members: "
                               + " | ".join(r[3] for r in results))
        converged = sum(r[1] for r in results)
        if converged != n:
            print(" | ".join(r[3] for r in results))
            raise RuntimeError(f"{converged} of {n} clients converged")
        frames = sum(r[2] for r in results)
        return {"members": n, "seconds": max(r[0] for r in results) - started, "frames": frames,
                "frames_per_member": frames / n}
    finally:
        finish.set()
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
        app.terminate()
        app.wait(10)
        server.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--members", type=int, default=500)
    ap.add_argument("--verifications", type=int, default=2000)
    ap.add_argument("--storm", type=int, default=1000, help="users joining one presence room at once (0: skip)")
    ap.add_argument("--drivers", type=int, default=4, help="client processes for the storm")
    args = ap.parse_args()
    for alg, us in verification_costs(args.verifications).items():
        print(f"verify {alg}: {us:7.1f} us per token")
    mem = asyncio.run(member_bytes(args.members))
    print(f"presence room of {mem['members']:.0f} members: {mem['bytes_per_member']:.0f} B of Redis per member "
          f"(the members hash alone: {mem['members_hash_bytes']:.0f} B per member)")
    if args.storm:
        st = presence_storm(args.storm, args.drivers)
        print(f"presence storm: {st['members']:.0f} users join one room at once; every client holds all "
              f"{st['members']:.0f} after {st['seconds']:.1f} s, {st['frames']:.0f} presence frames "
              f"({st['frames_per_member']:.1f} per member)")


if __name__ == "__main__":
    main()
