"""deploy/render.py and the Redis URL forms of rrr/backplane/clients.py, without starting anything."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from deploy import render
from rrr.backplane.clients import SentinelRedis, make_redis, parse_sentinel_url
from support.processes import need_binary


# -- deploy/render.py ---------------------------------------------------------------------


def rendered(tmp_path: Path, *args: str) -> str:
    out = tmp_path / "nginx.conf"
    assert render.main(["--runtime-dir", str(tmp_path / "rt"), "-o", str(out), *args]) == 0
    return out.read_text()


def test_render_fills_every_placeholder_and_keeps_the_websocket_essentials(tmp_path: Path) -> None:
    conf = rendered(tmp_path, "--ports", "8001-8003", "--listen", "127.0.0.1:8080", "--foreground")
    assert "{{" not in conf and "}}" not in conf
    for line in (
        "map $http_upgrade $connection_upgrade",
        "proxy_http_version 1.1;",
        "proxy_set_header Host              $http_host;",
        "proxy_set_header X-Real-IP         $remote_addr;",
        "proxy_set_header X-Forwarded-For   $remote_addr;",
        "proxy_set_header X-Forwarded-Proto $scheme;",
        "proxy_set_header Upgrade           $http_upgrade;",
        "proxy_set_header Connection        $connection_upgrade;",
        "proxy_read_timeout 75s;",
        "limit_conn rrr_ws_per_ip 100;",
        "daemon off;",
        "listen 127.0.0.1:8080;",
    ):
        assert line in conf, line
    assert "$proxy_add_x_forwarded_for" not in conf, "X-Forwarded-For must be overwritten, not appended"
    servers = [line.strip() for line in conf.splitlines() if line.strip().startswith("server 127.0.0.1:")]
    assert servers == [f"server 127.0.0.1:{p} max_fails=1 fail_timeout=2s;" for p in (8001, 8002, 8003)]
    assert str(tmp_path / "rt" / "nginx.pid") in conf


def test_rendered_config_passes_nginx_t(tmp_path: Path) -> None:
    nginx = need_binary("nginx")
    conf = rendered(tmp_path, "--ports", "8001,8002", "--app", "10.0.0.5:8001", "--listen", "127.0.0.1:8080",
                    "--foreground", "--worker-rlimit-nofile", "4096", "--worker-connections", "1024")
    (tmp_path / "nginx.conf").write_text(conf)
    r = subprocess.run([nginx, "-t", "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path / "rt"),
                        "-e", str(tmp_path / "rt" / "logs" / "error.log")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("args, complaint", [
    (["--ports", "8001", "--proxy-read-timeout", "30s"], "twice the app's ping interval"),
    (["--ports", "8001", "--proxy-read-timeout", "3s", "--ping-interval", "2"], "twice the app's ping interval"),
    ([], "no app processes"),
    (["--ports", "8001,8001"], "listed twice"),
    (["--ports", "8001", "--worker-connections", "4096", "--worker-rlimit-nofile", "5000"], "2 x --worker-connections"),
    (["--ports", "8001", "--proxy-read-timeout", "soon"], "not an nginx time"),
])
def test_render_refuses_settings_that_would_break_websockets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], complaint: str
) -> None:
    with pytest.raises(SystemExit) as e:
        render.main(["-o", str(tmp_path / "x.conf"), *args])
    assert e.value.code == 2
    assert complaint in capsys.readouterr().err
    assert not (tmp_path / "x.conf").exists()


def test_render_refuses_unknown_or_missing_placeholders() -> None:
    with pytest.raises(KeyError, match="no value"):
        render.render("a {{ nope }}", {})
    with pytest.raises(KeyError, match="not used"):
        render.render("a", {"extra": "1"})


def test_nginx_time_and_ports_parsing() -> None:
    assert render.nginx_seconds("75s") == 75 and render.nginx_seconds("2m") == 120
    assert render.nginx_seconds("500ms") == 0.5 and render.nginx_seconds("30") == 30
    assert render.parse_ports("8001-8003,8005") == [8001, 8002, 8003, 8005]


def test_run_cluster_script_is_valid_bash() -> None:
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    from support.processes import ROOT

    assert subprocess.run([bash, "-n", str(ROOT / "deploy" / "run-cluster.sh")]).returncode == 0


# -- redis+sentinel:// URLs -------------------------------------------------------------------


def test_sentinel_url_full_form() -> None:
    u = parse_sentinel_url(
        "redis+sentinel://rrr:p%40ss@10.0.0.1:26379,10.0.0.2,[::1]:26380/mymaster/2"
        "?sentinel_password=sp&sentinel_username=su&min_other_sentinels=1"
    )
    assert u.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26379), ("::1", 26380))
    assert (u.service_name, u.db, u.username, u.password) == ("mymaster", 2, "rrr", "p@ss")
    assert (u.sentinel_username, u.sentinel_password, u.min_other_sentinels, u.ssl) == ("su", "sp", 1, False)
    assert "p@ss" not in repr(u) and "sentinel_password" not in repr(u)  # no secrets in logs


def test_sentinel_url_short_forms() -> None:
    u = parse_sentinel_url("redis+sentinel://127.0.0.1:5000/rrr")
    assert u.sentinels == (("127.0.0.1", 5000),) and u.service_name == "rrr" and u.db == 0
    assert u.username is None and u.password is None
    assert parse_sentinel_url("redis+sentinel://:secret@h/rrr").password == "secret"
    assert parse_sentinel_url("redis+sentinel://secret@h/rrr").password == "secret"
    assert parse_sentinel_url("rediss+sentinel://h/rrr").ssl is True


@pytest.mark.parametrize("url", [
    "redis://h/rrr",
    "redis+sentinel:///rrr",
    "redis+sentinel://h:1",
    "redis+sentinel://h:1/",
    "redis+sentinel://h:1/rrr/zero",
    "redis+sentinel://h:1/rrr/0/extra",
    "redis+sentinel://h:port/rrr",
    "redis+sentinel://h:70000/rrr",
    "redis+sentinel://h:1/rrr?sentinel_pasword=typo",
])
def test_sentinel_url_mistakes_are_errors(url: str) -> None:
    with pytest.raises(ValueError):
        parse_sentinel_url(url)


@pytest.mark.gen_test(timeout=30)
async def test_make_redis_builds_a_failover_following_client_with_the_same_timeouts() -> None:
    client = make_redis("redis+sentinel://127.0.0.1:1,127.0.0.1:2/rrr/3", 1.5)
    try:
        assert isinstance(client, SentinelRedis)
        kw = client.connection_pool.connection_kwargs
        assert (kw["socket_timeout"], kw["socket_connect_timeout"], kw["db"]) == (1.5, 1.5, 3)
        assert kw["client_name"] == "rrr" and kw["retry"].get_retries() == 1
        assert (client.connection_pool.service_name == "rrr"  # type: ignore[attr-defined]
                and client.connection_pool.is_master)  # type: ignore[attr-defined]
        sentinels = client.sentinel_manager.sentinels  # type: ignore[union-attr]
        assert [s.connection_pool.connection_kwargs["port"] for s in sentinels] == [1, 2]
        assert all(s.connection_pool.connection_kwargs["socket_timeout"] == 1.5 for s in sentinels)
        # What the backplane calls on it exists and does not touch the network until used.
        client.register_script("return 1")
        client.pubsub()
    finally:
        await client.aclose()


@pytest.mark.gen_test(timeout=30)
async def test_make_redis_plain_urls_are_unchanged() -> None:
    client = make_redis("redis://127.0.0.1:1/4", 0.7)
    try:
        assert type(client) is aioredis.Redis
        kw = client.connection_pool.connection_kwargs
        assert (kw["socket_timeout"], kw["db"]) == (0.7, 4)
    finally:
        await client.aclose()
