"""Fixtures: a real redis-server, real Tornado servers on loopback, real app processes.

Nothing here fakes Redis or our own code: in-process apps are built by the same
``make_app`` that ``python app.py`` calls, and the
process fixtures run ``app.py`` itself.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import jwt
import jwt.algorithms
import pytest
import redis
import tornado.httpclient
import tornado.httpserver
import tornado.testing
import tornado.web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from tornado.ioloop import IOLoop
from tornado.websocket import WebSocketClientConnection, websocket_connect

from app import make_app
from rrr.embedded import EmbeddedRedis
from rrr.httpguard import make_http_server
from rrr.hub import Hub
from rrr.metrics import Metrics
from rrr.service import Service

ROOT = Path(__file__).resolve().parent.parent
REQUIRE_ALL = os.environ.get("RRR_REQUIRE_ALL") == "1"


def need_binary(name: str) -> str:
    """Skip on a laptop without ``name``; fail under RRR_REQUIRE_ALL=1 (CI installs everything)."""
    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)
    if path:
        return path
    if REQUIRE_ALL:
        pytest.fail(f"{name} is required (RRR_REQUIRE_ALL=1) but not installed")
    pytest.skip(f"{name} not installed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


class LoopbackRelay:
    """A real TCP server on loopback in front of a real Redis (``_serve`` says what it does with
    each connection); ``url`` is what an app under test is given instead of the Redis's own."""

    def __init__(self) -> None:
        self.port = 0
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    @staticmethod
    async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                   before: Callable[[bytes], Awaitable[None]] | None = None) -> None:
        """Copy ``src`` to ``dst`` until either ends; ``before`` is awaited with each chunk first."""
        try:
            while data := await src.read(65536):
                if before is not None:
                    await before(data)
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            dst.close()


class LyingRedis(LoopbackRelay):
    """A real TCP server in front of a real Redis that can start lying.

    ``mode`` "real" forwards bytes both ways; "ok" answers ``+OK`` to whatever arrives;
    "random" answers random bytes. Changing the mode cuts every open connection, so
    clients reconnect into the new behaviour. ``subscribe_delay`` holds every command
    of the SUBSCRIBE family that long before passing it on (a slow pub/sub path).
    """

    def __init__(self, upstream: str) -> None:
        super().__init__()
        self.upstream = upstream
        self.mode = "real"
        self.subscribe_delay = 0.0

    def set_mode(self, mode: str) -> None:
        assert mode in ("real", "ok", "random")
        self.mode = mode
        for w in list(self._writers):
            w.close()

    async def close(self) -> None:
        self.set_mode("real")
        await super().close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            if self.mode == "real":
                await self._forward(reader, writer)
            else:
                while data := await reader.read(65536):
                    writer.write(b"+OK\r\n" if self.mode == "ok" else os.urandom(1 + len(data) % 64))
                    await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, port = self.upstream.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        self._writers.add(up_writer)

        async def slow_subscribe(data: bytes) -> None:
            # The command's own name, ended as RESP ends it: a script's text may say "subscribes".
            if self.subscribe_delay and b"SUBSCRIBE\r\n" in data.upper():
                await asyncio.sleep(self.subscribe_delay)

        try:
            await asyncio.gather(self.pipe(reader, up_writer, slow_subscribe), self.pipe(up_reader, writer))
        finally:
            self._writers.discard(up_writer)
            up_writer.close()


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


@dataclass
class Server:
    """A running app: its hub, its HTTP server, and helpers to talk to it."""

    service: Service
    http: tornado.httpserver.HTTPServer
    port: int
    hub: Hub = field(init=False)
    metrics: Metrics = field(init=False)

    def __post_init__(self) -> None:
        self.hub = self.service.hub
        self.metrics = self.service.metrics

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws_url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        value = self.metrics.registry.get_sample_value(name, labels or {})
        return 0.0 if value is None else value


ServerFactory = Callable[..., Awaitable[Server]]


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


# -- WebSocket clients -------------------------------------------------------


