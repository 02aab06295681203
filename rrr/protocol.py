"""Message shapes of the rrr wire protocol, as pure functions.

Everything that decides what goes on a socket or a Redis channel lives here, so
the shapes can be tested without a server, and the page, the worker and the
server agree on one definition (`static/js/protocol.js` mirrors this module).
"""

from __future__ import annotations

import bisect
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: Room names: Pusher's channel grammar, so every Pusher channel is an rrr room (and the other way).
ROOM_NAME_MAX = 164
SLUG_PATTERN = r"[A-Za-z0-9_\-=@,.;]{1,%d}" % ROOM_NAME_MAX
_SLUG_RE = re.compile(rf"^{SLUG_PATTERN}\Z")
#: A room in a URL path: its characters, or any of them percent-encoded (as ``encodeURIComponent``
#: writes ``@ , ; =``). Tornado decodes the segment; `is_valid_slug` judges what it decodes to.
ROOM_PATH_PATTERN = r"(?:[A-Za-z0-9_\-=@,.;]|%[0-9A-Fa-f]{2}){1," + str(ROOM_NAME_MAX) + "}"
ROOM_RULE = "room must be 1 to 164 letters, digits or _ - = @ , . ;"
#: An event name a publisher may give a message (Pusher's limit), and the prefixes only the
#: Pusher protocol itself may send: ``pusher_internal:member_added`` from a page would rewrite
#: every Pusher client's member list.
EVENT_NAME_MAX = 200
RESERVED_EVENT_PREFIXES = ("pusher:", "pusher_internal:")
# A JSON escape that may decode to half of a surrogate pair: only such frames need the full check.
_SURROGATE_ESCAPE_RE = re.compile(r"\\u[dD][89a-fA-F]")
SUB_ID_MAX = 128
#: The longest user id (a token's ``sub``), so the longest ``after`` a ``members`` frame may name.
USER_ID_MAX = 128

#: Where rrr also answers everything a page of a site uses (``/_rrr/ws/``, ``/_rrr/sse/``,
#: ``/_rrr/poll/``, ``/_rrr/app/<key>``, ``/_rrr/static/js/rrr.js``), beside the bare paths: a site
#: that puts rrr under its own origin proxies this one prefix, which no site's ``/static/`` (Django's
#: ``STATIC_URL``), ``/ws/`` (Channels) or ``/rrr/`` (rrr.django's own views) can collide with.
BROWSER_PREFIX = "/_rrr"

CLIENT_TYPES = frozenset({"subscribe", "unsubscribe", "publish", "ping", "hello", "auth", "members", "whisper"})
#: A whisper's (and a Pusher client event's) data, in bytes of JSON: Pusher's 10 KB.
WHISPER_DATA_MAX = 10240
#: Whispers (and Pusher client events) a socket may send per second, bursts included: Pusher's limit.
WHISPER_RATE = 10
TRANSPORTS = frozenset({"sharedworker", "leader", "direct", "unknown"})


class ProtocolError(ValueError):
    """A client frame we refuse; ``code`` is sent back in an ``error`` message."""

    def __init__(
        self, code: str, reason: str, *, room: str | None = None, sub: str | None = None, after: str | None = None,
    ) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.room = room
        self.sub = sub
        self.after = after

    def message(self) -> dict[str, Any]:
        """The ``error`` frame; one about a subscription says which (``room``, ``sub``), and one
        refusing a ``members`` page says which page (``after``), so the client can tell a page it
        asked for from the subscription itself."""
        pairs = (("room", self.room), ("sub", self.sub), ("after", self.after))
        return error_message(self.code, self.reason, **{k: v for k, v in pairs if v is not None})


