"""A middlebox that accepts WebSocket upgrades and kills them (phoenixframework/phoenix#6766): a real
server that answers the handshake correctly (101, the right ``Sec-WebSocket-Accept``), sends no
frame, and cuts the TCP connection ``cut_after`` seconds later. Put behind nginx's ``/ws/``, it is
what a browser sees of a proxy that lets the upgrade through and then drops the socket."""

from __future__ import annotations

import base64
import hashlib
import socket
import socketserver
import threading
import time

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def accept_key(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key.strip() + _GUID).digest())


class Middlebox:
    def __init__(self, cut_after: float = 1.0) -> None:
        self.cut_after = cut_after
        self.upgrades = 0
        self.held: list[float] = []  # seconds each upgraded socket was held open before the cut
        box = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                conn: socket.socket = self.request
                conn.settimeout(5)
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    head += chunk
                key = next((line.split(b":", 1)[1] for line in head.split(b"\r\n")
                            if line.lower().startswith(b"sec-websocket-key:")), None)
                if key is None:
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    return
                box.upgrades += 1
                conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                             b"Sec-WebSocket-Accept: " + accept_key(key) + b"\r\n\r\n")
                upgraded = time.monotonic()
                time.sleep(box.cut_after)
                conn.close()
                box.held.append(time.monotonic() - upgraded)

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
