"""Tests of the harness itself: that its checks catch what they claim to catch.

Run with ``$(BENCH_VENV)/bin/python -m pytest bench/test_harness.py`` (``make bench-test``).
They start no benchmark server: a tiny in-process WebSocket server plays a
faulty rrr, so the worker's accounting is tested against known faults.
"""

from __future__ import annotations

import ast
import asyncio
import json
from pathlib import Path
from typing import Any

from websockets.asyncio.server import ServerConnection, serve

from . import hundred_k_report
from .dialects import COUNT, ERROR, JOINED, MESSAGE, RrrDialect, SocketIODialect
from .doors import server_frames
from .report import Metric, aggregate, fmt_cell, ratio, targets_table
from .scenarios import latency_summary, split
from .worker import Client, Worker


class Recorder:
    def __init__(self) -> None:
        self.sent: list[str] = []

    def send_text(self, text: str) -> None:
        self.sent.append(text)


def test_worker_counts_duplicates_gaps_and_disorder() -> None:
    w = Worker(0)
    c = Client("r")
    w.clients.append(c)
    w.begin_messages("run")
    for seq in (0, 1, 1, 3, 2):
        w.on_message(c, {"run": "run", "seq": seq, "t": 0}, 1_000_000)
    w.on_message(c, {"run": "other", "seq": 4, "t": 0}, 1_000_000)
    c.conn = object()  # type: ignore[assignment]  # counted as a member without a socket
    report = w.cmd_messages_report({"n_seqs": 5, "room": "r"})
    assert report["receipts"] == 4
    assert report["duplicates"] == 1
    assert report["disorder"] == 1
    assert report["missing"] == 1  # seq 4 never arrived for this run
    assert report["foreign"] == 1
    assert report["latency_us"]["0"] == [1000]


def test_socketio_dialect_handshake_ping_and_events() -> None:
    d, conn = SocketIODialect(), Recorder()
    assert d.on_open(conn, "room1", relay=False) is False
    assert d.parse(conn, '0{"sid":"e","pingInterval":25000}') is None
    assert json.loads(conn.sent[-1][2:]) == {"room": "room1", "count": True}
    assert d.parse(conn, "2") is None and conn.sent[-1] == "3"
    assert d.parse(conn, '40{"sid":"s"}') == (JOINED, None)
    assert d.parse(conn, '42["connection_message",{"connections":7}]') == (COUNT, 7)
    assert d.parse(conn, '42["message",{"room":"room1","data":{"a":1}}]') == (MESSAGE, {"a": 1})
    assert d.parse(conn, '44{"message":"no"}')[0] == ERROR  # type: ignore[index]


def test_rrr_dialect_relay_subscribes_and_parses() -> None:
    d, conn = RrrDialect(), Recorder()
    assert d.path("r1", relay=True) == "/ws/" and d.path("r1", relay=False) == "/ws/count/r1/"
    d.on_open(conn, "r1", relay=True)
    assert json.loads(conn.sent[0]) == {"type": "subscribe", "room": "r1", "sub": "bench"}
    assert d.parse(conn, '{"type":"connection_message","room":"r1","connections":3}') == (COUNT, 3)
    assert d.parse(conn, '{"type":"message","room":"r1","data":[1]}') == (MESSAGE, [1])
    assert d.parse(conn, '{"type":"pong"}') is None


def test_latency_summary_and_split() -> None:
    s = latency_summary({"0": [1000, 3000], "1": [2000]})
    assert s["p50_ms"] == 2.0 and s["max_ms"] == 3.0
    assert s["last_recipient_p50_ms"] == 2.5 and s["last_recipient_max_ms"] == 3.0
    assert split(5, 2) == [3, 2] and sum(split(19000, 3)) == 19000


def test_report_marks_failures_and_parenthesises_their_ratios() -> None:
    cells: list[dict[str, Any]] = [
        {"scenario": "fanout", "size": 10, "server": "rrr", "ok": True, "failures": [], "metrics": {"p50_ms": 1.0}},
        {"scenario": "fanout", "size": 10, "server": "channels", "ok": False, "failures": ["lost"],
         "metrics": {"p50_ms": 4.0}},
        {"scenario": "fanout", "size": 10, "server": "socketio", "ok": True, "failures": [],
         "metrics": {"p50_ms": 2.0}},
    ]
    agg = aggregate(cells)
    m = Metric("p50_ms", "p50", "lower")
    assert fmt_cell(agg[("fanout", 10, "channels")], m).startswith("**FAIL** 1/1")
    assert ratio(agg[("fanout", 10, "rrr")], agg[("fanout", 10, "channels")], m) == "(0.25)"
    assert ratio(agg[("fanout", 10, "rrr")], agg[("fanout", 10, "socketio")], m) == "0.5"