@dataclass(frozen=True)
class ClientMessage:
    """A validated client frame. ``data_json`` is the publish payload, re-encoded once."""

    type: str
    room: str | None = None
    sub: str | None = None
    data_json: str | None = None
    transport: str | None = None
    token: str | None = None
    since: Since | None = None
    after: str | None = None  # a ``members`` frame's: the last user id the client got ("" from the start)
    event: str | None = None  # a publish's optional event name (what Pusher clients hear it as); a whisper's


@dataclass(frozen=True)
class Since:
    """Where a client's copy of a room's messages ends: resubscribing with it replays the rest."""

    offset: int
    epoch: str


@dataclass(frozen=True)
class CountState:
    """A room's totals across every live process, as computed atomically in Redis.

    ``version`` grows with every change (a global Redis sequence), so a process
    can drop announcements that arrive out of order and always end on the truth.
    """

    connections: int
    tabs: int
    updated: float | None
    version: int
    users: int = 0  # distinct members, in a presence room


PRIVATE_PREFIX = "private-"
PRESENCE_PREFIX = "presence-"


def needs_grant(room: str) -> bool:
    """Private and presence rooms need a token that grants them; all others are public."""
    return room.startswith((PRIVATE_PREFIX, PRESENCE_PREFIX))


def is_presence_room(room: str) -> bool:
    return room.startswith(PRESENCE_PREFIX)


def is_valid_slug(value: object) -> bool:
    return isinstance(value, str) and _SLUG_RE.match(value) is not None


def check_event(event: object) -> str:
    """An event name a publisher may give (``publish``'s ``event``, ``?event=`` on the API, the
    helper's ``event=``): 1 to 200 characters, not one of the Pusher protocol's own. ValueError
    otherwise."""
    if not isinstance(event, str) or not 0 < len(event) <= EVENT_NAME_MAX:
        raise ValueError(f"event must be a string of 1 to {EVENT_NAME_MAX} characters")
    if event.startswith(RESERVED_EVENT_PREFIXES):
        raise ValueError("event names starting with pusher: or pusher_internal: are reserved")
    return event


#: What starts a payload that carries more than its data (`pack`): no JSON text starts with it.
ENVELOPE = "#"


@dataclass(frozen=True, slots=True)
class Payload:
    """A message as it travels through Redis (pub/sub and history alike): its data (JSON text) and
    what goes with it. Plain data is its own payload; anything more is `pack`ed in front of it:
    its ``event`` name; ``whisper``: an ephemeral event from a client (never stored), from ``user``
    (None: anonymous); ``exclude``: the socket id of the one socket it must not reach (its sender)."""

    data_json: str
    event: str | None = None
    whisper: bool = False
    user: str | None = None
    exclude: str | None = None


def pack(data_json: str, event: str | None = None, *, whisper: bool = False, user: str | None = None,
         exclude: str | None = None) -> str:
    """One string for Redis: ``data_json`` alone, or a header (``#{"e":<event>,...}``) followed by
    it. Backends that ``PUBLISH`` themselves may write the same (``e`` only)."""
    header: dict[str, Any] = {}
    if event is not None:
        header["e"] = event
    if whisper:
        header["w"] = 1
        if user is not None:
            header["u"] = user
    if exclude is not None:
        header["x"] = exclude
    return ENVELOPE + dumps(header) + data_json if header else data_json


_HEADER = json.JSONDecoder()
_SOCKET_ID_RE = re.compile(r"[0-9]{1,20}\.[0-9]{1,20}")


def unpack(payload: str) -> Payload:
    """`pack` undone, for a payload already validated (`validate_payload`)."""
    if not payload.startswith(ENVELOPE):
        return Payload(payload)
    header, end = _HEADER.raw_decode(payload, 1)
    return Payload(payload[end:], header.get("e"), "w" in header, header.get("u"), header.get("x"))


