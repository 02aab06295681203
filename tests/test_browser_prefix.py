"""``/_rrr/``: everything a site's pages use of rrr, under one prefix of its own, so a site that puts
rrr under its own origin proxies that prefix alone (deploy/nginx-same-origin.conf) and keeps its
``/static/`` (Django's ``STATIC_URL``) and any ``/ws/`` of its own. The bare paths stay as they were."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from support.clients import Client, connect
from support.servers import ServerFactory
from support.transports import PollClient, SseClient, request

pytestmark = pytest.mark.gen_test(timeout=90)

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "/_rrr"


async def test_the_browser_library_is_served_under_the_prefix_and_at_its_old_path(
    server_factory: ServerFactory,
) -> None:
    server = await server_factory()
    for name in ("rrr.js", "worker.js", "protocol.js"):
        on_disk = (ROOT / "static" / "js" / name).read_bytes()
        for path in (f"{PREFIX}/static/js/{name}", f"/static/js/{name}"):
            r = await request(server.base_url + path)
            assert r.status == 200, (path, r.status)
            assert r.body == on_disk, path
            assert "javascript" in (r.header("Content-Type") or ""), path
            # module scripts of a page of another origin are fetched in CORS mode
            assert r.header("Access-Control-Allow-Origin") == "*", path
            assert r.header("Content-Security-Policy"), path  # the worker brings its policy
    versioned = await request(f"{server.base_url}{PREFIX}/static/js/rrr.js?v=abc")
    assert versioned.status == 200 and "max-age" in (versioned.header("Cache-Control") or "")
    for bad in ("/static/js/nope.js", "/static/../app.py", "/static/%2e%2e/app.py", "/app.py"):
        r = await request(server.base_url + PREFIX + bad)
        assert r.status in (403, 404), (bad, r.status)
        assert b"make_app" not in r.body


async def test_a_socket_under_the_prefix_shares_rooms_with_the_bare_one(
    server_factory: ServerFactory, clients: list[Client],
) -> None:
    server = await server_factory(publish_token="tok")
    prefixed = await connect(server.ws_url(f"{PREFIX}/ws/"))
    bare = await connect(server.ws_url("/ws/"))
    clients += [prefixed, bare]
    await prefixed.send(type="subscribe", room="lobby", sub="t1")
    await bare.send(type="subscribe", room="lobby", sub="t1")
    await prefixed.settles_on(2, 2, room="lobby")
    r = await request(f"{server.base_url}/api/rooms/lobby/messages", "POST", '"hi"', {"Authorization": "Bearer tok"})
    assert r.status == 202, r.body
    for c in (prefixed, bare):
        assert (await c.next("message", after=0))["data"] == "hi"


async def test_the_fallbacks_and_the_origin_check_answer_under_the_prefix(
    server_factory: ServerFactory, streams: list[SseClient | PollClient], caplog: pytest.LogCaptureFixture,
) -> None:
    server = await server_factory(allowed_origins="https://site.example")
    base = server.base_url + PREFIX  # the library's /_rrr/sse/ and /_rrr/poll/ beside /_rrr/ws/
    with caplog.at_level(logging.INFO, logger="tornado.access"):
        sse = await SseClient.open(base, "/sse/")
        streams.append(sse)
        await sse.started()
        assert sse.status == 200 and sse.headers["content-type"] == "text/event-stream"
        assert (await sse.send(type="subscribe", room="fallback", sub="a")).status == 202
        poll = await PollClient.open(base)
        streams.append(poll)
        assert (await poll.send(type="subscribe", room="fallback", sub="b")).status == 202
        await sse.settles_on(2, 2, room="fallback")
        await poll.settles_on(2, 2, room="fallback")
    lines = "\n".join(r.getMessage() for r in caplog.records)
    # a session id in a path is a credential: the log shows its first 8 characters, prefix or not
    assert f"202 POST {PREFIX}/sse/{sse.session[:8]}.../" in lines
    assert f"202 POST {PREFIX}/poll/{poll.session[:8]}.../" in lines
    assert sse.session not in lines and poll.session not in lines

    missing = await request(f"{base}/sse/nope/more/")
    assert missing.status == 404 and missing.header("Cache-Control") == "no-store"

    checked = await request(f"{base}/ws/origin", headers={"Origin": "https://evil.example"})
    assert checked.status == 200
    assert json.loads(checked.body) == {"origin": "https://evil.example", "allowed": False,
                                        "option": "--allowed-origins"}


async def test_only_what_pages_use_is_under_the_prefix(server_factory: ServerFactory) -> None:
    """The API, metrics and rrr's own pages are for backends and operators, never proxied for a
    site's pages: under ``/_rrr/`` they are the 404 every unknown path gets."""
    server = await server_factory(publish_token="tok")
    for path in ("/api/rooms/lobby", "/metrics", "/healthz", "/count/lobby/", "/"):
        assert (await request(server.base_url + path)).status in (200, 302), path
        assert (await request(server.base_url + PREFIX + path)).status == 404, path


async def test_refusals_under_the_prefix_answer_as_the_bare_paths_do(server_factory: ServerFactory) -> None:
    """A Host refused on /_rrr/sse/ is not cached by a proxy, as on /sse/; an unknown socket path is
    the JSON 404 a script reads, even for a client that asks for HTML."""
    server = await server_factory(allowed_hosts="rt.example.com")
    for path in ("/sse/", f"{PREFIX}/sse/", f"{PREFIX}/poll/"):
        r = await request(server.base_url + path, headers={"Host": "evil.example"})
        assert r.status == 400 and r.header("Cache-Control") == "no-store", path
    for path in ("/ws/nope", f"{PREFIX}/ws/nope"):
        r = await request(server.base_url + path, headers={"Host": "rt.example.com", "Accept": "text/html"})
        assert r.status == 404 and (r.header("Content-Type") or "").startswith("application/json"), path
