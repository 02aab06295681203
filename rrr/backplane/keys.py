"""Every Redis key and channel rrr uses, spelled once.

Whatever belongs to one room carries the room as a hash tag (``{<room>}``), so under
Redis Cluster a room's keys and channels share a slot and a script can touch them all.
The public backend channel ``rrr:room:<slug>`` keeps its documented name: backends
``PUBLISH`` to it, and it is not ours to rename.

The Lua scripts get these names through `LUA_PRELUDE`, never as literals of their own.
"""

from __future__ import annotations

import base64
import hashlib

#: Any backend may PUBLISH a JSON value here; it reaches the room's sockets as ``data``.
ROOM_CHANNEL_PREFIX = "rrr:room:"
#: Sorted set of process leases, scored by expiry on Redis's own clock.
PROCS = "rrr:procs"
#: Global version of presence changes, so announcements can be ordered.
SEQ = "rrr:seq"
#: Hash: the history settings of the servers (``size``, ``ttl`` ms), for backends' helpers (`rrr.client`).
HISTORY_CONFIG = "rrr:config:history"
#: Hash: the field of every process that answered a health probe (a write Redis refuses at maxmemory).
PROBE = "rrr:probe"

_PRESENCE = "rrr:presence:{%s}"
_HISTORY = "rrr:history:{%s}"
_META = "rrr:meta:{%s}"
_MESSAGES = "rrr:msg:{%s}"
_MEMBERS = "rrr:members:{%s}"
_COUNT = "rrr:count:{%s}"
_PROC_ROOMS = "rrr:proc:%s:rooms"
_REVOKED = "rrr:revoked:%s"
_CACHE = "rrr:cache:{%s}"
#: Every process listens here for orders that concern all of them (a user's disconnect).
CONTROL_CHANNEL = "rrr:ctl"
_PROC_PROBE = "rrr:proc:%s:probe"
#: A process's inbox: requests other processes hand it for its SSE and polling sessions, and the
#: answers to those it handed them (`rrr.edge.handoff`). Named by the process's tag, which every
#: session id of the process starts with, so any process can reach the session's owner.
_INBOX = "rrr:inbox:%s"
#: A process's liveness key on a cluster, by its tag: set with the presence TTL at each renewal,
#: deleted when it leaves. There PUBLISH cannot say whether an inbox has a listener; this key can.
_ALIVE = "rrr:alive:{%s}"

# -- Redis Cluster only (rrr.backplane.cluster_presence, cluster_subscriber) --
#: The room's shard channel (``SPUBLISH``): what the app publishes live when history is off, and
#: what a backend on a cluster should ``SPUBLISH`` to; handled by the room's shard only.
_SHARD_ROOM = "rrr:room:{%s}"
#: Classic pattern for backends' raw ``PUBLISH rrr:room:<slug>`` on a cluster (the slow path).
ROOM_CHANNEL_PATTERN = ROOM_CHANNEL_PREFIX + "*"
#: A process's probe channel on one shard; the hash tag picks the shard (`shard_probe_channel`).
_SHARD_PROBE = "rrr:proc:%s:probe:{%s}"
#: A process's health probe write on a cluster (a string with a TTL, so a killed process leaves nothing).
_PROBE_KEY = "rrr:probe:%s"

