"""A webhook receiver for tests: a real HTTP server on loopback, in a thread of its own (a hanging
answer never blocks the test's loop), that keeps every request it gets and answers as told:

* ``ok``: 200 (the events are taken);
* ``error``: 500;
* ``hang``: reads the request and never answers (until told otherwise, or 120 s);
* ``down``: not listening at all (connection refused), until `up`.

`events` are those of the requests it answered 200, in arrival order; `unique_events` drops
repeated ids, as docs/guides/webhooks.md tells a receiver to.
"""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from support.processes import free_port


@dataclass
class Received:
    """One request as it arrived, and what it was answered (``mode``)."""

    path: str
    headers: dict[str, str]
    body: bytes
    mode: str
    at: float = field(default_factory=time.time)

    @property
    def payload(self) -> dict[str, Any]:
        return dict(json.loads(self.body))


class Receiver:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.mode = "ok"
        self.requests: list[Received] = []
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.up()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def up(self, mode: str = "ok") -> None:
        """Listen again (on the same port), answering ``mode``."""
        self.set_mode(mode)
        if self._server is not None:
            return
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                mode = receiver.mode
                with receiver._lock:
                    receiver.requests.append(Received(self.path, dict(self.headers.items()), body, mode))
                if mode == "hang":
                    receiver._released.wait(120)
                    self.close_connection = True
                    return
                code = 200 if mode == "ok" else 500
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        for _ in range(100):  # the port may linger a moment after `down`
            try:
                self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise OSError(f"could not listen on {self.port} again")
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self._thread.start()

    def set_mode(self, mode: str) -> None:
        assert mode in ("ok", "error", "hang")
        self.mode = mode
        if mode != "hang":
            self._released.set()
        else:
            self._released.clear()

    def down(self) -> None:
        """Stop listening: a connection is refused until `up`."""
        self._released.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def close(self) -> None:
        self.down()

    # -- what arrived ----------------------------------------------------------------------------

    def answered(self) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if r.mode == "ok"]

    def events(self) -> list[dict[str, Any]]:
        return [e for r in self.answered() for e in r.payload["events"]]

    def unique_events(self) -> list[dict[str, Any]]:
        """`events` with repeated ids dropped (the receiver's duty: delivery is at-least-once)."""
        seen: set[str] = set()
        out = []
        for e in self.events():
            if e["id"] not in seen:
                seen.add(e["id"])
                out.append(e)
        return out

    def of(self, room: str) -> list[tuple[str, str | None]]:
        """``(name, user_id)`` of each unique event of ``room``, in order."""
        return [(e["name"], e.get("user_id")) for e in self.unique_events() if e["channel"] == room]


def refused(port: int) -> bool:
    """Whether nothing listens on ``port`` (what `Receiver.down` promises)."""
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) != 0
