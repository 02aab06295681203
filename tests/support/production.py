"""Fixtures for production-shaped tests: nginx in front of several ``app.py`` processes, Sentinel.

Everything is a real process on loopback: nginx from a config rendered by
``deploy/render.py`` into ``tmp_path`` (``daemon off``, its own pid/logs/temp
paths), ``app.py`` processes (`support.processes.AppProcess`), redis-server and
redis-sentinel. Every process a fixture starts is stopped when the test ends,
and children die with the test process (PR_SET_PDEATHSIG) if it is killed.

The fixtures (``nginx_factory``, ``cluster_factory``, ``sentinel_group``, ``script_runner``,
``ws_clients``) live in tests/conftest.py and build what is here.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import resource
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import redis
import tornado.httpclient
from tornado.websocket import websocket_connect

from deploy import render
from rrr.backplane.embedded import die_with_parent
from support.clients import Client
from support.processes import AppProcess, free_port

PUBLISH_TOKEN = "prod-test-token"


# -- small helpers -------------------------------------------------------------


def wait_sync(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``pred`` until truthy (blocking; for setup code and threads)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = pred()
        except Exception:  # noqa: BLE001 - not ready yet
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


async def http(url: str, method: str = "GET", body: str | None = None, headers: dict[str, str] | None = None,
               timeout: float = 5.0) -> tornado.httpclient.HTTPResponse:
    """One request; never raises on an HTTP status (check ``.code``), raises on a timeout."""
    request = tornado.httpclient.HTTPRequest(
        url, method=method, body=body, headers=headers, request_timeout=timeout, connect_timeout=timeout,
        follow_redirects=False,
    )
    return await tornado.httpclient.AsyncHTTPClient().fetch(request, raise_error=False)


async def http_json(url: str, **kwargs: Any) -> Any:
    r = await http(url, **kwargs)
    assert r.code == 200, f"{url}: HTTP {r.code} {r.body[:200]!r}"
    return json.loads(r.body)


def parse_metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise KeyError(name)


async def metric(base_url: str, name: str) -> float:
    r = await http(base_url + "/metrics")
    assert r.code == 200, f"{base_url}/metrics: HTTP {r.code}"
    return parse_metric(r.body.decode(), name)


async def ws_connect(url: str, origin: str | None = None, headers: dict[str, str] | None = None) -> Client:
    """Like `support.clients.connect`, with extra request headers (spoofing tests)."""
    all_headers = dict(headers or {})
    if origin:
        all_headers["Origin"] = origin
    request = tornado.httpclient.HTTPRequest(url, headers=all_headers, connect_timeout=10, request_timeout=10)
    return Client(await websocket_connect(request))


async def connect_many(url: str, n: int, origin: str | None = None, concurrency: int = 25,
                       into: list[Client] | None = None, **kwargs: Any) -> list[Client]:
    """Open ``n`` WebSockets to ``url`` with at most ``concurrency`` handshakes in flight."""
    sem = asyncio.Semaphore(concurrency)
    made: list[Client] = [] if into is None else into

    async def one() -> Client:
        async with sem:
            c = await ws_connect(url, origin=origin, **kwargs)
            made.append(c)
            return c

    start = len(made)
    await asyncio.gather(*(one() for _ in range(n)))
    return made[start:]


def abort(client: Client) -> None:
    """Drop the TCP connection without a close frame (a tab crash, a lost network)."""
    proto = client.conn.protocol
    if proto is not None and proto.stream is not None:
        proto.stream.close()
    else:
        client.conn.close()


def kill_tree(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    """Signal one process we started and wait; SIGKILL it if it does not exit."""
    if proc.poll() is not None:
        return
    try:
        proc.send_signal(signal.SIGCONT)
        proc.send_signal(sig)
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -- nginx ---------------------------------------------------------------------


class Nginx:
    """A foreground nginx from ``deploy/render.py`` with every path under ``run_dir``."""

    def __init__(self, binary: str, run_dir: Path, upstream_ports: Sequence[int], **render_options: Any) -> None:
        self.binary = binary
        self.run_dir = run_dir
        self.port = free_port()
        self.conf = run_dir / "nginx.conf"
        self.proc: subprocess.Popen[bytes] | None = None
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        nofile = 16384 if hard == resource.RLIM_INFINITY else min(16384, hard)
        argv = [
            "--listen", f"127.0.0.1:{self.port}",
            "--ports", ",".join(map(str, upstream_ports)),
            "--runtime-dir", str(run_dir),
            "--foreground",
            "--worker-processes", "1",
            "--worker-connections", str(max(256, nofile // 2 - 64)),
            "--worker-rlimit-nofile", str(nofile),
            "--error-log-level", "info",
            "-o", str(self.conf),
        ]
        if os.geteuid() == 0:
            argv += ["--user", "root"]  # workers can read tmp_path and the checkout
        for name, value in render_options.items():
            argv += [f"--{name.replace('_', '-')}", str(value)]
        assert render.main(argv) == 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def origin(self) -> str:
        return self.base_url

    def ws_url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    @property
    def error_log_path(self) -> Path:
        return self.run_dir / "logs" / "error.log"

    def log(self) -> str:
        out = []
        for name in ("error.log", "access.log"):
            p = self.run_dir / "logs" / name
            if p.exists():
                out.append(f"--- nginx {name}\n" + p.read_text(errors="replace")[-4000:])
        return "\n".join(out)

    def start(self, timeout: float = 10.0) -> Nginx:
        out = open(self.run_dir / "nginx.out", "ab")
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(self.conf), "-p", str(self.run_dir), "-e", str(self.error_log_path)],
            stdout=out, stderr=subprocess.STDOUT, preexec_fn=die_with_parent,
        )
        out.close()
        deadline = time.monotonic() + timeout
        while not port_open(self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"nginx did not listen within {timeout} s:\n{self.log()}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        """SIGTERM is nginx's fast shutdown (SIGQUIT would wait for every WebSocket to end)."""
        if self.proc is not None:
            kill_tree(self.proc, signal.SIGTERM)
            self.proc = None


