"""What identity costs: token verification per subscribe, and Redis bytes per presence member.

    python -m bench.identity_cost [--members 500] [--verifications 2000]

* Verification: ``Verifier.verify`` on HS256, RS256 and ES256 tokens minted with PyJWT, in this
  process, per call (what a socket's ``auth`` costs the server; a subscribe then costs a set
  lookup, no crypto).
* Members: one real ``app.py`` on a real ``redis-server`` (both started here), ``--members``
  sockets from loopback, each authenticated as a different user with a small ``info``, all in one
  presence room; ``INFO memory used_memory`` against the baseline, per member. Bounded in sockets
  and time; only loopback.
* The storm (``--storm N``): N users join one presence room at once (tests/support/storm.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

import jwt
import redis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from tornado.websocket import WebSocketClientConnection, websocket_connect

from bench.machine import free_port
from bench.servers import start_app
from rrr.auth import Verifier
from rrr.backplane import keys
from rrr.backplane.embedded import EmbeddedRedis
from tests.support import storm

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


def presence_storm(n: int, drivers: int) -> dict[str, float]:
    """``n`` users join one presence room at once (each its own socket, spread over ``drivers``
    processes; tests/support/storm.py, which tests/test_presence_storm.py also runs): time until
    every client holds its first page and the total, the presence frames and bytes they got, the
    most members one frame carried, and the server's peak resident memory over the whole run."""
    server = EmbeddedRedis(port=free_port()).start()
    port = free_port()
    log = Path(tempfile.mkdtemp(prefix="rrr-storm-")) / "app.log"
    app = start_app(server.url, port, log, storm.server_options())
    try:
        st = storm.storm(port, n, drivers)
        peak = storm.peak_rss(app.pid)
        if st.wrong or st.converged != n:
            raise RuntimeError(f"{st.converged} of {n} clients converged; exact views wrong: {st.wrong}; "
                               f"errors: {st.errors}")
        return {"members": n, "seconds": st.seconds, "frames": st.frames, "frames_per_member": st.frames / n,
                "bytes": st.wire_bytes, "largest": st.largest, "peak_rss": peak}
    finally:
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
        print(f"presence storm: {st['members']:.0f} users join one room at once; every client holds its first "
              f"page and the total after {st['seconds']:.1f} s; {st['frames']:.0f} presence frames "
              f"({st['frames_per_member']:.1f} per member), {st['bytes'] / 1e6:.0f} MB to the clients, at most "
              f"{st['largest']:.0f} members in a frame; server peak RSS {st['peak_rss'] / (1 << 20):.0f} MiB")


if __name__ == "__main__":
    main()
