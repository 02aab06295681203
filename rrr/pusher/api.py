"""The Pusher HTTP API's requests and answers, as pure functions, once `signing.verify_api_request`
has accepted the request.

Requests are validated into typed values or refused with `signing.ApiError` carrying Pusher's
status: 400 for what is malformed, 413 for event data over 10 KiB (with Pusher's own message,
which server SDKs surface verbatim). Answers are built from `ChannelState`, what the server knows
of a channel, so the route handlers only fetch state and write JSON.

Routes (under ``/apps/<app_id>``): ``POST /events`` (`parse_trigger`), ``POST /batch_events``
(`parse_batch`), ``GET /channels`` (`parse_channels_query`), ``GET /channels/<name>``
(`parse_channel_query`), ``GET /channels/<name>/users`` (`check_users_channel`),
``POST /users/<id>/terminate_connections`` (`check_user_id`). Parameters of a POST are read from
its JSON body, the way every SDK sends them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..protocol import dumps, too_big
from . import names
from .protocol import EVENT_DATA_MAX
from .signing import ApiError

#: Channels one ``POST /events`` may name (Pusher's limit).
EVENT_CHANNELS_MAX = 100
#: Events one ``POST /batch_events`` may carry (Pusher's limit on its shared clusters).
BATCH_MAX = 10
#: A request body the API reads at all. Ten events of 10 KiB each fit with room to spare even
#: when the Python SDK escapes every character of their data as ``\\uXXXX``.
API_BODY_MAX = 1024 * 1024
INFO_ATTRIBUTES = frozenset({"user_count", "subscription_count"})

DATA_TOO_LARGE = f"The data content of this event exceeds the allowed maximum ({EVENT_DATA_MAX} bytes)."


@dataclass(frozen=True)
class Event:
    """An event to publish: ``data`` is the string every subscriber gets, ``channels`` distinct and
    in the order given, ``socket_id`` the connection not to send it to (the sender's own, usually),
    ``info`` the attributes to answer with for each channel."""

    name: str
    data: str
    channels: tuple[str, ...]
    socket_id: str | None = None
    info: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ChannelState:
    """What the server knows of a channel when it answers: connections subscribed, and for a
    presence channel its distinct users."""

    subscription_count: int = 0
    user_count: int | None = None

    @property
    def occupied(self) -> bool:
        return self.subscription_count > 0


def parse_trigger(body: bytes) -> Event:
    """``{"name", "data", "channels" | "channel", "socket_id"?, "info"?}`` from ``POST /events``."""
    obj = _json_object(body)
    if "channels" in obj and "channel" in obj:
        raise ApiError(400, "Give either 'channels' or 'channel', not both")
    if "channels" in obj:
        raw = obj["channels"]
        if not isinstance(raw, list) or not raw:
            raise ApiError(400, "'channels' must be a list of one or more channel names")
        if len(raw) > EVENT_CHANNELS_MAX:
            raise ApiError(400, f"Too many channels: at most {EVENT_CHANNELS_MAX} per event (got {len(raw)})")
        channels = tuple(dict.fromkeys(_channel(c) for c in raw))
    elif "channel" in obj:
        channels = (_channel(obj["channel"]),)
    else:
        raise ApiError(400, "Missing 'channels' (a list of channel names) or 'channel'")
    return _event(obj, channels, "")


def parse_batch(body: bytes) -> tuple[Event, ...]:
    """``{"batch": [{"name", "data", "channel", "socket_id"?, "info"?}, ...]}`` from
    ``POST /batch_events``; an error names the event it is about (``batch[2]: ...``)."""
    obj = _json_object(body)
    batch = obj.get("batch")
    if not isinstance(batch, list) or not batch:
        raise ApiError(400, "'batch' must be a list of one or more events")
    if len(batch) > BATCH_MAX:
        raise ApiError(400, f"Batch too large: at most {BATCH_MAX} events per batch (got {len(batch)})")
    events = []
    for i, item in enumerate(batch):
        where = f"batch[{i}]: "
        if not isinstance(item, dict):
            raise ApiError(400, where + "each event must be a JSON object")
        if "channel" not in item:
            raise ApiError(400, where + "missing 'channel'")
        try:
            channel = _channel(item["channel"])
        except ApiError as e:
            raise ApiError(e.status, where + e.message) from None
        events.append(_event(item, (channel,), where))
    return tuple(events)


def _json_object(body: bytes) -> dict[str, Any]:
    if len(body) > API_BODY_MAX:
        raise ApiError(413, f"Request body is larger than {API_BODY_MAX} bytes")
    try:
        obj = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise ApiError(400, "Request body is not valid UTF-8") from None
    except (ValueError, RecursionError):
        raise ApiError(400, "Request body is not valid JSON") from None
    if not isinstance(obj, dict):
        raise ApiError(400, "Request body must be a JSON object")
    return obj


def _channel(value: object) -> str:
    if isinstance(value, str) and names.server_to_user_id(value) is not None:
        return value  # send_to_user: only the server may name these, and this request is signed
    problem = names.channel_name_problem(value)
    if problem is not None:
        raise ApiError(400, f"Invalid channel name {_clip(value)}: {problem}")
    assert isinstance(value, str)
    return value


def _event(obj: dict[str, Any], channels: tuple[str, ...], where: str) -> Event:
    name = obj.get("name")
    if not names.is_valid_event_name(name):
        raise ApiError(400, where + f"'name' must be an event name of 1 to {names.EVENT_NAME_MAX} characters")
    assert isinstance(name, str)
    if names.is_reserved_event_name(name):
        raise ApiError(
            400, where + f"Event name {name!r} is reserved: pusher: and pusher_internal: events are the protocol's",
        )
    if "data" not in obj:
        raise ApiError(400, where + "Missing 'data'")
    data = obj["data"]
    try:
        # SDKs send data as a string (the JSON of the app's payload); anything else is sent as its JSON.
        text = data if isinstance(data, str) else dumps(data)
        text.encode("utf-8")
    except (ValueError, UnicodeEncodeError, RecursionError):
        raise ApiError(400, where + "'data' must be a string of valid Unicode") from None
    if too_big(text, EVENT_DATA_MAX):
        raise ApiError(413, where + DATA_TOO_LARGE)
    socket_id = obj.get("socket_id")
    if socket_id is not None and not names.is_valid_socket_id(socket_id):
        raise ApiError(400, where + f"Invalid socket_id {_clip(socket_id)}: expected <digits>.<digits>")
    return Event(name, text, channels, socket_id, parse_info(obj.get("info"), where))


def parse_info(value: object, where: str = "") -> frozenset[str]:
    """``info=user_count,subscription_count``: the attributes to answer with."""
    if value is None or value == "":
        return frozenset()
    if not isinstance(value, str):
        raise ApiError(400, where + "'info' must be a comma-separated string of attributes")
    attrs = frozenset(a.strip() for a in value.split(",") if a.strip())
    unknown = attrs - INFO_ATTRIBUTES
    if unknown:
        raise ApiError(
            400,
            where + f"Unknown info attribute {_clip(sorted(unknown)[0])}: "
            f"available are {', '.join(sorted(INFO_ATTRIBUTES))}",
        )
    return attrs


def channel_attributes(channel: str, info: Iterable[str], state: ChannelState) -> dict[str, int]:
    """The requested attributes that apply: ``user_count`` only on a presence channel."""
    attrs: dict[str, int] = {}
    if "user_count" in info and names.is_presence_channel(channel):
        attrs["user_count"] = state.user_count or 0
    if "subscription_count" in info:
        attrs["subscription_count"] = state.subscription_count
    return attrs


def trigger_response(event: Event, states: Mapping[str, ChannelState]) -> dict[str, Any]:
    """``{}``, or with ``info`` the attributes of each channel triggered to (``states`` maps every
    channel of the event; one without state is answered as empty)."""
    if not event.info:
        return {}
    return {"channels": {c: channel_attributes(c, event.info, states.get(c, ChannelState())) for c in event.channels}}


def batch_response(events: Iterable[Event], states: Mapping[str, ChannelState]) -> dict[str, Any]:
    """``{}``, or when any event asked for ``info`` one attribute object per event, in order."""
    events = tuple(events)
    if not any(e.info for e in events):
        return {}
    return {
        "batch": [channel_attributes(e.channels[0], e.info, states.get(e.channels[0], ChannelState())) for e in events]
    }


@dataclass(frozen=True)
class ChannelsQuery:
    prefix: str | None = None
    info: frozenset[str] = frozenset()


def parse_channels_query(params: Mapping[str, str]) -> ChannelsQuery:
    """``GET /channels?filter_by_prefix=&info=``. Counting users needs the request limited to presence
    channels, as Pusher answers (400 otherwise)."""
    prefix = params.get("filter_by_prefix") or None
    info = parse_info(params.get("info"))
    if "user_count" in info and not (prefix or "").startswith(names.PRESENCE_PREFIX):
        raise ApiError(400, "user_count may only be requested for presence channels: add filter_by_prefix=presence-")
    return ChannelsQuery(prefix, info)


def channels_response(query: ChannelsQuery, states: Mapping[str, ChannelState]) -> dict[str, Any]:
    """The occupied channels (those with a subscriber) matching the prefix, with the attributes asked for."""
    return {
        "channels": {
            name: channel_attributes(name, query.info, state)
            for name, state in sorted(states.items())
            if state.occupied and names.is_valid_channel_name(name) and name.startswith(query.prefix or "")
        }
    }


def parse_channel_query(channel: str, params: Mapping[str, str]) -> frozenset[str]:
    """``GET /channels/<name>?info=``: an attribute that cannot apply to the channel is a 400."""
    _channel(channel)
    info = parse_info(params.get("info"))
    if "user_count" in info and not names.is_presence_channel(channel):
        raise ApiError(400, f"user_count is only available for presence channels, not {channel!r}")
    return info


def channel_response(channel: str, info: Iterable[str], state: ChannelState) -> dict[str, Any]:
    return {"occupied": state.occupied, **channel_attributes(channel, info, state)}


def check_users_channel(channel: str) -> None:
    """``GET /channels/<name>/users`` exists for presence channels only (400 for any other)."""
    _channel(channel)
    if not names.is_presence_channel(channel):
        raise ApiError(400, f"Users can only be listed for presence channels, not {channel!r}")


def users_response(user_ids: Iterable[str | int]) -> dict[str, Any]:
    """``{"users": [{"id": "1"}, ...]}``: ids as strings, each once."""
    return {"users": [{"id": u} for u in dict.fromkeys(str(u) for u in user_ids)]}


def check_user_id(user_id: str) -> str:
    """The ``<id>`` of ``/users/<id>/terminate_connections``."""
    if not names.is_valid_user_id(user_id):
        raise ApiError(
            400, f"Invalid user id {_clip(user_id)}: 1 to {names.USER_ID_MAX} letters, digits or _ - = @ , . ;",
        )
    return user_id


def _clip(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:80] + "..."