# -- app processes ---------------------------------------------------------------


class Cluster:
    """N ``app.py`` processes on one Redis, with nginx in front."""

    def __init__(self, apps: list[AppProcess], nginx: Nginx, redis_url: str) -> None:
        self.apps = apps
        self.nginx = nginx
        self.redis_url = redis_url

    def ws_url(self, path: str) -> str:
        return self.nginx.ws_url(path)

    @property
    def origin(self) -> str:
        return self.nginx.origin

    async def open_sockets(self) -> list[float]:
        """``rrr_open_sockets`` of every live process, scraped from its own port."""
        return [await metric(a.base_url, "rrr_open_sockets") for a in self.apps if a.proc is not None]

    async def room(self, slug: str, base_url: str | None = None) -> dict[str, Any]:
        return await http_json(f"{base_url or self.nginx.base_url}/api/rooms/{slug}")

    async def publish(self, app: AppProcess, room: str, data: Any) -> int:
        """POST to one process directly: it must reach subscribers on every process. Returns the
        message's offset in the room's history."""
        r = await http(
            f"{app.base_url}/api/rooms/{room}/messages", method="POST", body=json.dumps(data),
            headers={"Authorization": f"Bearer {PUBLISH_TOKEN}", "Content-Type": "application/json"},
        )
        assert r.code == 202, f"publish via {app.base_url}: HTTP {r.code} {r.body!r}"
        return int(json.loads(r.body)["offset"])

    def logs(self) -> str:
        return "\n".join(f"--- app {a.port}\n{a.log()[-3000:]}" for a in self.apps) + "\n" + self.nginx.log()


def start_apps(tmp_path: Path, redis_url: str, n: int, registry: list[AppProcess], **options: Any) -> list[AppProcess]:
    """Start ``n`` app.py processes in parallel (each waits for its /healthz)."""
    options.setdefault("xheaders", True)
    options.setdefault("publish_token", PUBLISH_TOKEN)
    apps = []
    for _ in range(n):
        app = AppProcess(redis_url, free_port(), tmp_path / f"app-{len(registry)}.log", **options)
        registry.append(app)
        apps.append(app)
    with ThreadPoolExecutor(n) as pool:
        list(pool.map(lambda a: a.start(timeout=30), apps))
    return apps


def stop_apps(apps: list[AppProcess]) -> None:
    for app in apps:
        if app.proc is not None and app.proc.poll() is None:
            app.proc.send_signal(signal.SIGCONT)
        try:
            app.stop(timeout=10)
        except subprocess.TimeoutExpired:
            app.kill()


