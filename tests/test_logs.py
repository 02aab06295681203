"""What the logs say about requests: never a credential (the query string is not logged, at any
level), never more than 200 characters of a path, and refusals at most once per 30 s per kind.

Real servers (``make_app`` as ``app.py`` builds it) and real clients; the lines are what the
``tornado.*`` and ``rrr.*`` loggers emit, captured at DEBUG."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import jwt
import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from rrr.backplane.embedded import EmbeddedRedis
from support.clients import Client, connect, wait_until
from support.servers import ServerFactory

pytestmark = pytest.mark.gen_test(timeout=120)

SECRET = "logs-test-secret-of-a-decent-length"


def token(sub: str = "ada", **claims: Any) -> str:
    body: dict[str, Any] = {"sub": sub, "iat": time.time(), "exp": time.time() + 600, "rooms": ["private-ada"]}
    body.update(claims)
    return jwt.encode(body, SECRET, algorithm="HS256")


def lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith(("tornado", "rrr"))]


def text(record: logging.LogRecord) -> str:
    """All a log line shows: its message and any traceback."""
    out = record.getMessage()
    if record.exc_info:
        out += logging.Formatter().formatException(record.exc_info)
    return out


async def handshake_status(url: str, **kwargs: Any) -> int:
    try:
        c = await connect(url, **kwargs)
    except HTTPClientError as e:
        return e.code
    c.close()
    return 101


async def test_no_token_in_any_log_line_for_101_403_or_503_handshakes(
    server_factory: ServerFactory, own_redis: EmbeddedRedis, caplog: pytest.LogCaptureFixture,
) -> None:
    server = await server_factory(redis=own_redis.url, token_secret=SECRET, api_token="server-key",
                                  redis_timeout=0.5)
    good = token()
    forged = jwt.encode({"sub": "ada", "exp": time.time() + 60}, "not-the-secret-at-all-but-long-enough!!")
    caplog.set_level(logging.DEBUG)
    assert await handshake_status(server.ws_url(f"/ws/count/private-ada/?token={good}")) == 101
    assert await handshake_status(server.ws_url(f"/ws/count/private-ada/?token={forged}")) == 403
    assert await handshake_status(server.ws_url(f"/ws/count/private-ada/?token={good}"),
                                  origin="https://elsewhere.example") == 403
    await AsyncHTTPClient().fetch(server.base_url + "/api/users/bob/disconnect", method="POST", body="",
                                  headers={"Authorization": "Bearer server-key"})
    own_redis.kill()  # the revocation check cannot be made: 503
    assert await handshake_status(server.ws_url(f"/ws/count/private-ada/?token={good}")) == 503

    seen = lines(caplog)
    for secret in (good, forged, "server-key"):
        leaks = [text(r) for r in seen if secret in text(r)]
        assert not leaks, leaks
    assert not [text(r) for r in seen if "token=" in text(r)]
    access = [(r.levelno, r.getMessage()) for r in seen if r.name == "tornado.access"]
    path = "GET /ws/count/private-ada/ (127.0.0.1)"
    assert any(level == logging.INFO and m.startswith(f"101 {path}") for level, m in access), access
    assert any(level == logging.WARNING and m.startswith(f"403 {path}") and "bad token" in m
               for level, m in access), access
    assert any(level == logging.ERROR and m.startswith(f"503 {path}") and "cannot check the token" in m
               for level, m in access), access


async def test_a_60_kb_url_is_logged_once_with_at_most_200_characters_of_path(
    server_factory: ServerFactory, caplog: pytest.LogCaptureFixture,
) -> None:
    server = await server_factory()
    caplog.set_level(logging.DEBUG)
    long_path = "/" + "a" * 60_000
    reply = await AsyncHTTPClient().fetch(server.base_url + long_path + "?q=" + "b" * 1000, raise_error=False)
    assert reply.code == 404
    about = [r for r in lines(caplog) if "aaaa" in r.getMessage()]
    assert len(about) == 1, [r.getMessage()[:120] for r in about]
    (line,) = about
    assert line.levelno == logging.WARNING and line.name == "tornado.access"
    shown = line.getMessage().split(" ")[2]
    assert len(shown) == 200 and shown.endswith("...") and shown.startswith("/aaa")
    assert len(line.getMessage()) < 400 and "?" not in line.getMessage()


async def test_repeated_refusals_are_logged_once_per_30_s_per_kind(
    server_factory: ServerFactory, clients: list[Client], caplog: pytest.LogCaptureFixture,
) -> None:
    """100 refused handshakes, each with an 8 KB ``?token=``, and 100 404s: one line each kind."""
    server = await server_factory(token_secret=SECRET)
    caplog.set_level(logging.DEBUG)
    junk = "x" * 8192
    statuses = await asyncio.gather(
        *(handshake_status(server.ws_url(f"/ws/count/private-ada/?token={junk}")) for _ in range(100))
    )
    assert statuses == [403] * 100
    http = AsyncHTTPClient()
    for i in range(100):
        assert (await http.fetch(f"{server.base_url}/nowhere-{i}", raise_error=False)).code == 404
    refusals = [r for r in lines(caplog) if r.levelno >= logging.WARNING]
    assert len([r for r in refusals if r.getMessage().startswith("403 ")]) == 1, [r.getMessage() for r in refusals]
    assert len([r for r in refusals if r.getMessage().startswith("404 ")]) == 1
    assert sum(len(text(r)) for r in lines(caplog)) < 10_000
    # A refusal of another kind (a 403 of another handler) is news: logged at once, with its reason;
    # successes are logged each, at INFO.
    assert await handshake_status(server.ws_url("/ws/"), origin="https://elsewhere.example") == 403
    origin = [r.getMessage() for r in lines(caplog) if r.getMessage().startswith("403 GET /ws/ ")]
    assert len(origin) == 1 and "origin https://elsewhere.example not allowed" in origin[0], origin
    for _ in range(2):
        clients.append(await connect(server.ws_url("/ws/count/lobby/")))
    await wait_until(lambda: len([r for r in lines(caplog) if r.getMessage().startswith("101 GET /ws/count/lobby/")])
                     == 2, what="both successes logged")


async def test_a_malformed_request_never_quotes_its_header_values(
    server_factory: ServerFactory, caplog: pytest.LogCaptureFixture,
) -> None:
    """Tornado's "Malformed HTTP message" quoted the value it could not parse: an Authorization
    header with a stray control character put the key in the log."""
    server = await server_factory(api_token="server-key-of-some-length")
    caplog.set_level(logging.DEBUG)
    for _ in range(20):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /api/rooms/lobby HTTP/1.1\r\nHost: x\r\n"
                     b"Authorization: Bearer server-key-of-some-length\x01\r\n\r\n")
        await writer.drain()
        assert (await asyncio.wait_for(reader.read(), 10)).startswith(b"HTTP/1.1 400")
        writer.close()
    malformed = [text(r) for r in lines(caplog) if "Malformed" in r.getMessage()]
    assert len(malformed) == 1, malformed
    assert "server-key" not in malformed[0] and "Invalid header value" in malformed[0]
