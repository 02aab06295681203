"""The frames of the Pusher Channels protocol, version 7: what a client may send, what it receives.

Every frame is a JSON object ``{"event": ..., "channel"?: ..., "data"?: ...}``. Frames the server
sends carry ``data`` as a JSON-encoded *string* (``"data": "{\\"socket_id\\":...}"``), as Pusher's
protocol page calls "double encoding": the Swift and Java clients read it as a string and parse it
themselves. The one exception is ``pusher:error``, whose ``data`` is an object: the protocol page
shows it so and the Swift client drops an error whose data is not one. Clients send ``data`` as an
object (pusher-js does) or a string; both are accepted.

A client frame is parsed into one of a few frozen dataclasses, or refused with `PusherError`,
whose `PusherError.frame` is the ``pusher:error`` to send back. Refusals that concern one channel
subscription are `SubscriptionError`, answered with ``pusher:subscription_error`` on that channel
so pusher-js delivers it to ``channel.bind("pusher:subscription_error", ...)``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..protocol import dumps, too_big
from . import names
from .signing import AuthError, verify_channel_auth, verify_user_auth

PROTOCOL_VERSION = 7
#: Seconds of silence after which a client pings (pusher-js takes the smaller of this and its own).
ACTIVITY_TIMEOUT = 120
#: Seconds the server waits for a ``pusher:pong`` after its own ``pusher:ping`` (Pusher's recommendation).
PONG_TIMEOUT = 30

# pusher:error codes (also WebSocket close codes). 4000-4099: do not reconnect as is;
# 4100-4199: reconnect after backing off; 4200-4299: reconnect at once; 4300-4399: other.
APP_DOES_NOT_EXIST = 4001
UNSUPPORTED_PROTOCOL = 4007
NO_PROTOCOL = 4008
CONNECTION_UNAUTHORIZED = 4009
OVER_CAPACITY = 4100
RECONNECT_NOW = 4200
PONG_NOT_RECEIVED = 4201
CLIENT_EVENT_RATE_LIMIT = 4301
WATCHLIST_LIMIT = 4302

#: Client events a connection may send per second (Pusher's documented limit); the wiring spends
#: one token of an `rrr.policy.TokenBucket` (rate and burst both this) per event.
CLIENT_EVENT_RATE = 10
#: The largest ``data`` of an event, in bytes of UTF-8: Pusher's 10 KB, for the HTTP API and
#: client events alike.
EVENT_DATA_MAX = 10240
#: The largest ``channel_data`` or ``user_data`` text read at all; what counts against the 1 KiB
#: user info cap is the info re-encoded (the Python SDK escapes non-ASCII: six characters each).
SIGNED_DATA_MAX = 8192
#: A presence member's ``user_info``, in bytes of compact UTF-8 JSON (Pusher: "1KB limit for user object").
USER_INFO_MAX = 1024
#: Members of one presence channel (Pusher's limit); the wiring refuses the next subscriber.
PRESENCE_MEMBERS_MAX = 100
#: A signed-in user's watchlist: longer ones are cut here and the client told (code 4302).
WATCHLIST_MAX = 100
#: How long a cache channel keeps its last event (Pusher: "up to 30 minutes").
CACHE_TTL = 1800
#: Cap on a client frame's text, far above anything valid (10 KiB of data plus its envelope).
FRAME_MAX = 64 * 1024


class PusherError(Exception):
    """A client frame refused, or a connection refused or closed; `frame` is the ``pusher:error``.

    ``code`` None is an error that closes nothing (a malformed frame); a code in 4000-4299 is also
    the WebSocket close code the wiring closes with after sending the frame.
    """

    def __init__(self, code: int | None, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def frame(self) -> str:
        return error_frame(self.code, self.message)

    @property
    def closes(self) -> bool:
        return self.code is not None and 4000 <= self.code < 4300


class SubscriptionError(Exception):
    """A subscription refused; `frame` is the ``pusher:subscription_error`` on that channel."""

    def __init__(self, channel: str, message: str, status: int = 401) -> None:
        super().__init__(message)
        self.channel = channel
        self.message = message
        self.status = status

    def frame(self) -> str:
        return subscription_error_frame(self.channel, self.message, self.status)


# -- what a client sends ------------------------------------------------------------------------


@dataclass(frozen=True)
class Ping:
    pass


@dataclass(frozen=True)
class Pong:
    pass


@dataclass(frozen=True)
class Subscribe:
    """``auth`` and ``channel_data`` are exactly as sent (None when absent or empty): they are
    checked against their signature by `authorize_subscription`, never re-encoded."""

    channel: str
    auth: str | None = None
    channel_data: str | None = None


@dataclass(frozen=True)
class Unsubscribe:
    channel: str


@dataclass(frozen=True)
class Signin:
    auth: str
    user_data: str


@dataclass(frozen=True)
class ClientEvent:
    """A ``client-*`` event for the channel's other subscribers; ``data`` as the string they get
    (a client's object data is encoded once, here)."""

    channel: str
    event: str
    data: str


ClientFrame = Ping | Pong | Subscribe | Unsubscribe | Signin | ClientEvent


def check_protocol(protocol: str | None) -> None:
    """The ``protocol`` query parameter of ``/app/<key>``: only 7 is spoken here (pusher-js 4 and
    later, and every current Pusher client, send 7). Raises the `PusherError` to close with."""
    if protocol is None or protocol == "":
        raise PusherError(NO_PROTOCOL, "No protocol version supplied: connect with ?protocol=7")
    if protocol != str(PROTOCOL_VERSION):
        raise PusherError(UNSUPPORTED_PROTOCOL, f"Unsupported protocol version {protocol[:20]!r}: this server speaks 7")


def parse_client_frame(text: str) -> ClientFrame:
    """Validate one text frame from a Pusher client; raise `PusherError` (code None) if malformed.

    Checks only what the frame alone can tell: a client event on a public channel is refused
    here; whether the socket is subscribed to the channel, and its rate, are the caller's to check.
    """
    if len(text) > FRAME_MAX:
        raise PusherError(None, f"Frame is larger than {FRAME_MAX} characters")
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        raise PusherError(None, "Frame is not valid JSON") from None
    if not isinstance(obj, dict):
        raise PusherError(None, "Frame must be a JSON object with an 'event'")
    event = obj.get("event")
    if not isinstance(event, str):
        raise PusherError(None, "Frame must have an 'event' string")
    if event == "pusher:ping":
        return Ping()
    if event == "pusher:pong":
        return Pong()
    if event in ("pusher:subscribe", "pusher:unsubscribe", "pusher:signin"):
        data = _object_data(obj.get("data"), event)
        if event == "pusher:signin":
            return _signin(data)
        channel = data.get("channel")
        if not isinstance(channel, str) or not (
            names.is_valid_channel_name(channel) or names.server_to_user_id(channel) is not None
        ):
            problem = names.channel_name_problem(channel) or "not a channel this client may name"
            raise PusherError(None, f"Invalid channel {_clip(channel)}: {problem}")
        if event == "pusher:unsubscribe":
            return Unsubscribe(channel)
        return Subscribe(
            channel, _optional_text(data, "auth", 512), _optional_text(data, "channel_data", SIGNED_DATA_MAX),
        )
    if event.startswith(names.CLIENT_EVENT_PREFIX):
        return _client_event(event, obj)
    raise PusherError(None, f"Unsupported event {_clip(event)}: a client may send pusher:* protocol events "
                            "and client-* events")


def _object_data(data: object, event: str) -> dict[str, Any]:
    if isinstance(data, str):  # some clients send data double-encoded, as the server does
        try:
            data = json.loads(data)
        except (ValueError, RecursionError):
            data = None
    if not isinstance(data, dict):
        raise PusherError(None, f"{event} needs a 'data' object")
    return data


def _optional_text(data: dict[str, Any], name: str, limit: int) -> str | None:
    value = data.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise PusherError(None, f"'{name}' must be a string")
    if len(value) > limit:
        raise PusherError(None, f"'{name}' is longer than {limit} characters")
    return value


def _signin(data: dict[str, Any]) -> Signin:
    auth, user_data = data.get("auth"), data.get("user_data")
    if not isinstance(auth, str) or not isinstance(user_data, str):
        raise PusherError(None, "pusher:signin needs 'auth' and 'user_data' strings")
    if len(auth) > 512:
        raise PusherError(None, "pusher:signin 'auth' is longer than 512 characters")
    if len(user_data) > SIGNED_DATA_MAX:
        raise PusherError(None, f"pusher:signin 'user_data' is longer than {SIGNED_DATA_MAX} characters")
    return Signin(auth, user_data)


def _client_event(event: str, obj: dict[str, Any]) -> ClientEvent:
    if not names.is_valid_event_name(event):
        raise PusherError(None, f"Event name is longer than {names.EVENT_NAME_MAX} characters")
    channel = obj.get("channel")
    if not isinstance(channel, str) or not names.is_valid_channel_name(channel):
        raise PusherError(None, f"Client event {_clip(event)} needs the 'channel' it is for")
    if not names.channel_kind(channel).allows_client_events:
        raise PusherError(None, f"Client events are only allowed on private and presence channels, not on {channel!r}")
    data = obj.get("data")
    try:
        text = data if isinstance(data, str) else dumps(data)
        text.encode("utf-8")
    except (ValueError, UnicodeEncodeError, RecursionError):
        raise PusherError(None, "Client event data must be plain JSON in valid Unicode") from None
    if too_big(text, EVENT_DATA_MAX):
        raise PusherError(None, f"Client event data is larger than {EVENT_DATA_MAX} bytes")
    return ClientEvent(channel, event, text)


def _clip(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:80] + "..."


# -- authorizing what a client asks for ---------------------------------------------------------


@dataclass(frozen=True)
class PresenceMember:
    """A member of a presence channel. ``user_id`` is kept as the app server gave it (a string or
    an integer) because clients echo it back in member lists; ``key`` is its decimal string, the
    one identity used to compare and count (user 7 and user "7" are one member). ``info_json`` is
    ``user_info`` as compact JSON text, ``"null"`` when the app server gave none."""

    user_id: str | int
    info_json: str = "null"

    @property
    def key(self) -> str:
        return str(self.user_id)


@dataclass(frozen=True)
class SignedInUser:
    """A connection's user after ``pusher:signin``. ``user_data`` is the exact text signed, which
    ``pusher:signin_success`` echoes back; ``watchlist_cut`` says the watchlist was longer than
    `WATCHLIST_MAX` and only its start was kept."""

    id: str
    user_data: str
    info_json: str = "null"
    watchlist: tuple[str, ...] = ()
    watchlist_cut: bool = False

    def as_member(self) -> PresenceMember:
        """A signed-in user joining a presence channel whose authorization carried no ``channel_data``."""
        return PresenceMember(self.id, self.info_json)


@dataclass(frozen=True)
class Authorized:
    """A subscription allowed; ``member`` is who joins, on a presence channel."""

    channel: str
    member: PresenceMember | None = None


def authorize_subscription(
    sub: Subscribe, *, key: str, secret: str, socket_id: str, user: SignedInUser | None = None,
) -> Authorized:
    """Whether this socket may subscribe: public channels always; private, presence and encrypted
    ones with an ``auth`` signed for this socket; ``#server-to-user-<id>`` only once signed in as
    that user. Raises `SubscriptionError` otherwise.

    On a presence channel the member comes from ``channel_data`` (signed with the auth), else from
    the signed-in user, as pusher-js does when the authorization endpoint sends no ``channel_data``.
    """
    owner = names.server_to_user_id(sub.channel)
    if owner is not None:
        if user is None or user.id != owner:
            raise SubscriptionError(
                sub.channel, "Only the signed-in user may subscribe to their #server-to-user- channel",
            )
        return Authorized(sub.channel)
    kind = names.channel_kind(sub.channel)
    if not kind.needs_auth:
        return Authorized(sub.channel)
    try:
        verify_channel_auth(key, secret, socket_id, sub.channel, sub.auth, sub.channel_data)
    except AuthError as e:
        raise SubscriptionError(sub.channel, e.message) from None
    if not kind.presence:
        return Authorized(sub.channel)
    if sub.channel_data is not None:
        try:
            return Authorized(sub.channel, parse_channel_data(sub.channel_data))
        except ValueError as e:
            raise SubscriptionError(sub.channel, f"Invalid channel_data: {e}") from None
    if user is not None:
        return Authorized(sub.channel, user.as_member())
    raise SubscriptionError(
        sub.channel, "A presence channel needs channel_data in its authorization, or a signed-in user",
    )


def parse_channel_data(text: str) -> PresenceMember:
    """``{"user_id": <string or integer>, "user_info": <any JSON>}`` from a presence authorization;
    ValueError with the reason. Caps: the id's decimal form 128 characters, the info 1 KiB."""
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        raise ValueError("not JSON") from None
    if not isinstance(obj, dict):
        raise ValueError("must be a JSON object")
    user_id = obj.get("user_id")
    if isinstance(user_id, bool) or not isinstance(user_id, (str, int)):
        raise ValueError("'user_id' must be a string or an integer")
    if not 0 < len(str(user_id)) <= names.USER_ID_MAX:
        raise ValueError(f"'user_id' must be 1 to {names.USER_ID_MAX} characters")
    return PresenceMember(user_id, _info_json(obj.get("user_info"), "user_info"))


def _info_json(info: object, name: str) -> str:
    try:
        text = dumps(info)
        size = len(text.encode("utf-8"))
    except (ValueError, UnicodeEncodeError, RecursionError):
        raise ValueError(f"'{name}' must be plain JSON in valid Unicode") from None
    if size > USER_INFO_MAX:
        raise ValueError(f"'{name}' is larger than {USER_INFO_MAX} bytes")
    return text


def signin(frame: Signin, *, key: str, secret: str, socket_id: str) -> SignedInUser:
    """Check a ``pusher:signin``; raise `PusherError` 4009 (close the connection) if refused.

    ``user_data`` must hold an ``id`` that is a non-empty string (pusher-js drops a signin whose id
    is anything else), of the channel alphabet (it names ``#server-to-user-<id>``).
    """
    try:
        verify_user_auth(key, secret, socket_id, frame.auth, frame.user_data)
        return parse_user_data(frame.user_data)
    except (AuthError, ValueError) as e:
        raise PusherError(CONNECTION_UNAUTHORIZED, f"Connection is unauthorized: {e}") from None


def parse_user_data(text: str) -> SignedInUser:
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        raise ValueError("user_data is not JSON") from None
    if not isinstance(obj, dict):
        raise ValueError("user_data must be a JSON object")
    user_id = obj.get("id")
    if not names.is_valid_user_id(user_id):
        raise ValueError(
            f"user_data 'id' must be a string of 1 to {names.USER_ID_MAX} letters, digits or _ - = @ , . ;",
        )
    assert isinstance(user_id, str)
    watchlist = obj.get("watchlist", [])
    if not isinstance(watchlist, list) or not all(names.is_valid_user_id(u) for u in watchlist):
        raise ValueError("user_data 'watchlist' must be a list of user ids")
    return SignedInUser(
        id=user_id, user_data=text, info_json=_info_json(obj.get("user_info"), "user_info"),
        watchlist=tuple(watchlist[:WATCHLIST_MAX]), watchlist_cut=len(watchlist) > WATCHLIST_MAX,
    )


# -- what a client receives ---------------------------------------------------------------------


def _frame(event: str, data: str | None = None, channel: str | None = None, user_id: str | None = None) -> str:
    msg: dict[str, Any] = {"event": event}
    if channel is not None:
        msg["channel"] = channel
    if data is not None:
        msg["data"] = data
    if user_id is not None:
        msg["user_id"] = user_id
    return dumps(msg)


def connection_established_frame(socket_id: str, activity_timeout: int = ACTIVITY_TIMEOUT) -> str:
    data = dumps({"socket_id": socket_id, "activity_timeout": activity_timeout})
    return _frame("pusher:connection_established", data)


PING_FRAME = _frame("pusher:ping", "{}")
PONG_FRAME = _frame("pusher:pong", "{}")


def error_frame(code: int | None, message: str) -> str:
    """``data`` is an object here (see the module docstring); ``code`` is left out when None."""
    data: dict[str, Any] = {"message": message}
    if code is not None:
        data["code"] = code
    return dumps({"event": "pusher:error", "data": data})


def subscription_succeeded_frame(channel: str, presence_json: str | None = None) -> str:
    """``presence_json`` is `presence_data` for a presence channel; other channels get ``{}``."""
    return _frame("pusher_internal:subscription_succeeded", presence_json or "{}", channel)


def subscription_error_frame(channel: str, message: str, status: int = 401) -> str:
    """What pusher-js itself emits when its authorization endpoint fails, so one handler serves both."""
    data = dumps({"type": "AuthError", "error": message, "status": status})
    return _frame("pusher:subscription_error", data, channel)


def presence_data(members: Iterable[PresenceMember]) -> str:
    """``{"presence": {"ids": [...], "hash": {id: info}, "count": n}}`` as JSON text; a user with
    several connections is listed once (the first given). Infos are spliced in as the JSON text
    they already are, never decoded again."""
    seen: dict[str, PresenceMember] = {}
    for m in members:
        seen.setdefault(m.key, m)
    ids = ",".join(dumps(m.user_id) for m in seen.values())
    hash_ = ",".join(dumps(k) + ":" + m.info_json for k, m in seen.items())
    return '{"presence":{"ids":[' + ids + '],"hash":{' + hash_ + '},"count":' + str(len(seen)) + "}}"


def member_added_frame(channel: str, member: PresenceMember) -> str:
    data = '{"user_id":' + dumps(member.user_id) + ',"user_info":' + member.info_json + "}"
    return _frame("pusher_internal:member_added", data, channel)


def member_removed_frame(channel: str, member: PresenceMember) -> str:
    return _frame("pusher_internal:member_removed", dumps({"user_id": member.user_id}), channel)


def channel_event_frame(channel: str, event: str, data: str, user_id: str | int | None = None) -> str:
    """An event on a channel; ``user_id`` (the sender's, as a string, as the protocol says) only for a
    client event on a presence channel, so receivers know who spoke without trusting the data."""
    return _frame(event, data, channel, None if user_id is None else str(user_id))


def client_event_frame(event: ClientEvent, sender: PresenceMember | None = None) -> str:
    """A client event as the channel's other subscribers get it (never echoed to its sender)."""
    user_id = sender.user_id if sender is not None and names.is_presence_channel(event.channel) else None
    return channel_event_frame(event.channel, event.event, event.data, user_id)


def signin_success_frame(user: SignedInUser) -> str:
    return _frame("pusher:signin_success", dumps({"user_data": user.user_data}))


def watchlist_cut_error() -> PusherError:
    """Sent after ``pusher:signin_success`` when the watchlist was cut; closes nothing."""
    return PusherError(
        WATCHLIST_LIMIT, f"Watchlist limit exceeded. Only the first {WATCHLIST_MAX} user IDs are accepted.",
    )


def cache_miss_frame(channel: str) -> str:
    """A cache channel had nothing to replay: the client may ask its server to publish. ``data``
    ``{}`` because the Java client reads ``data`` unconditionally."""
    return _frame("pusher:cache_miss", "{}", channel)


def not_subscribed(channel: str) -> PusherError:
    """A client event for a channel this socket has no subscription to: dropped, the connection stays."""
    return PusherError(None, f"Client event rejected: this connection is not subscribed to {channel!r}")


def rate_limited() -> PusherError:
    """A client event over `CLIENT_EVENT_RATE`: dropped, the connection stays."""
    return PusherError(
        CLIENT_EVENT_RATE_LIMIT, f"Client event rejected due to rate limit ({CLIENT_EVENT_RATE} a second)",
    )


def app_does_not_exist(key: str) -> PusherError:
    return PusherError(APP_DOES_NOT_EXIST, f"Application does not exist: no app has the key {key[:64]!r}")


def over_capacity() -> PusherError:
    return PusherError(OVER_CAPACITY, "Over capacity")


def reconnect_now(reason: str = "Server is restarting: reconnect") -> PusherError:
    return PusherError(RECONNECT_NOW, reason)


def pong_not_received() -> PusherError:
    """The server's ``pusher:ping`` went unanswered for `PONG_TIMEOUT` seconds: close, the client reconnects."""
    return PusherError(PONG_NOT_RECEIVED, "Pong reply not received")
