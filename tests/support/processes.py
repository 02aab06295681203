"""Real processes for tests: ``python app.py`` on a port, free ports, binaries a test needs."""

from __future__ import annotations

import collections
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
REQUIRE_ALL = os.environ.get("RRR_REQUIRE_ALL") == "1"


def need_binary(name: str) -> str:
    """Skip on a laptop without ``name``; fail under RRR_REQUIRE_ALL=1 (CI installs everything)."""
    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)
    if path:
        return path
    if REQUIRE_ALL:
        pytest.fail(f"{name} is required (RRR_REQUIRE_ALL=1) but not installed")
    pytest.skip(f"{name} not installed")


# Ports this test process handed out lately, newest last.
_HANDED_OUT: collections.OrderedDict[int, None] = collections.OrderedDict()


def free_port() -> int:
    """A port nobody listens on, and never one handed out lately: the kernel may give the same
    free port twice in a row, and a test's two app.py were then handed one port (nginx's config
    refused it: "an app process is listed twice")."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            break
    _HANDED_OUT[port] = None
    _HANDED_OUT.move_to_end(port)
    while len(_HANDED_OUT) > 4096:
        _HANDED_OUT.popitem(last=False)
    return port


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

    def exited(self, timeout: float = 20.0) -> int:
        """Wait for it to end on its own (after a signal sent with `signal`): its exit code."""
        assert self.proc is not None
        return self.proc.wait(timeout)

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


class Command:
    """A command line run as a person would type it (``python app.py ...`` from the README, the
    installed ``rrr``), ready once ``ready_url`` answers 200; stopped with SIGTERM."""

    def __init__(self, argv: list[str], ready_url: str, log_path: Path, cwd: Path = ROOT,
                 env: dict[str, str] | None = None) -> None:
        self.argv = argv
        self.ready_url = ready_url
        self.log_path = log_path
        self.cwd = cwd
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> Command:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.argv} exited {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.ready_url, timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.argv} did not answer {self.ready_url}:\n{self.log()}")
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


def fetch_json(url: str, **kwargs: Any) -> Any:
    with urllib.request.urlopen(url, timeout=5, **kwargs) as r:
        return json.loads(r.read())