def validate_payload(raw: bytes | str) -> str:
    """`validate_json_payload` for a message's payload: plain JSON data, or a `pack`ed header (an
    object whose ``e``, if present, is an event name) and JSON data after it. ValueError otherwise."""
    text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    stripped = text.strip()
    if not stripped.startswith(ENVELOPE):
        return validate_json_payload(stripped)
    try:
        header, end = _HEADER.raw_decode(stripped, 1)
    except (ValueError, RecursionError):
        raise ValueError("a payload's header must be a JSON object") from None
    if not isinstance(header, dict) or set(header) - {"e", "w", "u", "x"}:
        raise ValueError("a payload's header must be an object of 'e', 'w', 'u', 'x'")
    if "e" in header:
        check_event(header["e"])
    if "w" in header and (header["w"] != 1 or "e" not in header):
        raise ValueError("a whisper ('w': 1) needs its event ('e')")
    user = header.get("u")
    if user is not None and not (isinstance(user, str) and 0 < len(user) <= USER_ID_MAX and "w" in header):
        raise ValueError("'u' is a whisper's user id")
    x = header.get("x")
    if x is not None and not (isinstance(x, str) and _SOCKET_ID_RE.fullmatch(x)):
        raise ValueError("'x' is a socket id")
    data = validate_json_payload(stripped[end:])
    if not data:
        raise ValueError("a payload needs data after its header")
    return stripped[:end] + data


def dumps(obj: Any) -> str:
    """Compact JSON, the one encoding every frame uses."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def parse_client_message(text: str) -> ClientMessage:
    """Validate one text frame from a browser; raise `ProtocolError` with a reply code."""
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        raise ProtocolError("bad_json", "frame is not valid JSON") from None
    if not isinstance(obj, dict):
        raise ProtocolError("bad_message", "frame must be a JSON object")
    if _SURROGATE_ESCAPE_RE.search(text) and not _encodable(obj):
        # A lone surrogate (``"\\ud800"``) parses, but no UTF-8 frame can carry it back out.
        raise ProtocolError("bad_message", "strings must be valid Unicode (no lone surrogates)")
    kind = obj.get("type")
    if not isinstance(kind, str) or kind not in CLIENT_TYPES:
        raise ProtocolError("unknown_type", f"unknown message type {str(kind)[:40]!r}")
    if kind == "ping":
        return ClientMessage("ping")
    if kind == "hello":
        transport = obj.get("transport")
        if not isinstance(transport, str) or transport not in TRANSPORTS:
            transport = "unknown"
        return ClientMessage("hello", transport=transport)
    if kind == "auth":
        token = obj.get("token")
        if not isinstance(token, str) or not token:
            raise ProtocolError("bad_token", "auth needs a 'token' string (a JWT)")
        return ClientMessage("auth", token=token)
    room = obj.get("room")
    if not is_valid_slug(room):
        raise ProtocolError("bad_room", ROOM_RULE)
    if kind == "whisper":
        return _whisper(obj, str(room))
    if kind == "publish":
        if "data" not in obj:
            raise ProtocolError("bad_message", "publish needs a 'data' field")
        try:
            data_json = dumps(obj["data"])
        except ValueError:
            raise ProtocolError("bad_message", "data must be plain JSON") from None
        event = obj.get("event")
        if event is not None:
            try:
                event = check_event(event)
            except ValueError as e:
                raise ProtocolError("bad_message", str(e), room=room) from None
        return ClientMessage("publish", room=room, data_json=data_json, event=event)
    sub = obj.get("sub", "")
    if isinstance(sub, int) and not isinstance(sub, bool):
        sub = str(sub)
    if not isinstance(sub, str) or len(sub) > SUB_ID_MAX:
        raise ProtocolError("bad_sub", f"sub must be a string of at most {SUB_ID_MAX} characters", room=room)
    if kind == "members":
        after = obj.get("after")
        if after is None:
            after = ""
        if not isinstance(after, str) or len(after) > USER_ID_MAX:
            raise ProtocolError(
                "bad_message", f"after must be a user id (a string of at most {USER_ID_MAX} characters)",
                room=room, sub=sub,
            )
        return ClientMessage(kind, room=room, sub=sub, after=after)
    since = None
    if kind == "subscribe" and obj.get("since") is not None:
        since = parse_since(obj["since"], str(room), sub)
    return ClientMessage(kind, room=room, sub=sub, since=since)


def _whisper(obj: dict[str, Any], room: str) -> ClientMessage:
    """``{"type": "whisper", "room", "event", "data"}``: an event for the room's other subscribers now."""
    try:
        event = check_event(obj.get("event"))
    except ValueError as e:
        raise ProtocolError("bad_message", f"whisper {e}", room=room) from None
    if "data" not in obj:
        raise ProtocolError("bad_message", "whisper needs a 'data' field", room=room)
    try:
        data_json = dumps(obj["data"])
    except ValueError:
        raise ProtocolError("bad_message", "data must be plain JSON", room=room) from None
    if too_big(data_json, WHISPER_DATA_MAX):
        raise ProtocolError("bad_message", f"a whisper's data is at most {WHISPER_DATA_MAX} bytes of JSON", room=room)
    return ClientMessage("whisper", room=room, data_json=data_json, event=event)


