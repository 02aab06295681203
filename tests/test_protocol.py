"""The wire protocol as pure functions: what the server accepts and what it sends."""

import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from rrr import protocol
from rrr.protocol import CountState, ProtocolError, parse_client_message


@pytest.mark.parametrize("slug", ["a", "ZVk89y", "with-dash_and_underscore", "x" * 164, "a=b@c,d.e;f", "presence-7"])
def test_valid_slugs(slug: str) -> None:
    assert protocol.is_valid_slug(slug)


@pytest.mark.parametrize("slug", ["", "x" * 165, "bad!slug", "a/b", "a b", "é", "a\n", "a:b", "a%40b", None, 12])
def test_invalid_slugs(slug: str) -> None:
    assert not protocol.is_valid_slug(slug)


def test_subscribe_parses_room_and_sub() -> None:
    msg = parse_client_message('{"type":"subscribe","room":"abc","sub":"tab-1"}')
    assert (msg.type, msg.room, msg.sub) == ("subscribe", "abc", "tab-1")


def test_numeric_sub_is_accepted_as_text() -> None:
    assert parse_client_message('{"type":"unsubscribe","room":"abc","sub":7}').sub == "7"


@pytest.mark.parametrize(
    "frame, code",
    [
        ("not json", "bad_json"),
        ("[1,2]", "bad_message"),
        ('{"type":"dance"}', "unknown_type"),
        ('{"room":"abc"}', "unknown_type"),
        ('{"type":"subscribe","room":"bad room","sub":"1"}', "bad_room"),
        ('{"type":"subscribe","sub":"1"}', "bad_room"),
        ('{"type":"subscribe","room":"abc","sub":{"x":1}}', "bad_sub"),
        ('{"type":"subscribe","room":"abc","sub":"' + "x" * 200 + '"}', "bad_sub"),
        ('{"type":"publish","room":"abc"}', "bad_message"),
    ],
)
def test_bad_frames_raise_with_a_reply_code(frame: str, code: str) -> None:
    with pytest.raises(ProtocolError) as e:
        parse_client_message(frame)
    assert e.value.code == code and e.value.reason


def test_deeply_nested_json_is_a_clean_error() -> None:
    with pytest.raises(ProtocolError):
        parse_client_message("[" * 100000 + "]" * 100000)


def test_publish_keeps_data_as_compact_json() -> None:
    msg = parse_client_message('{"type":"publish","room":"abc","data":{"text":"hé", "n":[1, 2]}}')
    assert json.loads(msg.data_json) == {"text": "hé", "n": [1, 2]}  # type: ignore[arg-type]


def test_hello_reports_transport_and_tolerates_unknown_ones() -> None:
    assert parse_client_message('{"type":"hello","transport":"leader"}').transport == "leader"
    assert parse_client_message('{"type":"hello","transport":"carrier-pigeon"}').transport == "unknown"


def test_count_message_has_the_talks_fields() -> None:
    msg = protocol.count_message("abc", CountState(3, 5, 1700000000.25, 9))
    assert msg == {"type": "connection_message", "room": "abc", "connections": 3, "tabs": 5, "updated": 1700000000.25}


def test_relay_frame_embeds_data_verbatim() -> None:
    frame = protocol.relay_frame("abc", '{"b": 1,  "a": [true]}')
    assert frame == '{"type":"message","room":"abc","data":{"b": 1,  "a": [true]}}'
    assert json.loads(frame)["data"] == {"b": 1, "a": [True]}


def test_redis_payloads_must_be_json() -> None:
    assert protocol.validate_json_payload(b' {"x": 1}\n') == '{"x": 1}'
    for bad in (b"\x80\x04\x95pickle", b"{nope", b""):
        with pytest.raises(ValueError):
            protocol.validate_json_payload(bad)


def test_count_announcements_round_trip_and_reject_garbage() -> None:
    state = CountState(2, 4, 1700000000.5, 11)
    assert protocol.decode_count_announcement(protocol.encode_count_announcement(state)) == state
    for bad in ('{"c":-1,"t":0,"u":1,"v":1}', '{"c":1,"t":1,"v":1,"u":"x"}', "[]", '{"c":true,"t":1,"u":1,"v":1}'):
        with pytest.raises(ValueError):
            protocol.decode_count_announcement(bad)