# -- Redis Sentinel --------------------------------------------------------------


class SentinelGroup:
    """One master, one replica and three sentinels (quorum 2), all on loopback free ports."""

    SERVICE = "rrr"

    def __init__(self, tmp_path: Path, redis_server: str, redis_sentinel: str,
                 down_after_ms: int = 1000, failover_timeout_ms: int = 4000) -> None:
        self.binary = redis_server
        self.sentinel_binary = redis_sentinel
        self.dir = tmp_path / "sentinel"
        self.dir.mkdir()
        self.master_port = free_port()
        self.replica_port = free_port()
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{self.SERVICE}/0"

    def _spawn(self, name: str, args: list[str], binary: str | None = None) -> None:
        log = open(self.dir / f"{name}.log", "ab")
        self.procs[name] = subprocess.Popen(
            [binary or self.binary, *args], stdout=log, stderr=subprocess.STDOUT, cwd=self.dir,
            preexec_fn=die_with_parent,
        )
        log.close()

    def _server_args(self, name: str, port: int) -> list[str]:
        d = self.dir / name
        d.mkdir(exist_ok=True)
        return ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(d), "--daemonize", "no", "--loglevel", "notice", "--repl-diskless-sync-delay", "0"]

    def start(self) -> SentinelGroup:
        self._spawn("master", self._server_args("master", self.master_port))
        self._spawn("replica", self._server_args("replica", self.replica_port)
                    + ["--replicaof", "127.0.0.1", str(self.master_port)])
        for i, port in enumerate(self.sentinel_ports):
            conf = self.dir / f"sentinel-{i}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndaemonize no\ndir {self.dir}\n"
                f"sentinel monitor {self.SERVICE} 127.0.0.1 {self.master_port} 2\n"
                f"sentinel down-after-milliseconds {self.SERVICE} {self.down_after_ms}\n"
                f"sentinel failover-timeout {self.SERVICE} {self.failover_timeout_ms}\n"
                f"sentinel parallel-syncs {self.SERVICE} 1\n"
            )
            self._spawn(f"sentinel-{i}", [str(conf)], self.sentinel_binary)
        # Ready when the replica is in sync and every sentinel knows the replica and its 2 peers:
        # only then can a failover be voted and promote someone.
        wait_sync(lambda: self._info(self.replica_port).get("master_link_status") == "up", 20, "replica in sync")
        for port in self.sentinel_ports:
            wait_sync(functools.partial(self._sentinel_ready, port), 30, f"sentinel {port} to see replica and peers")
        return self

    def _info(self, port: int) -> dict[str, Any]:
        with redis.Redis(port=port, socket_timeout=1, decode_responses=True) as r:
            return r.info("replication")

    def _sentinel_ready(self, port: int) -> bool:
        with redis.Redis(port=port, socket_timeout=1, decode_responses=True) as s:
            state = s.sentinel_master(self.SERVICE)
        return int(state["num-slaves"]) >= 1 and int(state["num-other-sentinels"]) >= 2

    def master_addr(self, sentinel_port: int | None = None) -> tuple[str, int] | None:
        with redis.Redis(port=sentinel_port or self.sentinel_ports[0], socket_timeout=1, decode_responses=True) as s:
            addr = s.sentinel_get_master_addr_by_name(self.SERVICE)
        return (addr[0], int(addr[1])) if addr else None

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        proc.kill()
        proc.wait()

    def logs(self) -> str:
        logs = sorted(self.dir.glob("*.log"))
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}" for p in logs)

    def stop(self) -> None:
        for proc in self.procs.values():
            kill_tree(proc, signal.SIGTERM, timeout=5)


# -- a whole shell script as a process group ----------------------------------------


class Script:
    """A script run in its own session, so the test can end it and everything it started."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path, cwd: Path) -> None:
        self.log_path = log_path
        log = open(log_path, "ab")
        self.proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 20.0) -> int:
        kill_tree(self.proc, signal.SIGTERM, timeout)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # anything it left behind, by its group id
        except ProcessLookupError:
            pass
        return int(self.proc.returncode)


__all__ = [
    "PUBLISH_TOKEN", "Cluster", "Nginx", "Script", "SentinelGroup", "abort", "connect_many", "http", "http_json",
    "kill_tree", "metric", "parse_metric", "port_open", "start_apps", "stop_apps", "wait_sync", "ws_connect",
]
