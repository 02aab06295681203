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
* The connect proxy (``--handshakes N``): what a handshake costs the server when rrr asks the
  application who its cookie is (``--connect-proxy-url``), against one that carries a token.
  One real ``app.py`` (with both ``--token-secret`` and ``--connect-proxy-url``) on a real
  ``redis-server``, and the application: a Tornado server in a process of its own on loopback
  that answers every ``sid=<user>`` cookie with that user and a grant, as a Django view would
  (without Django's own cost, which is the application's, not rrr's). Per run N sockets open
  ``/ws/count/private-hs-<room>/`` (rooms of 10), ``--concurrency`` handshakes in flight, each
  until its first count: ``token`` with ``?token=<jwt>`` (HS256, minted before the run), ``proxy``
  with ``Cookie: sid=<user>``, ``anonymous`` (a public room, no cookie: what both add to). The
  kinds take turns (the order reversed each run), so both see the same machine load; the figure
  is the server's CPU time per join (utime + stime from /proc) and each socket's wall time from
  connect to its first count. Bounded: at most 10,000 sockets a run, ``--timeout`` s a run.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
import urllib.request
from pathlib import Path
from typing import Any

import jwt
import redis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from tornado.websocket import WebSocketClientConnection, websocket_connect

from bench.handshake_cost import Joiner, settle, sources
from bench.machine import ROOT, cpu_seconds, free_port, wait_healthy
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


# The application behind the connect proxy, run as ``python -c BACKEND <port>``: every ``sid=<user>``
# cookie is that user, granted the bench's private rooms for an hour. Counts its calls on GET /calls.
BACKEND = """
import json, sys, time
import tornado.ioloop, tornado.web
calls = [0]
class Connect(tornado.web.RequestHandler):
    def post(self):
        calls[0] += 1
        cookie = json.loads(self.request.body)["headers"].get("Cookie", "")
        sid = cookie.partition("sid=")[2].partition(";")[0]
        self.write({"user": sid, "exp": time.time() + 3600, "rooms": ["private-hs*"]} if sid else {"user": None})
class Calls(tornado.web.RequestHandler):
    def get(self):
        self.write({"calls": calls[0]})
class Health(tornado.web.RequestHandler):
    def get(self):
        self.write("ok")
tornado.web.Application([("/connect", Connect), ("/calls", Calls), ("/healthz", Health)]).listen(
    int(sys.argv[1]), "127.0.0.1")
tornado.ioloop.IOLoop.current().start()
"""

HANDSHAKE_KINDS = ("token", "proxy", "anonymous")


def handshake_request(port: int, kind: str, i: int, run: int, tokens: list[str]) -> bytes:
    room = f"hs{run}-{i // 10}"
    key = base64.b64encode(os.urandom(16)).decode()
    if kind == "token":
        path, extra = f"/ws/count/private-{room}/?token={tokens[i]}", ""
    elif kind == "proxy":
        path, extra = f"/ws/count/private-{room}/", f"Cookie: sid=u{i}\r\n"
    else:
        path, extra = f"/ws/count/pub-{room}/", ""
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nUser-Agent: bench/1.0\r\n{extra}\r\n"
    ).encode()