_EPOCH_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}\Z")
_OFFSET_MAX = 2**53 - 1  # what a browser's JSON numbers hold exactly


def parse_since(value: object, room: str, sub: str) -> Since:
    """``{"offset": <int >= 0>, "epoch": "<string>"}`` from a subscribe's ``since``."""
    if isinstance(value, dict):
        offset, epoch = value.get("offset"), value.get("epoch")
        if isinstance(offset, int) and not isinstance(offset, bool) and 0 <= offset <= _OFFSET_MAX \
                and isinstance(epoch, str) and is_epoch(epoch):
            return Since(offset, epoch)
    raise ProtocolError(
        "bad_since", "since must be {\"offset\": <integer >= 0>, \"epoch\": \"<epoch>\"}", room=room, sub=sub,
    )


def is_epoch(value: object) -> bool:
    return isinstance(value, str) and _EPOCH_RE.match(value) is not None


_UINT_RE = re.compile(r"[0-9]{1,19}\Z")


def parse_uint(text: str, maximum: int = _OFFSET_MAX) -> int:
    """A non-negative integer a client wrote (a query argument, a header): ASCII digits only, at
    most ``maximum``; ValueError otherwise. Every number read from a client goes through here:
    ``str.isdigit`` accepts ``"²"`` and ``int`` accepts ``" 7"``, ``"+7"``, ``"1_0"`` and Arabic-Indic
    digits, so checking with one and converting with the other turns a typo into a 500."""
    if not isinstance(text, str) or _UINT_RE.match(text) is None:
        raise ValueError(f"expected a non-negative integer, got {str(text)[:40]!r}")
    value = int(text)
    if value > maximum:
        raise ValueError(f"expected an integer of at most {maximum}, got {text[:40]!r}")
    return value


def since_from_query(offset: str | None, epoch: str | None) -> Since | None:
    """``?since=<n>&epoch=<e>`` on the one-room socket; None if absent; ValueError if malformed."""
    if offset is None and epoch is None:
        return None
    if offset is None or epoch is None or not is_epoch(epoch):
        raise ValueError("since needs ?since=<integer >= 0>&epoch=<epoch>")
    try:
        return Since(parse_uint(offset), epoch)
    except ValueError:
        raise ValueError("since needs ?since=<integer >= 0>&epoch=<epoch>") from None


#: The servers' ``--max-message-size`` by default: the largest message data (bytes of its JSON) they deliver.
MAX_MESSAGE_SIZE = 65536


def too_big(data_json: str, limit: int) -> bool:
    """Whether ``data_json`` is over ``limit`` bytes in UTF-8 (encoded only when its length in
    characters cannot tell: one character is one to four bytes)."""
    n = len(data_json)
    if n > limit:
        return True
    return 4 * n > limit and len(data_json.encode("utf-8", "surrogatepass")) > limit