# -- Events out (webhooks: rrr.backplane.events, lua/events.lua) --
#: A room's reported state: what its webhooks last told (``o`` occupied 1/0, ``u:<user>`` per member
#: reported present) and its event ids' epoch ``e``, counter ``n``, last ``at`` ``a``, drops ``d``.
_REPORTED = "rrr:reported:{%s}"
#: Stream of a room's events, recorded by the presence scripts, until the sender moves them out.
_EVENTS = "rrr:events:{%s}"
#: What every process shares about sending, in one slot (a Redis Cluster runs scripts over them).
_WH = "rrr:webhooks:{webhooks}:"
#: Sorted set: rooms with events waiting to be moved, scored by when (Redis ms) they may move.
EVENTS_DUE = _WH + "due"
#: Stream of at most one entry, added with every new event: the sender's doorbell (XREAD BLOCK).
EVENTS_BELL = _WH + "bell"
#: Stream of final events in the order they go out to every URL (one cursor per URL).
OUTBOX = _WH + "outbox"
#: Hash: URL key -> the outbox id up to which that URL acknowledged.
CURSORS = _WH + "cursors"
#: The sender's lease: the process id of the one process that sends, with a PX expiry.
SENDER = _WH + "sender"
#: Hash: what the sender last saw (``backlog``, ``last_error``), for every process's /healthz.
SENDER_STATUS = _WH + "status"
#: Hash (cluster): room -> the last room stream id moved into the outbox, until the room acks it.
MOVED = _WH + "moved"
#: Sorted set (cluster): process id -> when its rows may all have expired (renewed with them).
EVENT_PROCS = _WH + "procs"
_EVENT_PROC_ROOMS = _WH + "rooms:%s"


def room_channel(room: str) -> str:
    return ROOM_CHANNEL_PREFIX + room


def presence_pattern(prefix: str) -> str:
    """SCAN's pattern for the presence hashes of rooms starting with ``prefix`` (room names hold
    no glob characters)."""
    return _PRESENCE % (prefix + "*")


def presence(room: str) -> str:
    """Hash of one room: ``<pid> -> "<connections> <tabs>"``, plus ``@v`` (version) and ``@u`` (updated)."""
    return _PRESENCE % room


def members(room: str) -> str:
    """Hash of a presence room's members: ``<pid>|<user> -> <info JSON>``, one field per process
    a user is in the room through, so a dead process's members go with its lease."""
    return _MEMBERS % room


def count_channel(room: str) -> str:
    """Where a room's presence changes are announced, from inside the scripts."""
    return _COUNT % room


def history(room: str) -> str:
    """Stream of a room's last ``--history-size`` messages; entry ID ``<offset>-0``, field ``d``."""
    return _HISTORY % room


def meta(room: str) -> str:
    """Hash of a room's history position: ``e`` epoch, ``o`` top offset, ``n``/``t`` its size and TTL.
    Outlives the stream (see `rrr.backplane.history.meta_ttl`), so offsets keep growing across quiet spells."""
    return _META % room


def message_channel(room: str) -> str:
    """Where messages stored in history are published (``<offset> <epoch> <data JSON>``), from
    inside the script that stores them."""
    return _MESSAGES % room


def proc_rooms(pid: str) -> str:
    """Set of the rooms a process has presence in, so its death can be swept room by room."""
    return _PROC_ROOMS % pid


def cache(room: str) -> str:
    """A cache channel's last message (its payload), for whoever subscribes next; ``--cache-ttl``."""
    return _CACHE % room


def revoked(user: str) -> str:
    """When a user's tokens were revoked (unix seconds): tokens issued before then are refused."""
    return _REVOKED % user


def probe_channel(pid: str) -> str:
    """A process's own channel for the health probe round trip through pub/sub."""
    return _PROC_PROBE % pid


def process_tag(pid: str) -> str:
    """Process ``pid``'s tag: 8 URL-safe characters (48 bits of a hash of its id, so two live
    processes never share one in practice). Its sessions' ids start with it."""
    return base64.urlsafe_b64encode(hashlib.blake2b(pid.encode(), digest_size=6).digest()).decode()


def inbox_channel(tag: str) -> str:
    """The inbox of the process whose tag is ``tag`` (classic pub/sub, also on a cluster)."""
    return _INBOX % tag


def alive(tag: str) -> str:
    """The liveness key of the process whose tag is ``tag``: there while it renews its presence."""
    return _ALIVE % tag


def shard_room_channel(room: str) -> str:
    return _SHARD_ROOM % room


def room_channels(room: str) -> list[str]:
    """What the classic subscriber subscribes for a room: its backend channel, count and messages."""
    return [room_channel(room), count_channel(room), message_channel(room)]


