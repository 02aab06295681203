"""Fixtures: a real redis-server, real Tornado servers on loopback, real app processes, a real
Redis Cluster, nginx and Sentinel.

Nothing here fakes Redis or our own code: in-process apps are built by the same
``make_app`` that ``python app.py`` calls, and the
process fixtures run ``app.py`` itself. What the fixtures build (and tests use directly)
lives in ``tests/support``.

One exception, asked for by issue #20: the core's unit tests (tests/test_unit_*.py) run real
`Service` instances on `memory_redis`, a single-process implementation of the backplane's Protocols
(tests/support/memory_backplane.py) that mirrors the Lua; every behaviour they prove is also tested
on a real Redis, and tests/test_unit_parity.py holds the two side by side.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import subprocess
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis
import tornado.testing
import tornado.web
from tornado.ioloop import IOLoop

from app import make_app
from rrr.backplane.embedded import EmbeddedRedis
from rrr.edge.guard import make_http_server
from rrr.service import Service
from support.app_backend import AppBackend
from support.clients import Client, wait_until
from support.jwks import JwksServer
from support.memory_backplane import MemoryRedis
from support.memory_core import Node, NodeFactory, start_node
from support.cluster import RedisCluster
from support.django_site import Site, SignIn, chromium
from support.processes import REQUIRE_ALL, AppProcess, Command, free_port, need_binary
from support.production import Cluster, Nginx, Script, SentinelGroup, start_apps, stop_apps
from support.pusher import PUSHER_APP_ID, PUSHER_KEY, PUSHER_SECRET, RequestRecorder
from support.pusher_js import PusherJs
from support.redis import LyingRedis
from support.servers import Server, ServerFactory
from support.transports import PollClient, SseClient
from support.webhooks import Receiver

try:
    from playwright.sync_api import Browser
except ImportError:  # pragma: no cover - the dev extra installs it
    pass

# -- the event loop ----------------------------------------------------------


def _loop_policy() -> str:
    """Every test's loop (pytest-tornado's ``io_loop`` makes it through the policy) is uvloop's, as
    ``app.py``'s is by default (``--loop auto``); ``RRR_TEST_LOOP=asyncio`` runs the suite on
    asyncio's own. Under ``RRR_REQUIRE_ALL=1`` (CI) uvloop must be installed."""
    if os.environ.get("RRR_TEST_LOOP", "uvloop") == "asyncio":
        return "asyncio"
    try:
        import uvloop
    except ImportError:
        if REQUIRE_ALL:
            raise RuntimeError("uvloop is required (RRR_REQUIRE_ALL=1) but not installed") from None
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


_loop_policy()


# -- Redis -------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    """One real redis-server on a free loopback port for the whole session."""
    server = EmbeddedRedis(port=free_port()).start()
    yield server
    server.close()


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    """The session Redis, emptied so each test starts from nothing."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def own_redis() -> Iterator[EmbeddedRedis]:
    """A private redis-server a test may kill, stall and restart on the same port."""
    server = EmbeddedRedis(port=free_port()).start()
    yield server
    if server.proc is not None and server.proc.poll() is None:
        os.kill(server.proc.pid, signal.SIGCONT)
    server.close()


@pytest.fixture
def lying_redis(io_loop: IOLoop, redis_url: str) -> Iterator[Callable[[], Awaitable[LyingRedis]]]:
    """``await lying_redis()``: a `LyingRedis` in front of the session Redis, closed after the test."""
    made: list[LyingRedis] = []

    async def start() -> LyingRedis:
        proxy = await LyingRedis(redis_url).start()
        made.append(proxy)
        return proxy

    yield start
    for proxy in made:
        io_loop.run_sync(proxy.close)


@pytest.fixture
def rclient(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


# -- In-process servers ------------------------------------------------------


@pytest.fixture
def server_factory(io_loop: IOLoop, redis_url: str) -> Iterator[ServerFactory]:
    """Start apps on loopback against Redis; several may share one Redis like processes would."""
    started: list[Server] = []

    async def start(redis: str | None = None, ttl: float = 15.0, **overrides: Any) -> Server:
        """``make_app`` as ``main()`` calls it, with test-sized intervals unless a test says otherwise."""
        overrides.setdefault("count_interval", 0.05)
        overrides.setdefault("sweep_interval", 0.2)
        overrides.setdefault("redis_timeout", 1.0)
        overrides.setdefault("backoff_cap", 1.0)
        app = make_app(redis_url=redis or redis_url, presence_ttl=ttl, **overrides)
        service: Service = app.settings["service"]
        await service.start()
        sock, port = tornado.testing.bind_unused_port()
        http = make_http_server(app, service.metrics, **app.settings["http_server"])
        http.add_sockets([sock])
        server = Server(service, http, port)
        started.append(server)
        await wait_until(lambda: service.subscriber.connected, what="subscriber connected")
        return server

    yield start

    async def stop_all() -> None:
        for server in started:
            server.http.stop()
            try:
                if not server.hub.closing:
                    await asyncio.wait_for(server.service.shutdown(), 5)
                await asyncio.wait_for(server.http.close_all_connections(), 5)
            except asyncio.TimeoutError:
                for t in asyncio.all_tasks():
                    t.print_stack()
                raise

    io_loop.run_sync(stop_all, timeout=20)


@pytest.fixture
def app(io_loop: IOLoop, redis_url: str) -> Iterator[tornado.web.Application]:
    """pytest-tornado's ``app``: one app on the session Redis, served by its ``http_server``."""
    app = make_app(
        redis_url=redis_url, publish_token="secret-token", count_interval=0.05, sweep_interval=0.2, redis_timeout=1.0,
    )
    service: Service = app.settings["service"]
    io_loop.run_sync(service.start)
    yield app
    io_loop.run_sync(service.shutdown, timeout=10)


