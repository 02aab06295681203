"""The Pusher server SDK's counterpart in tests: a real HTTP server on loopback that records what a
client sends (the SDKs sign requests as they build them), and the app credentials tests use."""

from __future__ import annotations

import http.server
import threading
from dataclasses import dataclass
from typing import Any

PUSHER_APP_ID = "4242"
PUSHER_KEY = "278d425bdf160c739803"
PUSHER_SECRET = "7ad3773142a6692b25b8"
#: What `make_app` takes to be that app (``--pusher-app-id``, ``--pusher-key``, ``--pusher-secret``).
PUSHER_OPTIONS = dict(pusher_app_id=PUSHER_APP_ID, pusher_key=PUSHER_KEY, pusher_secret=PUSHER_SECRET)


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
