"""What history costs (issue #12): publish with and without it, a 1,000-message replay, Redis bytes per room.

    python -m bench.history_cost [--messages 20000] [--repeats 3] [--replays 7] [--rooms 1000] [--write]

Everything runs on loopback against a real ``redis-server`` and real ``app.py`` processes started here
(fresh for every cell, stopped at the end); every loop is bounded by count and by time.

1. **Publish.** For each mode (``app.py --history-size 100``, the default, and ``--history-size 0``) and
   each path (the helper ``rrr.client.publish``, one call at a time; ``POST /api/rooms/<slug>/messages``
   over 4 keep-alive connections), ``--messages`` publishes of a 100-byte JSON payload to a room with one
   subscribed socket, which must receive every one. Redis CPU per message is the delta of ``INFO cpu``
   (used_cpu_sys + used_cpu_user, the whole redis-server), and the commands' own time from ``INFO
   commandstats`` (``publish``, or ``evalsha`` of HISTORY_PUBLISH, which includes the commands it runs);
   server CPU per message is utime + stime of ``app.py`` from /proc/<pid>/stat (10 ms ticks).
   The helper without history is ``publish(..., history_size=0)``: a plain ``PUBLISH``.
2. **Replay.** ``app.py --history-size 1000``: a socket subscribes, notes its offset and epoch, closes;
   1,000 messages are published with the helper; a new socket (already open) sends ``subscribe`` with
   ``since``; the clock runs from that send to the 1,000th replayed frame; frames must be ``subscribed``
   with ``recovered: true``, then offsets n+1..n+1000 once each, in order. *Cold*: nobody else is in the
   room (the process subscribes its channels first); *warm*: another socket stayed in the room.
3. **Memory.** ``--rooms`` rooms, each sent 100 (then 300: trimmed to 100) messages of the same payload
   through HISTORY_PUBLISH with the server's own arguments (``rrr.backplane.history.publish_args(own=True)``,
   pipelined); ``MEMORY USAGE <key> SAMPLES 0`` of each stream and meta hash, and ``used_memory``.
4. **Script variants** (what would cut the publish cost): the same 100-byte message published with
   ``EVALSHA`` of HISTORY_PUBLISH and of leaner variants defined here (not used by rrr), through one
   connection, one call at a time and pipelined, one pub/sub connection receiving; Redis CPU per message
   from ``INFO cpu``.

``--write`` saves ``bench/results/history.json`` and rewrites the "History and recovery" section of
``docs/benchmarks.md`` (`bench/report.py` keeps that section when it regenerates the page).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import platform
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import redis
from tornado.websocket import WebSocketClientConnection, websocket_connect

from bench.history_report import DOC, RESULTS, section, write_section
from bench.machine import ROOT, cpu_seconds, free_port
from bench.servers import start_app
from rrr import client as rrr_client
from rrr.backplane import keys, scripts
from rrr.backplane.embedded import EmbeddedRedis
from rrr.backplane.history import publish_args

TOKEN = "bench-api-token"
#: A typical small message: 100 bytes of JSON.
PAYLOAD: dict[str, Any] = {"user": "u123", "text": "x" * 75}
PAYLOAD_JSON = json.dumps(PAYLOAD, separators=(",", ":"))
assert len(PAYLOAD_JSON) == 100, len(PAYLOAD_JSON)
MESSAGE_PREFIX = '{"type":"message"'


def redis_cpu(r: redis.Redis) -> float:
    cpu = r.info("cpu")
    return float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])


def command_usec(r: redis.Redis) -> dict[str, tuple[int, int]]:
    """Per command: (calls, usec) since the last CONFIG RESETSTAT."""
    return {k.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"])) for k, v in r.info("commandstats").items()}


class Stack:
    """A fresh redis-server and one ``app.py`` on it."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.server = EmbeddedRedis(port=free_port()).start()
        self.port = free_port()
        self.log = Path(tempfile.mkdtemp(prefix="rrr-history-bench-")) / "app.log"
        self.app = start_app(self.server.url, self.port, self.log, {"api_token": TOKEN, **options})
        self.r = redis.Redis.from_url(self.server.url)

    @property
    def url(self) -> str:
        return self.server.url

    def close(self) -> None:
        self.app.terminate()
        try:
            self.app.wait(10)
        except Exception:  # noqa: BLE001 - a bench must not hang on a stuck child
            self.app.kill()
        self.r.close()
        self.server.close()


