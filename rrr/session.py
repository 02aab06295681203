"""One client socket's subscriptions, and what it may ask for.

Kept out of the handler so the handler stays a thin adapter between Tornado's
WebSocket callbacks and the core, and so the rules read in one place.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import NoReturn, Protocol

from tornado.httputil import HTTPHeaders

from . import protocol
from .auth import Identity, TokenError, Verifier, issued_before, needs_grant
from .backplane import History, PresenceReads
from .edge.wsframe import Frame
from .errors import BackplaneError
from .hub import Hub
from .limits import AddressLimits, Limits, TokenBucket
from .metrics import Metrics
from .protocol import ClientMessage, ProtocolError, Since
from .proxies import RETRY_AFTER, RETRY_EVERY, ConnectProxy, HandshakeRefused, ProxiedIdentity, ProxyRefused
from .proxies import ProxyUnavailable, SubscribeProxy
from .pusher.names import SocketIds
from .rooms import Connection

_PONG = Frame(protocol.PONG_FRAME)

log = logging.getLogger("rrr.session")
#: Webhook records under way (`Shared.record`): a task must be referenced until it is done.
_RECORDING: set[asyncio.Future[None]] = set()


class _NoCensus(Exception):
    """The member cap cannot be judged yet: this process knows no list of the room (`Hub.census`)."""


class _AskBackend(Exception):
    """The room is the subscribe proxy's to judge: the socket's grants do not cover it."""


class EventsOut(Protocol):
    """Webhooks (`rrr.webhooks.Webhooks`) as a session sees them: events no presence change makes."""

    def wants(self, name: str) -> bool: ...

    async def record(self, name: str, room: str, fields: Mapping[str, str]) -> None: ...


@dataclass(frozen=True, slots=True)
class Shared:
    """What every session (and socket handler) of this process shares: the hub, the caps, the token
    verifier, metrics, and the backplane calls a client can cause (a publish, a revocation check)."""

    hub: Hub
    limits: Limits
    addresses: AddressLimits
    verifier: Verifier
    metrics: Metrics
    history: History  # where a client's publish goes (stored and relayed, or relayed only)
    reads: PresenceReads
    connect_proxy: ConnectProxy | None = None
    subscribe_proxy: SubscribeProxy | None = None
    #: Every socket that whispers (and every Pusher socket) gets an id of these, unique across
    #: processes: what a whisper names so that it never reaches its sender.
    socket_ids: SocketIds = field(default_factory=SocketIds)
    events_out: EventsOut | None = None  # webhooks on: client_event and cache_miss, if --webhook-events asks

    def record(self, name: str, room: str, fields: Mapping[str, str]) -> None:
        """A ``client_event`` or ``cache_miss`` webhook, when ``--webhook-events`` asks for it; off the
        caller's path (it never waits on Redis for it)."""
        out = self.events_out
        if out is not None and out.wants(name):
            task = asyncio.ensure_future(out.record(name, room, fields))
            _RECORDING.add(task)
            task.add_done_callback(_RECORDING.discard)

    async def revoked(self, identity: Identity) -> bool:
        """Whether ``identity``'s token was issued before its user's last sign-out (no ``iat``: yes)."""
        return issued_before(identity, await self.reads.revoked_at(identity.user))

    def asks_connect_proxy(self, headers: HTTPHeaders) -> bool:
        """Whether a handshake without a token must wait for `connect_identity`: a connect proxy is
        set and the handshake has a ``Cookie`` or an ``Authorization`` header (else it is anonymous)."""
        return self.connect_proxy is not None and self.connect_proxy.asks(headers)

    async def connect_identity(self, transport: str, headers: HTTPHeaders, ip: str) -> Identity | None:
        """Every door's one call at a handshake that `asks_connect_proxy` (after its Origin check and
        ``addresses.may_open_socket``): who the application says this is, None for anonymous, or
        `HandshakeRefused` (its ``status``, 403 or 503, and a 503's ``retry_after``) to answer with.

        While the backend is asked, the handshake holds one of its address's sockets
        (``--max-sockets-per-ip``), so an address cannot keep more calls waiting than it may open
        sockets; the door checks ``may_open_socket`` again after this returns, then counts the
        socket with nothing awaited in between. A sign-out made while the backend was asked
        refuses the handshake (403), as it would a token issued before it."""
        proxy = self.connect_proxy
        assert proxy is not None
        self.addresses.socket_opened(ip)
        try:
            identity = await proxy.resolve(transport, headers, ip)
            if identity is None:
                return None
            try:
                revoked = await self.revoked(identity)
            except BackplaneError:
                raise HandshakeRefused(503, "cannot check the user's sign-outs now; try again", RETRY_AFTER) from None
            if revoked:
                raise HandshakeRefused(403, "this user was signed out while the application was asked")
            return identity
        finally:
            self.addresses.socket_closed(ip)


