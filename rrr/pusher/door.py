"""The Pusher WebSocket door: one Pusher socket onto rrr's own `rrr.session.Session` and hub.

A Pusher socket is counted, capped, presence-listed, revoked and drained as a native one, because
it is one: its channels are subscriptions of a `Session` (one subscription, ``sub`` `SUB`, per
channel), so every cap, count and member list is the native one. What this module adds is the
translation both ways, nothing else:

* in: each frame is parsed (`rrr.pusher.protocol.parse_client_frame`); a subscription is
  authorized by its signature (`authorize_subscription`) and handed to `Session.admit_subscription`, which
  applies every cap a native subscription meets;
* out: each frame the core sends the socket (`Door.outgoing`) becomes what a Pusher client
  expects: a room message an event on its channel (made once per message for every Pusher socket,
  `rrr.edge.wsframe.Frame.alt`), ``subscribed`` (or a presence room's first member page)
  ``pusher_internal:subscription_succeeded``, a presence diff ``member_added``/``member_removed``
  (one per user, not per connection: rrr's member lists are per user), a refusal naming a room
  ``pusher:subscription_error``; counts and everything else a Pusher client has no use for are
  dropped.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

from .. import protocol as native
from ..auth import Identity
from ..edge.wsframe import Frame
from ..errors import BackplaneError
from ..protocol import ProtocolError
from ..session import Session
from . import crossing, names
from . import protocol as pp

log = logging.getLogger("rrr.pusher")

#: The one subscription a Pusher socket has to each of its channels.
SUB = "p"
#: A sign-in lasts as long as its socket (a `rrr.auth.Identity` needs an end: ten years).
SIGNED_IN_FOR = 10 * 365 * 86400.0

_PENDING, _SUBSCRIBED = 0, 1
#: A channel whose subscription succeeded (`Door.channels`): its room's messages go out.
SUBSCRIBED = _SUBSCRIBED

#: The ``status`` a refused subscription's ``pusher:subscription_error`` carries, by rrr's code.
_STATUS = {"forbidden": 403, "unavailable": 503, "rate_limited": 429, "too_many_subscriptions": 429,
           "too_many_tabs": 429, "too_many_rooms": 503, "too_many_members": 403}


@dataclass
class PusherApp:
    """The one Pusher app this server is (``--pusher-app-id``, ``--pusher-key``,
    ``--pusher-secret``) and what every Pusher socket of the process shares."""

    app_id: str
    key: str
    secret: str
    client_events: bool = True
    cache_ttl: float = pp.CACHE_TTL


def pusher_app(o: dict[str, Any]) -> PusherApp | None:
    """The Pusher app from the options: all three of app id, key and secret, or none (None: the
    Pusher endpoint and API are off). ValueError naming what is missing."""
    given = {name: str(o.get(name) or "") for name in ("pusher_app_id", "pusher_key", "pusher_secret")}
    missing = [name for name, value in given.items() if not value]
    if len(missing) == 3:
        return None
    if missing:
        flags = ", ".join("--" + name.replace("_", "-") for name in missing)
        raise ValueError(f"the Pusher app needs --pusher-app-id, --pusher-key and --pusher-secret: {flags} missing")
    return PusherApp(
        given["pusher_app_id"], given["pusher_key"], given["pusher_secret"],
        client_events=bool(o.get("pusher_client_events", True)), cache_ttl=float(o.get("cache_ttl", pp.CACHE_TTL)),
    )


def event_frames(frame: Frame) -> list[Frame]:
    """A room message (or whisper) as the Pusher event every Pusher socket in the room gets (made
    once per frame); a whisper in a presence channel says its sender's ``user_id``. An encrypted
    channel's message is relayed only as the ciphertext event it was; a native publish there (plain
    data pusher-js could not decrypt) is not relayed to Pusher sockets."""
    if frame.alt is None:
        assert frame.payload is not None
        room, p = frame.payload
        if names.is_encrypted_channel(room) and p.event is None:
            frame.alt = []
        else:
            name, data = crossing.to_pusher(p.event, p.data_json)
            user = p.user if p.whisper and names.is_presence_channel(room) else None
            frame.alt = [Frame(pp.channel_event_frame(room, name, data, user))]
    return frame.alt


_INT_ID = re.compile(r"-?[1-9][0-9]{0,15}|0")


def member_id(user: str, integers: bool) -> str | int:
    """A member's id as a Pusher socket is told it. rrr keeps one user id, a string (user 7 and user
    "7" are one member); a socket whose own ``channel_data`` gave an integer id (Laravel's) is told
    every id that is an integer's decimal form as that integer, the form its app uses."""
    return int(user) if integers and _INT_ID.fullmatch(user) else user


def _member_frames(
    frame: Frame, room: str, joins: dict[str, Any], leaves: dict[str, Any], integers: bool,
) -> list[Frame]:
    def make() -> list[Frame]:
        out = [Frame(pp.member_removed_frame(room, pp.PresenceMember(member_id(u, integers)))) for u in leaves]
        out += [Frame(pp.member_added_frame(room, pp.PresenceMember(member_id(u, integers), native.dumps(m["info"]))))
                for u, m in joins.items()]
        return out

    if integers:
        return make()  # rare: not shared
    if frame.alt is None:
        frame.alt = make()
    return frame.alt


def _succeeded_frame(frame: Frame, room: str, members: dict[str, Any], integers: bool) -> Frame:
    """A presence room's first member page as ``subscription_succeeded`` (made once per page)."""
    def make() -> Frame:
        listed = (pp.PresenceMember(member_id(u, integers), native.dumps(m["info"])) for u, m in members.items())
        return Frame(pp.subscription_succeeded_frame(room, pp.presence_data(listed)))

    if integers:
        return make()
    if frame.alt is None:
        frame.alt = [make()]
    return frame.alt[0]


class Door:
    """One Pusher socket's side of the translation: its id, its channels' state."""

    __slots__ = ("app", "session", "socket_id", "channels", "members", "user")

    def __init__(self, app: PusherApp, session: Session, socket_id: str) -> None:
        self.app = app
        self.session = session
        self.socket_id = socket_id
        self.channels: dict[str, int] = {}  # channel -> _PENDING or _SUBSCRIBED
        self.members: dict[str, pp.PresenceMember] | None = None  # presence channel -> who this socket is there
        self.user: pp.SignedInUser | None = None  # after pusher:signin

    # -- in ---------------------------------------------------------------------------------

    def handle(self, text: str) -> tuple[list[Frame], Awaitable[None] | None]:
        """One frame from the client: the frames to answer with, and an awaitable when the work
        waits on Redis (the socket's next frame is read once it is done)."""
        if not self.session.within_rate():
            return [], None
        try:
            msg = pp.parse_client_frame(text)
        except pp.PusherError as e:
            return [Frame(e.frame())], None
        if isinstance(msg, pp.Ping):
            return [_PONG], None
        if isinstance(msg, pp.Pong):
            return [], None
        if isinstance(msg, pp.Subscribe):
            return self._subscribe(msg)
        if isinstance(msg, pp.Unsubscribe):
            self._forget(msg.channel)
            self.session.unsubscribe(msg.channel, SUB)
            return [], None
        if isinstance(msg, pp.Signin):
            return self._signin(msg), None
        return self._client_event(msg)

    def _signin(self, msg: pp.Signin) -> list[Frame]:
        """``pusher:signin`` with ``user_data`` signed for this socket: the socket is that user (its
        ``#server-to-user-<id>`` channel, revocation and ``terminate_connections`` reach it). A bad
        signature closes it with 4009, as Pusher does."""
        conn = self.session.conn
        try:
            user = pp.signin(msg, key=self.app.key, secret=self.app.secret, socket_id=self.socket_id)
        except pp.PusherError as e:
            conn.send_frame(Frame(e.frame()))
            if e.closes:
                conn.close(e.code, e.message[:120])
            return []
        if self.user is not None and self.user.id != user.id:
            conn.send_frame(Frame(pp.error_frame(pp.CONNECTION_UNAUTHORIZED, "Signed in as another user already")))
            conn.close(pp.CONNECTION_UNAUTHORIZED, "signed in as another user already")
            return []
        self.user = user
        now = time.time()
        self.session.identify_as(Identity(user.id, now + SIGNED_IN_FOR, issued_at=now, info_json=user.info_json))
        out = [Frame(pp.signin_success_frame(user))]
        if user.watchlist_cut:
            out.append(Frame(pp.watchlist_cut_error().frame()))
        return out

    def _client_event(self, ev: pp.ClientEvent) -> tuple[list[Frame], Awaitable[None] | None]:
        """A ``client-*`` event: to the channel's other subscriptions, Pusher and native alike (as a
        ``whisper``), never back to this socket, never stored; at most 10 a second (4301 over it,
        the socket stays)."""
        if not self.app.client_events:
            return [Frame(pp.error_frame(None, "Client events are disabled on this server"))], None
        if self.channels.get(ev.channel) != _SUBSCRIBED:
            return [Frame(pp.not_subscribed(ev.channel).frame())], None
        if not self.session.may_whisper():
            return [Frame(pp.rate_limited().frame())], None
        member = self.members.get(ev.channel) if self.members is not None else None
        user = member.key if member is not None else None
        native_msg = crossing.to_native(ev.event, ev.data)
        payload = native.pack(native_msg.data_json, ev.event, whisper=True, user=user, exclude=self.socket_id)
        return [], self._relay(ev, payload, user)

    async def _relay(self, ev: pp.ClientEvent, payload: str, user: str | None) -> None:
        try:
            await self.session.shared.history.relay(ev.channel, payload)
        except BackplaneError:
            self.session.conn.send_frame(Frame(pp.error_frame(None, "The message bus is unavailable; try again")))
            return
        self.session.record_client_event(ev.channel, ev.event, ev.data, user)

    def _subscribe(self, msg: pp.Subscribe) -> tuple[list[Frame], Awaitable[None] | None]:
        channel = msg.channel
        state = self.channels.get(channel)
        if state is not None:
            # Subscribed already (pusher-js never asks twice): a public or private channel is told
            # again; a presence channel's list comes once.
            if state == _SUBSCRIBED and not names.is_presence_channel(channel):
                return [Frame(pp.subscription_succeeded_frame(channel))], None
            return [], None
        try:
            allowed = pp.authorize_subscription(msg, key=self.app.key, secret=self.app.secret,
                                                socket_id=self.socket_id, user=self.user)
        except pp.SubscriptionError as e:
            return [Frame(e.frame())], None
        member = allowed.member
        self.channels[channel] = _PENDING
        if member is not None:
            if self.members is None:
                self.members = {}
            self.members[channel] = member
        try:
            if member is not None:
                waits = self.session.admit_subscription(channel, SUB, member.info_json, member.key)
            else:
                waits = self.session.admit_subscription(channel, SUB)
        except ProtocolError as e:
            self._forget(channel)
            return [self._refused(channel, e.code, e.reason)], None
        return [], waits

    def _succeeded(self, channel: str) -> None:
        self.channels[channel] = _SUBSCRIBED
        if names.is_cache_channel(channel):
            task = asyncio.ensure_future(self._from_cache(channel))
            _TASKS.add(task)
            task.add_done_callback(_TASKS.discard)

    async def _from_cache(self, channel: str) -> None:
        """A cache channel's new subscriber gets its last message at once (right after
        ``subscription_succeeded``), or ``pusher:cache_miss`` when none is kept."""
        conn = self.session.conn
        try:
            payload = await self.session.shared.history.cached(channel)
        except BackplaneError:
            payload = None
        except Exception:  # noqa: BLE001 - a task with no caller: log it, the subscription stands
            log.exception("reading the cache of %s failed", channel)
            return
        if self.channels.get(channel) != _SUBSCRIBED:
            return  # unsubscribed (or closed) meanwhile
        if payload is None:
            conn.send_frame(Frame(pp.cache_miss_frame(channel)))
            self.session.shared.record("cache_miss", channel, {})
            return
        for frame in event_frames(Frame("", (channel, native.unpack(payload)))):
            conn.send_frame(frame)

    def _integers(self, channel: str) -> bool:
        member = self.members.get(channel) if self.members is not None else None
        return member is not None and isinstance(member.user_id, int)

    def _forget(self, channel: str) -> bool:
        if self.members is not None:
            self.members.pop(channel, None)
        return self.channels.pop(channel, None) is not None

    def _refused(self, channel: str, code: str, reason: str) -> Frame:
        return Frame(pp.subscription_error_frame(channel, reason, _STATUS.get(code, 400)))

    # -- out --------------------------------------------------------------------------------

    def outgoing(self, frame: Frame) -> list[Frame]:
        """What the Pusher client gets for a frame the core sent this socket (often nothing)."""
        if frame.payload is not None:
            room = frame.payload[0]
            return event_frames(frame) if self.channels.get(room) == _SUBSCRIBED else []
        text = frame.text
        if text.startswith('{"type":"connection_message"'):
            return []
        if text.startswith('{"event":'):  # a Pusher frame already (the door's own, sent later)
            return [frame]
        try:
            msg = json.loads(text)
        except ValueError:
            return []
        kind, room = msg.get("type"), msg.get("room")
        if kind == "subscribed":
            if self.channels.get(room) == _PENDING and not names.is_presence_channel(room):
                self._succeeded(room)
                return [Frame(pp.subscription_succeeded_frame(room))]
            return []
        if kind == "presence" and "sub" not in msg:
            if self.channels.get(room) == _PENDING:
                self._succeeded(room)
                return [_succeeded_frame(frame, room, msg.get("members") or {}, self._integers(room))]
            return []
        if kind == "presence_diff":
            if self.channels.get(room) == _SUBSCRIBED:
                return _member_frames(frame, room, msg.get("joins") or {}, msg.get("leaves") or {},
                                      self._integers(room))
            return []
        if kind == "error":
            if isinstance(room, str):
                if not self._forget(room):
                    return []
                self.session.unsubscribe(room, SUB)
                return [self._refused(room, str(msg.get("code")), str(msg.get("reason")))]
            return [Frame(pp.error_frame(None, str(msg.get("reason"))))]
        return []


_PONG = Frame(pp.PONG_FRAME)
#: Cache reads under way (a task must be referenced until it is done).
_TASKS: set[asyncio.Future[None]] = set()
