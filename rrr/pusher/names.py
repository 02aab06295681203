"""Names in the Pusher protocol: channels (and what their prefixes promise), events, users, sockets.

A channel's name is its whole contract: ``private-`` means "authorized", ``presence-`` adds a
member list, ``private-encrypted-`` means the server only ever sees ciphertext, ``cache-`` keeps
the last event for whoever subscribes next. Pusher's SDKs decide how to behave from the name
alone, so the server must read the same meaning into it, from one place.
"""

from __future__ import annotations

import itertools
import re
import secrets
from dataclasses import dataclass

#: Pusher's limit, prefixes included ("Channel names may contain a maximum of 164 characters").
CHANNEL_NAME_MAX = 164
_CHANNEL_RE = re.compile(r"[A-Za-z0-9_\-=@,.;]{1,%d}" % CHANNEL_NAME_MAX)

PRIVATE_PREFIX = "private-"
PRESENCE_PREFIX = "presence-"
ENCRYPTED_PREFIX = "private-encrypted-"
#: A cache channel is any of the four kinds with ``cache-`` after the kind's own prefix.
CACHE_PREFIXES = ("cache-", "private-cache-", "private-encrypted-cache-", "presence-cache-")

#: The channel a signed-in user's socket hears events sent to that user on (``send_to_user`` in
#: the server SDKs). ``#`` is reserved: no client may name a channel with it, so only the server,
#: which knows who signed in, can decide who subscribes to one.
SERVER_TO_USER_PREFIX = "#server-to-user-"

EVENT_NAME_MAX = 200
CLIENT_EVENT_PREFIX = "client-"
#: Events the protocol itself sends: a client (or a native publisher crossing over) that could
#: send ``pusher_internal:member_added`` could rewrite every subscriber's member list.
RESERVED_EVENT_PREFIXES = ("pusher:", "pusher_internal:")

#: A user id's length (presence ``user_id``, ``pusher:signin`` ``id``): Pusher's presence limit.
USER_ID_MAX = 128
# Pusher's user ids (signin, terminate_connections, #server-to-user-<id>) use the channel alphabet,
# since they become part of a channel name.
_USER_ID_RE = re.compile(r"[A-Za-z0-9_\-=@,.;]{1,%d}" % USER_ID_MAX)

# ASCII digits only: ``\d`` would let Arabic-Indic digits through, which the SDKs then choke on.
_SOCKET_ID_RE = re.compile(r"[0-9]{1,20}\.[0-9]{1,20}")


def is_valid_channel_name(name: object) -> bool:
    """1 to 164 characters of ``[A-Za-z0-9_-=@,.;]``. ``#server-to-user-`` channels are not
    valid names: see `server_to_user_id`."""
    return isinstance(name, str) and _CHANNEL_RE.fullmatch(name) is not None


def channel_name_problem(name: object) -> str | None:
    """Why ``name`` is not a channel name (None if it is): a message a developer can act on."""
    if not isinstance(name, str):
        return "channel name must be a string"
    if not name:
        return "channel name is empty"
    if len(name) > CHANNEL_NAME_MAX:
        return f"channel name is longer than {CHANNEL_NAME_MAX} characters"
    if _CHANNEL_RE.fullmatch(name) is None:
        return "channel name may only contain letters, digits and _ - = @ , . ;"
    return None


@dataclass(frozen=True)
class ChannelKind:
    """What a channel's prefix promises. ``private`` is true for presence and encrypted channels
    too: all three need a signed ``auth`` to subscribe."""

    private: bool = False
    presence: bool = False
    encrypted: bool = False
    cache: bool = False

    @property
    def needs_auth(self) -> bool:
        return self.private

    @property
    def allows_client_events(self) -> bool:
        """Client events need an authorized channel: on a public one anybody could speak as
        anybody. (Encrypted channels are private ones: the protocol allows it there too, though
        pusher-js cannot encrypt what it sends.)"""
        return self.private


def channel_kind(name: str) -> ChannelKind:
    presence = name.startswith(PRESENCE_PREFIX)
    private = presence or name.startswith(PRIVATE_PREFIX)
    return ChannelKind(
        private=private,
        presence=presence,
        encrypted=name.startswith(ENCRYPTED_PREFIX),
        cache=name.startswith(CACHE_PREFIXES),
    )


def is_presence_channel(name: str) -> bool:
    return name.startswith(PRESENCE_PREFIX)


def is_private_channel(name: str) -> bool:
    """Private, presence or encrypted: a subscription needs ``auth``."""
    return name.startswith((PRIVATE_PREFIX, PRESENCE_PREFIX))


def is_encrypted_channel(name: str) -> bool:
    return name.startswith(ENCRYPTED_PREFIX)


def is_cache_channel(name: str) -> bool:
    return name.startswith(CACHE_PREFIXES)


def is_valid_user_id(value: object) -> bool:
    """A signed-in user's id: 1 to 128 characters of the channel alphabet, because it becomes
    part of ``#server-to-user-<id>`` and of the HTTP API path ``/users/<id>/...``."""
    return isinstance(value, str) and _USER_ID_RE.fullmatch(value) is not None


def server_to_user_channel(user_id: str) -> str:
    return SERVER_TO_USER_PREFIX + user_id


def server_to_user_id(channel: str) -> str | None:
    """The user a ``#server-to-user-<id>`` channel belongs to; None for any other name."""
    if not channel.startswith(SERVER_TO_USER_PREFIX):
        return None
    user_id = channel[len(SERVER_TO_USER_PREFIX):]
    return user_id if is_valid_user_id(user_id) else None


def is_valid_event_name(name: object) -> bool:
    """1 to 200 characters: Pusher's own limit (its SDKs refuse longer ones before sending)."""
    return isinstance(name, str) and 0 < len(name) <= EVENT_NAME_MAX


def is_reserved_event_name(name: str) -> bool:
    return name.startswith(RESERVED_EVENT_PREFIXES)


def is_valid_socket_id(value: object) -> bool:
    """``<digits>.<digits>``: the form the server SDKs check before signing anything for it."""
    return isinstance(value, str) and _SOCKET_ID_RE.fullmatch(value) is not None


class SocketIds:
    """Makes socket ids, each one used once.

    A socket id is what every channel authorization is bound to: an ``auth`` string leaked from
    one connection is worthless unless another connection is given the same id. So ids are never
    reused: ``<random per instance>.<counter>`` is unique within a process by the counter and
    across processes by the random part (one process in 10**15 draws the same). Make one
    instance per process.
    """

    def __init__(self, prefix: int | None = None) -> None:
        self.prefix = secrets.randbelow(10**15) + 1 if prefix is None else prefix
        self._counter = itertools.count(1)

    def new(self) -> str:
        return f"{self.prefix}.{next(self._counter)}"