async def wait_until(pred: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``pred`` (sync or async) until truthy; behaviour tests use generous timeouts."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


class Client:
    """A real WebSocket client that remembers every frame it got."""

    def __init__(self, conn: WebSocketClientConnection) -> None:
        self.conn = conn
        self.frames: list[dict[str, Any]] = []
        self.closed = asyncio.Event()
        self._new = asyncio.Event()
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        while True:
            raw = await self.conn.read_message()
            if raw is None:
                self.closed.set()
                self._new.set()
                return
            self.frames.append(json.loads(raw))
            self._new.set()

    @property
    def close_code(self) -> int | None:
        return self.conn.close_code

    def send(self, **msg: Any) -> Awaitable[None]:
        return self.conn.write_message(json.dumps(msg))

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [f for f in self.frames if f.get("type") == kind]

    def counts(self, room: str | None = None) -> list[dict[str, Any]]:
        return [f for f in self.of_type("connection_message") if room is None or f["room"] == room]

    def last_count(self, room: str | None = None) -> tuple[int, int] | None:
        counts = self.counts(room)
        return (counts[-1]["connections"], counts[-1]["tabs"]) if counts else None

    async def next(self, kind: str, timeout: float = 10.0, after: int | None = None) -> dict[str, Any]:
        """The first frame of ``kind`` at or after index ``after`` (default: any not yet seen)."""
        start = len(self.frames) if after is None else after

        def found() -> dict[str, Any] | None:
            return next((f for f in self.frames[start:] if f.get("type") == kind), None)

        return await wait_until(found, timeout, what=f"a {kind!r} frame")

    async def settles_on(self, connections: int, tabs: int | None = None, room: str | None = None,
                         timeout: float = 10.0) -> None:
        def ok() -> bool:
            last = self.last_count(room)
            return last is not None and last[0] == connections and (tabs is None or last[1] == tabs)

        await wait_until(ok, timeout, what=f"count {connections}/{tabs} (last {self.last_count(room)})")

    def close(self, code: int | None = None) -> None:
        self.conn.close(code)


async def connect(url: str, origin: str | None = None, **kwargs: Any) -> Client:
    headers = {"Origin": origin} if origin else {}
    request = tornado.httpclient.HTTPRequest(url, headers=headers)
    return Client(await websocket_connect(request, **kwargs))


@pytest.fixture
def clients(io_loop: IOLoop) -> Iterator[list[Client]]:
    """Collects clients so every test closes its sockets."""
    made: list[Client] = []
    yield made
    for c in made:
        c.close()
        c._reader.cancel()


# -- app.py as real processes ------------------------------------------------


class AppProcess:
    """``python app.py`` on a fixed port, which a test can SIGTERM, SIGKILL and start again."""

    def __init__(self, redis_url: str | None, port: int, log_path: Path, **options: Any) -> None:
        self.redis_url = redis_url
        self.port = port
        self.options = options
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        args = [sys.executable, str(ROOT / "app.py"), "--address", "127.0.0.1", "--port", str(self.port)]
        if self.redis_url:
            args += ["--redis-url", self.redis_url]
        for name, value in self.options.items():
            flag = "--" + name.replace("_", "-")
            args += [f"{flag}={str(value).lower() if isinstance(value, bool) else value}"]
        return args

    def start(self, timeout: float = 20.0) -> AppProcess:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv(), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"app.py exited {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.base_url + "/healthz", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"app.py did not become healthy:\n{self.log()}")
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait: the clean shutdown path."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.terminate()
        code = self.proc.wait(timeout)
        self.proc = None
        return code

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


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


def fetch_json(url: str, **kwargs: Any) -> Any:
    with urllib.request.urlopen(url, timeout=5, **kwargs) as r:
        return json.loads(r.read())


# -- a Redis that answers late -----------------------------------------------------------


class SlowReplyProxy(LoopbackRelay):
    """A real TCP relay to the real Redis. Armed with ``hold_reply_to(marker, seconds)``, the next
    command that contains ``marker`` runs in Redis at once, but its reply reaches the app only
    ``seconds`` later (a slow network, a busy event loop): the read is *taken* at once and
    *answered* late; with ``every``, each such command's reply is. Everything else passes
    straight through."""

    def __init__(self, upstream_port: int) -> None:
        super().__init__()
        self.upstream_port = upstream_port
        self.marker: bytes | None = None
        self.delay = 0.0
        self.every = False
        self.held = asyncio.Event()

    def hold_reply_to(self, marker: bytes, seconds: float, every: bool = False) -> None:
        self.marker, self.delay, self.every = marker, seconds, every
        self.held.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._writers |= {writer, up_writer}
        slow_next = {"replies": 0}  # replies still to hold on this connection

        async def mark(data: bytes) -> None:
            if self.marker is not None and self.marker in data:
                if not self.every:
                    self.marker = None
                slow_next["replies"] += 1

        async def hold(data: bytes) -> None:
            if slow_next["replies"]:
                slow_next["replies"] -= 1
                self.held.set()
                await asyncio.sleep(self.delay)

        try:
            await asyncio.gather(self.pipe(reader, up_writer, mark), self.pipe(up_reader, writer, hold))
        finally:
            self._writers -= {writer, up_writer}


# -- the Pusher server SDK, talking to a recorder on loopback --------------------------------

PUSHER_APP_ID = "4242"
PUSHER_KEY = "278d425bdf160c739803"
PUSHER_SECRET = "7ad3773142a6692b25b8"


@dataclass
class RecordedRequest:
    """One HTTP request exactly as it arrived: the path and query as in the request line."""

    method: str
    path: str
    query: str
    body: bytes


class RequestRecorder:
    """A real HTTP server on 127.0.0.1 that answers every request ``200 {}`` and keeps it, so a
    test can see what a client really sends (the Pusher SDKs sign requests as they build them)."""

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _record(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path, _, query = self.path.partition("?")
                recorder.requests.append(RecordedRequest(self.command, path, query, body))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            do_GET = do_POST = _record

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def last(self) -> RecordedRequest:
        assert self.requests, "the client sent nothing"
        return self.requests[-1]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


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


# -- an identity provider: signing keys, and its JWK Set served over loopback -----------------


@dataclass
class SigningKey:
    """A provider's private key: it signs tokens and publishes its public half as a JWK."""

    alg: str  # RS256, ES256 or EdDSA (or PS256, with an RSA key whose JWK says so)
    kid: str | None
    private: Any

    @classmethod
    def new(cls, alg: str, kid: str | None) -> SigningKey:
        private: Any
        if alg in ("RS256", "PS256"):
            private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        elif alg == "ES256":
            private = ec.generate_private_key(ec.SECP256R1())
        else:
            private = ed25519.Ed25519PrivateKey.generate()
        return cls(alg, kid, private)

    def jwk(self) -> dict[str, Any]:
        family = {"RS256": "RSA", "PS256": "RSA", "ES256": "EC", "EdDSA": "OKP"}[self.alg]
        maker: Any = {"RSA": jwt.algorithms.RSAAlgorithm, "EC": jwt.algorithms.ECAlgorithm,
                      "OKP": jwt.algorithms.OKPAlgorithm}[family]
        out: dict[str, Any] = json.loads(maker.to_jwk(self.private.public_key()))
        out["use"] = "sig"
        if self.alg == "PS256":
            out["alg"] = "PS256"
        if self.kid is not None:
            out["kid"] = self.kid
        return out

    def public_pem(self) -> bytes:
        return bytes(self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo,
        ))

    def sign(self, claims: dict[str, Any], *, alg: str | None = None, headers: dict[str, Any] | None = None) -> str:
        """A token signed with this key, its header naming the key's kid unless ``headers`` says
        otherwise (``{"kid": None}``: no kid)."""
        merged = {"kid": self.kid, **(headers or {})}
        return jwt.encode(claims, self.private, algorithm=alg or self.alg,
                          headers={k: v for k, v in merged.items() if v is not None})


def hand_signed(header: dict[str, Any], claims: dict[str, Any], hmac_key: bytes | None) -> str:
    """A JWS built by hand: HMAC-SHA256 with ``hmac_key`` (any bytes, a public key's PEM among them,
    which PyJWT itself refuses to use), or no signature at all (``alg: none``)."""
    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    head = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
    signature = b64(hmac.new(hmac_key, head.encode(), hashlib.sha256).digest()) if hmac_key is not None else ""
    return head + "." + signature


class JwksServer:
    """A real HTTP server on 127.0.0.1 publishing a JWK Set at ``/.well-known/jwks.json``, as an
    identity provider does. A test changes what it answers (``publish``, ``answer``) and reads how
    often it was asked (``fetches``)."""

    PATH = "/.well-known/jwks.json"

    def __init__(self) -> None:
        self.status = 200
        self.body = b'{"keys": []}'
        self.fetches = 0
        self._lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # chunked answers need it

            def do_GET(self) -> None:
                with server._lock:
                    if self.path == server.PATH:
                        server.fetches += 1
                    status, body = (server.status, server.body) if self.path == server.PATH else (404, b"{}")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                if not server.chunked:
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                try:
                    for i in range(0, len(body), 16384):
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(body[i:i + 16384]), body[i:i + 16384]))
                    self.wfile.write(b"0\r\n\r\n")
                except OSError:
                    pass  # the client stopped reading: what a cap does

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.chunked = False  # without Content-Length, as a streaming server answers
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}{self.PATH}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def publish(self, *keys: SigningKey) -> None:
        self.answer(200, json.dumps({"keys": [k.jwk() for k in keys]}).encode())

    def answer(self, status: int, body: bytes) -> None:
        with self._lock:
            self.status, self.body = status, body

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def jwks_server() -> Iterator[JwksServer]:
    server = JwksServer()
    yield server
    server.close()
