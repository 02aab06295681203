"""``--token-jwks-url``: an identity provider's published keys verify tokens, chosen by ``kid``,
kept current without a restart, fetched again for an unknown ``kid`` at most once per 30 s; and
beside them HMAC secrets (a comma list), ``aud``/``iss``, and the algorithm each key is pinned to.

The provider is a real HTTP server on loopback (`conftest.JwksServer`) that counts its requests;
rrr is ``python app.py`` itself, and the key set object `rrr.jwks.JwksKeys` is also driven
directly, against that server, where a test needs a clock it can move."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
from tornado.httpclient import HTTPClientError

from support.clients import connect, wait_until
from support.jwks import JwksServer, SigningKey, hand_signed
from support.processes import ROOT, AppProcess
from rrr.auth import UnknownKeyError, Verifier
from rrr.jwks import JwksKeys
from rrr.metrics import Metrics
from rrr.supervise import Supervisor

pytestmark = pytest.mark.gen_test(timeout=90)

AppFactory = Callable[..., AppProcess]
SECRET = "jwks-test-secret-of-a-decent-length"


def claims(sub: str = "ada", rooms: tuple[str, ...] = ("private-ada",), **extra: Any) -> dict[str, Any]:
    now = time.time()
    out: dict[str, Any] = {"sub": sub, "iat": int(now), "exp": int(now + 600), "rooms": list(rooms)}
    out.update(extra)
    return out


async def auth(app: AppProcess, token: str) -> dict[str, Any]:
    """What ``/ws/`` answers an ``auth`` with this token: ``authenticated``, or the error."""
    c = await connect(f"ws://127.0.0.1:{app.port}/ws/")
    try:
        await c.send(type="auth", token=token)
        frame: dict[str, Any] = await wait_until(
            lambda: next((f for f in c.frames if f.get("type") in ("authenticated", "error")), None),
            what="an answer to auth",
        )
        return frame
    finally:
        c.close()
        c._reader.cancel()


async def accepted(app: AppProcess, token: str) -> bool:
    """Whether both sockets take the token: ``auth`` on ``/ws/`` and the one-room socket's handshake."""
    answer = await auth(app, token)
    status = await handshake(app, "private-ada", token)
    assert (answer["type"] == "authenticated") == (status == 101), (answer, status)
    return status == 101


async def refused(app: AppProcess, token: str) -> str:
    """The ``bad_token`` reason ``/ws/`` gives, once the handshake was refused with 403 too."""
    answer = await auth(app, token)
    assert answer.get("code") == "bad_token", answer
    assert await handshake(app, "private-ada", token) == 403
    reason: str = answer["reason"]
    return reason


async def handshake(app: AppProcess, room: str, token: str) -> int:
    """The status of ``/ws/count/<room>/?token=``: 101, or the refusal's."""
    try:
        c = await connect(f"ws://127.0.0.1:{app.port}/ws/count/{room}/?token={token}")
    except HTTPClientError as e:
        return e.code
    c.close()
    c._reader.cancel()
    return 101


def start(app_factory: AppFactory, redis_url: str, jwks: JwksServer | None = None, **options: Any) -> AppProcess:
    if jwks is not None:
        options["token_jwks_url"] = jwks.url
    return app_factory(redis_url=redis_url, **options)


# -- keys by kid ----------------------------------------------------------------------------------


async def test_each_published_key_verifies_the_tokens_that_name_it(
    app_factory: AppFactory, redis_url: str, jwks_server: JwksServer,
) -> None:
    rsa, ec, ed = SigningKey.new("RS256", "r1"), SigningKey.new("ES256", "e1"), SigningKey.new("EdDSA", "d1")
    jwks_server.publish(rsa, ec, ed)
    app = start(app_factory, redis_url, jwks_server)
    assert jwks_server.fetches == 1  # fetched at start, before it served

    for key in (rsa, ec, ed):
        assert await accepted(app, key.sign(claims())), key.alg
    assert (await auth(app, ec.sign(claims(sub="bo"))))["user"] == "bo"
    # A token without kid is tried against each key of its algorithm's type.
    assert await accepted(app, ec.sign(claims(), headers={"kid": None}))
    # The kid names the key, and the key its algorithm: the RSA key's id on an ES256 token is refused.
    assert "does not match key 'r1' (RS256)" in await refused(app, ec.sign(claims(), headers={"kid": "r1"}))
    assert "Signature verification failed" in await refused(app, SigningKey.new("ES256", "e1").sign(claims()))
    assert jwks_server.fetches == 1  # every key named was held: nothing fetched again