def _encodable(obj: Any) -> bool:
    """Whether ``obj`` survives the trip to UTF-8: JSON escapes can smuggle in lone surrogates."""
    try:
        # Not dumps(): NaN, which json.loads lets through, is not what this check is about.
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except (UnicodeEncodeError, RecursionError):
        return False
    return True


def authenticated_message(user: str, expires: float) -> dict[str, Any]:
    """The reply to a good ``auth``: who the socket now is, and until when (unix seconds)."""
    return {"type": "authenticated", "user": user, "exp": int(expires)}


def count_message(room: str, state: CountState) -> dict[str, Any]:
    """The talk's ``connection_message``: its client reads ``connections`` and ``updated``."""
    msg: dict[str, Any] = {
        "type": "connection_message",
        "room": room,
        "connections": state.connections,
        "tabs": state.tabs,
        "updated": state.updated,
    }
    if is_presence_room(room):
        msg["users"] = state.users
    return msg


def members_json(members: Mapping[str, str] | Iterable[tuple[str, str]]) -> str:
    """``{"<user>": {"info": <info>}, ...}`` from info JSON already validated (never re-decoded), in
    the order given."""
    pairs = members.items() if isinstance(members, Mapping) else members
    return "{" + ",".join(dumps(user) + ':{"info":' + info + "}" for user, info in pairs) + "}"


#: ``--presence-list-max`` by default: the most members one ``presence`` frame (or diff) carries.
PRESENCE_LIST_MAX = 1000


def presence_frame(room: str, members: Mapping[str, str] | str, total: int, more: bool, sub: str | None = None) -> str:
    """A page of a presence room's members: ``members`` (user -> info JSON in ascending user id
    order, or that already encoded by `members_json`, so many subscribers cost one encoding), how
    many users the room has (``total``) and whether any come after this page (``more``). Without
    ``sub``: the first page, sent on subscribe; with it: the answer to that subscription's
    ``members`` frame."""
    head = '{"type":"presence","room":' + dumps(room)
    if sub is not None:
        head += ',"sub":' + dumps(sub)
    body = members if isinstance(members, str) else members_json(members)
    return head + ',"members":' + body + ',"total":' + str(total) + ',"more":' + ("true" if more else "false") + "}"


def members_page(order: Sequence[str], after: str, limit: int) -> tuple[Sequence[str], bool]:
    """The users of ``order`` (ascending user ids) after ``after`` ("" from the start), at most
    ``limit`` of them, and whether more follow. Ascending is Python's string order: by Unicode code
    point, which is also the order of the ids' UTF-8 bytes (static/js/protocol.js compares alike)."""
    start = bisect.bisect_right(order, after) if after else 0
    end = start + max(0, limit)
    return order[start:end], end < len(order)


def members_page_json(room: str, members: Mapping[str, str], after: str, limit: int) -> str:
    """``GET /api/rooms/<slug>/members``: ``{"room", "members", "total", "more"}``, a page of
    ``members`` (user -> info JSON, in any order) as `members_page` cuts it."""
    users, more = members_page(sorted(members), after, limit)
    return (
        '{"room":' + dumps(room) + ',"members":' + members_json((u, members[u]) for u in users)
        + ',"total":' + str(len(members)) + ',"more":' + ("true" if more else "false") + "}"
    )


def presence_diff_frame(room: str, joins: Mapping[str, str], leaves: Mapping[str, str]) -> str:
    """Who came and who went since the last list or diff this socket got."""
    return (
        '{"type":"presence_diff","room":' + dumps(room) + ',"joins":' + members_json(joins)
        + ',"leaves":' + members_json(leaves) + "}"
    )