# -- The core on the memory backplane (the unit tests, tests/test_unit_*.py) -----------------


@pytest.fixture
def memory_redis() -> MemoryRedis:
    """One in-memory "Redis" (`support.memory_backplane`) the test's nodes share."""
    return MemoryRedis()


@pytest.fixture
def nodes(io_loop: IOLoop, memory_redis: MemoryRedis) -> Iterator[NodeFactory]:
    """``await nodes(**options)``: a started process on `memory_redis` (`support.memory_core.start_node`);
    every one is shut down after the test, whatever it held back."""
    started: list[Node] = []

    async def start(**options: Any) -> Node:
        node = await start_node(memory_redis, **options)
        started.append(node)
        return node

    yield start

    async def stop_all() -> None:
        memory_redis.release_all()
        memory_redis.come_back()
        for node in started:
            await node.stop()

    io_loop.run_sync(stop_all, timeout=20)


# -- WebSocket clients -------------------------------------------------------


@pytest.fixture
def clients(io_loop: IOLoop) -> Iterator[list[Client]]:
    """Collects clients so every test closes its sockets."""
    made: list[Client] = []
    yield made
    for c in made:
        c.close()
        c._reader.cancel()


@pytest.fixture
def streams(io_loop: IOLoop) -> Iterator[list[SseClient | PollClient]]:
    """Collects SSE and polling clients; afterwards each goes away (its connection closed)."""
    made: list[SseClient | PollClient] = []
    yield made

    async def close_all() -> None:
        await asyncio.gather(*(c.aclose() for c in made))

    io_loop.run_sync(close_all, timeout=10)


# -- app.py as real processes ------------------------------------------------