async def test_a_rotation_is_picked_up_without_a_restart(
    app_factory: AppFactory, redis_url: str, jwks_server: JwksServer,
) -> None:
    old, new = SigningKey.new("RS256", "2024-01"), SigningKey.new("RS256", "2024-07")
    jwks_server.publish(old)
    app = start(app_factory, redis_url, jwks_server)
    assert await accepted(app, old.sign(claims()))

    jwks_server.publish(new)  # the provider rotates: the new key appears, the old one goes
    assert await accepted(app, new.sign(claims()))  # its unknown kid fetched the set at once
    assert jwks_server.fetches == 2
    assert "unknown key id '2024-01'" in await refused(app, old.sign(claims()))  # the set was replaced
    assert jwks_server.fetches == 2  # and the old kid, now unknown, fetched nothing within 30 s
    assert app.proc is not None and app.proc.poll() is None


async def test_a_flood_of_unknown_kids_fetches_the_key_set_at_most_once_per_30_s(
    app_factory: AppFactory, redis_url: str, jwks_server: JwksServer,
) -> None:
    first = SigningKey.new("ES256", "first")
    jwks_server.publish(first)
    app = start(app_factory, redis_url, jwks_server)
    assert jwks_server.fetches == 1
    later = SigningKey.new("ES256", "later")
    jwks_server.publish(first, later)

    async def flood(n: int) -> list[dict[str, Any]]:
        made_up = [first.sign(claims(), headers={"kid": f"made-up-{i}"}) for i in range(n)]
        return await asyncio.gather(*(auth(app, t) for t in made_up))

    answers = await flood(40)
    assert all(a.get("code") == "bad_token" and "unknown key id 'made-up-" in a["reason"] for a in answers)
    assert jwks_server.fetches == 2  # the first unknown kid fetched at once; the other 39 shared or waited
    assert await accepted(app, later.sign(claims()))  # that fetch brought the key published meanwhile

    answers = await flood(40)
    statuses = await asyncio.gather(*(handshake(app, "private-ada", first.sign(claims(), headers={"kid": f"h{i}"}))
                                      for i in range(20)))
    assert all(a.get("code") == "bad_token" for a in answers) and set(statuses) == {403}
    assert jwks_server.fetches == 2  # within 30 s of that fetch: none more, however many ask


async def test_a_failed_fetch_keeps_the_key_set(
    app_factory: AppFactory, redis_url: str, jwks_server: JwksServer,
) -> None:
    held = SigningKey.new("RS256", "held")
    jwks_server.publish(held)
    app = start(app_factory, redis_url, jwks_server)
    jwks_server.answer(500, b"provider trouble")
    assert "unknown key id 'other'" in await refused(app, held.sign(claims(), headers={"kid": "other"}))
    assert jwks_server.fetches == 2
    assert await accepted(app, held.sign(claims()))  # the failed fetch replaced nothing
    await wait_until(lambda: "answered 500" in app.log(), what="the failed fetch logged")


async def test_a_provider_down_at_start_is_no_reason_not_to_serve(
    app_factory: AppFactory, redis_url: str, jwks_server: JwksServer,
) -> None:
    key = SigningKey.new("EdDSA", "k1")
    jwks_server.answer(503, b"")
    app = start(app_factory, redis_url, jwks_server, token_secret=SECRET)
    assert "starting without the key set" in app.log()
    assert await accepted(app, hand_signed({"alg": "HS256"}, claims(), SECRET.encode()))  # the secret works

    jwks_server.publish(key)
    # Its kid is unknown: the handshake waits for a fetch of the set, which has it now.
    assert await handshake(app, "private-ada", key.sign(claims())) == 101
    assert jwks_server.fetches == 2
    assert await accepted(app, key.sign(claims()))


# -- audience, issuer, algorithms, secrets ---------------------------------------------------------


