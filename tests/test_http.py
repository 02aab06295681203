"""The HTTP surface: redirect, count page, room API, publish API, health, metrics, bad slugs."""

import json
from typing import Any

import pytest
import redis
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPResponse

from rrr.backplane.keys import history, message_channel
from support.servers import ServerFactory

pytestmark = pytest.mark.gen_test(timeout=30)


async def fetch(http_client: AsyncHTTPClient, url: str, **kw: Any) -> HTTPResponse:
    kw.setdefault("raise_error", False)
    kw.setdefault("follow_redirects", False)
    return await http_client.fetch(url, **kw)


async def test_root_redirects_to_a_fresh_six_character_room(http_client: AsyncHTTPClient, base_url: str) -> None:
    seen = set()
    for _ in range(3):
        r = await fetch(http_client, base_url + "/")
        assert r.code == 302
        location = r.headers["Location"]
        assert location.startswith("/count/") and location.endswith("/")
        slug = location[len("/count/"):-1]
        assert len(slug) == 6 and slug.isalnum()
        seen.add(slug)
    assert len(seen) == 3


async def test_count_page_renders_for_the_room(http_client: AsyncHTTPClient, base_url: str) -> None:
    r = await fetch(http_client, base_url + "/count/ZVk89y/")
    assert r.code == 200
    body = r.body.decode()
    assert "ZVk89y" in body and 'id="count"' in body and 'id="updated"' in body and 'id="tabs"' in body


@pytest.mark.parametrize("path", [
    "/count/bad!slug/", "/count/" + "x" * 165 + "/", "/ws/count/bad%20slug/", "/ws/count/a:b/",
    "/api/rooms/bad!slug", "/api/rooms/%2e%2e%2f", "/api/rooms/a%3Ab", "/nope",
])
async def test_bad_slugs_and_unknown_paths_are_404_and_create_nothing(
    http_client: AsyncHTTPClient, base_url: str, rclient: redis.Redis, path: str
) -> None:
    r = await fetch(http_client, base_url + path, headers={"Upgrade": "websocket", "Connection": "Upgrade"})
    assert r.code == 404
    assert "rooms are 1 to 164 of" in json.loads(r.body)["error"]
    assert [k for k in rclient.keys("rrr:presence:*")] == []


async def test_bad_slug_in_publish_is_404(http_client: AsyncHTTPClient, base_url: str) -> None:
    r = await fetch(http_client, base_url + "/api/rooms/no%20pe/messages", method="POST", body="1",
                    headers={"Authorization": "Bearer secret-token"})
    assert r.code == 404


async def test_room_api_for_an_empty_room(http_client: AsyncHTTPClient, base_url: str) -> None:
    r = await fetch(http_client, base_url + "/api/rooms/empty-room")
    assert r.code == 200
    assert json.loads(r.body) == {"room": "empty-room", "connections": 0, "tabs": 0, "updated": None}


async def test_publish_requires_the_bearer_token(http_client: AsyncHTTPClient, base_url: str) -> None:
    url = base_url + "/api/rooms/abc/messages"
    r = await fetch(http_client, url, method="POST", body='{"x":1}')
    assert r.code == 401 and "Bearer" in r.headers["WWW-Authenticate"]
    r = await fetch(http_client, url, method="POST", body='{"x":1}', headers={"Authorization": "Bearer wrong"})
    assert r.code == 403


async def test_publish_rejects_bodies_that_are_not_json(http_client: AsyncHTTPClient, base_url: str) -> None:
    r = await fetch(http_client, base_url + "/api/rooms/abc/messages", method="POST", body="{not json",
                    headers={"Authorization": "Bearer secret-token"})
    assert r.code == 400 and "JSON" in json.loads(r.body)["error"]


async def test_publish_rejects_oversized_bodies(http_client: AsyncHTTPClient, base_url: str) -> None:
    r = await fetch(http_client, base_url + "/api/rooms/abc/messages", method="POST",
                    body=json.dumps("x" * 70000), headers={"Authorization": "Bearer secret-token"})
    assert r.code == 413


async def test_publish_is_stored_and_reaches_redis_verbatim(
    http_client: AsyncHTTPClient, base_url: str, rclient: redis.Redis
) -> None:
    pubsub = rclient.pubsub()
    pubsub.subscribe(message_channel("abc"))
    pubsub.get_message(timeout=1)
    body = '{"text": "hi",  "n": 1}'
    r = await fetch(http_client, base_url + "/api/rooms/abc/messages", method="POST", body=body,
                    headers={"Authorization": "Bearer secret-token"})
    answer = json.loads(r.body)
    assert r.code == 202 and set(answer) == {"room", "offset", "epoch"} and answer["room"] == "abc"
    msg = pubsub.get_message(timeout=5)
    assert msg["data"] == f"{answer['offset']} {answer['epoch']} {body}"
    entries = rclient.xrange(history("abc"), min=f"{answer['offset']}-0", max="+")
    assert entries is not None
    [(entry_id, fields)] = entries
    assert entry_id == f"{answer['offset']}-0" and fields == {"d": body}
    pubsub.close()


async def test_publish_is_disabled_without_a_token(server_factory: ServerFactory) -> None:
    server = await server_factory(publish_token="")
    from tornado.httpclient import AsyncHTTPClient
    with pytest.raises(HTTPClientError) as e:
        await AsyncHTTPClient().fetch(server.base_url + "/api/rooms/abc/messages", method="POST", body="1",
                                      headers={"Authorization": "Bearer "})
    assert e.value.code == 403 and b"disabled" in e.value.response.body  # type: ignore[union-attr]


async def test_healthz_and_metrics(http_client: AsyncHTTPClient, base_url: str) -> None:
    r = await fetch(http_client, base_url + "/healthz")
    assert r.code == 200 and json.loads(r.body)["redis"] is True
    r = await fetch(http_client, base_url + "/metrics")
    text = r.body.decode()
    assert r.code == 200 and r.headers["Content-Type"].startswith("text/plain")
    for name in ("rrr_open_sockets", "rrr_subscriptions", "rrr_rooms", "rrr_messages_in_total",
                 "rrr_messages_out_total", "rrr_count_broadcasts_total", "rrr_redis_reconnects_total",
                 "rrr_slow_client_disconnects_total", "rrr_presence_expired_total"):
        assert name in text, name
