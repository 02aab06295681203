"""Webhooks: what the server tells an app's backend, in the shape Pusher's SDKs validate.

A webhook is a POST of ``{"time_ms": <ms>, "events": [...]}`` with ``X-Pusher-Key`` and
``X-Pusher-Signature`` (`signing.webhook_headers`). The Python SDK's ``validate_webhook`` refuses a
body whose ``time_ms`` is more than 300 s from its clock, so a webhook retried later must be built
again with a fresh ``time_ms`` (and so signed again), never resent byte for byte.

User ids go out as strings, as Pusher documents them, even when the app server gave a presence
``user_id`` as an integer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..protocol import dumps
from .signing import webhook_headers


def channel_occupied(channel: str) -> dict[str, Any]:
    """The channel got its first subscriber (across every process)."""
    return {"name": "channel_occupied", "channel": channel}


def channel_vacated(channel: str) -> dict[str, Any]:
    """The channel's last subscriber left."""
    return {"name": "channel_vacated", "channel": channel}


def member_added(channel: str, user_id: str | int) -> dict[str, Any]:
    """A user's first connection joined the presence channel (further ones of the same user do not count)."""
    return {"name": "member_added", "channel": channel, "user_id": str(user_id)}


def member_removed(channel: str, user_id: str | int) -> dict[str, Any]:
    """A user's last connection left the presence channel."""
    return {"name": "member_removed", "channel": channel, "user_id": str(user_id)}


def client_event(
    channel: str, event: str, data: str, socket_id: str, user_id: str | int | None = None,
) -> dict[str, Any]:
    """A client sent ``event`` on a private or presence channel; ``user_id`` on presence channels only."""
    out: dict[str, Any] = {"name": "client_event", "channel": channel, "event": event, "data": data,
                           "socket_id": socket_id}
    if user_id is not None:
        out["user_id"] = str(user_id)
    return out


def cache_miss(channel: str) -> dict[str, Any]:
    """Someone subscribed to a cache channel with nothing cached: the backend may publish now."""
    return {"name": "cache_miss", "channel": channel}


def subscription_count(channel: str, count: int) -> dict[str, Any]:
    return {"name": "subscription_count", "channel": channel, "subscription_count": count}


def webhook_body(events: Iterable[Mapping[str, Any]], time_ms: float) -> bytes:
    """The exact bytes to POST and to sign."""
    return dumps({"time_ms": int(time_ms), "events": [dict(e) for e in events]}).encode("utf-8")


def signed_webhook(
    key: str, secret: str, events: Iterable[Mapping[str, Any]], time_ms: float,
) -> tuple[bytes, dict[str, str]]:
    """The body and the headers of one webhook POST."""
    body = webhook_body(events, time_ms)
    return body, webhook_headers(key, secret, body)