async def test_audience_and_issuer_are_enforced_when_set(
    app_factory: AppFactory, redis_url: str, jwks_server: JwksServer,
) -> None:
    key = SigningKey.new("RS256", "k1")
    jwks_server.publish(key)
    issuer = "https://tenant.issuer.example/"
    app = start(app_factory, redis_url, jwks_server, token_secret=SECRET, token_audience="rrr-live",
                token_issuer=issuer)
    right: dict[str, Any] = {"aud": "rrr-live", "iss": issuer}
    assert await accepted(app, key.sign(claims(**right)))
    assert await accepted(app, key.sign(claims(aud=["api", "rrr-live"], iss=issuer)))
    assert await accepted(app, hand_signed({"alg": "HS256"}, claims(**right), SECRET.encode()))
    assert "'aud' must be or contain 'rrr-live'" in await refused(app, key.sign(claims(iss=issuer)))
    assert "'aud' must be or contain 'rrr-live'" in await refused(app, key.sign(claims(aud="api", iss=issuer)))
    assert "'iss' must be 'https://tenant.issuer.example/'" in await refused(app, key.sign(claims(aud="rrr-live")))
    assert "'iss' must be" in await refused(
        app, hand_signed({"alg": "HS256"}, claims(aud="rrr-live", iss="https://evil.example/"), SECRET.encode()))


async def test_an_hs256_token_signed_with_the_public_key_is_refused(
    app_factory: AppFactory, redis_url: str, jwks_server: JwksServer, tmp_path: Any,
) -> None:
    """The classic confusion: a verifier that lets the token's ``alg`` choose would check an HMAC
    keyed with the (public) RSA key, which anyone can compute."""
    key = SigningKey.new("RS256", "r1")
    jwks_server.publish(key)
    pem = tmp_path / "public.pem"
    pem.write_bytes(key.public_pem())
    for options in ({}, {"token_secret": SECRET}, {"token_public_key": str(pem)}):
        app = start(app_factory, redis_url, jwks_server, **options)
        assert await accepted(app, key.sign(claims()))
        for header in ({"alg": "HS256", "kid": "r1"}, {"alg": "HS256"}):
            reason = await refused(app, hand_signed(header, claims(), key.public_pem()))
            assert any(why in reason for why in (
                "'HS256' does not match key 'r1' (RS256)", "'HS256' is not accepted here", "Signature verification",
            )), reason
            if "kid" in header:
                assert "does not match key 'r1'" in reason
        app.stop()


async def test_alg_none_is_refused(app_factory: AppFactory, redis_url: str, jwks_server: JwksServer) -> None:
    key = SigningKey.new("ES256", "e1")
    jwks_server.publish(key)
    app = start(app_factory, redis_url, jwks_server, token_secret=SECRET)
    for alg in ("none", "None", "NONE"):
        for header in ({"alg": alg}, {"alg": alg, "kid": "e1"}):
            assert f"token algorithm '{alg}' is not accepted" in await refused(app, hand_signed(header, claims(), None))
    assert await accepted(app, key.sign(claims()))


async def test_each_of_two_secrets_verifies(app_factory: AppFactory, redis_url: str, jwks_server: JwksServer) -> None:
    new, old = "rotated-in-secret-of-decent-length-1", "rotated-out-secret-of-decent-length"
    key = SigningKey.new("ES256", "e1")
    jwks_server.publish(key)
    app = start(app_factory, redis_url, jwks_server, token_secret=f"{new}, {old}")
    assert await accepted(app, hand_signed({"alg": "HS256"}, claims(), new.encode()))
    assert await accepted(app, hand_signed({"alg": "HS256"}, claims(), old.encode()))
    assert await accepted(app, key.sign(claims()))  # the key set beside them
    assert "Signature verification failed" in await refused(
        app, hand_signed({"alg": "HS256"}, claims(), b"a-third-secret-nobody-configured"))


# -- where keys may come from --------------------------------------------------------------------


@pytest.mark.parametrize("url", ["http://issuer.example/.well-known/jwks.json", "ftp://127.0.0.1/jwks.json",
                                 "https://"])
@pytest.mark.parametrize("how", ["option", "environment"])
def test_a_key_set_url_rrr_may_not_fetch_stops_it_at_start(url: str, how: str) -> None:
    argv = [sys.executable, str(ROOT / "app.py"), "--port", "0"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RRR_")}
    if how == "option":
        argv.append(f"--token-jwks-url={url}")
    else:
        env["RRR_TOKEN_JWKS_URL"] = url
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        "rrr: --token-jwks-url must be an https:// URL, or http:// to a loopback host (127.0.0.1, ::1, localhost), "
        f"not {url!r}"
    ]
    assert "redis" not in done.stdout + done.stderr  # refused before anything started


# -- the key set object, against the same real server ---------------------------------------------


