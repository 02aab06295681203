"""Tokens on the sockets: private and presence rooms need a grant; a bad token changes nothing;
a refresh keeps the user; an expired token drops exactly the subscriptions that needed it.

Tokens are minted with PyJWT directly, as another service would."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable
from typing import Any

import jwt
import pytest
import redis
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from rrr import client as rrr_client
from rrr.backplane import keys
from rrr.backplane.embedded import EmbeddedRedis
from support.clients import Client, connect, wait_until
from support.redis import LyingRedis, SlowReplyProxy
from support.servers import ServerFactory

pytestmark = pytest.mark.gen_test(timeout=60)

SECRET = "identity-test-secret-of-decent-length"


def token(sub: str = "ada", ttl: float = 600, **claims: Any) -> str:
    now = time.time()
    body: dict[str, Any] = {"sub": sub, "iat": int(now), "exp": now + ttl}
    body.update(claims)
    return jwt.encode(body, SECRET, algorithm="HS256")


def signed_text(payload: str) -> str:
    """An HS256 token over ``payload`` as written (PyJWT would not write ``1e400``)."""
    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    head = b64(b'{"alg":"HS256","typ":"JWT"}') + "." + b64(payload.encode())
    return head + "." + b64(hmac.new(SECRET.encode(), head.encode(), hashlib.sha256).digest())


def hostile_times() -> dict[str, str]:
    """Tokens with numeric claims a JSON parser takes but no clock can mean, each granting private-ada."""
    now = int(time.time())
    head = '{"sub":"ada","rooms":["private-ada"],'
    return {
        "exp NaN": signed_text(head + '"exp":NaN}'),
        "exp 1e400": signed_text(head + '"exp":1e400}'),
        "exp 10^400": signed_text(head + '"exp":1' + "0" * 400 + "}"),
        "iat 10^400": signed_text(head + f'"exp":{now + 600},"iat":1' + "0" * 400 + "}"),
        "iat NaN": signed_text(head + f'"exp":{now + 600},"iat":NaN}}'),
        "iat a year ahead": signed_text(head + f'"exp":{now + 600},"iat":{now + 365 * 86400}}}'),
    }


def errors(c: Client, code: str) -> list[dict[str, Any]]:
    return [e for e in c.of_type("error") if e["code"] == code]


async def test_private_and_presence_rooms_need_a_grant(server_factory: ServerFactory, clients: list[Client]) -> None:
    server = await server_factory(token_secret=SECRET)
    c = await connect(server.ws_url("/ws/"))
    clients.append(c)
    await c.send(type="subscribe", room="private-ada-inbox", sub="t1")
    await wait_until(lambda: errors(c, "forbidden"), what="forbidden")
    assert errors(c, "forbidden")[0]["room"] == "private-ada-inbox" and errors(c, "forbidden")[0]["sub"] == "t1"
    assert server.hub.local_counts("private-ada-inbox") == (0, 0)  # nothing registered or counted

    await c.send(type="auth", token=token(rooms=["private-ada-*", "presence-team"]))
    auth = await c.next("authenticated", after=0)
    assert auth["user"] == "ada" and isinstance(auth["exp"], int)
    await c.send(type="subscribe", room="private-ada-inbox", sub="t1")
    await c.send(type="subscribe", room="presence-team", sub="t1")
    await c.settles_on(1, 1, room="private-ada-inbox")
    await c.settles_on(1, 1, room="presence-team")
    await c.send(type="subscribe", room="private-bob-inbox", sub="t1")
    await wait_until(lambda: any(e["room"] == "private-bob-inbox" for e in errors(c, "forbidden")), what="bob's")
    await c.send(type="subscribe", room="lobby", sub="t1")  # public rooms need nothing
    await c.settles_on(1, 1, room="lobby")


async def test_a_bad_token_is_refused_and_the_socket_keeps_its_identity(
    server_factory: ServerFactory, clients: list[Client],
) -> None:
    server = await server_factory(token_secret=SECRET)
    c = await connect(server.ws_url("/ws/"))
    clients.append(c)
    await c.send(type="auth", token=token(rooms=["private-ada-x"]))
    await c.next("authenticated", after=0)
    bad = [
        jwt.encode({"sub": "ada", "exp": time.time() + 60}, "another-secret-of-decent-length!!", algorithm="HS256"),
        token(ttl=-1),  # expired: a refresh never extends anything
        token(sub="bob", rooms=["private-ada-x"]),  # a refresh must keep the user
        token(sub="x" * 129),
    ]
    for t in bad:
        await c.send(type="auth", token=t)
    await wait_until(lambda: len(errors(c, "bad_token")) == len(bad), what="four bad_token errors")
    await c.send(type="subscribe", room="private-ada-x", sub="t")  # still ada, still granted
    await c.settles_on(1, 1, room="private-ada-x")


async def test_expiry_drops_only_what_needed_the_token_and_a_refresh_keeps_it(
    server_factory: ServerFactory, clients: list[Client],
) -> None:
    server = await server_factory(token_secret=SECRET)
    refreshed, lapsing = await connect(server.ws_url("/ws/")), await connect(server.ws_url("/ws/"))
    clients += [refreshed, lapsing]
    for c in (refreshed, lapsing):
        await c.send(type="auth", token=token(ttl=2, rooms=["private-ada-x"]))
        await c.next("authenticated", after=0)
        await c.send(type="subscribe", room="private-ada-x", sub="a")
        await c.send(type="subscribe", room="lobby", sub="a")
    await lapsing.settles_on(2, 2, room="private-ada-x")
    await refreshed.send(type="auth", token=token(ttl=600, rooms=["private-ada-x"]))
    await wait_until(lambda: len(refreshed.of_type("authenticated")) == 2, what="refreshed")

    await wait_until(lambda: errors(lapsing, "token_expired"), timeout=10, what="token_expired")
    (expired,) = errors(lapsing, "token_expired")
    assert (expired["room"], expired["sub"]) == ("private-ada-x", "a")
    await refreshed.settles_on(1, 1, room="private-ada-x")  # the lapsed socket left the room
    await asyncio.sleep(0.5)
    assert not errors(refreshed, "token_expired")
    assert server.hub.local_counts("lobby") == (2, 2)  # public subscriptions stay


async def test_the_one_room_socket_takes_its_token_in_the_query(
    server_factory: ServerFactory, clients: list[Client],
) -> None:
    server = await server_factory(token_secret=SECRET)
    for query in ("", "?token=junk", "?token=" + token(rooms=["private-bob"])):
        with pytest.raises(HTTPClientError) as e:
            await connect(server.ws_url("/ws/count/private-ada/" + query))
        assert e.value.code == 403
    c = await connect(server.ws_url("/ws/count/private-ada/?token=" + token(rooms=["private-ada"])))
    clients.append(c)
    await c.settles_on(1)
    clients.append(await connect(server.ws_url("/ws/count/public-room/")))  # the talk's page needs no token


async def test_impossible_times_in_a_token_are_bad_tokens_and_the_socket_stays_responsive(
    server_factory: ServerFactory, clients: list[Client],
) -> None:
    """``exp: NaN`` was accepted and its expiry timer re-armed at +0 s forever (a core pinned);
    ``10^400`` raised OverflowError and aborted the socket; an ``iat`` a year ahead was accepted and
    escaped every later sign-out. Each is now ``bad_token`` on ``/ws/`` (the socket stays up, as for
    any bad token) and 403 at the one-room socket's handshake."""
    server = await server_factory(token_secret=SECRET)
    c = await connect(server.ws_url("/ws/"))
    clients.append(c)
    bad = hostile_times()
    for name, t in bad.items():
        n = len(c.frames)
        await c.send(type="auth", token=t)
        reply = await c.next("error", after=n)
        assert reply["code"] == "bad_token", (name, reply)
        assert not c.of_type("authenticated"), name
        await c.send(type="ping")
        await c.next("pong", after=n)
    assert not c.closed.is_set()
    await c.send(type="subscribe", room="private-ada", sub="a")
    await wait_until(lambda: errors(c, "forbidden"), what="no identity was taken from any of them")

    for name, t in bad.items():
        with pytest.raises(HTTPClientError) as e:
            await connect(server.ws_url("/ws/count/private-ada/?token=" + t))
        assert e.value.code == 403, name
    assert len(server.hub.connections) == 1  # the /ws/ socket alone


