"""The Pusher Channels protocol (version 7) as pure functions: channel names, the frames a client
sends and receives, presence member lists, and who may subscribe, sign in and send client events.
Authorizations come from the real ``pusher`` SDK, as an app's authorization endpoint makes them."""

from __future__ import annotations

import json
from typing import Any

import pytest

from support.pusher import PUSHER_KEY, PUSHER_SECRET
from rrr.pusher import names, protocol, signing
from rrr.pusher.protocol import (
    ClientEvent, Ping, Pong, PresenceMember, PusherError, Signin, SignedInUser, Subscribe, SubscriptionError,
    Unsubscribe, parse_client_frame,
)

SOCKET = "123.456"


def frame(event: str, data: Any = None, channel: str | None = None) -> str:
    msg: dict[str, Any] = {"event": event}
    if data is not None:
        msg["data"] = data
    if channel is not None:
        msg["channel"] = channel
    return json.dumps(msg)


def received(text: str) -> dict[str, Any]:
    """A server frame as a client reads it; ``data`` must be a JSON string except on pusher:error."""
    msg = json.loads(text)
    assert isinstance(msg, dict)
    if "data" in msg and msg["event"] != "pusher:error":
        assert isinstance(msg["data"], str), f"data of {msg['event']} must be a JSON string"
        msg["data"] = json.loads(msg["data"])
    return msg


# -- names -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "foo-bar_1234@=,.;", "private-x", "presence-room.1", "Z" * 164])
def test_valid_channel_names(name: str) -> None:
    assert names.is_valid_channel_name(name) and names.channel_name_problem(name) is None


@pytest.mark.parametrize(
    "name, problem",
    [
        ("x" * 165, "longer than 164"),
        ("", "empty"),
        ("a b", "may only contain"),
        ("é", "may only contain"),
        ("a:b", "may only contain"),
        ("#server-to-user-1", "may only contain"),
        ("a\n", "may only contain"),
        (None, "must be a string"),
        (7, "must be a string"),
    ],
)
def test_invalid_channel_names_say_why(name: object, problem: str) -> None:
    assert not names.is_valid_channel_name(name)
    assert problem in (names.channel_name_problem(name) or "")


@pytest.mark.parametrize(
    "name, private, presence, encrypted, cache",
    [
        ("news", False, False, False, False),
        ("private-x", True, False, False, False),
        ("presence-x", True, True, False, False),
        ("private-encrypted-x", True, False, True, False),
        ("cache-x", False, False, False, True),
        ("private-cache-x", True, False, False, True),
        ("private-encrypted-cache-x", True, False, True, True),
        ("presence-cache-x", True, True, False, True),
        ("privatex", False, False, False, False),
        ("x-private-y", False, False, False, False),
    ],
)
def test_prefixes_keep_their_pusher_meaning(name: str, private: bool, presence: bool, encrypted: bool,
                                            cache: bool) -> None:
    kind = names.channel_kind(name)
    assert (kind.private, kind.presence, kind.encrypted, kind.cache) == (private, presence, encrypted, cache)
    assert kind.needs_auth == kind.allows_client_events == private
    assert names.is_cache_channel(name) == cache and names.is_presence_channel(name) == presence


def test_server_to_user_channels_belong_to_valid_user_ids() -> None:
    assert names.server_to_user_channel("u-1") == "#server-to-user-u-1"
    assert names.server_to_user_id("#server-to-user-u-1") == "u-1"
    for channel in ["#server-to-user-", "#server-to-user-a b", "#server-to-user-" + "u" * 129, "private-u"]:
        assert names.server_to_user_id(channel) is None


def test_socket_ids_are_unique_and_of_the_form_the_sdks_check() -> None:
    from pusher.util import validate_socket_id

    ids = names.SocketIds()
    made = [ids.new() for _ in range(1000)]
    assert len(set(made)) == 1000
    assert all(names.is_valid_socket_id(s) and validate_socket_id(s) == s for s in made)
    assert names.SocketIds().prefix != names.SocketIds().prefix  # 1 in 10**15 to fail
    for bad in ["1", "1.", ".1", "a.1", "1.2.3", "١.٢", " 1.2", None]:
        assert not names.is_valid_socket_id(bad)


# -- the connection ----------------------------------------------------------------------------


