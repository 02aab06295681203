"""``python app.py`` on a laptop with no Redis configured: a real embedded redis-server, started and stopped."""

import json
import urllib.request
from collections.abc import Callable

import pytest

from rrr.backplane.embedded import EmbeddedRedis, find_redis_server
from support.processes import AppProcess


def test_app_runs_on_an_embedded_redis_and_stops_it(app_factory: Callable[..., AppProcess]) -> None:
    proc = app_factory(redis_url=None)
    with urllib.request.urlopen(proc.base_url + "/healthz", timeout=5) as r:
        assert json.loads(r.read())["redis"] is True
    children = open(f"/proc/{proc.proc.pid}/task/{proc.proc.pid}/children").read().split()  # type: ignore[union-attr]
    assert children, "no embedded redis-server child"
    redis_pid = int(children[0])
    assert "redis-server" in open(f"/proc/{redis_pid}/cmdline").read()
    assert "rrr serving http://127.0.0.1:" in proc.log()
    assert proc.stop() == 0
    with pytest.raises(FileNotFoundError):
        open(f"/proc/{redis_pid}/cmdline").read()


def test_embedded_redis_on_a_unix_socket() -> None:
    server = EmbeddedRedis().start()
    try:
        assert server.url.startswith("unix://") and server._answers()
    finally:
        server.close()
    assert not server._answers()


def test_a_redis_server_binary_is_found() -> None:
    assert find_redis_server().endswith("redis-server")