async def test_a_page_gone_during_its_tokens_revocation_check_leaves_no_socket_behind(
    redis_server: EmbeddedRedis, server_factory: ServerFactory, clients: list[Client],
) -> None:
    """The one-room socket checks its token's revocation in Redis before the upgrade. A page that
    went away meanwhile (a reload while Redis is slow) was upgraded anyway: counted, with no
    close left to uncount it, for as long as the process lived."""
    port = int(redis_server.url.split(":")[2].split("/")[0])
    proxy = await SlowReplyProxy(port).start()
    try:
        server = await server_factory(redis=proxy.url, token_secret=SECRET)
        url = "/ws/count/private-ada/?token=" + token(rooms=["private-ada"])
        proxy.hold_reply_to(keys.revoked("ada").encode(), 0.5)  # under --redis-timeout (1 s here)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(
            f"GET {url} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            .encode()
        )
        await writer.drain()
        await asyncio.wait_for(proxy.held.wait(), 10)  # Redis answered; the answer is held 0.5 s
        writer.close()
        await asyncio.sleep(1.0)  # the answer arrived, the upgrade went its way
        c = await connect(server.ws_url(url))
        clients.append(c)
        await c.settles_on(1)
        assert server.hub.local_counts("private-ada") == (1, 1), "the gone page is still counted"
        assert len(server.hub.connections) == 1
    finally:
        await proxy.close()