def test_connection_established_carries_socket_id_and_activity_timeout_as_a_string() -> None:
    msg = received(protocol.connection_established_frame("123.456"))
    assert msg == {"event": "pusher:connection_established", "data": {"socket_id": "123.456", "activity_timeout": 120}}


@pytest.mark.parametrize("version, code", [(None, 4008), ("", 4008), ("6", 4007), ("8", 4007), ("7.0", 4007)])
def test_protocols_other_than_7_are_refused(version: str | None, code: int) -> None:
    protocol.check_protocol("7")
    with pytest.raises(PusherError) as e:
        protocol.check_protocol(version)
    assert e.value.code == code and e.value.closes


def test_errors_carry_their_code_in_an_object() -> None:
    """``pusher:error`` data is an object: the Swift client drops one whose data is a string."""
    assert json.loads(protocol.app_does_not_exist("nope").frame()) == {
        "event": "pusher:error",
        "data": {"message": "Application does not exist: no app has the key 'nope'", "code": 4001},
    }
    assert json.loads(protocol.error_frame(None, "bad")) == {"event": "pusher:error", "data": {"message": "bad"}}
    codes = [
        protocol.over_capacity(), protocol.reconnect_now(), protocol.pong_not_received(), protocol.rate_limited(),
        protocol.watchlist_cut_error(),
    ]
    assert [(e.code, e.closes) for e in codes] == [
        (4100, True), (4200, True), (4201, True), (4301, False), (4302, False),
    ]


def test_ping_and_pong_both_ways() -> None:
    assert parse_client_frame('{"event":"pusher:ping","data":{}}') == Ping()
    assert parse_client_frame('{"event":"pusher:pong"}') == Pong()
    assert received(protocol.PONG_FRAME) == {"event": "pusher:pong", "data": {}}
    assert received(protocol.PING_FRAME) == {"event": "pusher:ping", "data": {}}


# -- parsing what a client sends ---------------------------------------------------------------


def test_subscribe_as_pusher_js_sends_it() -> None:
    """pusher-js sends ``auth: ""`` for public channels and leaves out ``channel_data`` when absent."""
    assert parse_client_frame(frame("pusher:subscribe", {"auth": "", "channel": "news"})) == Subscribe("news")
    sub = parse_client_frame(frame("pusher:subscribe", {"auth": "k:s", "channel_data": '{"user_id":1}',
                                                        "channel": "presence-x"}))
    assert sub == Subscribe("presence-x", "k:s", '{"user_id":1}')


def test_subscribe_data_may_be_a_json_string() -> None:
    text = frame("pusher:subscribe", json.dumps({"channel": "private-x", "auth": "k:s"}))
    assert parse_client_frame(text) == Subscribe("private-x", "k:s")


def test_unsubscribe_and_signin() -> None:
    assert parse_client_frame(frame("pusher:unsubscribe", {"channel": "news"})) == Unsubscribe("news")
    assert parse_client_frame(frame("pusher:signin", {"auth": "k:s", "user_data": '{"id":"1"}'})) == \
        Signin("k:s", '{"id":"1"}')


@pytest.mark.parametrize(
    "text, message",
    [
        ("not json", "Frame is not valid JSON"),
        ("[1]", "Frame must be a JSON object"),
        ('{"data":{}}', "Frame must have an 'event' string"),
        ('{"event":"pusher:dance"}', "Unsupported event 'pusher:dance'"),
        ('{"event":"hello"}', "Unsupported event 'hello'"),
        (frame("pusher:subscribe"), "pusher:subscribe needs a 'data' object"),
        (frame("pusher:subscribe", "[1]"), "pusher:subscribe needs a 'data' object"),
        (frame("pusher:subscribe", {"channel": "x" * 165}), "Invalid channel 'xxxx"),
        (frame("pusher:subscribe", {"channel": "a b"}), "Invalid channel 'a b'"),
        (frame("pusher:subscribe", {"channel": "#server-to-user-a b"}), "Invalid channel"),
        (frame("pusher:subscribe", {"channel": "private-x", "auth": 5}), "'auth' must be a string"),
        (frame("pusher:subscribe", {"channel": "presence-x", "auth": "a", "channel_data": {"user_id": 1}}),
         "'channel_data' must be a string"),
        (frame("pusher:subscribe", {"channel": "presence-x", "channel_data": "x" * 8193}), "'channel_data' is longer"),
        (frame("pusher:signin", {"auth": "a"}), "pusher:signin needs 'auth' and 'user_data' strings"),
        (frame("pusher:signin", {"auth": "a", "user_data": "x" * 8193}), "pusher:signin 'user_data' is longer"),
        (frame("client-x", {}, "news"), "Client events are only allowed on private and presence channels"),
        (frame("client-x", {}, "cache-news"), "Client events are only allowed on private and presence channels"),
        (frame("client-x", {}), "Client event 'client-x' needs the 'channel'"),
        (frame("client-" + "x" * 194, {}, "private-a"), "Event name is longer than 200"),
        (frame("client-x", "x" * 10241, "private-a"), "Client event data is larger than 10240 bytes"),
        (frame("client-x", "\ud800", "private-a"), "Client event data must be plain JSON in valid Unicode"),
        (" " * (64 * 1024 + 1), "Frame is larger than"),
    ],
)
def test_malformed_frames_are_answered_with_an_error_that_closes_nothing(text: str, message: str) -> None:
    with pytest.raises(PusherError) as e:
        parse_client_frame(text)
    assert e.value.code is None and not e.value.closes
    assert e.value.message.startswith(message), e.value.message
    assert json.loads(e.value.frame())["data"] == {"message": e.value.message}


