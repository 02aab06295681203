"""Pusher signatures (channel authorization, user authentication, webhooks) agree with the real
``pusher`` SDK and with the worked examples of Pusher's "Authentication and authorization
signatures" page, and refuse anything signed for something else."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from rrr.pusher import signing, webhooks
from rrr.pusher.signing import AuthError, WebhookError
from support.pusher import PUSHER_KEY, PUSHER_SECRET

SOCKET = "1234.1234"


# -- channel authorization ---------------------------------------------------------------------

# Pusher's own worked examples (key 278d425bdf160c739803, secret 7ad3773142a6692b25b8). The page
# shows the presence example's user as "Mr. Channels", but its signature was computed before the
# product's rename: it is the signature of "Mr. Pusher".
DOC_VECTORS = [
    ("private-foobar", None, "58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"),
    (
        "presence-foobar",
        '{"user_id":10,"user_info":{"name":"Mr. Pusher"}}',
        "afaed3695da2ffd16931f457e338e6c9f2921fa133ce7dac49f529792be6304c",
    ),
]


@pytest.mark.parametrize("channel, channel_data, signature", DOC_VECTORS)
def test_channel_auth_matches_the_documented_examples(channel: str, channel_data: str | None, signature: str) -> None:
    auth = signing.channel_auth(PUSHER_KEY, PUSHER_SECRET, SOCKET, channel, channel_data)
    assert auth == f"{PUSHER_KEY}:{signature}"
    signing.verify_channel_auth(PUSHER_KEY, PUSHER_SECRET, SOCKET, channel, auth, channel_data)


@pytest.mark.parametrize(
    "channel, custom_data",
    [
        ("private-orders", None),
        ("private-encrypted-vault", None),
        ("presence-room.1", {"user_id": "u-1", "user_info": {"name": "Zoë", "tags": ["a", "b"]}}),
        ("presence-room.2", {"user_id": 42, "user_info": {"name": "Max"}}),
        ("presence-cache-x", {"user_id": "only-id"}),
    ],
)
def test_channel_auth_equals_what_the_python_sdk_signs(pusher_sdk: Any, channel: str, custom_data: Any) -> None:
    """The SDK's ``authenticate`` is what an app's authorization endpoint answers: ours must both
    compute the same string and accept the SDK's ``channel_data`` exactly as it serialised it."""
    answer = pusher_sdk.authenticate(channel=channel, socket_id=SOCKET, custom_data=custom_data)
    channel_data = answer.get("channel_data")
    assert signing.channel_auth(PUSHER_KEY, PUSHER_SECRET, SOCKET, channel, channel_data) == answer["auth"]
    signing.verify_channel_auth(PUSHER_KEY, PUSHER_SECRET, SOCKET, channel, answer["auth"], channel_data)


def test_a_forged_channel_auth_is_refused() -> None:
    forged = f"{PUSHER_KEY}:{'0' * 64}"
    with pytest.raises(AuthError) as e:
        signing.verify_channel_auth(PUSHER_KEY, PUSHER_SECRET, SOCKET, "private-x", forged)
    assert "Invalid signature" in e.value.message and "1234.1234:private-x" in e.value.message


def test_auth_signed_for_another_socket_is_refused(pusher_sdk: Any) -> None:
    """A leaked ``auth`` is bound to the connection it was issued for."""
    auth = pusher_sdk.authenticate(channel="private-x", socket_id="1.2")["auth"]
    signing.verify_channel_auth(PUSHER_KEY, PUSHER_SECRET, "1.2", "private-x", auth)
    with pytest.raises(AuthError, match="Invalid signature"):
        signing.verify_channel_auth(PUSHER_KEY, PUSHER_SECRET, "1.3", "private-x", auth)


def test_auth_signed_for_another_channel_is_refused(pusher_sdk: Any) -> None:
    auth = pusher_sdk.authenticate(channel="private-x", socket_id=SOCKET)["auth"]
    with pytest.raises(AuthError, match="Invalid signature"):
        signing.verify_channel_auth(PUSHER_KEY, PUSHER_SECRET, SOCKET, "private-y", auth)