async def subscribe(port: int, room: str, sub: str, since: dict[str, Any] | None = None,
                    ) -> tuple[WebSocketClientConnection, dict[str, Any]]:
    ws = await websocket_connect(f"ws://127.0.0.1:{port}/ws/")
    frame: dict[str, Any] = {"type": "subscribe", "room": room, "sub": sub}
    if since is not None:
        frame["since"] = since
    await ws.write_message(json.dumps(frame))
    while True:
        raw = await asyncio.wait_for(ws.read_message(), 10)
        if raw is None:
            raise RuntimeError("socket closed before subscribed")
        f = json.loads(raw)
        if f["type"] == "subscribed":
            return ws, f
        if f["type"] == "error":
            raise RuntimeError(f"subscribe refused: {f}")


# -- 1. publish with and without history -------------------------------------------------------------


def publish_helper(url: str, room: str, n: int, history: bool) -> None:
    for _ in range(n):
        if history:
            rrr_client.publish(room, PAYLOAD, redis_url=url)
        else:
            rrr_client.publish(room, PAYLOAD, redis_url=url, history_size=0)


def publish_api(port: int, room: str, n: int, connections: int = 4) -> None:
    errors: list[str] = []
    body = PAYLOAD_JSON.encode()
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}

    def worker(count: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            for _ in range(count):
                conn.request("POST", f"/api/rooms/{room}/messages", body=body, headers=headers)
                resp = conn.getresponse()
                resp.read()
                if resp.status != 202:
                    errors.append(f"{resp.status}")
                    return
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(n // connections + (i < n % connections),))
               for i in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"API publish failed: {errors[:5]}")


async def publish_cell(history: bool, path: str, n: int) -> dict[str, Any]:
    stack = Stack({"history_size": 100 if history else 0})
    room = f"pub-{path}"
    try:
        ws, _ = await subscribe(stack.port, room, "s")
        got = 0
        last = 0
        in_order = True

        async def reader() -> None:
            nonlocal got, last, in_order
            while got < n and (raw := await ws.read_message()) is not None:
                f = json.loads(raw)
                if f["type"] == "message":
                    got += 1
                    if history:
                        in_order &= f["offset"] == last + 1
                        last = f["offset"]

        task = asyncio.ensure_future(reader())
        await asyncio.sleep(0.5)  # the subscribe's presence write and count broadcast are over
        stack.r.config_resetstat()
        r0, a0, t0 = redis_cpu(stack.r), cpu_seconds(stack.app.pid), time.monotonic()
        if path == "helper":
            await asyncio.to_thread(publish_helper, stack.url, room, n, history)
        else:
            await asyncio.to_thread(publish_api, stack.port, room, n)
        published = time.monotonic() - t0
        await asyncio.wait_for(task, 60)
        wall = time.monotonic() - t0
        r1, a1 = redis_cpu(stack.r), cpu_seconds(stack.app.pid)
        stats = command_usec(stack.r)
        ws.close()
    finally:
        stack.close()
    cmd = "evalsha" if history else "publish"
    calls, usec = stats.get(cmd, (0, 0))
    if got != n or not in_order:
        raise RuntimeError(f"{path} history={history}: the subscriber got {got} of {n} (in order: {in_order})")
    return {
        "history": history, "path": path, "messages": n, "received": got,
        "redis_cpu_us": (r1 - r0) / n * 1e6, "app_cpu_us": (a1 - a0) / n * 1e6,
        "command": cmd, "command_calls": calls, "command_us": usec / max(1, calls),
        "publish_s": published, "wall_s": wall,
        "inner": {k: v for k, v in stats.items() if k not in ("info", "config|resetstat", "config")},
    }


async def publish_bench(n: int, repeats: int) -> list[dict[str, Any]]:
    out = []
    for rep in range(repeats):
        order = [(True, "helper"), (False, "helper"), (True, "api"), (False, "api")]
        if rep % 2:
            order = [(h2, p2) for (h2, p2) in order[::-1]]
        for history, path in order:
            cell = await publish_cell(history, path, n)
            cell["repeat"] = rep
            print(f"  publish {path:6s} history={'on ' if history else 'off'} r{rep}: "
                  f"Redis {cell['redis_cpu_us']:5.1f} us/msg ({cell['command']} {cell['command_us']:.1f} us), "
                  f"app {cell['app_cpu_us']:6.1f} us/msg, {n / cell['wall_s']:,.0f} msg/s", flush=True)
            out.append(cell)
    return out


# -- 2. replay 1,000 missed messages ----------------------------------------------------------------------


async def replay_run(stack: Stack, room: str, missed: int, warm: bool) -> dict[str, Any]:
    keeper = (await subscribe(stack.port, room, "keep"))[0] if warm else None
    ws, first = await subscribe(stack.port, room, "s")
    since = {"offset": first["offset"], "epoch": first["epoch"]}
    ws.close()
    await asyncio.to_thread(publish_helper, stack.url, room, missed, True)
    back = await websocket_connect(f"ws://127.0.0.1:{stack.port}/ws/")
    await asyncio.sleep(0.2)  # quiet: the keeper's live frames are long delivered
    a0, c0 = cpu_seconds(stack.app.pid), time.process_time()
    t0 = time.perf_counter()
    await back.write_message(json.dumps({"type": "subscribe", "room": room, "sub": "s", "since": since}))
    frames = 0
    others: dict[str, int] = {}
    offsets: list[int] = []
    subscribed: dict[str, Any] | None = None
    deadline = t0 + 10
    raws: list[str | bytes] = []
    messages = 0
    while messages < missed:  # the clock runs: a cheap prefix test only; every frame is parsed after
        raw = await asyncio.wait_for(back.read_message(), max(0.1, deadline - time.perf_counter()))
        if raw is None:
            raise RuntimeError("replay socket closed")
        raws.append(raw)
        messages += isinstance(raw, str) and raw.startswith(MESSAGE_PREFIX)
    elapsed = time.perf_counter() - t0
    app_cpu, client_cpu = cpu_seconds(stack.app.pid) - a0, time.process_time() - c0
    for raw in raws:
        f = json.loads(raw)
        frames += 1
        if f["type"] == "subscribed":
            subscribed = f
        elif f["type"] == "message":
            if subscribed is None or f.get("sub") != "s":
                raise RuntimeError(f"a message before subscribed, or without its sub: {raw[:120]!r}")
            offsets.append(f["offset"])
        else:
            others[f["type"]] = others.get(f["type"], 0) + 1
    # Nothing more may follow (no duplicate): give it a moment.
    extra = 0
    try:
        while (raw := await asyncio.wait_for(back.read_message(), 0.3)) is not None:
            if json.loads(raw)["type"] == "message":
                extra += 1
    except asyncio.TimeoutError:
        pass
    back.close()
    if keeper is not None:
        keeper.close()
    want = list(range(since["offset"] + 1, since["offset"] + missed + 1))
    ok = subscribed is not None and subscribed["recovered"] is True and offsets == want and extra == 0
    if not ok:
        raise RuntimeError(f"replay wrong: subscribed={subscribed}, {len(offsets)} offsets "
                           f"({offsets[:3]}..{offsets[-3:]}), {extra} extra")
    return {"warm": warm, "ms": elapsed * 1e3, "frames": frames, "replayed": len(offsets), "other_frames": others,
            "app_cpu_ms": app_cpu * 1e3, "client_cpu_ms": client_cpu * 1e3}


async def replay_bench(runs: int, missed: int = 1000) -> list[dict[str, Any]]:
    stack = Stack({"history_size": missed})
    out = []
    try:
        for i in range(runs):
            for warm in (False, True):
                res = await replay_run(stack, f"replay-{'w' if warm else 'c'}{i}", missed, warm)
                print(f"  replay {'warm' if warm else 'cold'} r{i}: {res['ms']:6.1f} ms, {res['frames']} frames "
                      f"({res['replayed']} replayed, others {res['other_frames']}), "
                      f"app CPU {res['app_cpu_ms']:.0f} ms, client CPU {res['client_cpu_ms']:.0f} ms", flush=True)
                out.append(res)
    finally:
        stack.close()
    return out


# -- 3. memory per room -----------------------------------------------------------------------------------


def memory_bench(rooms: int, size: int = 100, ttl: float = 300.0) -> dict[str, Any]:
    server = EmbeddedRedis(port=free_port()).start()
    r = redis.Redis.from_url(server.url)
    try:
        sha = r.script_load(scripts.HISTORY_PUBLISH)
        base = int(r.info("memory")["used_memory"])
        out: dict[str, Any] = {"rooms": rooms, "size": size, "payload_bytes": len(PAYLOAD_JSON)}
        sent = 0
        for total in (size, 3 * size):
            pipe = r.pipeline(transaction=False)
            for j in range(total - sent):
                for i in range(rooms):
                    k, a = publish_args(f"room-{i}", PAYLOAD_JSON, size, ttl, own=True)
                    pipe.evalsha(sha, len(k), *k, *a)
                if (j + 1) % 10 == 0:
                    pipe.execute()
            pipe.execute()
            sent = total
            stream = sum(int(r.memory_usage(keys.history(f"room-{i}"), samples=0) or 0) for i in range(rooms))
            meta = sum(int(r.memory_usage(keys.meta(f"room-{i}"), samples=0) or 0) for i in range(rooms))
            length = int(r.xlen(keys.history("room-0")))
            used = int(r.info("memory")["used_memory"]) - base
            out[f"after_{total}"] = {
                "published_per_room": total, "stored_per_room": length,
                "stream_bytes_per_room": stream / rooms, "meta_bytes_per_room": meta / rooms,
                "used_memory_per_room": used / rooms, "used_memory_per_message": used / rooms / length,
            }
        return out
    finally:
        r.close()
        server.close()


# -- 4. leaner script variants (what would cut the cost) ------------------------------------------------------

#: The store-and-publish with the server's settings written only when they change, the epoch and
#: settings read in one HMGET, and the meta's TTL set without keep()'s HGET (a publish always has an
#: offset above 0): same keys, same result, same exact trim.
LEAN = r"""
local stream, meta = KEYS[1], KEYS[2]
local m = redis.call('HMGET', meta, 'e', 'n', 't')
local epoch, size, ttl = m[1], tonumber(m[2] or ARGV[3]), tonumber(m[3] or ARGV[4])
if not epoch then
  epoch = ARGV[6]
  redis.call('HSET', meta, 'e', epoch, 'o', 0)
  redis.call('DEL', stream)
end
if ARGV[7] == '1' and (m[2] ~= ARGV[3] or m[3] ~= ARGV[4]) then
  redis.call('HSET', meta, 'n', ARGV[3], 't', ARGV[4])
  size, ttl = tonumber(ARGV[3]), tonumber(ARGV[4])
end
local top = redis.call('HINCRBY', meta, 'o', 1)
if size > 0 then
  redis.call('XADD', stream, 'MAXLEN', size, top .. '-0', 'd', ARGV[2])
  redis.call('PEXPIRE', stream, ttl)
end
redis.call('EXPIRE', meta, tonumber(ARGV[5]))
local n = redis.call('PUBLISH', ARGV[1], top .. ' ' .. epoch .. ' ' .. ARGV[2])
return {top, epoch, n}
"""

#: LEAN, and the TTLs refreshed once per second of Redis time (the stream's TTL of minutes and the
#: meta's hour need no refresh per message). Changes the expiry by at most a second.
LEAN_TTL = LEAN.replace(
    "  redis.call('PEXPIRE', stream, ttl)\nend\nredis.call('EXPIRE', meta, tonumber(ARGV[5]))\n",
    "end\nif redis.call('PTTL', meta) < tonumber(ARGV[5]) * 1000 - 1000 then\n"
    "  redis.call('EXPIRE', meta, tonumber(ARGV[5]))\n  if size > 0 then redis.call('PEXPIRE', stream, ttl) end\n"
    "end\n",
)
assert LEAN_TTL != LEAN

#: For scale: only the store (XADD with exact trim) and the publish, nothing else.
STORE_ONLY = r"""
redis.call('XADD', KEYS[1], 'MAXLEN', 100, '*', 'd', ARGV[2])
return redis.call('PUBLISH', ARGV[1], ARGV[2])
"""
#: The same with approximate trimming (``MAXLEN ~``: whole listpack nodes only), not the contract's exact one.
STORE_APPROX = STORE_ONLY.replace("'MAXLEN', 100", "'MAXLEN', '~', 100")
#: The same into a list (``RPUSH`` + ``LTRIM``: exact, and cheap to trim).
STORE_LIST = r"""
redis.call('RPUSH', KEYS[1] .. ':l', ARGV[2])
redis.call('LTRIM', KEYS[1] .. ':l', -100, -1)
return redis.call('PUBLISH', ARGV[1], ARGV[2])
"""
#: A script's own floor: the publish alone, called from Lua.
SCRIPT_PUBLISH = r"""
return redis.call('PUBLISH', ARGV[1], ARGV[2])
"""


VARIANT_ONE_AT_A_TIME = 5000


def variants_bench(n: int, repeats: int) -> dict[str, dict[str, list[float]]]:
    """Redis CPU per message of each variant, one call at a time (as the helper and the server call it)
    and pipelined 100 deep; one pub/sub connection subscribed to every room's channels receives each."""
    server = EmbeddedRedis(port=free_port()).start()
    r = redis.Redis.from_url(server.url)
    listener = redis.Redis.from_url(server.url).pubsub(ignore_subscribe_messages=True)
    out: dict[str, dict[str, list[float]]] = {}
    try:
        shas = {"HISTORY_PUBLISH (rrr)": r.script_load(scripts.HISTORY_PUBLISH),
                "lean: settings written only when changed": r.script_load(LEAN),
                "lean + TTLs refreshed once a second": r.script_load(LEAN_TTL),
                "XADD MAXLEN 100 (exact) + PUBLISH only": r.script_load(STORE_ONLY),
                "XADD MAXLEN ~ 100 (approximate) + PUBLISH only": r.script_load(STORE_APPROX),
                "RPUSH + LTRIM (a list, exact) + PUBLISH only": r.script_load(STORE_LIST),
                "PUBLISH from a script": r.script_load(SCRIPT_PUBLISH)}
        names = ["PUBLISH (plain)", *shas]
        rooms = [f"v{rep}-{depth}-{i}" for rep in range(repeats) for depth in (1, 100) for i in range(len(names))]
        listener.subscribe(**{c: lambda _m: None for room in rooms
                              for c in (keys.room_channel(room), keys.message_channel(room))})
        drainer = listener.run_in_thread(sleep_time=0.001, daemon=True)
        try:
            for rep in range(repeats):
                for depth, count in ((1, min(n, VARIANT_ONE_AT_A_TIME)), (100, n)):
                    for index, name in enumerate(names):
                        room = f"v{rep}-{depth}-{index}"
                        pipe = r.pipeline(transaction=False)
                        c0 = redis_cpu(r)
                        for j in range(count):
                            if name == "PUBLISH (plain)":
                                pipe.publish(keys.room_channel(room), PAYLOAD_JSON)
                            else:
                                k, a = publish_args(room, PAYLOAD_JSON, 100, 300.0, own=True)
                                pipe.evalsha(shas[name], len(k), *k, *a)
                            if (j + 1) % depth == 0:
                                pipe.execute()
                        pipe.execute()
                        cell = out.setdefault(name, {"one": [], "pipelined": []})
                        cell["one" if depth == 1 else "pipelined"].append((redis_cpu(r) - c0) / count * 1e6)
        finally:
            drainer.stop()
            drainer.join(5)
        return out
    finally:
        listener.close()
        r.close()
        server.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=20000, help="publishes per run and cell (default 20000)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per publish cell (median; default 3)")
    ap.add_argument("--replays", type=int, default=7, help="replay runs, cold and warm each (default 7)")
    ap.add_argument("--rooms", type=int, default=1000, help="rooms for the memory figure (default 1000)")
    ap.add_argument("--variant-messages", type=int, default=20000,
                    help="per script variant run, pipelined (default 20000; one at a time: at most 5000)")
    ap.add_argument("--write", action="store_true", help="save bench/results/history.json and the docs section")
    args = ap.parse_args()
    if args.messages > 100_000 or args.repeats > 10 or args.replays > 30 or args.rooms > 10_000 \
            or args.variant_messages > 500_000:
        ap.error("bounded on purpose: at most 100000 messages, 10 repeats, 30 replays, 10000 rooms")
    started = time.time()
    load0 = os.getloadavg()
    print(f"publish: {args.messages:,} per run, {args.repeats} runs per cell", flush=True)
    publish = asyncio.run(publish_bench(args.messages, args.repeats))
    print(f"replay: 1,000 missed messages, {args.replays} runs, cold and warm", flush=True)
    replay = asyncio.run(replay_bench(args.replays))
    print(f"memory: {args.rooms:,} rooms x 100 messages", flush=True)
    memory = memory_bench(args.rooms)
    print(f"script variants: {args.variant_messages:,} pipelined publishes per run", flush=True)
    variants = variants_bench(args.variant_messages, args.repeats)
    probe = EmbeddedRedis(port=free_port()).start()
    try:
        version = str(redis.Redis.from_url(probe.url).info("server")["redis_version"])
    finally:
        probe.close()
    res: dict[str, Any] = {
        "meta": {
            "command": "python -m bench.history_cost" + (" --write" if args.write else ""),
            "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
            "elapsed_s": time.time() - started, "messages": args.messages, "repeats": args.repeats,
            "variant_messages": args.variant_messages,
            "variant_one_at_a_time": min(args.variant_messages, VARIANT_ONE_AT_A_TIME), "redis_version": version,
            "python": platform.python_version(), "cores": os.cpu_count(),
            "loadavg_start": " / ".join(f"{x:.1f}" for x in load0),
            "loadavg_end": " / ".join(f"{x:.1f}" for x in os.getloadavg()),
        },
        "publish": publish, "replay": replay, "memory": memory, "variants": variants,
    }
    lines = section(res)
    print()
    print("\n".join(lines))
    if args.write:
        RESULTS.write_text(json.dumps(res, indent=1) + "\n")
        write_section(lines)
        print(f"wrote {RESULTS.relative_to(ROOT)} and the section of {DOC.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