def shard_channels(room: str) -> list[str]:
    """What the cluster's subscriber ``SSUBSCRIBE``s for a room, all in the room's slot: its shard
    channel, count and messages."""
    return [shard_room_channel(room), count_channel(room), message_channel(room)]


def presence_keys(room: str) -> list[str]:
    """KEYS of the cluster's presence scripts: the room's presence hash, its members hash."""
    return [presence(room), members(room)]


def reported(room: str) -> str:
    """Hash of what the room's webhooks last reported (see `_REPORTED`)."""
    return _REPORTED % room


def events(room: str) -> str:
    """Stream of the room's recorded events, not yet moved to the outbox."""
    return _EVENTS % room


def presence_write_keys(room: str) -> list[str]:
    """KEYS of the cluster's writing presence scripts: the presence and members hashes, the
    reported state and the event stream (all in the room's slot)."""
    return [presence(room), members(room), reported(room), events(room)]


def event_proc_rooms(pid: str) -> str:
    """Set (cluster): the rooms ``pid`` has rows in, so its death can be swept room by room."""
    return _EVENT_PROC_ROOMS % pid


def shard_probe_channel(pid: str, tag: str) -> str:
    """``pid``'s probe channel in the slot of hash tag ``tag``."""
    return _SHARD_PROBE % (pid, tag)


def probe_key(pid: str) -> str:
    return _PROBE_KEY % pid


def is_shard_channel(channel: str) -> bool:
    """Whether ``channel`` is one of ours that carries a hash tag: sharded pub/sub on a cluster."""
    return "{" in channel and channel.endswith("}")


class Named:
    """Channels named ``<prefix><room><suffix>``: which room one of them belongs to (`room_of`)."""

    __slots__ = ("prefix", "suffix")

    def __init__(self, template: str) -> None:
        self.prefix, self.suffix = template.split("%s")


#: The channels a pub/sub message can name a room in (see `room_of`).
ROOM_CHANNEL = Named(ROOM_CHANNEL_PREFIX + "%s")
COUNT_CHANNEL = Named(_COUNT)
MESSAGE_CHANNEL = Named(_MESSAGES)
PRESENCE_HASH = Named(_PRESENCE)
SHARD_ROOM_CHANNEL = Named(_SHARD_ROOM)
#: A room's event stream and reported state (the cluster's repair finds rooms by them).
EVENTS_STREAM = Named(_EVENTS)
REPORTED_STATE = Named(_REPORTED)


def room_of(named: Named, channel: str) -> str | None:
    """The room ``channel`` belongs to if it is one of ``named`` (`ROOM_CHANNEL`, `COUNT_CHANNEL`,
    `MESSAGE_CHANNEL`, `SHARD_ROOM_CHANNEL`), else None."""
    if channel.startswith(named.prefix) and channel.endswith(named.suffix):
        return channel[len(named.prefix) : len(channel) - len(named.suffix)]
    return None


def _lua_key(template: str) -> str:
    """A Lua function body building ``template`` around its argument."""
    before, after = template.split("%s")
    return f"return '{before}' .. x .. '{after}'"


#: Shared Lua: the names above as Lua constants and functions.
LUA_PRELUDE = f"""
local PROCS, SEQ, PROBE = '{PROCS}', '{SEQ}', '{PROBE}'
local function presence_key(x) {_lua_key(_PRESENCE)} end
local function members_key(x) {_lua_key(_MEMBERS)} end
local function count_channel(x) {_lua_key(_COUNT)} end
local function rooms_key(x) {_lua_key(_PROC_ROOMS)} end
local function reported_key(x) {_lua_key(_REPORTED)} end
local function events_key(x) {_lua_key(_EVENTS)} end
local EVENTS_DUE, EVENTS_BELL, OUTBOX = '{EVENTS_DUE}', '{EVENTS_BELL}', '{OUTBOX}'
"""