async def test_a_publish_grant_lets_a_client_publish_without_client_publish(
    server_factory: ServerFactory, clients: list[Client],
) -> None:
    server = await server_factory(token_secret=SECRET)
    c = await connect(server.ws_url("/ws/"))
    clients.append(c)
    await c.send(type="auth", token=token(rooms=["presence-team"], publish=["presence-team"]))
    await c.next("authenticated", after=0)
    await c.send(type="subscribe", room="presence-team", sub="a")
    await c.send(type="subscribe", room="lobby", sub="a")
    await c.settles_on(1, 1, room="lobby")
    await c.send(type="publish", room="presence-team", data={"hi": 1})
    await wait_until(lambda: any(m["data"] == {"hi": 1} for m in c.of_type("message")), what="published")
    await c.send(type="publish", room="lobby", data="no grant")
    await wait_until(lambda: errors(c, "publish_disabled"), what="publish_disabled for the public room")


async def test_a_publish_grant_implies_read_and_a_rooms_grant_never_implies_publish(
    server_factory: ServerFactory, clients: list[Client],
) -> None:
    """docs/guides/tokens.md, the ``publish`` claim: a token with only a ``publish`` grant subscribes to and
    receives from that private room; one with only ``rooms`` cannot publish to it, even with
    ``--client-publish`` (which opens public rooms only)."""
    server = await server_factory(token_secret=SECRET, api_token="server-key", client_publish=True)
    publisher, reader = await connect(server.ws_url("/ws/")), await connect(server.ws_url("/ws/"))
    clients += [publisher, reader]
    await publisher.send(type="auth", token=token(sub="pub", publish=["private-ada-x"]))
    await reader.send(type="auth", token=token(sub="rd", rooms=["private-ada-x"]))
    for c in (publisher, reader):
        await c.next("authenticated", after=0)
        await c.send(type="subscribe", room="private-ada-x", sub="a")
    await publisher.settles_on(2, 2, room="private-ada-x")
    assert not errors(publisher, "forbidden")

    await AsyncHTTPClient().fetch(
        server.base_url + "/api/rooms/private-ada-x/messages", method="POST", body='{"from": "backend"}',
        headers={"Authorization": "Bearer server-key"},
    )
    await publisher.send(type="publish", room="private-ada-x", data={"from": "publisher"})
    for c in (publisher, reader):
        await wait_until(
            lambda c=c: {"from": "backend"} in [m["data"] for m in c.of_type("message")]  # type: ignore[misc]
            and {"from": "publisher"} in [m["data"] for m in c.of_type("message")],
            what="both messages received",
        )
    await reader.send(type="publish", room="private-ada-x", data={"from": "reader"})
    refused = await wait_until(lambda: errors(reader, "forbidden"), what="publishing without a publish grant")
    assert refused[0]["room"] == "private-ada-x"
    await asyncio.sleep(0.3)
    assert {"from": "reader"} not in [m["data"] for m in publisher.of_type("message")]