async def handshake_storm(
    pid: int, port: int, kind: str, n: int, run: int, concurrency: int, timeout: float,
) -> dict[str, Any]:
    """``n`` sockets of ``kind``, each until its first count; the server's CPU per join, each join's wall time."""
    loop = asyncio.get_running_loop()
    now = time.time()
    tokens = [jwt.encode({"sub": f"u{i}", "iat": now, "exp": now + 3600, "rooms": ["private-hs*"]}, SECRET,
                         algorithm="HS256") for i in range(n)] if kind == "token" else []
    requests = [handshake_request(port, kind, i, run, tokens) for i in range(n)]
    addrs = sources(run)
    gate = asyncio.Semaphore(concurrency)
    joiners: list[Joiner] = []
    waits: list[float] = []
    errors: list[str] = []
    deadline = time.monotonic() + timeout

    async def one(i: int) -> None:
        counted: asyncio.Future[None] = loop.create_future()
        joiner = Joiner(requests[i], b"", counted)
        async with gate:
            began = time.monotonic()
            try:
                await asyncio.wait_for(
                    loop.create_connection(lambda: joiner, "127.0.0.1", port, local_addr=(addrs[i % len(addrs)], 0)),
                    max(1.0, deadline - time.monotonic()),
                )
                joiners.append(joiner)
                await asyncio.wait_for(counted, max(1.0, deadline - time.monotonic()))
                waits.append(time.monotonic() - began)
            except (OSError, RuntimeError, TimeoutError) as e:
                errors.append(f"{type(e).__name__}: {e}")

    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    await asyncio.gather(*(one(i) for i in range(n)))
    cpu1, t1 = cpu_seconds(pid), time.monotonic()
    for joiner in joiners:
        joiner.abort()
    await settle(pid, timeout)
    waits.sort()
    return {
        "kind": kind, "us_per_join": (cpu1 - cpu0) / n * 1e6, "wall": t1 - t0, "failures": len(errors),
        "samples": errors[:3], "p50_ms": 1e3 * waits[len(waits) // 2] if waits else float("nan"),
        "p99_ms": 1e3 * waits[min(len(waits) - 1, int(0.99 * len(waits)))] if waits else float("nan"),
    }


async def handshake_costs(n: int, runs: int, concurrency: int, timeout: float) -> dict[str, Any]:
    server = EmbeddedRedis(port=free_port()).start()
    workdir = Path(tempfile.mkdtemp(prefix="rrr-connect-proxy-"))
    backend_port, port = free_port(), free_port()
    with open(workdir / "backend.log", "ab") as out:
        backend = subprocess.Popen([sys.executable, "-c", BACKEND, str(backend_port)], cwd=ROOT, stdout=out,
                                   stderr=subprocess.STDOUT)
    app = None
    results: list[dict[str, Any]] = []
    load0 = os.getloadavg()
    try:
        wait_healthy(backend, backend_port, workdir / "backend.log", timeout=20)
        app = start_app(server.url, port, workdir / "app.log", {
            "token_secret": SECRET, "connect_proxy_url": f"http://127.0.0.1:{backend_port}/connect",
            "count_interval": 0.02, "api_rate": 0,  # the first count soon: the wall time is the handshake's
        })
        for kind in HANDSHAKE_KINDS:  # warm-up: imports, code paths, connections
            await handshake_storm(app.pid, port, kind, min(300, n), 199, concurrency, timeout)
        for r in range(runs):
            for kind in HANDSHAKE_KINDS if r % 2 == 0 else HANDSHAKE_KINDS[::-1]:
                st = await handshake_storm(app.pid, port, kind, n, r, concurrency, timeout)
                results.append(st)
                note = f"  {st['failures']} failed: {'; '.join(st['samples'])}" if st["failures"] else ""
                print(f"run {r + 1} {kind:9s}: {st['us_per_join']:6.0f} us CPU per join, wall p50 "
                      f"{st['p50_ms']:.1f} ms p99 {st['p99_ms']:.1f} ms ({st['wall']:.1f} s){note}", flush=True)
        with urllib.request.urlopen(f"http://127.0.0.1:{backend_port}/calls", timeout=5) as resp:
            calls = int(json.loads(resp.read())["calls"])
    finally:
        for proc in (app, backend):
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        server.close()
    load1 = os.getloadavg()
    out: dict[str, Any] = {"sockets": n, "runs": runs, "concurrency": concurrency, "backend_calls": calls,
                           "load": (load0[0], load1[0])}
    for kind in HANDSHAKE_KINDS:
        mine = [st for st in results if st["kind"] == kind]
        out[kind] = {
            "us_per_join": statistics.median(st["us_per_join"] for st in mine),
            "runs": [round(st["us_per_join"]) for st in mine],
            "p50_ms": statistics.median(st["p50_ms"] for st in mine),
            "p99_ms": statistics.median(st["p99_ms"] for st in mine),
            "failures": sum(st["failures"] for st in mine),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--members", type=int, default=500)
    ap.add_argument("--verifications", type=int, default=2000)
    ap.add_argument("--storm", type=int, default=1000, help="users joining one presence room at once (0: skip)")
    ap.add_argument("--drivers", type=int, default=4, help="client processes for the storm")
    ap.add_argument("--handshakes", type=int, default=0,
                    help="sockets per run for the connect proxy's handshake cost (0: skip; at most 10,000)")
    ap.add_argument("--handshake-runs", type=int, default=4, help="runs of each handshake kind, in turns")
    ap.add_argument("--concurrency", type=int, default=100, help="handshakes in flight")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds a handshake run may take")
    ap.add_argument("--only-handshakes", action="store_true", help="measure the handshakes alone")
    args = ap.parse_args()
    if not 0 <= args.handshakes <= 10_000:
        raise SystemExit("--handshakes: 0 to 10,000")
    if args.handshakes:
        hs = asyncio.run(handshake_costs(args.handshakes, args.handshake_runs, args.concurrency, args.timeout))
        print(f"\nhandshakes: {hs['sockets']} per run, {hs['concurrency']} in flight, {hs['runs']} runs of each "
              f"kind in turns; the application was called {hs['backend_calls']} times; load average "
              f"{hs['load'][0]:.2f} before, {hs['load'][1]:.2f} after ({os.cpu_count()} CPUs)")
        for kind in HANDSHAKE_KINDS:
            k = hs[kind]
            print(f"  {kind:9s}: median {k['us_per_join']:.0f} us CPU per join (runs: "
                  f"{', '.join(map(str, k['runs']))}); wall p50 {k['p50_ms']:.1f} ms, p99 {k['p99_ms']:.1f} ms; "
                  f"{k['failures']} failed")
        if args.only_handshakes:
            return
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