@pytest.mark.parametrize("frame", ['{"type":[]}', '{"type":{"a":1}}', '{"type":"hello","transport":{}}'])
def test_unhashable_fields_are_protocol_errors_not_crashes(frame: str) -> None:
    try:
        msg = parse_client_message(frame)
    except ProtocolError as e:
        assert e.code == "unknown_type"
    else:
        assert msg.transport == "unknown"


@pytest.mark.parametrize("payload", ["[" * 100000 + "]" * 100000, "NaN", '{"x": Infinity}', b"\xff\xfe"])
def test_hostile_redis_payloads_are_value_errors(payload: str | bytes) -> None:
    with pytest.raises(ValueError):
        protocol.validate_json_payload(payload)


def test_presence_frames_carry_each_member_once_with_its_info_untouched() -> None:
    members = {"42": '{"name":"Ada"}', 'quo"te': "null"}
    page = json.loads(protocol.presence_frame("presence-team", members, 7, True, "tab-1"))
    assert page == {"type": "presence", "room": "presence-team", "sub": "tab-1",
                    "members": {"42": {"info": {"name": "Ada"}}, 'quo"te': {"info": None}}, "total": 7, "more": True}
    assert protocol.presence_frame("presence-team", protocol.members_json(members), 7, True, "tab-1") == json.dumps(
        page, separators=(",", ":"), ensure_ascii=False)
    diff = json.loads(protocol.presence_diff_frame("presence-team", {"43": '{"name":"Bob"}'}, {"42": "null"}))
    assert diff == {"type": "presence_diff", "room": "presence-team", "joins": {"43": {"info": {"name": "Bob"}}},
                    "leaves": {"42": {"info": None}}}


def test_a_page_is_the_next_users_in_code_point_order_after_the_last_one_got() -> None:
    order = sorted(["b", "a", "10", "9", "\uffff", "\U0001f600", "é"])
    assert order == ["10", "9", "a", "b", "é", "\uffff", "\U0001f600"]  # code points: the astral one last
    assert protocol.members_page(order, "", 3) == (["10", "9", "a"], True)
    assert protocol.members_page(order, "a", 3) == (["b", "é", "\uffff"], True)
    assert protocol.members_page(order, "\uffff", 3) == (["\U0001f600"], False)
    assert protocol.members_page(order, "\U0001f600", 3) == ([], False)
    # An id that is not (or no longer) a member still says where to go on: after it, in order.
    assert protocol.members_page(order, "aa", 2) == (["b", "é"], True)
    assert protocol.members_page(order, "", 7) == (order, False)


def test_a_big_diff_goes_in_frames_of_at_most_a_page_each_and_loses_nobody() -> None:
    joins = {f"u{i}": f'{{"n":{i}}}' for i in range(25)}
    leaves = {f"gone{i}": "null" for i in range(7)}
    texts = protocol.presence_diff_frames("presence-team", joins, leaves, 10)
    frames = [json.loads(t) for t in texts]
    assert [len(f["joins"]) + len(f["leaves"]) for f in frames] == [10, 10, 10, 2]
    assert {u: e["info"] for f in frames for u, e in f["joins"].items()} == {f"u{i}": {"n": i} for i in range(25)}
    assert {u for f in frames for u in f["leaves"]} == set(leaves)
    assert protocol.presence_diff_frames("presence-team", {"a": "1"}, {}, 10) == [
        protocol.presence_diff_frame("presence-team", {"a": "1"}, {})]


def test_the_members_api_answers_a_page_with_the_total() -> None:
    members = {"c": "3", "a": "1", "b": "2"}
    assert json.loads(protocol.members_page_json("presence-x", members, "", 2)) == {
        "room": "presence-x", "members": {"a": {"info": 1}, "b": {"info": 2}}, "total": 3, "more": True}
    assert json.loads(protocol.members_page_json("presence-x", members, "b", 2)) == {
        "room": "presence-x", "members": {"c": {"info": 3}}, "total": 3, "more": False}
    assert json.loads(protocol.members_page_json("lobby", {}, "", 2)) == {
        "room": "lobby", "members": {}, "total": 0, "more": False}