async def test_with_no_key_configured_private_rooms_are_refused(
    server_factory: ServerFactory, clients: list[Client],
) -> None:
    server = await server_factory()
    c = await connect(server.ws_url("/ws/"))
    clients.append(c)
    await c.send(type="auth", token=token(rooms=["private-ada"]))
    await c.send(type="subscribe", room="private-ada", sub="a")
    await wait_until(lambda: errors(c, "bad_token") and errors(c, "forbidden"), what="both refused")


async def test_the_server_key_guards_private_rooms_in_the_api(server_factory: ServerFactory) -> None:
    """``--api-token`` is the server key; ``--publish-token`` stays as its older name."""
    for key_option in ("api_token", "publish_token"):
        server = await server_factory(**{key_option: "server-key"})
        http = AsyncHTTPClient()
        key = {"Authorization": "Bearer server-key"}
        for room in ("private-ada", "presence-team"):
            url = f"{server.base_url}/api/rooms/{room}"
            assert (await http.fetch(url, raise_error=False)).code == 403
            wrong = {"Authorization": "Bearer guess"}
            assert (await http.fetch(url, headers=wrong, raise_error=False)).code == 403
            assert (await http.fetch(url, headers=key, raise_error=False)).code == 200
        assert (await http.fetch(server.base_url + "/api/rooms/lobby", raise_error=False)).code == 200
        published = await http.fetch(
            server.base_url + "/api/rooms/private-ada/messages", method="POST", body='"hi"', headers=key,
            raise_error=False,
        )
        assert published.code == 202


async def test_signing_a_user_out_closes_its_sockets_everywhere_and_refuses_its_old_tokens(
    server_factory: ServerFactory, clients: list[Client],
) -> None:
    one, two, three = [await server_factory(token_secret=SECRET, api_token="server-key") for _ in range(3)]
    old = token(rooms=["private-ada-x"])
    ada = [await connect(s.ws_url("/ws/")) for s in (one, two, three, one)]
    bob = await connect(two.ws_url("/ws/"))
    clients += ada + [bob]
    for c in ada:
        await c.send(type="auth", token=old)
    await bob.send(type="auth", token=token(sub="bob"))
    for c in ada + [bob]:
        await c.next("authenticated", after=0)

    http = AsyncHTTPClient()
    url = one.base_url + "/api/users/ada/disconnect"
    assert (await http.fetch(url, method="POST", body="", raise_error=False)).code == 401
    signed_out = await http.fetch(url, method="POST", body="", headers={"Authorization": "Bearer server-key"},
                                  raise_error=False)
    assert signed_out.code == 202
    for c in ada:
        await asyncio.wait_for(c.closed.wait(), 10)
        assert c.close_code == 4001
    assert not bob.closed.is_set()

    # The old token is refused from now on, on every process and on both sockets.
    again = await connect(two.ws_url("/ws/"))
    clients.append(again)
    await again.send(type="auth", token=old)
    await wait_until(lambda: errors(again, "bad_token"), what="revoked token refused")
    with pytest.raises(HTTPClientError) as e:
        await connect(one.ws_url("/ws/count/private-ada-x/?token=" + old))
    assert e.value.code == 403
    # A token issued after the sign-out is fine.
    fresh = jwt.encode({"sub": "ada", "iat": int(time.time()) + 1, "exp": time.time() + 600,
                        "rooms": ["private-ada-x"]}, SECRET, algorithm="HS256")
    await again.send(type="auth", token=fresh)
    await again.next("authenticated", after=0)
    # One minted by our helper at once (signing in again right after being signed out) is fine too:
    # its iat is not rounded down to a second that began before the sign-out.
    at_once = await connect(three.ws_url("/ws/"))
    clients.append(at_once)
    await at_once.send(type="auth", token=rrr_client.token("ada", rooms=["private-ada-x"], secret=SECRET))
    await at_once.next("authenticated", after=0)


