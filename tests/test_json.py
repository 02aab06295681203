"""One JSON encoder everywhere, and no client string that it cannot send back out.

A JSON escape like ``"\\ud800"`` parses into a lone surrogate, which no UTF-8 frame can carry:
before, echoing it raised UnicodeEncodeError inside the write and aborted the socket with a
traceback per frame. Now it is a ``bad_message`` error and the socket carries on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.error
import urllib.request

import pytest

from rrr import protocol
from support.clients import Client, connect, wait_until
from support.servers import ServerFactory

LONE = "\\ud800"  # the six characters of the JSON escape, as a client would type them
FRAMES = [
    '{"type":"publish","room":"r","data":"' + LONE + '"}',
    '{"type":"publish","room":"r","data":{"k":["x' + LONE + '"]}}',
    '{"type":"publish","room":"r","data":{"' + LONE + '":1}}',
    '{"type":"subscribe","room":"r","sub":"' + LONE + '"}',
    '{"type":"subscribe","room":"' + LONE + '","sub":"t"}',
    '{"type":"unsubscribe","room":"r","sub":"a' + LONE + '"}',
    '{"type":"hello","transport":"' + LONE + '"}',
    '{"type":"' + LONE + '"}',
    '{"type":"ping","extra":"\\udfff"}',
]


def test_lone_surrogates_are_a_bad_message() -> None:
    for frame in FRAMES:
        with pytest.raises(protocol.ProtocolError) as e:
            protocol.parse_client_message(frame)
        assert e.value.code == "bad_message", frame


def test_surrogate_pairs_and_escaped_backslashes_are_fine() -> None:
    msg = protocol.parse_client_message('{"type":"publish","room":"r","data":"\\ud83d\\ude00 \\\\ud800"}')
    assert msg.data_json is not None and json.loads(msg.data_json) == "\U0001f600 \\ud800"
    msg.data_json.encode("utf-8")


@pytest.mark.gen_test(timeout=60)
async def test_lone_surrogates_get_error_frames_and_the_socket_stays_up(
    server_factory: ServerFactory, clients: list[Client], caplog: pytest.LogCaptureFixture
) -> None:
    server = await server_factory(client_publish=True)
    c = await connect(server.ws_url("/ws/"))
    clients.append(c)
    await c.send(type="subscribe", room="r", sub="t")
    await c.settles_on(1, 1)
    with caplog.at_level(logging.WARNING):
        for frame in FRAMES:
            await c.conn.write_message(frame)
        await wait_until(lambda: len(c.of_type("error")) == len(FRAMES), what="an error per frame")
        assert {e["code"] for e in c.of_type("error")} == {"bad_message"}
        await c.send(type="publish", room="r", data="still here")
        assert (await c.next("message", after=0))["data"] == "still here"
        await c.send(type="ping")
        await c.next("pong", after=0)
    assert c.close_code is None and not c.closed.is_set()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert server.metric("rrr_client_errors_total", {"code": "bad_message"}) == len(FRAMES)


@pytest.mark.gen_test(timeout=60)
async def test_json_responses_use_the_protocol_encoder(server_factory: ServerFactory) -> None:
    server = await server_factory(publish_token="tok")

    def get(path: str) -> tuple[int, str, bytes]:
        try:
            with urllib.request.urlopen(server.base_url + path, timeout=5) as r:
                return r.status, r.headers["Content-Type"], r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers["Content-Type"], e.read()

    status, ctype, body = await asyncio.to_thread(get, "/api/rooms/empty")
    assert status == 200 and ctype.startswith("application/json")
    assert body == protocol.dumps({"room": "empty", "connections": 0, "tabs": 0, "updated": None}).encode()
    status, ctype, body = await asyncio.to_thread(get, "/no/such/page")
    assert status == 404 and ctype.startswith("application/json")
    assert body == protocol.dumps(json.loads(body)).encode()


def test_nan_beside_a_lone_surrogate_is_still_an_error_reply() -> None:
    with pytest.raises(protocol.ProtocolError) as e:
        protocol.parse_client_message('{"type":"ping","n":NaN,"s":"' + LONE + '"}')
    assert e.value.code == "bad_message"