def test_only_presence_rooms_show_users_in_their_counts() -> None:
    state = protocol.CountState(2, 5, 1.5, 7, users=1)
    assert protocol.count_message("presence-team", state)["users"] == 1
    assert "users" not in protocol.count_message("lobby", state)
    wire = '{"c":2,"t":5,"u":1.5,"v":7,"n":1}'
    assert protocol.decode_count_announcement(wire) == state


@pytest.mark.parametrize("text", ["\u00b2", "\u0663", "\uff17", " 7", "7 ", "+7", "-7", "1_0", "7\n", "", "0x7", "1e3"])
def test_numbers_from_clients_are_ascii_digits_only(text: str) -> None:
    with pytest.raises(ValueError):
        protocol.parse_uint(text)
    with pytest.raises(ValueError):
        protocol.since_from_query(text, "9f3a61c2")


def test_a_number_from_a_client_is_read_up_to_its_maximum() -> None:
    assert protocol.parse_uint("0") == 0 and protocol.parse_uint("007") == 7
    assert protocol.parse_uint(str(2**53 - 1)) == 2**53 - 1
    with pytest.raises(ValueError):
        protocol.parse_uint(str(2**53))
    assert protocol.parse_uint("65536", 65536) == 65536
    with pytest.raises(ValueError):
        protocol.parse_uint("65537", 65536)
    assert protocol.since_from_query("12", "9f3a61c2") == protocol.Since(12, "9f3a61c2")


# ---- the shared vectors (tests/vectors/protocol.json; static/js/protocol.js is checked against them too)

VECTORS: dict[str, Any] = json.loads((Path(__file__).parent / "vectors" / "protocol.json").read_text("utf-8"))

# Every builder of a server frame, by the name the vectors use; each returns a frame's text or its dict.
SERVER_BUILDERS: dict[str, Callable[..., str | dict[str, Any]]] = {
    "PONG_FRAME": lambda: protocol.PONG_FRAME,
    "relay_frame": protocol.relay_frame,
    "subscribed_message": protocol.subscribed_message,
    "count_message": lambda room, state: protocol.count_message(room, CountState(**state)),
    "presence_frame": protocol.presence_frame,
    "presence_diff_frame": protocol.presence_diff_frame,
    "authenticated_message": protocol.authenticated_message,
    "whisper_frame": protocol.whisper_frame,
    "ProtocolError": lambda *args, **kwargs: ProtocolError(*args, **kwargs).message(),
    "close_message": protocol.close_message,
}
SERVER_TYPES = {"connection_message", "message", "pong", "error", "authenticated", "presence", "presence_diff",
                "subscribed", "close", "whisper"}
# What SSE and long-polling sessions are opened and answered with (the vectors' "sessions").
SESSION_BUILDERS: dict[str, Callable[..., str | dict[str, Any]]] = {
    "session_message": protocol.session_message,
    "poll_opening": protocol.poll_opening,
    "poll_batch": protocol.poll_batch,
}
CLIENT_CODES = {"bad_json", "bad_message", "unknown_type", "bad_token", "bad_room", "bad_sub", "bad_since"}


def _named(section: list[dict[str, Any]]) -> Any:
    return pytest.mark.parametrize("vector", section, ids=[v["name"] for v in section])


def _meaning(msg: protocol.ClientMessage) -> dict[str, Any]:
    """A parsed frame as the vectors spell it: the fields that are set."""
    return {k: v for k, v in asdict(msg).items() if v is not None}


@_named(VECTORS["client"]["valid"])
def test_vector_client_frame_parses_to_its_meaning(vector: dict[str, Any]) -> None:
    assert _meaning(parse_client_message(vector["text"])) == vector["parsed"]


@_named(VECTORS["client"]["invalid"])
def test_vector_bad_client_frame_gets_its_error(vector: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError) as e:
        parse_client_message(vector["text"])
    expected = vector["error"]
    assert (e.value.code, e.value.room, e.value.sub) == (expected["code"], expected.get("room"), expected.get("sub"))
    assert e.value.reason
    assert json.loads(protocol.dumps(e.value.message())) == {"type": "error", "reason": e.value.reason, **expected}