class Session:
    # Slots, and rate buckets only once the socket sends: one Session lives per idle socket.
    __slots__ = (
        "conn", "shared", "hub", "ip", "fixed_room", "subs", "n_subs", "transport",
        "_bucket", "_frames", "_lists", "_dropped", "identity", "_expiry", "_announce_fixed", "_joining", "_whispers",
    )

    def __init__(
        self, conn: Connection, shared: Shared, ip: str, room: str | None = None, identity: Identity | None = None,
        since: Since | None = None,
    ) -> None:
        """With ``room``, this is the talk's one-room socket: joined at once, fixed for life; it is
        sent ``subscribed`` only if it asked to recover (``since``), since the talk's client reads
        ``connections`` from every frame it gets.

        If a cap refuses that room the socket is told why and closed (1008): it has nothing else to do.
        """
        self.conn = conn
        self.shared = shared
        self.hub = shared.hub
        self.ip = ip
        self.fixed_room = room
        self.subs: dict[str, set[str]] = {}  # room -> sub ids
        self.n_subs = 0
        self.transport = "unknown"
        self._bucket: TokenBucket | None = None
        self._frames: TokenBucket | None = None
        self._lists: TokenBucket | None = None
        self._dropped = 0
        self.identity: Identity | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self._announce_fixed = since is not None
        self._joining: asyncio.Future[None] | None = None
        self._whispers: TokenBucket | None = None
        if identity is not None:
            self._authenticate(identity)
        self.hub.attach(conn)
        if identity is not None and room is None:
            # Identified at its handshake (the connect proxy): told so, as after an `auth` frame.
            conn.send_frame(Frame(protocol.dumps(protocol.authenticated_message(identity.user, identity.expires))))
        if room is not None:
            try:
                self.subscribe(room, "", since)
            except _NoCensus:
                self._joining = asyncio.ensure_future(self._fixed_after_census(room, since))
            except ProtocolError as e:
                self.reply(e)
                conn.close(1008, e.reason[:120])

    async def _fixed_after_census(self, room: str, since: Since | None) -> None:
        try:
            await self._subscribe_after_census(room, "", since)
        except ProtocolError as e:
            self.reply(e)
            self.conn.close(1008, e.reason[:120])
        except Exception:  # noqa: BLE001 - a task with no caller: log it, and the socket goes
            log.exception("subscribing a one-room socket failed")
            self.conn.close(1011, "internal error")

    def _subscribe(self, room: str, sub: str, since: Since | None) -> Awaitable[None] | None:
        """A ``subscribe`` frame: done on return, unless the member cap must first read the room's
        members (then the awaitable; the socket's next frame is read once it is done)."""
        try:
            self.subscribe(room, sub, since)
        except _NoCensus:
            return self._replying(self._subscribe_after_census(room, sub, since))
        except _AskBackend:
            return self._replying(self._subscribe_if_allowed(room, sub, since))
        return None

    async def _subscribe_after_census(
        self, room: str, sub: str, since: Since | None, admitted: str | None = None, user: str | None = None,
    ) -> None:
        try:
            census = await self.hub.census(room)
        except BackplaneError:
            raise ProtocolError("unavailable", "cannot count the room's members now; try again",
                                room=room, sub=sub) from None
        if self.conn in self.hub.connections:  # not closed while we read
            self.subscribe(room, sub, since, census, admitted, user)

    def admit_subscription(
        self, room: str, sub: str, info_json: str = "null", user: str | None = None,
    ) -> Awaitable[None] | None:
        """A subscription another protocol's door authorized itself (a Pusher channel's signed
        ``auth``): no token grant is asked for, every cap applies as to any subscription, and in a
        presence room ``user`` is the member, showing ``info_json``. Refused: `ProtocolError` now,
        or later as an ``error`` frame naming the room (when the member cap first reads the room)."""
        try:
            self.subscribe(room, sub, admitted=info_json, user=user)
        except _NoCensus:
            return self._replying(self._subscribe_after_census(room, sub, None, info_json, user))
        return None

    def identify_as(self, identity: Identity) -> None:
        """A door's own sign-in (Pusher's ``pusher:signin``): the socket is ``identity`` from now on,
        for revocation (a sign-out, ``terminate_connections``) as a token's identity is."""
        self._adopt(identity, announce=False)

    def within_rate(self) -> bool:
        """Every frame a client sends spends one of ``--message-rate`` (see `_within_rate`), whatever
        protocol it speaks."""
        return self._within_rate()

    async def _subscribe_if_allowed(self, room: str, sub: str, since: Since | None) -> None:
        """A room of ``--subscribe-proxy-rooms`` the socket's grants do not cover: the backend is
        asked, and nothing is registered or counted before it answers."""
        proxy = self.shared.subscribe_proxy
        assert proxy is not None
        who = self.identity
        try:
            admitted = await proxy.ask(who.user if who else None, room, who.info_json if who else "null")
        except ProxyRefused:
            raise ProtocolError("forbidden", "the application does not let this socket join this room",
                                room=room, sub=sub) from None
        except ProxyUnavailable:
            raise ProtocolError("unavailable", "cannot ask the application about this room now; try again",
                                room=room, sub=sub) from None
        if self.conn not in self.hub.connections:  # closed while we asked
            return
        now = self.identity
        if (now.user if now else None) != (who.user if who else None):
            raise ProtocolError("forbidden", "the socket's identity changed while the application was asked; "
                                "subscribe again", room=room, sub=sub)
        try:
            self.subscribe(room, sub, since, admitted=admitted)
        except _NoCensus:
            await self._subscribe_after_census(room, sub, since, admitted)

    def subscribe(
        self, room: str, sub: str, since: Since | None = None, census: dict[str, str] | None = None,
        admitted: str | None = None, user: str | None = None,
    ) -> None:
        """Register one subscription, or raise the cap it would break (nothing is registered then);
        `_NoCensus` when the member cap needs the room's members read first (``census``);
        `_AskBackend` when the subscribe proxy judges the room. ``admitted``: the subscribe proxy
        (or a door's own authorization, `admit_subscription`) let it in, showing that info (JSON)
        in a presence room, as ``user`` if given (else as the socket's identity)."""
        tabs = self.subs.get(room)
        if tabs is not None and sub in tabs:
            return  # idempotent: a worker resubscribing after a hiccup must not double-count
        if admitted is None and needs_grant(room) and not (self.identity is not None and self.identity.may_read(room)):
            proxy = self.shared.subscribe_proxy
            if proxy is not None and self.fixed_room is None and proxy.covers(room):
                raise _AskBackend()
            raise ProtocolError(
                "forbidden", "private and presence rooms need a token that grants them ('auth' first)",
                room=room, sub=sub,
            )
        lim = self.shared.limits
        if self.n_subs >= lim.max_subscriptions:
            self._refuse(
                "subscriptions_per_socket", "too_many_subscriptions",
                f"at most {lim.max_subscriptions} subscriptions per socket", room, sub,
            )
        if tabs is not None and len(tabs) >= lim.max_tabs_per_room:
            self._refuse(
                "tabs_per_room", "too_many_tabs",
                f"at most {lim.max_tabs_per_room} tabs per room per socket", room, sub,
            )
        if 0 < lim.max_rooms <= self.hub.room_count and self.hub.local_counts(room) == (0, 0):
            self._refuse(
                "rooms", "too_many_rooms", f"this server follows its maximum of {lim.max_rooms} rooms; try later",
                room, sub,
            )
        who = user if user is not None else (self.identity.user if self.identity is not None else None)
        if lim.max_members > 0 and protocol.is_presence_room(room) and who is not None:
            fits = self.hub.admits(room, who, lim.max_members, census)
            if fits is None:
                raise _NoCensus()
            if not fits:
                self._refuse(
                    "members", "too_many_members", f"this room holds its maximum of {lim.max_members} members",
                    room, sub,
                )
        if protocol.is_presence_room(room) and not self._may_send_list():
            self._refuse(
                "presence_list_rate", "rate_limited",
                f"at most {lim.presence_list_rate:g} presence subscriptions or member pages a second per socket "
                f"(bursts of {lim.presence_list_burst:g}), each sent a page of the member list; try later", room, sub,
            )
        addresses = self.shared.addresses
        if not addresses.add_subscription(self.ip):
            self._refuse(
                "subscriptions_per_ip", "too_many_subscriptions",
                f"at most {addresses.max_subscriptions} subscriptions per client address", room, sub,
            )
        if tabs is None:
            tabs = self.subs[room] = set()
        tabs.add(sub)
        self.n_subs += 1
        announce = self.fixed_room is None or self._announce_fixed
        if who is not None and protocol.is_presence_room(room):
            info_json = self.identity.info_json if admitted is None and self.identity is not None else admitted
            self.hub.subscribe(self.conn, room, who, info_json or "null", sub, since, announce)
        else:
            self.hub.subscribe(self.conn, room, sub=sub, since=since, announce=announce)

    def unsubscribe(self, room: str, sub: str) -> None:
        tabs = self.subs.get(room)
        if tabs is None or sub not in tabs:
            return
        tabs.discard(sub)
        if not tabs:
            del self.subs[room]
        self.n_subs -= 1
        self.shared.addresses.remove_subscription(self.ip)
        self.hub.unsubscribe(self.conn, room, sub)

    def announced_subs(self, room: str) -> list[str]:
        """The subscriptions to ``room`` that are told ``subscribed`` (and a reset)."""
        if self.fixed_room is not None and not self._announce_fixed:
            return []
        return list(self.subs.get(room, ()))

    def close(self) -> None:
        if self._joining is not None:
            self._joining.cancel()
            self._joining = None
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        for room, tabs in list(self.subs.items()):
            for sub in list(tabs):
                self.unsubscribe(room, sub)
        self._set_transport("unknown")
        self.hub.detach(self.conn)

    def handle(self, text: str) -> Awaitable[None] | None:
        """Act on one text frame; a bad frame gets an ``error`` reply and the socket stays up.

        Only ``auth`` and ``publish`` wait on Redis: for them an awaitable is returned (Tornado
        reads the socket's next frame once it is done). Every other frame is done on return,
        so Tornado's frame loop makes no Task for it (a subscribe is one per relay join)."""
        if not self._within_rate():
            return None
        return self.act(text)

    def act(self, text: str) -> Awaitable[None] | None:
        """`handle` for a frame already admitted (its rate paid): what it asks is done."""
        try:
            msg = protocol.parse_client_message(text)
        except ProtocolError as e:
            if e.code == "bad_json" and self.fixed_room is not None:
                self._send_count(self.fixed_room)
            else:
                self.reply(e)
            return None
        try:
            return self._dispatch(msg)
        except ProtocolError as e:
            self.reply(e)
            return None

    def admit(self) -> float:
        """A frame that came by POST (SSE and long-polling) spends a token as a socket's frame does;
        over the rate it is refused whole instead of dropped: 0 when taken, else the seconds until a
        token is there (the POST's 429 ``Retry-After``). Nothing else changes, so the client may send
        the same frame again then."""
        lim = self.shared.limits
        if lim.message_rate <= 0:
            return 0.0
        if self._frames is None:
            self._frames = TokenBucket(lim.message_rate, lim.message_burst)
        if self._frames.take():
            return 0.0
        self.shared.metrics.limited.labels("message_rate").inc()
        return self._frames.wait()

    def _within_rate(self) -> bool:
        """Every frame, pings included, spends a token. Over the limit a frame is dropped; only the
        first drop of a run is answered (an error per dropped frame would let a flood make us flood
        back), and a client still sending a whole burst's worth into a full stop is closed with 1008."""
        lim = self.shared.limits
        if lim.message_rate <= 0:
            return True
        if self._frames is None:
            self._frames = TokenBucket(lim.message_rate, lim.message_burst)
        if self._frames.take():
            self._dropped = 0
            return True
        self._dropped += 1
        self.shared.metrics.limited.labels("message_rate").inc()
        if self._dropped == 1:
            self.reply(ProtocolError("rate_limited", f"more than {lim.message_rate:g} frames a second; frame dropped"))
        elif self._dropped > lim.message_burst:
            self.conn.close(1008, "message rate limit exceeded")
        return False

    def _may_send_list(self) -> bool:
        """A presence subscription is sent the first page of the room's member list, and a
        ``members`` frame the next one: each spends one of the socket's ``presence_list_rate`` a
        second (bursts of ``presence_list_burst``), so resubscribing or paging in a loop cannot turn
        a few bytes up into a page of up to ``--presence-list-max`` members down each time."""
        lim = self.shared.limits
        if lim.presence_list_rate <= 0:
            return True
        if self._lists is None:
            self._lists = TokenBucket(lim.presence_list_rate, lim.presence_list_burst)
        return self._lists.take()

    def _send_count(self, room: str) -> None:
        """The talk's SharedWorker sends ``PING`` (not JSON) for each new tab and shows whatever
        comes back: it gets the count. Before the first count is known, that one is on its way."""
        state = self.hub.current_state(room)
        if state is not None:
            self.conn.send_frame(Frame(protocol.dumps(protocol.count_message(room, state))))

    def reply(self, error: ProtocolError) -> None:
        self.shared.metrics.client_errors.labels(error.code).inc()
        self.conn.send_frame(Frame(protocol.dumps(error.message())))

    def _refuse(self, limit: str, code: str, reason: str, room: str, sub: str | None = None) -> NoReturn:
        self.shared.metrics.limited.labels(limit).inc()
        raise ProtocolError(code, reason, room=room, sub=sub)

    def _dispatch(self, msg: ClientMessage) -> Awaitable[None] | None:
        if msg.type == "ping":
            self.conn.send_frame(_PONG)
        elif msg.type == "hello":
            self._set_transport(msg.transport or "unknown")
        elif msg.type == "auth":
            assert msg.token is not None
            return self._replying(self._auth(msg.token))
        elif self.fixed_room is not None:
            raise ProtocolError("unsupported", "this socket follows one room; use /ws/ for more", room=msg.room)
        elif msg.type == "subscribe":
            assert msg.room is not None and msg.sub is not None
            return self._subscribe(msg.room, msg.sub, msg.since)
        elif msg.type == "members":
            assert msg.room is not None and msg.sub is not None and msg.after is not None
            self._members(msg.room, msg.sub, msg.after)
        elif msg.type == "unsubscribe":
            assert msg.room is not None and msg.sub is not None
            self.unsubscribe(msg.room, msg.sub)
        elif msg.type == "publish":
            return self._replying(self._publish(msg))
        elif msg.type == "whisper":
            assert msg.room is not None and msg.event is not None and msg.data_json is not None
            user = self.identity.user if self.identity is not None else None
            return self._replying(self.whisper(msg.room, msg.event, msg.data_json, user))
        return None

    def socket_id(self) -> str:
        """This socket's id (`Shared.socket_ids`), made on first use and kept on the socket, which
        delivery compares with a whisper's sender."""
        conn = self.conn
        sid: str | None = getattr(conn, "socket_id", None)
        if sid is None:
            sid = self.shared.socket_ids.new()
            conn.socket_id = sid  # type: ignore[attr-defined]  # a slot of every door's socket
        return sid

    def may_whisper(self) -> bool:
        """One of the socket's ``WHISPER_RATE`` whispers (Pusher client events) a second."""
        if self._whispers is None:
            self._whispers = TokenBucket(protocol.WHISPER_RATE, protocol.WHISPER_RATE)
        if self._whispers.take():
            return True
        self.shared.metrics.limited.labels("whisper_rate").inc()
        return False

    async def whisper(self, room: str, event: str, data_json: str, user: str | None) -> None:
        """An event for the room's other subscriptions now, on every process, never stored and never
        back to this socket (typing indicators, cursors): only in a private or presence room this
        socket subscribes to (as Pusher allows client events only on authorized channels), at
        most ``WHISPER_RATE`` a second. ``user``: who it is from, as its receivers are told."""
        if not self.shared.limits.whispers:
            raise ProtocolError("forbidden", "whispers are off on this server (--pusher-client-events)", room=room)
        if not needs_grant(room):
            raise ProtocolError("forbidden", "whispers only go to private and presence rooms", room=room)
        if room not in self.subs:
            raise ProtocolError("not_subscribed", "subscribe to a room before whispering to it", room=room)
        if not self.may_whisper():
            raise ProtocolError("rate_limited", f"at most {protocol.WHISPER_RATE} whispers a second", room=room)
        payload = protocol.pack(data_json, event, whisper=True, user=user, exclude=self.socket_id())
        try:
            await self.shared.history.relay(room, payload)
        except BackplaneError:
            raise ProtocolError("unavailable", "the message bus is unavailable; try again", room=room) from None
        self.record_client_event(room, event, data_json, user)

    def record_client_event(self, room: str, event: str, data: str, user: str | None) -> None:
        """Pusher's ``client_event`` webhook for a whisper or a Pusher client event (``user_id`` on
        presence rooms only)."""
        fields = {"e": event, "d": data, "x": self.socket_id()}
        if user is not None and protocol.is_presence_room(room):
            fields["u"] = user
        self.shared.record("client_event", room, fields)

    def _members(self, room: str, sub: str, after: str) -> None:
        """A page of a presence room's members, for one of this socket's subscriptions to it: the
        members after ``after``, answered as ``presence`` with that ``sub``. Every refusal names the
        ``after`` asked for."""
        if not protocol.is_presence_room(room):
            raise ProtocolError("bad_room", "only presence rooms have members", room=room, sub=sub, after=after)
        if sub not in self.subs.get(room, ()):
            raise ProtocolError("not_subscribed", "ask for members of a room through a subscription to it",
                                room=room, sub=sub, after=after)
        if not self._may_send_list():
            lim = self.shared.limits
            self.shared.metrics.limited.labels("presence_list_rate").inc()
            raise ProtocolError(
                "rate_limited",
                f"at most {lim.presence_list_rate:g} presence subscriptions or member pages a second per socket "
                f"(bursts of {lim.presence_list_burst:g}); try later", room=room, sub=sub, after=after,
            )
        if not self.hub.members_page(self.conn, room, sub, after):
            raise ProtocolError("rate_limited", "too many pages asked for before the room's first list; try later",
                                room=room, sub=sub, after=after)

    async def _replying(self, work: Awaitable[None]) -> None:
        try:
            await work
        except ProtocolError as e:
            self.reply(e)

    async def _publish(self, msg: ClientMessage) -> None:
        room = msg.room
        assert room is not None and msg.data_json is not None
        granted = self.identity is not None and self.identity.may_publish(room)
        if needs_grant(room) and not granted:
            raise ProtocolError("forbidden", "publishing here needs a token whose 'publish' grants it", room=room)
        shared = self.shared
        if not (shared.limits.client_publish or granted):
            raise ProtocolError("publish_disabled", "client publish is off on this server", room=room)
        if room not in self.subs:
            raise ProtocolError("not_subscribed", "subscribe to a room before publishing to it", room=room)
        if self._bucket is None:
            self._bucket = TokenBucket(shared.limits.publish_rate, shared.limits.publish_burst)
        if not self._bucket.take():
            self._refuse("publish_rate", "rate_limited", "too many publishes from this socket; slow down", room)
        if shared.addresses.publish.take(self.ip):
            self._refuse("publish_rate_per_ip", "rate_limited", "too many publishes from this address; slow down", room)
        # Charged before the publish (a concurrent one cannot slip past) and kept if Redis refuses it.
        over = shared.addresses.client_history.take(self.ip, len(msg.data_json.encode("utf-8")))
        if over is not None:
            self._refuse("client_history", "rate_limited", over, room)
        try:
            await shared.history.publish(room, protocol.pack(msg.data_json, msg.event))
        except BackplaneError:
            raise ProtocolError("unavailable", "the message bus is unavailable; try again", room=room) from None

    # -- identity ----------------------------------------------------------

    async def _auth(self, token: str) -> None:
        """``auth`` first or any time; again to refresh. A bad token leaves the identity as it was."""
        try:
            identity = await self.shared.verifier.verify_async(token)  # may wait for one refetch of a key set
        except TokenError as e:
            raise ProtocolError("bad_token", e.reason) from None
        if self.identity is not None and identity.user != self.identity.user:
            raise ProtocolError("bad_token", "a refreshed token must carry the same 'sub'")
        try:
            revoked = await self.shared.revoked(identity)
        except BackplaneError:
            raise ProtocolError("unavailable", "cannot check the token now; try again") from None
        if revoked:
            raise ProtocolError("bad_token", "this user's tokens issued before its last sign-out are revoked")
        if self.conn not in self.hub.connections:
            return  # closed (or revoked) while we looked
        self._adopt(identity, announce=True)

    def _adopt(self, identity: Identity, announce: bool) -> None:
        """Take ``identity`` (a token's, or the connect proxy's fresh answer), tell the socket
        (``announce``), and show other members its new ``info``."""
        before = self.identity
        self._authenticate(identity)
        if before is not None and before.info_json != identity.info_json:
            # Other members see what the newest token says about this user (in the rooms its grants
            # cover: one the subscribe proxy let it into shows what the proxy said).
            for room in self.subs:
                if protocol.is_presence_room(room) and identity.may_read(room):
                    self.hub.update_info(self.conn, room, identity.info_json)
        if announce:
            self.conn.send_frame(Frame(protocol.dumps(protocol.authenticated_message(identity.user, identity.expires))))

    def _authenticate(self, identity: Identity) -> None:
        self.identity = identity
        self.hub.identify(self.conn, identity)
        if isinstance(identity, ProxiedIdentity) and self.shared.connect_proxy is not None:
            self._arm(identity.refresh_at, self._refresh_due)
        else:
            self._arm(identity.expires, self._expired)

    def _arm(self, when: float, then: Callable[[], None]) -> None:
        """The socket's one identity timer: ``then`` at unix time ``when`` (at once if past)."""
        if self._expiry is not None:
            self._expiry.cancel()
        loop = asyncio.get_running_loop()
        self._expiry = loop.call_at(loop.time() + max(0.0, when - time.time()), then)

    def _expired(self) -> None:
        """``exp`` passed with no refresh: every subscription that needed the token goes, each told so."""
        self._expiry = None
        identity = self.identity
        if identity is None:
            return
        if not identity.expired():  # the clock ran early: look again when it is really due
            self._arm(identity.expires, self._expired)
            return
        self._forget_identity("the token expired; send a fresh one")

    def _forget_identity(self, reason: str) -> None:
        """The socket is nobody from now on: each subscription that needed its identity goes, told
        ``token_expired``; public ones and the socket stay (the one-room socket of a private room closes)."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        self.identity = None
        self.hub.identify(self.conn, None)
        try:
            for room, tabs in list(self.subs.items()):
                if not needs_grant(room):
                    continue
                for sub in list(tabs):
                    self.unsubscribe(room, sub)
                    self.reply(ProtocolError("token_expired", reason, room=room, sub=sub))
            if self.fixed_room is not None and needs_grant(self.fixed_room):
                self.conn.close(1008, "token expired")
        except Exception:  # noqa: BLE001 - a timer callback has no caller to raise to
            log.exception("dropping the subscriptions of an expired token failed")

    # -- the connect proxy's refresh ---------------------------------------------

    def _refresh_due(self) -> None:
        """80 % of a proxied identity's lifetime: the backend is asked again, off this timer."""
        self._expiry = None
        identity, proxy = self.identity, self.shared.connect_proxy
        if isinstance(identity, ProxiedIdentity) and proxy is not None:
            proxy.spawn(self._refresh(proxy, identity))

    async def _refresh(self, proxy: ConnectProxy, identity: ProxiedIdentity) -> None:
        """A later ``exp`` extends (``authenticated`` again on a multiplexed socket); the backend
        no longer vouching ends what needed the identity; no answer is asked again until ``exp``."""
        try:
            fresh = await proxy.refresh(identity)
        except ProxyUnavailable:
            if self.identity is identity and self.conn in self.hub.connections:
                left = identity.expires - time.time()
                if left > 0.2:
                    self._arm(time.time() + min(RETRY_EVERY, left / 2), self._refresh_due)
                else:
                    self._arm(identity.expires, self._expired)
            return
        if self.identity is not identity or self.conn not in self.hub.connections:
            return  # closed, signed out, expired or re-authenticated meanwhile: the answer is for nobody
        if fresh is None or fresh.user != identity.user:
            self._forget_identity("the application no longer vouches for this user; sign in again")
            return
        self._adopt(fresh, announce=self.fixed_room is None)

    def _set_transport(self, transport: str) -> None:
        gauge = self.shared.metrics.transports
        if self.transport != "unknown":
            gauge.labels(self.transport).dec()
        self.transport = transport
        if transport != "unknown":
            gauge.labels(transport).inc()
