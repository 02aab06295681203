"""Pusher's HTTP API (``/apps/<app_id>/...``), what every Pusher server SDK calls: thin handlers over
`rrr.pusher.signing` (the request's signature), `rrr.pusher.api` (bodies, queries, answers) and
the same history and presence reads as rrr's own API."""

from __future__ import annotations

import time
from typing import Any

from handlers.base import SecureHeaders
from rrr import protocol
from rrr.backplane import History, PresenceReads
from rrr.errors import BackplaneError, OutcomeUnknown
from rrr.pusher import api, crossing
from rrr.pusher.door import PusherApp
from rrr.pusher.signing import ApiError, verify_api_request


class PusherApi(SecureHeaders):
    """Every route: the app id in the path, then the signature (`verify_api_request`), before
    anything is read or published; a refusal is Pusher's status with a plain-text message."""

    def initialize(self, pusher: PusherApp, history: History, reads: PresenceReads, keep_for: float) -> None:
        self.app = pusher
        self.history = history
        self.reads = reads
        self.keep_for = keep_for  # a terminate_connections is a sign-out: tokens issued before are refused so long
        self.signed: Any = None

    def check_xsrf_cookie(self) -> None:
        pass

    def _verify(self, app_id: str | None) -> None:
        if app_id is not None and app_id != self.app.app_id:
            raise ApiError(404, f"Unknown app id {app_id[:40]!r}")
        self.signed = verify_api_request(
            self.request.method or "GET", self.request.path, self.request.query, self.request.body,
            key=self.app.key, secret=self.app.secret, now=time.time(),
        )

    async def _run(self, app_id: str | None, work: Any) -> None:
        try:
            self._verify(app_id)
            self._answer(await work())
        except ApiError as e:
            self._refuse(e.status, e.message)
        except OutcomeUnknown:
            self._refuse(504, "Redis did not answer: the request may or may not have taken effect")
        except BackplaneError:
            self._refuse(503, "Redis is unavailable: nothing was done; try again")

    def _answer(self, body: dict[str, Any]) -> None:
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.set_header("Cache-Control", "no-store")
        self.finish(protocol.dumps(body))

    def _refuse(self, status: int, message: str) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "text/plain; charset=UTF-8")
        self.finish(message + "\n")

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.set_header("Content-Type", "text/plain; charset=UTF-8")
        self.finish(f"{status_code} {self._reason}\n")

    async def _state(self, channel: str) -> api.ChannelState:
        state = await self.reads.room_state(channel)
        return api.ChannelState(state.tabs, state.users)

    async def _publish(self, event: api.Event) -> dict[str, api.ChannelState]:
        """The event to each of its channels, stored in history like any message (Pusher clients
        never ask for it back), never to ``socket_id``; the states asked for with ``info``."""
        message = crossing.to_native(event.name, event.data)
        payload = protocol.pack(message.data_json, event.name, exclude=event.socket_id)
        for channel in event.channels:
            await self.history.publish(channel, payload)
        return {c: await self._state(c) for c in event.channels} if event.info else {}


class EventsHandler(PusherApi):
    """``POST /apps/<id>/events``."""

    async def post(self, app_id: str) -> None:
        async def work() -> dict[str, Any]:
            event = api.parse_trigger(self.signed.body)
            return api.trigger_response(event, await self._publish(event))

        await self._run(app_id, work)


class BatchEventsHandler(PusherApi):
    """``POST /apps/<id>/batch_events``: at most 10 events, each to one channel, in order."""

    async def post(self, app_id: str) -> None:
        async def work() -> dict[str, Any]:
            events = api.parse_batch(self.signed.body)
            states: dict[str, api.ChannelState] = {}
            for event in events:
                states.update(await self._publish(event))
            return api.batch_response(events, states)

        await self._run(app_id, work)


class ChannelsHandler(PusherApi):
    """``GET /apps/<id>/channels?filter_by_prefix=&info=``: the occupied channels, Pusher sockets'
    and rrr's own alike (``subscription_count``: the room's subscriptions of both kinds)."""

    async def get(self, app_id: str) -> None:
        async def work() -> dict[str, Any]:
            query = api.parse_channels_query(self.signed.params)
            rooms = await self.reads.rooms(query.prefix or "")
            return api.channels_response(query, {room: await self._state(room) for room in rooms})

        await self._run(app_id, work)


class ChannelHandler(PusherApi):
    """``GET /apps/<id>/channels/<name>?info=``."""

    async def get(self, app_id: str, channel: str) -> None:
        async def work() -> dict[str, Any]:
            info = api.parse_channel_query(channel, self.signed.params)
            return api.channel_response(channel, info, await self._state(channel))

        await self._run(app_id, work)


class UsersHandler(PusherApi):
    """``GET /apps/<id>/channels/<name>/users``: a presence channel's distinct users."""

    async def get(self, app_id: str, channel: str) -> None:
        async def work() -> dict[str, Any]:
            api.check_users_channel(channel)
            return api.users_response(await self.reads.members(channel))

        await self._run(app_id, work)


class TerminateHandler(PusherApi):
    """``POST /apps/<id>/users/<user>/terminate_connections`` (the Node SDK's path) and
    ``POST /users/<user>/terminate_connections`` (the Python SDK 3.3's): rrr's sign-out, so every
    socket of the user on every process closes (Pusher's with 4009), rrr's own included."""

    async def post(self, *args: str) -> None:
        app_id, user = (None, args[0]) if len(args) == 1 else args

        async def work() -> dict[str, Any]:
            await self.reads.revoke(api.check_user_id(user), self.keep_for)
            return {}

        await self._run(app_id, work)


def routes(pusher: PusherApp, history: History, reads: PresenceReads, keep_for: float) -> list[Any]:
    """The API's routes: path segments are matched raw (the signature covers the path exactly as
    sent) and decoded by Tornado for the handlers."""
    kw = dict(pusher=pusher, history=history, reads=reads, keep_for=keep_for)
    seg = r"([^/]{1,500})"
    return [
        (rf"/apps/{seg}/events", EventsHandler, kw),
        (rf"/apps/{seg}/batch_events", BatchEventsHandler, kw),
        (rf"/apps/{seg}/channels", ChannelsHandler, kw),
        (rf"/apps/{seg}/channels/{seg}", ChannelHandler, kw),
        (rf"/apps/{seg}/channels/{seg}/users", UsersHandler, kw),
        (rf"/apps/{seg}/users/{seg}/terminate_connections", TerminateHandler, kw),
        (rf"/users/{seg}/terminate_connections", TerminateHandler, kw),
    ]