async def test_every_kind_of_failed_fetch_keeps_the_key_set_and_a_good_one_replaces_it(
    jwks_server: JwksServer, caplog: pytest.LogCaptureFixture,
) -> None:
    held, next_key = SigningKey.new("RS256", "held"), SigningKey.new("ES256", "next")
    jwks_server.publish(held)
    metrics = Metrics()
    supervisor = Supervisor(metrics, log_every=0)  # every failure logged, none held back
    keys = JwksKeys(jwks_server.url, max_bytes=64 * 1024, timeout=1.0)
    await keys.start(supervisor)
    assert [k.kid for k in keys.keys] == ["held"]

    async def fails(why: str) -> None:
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            assert not await keys.refresh(), why
        assert [k.kid for k in keys.keys] == ["held"], why
        assert "jwks failed: JwksError: " in caplog.text and why in caplog.text, (why, caplog.text)

    silent = socket.socket()  # accepts connections (the kernel does) and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        for status, body, why in [
            (500, b"oops", "answered 500"),
            (302, b"", "redirects are not followed"),
            (200, b"<html>not json</html>", "not JSON"),
            (200, b'{"keys": "none"}', "not a JWK Set"),
            (200, b"[" * 60_000, "not JSON"),  # too deep for the parser
            (200, b'{"keys": [], "pad": "' + b"x" * 70_000 + b'"}', "the key set is over 65536 bytes (70023)"),
        ]:
            jwks_server.answer(status, body)
            await fails(why)
        jwks_server.chunked = True  # no Content-Length to judge by: cut off once past the cap
        await fails("(at most 65536 are read)")
        jwks_server.chunked = False
        keys.url = f"http://127.0.0.1:{silent.getsockname()[1]}/jwks.json"
        keys.timeout = 0.5
        await fails("Timeout")
        keys.url = jwks_server.url
    finally:
        silent.close()
    assert metrics.registry.get_sample_value("rrr_task_errors_total", {"task": "jwks"}) == 8

    jwks_server.publish(next_key)
    assert await keys.refresh() and [k.kid for k in keys.keys] == ["next"]
    jwks_server.answer(200, b'{"keys": []}')  # the provider withdrew every key: so do we
    assert await keys.refresh() and keys.keys == ()
    await supervisor.close()


async def test_unknown_kid_refetches_are_spaced_by_the_interval_and_share_a_fetch(jwks_server: JwksServer) -> None:
    jwks_server.publish(SigningKey.new("EdDSA", "d1"))
    now = [1000.0]
    keys = JwksKeys(jwks_server.url, clock=lambda: now[0])
    assert await keys.refresh() and jwks_server.fetches == 1
    assert keys.may_refetch()
    assert all(await asyncio.gather(*(keys.refetch() for _ in range(25))))  # joined one fetch
    assert jwks_server.fetches == 2
    assert not keys.may_refetch() and not await keys.refetch()
    now[0] += 29.9
    assert not await keys.refetch() and jwks_server.fetches == 2
    now[0] += 0.1
    assert await keys.refetch() and jwks_server.fetches == 3
    # A periodic or startup fetch does not hold an unknown kid back: only unknown-kid fetches count.
    await keys.refresh()
    now[0] += 30
    assert await keys.refetch() and jwks_server.fetches == 5


async def test_the_key_set_is_refreshed_periodically_so_a_withdrawn_key_stops_verifying(
    jwks_server: JwksServer,
) -> None:
    withdrawn, kept = SigningKey.new("ES256", "withdrawn"), SigningKey.new("ES256", "kept")
    jwks_server.answer(503, b"")
    supervisor = Supervisor(Metrics())
    keys = JwksKeys(jwks_server.url, refresh_every=0.2, min_interval=0.3)
    verifier = Verifier(jwks=keys)
    await keys.start(supervisor)  # the provider is down: started without keys, retried
    try:
        assert keys.keys == () and not keys.ok
        jwks_server.publish(withdrawn, kept)
        await wait_until(lambda: len(keys.keys) == 2, what="the retry after a failed start")
        assert verifier.verify(withdrawn.sign(claims())).user == "ada"

        jwks_server.publish(kept)  # no token asks: the periodic refresh alone notices
        await wait_until(lambda: [k.kid for k in keys.keys] == ["kept"], what="a periodic refresh")
        with pytest.raises(UnknownKeyError, match="unknown key id 'withdrawn'"):
            verifier.verify(withdrawn.sign(claims()))
        assert verifier.verify(kept.sign(claims())).user == "ada"
    finally:
        await supervisor.close()