def test_targets_are_read_at_their_size_and_a_failed_check_never_meets_one() -> None:
    def cell(server: str, scenario: str, size: float, ok: bool = True, **metrics: float) -> dict[str, Any]:
        return {"scenario": scenario, "size": size, "server": server, "ok": ok,
                "failures": [] if ok else ["lost"], "metrics": metrics}

    cells = [
        cell("rrr", "idle", 19000, rss_per_conn_kib=15.0),
        cell("rrr", "fanout", 10000, False, server_cpu_us_per_frame=5.0, p99_ms=300.0),
        cell("rrr", "join_storm", 1000, all_show_n_s=1.0),
        cell("channels", "fanout", 10000, server_cpu_us_per_frame=100.0),
        cell("socketio", "fanout", 10000, server_cpu_us_per_frame=10.0),
    ]
    rows = {line.split(" | ")[0].lstrip("| "): line for line in
            targets_table(aggregate(cells), ["rrr", "channels", "socketio"]).splitlines()[2:]}
    assert rows["idle: memory per connection, presence included"].endswith("| 15 KiB | yes |")
    assert "FAILED in 1 of 1" in rows["fan-out to 10k members: p99 delivery latency"]
    assert "not measured" in rows["join storm: every client shows N"]  # 1000 is not the size the goal names
    assert rows["delivered frames per CPU second, rrr / channels"].endswith("(a check failed in those runs) | **no** |")


