"""A message crossing between Pusher subscribers and rrr subscribers of the same room: each side
gets what its own publishers would have sent it."""

from __future__ import annotations

import json

import pytest

from rrr import protocol as native
from rrr.pusher import crossing, protocol
from rrr.pusher.crossing import NativeMessage


@pytest.mark.parametrize(
    "data, value",
    [
        ('{"text":"hé","n":[1,2]}', {"text": "hé", "n": [1, 2]}),
        (" [1, 2] ", [1, 2]),
        ("123", 123),
        ('"quoted"', "quoted"),
        ("true", True),
        ("null", None),
        ("plain text", "plain text"),
        ("", ""),
        ("{broken", "{broken"),
        ("NaN", "NaN"),  # JSON.parse refuses it too: pusher-js hands over the string
        ("[" * 5000 + "]" * 5000, "[" * 5000 + "]" * 5000),
    ],
)
def test_a_pusher_event_reaches_rrr_with_its_data_parsed_when_it_is_json(data: str, value: object) -> None:
    message = crossing.to_native("update", data)
    assert message.event == "update"
    assert json.loads(message.data_json) == value


def test_what_rrr_subscribers_get_is_a_valid_message_frame() -> None:
    """``data_json`` drops into rrr's own relay frame as is; the event name is the part
    `rrr.protocol.relay_frame` cannot carry yet."""
    message = crossing.to_native("update", "plain text")
    frame = json.loads(native.relay_frame("orders", message.data_json))
    assert frame == {"type": "message", "room": "orders", "data": "plain text"}


def test_an_rrr_message_reaches_pusher_as_the_event_its_publisher_named() -> None:
    assert crossing.to_pusher(None, '{"a":1}') == ("message", '{"a":1}')
    assert crossing.to_pusher("chat", '"hi"') == ("chat", '"hi"')
    event, data = crossing.to_pusher(None, '{"a":1}')
    assert json.loads(protocol.channel_event_frame("orders", event, data)) == {
        "event": "message", "channel": "orders", "data": '{"a":1}',
    }


@pytest.mark.parametrize("event", ["pusher:subscription_succeeded", "pusher_internal:member_added", "", "x" * 201, 7])
def test_an_rrr_publisher_cannot_send_protocol_events_to_pusher_clients(event: object) -> None:
    with pytest.raises(ValueError):
        crossing.check_native_event(event)
    if isinstance(event, str):
        with pytest.raises(ValueError):
            crossing.to_pusher(event, "{}")


def test_a_value_survives_the_trip_both_ways() -> None:
    """What an rrr publisher sends is what a pusher-js handler gets (pusher-js parses ``data``
    as JSON when it can), and the other way round."""
    sent = {"text": "hé", "n": [1, 2.5, None]}
    _, data = crossing.to_pusher(None, native.dumps(sent))
    assert json.loads(data) == sent
    assert crossing.to_native("message", data) == NativeMessage("message", native.dumps(sent))


@pytest.mark.parametrize(
    "channel, room",
    [
        ("orders", "orders"),
        ("private-orders", "private-orders"),
        ("presence-room-1", "presence-room-1"),
        ("cache-prices", "cache-prices"),
        ("private-encrypted-vault", None),
        ("room.1", "room.1"),
        ("a@b", "a@b"),
        ("x" * 164, "x" * 164),
        ("x" * 165, None),
        ("#server-to-user-u", None),
    ],
)
def test_every_channel_but_an_encrypted_one_is_the_room_of_its_name(channel: str, room: str | None) -> None:
    assert crossing.native_room(channel) == room
    if room is not None:
        assert crossing.pusher_channel(room) == channel
    assert crossing.pusher_channel("private-encrypted-x") is None
