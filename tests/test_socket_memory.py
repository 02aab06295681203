"""What an idle socket keeps (issue 13: server RSS per socket <= 16 KiB, presence included).

``bench/socket_memory.py`` measures the figure; these check the mechanisms behind it, each of
which once cost every idle socket a kilobyte or more while every other test still passed:

* CPython 3.11 keeps an instance's attributes in a compact array indexed by a table of names
  its class shares, only while the table has room (29 names, used up also by each new
  instance); past that the instance gets a dict of its own, 0.8-1.6 KiB. Three attributes on
  our stream and thirteen on our handler went past it, and a burst of handshakes made every
  handler miss the names Tornado sets at the upgrade (``handlers.sockets.share_attribute_names``).
* the handshake's HTTP/1.1 connection objects, kept through the request for the socket's life.
"""

from __future__ import annotations

import asyncio
import gc

import pytest

from handlers.sockets import RelaySocket
from support.clients import Client, connect
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