def test_worker_catches_a_faulty_server_end_to_end() -> None:
    """A fake rrr that duplicates message 1, drops message 2 and reports a stale count."""

    async def handler(ws: ServerConnection) -> None:
        sub = json.loads(await ws.recv())
        room = sub["room"]
        await ws.send(json.dumps({"type": "connection_message", "room": room, "connections": 1}))
        async for _ in ws:
            pass

    async def main() -> None:
        async with serve(handler, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            w = Worker(0)
            opened = await w.cmd_open({"kind": "rrr", "relay": True, "host": "127.0.0.1", "ports": [port],
                                       "sources": ["127.0.0.1"], "specs": [["r", 2]], "in_flight": 2,
                                       "timeout": 5, "wait_joined": 5})
            assert opened["opened"] == 2 and opened["joined"] == 2
            w.begin_messages("run")
            for conn in list(server.connections):
                for seq in (0, 1, 1, 3):
                    await conn.send(json.dumps({"type": "message", "room": "r",
                                                "data": {"run": "run", "seq": seq, "t": 0}}))
            await asyncio.sleep(0.3)
            report = w.cmd_messages_report({"n_seqs": 4, "room": "r"})
            assert report["duplicates"] == 2 and report["missing"] == 2 and report["receipts"] == 6
            state = w.cmd_state({"expected": {"r": 2}})
            assert state["count_ok"] == 0 and state["count_bad"] == 2  # both show 1, not 2
            closed = await w.cmd_close({"timeout": 5, "in_flight": 2})
            assert closed["closed"] == 2 and closed["timeouts"] == 0
            assert w.cmd_state({})["dropped"] == 0

    asyncio.run(main())


def test_connects_left_over_from_a_reset_cell_are_not_the_next_cells_errors() -> None:
    """A cell cut short leaves handshakes in flight; when they fail later they must not count against the next cell."""

    async def main() -> dict[str, Any]:
        async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await asyncio.sleep(5)  # accept TCP, never answer the handshake
            writer.close()

        server = await asyncio.start_server(stall, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        w = Worker(0)
        opening = asyncio.ensure_future(w.cmd_open({
            "kind": "rrr", "ports": [port], "sources": ["127.0.0.1"], "specs": [["r", 5]], "host": "127.0.0.1",
            "timeout": 1.0, "in_flight": 5,
        }))
        await asyncio.sleep(0.3)
        w.cmd_reset({})
        await opening
        server.close()
        return w.cmd_state({})

    state = asyncio.run(main())
    assert state["errors"] == 0, state["error_samples"]


def test_the_light_client_reads_whole_text_frames_itself_and_hands_websockets_the_rest() -> None:
    import base64
    import hashlib

    from .wsconn import WsConnection

    def opened(got: list[str], first: bytes = b"") -> WsConnection:
        """A client after a 101 (``first``: what came in the same read as the response head)."""
        conn = WsConnection("ws://127.0.0.1:1/", lambda _c, text, _t: got.append(text), None,
                            asyncio.get_running_loop())
        request = conn.proto.connect()
        conn.proto.send_request(request)
        key = request.headers["Sec-WebSocket-Key"] + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
        accept = base64.b64encode(hashlib.sha1(key.encode()).digest())
        head = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        conn.data_received(head[:40])  # a response head split over two reads
        conn.data_received(head[40:] + first)
        assert conn.proto.state.name == "OPEN"
        return conn

    async def body() -> None:
        got: list[str] = []
        big = "x" * 33_100  # its 16-bit length begins with 0x81, like a text frame's first byte
        wire = b"\x81\x02hi" + b"\x81\x7e" + len(big).to_bytes(2, "big") + big.encode()
        conn = opened(got, wire[:3])  # frames begun in the response's own read
        conn.data_received(wire[3:])
        assert got == ["hi", big]
        got.clear()
        # Cut inside a frame, right after a header (the next read, 0x81 0x4c and 76 bytes, looks like a
        # whole text frame of its own), inside a 16-bit length, and inside a payload.
        for cuts in ((3, 6, 84, 500), (7, 9, 20_000)):
            got.clear()
            conn = opened(got)
            for a, b in zip((0, *cuts), (*cuts, len(wire))):
                conn.data_received(wire[a:b])
            assert got == ["hi", big]
        conn.data_received(b"\x01\x03hel" + b"\x89\x00" + b"\x80\x02lo")  # fragments around a ping
        assert got[-1] == "hello" and conn.proto.parser_exc is None
        assert b"\x8a" in b"".join(conn.proto.data_to_send())  # websockets answered the ping
        for bad in (b"\x81\x02\xff\xfe", b"\x81\x82abcdhi"):  # not UTF-8; masked by a server
            conn = opened(got)
            conn.data_received(bad)
            assert conn.proto.state.name != "OPEN", bad  # websockets failed the connection
        assert got[-1] == "hello"

    asyncio.run(body())


# -- the harness's own shape ---------------------------------------------------------------------

BENCH = Path(__file__).resolve().parent
#: The modules that draw docs/benchmarks.md from results JSON. They read results; they never run a benchmark.
PAGES = {"report"} | {p.stem for p in BENCH.glob("*_report.py")}


def bench_imports() -> dict[str, set[str]]:
    """Every bench module (peers/ apart) and the bench modules it imports, at the top or inside a function:
    an import deferred to call time is still a dependency, and a circle of them still a circle."""
    modules = {p.stem for p in BENCH.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in sorted(BENCH.glob("*.py")):
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                if node.level == 1 or node.module == "bench" or (node.module or "").startswith("bench."):
                    base = (node.module or "").removeprefix("bench").lstrip(".")
                    # ``from . import x`` / ``from bench import x`` name modules; ``from .x import y`` names x.
                    deps |= {base.split(".")[0]} if base else {a.name for a in node.names}
            elif isinstance(node, ast.Import):
                deps |= {a.name.split(".")[1] for a in node.names if a.name.startswith("bench.")}
        graph[path.stem] = (deps & modules) - {path.stem}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every circle of imports, once each, as the path that closes it from its first module by name
    (``a -> b -> a``). The graph is a few dozen modules: walking every simple path is cheap."""
    cycles: list[list[str]] = []

    def walk(start: str, path: list[str]) -> None:
        for dep in sorted(graph.get(path[-1], ())):
            if dep == start:
                cycles.append(path + [start])
            elif dep > start and dep not in path:  # a circle through a smaller name is found from that one
                walk(start, path + [dep])

    for start in sorted(graph):
        walk(start, [start])
    return cycles


def test_import_cycles_are_found() -> None:
    """The check itself: a circle of two, one of three, and a graph without one."""
    assert import_cycles({"a": {"b"}, "b": {"a"}}) == [["a", "b", "a"]]
    assert import_cycles({"run": {"report"}, "report": {"hundred_k"}, "hundred_k": {"run", "servers"},
                          "servers": set()}) == [["hundred_k", "run", "report", "hundred_k"]]
    assert import_cycles({"a": {"b", "c"}, "b": {"a", "c"}, "c": {"a"}}) == [
        ["a", "b", "a"], ["a", "b", "c", "a"], ["a", "c", "a"]]
    assert import_cycles({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_bench_modules_import_no_circle() -> None:
    graph = bench_imports()
    cycles = import_cycles(graph)
    assert not cycles, "import circle(s) in bench/: " + "; ".join(" -> ".join(c) for c in cycles)
    # Not for want of reading them: every form used here is seen (``from .x import``, one inside a
    # function as run.py's of report, ``from . import``).
    assert {"machine", "servers", "report"} <= graph["run"]
    assert {"hundred_k_report", "history_report", "machine"} <= graph["report"]


def test_pages_import_no_runner() -> None:
    """A page is redrawn from saved results on any machine: it may import other pages and ``machine``, never the
    code that runs a benchmark (a runner imports its page at the end, to write it)."""
    graph = bench_imports()
    wrong = {page: sorted(graph[page] - PAGES - {"machine"}) for page in sorted(PAGES)}
    assert not any(wrong.values()), {page: deps for page, deps in wrong.items() if deps}


def test_door_clients_read_whole_server_frames_only() -> None:
    """The door tools' clients take a frame off the buffer only once it is whole, at every length encoding."""
    big = b"x" * 300
    wire = b"\x81\x02hi" + b"\x89\x00" + b"\x81\x7e" + len(big).to_bytes(2, "big") + big
    for cut in range(len(wire) + 1):
        buf = bytearray(wire[:cut])
        got = list(server_frames(buf))
        buf += wire[cut:]
        got += list(server_frames(buf))
        assert got == [(1, b"hi"), (9, b""), (1, big)] and not buf, cut


def test_the_count_socket_clients_see_their_count_and_answer_pings_from_whole_frames() -> None:
    """``keepalive_cost``'s and ``socket_memory``'s bare clients, against a loopback server that sends a ping
    and a count (16-bit length) a few bytes per write: each answers the ping with its payload, masked, and
    settles on the count once the frame is whole."""
    from .keepalive_cost import IdleSocket
    from .socket_memory import CountClient

    count = json.dumps({"type": "connection_message", "connections": 3, "room": "r", "pad": "x" * 200},
                       separators=(",", ":")).encode()
    wire = b"\x89\x02p1" + b"\x81\x7e" + len(count).to_bytes(2, "big") + count

    async def body() -> None:
        pongs: list[bytes] = []

        async def serve_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
            for at in range(0, len(wire), 7):
                writer.write(wire[at: at + 7])
                await writer.drain()
                await asyncio.sleep(0.001)
            head = await reader.readexactly(2)
            mask = await reader.readexactly(4)
            payload = await reader.readexactly(head[1] & 0x7F)
            assert head[0] == 0x8A and head[1] & 0x80
            pongs.append(bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
            await reader.read()  # until the client closes
            writer.close()

        server = await asyncio.start_server(serve_one, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        loop = asyncio.get_running_loop()
        stats = {"pings": 0, "texts": 0, "closed_by_server": 0, "lost": 0, "talked": 0}
        idle = IdleSocket("/ws/count/r/", port, 3, stats, loop)
        counting = CountClient("/ws/count/r/", port, 3, loop)
        for client in (idle, counting):
            await loop.create_connection(lambda: client, "127.0.0.1", port)
        await asyncio.wait_for(asyncio.gather(idle.counted, counting.counted), 10)
        for _ in range(500):
            if len(pongs) == 2:
                break
            await asyncio.sleep(0.01)
        assert pongs == [b"p1", b"p1"]
        assert stats["pings"] == 1 and stats["texts"] == 1 and counting.count == 3
        assert not idle.buf and not counting.buf
        for client in (idle, counting):
            assert client.transport is not None
            client.transport.close()
        server.close()
        await server.wait_closed()

    asyncio.run(body())


def test_the_200k_section_holds_the_run_to_issue_25s_targets() -> None:
    """The 200,000 section judges by its own targets (12 KiB, idle CPU, 120 s, 2 s), not the 100,000 one's."""
    results: dict[str, Any] = {
        "meta": {"command": "python -m bench.hundred_k --sockets 200000", "sockets": 200_000, "servers": 12,
                 "drivers": 12, "count_interval": 0.1, "started": "s", "machine": {"cores": 2, "memory_gib": 23.5}},
        "density": {"rss_per_socket_kib": 12.5, "idle_server_cpu_pct": 20.0, "hold_s": 60, "room_size": 10},
        "storm": {"all_show_n_s": 100.0, "count_frames": 1, "connect_s": 90.0},
        "fanout": {"messages": [{"p99_ms": 2500.0, "p50_ms": 1.0, "last_recipient_ms": 2600.0}]},
        "failures": [],
    }
    text = hundred_k_report.section(results, [], hundred_k_report.TWO_HUNDRED_K)
    rows = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| ")}

    def row(start: str) -> str:
        return next(v for k, v in rows.items() if k.startswith(start))

    assert "≤ 12 KiB | 12.50 KiB | **no**" in row("| server RSS per socket")
    assert "≤ 25 % of a core | 20.0 % | yes" in row("| idle server CPU")
    assert "≤ 120 s | 100.0 s | yes" in row("| join storm of 200,000")
    assert "≤ 2 s | 2,500 ms | **no**" in row("| fan-out of one message")
    assert "| idle sockets per core of CPU used | 1,000,000 | 212,766 |" in text
    assert text.startswith("## 200,000 sockets")
    # The 100,000 section keeps issue 13's targets and has no idle CPU row.
    hundred = hundred_k_report.section(results, [])
    assert "≤ 16 KiB" in hundred and "idle server CPU," not in hundred and hundred.startswith("## 100,000 sockets")