def test_deeply_nested_frames_are_a_clean_error() -> None:
    with pytest.raises(PusherError):
        parse_client_frame('{"event":"client-x","channel":"private-a","data":' + "[" * 50000 + "]" * 50000 + "}")


def test_client_events_on_private_presence_and_encrypted_channels_carry_data_as_a_string() -> None:
    as_object = parse_client_frame(frame("client-typing", {"on": True, "who": "Zoë"}, "private-a"))
    assert as_object == ClientEvent("private-a", "client-typing", '{"on":true,"who":"Zoë"}')
    as_string = parse_client_frame(frame("client-typing", "plain", "presence-a"))
    assert as_string == ClientEvent("presence-a", "client-typing", "plain")
    assert isinstance(parse_client_frame(frame("client-x", 1, "private-encrypted-a")), ClientEvent)


def test_client_events_name_their_sender_on_presence_channels_only() -> None:
    alice = PresenceMember(42, '{"name":"Alice"}')
    on_presence = ClientEvent("presence-a", "client-typing", '{"on":true}')
    assert received(protocol.client_event_frame(on_presence, alice)) == {
        "event": "client-typing", "channel": "presence-a", "data": {"on": True}, "user_id": "42",
    }
    on_private = ClientEvent("private-a", "client-typing", "{}")
    assert "user_id" not in received(protocol.client_event_frame(on_private, alice))
    assert json.loads(protocol.not_subscribed("private-b").frame())["data"]["message"].endswith("'private-b'")


# -- subscriptions -----------------------------------------------------------------------------


def authorize(sub: Subscribe, user: SignedInUser | None = None, socket_id: str = SOCKET) -> protocol.Authorized:
    return protocol.authorize_subscription(sub, key=PUSHER_KEY, secret=PUSHER_SECRET, socket_id=socket_id, user=user)


def subscribe_with(sdk: Any, channel: str, custom_data: Any = None, socket_id: str = SOCKET) -> Subscribe:
    """The frame pusher-js sends with what the SDK's ``authenticate`` answered."""
    answer = sdk.authenticate(channel=channel, socket_id=socket_id, custom_data=custom_data)
    text = frame("pusher:subscribe", {"auth": answer["auth"], "channel_data": answer.get("channel_data"),
                                      "channel": channel})
    sub = parse_client_frame(text)
    assert isinstance(sub, Subscribe)
    return sub


def refusal(sub: Subscribe, user: SignedInUser | None = None, socket_id: str = SOCKET) -> dict[str, Any]:
    with pytest.raises(SubscriptionError) as e:
        authorize(sub, user, socket_id)
    msg = received(e.value.frame())
    assert msg["event"] == "pusher:subscription_error" and msg["channel"] == sub.channel
    assert set(msg["data"]) == {"type", "error", "status"}
    assert (msg["data"]["type"], msg["data"]["status"]) == ("AuthError", 401)
    return msg["data"]


def test_public_channels_need_no_auth() -> None:
    assert authorize(Subscribe("news")) == protocol.Authorized("news")
    assert received(protocol.subscription_succeeded_frame("news")) == {
        "event": "pusher_internal:subscription_succeeded", "channel": "news", "data": {},
    }