def test_presence_data_changed_after_signing_is_refused(pusher_sdk: Any) -> None:
    answer = pusher_sdk.authenticate(channel="presence-x", socket_id=SOCKET, custom_data={"user_id": "alice"})
    forged_data = answer["channel_data"].replace("alice", "admin")
    with pytest.raises(AuthError, match="Invalid signature"):
        signing.verify_channel_auth(PUSHER_KEY, PUSHER_SECRET, SOCKET, "presence-x", answer["auth"], forged_data)
    with pytest.raises(AuthError, match="Invalid signature"):  # nor may it be left out
        signing.verify_channel_auth(PUSHER_KEY, PUSHER_SECRET, SOCKET, "presence-x", answer["auth"], None)


def test_auth_from_another_app_is_refused() -> None:
    auth = signing.channel_auth("other-key", PUSHER_SECRET, SOCKET, "private-x")
    with pytest.raises(AuthError, match="not this app's key"):
        signing.verify_channel_auth(PUSHER_KEY, PUSHER_SECRET, SOCKET, "private-x", auth)
    other_secret = signing.channel_auth(PUSHER_KEY, "another-secret", SOCKET, "private-x")
    with pytest.raises(AuthError, match="Invalid signature"):
        signing.verify_channel_auth(PUSHER_KEY, PUSHER_SECRET, SOCKET, "private-x", other_secret)


@pytest.mark.parametrize("auth", [None, "", "no-colon", 17, "é:☃", f"{PUSHER_KEY}:\ud800"])
def test_malformed_auth_is_refused_with_a_message(auth: object) -> None:
    with pytest.raises(AuthError) as e:
        signing.verify_channel_auth(PUSHER_KEY, PUSHER_SECRET, SOCKET, "private-x", auth)
    assert e.value.message


# -- user authentication (pusher:signin) -------------------------------------------------------


def test_user_auth_matches_the_documented_example() -> None:
    auth = signing.user_auth(PUSHER_KEY, PUSHER_SECRET, SOCKET, '{"id":"12345"}')
    assert auth == f"{PUSHER_KEY}:4708d583dada6a56435fb8bc611c77c359a31eebde13337c16ab43aa6de336ba"


def test_user_auth_equals_what_the_python_sdk_signs(pusher_sdk: Any) -> None:
    answer = pusher_sdk.authenticate_user(
        socket_id=SOCKET, user_data={"id": "u-1", "user_info": {"name": "Zoë"}, "watchlist": ["u-2"]},
    )
    assert signing.user_auth(PUSHER_KEY, PUSHER_SECRET, SOCKET, answer["user_data"]) == answer["auth"]
    signing.verify_user_auth(PUSHER_KEY, PUSHER_SECRET, SOCKET, answer["auth"], answer["user_data"])
    with pytest.raises(AuthError, match="Invalid signature"):
        signing.verify_user_auth(PUSHER_KEY, PUSHER_SECRET, "9.9", answer["auth"], answer["user_data"])


def test_a_channel_auth_does_not_sign_a_user_in() -> None:
    """The ``::user::`` separator keeps the two kinds of signature apart."""
    auth = signing.channel_auth(PUSHER_KEY, PUSHER_SECRET, SOCKET, "private-x")
    with pytest.raises(AuthError):
        signing.verify_user_auth(PUSHER_KEY, PUSHER_SECRET, SOCKET, auth, '{"id":"x"}')


# -- webhooks ----------------------------------------------------------------------------------

ALL_WEBHOOK_EVENTS = [
    webhooks.channel_occupied("orders"),
    webhooks.channel_vacated("orders"),
    webhooks.member_added("presence-room", 42),
    webhooks.member_removed("presence-room", "alice"),
    webhooks.client_event("presence-room", "client-typing", '{"on":true}', "1.2", user_id="alice"),
    webhooks.client_event("private-room", "client-typing", "{}", "1.3"),
    webhooks.cache_miss("cache-prices"),
    webhooks.subscription_count("orders", 3),
]