@pytest.fixture
def app_factory(tmp_path: Path) -> Iterator[Callable[..., AppProcess]]:
    """``app_factory(redis_url=..., **options)`` starts ``python app.py``; all are stopped after the test."""
    procs: list[AppProcess] = []

    def start(redis_url: str | None = None, port: int | None = None, **options: Any) -> AppProcess:
        proc = AppProcess(redis_url, port or free_port(), tmp_path / f"app-{len(procs)}.log", **options)
        procs.append(proc)
        return proc.start()

    yield start
    for proc in procs:
        try:
            proc.stop(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def command_factory(tmp_path: Path) -> Iterator[Callable[..., Command]]:
    """``command_factory(argv, ready_url, **kw)`` runs a command line (a README's, the installed
    ``rrr``) until ``ready_url`` answers 200; all are stopped after the test."""
    started: list[Command] = []

    def start(argv: list[str], ready_url: str, **kwargs: Any) -> Command:
        command = Command(argv, ready_url, tmp_path / f"command-{len(started)}.log", **kwargs)
        started.append(command)
        return command.start()

    yield start
    for command in started:
        command.stop()


# -- a Redis Cluster (tests/test_cluster.py) ------------------------------------------


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A real 6-node cluster for the module; each test gets it whole and empty."""
    server = need_binary("redis-server")
    cli = need_binary("redis-cli")
    cluster = RedisCluster(tmp_path_factory.mktemp("redis-cluster"), server, cli)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


# -- production-shaped: nginx, several app.py, Sentinel (tests/test_production.py) ---------


@pytest.fixture
def ws_clients(io_loop: IOLoop) -> Iterator[list[Client]]:
    """Collects clients; afterwards closes them all and waits for their readers (no dangling tasks)."""
    made: list[Client] = []
    yield made

    async def close_all() -> None:
        for c in made:
            try:
                c.close()
            except Exception:  # noqa: BLE001 - already gone
                pass
        readers = [c._reader for c in made if not c._reader.done()]
        if readers:
            _, pending = await asyncio.wait(readers, timeout=5)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    io_loop.run_sync(close_all, timeout=30)


@pytest.fixture
def nginx_factory(tmp_path: Path) -> Iterator[Callable[..., Nginx]]:
    """``nginx_factory(upstream_ports, **render_options)``: a started nginx; stopped after the test."""
    binary = need_binary("nginx")
    made: list[Nginx] = []

    def start(upstream_ports: Sequence[int], **render_options: Any) -> Nginx:
        run_dir = tmp_path / f"nginx-{len(made)}"
        run_dir.mkdir()
        render_options.setdefault("limit_conn", 5000)
        n = Nginx(binary, run_dir, upstream_ports, **render_options)
        made.append(n)
        return n.start()

    yield start
    for n in made:
        n.stop()


@pytest.fixture
def cluster_factory(tmp_path: Path, nginx_factory: Callable[..., Nginx]) -> Iterator[Callable[..., Cluster]]:
    """``cluster_factory(redis_url, n=3, nginx={render options}, **app_options)``."""
    registry: list[AppProcess] = []

    def start(redis_url: str, n: int = 3, nginx: dict[str, Any] | None = None, **app_options: Any) -> Cluster:
        apps = start_apps(tmp_path, redis_url, n, registry, **app_options)
        front = nginx_factory([a.port for a in apps], **(nginx or {}))
        return Cluster(apps, front, redis_url)

    yield start
    stop_apps(registry)


@pytest.fixture
def sentinel_group(tmp_path: Path) -> Iterator[SentinelGroup]:
    group = SentinelGroup(tmp_path, need_binary("redis-server"), need_binary("redis-sentinel"))
    try:
        yield group.start()
    finally:
        group.stop()


@pytest.fixture
def script_runner(tmp_path: Path) -> Iterator[Callable[..., Script]]:
    made: list[Script] = []

    def run(argv: list[str], env: dict[str, str], cwd: Path) -> Script:
        s = Script(argv, env, tmp_path / f"script-{len(made)}.log", cwd)
        made.append(s)
        return s

    yield run
    for s in made:
        s.stop()


# -- the Pusher server SDK, talking to a recorder on loopback; an identity provider's JWK Set ---


@pytest.fixture
def http_recorder() -> Iterator[RequestRecorder]:
    recorder = RequestRecorder()
    yield recorder
    recorder.close()


@pytest.fixture
def pusher_sdk(http_recorder: RequestRecorder, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The real ``pusher`` Python SDK (a test dependency), pointed at `http_recorder` over plain
    HTTP on loopback; never at a proxy from the environment. It has an encryption master key, as it
    needs to authorize ``private-encrypted-`` channels."""
    import pusher

    monkeypatch.setenv("NO_PROXY", "*")
    return pusher.Pusher(
        app_id=PUSHER_APP_ID, key=PUSHER_KEY, secret=PUSHER_SECRET, host="127.0.0.1", port=http_recorder.port,
        ssl=False, encryption_master_key_base64=base64.b64encode(b"k" * 32).decode(),
    )


@pytest.fixture
def pusher_js(io_loop: IOLoop) -> Iterator[Callable[..., Awaitable[PusherJs]]]:
    """Start real pusher-js clients (and the Node server SDK) in a Node process
    (tests/support/pusher_driver.mjs) against a server's port; all stopped after the test."""
    started: list[PusherJs] = []

    async def start(port: int, **kw: Any) -> PusherJs:
        driver = await PusherJs.start(port, **kw)
        started.append(driver)
        return driver

    yield start

    async def stop() -> None:
        for driver in started:
            await driver.close()

    io_loop.run_sync(stop, timeout=20)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A real webhook receiver on loopback (tests/support/webhooks.py), answering 200 until told."""
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def jwks_server() -> Iterator[JwksServer]:
    server = JwksServer()
    yield server
    server.close()


@pytest.fixture
def app_backend() -> Iterator[AppBackend]:
    """The application behind rrr's connect and subscribe proxies (`support.app_backend`)."""
    backend = AppBackend()
    yield backend
    backend.close()


# -- the example Django site in Chromium ------------------------------------------------------
# Each test module of the site defines its own module-scoped `site` (its own run of run.py, with
# its own flags); these two serve whichever `site` the requesting module has.


@pytest.fixture(scope="module")
def site_browser() -> Iterator[Browser]:
    """One Chromium per module of the example site's tests."""
    yield from chromium()


@pytest.fixture
def sign_in(site_browser: Browser, site: Site) -> Iterator[SignIn]:
    """``sign_in("alice", tabs=2)``: a user signed in, with live tabs (`support.django_site.SignIn`)."""
    signed_in = SignIn(site_browser, site)
    yield signed_in
    signed_in.close()