@pytest.mark.parametrize("channel", ["private-a", "private-encrypted-a", "private-cache-a"])
def test_private_channels_need_an_auth_signed_for_this_socket(pusher_sdk: Any, channel: str) -> None:
    sub = subscribe_with(pusher_sdk, channel)
    assert authorize(sub) == protocol.Authorized(channel)
    assert "Invalid signature" in refusal(sub, socket_id="123.457")["error"]
    assert refusal(Subscribe(channel))["error"].startswith("auth is required")
    assert "Invalid signature" in refusal(Subscribe(channel, f"{PUSHER_KEY}:{'ab' * 32}"))["error"]


def test_presence_members_come_from_the_signed_channel_data(pusher_sdk: Any) -> None:
    sub = subscribe_with(pusher_sdk, "presence-a", {"user_id": 42, "user_info": {"name": "Zoë"}})
    member = authorize(sub).member
    assert member == PresenceMember(42, '{"name":"Zoë"}') and member.key == "42"
    only_id = authorize(subscribe_with(pusher_sdk, "presence-a", {"user_id": "u-1"})).member
    assert only_id == PresenceMember("u-1", "null")


def test_presence_without_channel_data_joins_as_the_signed_in_user(pusher_sdk: Any) -> None:
    user = protocol.parse_user_data('{"id":"u-9","user_info":{"name":"Nine"}}')
    sub = subscribe_with(pusher_sdk, "presence-a")
    assert authorize(sub, user).member == PresenceMember("u-9", '{"name":"Nine"}')
    assert "needs channel_data" in refusal(sub)["error"]


@pytest.mark.parametrize(
    "custom_data, reason",
    [
        ({"user_id": True}, "'user_id' must be a string or an integer"),
        ({"user_id": 1.5}, "'user_id' must be a string or an integer"),
        ({"user_info": {}}, "'user_id' must be a string or an integer"),
        ({"user_id": ""}, "'user_id' must be 1 to 128 characters"),
        ({"user_id": "u" * 129}, "'user_id' must be 1 to 128 characters"),
        ({"user_id": "u", "user_info": {"bio": "x" * 1020}}, "'user_info' is larger than 1024 bytes"),
    ],
)
def test_presence_data_over_the_caps_is_refused(pusher_sdk: Any, custom_data: Any, reason: str) -> None:
    """Even signed by the app server: a member list is stored and sent to every member."""
    assert refusal(subscribe_with(pusher_sdk, "presence-a", custom_data))["error"] == f"Invalid channel_data: {reason}"


def test_user_info_cap_counts_bytes_not_the_sdks_escapes(pusher_sdk: Any) -> None:
    """The SDK escapes "€" as six characters; the cap is on the info as stored: 3 bytes each."""
    sub = subscribe_with(pusher_sdk, "presence-a", {"user_id": "u", "user_info": "€" * 340})
    assert sub.channel_data is not None and len(sub.channel_data) > 2000
    member = authorize(sub).member
    assert member is not None and len(member.info_json.encode()) == 1022


def test_a_server_to_user_channel_is_only_for_that_signed_in_user() -> None:
    mine = SignedInUser("u-1", '{"id":"u-1"}')
    other = SignedInUser("u-2", '{"id":"u-2"}')
    sub = Subscribe("#server-to-user-u-1")
    assert authorize(sub, mine) == protocol.Authorized("#server-to-user-u-1")
    assert "Only the signed-in user" in refusal(sub, other)["error"]
    assert "Only the signed-in user" in refusal(sub)["error"]


# -- presence member lists ---------------------------------------------------------------------


def test_presence_data_lists_each_user_once_with_ids_as_given() -> None:
    members = [
        PresenceMember(42, '{"name":"Max"}'),
        PresenceMember("u-1", '{"name":"Zoë"}'),
        PresenceMember("42", '{"name":"Other tab"}'),  # same user as 42: compared as decimal text
        PresenceMember("u-2"),
    ]
    data = json.loads(protocol.presence_data(members))
    assert data == {"presence": {
        "ids": [42, "u-1", "u-2"],
        "hash": {"42": {"name": "Max"}, "u-1": {"name": "Zoë"}, "u-2": None},
        "count": 3,
    }}
    msg = received(protocol.subscription_succeeded_frame("presence-a", protocol.presence_data(members)))
    assert msg["data"] == data and msg["channel"] == "presence-a"
    assert json.loads(protocol.presence_data([])) == {"presence": {"ids": [], "hash": {}, "count": 0}}