@_named(VECTORS["server"]["valid"])
def test_vector_server_frame_is_built_byte_for_byte(vector: dict[str, Any]) -> None:
    name, args, *kwargs = vector["py"]
    built = SERVER_BUILDERS[name](*args, **(kwargs[0] if kwargs else {}))
    assert (built if isinstance(built, str) else protocol.dumps(built)) == vector["text"]


def test_vector_rooms_are_the_slugs_the_server_takes() -> None:
    for room in VECTORS["rooms"]["valid"]:
        assert protocol.is_valid_slug(room), room
        assert parse_client_message(json.dumps({"type": "subscribe", "room": room, "sub": "s"})).room == room
    for room in VECTORS["rooms"]["invalid"]:
        assert not protocol.is_valid_slug(room), room
        with pytest.raises(ProtocolError) as e:
            parse_client_message(json.dumps({"type": "subscribe", "room": room, "sub": "s"}))
        assert e.value.code == "bad_room", room


def test_vector_rooms_that_need_a_token_and_rooms_with_members() -> None:
    for kind in VECTORS["room_kinds"]:
        assert (protocol.needs_grant(kind["room"]), protocol.is_presence_room(kind["room"])) == (
            kind["token"], kind["presence"]), kind


def test_vector_since_is_taken_or_refused_with_bad_since() -> None:
    def subscribe(since: Any) -> str:
        return json.dumps({"type": "subscribe", "room": "lobby", "sub": "s", "since": since})

    for vector in VECTORS["since"]["valid"]:
        msg = parse_client_message(subscribe(vector["since"]))
        assert msg.since is not None and asdict(msg.since) == vector["parsed"], vector
    for since in VECTORS["since"]["invalid"]:
        with pytest.raises(ProtocolError) as e:
            parse_client_message(subscribe(since))
        assert (e.value.code, e.value.room, e.value.sub) == ("bad_since", "lobby", "s"), since


def test_vector_member_order_is_how_pages_are_cut() -> None:
    order = VECTORS["member_order"]
    assert sorted(order) == order and len(set(order)) == len(order)
    assert sorted(order, key=lambda u: u.encode("utf-8")) == order  # the bytes' order too
    users = order[1:]  # "" is never a user: it is where a walk starts
    assert protocol.members_page(users, "", 5) == (users[:5], True)
    assert protocol.members_page(users, users[4], 100) == (users[5:], False)


def test_vectors_cover_every_client_type_error_code_and_server_frame() -> None:
    assert {v["parsed"]["type"] for v in VECTORS["client"]["valid"]} == protocol.CLIENT_TYPES
    assert {v["error"]["code"] for v in VECTORS["client"]["invalid"]} == CLIENT_CODES
    assert {json.loads(v["text"])["type"] for v in VECTORS["server"]["valid"]} == SERVER_TYPES
    assert {v["py"][0] for v in VECTORS["server"]["valid"]} == set(SERVER_BUILDERS)
    transports = {v["parsed"].get("transport") for v in VECTORS["client"]["valid"]} - {None}
    assert transports == protocol.TRANSPORTS


@_named(VECTORS["sessions"]["events"] + VECTORS["sessions"]["polls"])
def test_vector_session_answers_are_built_byte_for_byte(vector: dict[str, Any]) -> None:
    if "py" not in vector:
        return  # the server never builds it (the page must refuse it)
    name, args = vector["py"]
    built = SESSION_BUILDERS[name](*args)
    assert (built if isinstance(built, str) else protocol.dumps(built)) == vector["text"]


def test_vector_session_ids_are_the_ones_the_page_takes() -> None:
    for vector in VECTORS["sessions"]["events"]:
        event = json.loads(vector["text"])
        taken = event.get("type") == "session" and protocol.is_session_id(event.get("session"))
        assert taken == (vector["session"] is not None), vector["name"]
        assert ("py" in vector) == taken, "the server builds exactly the session events the page takes"
