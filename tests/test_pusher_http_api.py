"""The Pusher HTTP API's request checks: requests the real ``pusher`` SDK sends (recorded on a
loopback server) are accepted and parsed; the same requests tampered with are refused with
Pusher's statuses and messages; bodies and queries are validated into typed values."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

import pytest

from support.pusher import PUSHER_APP_ID, PUSHER_KEY, PUSHER_SECRET, RecordedRequest, RequestRecorder
from rrr.pusher import api, signing
from rrr.pusher.api import ChannelState, Event
from rrr.pusher.signing import ApiError, ApiRequest


def verify(req: RecordedRequest, now: float | None = None, path: str | None = None,
           method: str | None = None) -> ApiRequest:
    return signing.verify_api_request(
        method or req.method, path or req.path, req.query, req.body, key=PUSHER_KEY, secret=PUSHER_SECRET,
        now=time.time() if now is None else now,
    )


def refused(req: RecordedRequest, **kwargs: Any) -> ApiError:
    with pytest.raises(ApiError) as e:
        verify(req, **kwargs)
    return e.value


def timestamp_of(req: RecordedRequest) -> int:
    return int(dict(p.split("=", 1) for p in req.query.split("&"))["auth_timestamp"])


# -- what the spec and the SDKs sign -----------------------------------------------------------

SPEC_BODY = b'{"name":"foo","channels":["project-3"],"data":"{\\"some\\":\\"data\\"}"}'
SPEC_QUERY = (
    "auth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0"
    "&body_md5=ec365a775a4cd0599faeb73354201b6f"
    "&auth_signature=da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
)


def test_the_worked_example_of_the_http_api_reference_verifies() -> None:
    req = RecordedRequest("POST", "/apps/3/events", SPEC_QUERY, SPEC_BODY)
    assert verify(req, now=1353088179).params == {}
    signed = signing.sign_api_request(
        "POST", "/apps/3/events", {}, SPEC_BODY, key=PUSHER_KEY, secret=PUSHER_SECRET, timestamp=1353088179,
    )
    assert signed == SPEC_QUERY
    assert api.parse_trigger(SPEC_BODY) == Event("foo", '{"some":"data"}', ("project-3",))


def test_a_trigger_from_the_python_sdk_is_accepted_and_parsed(pusher_sdk: Any, http_recorder: RequestRecorder) -> None:
    pusher_sdk.trigger(["orders", "presence-room"], "order-placed", {"id": 7, "note": "für €"}, socket_id="12.34")
    req = http_recorder.last()
    assert (req.method, req.path) == ("POST", f"/apps/{PUSHER_APP_ID}/events")
    checked = verify(req)
    assert checked.params == {} and checked.body == req.body
    event = api.parse_trigger(checked.body)
    assert event.name == "order-placed"
    assert json.loads(event.data) == {"id": 7, "note": "für €"}
    assert event.channels == ("orders", "presence-room")
    assert event.socket_id == "12.34"


def test_a_batch_from_the_python_sdk_is_accepted_and_parsed(pusher_sdk: Any, http_recorder: RequestRecorder) -> None:
    pusher_sdk.trigger_batch([
        {"channel": "a", "name": "one", "data": "plain text"},
        {"channel": "private-b", "name": "two", "data": {"n": 2}},
    ])
    req = http_recorder.last()
    assert req.path == f"/apps/{PUSHER_APP_ID}/batch_events"
    events = api.parse_batch(verify(req).body)
    assert events == (Event("one", "plain text", ("a",)), Event("two", '{"n": 2}', ("private-b",)))


def test_send_to_user_reaches_the_users_own_channel(pusher_sdk: Any, http_recorder: RequestRecorder) -> None:
    pusher_sdk.send_to_user("u-1", "notice", {"x": 1})
    assert api.parse_trigger(verify(http_recorder.last()).body).channels == ("#server-to-user-u-1",)


def test_gets_from_the_python_sdk_carry_the_md5_of_no_body_and_verify(
    pusher_sdk: Any, http_recorder: RequestRecorder,
) -> None:
    pusher_sdk.channels_info(prefix_filter="presence-", attributes=["user_count"])
    req = http_recorder.last()
    assert f"body_md5={hashlib.md5(b'').hexdigest()}" in req.query
    params = verify(req).params
    assert params == {"filter_by_prefix": "presence-", "info": "user_count"}
    assert api.parse_channels_query(params) == api.ChannelsQuery("presence-", frozenset({"user_count"}))

    pusher_sdk.channel_info("presence-room", attributes=["user_count", "subscription_count"])
    req = http_recorder.last()
    assert req.path == f"/apps/{PUSHER_APP_ID}/channels/presence-room"
    info = api.parse_channel_query("presence-room", verify(req).params)
    assert info == {"user_count", "subscription_count"}

    pusher_sdk.users_info("presence-room")
    req = http_recorder.last()
    assert req.path == f"/apps/{PUSHER_APP_ID}/channels/presence-room/users"
    assert verify(req).params == {}
    api.check_users_channel("presence-room")


def test_terminate_connections_from_the_python_sdk_has_no_apps_prefix(
    pusher_sdk: Any, http_recorder: RequestRecorder,
) -> None:
    """The Python SDK posts to ``/users/<id>/terminate_connections``, not under ``/apps/<id>``
    (the Node SDK does): the route must exist at both paths, each verified as sent."""
    pusher_sdk.terminate_user_connections("u-1")
    req = http_recorder.last()
    assert (req.method, req.path, req.body) == ("POST", "/users/u-1/terminate_connections", b"{}")
    verify(req)
    assert api.check_user_id("u-1") == "u-1"
    assert refused(req, path=f"/apps/{PUSHER_APP_ID}/users/u-1/terminate_connections").status == 401


def test_a_get_without_body_md5_verifies_as_the_node_sdk_signs_it() -> None:
    """The Node SDK sends ``body_md5`` only with a body; its query values are not URL-encoded."""
    ts = int(time.time())
    query = f"auth_key={PUSHER_KEY}&auth_timestamp={ts}&auth_version=1.0&info=user_count,subscription_count"
    to_sign = f"GET\n/apps/{PUSHER_APP_ID}/channels/presence-a\n{query}"
    signature = hmac.new(PUSHER_SECRET.encode(), to_sign.encode(), hashlib.sha256).hexdigest()
    path = f"/apps/{PUSHER_APP_ID}/channels/presence-a"
    req = RecordedRequest("GET", path, f"{query}&auth_signature={signature}", b"")
    assert verify(req).params == {"info": "user_count,subscription_count"}


def test_a_value_sent_unencoded_with_a_plus_is_read_as_sent(pusher_sdk: Any, http_recorder: RequestRecorder) -> None:
    """The SDKs put values in the URL as they are: a ``+`` then means ``+``, not a space."""
    pusher_sdk.channels_info(prefix_filter="a+b")
    req = http_recorder.last()
    assert "filter_by_prefix=a+b" in req.query
    assert verify(req).params == {"filter_by_prefix": "a+b"}


def test_our_own_signed_query_string_url_encodes_and_verifies() -> None:
    body = b'{"name":"e","channel":"c","data":"{}"}'
    params = {"info": "user_count,subscription_count", "note": "a b+c&d"}
    query = signing.sign_api_request("POST", "/apps/1/events", params, body, key=PUSHER_KEY, secret=PUSHER_SECRET,
                                     timestamp=int(time.time()))
    assert "note=a%20b%2Bc%26d" in query
    assert verify(RecordedRequest("POST", "/apps/1/events", query, body)).params == params


# -- tampering ---------------------------------------------------------------------------------


@pytest.fixture
def sdk_trigger(pusher_sdk: Any, http_recorder: RequestRecorder) -> RecordedRequest:
    pusher_sdk.trigger("orders", "placed", {"id": 1})
    req = http_recorder.last()
    verify(req)
    return req


def test_a_changed_body_is_refused_by_its_md5(sdk_trigger: RecordedRequest) -> None:
    changed = RecordedRequest(sdk_trigger.method, sdk_trigger.path, sdk_trigger.query,
                              sdk_trigger.body.replace(b"orders", b"salary"))
    e = refused(changed)
    assert (e.status, e.message) == (401, "Invalid body_md5: it is not the MD5 of the request body")


def test_a_body_md5_changed_to_match_a_new_body_breaks_the_signature(sdk_trigger: RecordedRequest) -> None:
    new_body = sdk_trigger.body.replace(b"orders", b"salary")
    query = sdk_trigger.query.replace(hashlib.md5(sdk_trigger.body).hexdigest(), hashlib.md5(new_body).hexdigest())
    e = refused(RecordedRequest(sdk_trigger.method, sdk_trigger.path, query, new_body))
    assert e.status == 401 and e.message.startswith("Invalid signature: you should have sent HmacSHA256Hex(")


def test_a_stale_timestamp_is_refused(sdk_trigger: RecordedRequest) -> None:
    """A request captured and replayed 10 minutes later no longer counts (599 s still does)."""
    ts = timestamp_of(sdk_trigger)
    verify(sdk_trigger, now=ts + 599)
    verify(sdk_trigger, now=ts - 599)
    for now in (ts + 600, ts - 600, ts + 86400):
        e = refused(sdk_trigger, now=now)
        assert e.status == 401 and e.message.startswith("Timestamp expired: Given timestamp (")
        assert "not within 600s of server time" in e.message


def test_a_signature_for_another_path_or_method_is_refused(sdk_trigger: RecordedRequest) -> None:
    assert refused(sdk_trigger, path=f"/apps/{PUSHER_APP_ID}/batch_events").status == 401
    assert refused(sdk_trigger, path="/apps/9999/events").status == 401
    assert refused(sdk_trigger, method="PUT").status == 401


def test_a_request_signed_with_another_secret_is_refused(sdk_trigger: RecordedRequest) -> None:
    with pytest.raises(ApiError) as e:
        signing.verify_api_request(sdk_trigger.method, sdk_trigger.path, sdk_trigger.query, sdk_trigger.body,
                                   key=PUSHER_KEY, secret="another", now=time.time())
    assert e.value.status == 401 and "Invalid signature" in e.value.message


@pytest.mark.parametrize(
    "edit, status, message",
    [
        (lambda q: q.replace(f"auth_key={PUSHER_KEY}", "auth_key=someone-else"), 401, "Unknown auth_key"),
        (lambda q: q.replace(f"auth_key={PUSHER_KEY}&", ""), 401, "Missing parameter: auth_key"),
        (lambda q: q.replace("auth_version=1.0", "auth_version=2.0"), 401, "Version not supported"),
        (lambda q: q.replace("auth_version=1.0&", ""), 401, "Version required"),
        (lambda q: q.replace("auth_timestamp=", "auth_timestamp=x"), 401, "Invalid auth_timestamp"),
        (lambda q: q.replace("auth_timestamp=", "ignored="), 401, "Timestamp required"),
        (lambda q: q + "&auth_key=" + PUSHER_KEY, 400, "Duplicate query parameter 'auth_key'"),
        (lambda q: q + "&x=%ff", 400, "Query string is not valid UTF-8"),
        (lambda q: q + "&x=1" * 100, 400, "Too many query parameters"),
        (lambda q: q + "&extra=1", 401, "Invalid signature"),
    ],
)
def test_malformed_auth_parameters_are_refused(
    sdk_trigger: RecordedRequest, edit: Any, status: int, message: str,
) -> None:
    e = refused(RecordedRequest(sdk_trigger.method, sdk_trigger.path, edit(sdk_trigger.query), sdk_trigger.body))
    assert e.status == status and e.message.startswith(message)


def test_a_body_without_body_md5_is_refused() -> None:
    body = b'{"name":"e","channel":"c","data":"{}"}'
    query = signing.sign_api_request("POST", "/apps/1/events", {}, body, key=PUSHER_KEY, secret=PUSHER_SECRET,
                                     timestamp=int(time.time()), with_body_md5=False)
    e = refused(RecordedRequest("POST", "/apps/1/events", query, body))
    assert (e.status, e.message) == (401, "Missing parameter: body_md5 (required with a request body)")


# -- event bodies ------------------------------------------------------------------------------


def body(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


def parse_error(raw: bytes, batch: bool = False) -> ApiError:
    with pytest.raises(ApiError) as e:
        api.parse_batch(raw) if batch else api.parse_trigger(raw)
    return e.value


def test_event_data_of_10_kib_passes_and_one_byte_more_is_413() -> None:
    assert len(api.parse_trigger(body(name="e", channel="c", data="x" * 10240)).data) == 10240
    for data in ("x" * 10241, "€" * 3414):  # 10 241 and 10 242 bytes of UTF-8
        e = parse_error(body(name="e", channel="c", data=data))
        assert e.status == 413
        assert e.message == "The data content of this event exceeds the allowed maximum (10240 bytes)."


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"not json", "Request body is not valid JSON"),
        (b"\xff\xfe", "Request body is not valid UTF-8"),
        (b"[1]", "Request body must be a JSON object"),
        (body(name="e", data="d"), "Missing 'channels'"),
        (body(name="e", data="d", channel="a", channels=["b"]), "Give either 'channels' or 'channel'"),
        (body(name="e", data="d", channels=[]), "'channels' must be a list of one or more"),
        (body(name="e", data="d", channels=[f"c{i}" for i in range(101)]), "Too many channels: at most 100"),
        (body(name="e", data="d", channel="x" * 165), "Invalid channel name 'xxxx"),
        (body(name="e", data="d", channel="a b"), "Invalid channel name 'a b'"),
        (body(name="e", data="d", channel="#server-to-user-"), "Invalid channel name"),
        (body(data="d", channel="c"), "'name' must be an event name"),
        (body(name="x" * 201, data="d", channel="c"), "'name' must be an event name"),
        (body(name="pusher_internal:member_added", data="d", channel="c"), "Event name 'pusher_internal:"),
        (body(name="e", channel="c"), "Missing 'data'"),
        (body(name="e", data="\ud800", channel="c"), "'data' must be a string of valid Unicode"),
        (body(name="e", data="d", channel="c", socket_id="abc"), "Invalid socket_id 'abc'"),
        (body(name="e", data="d", channel="c", info="user_count,bogus"), "Unknown info attribute 'bogus'"),
    ],
)
def test_bad_trigger_bodies_are_400_with_a_message(raw: bytes, message: str) -> None:
    e = parse_error(raw)
    assert e.status == 400 and e.message.startswith(message), e.message


def test_a_trigger_body_over_the_read_limit_is_413() -> None:
    e = parse_error(b" " * (api.API_BODY_MAX + 1))
    assert e.status == 413


def test_channels_are_distinct_and_data_that_is_not_a_string_is_sent_as_its_json() -> None:
    event = api.parse_trigger(body(name="e", channels=["a", "b", "a"], data={"k": [1, 2]}, info="user_count"))
    assert event.channels == ("a", "b")
    assert event.data == '{"k":[1,2]}'
    assert event.info == {"user_count"}


def test_batches_hold_at_most_10_events_and_errors_name_the_event() -> None:
    ten = [{"name": "e", "channel": f"c{i}", "data": "d"} for i in range(10)]
    assert len(api.parse_batch(body(batch=ten))) == 10
    e = parse_error(body(batch=ten + [ten[0]]), batch=True)
    assert (e.status, e.message) == (400, "Batch too large: at most 10 events per batch (got 11)")
    e = parse_error(body(batch=[ten[0], {"name": "e", "channel": "bad channel", "data": "d"}]), batch=True)
    assert e.status == 400 and e.message.startswith("batch[1]: Invalid channel name")
    e = parse_error(body(batch=[{"name": "e", "channel": "c", "data": "x" * 10241}]), batch=True)
    assert e.status == 413 and e.message.startswith("batch[0]: The data content of this event exceeds")
    assert parse_error(body(batch=[]), batch=True).status == 400
    assert parse_error(body(batch=[{"name": "e", "data": "d"}]), batch=True).message == "batch[0]: missing 'channel'"


# -- answers -----------------------------------------------------------------------------------

STATES = {
    "presence-a": ChannelState(subscription_count=5, user_count=3),
    "presence-empty": ChannelState(),
    "public": ChannelState(subscription_count=2),
}


def test_trigger_answers_are_empty_unless_info_is_asked() -> None:
    plain = api.parse_trigger(body(name="e", channels=["presence-a", "public"], data="d"))
    assert api.trigger_response(plain, STATES) == {}
    asked = api.parse_trigger(body(name="e", channels=["presence-a", "public", "new"], data="d",
                                   info="user_count,subscription_count"))
    assert api.trigger_response(asked, STATES) == {"channels": {
        "presence-a": {"user_count": 3, "subscription_count": 5},
        "public": {"subscription_count": 2},
        "new": {"subscription_count": 0},
    }}


def test_batch_answers_list_attributes_in_event_order() -> None:
    events = api.parse_batch(body(batch=[
        {"name": "e", "channel": "presence-a", "data": "d", "info": "user_count"},
        {"name": "e", "channel": "public", "data": "d"},
    ]))
    assert api.batch_response(events, STATES) == {"batch": [{"user_count": 3}, {}]}
    assert api.batch_response(events[1:], STATES) == {}


def test_channel_listing_shows_occupied_channels_matching_the_prefix() -> None:
    everything = api.parse_channels_query({})
    assert api.channels_response(everything, STATES) == {"channels": {"presence-a": {}, "public": {}}}
    presence = api.parse_channels_query({"filter_by_prefix": "presence-", "info": "user_count"})
    assert api.channels_response(presence, STATES) == {"channels": {"presence-a": {"user_count": 3}}}
    with pytest.raises(ApiError) as e:
        api.parse_channels_query({"info": "user_count"})
    assert e.value.status == 400 and "filter_by_prefix=presence-" in e.value.message


def test_one_channel_answers_occupied_and_what_applies() -> None:
    info = api.parse_channel_query("public", {"info": "subscription_count"})
    assert api.channel_response("public", info, STATES["public"]) == {"occupied": True, "subscription_count": 2}
    assert api.channel_response("quiet", frozenset(), ChannelState()) == {"occupied": False}
    for channel, params in [("public", {"info": "user_count"}), ("bad name", {})]:
        with pytest.raises(ApiError) as e:
            api.parse_channel_query(channel, params)
        assert e.value.status == 400


def test_users_are_listed_for_presence_channels_only() -> None:
    assert api.users_response([1, "1", "u-2"]) == {"users": [{"id": "1"}, {"id": "u-2"}]}
    with pytest.raises(ApiError) as e:
        api.check_users_channel("private-a")
    assert e.value.status == 400
    with pytest.raises(ApiError):
        api.check_user_id("no spaces please")