def presence_diff_frames(room: str, joins: Mapping[str, str], leaves: Mapping[str, str], most: int) -> list[str]:
    """One round's diff as frames of at most ``most`` members each (leaves, then joins), so no frame
    is ever longer than a page however many came or went at once (a join storm's round can be
    thousands)."""
    if len(joins) + len(leaves) <= most:
        return [presence_diff_frame(room, joins, leaves)]
    step = max(1, most)
    entries = [(False, u, i) for u, i in leaves.items()] + [(True, u, i) for u, i in joins.items()]
    frames = []
    for k in range(0, len(entries), step):
        chunk = entries[k : k + step]
        frames.append(presence_diff_frame(
            room, {u: i for j, u, i in chunk if j}, {u: i for j, u, i in chunk if not j},
        ))
    return frames


def relay_frame(
    room: str, data_json: str, offset: int | None = None, epoch: str | None = None, sub: str | None = None,
    event: str | None = None,
) -> str:
    """A ``message`` frame carrying ``data_json`` byte for byte, as the publisher sent it; a message
    stored in history says where it is (``offset``, ``epoch``); a replay says for which ``sub``; a
    message its publisher named (or a Pusher event) says its ``event``.

    Built by concatenation so a payload is never decoded and re-encoded per room:
    ``data_json`` must already be validated JSON text.
    """
    head = '{"type":"message","room":' + dumps(room)
    if sub is not None:
        head += ',"sub":' + dumps(sub)
    if offset is not None:
        head += ',"offset":' + str(offset) + ',"epoch":' + dumps(epoch)
    if event is not None:
        head += ',"event":' + dumps(event)
    return head + ',"data":' + data_json + "}"


def message_frame(
    room: str, p: Payload, offset: int | None = None, epoch: str | None = None, sub: str | None = None,
) -> str:
    """What a subscriber gets for a payload from Redis (`unpack`ed): a ``message`` (`relay_frame`),
    or a ``whisper`` (`whisper_frame`)."""
    if p.whisper:
        assert p.event is not None
        return whisper_frame(room, p.event, p.data_json, p.user)
    return relay_frame(room, p.data_json, offset, epoch, sub, p.event)


def whisper_frame(room: str, event: str, data_json: str, user: str | None) -> str:
    """A whisper as the room's other subscribers get it: ``user`` the sender's (None: anonymous)."""
    return (
        '{"type":"whisper","room":' + dumps(room) + ',"event":' + dumps(event) + ',"data":' + data_json
        + ',"user":' + dumps(user) + "}"
    )


def subscribed_message(room: str, sub: str, offset: int | None, epoch: str | None, recovered: bool) -> dict[str, Any]:
    """A subscription now receives the room's messages; ``offset`` and ``epoch`` are where they stand
    (absent when history is off), ``recovered`` whether everything after the ``since`` it asked
    for follows (false: reload the state)."""
    msg: dict[str, Any] = {"type": "subscribed", "room": room, "sub": sub}
    if offset is not None:
        msg["offset"] = offset
        msg["epoch"] = epoch
    msg["recovered"] = recovered
    return msg


def error_message(code: str, reason: str, **extra: Any) -> dict[str, Any]:
    msg: dict[str, Any] = {"type": "error", "code": code, "reason": reason}
    msg.update(extra)
    return msg


PONG_FRAME = '{"type":"pong"}'

# ---- SSE and long-polling sessions (docs/guides/transports.md; static/js/protocol.js mirrors these) ----

#: A session id: at least 128 random bits in URL-safe base64 (and, first, its process's tag).
SESSION_PATTERN = r"[A-Za-z0-9_-]{22,256}"
_SESSION_RE = re.compile(rf"^{SESSION_PATTERN}\Z")


def is_session_id(value: object) -> bool:
    return isinstance(value, str) and _SESSION_RE.match(value) is not None


def session_message(session: str) -> dict[str, Any]:
    """The first event of an SSE stream, and what the client POSTs its frames under."""
    return {"type": "session", "session": session}


