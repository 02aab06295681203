"""How a message crosses between rrr's own protocol and Pusher's, so a room is one room.

The two protocols disagree on one thing: an rrr message's ``data`` is any JSON value, a Pusher
event's ``data`` is a string (which pusher-js, and most apps, parse as JSON when they can). So:

* a Pusher event reaches rrr subscribers with ``"event": <its name>`` and as ``data`` the event's
  data parsed as JSON when it is JSON text, else the string itself (`to_native`): the same value
  pusher-js hands to its handlers, by the same rule;
* an rrr message reaches Pusher subscribers as the event its publisher named (``message`` if
  none) with ``data`` the JSON text of its data (`to_pusher`): pusher-js parses it back into the
  value the rrr publisher sent.

A message crosses once: whatever carries it between the two sides must not send it back.

The native side carries the name: ``publish`` takes an optional ``event`` (`rrr.protocol.check_event`),
carried with the data through Redis (`rrr.protocol.pack`), and the ``message`` frame says it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..protocol import check_event, dumps, is_valid_slug, validate_json_payload
from . import names

#: The Pusher event an rrr message becomes when its publisher named none.
DEFAULT_EVENT = "message"


@dataclass(frozen=True)
class NativeMessage:
    """What an rrr ``message`` frame carries for a Pusher event: ``data_json`` is validated JSON
    text, ready for `rrr.protocol.relay_frame`."""

    event: str
    data_json: str


def native_room(channel: str) -> str | None:
    """The rrr room a Pusher channel is, or None if it has none.

    rrr room names are Pusher's channel names, so every channel is the room of its name. Never for
    an encrypted channel: its data is ciphertext rrr clients cannot read, and rrr messages reaching
    pusher-js there would be plaintext it fails to decrypt.
    """
    if names.is_encrypted_channel(channel) or not is_valid_slug(channel):
        return None
    return channel


def pusher_channel(room: str) -> str | None:
    """The Pusher channel an rrr room is (None for a name that cannot be one)."""
    return room if native_room(room) == room else None


def to_native(event: str, data: str) -> NativeMessage:
    """A Pusher event (from the HTTP API or a client event) as rrr subscribers get it."""
    try:
        data_json = validate_json_payload(data)
    except ValueError:  # not JSON text (or NaN, too deep): pusher-js would hand over the string too
        data_json = dumps(data)
    return NativeMessage(event, data_json)


def check_native_event(event: object) -> str:
    """An event name an rrr publisher may give: a Pusher event name that is not the protocol's own
    (``pusher_internal:member_added`` from a page would rewrite every Pusher client's member list).
    ValueError otherwise."""
    return check_event(event)


def to_pusher(event: str | None, data_json: str) -> tuple[str, str]:
    """An rrr message (``data_json`` already validated JSON text) as ``(event name, data string)``
    for `protocol.channel_event_frame`."""
    return (DEFAULT_EVENT if event is None else check_native_event(event)), data_json