def test_member_added_and_removed() -> None:
    member = PresenceMember(7, '{"a":1}')
    assert received(protocol.member_added_frame("presence-a", member)) == {
        "event": "pusher_internal:member_added", "channel": "presence-a", "data": {"user_id": 7, "user_info": {"a": 1}},
    }
    assert received(protocol.member_removed_frame("presence-a", member)) == {
        "event": "pusher_internal:member_removed", "channel": "presence-a", "data": {"user_id": 7},
    }


# -- signing in --------------------------------------------------------------------------------


def signin_with(sdk: Any, user_data: dict[str, Any], socket_id: str = SOCKET) -> Signin:
    answer = sdk.authenticate_user(socket_id=socket_id, user_data=user_data)
    sig = parse_client_frame(frame("pusher:signin", {"auth": answer["auth"], "user_data": answer["user_data"]}))
    assert isinstance(sig, Signin)
    return sig


def test_signin_with_the_sdks_authentication(pusher_sdk: Any) -> None:
    sig = signin_with(pusher_sdk, {"id": "u-1", "user_info": {"name": "Zoë"}, "watchlist": ["u-2", "u-3"]})
    user = protocol.signin(sig, key=PUSHER_KEY, secret=PUSHER_SECRET, socket_id=SOCKET)
    assert (user.id, user.info_json, user.watchlist) == ("u-1", '{"name":"Zoë"}', ("u-2", "u-3"))
    assert not user.watchlist_cut
    assert received(protocol.signin_success_frame(user)) == {
        "event": "pusher:signin_success", "data": {"user_data": sig.user_data},
    }


def test_signin_for_another_socket_closes_the_connection_unauthorized(pusher_sdk: Any) -> None:
    sig = signin_with(pusher_sdk, {"id": "u-1"}, socket_id="1.1")
    with pytest.raises(PusherError) as e:
        protocol.signin(sig, key=PUSHER_KEY, secret=PUSHER_SECRET, socket_id=SOCKET)
    assert e.value.code == 4009 and e.value.closes and "Invalid signature" in e.value.message


@pytest.mark.parametrize(
    "user_data, reason",
    [
        ('{"id":1}', "user_data 'id' must be a string"),
        ('{"id":""}', "user_data 'id' must be a string"),
        ('{"id":"a b"}', "user_data 'id' must be a string"),
        ('{"name":"x"}', "user_data 'id' must be a string"),
        ('[1]', "user_data must be a JSON object"),
        ("nope", "user_data is not JSON"),
        ('{"id":"u","watchlist":"u-2"}', "user_data 'watchlist' must be a list of user ids"),
        ('{"id":"u","user_info":"' + "x" * 1100 + '"}', "'user_info' is larger than 1024 bytes"),
    ],
)
def test_signed_user_data_must_name_a_user(user_data: str, reason: str) -> None:
    sig = Signin(signing.user_auth(PUSHER_KEY, PUSHER_SECRET, SOCKET, user_data), user_data)
    with pytest.raises(PusherError) as e:
        protocol.signin(sig, key=PUSHER_KEY, secret=PUSHER_SECRET, socket_id=SOCKET)
    assert e.value.code == 4009 and reason in e.value.message


def test_a_long_watchlist_is_cut_to_100_and_said_so() -> None:
    user = protocol.parse_user_data(json.dumps({"id": "u", "watchlist": [f"w{i}" for i in range(150)]}))
    assert user.watchlist == tuple(f"w{i}" for i in range(100)) and user.watchlist_cut


def test_a_signed_in_user_joins_presence_with_its_own_info() -> None:
    user = protocol.parse_user_data('{"id":"u-1","user_info":{"x":1}}')
    assert user.as_member() == PresenceMember("u-1", '{"x":1}')


# -- channel events ----------------------------------------------------------------------------


def test_channel_events_carry_data_as_the_string_given() -> None:
    assert json.loads(protocol.channel_event_frame("news", "update", '{"a":1}')) == {
        "event": "update", "channel": "news", "data": '{"a":1}',
    }
    assert json.loads(protocol.channel_event_frame("news", "update", "plain"))["data"] == "plain"


def test_cache_miss_names_the_channel() -> None:
    assert received(protocol.cache_miss_frame("cache-prices")) == {
        "event": "pusher:cache_miss", "channel": "cache-prices", "data": {},
    }