def test_the_python_sdk_accepts_our_webhooks(pusher_sdk: Any) -> None:
    now_ms = int(time.time() * 1000)
    body, headers = webhooks.signed_webhook(PUSHER_KEY, PUSHER_SECRET, ALL_WEBHOOK_EVENTS, now_ms)
    payload = pusher_sdk.validate_webhook(
        key=headers["X-Pusher-Key"], signature=headers["X-Pusher-Signature"], body=body,
    )
    assert payload == {"time_ms": now_ms, "events": ALL_WEBHOOK_EVENTS}
    assert signing.verify_webhook(
        PUSHER_KEY, PUSHER_SECRET, headers["X-Pusher-Key"], headers["X-Pusher-Signature"], body, now_ms=now_ms,
    ) == payload


def test_webhook_event_shapes_are_pushers() -> None:
    by_name = {e["name"]: e for e in ALL_WEBHOOK_EVENTS}
    assert by_name["channel_occupied"] == {"name": "channel_occupied", "channel": "orders"}
    assert by_name["member_added"] == {"name": "member_added", "channel": "presence-room", "user_id": "42"}
    assert by_name["member_removed"]["user_id"] == "alice"
    assert ALL_WEBHOOK_EVENTS[4] == {
        "name": "client_event", "channel": "presence-room", "event": "client-typing", "data": '{"on":true}',
        "socket_id": "1.2", "user_id": "alice",
    }
    assert "user_id" not in ALL_WEBHOOK_EVENTS[5]
    assert by_name["cache_miss"] == {"name": "cache_miss", "channel": "cache-prices"}


def test_a_changed_webhook_body_or_key_is_refused_by_the_sdk_and_by_us(pusher_sdk: Any) -> None:
    now_ms = int(time.time() * 1000)
    body, headers = webhooks.signed_webhook(PUSHER_KEY, PUSHER_SECRET, [webhooks.channel_vacated("a")], now_ms)
    changed = body.replace(b'"a"', b'"b"')
    signature = headers["X-Pusher-Signature"]
    assert pusher_sdk.validate_webhook(key=PUSHER_KEY, signature=signature, body=changed) is None
    assert pusher_sdk.validate_webhook(key="other", signature=signature, body=body) is None
    with pytest.raises(WebhookError, match="does not match"):
        signing.verify_webhook(PUSHER_KEY, PUSHER_SECRET, PUSHER_KEY, signature, changed, now_ms=now_ms)
    with pytest.raises(WebhookError, match="key"):
        signing.verify_webhook(PUSHER_KEY, PUSHER_SECRET, "other", signature, body, now_ms=now_ms)


def test_a_webhook_signed_long_ago_is_refused_so_retries_are_built_again(pusher_sdk: Any) -> None:
    """The SDK drops a webhook whose ``time_ms`` is over 300 s old, even with a good signature."""
    old_ms = int(time.time() * 1000) - 301_000
    body, headers = webhooks.signed_webhook(PUSHER_KEY, PUSHER_SECRET, [webhooks.channel_vacated("a")], old_ms)
    assert pusher_sdk.validate_webhook(key=PUSHER_KEY, signature=headers["X-Pusher-Signature"], body=body) is None
    with pytest.raises(WebhookError, match="time_ms"):
        signing.verify_webhook(
            PUSHER_KEY, PUSHER_SECRET, PUSHER_KEY, headers["X-Pusher-Signature"], body, now_ms=time.time() * 1000,
        )


def test_webhook_body_is_compact_json_with_integer_time() -> None:
    body = webhooks.webhook_body([webhooks.cache_miss("cache-x")], 1327078148132.7)
    assert body == b'{"time_ms":1327078148132,"events":[{"name":"cache_miss","channel":"cache-x"}]}'
    assert json.loads(body)["time_ms"] == 1327078148132