def close_message(code: int, reason: str) -> dict[str, Any]:
    """An SSE or polling session's last frame when the server ends it: the WebSocket close code
    it would have closed a socket with (4001 signed out, 1001 draining, 1008 too slow...), so the
    library tells a sign-out from a network drop."""
    return {"type": "close", "code": code, "reason": reason}


def poll_batch(seq: int, frames: list[str]) -> str:
    """A long poll's answer: ``frames`` (each a frame's JSON text, as on ``/ws/``), the last of
    which is number ``seq`` of the session (frames are numbered from 1)."""
    return '{"seq":' + str(seq) + ',"frames":[' + ",".join(frames) + "]}"


def poll_opening(session: str, seq: int = 0, frames: list[str] | None = None) -> str:
    """The answer to ``GET /poll/``: the new session, and its first frames (normally none)."""
    return '{"session":' + dumps(session) + "," + poll_batch(seq, frames or [])[1:]


def event_id(offset: int, epoch: str) -> str:
    """The SSE ``id`` of a message on ``/sse/count/<slug>/``, which a browser's EventSource sends
    back as ``Last-Event-ID`` when it reconnects."""
    return f"{offset}:{epoch}"


def since_from_event_id(value: str) -> Since:
    """``Last-Event-ID: <offset>:<epoch>`` as the ``since`` it stands for; ValueError if malformed."""
    offset, sep, epoch = value.strip().partition(":")
    if not sep or not is_epoch(epoch):
        raise ValueError("Last-Event-ID must be <offset>:<epoch>")
    return Since(parse_uint(offset), epoch)


_MESSAGE_HEAD_RE = re.compile(
    r'\{"type":"message","room":"[A-Za-z0-9_-]+"(?:,"sub":"(?:[^"\\]|\\.)*")?'
    r',"offset":([0-9]+),"epoch":"([A-Za-z0-9_-]+)"'
)


def message_event_id(frame_text: str) -> str | None:
    """The event id of a frame built by `relay_frame` that carries an offset, else None: read
    from the frame's head, where `relay_frame` puts it, without decoding the payload."""
    m = _MESSAGE_HEAD_RE.match(frame_text)
    return event_id(int(m.group(1)), m.group(2)) if m else None


def http_error(status: int, reason: str) -> dict[str, Any]:
    """The body of every HTTP error, from the JSON API or a refused WebSocket handshake."""
    return {"error": reason, "status": status}


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON a browser can parse")


def validate_json_payload(raw: bytes | str) -> str:
    """Return ``raw`` as JSON text if it parses as strict JSON (never pickle, never eval).

    Raises ValueError for anything else: not UTF-8, not JSON, NaN/Infinity (which
    browsers' JSON.parse rejects), or nesting deep enough to exhaust the parser.
    """
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        json.loads(text, parse_constant=_no_constants)
    except (UnicodeDecodeError, RecursionError) as e:
        raise ValueError(str(e)) from None
    return text.strip()


def encode_count_announcement(state: CountState) -> str:
    """What the Lua scripts publish on a count channel (kept here for tests and docs)."""
    return dumps({"c": state.connections, "t": state.tabs, "u": state.updated, "v": state.version})


def decode_count_announcement(raw: bytes | str) -> CountState:
    """Parse a count-channel payload; raise ValueError on anything malformed."""
    obj = json.loads(validate_json_payload(raw))
    if not isinstance(obj, dict):
        raise ValueError("count announcement must be an object")
    u = obj.get("u")
    if u is not None and (not isinstance(u, (int, float)) or isinstance(u, bool)):
        raise ValueError("count announcement 'u' must be a number")
    users = _count(obj, "n") if "n" in obj else 0
    return CountState(_count(obj, "c"), _count(obj, "t"), None if u is None else float(u), _count(obj, "v"), users)


def _count(obj: dict[str, Any], key: str) -> int:
    value = obj.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"count announcement needs a non-negative integer {key!r}")
    return value