async def test_a_sign_out_made_while_pubsub_was_down_closes_the_socket_once_it_is_back(
    server_factory: ServerFactory, lying_redis: Callable[[], Awaitable[LyingRedis]], rclient: redis.Redis,
    clients: list[Client],
) -> None:
    """The sign-out is published on the control channel while this process is not subscribed to it,
    so the message never reaches it: the socket stayed open and kept receiving the private room's
    messages. Once the control channel is subscribed again the process reads the revocations back
    and closes the socket with 4001; a socket that signed in after the sign-out stays."""
    proxy = await lying_redis()
    server = await server_factory(redis=proxy.url, token_secret=SECRET, api_token="server-key")
    ada, bob = await connect(server.ws_url("/ws/")), await connect(server.ws_url("/ws/"))
    clients += [ada, bob]
    await ada.send(type="auth", token=token(rooms=["private-ada-x"]))
    await bob.send(type="auth", token=token(sub="bob", rooms=["private-ada-x"]))
    for c in (ada, bob):
        await c.next("authenticated", after=0)
        await c.send(type="subscribe", room="private-ada-x", sub="a")
    await ada.settles_on(2, 2, room="private-ada-x")
    reconnects = server.metric("rrr_redis_reconnects_total")

    # Cut the process's pub/sub connection; its next SUBSCRIBE is held at the proxy for 4 s.
    proxy.subscribe_delay = 4.0
    assert rclient.client_kill_filter(_type="pubsub") >= 1
    await wait_until(lambda: server.metric("rrr_redis_reconnects_total") > reconnects, what="reconnecting")
    assert dict(rclient.pubsub_numsub(keys.CONTROL_CHANNEL))[keys.CONTROL_CHANNEL] == 0
    signed_out = await AsyncHTTPClient().fetch(
        server.base_url + "/api/users/ada/disconnect", method="POST", body="",
        headers={"Authorization": "Bearer server-key"},
    )
    assert signed_out.code == 202
    assert dict(rclient.pubsub_numsub(keys.CONTROL_CHANNEL))[keys.CONTROL_CHANNEL] == 0, "published to no one"
    again = await connect(server.ws_url("/ws/"))  # ada signs in again after the sign-out: not revoked
    clients.append(again)
    await again.send(type="auth", token=rrr_client.token("ada", rooms=["private-ada-x"], secret=SECRET))
    await again.next("authenticated", after=0)

    await wait_until(lambda: dict(rclient.pubsub_numsub(keys.CONTROL_CHANNEL))[keys.CONTROL_CHANNEL] == 1,
                     what="pub/sub back")
    await asyncio.wait_for(ada.closed.wait(), 10)
    assert ada.close_code == 4001
    await asyncio.sleep(0.5)
    assert not bob.closed.is_set() and not again.closed.is_set()
    n = len(again.frames)
    await again.send(type="ping")
    await again.next("pong", after=n)


async def test_an_auth_storm_checks_revocations_in_a_few_round_trips(
    own_redis: EmbeddedRedis, server_factory: ServerFactory, clients: list[Client],
) -> None:
    """300 sockets authenticating at once: their revocation checks are batched, so the pool is not
    drained (one connection per concurrent check made hundreds time out in a 5,000-user storm)."""
    server = await server_factory(redis=own_redis.url, token_secret=SECRET)
    r = redis.Redis.from_url(own_redis.url)
    before = int(r.info("stats")["total_connections_received"])
    socks = [await connect(server.ws_url("/ws/")) for _ in range(300)]
    clients += socks
    await asyncio.gather(*(c.send(type="auth", token=token(sub=f"u{i}")) for i, c in enumerate(socks)))
    for c in socks:
        await c.next("authenticated", after=0)
    opened = int(r.info("stats")["total_connections_received"]) - before
    r.close()
    assert opened <= 4, f"{opened} new Redis connections for 300 concurrent checks"
