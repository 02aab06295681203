"""The application behind rrr's proxies, for tests: a real HTTP server on 127.0.0.1 that knows its
users' sessions by cookie (``POST /connect``, the connect proxy) and who may join which room
(``POST /subscribe``, the subscribe proxy), keeps every call, and can be told to answer otherwise:
a status, junk, or nothing at all until the test lets it go."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: An answer that never comes (the request is held until `AppBackend.release` or close).
HANG = -1
#: No answer: the connection is closed as the request arrives (a server ending an idle connection
#: just as a request went out on it).
DROP = -2

Answer = tuple[int, Any]  # status, and a body: JSON-able, raw bytes, or None for no body


@dataclass
class Call:
    path: str
    body: dict[str, Any]
    at: float  # time.time() when it arrived


@dataclass
class Session:
    """What the backend says about one session cookie: a user, grants and info, valid for ``ttl`` s."""

    user: str
    ttl: float = 600.0
    info: dict[str, Any] | None = None
    rooms: list[str] = field(default_factory=list)
    publish: list[str] = field(default_factory=list)

    def answer(self) -> dict[str, Any]:
        out: dict[str, Any] = {"user": self.user, "exp": time.time() + self.ttl, "rooms": self.rooms,
                               "publish": self.publish}
        if self.info is not None:
            out["info"] = self.info
        return out


class AppBackend:
    """``sessions``: the value of the ``sid`` cookie -> `Session`; an unknown one is ``{"user": null}``.
    ``allowed``: (user or None, room) -> the ``info`` to show (None for none); any other room is
    ``{"allow": false}``. ``answer[path]``, when set, replaces the answer to that path: an `Answer`,
    or a function of the call's body returning one."""

    def __init__(self) -> None:
        self.sessions: dict[str, Session] = {}
        self.allowed: dict[tuple[str | None, str], dict[str, Any] | None] = {}
        self.answer: dict[str, Answer | Callable[[dict[str, Any]], Answer]] = {}
        self.calls: list[Call] = []
        self.held = threading.Event()  # set while a call is held (HANG)
        self._release = threading.Event()
        self._lock = threading.Lock()
        #: Connections rrr opened to it so far; those open now (closed with the backend, as a process's are).
        self.connections = 0
        self._open: set[socket.socket] = set()
        #: Seconds a kept-alive connection may stay idle before the backend closes it (gunicorn's 2 s).
        self.idle_timeout: float | None = None
        backend = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with backend._lock:
                    backend.connections += 1
                    backend._open.add(self.connection)
                if backend.idle_timeout is not None:
                    self.connection.settimeout(backend.idle_timeout)  # a read that waits longer ends it

            def finish(self) -> None:
                with backend._lock:
                    backend._open.discard(self.connection)
                try:
                    super().finish()
                except OSError:
                    pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = {"unparsed": raw.decode("latin-1")}
                with backend._lock:
                    backend.calls.append(Call(self.path, body, time.time()))
                status, payload = backend._answer(self.path, body)
                if status == DROP:
                    self.close_connection = True
                    return
                if status == HANG:
                    backend.held.set()
                    backend._release.wait(60)
                    status, payload = 500, {"error": "released"}
                if isinstance(payload, bytes):
                    data = payload
                else:
                    data = b"" if payload is None else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    if status in (301, 302):
                        self.send_header("Location", "/elsewhere")
                    if status != 204:
                        self.send_header("Content-Type", "application/json")
                        self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if status != 204:
                        self.wfile.write(data)
                except OSError:
                    pass  # rrr stopped waiting

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _answer(self, path: str, body: dict[str, Any]) -> Answer:
        fixed = self.answer.get(path)
        if callable(fixed):
            return fixed(body)
        if fixed is not None:
            return fixed
        if path == "/connect":
            cookie = body.get("headers", {}).get("Cookie", "")
            sid = next((part.split("=", 1)[1] for part in cookie.split("; ") if part.startswith("sid=")), None)
            session = self.sessions.get(sid or "")
            return 200, session.answer() if session is not None else {"user": None}
        if path == "/subscribe":
            key = (body.get("user"), body.get("room"))
            if key not in self.allowed:
                return 200, {"allow": False}
            info = self.allowed[key]
            return 200, {"allow": True, **({"info": info} if info is not None else {})}
        return 404, {"error": "no such path"}

    def calls_to(self, path: str) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.path == path]

    def release(self) -> None:
        """Let every held call go (each is answered 500), and hold none from now on."""
        self._release.set()

    def close(self) -> None:
        self._release.set()
        self.server.shutdown()
        self.server.server_close()
        with self._lock:
            for conn in self._open:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
