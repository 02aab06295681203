"""What an idle socket keeps (issue 13: server RSS per socket <= 16 KiB, presence included).

``bench/socket_memory.py`` measures the figure; these check the mechanisms behind it, each of
which once cost every idle socket a kilobyte or more while every other test still passed:

* CPython 3.11 keeps an instance's attributes in a compact array indexed by a table of names
  its class shares, only while the table has room (29 names, used up also by each new
  instance); past that the instance gets a dict of its own, 0.8-1.6 KiB. Three attributes on
  our stream and thirteen on our handler went past it, and a burst of handshakes made every
  handler miss the names Tornado sets at the upgrade (``handlers.sockets.share_attribute_names``).
* the handshake's HTTP/1.1 connection objects, kept through the request for the socket's life.
* the tables of the handshake's request headers and of the 101's response headers (issue 25): a
  ``MutableMapping.clear()`` pops entry by entry and leaves a dict its largest table, 1.3 KiB in all.
"""

from __future__ import annotations

import asyncio
import gc
import sys

import pytest
import tornado.httpclient

from handlers.sockets import RelaySocket
from support.clients import Client, connect
from tornado.websocket import websocket_connect
from support.servers import ServerFactory

pytestmark = pytest.mark.gen_test(timeout=60)


def has_own_dict(obj: object, attribute: str) -> bool:
    """Whether ``obj``'s attributes live in a dict of its own, not in the compact array its class
    shares. Found among what the garbage collector sees ``obj`` refer to, since reading
    ``obj.__dict__`` would make that dict."""
    value = getattr(obj, attribute)
    return any(type(ref) is dict and ref.get(attribute) is value for ref in gc.get_referents(obj))


async def test_idle_sockets_keep_compact_attributes_and_no_handshake_objects(
    server_factory: ServerFactory, clients: list[Client],
) -> None:
    server = await server_factory()
    # All at once, as a page everyone opens: many handlers exist before the first is upgraded.
    n = 60
    opened = await asyncio.gather(*(connect(server.ws_url(f"/ws/count/memory-{i % 6}/")) for i in range(n)))
    clients += opened
    await asyncio.gather(*(c.settles_on(n // 6) for c in opened))
    handlers = [h for h in server.hub.connections if isinstance(h, RelaySocket)]
    assert len(handlers) == n
    for h in handlers:
        assert not has_own_dict(h, "request"), "a socket handler's attributes spilled into a dict"
        conn = h.ws_connection
        assert conn is not None and conn.stream is not None
        assert not has_own_dict(conn.stream, "socket"), "a socket's stream's attributes spilled into a dict"
        assert not has_own_dict(conn, "handler")
        assert h.request.connection is None and h.request.server_connection is None
        assert len(h.request.headers) == 0


def header_tables(headers: object) -> list[int]:
    """The size of each dict a header object keeps its fields in (an empty dict's when it holds no table)."""
    return [sys.getsizeof(d) for d in vars(headers).values() if isinstance(d, dict)]


async def test_an_idle_socket_keeps_no_table_of_the_handshakes_headers(
    server_factory: ServerFactory, clients: list[Client],
) -> None:
    server = await server_factory()
    # Headers as a browser sends them: a cookie, a user agent, languages.
    browser = {"Cookie": "session=" + "x" * 600, "User-Agent": "Mozilla/5.0 " + "y" * 120,
               "Accept-Language": "en-GB,en;q=0.9", "Cache-Control": "no-cache", "Pragma": "no-cache"}
    opened = []
    for path in ("/ws/count/headers/", "/ws/"):
        request = tornado.httpclient.HTTPRequest(server.ws_url(path), headers=browser)
        opened.append(Client(await websocket_connect(request)))
    clients += opened
    await opened[0].settles_on(1)
    empty = sys.getsizeof({})
    handlers = [h for h in server.hub.connections if isinstance(h, RelaySocket)]
    assert len(handlers) == 2
    for h in handlers:
        assert len(h.request.headers) == 0
        assert header_tables(h.request.headers) and all(size == empty for size in header_tables(h.request.headers)), (
            f"the request's emptied headers keep tables: {header_tables(h.request.headers)} bytes, not {empty}")
        assert header_tables(h._headers) and all(size == empty for size in header_tables(h._headers)), (
            f"the 101's headers are kept: {header_tables(h._headers)} bytes, not {empty}")
    # Still sockets that work: the relay socket subscribes and is counted.
    relay = opened[1]
    await relay.send(type="subscribe", room="headers", sub="s1")
    await relay.settles_on(2, room="headers")
    await opened[0].settles_on(2)
